//! The node daemon's runtime: the threads and tasks that perform what the
//! pure parts (`cluster`, `fsm`) decide.

pub mod heartbeat;
