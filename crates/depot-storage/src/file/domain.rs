//! File storage domains: create, read and write the sealed metadata,
//! validate the layout, format (remove), and space figures.
//!
//! These are blocking functions over a directory; the caller runs them on
//! the mount's I/O worker with a timeout and holds the domain lock.
//!
//! Creation is crash-safe: the domain is built under `.creating-<sdUUID>` in
//! the mount and renamed to `<sdUUID>` only when complete, so a crash leaves
//! either no domain or a dot-directory that [`recover_mount`] removes (VDSM
//! globs `*`, which skips dot-names, so it never sees one either).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use depot_api::storage::{DomainClass, SdUuid};
use depot_api::Code;
use depot_os::direct::{open_direct, probe_block_size, read_at_direct, AlignedBuf};
use depot_os::fsutil::{fsync_dir, statvfs, write_atomic, FsStats};

use crate::domain_spec::{alignment_for, CreateDomain};
use crate::layout::{self, DomainPaths, CREATING_PREFIX};
use crate::metadata::domain::DomainMetadata;
use crate::metadata::kv::KvMetadata;
use crate::{StorageError, StorageResult};

/// The SPM mailbox files, 16 MiB each (sparse), as VDSM creates them.
const MAILBOX_SIZE: u64 = 16 << 20;
/// Largest metadata file depot reads; VDSM's are a few hundred bytes.
const MAX_METADATA: usize = 64 << 10;
const ENOENT: i32 = 2;

/// Creates a file domain in `mount_dir` and returns its paths.
pub fn create(mount_dir: &Path, req: &CreateDomain) -> StorageResult<DomainPaths> {
    const OP: &str = "create storage domain";
    if !matches!(req.class, DomainClass::Data | DomainClass::Iso) {
        return Err(StorageError::new(
            Code::StorageDomainClassError,
            OP,
            format!("class {} cannot be created (Data or Iso)", req.class),
        ));
    }
    let final_dir = mount_dir.join(req.sd.to_string());
    if final_dir.exists() {
        return Err(StorageError::new(
            Code::StorageDomainAlreadyExists,
            OP,
            format!("{} exists", final_dir.display()),
        ));
    }
    let work = mount_dir.join(format!("{CREATING_PREFIX}{}", req.sd));
    // A leftover of a crashed create of the same domain: start over.
    remove_tree(&work)
        .map_err(|e| StorageError::io(Code::StorageDomainCreationError, OP, &work, e))?;
    let built = build(&work, req);
    if let Err(e) = built {
        let _ = remove_tree(&work);
        return Err(e);
    }
    fs::rename(&work, &final_dir)
        .map_err(|e| StorageError::io(Code::StorageDomainCreationError, OP, &final_dir, e))?;
    fsync_dir(mount_dir).map_err(|e| {
        StorageError::new(Code::StorageDomainCreationError, OP, e.to_string()).caused_by(e)
    })?;
    Ok(DomainPaths::new(final_dir))
}

