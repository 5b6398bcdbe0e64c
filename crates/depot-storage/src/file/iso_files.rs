//! `StorageDomain.getFileStats`: the files of an ISO domain (in VDSM's
//! ISO image directory) whose names match a glob.

use depot_api::Code;
use depot_os::fsproc::FileKind;

use crate::layout::{DomainPaths, IMAGES, ISO_IMAGE};
use crate::mount_fs::MountFs;
use crate::{StorageError, StorageResult};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStat {
    pub name: String,
    pub size: u64,
    /// Change time, seconds since the epoch.
    pub ctime: i64,
    /// Whether QEMU can read it: readable by others, or by its group when
    /// that is `qemu` or `kvm` (VDSM's validateQemuReadable, whose answer
    /// becomes the file's status 0 or 469).
    pub qemu_readable: bool,
}

/// The groups whose members read disk images: QEMU's own and VDSM's
/// (`DISKIMAGE_GROUP`, `METADATA_GROUP`).
const IMAGE_GROUPS: [&str; 2] = ["qemu", "kvm"];

/// VDSM's validateQemuReadable on a file's mode and group.
fn qemu_readable(mode: u32, gid: u32, image_gids: &[u32]) -> bool {
    const S_IRGRP: u32 = 0o040;
    const S_IROTH: u32 = 0o004;
    mode & S_IROTH != 0 || (mode & S_IRGRP != 0 && image_gids.contains(&gid))
}

/// Regular files in `<domain>/images/<ISO image>/` matching `pattern`
/// (`*` and `?`, no path separators), sorted by name: one listing and a
/// stat per matching file, in the mount's helpers (a symlink is neither
/// followed nor listed; a mount in trouble is 2001 naming it).
pub fn list(
    fs: &MountFs,
    paths: &DomainPaths,
    pattern: &str,
    case_sensitive: bool,
) -> StorageResult<Vec<FileStat>> {
    const OP: &str = "list domain files";
    if pattern.contains('/') {
        return Err(StorageError::new(
            Code::InvalidParameterException,
            OP,
            format!("pattern={pattern:?} (no '/' allowed)"),
        ));
    }
    let dir = paths.root.join(IMAGES).join(ISO_IMAGE);
    let entries = match fs.listdir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StorageError::io(Code::MiscFileReadException, OP, &dir, e)),
    };
    let image_gids: Vec<u32> = IMAGE_GROUPS
        .iter()
        .filter_map(|g| depot_os::fsutil::group_id(g))
        .collect();
    let mut out = Vec::new();
    for e in entries {
        // A name that is not UTF-8 cannot be asked for by a pattern, nor
        // reached through the helpers; a link must not lead the listing
        // elsewhere.
        if !e.utf8 || e.kind != FileKind::File || !glob_match(pattern, &e.name, case_sensitive) {
            continue;
        }
        let path = dir.join(&e.name);
        let md = match fs.lstat(&path) {
            Ok(md) => md,
            // Removed since the listing.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => {
                return Err(StorageError::io(
                    Code::MiscFileReadException,
                    OP,
                    &path,
                    err,
                ))
            }
        };
        if md.kind == FileKind::File {
            out.push(FileStat {
                name: e.name,
                size: md.size,
                ctime: md.ctime_s,
                qemu_readable: qemu_readable(md.mode, md.gid, &image_gids),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `*` matches any run of characters, `?` one character.
pub fn glob_match(pattern: &str, name: &str, case_sensitive: bool) -> bool {
    let fold = |s: &str| -> Vec<char> {
        if case_sensitive {
            s.chars().collect()
        } else {
            s.chars().flat_map(char::to_lowercase).collect()
        }
    };
    let (p, n) = (fold(pattern), fold(name));
    // Iterative matcher with one backtrack point for the last `*`.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*.iso", "fedora.iso", true));
        assert!(!glob_match("*.iso", "fedora.ISO", true));
        assert!(glob_match("*.iso", "fedora.ISO", false));
        assert!(glob_match("f?dora*", "fedora-40.iso", true));
        assert!(glob_match("*", "", true));
        assert!(!glob_match("a*b", "acbd", true));
        assert!(glob_match("a*b*c", "aXbYbZc", true));
    }

    #[test]
    fn lists_regular_files_only() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = DomainPaths::new(tmp.path().join("sd"));
        let fs = MountFs::in_process(tmp.path(), std::time::Duration::from_secs(30));
        let dir = paths.root.join(IMAGES).join(ISO_IMAGE);
        std::fs::create_dir_all(dir.join("sub.iso")).unwrap();
        std::fs::write(dir.join("a.iso"), b"12345").unwrap();
        std::fs::write(dir.join("b.txt"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("evil.iso")).unwrap();
        let files = list(&fs, &paths, "*.iso", true).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!((files[0].name.as_str(), files[0].size), ("a.iso", 5));
        assert!(list(&fs, &paths, "../*", true).is_err());
    }

    #[test]
    fn qemu_reads_what_others_or_its_groups_may_read() {
        let kvm = [36];
        assert!(qemu_readable(0o100644, 0, &kvm));
        assert!(qemu_readable(0o100640, 36, &kvm));
        assert!(!qemu_readable(0o100640, 0, &kvm));
        assert!(!qemu_readable(0o100600, 36, &kvm));
        assert!(!qemu_readable(0o100660, 36, &[]));
    }
}
