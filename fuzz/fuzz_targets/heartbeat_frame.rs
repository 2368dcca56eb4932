//! The heartbeat decoder on any datagram, unsigned and signed: it never
//! panics, and a frame it accepts encodes to bytes that decode the same.
//!
//! Input: a datagram without its 32-byte tag (the seeds are valid frames).

#![no_main]

use halo::cluster::frame::{cluster_id, HeartbeatFrame, MAX_FRAME_LEN};
use halo_fuzz::{heartbeat_key, signed, CLUSTER, TAG_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = heartbeat_key();
    let cluster = cluster_id(CLUSTER);
    // As it comes off the wire: stopped before the MAC, or at it.
    let _ = HeartbeatFrame::decode(data, &key, cluster);

    let body = &data[..data.len().min(MAX_FRAME_LEN - TAG_LEN)];
    let Ok(frame) = HeartbeatFrame::decode(&signed(body, &key), &key, cluster) else {
        return;
    };
    let again = frame
        .encode(&key)
        .unwrap_or_else(|error| panic!("decoded frame {frame:?} does not encode again: {error}"));
    assert_eq!(
        HeartbeatFrame::decode(&again, &key, cluster).as_ref(),
        Ok(&frame),
        "a decoded frame re-encodes to bytes that decode differently"
    );
});
