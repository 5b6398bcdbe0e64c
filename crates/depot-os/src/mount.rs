//! Mounting and unmounting through `mount(8)`/`umount(8)`, and reading the
//! kernel's mount table from `/proc/self/mountinfo`.
//!
//! # Why the programs and not `mount(2)`
//!
//! `mount(8)` runs the filesystem helpers (`mount.glusterfs`, `mount.nfs`)
//! that do the real work for network filesystems; calling `mount(2)` would
//! bypass them. It also runs through [`CommandRunner`], so every mount has a
//! timeout and one log line. A mount of a dead server can hang in the
//! kernel; the runner's timeout kills the helper's whole process group.
//!
//! # Why `/proc/self/mountinfo` and not `/proc/mounts`
//!
//! mountinfo has the mount id, the root of the mount inside its filesystem
//! and the propagation fields, and it separates per-mount options from
//! superblock options. Both files escape space, tab, newline and backslash in
//! paths as `\040`, `\011`, `\012` and `\134`; [`parse_mountinfo`] decodes
//! them. Lookups never `stat()` the mount points: a stat on a dead NFS mount
//! blocks forever, reading mountinfo does not.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::command::{Cmd, CmdError, CommandRunner};

/// Where the kernel's mount table of this process's mount namespace is.
pub const MOUNTINFO_PATH: &str = "/proc/self/mountinfo";

/// A failed mount operation. Each variant names the operation and its
/// paths, so it can be logged alone.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// `mount` ran and failed (or timed out).
    #[error("mount {source_spec} on {target} failed: {cause}")]
    Mount {
        source_spec: String,
        target: PathBuf,
        #[source]
        cause: Box<CmdError>,
    },

    /// `umount` ran and failed (or timed out).
    #[error("umount {target} failed: {cause}")]
    Umount {
        target: PathBuf,
        #[source]
        cause: Box<CmdError>,
    },

    /// An argument that `mount(8)` would misread (e.g. an empty option or
    /// one with a comma, which would split into two options).
    #[error("mount {target}: invalid argument: {reason}")]
    InvalidArgument { target: PathBuf, reason: String },

    /// The mount table could not be read.
    #[error("cannot read mount table {path}: {cause}")]
    ReadTable {
        path: PathBuf,
        #[source]
        cause: io::Error,
    },

    /// A line of the mount table is not in the documented format.
    #[error("cannot parse mount table line {line_no}: {reason}: {line:?}")]
    Parse {
        line_no: usize,
        line: String,
        reason: &'static str,
    },
}

impl MountError {
    /// The command error, for the variants that ran a command.
    pub fn cmd_error(&self) -> Option<&CmdError> {
        match self {
            MountError::Mount { cause, .. } | MountError::Umount { cause, .. } => Some(cause),
            _ => None,
        }
    }

    /// umount refused because the mount is in use (EBUSY: "target is
    /// busy"; the runner runs commands with `LC_ALL=C`).
    pub fn is_busy(&self) -> bool {
        match self {
            MountError::Umount { cause, .. } => match &**cause {
                CmdError::Failed { stderr, .. } => stderr.contains("busy"),
                _ => false,
            },
            _ => false,
        }
    }
}

/// One line of `/proc/self/mountinfo`, escapes decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Unique id of the mount (may be reused after unmount).
    pub mount_id: u32,
    /// Id of the parent mount.
    pub parent_id: u32,
    /// `major:minor` of the filesystem's device (`st_dev`).
    pub device: String,
    /// The directory of the filesystem that is the root of this mount
    /// (not `/` for bind mounts of a subdirectory).
    pub root: PathBuf,
    /// The mount point.
    pub target: PathBuf,
    /// Per-mount options (`rw`, `noatime`, ...).
    pub options: Vec<String>,
    /// Propagation fields such as `shared:1`, `master:2` (may be empty).
    pub optional_fields: Vec<String>,
    /// Filesystem type, e.g. `ext4`, `fuse.glusterfs`, `nfs4`.
    pub fstype: String,
    /// The mount source: a device, `server:/export`, or e.g. `tmpfs`.
    pub source: String,
    /// Superblock options (shared by all mounts of the filesystem).
    pub super_options: Vec<String>,
}

