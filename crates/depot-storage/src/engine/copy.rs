//! Copies between domains (docs/copy.md): `SDM.copy_data` (one volume),
//! `Image.move` (a whole chain, COPY or MOVE), `SDM.update_volume` (the
//! oVirt's fence) and checksums.
//!
//! Integrity rules: the destination's GEN must equal the generation the
//! caller gives (911); the destination is ILLEGAL while the copy runs and
//! becomes LEGAL with GEN+1 only after the data is complete and verified;
//! the source image is locked shared and the destination image exclusive;
//! MOVE deletes the source only after every destination volume is LEGAL.
//! `SDM.copy_data` and `SDM.update_volume` hold the destination's volume
//! lease while they work (volume_leases.rs).

use std::path::{Path, PathBuf};

use depot_api::storage::{ImgUuid, Legality, SdUuid, VolUuid, VolumeFormat};
use depot_api::Code;
use depot_os::{ConvertOptions, ImageFormat};

use super::volume_leases::HeldVolumeLease;
use super::Storage;
use crate::copy::child::{child_command, run_in_child, ChildDone, ChildJob};
use crate::copy::{self, BlkHash, CopyError, CopyOptions, Journal};
use crate::domain::Domain;
use crate::lock::{Held, LockMode, ResourceName};
use crate::metadata::volume::next_generation;
use crate::volume_data::{open_error, VolumeData};
use crate::volume_store::{CreateVolume, VolumeInfo};
use crate::{StorageError, StorageResult};
use depot_os::fsproc::{FileKind, HelperCommand};

/// One volume on one domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VolRef {
    pub sd: SdUuid,
    pub img: ImgUuid,
    pub vol: VolUuid,
}

/// How a copy went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOutcome {
    /// The blkhash of the data copied (raw to raw), as ovirt-imageio
    /// computes it.
    pub checksum: Option<BlkHash>,
    /// The destination was read back and matched.
    pub verified: bool,
    /// "native" (depot's O_DIRECT copier) or "qemu-img".
    pub method: &'static str,
    /// The destination's new generation.
    pub generation: u32,
    /// Bytes the copy resumed from after a restart (native copies).
    pub resumed_from: u64,
}

/// Whether a copy holds the destination's volume lease while it works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationLease {
    /// `SDM.copy_data`: the lease is held for the whole copy, so that no
    /// other host or process writes the volume meanwhile (651 when one
    /// holds it, and nothing changes).
    Hold,
    /// `Image.move`: an SPM verb in VDSM, which takes no volume lease;
    /// the SPM role and the image locks are what guard the destination.
    Skip,
}

/// The two ends of a copy: their metadata and their data.
struct Ends<'a> {
    src: &'a VolumeInfo,
    dst: &'a VolumeInfo,
    src_data: &'a VolumeData,
    dst_data: &'a VolumeData,
    dst_ref: VolRef,
    held: &'a Held,
}

/// What a long operation reports and asks.
pub struct Control<'a> {
    /// 0..=100.
    pub progress: &'a dyn Fn(u8),
    pub abort: &'a dyn Fn() -> bool,
}

fn copy_err(op: &'static str, e: CopyError) -> StorageError {
    let code = match &e {
        CopyError::Aborted => Code::TaskAborted,
        CopyError::DestinationTooSmall { .. } => Code::VolumeResizeValueError,
        _ => Code::VolumeCopyError,
    };
    StorageError::new(code, op, e.to_string()).caused_by(e)
}

/// A child that answered a copy with a checksum, or the reverse.
fn child_mixup(done: &ChildDone) -> CopyError {
    CopyError::Child {
        message: format!("the copier child answered another job: {done:?}"),
        errno: None,
    }
}

/// A checksum that failed has its own code: nothing was copied.
fn checksum_err(op: &'static str, e: CopyError) -> StorageError {
    let code = match &e {
        CopyError::Aborted => Code::TaskAborted,
        _ => Code::VolumeChecksumError,
    };
    StorageError::new(code, op, e.to_string()).caused_by(e)
}

