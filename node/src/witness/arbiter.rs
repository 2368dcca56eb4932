//! The arbiter witness: `halo witness`, the UDP server that keeps one
//! [`LeaseTable`] per cluster, and [`ArbiterClient`], the node's side.
//!
//! The server's clock is `tokio::time::Instant`, read when a request is
//! handled (never before it arrived, which the lease argument needs: see
//! [`lease`](super::lease)). It answers only authenticated, fresh requests;
//! anything else is counted per reason and dropped without a reply.

use std::{
    collections::HashMap,
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Duration,
};

use anyhow::Context as _;
use tokio::{net::UdpSocket, time::Instant};
use tracing::{debug, info, warn};

use super::{
    lease::{Claim, Grant, LeasePolicy, LeaseTable},
    protocol::{LeaseAnswer, LeaseRequest, Nonce, Verdict, WireError, MAX_DATAGRAM_LEN},
};
use crate::cluster::{
    keys::{KeyUsed, MacKey},
    replay::ReplayGuard,
};

/// Counters of the witness, by outcome.
#[derive(Debug, Default)]
pub struct ArbiterStats {
    pub granted: AtomicU64,
    pub refused: AtomicU64,
    /// Requests signed with the accepted secret (`--accept-secret`), not
    /// the signing one: a node that has not switched secrets.
    pub accepted_secret: AtomicU64,
    /// Dropped requests by reason (`malformed`, `forged`, `replayed`, …).
    rejected: Mutex<HashMap<&'static str, u64>>,
}

impl ArbiterStats {
    fn reject(&self, reason: &'static str) {
        let mut rejected = self.rejected.lock().expect("stats lock");
        *rejected.entry(reason).or_default() += 1;
    }

    /// A copy of the per-reason drop counters.
    pub fn rejected(&self) -> HashMap<&'static str, u64> {
        self.rejected.lock().expect("stats lock").clone()
    }
}

/// A bound `halo witness` server, not yet serving.
pub struct Arbiter {
    socket: UdpSocket,
    /// Checks requests and signs answers; a reload (SIGHUP) replaces it.
    key: Arc<Mutex<MacKey>>,
    policy: LeasePolicy,
    stats: Arc<ArbiterStats>,
}

/// Binds `listen` and serves leases until the task is dropped.
pub async fn serve(listen: SocketAddr, key: MacKey, policy: LeasePolicy) -> anyhow::Result<()> {
    Arbiter::bind(listen, key, policy).await?.run().await
}

impl Arbiter {
    /// Binds the server's UDP socket.
    pub async fn bind(
        listen: SocketAddr,
        key: MacKey,
        policy: LeasePolicy,
    ) -> anyhow::Result<Self> {
        let socket = UdpSocket::bind(listen)
            .await
            .with_context(|| format!("cannot bind the witness socket on {listen}"))?;
        Ok(Arbiter {
            socket,
            key: Arc::new(Mutex::new(key)),
            policy,
            stats: Arc::default(),
        })
    }

