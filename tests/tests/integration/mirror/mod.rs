//! Mirror modules: two real daemons replicating a directory, a client on
//! the VIP. Each host has its own `/var/lib/app` (a private path).

mod common;
mod crash;
mod cut_primary;
mod daemon_crash;
mod disk_full;
mod failover;
mod fsync_barrier;
mod hard_link_churn;
mod hard_links;
mod journal;
mod no_capture;
mod ping_witness;
mod primary_crash_churn;
mod rename_resync;
mod replicate;
mod roles;
mod start_fsync;
mod swap_writer;
