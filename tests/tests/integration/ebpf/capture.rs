//! The write-capture tracepoints report the inode, offset and length of
//! writes a process makes, and nothing for files that are not captured.

use std::{process::Command, time::Duration};

use halo::ebpf::{
    self,
    capture::{CapturedWrite, WriteCapture},
};
use halo_common::capture::WriteKind;
use halo_tests::lab::{self, LabBuilder};

/// Writes with `write`, `pwrite` and an `O_APPEND` `write`, to the captured
/// file and to a file next to it; prints its pid.
const WRITER: &str = r#"
import os
fd = os.open("/var/lib/app/data", os.O_WRONLY)
os.write(fd, b"a" * 100)
os.write(fd, b"b" * 50)
os.pwrite(fd, b"c" * 7, 4096)
os.close(fd)
fd = os.open("/var/lib/app/data", os.O_WRONLY | os.O_APPEND)
os.write(fd, b"d" * 3)
os.close(fd)
other = os.open("/var/lib/app/other", os.O_WRONLY | os.O_CREAT, 0o644)
os.write(other, b"x" * 11)
os.close(other)
print(os.getpid())
"#;

#[test]
fn tracepoints_report_inode_offset_and_length_of_a_lab_process_writes() {
    ebpf::ensure_mounted("tracefs", "/sys/kernel/tracing").unwrap();
    let lab = LabBuilder::new("capture").hosts(&["app"]).build().unwrap();
    let app = lab.host("app");
    let stat = app
        .sh("mkdir -p /var/lib/app && : > /var/lib/app/data && stat -c '%d %i' /var/lib/app/data")
        .unwrap();
    let (dev, ino) = match stat.split_whitespace().collect::<Vec<_>>()[..] {
        [dev, ino] => (dev.parse::<u64>().unwrap(), ino.parse::<u64>().unwrap()),
        _ => panic!("unexpected stat output {stat:?}"),
    };

    let mut capture = WriteCapture::attach().unwrap();
    capture.watch_inode(dev, ino).unwrap();
    let output = app
        .run(Command::new("/usr/bin/python3").args(["-c", WRITER]))
        .unwrap();
    assert!(output.status.success(), "writer failed: {output:?}");
    let pid: u32 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap();

    let write = |kind, offset, len| CapturedWrite {
        st_dev: dev,
        ino,
        offset,
        len,
        kind,
        pid,
    };
    let expected = vec![
        write(WriteKind::Write, 0, 100),
        write(WriteKind::Write, 100, 50),
        write(WriteKind::Pwrite, 4096, 7),
        write(WriteKind::Write, 4103, 3),
    ];
    let mut seen = Vec::new();
    let complete = lab::wait_until(Duration::from_secs(5), "four write events", || {
        seen.extend(capture.drain());
        Ok(seen.len() >= expected.len())
    });
    assert!(complete.is_ok(), "expected {expected:#?}, saw {seen:#?}");
    assert_eq!(seen, expected, "events for the captured file, in order");
    assert_eq!(capture.lost().unwrap(), 0, "no event lost to a full ring");

    // The file's size is where the last reported range ends.
    let size = app.sh("stat -c %s /var/lib/app/data").unwrap();
    assert_eq!(size.trim(), "4106");
}
