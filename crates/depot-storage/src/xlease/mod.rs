//! VM and external leases: the `xleases` volume of a domain (V4+), in
//! VDSM's layout (docs/formats.md "xleases", docs/storage.md "VM and
//! external leases (xleases)").
//!
//! sanlock keeps each lease (a paxos resource named by the lease id, in
//! the domain's lockspace) but not which lease is where; the [`index`] at
//! one alignment into the volume does. Changes follow VDSM's order, so a
//! crash at any point leaves something a later call recognises:
//!
//! * create: the record is written "updating", then the sanlock resource
//!   (`sanlock direct init` in a child), then the record committed. A
//!   record left "updating" is no lease to `info`, is taken over by the
//!   next create of that id, and a rebuild keeps it only if its resource
//!   was written.
//! * delete: the record is marked "updating", the resource cleared, then
//!   the record freed.
//! * rebuild: the sanlock resources on the volume are the truth: the
//!   index is marked "updating" as a whole, every record is rewritten from
//!   the resource at its slot, then the mark is cleared.
//!
//! All I/O is the helpers' or a child's: a file domain's `dom_md/xleases`
//! through the mount's helpers ([`MountFs`], O_DIRECT), a block domain's
//! `xleases` LV with O_DIRECT on a worker with a timeout, the resources
//! with `sanlock direct` (a child with a timeout). Callers serialize
//! changes to one domain's index.

pub mod index;
pub mod job;
pub mod leader;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use depot_api::storage::SdUuid;
use depot_api::Code;
use depot_os::fsproc::OpenWrite;
use depot_os::sanlock::{
    direct_clear_resource, direct_init_resource, Area, DirectConfig, Geometry, Resource,
    SanlockError,
};
use depot_os::{
    open_direct, read_at_direct, sync_and_close, write_at_direct, AlignedBuf, IoWorker,
};

use crate::mount_fs::MountFs;
use crate::{StorageError, StorageResult};
use index::{Index, IndexError, Record, INDEX_SIZE, MAX_RECORDS};

/// The special volume's name: `dom_md/xleases`, or the LV.
pub const XLEASES: &str = "xleases";

/// Longest one read or write of a block domain's `xleases` LV may take.
const BLOCK_IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a lease is: what `Lease.info` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub sd: SdUuid,
    pub lease: String,
    pub path: PathBuf,
    pub offset: u64,
}

impl LeaseInfo {
    /// The sanlock resource of the lease.
    pub fn resource(&self) -> Resource {
        Resource::new(
            self.sd.to_string(),
            self.lease.clone(),
            Area::new(&self.path, self.offset),
        )
    }
}

/// What `create` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    /// The lease was there already (nothing written).
    Existed,
}

/// How the volume is reached.
#[derive(Debug, Clone)]
enum Io {
    /// `dom_md/xleases` through the mount's helpers.
    File { fs: MountFs },
    /// The LV's device node, on a worker.
    Block,
}

/// One domain's `xleases` volume.
#[derive(Debug, Clone)]
pub struct Xleases {
    io: Io,
    path: PathBuf,
    sd: SdUuid,
    block_size: u32,
    alignment: u64,
}

fn worker() -> &'static IoWorker {
    static WORKER: OnceLock<IoWorker> = OnceLock::new();
    WORKER.get_or_init(|| IoWorker::new("io/xleases", 2))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A bad index as the verbs' error (9031).
fn invalid(op: &'static str, path: &Path, e: IndexError) -> StorageError {
    StorageError::new(
        Code::XleasesIndexInvalid,
        op,
        format!(
            "{}: {e} (a domain made without sanlock has no index; Lease.rebuild_leases \
             repairs one left updating)",
            path.display()
        ),
    )
    .caused_by(e)
}

fn sanlock_err(op: &'static str, e: SanlockError) -> StorageError {
    StorageError::new(Code::ClusterLockInitError, op, e.to_string()).caused_by(e)
}

impl Xleases {
    /// A file domain's `dom_md/xleases` at `path`, reached through `fs`.
    pub fn file(fs: MountFs, path: PathBuf, sd: SdUuid, block_size: u32, alignment: u64) -> Self {
        Xleases {
            io: Io::File { fs },
            path,
            sd,
            block_size,
            alignment,
        }
    }

