//! The node daemon, really run: `halo run` processes in lab hosts.

mod heartbeat;
mod state;
