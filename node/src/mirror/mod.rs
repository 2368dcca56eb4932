//! The mirror module's replication: what travels from the primary to the
//! secondary, and how each end produces and applies it.
//!
//! - [`path`]: relative paths that cannot escape a replicated directory.
//! - [`wire`]: the replication messages and their encoding.
//! - [`channel`]: the authenticated (and by default encrypted) stream.
//! - [`sums`]: block checksums for resynchronisation.
//! - [`journal`]: the dirty ranges a serving node keeps on disk while its
//!   peer is away, so that its return sends only them.
//! - [`apply`]: the secondary applying messages beneath its directories.
//! - [`fanout`]: the files of a resynchronisation applied on several
//!   threads.
//! - [`watch`]: inotify over the primary's directories (namespace changes,
//!   and the safety net for writes the capture cannot see).
//! - [`hub`]: the daemon's one write capture, routed to each module's
//!   tracker, and the release of writers paused by a durability call.
//! - [`session`]: the tracker, and one replication session's primary and
//!   secondary ends (the resynchronisation walk included).
//! - [`stamp`]: the persisted data stamp and sync point of a module.
//!
//! The state machine (`fsm::mirror`) decides; `daemon::mirror` drives.

pub mod apply;
pub mod channel;
pub mod fanout;
pub mod hub;
pub mod journal;
pub mod path;
pub mod session;
pub mod stamp;
pub mod sums;
pub mod watch;
pub mod wire;