    /// A block domain's `xleases` LV at `path` (it must be active).
    pub fn block(path: PathBuf, sd: SdUuid, block_size: u32, alignment: u64) -> Self {
        Xleases {
            io: Io::Block,
            path,
            sd,
            block_size,
            alignment,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn geometry(&self, op: &'static str) -> StorageResult<Geometry> {
        Geometry::new(self.block_size, self.alignment).map_err(|e| sanlock_err(op, e))
    }

    // ---- I/O ----

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        match &self.io {
            Io::File { fs } => fs.read_at(&self.path, offset, len as u32, true),
            Io::Block => {
                let path = self.path.clone();
                let bs = self.block_size as usize;
                on_worker(move || {
                    let file = open_direct(&path, false).map_err(io::Error::other)?;
                    let mut buf = AlignedBuf::new(len, bs).map_err(io::Error::other)?;
                    let n = read_at_direct(&file, offset, &mut buf).map_err(io::Error::other)?;
                    Ok(buf[..n].to_vec())
                })
            }
        }
    }

    /// Writes `data` (whole blocks) at `offset` with O_DIRECT and flushes.
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        match &self.io {
            Io::File { fs } => {
                let open = OpenWrite {
                    direct: true,
                    ..OpenWrite::default()
                };
                fs.write_at(&self.path, offset, data, open, true).map(drop)
            }
            Io::Block => {
                let path = self.path.clone();
                let bs = self.block_size as usize;
                let data = data.to_vec();
                on_worker(move || {
                    let mut buf = AlignedBuf::new(data.len(), bs).map_err(io::Error::other)?;
                    buf.copy_from_slice(&data);
                    let file = open_direct(&path, true).map_err(io::Error::other)?;
                    write_at_direct(&file, offset, &buf, data.len()).map_err(io::Error::other)?;
                    sync_and_close(file).map_err(io::Error::other)
                })
            }
        }
    }

    fn size(&self) -> io::Result<u64> {
        match &self.io {
            Io::File { fs } => fs.stat(&self.path).map(|s| s.size),
            Io::Block => {
                let path = self.path.clone();
                on_worker(move || {
                    use std::io::Seek;
                    std::fs::File::open(&path)?.seek(io::SeekFrom::End(0))
                })
            }
        }
    }

    /// The first sector of each of the first `count` lease slots: one
    /// worker call for a block LV (one descriptor, `count` O_DIRECT reads),
    /// one helper call per slot for a file (each a read of one sector).
    fn read_leaders(&self, count: usize) -> io::Result<Vec<Vec<u8>>> {
        let bs = self.block_size as usize;
        let offsets: Vec<u64> = (0..count)
            .map(|n| index::lease_offset(n, self.alignment))
            .collect();
        match &self.io {
            Io::File { fs } => offsets
                .iter()
                .map(|&at| fs.read_at(&self.path, at, bs as u32, true))
                .collect(),
            Io::Block => {
                let path = self.path.clone();
                on_worker(move || {
                    let file = open_direct(&path, false).map_err(io::Error::other)?;
                    let mut buf = AlignedBuf::new(bs, bs).map_err(io::Error::other)?;
                    offsets
                        .iter()
                        .map(|&at| {
                            let n =
                                read_at_direct(&file, at, &mut buf).map_err(io::Error::other)?;
                            Ok(buf[..n].to_vec())
                        })
                        .collect()
                })
            }
        }
    }

    fn read_err(&self, op: &'static str, e: io::Error) -> StorageError {
        StorageError::io(Code::MiscFileReadException, op, &self.path, e)
    }

    fn write_err(&self, op: &'static str, e: io::Error) -> StorageError {
        StorageError::io(Code::MiscFileWriteException, op, &self.path, e)
    }

    /// How many leases the volume can hold: a block LV has a fixed size;
    /// a file grows as leases are written.
    fn capacity(&self, op: &'static str) -> StorageResult<usize> {
        match self.io {
            Io::File { .. } => Ok(MAX_RECORDS),
            Io::Block => {
                let size = self.size().map_err(|e| self.read_err(op, e))?;
                Ok(index::capacity(size, self.alignment))
            }
        }
    }

    // ---- the index ----

    /// Formats the index: every record free. For a new domain (its
    /// `xleases` exists, empty or zeroed); on a volume in use it forgets
    /// every lease until a rebuild finds them again.
    pub fn format(&self) -> StorageResult<()> {
        const OP: &str = "format xleases index";
        let sd = self.sd.to_string();
        let mut idx = Index::formatted(&sd, now(), true);
        let at = index::index_offset(self.alignment);
        self.write(at, idx.as_bytes())
            .map_err(|e| self.write_err(OP, e))?;
        idx.set_metadata(&index::Metadata::new(&sd, now(), false));
        self.write_first_block(&idx, OP)?;
        tracing::info!(sd = %self.sd, path = %self.path.display(), "xleases index formatted");
        Ok(())
    }

