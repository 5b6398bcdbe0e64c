//! File storage domains (NFS, POSIX, GlusterFS, LOCALFS): a directory per
//! domain in a mount, a directory per image, a file per volume with its
//! `.meta` and `.lease` beside it (docs/formats.md). Block domains, on LVM,
//! are in block/; both are seen through one contract (domain.rs).
//!
//! Everything here is blocking file-system work on one domain's directory,
//! every call made through the domain's `MountFs` (the mount's helper
//! processes, each call with a deadline), so the caller runs it on its own
//! thread and holds the locks.

pub mod domain;
pub mod images;
pub mod iso_files;
pub mod volumes;
