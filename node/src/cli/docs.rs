//! `halo completions SHELL` and `halo man`: shell completions and man
//! pages generated from the clap definitions, so they never drift from the
//! command line they describe.

use std::{io::Write as _, path::Path};

use anyhow::Context as _;
use clap::CommandFactory as _;

use super::Cli;

/// Prints the completion script of `shell`.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut command = Cli::command();
    // Generated in memory: the generator panics on a write error, and a
    // closed stdout (`| head`) is none.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "halo", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)?;
    out.flush()?;
    Ok(())
}

/// Prints halo(1), or writes it and halo-SUBCOMMAND(1) for every
/// subcommand into `dir`.
pub fn man(dir: Option<&Path>) -> anyhow::Result<()> {
    let mut command = Cli::command();
    command.build();
    let Some(dir) = dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(command).render(&mut page)?;
        std::io::stdout().lock().write_all(&page)?;
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut pages = vec![("halo".to_owned(), command.clone())];
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("halo-{}", sub.get_name());
        pages.push((
            name.clone(),
            sub.clone()
                .display_name(name)
                .version(env!("CARGO_PKG_VERSION")),
        ));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut text = Vec::new();
        clap_mangen::Man::new(page).render(&mut text)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
