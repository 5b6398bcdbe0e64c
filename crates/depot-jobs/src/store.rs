//! Atomic, durable job files. Everything here blocks: call it through
//! `tokio::task::spawn_blocking`.
//!
//! A job file is replaced by writing a temp file in the same directory,
//! fsyncing it, renaming it over the old one and fsyncing the directory, so
//! after a crash the file is either the old or the new version, never a mix,
//! and a job the daemon acknowledged is on disk.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use depot_api::types::JobId;
use tracing::warn;

use crate::error::JobsError;
use crate::record::JobRecord;

/// Makes temp names unique even when two writes of one job overlap.
static TMP_SERIAL: AtomicU64 = AtomicU64::new(0);

/// Marks temp files, so start-up can remove the leftovers of a crash.
const TMP_MARK: &str = ".tmp-";

#[derive(Debug)]
pub(crate) struct Store {
    dir: PathBuf,
}

/// What [`Store::load_all`] found.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub records: Vec<JobRecord>,
    /// Where unreadable files were moved.
    pub corrupt: Vec<PathBuf>,
}

impl Store {
    pub fn new(dir: PathBuf) -> Self {
        Store { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, id: JobId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Creates the directory (0700: specs may name volumes and hosts) and
    /// loads every job file. Files that cannot be read are moved aside as
    /// `<name>.corrupt`: start-up must not fail on one bad file, and the file
    /// is evidence, so it is kept.
    pub fn load_all(&self) -> Result<Loaded, JobsError> {
        self.create_dir()?;
        let read_dir_err = |source| JobsError::ReadDir {
            path: self.dir.clone(),
            source,
        };
        let mut loaded = Loaded::default();
        for entry in fs::read_dir(&self.dir).map_err(read_dir_err)? {
            let entry = entry.map_err(read_dir_err)?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                warn!(path = %path.display(), "ignoring job directory entry with a non-UTF-8 name");
                continue;
            };
            if name.starts_with('.') && name.contains(TMP_MARK) {
                // An interrupted write; the job file itself is intact.
                if let Err(e) = fs::remove_file(&path) {
                    warn!(path = %path.display(), error = %e, "cannot remove stale temp file");
                }
                continue;
            }
            let Some(stem) = name.strip_suffix(".json") else {
                continue; // *.corrupt and anything else an admin left here
            };
            match read_record(&path, stem) {
                Ok(record) => loaded.records.push(record),
                Err(why) => {
                    let aside = aside_path(&path);
                    warn!(path = %path.display(), aside = %aside.display(), reason = %why,
                        "unreadable job file, moving it aside");
                    match fs::rename(&path, &aside) {
                        Ok(()) => loaded.corrupt.push(aside),
                        Err(e) => {
                            warn!(path = %path.display(), error = %e, "cannot move job file aside")
                        }
                    }
                }
            }
        }
        if !loaded.corrupt.is_empty() {
            self.sync_dir()?;
        }
        Ok(loaded)
    }

    fn create_dir(&self) -> Result<(), JobsError> {
        let err = |source| JobsError::CreateDir {
            path: self.dir.clone(),
            source,
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(err)?;
        // The directory may predate us with looser permissions.
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700)).map_err(err)
    }

    /// Replaces the job's file atomically and durably.
    pub fn write(&self, id: JobId, bytes: &[u8]) -> Result<(), JobsError> {
        let path = self.path(id);
        let n = TMP_SERIAL.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".{id}.json{TMP_MARK}{}-{n}", std::process::id()));
        let err = |step| {
            let path = path.clone();
            move |source| JobsError::Write { path, step, source }
        };
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(err("create temp file"))?;
            f.write_all(bytes).map_err(err("write"))?;
            f.sync_all().map_err(err("fsync"))?;
            drop(f);
            fs::rename(&tmp, &path).map_err(err("rename"))
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
        self.sync_dir()
    }

    /// Removes the job's file; a missing file is not an error.
    pub fn remove(&self, id: JobId) -> Result<(), JobsError> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(JobsError::Remove { path, source }),
        }
    }

    fn sync_dir(&self) -> Result<(), JobsError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| JobsError::Write {
                path: self.dir.clone(),
                step: "fsync directory",
                source,
            })
    }
}

fn read_record(path: &Path, stem: &str) -> Result<JobRecord, String> {
    let meta = fs::symlink_metadata(path).map_err(|e| format!("cannot stat: {e}"))?;
    if !meta.file_type().is_file() {
        return Err("not a regular file".to_string());
    }
    let bytes = fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    JobRecord::decode(&bytes, stem)
}

/// `<name>.corrupt`, or `<name>.corrupt.<n>` if an earlier one exists: never
/// overwrite earlier evidence.
fn aside_path(path: &Path) -> PathBuf {
    let base = format!("{}.corrupt", path.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 1;
    while candidate.symlink_metadata().is_ok() {
        candidate = PathBuf::from(format!("{base}.{n}"));
        n += 1;
    }
    candidate
}