fn build(work: &Path, req: &CreateDomain) -> StorageResult<()> {
    const OP: &str = "create storage domain";
    let err =
        |p: &Path, e: std::io::Error| StorageError::io(Code::StorageDomainCreationError, OP, p, e);
    let paths = DomainPaths::new(work.to_path_buf());
    DirBuilder::new()
        .mode(0o755)
        .create(work)
        .map_err(|e| err(work, e))?;
    let md_dir = paths.dom_md();
    DirBuilder::new()
        .mode(0o775)
        .create(&md_dir)
        .map_err(|e| err(&md_dir, e))?;
    // Modes as VDSM sets them, whatever the daemon's umask.
    set_mode(&md_dir, 0o775).map_err(|e| err(&md_dir, e))?;

    let block_size = match req.block_size {
        Some(b) => b,
        None => detect_block_size(&md_dir)?,
    };
    let alignment = alignment_for(block_size, req.max_hosts);

    // ids, leases and xleases start empty, inbox/outbox are 16 MiB sparse,
    // as VDSM lays them out (docs/formats.md).
    for (name, size) in [
        ("ids", 0),
        ("leases", 0),
        ("xleases", 0),
        ("inbox", MAILBOX_SIZE),
        ("outbox", MAILBOX_SIZE),
    ] {
        let p = md_dir.join(name);
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o660)
            .open(&p)
            .map_err(|e| err(&p, e))?;
        f.set_len(size).map_err(|e| err(&p, e))?;
        set_mode(&p, 0o660).map_err(|e| err(&p, e))?;
        f.sync_all().map_err(|e| err(&p, e))?;
    }
    let mut md = DomainMetadata::new_file(
        req.sd,
        req.domain_type,
        req.class,
        &req.description,
        &req.remote_path,
        block_size,
        alignment,
    )?;
    md.backup = req.backup;
    write_metadata(&paths, &md)?;
    let images = paths.images();
    DirBuilder::new()
        .mode(0o755)
        .create(&images)
        .map_err(|e| err(&images, e))?;
    fsync_dir(&md_dir).map_err(|e| {
        StorageError::new(Code::StorageDomainCreationError, OP, e.to_string()).caused_by(e)
    })?;
    fsync_dir(work).map_err(|e| {
        StorageError::new(Code::StorageDomainCreationError, OP, e.to_string()).caused_by(e)
    })?;
    Ok(())
}

/// The logical block size of the storage under `dir`: O_DIRECT reads of
/// 512 then 4096 bytes of a probe file (VDSM's and ovirt-imageio's method;
/// statx is not trusted for FUSE and NFS, which report the page size).
fn detect_block_size(dir: &Path) -> StorageResult<u32> {
    const OP: &str = "detect block size";
    let probe = dir.join(".probe-block-size");
    let result = (|| {
        // Written data, not a hole: xfs serves a 512-byte O_DIRECT read of
        // a hole even on 4096-byte sectors, which would hide the real size.
        let mut f = File::create(&probe)?;
        std::io::Write::write_all(&mut f, &[0u8; 4096])?;
        f.sync_all()?;
        drop(f);
        let f = open_direct(&probe, false).map_err(std::io::Error::other)?;
        let (size, _) = probe_block_size(&f).map_err(std::io::Error::other)?;
        Ok::<_, std::io::Error>(size as u32)
    })();
    let _ = fs::remove_file(&probe);
    let size =
        result.map_err(|e| StorageError::io(Code::StorageDomainCreationError, OP, dir, e))?;
    Ok(if size <= 512 { 512 } else { 4096 })
}

/// Reads and checks the domain metadata with O_DIRECT, so another host's
/// update is never hidden by this host's page cache.
pub fn read_metadata(paths: &DomainPaths) -> StorageResult<DomainMetadata> {
    const OP: &str = "read domain metadata";
    let path = paths.metadata();
    let f = open_direct(&path, false).map_err(|e| match e.raw_os_error() {
        Some(ENOENT) => StorageError::new(
            Code::StorageDomainDoesNotExist,
            OP,
            format!("{} is missing", path.display()),
        ),
        _ => StorageError::new(Code::MiscFileReadException, OP, e.to_string()).caused_by(e),
    })?;
    let mut buf = AlignedBuf::new(MAX_METADATA, 4096).map_err(|e| {
        StorageError::new(Code::MiscFileReadException, OP, e.to_string()).caused_by(e)
    })?;
    let n = read_at_direct(&f, 0, &mut buf).map_err(|e| {
        StorageError::new(Code::MiscFileReadException, OP, e.to_string()).caused_by(e)
    })?;
    if n == MAX_METADATA {
        return Err(StorageError::new(
            Code::MetaDataValidationError,
            OP,
            format!("{} is larger than {MAX_METADATA} bytes", path.display()),
        ));
    }
    let kv = KvMetadata::parse_bytes(&buf[..n])?;
    DomainMetadata::from_kv(&kv)
}

