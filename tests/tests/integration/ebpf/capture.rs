//! The write-capture tracepoints, in the real kernel: every hooked syscall
//! reports the right file, range and root for files below a registered
//! root, and nothing elsewhere; a durability call on a `sync = "fsync"` root
//! holds its caller until released; the daemon's own process is never
//! reported; a full ring counts what it lost.

use std::{
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use halo::ebpf::{
    self,
    capture::{CaptureConfig, Captured, Change, Release, RootId, SyncScope, WriteCapture},
};
use halo_common::capture::{WriteKind, MAX_DEPTH};
use halo_tests::lab::{self, Host, LabBuilder, LabProcess};

/// How long a test waits for records or for a process to react.
const WAIT: Duration = Duration::from_secs(10);

/// Every hooked call on files below `/var/lib/app/data` (the root), its
/// nested directory `a/b`, the sibling directory `other` and the sibling
/// `data2`; prints its pid last.
const EVERY_CALL: &str = r#"
import ctypes, mmap, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.c_long, ctypes.c_uint]
def check(ret):
    if ret != 0:
        raise OSError(ctypes.get_errno(), "libc call failed")
os.chdir("/var/lib/app")
fd = os.open("data/file", os.O_RDWR | os.O_CREAT, 0o644)
os.write(fd, b"a" * 100)                        # write 0+100
os.write(fd, b"b" * 50)                         # write 100+50
os.pwrite(fd, b"c" * 7, 4096)                   # pwrite64 4096+7
os.writev(fd, [b"d" * 3, b"e" * 4])             # writev 150+7
# glibc's pwritev is pwritev2 underneath: call the syscall itself.
iov = (ctypes.c_char_p * 2)(b"ff", b"gg")
vec = (ctypes.c_uint64 * 4)(ctypes.cast(iov[0], ctypes.c_void_p).value, 2,
                            ctypes.cast(iov[1], ctypes.c_void_p).value, 2)
SYS_pwritev = 296
if libc.syscall(SYS_pwritev, fd, vec, 2, 8192, 0) != 4:  # pwritev 8192+4
    raise OSError(ctypes.get_errno(), "pwritev")
os.pwritev(fd, [b"h" * 5], 9000, os.RWF_DSYNC)  # pwritev2 9000+5, then a sync
src = os.open("other/src", os.O_RDWR | os.O_CREAT, 0o644)
os.write(src, b"s" * 64)
os.copy_file_range(src, fd, 10, 0, 20000)       # copy_file_range 20000+10
os.lseek(fd, 157, os.SEEK_SET)
os.copy_file_range(src, fd, 6, 0)               # copy_file_range at the position 157+6
os.ftruncate(fd, 30000)                         # ftruncate 30000
check(libc.fallocate(fd, 1, 40000, 4096))       # fallocate KEEP_SIZE 40000+4096
os.fsync(fd)
os.fdatasync(fd)
check(libc.sync_file_range(fd, 0, 4096, 2))     # SYNC_FILE_RANGE_WRITE
check(libc.syncfs(fd))
m = mmap.mmap(fd, 4096)
m[0:1] = b"z"
m.flush()                                       # msync(MS_SYNC)
m.close()
os.sync()
os.close(fd)
app = os.open("data/file", os.O_WRONLY | os.O_APPEND)
os.write(app, b"i" * 3)                         # write at the end: 30000+3
os.pwrite(app, b"j" * 2, 0)                     # pwrite on O_APPEND: 30003+2
os.close(app)
deep = os.open("data/a/b/deep", os.O_WRONLY | os.O_CREAT, 0o644)
os.write(deep, b"k" * 9)                        # nested: write 0+9
os.close(deep)
os.truncate("data/a/b/deep", 5)                 # truncate by relative path
os.truncate("/var/lib/app/other/src", 1)        # outside: nothing
for name in ["other/x", "data2/x"]:
    out = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(out, b"x" * 11)                    # outside: nothing
    os.fsync(out)
    os.close(out)
moved = os.open("data/moved", os.O_WRONLY | os.O_CREAT, 0o644)
os.write(moved, b"m" * 4)                       # reported
os.rename("data/moved", "other/moved")
os.write(moved, b"n" * 4)                       # moved out: nothing
os.close(moved)
os.close(src)
# Stay until told: a truncate by path is resolved through /proc/PID.
deadline = time.monotonic() + 20
while not os.path.exists("/var/lib/app/exit") and time.monotonic() < deadline:
    time.sleep(0.01)
"#;

/// What a test compares of a record: everything but `seq` and `pid`/`tid`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    syscall: WriteKind,
    ino: u64,
    root: Option<RootId>,
    change: Change,
}

fn seen(records: &[Captured]) -> Vec<Seen> {
    records
        .iter()
        .map(|r| Seen {
            syscall: r.syscall,
            ino: r.ino,
            root: r.root,
            change: r.change.clone(),
        })
        .collect()
}

/// `(st_dev, ino)` of `path` inside `host`.
fn stat_in(host: &Host, path: &str) -> RootId {
    let meta = std::fs::metadata(host.outside_path(path))
        .unwrap_or_else(|error| panic!("stat {path} in host {}: {error}", host.name()));
    RootId {
        st_dev: meta.dev(),
        ino: meta.ino(),
    }
}

/// Drains `capture` until `done` holds for the records of process `pid`
/// taken so far, or panics after [`WAIT`] with what was seen.
fn collect_until(
    capture: &mut WriteCapture,
    pid: Option<u32>,
    what: &str,
    mut done: impl FnMut(&[Captured]) -> bool,
) -> Vec<Captured> {
    let mut records = Vec::new();
    let result = lab::wait_until(WAIT, what, || {
        capture.wait(Duration::from_millis(50))?;
        records.extend(
            capture
                .drain()
                .into_iter()
                .filter(|r| pid.is_none_or(|pid| r.pid == pid)),
        );
        Ok(done(&records))
    });
    if let Err(error) = result {
        panic!("{error:#}; saw {records:#?}");
    }
    records
}

