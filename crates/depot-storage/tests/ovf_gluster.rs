//! OVF_STORE uploads and reads through `Storage` on a real GlusterFS domain
//! whose brick freezes (`SIGSTOP`) in the middle: every file-system call of
//! the OVF path is made in the mount's helper processes, so the verb fails
//! within a bound with 2001/2002 naming the mount (never hangs, never 358),
//! no thread of this process is left inside the mount, and after the thaw
//! the same upload works. Both upload strategies (a new file renamed over
//! the volume; staged and copied into a linked volume) and the streamed
//! read. Root tier.
//!
//! The brick is frozen from inside the verb (the upload's body source, the
//! read's sink), after the steps before it that are not the OVF path's
//! (volume info, domain lookup) have run: what is tested is that the OVF
//! path's own calls do not hang.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use depot_api::storage::{
    AllocType, DiskType, DomainClass, DomainType, ImgUuid, SdUuid, VolUuid, VolumeFormat,
};
use depot_api::types::Uuid;
use depot_api::Code;
use depot_os::CommandRunner;
use depot_storage::connection::ConnectionParams;
use depot_storage::domain_spec::CreateDomain;
use depot_storage::volume_store::CreateVolume;
use depot_storage::{Storage, StorageConfig, StorageError};
use depot_testkit::gluster::{FrozenBrick, Gluster};

/// The deadline of one helper call.
const IO: Duration = Duration::from_secs(3);
/// How long a verb may take on a frozen brick: a few calls that each miss
/// their deadline (the failing one, the staging file's removal), with room
/// for a loaded machine. On the code before, the upload's worker thread
/// stayed in the mount.
const BOUND: Duration = Duration::from_secs(30);
/// GlusterFS is slow to come back after a thaw on a shared machine.
const RECOVER: Duration = Duration::from_secs(120);
const MIB: u64 = 1024 * 1024;

/// The threads of this test process waiting inside a file system.
fn threads_in_the_storage() -> Vec<String> {
    depot_testkit::process::threads_in_the_storage(std::process::id())
}

/// An engine-shaped tar of about `mib` MiB: info.json, OVFs of 64 KiB,
/// metadata.json, the end blocks.
fn engine_tar(mib: usize, tag: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, text: &str| {
        let mut h = tar::Header::new_ustar();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, text.as_bytes()).unwrap();
    };
    add("info.json", r#"{"Last Updated": "now"}"#);
    let pad = "x".repeat(64 * 1024);
    for _ in 0..mib * 16 {
        let ovf = format!(
            concat!(
                r#"<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" "#,
                r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">"#,
                r#"<Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type">"#,
                r#"<Name>{tag}</Name><Description>{pad}</Description>"#,
                r#"</Content></ovf:Envelope>"#
            ),
            tag = tag,
            pad = pad
        );
        add(&format!("{}.ovf", Uuid::new_v4()), &ovf);
    }
    add("metadata.json", "{}");
    b.into_inner().unwrap()
}

/// A body source over `data`, in pieces like a network's; `on_first` runs
/// before the first piece is handed over.
fn source<'a>(
    data: &'a [u8],
    mut on_first: impl FnMut() + 'a,
) -> impl FnMut(&mut [u8]) -> std::io::Result<usize> + 'a {
    let mut pos = 0;
    move |buf: &mut [u8]| {
        if pos == 0 {
            on_first();
        }
        let n = buf.len().min(data.len() - pos).min(65536);
        buf[..n].copy_from_slice(&data[pos..pos + n]);
        pos += n;
        Ok(n)
    }
}

/// Lazily unmounts what `Storage` mounted, before GlusterFS goes.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let t = self.0.display().to_string();
        if let Err(e) = support::run("umount", &["-l", "--", &t], Duration::from_secs(30)) {
            eprintln!("umount {t}: {e}");
        }
    }
}

