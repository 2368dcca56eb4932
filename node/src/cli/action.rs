//! `halo start|stop|restart|prim|second|swap MODULE`, `halo checkers|failover
//! MODULE on|off`: one authenticated POST to the daemon.

use std::process::ExitCode;

use anyhow::Context as _;

use super::{client, ActionArgs};
use crate::api::ModuleAction;

pub fn run(args: &ActionArgs, action: ModuleAction) -> anyhow::Result<ExitCode> {
    let addr = args.target.api_addr()?;
    let token_file = match &args.token_file {
        Some(path) => path.clone(),
        None => crate::config::load(&args.target.config)?.api.token_file,
    };
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("reading the API token {}", token_file.display()))?;
    client::post_action(&addr, token.trim(), &args.module, action)?;
    println!("{}: {} requested", args.module, action.path());
    Ok(ExitCode::SUCCESS)
}
