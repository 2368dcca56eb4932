//! The replication channel's receiving end, through its public API: the
//! handshake on any peer hello, and the opener on any stream of frames.
//!
//! Input: a mode byte, then the mode's bytes. Bit 0 of the mode turns
//! encryption on; bits 1 and 2 choose:
//! - 0: the rest is what the peer sends in the handshake;
//! - 1: the rest is payloads (2-byte length, then bytes), sealed by the peer:
//!   each must come out as `Message::decode` of the payload;
//! - 2: the rest is the raw stream of frames, forged by a stranger;
//! - 3: as 1, with one bit of the sealed bytes flipped at the position the
//!   next byte chooses: the frame must be refused as forged.

#![no_main]

use std::io::Cursor;

use halo::cluster::keys::ClusterSecret;
use halo::mirror::channel::{handshake, ChannelError, MessageReader, Role};
use halo::mirror::wire::Message;
use halo_fuzz::{fixed_hello, session, MemoryStream};
use libfuzzer_sys::fuzz_target;

/// Frames read from one input at most: enough to pass a counter or two.
const MAX_FRAMES: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let encrypt = mode & 1 == 1;
    match (mode >> 1) & 3 {
        0 => {
            let key = ClusterSecret::from_bytes(&[7; 32]).replication_key();
            let mut stream = MemoryStream::new(rest.to_vec());
            let _ = handshake(&mut stream, &fixed_hello(Role::Secondary, encrypt), &key);
        }
        1 => sealed(encrypt, rest, None),
        2 => {
            let (_, opener) = session(encrypt);
            let mut reader = MessageReader::new(Cursor::new(rest), opener);
            for _ in 0..MAX_FRAMES {
                if !matches!(reader.recv(), Ok(Some(_))) {
                    break;
                }
            }
        }
        _ => {
            if let Some((&flip, rest)) = rest.split_first() {
                sealed(encrypt, rest, Some(usize::from(flip)));
            }
        }
    }
});

/// Seals the payloads of `input` as the peer would, optionally flips bit
/// `flip` (counted in the sealed bytes of all frames, past their length
/// prefixes), and checks what the receiving end makes of them.
fn sealed(encrypt: bool, mut input: &[u8], flip: Option<usize>) {
    let (mut sealer, opener) = session(encrypt);
    let mut payloads = Vec::new();
    while input.len() >= 2 && payloads.len() < MAX_FRAMES {
        let len = usize::from(u16::from_be_bytes([input[0], input[1]]));
        let len = len.min(input.len() - 2);
        payloads.push(&input[2..2 + len]);
        input = &input[2 + len..];
    }
    let mut stream = Vec::new();
    let mut tampered = None;
    let mut bit = flip;
    for (index, payload) in payloads.iter().enumerate() {
        let mut frame = sealer.seal(payload);
        if let Some(at) = bit {
            let sealed_bits = (frame.len() - 4) * 8;
            if at < sealed_bits {
                frame[4 + at / 8] ^= 1 << (at % 8);
                tampered = Some(index);
                bit = None;
            } else {
                bit = Some(at - sealed_bits);
            }
        }
        stream.extend_from_slice(&frame);
    }
    let mut reader = MessageReader::new(Cursor::new(stream), opener);
    for (index, payload) in payloads.iter().enumerate() {
        let received = reader.recv();
        if tampered == Some(index) {
            assert!(
                matches!(received, Err(ChannelError::Forged)),
                "frame {index} with a flipped bit was not refused as forged: {received:?}"
            );
            return;
        }
        match (received, Message::decode(payload)) {
            (Ok(Some(got)), Ok(expected)) => assert_eq!(got, expected, "frame {index}"),
            (Err(ChannelError::Wire(got)), Err(expected)) => {
                assert_eq!(got, expected, "frame {index}");
                // The reader stops at a bad message, as the session does.
                return;
            }
            (received, expected) => {
                panic!("frame {index}: received {received:?}, its payload decodes to {expected:?}")
            }
        }
    }
    assert!(
        matches!(reader.recv(), Ok(None)),
        "the stream does not end after its last frame"
    );
}
