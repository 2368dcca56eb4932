//! The ping witness: ICMP echo through raw sockets (IPv4 and IPv6) to one
//! or more addresses; the witness is up if any of them answers in time.
//!
//! Every call picks a random identifier and numbers its rounds of echo
//! requests; a reply counts only if it is an echo reply with that
//! identifier, a sequence number this call sent, and comes from an address
//! this call pinged. A raw socket sees every ICMP packet of the host (other
//! pingers' replies, our own requests on loopback), so this matching is
//! what keeps one call from being fooled by another's traffic.

use std::{
    collections::HashSet,
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use tokio::{
    io::{unix::AsyncFd, Interest},
    time::Instant,
};
use tracing::{debug, warn};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// Says whose echo this is to anyone capturing traffic.
const PAYLOAD: &[u8; 16] = b"halo witness pin";

/// Whether any of `addrs` answers an echo request within `timeout`; a round
/// of requests goes out every fifth of the timeout.
pub async fn ping_any(addrs: &[IpAddr], timeout: Duration) -> bool {
    ping_any_every(addrs, timeout / 5, timeout).await
}

/// Whether any of `addrs` answers within `timeout`, sending a round of echo
/// requests every `interval` (a lost packet is retried, not fatal).
pub async fn ping_any_every(addrs: &[IpAddr], interval: Duration, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let interval = interval.max(Duration::from_millis(1));
    // An IPv4-mapped IPv6 address is pinged, and answers, over IPv4.
    let addrs: Vec<IpAddr> = addrs.iter().map(IpAddr::to_canonical).collect();
    let open = |v6: bool| {
        if !addrs.iter().any(|a| a.is_ipv6() == v6) {
            return None;
        }
        IcmpSocket::open(v6)
            .inspect_err(|error| {
                warn!(
                    %error,
                    ipv6 = v6,
                    "cannot open a raw ICMP socket: the ping witness needs root or CAP_NET_RAW"
                );
            })
            .ok()
    };
    let (v4, v6) = (open(false), open(true));
    if v4.is_none() && v6.is_none() {
        return false;
    }
    let mut id = [0u8; 2];
    if let Err(error) = getrandom::fill(&mut id) {
        warn!(%error, "no randomness for the ping identifier; using the process id");
        id = (std::process::id() as u16).to_be_bytes();
    }
    let mut outstanding = Outstanding::new(u16::from_be_bytes(id));
    let mut next_round = Instant::now();
    let mut seq = 0u16;
    let (mut buf4, mut buf6) = ([0u8; 1500], [0u8; 1500]);
    loop {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        if now >= next_round {
            for &addr in &addrs {
                let socket = if addr.is_ipv6() { &v6 } else { &v4 };
                let Some(socket) = socket else { continue };
                let packet = echo_request(outstanding.id, seq, addr.is_ipv6());
                match socket.send_to(&packet, addr) {
                    Ok(()) => outstanding.sent(addr, seq),
                    Err(error) => debug!(%error, %addr, "echo request not sent"),
                }
            }
            seq = seq.wrapping_add(1);
            next_round += interval;
        }
        let wake = next_round.min(deadline);
        let received = tokio::select! {
            r = recv_reply(&v4, &mut buf4, parse_echo_reply_v4) => r,
            r = recv_reply(&v6, &mut buf6, parse_echo_reply_v6) => r,
            () = tokio::time::sleep_until(wake) => continue,
        };
        match received {
            Ok((Some(reply), from)) if outstanding.matches(from, reply) => return true,
            Ok(_) => {}
            Err(error) => debug!(%error, "echo reply not received"),
        }
    }
}

/// The next packet on `socket` (never, without one), parsed as an echo reply.
async fn recv_reply(
    socket: &Option<IcmpSocket>,
    buf: &mut [u8],
    parse: fn(&[u8]) -> Option<EchoReply>,
) -> io::Result<(Option<EchoReply>, IpAddr)> {
    let Some(socket) = socket else {
        return std::future::pending().await;
    };
    let (len, from) = socket.recv_from(buf).await?;
    Ok((parse(&buf[..len]), from))
}

/// An echo reply's identifying fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EchoReply {
    id: u16,
    seq: u16,
}