/// oVirt's fence: a volume whose GEN is not the one the caller saw has
/// been written by someone else since (911, nothing changed).
fn check_generation(
    op: &'static str,
    vol: VolUuid,
    md: &crate::metadata::VolumeMetadata,
    expected: u32,
) -> StorageResult<()> {
    if md.generation == expected {
        return Ok(());
    }
    Err(StorageError::new(
        Code::GenerationMismatch,
        op,
        format!(
            "volume {vol} has generation {}, not {expected}",
            md.generation
        ),
    ))
}

fn image_format(f: VolumeFormat) -> ImageFormat {
    match f {
        VolumeFormat::Raw => ImageFormat::Raw,
        VolumeFormat::Cow => ImageFormat::Qcow2,
    }
}

impl Storage {
    /// Takes the source image shared and the destination image exclusive
    /// (and their domains shared), all at once in the lock order.
    fn lock_copy(&self, src: VolRef, dst: VolRef) -> StorageResult<Held> {
        let mut want = vec![
            (ResourceName::domain(src.sd), LockMode::Shared),
            (ResourceName::domain(dst.sd), LockMode::Shared),
            (ResourceName::image(dst.sd, dst.img), LockMode::Exclusive),
        ];
        if (src.sd, src.img) != (dst.sd, dst.img) {
            want.push((ResourceName::image(src.sd, src.img), LockMode::Shared));
        }
        self.locks()
            .acquire_all(want, self.config().lock_timeout)
            .map(Held::new)
    }

    /// A backup domain never receives a live move: the source must not be
    /// prepared for a running VM (9015).
    fn check_live_move(&self, src: VolRef, dst: VolRef, op: &'static str) -> StorageResult<()> {
        if self.is_prepared_for_vm(src.sd, src.img) && self.domain_info(dst.sd)?.metadata.backup {
            return Err(StorageError::new(
                Code::BackupDomainNoLiveMove,
                op,
                format!(
                    "image {} is in use by a VM and {} is a backup domain",
                    src.img, dst.sd
                ),
            ));
        }
        Ok(())
    }

    /// Copies `src` into the existing `dst` under the integrity rules
    /// above, holding `dst`'s volume lease for the whole copy as `lease`
    /// says (volume_leases.rs: 651 when another host or process holds it,
    /// and nothing changes): `SDM.copy_data` for `div` endpoints, and each
    /// volume of `Image.move`. Raw to raw uses the native copier (with a
    /// crash-resume journal in `journal_dir`); anything with qcow2 uses
    /// `qemu-img convert`.
    #[allow(clippy::too_many_arguments)]
    pub fn copy_volume(
        &self,
        src: VolRef,
        dst: VolRef,
        dst_generation: Option<u32>,
        verify: bool,
        journal_dir: Option<&Path>,
        ctl: &Control<'_>,
        lease: DestinationLease,
    ) -> StorageResult<CopyOutcome> {
        const OP: &str = "copy volume";
        self.check_live_move(src, dst, OP)?;
        let held = self.lock_copy(src, dst)?;
        let src_info = self.volume_info_unlocked(src, &held)?;
        let dst_info = self.volume_info_unlocked(dst, &held)?;
        // Under the image locks, as VDSM's guarded context takes them, and
        // before anything is changed; released when the copy ends
        // (returned, failed or aborted).
        let (_lease, dst_info) = self.under_lease(dst, &held, lease, dst_info, OP)?;
        if let Some(g) = dst_generation {
            check_generation(OP, dst.vol, &dst_info.metadata, g)?;
        }
        let new_gen = next_generation(dst_info.metadata.generation);
        // Both ends (and the chains qemu-img would open) must be where
        // their domains say, before anything changes.
        let src_data = self.volume_data(src)?;
        let dst_data = self.volume_data(dst)?;
        self.check_chain_data(src, &src_info, &held, OP)?;
        self.check_chain_data(dst, &dst_info, &held, OP)?;
        // ILLEGAL before the first byte, durably: a crash mid-copy leaves a
        // volume nobody mistakes for complete.
        self.update_volume_unlocked(dst, &held, |md| {
            md.legality = Legality::Illegal;
            Ok(())
        })?;
        let ends = Ends {
            src: &src_info,
            dst: &dst_info,
            src_data: &src_data,
            dst_data: &dst_data,
            dst_ref: dst,
            held: &held,
        };
        let outcome = self.copy_data_locked(&ends, verify, journal_dir, ctl, new_gen)?;
        self.update_volume_unlocked(dst, &held, move |md| {
            md.legality = Legality::Legal;
            md.generation = new_gen;
            Ok(())
        })?;
        tracing::info!(src = %src.vol, dst = %dst.vol, method = outcome.method,
            checksum = outcome.checksum.as_ref().map(|c| c.checksum.as_str()).unwrap_or("-"),
            "volume copied");
        Ok(outcome)
    }

