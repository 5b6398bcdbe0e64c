//! Images of a file domain: the directories under `images/`, each holding
//! the volumes of one disk. Listing, deletion, the chain of a leaf, and the
//! recovery of what a crash left half done (see [`crate::file::volumes`] for the
//! creation sequence it undoes).
//!
//! # Image deletion
//!
//! As VDSM (`fileSD.py` `deleteImage`/`purgeImage`), the image directory is
//! first renamed `_remove_me_<img>`: one atomic step after which the image
//! no longer exists for anyone, whatever happens to the removal of its
//! files. depot names it `_remove_me_ZERO_<img>` when the data must be
//! wiped (VDSM's name for images being zeroed), so that a deletion
//! interrupted by a crash is finished by [`recover`] with the wipe it
//! promised.

use std::collections::HashSet;
use std::fmt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use depot_api::storage::{ImgUuid, Legality, VolUuid};
use depot_api::Code;
use depot_os::fsproc::FileKind;

use crate::error::{StorageError, StorageResult};
use crate::file::volumes::{
    as_code, canonical_vol, check_image_dir, discard, exists, fsync_dir, load, parents,
    remove_dir_if_empty, volume_info, wipe_file, FileVolumes, ImageEntries,
};
use crate::layout::{DomainPaths, REMOVE_ME};
use crate::mount_fs::MountFs;
use crate::volume_store::VolumeInfo;

/// The prefix of an image directory being deleted with its data wiped.
pub const REMOVE_ME_ZERO: &str = "_remove_me_ZERO_";

/// One thing [`recover`] cleaned up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// A volume whose creation had not finished.
    HalfCreatedVolume { image: ImgUuid, volume: VolUuid },
    /// A `_remove_me_*` directory left by an interrupted image deletion
    /// (its name).
    RemovedImage(String),
}

impl fmt::Display for Recovered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Recovered::HalfCreatedVolume { image, volume } => {
                write!(f, "half-created volume {image}/{volume}")
            }
            Recovered::RemovedImage(name) => write!(f, "deleted image directory {name}"),
        }
    }
}

/// What [`recover`] did: what it cleaned, and what it could not (left for
/// the next run).
#[derive(Debug, Default)]
pub struct Recovery {
    pub cleaned: Vec<Recovered>,
    pub failed: Vec<(Recovered, StorageError)>,
}

impl Recovery {
    pub fn is_empty(&self) -> bool {
        self.cleaned.is_empty() && self.failed.is_empty()
    }
}

impl fmt::Display for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("nothing to recover");
        }
        let cleaned: Vec<String> = self.cleaned.iter().map(ToString::to_string).collect();
        write!(f, "removed {}: [{}]", cleaned.len(), cleaned.join(", "))?;
        if !self.failed.is_empty() {
            let failed: Vec<String> = self
                .failed
                .iter()
                .map(|(what, e)| format!("{what}: {e}"))
                .collect();
            write!(f, "; failed {}: [{}]", failed.len(), failed.join(", "))?;
        }
        Ok(())
    }
}

/// `_remove_me_<img>`, or `_remove_me_ZERO_<img>` when the data is wiped.
fn removed_dir(paths: &DomainPaths, img: ImgUuid, zero: bool) -> PathBuf {
    let prefix = if zero { REMOVE_ME_ZERO } else { REMOVE_ME };
    paths.images().join(format!("{prefix}{img}"))
}

/// The images of the domain: directories under `images/` named by a
/// canonical UUID (so `_remove_me_*` and anything else is skipped), sorted.
/// A domain without `images/` is ImagePathError (254); a mount in trouble
/// 2001.
pub fn images(fs: &MountFs, paths: &DomainPaths) -> StorageResult<Vec<ImgUuid>> {
    const OP: &str = "list images";
    let dir = paths.images();
    let entries = fs
        .listdir(&dir)
        .map_err(|e| StorageError::io(Code::ImagePathError, OP, &dir, e))?;
    let mut out: Vec<ImgUuid> = entries
        .into_iter()
        .filter(|e| e.utf8 && e.kind == FileKind::Dir)
        .filter_map(|e| {
            e.name
                .parse::<ImgUuid>()
                .ok()
                .filter(|i| i.to_string() == e.name)
        })
        .collect();
    out.sort();
    Ok(out)
}

