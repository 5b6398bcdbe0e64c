//! depot-os: the one layer of depot that talks to the operating system.
//!
//! Every external program depot runs (mount, lvm, iscsiadm, multipath,
//! qemu-img, ...) goes through [`CommandRunner::run`], so that argv handling,
//! secret redaction, timeouts, output limits and logging are done once, here.
//!
//! The other modules build on it or sit next to it:
//! [`mount`] (mount/umount and the mount table), [`direct`] (aligned
//! `O_DIRECT` I/O), [`confine`] (opening volume data without following a
//! symlink out of its domain), [`fsutil`] (atomic writes, fsync, statvfs,
//! fallocate), [`lvm`] (typed lvm2 commands with a device filter and a cache),
//! [`qemu_img`] (image create/info/check), [`worker`] (running I/O that
//! may hang with a timeout), [`fsproc`] (file-system calls on storage
//! mounts in helper processes that depotd can abandon), [`sanlock`] (host ids and
//! lease areas through the sanlock daemon, its library loaded at run time),
//! [`fence`] (power fencing through fence-agents),
//! and for SAN storage [`iscsi`] (iscsiadm),
//! [`multipath`] (maps by WWID and path states), [`scsi`] (host rescans)
//! and [`sysfs_block`] (device facts from sysfs).

pub mod command;
pub mod confine;
pub mod direct;
mod fd_path;
pub mod fence;
pub mod fsproc;
pub mod fsutil;
pub mod iscsi;
pub mod lvm;
pub mod mount;
pub mod multipath;
pub mod qemu_img;
pub mod sanlock;
pub mod scsi;
mod secret;
pub mod sysfs_block;
pub mod worker;

pub use command::{
    Cmd, CmdError, CommandRunner, ExitStatus, Output, Watch, DEFAULT_STDOUT_LIMIT,
    STDERR_TAIL_LIMIT,
};
pub use confine::{Beneath, DataPath, LvDevice, Refused};
pub use direct::{
    open_direct, open_direct_data, probe_alignment, read_at_direct, sync_and_close,
    write_at_direct, AlignedBuf, Alignment, AlignmentSource, DirectError,
};
pub use fsutil::{is_stale_handle, write_atomic, FsError, FsStats, ZeroMethod};
pub use mount::{MountEntry, MountError, Mounter};
pub use qemu_img::{
    CheckResult, ConvertOptions, ImageFormat, ImageInfo, Preallocation, QemuImg, QemuImgError,
};
pub use secret::Secret;
pub use worker::{IoWorker, Liveness, WorkerError, WorkerStats};
