//! Split-brain witnesses: how a mirror node that lost its peer decides
//! whether it may go ALONE (SPEC §7).
//!
//! A node asks its witness only when every heartbeat network has lost the
//! peer. Two kinds:
//!
//! - **ping** ([`ping`]): ICMP echo to one or more addresses (raw sockets,
//!   IPv4 and IPv6); the witness is up if any answers within the timeout.
//!   SafeKit-compatible (`<splitbrain exec="ping">`): in a clean split, the
//!   side that still reaches the witness goes ALONE and the other waits. But
//!   the witness keeps no state: in a *partial* partition where the nodes
//!   lose each other yet both still reach the witness (a broken heartbeat
//!   link, a firewall rule between them), **both** go ALONE and their data
//!   diverge. Use it only where the witness sits on the path between the
//!   nodes.
//! - **arbiter** ([`arbiter`]): a `halo witness` process on a third machine
//!   grants one time-limited lease per module ([`lease::LeaseTable`]); a
//!   node serves ALONE only while it holds the lease
//!   ([`lease::LeaseHolder`]). Safe even when both nodes reach the witness:
//!   only one can hold the lease, and a node that loses the witness stops
//!   before the other can obtain it, including when its timers run late and
//!   its clock is slow (the argument and its numbers are in [`lease`]).
//!   Requests and replies are authenticated with the cluster secret's
//!   witness key and protected against replay ([`protocol`]).
//!
//! # Using the arbiter from a node
//! ```text
//! let client = ArbiterClient::new(witness_addr, secret.witness_key(), cluster_id, boot_epoch);
//! let claim = Claim { generation: stamp.generation, forced: false };
//! let reply = client.request_lease(module, node, lease, claim, timeout).await?;
//! if let Verdict::Granted { duration, grace, .. } = reply.verdict {
//!     holder.granted(reply.sent_at - origin, duration, grace);  // node clock
//! }
//! // Arm a timer at `holder.expires_at()`, renew every third of the lease,
//! // report every timer's lateness with `holder.tick(now, late)`, and stop
//! // the application as soon as `holder.valid(now)` is false.
//! ```
//! A refusal or a timeout leaves the lease to expire (or `holder.lost()`
//! ends it at once); the node then waits, as with a ping witness that does
//! not answer. `Verdict::Stale` means the witness granted the lease before
//! to newer data than the claim's: the node waits until its peer returns,
//! or an operator forces it (`halo prim`, a forced claim).

pub mod arbiter;
pub mod lease;
pub mod ping;
pub mod protocol;

pub use arbiter::{serve, Arbiter, ArbiterClient, ArbiterError, ArbiterStats, LeaseReply};
pub use lease::{Claim, Grant, LeaseHolder, LeasePolicy, LeaseTable, MAX_DRIFT_PPM};
pub use ping::{ping_any, ping_any_every};
pub use protocol::{LeaseAnswer, LeaseRequest, Verdict, WireError};
