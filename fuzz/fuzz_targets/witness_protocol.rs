//! The witness's request and answer decoders on any datagram, unsigned and
//! signed: they never panic, and what they accept round-trips.
//!
//! Input: a datagram without its 32-byte tag (the seeds are valid ones).

#![no_main]

use halo::witness::protocol::{LeaseAnswer, LeaseRequest, MAX_DATAGRAM_LEN};
use halo_fuzz::{signed, witness_key, TAG_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = witness_key();
    let _ = LeaseRequest::decode(data, &key);
    let _ = LeaseAnswer::decode(data, &key);

    let datagram = signed(&data[..data.len().min(MAX_DATAGRAM_LEN - TAG_LEN)], &key);
    if let Ok(request) = LeaseRequest::decode(&datagram, &key) {
        let again = request
            .encode(&key)
            .unwrap_or_else(|error| panic!("decoded {request:?} does not encode: {error}"));
        assert_eq!(
            LeaseRequest::decode(&again, &key).as_ref(),
            Ok(&request),
            "a decoded request re-encodes to bytes that decode differently"
        );
    }
    if let Ok(answer) = LeaseAnswer::decode(&datagram, &key) {
        let again = answer
            .encode(&key)
            .unwrap_or_else(|error| panic!("decoded {answer:?} does not encode: {error}"));
        assert_eq!(
            LeaseAnswer::decode(&again, &key).as_ref(),
            Ok(&answer),
            "a decoded answer re-encodes to bytes that decode differently"
        );
    }
});
