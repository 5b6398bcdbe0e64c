//! Opening data files without being led elsewhere by a symlink.
//!
//! depotd runs as root and opens volume data on storage it does not
//! control: an NFS export, a GlusterFS volume, files another host wrote. A
//! symlink planted where a volume file should be would make root read or
//! write whatever it points at (an OVF_STORE upload overwrote a file
//! outside the domain that way). So volume data is opened through a
//! [`DataPath`] that carries the rule for it:
//!
//! - [`Beneath`] (file domains): a regular file at a relative path beneath
//!   a trusted directory, on that directory's file system. The path is
//!   walked one component at a time with `openat(O_PATH | O_NOFOLLOW)`
//!   from the directory's descriptor, each step checked (a directory on the
//!   same device; the last one a regular file), and the file is then
//!   opened with the caller's flags through `/proc/self/fd/N`: the very
//!   inode that was checked, not a path that could be swapped meanwhile.
//! - [`LvDevice`] (block domains): a link that must point at
//!   `/dev/<vg>/<lv>`, whose node must be the device-mapper device of that
//!   LV (its name in sysfs), checked on the opened descriptor.
//! - a plain [`Path`]: no rule (tests, benchmarks, files depot just made).
//!
//! A refusal is an [`io::Error`] carrying a [`Refused`]; [`refusal`] finds
//! it. Nothing is opened for writing (or read) before the checks pass, so
//! a FIFO or a device node where a file should be is never opened either.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// Something a data file is opened from: a path and the rule for opening
/// it (see the [module docs](self)).
pub trait DataPath {
    /// The path, for messages and for programs that take a path.
    fn path(&self) -> &Path;

    /// Opens the file with `opts` if it passes the rule.
    fn open_with(&self, opts: &OpenOptions) -> io::Result<File>;
}

impl DataPath for Path {
    fn path(&self) -> &Path {
        self
    }

    fn open_with(&self, opts: &OpenOptions) -> io::Result<File> {
        opts.open(self)
    }
}

impl DataPath for PathBuf {
    fn path(&self) -> &Path {
        self
    }

    fn open_with(&self, opts: &OpenOptions) -> io::Result<File> {
        opts.open(self)
    }
}

/// Why a [`DataPath`] was not opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refused {
    /// The path that was asked for.
    pub path: PathBuf,
    /// What is wrong, naming the path or the component at fault.
    pub reason: String,
}

pub(crate) fn refused(path: &Path, reason: impl Into<String>) -> io::Error {
    io::Error::other(Refused {
        path: path.to_owned(),
        reason: reason.into(),
    })
}

/// The [`Refused`] inside `e`, if the error is a refusal by a rule rather
/// than a failure of the OS.
pub fn refusal(e: &io::Error) -> Option<&Refused> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<Refused>())
}

/// What a file is, for messages.
pub(crate) fn kind_of(md: &fs::Metadata) -> &'static str {
    let t = md.file_type();
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "an unknown kind of file"
    }
}

/// The object behind an `O_PATH` descriptor, opened again with `opts`
/// through procfs: the same inode, whatever its path is now.
fn reopen(checked: &File, md: &fs::Metadata, path: &Path, opts: &OpenOptions) -> io::Result<File> {
    let file = opts.open(format!("/proc/self/fd/{}", checked.as_raw_fd()))?;
    let now = file.metadata()?;
    if (now.dev(), now.ino()) != (md.dev(), md.ino()) {
        return Err(refused(
            path,
            format!("{} changed while it was opened", path.display()),
        ));
    }
    Ok(file)
}

fn open_path(dir: Option<&File>, name: &Path, flags: OFlag) -> io::Result<File> {
    let raw = nix::fcntl::openat(
        dir.map(AsRawFd::as_raw_fd),
        name,
        flags | OFlag::O_PATH | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)?;
    // SAFETY: openat just returned this descriptor; nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(raw) }))
}

/// What the last component of a [`Beneath`] must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    File,
    Dir,
}

/// A regular file (or, for [`Beneath::check_dir`], a directory) at `rel`
/// beneath the directory `root`, reached without following a symlink and
/// without leaving `root`'s file system. `root` itself is trusted (it may
/// be reached through links, as a LOCALFS mount point is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beneath {
    root: PathBuf,
    rel: PathBuf,
    path: PathBuf,
}

