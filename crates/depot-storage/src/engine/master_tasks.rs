//! The SPM tasks' directory on a pool's master domain (VDSM's
//! `<master>/master/tasks/`, docs/storage.md "SPM tasks"): depotd writes
//! each SPM verb's task record there besides its state directory, and a
//! new SPM loads them at spmStart, so the engine finds the old SPM's tasks
//! on the new one. The records themselves (their format, what loading
//! does) are depotd's (`crates/depotd/src/master_tasks.rs`); this is only
//! where they are and how they are reached: every call goes through the
//! master's mount helpers ([`MountFs`]), with its deadline, so a frozen
//! NFS server costs a call its timeout and never a depotd thread.
//!
//! On a block master the directory is `tasks` in the `master` LV's ext3
//! file system, which the SPM mounts at spmStart
//! (`<repository>/mnt/blockSD/<sd>/master`, engine::block_master) and
//! unmounts when the role ends: [`Storage::master_tasks`] hands it out
//! only while this process has it mounted (a host that is not the SPM has
//! none: only the SPM writes the records, and a new SPM reads them once it
//! mounted the file system). Its helpers are rooted at the mount point,
//! and hold no directory of it between calls, so the unmount never finds
//! them in it.

use std::io;
use std::path::{Path, PathBuf};

use depot_api::storage::{SdUuid, SpUuid};
use depot_api::types::Uuid;

use super::Storage;
use crate::domain::Domain;
use crate::mount_fs::MountFs;
use crate::StorageResult;

/// VDSM's names: `<domain dir>/master/tasks`.
pub const MASTER_DIR: &str = "master";
pub const TASKS_DIR: &str = "tasks";

/// The suffix of a task record's file.
const RECORD_SUFFIX: &str = ".json";

/// `<master domain dir>/master/tasks` of a pool's master (a file domain's
/// directory, or a block domain's mounted file system), reached through
/// the mount's helpers.
#[derive(Debug, Clone)]
pub struct MasterTasksDir {
    pub master: SdUuid,
    fs: MountFs,
    dir: PathBuf,
}

impl Storage {
    /// The task directory of connected pool `sp`'s master domain; `None`
    /// when the master is a block domain whose file system this process
    /// has not mounted (it is not the SPM: module docs).
    /// 309/302 as for any verb on a pool not connected or a master that
    /// cannot be found. Blocks when the master is not known here yet (it
    /// is searched for).
    ///
    /// A master this host knows is taken as it is, without the check
    /// [`locate`](Self::locate) makes (one helper call, and with a frozen
    /// server one more timeout on the verb's answer): a write never goes
    /// into a domain that was removed all the same, as the directories
    /// are made one level at a time ([`MasterTasksDir::write`]), never the
    /// domain's own.
    pub fn master_tasks(&self, sp: SpUuid) -> StorageResult<Option<MasterTasksDir>> {
        let pool = self.connected_pool(sp, "find the master's tasks")?;
        let cached = self.state().domains.get(&pool.master).cloned();
        let master = match cached {
            Some(d) => d,
            None => self.locate(pool.master)?,
        };
        Ok(match master {
            Domain::File(d) => Some(MasterTasksDir {
                master: d.sd,
                dir: d.paths.root.join(MASTER_DIR).join(TASKS_DIR),
                fs: d.fs,
            }),
            Domain::Block(d) => self.block_master_mount(d.sd).map(|mount| MasterTasksDir {
                master: d.sd,
                dir: mount.join(TASKS_DIR),
                fs: self.mount_fs(&mount),
            }),
        })
    }
}

impl MasterTasksDir {
    /// A directory beneath `fs`'s mount (unit tests and fixtures).
    pub fn at(master: SdUuid, fs: MountFs, domain_dir: &Path) -> MasterTasksDir {
        MasterTasksDir {
            master,
            fs,
            dir: domain_dir.join(MASTER_DIR).join(TASKS_DIR),
        }
    }

