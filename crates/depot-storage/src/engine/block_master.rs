//! The SPM's mount of a block master's `master` file system (VDSM's
//! blockSD `mountMaster`/`unmountMaster`; docs/storage.md "SPM tasks", "On
//! the master domain"; the commands are crate::block::master_fs).
//!
//! - spmStart, once this host holds the SPM's lease and before the tasks
//!   are loaded, activates the `master` LV, checks its file system
//!   (`e2fsck -p`: the journal a crashed SPM left is replayed) and mounts
//!   it at `<repository>/mnt/blockSD/<sd>/master`
//!   ([`Storage::mount_block_master`]); a failure gives the lease back.
//! - Whatever ends the role (spmStop, a disconnect or destroy, a lease
//!   lost) unmounts it and deactivates the LV before the lease goes
//!   ([`Storage::unmount_block_master`]), and so does a switchMaster for
//!   the old master, after it mounted the new one.
//! - depotd's start unmounts what a depotd of the same repository that
//!   died left ([`Storage::clean_stale_master_mounts`]).
//!
//! Only the lease holder mounts: two hosts never have the file system
//! mounted at once (ext3 is not a cluster file system), as long as the
//! mount goes before the lease does. Every call here blocks (LVM, e2fsck,
//! mount: each with its timeout), on the caller's blocking thread.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use depot_api::storage::SdUuid;
use depot_api::Code;
use depot_os::command::CommandRunner;
use depot_os::mount::{self, MountEntry};
use depot_os::Mounter;

use super::Storage;
use crate::block::master_fs::{self, Fsck, Signature, MASTER_LV, SHORT_TIMEOUT};
use crate::block::{self, lvm_err};
use crate::domain::Domain;
use crate::{StorageError, StorageResult};

/// The commands, and which masters this process mounted.
pub(super) struct BlockMasters {
    pub(super) runner: CommandRunner,
    mounter: Mounter,
    /// Masters mounted by this process and not unmounted since: the only
    /// ones whose task directory is handed out (a directory where nothing
    /// is mounted is the host's own disk).
    mounted: Mutex<HashSet<SdUuid>>,
}