impl FileVolumes<'_> {
    /// See [`images`].
    pub(super) fn list_images(&self) -> StorageResult<Vec<ImgUuid>> {
        images(self.fs, self.paths)
    }

    /// Deletes an image and all its volumes: renames the directory to
    /// `_remove_me_<img>` (`_remove_me_ZERO_<img>` with `post_zero`), wipes
    /// the data files if asked (not those with other hard links: a
    /// template linked into other images), removes every file, then the
    /// directory. A missing image is ImageDoesNotExistInSD (268), unless a
    /// deletion of it was interrupted: then that one is finished. Failures
    /// are ImageDeleteError (256); the renamed directory is then finished
    /// by [`recover`].
    pub(super) fn remove_image(&self, img: ImgUuid, post_zero: bool) -> StorageResult<()> {
        const OP: &str = "delete image";
        let err = |code, detail: String| StorageError::new(code, OP, detail);
        let as_256 = |e: StorageError| {
            if e.has_mount_trouble_code() {
                return e;
            }
            err(Code::ImageDeleteError, format!("{img}: {e}")).with_cause_of(&e)
        };
        let fs = self.fs;
        let dir = self.paths.image(img);
        let images = self.paths.images();
        // Renamed and purged below: it must be the domain's own directory,
        // not a symlink to one elsewhere.
        check_image_dir(fs, self.paths, img, OP)?;
        let mut leftovers: Vec<(PathBuf, bool)> = Vec::new();
        for zero in [false, true] {
            let p = removed_dir(self.paths, img, zero);
            if exists(fs, &p).map_err(|e| StorageError::io(Code::ImageDeleteError, OP, &p, e))? {
                leftovers.push((p, zero));
            }
        }
        let present =
            exists(fs, &dir).map_err(|e| StorageError::io(Code::ImageDeleteError, OP, &dir, e))?;
        if !present && leftovers.is_empty() {
            return Err(err(
                Code::ImageDoesNotExistInSD,
                format!("image {img} of domain {}", self.sd),
            ));
        }
        // An earlier deletion that did not finish: finish it first, so the
        // rename below has a free target.
        for (old, zero) in &leftovers {
            tracing::info!(%img, dir = %old.display(), "finishing an interrupted image deletion");
            purge_dir(fs, old, *zero || post_zero).map_err(as_256)?;
        }
        if !present {
            return Ok(());
        }
        let target = removed_dir(self.paths, img, post_zero);
        fs.rename(&dir, &target)
            .map_err(|e| StorageError::io(Code::ImageDeleteError, OP, &dir, e))?;
        fsync_dir(fs, &images, Code::ImageDeleteError, OP)?;
        tracing::info!(%img, to = %target.display(), "image renamed for deletion");
        purge_dir(fs, &target, post_zero).map_err(as_256)?;
        tracing::info!(%img, post_zero, "image deleted");
        Ok(())
    }

    /// The chain of `leaf`, base first, each with [`VolumeInfo`], for
    /// preparing it. A missing image is 268, a missing volume or parent
    /// 201, a loop in the PUUIDs 753, and an ILLEGAL volume
    /// PrepareIllegalVolumeError (227) unless `allow_illegal`.
    pub(super) fn chain_of(
        &self,
        img: ImgUuid,
        leaf: VolUuid,
        allow_illegal: bool,
    ) -> StorageResult<Vec<VolumeInfo>> {
        const OP: &str = "volume chain";
        let err = |code, detail: String| StorageError::new(code, OP, detail);
        let fs = self.fs;
        let dir = self.paths.image(img);
        if !exists(fs, &dir).map_err(|e| StorageError::io(Code::ImagePathError, OP, &dir, e))? {
            return Err(err(
                Code::ImageDoesNotExistInSD,
                format!("image {img} of domain {}", self.sd),
            ));
        }
        let parents = parents(fs, self.paths, img, OP)?;
        let mut chain = Vec::new();
        let mut seen = HashSet::new();
        let mut cur = leaf;
        let mut child: Option<VolUuid> = None;
        loop {
            let md = load(fs, self.paths, img, cur, OP).map_err(|e| match child {
                Some(c) => {
                    StorageError::new(e.code, OP, format!("parent {cur} of {c}: {}", e.detail))
                        .with_cause_of(&e)
                }
                None => e,
            })?;
            if md.legality == Legality::Illegal && !allow_illegal {
                return Err(err(
                    Code::PrepareIllegalVolumeError,
                    format!("volume {cur} of image {img} is ILLEGAL"),
                ));
            }
            seen.insert(cur);
            let parent = md.parent;
            let mut kids: Vec<VolUuid> = parents
                .iter()
                .filter(|&(c, p)| *p == cur && *c != cur)
                .map(|(c, _)| *c)
                .collect();
            kids.sort();
            chain.push(volume_info(fs, self.paths, img, cur, md, kids, OP)?);
            if parent.is_blank() {
                break;
            }
            if seen.contains(&parent) {
                return Err(err(
                    Code::MetaDataValidationError,
                    format!("image {img}: the chain of {leaf} loops at {parent}"),
                ));
            }
            child = Some(cur);
            cur = parent;
        }
        chain.reverse();
        Ok(chain)
    }
}

