//! Binding a VIP to an interface, and unbinding it, through rtnetlink.
//!
//! A VIP is a host address: IPv4 as a /32, IPv6 as a /128. Every call opens
//! its own rtnetlink socket in the calling thread's network namespace and
//! drives it on the caller's task, so nothing outlives the call.
//!
//! An IPv6 VIP is added with
//! - `IFA_F_NODAD`: every farm node holds the same VIP on purpose, and
//!   duplicate address detection would fail it on all but the first;
//! - `IFA_F_NOPREFIXROUTE`: a /128 needs no route of its own (the local
//!   table already delivers it);
//! - a preferred lifetime of 0 (valid forever): the address is *deprecated*,
//!   which Linux still accepts traffic for (incoming connections, neighbour
//!   solicitations, an explicit `bind`) but never picks as the source of a
//!   new outgoing connection (RFC 6724 rule 3). Without it, the longest-match
//!   rule can make the shared VIP the source of a node's own connections, and
//!   the farm would deliver their replies to whichever node owns the bucket.
//!   An IPv4 /32 needs nothing alike: Linux sources from the address whose
//!   subnet holds the destination or the gateway, and a /32's holds only
//!   itself. A mirror that wants its connections to leave from the VIP
//!   binds to it, which a deprecated address allows.

use std::net::IpAddr;

use futures_util::TryStreamExt as _;
use rtnetlink::{
    packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, CacheInfo},
    Handle,
};

use super::{mac::ifindex, NetError};

/// An address lifetime the kernel reads as "forever".
const INFINITE_LIFETIME: u32 = u32::MAX;

/// Binds `vip` to `iface` (a /32 or a /128). Claiming a VIP that is
/// already bound is a success: the kernel keeps the existing entry (for
/// IPv4, one with another prefix gets a /32 beside it).
pub async fn claim(iface: &str, vip: IpAddr) -> Result<(), NetError> {
    let vip = vip.to_canonical();
    let index = ifindex(iface)?;
    over_rtnetlink(iface, vip, async |handle| {
        let prefix = match vip {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let mut request = handle.address().add(index, vip, prefix);
        if vip.is_ipv6() {
            let mut lifetimes = CacheInfo::default();
            lifetimes.ifa_preferred = 0;
            lifetimes.ifa_valid = INFINITE_LIFETIME;
            let attributes = &mut request.message_mut().attributes;
            attributes.push(AddressAttribute::Flags(
                AddressFlags::Nodad | AddressFlags::Noprefixroute,
            ));
            attributes.push(AddressAttribute::CacheInfo(lifetimes));
        }
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(error) if errno(&error) == Some(libc::EEXIST) => Ok(()),
            Err(error) => Err(address_error("add", iface, vip, error)),
        }
    })
    .await
}

/// Unbinds `vip` from `iface`: every entry of that address on the
/// interface, whatever its prefix, so that [`has`] answers `false`
/// afterwards. Releasing a VIP that is not there is a success.
pub async fn release(iface: &str, vip: IpAddr) -> Result<(), NetError> {
    let vip = vip.to_canonical();
    let index = ifindex(iface)?;
    over_rtnetlink(iface, vip, async |handle| {
        for entry in entries(handle, iface, index, vip).await? {
            match handle.address().del(entry).execute().await {
                Ok(()) => {}
                // Removed meanwhile, by someone else or with a primary
                // address that took its secondaries along.
                Err(error) if errno(&error) == Some(libc::EADDRNOTAVAIL) => {}
                Err(error) => return Err(address_error("remove", iface, vip, error)),
            }
        }
        Ok(())
    })
    .await
}

/// Whether `vip` is bound to `iface`, with any prefix.
pub async fn has(iface: &str, vip: IpAddr) -> Result<bool, NetError> {
    let vip = vip.to_canonical();
    let index = ifindex(iface)?;
    over_rtnetlink(iface, vip, async |handle| {
        Ok(!entries(handle, iface, index, vip).await?.is_empty())
    })
    .await
}

/// The address entries of `vip` on interface `index`, trimmed to what
/// names an entry for deletion (its header, address, local address and
/// label).
async fn entries(
    handle: &Handle,
    iface: &str,
    index: u32,
    vip: IpAddr,
) -> Result<Vec<AddressMessage>, NetError> {
    let mut found = Vec::new();
    let mut dump = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .set_address_filter(vip)
        .execute();
    while let Some(mut entry) = dump
        .try_next()
        .await
        .map_err(|error| address_error("look up", iface, vip, error))?
    {
        entry.attributes.retain(|attribute| {
            matches!(
                attribute,
                AddressAttribute::Address(_)
                    | AddressAttribute::Local(_)
                    | AddressAttribute::Label(_)
            )
        });
        found.push(entry);
    }
    Ok(found)
}