/// Put before a python writer's script: the script runs in a child whose
/// descriptor table is the small one a process started by a shell or a
/// service manager has, and which the enter programs read directly
/// (`fd_file_direct`); the parent waits and exits with the child's status.
/// A process inherits a table as large as its parent's highest open
/// descriptor at the fork and keeps it through `exec` (and `closerange`):
/// this test process holds the capture's many, and cargo's jobserver pipe
/// (at 251 here) is inherited too, so a writer spawned directly only ever
/// takes the helper path. The child writes its pid to
/// `/var/lib/app/writer.pid`, for the records it makes.
const SMALL_TABLE: &str = r#"
import os
os.closerange(3, 1 << 16)
child = os.fork()
if child:
    _, status = os.waitpid(child, 0)
    os._exit(os.waitstatus_to_exitcode(status))
with open("/var/lib/app/writer.pid.tmp", "w") as pid:
    pid.write(str(os.getpid()))
os.rename("/var/lib/app/writer.pid.tmp", "/var/lib/app/writer.pid")
"#;

/// Starts `python3 -c` with `args` inside `app`, logged as `log`.
fn python(app: &Host, log: &str, args: &[&str]) -> LabProcess {
    app.spawn(log, Command::new("/usr/bin/python3").arg("-c").args(args))
        .unwrap()
}

/// Starts `script` behind [`SMALL_TABLE`]; returns the process and the pid
/// of the child that runs the script.
fn python_small_table(app: &Host, log: &str, script: &str) -> (LabProcess, u32) {
    let writer = python(app, log, &[&format!("{SMALL_TABLE}{script}")]);
    let file = app.outside_path("/var/lib/app/writer.pid");
    lab::wait_until(WAIT, "the writer's pid", || Ok(file.exists()))
        .unwrap_or_else(|error| panic!("{error:#}: {}", writer.log().unwrap()));
    let pid = std::fs::read_to_string(&file).unwrap().parse().unwrap();
    (writer, pid)
}

fn attach() -> WriteCapture {
    ebpf::ensure_mounted("tracefs", "/sys/kernel/tracing").unwrap();
    WriteCapture::attach(std::process::id()).expect(
        "the capture programs load and attach on this kernel (syscall tracepoints, BTF offsets)",
    )
}

#[test]
fn every_hooked_syscall_reports_file_range_and_root_below_a_root_and_nothing_elsewhere() {
    let lab = LabBuilder::new("capture").hosts(&["app"]).build().unwrap();
    let app = lab.host("app");
    // The files exist beforehand so that their inodes are known.
    app.sh(
        "mkdir -p /var/lib/app/data/a/b /var/lib/app/other /var/lib/app/data2 && \
         touch /var/lib/app/data/file /var/lib/app/data/a/b/deep /var/lib/app/data/moved",
    )
    .unwrap();
    let file = stat_in(app, "/var/lib/app/data/file").ino;
    let deep = stat_in(app, "/var/lib/app/data/a/b/deep").ino;
    let moved = stat_in(app, "/var/lib/app/data/moved").ino;
    let root_id = stat_in(app, "/var/lib/app/data");

    let mut capture = attach();
    let root = capture
        .add_root(&app.outside_path("/var/lib/app/data"), false)
        .unwrap();
    assert_eq!(root, root_id, "a root is named by its directory's stat");

    let at = |syscall, ino, change| Seen {
        syscall,
        ino,
        root: Some(root),
        change,
    };
    let write = |syscall, ino, offset, len| at(syscall, ino, Change::Write { offset, len });
    let sync = |syscall, ino, scope| Seen {
        syscall,
        ino,
        root: (scope == SyncScope::File).then_some(root),
        change: Change::Sync {
            scope,
            paused: false,
        },
    };
    let expected = vec![
        write(WriteKind::Write, file, 0, 100),
        write(WriteKind::Write, file, 100, 50),
        write(WriteKind::Pwrite, file, 4096, 7),
        write(WriteKind::Writev, file, 150, 7),
        write(WriteKind::Pwritev, file, 8192, 4),
        write(WriteKind::Pwritev2, file, 9000, 5),
        sync(WriteKind::Pwritev2, file, SyncScope::File),
        write(WriteKind::CopyFileRange, file, 20000, 10),
        write(WriteKind::CopyFileRange, file, 157, 6),
        at(WriteKind::Ftruncate, file, Change::Truncate { size: 30000 }),
        at(
            WriteKind::Fallocate,
            file,
            Change::Fallocate {
                offset: 40000,
                len: 4096,
                mode: 1,
            },
        ),
        sync(WriteKind::Fsync, file, SyncScope::File),
        sync(WriteKind::Fdatasync, file, SyncScope::File),
        sync(WriteKind::SyncFileRange, file, SyncScope::File),
        Seen {
            root: None,
            ..sync(WriteKind::Syncfs, file, SyncScope::Device)
        },
        sync(WriteKind::Msync, 0, SyncScope::AllRoots),
        sync(WriteKind::Sync, 0, SyncScope::AllRoots),
        write(WriteKind::Write, file, 30000, 3),
        write(WriteKind::Pwrite, file, 30003, 2),
        write(WriteKind::Write, deep, 0, 9),
        at(WriteKind::Truncate, deep, Change::Truncate { size: 5 }),
        write(WriteKind::Write, moved, 0, 4),
    ];
    let (mut writer, pid) = python_small_table(app, "every-call", EVERY_CALL);
    let records = collect_until(&mut capture, Some(pid), "every call's record", |r| {
        r.len() >= expected.len()
    });
    app.sh("touch /var/lib/app/exit").unwrap();
    let status = writer.wait_timeout(WAIT).unwrap();
    assert!(status.success(), "writer failed: {}", writer.log().unwrap());

    assert_eq!(seen(&records), expected, "records of the writer, in order");
    // One process, one thread: every record names it.
    assert!(records.iter().all(|r| r.tid == pid && !r.unresolved));
    let syncfs = records
        .iter()
        .find(|r| r.syscall == WriteKind::Syncfs)
        .unwrap();
    assert_eq!(syncfs.st_dev, root.st_dev, "syncfs names the root's device");
    assert_eq!(capture.lost().unwrap(), 0, "no record lost to a full ring");

    // Nothing more comes: the outside writes and the moved file's second
    // write were filtered in the kernel, not late.
    let late: Vec<_> = capture
        .drain()
        .into_iter()
        .filter(|r| r.pid == pid)
        .collect();
    assert!(late.is_empty(), "unexpected records {late:#?}");

    // Removing the root silences it.
    capture.remove_root(root).unwrap();
    app.sh("echo more >> /var/lib/app/data/file").unwrap();
    app.sh("echo sync >> /var/lib/app/data/file && sync")
        .unwrap();
    let after: Vec<_> = capture
        .drain()
        .into_iter()
        .filter(|r| r.ino == file)
        .collect();
    assert!(
        after.is_empty(),
        "records after the root was removed: {after:#?}"
    );
}