impl Beneath {
    /// `rel` is relative and made of plain names (no `..`, no `.`): any
    /// other is refused when opened.
    pub fn new(root: impl Into<PathBuf>, rel: impl Into<PathBuf>) -> Beneath {
        let (root, rel) = (root.into(), rel.into());
        Beneath {
            path: root.join(&rel),
            root,
            rel,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path beneath the root, as given.
    pub fn rel(&self) -> &Path {
        &self.rel
    }

    /// Checks the file without opening it for I/O; its metadata.
    pub fn check(&self) -> io::Result<fs::Metadata> {
        self.walk(Want::File).map(|(_, md)| md)
    }

    /// Checks that `rel` is a directory beneath `root` (no symlink on the
    /// way or at the end, the same file system).
    pub fn check_dir(&self) -> io::Result<()> {
        self.walk(Want::Dir).map(drop)
    }

    /// The `O_PATH` descriptor of the directory holding the last
    /// component, reached with the same checks as [`walk`](Self::walk)
    /// (every component a directory, no symlink, `root`'s file system),
    /// with the last component's name and `root`'s device. The last
    /// component itself is not looked at: it may not exist yet (a file to
    /// create). The helper processes (the fsproc module) use it with the
    /// `*at` calls, which never leave that directory.
    pub(crate) fn parent(&self) -> io::Result<(File, &Path, u64)> {
        self.parent_via(None)
    }

    /// [`parent`](Self::parent), starting from the deepest directory of
    /// the path that `walked` holds (reached by an earlier walk from the
    /// same root, with the same checks), and keeping there each directory
    /// this walk checks.
    pub(crate) fn parent_walked(&self, walked: &mut Walked) -> io::Result<(File, &Path, u64)> {
        if walked.root != self.root {
            return self.parent_via(None);
        }
        self.parent_via(Some(walked))
    }

    fn parent_via(&self, mut walked: Option<&mut Walked>) -> io::Result<(File, &Path, u64)> {
        let names = self.names()?;
        let (last, dirs) = names.split_last().expect("names() is never empty");
        // From the deepest directory already walked, or from the root.
        let mut from = 0;
        let mut start = None;
        if let Some(w) = walked.as_deref_mut() {
            for n in (0..=dirs.len()).rev() {
                if let Some((dir, dev)) = w.get(&dirs[..n])? {
                    (from, start) = (n, Some((dir, dev)));
                    break;
                }
            }
        }
        let (mut dir, dev) = match start {
            Some(found) => found,
            None => {
                let root = open_path(None, &self.root, OFlag::O_DIRECTORY)?;
                let dev = root.metadata()?.dev();
                if let Some(w) = walked.as_deref_mut() {
                    w.keep(&[], &root, dev)?;
                }
                (root, dev)
            }
        };
        let mut here = self.root.clone();
        here.extend(&dirs[..from]);
        for (i, name) in dirs.iter().enumerate().skip(from) {
            here.push(name);
            let next = open_path(Some(&dir), name, OFlag::O_NOFOLLOW)?;
            let md = next.metadata()?;
            self.check_step(&here, &md, dev)?;
            if !md.is_dir() {
                return Err(refused(
                    &self.path,
                    format!("{} is {}, not a directory", here.display(), kind_of(&md)),
                ));
            }
            if let Some(w) = walked.as_deref_mut() {
                w.keep(&dirs[..=i], &next, dev)?;
            }
            dir = next;
        }
        Ok((dir, last, dev))
    }

    /// Refuses a symlink or another file system at `here`.
    fn check_step(&self, here: &Path, md: &fs::Metadata, dev: u64) -> io::Result<()> {
        if md.file_type().is_symlink() {
            return Err(refused(
                &self.path,
                format!(
                    "{} is a symbolic link; nothing is opened through one beneath {}",
                    here.display(),
                    self.root.display()
                ),
            ));
        }
        if md.dev() != dev {
            return Err(refused(
                &self.path,
                format!(
                    "{} is on another file system than {}",
                    here.display(),
                    self.root.display()
                ),
            ));
        }
        Ok(())
    }

    /// The components of `rel`: plain names only, at least one.
    fn names(&self) -> io::Result<Vec<&Path>> {
        let names: Vec<&Path> = self
            .rel
            .components()
            .map(|c| match c {
                Component::Normal(n) => Ok(Path::new(n)),
                _ => Err(refused(
                    &self.path,
                    format!(
                        "{} is not a plain path beneath {}",
                        self.rel.display(),
                        self.root.display()
                    ),
                )),
            })
            .collect::<io::Result<_>>()?;
        if names.is_empty() {
            return Err(refused(
                &self.path,
                format!("no file name beneath {}", self.root.display()),
            ));
        }
        Ok(names)
    }

    /// The `O_PATH` descriptor of the last component and its metadata,
    /// after every check.
    fn walk(&self, want: Want) -> io::Result<(File, fs::Metadata)> {
        let names = self.names()?;
        let root = open_path(None, &self.root, OFlag::O_DIRECTORY)?;
        let dev = root.metadata()?.dev();
        let mut here = self.root.clone();
        let mut dir = root;
        for (i, name) in names.iter().enumerate() {
            here.push(name);
            let last = i + 1 == names.len();
            let next = open_path(Some(&dir), name, OFlag::O_NOFOLLOW)?;
            let md = next.metadata()?;
            let is = kind_of(&md);
            self.check_step(&here, &md, dev)?;
            let ok = match (last, want) {
                (false, _) | (true, Want::Dir) => md.is_dir(),
                (true, Want::File) => md.is_file(),
            };
            if !ok {
                let should = if last && want == Want::File {
                    "a regular file"
                } else {
                    "a directory"
                };
                return Err(refused(
                    &self.path,
                    format!("{} is {is}, not {should}", here.display()),
                ));
            }
            if last {
                return Ok((next, md));
            }
            dir = next;
        }
        unreachable!("the loop returns at the last name")
    }
}

impl DataPath for Beneath {
    fn path(&self) -> &Path {
        &self.path
    }

    fn open_with(&self, opts: &OpenOptions) -> io::Result<File> {
        let (checked, md) = self.walk(Want::File)?;
        reopen(&checked, &md, &self.path, opts)
    }
}

/// The directories that walks from one root have checked (each reached
/// from the root one component at a time: a directory, no symlink, the
/// root's file system), kept as `O_PATH` descriptors for a short while so
/// that the next walk through them starts where they are: a helper keeps
/// them for the items of one batch (fsproc), whose paths share their
/// directories. A directory renamed or replaced by a symlink meanwhile is
/// still the directory that was checked (the descriptor follows the
/// inode, never a path), as within one walk.
#[derive(Debug)]
pub(crate) struct Walked {
    root: PathBuf,
    /// By the names that lead to them from the root (none: the root).
    dirs: std::collections::HashMap<Vec<PathBuf>, (File, u64)>,
}

impl Walked {
    pub(crate) fn new(root: &Path) -> Walked {
        Walked {
            root: root.to_owned(),
            dirs: std::collections::HashMap::new(),
        }
    }

    /// A copy of the descriptor of the directory at `names`, and the
    /// root's device, if it was walked.
    fn get(&self, names: &[&Path]) -> io::Result<Option<(File, u64)>> {
        let key: Vec<PathBuf> = names.iter().map(|n| n.to_path_buf()).collect();
        match self.dirs.get(&key) {
            Some((dir, dev)) => Ok(Some((dir.try_clone()?, *dev))),
            None => Ok(None),
        }
    }

    /// Keeps `dir`, the directory at `rel` (plain names), which the
    /// caller reached with a walk's checks: its parent walked, then the
    /// last name opened with `O_DIRECTORY | O_NOFOLLOW` and found on the
    /// root's device `dev`.
    pub(crate) fn keep_checked(&mut self, rel: &Path, dir: &File, dev: u64) -> io::Result<()> {
        let names: Vec<&Path> = rel.iter().map(Path::new).collect();
        self.keep(&names, dir, dev)
    }

    fn keep(&mut self, names: &[&Path], dir: &File, dev: u64) -> io::Result<()> {
        let key = names.iter().map(|n| n.to_path_buf()).collect();
        self.dirs.insert(key, (dir.try_clone()?, dev));
        Ok(())
    }
}

/// An LV's device through a link to it (a block domain's volume path,
/// `<domain>/images/<img>/<vol> -> /dev/<vg>/<lv>`): the link must point
/// at exactly `/dev/<vg>/<lv>`, and what it leads to must be the block
/// device whose device-mapper name is that LV's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvDevice {
    link: PathBuf,
    vg: String,
    lv: String,
}

impl LvDevice {
    pub fn new(link: impl Into<PathBuf>, vg: &str, lv: &str) -> LvDevice {
        LvDevice {
            link: link.into(),
            vg: vg.to_owned(),
            lv: lv.to_owned(),
        }
    }

