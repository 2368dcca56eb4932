//! The node daemon, really run: `halo run` processes in lab hosts.

mod actions;
mod checkers;
mod config;
mod forged;
mod heartbeat;
mod processes;
mod scripts;
mod state;