struct Setup {
    s: Storage,
    sd: SdUuid,
    img: ImgUuid,
    vol: VolUuid,
    /// The GlusterFS mount `Storage` made.
    mount: PathBuf,
    /// The OVF_STORE volume's file.
    volume: PathBuf,
    _unmount: Unmount,
    _repo: tempfile::TempDir,
}

impl Setup {
    fn new(g: &Gluster) -> Setup {
        let repo = tempfile::tempdir().unwrap();
        let s = Storage::new(
            StorageConfig {
                monitor_interval: Duration::from_secs(10),
                ..support::storage_config(repo.path(), IO)
            },
            CommandRunner::new(),
        );
        let params = ConnectionParams {
            id: Uuid::new_v4().to_string(),
            connection: g.spec(),
            vfs_type: Some("glusterfs".into()),
            mnt_options: Some("log-level=WARNING".into()),
            ..Default::default()
        };
        let st = s.connect_storage_server(DomainType::GlusterFs, &[params]);
        assert_eq!(st[0].status, 0, "{st:?}");
        let mount = s
            .config()
            .repository
            .join("mnt/glusterSD")
            .join(format!("{}:_vol", g.host()));
        let unmount = Unmount(mount.clone());
        let sd = SdUuid(Uuid::new_v4());
        s.create_domain(
            CreateDomain {
                sd,
                domain_type: DomainType::GlusterFs,
                class: DomainClass::Data,
                description: "ovf on gluster".into(),
                remote_path: g.spec(),
                block_size: None,
                max_hosts: 250,
                backup: false,
            },
            5,
        )
        .unwrap();
        let (img, vol) = (ImgUuid(Uuid::new_v4()), VolUuid(Uuid::new_v4()));
        s.create_volume(
            sd,
            img,
            vol,
            CreateVolume {
                capacity: 16 * MIB,
                format: VolumeFormat::Raw,
                alloc: AllocType::Sparse,
                disk_type: DiskType::Ovfs,
                description: "OVF_STORE".into(),
                parent: VolUuid::BLANK,
                legal: true,
                sequence: 0,
            },
        )
        .unwrap();
        let volume = s.volume_info(sd, img, vol).unwrap().path;
        assert!(volume.starts_with(&mount), "{}", volume.display());
        Setup {
            s,
            sd,
            img,
            vol,
            mount,
            volume,
            _unmount: unmount,
            _repo: repo,
        }
    }

    fn upload(
        &self,
        tar: &[u8],
        on_first: impl FnMut(),
    ) -> Result<depot_storage::UploadDone, StorageError> {
        self.s.ovf_upload(
            self.sd,
            self.img,
            self.vol,
            tar.len() as u64,
            &mut source(tar, on_first),
        )
    }

    /// The whole tar of the store, its bytes handed to `sink` piece by
    /// piece.
    fn read(&self, len: u64, mut sink: impl FnMut(&[u8])) -> Result<(), StorageError> {
        let r = self
            .s
            .ovf_check_readable(self.sd, self.img, self.vol, 0, len - 1)?;
        self.s.ovf_read(
            self.sd,
            self.img,
            self.vol,
            0,
            len,
            r.generation,
            &mut |b| {
                sink(b);
                Ok(())
            },
        )
    }

    /// An upload of `tar` that works once GlusterFS answers again (the
    /// first calls after a thaw may still fail while it reconnects).
    fn upload_after_thaw(&self, tar: &[u8]) -> depot_storage::UploadDone {
        let end = Instant::now() + RECOVER;
        loop {
            match self.upload(tar, || {}) {
                Ok(done) => return done,
                Err(e) if Instant::now() < end => {
                    eprintln!("after the thaw: {e}");
                    thread::sleep(Duration::from_secs(1));
                }
                Err(e) => panic!("the upload still fails {RECOVER:?} after the thaw: {e}"),
            }
        }
    }