    /// `tasks` of a block master's file system mounted at `mount`
    /// (unit tests: a directory standing for it).
    pub fn in_mount(master: SdUuid, fs: MountFs, mount: &Path) -> MasterTasksDir {
        MasterTasksDir {
            master,
            fs,
            dir: mount.join(TASKS_DIR),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn record(&self, id: Uuid) -> PathBuf {
        self.dir.join(format!("{id}{RECORD_SUFFIX}"))
    }

    /// A file of this directory by a name [`names`](Self::names) gave: a
    /// plain name, never a path out of it.
    fn named(&self, name: &str) -> io::Result<PathBuf> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a file name"),
            ));
        }
        Ok(self.dir.join(name))
    }

    /// Writes task `id`'s record as `<id>.json` (temporary file, fsync,
    /// rename, directory fsync: a reader on any host sees a whole record
    /// or none), making `master/tasks` first when the domain has none yet
    /// (`master`, then `tasks`: in a domain directory that is gone, the
    /// first fails, NotFound, and nothing is written).
    pub fn write(&self, id: Uuid, bytes: &[u8]) -> io::Result<()> {
        let path = self.record(id);
        match self.fs.write_atomic(&path, bytes, 0o660) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.make_dirs()?;
                self.fs.write_atomic(&path, bytes, 0o660)
            }
            other => other,
        }
    }

    fn make_dirs(&self) -> io::Result<()> {
        let master = self.dir.parent().unwrap_or(&self.dir);
        // A block master's `master` is the mount point, the helpers' root:
        // nothing to make there.
        for dir in [master, self.dir.as_path()]
            .into_iter()
            .filter(|d| *d != self.fs.root())
        {
            match self.fs.mkdir_synced(dir, 0o755) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Removes task `id`'s record (and fsyncs the directory); one that is
    /// not there is no error.
    pub fn remove(&self, id: Uuid) -> io::Result<()> {
        match self.fs.unlink_synced(&self.record(id)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// The names in the directory (none when it does not exist). More
    /// than the helpers' listing cap is an error, never a silent cut.
    pub fn names(&self) -> io::Result<Vec<String>> {
        match self.fs.names(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            other => other,
        }
    }

    /// File `name`'s bytes, refused (`InvalidData`) over `max` bytes; a
    /// symlink or a directory is refused too (the helpers never follow
    /// one).
    pub fn read(&self, name: &str, max: u32) -> io::Result<Vec<u8>> {
        let path = self.named(name)?;
        let st = self.fs.lstat(&path)?;
        if st.kind != depot_os::fsproc::FileKind::File {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a regular file", path.display()),
            ));
        }
        self.fs.read_to_end(&path, max)
    }

    /// Moves file `name` aside as `<name>.corrupt` (or `.corrupt.<n>`:
    /// earlier evidence is kept); the new name.
    pub fn move_aside(&self, name: &str) -> io::Result<String> {
        let path = self.named(name)?;
        let base = format!("{name}.corrupt");
        let mut aside = base.clone();
        let mut n = 1;
        while self.fs.try_stat(&self.dir.join(&aside))?.is_some() {
            aside = format!("{base}.{n}");
            n += 1;
        }
        self.fs.rename(&path, &self.dir.join(&aside))?;
        Ok(aside)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn dir() -> (tempfile::TempDir, MasterTasksDir) {
        let tmp = tempfile::tempdir().unwrap();
        let fs = MountFs::in_process(tmp.path(), Duration::from_secs(5));
        let sd = SdUuid(Uuid::new_v4());
        let domain = tmp.path().join(sd.to_string());
        std::fs::create_dir(&domain).unwrap();
        let d = MasterTasksDir::at(sd, fs, &domain);
        (tmp, d)
    }

    #[test]
    fn write_makes_the_tree_and_remove_is_idempotent() {
        let (_tmp, d) = dir();
        assert_eq!(d.names().unwrap(), Vec::<String>::new());
        let id = Uuid::new_v4();
        d.write(id, b"{}\n").unwrap();
        let name = format!("{id}.json");
        assert_eq!(d.names().unwrap(), vec![name.clone()]);
        assert_eq!(d.read(&name, 16).unwrap(), b"{}\n");
        assert_eq!(
            d.read(&name, 2).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert!(d.read("../x", 16).is_err());
        d.remove(id).unwrap();
        d.remove(id).unwrap();
        assert!(d.names().unwrap().is_empty());
    }

    #[test]
    fn in_a_mount_only_tasks_is_made() {
        let tmp = tempfile::tempdir().unwrap();
        let mount = tmp.path().join("master");
        std::fs::create_dir(&mount).unwrap();
        let fs = MountFs::in_process(&mount, Duration::from_secs(5));
        let d = MasterTasksDir::in_mount(SdUuid(Uuid::new_v4()), fs, &mount);
        let id = Uuid::new_v4();
        d.write(id, b"{}").unwrap();
        assert!(mount.join(TASKS_DIR).join(format!("{id}.json")).is_file());
        assert_eq!(d.names().unwrap(), vec![format!("{id}.json")]);
        // A mount point that is gone: nothing is made in its place.
        std::fs::remove_dir_all(&mount).unwrap();
        assert!(d.write(Uuid::new_v4(), b"{}").is_err());
        assert!(!mount.exists());
    }

    #[test]
    fn nothing_is_written_into_a_domain_that_is_gone() {
        let (tmp, d) = dir();
        std::fs::remove_dir(tmp.path().join(d.master.to_string())).unwrap();
        let e = d.write(Uuid::new_v4(), b"{}").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert!(!tmp.path().join(d.master.to_string()).exists());
    }

    #[test]
    fn move_aside_keeps_earlier_evidence() {
        let (_tmp, d) = dir();
        let id = Uuid::new_v4();
        let name = format!("{id}.json");
        d.write(id, b"x").unwrap();
        assert_eq!(d.move_aside(&name).unwrap(), format!("{name}.corrupt"));
        d.write(id, b"y").unwrap();
        assert_eq!(d.move_aside(&name).unwrap(), format!("{name}.corrupt.1"));
        let mut names = d.names().unwrap();
        names.sort();
        assert_eq!(
            names,
            vec![format!("{name}.corrupt"), format!("{name}.corrupt.1")]
        );
    }
}
