//! The secondary applies the files of a resynchronisation on several
//! threads.
//!
//! A resynchronisation ships each whole file as one run of messages that
//! nothing else interleaves: `File`, then `SetSize` and `Write`s, then
//! `SetMeta`, all for that one path, created or opened in a directory an
//! earlier message made. Runs of different paths touch different files,
//! so they may be applied in any order: each run goes, whole and in
//! order, to one of a few workers. Every other message (a directory, a
//! rename, a removal, a link, checksums, a barrier, the end) is a fence:
//! the session waits until the workers have applied every run before it,
//! then applies it itself, so it sees the tree the stream describes.
//! Outside a resynchronisation no run is handed out; live replication is
//! applied in order on the session's thread, as before.
//!
//! On a first copy the secondary's work is creating files and copying
//! their bytes into its page cache, which one thread did for the whole
//! stream: the workers spread it over the secondary's cores.
//!
//! Two runs of different paths can still reach one file or directory
//! here. Two names this node holds as one file (linked) that the primary
//! holds as two files: their writes interleave instead of following one
//! another, where in order the second file's simply won; both were wrong,
//! and the next comparison repairs them. A directory replaced by a file
//! with no removal between (events lost): in order the file's run removed
//! the directory first; here a run below it may race that removal and
//! fail (`ENOTDIR`, `ENOTEMPTY`), which refuses the stream, and the next
//! resynchronisation makes the tree whole.

use std::{
    collections::HashMap,
    io,
    panic::AssertUnwindSafe,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Condvar, Mutex,
    },
    thread::JoinHandle,
};

use tracing::{debug, warn};

use super::{apply::Applier, path::RelPath, wire::Message};

/// Messages queued for one worker at most (each holds at most one frame
/// of data).
const QUEUED: usize = 16;

/// At most this many workers, whatever the cores.
const MAX_WORKERS: usize = 4;

/// What [`ApplyPool::route`] did with a message.
#[derive(Debug)]
pub enum Routed {
    /// A worker applies it.
    Taken,
    /// The caller applies it now: the workers are done with every message
    /// before it.
    Apply(Message),
    /// A worker could not apply a change (which, and why): the session
    /// refuses the stream, as for one of its own.
    Failed(String),
}

enum Offered {
    Taken,
    Back(Message),
}

/// The messages the workers hold, and the first error one of them met.
#[derive(Default)]
struct Shared {
    outstanding: Mutex<usize>,
    idle: Condvar,
    failed: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Shared {
    /// Records the first failure.
    fn fail(&self, reason: String) {
        let mut first = lock(&self.reason);
        if first.is_none() {
            *first = Some(reason);
        }
        self.failed.store(true, Ordering::Release);
    }

    fn done(&self) {
        let mut outstanding = lock(&self.outstanding);
        *outstanding -= 1;
        if *outstanding == 0 {
            self.idle.notify_all();
        }
    }
}

struct Worker {
    tx: Option<mpsc::SyncSender<Message>>,
    /// Messages sent to it and not applied yet.
    queued: Arc<Mutex<usize>>,
    thread: Option<JoinHandle<()>>,
}

/// The workers of one secondary session.
pub struct ApplyPool {
    module: String,
    size: usize,
    workers: Vec<Worker>,
    shared: Arc<Shared>,
    /// The run being handed out: its path and worker.
    run: Option<(RelPath, usize)>,
    /// The worker each path's runs went to since the last fence: a file
    /// shipped twice is applied in order.
    placed: HashMap<RelPath, usize>,
    /// The workers could not be started: everything is applied in order.
    disabled: bool,
    /// A failure went back to the session.
    reported: bool,
}

impl ApplyPool {
    /// A pool of one worker per core (at most [`MAX_WORKERS`]), started
    /// with the first run.
    pub fn new(module: &str) -> Self {
        let size = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(MAX_WORKERS);
        Self::with_workers(module, size)
    }

    pub fn with_workers(module: &str, size: usize) -> Self {
        ApplyPool {
            module: module.to_owned(),
            size,
            workers: Vec::new(),
            shared: Arc::default(),
            run: None,
            placed: HashMap::new(),
            // One core: the session's thread is as fast.
            disabled: size < 2,
            reported: false,
        }
    }

    /// Hands `message` to a worker if it belongs to a file's run during a
    /// resynchronisation; otherwise waits for the workers and gives it
    /// back, to be applied through `applier` (the session's, which the
    /// workers never use).
    pub fn route(&mut self, message: Message, applier: &Mutex<Applier>) -> Routed {
        let message = match self.offer(message, applier) {
            Offered::Taken => return self.report(Routed::Taken),
            Offered::Back(message) => message,
        };
        self.fence();
        // Until the next one, the workers (and the descriptors their
        // write-back holds) are not needed.
        if matches!(message, Message::ResyncEnd { .. }) {
            self.stop();
        }
        self.report(Routed::Apply(message))
    }

