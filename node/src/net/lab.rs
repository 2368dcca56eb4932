//! A private two-host lab for this room's tests: two network namespaces
//! joined by a veth pair, nothing shared with the machine's own network.
//!
//! A namespace is held only by a descriptor ([`Netns`]); code runs in it on
//! a short-lived thread that enters it. Dropping the descriptor, also while
//! unwinding from a failed assertion, or the process dying, lets the kernel
//! destroy the namespace and the veth end inside it, so a crashed run
//! leaves nothing to sweep.

use std::{
    fs::File,
    future::Future,
    io,
    mem::{size_of, zeroed},
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    panic::resume_unwind,
    thread,
    time::{Duration, Instant},
};

use futures_util::TryStreamExt as _;
use nix::sched::{setns, unshare, CloneFlags};
use rtnetlink::{
    packet_route::{
        address::{AddressAttribute, AddressFlags},
        link::LinkAttribute,
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
        AddressFamily,
    },
    Handle, LinkUnspec, LinkVeth,
};

/// Host A's end of the veth pair.
pub(super) const A: &str = "lab-a";
/// Host B's end of the veth pair.
pub(super) const B: &str = "lab-b";

/// A network namespace of the test's own, alive as long as this value.
pub(super) struct Netns {
    fd: OwnedFd,
}

impl Netns {
    /// A new, empty network namespace (only a loopback, down).
    pub(super) fn new() -> Netns {
        joined(thread::spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).unwrap_or_else(|errno| {
                panic!(
                    "expected to create a network namespace (these tests need root), saw {errno}"
                )
            });
            let file = File::open("/proc/thread-self/ns/net")
                .unwrap_or_else(|error| panic!("expected to open the new namespace, saw {error}"));
            Netns { fd: file.into() }
        }))
    }

    /// Runs `work` on a thread inside this namespace and returns its
    /// result; a panic in `work` panics the caller.
    pub(super) fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        thread::scope(|scope| {
            let handle = scope.spawn(|| {
                setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET).unwrap_or_else(|errno| {
                    panic!("expected to enter the lab namespace, saw {errno}")
                });
                work()
            });
            handle.join().unwrap_or_else(|panic| resume_unwind(panic))
        })
    }

    /// Runs the future `work` returns to completion inside this namespace,
    /// on a single-threaded tokio runtime.
    pub(super) fn block_on<T: Send, F: Future<Output = T>>(
        &self,
        work: impl FnOnce() -> F + Send,
    ) -> T {
        self.run(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime")
                .block_on(work())
        })
    }
}

fn joined<T>(handle: thread::JoinHandle<T>) -> T {
    handle.join().unwrap_or_else(|panic| resume_unwind(panic))
}

/// Two hosts, A and B, each in its own namespace, joined by a veth pair
/// ([`A`] in host A, [`B`] in host B), both ends up, with fixed MACs.
pub(super) struct Link {
    pub(super) a: Netns,
    pub(super) b: Netns,
    pub(super) a_mac: [u8; 6],
    pub(super) a_index: u32,
}

impl Link {
    pub(super) fn new() -> Link {
        let a = Netns::new();
        let b = Netns::new();
        let a_mac = [0x02, 0x4c, 0x41, 0x42, 0x00, 0x0a];
        let b_mac = [0x02, 0x4c, 0x41, 0x42, 0x00, 0x0b];
        let b_fd = b.fd.as_raw_fd();
        let a_index = a.block_on(|| async move {
            let handle = rtnetlink_handle();
            handle
                .link()
                .add(LinkVeth::new(A, B).address(a_mac.to_vec()).up().build())
                .execute()
                .await
                .unwrap_or_else(|error| panic!("expected to create the veth pair, saw {error}"));
            handle
                .link()
                .set(
                    LinkUnspec::new_with_index(index_of(B))
                        .setns_by_fd(b_fd)
                        .build(),
                )
                .execute()
                .await
                .unwrap_or_else(|error| panic!("expected to move {B} to host B, saw {error}"));
            index_of(A)
        });
        b.block_on(|| async move {
            rtnetlink_handle()
                .link()
                .set(
                    LinkUnspec::new_with_index(index_of(B))
                        .address(b_mac.to_vec())
                        .up()
                        .build(),
                )
                .execute()
                .await
                .unwrap_or_else(|error| panic!("expected to bring {B} up, saw {error}"));
            wait_until_transmitting(B).await;
        });
        a.block_on(|| wait_until_transmitting(A));
        Link {
            a,
            b,
            a_mac,
            a_index,
        }
    }
}