    /// The address the server listens on (tests bind port 0).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.socket
            .local_addr()
            .context("cannot read the witness socket's address")
    }

    /// The server's key, to replace while it runs (a reload of the secrets).
    pub fn key(&self) -> Arc<Mutex<MacKey>> {
        Arc::clone(&self.key)
    }

    /// The server's counters, to read while it runs.
    pub fn stats(&self) -> Arc<ArbiterStats> {
        Arc::clone(&self.stats)
    }

    /// Serves requests; returns only if the socket fails for good.
    pub async fn run(self) -> anyhow::Result<()> {
        let origin = Instant::now();
        let listen = self.local_addr()?;
        info!(
            %listen,
            quiet_ms = self.policy.startup_quiet().as_millis() as u64,
            "witness serving; every lease refused during the start-up quiet period"
        );
        let mut leases = Leases {
            policy: self.policy,
            tables: HashMap::new(),
            replay: ReplayGuard::default(),
            stats: &self.stats,
        };
        // One byte more than the longest message, so a longer one is seen.
        let mut buf = [0u8; MAX_DATAGRAM_LEN + 1];
        let mut failures = 0u32;
        loop {
            let (len, from) = match self.socket.recv_from(&mut buf).await {
                Ok(received) => {
                    failures = 0;
                    received
                }
                Err(error) => {
                    failures += 1;
                    if failures >= 100 {
                        return Err(error).context("the witness socket keeps failing");
                    }
                    warn!(%error, "witness receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let key = self.key.lock().expect("key lock").clone();
            let (request, used) = match LeaseRequest::decode_keyed(&buf[..len], &key) {
                Ok(decoded) => decoded,
                Err(error) => {
                    self.stats.reject(error.reason());
                    debug!(%error, %from, reason = error.reason(), "witness request dropped");
                    continue;
                }
            };
            let Some(answer) = leases.decide(&request, origin.elapsed()) else {
                continue;
            };
            if used == KeyUsed::Accepted {
                self.stats.accepted_secret.fetch_add(1, Ordering::Relaxed);
            }
            // Answered under the key the request came with: a node that
            // has not switched secrets yet (or any more) can check it.
            match answer.encode(&key.only(used)) {
                Ok(bytes) => {
                    if let Err(error) = self.socket.send_to(&bytes, from).await {
                        debug!(%error, %from, "witness reply not sent");
                    }
                }
                Err(error) => {
                    warn!(%error, module = %request.module, "cannot encode a witness reply")
                }
            }
        }
    }
}

/// The server's state, apart from its socket.
struct Leases<'a> {
    policy: LeasePolicy,
    tables: HashMap<u64, LeaseTable>,
    replay: ReplayGuard,
    stats: &'a ArbiterStats,
}

impl Leases<'_> {
    /// The answer to an authenticated request handled at `now` (since the
    /// server started), or `None` for a replay.
    fn decide(&mut self, request: &LeaseRequest, now: Duration) -> Option<LeaseAnswer> {
        let LeaseRequest {
            cluster,
            module,
            node,
            ..
        } = request;
        // Per module: a node's modules ask concurrently and may overtake
        // each other, one module's requests never do.
        let sender = format!("{cluster:016x}/{node}/{module}");
        if let Err(error) = self.replay.check(&sender, 0, request.epoch, request.seq) {
            self.stats.reject("replayed");
            debug!(%error, module = %module, node = %node, "witness request replay dropped");
            return None;
        }
        let table = self
            .tables
            .entry(*cluster)
            .or_insert_with(|| LeaseTable::new(self.policy, Duration::ZERO));
        let claim = Claim {
            generation: request.generation,
            forced: request.forced,
        };
        let verdict = match table.request(now, module, node, request.duration, claim) {
            Grant::Granted {
                duration,
                grace,
                renewed,
                generation,
                ..
            } => {
                self.stats.granted.fetch_add(1, Ordering::Relaxed);
                let duration_ms = duration.as_millis() as u64;
                if request.forced && generation > request.generation {
                    warn!(
                        module = %module,
                        node = %node,
                        generation = request.generation,
                        overridden = generation,
                        "lease granted to a forced node with older data than granted before"
                    );
                }
                if renewed {
                    debug!(module = %module, node = %node, duration_ms, "lease renewed");
                } else {
                    info!(
                        module = %module,
                        node = %node,
                        duration_ms,
                        grace_ms = grace.as_millis() as u64,
                        generation = request.generation,
                        "lease granted"
                    );
                }
                Verdict::Granted {
                    duration,
                    grace,
                    generation,
                }
            }
            Grant::Held { holder, free_at } => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                let remaining = free_at - now;
                info!(
                    module = %module,
                    node = %node,
                    holder = %holder,
                    free_in_ms = remaining.as_millis() as u64,
                    "lease refused: held by another node"
                );
                Verdict::Held { holder, remaining }
            }
            Grant::Starting { until } => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                let remaining = until - now;
                info!(
                    module = %module,
                    node = %node,
                    free_in_ms = remaining.as_millis() as u64,
                    "lease refused: witness starting"
                );
                Verdict::Starting { remaining }
            }
            Grant::Stale { generation } => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                info!(
                    module = %module,
                    node = %node,
                    generation = request.generation,
                    newer = generation,
                    "lease refused: the requester's data is older than granted before"
                );
                Verdict::Stale { generation }
            }
        };
        Some(LeaseAnswer {
            cluster: *cluster,
            nonce: request.nonce,
            module: module.clone(),
            verdict,
        })
    }
}

/// Why a lease request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ArbiterError {
    #[error("no answer from the witness {witness} within {timeout:?}")]
    Timeout {
        witness: SocketAddr,
        timeout: Duration,
    },
    #[error("cannot {action} the witness {witness}")]
    Io {
        action: &'static str,
        witness: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot build the lease request")]
    Encode(#[source] WireError),
    #[error("cannot gather randomness for a nonce: {0}")]
    Random(String),
}

/// The witness's answer, with when the request left this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseReply {
    /// Read just before sending: the instant a granted lease counts from
    /// (see [`LeaseHolder::granted`](super::lease::LeaseHolder::granted)).
    pub sent_at: Instant,
    pub verdict: Verdict,
}

