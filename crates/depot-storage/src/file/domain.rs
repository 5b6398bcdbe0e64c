//! File storage domains: create, read and write the sealed metadata,
//! validate the layout, format (remove), and space figures.
//!
//! Every call on the domain's file system goes through the mount's
//! helpers ([`MountFs`]), each with the helper deadline, so these run on
//! the caller's thread: a hung server costs a call its deadline (2001 or
//! 2002 naming the mount, crate::mount_fs), never a thread of depotd stuck
//! in the kernel. The caller holds the domain lock.
//!
//! Creation is crash-safe: the domain is built under `.creating-<sdUUID>` in
//! the mount and renamed to `<sdUUID>` only when complete, so a crash leaves
//! either no domain or a dot-directory that [`recover_mount`] removes (VDSM
//! globs `*`, which skips dot-names, so it never sees one either).

use std::io;
use std::path::{Path, PathBuf};

use depot_api::storage::{DomainClass, SdUuid};
use depot_api::Code;
use depot_os::fsproc::{FileKind, OpenWrite};
use depot_os::fsutil::FsStats;
use depot_os::sanlock::DirectConfig;

use crate::domain_spec::{alignment_for, CreateDomain};
use crate::layout::{self, DomainPaths, CREATING_PREFIX};
use crate::metadata::domain::DomainMetadata;
use crate::metadata::kv::KvMetadata;
use crate::mount_fs::{MountFs, MountTrouble};
use crate::{StorageError, StorageResult};

/// The SPM mailbox files, 16 MiB each (sparse), as VDSM creates them.
const MAILBOX_SIZE: u64 = 16 << 20;
/// Largest metadata file depot reads; VDSM's are a few hundred bytes.
const MAX_METADATA: u32 = 64 << 10;

/// Whether an answered error says the path is not there: `ENOENT`, or
/// `ENOTDIR` (a component is a file, so nothing can be beneath it). A
/// mount in trouble is never "not there".
fn absent(e: &io::Error) -> bool {
    MountTrouble::of(e).is_none()
        && (e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR))
}

