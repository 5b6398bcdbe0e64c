//! Volumes of a file domain (NFS, LOCALFS, POSIXFS, GLUSTERFS, CIFS), laid
//! out as VDSM lays them out (`fileVolume.py`, docs/formats.md):
//!
//! ```text
//! images/<img>/<vol>          data: raw, or qcow2 with a relative backing file
//! images/<img>/<vol>.meta     the 512-byte metadata record (metadata::volume)
//! images/<img>/<vol>.lease    the volume's lease file (0660)
//! images/<img>/<vol>.creating depot only: the volume is not complete yet
//! ```
//!
//! Every function here is a plain blocking call. The caller holds the
//! image and volume locks; every file-system call goes through the
//! domain's [`MountFs`] (the mount's helper processes, each call with the
//! helpers' deadline), so no thread of depotd enters the storage and a
//! mount that stops answering fails the call with 2001/2002 naming it.
//! Long work (preallocation, a wipe) is a sequence of such calls, each
//! with its own deadline. Processes are spawned only through [`QemuImg`]
//! (a child, given absolute paths); paths are built only from typed ids
//! through [`DomainPaths`].
//!
//! # Crash-safe creation
//!
//! VDSM rolls a half-created volume back from its task journal. depot keeps
//! no journal: the volume carries its own state, so that whatever the moment
//! of a crash, a later [`recover`](crate::file::images::recover) knows what to do.
//! [`FileVolumes::create`] validates everything first, then:
//!
//! 1. creates `images/<img>` if it is new (and fsyncs `images`);
//! 2. creates the empty marker `<vol>.creating` with `O_EXCL`, fsyncs the
//!    image directory: from here on the volume is "half-created";
//! 3. creates the data file with `O_EXCL` (0660): RAW sparse is truncated
//!    to the capacity, RAW preallocated is `fallocate`d over it, COW is
//!    `qemu-img create -f qcow2 -o compat=1.1` (with a parent: backing file
//!    `<parent vol>` relative to the image directory, backing format from the
//!    parent's FORMAT, as VDSM's `clone`); a COW base that is preallocated
//!    gets its data area allocated after the qcow2 metadata, as VDSM does;
//!    then the data is fsynced;
//! 4. creates `<vol>.lease`, empty, 0660, and on a domain with a
//!    lockspace has sanlock format the volume's lease in it
//!    (crate::lockspace::VolumeLeases);
//! 5. with a LEAF parent: writes `<vol>.meta` with `LEGALITY=ILLEGAL` (a
//!    new file with `O_EXCL`, 0660, fsynced with its directory), so that
//!    recovery can find the parent, then turns the parent's VOLTYPE from
//!    LEAF to INTERNAL, then rewrites the record `LEGAL` (unless asked for
//!    an ILLEGAL volume); otherwise writes the final record once, as a new
//!    file fsynced with its directory;
//! 6. removes the marker and fsyncs the directory: the volume exists.
//!
//! A failure in steps 2 to 6 is rolled back at once; a
//! crash leaves the marker, and recovery does the same rollback: read the
//! half-created metadata (if any) for its parent, put the parent back to
//! LEAF if no other volume names it as parent, remove data, lease and
//! metadata, and remove the marker last. Every step of the rollback can be
//! repeated, so a crash during recovery is recovered the next time.
//! Volumes with a marker are not listed and read as missing (201).
//!
//! # Deletion
//!
//! [`FileVolumes::delete`] marks the volume ILLEGAL first (as VDSM), wipes
//! the data if asked, removes the data and the lease, puts the parent back
//! to LEAF when it has no other child, and removes the metadata last: a
//! crash leaves an ILLEGAL volume with its chain intact, which oVirt
//! sees and deletes again.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, ErrorKind};
use std::path::Path;
use std::time::Duration;

use depot_api::storage::{AllocType, ImgUuid, Legality, SdUuid, VolType, VolUuid, VolumeFormat};
use depot_api::Code;
use depot_os::fsproc::protocol::MAX_BATCH_ITEMS;
use depot_os::fsproc::{FileKind, OpenWrite, StatInfo};
use depot_os::{ImageFormat, Preallocation, QemuImg};

use crate::error::{BoxError, StorageError, StorageResult};
use crate::layout::{DomainPaths, CREATING_SUFFIX, META_SUFFIX};
use crate::lockspace::VolumeLeases;
use crate::metadata::volume::keys;
use crate::metadata::VolumeMetadata;
use crate::mount_fs::{Look, MountFs, Seen};
use crate::volume_data::open_error;
use crate::volume_store::{
    check_parent, new_metadata, round_up, CreateVolume, MetadataChange, VolumeInfo, VolumeStore,
    CAPACITY_ALIGNMENT,
};

/// Mode of volume data, metadata and lease files
/// (`sc.FILE_VOLUME_PERMISSIONS`).
pub const FILE_VOLUME_MODE: u32 = 0o660;

/// Preallocation allocates this much per `fallocate` call, so that long
/// work on a slow server is a sequence of calls, each within the helpers'
/// deadline.
const PREALLOCATE_STEP: u64 = 1 << 30;

/// Size of the aligned chunks [`wipe_file`] has the helpers zero: one call
/// each, which must fit the deadline even on slow storage with a short
/// `io_timeout_s` (8 MiB in 3 s is 2.7 MB/s; 32 MiB was too much for a
/// throttled disk under the safety test's 3 s). A call costs tens of µs:
/// at 8 MiB the calls are still not what a wipe's time is.
pub const WIPE_CHUNK: u64 = 8 << 20;

/// The zeros written per call where `fallocate` is missing (they cross the
/// pipe).
const ZEROS_CHUNK: usize = 8 << 20;

/// In a sparse file, [`wipe_file`] skips ranges of this size that read as
/// zeros (the helper's unit: `WIPE_UNIT`).
const WIPE_PROBE_UNIT: u64 = depot_os::fsproc::protocol::WIPE_UNIT;

/// Bytes per `st_blocks` unit.
const STAT_BLOCK: u64 = 512;

/// The largest `.meta` read: a record is 512 bytes; anything much larger
/// is not one, and is refused (207) instead of read whole.
const META_READ_MAX: u32 = 64 * 1024;

/// The volume operations of one file domain.
#[derive(Debug, Clone, Copy)]
pub struct FileVolumes<'a> {
    pub paths: &'a DomainPaths,
    /// The helpers of the domain's mount: every file-system call.
    pub fs: &'a MountFs,
    /// Written as DOMAIN into new volumes.
    pub sd: SdUuid,
    pub qemu: &'a QemuImg,
    /// Limit of each qemu-img run.
    pub timeout: Duration,
    /// How a new volume's lease is formatted; `None`: the domain has no
    /// volume leases and `<vol>.lease` stays empty.
    pub leases: Option<VolumeLeases<'a>>,
}

impl<'a> FileVolumes<'a> {
    pub fn new(
        paths: &'a DomainPaths,
        fs: &'a MountFs,
        sd: SdUuid,
        qemu: &'a QemuImg,
        timeout: Duration,
    ) -> Self {
        FileVolumes {
            paths,
            fs,
            sd,
            qemu,
            timeout,
            leases: None,
        }
    }

    /// New volumes get their lease formatted through `leases`.
    pub fn with_leases(mut self, leases: Option<VolumeLeases<'a>>) -> Self {
        self.leases = leases;
        self
    }

