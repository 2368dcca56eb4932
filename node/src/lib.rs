//! halo's node: the daemon, its pure state machines, and the control of its kernel programs.

pub mod api;
pub mod app;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod ebpf;
pub mod farm;
pub mod fsm;
pub mod mirror;
pub mod net;
pub mod witness;