    fn write_first_block(&self, idx: &Index, op: &'static str) -> StorageResult<()> {
        let (off, bytes) = idx.first_block(self.block_size as usize);
        self.write(index::index_offset(self.alignment) + off, bytes)
            .map_err(|e| self.write_err(op, e))
    }

    fn write_record(
        &self,
        idx: &mut Index,
        recnum: usize,
        rec: &Record,
        op: &'static str,
    ) -> StorageResult<()> {
        idx.set_record(recnum, rec);
        let (off, bytes) = idx.block_of(recnum, self.block_size as usize);
        self.write(index::index_offset(self.alignment) + off, bytes)
            .map_err(|e| self.write_err(op, e))
    }

    /// The index as it is on storage: 9031 when it is missing, not VDSM's
    /// format, of another lockspace, or (unless `updating_ok`) left
    /// half-rewritten.
    fn load(&self, op: &'static str, updating_ok: bool) -> StorageResult<Index> {
        let data = self
            .read(index::index_offset(self.alignment), INDEX_SIZE)
            .map_err(|e| self.read_err(op, e))?;
        let idx = Index::from_bytes(data).map_err(|e| invalid(op, &self.path, e))?;
        let md = idx.metadata().map_err(|e| invalid(op, &self.path, e))?;
        if md.lockspace != self.sd.to_string() {
            return Err(invalid(
                op,
                &self.path,
                IndexError::Metadata(format!("lockspace {:?}, not the domain's", md.lockspace)),
            ));
        }
        if md.updating && !updating_ok {
            return Err(invalid(
                op,
                &self.path,
                IndexError::Metadata("a format or rebuild did not finish (updating)".into()),
            ));
        }
        Ok(idx)
    }

    fn info_of(&self, lease: &str, recnum: usize) -> LeaseInfo {
        LeaseInfo {
            sd: self.sd,
            lease: lease.to_owned(),
            path: self.path.clone(),
            offset: index::lease_offset(recnum, self.alignment),
        }
    }

    /// Where lease `lease` is; `None` when the index has no committed
    /// record of it.
    pub fn lookup(&self, lease: &str) -> StorageResult<Option<LeaseInfo>> {
        const OP: &str = "look up lease";
        let idx = self.load(OP, false)?;
        Ok(committed(&idx, lease).map(|n| self.info_of(lease, n)))
    }

    /// Creates lease `lease`: a record, then its sanlock resource. A lease
    /// that exists is left as it is ([`Created::Existed`]); a record left
    /// "updating" by a crash is written again. 9032 when every slot is
    /// taken.
    pub fn create(
        &self,
        direct: &DirectConfig,
        lease: &str,
    ) -> StorageResult<(Created, LeaseInfo)> {
        const OP: &str = "create lease";
        let geometry = self.geometry(OP)?;
        let mut idx = self.load(OP, false)?;
        let limit = self.capacity(OP)?;
        let recnum = match idx.find(lease, MAX_RECORDS) {
            Some(n) if !idx.record(n).is_ok_and(|r| r.updating) => {
                return Ok((Created::Existed, self.info_of(lease, n)))
            }
            Some(n) => {
                tracing::warn!(sd = %self.sd, lease, recnum = n,
                    "lease record left updating by an earlier create or delete: writing it again");
                n
            }
            None => idx.find_free(limit).ok_or_else(|| {
                StorageError::new(
                    Code::XleasesFull,
                    OP,
                    format!("{}: all {limit} lease slots are taken", self.path.display()),
                )
            })?,
        };
        let info = self.info_of(lease, recnum);
        let mut rec = Record {
            lease: lease.to_owned(),
            offset: info.offset,
            updating: true,
        };
        self.write_record(&mut idx, recnum, &rec, OP)?;
        let area = Area::new(&self.path, info.offset);
        direct_init_resource(direct, &self.sd.to_string(), lease, &area, geometry)
            .map_err(|e| sanlock_err(OP, e))?;
        rec.updating = false;
        self.write_record(&mut idx, recnum, &rec, OP)?;
        tracing::info!(sd = %self.sd, lease, offset = info.offset, "lease created");
        Ok((Created::New, info))
    }