/// Runs `mount` and `umount` through the command runner.
#[derive(Debug, Clone)]
pub struct Mounter {
    runner: CommandRunner,
    mount_program: OsString,
    umount_program: OsString,
}

impl Mounter {
    /// A mounter running `mount` and `umount` from `PATH`.
    pub fn new(runner: CommandRunner) -> Self {
        Mounter {
            runner,
            mount_program: "mount".into(),
            umount_program: "umount".into(),
        }
    }

    /// Runs `mount [-t FSTYPE] [-o a,b] -- SOURCE TARGET` (argv, no shell).
    ///
    /// `--` keeps a source or target that starts with `-` from being read
    /// as an option. Options are joined with commas, so one option may not
    /// contain a comma or be empty.
    pub fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: Option<&str>,
        options: &[String],
        timeout: Duration,
    ) -> Result<(), MountError> {
        if let Some(bad) = options.iter().find(|o| o.is_empty() || o.contains(',')) {
            return Err(MountError::InvalidArgument {
                target: target.to_owned(),
                reason: format!("mount option {bad:?} is empty or contains a comma"),
            });
        }
        let mut cmd = Cmd::new(&self.mount_program, timeout);
        if let Some(t) = fstype {
            cmd = cmd.args(["-t", t]);
        }
        if !options.is_empty() {
            cmd = cmd.arg("-o").arg(options.join(","));
        }
        let cmd = cmd.arg("--").arg(source).arg(target);
        self.runner
            .run(&cmd)
            .map(|_| ())
            .map_err(|cause| MountError::Mount {
                source_spec: source.to_owned(),
                target: target.to_owned(),
                cause: Box::new(cause),
            })
    }

    /// Runs `umount [-f] [-l] -- TARGET`.
    ///
    /// `force` (`-f`) aborts pending requests to an unreachable NFS server;
    /// `lazy` (`-l`) detaches the mount now and cleans up when it is no
    /// longer busy. The timeout matters: umount of a dead NFS mount without
    /// `-l` can block.
    pub fn umount(
        &self,
        target: &Path,
        force: bool,
        lazy: bool,
        timeout: Duration,
    ) -> Result<(), MountError> {
        let mut cmd = Cmd::new(&self.umount_program, timeout);
        if force {
            cmd = cmd.arg("-f");
        }
        if lazy {
            cmd = cmd.arg("-l");
        }
        let cmd = cmd.arg("--").arg(target);
        self.runner
            .run(&cmd)
            .map(|_| ())
            .map_err(|cause| MountError::Umount {
                target: target.to_owned(),
                cause: Box::new(cause),
            })
    }
}

/// Reads and parses [`MOUNTINFO_PATH`].
pub fn read_mountinfo() -> Result<Vec<MountEntry>, MountError> {
    let path = Path::new(MOUNTINFO_PATH);
    let bytes = std::fs::read(path).map_err(|cause| MountError::ReadTable {
        path: path.to_owned(),
        cause,
    })?;
    parse_mountinfo(&bytes)
}

/// The mount at `target` in the current mount table, if any.
///
/// When several mounts stack on one directory the last one listed is the
/// visible one, so the last match wins. The path is compared by components
/// (a trailing `/` does not matter) but not resolved: symlinks are not
/// followed, since resolving could block on a hung mount. Pass the
/// canonical path.
pub fn find_by_target(target: &Path) -> Result<Option<MountEntry>, MountError> {
    Ok(find_in(read_mountinfo()?, target))
}

/// [`find_by_target`] over an already-read table.
pub fn find_in(entries: impl IntoIterator<Item = MountEntry>, target: &Path) -> Option<MountEntry> {
    entries.into_iter().filter(|e| e.target == target).last()
}

/// Parses the text of a mountinfo file (see `proc(5)`):
///
/// ```text
/// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
/// ```
///
/// Bytes are taken as they are: paths need not be UTF-8. Other text fields
/// are decoded lossily.
pub fn parse_mountinfo(text: &[u8]) -> Result<Vec<MountEntry>, MountError> {
    text.split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(i, line)| parse_line(line).map_err(|reason| parse_error(i + 1, line, reason)))
        .collect()
}

