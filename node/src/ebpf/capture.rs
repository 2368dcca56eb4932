//! User-space side of the mirror's write capture: loading the tracepoint
//! programs with the kernel's struct offsets, choosing the captured files,
//! and reading the reported writes.

use std::{os::unix::fs::MetadataExt as _, path::Path};

use anyhow::{bail, Context as _};
use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
    Ebpf, EbpfLoader,
};
use halo_common::capture::{tracepoint_layout, CaptureOffsets, FileKey, WriteEvent, WriteKind};

use super::{btf::Btf, CAPTURE_OBJECT};

/// Where tracefs lives; the syscall tracepoints' record formats are read there.
const TRACEFS: &str = "/sys/kernel/tracing";

/// The tracepoint programs and the syscalls they attach to.
const HOOKS: [(&str, &str); 4] = [
    ("capture_enter_write", "sys_enter_write"),
    ("capture_exit_write", "sys_exit_write"),
    ("capture_enter_pwrite64", "sys_enter_pwrite64"),
    ("capture_exit_pwrite64", "sys_exit_pwrite64"),
];

/// One write reported by the kernel, with the device in user space's
/// (`st_dev`) encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapturedWrite {
    pub st_dev: u64,
    pub ino: u64,
    pub offset: u64,
    pub len: u64,
    pub kind: WriteKind,
    pub pid: u32,
}

/// The loaded and attached capture programs; dropping it detaches them.
pub struct WriteCapture {
    files: HashMap<MapData, FileKey, u8>,
    events: RingBuf<MapData>,
    // Keeps the programs and the remaining maps alive.
    ebpf: Ebpf,
}

impl WriteCapture {
    /// Loads the capture programs with offsets from the running kernel's BTF
    /// and attaches them to the syscall tracepoints.
    pub fn attach() -> anyhow::Result<Self> {
        check_tracepoint_layout().context("checking the syscall tracepoint formats")?;
        let btf = Btf::from_kernel().context("reading the kernel's BTF")?;
        let offsets = capture_offsets(&btf)?;
        let mut ebpf = EbpfLoader::new()
            .override_global("CAPTURE_OFFSETS", &offsets, true)
            .load(CAPTURE_OBJECT)
            .context("loading the write-capture object")?;
        for (program, syscall) in HOOKS {
            let tracepoint: &mut TracePoint = ebpf
                .program_mut(program)
                .with_context(|| format!("the capture object has no {program} program"))?
                .try_into()
                .with_context(|| format!("{program} is not a tracepoint program"))?;
            tracepoint
                .load()
                .with_context(|| format!("the kernel refused {program}"))?;
            tracepoint.attach("syscalls", syscall).with_context(|| {
                format!("attaching {program} to syscalls:{syscall} (is tracefs mounted?)")
            })?;
        }
        let files = HashMap::try_from(
            ebpf.take_map("CAPTURE_FILES")
                .context("the capture object has no CAPTURE_FILES map")?,
        )?;
        let events = RingBuf::try_from(
            ebpf.take_map("CAPTURE_EVENTS")
                .context("the capture object has no CAPTURE_EVENTS map")?,
        )?;
        Ok(WriteCapture {
            files,
            events,
            ebpf,
        })
    }

    /// Starts reporting writes to the file at `path`.
    pub fn watch(&mut self, path: &Path) -> anyhow::Result<()> {
        let meta = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
        self.watch_inode(meta.dev(), meta.ino())
    }

    /// Starts reporting writes to inode `ino` of the device `st_dev`.
    pub fn watch_inode(&mut self, st_dev: u64, ino: u64) -> anyhow::Result<()> {
        let key = FileKey {
            ino,
            dev: st_dev_to_kernel(st_dev),
            _pad: 0,
        };
        self.files
            .insert(key, 1, 0)
            .with_context(|| format!("adding inode {ino} to CAPTURE_FILES"))
    }

    /// The writes reported so far and not yet taken, in ring order.
    pub fn drain(&mut self) -> Vec<CapturedWrite> {
        let mut writes = Vec::new();
        while let Some(item) = self.events.next() {
            if item.len() < std::mem::size_of::<WriteEvent>() {
                continue;
            }
            // SAFETY: the record is a WriteEvent written by our program; it
            // may be unaligned in the ring, hence read_unaligned.
            let event: WriteEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let Some(kind) = WriteKind::from_raw(event.kind) else {
                continue;
            };
            writes.push(CapturedWrite {
                st_dev: kernel_dev_to_st_dev(event.dev),
                ino: event.ino,
                offset: event.offset,
                len: event.len,
                kind,
                pid: event.tgid,
            });
        }
        writes
    }

