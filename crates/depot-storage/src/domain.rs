//! The domain contract: [`Domain`], a located storage domain of either
//! kind, with one `match` per operation (metadata read and update, stats,
//! validate, format, crash recovery, volumes, volume data). Verbs in
//! engine/ call these and never ask which kind a domain is.
//!
//! A file domain's calls touch a mount that can hang on a dead server, so
//! they go through that mount's helper processes ([`FileDomain::fs`],
//! crate::mount_fs), each with a deadline; a block domain's LVM, qemu-img
//! and O_DIRECT calls carry their own timeouts and run on the caller's
//! thread. Both run on the caller's thread as far as depotd is concerned.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use depot_api::storage::{ImgUuid, SdUuid, VolUuid};
use depot_os::lvm::Lvm;
use depot_os::{FsStats, QemuImg};

use crate::block::{self, BlockVolumes};
use crate::error::StorageResult;
use crate::file::{self, volumes::FileVolumes};
use crate::layout::DomainPaths;
use crate::lockspace::VolumeLeases;
use crate::metadata::domain::DomainMetadata;
use crate::mount_fs::MountFs;
use crate::volume_data::VolumeData;
use crate::volume_store::VolumeStore;

/// A located storage domain.
#[derive(Clone)]
pub enum Domain {
    File(FileDomain),
    Block(BlockDomain),
}

/// A file domain: a directory `<mount>/<sd>` (crate::layout), and the
/// helpers through which every call on it is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDomain {
    pub sd: SdUuid,
    pub paths: DomainPaths,
    pub fs: MountFs,
}

/// A block domain: a VG named by its id, seen through its link directory
/// `<repository>/mnt/blockSD/<sd>`.
#[derive(Clone)]
pub struct BlockDomain {
    pub sd: SdUuid,
    /// The link directory: `dom_md` links to `/dev/<vg>`, prepared
    /// volumes link to their LVs.
    pub paths: DomainPaths,
    pub lvm: Lvm,
    /// From the domain's metadata, read when it was located.
    pub block_size: u32,
    /// Serializes metadata slot allocation on this host: one per domain,
    /// shared by every handle of it.
    pub slot_lock: Arc<Mutex<()>>,
}

/// What volume work needs from the host besides the domain: qemu-img and
/// the limit of each of its runs.
#[derive(Clone, Copy)]
pub struct VolumeTools<'a> {
    pub qemu: &'a QemuImg,
    pub timeout: Duration,
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Domain::File(_) => "File",
            Domain::Block(_) => "Block",
        };
        f.debug_struct("Domain")
            .field("kind", &kind)
            .field("sd", &self.sd())
            .field("root", &self.paths().root)
            .finish()
    }
}

impl Domain {
    pub fn sd(&self) -> SdUuid {
        match self {
            Domain::File(d) => d.sd,
            Domain::Block(d) => d.sd,
        }
    }

    /// The domain's directory (file) or link directory (block).
    pub fn paths(&self) -> &DomainPaths {
        match self {
            Domain::File(d) => &d.paths,
            Domain::Block(d) => &d.paths,
        }
    }

    pub fn is_block(&self) -> bool {
        matches!(self, Domain::Block(_))
    }

    /// Where the domain is on a mount (the monitor watches that mount).
    /// None for a block domain, which is on no mount.
    pub fn mount_root(&self) -> Option<&Path> {
        match self {
            Domain::File(d) => Some(&d.paths.root),
            Domain::Block(_) => None,
        }
    }

    /// Whether the domain is still where it was located: its metadata file,
    /// or its VG (LVM's cache answers). A file domain's mount that does
    /// not answer is an error (2001 naming the mount), never "not there".
    pub fn still_there(&self) -> StorageResult<bool> {
        match self {
            Domain::File(d) => file::domain::still_there(&d.fs, &d.paths),
            Domain::Block(d) => Ok(block::exists(&d.lvm, d.sd)),
        }
    }

    /// The domain metadata, read past any cache (O_DIRECT for a file
    /// domain; the VG's tags, fresh from LVM, for a block one).
    pub fn read_metadata(&self) -> StorageResult<DomainMetadata> {
        match self {
            Domain::File(d) => file::domain::read_metadata(&d.fs, &d.paths),
            Domain::Block(d) => block::read_metadata(&d.lvm, d.sd),
        }
    }

    /// Read, change, write: the one way domain metadata changes.
    pub fn update_metadata(
        &self,
        change: impl FnOnce(&mut DomainMetadata) -> StorageResult<()>,
    ) -> StorageResult<DomainMetadata> {
        match self {
            Domain::File(d) => file::domain::update_metadata(&d.fs, &d.paths, change),
            Domain::Block(d) => block::update_metadata(&d.lvm, d.sd, change),
        }
    }

    /// Space figures: the file system's, or the VG's.
    pub fn stats(&self) -> StorageResult<FsStats> {
        match self {
            Domain::File(d) => file::domain::stats(&d.fs, &d.paths),
            Domain::Block(d) => block::stats(&d.lvm, d.sd),
        }
    }

    /// Checks the layout and that the metadata names this domain.
    pub fn validate(&self) -> StorageResult<DomainMetadata> {
        match self {
            Domain::File(d) => file::domain::validate(&d.fs, &d.paths, d.sd),
            Domain::Block(d) => block::validate(&d.lvm, d.sd),
        }
    }

