//! The farm module end to end: three real daemons share a VIP in the lab,
//! a client host makes real TCP connections to it.

mod checker;
mod cold_start;
mod common;
mod ipv6;
mod long_lived;
mod own_address;
mod power;
mod rejoin;
mod source_addr;
mod spread;
mod udp;