    /// [`VolumeStore::info`], with one more read of the caller's in the
    /// same round trip to a helper (`Volume.getInfo` reads the volume's
    /// lease sector this way: engine/volume_leases.rs makes sense of it,
    /// this module only carries it). The read's answer, or its own error,
    /// is handed back beside the info; it never fails the info, and the
    /// info's errors are the same as without it.
    pub fn info_and_read(
        &self,
        img: ImgUuid,
        vol: VolUuid,
        extra: Option<Look<'_>>,
    ) -> StorageResult<(VolumeInfo, Option<io::Result<Seen>>)> {
        const OP: &str = "volume info";
        let fs = self.fs;
        // One round trip to a helper: the listing (for the marker and the
        // other volumes), the record, the stat of the data (and the
        // caller's read, last); a second only
        // for the other volumes' records (the children), if there are any.
        // The answers are taken in the order the calls were made one by
        // one, with the same errors.
        let (dir, meta, data) = (
            self.paths.image(img),
            self.paths.volume_meta(img, vol),
            self.paths.volume(img, vol),
        );
        let mut looks = vec![
            Look::Names(&dir),
            Look::ReadToEnd(&meta, META_READ_MAX),
            Look::Lstat(&data),
        ];
        looks.extend(extra);
        // No answer at all: as the listing, the first call, would fail.
        let seen = fs
            .look(&looks)
            .map_err(|e| open_error(Code::ImagePathError, OP, &dir, e))?;
        let mut seen = seen.into_iter();
        let (Some(names), Some(record), Some(stat)) = (seen.next(), seen.next(), seen.next())
        else {
            return Err(StorageError::new(
                Code::ImagePathError,
                OP,
                "three answers expected",
            ));
        };
        let extra = extra.map(|_| {
            seen.next()
                .unwrap_or_else(|| Err(io::Error::other("no answer to the extra read")))
        });
        let entries = ImageEntries::of_listing(names.and_then(seen_names), &dir, OP)?;
        entries.refuse_creating(self.paths, img, vol, OP)?;
        let metadata = record_of(record.and_then(seen_data), &meta, img, vol, OP)?;
        let others: Vec<VolUuid> = entries.complete().filter(|&v| v != vol).collect();
        let children = children_among(fs, self.paths, img, vol, &others, OP)?;
        let st = stat
            .and_then(seen_stat)
            .map_err(|e| missing_or(e, &data, img, vol, Code::VolumeMetadataReadError, OP))?;
        let info = info_of(self.paths, img, vol, metadata, children, &st);
        Ok((info, extra))
    }

    /// Steps 3 to 8 of the creation (module docs).
    // long: over 100 lines on purpose: the steps in the order that makes the
    // creation crash-safe, each next to the fsync it needs; split, that
    // order would be spread over functions that only make sense together.
    fn create_steps(
        &self,
        img: ImgUuid,
        vol: VolUuid,
        md: &mut VolumeMetadata,
        req: &CreateVolume,
        parent: Option<VolumeMetadata>,
    ) -> StorageResult<()> {
        const OP: &str = "create volume";
        let fs = self.fs;
        let failed = |path: &Path, e: io::Error| open_error(Code::VolumeCreationError, OP, path, e);
        let tool_failed = |path: &Path, e: BoxError| {
            StorageError::new(
                Code::VolumeCreationError,
                OP,
                format!("{}: {e}", path.display()),
            )
            .caused_by(e)
        };
        let data = self.paths.volume(img, vol);
        // A sparse RAW volume is made, sized and fsynced in one call.
        let sparse_raw = md.format == VolumeFormat::Raw && md.alloc_type != AllocType::Preallocated;
        let new_file = OpenWrite {
            create: true,
            exclusive: true,
            mode: FILE_VOLUME_MODE,
            set_len: sparse_raw.then_some(md.capacity),
            ..OpenWrite::default()
        };
        fs.write_at(&data, 0, &[], new_file, sparse_raw)
            .map_err(|e| match e.kind() {
                ErrorKind::AlreadyExists => StorageError::new(
                    Code::VolumeAlreadyExists,
                    OP,
                    format!("volume {vol}: {} exists", data.display()),
                )
                .caused_by(e),
                _ => failed(&data, e),
            })?;
        match (md.format, &parent) {
            (VolumeFormat::Raw, _) => {
                if md.alloc_type == AllocType::Preallocated {
                    preallocate(fs, &data, 0, md.capacity).map_err(|e| failed(&data, e))?;
                }
            }
            (VolumeFormat::Cow, parent) => {
                let backing_name = req.parent.to_string();
                let backing = parent.as_ref().map(|p| {
                    let fmt = match p.format {
                        VolumeFormat::Raw => ImageFormat::Raw,
                        VolumeFormat::Cow => ImageFormat::Qcow2,
                    };
                    (Path::new(backing_name.as_str()), fmt)
                });
                self.qemu
                    .create(
                        &data,
                        ImageFormat::Qcow2,
                        md.capacity,
                        backing,
                        Preallocation::Off,
                        self.timeout,
                    )
                    .map_err(|e| tool_failed(&data, e.into()))?;
                if parent.is_none() && md.alloc_type == AllocType::Preallocated {
                    // As VDSM: allocate from the end of the qcow2 metadata
                    // (rounded to 4 KiB) to the capacity.
                    let check = self
                        .qemu
                        .check(&data, self.timeout)
                        .map_err(|e| tool_failed(&data, e.into()))?;
                    let end = check.image_end_offset.unwrap_or(0);
                    let offset = round_up(end, 4096).unwrap_or(end);
                    if md.capacity > offset {
                        preallocate(fs, &data, offset, md.capacity - offset)
                            .map_err(|e| failed(&data, e))?;
                    }
                }
            }
        }
        // The data file was made exclusive, so the helper gave it exactly
        // FILE_VOLUME_MODE (no umask); qemu-img may have changed it since,
        // so a qcow2's is forced, as VDSM does.
        if md.format == VolumeFormat::Cow {
            fs.chmod(&data, FILE_VOLUME_MODE)
                .map_err(|e| failed(&data, e))?;
        }
        if !sparse_raw {
            fs.fsync(&data).map_err(|e| failed(&data, e))?;
        }

        let lease = self.paths.volume_lease(img, vol);
        create_lease(fs, &lease).map_err(|e| failed(&lease, e))?;
        // The sanlock resource in it: the daemon (or a child) opens the
        // file just made exclusive, and writes the lease at 0 with
        // O_DIRECT, growing it to one alignment.
        if let Some(leases) = &self.leases {
            crate::lockspace::check_sanlock_file(fs, &lease).map_err(|why| {
                StorageError::new(Code::VolumeCreationError, "create volume lease", why)
            })?;
            leases.format(self.sd, vol, depot_os::sanlock::Area::new(lease, 0))?;
        }

        // Recovery learns which parent to put back to LEAF from the new
        // volume's record: where the parent changes, an ILLEGAL record is
        // made durable first. Elsewhere the record is written once, final,
        // at the end (two fsyncs and a helper call fewer): until the
        // marker goes, nobody reads it, and recovery needs none.
        let changes_parent = parent.is_some_and(|p| p.vol_type == VolType::Leaf);
        if changes_parent {
            write_meta(fs, self.paths, img, vol, md, MetaWrite::New)?;
            update_meta(
                fs,
                self.paths,
                img,
                req.parent,
                "create volume: update parent",
                |p| {
                    if p.vol_type == VolType::Leaf {
                        p.vol_type = VolType::Internal;
                    }
                    Ok(())
                },
            )?;
        }
        if req.legal {
            md.legality = Legality::Legal;
        }
        match (changes_parent, req.legal) {
            (false, _) => write_meta(fs, self.paths, img, vol, md, MetaWrite::New)?,
            (true, true) => write_meta(fs, self.paths, img, vol, md, MetaWrite::Replace)?,
            (true, false) => {}
        }
        let marker = self.paths.volume_creating(img, vol);
        fs.unlink_synced(&marker).map_err(|e| failed(&marker, e))
    }
}

