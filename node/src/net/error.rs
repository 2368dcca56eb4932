//! What can go wrong putting a VIP on the wire.

use std::{io, net::IpAddr};

/// An error of [`super`]'s functions; each names the interface, and the
/// address where there is one.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The interface does not exist in this network namespace.
    #[error("no interface {iface}")]
    NoInterface { iface: String },
    /// Asking the kernel about an existing interface failed.
    #[error("cannot query interface {iface}")]
    Interface {
        iface: String,
        #[source]
        source: io::Error,
    },
    /// The interface has no 6-byte Ethernet address (a tunnel, loopback…).
    #[error("{iface} is not an Ethernet interface (hardware type {hardware_type})")]
    NotEthernet { iface: String, hardware_type: u16 },
    /// No rtnetlink socket could be opened.
    #[error("cannot open an rtnetlink socket")]
    Rtnetlink(#[source] io::Error),
    /// The rtnetlink connection ended before the kernel answered.
    #[error("the rtnetlink connection closed before the kernel answered about {vip} on {iface}")]
    RtnetlinkClosed { iface: String, vip: IpAddr },
    /// The kernel refused to add, remove or list the address.
    #[error("cannot {action} {vip} on {iface}")]
    Address {
        action: &'static str,
        iface: String,
        vip: IpAddr,
        // Boxed: the kernel's refusal carries the whole request back.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// No packet socket could be opened or bound on the interface.
    #[error("cannot open a packet socket on {iface}")]
    PacketSocket {
        iface: String,
        #[source]
        source: io::Error,
    },
    /// The interface is down or has no carrier: nothing sent on it leaves.
    #[error("{iface} is down or has no carrier")]
    NotRunning { iface: String },
    /// An announcement frame could not be sent.
    #[error("cannot announce {vip} on {iface}")]
    Send {
        iface: String,
        vip: IpAddr,
        #[source]
        source: io::Error,
    },
}