#[test]
fn a_file_deeper_than_the_walk_bound_is_reported_unresolved() {
    let lab = LabBuilder::new("capdeep").hosts(&["app"]).build().unwrap();
    let app = lab.host("app");
    let deep_dir: PathBuf = std::iter::once("/var/lib/app/data".to_owned())
        .chain((0..MAX_DEPTH).map(|i| format!("d{i}")))
        .collect();
    let deep_file = deep_dir.join("f");
    app.sh(&format!("mkdir -p {}", deep_dir.display())).unwrap();
    let mut capture = attach();
    capture
        .add_root(&app.outside_path("/var/lib/app/data"), false)
        .unwrap();
    app.sh(&format!("printf 12345 > {}", deep_file.display()))
        .unwrap();
    let ino = stat_in(app, deep_file.to_str().unwrap()).ino;
    let records = collect_until(&mut capture, None, "the deep write", |r| {
        r.iter().any(|r| r.ino == ino)
    });
    let record = records.iter().find(|r| r.ino == ino).unwrap();
    assert!(
        record.unresolved && record.root.is_none(),
        "a write {MAX_DEPTH} levels below the root is flagged unresolved, saw {record:?}"
    );
    assert_eq!(record.change, Change::Write { offset: 0, len: 5 });
}

/// Writes and syncs a file below the root, then creates `/var/lib/app/after`.
const SYNCER: &str = r#"
import os, sys
fd = os.open("/var/lib/app/data/log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
os.write(fd, b"record 1\n")
os.fsync(fd)
open("/var/lib/app/after", "w").close()
"#;

/// Whether process `pid` is stopped (state `T` in `/proc/PID/stat`).
fn stopped(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the parenthesised command name.
    stat.rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('T'))
}