/// The volumes of a file domain; image listing, deletion and chains are in
/// file/images.rs.
impl VolumeStore for FileVolumes<'_> {
    /// Creates a volume (see the module docs for the sequence). Everything
    /// that can be checked is checked before anything is written:
    /// BLANK volume id or a volume that is its own parent (1000), capacity 0
    /// (229), RAW with a parent (202), a record that would not be valid
    /// (753, 756), an existing volume (212), a parent that is missing or
    /// being created (201), ILLEGAL (201; VDSM's 226 is not in depot's
    /// codes) or larger than the new volume (1000). Failures later are
    /// VolumeCreationError (205), or 208 for the metadata, and leave nothing
    /// behind. Returns the metadata written.
    // long: about 105 lines: every check before the first write, in the order
    // the codes above are documented, then steps 1 and 2 and the rollback.
    fn create(
        &self,
        img: ImgUuid,
        vol: VolUuid,
        req: &CreateVolume,
    ) -> StorageResult<VolumeMetadata> {
        const OP: &str = "create volume";
        let err = |code, detail: String| StorageError::new(code, OP, detail);
        let mut md = new_metadata(self.sd, img, vol, req, OP)?;
        let capacity = md.capacity;
        let has_parent = !req.parent.is_blank();
        let fs = self.fs;

        // One listing answers every "is it there" below (and refuses an
        // image path that is not a directory: 254).
        let image_dir = self.paths.image(img);
        let entries = ImageEntries::scan(fs, self.paths, img, OP)?;
        for p in [
            self.paths.volume(img, vol),
            self.paths.volume_meta(img, vol),
            self.paths.volume_creating(img, vol),
        ] {
            if entries.has(&p) {
                return Err(err(
                    Code::VolumeAlreadyExists,
                    format!("volume {vol}: {} exists", p.display()),
                ));
            }
        }
        let parent = if has_parent {
            let p = entries
                .refuse_creating(self.paths, img, req.parent, OP)
                .and_then(|()| read_meta(fs, self.paths, img, req.parent, OP))
                .map_err(|e| {
                    StorageError::new(e.code, OP, format!("parent of {vol}: {}", e.detail))
                        .with_cause_of(&e)
                })?;
            let data = self.paths.volume(img, req.parent);
            if !entries.has(&data) {
                return Err(err(
                    Code::VolumeDoesNotExist,
                    format!(
                        "parent {} of {vol}: {} is missing",
                        req.parent,
                        data.display()
                    ),
                ));
            }
            check_parent(OP, vol, req.parent, &p, capacity)?;
            Some(p)
        } else {
            None
        };

        // Validation done: from here on, write.
        // Each step below is one helper call with its fsyncs (the
        // directory's included): a round trip costs more than the call.
        let created_dir = match fs.mkdir_synced(&image_dir, 0o755) {
            Ok(()) => true,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => false,
            Err(e) => return Err(StorageError::io(Code::ImagePathError, OP, &image_dir, e)),
        };
        let marker = self.paths.volume_creating(img, vol);
        let new_marker = OpenWrite {
            create: true,
            exclusive: true,
            mode: FILE_VOLUME_MODE,
            sync_dir: true,
            ..OpenWrite::default()
        };
        if let Err(e) = fs.write_at(&marker, 0, &[], new_marker, false) {
            let e = match e.kind() {
                // Someone else's marker: nothing of ours to roll back.
                ErrorKind::AlreadyExists => {
                    return Err(err(
                        Code::VolumeAlreadyExists,
                        format!("volume {vol}: {} exists", marker.display()),
                    )
                    .caused_by(e))
                }
                _ => StorageError::io(Code::VolumeCreationError, OP, &marker, e),
            };
            // The marker may be there (the directory's fsync failed):
            // removed as any half-created volume is.
            if discard(fs, self.paths, img, vol).is_ok() && created_dir {
                remove_dir_if_empty(fs, &image_dir);
            }
            return Err(e);
        }
        let result = self.create_steps(img, vol, &mut md, req, parent);
        match result {
            Ok(()) => {
                tracing::info!(%img, %vol, format = %md.format, alloc = %md.alloc_type, capacity, parent = %md.parent, "volume created");
                Ok(md)
            }
            Err(e) => {
                tracing::warn!(%img, %vol, error = %e, "volume creation failed, rolling back");
                if let Err(rb) = discard(fs, self.paths, img, vol) {
                    tracing::error!(%img, %vol, error = %rb, "cannot roll back the half-created volume; recovery will remove it");
                } else if created_dir {
                    remove_dir_if_empty(fs, &image_dir);
                }
                Err(e)
            }
        }
    }

    /// The volume's metadata, sizes and children. A volume without `.meta`,
    /// without data, or still being created is VolumeDoesNotExist (201); a
    /// record that cannot be read is 207, one that cannot be parsed has the
    /// metadata error's code.
    fn info(&self, img: ImgUuid, vol: VolUuid) -> StorageResult<VolumeInfo> {
        self.info_and_read(img, vol, None).map(|(info, _)| info)
    }

    /// `(apparent, true)` size of the data file: `st_size` and
    /// `st_blocks * 512`.
    fn size(&self, img: ImgUuid, vol: VolUuid) -> StorageResult<(u64, u64)> {
        let st = stat_data(
            self.fs,
            self.paths,
            img,
            vol,
            Code::VolumeMetadataReadError,
            "volume size",
        )?;
        Ok((st.size, st.blocks * STAT_BLOCK))
    }

    /// The volumes of `img`, or of the whole domain with `None`, sorted.
    ///
    /// From the `*.meta` files; volumes being created and `_remove_me_*`
    /// directories are skipped. For one image, as VDSM's
    /// `getImageVolumes`, a volume whose metadata names another image (a
    /// template linked into this one) is left out; a metadata record that
    /// cannot be read is listed (and logged). A missing image has no
    /// volumes. For the whole domain the records are not read, and a
    /// template linked into several images is listed once.
    fn list(&self, img: Option<ImgUuid>) -> StorageResult<Vec<VolUuid>> {
        const OP: &str = "list volumes";
        let fs = self.fs;
        let Some(img) = img else {
            let mut all = BTreeSet::new();
            for img in self.images()? {
                all.extend(meta_volumes(fs, self.paths, img, OP)?);
            }
            return Ok(all.into_iter().collect());
        };
        let mut out = Vec::new();
        for vol in meta_volumes(fs, self.paths, img, OP)? {
            match read_meta(fs, self.paths, img, vol, OP) {
                Ok(md) if md.image != img => {
                    tracing::debug!(%img, %vol, owner = %md.image, "skipping a volume of another image");
                }
                Ok(_) => out.push(vol),
                Err(e) if e.code == Code::VolumeDoesNotExist => {}
                // A mount in trouble is the verb's answer, not a volume
                // listed on a guess.
                Err(e) if e.has_mount_trouble_code() => return Err(e),
                Err(e) => {
                    tracing::warn!(%img, %vol, error = %e, "listing a volume whose metadata cannot be read");
                    out.push(vol);
                }
            }
        }
        Ok(out)
    }

    /// Rewrites the metadata atomically with what `change` makes of it.
    /// Read errors as [`info`](Self::info); the new record must be valid
    /// (753, 756); a failed write is 208. Returns the new metadata.
    fn update(
        &self,
        img: ImgUuid,
        vol: VolUuid,
        change: MetadataChange<'_>,
    ) -> StorageResult<VolumeMetadata> {
        const OP: &str = "update volume metadata";
        refuse_creating(self.fs, self.paths, img, vol, OP)?;
        update_meta(self.fs, self.paths, img, vol, OP, change)
    }

    /// Grows the virtual size to `new_capacity` (rounded up to 4 KiB) and
    /// records it as CAP. A smaller size than the current one (data or
    /// CAP) is VolumeResizeValueError (232); the same size only brings CAP
    /// up to date. RAW grows the file (PREALLOCATED: allocates the new
    /// range), COW runs `qemu-img resize`, and CAP becomes the virtual size
    /// qemu-img reports. SHARED volumes and internal volumes that are not a
    /// base (VDSM's VolumeNonWritable) are refused with 206, as are
    /// failures. The data grows before CAP is written, so a retry after a
    /// crash finishes the job.
    fn extend(
        &self,
        img: ImgUuid,
        vol: VolUuid,
        new_capacity: u64,
    ) -> StorageResult<VolumeMetadata> {
        const OP: &str = "extend volume";
        let fs = self.fs;
        let md = load(fs, self.paths, img, vol, OP)?;
        let err = |code, detail: String| StorageError::new(code, OP, detail);
        if md.vol_type == VolType::Shared
            || (md.vol_type == VolType::Internal && !md.parent.is_blank())
        {
            return Err(err(
                Code::VolumeExtendingError,
                format!("volume {vol} is {} and cannot be written", md.vol_type),
            ));
        }
        let new = round_up(new_capacity, CAPACITY_ALIGNMENT).ok_or_else(|| {
            err(
                Code::VolumeResizeValueError,
                format!("{new_capacity} is too large"),
            )
        })?;
        let data = self.paths.volume(img, vol);
        let failed = |e: io::Error| open_error(Code::VolumeExtendingError, OP, &data, e);
        let tool_failed = |e: BoxError| {
            err(
                Code::VolumeExtendingError,
                format!("{}: {e}", data.display()),
            )
            .caused_by(e)
        };
        let smaller = |current: u64| {
            err(
                Code::VolumeResizeValueError,
                format!("volume {vol}: {new} is smaller than the current size {current}"),
            )
        };
        if new < md.capacity {
            return Err(smaller(md.capacity));
        }
        let capacity = match md.format {
            VolumeFormat::Raw => {
                // The volume's own regular file (the helper refuses a
                // symlink: 254).
                let current =
                    volume_file(fs, self.paths, img, vol, Code::VolumeExtendingError, OP)?.size;
                if new < current {
                    return Err(smaller(current));
                }
                if new > current {
                    if md.alloc_type == AllocType::Preallocated {
                        preallocate(fs, &data, current, new - current).map_err(failed)?;
                    } else {
                        fs.truncate(&data, new).map_err(failed)?;
                    }
                    fs.fsync(&data).map_err(failed)?;
                }
                new
            }
            VolumeFormat::Cow => {
                // qemu-img opens it by path: it must be the volume's file.
                volume_file(fs, self.paths, img, vol, Code::VolumeExtendingError, OP)?;
                let info = |q: &QemuImg| {
                    q.info(&data, Some(ImageFormat::Qcow2), self.timeout)
                        .map_err(|e| tool_failed(e.into()))
                };
                let current = info(self.qemu)?.virtual_size;
                if new < current {
                    return Err(smaller(current));
                }
                if new == current {
                    current
                } else {
                    self.qemu
                        .resize(&data, ImageFormat::Qcow2, new, self.timeout)
                        .map_err(|e| tool_failed(e.into()))?;
                    info(self.qemu)?.virtual_size
                }
            }
        };
        let md = update_meta(fs, self.paths, img, vol, OP, |m| {
            m.capacity = capacity;
            Ok(())
        })?;
        tracing::info!(%img, %vol, capacity, "volume extended");
        Ok(md)
    }

    /// Deletes a volume (order in the module docs). Without `force`, a
    /// volume with children is refused (204), and so is a SHARED one (222;
    /// VDSM's 223 is not in depot's codes). `post_zero` overwrites the data
    /// with zeros first ([`wipe_file`]); a data file with other hard links
    /// (a template linked into other images) is not wiped, only unlinked.
    /// A volume with unreadable metadata, or half-created, can still be
    /// deleted. Nothing of the volume at all is 201; failures are 222.
    /// The image directory is removed when it is left empty.
    // long: about 100 lines: the deletion order of the module docs (marked
    // ILLEGAL first, wipe, data and lease, parent back to LEAF, metadata
    // last), one step each, so that a crash anywhere leaves a chain the
    // manager can delete again.
    fn delete(
        &self,
        img: ImgUuid,
        vol: VolUuid,
        post_zero: bool,
        force: bool,
    ) -> StorageResult<()> {
        const OP: &str = "delete volume";
        let fs = self.fs;
        let err = |code, detail: String| StorageError::new(code, OP, detail);
        // A symlinked image directory would lead every removal below out
        // of the domain.
        check_image_dir(fs, self.paths, img, OP)?;
        let data = self.paths.volume(img, vol);
        let meta_path = self.paths.volume_meta(img, vol);
        let marker = self.paths.volume_creating(img, vol);
        let mut present = [false; 3];
        for (p, there) in [&data, &meta_path, &marker].into_iter().zip(&mut present) {
            *there =
                exists(fs, p).map_err(|e| StorageError::io(Code::CannotDeleteVolume, OP, p, e))?;
        }
        if !present.iter().any(|&p| p) {
            return Err(err(
                Code::VolumeDoesNotExist,
                format!("volume {vol} of image {img}"),
            ));
        }
        if present[2] {
            // Half-created: the rollback is the deletion.
            discard(fs, self.paths, img, vol)
                .map_err(|e| as_code(e, Code::CannotDeleteVolume, OP))?;
            remove_dir_if_empty(fs, &self.paths.image(img));
            return Ok(());
        }
        // The data a wipe would write must be the volume's own file:
        // refused before anything changes.
        let wipe = if post_zero {
            match fs.stat(&data) {
                Ok(st) if st.kind == FileKind::File => true,
                Ok(st) => return Err(not_regular(&data, st.kind, OP)),
                // Missing: a delete that was interrupted; the removal
                // below goes on.
                Err(e) if e.kind() == ErrorKind::NotFound => false,
                Err(e) => return Err(open_error(Code::CannotDeleteVolume, OP, &data, e)),
            }
        } else {
            false
        };
        let md = match read_meta(fs, self.paths, img, vol, OP) {
            Ok(md) => Some(md),
            Err(e) if e.code == Code::VolumeDoesNotExist => None,
            Err(e) if e.has_mount_trouble_code() => return Err(e),
            Err(e) => {
                tracing::warn!(%img, %vol, error = %e, "deleting a volume whose metadata cannot be read");
                None
            }
        };
        if !force {
            if md.as_ref().is_some_and(|m| m.vol_type == VolType::Shared) {
                return Err(err(
                    Code::CannotDeleteVolume,
                    format!("volume {vol} is a shared (template) volume"),
                ));
            }
            let kids = children(fs, self.paths, img, vol, OP)?;
            if !kids.is_empty() {
                let kids: Vec<String> = kids.iter().map(ToString::to_string).collect();
                return Err(err(
                    Code::VolumeImageHasChildren,
                    format!("volume {vol} has children: {}", kids.join(", ")),
                ));
            }
        }
        if md.as_ref().is_some_and(|m| m.legality != Legality::Illegal) {
            update_meta(fs, self.paths, img, vol, OP, |m| {
                m.legality = Legality::Illegal;
                Ok(())
            })
            .map_err(|e| as_code(e, Code::CannotDeleteVolume, OP))?;
        }
        if wipe {
            match fs.lstat(&data) {
                Ok(m) if m.kind == FileKind::File && m.nlink == 1 => {
                    let n = wipe_file(fs, &data)?;
                    tracing::info!(%img, %vol, bytes = n, "volume data wiped");
                }
                Ok(m) if m.kind == FileKind::File => {
                    tracing::info!(%img, %vol, links = m.nlink, "not wiping a data file linked into other images");
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io(Code::CannotDeleteVolume, OP, &data, e)),
            }
        }
        remove_if_exists(fs, &data, OP)?;
        remove_if_exists(fs, &self.paths.volume_lease(img, vol), OP)?;
        if let Some(parent) = md.as_ref().map(|m| m.parent).filter(|p| !p.is_blank()) {
            recheck_leaf(fs, self.paths, img, parent, vol)
                .map_err(|e| as_code(e, Code::CannotDeleteVolume, OP))?;
        }
        remove_if_exists(fs, &meta_path, OP)?;
        let image_dir = self.paths.image(img);
        fsync_dir(fs, &image_dir, Code::CannotDeleteVolume, OP)?;
        remove_dir_if_empty(fs, &image_dir);
        tracing::info!(%img, %vol, post_zero, force, "volume deleted");
        Ok(())
    }

    fn images(&self) -> StorageResult<Vec<ImgUuid>> {
        self.list_images()
    }

    fn delete_image(&self, img: ImgUuid, post_zero: bool) -> StorageResult<()> {
        self.remove_image(img, post_zero)
    }

    fn chain(
        &self,
        img: ImgUuid,
        leaf: VolUuid,
        allow_illegal: bool,
    ) -> StorageResult<Vec<VolumeInfo>> {
        self.chain_of(img, leaf, allow_illegal)
    }
}

