//! The replace strategy of an OVF_STORE upload, for a volume that is a
//! file of its own (docs/formats.md, "Upload and commit"):
//!
//! 1. [`prepare`]: `<vol>.ovf-upload` is created next to the volume
//!    (`O_EXCL`: an existing one is another upload, [`OvfError::Busy`];
//!    mode 0600; the volume's owner), then opened with `O_DIRECT`;
//! 2. [`Replacement::receive`]: the body is checked and hashed as it
//!    arrives ([`upload::receive`]) and written into that file with
//!    `O_DIRECT` from offset 0, in 1 MiB writes, the last one zero-padded to
//!    4096 bytes;
//! 3. [`Replacement::commit`], once every byte has passed: the file gets
//!    the volume's size (and allocation, for a preallocated volume), the
//!    `Valid` trailer (generation: the volume's + 1) and the volume's mode;
//!    it is fsynced, renamed over the volume, and the directory is fsynced.
//!
//! The volume itself is never written: until the rename it is exactly what
//! it was, and the rename swaps in a complete, durable store at once. A
//! crash at any point leaves the old store or the new one, both valid, and
//! at worst the staging file, which the next upload removes. The data is
//! written once, while it arrives, instead of being staged and copied.
//!
//! A volume that cannot be swapped this way (not a regular file, linked
//! into other images, a size that is not the volume's, an owner depot
//! cannot give a new file) gets [`Plan::Copy`] with the reason, before any
//! byte of the body is read; the caller then uses [`store::stage_upload`]
//! and [`store::commit`].

use std::fs::{self, File, Permissions};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use depot_os::direct::{open_direct, open_direct_data, sync_and_close, write_at_direct};
use depot_os::fsutil::{fallocate, fsync_dir};
use depot_os::DataPath;
use std::sync::Arc;

use super::store::{
    self, checked_trailer_offset, direct_alignment, next_generation, unix_now, volume_err,
    write_trailer,
};
use super::trailer::{Trailer, TrailerState};
use super::upload::{self, Received, ALIGN};
use super::{FsCalls, OvfError};

/// How an upload to a volume goes.
pub enum Plan {
    /// Into a new file renamed over the volume; the staging file exists.
    Replace(Box<Replacement>),
    /// Staged and copied into the volume ([`store::stage_upload`]); nothing
    /// was created. The reason is for the debug log.
    Copy { reason: String },
}

/// An upload being written into the file that will replace the volume. The
/// staging file is removed when this is dropped before [`commit`] renamed
/// it.
///
/// [`commit`]: Replacement::commit
pub struct Replacement {
    /// The volume's data, opened again under its rule at the commit.
    volume: Box<dyn DataPath + Send>,
    volume_size: u64,
    staging: PathBuf,
    /// The staging file, open with `O_DIRECT` for writing (shared with the
    /// worker calls that write it).
    file: Option<Arc<File>>,
    /// The volume file's identity, mode and allocation when prepared.
    dev: u64,
    ino: u64,
    mode: u32,
    preallocated: bool,
    received: Option<Received>,
    renamed: bool,
}

/// What [`Replacement::commit`] did, and how long each step took.
#[derive(Debug, Clone)]
pub struct Committed {
    pub trailer: Trailer,
    pub received: Received,
    /// Size, trailer and mode of the new file, and its fsync.
    pub seal: Duration,
    /// The rename and the directory's fsync.
    pub rename: Duration,
}