    fn copy_data_locked(
        &self,
        ends: &Ends<'_>,
        verify: bool,
        journal_dir: Option<&Path>,
        ctl: &Control<'_>,
        new_gen: u32,
    ) -> StorageResult<CopyOutcome> {
        const OP: &str = "copy volume";
        let (src, dst, dst_ref) = (ends.src, ends.dst, ends.dst_ref);
        let (sf, df) = (src.metadata.format, dst.metadata.format);
        if dst.metadata.capacity < src.metadata.capacity {
            return Err(StorageError::new(
                Code::VolumeResizeValueError,
                OP,
                format!(
                    "destination {} holds {} bytes, the source {}",
                    dst_ref.vol, dst.metadata.capacity, src.metadata.capacity
                ),
            ));
        }
        if sf == VolumeFormat::Raw && df == VolumeFormat::Raw {
            return self.copy_native(ends, verify, journal_dir, ctl, new_gen);
        }
        self.copy_with_qemu_img(ends, verify, ctl, new_gen)
    }

    /// Raw to raw: depot's own O_DIRECT copier (copy/), with a checksum,
    /// optional verification and a resume journal.
    fn copy_native(
        &self,
        ends: &Ends<'_>,
        verify: bool,
        journal_dir: Option<&Path>,
        ctl: &Control<'_>,
        new_gen: u32,
    ) -> StorageResult<CopyOutcome> {
        const OP: &str = "copy volume";
        let (src, dst, dst_ref) = (ends.src, ends.dst, ends.dst_ref);
        let journal = journal_dir.map(|d| {
            Journal::new(
                d.join(format!("{}.copy-journal", dst_ref.vol)),
                u64::from(new_gen),
            )
        });
        // A file with nothing allocated reads as zeros: holes and zero
        // data need not be written. This is a fact about the file now,
        // so it holds with a journal too. On a resume the file has data
        // (true_size > 0), and the copier takes from the journal
        // whether the destination read zeros when the copy began;
        // that stays true of every byte the earlier runs did not
        // write, and the bytes they wrote are the source's
        // (docs/copy.md, "Journal and crash guarantees"). Only a
        // regular file: a device node has no blocks in stat, and an
        // LV (which reports its size) may hold anything. A file domain's
        // volume data is a regular file by its rule, checked under this
        // lock (check_chain_data) and again when the copier opens it: no
        // look at the file here (it would be a call on the mount from
        // this job's thread).
        let dst_is_zero = dst.true_size == 0 && matches!(ends.dst_data, VolumeData::File(_));
        let progress = |done: u64, total: u64| {
            let pct = done
                .saturating_mul(100)
                .checked_div(total)
                .unwrap_or(100)
                .min(100);
            (ctl.progress)(pct as u8);
        };
        // The volume, not its container: a block volume's LV is rounded
        // up to whole extents.
        let length = Some(src.metadata.capacity);
        let sparse = dst.metadata.alloc_type == depot_api::storage::AllocType::Sparse;
        let r = match self.copier_child() {
            Some(command) => {
                let job = ChildJob::Copy {
                    src: ends.src_data,
                    dst: ends.dst_data,
                    length,
                    dst_is_zero,
                    sparse,
                    checksum: true,
                    verify,
                    journal: journal.as_ref(),
                };
                match run_in_child(&command, &job, &progress, ctl.abort) {
                    Ok(ChildDone::Copied(r)) => r,
                    Ok(other) => return Err(copy_err(OP, child_mixup(&other))),
                    Err(e) => return Err(copy_err(OP, e)),
                }
            }
            None => {
                let opts = CopyOptions {
                    length,
                    dst_is_zero,
                    sparse,
                    checksum: true,
                    verify,
                    progress: &progress,
                    abort: ctl.abort,
                    journal: journal.as_ref(),
                    ..CopyOptions::default()
                };
                copy::copy_raw(ends.src_data, ends.dst_data, opts).map_err(|e| copy_err(OP, e))?
            }
        };
        Ok(CopyOutcome {
            checksum: r.checksum,
            verified: r.verified,
            method: "native",
            generation: new_gen,
            resumed_from: r.resumed_from,
        })
    }

