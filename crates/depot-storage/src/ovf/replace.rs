//! The replace strategy of an OVF_STORE upload, for a volume that is a
//! file of its own on a file domain's mount (docs/formats.md, "Upload and
//! commit"):
//!
//! 1. [`prepare`]: `<vol>.ovf-upload` is created next to the volume with
//!    `O_DIRECT` (`O_EXCL`: an existing one is another upload,
//!    [`OvfError::Busy`]; mode 0600; the volume's owner);
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
//! Every call is made in the mount's helper processes ([`MountFs`]): the
//! staging file is a streamed write on a helper of its own (a deadline per
//! 1 MiB write; its close reports the errors of fsync and close), the rest
//! single calls with the mount's deadline. A server that stops answering
//! fails the upload with 2002 naming the mount; no depotd thread waits in
//! the mount.
//!
//! A volume that cannot be swapped this way (not on a mount, not a regular
//! file, linked into other images, a size that is not the volume's, an
//! owner depot cannot give a new file) gets [`Plan::Copy`] with the reason,
//! before any byte of the body is read; the caller then uses
//! [`store::stage_upload`] and [`store::commit`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use depot_os::direct::AlignedBuf;
use depot_os::fsproc::{FileKind, OpenWrite};

use super::store::{
    self, checked_trailer_offset, next_generation, trailer_block, unix_now, volume_err, DirectFile,
};
use super::trailer::{Trailer, TrailerState, TRAILER_SIZE};
use super::upload::{self, Received, ALIGN};
use super::{OvfError, StoreFile};
use crate::mount_fs::{MountFs, MountTrouble, MountWrite};

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
    fs: MountFs,
    volume: PathBuf,
    volume_size: u64,
    staging: PathBuf,
    /// The staging file, open with `O_DIRECT` for writing on a helper.
    stream: Option<MountWrite>,
    /// The volume file's identity and mode when prepared.
    dev: u64,
    ino: u64,
    mode: u32,
    preallocated: bool,
    /// Whether the old file is held open across the rename (see
    /// [`Replacement::hold_old_file`]).
    hold_old: bool,
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

/// Decides how an upload to `volume` goes, and for [`Plan::Replace`]
/// creates the staging file. `volume_size` is the size the volume has (its
/// capacity); `block_size` the domain's; `preallocated` whether the volume
/// file has all its blocks allocated (the new file gets them too). The
/// volume is looked at without following a symlink (the helpers'
/// confinement: a symlink there is refused, 254).
pub fn prepare(
    volume: &StoreFile,
    volume_size: u64,
    block_size: usize,
    preallocated: bool,
) -> Result<Plan, OvfError> {
    let copy = |reason: String| Ok(Plan::Copy { reason });
    let StoreFile::Mount { fs, path } = volume else {
        return copy("not a file on a mount (a block domain's LV)".into());
    };
    let volume_path = path.as_path();
    let meta = fs.stat(volume_path).map_err(|source| OvfError::Read {
        op: "stat OVF_STORE volume",
        path: volume_path.to_owned(),
        source,
    })?;
    if meta.kind != FileKind::File {
        return copy("not a regular file".into());
    }
    if meta.nlink != 1 {
        return copy(format!("the file has {} links", meta.nlink));
    }
    if meta.size != volume_size {
        return copy(format!(
            "the file is {} bytes, the volume {volume_size}",
            meta.size
        ));
    }
    let staging = store::staging_path(volume_path);
    let open = OpenWrite {
        create: true,
        exclusive: true,
        mode: 0o600,
        direct: true,
        ..OpenWrite::default()
    };
    let stream = fs
        .open_write(&staging, open, fs.pool().timeout())
        .map_err(|source| store::create_err(&staging, source))?;
    // From here on, dropping `r` removes the staging file.
    let r = Replacement {
        fs: fs.clone(),
        volume: volume_path.to_owned(),
        volume_size,
        staging,
        stream: Some(stream),
        dev: meta.dev,
        ino: meta.ino,
        mode: meta.mode & 0o7777,
        preallocated,
        hold_old: false,
        received: None,
        renamed: false,
    };
    let mine = fs.stat(&r.staging).map_err(|source| OvfError::Read {
        op: "stat staging file",
        path: r.staging.clone(),
        source,
    })?;
    if (mine.uid, mine.gid) != (meta.uid, meta.gid) {
        match fs.chown(&r.staging, meta.uid, meta.gid) {
            Ok(()) => {}
            // A mount in trouble is that, not a reason to copy.
            Err(source) if MountTrouble::of(&source).is_some() => {
                return Err(OvfError::Write {
                    op: "chown staging file",
                    path: r.staging.clone(),
                    source,
                })
            }
            Err(e) => {
                return copy(format!(
                    "cannot give a new file the volume's owner {}:{}: {e}",
                    meta.uid, meta.gid
                ))
            }
        }
    }
    // Both files must take direct I/O at an alignment the 4096-byte padded
    // writes satisfy.
    for p in [&r.staging, &r.volume] {
        DirectFile::Mount {
            fs: fs.clone(),
            path: p.clone(),
        }
        .alignment(block_size)?;
    }
    Ok(Plan::Replace(Box::new(r)))
}

