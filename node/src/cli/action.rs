//! `halo start|stop|restart|prim|second|swap MODULE`, `halo checkers|failover
//! MODULE on|off`: one authenticated POST to each daemon.

use std::process::ExitCode;

use super::{fanout, table::Table, ActionArgs};
use crate::api::ModuleAction;

pub fn run(args: &ActionArgs, action: ModuleAction) -> anyhow::Result<ExitCode> {
    let daemons = args.targets.daemons()?;
    let module = args.module.as_str();
    let answers = fanout::ask(&daemons, |daemon| daemon.post_action(module, action));
    if !args.targets.is_fanout() {
        let answer = answers.into_iter().next().expect("one daemon");
        answer.result?;
        println!("{module}: {} requested", action.path());
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["NODE", "RESULT"]);
    for answer in &answers {
        match &answer.result {
            Ok(()) => table.row([
                answer.daemon.node.clone(),
                format!("{module}: {} requested", action.path()),
            ]),
            Err(e) => table.note(answer.daemon.node.clone(), fanout::failure_note(e)),
        }
    }
    print!("{table}");
    Ok(fanout::outcome(&answers))
}