    /// qcow2 on either side: qemu-img convert (and compare to verify).
    fn copy_with_qemu_img(
        &self,
        ends: &Ends<'_>,
        verify: bool,
        ctl: &Control<'_>,
        new_gen: u32,
    ) -> StorageResult<CopyOutcome> {
        const OP: &str = "copy volume";
        let (src, dst, dst_ref) = (ends.src, ends.dst, ends.dst_ref);
        let (sf, df) = (src.metadata.format, dst.metadata.format);
        // qcow2 on either side: qemu-img, as VDSM does. A destination layer
        // with a parent gets only what differs from it (-B).
        let backing =
            (!dst.metadata.parent.is_blank()).then(|| -> StorageResult<(PathBuf, ImageFormat)> {
                let parent = self.volume_info_unlocked(
                    VolRef {
                        vol: dst.metadata.parent,
                        ..dst_ref
                    },
                    ends.held,
                )?;
                Ok((
                    PathBuf::from(dst.metadata.parent.to_string()),
                    image_format(parent.metadata.format),
                ))
            });
        let backing = backing.transpose()?;
        let opts = ConvertOptions {
            // Only a raw file with nothing allocated is known to read as
            // zeros. A qcow2 may hold clusters of an earlier (crashed or
            // repeated) copy, so qemu-img must write the zeros too.
            target_is_zero: backing.is_none() && df == VolumeFormat::Raw && dst.true_size == 0,
            unordered_writes: false,
            backing,
        };
        let progress = |p: f64| (ctl.progress)(p.clamp(0.0, 100.0) as u8);
        self.qemu
            .convert(
                &src.path,
                image_format(sf),
                &dst.path,
                image_format(df),
                &opts,
                self.config().qemu_img_timeout,
                &progress,
                ctl.abort,
            )
            .map_err(|e| {
                let aborted = e.cmd_error().is_some_and(|c| c.is_aborted());
                StorageError::new(
                    if aborted {
                        Code::TaskAborted
                    } else {
                        Code::VolumeCopyError
                    },
                    OP,
                    e.to_string(),
                )
                .caused_by(e)
            })?;
        let verified = if verify && dst.metadata.parent.is_blank() && src.metadata.parent.is_blank()
        {
            self.qemu
                .compare(
                    &src.path,
                    image_format(sf),
                    &dst.path,
                    image_format(df),
                    self.config().qemu_img_timeout,
                )
                .map_err(|e| {
                    StorageError::new(Code::VolumeCopyError, OP, format!("verification: {e}"))
                        .caused_by(e)
                })?;
            true
        } else {
            false
        };
        Ok(CopyOutcome {
            checksum: None,
            verified,
            method: "qemu-img",
            generation: new_gen,
            resumed_from: 0,
        })
    }

