//! Heartbeats that a third host forges, replays, garbles or sends from
//! another cluster are dropped and counted by reason, and the daemon goes on
//! hearing its real peer.
//!
//! "mallory" is a lab host outside the cluster that can reach node a's
//! heartbeat port. It knows the cluster secret for the cases that need a
//! correctly signed frame (an insider's replay), and does not for the
//! forgeries.

use std::{
    collections::BTreeMap,
    ffi::CString,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use halo::{
    api::NodeStatus,
    cluster::{
        frame::{cluster_id, HeartbeatFrame, ModuleReport},
        keys::{ClusterSecret, MacKey},
    },
};
use halo_tests::{
    cluster::{peer_up, Cluster, Timing},
    lab::LabBuilder,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// `[[cluster.network]] port`'s default, which the lab cluster keeps.
const HEARTBEAT_PORT: u16 = 4800;
/// How long a converging cluster, or a counter reaching the API (published
/// once a second), may take: a hang-catcher, not a measurement.
const CONVERGE: Duration = Duration::from_secs(10);
/// Where the MAC sits: the last 32 bytes of a frame.
const TAG_LEN: usize = 32;
/// Offset of the sequence number in the frame header.
const SEQ_AT: usize = 24;

#[test]
fn forged_replayed_and_garbled_heartbeats_are_counted_by_reason_and_the_peer_stays_up() {
    let lab = LabBuilder::new("forged")
        .hosts(&["a", "b", "mallory"])
        .build()
        .unwrap();
    let mut cluster = Cluster::configure(&lab, &["a", "b"], 1, Timing::default(), "").unwrap();
    cluster.start_all().unwrap();
    cluster
        .wait_status("a", CONVERGE, "b up on a", |s| peer_up(s, "b"))
        .unwrap();

    let key = ClusterSecret::load(&lab.host("a").outside_path("/etc/halo/cluster.key"))
        .unwrap()
        .heartbeat_key();
    let wrong_key = ClusterSecret::from_bytes(&[0x42; 32]).heartbeat_key();
    let lab_cluster = cluster_id("lab");
    let b_epoch = cluster.status("b").unwrap().epoch;
    let b_ip = lab.host("b").ipv4();

    // One of b's genuine frames, taken off a's interface: replaying it as is
    // must be refused, since a accepted it (and anything after it) already.
    let genuine = lab
        .host("a")
        .enter(|| capture_udp_payload("eth0", b_ip, HEARTBEAT_PORT, CONVERGE))
        .unwrap();
    let decoded = HeartbeatFrame::decode(&genuine, &key, lab_cluster)
        .unwrap_or_else(|e| panic!("expected a frame of b's signed with the lab secret, saw {e}"));
    assert_eq!(
        (decoded.sender.as_str(), decoded.epoch),
        ("b", b_epoch),
        "expected the captured frame to be b's of its current epoch"
    );

    let signed = |frame: HeartbeatFrame| frame.encode(&key).unwrap();
    let b_frame = |epoch, seq| HeartbeatFrame {
        network: 0,
        cluster: lab_cluster,
        sender: "b".into(),
        epoch,
        seq,
        modules: Vec::new(),
        powers: Default::default(),
    };
    let attack: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "forged",
            vec![
                // A newer epoch would take b's place if it were believed.
                b_frame(b_epoch + 1, 1).encode(&wrong_key).unwrap(),
                b_frame(b_epoch + 1, 2).encode(&wrong_key).unwrap(),
                b_frame(b_epoch + 1, 3).encode(&wrong_key).unwrap(),
                // The genuine frame pushed forward: its MAC no longer fits.
                with_byte(&genuine, SEQ_AT, genuine[SEQ_AT].wrapping_add(1)),
                // A signed frame cut by one byte, still longer than the
                // smallest heartbeat: the MAC check is what refuses it.
                cut_by_one(&signed(HeartbeatFrame {
                    modules: vec![ModuleReport {
                        name: "web".into(),
                        state: 0,
                        phase: 0,
                        flags: 0,
                        generation: 0,
                        following: 0,
                    }],
                    ..b_frame(b_epoch, 3)
                })),
            ],
        ),
        (
            "replayed",
            vec![
                genuine.clone(),
                genuine.clone(),
                signed(b_frame(b_epoch - 1, u64::MAX)),
                signed(b_frame(b_epoch, 1)),
            ],
        ),
        (
            "malformed",
            vec![
                b"hello".to_vec(),
                // Truncated below the smallest heartbeat.
                genuine[..40].to_vec(),
                // Longer than any frame may be.
                vec![0x48; 1401],
                // Correctly signed, but the reserved byte is set.
                resigned(&with_byte(&signed(b_frame(b_epoch, 2)), 7, 1), &key),
            ],
        ),
        ("version", vec![with_byte(&genuine, 4, 3)]),
        (
            "not_heartbeat",
            vec![vec![0xab; 100], with_byte(&genuine, 5, 9)],
        ),
        (
            "other_cluster",
            vec![HeartbeatFrame {
                cluster: cluster_id("another-lab"),
                ..b_frame(b_epoch + 1, 1)
            }
            .encode(&key)
            .unwrap()],
        ),
        (
            "unknown_sender",
            vec![signed(HeartbeatFrame {
                sender: "mallory".into(),
                ..b_frame(b_epoch, 1)
            })],
        ),
        (
            "wrong_network",
            vec![signed(HeartbeatFrame {
                network: 1,
                ..b_frame(b_epoch, 1)
            })],
        ),
    ];

    let before = cluster.status("a").unwrap();
    let log_before = cluster.log("a").unwrap().len();
    let mut expected = before.heartbeat.rejected.clone();
    for (reason, datagrams) in &attack {
        *expected.entry((*reason).to_owned()).or_default() += datagrams.len() as u64;
    }
    let target = SocketAddr::new(IpAddr::V4(lab.host("a").ipv4()), HEARTBEAT_PORT);
    let from = lab.host("mallory").ipv4();
    lab.host("mallory")
        .enter(|| {
            let socket = UdpSocket::bind((from, 0)).context("bind a UDP socket")?;
            for datagram in attack.iter().flat_map(|(_, datagrams)| datagrams) {
                socket
                    .send_to(datagram, target)
                    .with_context(|| format!("send {} bytes to {target}", datagram.len()))?;
            }
            Ok(())
        })
        .unwrap();

    let expected_total: u64 = expected.values().sum();
    let after = cluster
        .wait_status(
            "a",
            CONVERGE,
            "every datagram of mallory's counted as rejected",
            |s| total(&s.heartbeat.rejected) >= expected_total,
        )
        .unwrap_or_else(|error| {
            panic!("expected the rejections {expected:?}, some datagrams were not: {error:#}")
        });
    assert_eq!(
        after.heartbeat.rejected, expected,
        "expected each datagram counted once under its reason (before the attack: {:?})",
        before.heartbeat.rejected
    );

    // b's genuine frames still get through, none of them refused: a full
    // second of them, twice the timeout, with b up all along.
    let received = after.heartbeat.received;
    let later = cluster
        .wait_status("a", CONVERGE, "ten more frames received", |s| {
            s.heartbeat.received >= received + 10
        })
        .unwrap();
    assert_eq!(
        later.heartbeat.rejected, expected,
        "expected b's genuine frames after the attack to be accepted, saw more rejections"
    );
    assert!(
        peer_up(&later, "b"),
        "expected b up on a after the attack, saw {later:#?}"
    );
    let daemon = cluster.daemon("a").unwrap().try_wait().unwrap();
    assert_eq!(daemon, None, "expected a's daemon still running, it exited");
    assert_b_unhurt(&cluster.status("b").unwrap(), b_epoch);
    let log = cluster.log("a").unwrap();
    let since_attack = &log[log_before..];
    assert!(
        !since_attack.contains("peer down") && !since_attack.contains("network lost"),
        "expected a never to lose b during the attack, its log says otherwise:\n{since_attack}"
    );
}

