//! The node daemon, really run: `halo run` processes in lab hosts.

mod actions;
pub(crate) mod api;
mod checkers;
mod cli;
mod config;
mod console;
mod forged;
mod heartbeat;
mod metrics;
mod processes;
mod rotation;
mod scripts;
mod state;