/// Waits until the kernel has given `iface` its queueing discipline, which
/// it does asynchronously (link watch) once the link has a carrier: until
/// then the device's `noop` discipline silently drops every frame sent.
async fn wait_until_transmitting(iface: &str) {
    let handle = rtnetlink_handle();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut dump = handle.link().get().match_index(index_of(iface)).execute();
        let mut qdisc = None;
        while let Some(link) = dump.try_next().await.expect("a link dump") {
            for attribute in link.attributes {
                if let LinkAttribute::Qdisc(kind) = attribute {
                    qdisc = Some(kind);
                }
            }
        }
        if qdisc.as_deref().is_some_and(|kind| kind != "noop") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected {iface} to get a queueing discipline within 5 s, still {qdisc:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An rtnetlink handle in the calling thread's namespace, its connection
/// driven by the current runtime.
pub(super) fn rtnetlink_handle() -> Handle {
    let (connection, handle, _) = rtnetlink::new_connection().expect("an rtnetlink socket");
    tokio::spawn(connection);
    handle
}

/// The index of `iface` in the calling thread's namespace.
pub(super) fn index_of(iface: &str) -> u32 {
    nix::net::if_::if_nametoindex(iface)
        .unwrap_or_else(|errno| panic!("expected an interface {iface}, saw {errno}"))
}

/// Adds `addr/prefix` to `iface` without duplicate address detection (an
/// IPv6 address is usable at once).
pub(super) async fn add_address(iface: &str, addr: IpAddr, prefix: u8) {
    let handle = rtnetlink_handle();
    let mut request = handle.address().add(index_of(iface), addr, prefix);
    request
        .message_mut()
        .attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    request
        .execute()
        .await
        .unwrap_or_else(|error| panic!("expected to add {addr}/{prefix} to {iface}, saw {error}"));
}

/// Writes a sysctl of the calling thread's namespace, e.g.
/// `net/ipv4/conf/lab-b/arp_accept`.
pub(super) fn sysctl(key: &str, value: &str) {
    std::fs::write(format!("/proc/sys/{key}"), value)
        .unwrap_or_else(|error| panic!("expected to set {key} = {value}, saw {error}"));
}

/// A neighbour entry: its link-layer address and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Neighbour {
    pub(super) lladdr: Vec<u8>,
    pub(super) state: NeighbourState,
}

/// The neighbour entry of `ip` on `iface`, if there is one.
pub(super) async fn neighbour(iface: &str, ip: IpAddr) -> Option<Neighbour> {
    let index = index_of(iface);
    let family = if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    // The dump's stream does not keep the connection alive: the handle must.
    let handle = rtnetlink_handle();
    let mut dump = handle
        .neighbours()
        .get()
        .set_address_family(family)
        .execute();
    while let Some(entry) = dump.try_next().await.expect("a neighbour dump") {
        if entry.header.ifindex != index {
            continue;
        }
        let mut destination = None;
        let mut lladdr = Vec::new();
        for attribute in entry.attributes {
            match attribute {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                    destination = Some(IpAddr::V4(v4))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                    destination = Some(IpAddr::V6(v6))
                }
                NeighbourAttribute::LinkLayerAddress(bytes) => lladdr = bytes,
                _ => {}
            }
        }
        if destination == Some(ip) {
            return Some(Neighbour {
                lladdr,
                state: entry.header.state,
            });
        }
    }
    None
}

/// Adds a STALE neighbour entry `ip` → `mac` on `iface`, as a client that
/// talked to the VIP before would have.
pub(super) async fn add_stale_neighbour(iface: &str, ip: IpAddr, mac: [u8; 6]) {
    rtnetlink_handle()
        .neighbours()
        .add(index_of(iface), ip)
        .link_layer_address(&mac)
        .state(NeighbourState::Stale)
        .execute()
        .await
        .unwrap_or_else(|error| panic!("expected to add a neighbour {ip} on {iface}, saw {error}"));
}

/// Polls the neighbour entry of `ip` on `iface` until `done` accepts it or
/// `timeout` passes; returns the last entry seen.
pub(super) async fn wait_for_neighbour(
    iface: &str,
    ip: IpAddr,
    timeout: Duration,
    done: impl Fn(&Option<Neighbour>) -> bool,
) -> Option<Neighbour> {
    let deadline = Instant::now() + timeout;
    loop {
        let entry = neighbour(iface, ip).await;
        if done(&entry) || Instant::now() >= deadline {
            return entry;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A capture of the frames an interface receives, through an `AF_PACKET`
/// socket opened in the interface's namespace (it keeps working from any
/// thread).
pub(super) struct Capture {
    fd: OwnedFd,
}

impl Capture {
    /// Starts capturing on `iface` of the calling thread's namespace.
    pub(super) fn open(iface: &str) -> Capture {
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket(2) takes no pointers.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(all),
            )
        };
        assert!(
            fd >= 0,
            "expected a capture socket, saw {}",
            io::Error::last_os_error()
        );
        // SAFETY: `fd` is a fresh, valid descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: zeroed bytes are a valid `sockaddr_ll`.
        let mut addr: libc::sockaddr_ll = unsafe { zeroed() };
        addr.sll_family = libc::AF_PACKET as libc::c_ushort;
        addr.sll_protocol = all;
        addr.sll_ifindex = index_of(iface) as libc::c_int;
        // SAFETY: `addr` is a valid `sockaddr_ll` of the length given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert!(
            rc == 0,
            "expected to bind the capture to {iface}, saw {}",
            io::Error::last_os_error()
        );
        Capture { fd }
    }

    /// The received frames that `keep` accepts, in order, until `count` of
    /// them arrived or `timeout` passed.
    pub(super) fn frames(
        &self,
        count: usize,
        timeout: Duration,
        keep: impl Fn(&[u8]) -> bool,
    ) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut kept = Vec::new();
        let mut buf = vec![0u8; 2048];
        while kept.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut poll = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `poll` is one valid, writable `pollfd`.
            let ready = unsafe { libc::poll(&mut poll, 1, left.as_millis().max(1) as libc::c_int) };
            if ready <= 0 {
                continue;
            }
            // SAFETY: zeroed bytes are a valid `sockaddr_ll`.
            let mut from: libc::sockaddr_ll = unsafe { zeroed() };
            let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` and `from` are valid and writable for the lengths
            // given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut from).cast(),
                    &mut len,
                )
            };
            assert!(
                n >= 0,
                "expected a frame, saw {}",
                io::Error::last_os_error()
            );
            // The interface's own transmissions (its MLD reports, router
            // solicitations) are not what the peer sent.
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let frame = &buf[..n as usize];
            if keep(frame) {
                kept.push(frame.to_vec());
            }
        }
        kept
    }
}