// ---------------------------------------------------------------------------
// Helpers shared with crate::file::images. They take the domain's paths and
// its mount's helpers only: no qemu-img is needed to read, rewrite or remove
// volumes.

/// A volume's new lease file: empty, exactly [`FILE_VOLUME_MODE`],
/// fsynced. One helper call (an exclusive create gets its mode whatever
/// the umask, and the write's fsync is the file's); a file left there by
/// something else (nothing of depot's leaves one without its volume) is
/// emptied and given the mode in three, as before.
fn create_lease(fs: &MountFs, lease: &Path) -> io::Result<()> {
    let new_file = OpenWrite {
        create: true,
        exclusive: true,
        mode: FILE_VOLUME_MODE,
        ..OpenWrite::default()
    };
    match fs.write_at(lease, 0, &[], new_file, true) {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        other => return other.map(drop),
    }
    let existing = OpenWrite {
        create: true,
        truncate: true,
        mode: FILE_VOLUME_MODE,
        ..OpenWrite::default()
    };
    fs.write_at(lease, 0, &[], existing, false)?;
    fs.chmod(lease, FILE_VOLUME_MODE)?;
    fs.fsync(lease)
}

/// `e` told as `code` of `op` (the verb's own failure code), unless it
/// says the mount is in trouble: that keeps its code.
pub(crate) fn as_code(e: StorageError, code: Code, op: &'static str) -> StorageError {
    if e.has_mount_trouble_code() {
        return e;
    }
    StorageError::new(code, op, e.to_string()).caused_by(e)
}

