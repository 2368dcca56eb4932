//! The virtual IP on the wire: binding it to an interface and announcing
//! where it is, for the farm and the mirror modules.
//!
//! - [`vip`]: [`claim`], [`release`] and [`has`] a VIP on an interface
//!   through rtnetlink (IPv4 /32; IPv6 /128 without duplicate address
//!   detection, prefix route or use as a default source). Idempotent.
//! - [`mac`]: a VIP's [`virtual_mac`] (`5a:fe:` + its last four bytes), an
//!   interface's own MAC and index.
//! - [`announce`](mod@announce): gratuitous ARP (IPv4) and unsolicited
//!   neighbour advertisements (IPv6) carrying a chosen MAC, always sent from
//!   the interface's own MAC so that switches never learn a virtual one.
//!
//! Everything acts in the calling thread's network namespace (rtnetlink,
//! ioctl and packet sockets all follow it; sysfs would not).

pub mod announce;
mod error;
#[cfg(test)]
mod lab;
pub mod mac;
pub mod vip;

pub use announce::announce;
pub use error::NetError;
pub use mac::{format_mac, ifindex, interface_mac, virtual_mac};
pub use vip::{claim, has, release};
