//! The `halo` binary: the node daemon and its command line.

use std::process::ExitCode;

use clap::Parser as _;
use halo::{
    api::ModuleAction,
    cli::{self, client::ApiFailure, Cli, Command, Switch},
    config::ConfigError,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => halo::daemon::run(&config).map(|()| ExitCode::SUCCESS),
        Command::CheckConfig { file } => cli::check_config::run(&file)
            .map(|()| ExitCode::SUCCESS)
            .map_err(anyhow::Error::from),
        Command::Keygen { file } => cli::keygen::run(&file).map(|()| ExitCode::SUCCESS),
        Command::State {
            module,
            quiet,
            json,
            targets,
        } => cli::state::run(&module, quiet, json, &targets),
        Command::Wait {
            module,
            state,
            timeout,
            targets,
        } => cli::wait::run(&module, &state, timeout, &targets),
        Command::Witness {
            listen,
            secret,
            accept_secret,
            max_lease,
        } => halo::daemon::run_witness(listen, &secret, accept_secret.as_deref(), max_lease)
            .map(|()| ExitCode::SUCCESS),
        Command::Start(args) => cli::action::run(&args, ModuleAction::Start),
        Command::Stop(args) => cli::action::run(&args, ModuleAction::Stop),
        Command::Restart(args) => cli::action::run(&args, ModuleAction::Restart),
        Command::Prim(args) => cli::action::run(&args, ModuleAction::Prim),
        Command::Second(args) => cli::action::run(&args, ModuleAction::Second),
        Command::Swap(args) => cli::action::run(&args, ModuleAction::Swap),
        Command::Checkers { action, switch } => cli::action::run(
            &action,
            match switch {
                Switch::On => ModuleAction::CheckersOn,
                Switch::Off => ModuleAction::CheckersOff,
            },
        ),
        Command::Failover { action, switch } => cli::action::run(
            &action,
            match switch {
                Switch::On => ModuleAction::FailoverOn,
                Switch::Off => ModuleAction::FailoverOff,
            },
        ),
        Command::Buckets {
            module,
            json,
            targets,
        } => cli::buckets::run(&module, json, &targets),
        Command::Status { json, targets } => cli::status::run(json, &targets),
        Command::Reload { json, targets } => cli::reload::run(json, &targets),
        Command::Log {
            module,
            follow,
            lines,
            json,
            targets,
        } => cli::log::run(&module, follow, lines, json, &targets),
        Command::Snapshot { file, target } => {
            cli::snapshot::run(&file, &target).map(|()| ExitCode::SUCCESS)
        }
        Command::Completions { shell } => cli::docs::completions(shell).map(|()| ExitCode::SUCCESS),
        Command::Man { dir } => cli::docs::man(dir.as_deref()).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(error) => report(&error),
    }
}

/// Prints the error chain and picks the exit code: 64 for a bad
/// configuration, 69 for a daemon that cannot be reached, 77 for one that
/// refuses the token, 1 otherwise; a closed stdout (`halo status | head`)
/// is not an error.
fn report(error: &anyhow::Error) -> ExitCode {
    if let Some(io) = error.downcast_ref::<std::io::Error>() {
        if io.kind() == std::io::ErrorKind::BrokenPipe {
            return ExitCode::SUCCESS;
        }
    }
    if let Some(failure) = error.chain().find_map(|e| e.downcast_ref::<ApiFailure>()) {
        eprintln!("halo: {error:#}");
        return ExitCode::from(failure.exit_code());
    }
    if let Some(config) = error.chain().find_map(|e| e.downcast_ref::<ConfigError>()) {
        match config {
            ConfigError::Invalid { .. } => eprintln!("halo: invalid configuration:\n{config}"),
            // The file was never read, so nothing in it is invalid: the
            // chain says why it could not be (missing, a directory, not
            // UTF-8), which the bare error would leave out.
            ConfigError::Read { .. } => eprintln!("halo: {error:#}"),
        }
        return ExitCode::from(ConfigError::EXIT_CODE);
    }
    eprintln!("halo: {error:#}");
    ExitCode::FAILURE
}