    /// `routed`, unless a worker failed.
    fn report(&mut self, routed: Routed) -> Routed {
        match self.failed() {
            Some(reason) => {
                self.reported = true;
                Routed::Failed(reason)
            }
            None => routed,
        }
    }

    /// The first error a worker met (the change it was applying, and why).
    fn failed(&self) -> Option<String> {
        if !self.shared.failed.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.shared.reason).clone()
    }

    /// Hands `message` to a worker when it belongs to a file's run during
    /// a resynchronisation (as the session's `applier` has applied the
    /// stream so far); that applier forgets the file it may hold open. Its
    /// lock is taken only for a file that may start a run.
    fn offer(&mut self, message: Message, applier: &Mutex<Applier>) -> Offered {
        if let Some((path, worker)) = self.run.take() {
            let (same, last) = match &message {
                Message::Write { path: p, .. } | Message::SetSize { path: p, .. } => {
                    (*p == path, false)
                }
                Message::SetMeta { path: p, .. } => (*p == path, true),
                _ => (false, false),
            };
            if same {
                if !last {
                    self.run = Some((path, worker));
                }
                return self.send(worker, message);
            }
        }
        let Message::File { path, .. } = &message else {
            return Offered::Back(message);
        };
        if self.disabled {
            return Offered::Back(message);
        }
        let mut applier = applier.lock().expect("applier");
        if !applier.resyncing() {
            return Offered::Back(message);
        }
        if self.workers.is_empty() {
            if let Err(error) = self.start(&applier) {
                debug!(module = %self.module, %error, "applying in order: no worker could start");
                self.disabled = true;
                return Offered::Back(message);
            }
        }
        let worker = match self.placed.get(path) {
            Some(worker) => *worker,
            None => self.least_busy(),
        };
        self.placed.insert(path.clone(), worker);
        applier.forget(path);
        self.run = Some((path.clone(), worker));
        self.send(worker, message)
    }

    /// Waits until the workers have applied every message handed to them.
    fn fence(&mut self) {
        self.run = None;
        self.placed.clear();
        let mut outstanding = lock(&self.shared.outstanding);
        while *outstanding > 0 {
            outstanding = self
                .shared
                .idle
                .wait(outstanding)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn least_busy(&self) -> usize {
        (0..self.workers.len())
            .min_by_key(|i| *lock(&self.workers[*i].queued))
            .unwrap_or(0)
    }

    fn send(&mut self, worker: usize, message: Message) -> Offered {
        *lock(&self.shared.outstanding) += 1;
        *lock(&self.workers[worker].queued) += 1;
        let tx = self.workers[worker].tx.as_ref().expect("a running worker");
        if let Err(mpsc::SendError(message)) = tx.send(message) {
            // The worker's thread is gone, which only its end of the
            // channel dropped could do: refused, like a change it failed.
            *lock(&self.workers[worker].queued) -= 1;
            self.shared.done();
            self.shared.fail(format!(
                "{}: the thread applying it ended",
                super::session::describe(&message)
            ));
        }
        Offered::Taken
    }

    fn start(&mut self, applier: &Applier) -> io::Result<()> {
        for n in 0..self.size {
            let mut own = applier.sibling()?;
            let (tx, rx) = mpsc::sync_channel::<Message>(QUEUED);
            let queued = Arc::new(Mutex::new(0usize));
            let shared = Arc::clone(&self.shared);
            let module = self.module.clone();
            let count = Arc::clone(&queued);
            let thread = std::thread::Builder::new()
                .name(format!("halo-apply{n}-{}", self.module))
                .spawn(move || {
                    let worked = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        work(&rx, &mut own, &shared, &count, &module);
                    }));
                    if worked.is_err() {
                        shared.fail("a thread applying the resynchronisation panicked".into());
                    }
                    // What is still queued is counted, not applied, until
                    // the session closes the channel: no fence waits for
                    // ever.
                    for _ in rx.iter() {
                        let _counted = Counted(&shared, &count);
                    }
                })?;
            self.workers.push(Worker {
                tx: Some(tx),
                queued,
                thread: Some(thread),
            });
        }
        Ok(())
    }

    /// Lets the workers apply what they hold, then ends them.
    fn stop(&mut self) {
        self.run = None;
        self.placed.clear();
        for worker in &mut self.workers {
            worker.tx = None;
        }
        for mut worker in self.workers.drain(..) {
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// A worker's loop: each message applied in order, unless an earlier one
/// failed; a file's descriptors closed at the end of its run.
fn work(
    rx: &mpsc::Receiver<Message>,
    own: &mut Applier,
    shared: &Shared,
    count: &Mutex<usize>,
    module: &str,
) {
    for message in rx.iter() {
        // Counted down however this ends, a panic included.
        let _counted = Counted(shared, count);
        let run_ends = matches!(message, Message::SetMeta { .. });
        if !shared.failed.load(Ordering::Acquire) {
            let shown = super::session::describe(&message);
            match own.apply(message) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    debug!(module = %module, change = %shown, error = %e, "skipped");
                }
                Err(e) => shared.fail(format!("{shown}: {e}")),
            }
        }
        if run_ends {
            own.close_files();
        }
    }
    own.close_files();
}

