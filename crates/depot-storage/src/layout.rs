//! Where things are on a file domain, by VDSM's layout (docs/formats.md):
//!
//! ```text
//! <repository>/mnt/<mount>/<sdUUID>/dom_md/{metadata,ids,leases,inbox,outbox,xleases}
//! <repository>/mnt/<mount>/<sdUUID>/images/<imgUUID>/<volUUID>{,.meta,.lease}
//! <repository>/<spUUID>/<sdUUID> -> the domain directory (run link)
//! ```
//!
//! Paths are built only from typed ids, never from strings a client sent,
//! so no id can point outside the domain.

use std::path::{Path, PathBuf};

use depot_api::storage::{ImgUuid, SdUuid, SpUuid, VolUuid};

pub const DOM_MD: &str = "dom_md";
pub const IMAGES: &str = "images";
pub const METADATA: &str = "metadata";
pub const MNT: &str = "mnt";
pub const GLUSTER_DIR: &str = "glusterSD";
pub const BLOCK_DIR: &str = "blockSD";
/// VDSM renames an image directory with this prefix before deleting it, so
/// a crash mid-delete leaves a name that is recognisably garbage.
pub const REMOVE_ME: &str = "_remove_me_";
/// depot creates a domain under this name and renames it into place when it
/// is complete; a leftover one is garbage from a crash.
pub const CREATING_PREFIX: &str = ".creating-";
/// Marks a volume whose creation has not finished (docs/formats.md).
pub const CREATING_SUFFIX: &str = ".creating";
pub const META_SUFFIX: &str = ".meta";
pub const LEASE_SUFFIX: &str = ".lease";
/// The image that holds an ISO domain's files.
pub const ISO_IMAGE: &str = "11111111-1111-1111-1111-111111111111";

/// A domain's directory and the paths inside it. For a block domain,
/// `root` is its link directory `<repository>/mnt/blockSD/<sd>`, where
/// `dom_md` links to `/dev/<vg>` and prepared volumes link to their LVs
/// (block/). Which kind a domain is, is the domain contract's business
/// (domain.rs), not its paths'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainPaths {
    pub root: PathBuf,
}

impl DomainPaths {
    pub fn new(root: PathBuf) -> Self {
        DomainPaths { root }
    }

    pub fn dom_md(&self) -> PathBuf {
        self.root.join(DOM_MD)
    }

    pub fn metadata(&self) -> PathBuf {
        self.root.join(DOM_MD).join(METADATA)
    }

    pub fn images(&self) -> PathBuf {
        self.root.join(IMAGES)
    }

    pub fn image(&self, img: ImgUuid) -> PathBuf {
        self.images().join(img.to_string())
    }

    pub fn volume(&self, img: ImgUuid, vol: VolUuid) -> PathBuf {
        self.image(img).join(vol.to_string())
    }

    pub fn volume_meta(&self, img: ImgUuid, vol: VolUuid) -> PathBuf {
        self.image(img).join(format!("{vol}{META_SUFFIX}"))
    }

    pub fn volume_lease(&self, img: ImgUuid, vol: VolUuid) -> PathBuf {
        self.image(img).join(format!("{vol}{LEASE_SUFFIX}"))
    }

    pub fn volume_creating(&self, img: ImgUuid, vol: VolUuid) -> PathBuf {
        self.image(img).join(format!("{vol}{CREATING_SUFFIX}"))
    }

    /// The mount point (or link) the domain lives in.
    pub fn mount_dir(&self) -> &Path {
        self.root.parent().unwrap_or(&self.root)
    }
}

/// The run link of a domain in a pool: `<repository>/<sp>/<sd>`.
pub fn pool_link(repository: &Path, sp: SpUuid, sd: SdUuid) -> PathBuf {
    repository.join(sp.to_string()).join(sd.to_string())
}

/// The directories under `<repository>/mnt` that may hold domains: every
/// mount point (or local link), and every gluster mount point.
pub fn mount_dirs(repository: &Path) -> Vec<PathBuf> {
    mount_dir_entries(repository)
        .into_iter()
        .map(|(dir, _)| dir)
        .collect()
}

/// [`mount_dirs`], each with whether it is a symbolic link (a LOCALFS
/// domain's local directory) rather than a mount point. Only
/// `<repository>/mnt` is read: the link flag comes from its entries
/// (`d_type`), never from a `stat` of the mount itself, which could hang.
pub fn mount_dir_entries(repository: &Path) -> Vec<(PathBuf, bool)> {
    let mnt = repository.join(MNT);
    let mut dirs = Vec::new();
    for base in [mnt.clone(), mnt.join(GLUSTER_DIR)] {
        let Ok(entries) = std::fs::read_dir(&base) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            // blockSD holds block domains' run links, not mounts.
            if name == GLUSTER_DIR || name == BLOCK_DIR {
                continue;
            }
            let link = e.file_type().is_ok_and(|t| t.is_symlink());
            dirs.push((e.path(), link));
        }
    }
    dirs.sort();
    dirs
}
