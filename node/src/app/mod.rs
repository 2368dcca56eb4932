//! Application control (SPEC §8): running a module's scripts and checkers.
//!
//! This room does the I/O of application control and nothing else: it runs
//! the scripts the machines ask for and the checkers the configuration names,
//! and hands back plain values, a [`ScriptReport`] per script and a
//! [`CheckerReport`] per change of a checker's result. The daemon's driver
//! feeds them to the machines (`ScriptDone`, `CheckerFailed`, `ResourceDown`,
//! `ResourceUp`); what to do about a failure, the maxloop policy included, is
//! decided in `fsm`.
//!
//! - [`script`]: the calling convention of scripts (arguments, environment,
//!   timeouts, the forced stop), their output into the module log through a
//!   [`LogSink`].
//! - [`checker`]: one task per checker, switched off for maintenance through
//!   a `watch` channel.
//!
//! Every process this room starts leads a process group of its own, and a
//! timeout kills the whole group: a script or a check that hangs, or leaves a
//! child holding its pipes, never holds halo up.

pub mod checker;
mod group;
pub mod script;
#[cfg(test)]
mod testdir;

pub use checker::{checker_id, CheckerContext, CheckerReport};
pub use script::{
    run_script, run_transition, ExitReason, LogLine, LogSink, ScriptOutcome, ScriptReport,
    ScriptSpec, TransitionSpec,
};
