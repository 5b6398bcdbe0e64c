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
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use depot_api::storage::{ImgUuid, Legality, VolUuid};
use depot_api::Code;

use crate::error::{StorageError, StorageResult};
use crate::file::volumes::{
    canonical_vol, discard, exists, fsync_dir, load, parents, remove_dir_if_empty, volume_info,
    wipe_file, FileVolumes,
};
use crate::layout::{DomainPaths, CREATING_SUFFIX, REMOVE_ME};
use crate::volume_data::check_image_dir;
use crate::volume_store::VolumeInfo;
use depot_os::Beneath;

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
/// A domain without `images/` is ImagePathError (254).
pub fn images(paths: &DomainPaths) -> StorageResult<Vec<ImgUuid>> {
    const OP: &str = "list images";
    let dir = paths.images();
    let mut out = Vec::new();
    let entries =
        fs::read_dir(&dir).map_err(|e| StorageError::io(Code::ImagePathError, OP, &dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io(Code::ImagePathError, OP, &dir, e))?;
        let Some(img) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<ImgUuid>().ok().filter(|i| i.to_string() == n))
        else {
            continue;
        };
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(img);
        }
    }
    out.sort();
    Ok(out)
}

impl FileVolumes<'_> {
    /// See [`images`].
    pub(super) fn list_images(&self) -> StorageResult<Vec<ImgUuid>> {
        images(self.paths)
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
        let as_256 =
            |e: StorageError| err(Code::ImageDeleteError, format!("{img}: {e}")).with_cause_of(&e);
        let dir = self.paths.image(img);
        let images = self.paths.images();
        // Renamed and purged below: it must be the domain's own directory,
        // not a symlink to one elsewhere.
        check_image_dir(self.paths, img, OP)?;
        let leftovers: Vec<(PathBuf, bool)> = [false, true]
            .into_iter()
            .map(|zero| (removed_dir(self.paths, img, zero), zero))
            .filter(|(p, _)| exists(p).unwrap_or(false))
            .collect();
        let present =
            exists(&dir).map_err(|e| StorageError::io(Code::ImageDeleteError, OP, &dir, e))?;
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
            purge_dir(old, *zero || post_zero, &|| self.beat()).map_err(as_256)?;
        }
        if !present {
            return Ok(());
        }
        let target = removed_dir(self.paths, img, post_zero);
        fs::rename(&dir, &target)
            .map_err(|e| StorageError::io(Code::ImageDeleteError, OP, &dir, e))?;
        fsync_dir(&images, Code::ImageDeleteError, OP)?;
        tracing::info!(%img, to = %target.display(), "image renamed for deletion");
        purge_dir(&target, post_zero, &|| self.beat()).map_err(as_256)?;
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
        let dir = self.paths.image(img);
        if !exists(&dir).map_err(|e| StorageError::io(Code::ImagePathError, OP, &dir, e))? {
            return Err(err(
                Code::ImageDoesNotExistInSD,
                format!("image {img} of domain {}", self.sd),
            ));
        }
        let parents = parents(self.paths, img, OP)?;
        let mut chain = Vec::new();
        let mut seen = HashSet::new();
        let mut cur = leaf;
        let mut child: Option<VolUuid> = None;
        loop {
            let md = load(self.paths, img, cur, OP).map_err(|e| match child {
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
            chain.push(volume_info(self.paths, img, cur, md, kids, OP)?);
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
/// links), with `beat` as the wipe goes. Repeatable. A symlink in the
/// directory's place is removed, never followed: nothing outside the
/// domain is wiped or removed.
fn purge_dir(dir: &Path, wipe: bool, beat: &dyn Fn()) -> StorageResult<()> {
    const OP: &str = "purge deleted image";
    let io = |p: &Path, e: std::io::Error| StorageError::io(Code::ImageDeleteError, OP, p, e);
    match fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => {
            tracing::warn!(dir = %dir.display(), "removing a symlink left where a deleted image was, without following it");
            return match fs::remove_file(dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io(dir, e)),
            };
        }
        _ => {}
    }
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io(dir, e))?;
        let path = entry.path();
        let m = fs::symlink_metadata(&path).map_err(|e| io(&path, e))?;
        if m.is_dir() {
            fs::remove_dir_all(&path).map_err(|e| io(&path, e))?;
            continue;
        }
        let is_data = entry.file_name().to_str().and_then(canonical_vol).is_some();
        if wipe && is_data && m.is_file() && m.nlink() == 1 {
            let data = Beneath::new(dir, entry.file_name());
            let n = wipe_file(&data, beat).map_err(|e| {
                StorageError::new(Code::ImageDeleteError, OP, e.to_string()).caused_by(e)
            })?;
            tracing::info!(path = %path.display(), bytes = n, "volume data wiped");
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path, e)),
        }
    }
    fsync_dir(dir, Code::ImageDeleteError, OP)?;
    match fs::remove_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io(dir, e)),
    }
    if let Some(parent) = dir.parent() {
        fsync_dir(parent, Code::ImageDeleteError, OP)?;
    }
    Ok(())
}