/// Whether a regular file is at `path`; `Ok(false)` only when the mount
/// answered that it is not.
fn file_there(fs: &MountFs, path: &Path) -> io::Result<bool> {
    match fs.lstat(path) {
        Ok(s) => Ok(s.kind == FileKind::File),
        Err(e) if absent(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates a file domain in `mount_dir` (the root of `fs`, or beneath it)
/// and returns its paths; `ids` and `leases` stay empty (no sanlock: see
/// [`create_with_lockspace`]).
pub fn create(fs: &MountFs, mount_dir: &Path, req: &CreateDomain) -> StorageResult<DomainPaths> {
    create_with_lockspace(fs, mount_dir, req, None)
}

/// [`create`], and with `sanlock` the domain's lockspace and SDM lease
/// formatted (crate::lockspace) before the domain appears under its id.
pub fn create_with_lockspace(
    fs: &MountFs,
    mount_dir: &Path,
    req: &CreateDomain,
    sanlock: Option<&DirectConfig>,
) -> StorageResult<DomainPaths> {
    const OP: &str = "create storage domain";
    if !matches!(req.class, DomainClass::Data | DomainClass::Iso) {
        return Err(StorageError::new(
            Code::StorageDomainClassError,
            OP,
            format!("class {} cannot be created (Data or Iso)", req.class),
        ));
    }
    let err = |p: &Path, e: io::Error| StorageError::io(Code::StorageDomainCreationError, OP, p, e);
    let final_dir = mount_dir.join(req.sd.to_string());
    if fs
        .try_stat(&final_dir)
        .map_err(|e| err(&final_dir, e))?
        .is_some()
    {
        return Err(StorageError::new(
            Code::StorageDomainAlreadyExists,
            OP,
            format!("{} exists", final_dir.display()),
        ));
    }
    let work = mount_dir.join(format!("{CREATING_PREFIX}{}", req.sd));
    // A leftover of a crashed create of the same domain: start over.
    remove_tree(fs, &work).map_err(|e| err(&work, e))?;
    let built = build(fs, &work, req, sanlock);
    if let Err(e) = built {
        // Best effort: what is left is a dot-directory recover_mount
        // removes the next time it looks.
        let _ = remove_tree(fs, &work);
        return Err(e);
    }
    fs.rename(&work, &final_dir)
        .map_err(|e| err(&final_dir, e))?;
    fs.fsync_dir(mount_dir).map_err(|e| err(mount_dir, e))?;
    Ok(DomainPaths::new(final_dir))
}

fn build(
    fs: &MountFs,
    work: &Path,
    req: &CreateDomain,
    sanlock: Option<&DirectConfig>,
) -> StorageResult<()> {
    const OP: &str = "create storage domain";
    let err = |p: &Path, e: io::Error| StorageError::io(Code::StorageDomainCreationError, OP, p, e);
    let paths = DomainPaths::new(work.to_path_buf());
    fs.mkdir(work, 0o755).map_err(|e| err(work, e))?;
    let md_dir = paths.dom_md();
    fs.mkdir(&md_dir, 0o775).map_err(|e| err(&md_dir, e))?;
    // Modes as VDSM sets them, whatever the helper's umask.
    fs.chmod(&md_dir, 0o775).map_err(|e| err(&md_dir, e))?;

    let block_size = match req.block_size {
        Some(b) => b,
        None => detect_block_size(fs, &md_dir)?,
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
        let new = OpenWrite {
            create: true,
            exclusive: true,
            mode: 0o660,
            ..OpenWrite::default()
        };
        fs.write_at(&p, 0, &[], new, false)
            .map_err(|e| err(&p, e))?;
        if size > 0 {
            fs.truncate(&p, size).map_err(|e| err(&p, e))?;
        }
        fs.chmod(&p, 0o660).map_err(|e| err(&p, e))?;
        fs.fsync(&p).map_err(|e| err(&p, e))?;
    }
    // sanlock's areas: `sanlock direct init` in a child opens the files
    // itself (they must exist) and writes them with O_DIRECT.
    // With them, the xleases index (VDSM formats it on every V4+ domain;
    // depot where leases can be made, i.e. with sanlock).
    if let Some(direct) = sanlock {
        crate::lockspace::init_domain(
            direct,
            req.sd,
            &md_dir.join("ids"),
            &md_dir.join("leases"),
            block_size,
            alignment,
        )?;
        let xleases = md_dir.join(crate::xlease::XLEASES);
        crate::xlease::Xleases::file(fs.clone(), xleases, req.sd, block_size, alignment)
            .format()?;
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
    write_metadata(fs, &paths, &md)?;
    let images = paths.images();
    fs.mkdir(&images, 0o755).map_err(|e| err(&images, e))?;
    fs.fsync_dir(&md_dir).map_err(|e| err(&md_dir, e))?;
    fs.fsync_dir(work).map_err(|e| err(work, e))?;
    Ok(())
}

/// The logical block size of the storage under `dir`: O_DIRECT reads of
/// a probe file in the helper (VDSM's and ovirt-imageio's method where
/// the kernel cannot tell: statx is not trusted for FUSE and NFS, which
/// report nothing or the page size; depot_os::direct::probe_alignment).
fn detect_block_size(fs: &MountFs, dir: &Path) -> StorageResult<u32> {
    const OP: &str = "detect block size";
    let probe = dir.join(".probe-block-size");
    // Written data, not a hole: xfs serves a 512-byte O_DIRECT read of a
    // hole even on 4096-byte sectors, which would hide the real size.
    let write = OpenWrite {
        create: true,
        truncate: true,
        mode: 0o600,
        ..OpenWrite::default()
    };
    let result = fs
        .write_at(&probe, 0, &[0u8; 4096], write, true)
        .and_then(|_| fs.direct_probe(&probe));
    // Best effort: a leftover probe file is rewritten by the next probe.
    let _ = fs.unlink(&probe);
    let found =
        result.map_err(|e| StorageError::io(Code::StorageDomainCreationError, OP, dir, e))?;
    if !found.supported {
        return Err(StorageError::new(
            Code::StorageDomainCreationError,
            OP,
            format!(
                "{}: the storage does not support O_DIRECT ({})",
                dir.display(),
                found.source
            ),
        ));
    }
    Ok(if found.block_size <= 512 { 512 } else { 4096 })
}

/// Reads and checks the domain metadata with O_DIRECT, so another host's
/// update is never hidden by this host's page cache.
pub fn read_metadata(fs: &MountFs, paths: &DomainPaths) -> StorageResult<DomainMetadata> {
    const OP: &str = "read domain metadata";
    let path = paths.metadata();
    let data = fs.read_at(&path, 0, MAX_METADATA, true).map_err(|e| {
        if absent(&e) {
            StorageError::new(
                Code::StorageDomainDoesNotExist,
                OP,
                format!("{} is missing", path.display()),
            )
            .caused_by(e)
        } else {
            StorageError::io(Code::MiscFileReadException, OP, &path, e)
        }
    })?;
    if data.len() >= MAX_METADATA as usize {
        return Err(StorageError::new(
            Code::MetaDataValidationError,
            OP,
            format!("{} is larger than {MAX_METADATA} bytes", path.display()),
        ));
    }
    let kv = KvMetadata::parse_bytes(&data)?;
    DomainMetadata::from_kv(&kv)
}

/// Writes the metadata atomically (new file, fsync, rename, fsync dir,
/// all in one helper call). Callers read the current metadata first, so a
/// broken seal (752) stops a write before it happens and nothing is
/// written over it.
pub fn write_metadata(fs: &MountFs, paths: &DomainPaths, md: &DomainMetadata) -> StorageResult<()> {
    const OP: &str = "write domain metadata";
    let text = md.to_kv()?.to_text();
    let path = paths.metadata();
    fs.write_atomic(&path, text.as_bytes(), 0o660)
        .map_err(|e| StorageError::io(Code::MiscFileWriteException, OP, &path, e))
}

/// Read, change, write: the one way metadata changes.
pub fn update_metadata(
    fs: &MountFs,
    paths: &DomainPaths,
    change: impl FnOnce(&mut DomainMetadata) -> StorageResult<()>,
) -> StorageResult<DomainMetadata> {
    let mut md = read_metadata(fs, paths)?;
    change(&mut md)?;
    write_metadata(fs, paths, &md)?;
    Ok(md)
}

/// Whether the domain's metadata file is still there (the cache check of
/// a located domain). A mount that does not answer is an error, never
/// "not there".
pub fn still_there(fs: &MountFs, paths: &DomainPaths) -> StorageResult<bool> {
    let path = paths.metadata();
    file_there(fs, &path).map_err(|e| {
        StorageError::io(
            Code::MiscFileReadException,
            "locate storage domain",
            &path,
            e,
        )
    })
}

/// Checks the layout: every dom_md file, the images dir, sound metadata
/// naming this domain.
pub fn validate(fs: &MountFs, paths: &DomainPaths, sd: SdUuid) -> StorageResult<DomainMetadata> {
    const OP: &str = "validate storage domain";
    let missing = |p: &Path| {
        StorageError::new(
            Code::StorageDomainLayoutError,
            OP,
            format!("{} is missing", p.display()),
        )
    };
    let err = |p: &Path, e: io::Error| StorageError::io(Code::StorageDomainLayoutError, OP, p, e);
    for name in ["ids", "leases", "inbox", "outbox", "metadata"] {
        let p = paths.dom_md().join(name);
        if !file_there(fs, &p).map_err(|e| err(&p, e))? {
            return Err(missing(&p));
        }
    }
    let images = paths.images();
    let is_dir = match fs.lstat(&images) {
        Ok(s) => s.kind == FileKind::Dir,
        Err(e) if absent(&e) => false,
        Err(e) => return Err(err(&images, e)),
    };
    if !is_dir {
        return Err(missing(&images));
    }
    let md = read_metadata(fs, paths)?;
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
pub fn stats(fs: &MountFs, paths: &DomainPaths) -> StorageResult<FsStats> {
    let v = fs.statvfs(&paths.root).map_err(|e| {
        StorageError::io(
            Code::StorageDomainCheckError,
            "domain stats",
            &paths.root,
            e,
        )
    })?;
    Ok(FsStats::from(v))
}

/// Removes a domain: renamed out of sight first (so a crash mid-delete
/// leaves no half domain under its id), then deleted.
pub fn format(fs: &MountFs, paths: &DomainPaths, sd: SdUuid) -> StorageResult<()> {
    const OP: &str = "format storage domain";
    let mount = paths.mount_dir().to_path_buf();
    let doomed = mount.join(format!("{}{sd}", layout::REMOVE_ME));
    fs.rename(&paths.root, &doomed)
        .map_err(|e| StorageError::io(Code::StorageDomainFormatError, OP, &paths.root, e))?;
    // The rename is what makes the domain gone; a rename that a crash
    // undoes leaves the domain whole, which is no harm.
    if let Err(e) = fs.fsync_dir(&mount) {
        tracing::warn!(mount = %mount.display(), error = %e, "fsync after the format rename failed");
    }
    remove_tree(fs, &doomed)
        .map_err(|e| StorageError::io(Code::StorageDomainFormatError, OP, &doomed, e))
}

/// Removes what crashes left in a mount: half-created domains and half-
/// formatted ones. Returns what was removed, for the log. A leftover that
/// cannot be removed is logged and left for the next look; a mount that
/// does not answer is an error.
pub fn recover_mount(fs: &MountFs, mount_dir: &Path) -> StorageResult<Vec<PathBuf>> {
    const OP: &str = "recover crash leftovers";
    let names = match fs.names(mount_dir) {
        Ok(n) => n,
        Err(e) if absent(&e) => return Ok(Vec::new()),
        Err(e) => {
            return Err(StorageError::io(
                Code::MiscFileReadException,
                OP,
                mount_dir,
                e,
            ))
        }
    };
    let mut removed = Vec::new();
    for name in names {
        let garbage = name
            .strip_prefix(CREATING_PREFIX)
            .or_else(|| name.strip_prefix(layout::REMOVE_ME))
            .is_some_and(|rest| rest.parse::<SdUuid>().is_ok());
        if !garbage {
            continue;
        }
        let path = mount_dir.join(&name);
        match remove_tree(fs, &path) {
            Ok(()) => removed.push(path),
            Err(e) if MountTrouble::of(&e).is_some() => {
                return Err(StorageError::io(Code::MiscFileWriteException, OP, &path, e))
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "crash leftover not removed")
            }
        }
    }
    Ok(removed)
}

/// `<mount_dir>/<sd>` if it holds a domain (its metadata file); `None`
/// only when the mount answered that it does not.
pub fn find_in(fs: &MountFs, mount_dir: &Path, sd: SdUuid) -> StorageResult<Option<DomainPaths>> {
    let paths = DomainPaths::new(mount_dir.join(sd.to_string()));
    // The directory first: the helpers refuse a path through anything
    // else (a file named by the id is no domain, not an error).
    match fs.lstat(&paths.root) {
        Ok(s) if s.kind == FileKind::Dir => {}
        Ok(_) => return Ok(None),
        Err(e) if absent(&e) => return Ok(None),
        Err(e) => {
            return Err(StorageError::io(
                Code::MiscFileReadException,
                "locate storage domain",
                &paths.root,
                e,
            ))
        }
    }
    Ok(still_there(fs, &paths)?.then_some(paths))
}

/// The domains in one mount directory: entries named by a UUID with a
/// metadata file. A mount that does not answer is an error, never an
/// empty list.
pub fn list_in(fs: &MountFs, mount_dir: &Path) -> StorageResult<Vec<(SdUuid, DomainPaths)>> {
    const OP: &str = "list storage domains";
    let entries = match fs.listdir(mount_dir) {
        Ok(e) => e,
        Err(e) if absent(&e) => return Ok(Vec::new()),
        Err(e) => {
            return Err(StorageError::io(
                Code::MiscFileReadException,
                OP,
                mount_dir,
                e,
            ))
        }
    };
    let mut found = Vec::new();
    for e in entries {
        // A domain is a directory (`Unknown`: the file system does not
        // say in its listing; find_in looks).
        if !e.utf8 || !matches!(e.kind, FileKind::Dir | FileKind::Unknown) {
            continue;
        }
        let Ok(sd) = e.name.parse::<SdUuid>() else {
            continue;
        };
        let paths = match e.kind {
            FileKind::Dir => {
                let paths = DomainPaths::new(mount_dir.join(&e.name));
                still_there(fs, &paths).map(|there| there.then_some(paths))
            }
            _ => find_in(fs, mount_dir, sd),
        };
        match paths {
            Ok(Some(paths)) => found.push((sd, paths)),
            Ok(None) => {}
            // The mount in trouble: the whole listing is unknown.
            Err(e) if e.has_mount_trouble_cause() => return Err(e),
            // An answer about this entry (a refusal: a link, a file where
            // a directory should be): not a domain depot can use.
            Err(e) => tracing::warn!(entry = %e, "not listed as a domain"),
        }
    }
    found.sort_by_key(|(sd, _)| *sd);
    Ok(found)
}

/// Removes a file or tree; nothing there is done.
fn remove_tree(fs: &MountFs, p: &Path) -> io::Result<()> {
    match fs.rmtree(p) {
        Err(e) if absent(&e) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use depot_api::storage::DomainType;
    use std::fs;
    use std::time::Duration;

    fn mount(dir: &Path) -> MountFs {
        MountFs::in_process(dir, Duration::from_secs(30))
    }

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
        let m = mount(tmp.path());
        let paths = create(&m, tmp.path(), &req(sd)).unwrap();
        let md = validate(&m, &paths, sd).unwrap();
        assert_eq!(md.sd_uuid, sd);
        assert_eq!(md.description, "test domain");
        assert!(md.block_size == 512 || md.block_size == 4096);
        assert_eq!(
            fs::metadata(paths.dom_md().join("inbox")).unwrap().len(),
            MAILBOX_SIZE
        );
        let e = create(&m, tmp.path(), &req(sd)).unwrap_err();
        assert_eq!(e.code, Code::StorageDomainAlreadyExists);
        assert_eq!(list_in(&m, tmp.path()).unwrap(), vec![(sd, paths.clone())]);
        assert_eq!(find_in(&m, tmp.path(), sd).unwrap(), Some(paths.clone()));
        assert!(still_there(&m, &paths).unwrap());

        let md = update_metadata(&m, &paths, |md| md.set_description("renamed")).unwrap();
        assert_eq!(read_metadata(&m, &paths).unwrap(), md);
        assert!(stats(&m, &paths).unwrap().total_bytes > 0);

        format(&m, &paths, sd).unwrap();
        assert!(!paths.root.exists());
        assert!(list_in(&m, tmp.path()).unwrap().is_empty());
        assert_eq!(find_in(&m, tmp.path(), sd).unwrap(), None);
        assert!(!still_there(&m, &paths).unwrap());
        let e = read_metadata(&m, &paths).unwrap_err();
        assert_eq!(e.code, Code::StorageDomainDoesNotExist, "{e}");
    }

    #[test]
    fn broken_seal_is_refused_and_not_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let sd = SdUuid(depot_api::types::Uuid::new_v4());
        let m = mount(tmp.path());
        let paths = create(&m, tmp.path(), &req(sd)).unwrap();
        let text = fs::read_to_string(paths.metadata()).unwrap();
        let tampered = text.replace("DESCRIPTION=test domain", "DESCRIPTION=evil domain");
        fs::write(paths.metadata(), &tampered).unwrap();
        let e = read_metadata(&m, &paths).unwrap_err();
        assert_eq!(e.code, Code::MetaDataSealIsBroken);
        let e = update_metadata(&m, &paths, |md| md.set_description("x")).unwrap_err();
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
        let m = mount(tmp.path());
        assert_eq!(recover_mount(&m, tmp.path()).unwrap(), vec![half.clone()]);
        assert!(!half.exists() && keep.exists());
        // A create after the crash succeeds.
        create(&m, tmp.path(), &req(sd)).unwrap();
    }

    #[test]
    fn listing_skips_what_is_not_a_domain() {
        let tmp = tempfile::tempdir().unwrap();
        let m = mount(tmp.path());
        let sd = SdUuid(depot_api::types::Uuid::new_v4());
        let paths = create(&m, tmp.path(), &req(sd)).unwrap();
        // A file named by a UUID (ENOTDIR beneath it), a directory
        // without metadata, a name that is no UUID.
        let stray = SdUuid(depot_api::types::Uuid::new_v4());
        fs::write(tmp.path().join(stray.to_string()), b"x").unwrap();
        let empty = SdUuid(depot_api::types::Uuid::new_v4());
        fs::create_dir(tmp.path().join(empty.to_string())).unwrap();
        fs::create_dir(tmp.path().join("lost+found")).unwrap();
        // A domain directory whose dom_md is a file: refused, skipped.
        let odd = SdUuid(depot_api::types::Uuid::new_v4());
        fs::create_dir(tmp.path().join(odd.to_string())).unwrap();
        fs::write(tmp.path().join(odd.to_string()).join("dom_md"), b"x").unwrap();
        assert_eq!(list_in(&m, tmp.path()).unwrap(), vec![(sd, paths)]);
        assert_eq!(find_in(&m, tmp.path(), stray).unwrap(), None);
        assert_eq!(find_in(&m, tmp.path(), empty).unwrap(), None);
    }

    #[test]
    fn iso_and_data_only() {
        let tmp = tempfile::tempdir().unwrap();
        let sd = SdUuid(depot_api::types::Uuid::new_v4());
        let m = mount(tmp.path());
        let mut r = req(sd);
        r.class = DomainClass::Backup;
        assert_eq!(
            create(&m, tmp.path(), &r).unwrap_err().code,
            Code::StorageDomainClassError
        );
        assert!(
            fs::read_dir(tmp.path()).unwrap().next().is_none(),
            "nothing created"
        );
        r.class = DomainClass::Iso;
        create(&m, tmp.path(), &r).unwrap();
    }
}