    /// The domain's link to the LV.
    pub fn link(&self) -> &Path {
        &self.link
    }

    pub fn vg(&self) -> &str {
        &self.vg
    }

    pub fn lv(&self) -> &str {
        &self.lv
    }

    /// The device-mapper name LVM gives the LV: `<vg>-<lv>`, with each
    /// `-` inside the names doubled.
    pub fn dm_name(vg: &str, lv: &str) -> String {
        format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
    }

    /// Checks the link and the device without opening it for I/O.
    pub fn check(&self) -> io::Result<fs::Metadata> {
        self.checked().map(|(_, md)| md)
    }

    fn checked(&self) -> io::Result<(File, fs::Metadata)> {
        let want = crate::lvm::Lvm::lv_path(&self.vg, &self.lv);
        let target = fs::read_link(&self.link).map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidInput {
                refused(
                    &self.link,
                    format!(
                        "{} is not a link to the LV {}",
                        self.link.display(),
                        want.display()
                    ),
                )
            } else {
                e
            }
        })?;
        if target != want {
            return Err(refused(
                &self.link,
                format!(
                    "{} points at {}, not at the LV {}",
                    self.link.display(),
                    target.display(),
                    want.display()
                ),
            ));
        }
        let node = open_path(None, &self.link, OFlag::empty())?;
        let md = node.metadata()?;
        if !md.file_type().is_block_device() {
            return Err(refused(
                &self.link,
                format!(
                    "{} leads to {}, not to a block device",
                    self.link.display(),
                    kind_of(&md)
                ),
            ));
        }
        let rdev = md.rdev();
        let (major, minor) = (libc::major(rdev), libc::minor(rdev));
        let sys = format!("/sys/dev/block/{major}:{minor}/dm/name");
        let name = fs::read_to_string(&sys).map_err(|e| {
            refused(
                &self.link,
                format!(
                    "{} leads to device {major}:{minor}, which is not a device-mapper \
                     device ({sys}: {e})",
                    self.link.display()
                ),
            )
        })?;
        let expected = Self::dm_name(&self.vg, &self.lv);
        if name.trim_end() != expected {
            return Err(refused(
                &self.link,
                format!(
                    "{} leads to device {major}:{minor}, which is {}, not the LV {expected}",
                    self.link.display(),
                    name.trim_end()
                ),
            ));
        }
        Ok((node, md))
    }
}