impl BlockMasters {
    pub(super) fn new(runner: CommandRunner) -> BlockMasters {
        BlockMasters {
            mounter: Mounter::new(runner.clone()),
            runner,
            mounted: Mutex::default(),
        }
    }

    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<SdUuid>> {
        self.mounted.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `major:minor` of a device number, as mountinfo writes it (glibc's
/// encoding of `dev_t`).
fn major_minor(dev: u64) -> String {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    format!("{major}:{minor}")
}

fn mount_err(detail: String) -> StorageError {
    StorageError::new(
        Code::BlockStorageDomainMasterMountError,
        "mount the master file system",
        detail,
    )
}

impl Storage {
    /// The mount point of `master`'s file system when this process
    /// mounted it and it is still there.
    pub(super) fn block_master_mount(&self, master: SdUuid) -> Option<PathBuf> {
        if !self.block_masters.set().contains(&master) {
            return None;
        }
        let target = master_fs::mount_point(self.repository(), master);
        match mount::find_by_target(&target) {
            Ok(Some(_)) => Some(target),
            Ok(None) => {
                tracing::error!(%master, target = %target.display(),
                    "the master file system this host mounted is gone");
                None
            }
            Err(e) => {
                tracing::warn!(%master, error = %e, "cannot read the mount table");
                None
            }
        }
    }

    /// Mounts block master `master`'s file system (nothing for a file
    /// master). Idempotent: a mount of the LV already there is taken as it
    /// is. An LV without any signature (a domain made by a depot before
    /// this one) gets its file system first; one with a signature that is
    /// not ext2/3/4 is refused (368), never written over. 367 when
    /// `e2fsck -p` leaves errors (its output logged and in the error).
    pub(super) fn mount_block_master(&self, master: SdUuid) -> StorageResult<()> {
        const OP: &str = "mount the master file system";
        let Domain::Block(_) = self.locate(master)? else {
            return Ok(());
        };
        let target = master_fs::mount_point(self.repository(), master);
        let vg = block::vg_name(master);
        let dev = self
            .lvm
            .activate(&vg, &[MASTER_LV])
            .map_err(|e| lvm_err(Code::BlockStorageDomainMasterMountError, OP, e))?
            .remove(0);
        let done = self.mount_master_dev(master, &dev, &target);
        match &done {
            Ok(()) => {
                self.block_masters.set().insert(master);
            }
            Err(_) => {
                if let Err(e) = self.lvm.deactivate(&vg, &[MASTER_LV]) {
                    tracing::warn!(%master, error = %e, "cannot deactivate the master LV");
                }
            }
        }
        done
    }

    fn mount_master_dev(&self, master: SdUuid, dev: &Path, target: &Path) -> StorageResult<()> {
        let runner = &self.block_masters.runner;
        block::ensure_links(self.repository(), master)?;
        std::fs::create_dir_all(target)
            .map_err(|e| mount_err(format!("mkdir {}: {e}", target.display())))?;
        let rdev = std::fs::metadata(dev)
            .map_err(|e| mount_err(format!("{}: {e}", dev.display())))?
            .rdev();
        let table = mount::read_mountinfo().map_err(|e| mount_err(e.to_string()))?;
        if let Some(e) = mount::find_in(table, target) {
            return already_mounted(&e, rdev, dev, target);
        }
        let fstype = match master_fs::probe(runner, dev).map_err(|e| mount_err(e.to_string()))? {
            Signature::None => {
                tracing::warn!(%master, dev = %dev.display(),
                    "the master LV has no file system (a domain made by an older depot): making it");
                master_fs::mkfs(runner, dev).map_err(|e| {
                    StorageError::new(
                        Code::MkfsError,
                        "make the master file system",
                        e.to_string(),
                    )
                    .caused_by(e)
                })?;
                "ext3".to_owned()
            }
            Signature::Ext(t) => t,
            Signature::Other(what) => {
                return Err(mount_err(format!(
                    "{} holds {what}, not the master file system: left as it is",
                    dev.display()
                )))
            }
        };
        match master_fs::fsck(runner, dev) {
            Ok(Fsck::Clean) => {}
            Ok(Fsck::Fixed(said)) => {
                tracing::warn!(%master, dev = %dev.display(), output = %said,
                    "e2fsck corrected the master file system");
            }
            Err(e) => {
                tracing::error!(%master, dev = %dev.display(), code = ?e.exit_code(),
                    stderr = %e.stderr(), "e2fsck left errors on the master file system");
                return Err(StorageError::new(
                    Code::BlockStorageDomainMasterFSCKError,
                    "check the master file system",
                    e.to_string(),
                )
                .caused_by(e));
            }
        }
        self.block_masters
            .mounter
            .mount(
                &dev.to_string_lossy(),
                target,
                Some(&fstype),
                &[],
                SHORT_TIMEOUT,
            )
            .map_err(|e| mount_err(e.to_string()))?;
        tracing::info!(%master, target = %target.display(), fs = %fstype, "master file system mounted");
        Ok(())
    }

    /// Unmounts block master `master`'s file system if it is mounted here,
    /// and deactivates its LV. Idempotent (nothing mounted: nothing to
    /// do). 366 when umount fails (busy, a timeout): still mounted.
    pub(super) fn unmount_block_master(&self, master: SdUuid) -> StorageResult<()> {
        let target = master_fs::mount_point(self.repository(), master);
        let ours = self.block_masters.set().remove(&master);
        let there = mount::find_by_target(&target)
            .map_err(|e| {
                StorageError::new(
                    Code::StorageDomainMasterUnmountError,
                    "unmount the master file system",
                    e.to_string(),
                )
            })
            .inspect_err(|_| {
                if ours {
                    self.block_masters.set().insert(master);
                }
            })?
            .is_some();
        if !ours && !there {
            return Ok(());
        }
        if there {
            if let Err(e) = self
                .block_masters
                .mounter
                .umount(&target, false, false, SHORT_TIMEOUT)
            {
                if ours {
                    self.block_masters.set().insert(master);
                }
                tracing::error!(%master, target = %target.display(), error = %e,
                    "cannot unmount the master file system");
                return Err(StorageError::new(
                    Code::StorageDomainMasterUnmountError,
                    "unmount the master file system",
                    e.to_string(),
                ));
            }
            tracing::info!(%master, target = %target.display(), "master file system unmounted");
        }
        if let Err(e) = self.lvm.deactivate(&block::vg_name(master), &[MASTER_LV]) {
            tracing::warn!(%master, error = %e, "cannot deactivate the master LV");
        }
        Ok(())
    }

    /// depotd's shutdown: every master file system this process mounted
    /// is unmounted (the SPM's lease is released when depotd exits, and
    /// another host may mount the file system then). One that will not
    /// go is logged; the next start cleans it.
    pub(super) fn unmount_block_masters(&self) {
        let mounted: Vec<SdUuid> = self.block_masters.set().iter().copied().collect();
        for sd in mounted {
            if let Err(e) = self.unmount_block_master(sd) {
                tracing::error!(%sd, error = %e, "the master file system stays mounted at shutdown");
            }
        }
    }

    /// depotd's start: unmounts every master file system mounted in this
    /// repository (`<repository>/mnt/blockSD/<sd>/master`) and deactivates
    /// its LV; what was cleaned, for the log. Safe: only depotd mounts
    /// there, and only while it is SPM; a depotd that starts is SPM of no
    /// pool (the role is not kept over a restart), and no other depotd
    /// runs on this repository (depotd's lock on its state directory, and
    /// the repository is this depotd's). So a mount there is one a depotd
    /// that died left, no longer the SPM's: with a shared kernel (the
    /// namespaces of the VM tier), another host's mount is in its own
    /// namespace and never in this table. A mount that will not go (busy:
    /// someone is in it) is logged and left.
    pub fn clean_stale_master_mounts(&self) -> Vec<String> {
        let table: Vec<MountEntry> = match mount::read_mountinfo() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the mount table: stale master mounts are left");
                return Vec::new();
            }
        };
        let stale = master_fs::master_mounts(&table, self.repository());
        if !stale.is_empty() {
            // At start LVM may scan no device yet: the LVs' deactivation
            // needs their multipath maps.
            self.refresh_lvm_devices();
        }
        let mut cleaned = Vec::new();
        for (sd, target) in stale {
            match self.unmount_block_master(sd) {
                Ok(()) => {
                    tracing::warn!(%sd, target = %target.display(),
                        "unmounted a master file system a depotd that died left");
                    cleaned.push(format!("stale master mount {}", target.display()));
                }
                Err(e) => tracing::error!(%sd, error = %e,
                    "a stale master mount cannot be unmounted; the next spmStart of its pool takes it as it is"),
            }
        }
        cleaned
    }
}

/// An existing mount at `target`: fine if it is `dev`'s (a repeated
/// mount), refused otherwise.
fn already_mounted(e: &MountEntry, rdev: u64, dev: &Path, target: &Path) -> StorageResult<()> {
    if e.device == major_minor(rdev) {
        tracing::info!(target = %target.display(), "master file system already mounted");
        return Ok(());
    }
    Err(mount_err(format!(
        "{} has {} ({}, device {}) mounted, not {} ({})",
        target.display(),
        e.source,
        e.fstype,
        e.device,
        dev.display(),
        major_minor(rdev)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_as_mountinfo_writes_them() {
        assert_eq!(major_minor(libc::makedev(253, 3)), "253:3");
        assert_eq!(major_minor(libc::makedev(259, 1_048_577)), "259:1048577");
        assert_eq!(major_minor(libc::makedev(4095, 0)), "4095:0");
    }
}