#[test]
fn a_sync_pause_root_holds_fsync_until_released() {
    let lab = LabBuilder::new("cappause").hosts(&["app"]).build().unwrap();
    let app = lab.host("app");
    app.sh("mkdir -p /var/lib/app/data").unwrap();
    let after = app.outside_path("/var/lib/app/after");
    let mut capture = attach();
    let root = capture
        .add_root(&app.outside_path("/var/lib/app/data"), true)
        .unwrap();

    let mut writer = python(app, "syncer", &[SYNCER]);
    let pid = writer.pid();
    let records = collect_until(&mut capture, Some(pid), "the fsync record", |r| {
        r.iter().any(|r| r.syscall == WriteKind::Fsync)
    });
    let fsync = records
        .iter()
        .find(|r| r.syscall == WriteKind::Fsync)
        .unwrap();
    assert_eq!(
        fsync.change,
        Change::Sync {
            scope: SyncScope::File,
            paused: true
        }
    );
    assert_eq!(fsync.root, Some(root));
    assert!(
        records.iter().any(|r| r.syscall == WriteKind::Write),
        "the write before the fsync came first: {records:#?}"
    );

    lab::wait_until(WAIT, "the writer to stop", || Ok(stopped(pid))).unwrap();
    let pending = capture.pending().unwrap();
    assert_eq!(pending.len(), 1, "one paused thread, saw {pending:?}");
    assert_eq!((pending[0].pid, pending[0].tid), (pid, fsync.tid));
    assert_eq!(pending[0].seq, fsync.seq);
    // The entry knows when its process started, as /proc shows it (the
    // 22nd field, in ticks of USER_HZ, 100 on Linux): a signal never
    // reaches another process that gets its pid.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ticks: u64 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        pending[0].start / 10_000_000,
        ticks,
        "the paused entry's process start ({} ns) is not the writer's ({ticks} ticks)",
        pending[0].start
    );
    // Held: for a while it neither runs on nor exits.
    let held_since = Instant::now();
    while held_since.elapsed() < Duration::from_millis(300) {
        assert!(
            !after.exists() && writer.try_wait().unwrap().is_none(),
            "the writer went past its fsync without being released"
        );
        assert!(stopped(pid), "the writer is no longer stopped");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A release naming another sync record (a late one, for a pause this
    // thread already left) does not resume the pause it is in now.
    assert_eq!(
        capture
            .release(fsync.tid, fsync.seq.wrapping_sub(1))
            .unwrap(),
        Release::Superseded {
            paused_by: fsync.seq
        }
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        stopped(pid) && !after.exists(),
        "a stale release resumed the writer"
    );

    assert_eq!(
        capture.release(fsync.tid, fsync.seq).unwrap(),
        Release::Resumed
    );
    let status = writer.wait_timeout(WAIT).unwrap();
    assert!(
        status.success(),
        "the writer failed after release: {status}"
    );
    assert!(after.exists(), "the writer finished its work");
    assert!(capture.pending().unwrap().is_empty());
    assert_eq!(
        capture.release(fsync.tid, fsync.seq).unwrap(),
        Release::NotPaused
    );
}

/// Syncs the file system of a file below the root twice: first from a
/// thread named as a halo daemon's end-of-resync `syncfs`, then under
/// another name.
const NAMED_SYNCER: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NAME = 15
fd = os.open("/var/lib/app/data/f", os.O_RDWR | os.O_CREAT, 0o644)
os.write(fd, b"x")
libc.prctl(PR_SET_NAME, b"halo-syncfs", 0, 0, 0)
if libc.syncfs(fd) != 0:
    raise OSError(ctypes.get_errno(), "syncfs")
open("/var/lib/app/named-done", "w").close()
libc.prctl(PR_SET_NAME, b"app-syncer", 0, 0, 0)
if libc.syncfs(fd) != 0:
    raise OSError(ctypes.get_errno(), "syncfs")
open("/var/lib/app/after", "w").close()
"#;

#[test]
fn a_daemons_own_syncfs_is_reported_and_never_paused() {
    let lab = LabBuilder::new("capdaemonsync")
        .hosts(&["app"])
        .build()
        .unwrap();
    let app = lab.host("app");
    app.sh("mkdir -p /var/lib/app/data").unwrap();
    let named_done = app.outside_path("/var/lib/app/named-done");
    let after = app.outside_path("/var/lib/app/after");
    let mut capture = attach();
    capture
        .add_root(&app.outside_path("/var/lib/app/data"), true)
        .unwrap();

    let mut syncer = python(app, "named-syncer", &[NAMED_SYNCER]);
    let pid = syncer.pid();
    let records = collect_until(&mut capture, Some(pid), "two syncfs records", |r| {
        r.iter().filter(|r| r.syscall == WriteKind::Syncfs).count() >= 2
    });
    let syncs: Vec<&Captured> = records
        .iter()
        .filter(|r| r.syscall == WriteKind::Syncfs)
        .collect();
    // Under the daemon's name: reported, not paused, and it went on.
    assert!(
        matches!(syncs[0].change, Change::Sync { paused: false, .. }),
        "{:?}",
        syncs[0]
    );
    assert!(named_done.exists(), "the named syncfs was held");
    // Under any other name the same call on the same root is held.
    assert!(
        matches!(syncs[1].change, Change::Sync { paused: true, .. }),
        "{:?}",
        syncs[1]
    );
    lab::wait_until(WAIT, "the syncer to stop", || Ok(stopped(pid))).unwrap();
    assert!(!after.exists());
    assert_eq!(
        capture.release(syncs[1].tid, syncs[1].seq).unwrap(),
        Release::Resumed
    );
    let status = syncer.wait_timeout(WAIT).unwrap();
    assert!(status.success(), "the syncer failed: {status}");
    assert!(after.exists());
}

/// Opens a file below the root with `O_DSYNC` and writes it.
const DSYNC_WRITER: &str = r#"
import os
fd = os.open("/var/lib/app/data/journal", os.O_WRONLY | os.O_CREAT | os.O_DSYNC, 0o644)
os.write(fd, b"x" * 10)
os.write(fd, b"y" * 10)
"#;

#[test]
fn an_o_dsync_write_is_reported_then_paused_and_resume_lets_it_go() {
    let lab = LabBuilder::new("capdsync").hosts(&["app"]).build().unwrap();
    let app = lab.host("app");
    app.sh("mkdir -p /var/lib/app/data").unwrap();
    let mut capture = attach();
    capture
        .add_root(&app.outside_path("/var/lib/app/data"), true)
        .unwrap();
    let mut writer = python(app, "dsync", &[DSYNC_WRITER]);
    let pid = writer.pid();
    let records = collect_until(&mut capture, Some(pid), "the first write's sync", |r| {
        r.len() >= 2
    });
    assert_eq!(records[0].change, Change::Write { offset: 0, len: 10 });
    assert_eq!(
        records[1].change,
        Change::Sync {
            scope: SyncScope::File,
            paused: true
        }
    );
    lab::wait_until(WAIT, "the writer to stop", || Ok(stopped(pid))).unwrap();
    let early: Vec<_> = capture
        .drain()
        .into_iter()
        .filter(|r| r.pid == pid)
        .collect();
    assert!(
        early.is_empty(),
        "held after its first write, yet it went on: {early:#?}"
    );
    // `resume` releases a whole process (the peer is gone).
    assert_eq!(capture.resume(pid).unwrap(), 1);
    let records = collect_until(&mut capture, Some(pid), "the second write's sync", |r| {
        r.len() >= 2
    });
    assert_eq!(
        records[0].change,
        Change::Write {
            offset: 10,
            len: 10
        }
    );
    assert_eq!(capture.resume(pid).unwrap(), 1);
    let status = writer.wait_timeout(WAIT).unwrap();
    assert!(status.success(), "the writer failed: {status}");
    assert_eq!(capture.resume(pid).unwrap(), 0, "nothing left to resume");
}

/// Waits for `/var/lib/app/go`, then writes and fsyncs below the root.
const WAITING_WRITER: &str = r#"
import os, time
deadline = time.monotonic() + 20
while not os.path.exists("/var/lib/app/go"):
    if time.monotonic() > deadline:
        raise SystemExit("no go")
    time.sleep(0.01)
fd = os.open("/var/lib/app/data/own", os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, b"o" * 8)
os.fsync(fd)
print(os.getpid())
"#;

#[test]
fn the_excluded_process_is_neither_reported_nor_paused() {
    let lab = LabBuilder::new("capexcl").hosts(&["app"]).build().unwrap();
    let app = lab.host("app");
    app.sh("mkdir -p /var/lib/app/data").unwrap();
    let mut excluded = python(app, "excluded", &[WAITING_WRITER]);
    ebpf::ensure_mounted("tracefs", "/sys/kernel/tracing").unwrap();
    // The excluded process stands for the daemon, which applies replicated
    // data on the secondary.
    let mut capture = WriteCapture::attach(excluded.pid()).unwrap();
    capture
        .add_root(&app.outside_path("/var/lib/app/data"), true)
        .unwrap();
    app.sh("touch /var/lib/app/go").unwrap();
    let status = excluded.wait_timeout(WAIT).unwrap();
    assert!(
        status.success(),
        "the excluded writer finished without pause: {status}"
    );

    // Another process writing the same file is reported.
    app.sh("printf 1234 >> /var/lib/app/data/own").unwrap();
    let own = stat_in(app, "/var/lib/app/data/own").ino;
    let records = collect_until(&mut capture, None, "the other writer's record", |r| {
        r.iter().any(|r| r.ino == own && r.pid != excluded.pid())
    });
    let from_excluded: Vec<_> = records.iter().filter(|r| r.pid == excluded.pid()).collect();
    assert!(
        from_excluded.is_empty(),
        "records of the excluded process: {from_excluded:#?}"
    );
    assert!(capture.pending().unwrap().is_empty());
}

/// Makes 1000 one-byte writes below the root.
const STORM: &str = r#"
import os
fd = os.open("/var/lib/app/data/storm", os.O_WRONLY | os.O_CREAT, 0o644)
for _ in range(1000):
    os.write(fd, b"s")
print(os.getpid())
"#;

#[test]
fn a_full_ring_counts_every_record_it_could_not_take() {
    let lab = LabBuilder::new("caplost").hosts(&["app"]).build().unwrap();
    let app = lab.host("app");
    app.sh("mkdir -p /var/lib/app/data").unwrap();
    ebpf::ensure_mounted("tracefs", "/sys/kernel/tracing").unwrap();
    let mut capture = WriteCapture::attach_with(CaptureConfig {
        exclude_tgid: std::process::id(),
        ring_bytes: 4096,
        pin_dir: None,
    })
    .unwrap();
    capture
        .add_root(&app.outside_path("/var/lib/app/data"), false)
        .unwrap();
    let output = app
        .run(Command::new("/usr/bin/python3").args(["-c", STORM]))
        .unwrap();
    assert!(output.status.success(), "writer failed: {output:?}");
    let pid: u32 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap();
    let taken = capture.drain().iter().filter(|r| r.pid == pid).count() as u64;
    let lost = capture.lost().unwrap();
    assert!(lost > 0, "a 4 KiB ring cannot hold 1000 records");
    assert_eq!(
        taken + lost,
        1000,
        "every write is either in the ring or counted lost (taken {taken}, lost {lost})"
    );
}

/// `pwrite` 4 KiB + `fsync`, `argv[2]` times, on the file `argv[1]`; prints
/// the median, 99th percentile and mean of one round in nanoseconds.
const FSYNC_LOOP: &str = r#"
import os, sys, time
path, n = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
buf = b"x" * 4096
lat = []
for i in range(n):
    t = time.perf_counter_ns()
    os.pwrite(fd, buf, (i % 256) * 4096)
    os.fsync(fd)
    lat.append(time.perf_counter_ns() - t)
lat.sort()
print(lat[n // 2], lat[n * 99 // 100], sum(lat) // n)
"#;

/// Rounds of the fsync loop per measurement.
const ROUNDS: u32 = 400;

/// Runs [`FSYNC_LOOP`] on `dir/f` while releasing every paused sync at
/// once; returns (p50, p99, mean) in microseconds and how many pauses it
/// released.
fn fsync_round_trip(capture: &mut WriteCapture, app: &Host, dir: &str) -> ([f64; 3], u32) {
    let mut writer = python(
        app,
        "fsync-loop",
        &[FSYNC_LOOP, &format!("{dir}/f"), &ROUNDS.to_string()],
    );
    let pid = writer.pid();
    let mut released = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        capture.wait(Duration::from_millis(5)).unwrap();
        for record in capture.drain() {
            if record.pid == pid && matches!(record.change, Change::Sync { paused: true, .. }) {
                assert_eq!(
                    capture.release(record.tid, record.seq).unwrap(),
                    Release::Resumed
                );
                released += 1;
            }
        }
        if let Some(status) = writer.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the fsync loop did not finish");
    };
    let log = writer.log().unwrap();
    assert!(status.success(), "the fsync loop failed: {log}");
    let figures: Vec<f64> = log
        .split_whitespace()
        .map(|n| n.parse::<f64>().unwrap() / 1000.0)
        .collect();
    ([figures[0], figures[1], figures[2]], released)
}

#[test]
fn a_resume_loop_releases_every_paused_fsync_and_its_cost_is_measured() {
    let lab = LabBuilder::new("capcost").hosts(&["app"]).build().unwrap();
    let app = lab.host("app");
    let shm = format!("/dev/shm/halo-capcost-{}", std::process::id());
    app.sh(&format!("mkdir -p /var/lib/app/data {shm}"))
        .unwrap();
    let mut capture = attach();
    let mut table = Vec::new();
    for (fs, dir, outside) in [
        (
            "ext4",
            "/var/lib/app/data",
            app.outside_path("/var/lib/app/data"),
        ),
        ("tmpfs", shm.as_str(), PathBuf::from(&shm)),
    ] {
        for mode in ["no root", "async", "fsync"] {
            let root = match mode {
                "no root" => None,
                mode => Some(capture.add_root(&outside, mode == "fsync").unwrap()),
            };
            let (figures, released) = fsync_round_trip(&mut capture, app, dir);
            let expected = if mode == "fsync" { ROUNDS } else { 0 };
            assert_eq!(
                released, expected,
                "{fs}/{mode}: every fsync paused and released"
            );
            table.push(format!(
                "{fs:6} {mode:8} p50 {:8.1} us  p99 {:8.1} us  mean {:8.1} us",
                figures[0], figures[1], figures[2]
            ));
            if let Some(root) = root {
                capture.remove_root(root).unwrap();
            }
        }
    }
    std::fs::remove_dir_all(&shm).unwrap();
    println!(
        "pwrite 4 KiB + fsync, {ROUNDS} rounds:\n{}",
        table.join("\n")
    );
}

/// Writes to files whose directory's verdict the programs remembered, then
/// changes what is below a root: the directory moved in and out, an
/// ancestor moved in, a second name below the root, a root added. Waits
/// for `/var/lib/app/go` before its last write.
const MOVING: &str = r#"
import os, sys, time
os.chdir("/var/lib/app")
f = os.open("other/sub/f", os.O_WRONLY)
os.write(f, b"a")                       # outside: remembered
os.write(f, b"aa")                      # outside, from the remembered verdict
os.rename("other/sub", "data/sub")
os.write(f, b"bbb")                     # moved in with its directory: 3+3
os.rename("data/sub", "other/sub2")
os.write(f, b"cccc")                    # moved out: nothing
g = os.open("other/tree/a/b/g", os.O_WRONLY)
os.write(g, b"d")                       # outside: remembered for b
os.rename("other/tree", "data/tree")
os.write(g, b"ee")                      # an ancestor moved in: 1+2
os.link("other/linked", "data/linked")
out = os.open("other/linked", os.O_WRONLY)
inside = os.open("data/linked", os.O_WRONLY)
os.write(out, b"fffff")                 # through the name outside: nothing
os.write(inside, b"gggggg")             # through the name below the root: 0+6
os.write(out, b"h")                     # outside again: nothing
late = os.open("other/late/h", os.O_WRONLY)
os.write(late, b"i")                    # outside: remembered
open("ready", "w").close()
deadline = time.monotonic() + 20
while not os.path.exists("go"):
    if time.monotonic() > deadline:
        sys.exit("no go")
    time.sleep(0.01)
os.write(late, b"jj")                   # below the root added meanwhile: 1+2
"#;

/// Regression guard for the remembered verdicts (`CAPTURE_VERDICTS`): a
/// write outside every root is decided from its directory's verdict, and
/// every change that could make that verdict wrong must be seen.
#[test]
fn remembered_verdicts_follow_renames_second_names_and_new_roots() {
    let lab = LabBuilder::new("capmove").hosts(&["app"]).build().unwrap();
    let app = lab.host("app");
    app.sh(
        "mkdir -p /var/lib/app/data /var/lib/app/other/sub /var/lib/app/other/tree/a/b \
         /var/lib/app/other/late && cd /var/lib/app/other && \
         touch sub/f tree/a/b/g linked late/h",
    )
    .unwrap();
    let f = stat_in(app, "/var/lib/app/other/sub/f").ino;
    let g = stat_in(app, "/var/lib/app/other/tree/a/b/g").ino;
    let linked = stat_in(app, "/var/lib/app/other/linked").ino;
    let h = stat_in(app, "/var/lib/app/other/late/h").ino;

    let mut capture = attach();
    let data = capture
        .add_root(&app.outside_path("/var/lib/app/data"), false)
        .unwrap();
    let (mut writer, pid) = python_small_table(app, "moving", MOVING);
    let ready = app.outside_path("/var/lib/app/ready");
    lab::wait_until(WAIT, "the writer's first part", || Ok(ready.exists()))
        .unwrap_or_else(|error| panic!("{error:#}: {}", writer.log().unwrap()));
    let late = capture
        .add_root(&app.outside_path("/var/lib/app/other/late"), false)
        .unwrap();
    app.sh("touch /var/lib/app/go").unwrap();
    let status = writer.wait_timeout(WAIT).unwrap();
    assert!(status.success(), "writer failed: {}", writer.log().unwrap());

    let write = |ino, root, offset, len| Seen {
        syscall: WriteKind::Write,
        ino,
        root: Some(root),
        change: Change::Write { offset, len },
    };
    let expected = vec![
        write(f, data, 3, 3),
        write(g, data, 1, 2),
        write(linked, data, 0, 6),
        write(h, late, 1, 2),
    ];
    let records = collect_until(&mut capture, Some(pid), "the writes below a root", |r| {
        r.len() >= expected.len()
    });
    assert_eq!(
        seen(&records),
        expected,
        "exactly the writes below a root at the time of the write"
    );
    let late_records: Vec<_> = capture
        .drain()
        .into_iter()
        .filter(|r| r.pid == pid)
        .collect();
    assert!(
        late_records.is_empty(),
        "unexpected records {late_records:#?}"
    );
}

/// Writes through descriptors the programs reach two ways: a descriptor
/// below 64 in a table that never grew (read directly through the task's
/// embedded array), one above 63, and one below 64 once the table grew
/// (read through the helper); below a root and outside. Run behind
/// [`SMALL_TABLE`].
const DESCRIPTORS: &str = r#"
os.chdir("/var/lib/app")
low = os.open("data/f", os.O_WRONLY | os.O_CREAT, 0o644)
out = os.open("other/o", os.O_WRONLY | os.O_CREAT, 0o644)
assert low < 64 and out < 64, (low, out)
os.write(low, b"a" * 3)                 # 0+3, embedded table
os.write(out, b"x")                     # outside: nothing
high = os.dup2(low, 200)                # the table grows past 64
os.write(high, b"b" * 4)                # 3+4 through descriptor 200
os.write(low, b"c" * 5)                 # 7+5, grown table
os.write(out, b"y")                     # outside: nothing
os.write(os.dup2(out, 150), b"z")       # outside, descriptor 150: nothing
"#;

/// Regression guard for the two ways the enter programs find a file: both
/// must report the same writes, and neither anything outside.
#[test]
fn writes_through_low_high_and_grown_descriptor_tables_are_all_reported() {
    let lab = LabBuilder::new("capfds").hosts(&["app"]).build().unwrap();
    let app = lab.host("app");
    app.sh("mkdir -p /var/lib/app/data /var/lib/app/other")
        .unwrap();
    let mut capture = attach();
    let data = capture
        .add_root(&app.outside_path("/var/lib/app/data"), false)
        .unwrap();
    let (mut writer, pid) = python_small_table(app, "descriptors", DESCRIPTORS);
    let status = writer.wait_timeout(WAIT).unwrap();
    assert!(status.success(), "writer failed: {}", writer.log().unwrap());
    let f = stat_in(app, "/var/lib/app/data/f").ino;
    let write = |offset, len| Seen {
        syscall: WriteKind::Write,
        ino: f,
        root: Some(data),
        change: Change::Write { offset, len },
    };
    let expected = vec![write(0, 3), write(3, 4), write(7, 5)];
    let records = collect_until(&mut capture, Some(pid), "the three writes", |r| {
        r.len() >= expected.len()
    });
    assert_eq!(seen(&records), expected);
    let late: Vec<_> = capture
        .drain()
        .into_iter()
        .filter(|r| r.pid == pid)
        .collect();
    assert!(late.is_empty(), "writes outside were reported: {late:#?}");
}

/// Writes while the capture is attached, blocks in a write below the root
/// that completes while it is detached, renames a directory out of the
/// root meanwhile, and writes again once it is attached: run behind
/// [`SMALL_TABLE`].
const DETACHED: &str = r#"
import os, sys, time
os.chdir("/var/lib/app")
def wait(name):
    deadline = time.monotonic() + 20
    while not os.path.exists(name):
        if time.monotonic() > deadline:
            sys.exit("no " + name)
        time.sleep(0.005)
f = os.open("data/sub/f", os.O_WRONLY)
os.write(f, b"a")                       # attached: 0+1, data/sub remembered below
pipe = os.open("data/pipe", os.O_RDWR)
os.set_blocking(pipe, False)
for size in (4096, 1):
    try:
        while True:
            os.write(pipe, b"p" * size)
    except BlockingIOError:
        pass
os.set_blocking(pipe, True)
open("full", "w").close()
os.write(pipe, b"q")                    # blocks; returns while detached
os.rename("data/sub", "other/sub")      # while detached: unseen
open("moved", "w").close()
wait("attached")
out = os.open("other/x", os.O_WRONLY | os.O_CREAT, 0o644)
os.write(out, b"xyz")                   # outside: nothing (not the pipe's record)
os.write(f, b"ccc")                     # moved out while detached: nothing
g = os.open("data/g", os.O_WRONLY)
os.write(g, b"dddd")                    # 0+4
"#;

/// Whether thread `pid` waits in `write(2)`.
fn blocked_in_write(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/syscall")).is_ok_and(|text| {
        text.split_whitespace().next() == Some(libc::SYS_write.to_string().as_str())
    })
}