    /// Writes the programs could not report because the ring buffer was full.
    pub fn lost(&self) -> anyhow::Result<u64> {
        let map = self
            .ebpf
            .map("CAPTURE_LOST")
            .context("the capture object has no CAPTURE_LOST map")?;
        let lost = PerCpuArray::<_, u64>::try_from(map)?;
        Ok(lost.get(&0, 0)?.iter().sum())
    }
}

/// The struct member offsets the capture programs need, from BTF.
pub fn capture_offsets(btf: &Btf) -> anyhow::Result<CaptureOffsets> {
    let at = |strukt: &str, member: &str| {
        btf.member_offset(strukt, member)
            .with_context(|| format!("finding {strukt}.{member} in the kernel's BTF"))
    };
    Ok(CaptureOffsets {
        task_files: at("task_struct", "files")?,
        files_fdt: at("files_struct", "fdt")?,
        fdtable_fd: at("fdtable", "fd")?,
        fdtable_max_fds: at("fdtable", "max_fds")?,
        file_inode: at("file", "f_inode")?,
        file_pos: at("file", "f_pos")?,
        inode_ino: at("inode", "i_ino")?,
        inode_sb: at("inode", "i_sb")?,
        sb_dev: at("super_block", "s_dev")?,
        ready: 1,
    })
}

/// Checks that the syscall tracepoints lay out their records the way the
/// programs read them (`common::capture::tracepoint_layout`).
fn check_tracepoint_layout() -> anyhow::Result<()> {
    let expect = [
        ("sys_enter_write", "fd", tracepoint_layout::ENTER_FD),
        ("sys_enter_pwrite64", "fd", tracepoint_layout::ENTER_FD),
        (
            "sys_enter_pwrite64",
            "pos",
            tracepoint_layout::ENTER_PWRITE_POS,
        ),
        ("sys_exit_write", "ret", tracepoint_layout::EXIT_RET),
        ("sys_exit_pwrite64", "ret", tracepoint_layout::EXIT_RET),
    ];
    for (event, field, offset) in expect {
        let path = format!("{TRACEFS}/events/syscalls/{event}/format");
        let format = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {path} (is tracefs mounted on {TRACEFS}?)"))?;
        match field_offset(&format, field) {
            Some(found) if found == offset => {}
            Some(found) => {
                bail!("{event}.{field} is at offset {found}, the programs read {offset}")
            }
            None => bail!("{path} has no field {field}"),
        }
    }
    Ok(())
}

/// The offset of `field` in a tracefs `format` description, whose lines read
/// `field:unsigned int fd;<TAB>offset:16;<TAB>size:8;<TAB>signed:0;`.
fn field_offset(format: &str, field: &str) -> Option<usize> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';');
        let declaration = parts.next()?.strip_prefix("field:")?;
        let name = declaration.rsplit([' ', '*']).next()?;
        if name != field {
            return None;
        }
        parts.find_map(|part| part.trim().strip_prefix("offset:")?.parse().ok())
    })
}

/// The kernel encodes `s_dev` as `major << 20 | minor`.
fn kernel_dev_to_st_dev(dev: u32) -> u64 {
    libc::makedev(dev >> 20, dev & 0xf_ffff)
}

fn st_dev_to_kernel(st_dev: u64) -> u32 {
    (libc::major(st_dev) << 20) | (libc::minor(st_dev) & 0xf_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PWRITE_FORMAT: &str = "name: sys_enter_pwrite64
ID: 700
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:unsigned int fd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:const char * buf;\toffset:24;\tsize:8;\tsigned:0;
\tfield:size_t count;\toffset:32;\tsize:8;\tsigned:0;
\tfield:loff_t pos;\toffset:40;\tsize:8;\tsigned:0;
";

    #[test]
    fn tracefs_format_offsets_are_read_by_field_name() {
        assert_eq!(field_offset(PWRITE_FORMAT, "fd"), Some(16));
        assert_eq!(field_offset(PWRITE_FORMAT, "buf"), Some(24));
        assert_eq!(field_offset(PWRITE_FORMAT, "pos"), Some(40));
        assert_eq!(field_offset(PWRITE_FORMAT, "count"), Some(32));
        assert_eq!(field_offset(PWRITE_FORMAT, "ret"), None);
    }

    #[test]
    fn device_numbers_round_trip_between_kernel_and_glibc_encodings() {
        // 259:3 (an NVMe partition) and 8:1, and a minor above 255, which
        // glibc stores in the high bits.
        for (major, minor) in [(259, 3), (8, 1), (7, 300), (0, 0x2a)] {
            let st_dev = libc::makedev(major, minor);
            let kernel = st_dev_to_kernel(st_dev);
            assert_eq!(kernel, (major << 20) | minor);
            assert_eq!(kernel_dev_to_st_dev(kernel), st_dev);
        }
    }
}