/// Decides how an upload to the volume `volume` goes, and for
/// [`Plan::Replace`] creates the staging file. `volume_size` is the size
/// the volume has (its capacity); `block_size` the domain's. The volume is
/// opened (read-only) under its [`DataPath`] rule and looked at through
/// that descriptor, so a symlink never decides the plan. Blocking: the
/// caller runs it on the mount's I/O worker.
pub fn prepare<D: DataPath + Clone + Send + 'static>(
    volume: &D,
    volume_size: u64,
    staging_path: &Path,
    block_size: usize,
) -> Result<Plan, OvfError> {
    let volume_path = volume.path();
    let read_err = |source| OvfError::Read {
        op: "open OVF_STORE volume",
        path: volume_path.to_owned(),
        source,
    };
    let old = volume
        .open_with(&depot_os::confine::read_options(false))
        .map_err(read_err)?;
    let meta = old.metadata().map_err(read_err)?;
    let copy = |reason: String| Ok(Plan::Copy { reason });
    if !meta.file_type().is_file() {
        return copy("not a regular file".into());
    }
    if meta.nlink() != 1 {
        return copy(format!("the file has {} links", meta.nlink()));
    }
    if meta.len() != volume_size {
        return copy(format!(
            "the file is {} bytes, the volume {volume_size}",
            meta.len()
        ));
    }
    if staging_path.parent() != volume_path.parent() {
        return copy("the staging file is in another directory".into());
    }
    let created = store::create_staging(staging_path)?;
    let mut r = Replacement {
        volume: Box::new(volume.clone()),
        volume_size,
        staging: staging_path.to_owned(),
        file: None,
        dev: meta.dev(),
        ino: meta.ino(),
        mode: meta.mode() & 0o7777,
        // A preallocated volume stays preallocated.
        preallocated: meta.blocks().saturating_mul(512) >= meta.len(),
        received: None,
        renamed: false,
    };
    let mine = created.metadata().map_err(|source| OvfError::Read {
        op: "stat staging file",
        path: staging_path.to_owned(),
        source,
    })?;
    if (mine.uid(), mine.gid()) != (meta.uid(), meta.gid()) {
        if let Err(e) = std::os::unix::fs::fchown(&created, Some(meta.uid()), Some(meta.gid())) {
            // `r` removes the staging file.
            return copy(format!(
                "cannot give a new file the volume's owner {}:{}: {e}",
                meta.uid(),
                meta.gid()
            ));
        }
    }
    let file = open_direct(staging_path, true)?;
    let direct = file.metadata().map_err(|source| OvfError::Read {
        op: "stat staging file",
        path: staging_path.to_owned(),
        source,
    })?;
    if (direct.dev(), direct.ino()) != (mine.dev(), mine.ino()) {
        return Err(OvfError::StagingChanged {
            path: staging_path.to_owned(),
            reason: "it was replaced after it was created".into(),
        });
    }
    drop(created);
    // Both files must take direct I/O at an alignment the 4096-byte padded
    // writes satisfy.
    direct_alignment(&file, staging_path, block_size)?;
    drop(old);
    direct_alignment(&open_direct_data(volume, false)?, volume_path, block_size)?;
    r.file = Some(Arc::new(file));
    Ok(Plan::Replace(Box::new(r)))
}