/// Cleans up what crashes left in a domain: volumes with a `.creating`
/// marker (their parent goes back to LEAF if no other volume names it; an
/// image directory left empty is removed) and `_remove_me_*` directories
/// (data in `_remove_me_ZERO_*` ones is wiped first). Every cleanup can be
/// repeated; one that fails is reported in [`Recovery::failed`] and tried
/// again on the next run. Only a domain whose `images/` cannot be listed
/// is an error (254); a domain without `images/` has nothing to recover.
///
/// The daemon calls it when it first sees a domain, holding no volume
/// locks of it yet; nothing else may work on the domain meanwhile.
pub fn recover(paths: &DomainPaths) -> StorageResult<Recovery> {
    recover_with(paths, &|| {})
}

/// [`recover`], calling `beat` as wipes progress (long work, see
/// docs/storage.md).
pub fn recover_with(paths: &DomainPaths, beat: &dyn Fn()) -> StorageResult<Recovery> {
    const OP: &str = "recover domain";
    let dir = paths.images();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Recovery::default()),
        Err(e) => return Err(StorageError::io(Code::ImagePathError, OP, &dir, e)),
    };
    let mut report = Recovery::default();
    let mut names: Vec<(String, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io(Code::ImagePathError, OP, &dir, e))?;
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if let Some(name) = entry.file_name().to_str() {
            names.push((name.to_string(), entry.path()));
        }
    }
    names.sort();
    for (name, path) in names {
        if name.starts_with(REMOVE_ME) {
            let what = Recovered::RemovedImage(name.clone());
            match purge_dir(&path, name.starts_with(REMOVE_ME_ZERO), beat) {
                Ok(()) => report.cleaned.push(what),
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
        let markers = match half_created(paths, img) {
            Ok(m) => m,
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
            match discard(paths, img, vol) {
                Ok(()) => report.cleaned.push(what),
                Err(e) => report.failed.push((what, e)),
            }
        }
        remove_dir_if_empty(&paths.image(img));
    }
    if !report.is_empty() {
        tracing::info!(domain = %paths.root.display(), "recovery: {report}");
    }
    Ok(report)
}

/// Volumes of the image with a `.creating` marker, sorted.
fn half_created(paths: &DomainPaths, img: ImgUuid) -> StorageResult<Vec<VolUuid>> {
    const OP: &str = "recover domain";
    let dir = paths.image(img);
    let mut out = Vec::new();
    let entries =
        fs::read_dir(&dir).map_err(|e| StorageError::io(Code::ImagePathError, OP, &dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io(Code::ImagePathError, OP, &dir, e))?;
        if let Some(vol) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(CREATING_SUFFIX))
            .and_then(canonical_vol)
        {
            out.push(vol);
        }
    }
    out.sort();
    Ok(out)
}
