//! MAC addresses: a VIP's virtual MAC, and an interface's own address and
//! index.

use std::{
    io,
    mem::zeroed,
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use super::NetError;

/// The first two bytes of every virtual MAC: `0x5a` has the
/// locally-administered bit set and the multicast bit clear (SafeKit's
/// convention).
const VIRTUAL_MAC_PREFIX: [u8; 2] = [0x5a, 0xfe];

/// The virtual MAC of a VIP: `5a:fe` followed by the last four bytes of
/// the address — all of an IPv4 address (`10.0.0.100` → `5a:fe:0a:00:00:64`),
/// the low 32 bits of an IPv6 one.
///
/// Collision caveat: two IPv6 VIPs that agree in their last 32 bits, or an
/// IPv6 VIP ending in the bytes of an IPv4 VIP (such as `::ffff:10.0.0.100`
/// and `10.0.0.100`), share one virtual MAC. The MAC is only a key that
/// switches never learn, so the frames still reach every node and each
/// node's program tells the VIPs apart by their IP addresses; but anything
/// that filters by MAC (a second cluster on the segment, a static switch
/// entry) must be given VIPs that differ in their last 32 bits.
pub fn virtual_mac(vip: IpAddr) -> [u8; 6] {
    let tail = match vip {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    let [p0, p1] = VIRTUAL_MAC_PREFIX;
    [p0, p1, tail[0], tail[1], tail[2], tail[3]]
}

/// A MAC address as `aa:bb:cc:dd:ee:ff`, for logs and messages.
pub fn format_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// The index of `iface` in the calling thread's network namespace.
pub fn ifindex(iface: &str) -> Result<u32, NetError> {
    if !could_name_an_interface(iface) {
        return Err(NetError::NoInterface {
            iface: iface.to_owned(),
        });
    }
    nix::net::if_::if_nametoindex(iface).map_err(|errno| match errno {
        nix::errno::Errno::ENODEV => NetError::NoInterface {
            iface: iface.to_owned(),
        },
        other => NetError::Interface {
            iface: iface.to_owned(),
            source: other.into(),
        },
    })
}

/// Whether `iface` fits the kernel's rules for a name: 1 to 15 bytes (a NUL
/// must fit in IFNAMSIZ) and no NUL, `/` or whitespace inside.
fn could_name_an_interface(iface: &str) -> bool {
    (1..libc::IFNAMSIZ).contains(&iface.len())
        && !iface
            .bytes()
            .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace())
}

/// The Ethernet address of `iface` in the calling thread's network
/// namespace.
///
/// Asked of the kernel with `SIOCGIFHWADDR` rather than read from
/// `/sys/class/net/<iface>/address`: sysfs shows the interfaces of the
/// namespace it was mounted in, which is not the caller's after a
/// `setns`/`unshare` (a lab host, a test), and would name another
/// interface's address or none.
pub fn interface_mac(iface: &str) -> Result<[u8; 6], NetError> {
    let answer = interface_ioctl(iface, libc::SIOCGIFHWADDR)?;
    // SAFETY: SIOCGIFHWADDR fills the `ifru_hwaddr` member of the union.
    let hwaddr = unsafe { answer.ifr_ifru.ifru_hwaddr };
    if hwaddr.sa_family != libc::ARPHRD_ETHER {
        return Err(NetError::NotEthernet {
            iface: iface.to_owned(),
            hardware_type: hwaddr.sa_family,
        });
    }
    let mut mac = [0u8; 6];
    for (byte, raw) in mac.iter_mut().zip(hwaddr.sa_data) {
        *byte = raw as u8;
    }
    Ok(mac)
}

/// Whether `iface` is up and has a carrier (`IFF_UP` and `IFF_RUNNING`):
/// whether a frame sent on it can leave.
pub(super) fn is_running(iface: &str) -> Result<bool, NetError> {
    let answer = interface_ioctl(iface, libc::SIOCGIFFLAGS)?;
    // SAFETY: SIOCGIFFLAGS fills the `ifru_flags` member of the union.
    let flags = i32::from(unsafe { answer.ifr_ifru.ifru_flags });
    let wanted = libc::IFF_UP | libc::IFF_RUNNING;
    Ok(flags & wanted == wanted)
}

/// Runs the `SIOCGIF*` ioctl `request` about `iface` and returns the
/// kernel's answer.
fn interface_ioctl(iface: &str, request: libc::Ioctl) -> Result<libc::ifreq, NetError> {
    let no_interface = || NetError::NoInterface {
        iface: iface.to_owned(),
    };
    let failed = |source: io::Error| NetError::Interface {
        iface: iface.to_owned(),
        source,
    };
    if !could_name_an_interface(iface) {
        return Err(no_interface());
    }
    // SAFETY: zeroed bytes are a valid `ifreq` (integers and arrays).
    let mut ifreq: libc::ifreq = unsafe { zeroed() };
    for (slot, byte) in ifreq.ifr_name.iter_mut().zip(iface.as_bytes()) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: socket(2) takes no pointers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(failed(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh, valid descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the SIOCGIF* requests read the name from and write their
    // answer into `ifreq`, a valid, writable `ifreq`.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), request, &raw mut ifreq) };
    if rc < 0 {
        let error = io::Error::last_os_error();
        return Err(match error.raw_os_error() {
            Some(libc::ENODEV) => no_interface(),
            _ => failed(error),
        });
    }
    Ok(ifreq)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::net::lab::{Link, A};

    #[test]
    fn virtual_mac_of_10_0_0_100_is_5a_fe_0a_00_00_64() {
        let mac = virtual_mac(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100)));
        assert_eq!(
            mac,
            [0x5a, 0xfe, 0x0a, 0x00, 0x00, 0x64],
            "expected 5a:fe:0a:00:00:64, saw {}",
            format_mac(mac)
        );
        assert_eq!(format_mac(mac), "5a:fe:0a:00:00:64");
    }

    #[test]
    fn virtual_mac_is_unicast_and_locally_administered() {
        for vip in ["192.168.1.1", "255.255.255.255", "2001:db8::1", "fe80::ff"] {
            let mac = virtual_mac(vip.parse().unwrap());
            assert_eq!(mac[0] & 0x01, 0, "{vip}: {} is multicast", format_mac(mac));
            assert_eq!(
                mac[0] & 0x02,
                0x02,
                "{vip}: {} is not local",
                format_mac(mac)
            );
        }
    }

    #[test]
    fn virtual_mac_of_ipv6_is_its_last_four_bytes() {
        let vip: Ipv6Addr = "2001:db8::c0a8:102".parse().unwrap();
        assert_eq!(
            virtual_mac(IpAddr::V6(vip)),
            [0x5a, 0xfe, 0xc0, 0xa8, 0x01, 0x02]
        );
        // The documented collision: an IPv4-mapped VIP and its IPv4 form.
        let mapped: Ipv6Addr = "::ffff:10.0.0.100".parse().unwrap();
        assert_eq!(
            virtual_mac(IpAddr::V6(mapped)),
            virtual_mac(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100)))
        );
    }

    #[test]
    fn interface_mac_and_ifindex_are_read_in_the_callers_namespace() {
        let link = Link::new();
        let (mac, index) = link.a.run(|| (interface_mac(A), ifindex(A)));
        let mac = mac.expect("the lab's veth has a MAC");
        let index = index.expect("the lab's veth has an index");
        assert_eq!(
            mac,
            link.a_mac,
            "expected {A}'s MAC {}, saw {}",
            format_mac(link.a_mac),
            format_mac(mac)
        );
        assert_eq!(
            index, link.a_index,
            "expected {A}'s index {}, saw {index}",
            link.a_index
        );
    }

    #[test]
    fn a_missing_interface_is_named_in_the_error() {
        let link = Link::new();
        let (mac, index) = link
            .a
            .run(|| (interface_mac("halo-nope0"), ifindex("halo-nope0")));
        for result in [mac.map(|_| ()), index.map(|_| ())] {
            match result {
                Err(error @ NetError::NoInterface { .. }) => {
                    assert_eq!(error.to_string(), "no interface halo-nope0")
                }
                other => panic!("expected NoInterface for halo-nope0, saw {other:?}"),
            }
        }
    }

    #[test]
    fn impossible_names_are_missing_interfaces() {
        for name in ["", "sixteen-bytes-xx", "a\0b", "a/b", "a b"] {
            assert!(
                matches!(ifindex(name), Err(NetError::NoInterface { .. })),
                "expected NoInterface for {name:?} from ifindex"
            );
            assert!(
                matches!(interface_mac(name), Err(NetError::NoInterface { .. })),
                "expected NoInterface for {name:?} from interface_mac"
            );
        }
    }

    #[test]
    fn loopback_is_not_ethernet() {
        let link = Link::new();
        match link.a.run(|| interface_mac("lo")) {
            Err(NetError::NotEthernet { hardware_type, .. }) => {
                assert_eq!(hardware_type, libc::ARPHRD_LOOPBACK)
            }
            other => panic!("expected NotEthernet for lo, saw {other:?}"),
        }
    }
}