/// b still runs the epoch it started with and still hears a.
fn assert_b_unhurt(status: &NodeStatus, epoch: u64) {
    assert_eq!(status.epoch, epoch, "expected b's epoch unchanged");
    assert!(
        peer_up(status, "a"),
        "expected b to hear a, saw {status:#?}"
    );
}

fn total(counters: &BTreeMap<String, u64>) -> u64 {
    counters.values().sum()
}

/// `bytes` with the byte at `at` replaced by `value`.
fn with_byte(bytes: &[u8], at: usize, value: u8) -> Vec<u8> {
    let mut changed = bytes.to_vec();
    changed[at] = value;
    changed
}

/// `frame` without its last byte.
fn cut_by_one(frame: &[u8]) -> Vec<u8> {
    frame[..frame.len() - 1].to_vec()
}

/// `frame` (whose body was altered after signing) signed again with `key`.
fn resigned(frame: &[u8], key: &MacKey) -> Vec<u8> {
    let mut body = frame[..frame.len() - TAG_LEN].to_vec();
    let tag = key.tag(&body);
    body.extend_from_slice(&tag);
    body
}

/// The payload of the first IPv4 UDP datagram from `source` to port `port`
/// that arrives on `iface` of the calling thread's network namespace within
/// `timeout`, copied by an `AF_PACKET` socket on the way in.
fn capture_udp_payload(
    iface: &str,
    source: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let socket = PacketSocket::open(iface)?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65_536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(
            !left.is_zero(),
            "no UDP datagram from {source} to port {port} arrived on {iface} within {timeout:?}"
        );
        let wait = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(socket.fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, wait) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(errno) => return Err(errno).context("poll a packet socket"),
        }
        let len = socket.recv(&mut buf)?;
        if let Some(payload) = udp_payload(&buf[..len], source, port) {
            return Ok(payload.to_vec());
        }
    }
}