/// One message a worker was handed, counted down when dropped.
struct Counted<'a>(&'a Shared, &'a Mutex<usize>);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        *lock(self.1) -= 1;
        self.0.done();
    }
}

/// A counter's lock, whether or not a panic poisoned it.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for ApplyPool {
    /// Lets the workers apply what they hold (received, so part of the
    /// stream), then ends them.
    fn drop(&mut self) {
        self.stop();
        if !self.reported {
            if let Some(reason) = self.failed() {
                warn!(module = %self.module, %reason, "a change received before the session ended could not be applied; the next resynchronisation repairs it");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;
    use crate::mirror::{apply::Reply, wire::Meta};

    struct Root(std::path::PathBuf);

    impl Root {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("halo-fanout-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Root(dir)
        }
        fn read(&self, path: &str) -> Vec<u8> {
            std::fs::read(self.0.join(path)).unwrap()
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A root, the session's applier beneath it and a pool of `workers`.
    fn pool(name: &str, workers: usize) -> (Root, Mutex<Applier>, ApplyPool) {
        let root = Root::new(name);
        let applier = Mutex::new(Applier::open(&[&root.0]).unwrap());
        (root, applier, ApplyPool::with_workers("test", workers))
    }

    fn p(text: &str) -> RelPath {
        RelPath::new(0, text.as_bytes().to_vec()).unwrap()
    }

    fn meta(mode: u32, mtime_s: i64) -> Meta {
        Meta {
            mode,
            uid: 0,
            gid: 0,
            mtime_ns: mtime_s * 1_000_000_000,
        }
    }

    /// A whole file as a resynchronisation ships it: its run.
    fn run(path: &str, content: &[u8], mtime_s: i64) -> Vec<Message> {
        let mut messages = vec![
            Message::File {
                path: p(path),
                meta: meta(0o100600, mtime_s),
            },
            Message::SetSize {
                path: p(path),
                size: 0,
            },
        ];
        for (i, chunk) in content.chunks(4096).enumerate() {
            messages.push(Message::Write {
                path: p(path),
                offset: (i * 4096) as u64,
                data: chunk.to_vec(),
            });
        }
        messages.push(Message::SetSize {
            path: p(path),
            size: content.len() as u64,
        });
        messages.push(Message::SetMeta {
            path: p(path),
            meta: meta(0o100640, mtime_s),
        });
        messages
    }

    /// Routes `messages` as the session does; returns how many the workers
    /// took, or the first refusal.
    fn feed(
        pool: &mut ApplyPool,
        applier: &Mutex<Applier>,
        messages: Vec<Message>,
    ) -> Result<usize, String> {
        let mut taken = 0;
        for message in messages {
            match pool.route(message, applier) {
                Routed::Taken => taken += 1,
                Routed::Apply(message) => match applier.lock().unwrap().apply(message) {
                    Ok(Reply::None | Reply::Send(_)) => {}
                    Err(e) => return Err(e.to_string()),
                },
                Routed::Failed(reason) => return Err(reason),
            }
        }
        Ok(taken)
    }

    fn content(seed: usize, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + seed * 7) as u8).collect()
    }

    #[test]
    fn files_applied_by_workers_leave_the_tree_the_stream_describes() {
        let (root, applier, mut pool) = pool("tree", 3);
        let mut stream = vec![Message::ResyncBegin { full: true }];
        for d in 0..6 {
            stream.push(Message::Mkdir {
                path: p(&format!("d{d}")),
                meta: meta(0o40755, 1),
            });
            for f in 0..20 {
                let name = format!("d{d}/f{f}");
                stream.extend(run(
                    &name,
                    &content(d * 100 + f, 3000 + f * 997),
                    1000 + f as i64,
                ));
            }
        }
        // One file shipped twice before any fence: the second copy wins.
        stream.extend(run("d5/f0", &content(1, 400_000), 6));
        stream.extend(run("d5/f0", b"second copy", 7));
        // A fence right behind a run: the rename waits for it; then a new
        // file under the old name.
        stream.extend(run("d5/late", &content(2, 400_000), 9));
        stream.push(Message::Rename {
            from: p("d5/late"),
            to: p("d1/moved"),
        });
        stream.extend(run("d5/late", b"after the rename", 8));
        // A barrier is answered once everything before it is applied.
        stream.extend(run("d5/last", &content(3, 400_000), 10));
        let messages = stream.len();
        let taken = feed(&mut pool, &applier, stream).unwrap();
        // Every file's run, and only them, went to the workers.
        assert_eq!(taken, messages - 6 - 1 - 1);
        let barrier = pool.route(Message::Barrier { seq: 1 }, &applier);
        assert!(
            matches!(barrier, Routed::Apply(Message::Barrier { .. })),
            "{barrier:?}"
        );
        let m = std::fs::metadata(root.0.join("d5/last")).unwrap();
        assert_eq!((m.len(), m.mtime()), (400_000, 10));
        feed(
            &mut pool,
            &applier,
            vec![Message::ResyncEnd { generation: 1 }],
        )
        .unwrap();
        drop(pool);

        for d in 0..6 {
            for f in 0..20 {
                let name = format!("d{d}/f{f}");
                if name == "d5/f0" {
                    continue;
                }
                assert_eq!(
                    root.read(&name),
                    content(d * 100 + f, 3000 + f * 997),
                    "{name}"
                );
                // Its metadata came last, after every write.
                let m = std::fs::metadata(root.0.join(&name)).unwrap();
                assert_eq!(m.mtime(), 1000 + f as i64, "{name}");
                assert_eq!(m.mode() & 0o7777, 0o640, "{name}");
            }
        }
        assert_eq!(root.read("d5/f0"), b"second copy");
        assert_eq!(root.read("d1/moved"), content(2, 400_000));
        assert_eq!(root.read("d5/late"), b"after the rename");
    }

    #[test]
    fn live_replication_is_applied_in_order_by_the_session() {
        let (root, applier, mut pool) = pool("live", 2);
        // No ResyncBegin: not one message goes to a worker.
        let taken = feed(&mut pool, &applier, run("f", b"live", 5)).unwrap();
        assert_eq!(taken, 0);
        assert_eq!(root.read("f"), b"live");
        // Nor after a resynchronisation ended, whose workers (and the
        // descriptors they hold) are gone with it.
        let mut stream = vec![Message::ResyncBegin { full: false }];
        stream.extend(run("during", b"resync", 6));
        stream.push(Message::ResyncEnd { generation: 2 });
        assert_eq!(feed(&mut pool, &applier, stream).unwrap(), 5);
        assert!(pool.workers.is_empty());
        assert_eq!(feed(&mut pool, &applier, run("g", b"after", 6)).unwrap(), 0);
        assert_eq!(root.read("g"), b"after");
        assert_eq!(root.read("during"), b"resync");
        // The next one starts them again.
        let mut stream = vec![Message::ResyncBegin { full: false }];
        stream.extend(run("next", b"again", 7));
        assert_eq!(feed(&mut pool, &applier, stream).unwrap(), 5);
        assert_eq!(pool.workers.len(), 2);
    }

    #[test]
    fn a_change_a_worker_cannot_apply_refuses_the_stream_and_names_it() {
        let (root, applier, mut pool) = pool("refused", 2);
        // A regular file where the stream expects a directory.
        std::fs::write(root.0.join("plain"), b"not a directory").unwrap();
        let mut stream = vec![Message::ResyncBegin { full: true }];
        stream.extend(run("plain/x", b"x", 1));
        stream.push(Message::Barrier { seq: 1 });
        let reason = feed(&mut pool, &applier, stream).unwrap_err();
        assert!(reason.starts_with("file [0]/plain/x: "), "{reason}");
        assert!(reason.contains("Not a directory"), "{reason}");
        drop(pool);
        assert_eq!(root.read("plain"), b"not a directory");
    }

    #[test]
    fn what_the_workers_hold_is_applied_before_the_pool_ends() {
        let (root, applier, mut pool) = pool("drop", 2);
        let mut stream = vec![Message::ResyncBegin { full: true }];
        for f in 0..40 {
            stream.extend(run(&format!("f{f}"), &content(f, 20_000), 3));
        }
        // No fence: the session ends with the runs still queued.
        assert!(feed(&mut pool, &applier, stream).unwrap() > 0);
        let shared = Arc::clone(&pool.shared);
        drop(pool);
        assert_eq!(*shared.outstanding.lock().unwrap(), 0);
        for f in 0..40 {
            assert_eq!(root.read(&format!("f{f}")), content(f, 20_000));
        }
    }
}
