//! What loading the capture programs needs from the running kernel: the
//! struct member offsets (from BTF) and a check of the syscall tracepoint
//! record layout (against tracefs).

use anyhow::{bail, Context as _};
use halo_common::capture::{tracepoint_layout, CaptureOffsets};

use crate::ebpf::btf::Btf;

/// Where tracefs lives; the syscall tracepoints' record formats are read there.
pub(crate) const TRACEFS: &str = "/sys/kernel/tracing";

/// The syscalls the capture hooks, as `sys_enter_<name>`/`sys_exit_<name>`,
/// with the program attached to their entry (`capture_exit` takes every
/// exit).
pub(crate) const SYSCALLS: [(&str, &str); 15] = [
    ("write", "capture_enter_write"),
    ("pwrite64", "capture_enter_pwrite64"),
    ("writev", "capture_enter_writev"),
    ("pwritev", "capture_enter_pwritev"),
    ("pwritev2", "capture_enter_pwritev2"),
    ("copy_file_range", "capture_enter_copy_file_range"),
    ("ftruncate", "capture_enter_ftruncate"),
    ("truncate", "capture_enter_truncate"),
    ("fallocate", "capture_enter_fallocate"),
    ("fsync", "capture_enter_fsync"),
    ("fdatasync", "capture_enter_fdatasync"),
    ("sync_file_range", "capture_enter_sync_file_range"),
    ("syncfs", "capture_enter_syncfs"),
    ("msync", "capture_enter_msync"),
    ("sync", "capture_enter_sync"),
];

/// The program attached to every `sys_exit_*` of [`SYSCALLS`].
pub(crate) const EXIT_PROGRAM: &str = "capture_exit";

/// The calls that may move a directory from below a root to outside or
/// back (renames) or free its inode number (directory removals), and the
/// program on each of their tracepoints: each makes the programs' remembered
/// verdicts stale. They are attached before the programs that remember.
pub(crate) const NAMESPACE_HOOKS: [(&str, &str); 9] = [
    ("sys_enter_rename", "capture_namespace"),
    ("sys_exit_rename", "capture_namespace"),
    ("sys_enter_renameat", "capture_namespace"),
    ("sys_exit_renameat", "capture_namespace"),
    ("sys_enter_renameat2", "capture_namespace"),
    ("sys_exit_renameat2", "capture_namespace"),
    ("sys_enter_rmdir", "capture_namespace"),
    ("sys_exit_rmdir", "capture_namespace"),
    ("sys_enter_unlinkat", "capture_enter_unlinkat"),
];

/// The struct member offsets the capture programs need, from BTF.
pub fn capture_offsets(btf: &Btf) -> anyhow::Result<CaptureOffsets> {
    let at = |strukt: &str, member: &str| {
        btf.member_offset(strukt, member)
            .with_context(|| format!("finding {strukt}.{member} in the kernel's BTF"))
    };
    Ok(CaptureOffsets {
        task_files: at("task_struct", "files")?,
        files_fdt: at("files_struct", "fdt")?,
        files_fd_array: at("files_struct", "fd_array")?,
        fdtable_fd: at("fdtable", "fd")?,
        fdtable_max_fds: at("fdtable", "max_fds")?,
        file_inode: at("file", "f_inode")?,
        file_pos: at("file", "f_pos")?,
        file_flags: at("file", "f_flags")?,
        file_dentry: at("file", "f_path")? + at("path", "dentry")?,
        dentry_parent: at("dentry", "d_parent")?,
        dentry_inode: at("dentry", "d_inode")?,
        inode_ino: at("inode", "i_ino")?,
        inode_sb: at("inode", "i_sb")?,
        inode_size: at("inode", "i_size")?,
        sb_dev: at("super_block", "s_dev")?,
        sb_root: at("super_block", "s_root")?,
        inode_generation: at("inode", "i_generation")?,
        task_group_leader: at("task_struct", "group_leader")?,
        task_start_boottime: at("task_struct", "start_boottime")?,
        ready: 1,
        _pad: 0,
    })
}

/// Checks that the syscall tracepoints lay out their records the way the
/// programs read them (`common::capture::tracepoint_layout`), every exit
/// included.
pub(crate) fn check_tracepoint_layout() -> anyhow::Result<()> {
    let exits = SYSCALLS.iter().map(|(syscall, _)| {
        (
            format!("sys_exit_{syscall}"),
            "ret",
            tracepoint_layout::EXIT_RET,
        )
    });
    let fields = tracepoint_layout::FIELDS
        .iter()
        .map(|&(event, field, offset)| (event.to_owned(), field, offset));
    for (event, field, offset) in fields.chain(exits) {
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
    fn every_enter_field_the_programs_read_belongs_to_a_hooked_syscall() {
        for (event, field, _) in tracepoint_layout::FIELDS {
            let hooked = SYSCALLS.iter().any(|(syscall, _)| {
                *event == format!("sys_enter_{syscall}") || *event == format!("sys_exit_{syscall}")
            }) || NAMESPACE_HOOKS.iter().any(|(hooked, _)| hooked == event);
            assert!(hooked, "{event}.{field} is read but {event} is not hooked");
        }
    }
}