    /// Removes the domain: its directory, or its VG, PVs and link
    /// directory under `repository`.
    pub fn format(&self, repository: &Path) -> StorageResult<()> {
        match self {
            Domain::File(d) => file::domain::format(&d.fs, &d.paths, d.sd),
            Domain::Block(d) => block::format(&d.lvm, repository, d.sd),
        }
    }

    /// Cleans what a crash left half done in the domain's volumes; returns
    /// what was removed, for the log. A file domain's calls go through its
    /// mount's helpers, each with their deadline (a promised wipe is one
    /// call per chunk).
    pub fn recover(&self, tools: VolumeTools<'_>) -> StorageResult<Vec<String>> {
        match self {
            Domain::File(d) => {
                let r = file::images::recover(&d.fs, &d.paths)?;
                for (what, e) in r.failed {
                    tracing::warn!(sd = %d.sd, %what, error = %e, "crash leftover not cleaned yet");
                }
                Ok(r.cleaned.iter().map(|c| c.to_string()).collect())
            }
            Domain::Block(d) => d.volumes(tools).recover(),
        }
    }

    /// Runs `f` with the domain's volumes, on the calling thread: a file
    /// domain's calls go through its mount's helpers with their deadline,
    /// a block domain's LVM, qemu-img and O_DIRECT calls carry their own
    /// timeouts.
    pub fn volumes<T>(&self, tools: VolumeTools<'_>, f: impl FnOnce(&dyn VolumeStore) -> T) -> T {
        self.volumes_with_leases(tools, None, f)
    }

    /// [`Domain::volumes`], with new volumes' leases formatted through
    /// `leases` (crate::lockspace; `None`: the domain has no volume
    /// leases, and a new volume's `.lease` stays empty).
    pub fn volumes_with_leases<T>(
        &self,
        tools: VolumeTools<'_>,
        leases: Option<VolumeLeases<'_>>,
        f: impl FnOnce(&dyn VolumeStore) -> T,
    ) -> T {
        match self {
            Domain::File(d) => f(&d.volumes(tools).with_leases(leases)),
            Domain::Block(d) => f(&BlockVolumes {
                leases,
                ..d.volumes(tools)
            }),
        }
    }

    /// Checks that the data of `vol` in `img` follows its rule
    /// (crate::volume_data) without opening it: 254 when it does not, the
    /// OS's error with `code` when it cannot be looked at. A file domain's
    /// is looked at through its mount's helpers.
    pub fn check_volume_data(
        &self,
        img: ImgUuid,
        vol: VolUuid,
        code: depot_api::Code,
        op: &'static str,
    ) -> StorageResult<()> {
        match self {
            Domain::File(d) => {
                file::volumes::check_data(&d.fs, &d.paths.volume(img, vol), code, op).map(drop)
            }
            Domain::Block(_) => self.volume_data(img, vol).check(code, op),
        }
    }

    /// `Image.teardown`'s work on the domain: a block domain deactivates
    /// the image's LVs and removes their links; a file domain has nothing
    /// to undo.
    pub fn teardown(&self, tools: VolumeTools<'_>, img: ImgUuid) -> StorageResult<()> {
        match self {
            Domain::File(_) => Ok(()),
            Domain::Block(d) => d.volumes(tools).teardown(img),
        }
    }

    /// Where the data of `vol` in `img` is, with its rule
    /// (crate::volume_data).
    pub fn volume_data(&self, img: ImgUuid, vol: VolUuid) -> VolumeData {
        match self {
            Domain::File(d) => VolumeData::file(&d.paths, img, vol),
            Domain::Block(d) => VolumeData::block(&d.paths, &block::vg_name(d.sd), img, vol),
        }
    }
}

impl Domain {
    /// Where volume `vol`'s lease is: `<vol>.lease` at 0 on a file domain,
    /// slot 100 + its metadata slot of `leases` on a block domain (201
    /// for a block volume that is not there; a file volume's lease file
    /// is checked by the caller, through the mount's helpers).
    pub fn volume_lease_area(
        &self,
        tools: VolumeTools<'_>,
        img: ImgUuid,
        vol: VolUuid,
        alignment: u64,
    ) -> StorageResult<depot_os::sanlock::Area> {
        match self {
            Domain::File(d) => Ok(depot_os::sanlock::Area::new(
                d.paths.volume_lease(img, vol),
                0,
            )),
            Domain::Block(d) => d.volumes(tools).lease_area(img, vol, alignment),
        }
    }
}

impl FileDomain {
    pub(crate) fn volumes<'a>(&'a self, tools: VolumeTools<'a>) -> FileVolumes<'a> {
        FileVolumes::new(&self.paths, &self.fs, self.sd, tools.qemu, tools.timeout)
    }
}

impl BlockDomain {
    pub(crate) fn volumes<'a>(&'a self, tools: VolumeTools<'a>) -> BlockVolumes<'a> {
        BlockVolumes {
            sd: self.sd,
            lvm: &self.lvm,
            qemu: tools.qemu,
            timeout: tools.timeout,
            block_size: self.block_size,
            root: &self.paths.root,
            slot_lock: &self.slot_lock,
            leases: None,
        }
    }
}