/// A node that serves no mirror module keeps its capture loaded but
/// detached (no system call of the host pays for it): detached, nothing is
/// reported; attached again, a call whose exit ran while detached is not
/// reported with another call's result, and a rename made while detached
/// is not hidden by a verdict remembered before.
#[test]
fn a_detached_capture_reports_nothing_and_forgets_what_it_could_not_see() {
    let lab = LabBuilder::new("capdetach")
        .hosts(&["app"])
        .build()
        .unwrap();
    let app = lab.host("app");
    app.sh(
        "mkdir -p /var/lib/app/data/sub /var/lib/app/other && cd /var/lib/app && \
         touch data/sub/f data/g && mkfifo data/pipe",
    )
    .unwrap();
    let f = stat_in(app, "/var/lib/app/data/sub/f").ino;
    let g = stat_in(app, "/var/lib/app/data/g").ino;

    let mut capture = attach();
    assert!(capture.attached());
    let data = capture
        .add_root(&app.outside_path("/var/lib/app/data"), false)
        .unwrap();
    let (mut writer, pid) = python_small_table(app, "detached", DETACHED);
    let first = collect_until(&mut capture, Some(pid), "the first write", |r| {
        r.iter().any(|r| r.ino == f)
    });
    assert_eq!(
        seen(&first[..1]),
        vec![Seen {
            syscall: WriteKind::Write,
            ino: f,
            root: Some(data),
            change: Change::Write { offset: 0, len: 1 },
        }]
    );
    let full = app.outside_path("/var/lib/app/full");
    lab::wait_until(WAIT, "the writer blocked on the full pipe", || {
        Ok(full.exists() && blocked_in_write(pid))
    })
    .unwrap_or_else(|error| panic!("{error:#}: {}", writer.log().unwrap()));

    let detaching = Instant::now();
    capture.set_attached(false).unwrap();
    assert!(capture.detached());
    // Not asserted (timing): what a detach costs the thread that drops the
    // links, which the daemon leaves to a thread of its own.
    println!("detached in {:?}", detaching.elapsed());
    // Unblock the write while nothing is attached: its exit is missed.
    let mut pipe = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(app.outside_path("/var/lib/app/data/pipe"))
        .unwrap();
    let moved = app.outside_path("/var/lib/app/moved");
    let mut buf = vec![0u8; 1 << 16];
    lab::wait_until(WAIT, "the writer past its blocked write", || {
        let _ = std::io::Read::read(&mut pipe, &mut buf);
        Ok(moved.exists())
    })
    .unwrap_or_else(|error| panic!("{error:#}: {}", writer.log().unwrap()));
    let _ = capture.drain();

    let attaching = Instant::now();
    capture.set_attached(true).unwrap();
    assert!(capture.attached());
    println!("attached in {:?}", attaching.elapsed());
    app.sh("touch /var/lib/app/attached").unwrap();
    let status = writer.wait_timeout(WAIT).unwrap();
    assert!(status.success(), "writer failed: {}", writer.log().unwrap());
    let mut records = collect_until(&mut capture, Some(pid), "the last write", |r| {
        r.iter().any(|r| r.ino == g)
    });
    // The writer is gone: every record it caused is in the ring.
    records.extend(capture.drain().into_iter().filter(|r| r.pid == pid));
    assert_eq!(
        seen(&records),
        vec![Seen {
            syscall: WriteKind::Write,
            ino: g,
            root: Some(data),
            change: Change::Write { offset: 0, len: 4 },
        }],
        "after the re-attach, only the write below the root"
    );
}