    /// The verb's error on the frozen brick: within the bound, 2001/2002
    /// naming the mount, no thread of this process in the mount.
    fn check_failure(
        &self,
        what: &str,
        r: Result<(), StorageError>,
        took: Duration,
        codes: &[Code],
    ) {
        let e = r.expect_err(what);
        eprintln!("{what}: {took:?}: {e}");
        assert!(took < BOUND, "{what}: {took:?}: {e}");
        assert!(codes.contains(&e.code), "{what}: {e}");
        assert_ne!(e.code, Code::StorageDomainDoesNotExist, "{what}: {e}");
        let mount = self.mount.display().to_string();
        assert!(e.to_string().contains(&mount), "{what}: names {mount}: {e}");
        let stuck = threads_in_the_storage();
        assert!(stuck.is_empty(), "{what}: threads in the mount: {stuck:?}");
    }
}

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn ovf_put_and_get_on_a_frozen_gluster_brick_fail_in_time_and_work_after_the_thaw() {
    depot_testkit::require_root();
    depot_testkit::require_program("glusterd");
    let g = Gluster::start().expect("start gluster");
    let t = Setup::new(&g);
    let tar = engine_tar(3, "first");
    let first = t.upload(&tar, || {}).unwrap();
    assert_eq!(first.generation, 1);

    // PUT, replace strategy: frozen once the body starts to arrive (the
    // staging file is open by then).
    let tar2 = engine_tar(3, "second");
    let mut frozen: Option<FrozenBrick> = None;
    let t0 = Instant::now();
    let r = t.upload(&tar2, || frozen = Some(g.freeze_brick().unwrap()));
    assert!(frozen.is_some(), "the body was read");
    t.check_failure(
        "PUT (replace) on a frozen brick",
        r.map(drop),
        t0.elapsed(),
        &[Code::MiscFileWriteException],
    );
    drop(frozen.take());
    let done = t.upload_after_thaw(&tar2);
    assert!(done.generation >= 2, "{done:?}");
    let mut got = Vec::new();
    t.read(tar2.len() as u64, |b| got.extend_from_slice(b))
        .unwrap();
    assert!(got == tar2, "the store is the second upload");

    // GET: frozen after the first piece was handed over.
    let t0 = Instant::now();
    let r = t.read(tar2.len() as u64, |_| {
        if frozen.is_none() {
            frozen = Some(g.freeze_brick().unwrap());
        }
    });
    assert!(frozen.is_some(), "a piece was read");
    t.check_failure(
        "GET on a frozen brick",
        r,
        t0.elapsed(),
        &[Code::MiscFileReadException],
    );
    drop(frozen.take());

    // PUT, copy strategy (the volume file is linked into another image,
    // so it cannot be replaced): staged, then copied into the volume.
    let done = t.upload_after_thaw(&tar);
    let link = t.volume.with_file_name("linked-elsewhere");
    fs::hard_link(&t.volume, &link).unwrap();
    let tar3 = engine_tar(3, "third");
    let t0 = Instant::now();
    let r = t.upload(&tar3, || frozen = Some(g.freeze_brick().unwrap()));
    t.check_failure(
        "PUT (copy) on a frozen brick",
        r.map(drop),
        t0.elapsed(),
        &[Code::MiscFileWriteException, Code::MiscFileReadException],
    );
    drop(frozen.take());
    let after = t.upload_after_thaw(&tar3);
    assert!(after.generation > done.generation, "{after:?} {done:?}");
    let mut got = Vec::new();
    t.read(tar3.len() as u64, |b| got.extend_from_slice(b))
        .unwrap();
    assert!(got == tar3, "the store is the third upload");
    assert_eq!(
        fs::metadata(&link).unwrap().len(),
        16 * MIB,
        "copied into the linked file, not replaced"
    );
    assert!(fs::read(&link).unwrap()[..tar3.len()] == tar3[..]);
    assert!(!Path::new(&format!("{}.ovf-upload", t.volume.display())).exists());
    drop(t);
    drop(g);
}