/// Whether `path` exists (without following a final symlink).
pub(crate) fn exists(fs: &MountFs, path: &Path) -> io::Result<bool> {
    fs.try_stat(path).map(|s| s.is_some())
}

pub(crate) fn fsync_dir(
    fs: &MountFs,
    dir: &Path,
    code: Code,
    op: &'static str,
) -> StorageResult<()> {
    fs.fsync_dir(dir)
        .map_err(|e| StorageError::io(code, op, dir, e))
}

/// Removes a file, `Ok` if it is already gone.
pub(crate) fn remove_if_exists(fs: &MountFs, path: &Path, op: &'static str) -> StorageResult<()> {
    match fs.unlink(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io(Code::CannotDeleteVolume, op, path, e)),
    }
}

/// Removes an image directory if nothing is left in it; anything else is
/// only logged (the directory staying is harmless, and the verb's work is
/// done).
pub(crate) fn remove_dir_if_empty(fs: &MountFs, dir: &Path) {
    match fs.rmdir(dir) {
        Ok(()) => {
            if let Some(parent) = dir.parent() {
                if let Err(e) = fs.fsync_dir(parent) {
                    tracing::warn!(error = %e, "cannot fsync the images directory");
                }
            }
        }
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::DirectoryNotEmpty) => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the image directory")
        }
    }
}

/// Refuses (254) an image directory that is not a plain directory
/// beneath the domain: a symlink there would lead every file operation
/// on the image (delete, wipe) elsewhere. A missing directory passes: the
/// caller reports it as it does.
pub(crate) fn check_image_dir(
    fs: &MountFs,
    paths: &DomainPaths,
    img: ImgUuid,
    op: &'static str,
) -> StorageResult<()> {
    let dir = paths.image(img);
    match fs.lstat(&dir) {
        Ok(st) if st.kind == FileKind::Dir => Ok(()),
        Ok(st) => Err(StorageError::new(
            Code::ImagePathError,
            op,
            format!(
                "{} is {}, not a directory: an image must be a directory inside its domain",
                dir.display(),
                kind_text(st.kind)
            ),
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(open_error(Code::ImagePathError, op, &dir, e)),
    }
}

/// What a file is, for messages (as depot_os::confine says it).
fn kind_text(kind: FileKind) -> &'static str {
    match kind {
        FileKind::File => "a regular file",
        FileKind::Dir => "a directory",
        FileKind::Symlink => "a symbolic link",
        FileKind::BlockDevice => "a block device",
        FileKind::CharDevice => "a character device",
        FileKind::Fifo => "a FIFO",
        FileKind::Socket => "a socket",
        FileKind::Unknown => "of an unknown kind",
    }
}

/// 254 for volume data that is not a regular file.
fn not_regular(path: &Path, kind: FileKind, op: &'static str) -> StorageError {
    StorageError::new(
        Code::ImagePathError,
        op,
        format!(
            "{} is {}, not a regular file: volume data must be a regular file inside its domain",
            path.display(),
            kind_text(kind)
        ),
    )
}

/// Checks that the data at `path` is the volume's own regular file inside
/// its domain (the helpers reach it without any symlink, on the mount's
/// file system), without opening it: 254 when it is not, the OS's error
/// (with `code`) when it cannot be looked at.
pub(crate) fn check_data(
    fs: &MountFs,
    path: &Path,
    code: Code,
    op: &'static str,
) -> StorageResult<StatInfo> {
    let st = fs.stat(path).map_err(|e| open_error(code, op, path, e))?;
    if st.kind != FileKind::File {
        return Err(not_regular(path, st.kind, op));
    }
    Ok(st)
}

/// Reads and parses `<vol>.meta`: missing is 201, unreadable 207, invalid
/// the parse error's code.
pub(crate) fn read_meta(
    fs: &MountFs,
    paths: &DomainPaths,
    img: ImgUuid,
    vol: VolUuid,
    op: &'static str,
) -> StorageResult<VolumeMetadata> {
    let path = paths.volume_meta(img, vol);
    record_of(fs.read_to_end(&path, META_READ_MAX), &path, img, vol, op)
}

/// [`read_meta`] of what the read of `path` answered.
fn record_of(
    read: io::Result<Vec<u8>>,
    path: &Path,
    img: ImgUuid,
    vol: VolUuid,
    op: &'static str,
) -> StorageResult<VolumeMetadata> {
    let bytes = read.map_err(|e| match e.kind() {
        ErrorKind::NotFound => StorageError::new(
            Code::VolumeDoesNotExist,
            op,
            format!("volume {vol} of image {img}: no {}", path.display()),
        )
        .caused_by(e),
        // Anything but a regular file there is refused by the helper
        // before it reads: unreadable too.
        _ => StorageError::io(Code::VolumeMetadataReadError, op, path, e),
    })?;
    VolumeMetadata::parse(&bytes).map_err(|e| {
        StorageError::new(e.code, op, format!("{}: {}", path.display(), e.detail)).with_cause_of(&e)
    })
}

/// The answers of [`MountFs::look`] as the kinds asked for (another kind
/// is the helper's mistake, an error).
fn seen_names(seen: Seen) -> io::Result<Vec<String>> {
    match seen {
        Seen::Names(names) => Ok(names),
        other => Err(io::Error::other(format!("a listing expected: {other:?}"))),
    }
}

fn seen_data(seen: Seen) -> io::Result<Vec<u8>> {
    match seen {
        Seen::Data(bytes) => Ok(bytes),
        other => Err(io::Error::other(format!("data expected: {other:?}"))),
    }
}

fn seen_stat(seen: Seen) -> io::Result<StatInfo> {
    match seen {
        Seen::Stat(st) => Ok(st),
        other => Err(io::Error::other(format!("a stat expected: {other:?}"))),
    }
}

/// 201 for a half-created volume.
fn being_created(marker: &Path, img: ImgUuid, vol: VolUuid, op: &'static str) -> StorageError {
    StorageError::new(
        Code::VolumeDoesNotExist,
        op,
        format!(
            "volume {vol} of image {img} is being created ({} exists)",
            marker.display()
        ),
    )
}

/// 201 if the volume is half-created.
fn refuse_creating(
    fs: &MountFs,
    paths: &DomainPaths,
    img: ImgUuid,
    vol: VolUuid,
    op: &'static str,
) -> StorageResult<()> {
    let marker = paths.volume_creating(img, vol);
    if exists(fs, &marker)
        .map_err(|e| StorageError::io(Code::VolumeMetadataReadError, op, &marker, e))?
    {
        return Err(being_created(&marker, img, vol, op));
    }
    Ok(())
}

/// The metadata of a complete volume: [`read_meta`] after
/// [`refuse_creating`].
pub(crate) fn load(
    fs: &MountFs,
    paths: &DomainPaths,
    img: ImgUuid,
    vol: VolUuid,
    op: &'static str,
) -> StorageResult<VolumeMetadata> {
    refuse_creating(fs, paths, img, vol, op)?;
    read_meta(fs, paths, img, vol, op)
}

/// How [`write_meta`] writes a volume's `<vol>.meta`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MetaWrite {
    /// An atomic replace (0660: temporary file, fsync, rename, fsync of
    /// the directory, in the helper): every record but a new volume's
    /// first.
    Replace,
    /// The first record of a volume being created (its `.creating` marker
    /// is there and durable): a new file written, fsynced and its
    /// directory fsynced in one helper call, without the temporary file
    /// and rename of [`MetaWrite::Replace`]. Nobody reads the record of a
    /// volume being created, and a crash half-way leaves a torn record
    /// beside the marker, which the rollback removes as it removes any
    /// ([`discard`]). Later writes replace the record atomically.
    New,
}