impl Replacement {
    /// Receives the body into the staging file (see [`upload::receive`]
    /// for `source`), each write made through `calls`.
    pub fn receive(
        &mut self,
        content_length: u64,
        source: &mut dyn FnMut(&mut [u8]) -> io::Result<usize>,
        calls: &FsCalls,
    ) -> Result<(), OvfError> {
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| OvfError::Pipeline("the staging file is closed".into()))?;
        let staging = &self.staging;
        let received = upload::receive(content_length, source, &mut |buf, len, offset| {
            let f = Arc::clone(file);
            calls.run("write staging file", staging, move || {
                write_at_direct(&f, offset, &buf, len.div_ceil(ALIGN) * ALIGN)?;
                Ok(buf)
            })
        })?;
        self.received = Some(received);
        Ok(())
    }

    /// Makes the received upload the volume's content (see the [module
    /// docs](self)) and returns its trailer. Call it holding the image's
    /// lock, so that no read of the volume runs across the swap.
    pub fn commit(mut self) -> Result<Committed, OvfError> {
        let t0 = Instant::now();
        let received = self
            .received
            .take()
            .ok_or_else(|| OvfError::Pipeline("nothing was received".into()))?;
        let volume = self.volume.path().to_owned();
        let toff = checked_trailer_offset(&volume, self.volume_size)?;
        if received.size > toff {
            return Err(OvfError::TooLarge {
                path: volume,
                size: received.size,
                max: toff,
            });
        }
        let old = open_direct_data(&*self.volume, false)?;
        let now = old.metadata().map_err(|source| OvfError::Read {
            op: "stat OVF_STORE volume",
            path: volume.clone(),
            source,
        })?;
        if (now.dev(), now.ino()) != (self.dev, self.ino) {
            return Err(volume_err(
                &volume,
                "the volume file was replaced while the upload was received",
            ));
        }
        let generation = next_generation(&old, &volume, toff)?;
        let file = self
            .file
            .take()
            .ok_or_else(|| OvfError::Pipeline("the staging file is closed".into()))?;
        // A write that timed out may still hold it: then it is not ours to
        // seal.
        let file = Arc::try_unwrap(file).map_err(|_| {
            OvfError::Pipeline("a write of the staging file has not returned".into())
        })?;
        let write_err = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| OvfError::Write { op, path, source }
        };
        if self.preallocated {
            fallocate(&file, 0, self.volume_size)?;
        } else {
            file.set_len(self.volume_size)
                .map_err(write_err("size the new OVF_STORE file", &self.staging))?;
        }
        let trailer = Trailer {
            state: TrailerState::Valid,
            generation,
            size: received.size,
            sha256: received.sha256,
            updated: unix_now(),
        };
        write_trailer(&file, toff, &trailer)?;
        file.set_permissions(Permissions::from_mode(self.mode))
            .map_err(write_err(
                "set the mode of the new OVF_STORE file",
                &self.staging,
            ))?;
        // Data, size and trailer durable before the rename can be.
        sync_and_close(file)?;
        let seal = t0.elapsed();

        // Freeing the old file's blocks (tens of milliseconds for 100 MiB
        // on ext4) happens when its last reference goes. On a local file
        // system the fd read above keeps the old file alive across the
        // rename, and closing it later, off this thread, frees it after the
        // answer. On NFS an open file that is renamed over is first
        // "silly-renamed" by the client, which would make the swap two
        // steps: there it is closed before.
        let keep_open = if is_local(&old) {
            Some(old)
        } else {
            drop(old);
            None
        };
        let t1 = Instant::now();
        fs::rename(&self.staging, &volume).map_err(write_err(
            "rename the new OVF_STORE file over the volume",
            &self.staging,
        ))?;
        self.renamed = true;
        if let Some(dir) = volume.parent() {
            fsync_dir(dir)?;
        }
        let rename = t1.elapsed();
        if let Some(old) = keep_open {
            close_later(old);
        }
        Ok(Committed {
            trailer,
            received,
            seal,
            rename,
        })
    }
}

impl Drop for Replacement {
    fn drop(&mut self) {
        if !self.renamed {
            drop(self.file.take());
            if let Err(e) = fs::remove_file(&self.staging) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %self.staging.display(), error = %e,
                        "cannot remove OVF_STORE staging file");
                }
            }
        }
    }
}

/// Whether `file` is on a local file system (ext4, xfs, btrfs, tmpfs),
/// where a file renamed over while open stays whole until closed.
fn is_local(file: &File) -> bool {
    // SAFETY: statfs is plain old data; all-zero is a valid value, and
    // fstatfs writes into it through a valid pointer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is open for the duration of the call.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    const EXT4: u64 = 0xEF53;
    const XFS: u64 = 0x5846_5342;
    const BTRFS: u64 = 0x9123_683E;
    const TMPFS: u64 = 0x0102_1994;
    // The magic is 32 bits; f_type is a signed word of either width.
    matches!(st.f_type as u64 & 0xFFFF_FFFF, EXT4 | XFS | BTRFS | TMPFS)
}