impl DataPath for LvDevice {
    fn path(&self) -> &Path {
        &self.link
    }

    fn open_with(&self, opts: &OpenOptions) -> io::Result<File> {
        let (node, md) = self.checked()?;
        reopen(&node, &md, &self.link, opts)
    }
}

/// Read-only options for [`DataPath::open_with`], with `O_DIRECT` when
/// `direct`.
pub fn read_options(direct: bool) -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::symlink;

    /// `<tmp>/dom/images/img/vol` with "data", and `<tmp>/outside` with
    /// "secret".
    fn tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let dom = t.path().join("dom");
        fs::create_dir_all(dom.join("images/img")).unwrap();
        fs::write(dom.join("images/img/vol"), b"data").unwrap();
        let outside = t.path().join("outside");
        fs::write(&outside, b"secret").unwrap();
        (t, dom, outside)
    }

    fn write_opts() -> OpenOptions {
        let mut o = OpenOptions::new();
        o.write(true);
        o
    }

    fn reason(e: &io::Error) -> String {
        refusal(e)
            .unwrap_or_else(|| panic!("not a refusal: {e}"))
            .reason
            .clone()
    }

    #[test]
    fn opens_a_regular_file_beneath() {
        let (_t, dom, _) = tree();
        let b = Beneath::new(&dom, "images/img/vol");
        assert_eq!(b.path(), dom.join("images/img/vol"));
        let mut s = String::new();
        b.open_with(&read_options(false))
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "data");
        b.open_with(&write_opts())
            .unwrap()
            .write_all(b"DATA")
            .unwrap();
        assert_eq!(fs::read(dom.join("images/img/vol")).unwrap(), b"DATA");
        assert!(b.check().unwrap().is_file());
        Beneath::new(&dom, "images/img").check_dir().unwrap();
        // O_DIRECT through the reopen.
        b.open_with(&read_options(true)).unwrap();
    }

    #[test]
    fn a_symlinked_file_is_refused_and_its_target_untouched() {
        let (_t, dom, outside) = tree();
        let vol = dom.join("images/img/vol");
        fs::remove_file(&vol).unwrap();
        symlink(&outside, &vol).unwrap();
        let b = Beneath::new(&dom, "images/img/vol");
        for opts in [read_options(false), write_opts(), read_options(true)] {
            let e = b.open_with(&opts).unwrap_err();
            assert!(reason(&e).contains("is a symbolic link"), "{e}");
            assert!(e.to_string().contains("images/img/vol"), "{e}");
        }
        assert!(b.check().is_err());
        assert_eq!(fs::read(&outside).unwrap(), b"secret");
        // A relative link inside the domain is refused too: no links at all.
        fs::remove_file(&vol).unwrap();
        fs::write(dom.join("images/img/other"), b"x").unwrap();
        symlink("other", &vol).unwrap();
        assert!(b.open_with(&read_options(false)).is_err());
    }

    #[test]
    fn a_symlinked_directory_is_refused() {
        let (t, dom, _) = tree();
        let elsewhere = t.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::write(elsewhere.join("vol"), b"secret").unwrap();
        fs::rename(dom.join("images/img"), t.path().join("moved")).unwrap();
        symlink(&elsewhere, dom.join("images/img")).unwrap();
        let e = Beneath::new(&dom, "images/img/vol")
            .open_with(&write_opts())
            .unwrap_err();
        let r = reason(&e);
        assert!(r.contains("images/img is a symbolic link"), "{r}");
        assert!(Beneath::new(&dom, "images/img").check_dir().is_err());
        assert_eq!(fs::read(elsewhere.join("vol")).unwrap(), b"secret");
    }

    #[test]
    fn other_kinds_and_bad_paths_are_refused() {
        let (_t, dom, _) = tree();
        let fifo = dom.join("images/img/fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        // Would block forever if it were opened for reading.
        let e = Beneath::new(&dom, "images/img/fifo")
            .open_with(&read_options(false))
            .unwrap_err();
        assert!(reason(&e).contains("is a FIFO, not a regular file"), "{e}");
        let e = Beneath::new(&dom, "images/img")
            .open_with(&read_options(false))
            .unwrap_err();
        assert!(
            reason(&e).contains("a directory, not a regular file"),
            "{e}"
        );
        for bad in [
            "../dom/images/img/vol",
            "images/../../outside",
            "/etc/passwd",
            "",
        ] {
            let e = Beneath::new(&dom, bad)
                .open_with(&read_options(false))
                .unwrap_err();
            assert!(refusal(&e).is_some(), "{bad:?}: {e}");
        }
        // A missing file is the OS's error, not a refusal.
        let e = Beneath::new(&dom, "images/img/missing")
            .open_with(&read_options(false))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert!(refusal(&e).is_none());
    }

    #[test]
    fn another_file_system_is_refused() {
        // /proc is always a file system of its own.
        let e = Beneath::new("/", "proc").check_dir().unwrap_err();
        assert!(reason(&e).contains("another file system than /"), "{e}");
        let e = Beneath::new("/", "proc/version").check().unwrap_err();
        assert!(
            reason(&e).contains("/proc is on another file system"),
            "{e}"
        );
    }

    #[test]
    fn lv_device_names_and_links() {
        assert_eq!(
            LvDevice::dm_name("3c4e0bde-7c3f", "a-b"),
            "3c4e0bde--7c3f-a--b"
        );
        let t = tempfile::tempdir().unwrap();
        let link = t.path().join("vol");
        // Not a link at all.
        fs::write(&link, b"x").unwrap();
        let lv = LvDevice::new(&link, "vg-1", "lv-1");
        let e = lv.open_with(&write_opts()).unwrap_err();
        assert!(
            reason(&e).contains("not a link to the LV /dev/vg-1/lv-1"),
            "{e}"
        );
        // A link elsewhere.
        fs::remove_file(&link).unwrap();
        symlink("/etc/passwd", &link).unwrap();
        let e = lv.open_with(&read_options(false)).unwrap_err();
        assert!(reason(&e).contains("points at /etc/passwd"), "{e}");
        assert_eq!(lv.path(), link);
    }
}