/// Writes `<vol>.meta` as `how` says. An invalid record keeps its code
/// (753, 756); an I/O failure is 208.
pub(crate) fn write_meta(
    fs: &MountFs,
    paths: &DomainPaths,
    img: ImgUuid,
    vol: VolUuid,
    md: &VolumeMetadata,
    how: MetaWrite,
) -> StorageResult<()> {
    const OP: &str = "write volume metadata";
    let bytes = md.to_bytes()?;
    let path = paths.volume_meta(img, vol);
    let written = match how {
        MetaWrite::Replace => fs.write_atomic(&path, &bytes, FILE_VOLUME_MODE),
        MetaWrite::New => {
            let new_file = OpenWrite {
                create: true,
                exclusive: true,
                mode: FILE_VOLUME_MODE,
                sync_dir: true,
                ..OpenWrite::default()
            };
            fs.write_at(&path, 0, &bytes, new_file, true).map(drop)
        }
    };
    written.map_err(|e| open_error(Code::VolumeMetadataWriteError, OP, &path, e))
}

/// Read, change, write back.
pub(crate) fn update_meta(
    fs: &MountFs,
    paths: &DomainPaths,
    img: ImgUuid,
    vol: VolUuid,
    op: &'static str,
    change: impl FnOnce(&mut VolumeMetadata) -> StorageResult<()>,
) -> StorageResult<VolumeMetadata> {
    let mut md = read_meta(fs, paths, img, vol, op)?;
    change(&mut md)?;
    write_meta(fs, paths, img, vol, &md, MetaWrite::Replace).map_err(|e| e.in_op(op))?;
    Ok(md)
}

/// The data entry of a complete volume, not followed (what `getInfo`
/// reports: a link is never followed out of the domain, and is refused
/// only when something opens the data): missing (or half-created) is 201,
/// another failure `code`.
fn stat_data(
    fs: &MountFs,
    paths: &DomainPaths,
    img: ImgUuid,
    vol: VolUuid,
    code: Code,
    op: &'static str,
) -> StorageResult<StatInfo> {
    refuse_creating(fs, paths, img, vol, op)?;
    stat_volume(fs, paths, img, vol, code, op)
}

/// [`stat_data`] without the marker check (the caller made it).
fn stat_volume(
    fs: &MountFs,
    paths: &DomainPaths,
    img: ImgUuid,
    vol: VolUuid,
    code: Code,
    op: &'static str,
) -> StorageResult<StatInfo> {
    let data = paths.volume(img, vol);
    fs.lstat(&data)
        .map_err(|e| missing_or(e, &data, img, vol, code, op))
}

/// The data file of a volume whose marker the caller checked, for work
/// on it (qemu-img opens it by path): missing is 201, anything but the
/// volume's own regular file 254, another failure `code`. Not
/// [`stat_volume`], which reports the entry as it is (a symlink too, which
/// `getInfo` shows and does not refuse).
fn volume_file(
    fs: &MountFs,
    paths: &DomainPaths,
    img: ImgUuid,
    vol: VolUuid,
    code: Code,
    op: &'static str,
) -> StorageResult<StatInfo> {
    let data = paths.volume(img, vol);
    match fs.stat(&data) {
        Ok(st) if st.kind == FileKind::File => Ok(st),
        Ok(st) => Err(not_regular(&data, st.kind, op)),
        Err(e) => Err(missing_or(e, &data, img, vol, code, op)),
    }
}

/// 201 for data that is not there, else the error as `code` (254 for a
/// refusal, 2001/2002 for a mount in trouble).
fn missing_or(
    e: io::Error,
    data: &Path,
    img: ImgUuid,
    vol: VolUuid,
    code: Code,
    op: &'static str,
) -> StorageError {
    if e.kind() == ErrorKind::NotFound {
        return StorageError::new(
            Code::VolumeDoesNotExist,
            op,
            format!("volume {vol} of image {img}: no {}", data.display()),
        )
        .caused_by(e);
    }
    open_error(code, op, data, e)
}

/// A complete volume's [`VolumeInfo`]: its record, children and the stat
/// of its data (the caller checked the marker).
pub(crate) fn volume_info(
    fs: &MountFs,
    paths: &DomainPaths,
    img: ImgUuid,
    vol: VolUuid,
    metadata: VolumeMetadata,
    children: Vec<VolUuid>,
    op: &'static str,
) -> StorageResult<VolumeInfo> {
    let st = stat_volume(fs, paths, img, vol, Code::VolumeMetadataReadError, op)?;
    Ok(info_of(paths, img, vol, metadata, children, &st))
}

/// A volume's [`VolumeInfo`] from its record, children and data's stat.
fn info_of(
    paths: &DomainPaths,
    img: ImgUuid,
    vol: VolUuid,
    metadata: VolumeMetadata,
    children: Vec<VolUuid>,
    st: &StatInfo,
) -> VolumeInfo {
    VolumeInfo {
        volume: vol,
        metadata,
        path: paths.volume(img, vol),
        apparent_size: st.size,
        true_size: st.blocks * STAT_BLOCK,
        children,
        mtime: u64::try_from(st.mtime_s).unwrap_or(0),
    }
}

/// `name` as a volume id if it is one in canonical form (so that the id
/// maps back to the same file name).
pub(crate) fn canonical_vol(name: &str) -> Option<VolUuid> {
    name.parse::<VolUuid>()
        .ok()
        .filter(|v| v.to_string() == name)
}