impl Replacement {
    /// Holds the old file open (on a helper) across the rename and closes
    /// it afterwards on a thread of its own, so that freeing its blocks
    /// (tens of milliseconds for 100 MiB on ext4) is not part of the
    /// upload's answer. Only where a file renamed over while open stays
    /// whole until closed and the rename stays one step: a local file
    /// system (an NFS client "silly-renames" an open file instead).
    pub fn hold_old_file(&mut self, hold: bool) {
        self.hold_old = hold;
    }

    /// The old file, opened to be held across the rename, if asked
    /// ([`hold_old_file`](Self::hold_old_file)) and it can be; a mount in
    /// trouble fails the commit.
    fn hold_old_now(&self) -> Result<Option<MountWrite>, OvfError> {
        if !self.hold_old {
            return Ok(None);
        }
        // Opened for writing only because that is the stream there is;
        // nothing is written.
        let fs = &self.fs;
        match fs.open_write(&self.volume, OpenWrite::default(), fs.pool().timeout()) {
            Ok(w) => Ok(Some(w)),
            Err(source) if MountTrouble::of(&source).is_some() => Err(OvfError::Write {
                op: "hold the old OVF_STORE file",
                path: self.volume.clone(),
                source,
            }),
            Err(e) => {
                tracing::debug!(volume = %self.volume.display(), error = %e,
                    "the old OVF_STORE file is not held across the rename");
                Ok(None)
            }
        }
    }