/// Removes a directory left for deletion and everything in it, wiping
/// volume data files first when `wipe` (except files with other hard
/// links). Repeatable. A symlink in the directory's place is removed,
/// never followed: nothing outside the domain is wiped or removed (the
/// helpers' rmtree removes links, never follows them, and stops at another
/// file system).
fn purge_dir(fs: &MountFs, dir: &Path, wipe: bool) -> StorageResult<()> {
    const OP: &str = "purge deleted image";
    let io = |p: &Path, e: std::io::Error| StorageError::io(Code::ImageDeleteError, OP, p, e);
    match fs.lstat(dir) {
        Ok(m) if m.kind == FileKind::Symlink => {
            tracing::warn!(dir = %dir.display(), "removing a symlink left where a deleted image was, without following it");
            return match fs.unlink(dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io(dir, e)),
            };
        }
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(dir, e)),
    }
    if wipe {
        let entries = match fs.listdir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(dir, e)),
        };
        for entry in entries {
            let is_data = entry.utf8 && canonical_vol(&entry.name).is_some();
            if !is_data || entry.kind != FileKind::File {
                continue;
            }
            let path = dir.join(&entry.name);
            let m = match fs.lstat(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&path, e)),
            };
            if m.kind == FileKind::File && m.nlink == 1 {
                let n = wipe_file(fs, &path).map_err(|e| as_code(e, Code::ImageDeleteError, OP))?;
                tracing::info!(path = %path.display(), bytes = n, "volume data wiped");
            }
        }
    }
    match fs.rmtree(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io(dir, e)),
    }
    if let Some(parent) = dir.parent() {
        fsync_dir(fs, parent, Code::ImageDeleteError, OP)?;
    }
    Ok(())
}

/// Cleans up what crashes left in a domain: volumes with a `.creating`
/// marker (their parent goes back to LEAF if no other volume names it; an
/// image directory left empty is removed) and `_remove_me_*` directories
/// (data in `_remove_me_ZERO_*` ones is wiped first). Every cleanup can be
/// repeated; one that fails is reported in [`Recovery::failed`] and tried
/// again on the next run. Only a domain whose `images/` cannot be listed
/// is an error (254, or 2001 for a mount in trouble); a domain without
/// `images/` has nothing to recover. Every call goes through the mount's
/// helpers, each with their deadline (a wipe is one call per chunk).
///
/// The daemon calls it when it first sees a domain, holding no volume
/// locks of it yet; nothing else may work on the domain meanwhile.
pub fn recover(fs: &MountFs, paths: &DomainPaths) -> StorageResult<Recovery> {
    const OP: &str = "recover domain";
    let dir = paths.images();
    let entries = match fs.listdir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Recovery::default()),
        Err(e) => return Err(StorageError::io(Code::ImagePathError, OP, &dir, e)),
    };
    let mut report = Recovery::default();
    let mut names: Vec<String> = entries
        .into_iter()
        .filter(|e| e.utf8 && e.kind == FileKind::Dir)
        .map(|e| e.name)
        .collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        if name.starts_with(REMOVE_ME) {
            let what = Recovered::RemovedImage(name.clone());
            match purge_dir(fs, &path, name.starts_with(REMOVE_ME_ZERO)) {
                Ok(()) => report.cleaned.push(what),
                Err(e) if e.has_mount_trouble_code() => return Err(stopped(report, e)),
                Err(e) => report.failed.push((what, e)),
            }
            continue;
        }
        let Some(img) = name
            .parse::<ImgUuid>()
            .ok()
            .filter(|i| i.to_string() == name)
        else {
            continue;
        };
        let markers = match ImageEntries::scan(fs, paths, img, OP) {
            Ok(entries) => entries.creating(),
            Err(e) if e.has_mount_trouble_code() => return Err(stopped(report, e)),
            Err(e) => {
                tracing::warn!(%img, error = %e, "cannot look for half-created volumes");
                continue;
            }
        };
        if markers.is_empty() {
            continue;
        }
        for vol in markers {
            let what = Recovered::HalfCreatedVolume {
                image: img,
                volume: vol,
            };
            match discard(fs, paths, img, vol) {
                Ok(()) => report.cleaned.push(what),
                Err(e) if e.has_mount_trouble_code() => return Err(stopped(report, e)),
                Err(e) => report.failed.push((what, e)),
            }
        }
        remove_dir_if_empty(fs, &paths.image(img));
    }
    if !report.is_empty() {
        tracing::info!(domain = %paths.root.display(), "recovery: {report}");
    }
    Ok(report)
}

/// A recovery stopped by a mount in trouble: what it did is logged, and
/// the error is the answer (the next run goes on where this one stopped).
fn stopped(report: Recovery, e: StorageError) -> StorageError {
    tracing::warn!(error = %e, "recovery stopped, the mount is in trouble; {report}");
    e
}