/// The names in an image directory, from one listing: what the volume
/// calls ask of it ("is it there", "being created", "which records")
/// without a call each.
#[derive(Debug, Default)]
pub(crate) struct ImageEntries {
    names: BTreeSet<String>,
}

impl ImageEntries {
    /// Lists the image directory; a missing one has no entries. Anything
    /// but a directory there is 254, as is a listing that fails (a mount
    /// in trouble: 2001).
    pub(crate) fn scan(
        fs: &MountFs,
        paths: &DomainPaths,
        img: ImgUuid,
        op: &'static str,
    ) -> StorageResult<ImageEntries> {
        let dir = paths.image(img);
        ImageEntries::of_listing(fs.names(&dir), &dir, op)
    }

    /// [`scan`](Self::scan) of what the listing of `dir` answered.
    pub(crate) fn of_listing(
        listing: io::Result<Vec<String>>,
        dir: &Path,
        op: &'static str,
    ) -> StorageResult<ImageEntries> {
        match listing {
            Ok(names) => Ok(ImageEntries {
                names: names.into_iter().collect(),
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(ImageEntries::default()),
            Err(e) => Err(open_error(Code::ImagePathError, op, dir, e)),
        }
    }

    /// Whether the entry `path` (in this image directory) was listed.
    pub(crate) fn has(&self, path: &Path) -> bool {
        path.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| self.names.contains(n))
    }

    /// 201 if the volume is half-created.
    pub(crate) fn refuse_creating(
        &self,
        paths: &DomainPaths,
        img: ImgUuid,
        vol: VolUuid,
        op: &'static str,
    ) -> StorageResult<()> {
        let marker = paths.volume_creating(img, vol);
        if self.has(&marker) {
            return Err(being_created(&marker, img, vol, op));
        }
        Ok(())
    }

    fn with_suffix<'s>(&'s self, suffix: &'s str) -> impl Iterator<Item = VolUuid> + 's {
        self.names
            .iter()
            .filter_map(move |n| n.strip_suffix(suffix).and_then(canonical_vol))
    }

    /// Volumes with a `.meta` and no `.creating` marker, sorted.
    pub(crate) fn complete(&self) -> impl Iterator<Item = VolUuid> + '_ {
        let creating: BTreeSet<VolUuid> = self.with_suffix(CREATING_SUFFIX).collect();
        let metas: BTreeSet<VolUuid> = self.with_suffix(META_SUFFIX).collect();
        metas.into_iter().filter(move |v| !creating.contains(v))
    }

    /// Volumes with a `.creating` marker, sorted.
    pub(crate) fn creating(&self) -> Vec<VolUuid> {
        let set: BTreeSet<VolUuid> = self.with_suffix(CREATING_SUFFIX).collect();
        set.into_iter().collect()
    }
}

/// Volumes with a `.meta` in the image directory and no `.creating`
/// marker, sorted. A missing directory has none.
pub(crate) fn meta_volumes(
    fs: &MountFs,
    paths: &DomainPaths,
    img: ImgUuid,
    op: &'static str,
) -> StorageResult<Vec<VolUuid>> {
    Ok(ImageEntries::scan(fs, paths, img, op)?.complete().collect())
}

/// The PUUID in a metadata record, read the way VDSM's `getChildren` greps
/// for it: without parsing the rest, so a child whose record is otherwise
/// damaged still counts as a child.
fn parent_in_record(bytes: &[u8]) -> Option<VolUuid> {
    let text = String::from_utf8_lossy(bytes);
    for line in text.split(['\n', '\r']) {
        if line.starts_with("EOF") {
            break;
        }
        if let Some((k, v)) = line.split_once('=') {
            if k.trim() == keys::PUUID {
                return v.trim().parse().ok();
            }
        }
    }
    None
}