/// Writes the metadata atomically (new file, fsync, rename, fsync dir).
/// Callers read the current metadata first, so a broken seal (752) stops a
/// write before it happens and nothing is written over it.
pub fn write_metadata(paths: &DomainPaths, md: &DomainMetadata) -> StorageResult<()> {
    const OP: &str = "write domain metadata";
    let text = md.to_kv()?.to_text();
    write_atomic(&paths.metadata(), text.as_bytes(), 0o660).map_err(|e| {
        StorageError::new(Code::MiscFileWriteException, OP, e.to_string()).caused_by(e)
    })
}

/// Read, change, write: the one way metadata changes.
pub fn update_metadata(
    paths: &DomainPaths,
    change: impl FnOnce(&mut DomainMetadata) -> StorageResult<()>,
) -> StorageResult<DomainMetadata> {
    let mut md = read_metadata(paths)?;
    change(&mut md)?;
    write_metadata(paths, &md)?;
    Ok(md)
}

/// Checks the layout: every dom_md file, the images dir, sound metadata
/// naming this domain.
pub fn validate(paths: &DomainPaths, sd: SdUuid) -> StorageResult<DomainMetadata> {
    const OP: &str = "validate storage domain";
    for name in ["ids", "leases", "inbox", "outbox", "metadata"] {
        let p = paths.dom_md().join(name);
        if !p.is_file() {
            return Err(StorageError::new(
                Code::StorageDomainLayoutError,
                OP,
                format!("{} is missing", p.display()),
            ));
        }
    }
    if !paths.images().is_dir() {
        return Err(StorageError::new(
            Code::StorageDomainLayoutError,
            OP,
            format!("{} is missing", paths.images().display()),
        ));
    }
    let md = read_metadata(paths)?;
    if md.sd_uuid != sd {
        return Err(StorageError::new(
            Code::StorageDomainLayoutError,
            OP,
            format!("metadata names domain {}, not {sd}", md.sd_uuid),
        ));
    }
    Ok(md)
}

/// Space figures of the file system the domain lives on.
pub fn stats(paths: &DomainPaths) -> StorageResult<FsStats> {
    statvfs(&paths.root).map_err(|e| {
        let code = if e.is_stale_handle() {
            Code::FileStorageDomainStaleNFSHandle
        } else {
            Code::StorageDomainCheckError
        };
        StorageError::new(code, "domain stats", e.to_string()).caused_by(e)
    })
}

/// Removes a domain: renamed out of sight first (so a crash mid-delete
/// leaves no half domain under its id), then deleted.
pub fn format(paths: &DomainPaths, sd: SdUuid) -> StorageResult<()> {
    const OP: &str = "format storage domain";
    let mount = paths.mount_dir().to_path_buf();
    let doomed = mount.join(format!("{}{sd}", layout::REMOVE_ME));
    fs::rename(&paths.root, &doomed)
        .map_err(|e| StorageError::io(Code::StorageDomainFormatError, OP, &paths.root, e))?;
    let _ = fsync_dir(&mount);
    remove_tree(&doomed)
        .map_err(|e| StorageError::io(Code::StorageDomainFormatError, OP, &doomed, e))
}

/// Removes what crashes left in a mount: half-created domains and half-
/// formatted ones. Returns what was removed, for the log.
pub fn recover_mount(mount_dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(mount_dir) else {
        return removed;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let garbage = name
            .strip_prefix(CREATING_PREFIX)
            .or_else(|| name.strip_prefix(layout::REMOVE_ME))
            .is_some_and(|rest| rest.parse::<SdUuid>().is_ok());
        if garbage && remove_tree(&e.path()).is_ok() {
            removed.push(e.path());
        }
    }
    removed
}

/// Finds `<dir>/<sd>/dom_md/metadata` among the mount directories.
pub fn find(mount_dirs: &[PathBuf], sd: SdUuid) -> Option<DomainPaths> {
    mount_dirs
        .iter()
        .map(|m| DomainPaths::new(m.join(sd.to_string())))
        .find(|p| p.metadata().is_file())
}