/// The echo requests one call sent.
#[derive(Debug)]
struct Outstanding {
    id: u16,
    sent: HashSet<(IpAddr, u16)>,
}

impl Outstanding {
    fn new(id: u16) -> Self {
        Outstanding {
            id,
            sent: HashSet::new(),
        }
    }

    fn sent(&mut self, to: IpAddr, seq: u16) {
        self.sent.insert((to, seq));
    }

    /// Whether `reply`, received from `from`, answers one of our requests.
    fn matches(&self, from: IpAddr, reply: EchoReply) -> bool {
        reply.id == self.id && self.sent.contains(&(from, reply.seq))
    }
}

/// An ICMP (or ICMPv6) echo request. The ICMPv6 checksum covers a
/// pseudo-header the kernel knows and we do not: it fills it in.
fn echo_request(id: u16, seq: u16, v6: bool) -> Vec<u8> {
    let kind = if v6 {
        ICMPV6_ECHO_REQUEST
    } else {
        ICMP_ECHO_REQUEST
    };
    let mut packet = vec![kind, 0, 0, 0];
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(PAYLOAD);
    if !v6 {
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// The Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo reply from what an IPv4 raw socket receives (IP header first).
fn parse_echo_reply_v4(packet: &[u8]) -> Option<EchoReply> {
    let first = *packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(first & 0x0f) * 4;
    if header_len < 20 || packet.get(9) != Some(&1) {
        return None;
    }
    let icmp = packet.get(header_len..)?;
    if icmp.len() < 8 || icmp[0] != ICMP_ECHO_REPLY || icmp[1] != 0 || checksum(icmp) != 0 {
        return None;
    }
    Some(EchoReply {
        id: u16::from_be_bytes([icmp[4], icmp[5]]),
        seq: u16::from_be_bytes([icmp[6], icmp[7]]),
    })
}

/// An echo reply from what an ICMPv6 raw socket receives (no IP header; the
/// kernel has checked the checksum).
fn parse_echo_reply_v6(icmp: &[u8]) -> Option<EchoReply> {
    if icmp.len() < 8 || icmp[0] != ICMPV6_ECHO_REPLY || icmp[1] != 0 {
        return None;
    }
    Some(EchoReply {
        id: u16::from_be_bytes([icmp[4], icmp[5]]),
        seq: u16::from_be_bytes([icmp[6], icmp[7]]),
    })
}

/// A non-blocking raw ICMP socket registered with tokio.
struct IcmpSocket {
    fd: AsyncFd<OwnedFd>,
}

impl IcmpSocket {
    fn open(v6: bool) -> io::Result<Self> {
        let (domain, protocol) = if v6 {
            (libc::AF_INET6, libc::IPPROTO_ICMPV6)
        } else {
            (libc::AF_INET, libc::IPPROTO_ICMP)
        };
        let kind = libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        // SAFETY: socket(2) takes no pointers; the descriptor it returns is
        // owned by nothing else.
        let fd = unsafe { libc::socket(domain, kind, protocol) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh, valid descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the `OwnedFd` stays open and the same for the AsyncFd's
        // whole life, which owns it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(IcmpSocket { fd })
    }

    /// Sends at once; a full send buffer drops this round's request (the
    /// next round retries).
    fn send_to(&self, packet: &[u8], to: IpAddr) -> io::Result<()> {
        let (addr, len) = sockaddr_of(to);
        // SAFETY: `packet` and `addr` are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const addr).cast(),
                len,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, IpAddr)> {
        loop {
            let mut guard = self.fd.readable().await?;
            let received = guard.try_io(|fd| {
                // SAFETY: zeroed bytes are a valid `sockaddr_storage`.
                let mut addr: libc::sockaddr_storage = unsafe { zeroed() };
                let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                // SAFETY: `buf` and `addr` are valid and writable for the
                // lengths given, and `len` says how much of `addr` is.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&raw mut addr).cast(),
                        &mut len,
                    )
                };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                let from = ip_of(&addr).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "unknown address family")
                })?;
                Ok((n as usize, from))
            });
            if let Ok(result) = received {
                return result;
            }
        }
    }
}