/// `syncfs` on a file beside the roots (on their device), then creates the
/// file named by its argument.
const DEVICE_SYNCER: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open("/var/lib/app/beside", os.O_WRONLY | os.O_CREAT, 0o644)
if libc.syncfs(fd) != 0:
    raise OSError(ctypes.get_errno(), "syncfs")
open(sys.argv[1], "w").close()
"#;

/// Where the helper pins the capture of the "dead daemon", in the lab
/// host's own bpffs (it goes with the host's mount namespace).
const DEAD_PINS: &str = "/sys/fs/bpf/halo-capture-test";

/// A dead daemon's capture in the lab host, set up before its holder
/// starts and undone when dropped, also when the test fails: the holder
/// killed, every capture pinned below [`DEAD_PINS`] retired and every task
/// it held resumed (its programs pause syncs machine-wide, whoever calls
/// them).
struct Dead<'a> {
    app: &'a Host,
    holder: Option<LabProcess>,
    capture: Option<ebpf::capture::PreviousCapture>,
}

impl Drop for Dead<'_> {
    fn drop(&mut self) {
        if let Some(mut holder) = self.holder.take() {
            let _ = holder.kill();
        }
        let mut captures: Vec<_> = self.capture.take().into_iter().collect();
        if let Ok(found) = self.app.enter(|| {
            Ok(ebpf::capture::PreviousCapture::find(
                DEAD_PINS.as_ref(),
                "/nonexistent".as_ref(),
            ))
        }) {
            captures.extend(found);
        }
        for capture in captures {
            if let Ok(tasks) = self.app.enter(|| capture.retire()) {
                for task in tasks {
                    // Only the process it paused, not one that took its pid.
                    let _ = ebpf::capture::signal_process(
                        task.pid,
                        task.start,
                        nix::sys::signal::Signal::SIGCONT,
                    );
                }
            }
        }
    }
}