fn parse_error(line_no: usize, line: &[u8], reason: &'static str) -> MountError {
    MountError::Parse {
        line_no,
        line: String::from_utf8_lossy(line).into_owned(),
        reason,
    }
}

fn parse_line(line: &[u8]) -> Result<MountEntry, &'static str> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let sep = fields
        .iter()
        .position(|f| *f == b"-")
        .ok_or("no ' - ' separator")?;
    if sep < 6 {
        return Err("fewer than 6 fields before the separator");
    }
    if fields.len() < sep + 4 {
        return Err("fewer than 3 fields after the separator");
    }
    let number = |f: &[u8], what: &'static str| -> Result<u32, &'static str> {
        std::str::from_utf8(f)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(what)
    };
    Ok(MountEntry {
        mount_id: number(fields[0], "bad mount id")?,
        parent_id: number(fields[1], "bad parent id")?,
        device: text(fields[2]),
        root: path(fields[3]),
        target: path(fields[4]),
        options: list(fields[5]),
        optional_fields: fields[6..sep].iter().map(|f| text(f)).collect(),
        fstype: text(fields[sep + 1]),
        source: text(fields[sep + 2]),
        // Nothing after the superblock options is defined today; if a
        // future kernel adds fields, ignoring them beats failing.
        super_options: list(fields[sep + 3]),
    })
}

fn path(field: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape(field)))
}

fn text(field: &[u8]) -> String {
    String::from_utf8_lossy(&unescape(field)).into_owned()
}

fn list(field: &[u8]) -> Vec<String> {
    field
        .split(|&b| b == b',')
        .filter(|o| !o.is_empty())
        .map(text)
        .collect()
}