/// The domains in one mount directory: entries named by a UUID with a
/// metadata file.
pub fn list_in(mount_dir: &Path) -> Vec<(SdUuid, DomainPaths)> {
    let mut found = Vec::new();
    if let Ok(entries) = fs::read_dir(mount_dir) {
        for e in entries.flatten() {
            let Ok(sd) = e.file_name().to_string_lossy().parse::<SdUuid>() else {
                continue;
            };
            let paths = DomainPaths::new(e.path());
            if paths.metadata().is_file() {
                found.push((sd, paths));
            }
        }
    }
    found.sort_by_key(|(sd, _)| *sd);
    found
}

fn set_mode(p: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
}

fn remove_tree(p: &Path) -> std::io::Result<()> {
    match fs::remove_dir_all(p) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use depot_api::storage::DomainType;

    fn req(sd: SdUuid) -> CreateDomain {
        CreateDomain {
            sd,
            domain_type: DomainType::LocalFs,
            class: DomainClass::Data,
            description: "test domain".into(),
            remote_path: "/srv/data".into(),
            block_size: None,
            max_hosts: 250,
            backup: false,
        }
    }

    #[test]
    fn create_read_validate_format() {
        let tmp = tempfile::tempdir().unwrap();
        let sd = SdUuid(depot_api::types::Uuid::new_v4());
        let paths = create(tmp.path(), &req(sd)).unwrap();
        let md = validate(&paths, sd).unwrap();
        assert_eq!(md.sd_uuid, sd);
        assert_eq!(md.description, "test domain");
        assert!(md.block_size == 512 || md.block_size == 4096);
        assert_eq!(
            fs::metadata(paths.dom_md().join("inbox")).unwrap().len(),
            MAILBOX_SIZE
        );
        let e = create(tmp.path(), &req(sd)).unwrap_err();
        assert_eq!(e.code, Code::StorageDomainAlreadyExists);

        let md = update_metadata(&paths, |md| md.set_description("renamed")).unwrap();
        assert_eq!(read_metadata(&paths).unwrap(), md);

        format(&paths, sd).unwrap();
        assert!(!paths.root.exists());
        assert!(list_in(tmp.path()).is_empty());
    }

    #[test]
    fn broken_seal_is_refused_and_not_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let sd = SdUuid(depot_api::types::Uuid::new_v4());
        let paths = create(tmp.path(), &req(sd)).unwrap();
        let text = fs::read_to_string(paths.metadata()).unwrap();
        let tampered = text.replace("DESCRIPTION=test domain", "DESCRIPTION=evil domain");
        fs::write(paths.metadata(), &tampered).unwrap();
        let e = read_metadata(&paths).unwrap_err();
        assert_eq!(e.code, Code::MetaDataSealIsBroken);
        let e = update_metadata(&paths, |md| md.set_description("x")).unwrap_err();
        assert_eq!(e.code, Code::MetaDataSealIsBroken);
        assert_eq!(fs::read_to_string(paths.metadata()).unwrap(), tampered);
    }

    #[test]
    fn crash_leftovers_are_recovered() {
        let tmp = tempfile::tempdir().unwrap();
        let sd = SdUuid(depot_api::types::Uuid::new_v4());
        let half = tmp.path().join(format!("{CREATING_PREFIX}{sd}"));
        fs::create_dir_all(half.join("dom_md")).unwrap();
        let keep = tmp.path().join("not-garbage");
        fs::create_dir(&keep).unwrap();
        assert_eq!(recover_mount(tmp.path()), vec![half.clone()]);
        assert!(!half.exists() && keep.exists());
        // A create after the crash succeeds.
        create(tmp.path(), &req(sd)).unwrap();
    }

    #[test]
    fn iso_and_data_only() {
        let tmp = tempfile::tempdir().unwrap();
        let sd = SdUuid(depot_api::types::Uuid::new_v4());
        let mut r = req(sd);
        r.class = DomainClass::Backup;
        assert_eq!(
            create(tmp.path(), &r).unwrap_err().code,
            Code::StorageDomainClassError
        );
        assert!(
            fs::read_dir(tmp.path()).unwrap().next().is_none(),
            "nothing created"
        );
        r.class = DomainClass::Iso;
        create(tmp.path(), &r).unwrap();
    }
}