/// `sync()`, then creates the file named by its argument.
const WHOLE_SYNCER: &str = r#"
import os, sys
os.sync()
open(sys.argv[1], "w").close()
"#;

/// A daemon that died left its capture attached with two roots on one
/// device, one of them `sync_pause`. Once the next daemon takes that root
/// over, neither a `syncfs` of the device nor a `sync()` is held any more:
/// the dead capture's root counts, which its programs test first, lose the
/// root too.
#[test]
fn a_root_taken_over_from_a_dead_daemons_capture_no_longer_holds_syncs_of_its_device() {
    let lab = LabBuilder::new("captakeover")
        .hosts(&["app"])
        .build()
        .unwrap();
    let app = lab.host("app");
    app.sh("mkdir -p /var/lib/app/taken /var/lib/app/kept")
        .unwrap();
    let mut dead = Dead {
        app,
        holder: None,
        capture: None,
    };
    let holder = dead.holder.insert(
        app.spawn(
            "holder",
            Command::new(env!("CARGO_BIN_EXE_halo-capture-hold")).args([
                &format!("{DEAD_PINS}/dead"),
                "/var/lib/app/taken:pause",
                "/var/lib/app/kept",
            ]),
        )
        .unwrap(),
    );
    lab::wait_until(WAIT, "the holder's capture attached", || {
        Ok(holder.log()?.contains("ready"))
    })
    .unwrap_or_else(|error| panic!("{error:#}: {}", holder.log().unwrap_or_default()));
    holder.kill().unwrap();
    let mut found = app
        .enter(|| {
            Ok(ebpf::capture::PreviousCapture::find(
                DEAD_PINS.as_ref(),
                "/nonexistent".as_ref(),
            ))
        })
        .unwrap();
    assert_eq!(found.len(), 1, "the dead daemon's pinned capture");
    let previous = dead.capture.insert(found.remove(0));
    // Its pins are in the host's bpffs: looked at from there.
    assert!(app.enter(|| Ok(previous.attached())).unwrap());

    // Dead, its capture still holds a sync of the device, for `taken`.
    let held_done = app.outside_path("/var/lib/app/held-done");
    let held = python(
        app,
        "held-syncer",
        &[DEVICE_SYNCER, "/var/lib/app/held-done"],
    );
    lab::wait_until(WAIT, "the first syncer held", || Ok(stopped(held.pid()))).unwrap();
    assert!(!held_done.exists());

    let taken = stat_in(app, "/var/lib/app/taken");
    let previous = dead.capture.as_mut().unwrap();
    let returned = app.enter(|| previous.take_over(taken)).unwrap();
    assert!(
        app.enter(|| Ok(previous.attached())).unwrap(),
        "`kept` is still the dead capture's"
    );
    // A sync of the whole device names no root: take_over leaves it to the
    // capture's retirement (the hub resumes it then). Resumed here by hand.
    assert!(
        returned.iter().all(|task| task.pid != held.pid()),
        "{returned:?}"
    );
    held.signal(nix::sys::signal::Signal::SIGCONT).unwrap();
    lab::wait_until(WAIT, "the first syncer done", || Ok(held_done.exists())).unwrap();

    // A sync of the device, or of every root, now concerns `kept` alone,
    // which does not pause.
    for (script, log, done) in [
        (DEVICE_SYNCER, "free-syncfs", "/var/lib/app/free-syncfs"),
        (WHOLE_SYNCER, "free-sync", "/var/lib/app/free-sync"),
    ] {
        let done_path = app.outside_path(done);
        let free = python(app, log, &[script, done]);
        let result = lab::wait_until(WAIT, "the syncer done", || {
            Ok(done_path.exists() || stopped(free.pid()))
        });
        assert!(
            result.is_ok() && done_path.exists(),
            "{log}: held by the dead capture after its only sync_pause root was taken over \
             (stopped: {})",
            stopped(free.pid())
        );
    }
}