/// Parent of each of `vols`, from its record (the reads batched, one
/// round trip per [`MAX_BATCH_ITEMS`] records; a record gone meanwhile is
/// skipped).
fn parents_of(
    fs: &MountFs,
    paths: &DomainPaths,
    img: ImgUuid,
    vols: &[VolUuid],
    op: &'static str,
) -> StorageResult<HashMap<VolUuid, VolUuid>> {
    let mut out = HashMap::new();
    for group in vols.chunks(MAX_BATCH_ITEMS) {
        let metas: Vec<_> = group.iter().map(|&v| paths.volume_meta(img, v)).collect();
        let looks: Vec<Look<'_>> = metas
            .iter()
            .map(|p| Look::ReadToEnd(p, META_READ_MAX))
            .collect();
        let failed = |path: &Path, e| StorageError::io(Code::VolumeMetadataReadError, op, path, e);
        let seen = fs.look(&looks).map_err(|e| failed(&metas[0], e))?;
        for ((&v, path), answer) in group.iter().zip(&metas).zip(seen) {
            match answer.and_then(seen_data) {
                Ok(bytes) => {
                    if let Some(p) = parent_in_record(&bytes) {
                        out.insert(v, p);
                    }
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(failed(path, e)),
            }
        }
    }
    Ok(out)
}

/// Parent of every complete volume in the image, from its record.
pub(crate) fn parents(
    fs: &MountFs,
    paths: &DomainPaths,
    img: ImgUuid,
    op: &'static str,
) -> StorageResult<HashMap<VolUuid, VolUuid>> {
    parents_of(fs, paths, img, &meta_volumes(fs, paths, img, op)?, op)
}

/// The volumes among `others` whose parent is `vol`, sorted.
fn children_among(
    fs: &MountFs,
    paths: &DomainPaths,
    img: ImgUuid,
    vol: VolUuid,
    others: &[VolUuid],
    op: &'static str,
) -> StorageResult<Vec<VolUuid>> {
    let mut kids: Vec<VolUuid> = parents_of(fs, paths, img, others, op)?
        .into_iter()
        .filter(|&(child, parent)| parent == vol && child != vol)
        .map(|(child, _)| child)
        .collect();
    kids.sort();
    Ok(kids)
}

/// The complete volumes of the image whose parent is `vol`, sorted.
pub(crate) fn children(
    fs: &MountFs,
    paths: &DomainPaths,
    img: ImgUuid,
    vol: VolUuid,
    op: &'static str,
) -> StorageResult<Vec<VolUuid>> {
    let others: Vec<VolUuid> = meta_volumes(fs, paths, img, op)?
        .into_iter()
        .filter(|&v| v != vol)
        .collect();
    children_among(fs, paths, img, vol, &others, op)
}

/// VDSM's `recheckIfLeaf` for a parent losing its child `gone`: an
/// INTERNAL volume that no other volume names as parent becomes LEAF.
/// A missing parent is left alone.
pub(crate) fn recheck_leaf(
    fs: &MountFs,
    paths: &DomainPaths,
    img: ImgUuid,
    parent: VolUuid,
    gone: VolUuid,
) -> StorageResult<()> {
    const OP: &str = "update parent volume";
    let md = match read_meta(fs, paths, img, parent, OP) {
        Ok(md) => md,
        Err(e) if e.code == Code::VolumeDoesNotExist => return Ok(()),
        Err(e) => return Err(e),
    };
    if md.vol_type != VolType::Internal {
        return Ok(());
    }
    let others: Vec<VolUuid> = children(fs, paths, img, parent, OP)?
        .into_iter()
        .filter(|&c| c != gone)
        .collect();
    if others.is_empty() {
        update_meta(fs, paths, img, parent, OP, |m| {
            m.vol_type = VolType::Leaf;
            Ok(())
        })?;
        tracing::info!(%img, vol = %parent, "volume is a leaf again");
    }
    Ok(())
}

/// Removes a half-created volume: fixes its parent, removes data, lease,
/// metadata and the temporaries of an interrupted metadata write, and the
/// `.creating` marker last. Repeatable: a crash in the middle leaves the
/// marker, and the next call finishes.
pub(crate) fn discard(
    fs: &MountFs,
    paths: &DomainPaths,
    img: ImgUuid,
    vol: VolUuid,
) -> StorageResult<()> {
    const OP: &str = "remove half-created volume";
    match read_meta(fs, paths, img, vol, OP) {
        Ok(md) if !md.parent.is_blank() => recheck_leaf(fs, paths, img, md.parent, vol)?,
        Ok(_) => {}
        Err(e) if e.code == Code::VolumeDoesNotExist => {}
        // Nothing can be removed on a mount that does not answer.
        Err(e) if e.has_mount_trouble_code() => return Err(e),
        Err(e) => {
            // Without the record the parent is unknown; the parent change
            // comes after the record is written, so a parent can only have
            // been changed if the record was readable.
            tracing::warn!(%img, %vol, error = %e, "half-created volume has unreadable metadata");
        }
    }
    remove_if_exists(fs, &paths.volume(img, vol), OP)?;
    remove_if_exists(fs, &paths.volume_lease(img, vol), OP)?;
    remove_if_exists(fs, &paths.volume_meta(img, vol), OP)?;
    let dir = paths.image(img);
    // write_atomic's temporaries: ".<vol>.meta.tmp-<pid>-<n>" (the
    // helper's), ".<vol>.meta.tmp-<random>" (depot's before helpers).
    let tmp_prefix = format!(".{vol}{META_SUFFIX}.tmp-");
    let names = match fs.names(&dir) {
        Ok(names) => names,
        Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(StorageError::io(Code::CannotDeleteVolume, OP, &dir, e)),
    };
    for name in names.iter().filter(|n| n.starts_with(&tmp_prefix)) {
        remove_if_exists(fs, &dir.join(name), OP)?;
    }
    fsync_dir(fs, &dir, Code::CannotDeleteVolume, OP)?;
    remove_if_exists(fs, &paths.volume_creating(img, vol), OP)?;
    fsync_dir(fs, &dir, Code::CannotDeleteVolume, OP)
}

/// Allocates `len` bytes at `offset` of `path` (growing the file), one
/// `fallocate` call of [`PREALLOCATE_STEP`] at a time. Where the file
/// system cannot `fallocate` (NFS before 4.2) zeros are written, as
/// VDSM's `fallocate` helper does.
fn preallocate(fs: &MountFs, path: &Path, offset: u64, len: u64) -> io::Result<()> {
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(PREALLOCATE_STEP);
        match fs.fallocate(path, offset + done, n) {
            Ok(()) => done += n,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS)) => {
                return write_zeros(fs, path, offset + done, len - done)
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Zeros written over `len` bytes at `offset`, [`ZEROS_CHUNK`] per call.
fn write_zeros(fs: &MountFs, path: &Path, offset: u64, len: u64) -> io::Result<()> {
    let zeros = vec![0u8; ZEROS_CHUNK];
    let mut done = 0u64;
    while done < len {
        let n = usize::try_from(len - done).map_or(zeros.len(), |r| r.min(zeros.len()));
        fs.write_at(
            path,
            offset + done,
            &zeros[..n],
            OpenWrite::default(),
            false,
        )?;
        done += n as u64;
    }
    Ok(())
}

/// Overwrites a file's content with zeros, in place, and fsyncs it: a real
/// wipe, since punching holes (or `FALLOC_FL_ZERO_RANGE`, which only marks
/// extents unwritten) would leave the old blocks on the disk.
///
/// The aligned bulk is zeroed by the mount's helpers themselves
/// ([`MountFs::wipe`]: `O_DIRECT` from a zeroed buffer of theirs, no zero
/// byte on the pipe), [`WIPE_CHUNK`] per call, each call with the helpers'
/// deadline; a tail that is not a multiple of the direct I/O alignment is
/// written with a normal write. In a sparse file the helper reads each
/// 1 MiB unit first and skips those that already read as zeros (holes),
/// so the wipe neither allocates the holes nor runs the domain out of
/// space. The file keeps its size and allocation. Returns the bytes
/// written. The file must be a regular file reached without a symlink
/// (else 254); other errors are CannotDeleteVolume (222), or 2001/2002 for
/// a mount in trouble.
pub fn wipe_file(fs: &MountFs, path: &Path) -> StorageResult<u64> {
    const OP: &str = "wipe volume data";
    let code = Code::CannotDeleteVolume;
    let fail = |e: io::Error| open_error(code, OP, path, e);
    let st = check_data(fs, path, code, OP)?;
    let len = st.size;
    let sparse = st.blocks * STAT_BLOCK < len;
    let probe = fs.direct_probe(path).map_err(fail)?;
    let align = u64::from(probe.block_size).max(512);
    if !probe.supported || !align.is_power_of_two() || align > WIPE_PROBE_UNIT {
        return Err(StorageError::new(
            code,
            OP,
            format!("{}: unusable direct I/O: {probe:?}", path.display()),
        ));
    }
    let bulk = len - len % align;
    let mut written = 0u64;
    let mut off = 0u64;
    while off < bulk {
        let n = (bulk - off).min(WIPE_CHUNK);
        written += fs.wipe(path, off, n, sparse).map_err(fail)?;
        off += n;
    }
    if bulk < len {
        let zeros = vec![0u8; (len - bulk) as usize];
        fs.write_at(path, bulk, &zeros, OpenWrite::default(), false)
            .map_err(fail)?;
        written += zeros.len() as u64;
    }
    fs.fsync(path).map_err(fail)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOL: &str = "5b1c1f4e-8a43-4a4e-9d59-3f0e2a1c7b11";

    #[test]
    fn canonical_names_only() {
        assert!(canonical_vol(VOL).is_some());
        assert!(canonical_vol(&VOL.to_uppercase()).is_none());
        assert!(canonical_vol("x").is_none());
        assert!(canonical_vol(&format!("{VOL}.meta")).is_none());
    }

    #[test]
    fn parent_is_read_like_vdsm_greps_it() {
        let rec = format!("CAP=1\nGARBAGE\nPUUID = {VOL} \nEOF\n");
        assert_eq!(parent_in_record(rec.as_bytes()), Some(VOL.parse().unwrap()));
        let after_eof = format!("CAP=1\nEOF\nPUUID={VOL}\n");
        assert_eq!(parent_in_record(after_eof.as_bytes()), None);
        let crlf = format!("X=1\r\nPUUID={VOL}\r\nEOF\r\n\0\0");
        assert_eq!(
            parent_in_record(crlf.as_bytes()),
            Some(VOL.parse().unwrap())
        );
    }

    #[test]
    fn wipe_handles_unaligned_tails_and_holes() {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let dir = tempfile::tempdir().unwrap();
        let fs = MountFs::in_process(dir.path(), Duration::from_secs(30));
        // 3 MiB of data, a 13 MiB hole, and an unaligned tail of 100 bytes.
        let p = dir.path().join("v");
        let f = std::fs::File::create(&p).unwrap();
        f.write_all_at(&vec![0x55; 3 << 20], 0).unwrap();
        f.write_all_at(&[0x66; 100], 16 << 20).unwrap();
        drop(f);
        let before = std::fs::metadata(&p).unwrap();
        let n = wipe_file(&fs, &p).unwrap();
        let after = std::fs::metadata(&p).unwrap();
        assert_eq!(after.len(), before.len());
        assert!(std::fs::read(&p).unwrap().iter().all(|&b| b == 0));
        // The hole was not filled in.
        assert!(
            after.blocks() <= before.blocks() + 8,
            "{before:?} {after:?}"
        );
        assert!(n >= (3 << 20) + 100, "{n}");
    }
}
