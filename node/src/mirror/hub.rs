//! One write capture per daemon, shared by its mirror modules: a thread
//! waits on the capture's ring and routes each record to the tracker of
//! the module whose directory it names.
//!
//! A durability call (`Change::Sync { paused: true }`) stops its caller
//! until the module's peer acknowledged everything written before it. The
//! hub releases such a caller *at once* when no tracker takes the record
//! (no session, the session ended): an application never waits for a
//! secondary that is not there.

use std::{
    collections::HashMap,
    os::fd::{AsRawFd as _, RawFd},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    time::Duration,
};

use tracing::{info, warn};

use crate::ebpf::capture::{
    paused_pin, resume_orphans, CaptureConfig, Captured, Change, RootId, SyncScope, WriteCapture,
};

/// Where a root's records go.
struct Route {
    tx: Option<mpsc::Sender<Captured>>,
    wake: Option<Arc<Wake>>,
}

/// An eventfd a tracker polls beside inotify, and whether records were
/// lost since the tracker last looked.
pub struct Wake(std::os::fd::OwnedFd, AtomicBool);

impl Wake {
    pub fn new() -> std::io::Result<Arc<Self>> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor that nothing else owns.
        Ok(Arc::new(Wake(
            unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) },
            AtomicBool::new(false),
        )))
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    pub fn ring(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 bytes to an eventfd.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    /// Whether the capture lost records since the last call.
    pub fn overflowed(&self) -> bool {
        self.1.swap(false, Ordering::Relaxed)
    }

    pub fn clear(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes from an eventfd.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
    }
}

struct Inner {
    capture: WriteCapture,
    routes: HashMap<RootId, Route>,
}

/// The daemon's write capture and its routing thread.
pub struct CaptureHub {
    inner: Arc<Mutex<Inner>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CaptureHub {
    /// Loads and attaches the capture programs, and starts routing.
    pub fn start(node: &str) -> anyhow::Result<Arc<Self>> {
        let pin = paused_pin(node);
        // A daemon that crashed left the writers it held stopped: let them go.
        crate::ebpf::ensure_mounted("bpf", "/sys/fs/bpf")?;
        match resume_orphans(&pin) {
            Ok(0) => {}
            Ok(n) => info!(
                processes = n,
                "resumed writers a crashed daemon left paused"
            ),
            Err(error) => {
                warn!(error = %format!("{error:#}"), "cannot resume writers a crashed daemon left paused")
            }
        }
        let capture = WriteCapture::attach_with(CaptureConfig {
            exclude_tgid: std::process::id(),
            pin_paused: Some(pin),
            ..CaptureConfig::default()
        })?;
        let ring = capture.ring_fd().as_raw_fd();
        let inner = Arc::new(Mutex::new(Inner {
            capture,
            routes: HashMap::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let inner = Arc::clone(&inner);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("halo-capture".into())
                .spawn(move || route(&inner, ring, &stop))?
        };
        Ok(Arc::new(CaptureHub {
            inner,
            stop,
            thread: Some(thread),
        }))
    }

    /// Starts capturing below `dir`; records are dropped until [`CaptureHub::route`].
    pub fn add_root(&self, dir: &Path) -> anyhow::Result<RootId> {
        let mut inner = self.inner.lock().expect("capture hub");
        let root = inner.capture.add_root(dir, false)?;
        inner.routes.entry(root).or_insert(Route {
            tx: None,
            wake: None,
        });
        Ok(root)
    }

    /// Sends `root`'s records to `tx` (waking `wake`), or drops them (and
    /// releases paused callers) with `None`; turns the durability pause on
    /// or off for `dir`.
    pub fn route(
        &self,
        root: RootId,
        dir: &Path,
        target: Option<(mpsc::Sender<Captured>, Arc<Wake>)>,
        pause: bool,
    ) {
        let mut inner = self.inner.lock().expect("capture hub");
        if let Err(error) = inner.capture.add_root(dir, pause) {
            warn!(dir = %dir.display(), error = %format!("{error:#}"), "cannot change the capture's pause policy");
        }
        let (tx, wake) = match target {
            Some((tx, wake)) => (Some(tx), Some(wake)),
            None => (None, None),
        };
        inner.routes.insert(root, Route { tx, wake });
        if !pause {
            release_paused_under(&mut inner, root);
        }
    }

    /// Lets the thread `tid` go on (its durability call is acknowledged).
    pub fn release(&self, tid: u32) {
        let mut inner = self.inner.lock().expect("capture hub");
        if let Err(error) = inner.capture.release(tid) {
            warn!(tid, error = %format!("{error:#}"), "cannot resume a paused writer");
        }
    }
}

fn release_paused_under(inner: &mut Inner, root: RootId) {
    let Ok(pending) = inner.capture.pending() else {
        return;
    };
    for paused in pending {
        if paused.root.is_none() || paused.root == Some(root) {
            let _ = inner.capture.release(paused.tid);
        }
    }
}

impl Drop for CaptureHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Ok(mut inner) = self.inner.lock() {
            let _ = inner.capture.resume_all();
        }
    }
}

fn route(inner: &Mutex<Inner>, ring: RawFd, stop: &AtomicBool) {
    let mut last_lost = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut poll = [libc::pollfd {
            fd: ring,
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(poll.as_mut_ptr(), 1, 100) };
        let mut inner = inner.lock().expect("capture hub");
        if ready > 0 {
            let records = inner.capture.drain();
            let mut woken: Vec<Arc<Wake>> = Vec::new();
            for record in records {
                let targets: Vec<RootId> = match (&record.change, record.root) {
                    (_, Some(root)) => vec![root],
                    // Every-root syncs go to every root (of the device).
                    (Change::Sync { scope, .. }, None) => inner
                        .routes
                        .keys()
                        .filter(|r| *scope == SyncScope::AllRoots || r.st_dev == record.st_dev)
                        .copied()
                        .collect(),
                    _ => Vec::new(),
                };
                let paused = matches!(record.change, Change::Sync { paused: true, .. });
                let mut taken = false;
                for root in targets {
                    if let Some(Route {
                        tx: Some(tx),
                        wake: Some(wake),
                    }) = inner.routes.get(&root)
                    {
                        if tx.send(record.clone()).is_ok() {
                            taken = true;
                            if !woken.iter().any(|w| Arc::ptr_eq(w, wake)) {
                                woken.push(Arc::clone(wake));
                            }
                        }
                    }
                }
                if paused && !taken {
                    let _ = inner.capture.release(record.tid);
                }
            }
            for wake in woken {
                wake.ring();
            }
        }
        if let Ok(lost) = inner.capture.lost() {
            if lost > last_lost {
                for route in inner.routes.values() {
                    if let Some(wake) = &route.wake {
                        wake.1.store(true, Ordering::Relaxed);
                        wake.ring();
                    }
                }
                info!(
                    lost = lost - last_lost,
                    "the capture ring was full: the inotify safety net covers the lost writes"
                );
                last_lost = lost;
            }
        }
        drop(inner);
        if ready < 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
