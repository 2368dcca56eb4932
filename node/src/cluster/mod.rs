//! Cluster membership: the authenticated heartbeat wire format, the keys it
//! is signed with, replay protection, and the failure detector.
//!
//! Everything here is pure (no sockets, no clock reads) except
//! [`keys::ClusterSecret::load`]; the daemon's heartbeat thread does the I/O.

pub mod detector;
pub mod frame;
pub mod instant;
pub mod keys;
pub mod replay;
pub mod wire;