    /// `Volume.getChecksum`: the blkhash of a raw volume's data.
    pub fn volume_checksum(&self, v: VolRef, ctl: &Control<'_>) -> StorageResult<BlkHash> {
        const OP: &str = "volume checksum";
        let info = self.volume_info(v.sd, v.img, v.vol)?;
        if info.metadata.format != VolumeFormat::Raw {
            return Err(StorageError::new(
                Code::IncorrectFormat,
                OP,
                format!(
                    "volume {} is COW; checksums are computed on RAW volumes",
                    v.vol
                ),
            ));
        }
        let held = self.lock_image(v.sd, v.img, false)?;
        let data = self.volume_data(v)?;
        self.check_data(v, Code::VolumeChecksumError, &held, OP)?;
        let progress = |done: u64, total: u64| {
            let pct = done
                .saturating_mul(100)
                .checked_div(total)
                .unwrap_or(100)
                .min(100);
            (ctl.progress)(pct as u8);
        };
        let size = info.metadata.capacity;
        if let Some(command) = self.copier_child() {
            let job = ChildJob::Checksum { data: &data, size };
            return match run_in_child(&command, &job, &progress, ctl.abort) {
                Ok(ChildDone::Checksum(h)) => Ok(h),
                Ok(other) => Err(checksum_err(OP, child_mixup(&other))),
                Err(e) => Err(checksum_err(OP, e)),
            };
        }
        let opts = copy::ChecksumOptions {
            progress: &progress,
            abort: ctl.abort,
            ..copy::ChecksumOptions::default()
        };
        copy::checksum_raw(&data, size, &opts).map_err(|e| checksum_err(OP, e))
    }

    /// How the copier runs in a child (copy::child): the helper program
    /// with its copier argument; `None` (no helper command configured)
    /// runs it on this thread.
    fn copier_child(&self) -> Option<HelperCommand> {
        self.config.fsproc_command.as_ref().map(child_command)
    }

    /// `SDM.update_volume`: oVirt's fence. Under the volume's lease (as
    /// `copy_volume`: 651 when another holds it), the volume's GEN must be
    /// `generation` (911); then legality, description and generation are
    /// set as given.
    pub fn update_volume_fenced(
        &self,
        v: VolRef,
        generation: u32,
        legality: Option<Legality>,
        description: Option<String>,
        new_generation: Option<u32>,
    ) -> StorageResult<()> {
        const OP: &str = "update volume";
        let held = self.lock_image(v.sd, v.img, true)?;
        let info = self.volume_info_unlocked(v, &held)?;
        let (_lease, info) = self.under_lease(v, &held, DestinationLease::Hold, info, OP)?;
        check_generation(OP, v.vol, &info.metadata, generation)?;
        self.update_volume_unlocked(v, &held, move |md| {
            if let Some(l) = legality {
                md.legality = l;
            }
            if let Some(d) = description {
                md.description = d;
            }
            if let Some(g) = new_generation {
                md.generation = g;
            }
            Ok(())
        })
        .map(|_| ())
    }