/// A node's client of one arbiter witness.
#[derive(Debug)]
pub struct ArbiterClient {
    witness: SocketAddr,
    /// A reload of the cluster secrets replaces it; each request reads it.
    key: RwLock<MacKey>,
    cluster: u64,
    epoch: u64,
    seq: AtomicU64,
}

impl ArbiterClient {
    /// A client of the witness at `witness` for `cluster`; `epoch` is the
    /// daemon's boot epoch (it must grow at every start, as for heartbeats).
    pub fn new(witness: SocketAddr, key: MacKey, cluster: u64, epoch: u64) -> Self {
        ArbiterClient {
            witness,
            key: RwLock::new(key),
            cluster,
            epoch,
            seq: AtomicU64::new(0),
        }
    }

    /// Signs every request from now on with `key`, and checks its answer
    /// under it (a reload of the cluster secrets); the sequence numbers go
    /// on, so the witness still takes the next request as fresh.
    pub fn set_key(&self, key: MacKey) {
        *self.key.write().expect("key lock") = key;
    }

    /// Asks for (or renews) `module`'s lease for `node`, whose data is
    /// `claim`'s, and waits up to `timeout` for the authenticated answer to
    /// this very request; anything else that arrives meanwhile is ignored.
    pub async fn request_lease(
        &self,
        module: &str,
        node: &str,
        duration: Duration,
        claim: Claim,
        timeout: Duration,
    ) -> Result<LeaseReply, ArbiterError> {
        let mut nonce: Nonce = Default::default();
        getrandom::fill(&mut nonce).map_err(|e| ArbiterError::Random(e.to_string()))?;
        let request = LeaseRequest {
            cluster: self.cluster,
            nonce,
            epoch: self.epoch,
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            module: module.to_owned(),
            node: node.to_owned(),
            duration,
            generation: claim.generation,
            forced: claim.forced,
        };
        // One key for the request and its answer, whatever a reload does
        // meanwhile.
        let key = self.key.read().expect("key lock").clone();
        let bytes = request.encode(&key).map_err(ArbiterError::Encode)?;
        let io = |action: &'static str| {
            let witness = self.witness;
            move |source| ArbiterError::Io {
                action,
                witness,
                source,
            }
        };
        // A socket per request: an answer to an earlier, abandoned request
        // cannot even reach this one, and concurrent requests do not steal
        // each other's answers.
        let any: SocketAddr = match self.witness {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(any)
            .await
            .map_err(io("bind a socket for"))?;
        socket.connect(self.witness).await.map_err(io("reach"))?;
        let sent_at = Instant::now();
        socket.send(&bytes).await.map_err(io("send to"))?;

        let answer = async {
            let mut buf = [0u8; MAX_DATAGRAM_LEN + 1];
            loop {
                let len = socket.recv(&mut buf).await.map_err(io("hear from"))?;
                match LeaseAnswer::decode(&buf[..len], &key) {
                    Ok(answer)
                        if answer.nonce == nonce
                            && answer.cluster == self.cluster
                            && answer.module == module =>
                    {
                        return Ok(answer.verdict);
                    }
                    Ok(_) => {
                        debug!(witness = %self.witness, "witness answer to another request ignored")
                    }
                    Err(error) => debug!(%error, witness = %self.witness, "witness answer dropped"),
                }
            }
        };
        match tokio::time::timeout_at(sent_at + timeout, answer).await {
            Ok(verdict) => Ok(LeaseReply {
                sent_at,
                verdict: verdict?,
            }),
            Err(_) => Err(ArbiterError::Timeout {
                witness: self.witness,
                timeout,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cluster::{frame::cluster_id, keys::ClusterSecret},
        witness::lease::LeaseHolder,
    };

    fn key() -> MacKey {
        ClusterSecret::from_bytes(&[3; 32]).witness_key()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const LEASE: Duration = Duration::from_millis(300);
    const GRACE: Duration = Duration::from_millis(200);
    const TIMEOUT: Duration = Duration::from_secs(2);

    /// A witness on 127.0.0.1 with a fixed 200 ms grace and 300 ms leases
    /// at most (a 500 ms quiet period), serving in the background.
    async fn witness() -> (SocketAddr, Arc<ArbiterStats>, tokio::task::JoinHandle<()>) {
        let policy = LeasePolicy {
            grace_percent: 0,
            min_grace: GRACE,
            max_duration: LEASE,
        };
        let arbiter = Arbiter::bind((Ipv4Addr::LOCALHOST, 0).into(), key(), policy)
            .await
            .unwrap();
        let addr = arbiter.local_addr().unwrap();
        let stats = arbiter.stats();
        let task = tokio::spawn(async move {
            arbiter.run().await.expect("the witness keeps serving");
        });
        (addr, stats, task)
    }

    fn client(addr: SocketAddr, epoch: u64) -> ArbiterClient {
        ArbiterClient::new(addr, key(), cluster_id("prod"), epoch)
    }

    #[tokio::test]
    async fn a_rotating_witness_answers_nodes_of_either_secret_under_their_own() {
        let old = ClusterSecret::from_bytes(&[3; 32]);
        let new = ClusterSecret::from_bytes(&[5; 32]);
        let policy = LeasePolicy {
            grace_percent: 0,
            min_grace: GRACE,
            max_duration: LEASE,
        };
        let arbiter = Arbiter::bind((Ipv4Addr::LOCALHOST, 0).into(), old.witness_key(), policy)
            .await
            .unwrap();
        let addr = arbiter.local_addr().unwrap();
        let live_key = arbiter.key();
        let stats = arbiter.stats();
        let task = tokio::spawn(async move {
            arbiter.run().await.expect("the witness keeps serving");
        });
        // The witness moves to the new secret while it runs (SIGHUP).
        *live_key.lock().unwrap() = new.clone().accepting(&old).witness_key();
        for (epoch, secret) in [(1, &old), (2, &new)] {
            let c = ArbiterClient::new(addr, secret.witness_key(), cluster_id("prod"), epoch);
            let reply = c
                .request_lease("db", "a", LEASE, Claim::default(), TIMEOUT)
                .await;
            assert!(
                reply.is_ok(),
                "a node on either secret gets an answer it can check, got {reply:?}"
            );
            assert_eq!(
                stats.accepted_secret.load(Ordering::Relaxed),
                1,
                "only the old secret's request counts as accepted"
            );
        }
        let stranger = ClusterSecret::from_bytes(&[6; 32]).witness_key();
        let c = ArbiterClient::new(addr, stranger, cluster_id("prod"), 3);
        assert!(matches!(
            c.request_lease("db", "a", LEASE, Claim::default(), ms(300))
                .await,
            Err(ArbiterError::Timeout { .. })
        ));
        assert_eq!(stats.rejected().get("forged"), Some(&1));
        task.abort();
    }

    #[tokio::test]
    async fn a_client_follows_a_reload_of_the_secrets_without_losing_its_sequence() {
        let old = ClusterSecret::from_bytes(&[3; 32]);
        let new = ClusterSecret::from_bytes(&[5; 32]);
        let (addr, stats, task) = witness().await;
        let c = client(addr, 1);
        let ask = |timeout| c.request_lease("db", "a", LEASE, Claim::default(), timeout);
        assert!(
            ask(TIMEOUT).await.is_ok(),
            "the old secret is the witness's"
        );
        // The node switches to the new secret, still accepting the old one:
        // a witness on the old secret alone cannot check it.
        c.set_key(new.clone().accepting(&old).witness_key());
        assert!(matches!(
            ask(ms(300)).await,
            Err(ArbiterError::Timeout { .. })
        ));
        assert_eq!(stats.rejected().get("forged"), Some(&1));
        // Back on the old secret, the same client is still fresh to the
        // witness: its sequence numbers went on growing.
        c.set_key(old.witness_key());
        let reply = ask(TIMEOUT).await;
        assert!(
            reply.is_ok(),
            "expected an answer under the old secret, got {reply:?}"
        );
        assert_eq!(stats.rejected().get("forged"), Some(&1));
        assert_eq!(
            stats.rejected().values().sum::<u64>(),
            1,
            "{:?}",
            stats.rejected()
        );
        task.abort();
    }

    /// Asks until the witness's start-up quiet period is over.
    async fn past_quiet_period(c: &ArbiterClient) {
        loop {
            let reply = c
                .request_lease("probe", "probe", LEASE, Claim::default(), TIMEOUT)
                .await
                .unwrap();
            match reply.verdict {
                Verdict::Starting { remaining } => tokio::time::sleep(remaining).await,
                _ => return,
            }
        }
    }

    #[tokio::test]
    async fn one_node_holds_the_lease_and_the_other_gets_it_only_after_expiry_and_grace() {
        let (addr, stats, _task) = witness().await;
        let a = client(addr, 1);
        let b = client(addr, 2);

        let first = a
            .request_lease("db", "a", LEASE, Claim::default(), TIMEOUT)
            .await
            .unwrap();
        assert!(
            matches!(first.verdict, Verdict::Starting { remaining } if remaining <= ms(500)),
            "a fresh witness must refuse during its quiet period, got {:?}",
            first.verdict
        );
        past_quiet_period(&a).await;

        let mut holder = LeaseHolder::new();
        let origin = Instant::now();
        let mut a_sent = None;
        for _ in 0..2 {
            let reply = a
                .request_lease("db", "a", LEASE, Claim::default(), TIMEOUT)
                .await
                .unwrap();
            assert_eq!(
                reply.verdict,
                Verdict::Granted {
                    duration: LEASE,
                    grace: GRACE,
                    generation: 0
                }
            );
            holder.granted(
                reply.sent_at.saturating_duration_since(origin),
                LEASE,
                GRACE,
            );
            a_sent = Some(reply.sent_at);
        }
        let a_sent = a_sent.unwrap();

        let refused = b
            .request_lease("db", "b", LEASE, Claim::default(), TIMEOUT)
            .await
            .unwrap();
        match refused.verdict {
            Verdict::Held { holder, remaining } => {
                assert_eq!(holder, "a");
                assert!(remaining <= LEASE + GRACE, "free in {remaining:?}");
            }
            other => panic!("b should be refused while a holds the lease, got {other:?}"),
        }

        // A stops renewing; B keeps asking.
        let b_received = loop {
            let reply = b
                .request_lease("db", "b", LEASE, Claim::default(), TIMEOUT)
                .await
                .unwrap();
            if matches!(reply.verdict, Verdict::Granted { .. }) {
                break Instant::now();
            }
            tokio::time::sleep(ms(20)).await;
        };
        let waited = b_received - a_sent;
        assert!(
            waited >= LEASE + GRACE,
            "b got the lease {waited:?} after a's last renewal, before lease + grace"
        );
        assert!(
            waited < LEASE + GRACE + ms(1_500),
            "b waited {waited:?} after a's last renewal"
        );
        let a_stops_by =
            origin + holder.expires_at().unwrap() + holder.tolerated_lateness().unwrap();
        assert!(
            a_stops_by < b_received,
            "a may serve until {:?} after its last renewal, b had the lease at {:?}",
            a_stops_by - a_sent,
            b_received - a_sent
        );
        assert!(stats.granted.load(Ordering::Relaxed) >= 4);
        assert!(stats.refused.load(Ordering::Relaxed) >= 2);
    }

    #[tokio::test]
    async fn a_node_with_older_data_is_told_stale_unless_it_forces() {
        let (addr, stats, _task) = witness().await;
        let a = client(addr, 1);
        let b = client(addr, 2);
        past_quiet_period(&a).await;
        let claim = |generation, forced| Claim { generation, forced };
        let reply = a
            .request_lease("db", "a", LEASE, claim(5, false), TIMEOUT)
            .await
            .unwrap();
        assert!(
            matches!(reply.verdict, Verdict::Granted { generation: 0, .. }),
            "got {:?}",
            reply.verdict
        );
        // a stops renewing; once its lease and grace are over, b (older
        // data) is still refused, with the newer generation named.
        tokio::time::sleep(LEASE + GRACE + ms(50)).await;
        let reply = b
            .request_lease("db", "b", LEASE, claim(4, false), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(reply.verdict, Verdict::Stale { generation: 5 });
        let reply = b
            .request_lease("db", "b", LEASE, claim(4, true), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(
            reply.verdict,
            Verdict::Granted {
                duration: LEASE,
                grace: GRACE,
                generation: 5
            },
            "a forced request is granted and told what it overrode"
        );
        assert!(stats.refused.load(Ordering::Relaxed) >= 1);
    }

    #[tokio::test]
    async fn forged_replayed_and_garbage_requests_are_counted_and_the_witness_survives() {
        let (addr, stats, task) = witness().await;
        let raw = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();

        let forger = ArbiterClient::new(
            addr,
            ClusterSecret::from_bytes(&[4; 32]).witness_key(),
            cluster_id("prod"),
            1,
        );
        let err = forger
            .request_lease("db", "x", LEASE, Claim::default(), ms(300))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ArbiterError::Timeout { .. }),
            "a forged request must get no answer, got {err}"
        );

        let request = LeaseRequest {
            cluster: cluster_id("prod"),
            nonce: [1; 16],
            epoch: 9,
            seq: 1,
            module: "db".into(),
            node: "a".into(),
            duration: LEASE,
            generation: 0,
            forced: false,
        }
        .encode(&key())
        .unwrap();
        let mut garbage = vec![
            Vec::new(),
            vec![0xff; 3],
            vec![0; 2000],
            vec![0; 100],
            b"HLWT\x02\x01".to_vec(),
            request[..50].to_vec(),
        ];
        let mut bad_version = request.clone();
        bad_version[4] = 9;
        garbage.push(bad_version);
        for datagram in &garbage {
            raw.send_to(datagram, addr).await.unwrap();
        }
        raw.send_to(&request, addr).await.unwrap();
        let mut buf = [0u8; 512];
        let (len, _) = tokio::time::timeout(TIMEOUT, raw.recv_from(&mut buf))
            .await
            .expect("the first copy of a request is answered")
            .unwrap();
        let answer = LeaseAnswer::decode(&buf[..len], &key()).unwrap();
        assert_eq!(answer.nonce, [1; 16]);
        raw.send_to(&request, addr).await.unwrap();
        assert!(
            tokio::time::timeout(ms(300), raw.recv_from(&mut buf))
                .await
                .is_err(),
            "a replayed request must get no answer"
        );

        let reply = client(addr, 1)
            .request_lease("web", "b", LEASE, Claim::default(), TIMEOUT)
            .await
            .expect("the witness still answers after garbage");
        assert!(matches!(
            reply.verdict,
            Verdict::Starting { .. } | Verdict::Granted { .. }
        ));
        assert!(!task.is_finished());
        let rejected = stats.rejected();
        let expected = [
            ("forged", 1),
            ("malformed", 5),
            ("not_witness", 1),
            ("version", 1),
            ("replayed", 1),
        ];
        for (reason, count) in expected {
            assert_eq!(
                rejected.get(reason).copied(),
                Some(count),
                "{reason} drops, all counters: {rejected:?}"
            );
        }
    }

    /// A fake witness that answers the first request it gets with `answers`
    /// built from it, in order.
    async fn fake_witness(
        answers: impl FnOnce(LeaseRequest) -> Vec<Vec<u8>> + Send + 'static,
    ) -> SocketAddr {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let (len, from) = socket.recv_from(&mut buf).await.unwrap();
            let request = LeaseRequest::decode(&buf[..len], &key()).unwrap();
            for datagram in answers(request) {
                socket.send_to(&datagram, from).await.unwrap();
            }
        });
        addr
    }

    fn granted(request: &LeaseRequest, nonce: Nonce, module: &str, k: &MacKey) -> Vec<u8> {
        LeaseAnswer {
            cluster: request.cluster,
            nonce,
            module: module.into(),
            verdict: Verdict::Granted {
                duration: ms(1_000),
                grace: ms(500),
                generation: 0,
            },
        }
        .encode(k)
        .unwrap()
    }

    #[tokio::test]
    async fn the_client_takes_only_the_authenticated_answer_to_its_own_request() {
        let addr = fake_witness(|r| {
            let other_key = ClusterSecret::from_bytes(&[4; 32]).witness_key();
            let mut refused =
                LeaseAnswer::decode(&granted(&r, r.nonce, "db", &key()), &key()).unwrap();
            refused.verdict = Verdict::Held {
                holder: "b".into(),
                remaining: ms(1),
            };
            vec![
                b"garbage".to_vec(),
                granted(&r, [0; 16], "db", &key()),
                granted(&r, r.nonce, "web", &key()),
                granted(&r, r.nonce, "db", &other_key),
                refused.encode(&key()).unwrap(),
            ]
        })
        .await;
        let reply = client(addr, 1)
            .request_lease("db", "a", LEASE, Claim::default(), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(
            reply.verdict,
            Verdict::Held {
                holder: "b".into(),
                remaining: ms(1)
            },
            "only the last answer matches nonce, module and key"
        );
    }

    #[tokio::test]
    async fn a_replayed_answer_to_another_request_times_out() {
        let addr = fake_witness(|r| vec![granted(&r, [9; 16], "db", &key())]).await;
        let err = client(addr, 1)
            .request_lease("db", "a", LEASE, Claim::default(), ms(300))
            .await
            .unwrap_err();
        assert!(matches!(err, ArbiterError::Timeout { .. }), "got {err}");
    }
}