    /// Receives the body into the staging file (see [`upload::receive`]
    /// for `source`), each 1 MiB write a step of a helper's stream with the
    /// mount's deadline.
    ///
    /// Two streams on the file take the writes in turn, each driven by a
    /// thread of its own: while one helper writes a piece to the storage,
    /// the next piece is handed to the other (copied into the buffer its
    /// stream shares with it; a round trip through one helper, hand-over
    /// and write in series, is slower than the writes before helpers).
    /// The pieces do not overlap; the first stream's fsync at the commit
    /// covers what both wrote. The second stream is taken only if a
    /// helper of the mount is free: uploads never wait for one another's
    /// helpers (with `fsproc_helpers_per_mount` = 1, or more uploads than
    /// helpers, an upload goes on one stream).
    pub fn receive(
        &mut self,
        content_length: u64,
        source: &mut dyn FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> Result<(), OvfError> {
        let first = self
            .stream
            .as_mut()
            .ok_or_else(|| OvfError::Pipeline("the staging file is closed".into()))?;
        let staging = &self.staging;
        let open = OpenWrite {
            direct: true,
            ..OpenWrite::default()
        };
        let second = self
            .fs
            .try_open_write(staging, open, self.fs.pool().timeout())
            .map_err(|source| OvfError::Write {
                op: "open staging file",
                path: staging.clone(),
                source,
            })?;
        let received = match second {
            Some(mut second) => {
                let received = receive_on(content_length, source, [first, &mut second], staging)?;
                second.close(false).map_err(|source| OvfError::Write {
                    op: "close staging file",
                    path: staging.clone(),
                    source,
                })?;
                received
            }
            None => receive_on(content_length, source, [first], staging)?,
        };
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
        let volume = self.volume.clone();
        let toff = checked_trailer_offset(&volume, self.volume_size)?;
        if received.size > toff {
            return Err(OvfError::TooLarge {
                path: volume,
                size: received.size,
                max: toff,
            });
        }
        let fs = self.fs.clone();
        let now = fs.stat(&volume).map_err(|source| OvfError::Read {
            op: "stat OVF_STORE volume",
            path: volume.clone(),
            source,
        })?;
        if (now.dev, now.ino) != (self.dev, self.ino) {
            return Err(volume_err(
                &volume,
                "the volume file was replaced while the upload was received",
            ));
        }
        let old = DirectFile::Mount {
            fs: fs.clone(),
            path: volume.clone(),
        };
        let generation = next_generation(&old, toff)?;
        let mut stream = self
            .stream
            .take()
            .ok_or_else(|| OvfError::Pipeline("the staging file is closed".into()))?;
        let write_err = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| OvfError::Write { op, path, source }
        };
        let staging = self.staging.clone();
        if self.preallocated {
            fs.fallocate(&staging, 0, self.volume_size)
                .map_err(write_err("allocate the new OVF_STORE file", &staging))?;
        } else {
            fs.truncate(&staging, self.volume_size)
                .map_err(write_err("size the new OVF_STORE file", &staging))?;
        }
        let trailer = Trailer {
            state: TrailerState::Valid,
            generation,
            size: received.size,
            sha256: received.sha256,
            updated: unix_now(),
        };
        stream
            .write(toff, &trailer_block(&trailer)?[..TRAILER_SIZE])
            .map_err(write_err("write the OVF_STORE trailer", &staging))?;
        fs.chmod(&staging, self.mode).map_err(write_err(
            "set the mode of the new OVF_STORE file",
            &staging,
        ))?;
        // Data, size, trailer and mode durable before the rename can be.
        stream
            .close(true)
            .map_err(write_err("fsync the new OVF_STORE file", &staging))?;
        let seal = t0.elapsed();

        let t1 = Instant::now();
        let old_file = self.hold_old_now()?;
        fs.rename(&staging, &volume).map_err(write_err(
            "rename the new OVF_STORE file over the volume",
            &staging,
        ))?;
        self.renamed = true;
        if let Some(dir) = volume.parent() {
            fs.fsync_dir(dir)
                .map_err(write_err("fsync the volume's directory", dir))?;
        }
        let rename = t1.elapsed();
        if let Some(old) = old_file {
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

/// Closes the old file's stream on a short-lived thread (its helper frees
/// the blocks, with the step deadline); inline if no thread can start.
fn close_later(old: MountWrite) {
    let spawned = std::thread::Builder::new()
        .name("ovf-old-store".into())
        .spawn(move || {
            if let Err(e) = old.close(false) {
                tracing::warn!(error = %e, "closing the old OVF_STORE file");
            }
        });
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "closed the old OVF_STORE file inline");
    }
}

/// Receives the body through `streams` taking the pieces in turn, each
/// driven by a writer thread of its own (see [`Replacement::receive`]).
fn receive_on<const N: usize>(
    content_length: u64,
    source: &mut dyn FnMut(&mut [u8]) -> io::Result<usize>,
    streams: [&mut MountWrite; N],
    staging: &Path,
) -> Result<Received, OvfError> {
    std::thread::scope(|scope| {
        let mut lanes = Lanes::start(scope, streams, staging)?;
        let received = {
            let lanes = &mut lanes;
            upload::receive(content_length, source, &mut move |buf, len, offset| {
                lanes.submit(buf, len.div_ceil(ALIGN) * ALIGN, offset)
            })
        };
        // The write still in flight, also after a failure (its helper
        // must be done with the buffer).
        let last = lanes.finish();
        let received = received?;
        last?;
        Ok(received)
    })
}

/// A write handed to a lane: the buffer, how many bytes of it (padded),
/// and where.
type Job = (AlignedBuf, usize, u64);

/// The writer threads of [`Replacement::receive`], each with its stream,
/// taking the pieces in turn; at most one piece in flight per lane.
struct Lanes {
    jobs: Vec<mpsc::SyncSender<Job>>,
    done: Vec<mpsc::Receiver<(AlignedBuf, Result<(), OvfError>)>>,
    /// Handed back for the first piece (the others get the buffer of the
    /// piece before).
    spare: Option<AlignedBuf>,
    /// The lane of the next piece, and of the piece in flight before it.
    next: usize,
    in_flight: Option<usize>,
}

impl Lanes {
    fn start<'scope, 'env, const N: usize>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        streams: [&'scope mut MountWrite; N],
        staging: &'scope Path,
    ) -> Result<Lanes, OvfError> {
        let mut lanes = Lanes {
            jobs: Vec::new(),
            done: Vec::new(),
            spare: Some(AlignedBuf::new(upload::CHUNK, ALIGN)?),
            next: 0,
            in_flight: None,
        };
        for (i, stream) in streams.into_iter().enumerate() {
            let (job_tx, job_rx) = mpsc::sync_channel::<Job>(1);
            let (done_tx, done_rx) = mpsc::sync_channel(1);
            std::thread::Builder::new()
                .name(format!("ovf-write-{i}"))
                .spawn_scoped(scope, move || {
                    for (buf, len, offset) in job_rx {
                        let written =
                            stream
                                .write(offset, &buf[..len])
                                .map(drop)
                                .map_err(|source| OvfError::Write {
                                    op: "write staging file",
                                    path: staging.to_owned(),
                                    source,
                                });
                        if done_tx.send((buf, written)).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| OvfError::Pipeline(format!("start a writer thread: {e}")))?;
            lanes.jobs.push(job_tx);
            lanes.done.push(done_rx);
        }
        Ok(lanes)
    }

    fn stopped() -> OvfError {
        OvfError::Pipeline("a writer thread of the staging file stopped".into())
    }

    /// Hands a piece to the next lane; returns a buffer whose write is
    /// done (the piece before, once written), or that write's error.
    fn submit(&mut self, buf: AlignedBuf, len: usize, offset: u64) -> Result<AlignedBuf, OvfError> {
        let lane = self.next;
        self.jobs[lane]
            .send((buf, len, offset))
            .map_err(|_| Lanes::stopped())?;
        self.next = (lane + 1) % self.jobs.len();
        match self.in_flight.replace(lane) {
            None => self.spare.take().ok_or_else(Lanes::stopped),
            Some(before) => {
                let (buf, written) = self.done[before].recv().map_err(|_| Lanes::stopped())?;
                written.map(|()| buf)
            }
        }
    }

    /// Waits for the piece in flight; the lanes' threads end when this is
    /// dropped.
    fn finish(&mut self) -> Result<(), OvfError> {
        match self.in_flight.take() {
            None => Ok(()),
            Some(lane) => {
                let (_, written) = self.done[lane].recv().map_err(|_| Lanes::stopped())?;
                written
            }
        }
    }
}

impl Drop for Replacement {
    fn drop(&mut self) {
        if !self.renamed {
            // Closed (in its helper) before it is removed.
            drop(self.stream.take());
            store::remove_staging(&StoreFile::mount(&self.fs, self.staging.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovf::store::{read_range, staging_path, state, verify, write_trailer, StoreState};
    use crate::ovf::tests_common::*;
    use depot_os::direct::{open_direct, sync_and_close};
    use sha2::{Digest, Sha256};
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

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

    /// `path` on a "mount" (the volume's directory) through MountFs, whose
    /// helpers' code runs in process here.
    fn on_mount(v: &Vol, path: &Path) -> StoreFile {
        let fs = MountFs::in_process(v._dir.path(), Duration::from_secs(30));
        StoreFile::mount(&fs, path)
    }

    /// What the engine passes: whether the volume file is fully allocated.
    fn allocated(path: &Path) -> bool {
        let m = fs::metadata(path).unwrap();
        m.blocks() * 512 >= m.len()
    }

    fn plan(v: &Vol) -> Plan {
        prepare(&on_mount(v, &v.path), VOL_SIZE, 512, allocated(&v.path)).unwrap()
    }

    fn replacement(v: &Vol) -> Replacement {
        match plan(v) {
            Plan::Replace(r) => *r,
            Plan::Copy { reason } => panic!("copy: {reason}"),
        }
    }

    fn upload(v: &Vol, tar: &[u8]) -> Result<Committed, OvfError> {
        let mut r = replacement(v);
        r.receive(tar.len() as u64, &mut source_of(tar))?;
        r.commit()
    }

    fn read_all(path: &Path, len: u64) -> Vec<u8> {
        let mut out = Vec::new();
        read_range(&local(path), 0, len, |b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        out
    }

    fn local(path: &Path) -> StoreFile {
        StoreFile::local(path.to_owned())
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
        r.receive(tar.len() as u64, &mut source_of(&tar)).unwrap();
        // Received, not committed: the volume is as it was.
        assert_eq!(ino(&v.path), before);
        assert_eq!(
            state(&local(&v.path), VOL_SIZE).unwrap(),
            StoreState::Unknown
        );
        let c = r.commit().unwrap();
        assert!(!staging.exists(), "the staging file became the volume");
        assert_ne!(ino(&v.path), before, "a new file");
        let t = c.trailer;
        assert_eq!(t.state, TrailerState::Valid);
        assert_eq!(t.generation, 1);
        assert_eq!(t.size, tar.len() as u64);
        assert_eq!(t.sha256, <[u8; 32]>::from(Sha256::digest(&tar)));
        assert_eq!(
            verify(&local(&v.path), VOL_SIZE).unwrap(),
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
            verify(&local(&v.path), VOL_SIZE).unwrap(),
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
            let e = r.receive(cl, &mut source_of(&data)).unwrap_err();
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
            .receive(tar.len() as u64, &mut |buf: &mut [u8]| {
                if sent > (1 << 20) + 2000 {
                    return Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"));
                }
                let n = buf.len().min(1000);
                buf[..n].copy_from_slice(&tar[sent..sent + n]);
                sent += n;
                Ok(n)
            })
            .unwrap_err();
        assert!(matches!(e, OvfError::Source(_)), "{e}");
        drop(r);
        assert!(!staging.exists());
        // Larger than the volume's data area: refused at the commit.
        let small = 16384;
        let mut r = match prepare(&on_mount(&v, &v.path), VOL_SIZE, 512, true).unwrap() {
            Plan::Replace(r) => *r,
            Plan::Copy { reason } => panic!("{reason}"),
        };
        r.volume_size = small;
        r.receive(tar.len() as u64, &mut source_of(&tar)).unwrap();
        let e = r.commit().unwrap_err();
        assert!(matches!(e, OvfError::TooLarge { .. }), "{e}");
        assert!(!staging.exists());
        assert!(fs::read(&v.path).unwrap() == before);
        assert_eq!(
            verify(&local(&v.path), VOL_SIZE).unwrap(),
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
            .receive(new.len() as u64, &mut source_of(half))
            .unwrap_err();
        assert!(matches!(e, OvfError::Truncated { .. }), "{e}");
        std::mem::forget(r);
        assert!(fs::metadata(&staging).unwrap().len() >= 1 << 20);
        assert!(fs::read(&v.path).unwrap() == before);
        assert_eq!(
            verify(&local(&v.path), VOL_SIZE).unwrap(),
            StoreState::Valid { trailer: t.clone() }
        );
        assert!(matches!(
            prepare(&on_mount(&v, &v.path), VOL_SIZE, 512, true),
            Err(OvfError::Busy { .. })
        ));
        assert!(store::discard_stale_staging(&on_mount(&v, &staging)).unwrap());

        // Sealed but not renamed: what a crash between the fsync of the new
        // file and the rename leaves.
        let mut r = replacement(&v);
        r.receive(new.len() as u64, &mut source_of(&new)).unwrap();
        drop(r.stream.take());
        let file = open_direct(&staging, true).unwrap();
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
            verify(&local(&staging), VOL_SIZE).unwrap(),
            StoreState::Valid { trailer: sealed }
        );
        assert!(
            fs::read(&v.path).unwrap() == before,
            "the volume is the old store"
        );
        assert_eq!(
            verify(&local(&v.path), VOL_SIZE).unwrap(),
            StoreState::Valid { trailer: t.clone() }
        );
        assert!(store::discard_stale_staging(&on_mount(&v, &staging)).unwrap());
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
        match prepare(&on_mount(&v, &v.path), VOL_SIZE * 2, 512, true).unwrap() {
            Plan::Copy { reason } => assert!(reason.contains("bytes"), "{reason}"),
            Plan::Replace(_) => panic!("size mismatch"),
        }
        // Not a regular file.
        let dir = v.path.with_file_name("a-directory");
        fs::create_dir(&dir).unwrap();
        match prepare(&on_mount(&v, &dir), VOL_SIZE, 512, true).unwrap() {
            Plan::Copy { reason } => assert!(reason.contains("regular"), "{reason}"),
            Plan::Replace(_) => panic!("a directory"),
        }
        assert!(!staging.exists());
        // Another upload's staging file: busy, and left alone.
        fs::write(&staging, b"another upload").unwrap();
        assert!(matches!(
            prepare(&on_mount(&v, &v.path), VOL_SIZE, 512, true),
            Err(OvfError::Busy { .. })
        ));
        assert_eq!(fs::read(&staging).unwrap(), b"another upload");
        // Not on a mount (a block domain's LV): copied, nothing created.
        fs::remove_file(&staging).unwrap();
        match prepare(&local(&v.path), VOL_SIZE, 512, true).unwrap() {
            Plan::Copy { reason } => assert!(reason.contains("mount"), "{reason}"),
            Plan::Replace(_) => panic!("local data is never replaced"),
        }
        assert!(!staging.exists());
    }

    /// With the old file held across the rename (LOCALFS), the swap is the
    /// same: the new store, durable, the old one gone once closed.
    #[test]
    fn holding_the_old_file_across_the_rename() {
        let v = sparse_volume(VOL_SIZE);
        let (old, _) = engine_tar(2);
        upload(&v, &old).unwrap();
        let (tar, _) = big_engine_tar(2 << 20);
        let mut r = replacement(&v);
        r.hold_old_file(true);
        r.receive(tar.len() as u64, &mut source_of(&tar)).unwrap();
        let c = r.commit().unwrap();
        assert_eq!(c.trailer.generation, 2);
        assert!(read_all(&v.path, tar.len() as u64) == tar);
        assert_eq!(
            verify(&local(&v.path), VOL_SIZE).unwrap(),
            StoreState::Valid { trailer: c.trailer }
        );
        assert!(!staging_path(&v.path).exists());
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
}