    /// `Image.move`: clones the chain of `img` from `src_sd` onto `dst_sd`
    /// (same ids, formats, sizes; ILLEGAL), copies each volume base to
    /// leaf, makes them LEGAL, and for MOVE deletes the source after that.
    /// An existing destination image is refused unless `force`, which
    /// deletes it first.
    #[allow(clippy::too_many_arguments)]
    pub fn move_image(
        &self,
        src_sd: SdUuid,
        dst_sd: SdUuid,
        img: ImgUuid,
        delete_source: bool,
        post_zero: bool,
        force: bool,
        journal_dir: Option<&Path>,
        ctl: &Control<'_>,
    ) -> StorageResult<Vec<CopyOutcome>> {
        const OP: &str = "move image";
        if src_sd == dst_sd {
            return Err(StorageError::new(
                Code::InvalidParameterException,
                OP,
                "source and destination are the same domain",
            ));
        }
        // VDSM's SPM task: both domains' pools must be this host's to
        // change (the router checks before it starts the job, too).
        self.require_spm_of(src_sd, OP)?;
        self.require_spm_of(dst_sd, OP)?;
        let leaf = self.leaf_of(src_sd, img)?;
        self.check_live_move(
            VolRef {
                sd: src_sd,
                img,
                vol: leaf,
            },
            VolRef {
                sd: dst_sd,
                img,
                vol: leaf,
            },
            OP,
        )?;
        let chain = {
            let domain = self.locate(src_sd)?;
            let held = self.lock_image(src_sd, img, false)?;
            self.with_volumes(&domain, &held, move |v| v.chain(img, leaf, false))?
        };
        if self.list_images(dst_sd)?.contains(&img) {
            if !force {
                return Err(StorageError::new(
                    Code::VolumeAlreadyExists,
                    OP,
                    format!("image {img} exists on {dst_sd}; pass force to replace it"),
                ));
            }
            self.delete_image(dst_sd, img, false, true)?;
        }
        // Base to leaf: create a volume (ILLEGAL), copy into it (LEGAL),
        // then its child, so that every child is created over a LEGAL
        // parent and a crash leaves at most the last volume ILLEGAL.
        let n = chain.len().max(1);
        let mut outcomes = Vec::new();
        for (i, v) in chain.iter().enumerate() {
            let md = &v.metadata;
            let req = CreateVolume {
                capacity: md.capacity,
                format: md.format,
                alloc: md.alloc_type,
                disk_type: md.disk_type,
                description: md.description.clone(),
                parent: md.parent,
                legal: false,
                sequence: md.sequence,
            };
            self.create_volume(dst_sd, img, v.volume, req)?;
            let part = |p: u8| (ctl.progress)(((i * 100 + usize::from(p)) / n) as u8);
            let sub = Control {
                progress: &part,
                abort: ctl.abort,
            };
            let src = VolRef {
                sd: src_sd,
                img,
                vol: v.volume,
            };
            let dst = VolRef {
                sd: dst_sd,
                img,
                vol: v.volume,
            };
            let lease = DestinationLease::Skip;
            let o = self.copy_volume(src, dst, Some(0), true, journal_dir, &sub, lease)?;
            outcomes.push(o);
        }
        if delete_source {
            // Only now: every destination volume is LEGAL and verified.
            if let Err(e) = self.delete_image(src_sd, img, post_zero, true) {
                // The data is safe on the destination; say so loudly.
                tracing::warn!(img = %img, sd = %src_sd, error = %e, "moved, but the source could not be deleted");
            }
        }
        (ctl.progress)(100);
        Ok(outcomes)
    }

    /// The leaf of an image: the volume no other volume names as parent.
    fn leaf_of(&self, sd: SdUuid, img: ImgUuid) -> StorageResult<VolUuid> {
        let vols = self.list_volumes(sd, Some(img))?;
        let mut leaves = Vec::new();
        for v in &vols {
            if self.volume_info(sd, img, *v)?.children.is_empty() {
                leaves.push(*v);
            }
        }
        match leaves.as_slice() {
            [one] => Ok(*one),
            [] => Err(StorageError::new(
                Code::ImageDoesNotExistInSD,
                "move image",
                format!("image {img} has no volumes on {sd}"),
            )),
            _ => Err(StorageError::new(
                Code::VolumeCopyError,
                "move image",
                format!("image {img} has {} leaves", leaves.len()),
            )),
        }
    }

    /// The data of `v`, with the rule for opening it (crate::volume_data).
    pub(crate) fn volume_data(&self, v: VolRef) -> StorageResult<VolumeData> {
        Ok(self.locate(v.sd)?.volume_data(v.img, v.vol))
    }