    /// Deletes lease `lease`: clears its sanlock resource and frees its
    /// record. `false` when there is no such lease (nothing written).
    pub fn delete(&self, direct: &DirectConfig, lease: &str) -> StorageResult<bool> {
        const OP: &str = "delete lease";
        let geometry = self.geometry(OP)?;
        let mut idx = self.load(OP, false)?;
        let Some(recnum) = idx.find(lease, MAX_RECORDS) else {
            return Ok(false);
        };
        let offset = index::lease_offset(recnum, self.alignment);
        let rec = Record {
            lease: lease.to_owned(),
            offset,
            updating: true,
        };
        self.write_record(&mut idx, recnum, &rec, OP)?;
        direct_clear_resource(direct, &Area::new(&self.path, offset), geometry)
            .map_err(|e| sanlock_err(OP, e))?;
        self.write_record(&mut idx, recnum, &Record::empty(), OP)?;
        tracing::info!(sd = %self.sd, lease, offset, "lease deleted");
        Ok(true)
    }

    /// Rebuilds the index from the sanlock resources on the volume (the
    /// truth: a record is kept only when its lease was written, a lease
    /// whose record was lost comes back). The index must be VDSM's (a
    /// domain without one is refused, and nothing is written); one left
    /// "updating" is what this repairs. Returns the leases found.
    pub fn rebuild(&self) -> StorageResult<usize> {
        const OP: &str = "rebuild xleases index";
        let mut idx = self.load(OP, true)?;
        let sd = self.sd.to_string();
        let size = self.size().map_err(|e| self.read_err(OP, e))?;
        // Slots whose whole lease is on the volume: a file grows as leases
        // are written, so the ones past its end were never written.
        let present = index::capacity(size, self.alignment);
        // The first sector of every lease, read in one go, and the lease
        // in each (leader.rs: no `sanlock direct` child per slot). A
        // damaged leader fails the rebuild before anything is written.
        let sectors = self
            .read_leaders(present)
            .map_err(|e| self.read_err(OP, e))?;
        let names = sectors
            .iter()
            .enumerate()
            .map(|(recnum, sector)| {
                leader::Leader::resource_name(sector, &sd).map_err(|e| {
                    StorageError::new(
                        Code::XleasesIndexInvalid,
                        OP,
                        format!(
                            "{} at {}: {e}",
                            self.path.display(),
                            index::lease_offset(recnum, self.alignment)
                        ),
                    )
                })
            })
            .collect::<StorageResult<Vec<_>>>()?;
        idx.set_metadata(&index::Metadata::new(&sd, now(), true));
        self.write_first_block(&idx, OP)?;
        let mut found = 0;
        for recnum in 0..MAX_RECORDS {
            let name = names.get(recnum).cloned().flatten();
            let rec = match name {
                Some(lease) if idx.find(&lease, recnum).is_none() => {
                    found += 1;
                    Record {
                        lease,
                        offset: index::lease_offset(recnum, self.alignment),
                        updating: false,
                    }
                }
                Some(lease) => {
                    tracing::warn!(sd = %self.sd, %lease, recnum,
                        "a second resource of the same lease: its slot is left free");
                    Record::empty()
                }
                None => Record::empty(),
            };
            if idx.record(recnum).as_ref() != Ok(&rec) {
                tracing::info!(sd = %self.sd, recnum, lease = %rec.lease, "index record rebuilt");
            }
            idx.set_record(recnum, &rec);
        }
        let at = index::index_offset(self.alignment);
        self.write(at, idx.as_bytes())
            .map_err(|e| self.write_err(OP, e))?;
        idx.set_metadata(&index::Metadata::new(&sd, now(), false));
        self.write_first_block(&idx, OP)?;
        tracing::info!(sd = %self.sd, leases = found, "xleases index rebuilt");
        Ok(found)
    }

    /// Every lease of the index and whether its record is updating, by
    /// lease id (damaged records are skipped), for diagnosis.
    pub fn dump(&self) -> StorageResult<Vec<(String, u64, bool)>> {
        const OP: &str = "dump xleases index";
        let idx = self.load(OP, true)?;
        Ok((0..MAX_RECORDS)
            .filter_map(|n| idx.record(n).ok().map(|r| (n, r)))
            .filter(|(_, r)| !r.is_free())
            .map(|(n, r)| (r.lease, index::lease_offset(n, self.alignment), r.updating))
            .collect())
    }
}

/// The record of `lease` when it is committed.
fn committed(idx: &Index, lease: &str) -> Option<usize> {
    idx.find(lease, MAX_RECORDS)
        .filter(|&n| idx.record(n).is_ok_and(|r| !r.updating))
}

fn on_worker<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    worker()
        .run(BLOCK_IO_TIMEOUT, f)
        .unwrap_or_else(|e| Err(io::Error::new(io::ErrorKind::TimedOut, e)))
}

#[cfg(test)]
mod tests;