fn sockaddr_of(ip: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: zeroed bytes are a valid `sockaddr_storage`.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match ip {
        IpAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from(v4).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `sockaddr_storage` is larger than and aligned for
            // `sockaddr_in`.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sin) };
            size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above, for `sockaddr_in6`.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in6>().write(sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn ip_of(storage: &libc::sockaddr_storage) -> Option<IpAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a `sockaddr_in`.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                sin.sin_addr.s_addr,
            ))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a `sockaddr_in6`.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const LOCAL6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

    /// What an IPv4 raw socket would receive: a 20-byte header, then `icmp`.
    fn ipv4_packet(icmp: &[u8]) -> Vec<u8> {
        let mut packet = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1,
        ];
        packet.extend_from_slice(icmp);
        packet
    }

    /// The reply a host would send to `request`.
    fn reply_to_v4(request: &[u8]) -> Vec<u8> {
        let mut reply = request.to_vec();
        reply[0] = ICMP_ECHO_REPLY;
        reply[2..4].copy_from_slice(&[0, 0]);
        let sum = checksum(&reply);
        reply[2..4].copy_from_slice(&sum.to_be_bytes());
        reply
    }

    #[test]
    fn checksum_matches_rfc_1071_example() {
        // RFC 1071 §3's example words sum to 0xddf2 before complementing.
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&bytes), !0xddf2);
        let request = echo_request(0x1234, 7, false);
        assert_eq!(
            checksum(&request),
            0,
            "a packet with its checksum sums to 0"
        );
    }

    #[test]
    fn an_echo_request_carries_type_identifier_and_sequence() {
        let v4 = echo_request(0xabcd, 0x0102, false);
        assert_eq!(&v4[..2], &[ICMP_ECHO_REQUEST, 0]);
        assert_eq!(&v4[4..8], &[0xab, 0xcd, 0x01, 0x02]);
        let v6 = echo_request(0xabcd, 0x0102, true);
        assert_eq!(&v6[..4], &[ICMPV6_ECHO_REQUEST, 0, 0, 0]);
    }

    #[test]
    fn a_reply_is_parsed_past_the_ip_header_and_its_options() {
        let reply = reply_to_v4(&echo_request(9, 3, false));
        assert_eq!(
            parse_echo_reply_v4(&ipv4_packet(&reply)),
            Some(EchoReply { id: 9, seq: 3 })
        );
        let mut with_options = ipv4_packet(&[0; 4]);
        with_options[0] = 0x46;
        with_options.extend_from_slice(&reply);
        assert_eq!(
            parse_echo_reply_v4(&with_options),
            Some(EchoReply { id: 9, seq: 3 })
        );
        let mut v6 = echo_request(9, 3, true);
        v6[0] = ICMPV6_ECHO_REPLY;
        assert_eq!(parse_echo_reply_v6(&v6), Some(EchoReply { id: 9, seq: 3 }));
    }

    #[test]
    fn requests_corrupt_replies_and_other_packets_are_not_replies() {
        let request = echo_request(9, 3, false);
        assert_eq!(
            parse_echo_reply_v4(&ipv4_packet(&request)),
            None,
            "our own request on loopback"
        );
        let mut corrupt = reply_to_v4(&request);
        corrupt[8] ^= 1;
        assert_eq!(
            parse_echo_reply_v4(&ipv4_packet(&corrupt)),
            None,
            "bad checksum"
        );
        let mut unreachable = reply_to_v4(&request);
        unreachable[0] = 3;
        assert_eq!(parse_echo_reply_v4(&ipv4_packet(&unreachable)), None);
        let reply = ipv4_packet(&reply_to_v4(&request));
        for len in 0..reply.len() - PAYLOAD.len() {
            assert_eq!(parse_echo_reply_v4(&reply[..len]), None, "{len} bytes");
        }
        assert_eq!(parse_echo_reply_v6(&echo_request(9, 3, true)), None);
        assert_eq!(parse_echo_reply_v6(&[ICMPV6_ECHO_REPLY, 0, 0]), None);
    }

    #[test]
    fn only_our_identifier_sequence_and_addresses_match() {
        let mut outstanding = Outstanding::new(77);
        outstanding.sent(LOCAL4, 0);
        outstanding.sent(LOCAL4, 1);
        let ours = EchoReply { id: 77, seq: 1 };
        assert!(outstanding.matches(LOCAL4, ours));
        assert!(
            !outstanding.matches(LOCAL4, EchoReply { id: 78, seq: 1 }),
            "another pinger's identifier"
        );
        assert!(
            !outstanding.matches(LOCAL4, EchoReply { id: 77, seq: 2 }),
            "a sequence not sent"
        );
        assert!(
            !outstanding.matches("127.0.0.2".parse().unwrap(), ours),
            "an address not pinged"
        );
        assert!(!outstanding.matches(LOCAL6, ours));
    }

    #[tokio::test]
    async fn loopback_answers_on_ipv4_and_ipv6() {
        assert!(
            ping_any(&[LOCAL4], Duration::from_secs(2)).await,
            "127.0.0.1 should answer"
        );
        assert!(
            ping_any(&[LOCAL6], Duration::from_secs(2)).await,
            "::1 should answer"
        );
        assert!(
            !ping_any(&[], Duration::from_millis(50)).await,
            "no address, no witness"
        );
    }

    /// Runs `test` on a thread of its own network namespace, whose loopback
    /// is up but ignores echo requests on the families in `silent`. The
    /// namespace goes away with the thread.
    fn in_silent_namespace<T: Send + 'static>(
        silent: &'static [&'static str],
        test: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect(
                "this test needs root to create a network namespace (unshare CLONE_NEWNET)",
            );
            loopback_up();
            for sysctl in silent {
                std::fs::write(sysctl, "1")
                    .unwrap_or_else(|e| panic!("cannot write {sysctl}: {e}"));
            }
            test()
        })
        .join()
        .expect("the namespace thread panicked")
    }

    fn loopback_up() {
        // SAFETY: a fresh datagram socket; `req` is a valid, zero-padded
        // ifreq naming "lo" for both ioctls.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(fd);
            let mut req: libc::ifreq = zeroed();
            for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
                *dst = *src as libc::c_char;
            }
            assert_eq!(libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req), 0);
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            assert_eq!(
                libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &req),
                0,
                "cannot bring lo up: {}",
                io::Error::last_os_error()
            );
        }
    }

    fn ping_in_this_thread(addrs: &'static [IpAddr], timeout: Duration) -> (bool, Duration) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let started = Instant::now();
            let up = ping_any(addrs, timeout).await;
            (up, started.elapsed())
        })
    }

    #[test]
    fn an_address_that_never_answers_is_down_after_the_timeout() {
        let silent = &[
            "/proc/sys/net/ipv4/icmp_echo_ignore_all",
            "/proc/sys/net/ipv6/icmp/echo_ignore_all",
        ];
        let timeout = Duration::from_millis(400);
        let (up, took) = in_silent_namespace(silent, move || {
            ping_in_this_thread(&[LOCAL4, LOCAL6], timeout)
        });
        assert!(
            !up,
            "nothing answers in the silent namespace, yet ping_any said up"
        );
        assert!(
            took >= timeout,
            "gave up after {took:?}, before the {timeout:?} timeout"
        );
        assert!(took < timeout * 3, "gave up only after {took:?}");
    }

    #[test]
    fn one_address_answering_is_enough() {
        let silent = &["/proc/sys/net/ipv4/icmp_echo_ignore_all"];
        let timeout = Duration::from_secs(2);
        let (up, _) = in_silent_namespace(silent, move || {
            ping_in_this_thread(&[LOCAL4, LOCAL6], timeout)
        });
        assert!(
            up,
            "::1 answers in this namespace, 127.0.0.1 does not: the witness is up"
        );
        let (up, _) =
            in_silent_namespace(silent, move || ping_in_this_thread(&[LOCAL4], timeout / 4));
        assert!(!up, "127.0.0.1 alone is silent in this namespace");
    }
}