/// The UDP payload of `packet` (an IPv4 packet) if it comes from `source`
/// and goes to port `port`.
fn udp_payload(packet: &[u8], source: Ipv4Addr, port: u16) -> Option<&[u8]> {
    let header_len = usize::from(packet.first()? & 0x0f) * 4;
    let is_udp = packet.first()? >> 4 == 4 && *packet.get(9)? == 17;
    let from = Ipv4Addr::from(<[u8; 4]>::try_from(packet.get(12..16)?).ok()?);
    let udp = packet.get(header_len..)?;
    let dport = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    let udp_len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    (is_udp && from == source && dport == port)
        .then(|| udp.get(8..udp_len))
        .flatten()
}

/// An `AF_PACKET` datagram socket that receives every IPv4 packet of one
/// interface, without its Ethernet header.
struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    fn open(iface: &str) -> Result<Self> {
        let name = CString::new(iface)?;
        // SAFETY: if_nametoindex reads a NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            bail!("no interface {iface}: {}", std::io::Error::last_os_error());
        }
        let protocol = (libc::ETH_P_IP as u16).to_be();
        // SAFETY: socket(2) with constant arguments returns a new fd or -1.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                i32::from(protocol),
            )
        };
        if raw < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor, and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data, for which all zeroes is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = i32::try_from(ifindex).context("ifindex out of range")?;
        // SAFETY: `addr` is a valid sockaddr_ll of the length given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            bail!(
                "bind a packet socket to {iface}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(PacketSocket { fd })
    }

    /// Receives one waiting packet into `buf`; its length.
    fn recv(&self, buf: &mut [u8]) -> Result<usize> {
        // SAFETY: recv writes at most buf.len() bytes into buf.
        let len = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        usize::try_from(len)
            .map_err(|_| std::io::Error::last_os_error())
            .context("receive from a packet socket")
    }
}