/// Closes `file` on a short-lived thread (inline if none can start: the
/// closure holding it is dropped then).
fn close_later(file: File) {
    let spawned = std::thread::Builder::new()
        .name("ovf-old-store".into())
        .spawn(move || drop(file));
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "closed the old OVF_STORE file inline");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovf::store::{read_range, staging_path, state, verify, StoreState};
    use crate::ovf::tests_common::*;
    use crate::ovf::FsCalls;
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::PermissionsExt;

    const VOL_SIZE: u64 = 4 << 20;

    /// A sparse volume (as the engine creates an OVF_STORE on a file
    /// domain) with stale data in its first 64 KiB.
    fn sparse_volume(size: u64) -> Vol {
        let v = volume(65536);
        let f = fs::OpenOptions::new().write(true).open(&v.path).unwrap();
        f.set_len(size).unwrap();
        v
    }

    fn source_of(data: &[u8]) -> impl FnMut(&mut [u8]) -> io::Result<usize> + '_ {
        let mut pos = 0;
        move |buf: &mut [u8]| {
            let n = buf.len().min(data.len() - pos).min(7001);
            buf[..n].copy_from_slice(&data[pos..pos + n]);
            pos += n;
            Ok(n)
        }
    }

    fn plan(v: &Vol) -> Plan {
        prepare(&v.path, VOL_SIZE, &staging_path(&v.path), 512).unwrap()
    }

    fn replacement(v: &Vol) -> Replacement {
        match plan(v) {
            Plan::Replace(r) => *r,
            Plan::Copy { reason } => panic!("copy: {reason}"),
        }
    }

    fn upload(v: &Vol, tar: &[u8]) -> Result<Committed, OvfError> {
        let mut r = replacement(v);
        r.receive(tar.len() as u64, &mut source_of(tar), &FsCalls::inline())?;
        r.commit()
    }

    fn read_all(path: &Path, len: u64) -> Vec<u8> {
        let mut out = Vec::new();
        read_range(path, 0, len, |b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        out
    }

    fn ino(path: &Path) -> u64 {
        fs::metadata(path).unwrap().ino()
    }

    #[test]
    fn replace_round_trip() {
        let v = sparse_volume(VOL_SIZE);
        let staging = staging_path(&v.path);
        let before = ino(&v.path);
        let (tar, _) = big_engine_tar(3 << 20);
        assert_ne!(tar.len() % 4096, 0);

        let mut r = replacement(&v);
        assert!(staging.exists());
        assert_eq!(
            fs::metadata(&staging).unwrap().permissions().mode() & 0o777,
            0o600,
            "the staging file is private while it is written"
        );
        r.receive(tar.len() as u64, &mut source_of(&tar), &FsCalls::inline())
            .unwrap();
        // Received, not committed: the volume is as it was.
        assert_eq!(ino(&v.path), before);
        assert_eq!(state(&v.path, VOL_SIZE).unwrap(), StoreState::Unknown);
        let c = r.commit().unwrap();
        assert!(!staging.exists(), "the staging file became the volume");
        assert_ne!(ino(&v.path), before, "a new file");
        let t = c.trailer;
        assert_eq!(t.state, TrailerState::Valid);
        assert_eq!(t.generation, 1);
        assert_eq!(t.size, tar.len() as u64);
        assert_eq!(t.sha256, <[u8; 32]>::from(Sha256::digest(&tar)));
        assert_eq!(
            verify(&v.path, VOL_SIZE).unwrap(),
            StoreState::Valid { trailer: t }
        );
        assert!(read_all(&v.path, tar.len() as u64) == tar);
        // The volume keeps its size and mode; everything between the tar
        // and the trailer is zero (no stale data).
        let meta = fs::metadata(&v.path).unwrap();
        assert_eq!(meta.len(), VOL_SIZE);
        assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
        let raw = fs::read(&v.path).unwrap();
        assert!(raw[tar.len()..VOL_SIZE as usize - 4096]
            .iter()
            .all(|&b| b == 0));
        assert!(
            meta.blocks() * 512 < VOL_SIZE,
            "a sparse volume stays sparse"
        );

        // The next upload bumps the generation.
        let (tar2, _) = engine_tar(2);
        let t2 = upload(&v, &tar2).unwrap().trailer;
        assert_eq!(t2.generation, 2);
        assert!(read_all(&v.path, tar2.len() as u64) == tar2);
        assert!(matches!(
            verify(&v.path, VOL_SIZE).unwrap(),
            StoreState::Valid { .. }
        ));
    }

    #[test]
    fn bad_uploads_leave_the_volume_alone() {
        let v = volume(VOL_SIZE);
        let (good, _) = engine_tar(2);
        let t = upload(&v, &good).unwrap().trailer;
        let before = fs::read(&v.path).unwrap();
        let before_ino = ino(&v.path);
        let staging = staging_path(&v.path);

        let (tar, _) = big_engine_tar(2 << 20);
        let mut not_tar = tar.clone();
        not_tar[100] ^= 0xff;
        let mut dtd = Vec::new();
        {
            let mut b = tar::Builder::new(&mut dtd);
            append(&mut b, "info.json", info_json().as_bytes());
            append(
                &mut b,
                "0b6c0f59-5a4d-4c1a-9a55-7f5b0a3c2d11.ovf",
                XXE_OVF.as_bytes(),
            );
            b.finish().unwrap();
        }
        // A bad OVF after the first MiB has been written to the staging file.
        let mut late_bad = tar.clone();
        let at = (1 << 20) + 5000;
        let lt = late_bad[at..].iter().position(|&b| b == b'<').unwrap() + at;
        late_bad[lt + 1] = b'!';
        let cases: Vec<(&str, Vec<u8>, u64)> = vec![
            (
                "truncated",
                tar[..tar.len() - 1536].to_vec(),
                tar.len() as u64,
            ),
            ("not a tar", not_tar, tar.len() as u64),
            ("DTD", dtd.clone(), dtd.len() as u64),
            (
                "bad OVF after the first MiB",
                late_bad.clone(),
                late_bad.len() as u64,
            ),
        ];
        for (what, data, cl) in cases {
            let mut r = replacement(&v);
            let e = r
                .receive(cl, &mut source_of(&data), &FsCalls::inline())
                .unwrap_err();
            assert_eq!(
                e.code(),
                depot_api::Code::InvalidParameterException,
                "{what}: {e}"
            );
            drop(r);
            assert!(!staging.exists(), "{what}: staging file removed");
            assert_eq!(ino(&v.path), before_ino, "{what}: the same file");
            assert!(
                fs::read(&v.path).unwrap() == before,
                "{what}: volume untouched"
            );
        }
        // A client that goes away mid-stream.
        let mut r = replacement(&v);
        let mut sent = 0;
        let e = r
            .receive(
                tar.len() as u64,
                &mut |buf: &mut [u8]| {
                    if sent > (1 << 20) + 2000 {
                        return Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"));
                    }
                    let n = buf.len().min(1000);
                    buf[..n].copy_from_slice(&tar[sent..sent + n]);
                    sent += n;
                    Ok(n)
                },
                &FsCalls::inline(),
            )
            .unwrap_err();
        assert!(matches!(e, OvfError::Source(_)), "{e}");
        drop(r);
        assert!(!staging.exists());
        // Larger than the volume's data area: refused at the commit.
        let small = 16384;
        let mut r = match prepare(&v.path, VOL_SIZE, &staging, 512).unwrap() {
            Plan::Replace(r) => *r,
            Plan::Copy { reason } => panic!("{reason}"),
        };
        r.volume_size = small;
        r.receive(tar.len() as u64, &mut source_of(&tar), &FsCalls::inline())
            .unwrap();
        let e = r.commit().unwrap_err();
        assert!(matches!(e, OvfError::TooLarge { .. }), "{e}");
        assert!(!staging.exists());
        assert!(fs::read(&v.path).unwrap() == before);
        assert_eq!(
            verify(&v.path, VOL_SIZE).unwrap(),
            StoreState::Valid { trailer: t }
        );
    }

    /// A crash (here: the process forgets the upload) anywhere before the
    /// rename leaves the previous store exactly as it was, and a staging
    /// file that the next upload's discard_stale_staging removes; even one
    /// already sealed with a Valid trailer is never taken for the store.
    #[test]
    fn a_crash_before_the_rename_leaves_the_previous_store() {
        let v = volume(VOL_SIZE);
        let (old, _) = engine_tar(2);
        let t = upload(&v, &old).unwrap().trailer;
        let before = fs::read(&v.path).unwrap();
        let staging = staging_path(&v.path);
        let (new, _) = big_engine_tar(2 << 20);

        // Mid-stream: half the body in the staging file.
        let mut r = replacement(&v);
        let half = &new[..new.len() / 2];
        let e = r
            .receive(new.len() as u64, &mut source_of(half), &FsCalls::inline())
            .unwrap_err();
        assert!(matches!(e, OvfError::Truncated { .. }), "{e}");
        std::mem::forget(r);
        assert!(fs::metadata(&staging).unwrap().len() >= 1 << 20);
        assert!(fs::read(&v.path).unwrap() == before);
        assert_eq!(
            verify(&v.path, VOL_SIZE).unwrap(),
            StoreState::Valid { trailer: t.clone() }
        );
        assert!(matches!(
            prepare(&v.path, VOL_SIZE, &staging, 512),
            Err(OvfError::Busy { .. })
        ));
        assert!(store::discard_stale_staging(&staging).unwrap());

        // Sealed but not renamed: what a crash between the fsync of the new
        // file and the rename leaves.
        let mut r = replacement(&v);
        r.receive(new.len() as u64, &mut source_of(&new), &FsCalls::inline())
            .unwrap();
        let file = Arc::try_unwrap(r.file.take().unwrap()).unwrap();
        file.set_len(VOL_SIZE).unwrap();
        let sealed = Trailer {
            state: TrailerState::Valid,
            generation: t.generation + 1,
            size: new.len() as u64,
            sha256: Sha256::digest(&new).into(),
            updated: unix_now(),
        };
        write_trailer(&file, VOL_SIZE - 4096, &sealed).unwrap();
        sync_and_close(file).unwrap();
        std::mem::forget(r);
        assert_eq!(
            verify(&staging, VOL_SIZE).unwrap(),
            StoreState::Valid { trailer: sealed }
        );
        assert!(
            fs::read(&v.path).unwrap() == before,
            "the volume is the old store"
        );
        assert_eq!(
            verify(&v.path, VOL_SIZE).unwrap(),
            StoreState::Valid { trailer: t.clone() }
        );
        assert!(store::discard_stale_staging(&staging).unwrap());
        let t3 = upload(&v, &new).unwrap().trailer;
        assert_eq!(t3.generation, t.generation + 1);
    }

    #[test]
    fn volumes_that_cannot_be_swapped_are_copied() {
        let v = volume(VOL_SIZE);
        let staging = staging_path(&v.path);
        // Linked into another image (a template's volume).
        let link = v.path.with_file_name("linked");
        fs::hard_link(&v.path, &link).unwrap();
        match plan(&v) {
            Plan::Copy { reason } => assert!(reason.contains("2 links"), "{reason}"),
            Plan::Replace(_) => panic!("a linked file must not be replaced"),
        }
        assert!(!staging.exists(), "nothing created");
        fs::remove_file(&link).unwrap();
        // A file whose size is not the volume's.
        match prepare(&v.path, VOL_SIZE * 2, &staging, 512).unwrap() {
            Plan::Copy { reason } => assert!(reason.contains("bytes"), "{reason}"),
            Plan::Replace(_) => panic!("size mismatch"),
        }
        // Not a regular file.
        let dir = v.path.with_file_name("a-directory");
        fs::create_dir(&dir).unwrap();
        match prepare(&dir, VOL_SIZE, &staging_path(&dir), 512).unwrap() {
            Plan::Copy { reason } => assert!(reason.contains("regular"), "{reason}"),
            Plan::Replace(_) => panic!("a directory"),
        }
        assert!(!staging.exists());
        // Another upload's staging file: busy, and left alone.
        fs::write(&staging, b"another upload").unwrap();
        assert!(matches!(
            prepare(&v.path, VOL_SIZE, &staging, 512),
            Err(OvfError::Busy { .. })
        ));
        assert_eq!(fs::read(&staging).unwrap(), b"another upload");
    }

    #[test]
    fn a_preallocated_volume_stays_preallocated() {
        let v = volume(VOL_SIZE);
        assert!(fs::metadata(&v.path).unwrap().blocks() * 512 >= VOL_SIZE);
        let (tar, _) = engine_tar(3);
        upload(&v, &tar).unwrap();
        let meta = fs::metadata(&v.path).unwrap();
        assert_eq!(meta.len(), VOL_SIZE);
        assert!(meta.blocks() * 512 >= VOL_SIZE, "{} blocks", meta.blocks());
        assert!(read_all(&v.path, tar.len() as u64) == tar);
    }

    #[test]
    #[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
    fn the_owner_is_kept() {
        depot_testkit::require_root();
        let v = volume(VOL_SIZE);
        std::os::unix::fs::chown(&v.path, Some(36), Some(36)).unwrap();
        let (tar, _) = engine_tar(1);
        upload(&v, &tar).unwrap();
        let meta = fs::metadata(&v.path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (36, 36));
        assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    }

    #[test]
    fn local_file_systems_are_recognised() {
        let v = volume(8192);
        let f = File::open(&v.path).unwrap();
        // The test's temporary directory is on ext4, xfs, btrfs or tmpfs on
        // every machine depot is tested on.
        assert!(is_local(&f));
    }
}