/// Runs `work` with a fresh rtnetlink connection, driving the connection
/// on this task until `work` is done.
async fn over_rtnetlink<T>(
    iface: &str,
    vip: IpAddr,
    work: impl AsyncFnOnce(&Handle) -> Result<T, NetError>,
) -> Result<T, NetError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(NetError::Rtnetlink)?;
    tokio::select! {
        result = work(&handle) => result,
        () = connection => Err(NetError::RtnetlinkClosed {
            iface: iface.to_owned(),
            vip,
        }),
    }
}

/// The errno of a kernel refusal, if that is what `error` is.
fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => Some(-message.raw_code()),
        _ => None,
    }
}

fn address_error(
    action: &'static str,
    iface: &str,
    vip: IpAddr,
    error: rtnetlink::Error,
) -> NetError {
    // The interface went away between looking up its index and the request.
    if errno(&error) == Some(libc::ENODEV) {
        return NetError::NoInterface {
            iface: iface.to_owned(),
        };
    }
    NetError::Address {
        action,
        iface: iface.to_owned(),
        vip,
        source: Box::new(error),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
        time::Duration,
    };

    use futures_util::TryStreamExt as _;

    use super::*;
    use crate::net::lab::{add_address, index_of, rtnetlink_handle, Link, A, B};

    const VIP4: &str = "10.0.0.100";
    const VIP6: &str = "2001:db8::100";

    /// Claims, checks and releases `vip` on host A's interface, twice each
    /// (idempotence).
    fn round_trip(vip: &str) {
        let vip: IpAddr = vip.parse().unwrap();
        let link = Link::new();
        link.a.block_on(|| async move {
            assert!(
                !has(A, vip).await.unwrap(),
                "expected {vip} absent before claim"
            );
            claim(A, vip)
                .await
                .unwrap_or_else(|e| panic!("expected claim of {vip} to succeed, saw {e:#?}"));
            assert!(
                has(A, vip).await.unwrap(),
                "expected {vip} present after claim"
            );
            claim(A, vip).await.unwrap_or_else(|e| {
                panic!("expected a second claim of {vip} to succeed, saw {e:#?}")
            });
            assert!(
                has(A, vip).await.unwrap(),
                "expected {vip} present after a second claim"
            );
            release(A, vip)
                .await
                .unwrap_or_else(|e| panic!("expected release of {vip} to succeed, saw {e:#?}"));
            assert!(
                !has(A, vip).await.unwrap(),
                "expected {vip} absent after release"
            );
            release(A, vip).await.unwrap_or_else(|e| {
                panic!("expected a second release of {vip} to succeed, saw {e:#?}")
            });
            assert!(
                !has(A, vip).await.unwrap(),
                "expected {vip} absent after a second release"
            );
        });
    }

    #[test]
    fn ipv4_claim_has_release_round_trip_is_idempotent() {
        round_trip(VIP4);
    }

    #[test]
    fn ipv6_claim_has_release_round_trip_is_idempotent() {
        round_trip(VIP6);
    }

    #[test]
    fn ipv4_mapped_vip_is_claimed_as_ipv4() {
        let link = Link::new();
        link.a.block_on(|| async {
            claim(A, "::ffff:10.0.0.100".parse().unwrap())
                .await
                .unwrap();
            assert!(
                has(A, VIP4.parse().unwrap()).await.unwrap(),
                "expected ::ffff:10.0.0.100 to be bound as {VIP4}"
            );
        });
    }

    /// The kernel's view of every address entry of `vip` on `iface`:
    /// prefix, flags (the IFA_FLAGS attribute, else the header's) and
    /// preferred lifetime.
    async fn kernel_entries(iface: &str, vip: IpAddr) -> Vec<(u8, AddressFlags, Option<u32>)> {
        let handle = rtnetlink_handle();
        let dump = handle
            .address()
            .get()
            .set_link_index_filter(index_of(iface))
            .set_address_filter(vip)
            .execute();
        let entries: Vec<AddressMessage> = dump.try_collect().await.expect("an address dump");
        entries
            .into_iter()
            .map(|entry| {
                let header_flags =
                    AddressFlags::from_bits_retain(u32::from(entry.header.flags.bits()));
                let mut flags = header_flags;
                let mut preferred = None;
                for attribute in &entry.attributes {
                    match attribute {
                        AddressAttribute::Flags(f) => flags = *f,
                        AddressAttribute::CacheInfo(info) => preferred = Some(info.ifa_preferred),
                        _ => {}
                    }
                }
                (entry.header.prefix_len, flags, preferred)
            })
            .collect()
    }

    #[test]
    fn ipv4_vip_is_a_host_address() {
        let link = Link::new();
        let entries = link.a.block_on(|| async {
            claim(A, VIP4.parse().unwrap()).await.unwrap();
            kernel_entries(A, VIP4.parse().unwrap()).await
        });
        assert!(
            matches!(entries.as_slice(), [(32, _, _)]),
            "expected one /32 entry of {VIP4}, saw {entries:?}"
        );
    }

    #[test]
    fn ipv6_vip_has_nodad_noprefixroute_and_is_deprecated() {
        let link = Link::new();
        let entries = link.a.block_on(|| async {
            claim(A, VIP6.parse().unwrap()).await.unwrap();
            kernel_entries(A, VIP6.parse().unwrap()).await
        });
        let [(prefix, flags, preferred)] = entries.as_slice() else {
            panic!("expected one entry of {VIP6}, saw {entries:?}");
        };
        assert_eq!(*prefix, 128, "expected a /128, saw {entries:?}");
        for wanted in [
            AddressFlags::Nodad,
            AddressFlags::Noprefixroute,
            AddressFlags::Deprecated,
            AddressFlags::Permanent,
        ] {
            assert!(
                flags.contains(wanted),
                "expected {wanted:?} among {flags:?}"
            );
        }
        for unwanted in [AddressFlags::Tentative, AddressFlags::Dadfailed] {
            assert!(
                !flags.contains(unwanted),
                "expected no {unwanted:?} among {flags:?}"
            );
        }
        assert_eq!(
            *preferred,
            Some(0),
            "expected a preferred lifetime of 0, saw {entries:?}"
        );
    }

    #[test]
    fn release_removes_a_vip_bound_with_another_prefix() {
        let link = Link::new();
        link.a.block_on(|| async {
            for (vip, prefix) in [(VIP4, 24), (VIP6, 64)] {
                let vip: IpAddr = vip.parse().unwrap();
                add_address(A, vip, prefix).await;
                claim(A, vip).await.unwrap();
                assert!(has(A, vip).await.unwrap(), "expected {vip} present");
                release(A, vip).await.unwrap();
                assert!(
                    !has(A, vip).await.unwrap(),
                    "expected {vip} absent after release, also its /{prefix} entry"
                );
            }
        });
    }

    #[test]
    fn a_missing_interface_is_named_in_the_error() {
        let link = Link::new();
        let vip: IpAddr = VIP4.parse().unwrap();
        let results = link.a.block_on(|| async move {
            [
                claim("eth9", vip).await.map(|_| ()),
                release("eth9", vip).await.map(|_| ()),
                has("eth9", vip).await.map(|_| ()),
            ]
        });
        for result in results {
            match result {
                Err(error @ NetError::NoInterface { .. }) => {
                    assert_eq!(error.to_string(), "no interface eth9")
                }
                other => panic!("expected NoInterface for eth9, saw {other:?}"),
            }
        }
    }

    /// Host A has `own`/`prefix` and claims `vip`; host B, `peer`/`prefix`,
    /// connects to the VIP over the veth. The VIP must take the connection,
    /// and A's own connections to a neighbour whose address shares more
    /// bits with the VIP than with `own` must still leave from `own`.
    fn vip_serves_the_wire(own: IpAddr, vip: IpAddr, peer: IpAddr, near_vip: IpAddr, prefix: u8) {
        let link = Link::new();
        let listener = link.a.block_on(|| async move {
            add_address(A, own, prefix).await;
            claim(A, vip).await.unwrap();
            TcpListener::bind(SocketAddr::new(vip, 0)).expect("a listener on the VIP")
        });
        let port = listener.local_addr().unwrap().port();
        link.b
            .block_on(|| async move { add_address(B, peer, prefix).await });

        let served = std::thread::spawn(move || {
            let (mut stream, from) = listener.accept().expect("a connection to the VIP");
            stream.write_all(b"vip").unwrap();
            from.ip()
        });
        let answer = link.b.run(|| {
            let mut stream =
                TcpStream::connect_timeout(&SocketAddr::new(vip, port), Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("expected B to connect to {vip}:{port}, saw {e}"));
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            answer
        });
        assert_eq!(answer, "vip");
        assert_eq!(served.join().unwrap(), peer);

        let source = link.a.run(|| {
            let any: IpAddr = if own.is_ipv4() {
                Ipv4Addr::UNSPECIFIED.into()
            } else {
                Ipv6Addr::UNSPECIFIED.into()
            };
            let socket = UdpSocket::bind(SocketAddr::new(any, 0)).unwrap();
            socket.connect(SocketAddr::new(near_vip, 9)).unwrap();
            socket.local_addr().unwrap().ip()
        });
        assert_eq!(
            source, own,
            "expected A's connection to {near_vip} to leave from {own}, not the VIP {vip}"
        );
    }

    #[test]
    fn ipv4_vip_takes_connections_and_is_no_default_source() {
        vip_serves_the_wire(
            "10.0.0.1".parse().unwrap(),
            VIP4.parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.101".parse().unwrap(),
            24,
        );
    }

    #[test]
    fn ipv6_vip_takes_connections_and_is_no_default_source() {
        vip_serves_the_wire(
            "2001:db8::1".parse().unwrap(),
            VIP6.parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
            "2001:db8::101".parse().unwrap(),
            64,
        );
    }
}
