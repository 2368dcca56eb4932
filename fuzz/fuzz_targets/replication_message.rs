//! The replication message decoder on any payload: it never panics, what it
//! accepts round-trips, and no path or listed name it yields can leave its
//! replicated directory.

#![no_main]

use halo::mirror::path::RelPath;
use halo::mirror::wire::Message;
use halo_fuzz::{escape, not_one_component};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = Message::decode(data) else {
        return;
    };
    for path in paths(&message) {
        if let Some(why) = escape(path.as_bytes()) {
            panic!("decoded path {path:?} has a {why} in {message:?}");
        }
    }
    if let Message::Listing { names, .. } = &message {
        for name in names {
            if let Some(why) = not_one_component(name) {
                panic!("listing name {name:?}: {why}, in {message:?}");
            }
        }
    }
    let mut again = Vec::new();
    message.encode(&mut again);
    assert_eq!(
        Message::decode(&again).as_ref(),
        Ok(&message),
        "a decoded message re-encodes to bytes that decode differently"
    );
});

/// Every path a message names.
fn paths(message: &Message) -> Vec<&RelPath> {
    match message {
        Message::Mkdir { path, .. }
        | Message::File { path, .. }
        | Message::Write { path, .. }
        | Message::SetSize { path, .. }
        | Message::SetMeta { path, .. }
        | Message::Symlink { path, .. }
        | Message::Remove { path }
        | Message::Sums { path, .. }
        | Message::Need { path, .. }
        | Message::Missing { path } => vec![path],
        Message::Link { path, existing } => vec![path, existing],
        Message::Rename { from, to } => vec![from, to],
        Message::Listing { dir, .. } => vec![dir],
        Message::Diverged { paths } => paths.iter().flatten().collect(),
        Message::Barrier { .. }
        | Message::ResyncBegin { .. }
        | Message::ResyncEnd { .. }
        | Message::Bye
        | Message::Join { .. }
        | Message::Ack { .. }
        | Message::ResyncDone { .. }
        | Message::Refused { .. } => vec![],
    }
}