/// Decodes the kernel's `\ooo` octal escapes. A backslash not followed by
/// three octal digits is kept as it is.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' {
            if let Some(d) = field.get(i + 1..i + 4) {
                if d.iter().all(|c| (b'0'..=b'7').contains(c)) {
                    let v = u32::from(d[0] - b'0') * 64
                        + u32::from(d[1] - b'0') * 8
                        + u32::from(d[2] - b'0');
                    if let Ok(byte) = u8::try_from(v) {
                        out.push(byte);
                        i += 4;
                        continue;
                    }
                }
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_plain_line() {
        let e = parse_mountinfo(
            b"36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n",
        )
        .unwrap();
        assert_eq!(
            e,
            vec![MountEntry {
                mount_id: 36,
                parent_id: 35,
                device: "98:0".into(),
                root: "/mnt1".into(),
                target: "/mnt2".into(),
                options: vec!["rw".into(), "noatime".into()],
                optional_fields: vec!["master:1".into()],
                fstype: "ext3".into(),
                source: "/dev/root".into(),
                super_options: vec!["rw".into(), "errors=continue".into()],
            }]
        );
    }

    #[test]
    fn decodes_escapes_and_optional_fields() {
        let text = b"22 27 0:21 / /proc rw,relatime - proc proc rw\n\
            101 27 0:50 / /rhev/data\\040center/mnt/srv:_my\\011ex\\012p\\134q rw shared:1 master:2 - fuse.glusterfs srv:/vol\\040a rw,user_id=0\n";
        let e = parse_mountinfo(text).unwrap();
        assert_eq!(e.len(), 2);
        let g = &e[1];
        assert_eq!(g.mount_id, 101);
        assert_eq!(
            g.target,
            PathBuf::from("/rhev/data center/mnt/srv:_my\tex\np\\q")
        );
        assert_eq!(g.optional_fields, vec!["shared:1", "master:2"]);
        assert_eq!(g.fstype, "fuse.glusterfs");
        assert_eq!(g.source, "srv:/vol a");
        assert_eq!(g.super_options, vec!["rw", "user_id=0"]);
        assert_eq!(g.options, vec!["rw"]);
    }

    #[test]
    fn non_escape_backslash_is_kept() {
        assert_eq!(unescape(br"a\x\04\0401"), b"a\\x\\04 1".to_vec());
        // \777 does not fit a byte: kept literally.
        assert_eq!(unescape(br"\777"), br"\777".to_vec());
    }

    #[test]
    fn rejects_malformed_lines() {
        let err = parse_mountinfo(b"1 2 0:1 / /x rw ext4 /dev/x rw\n").unwrap_err();
        assert!(matches!(err, MountError::Parse { line_no: 1, .. }), "{err}");
        let err = parse_mountinfo(b"x 2 0:1 / /x rw - ext4 /dev/x rw\n").unwrap_err();
        assert!(err.to_string().contains("bad mount id"), "{err}");
        let err = parse_mountinfo(b"1 2 0:1 / /x rw - ext4\n").unwrap_err();
        assert!(err.to_string().contains("after the separator"), "{err}");
    }

    #[test]
    fn last_stacked_mount_wins() {
        let text = b"1 0 0:1 / / rw - ext4 /dev/vda rw\n\
            2 1 0:2 / /mnt rw - tmpfs first rw\n\
            3 2 0:3 / /mnt rw - tmpfs second rw\n";
        let entries = parse_mountinfo(text).unwrap();
        let e = find_in(entries.clone(), Path::new("/mnt/")).unwrap();
        assert_eq!(e.source, "second");
        assert!(find_in(entries, Path::new("/other")).is_none());
    }

    #[test]
    fn reads_the_real_table() {
        let entries = read_mountinfo().unwrap();
        assert!(entries.iter().any(|e| e.target == Path::new("/")));
    }

    #[test]
    fn rejects_option_with_comma() {
        let m = Mounter::new(CommandRunner::new());
        let err = m
            .mount(
                "tmpfs",
                Path::new("/nonexistent"),
                Some("tmpfs"),
                &["size=1m,mode=700".into()],
                Duration::from_secs(5),
            )
            .unwrap_err();
        assert!(matches!(err, MountError::InvalidArgument { .. }), "{err}");
    }

    /// Detaches the mount if the test did not get to unmount it.
    struct MountGuard(PathBuf);

    impl Drop for MountGuard {
        fn drop(&mut self) {
            if matches!(find_by_target(&self.0), Ok(Some(_))) {
                let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }

    #[test]
    #[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
    fn mounts_finds_and_unmounts_tmpfs() {
        depot_testkit::require_root();
        let dir = tempfile::tempdir().unwrap();
        // A space in the path exercises the \040 escape end to end.
        let target = dir.path().join("mnt point");
        std::fs::create_dir(&target).unwrap();
        let m = Mounter::new(CommandRunner::new());
        let t = Duration::from_secs(10);
        m.mount(
            "depot-test",
            &target,
            Some("tmpfs"),
            &["size=1m".into(), "mode=0700".into()],
            t,
        )
        .unwrap();
        let _guard = MountGuard(target.clone());

        let e = find_by_target(&target).unwrap().expect("mount is listed");
        assert_eq!(e.fstype, "tmpfs");
        assert_eq!(e.source, "depot-test");
        assert!(e.super_options.iter().any(|o| o == "size=1024k"), "{e:?}");
        assert!(e.super_options.iter().any(|o| o == "mode=700"), "{e:?}");

        m.umount(&target, false, false, t).unwrap();
        assert!(find_by_target(&target).unwrap().is_none());

        // Unmounting again fails with umount's own message.
        let err = m.umount(&target, false, false, t).unwrap_err();
        let cmd = err.cmd_error().expect("a command error");
        assert!(cmd.stderr().contains("not mounted"), "{err}");
    }

    #[test]
    #[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
    fn failed_mount_reports_stderr() {
        depot_testkit::require_root();
        let dir = tempfile::tempdir().unwrap();
        let m = Mounter::new(CommandRunner::new());
        let err = m
            .mount(
                "x",
                dir.path(),
                Some("no-such-fs-type"),
                &[],
                Duration::from_secs(10),
            )
            .unwrap_err();
        assert!(matches!(err, MountError::Mount { .. }), "{err}");
        assert!(!err.cmd_error().unwrap().stderr().is_empty(), "{err}");
        let _guard = MountGuard(dir.path().to_owned());
    }
}