    /// Checks the data of `v` and of every parent it has (what qemu-img
    /// opens through backing files) against their rule: 254 if one is not
    /// where its domain says. The caller holds the image lock.
    fn check_chain_data(
        &self,
        v: VolRef,
        info: &VolumeInfo,
        held: &Held,
        op: &'static str,
    ) -> StorageResult<()> {
        self.check_data(v, Code::VolumeCopyError, held, op)?;
        let mut parent = info.metadata.parent;
        let mut seen = std::collections::HashSet::new();
        while !parent.is_blank() && seen.insert(parent) {
            let p = VolRef { vol: parent, ..v };
            // Its info first: on a block domain that activates the LV and
            // makes the link the check looks at.
            let next = self.volume_info_unlocked(p, held)?.metadata.parent;
            self.check_data(p, Code::VolumeCopyError, held, op)?;
            parent = next;
        }
        Ok(())
    }

    /// Checks the rule of `v`'s data now ([`VolumeData::check`]): 254 when
    /// it is broken, the OS's error (with `code`) when the data cannot be
    /// looked at. On a file domain the look is a call in the mount's
    /// helpers, whose confinement is the rule (a regular file reached
    /// beneath the mount without a symlink, on its file system): a mount
    /// that does not answer is 2001 naming it. A block domain's link and LV
    /// are checked on this thread (on no mount). The caller holds the
    /// locks that matter.
    pub(crate) fn check_data(
        &self,
        v: VolRef,
        code: Code,
        _held: &Held,
        op: &'static str,
    ) -> StorageResult<()> {
        let domain = self.locate(v.sd)?;
        let data = domain.volume_data(v.img, v.vol);
        match &domain {
            Domain::File(d) => {
                let path = depot_os::DataPath::path(&data);
                let st = d.fs.stat(path).map_err(|e| open_error(code, op, path, e))?;
                if st.kind != FileKind::File {
                    let refused = depot_os::Refused {
                        path: path.to_owned(),
                        reason: format!("{} is {:?}, not a regular file", path.display(), st.kind),
                    };
                    return Err(open_error(code, op, path, std::io::Error::other(refused)));
                }
                Ok(())
            }
            Domain::Block(_) => data.check(code, op),
        }
    }

    /// Takes `v`'s volume lease unless `lease` is `Skip`
    /// (volume_leases.rs; `None` where there is none to take) and reads `v`
    /// again under it: until then another host may have written it. `info`
    /// is what the caller read before (so that a missing volume is 201, not
    /// a lease that cannot be found).
    fn under_lease(
        &self,
        v: VolRef,
        held: &Held,
        lease: DestinationLease,
        info: VolumeInfo,
        op: &'static str,
    ) -> StorageResult<(Option<HeldVolumeLease>, VolumeInfo)> {
        if lease == DestinationLease::Skip {
            return Ok((None, info));
        }
        match self.take_volume_lease(v, op)? {
            Some(lease) => Ok((Some(lease), self.volume_info_unlocked(v, held)?)),
            None => Ok((None, info)),
        }
    }

    /// Volume info with the caller already holding the image lock.
    fn volume_info_unlocked(&self, v: VolRef, held: &Held) -> StorageResult<VolumeInfo> {
        let domain = self.locate(v.sd)?;
        self.with_volumes(&domain, held, move |s| s.info(v.img, v.vol))
    }

    fn update_volume_unlocked(
        &self,
        v: VolRef,
        held: &Held,
        change: impl FnOnce(&mut crate::metadata::volume::VolumeMetadata) -> StorageResult<()>
            + Send
            + 'static,
    ) -> StorageResult<crate::metadata::volume::VolumeMetadata> {
        let domain = self.locate(v.sd)?;
        self.with_volumes(&domain, held, move |s| {
            s.update(v.img, v.vol, Box::new(change))
        })
    }
}
