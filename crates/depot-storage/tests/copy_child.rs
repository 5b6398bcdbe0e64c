//! The native copier and checksum in a child process
//! (depot_storage::copy::child), with the real helper binary: the same
//! data and checksum as the in-process copier, its errors with their
//! codes' kinds, abort, and (root tier, real GlusterFS with a frozen
//! brick) a copy stuck on the storage is aborted at once with no thread of
//! this process inside the mount.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use depot_os::confine::Beneath;
use depot_os::fsproc::HelperCommand;
use depot_storage::copy::child::{child_command, run_in_child, ChildDone, ChildJob};
use depot_storage::copy::{checksum_raw, ChecksumOptions, CopyError};
use depot_storage::volume_data::VolumeData;
use depot_testkit::gluster::Gluster;
use depot_testkit::process::threads_in_the_storage;

fn command() -> HelperCommand {
    child_command(&HelperCommand::new(env!(
        "CARGO_BIN_EXE_depot-storage-fsproc"
    )))
}

fn data(root: &Path, name: &str) -> VolumeData {
    VolumeData::File(Beneath::new(root, name))
}

/// 8 MiB of varied data with a hole in the middle.
fn source(path: &Path) {
    let mut bytes: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    bytes[2 << 20..4 << 20].fill(0);
    fs::write(path, bytes).unwrap();
}

fn copy_job<'a>(src: &'a VolumeData, dst: &'a VolumeData, verify: bool) -> ChildJob<'a> {
    ChildJob::Copy {
        src,
        dst,
        length: None,
        dst_is_zero: false,
        sparse: true,
        checksum: true,
        verify,
        journal: None,
    }
}

#[test]
fn a_copy_in_the_child_writes_the_data_and_its_checksum() {
    let t = tempfile::tempdir().unwrap();
    source(&t.path().join("src"));
    fs::write(t.path().join("dst"), vec![7u8; 8 << 20]).unwrap();
    let (src, dst) = (data(t.path(), "src"), data(t.path(), "dst"));
    let last = AtomicU64::new(0);
    let progress = |done: u64, total: u64| {
        assert!(done <= total && total == 8 << 20, "{done}/{total}");
        last.store(done, Ordering::SeqCst);
    };
    let done = run_in_child(&command(), &copy_job(&src, &dst, true), &progress, &|| {
        false
    })
    .expect("copy");
    let ChildDone::Copied(r) = done else {
        panic!("{done:?}")
    };
    assert_eq!(
        fs::read(t.path().join("dst")).unwrap(),
        fs::read(t.path().join("src")).unwrap()
    );
    assert!(r.verified, "{r:?}");
    assert_eq!(r.size, 8 << 20);
    assert_eq!(last.load(Ordering::SeqCst), 8 << 20);
    // The checksum the in-process code computes, and the child's own.
    let here = checksum_raw(&src, 8 << 20, &ChecksumOptions::default()).unwrap();
    assert_eq!(r.checksum.as_ref(), Some(&here));
    let job = ChildJob::Checksum {
        data: &dst,
        size: 8 << 20,
    };
    match run_in_child(&command(), &job, &|_, _| {}, &|| false).unwrap() {
        ChildDone::Checksum(h) => assert_eq!(h, here),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_child_s_errors_keep_their_kind() {
    let t = tempfile::tempdir().unwrap();
    source(&t.path().join("src"));
    fs::write(t.path().join("small"), vec![0u8; 1 << 20]).unwrap();
    let (src, small) = (data(t.path(), "src"), data(t.path(), "small"));
    let e = run_in_child(
        &command(),
        &copy_job(&src, &small, false),
        &|_, _| {},
        &|| false,
    )
    .unwrap_err();
    assert!(matches!(e, CopyError::DestinationTooSmall { .. }), "{e:?}");
    // A missing source: the OS error survives the process boundary.
    let missing = data(t.path(), "missing");
    let e = run_in_child(
        &command(),
        &copy_job(&missing, &small, false),
        &|_, _| {},
        &|| false,
    )
    .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e:?}");
    // The confinement rule holds in the child: a symlink is not followed.
    std::os::unix::fs::symlink(t.path().join("src"), t.path().join("link")).unwrap();
    let link = data(t.path(), "link");
    let e = run_in_child(
        &command(),
        &copy_job(&link, &small, false),
        &|_, _| {},
        &|| false,
    )
    .unwrap_err();
    assert!(e.to_string().contains("link"), "{e}");
    assert_eq!(
        fs::read(t.path().join("small")).unwrap(),
        vec![0u8; 1 << 20]
    );
}

#[test]
fn a_program_that_is_not_a_copier_child_is_an_error_not_a_hang() {
    let job_dir = tempfile::tempdir().unwrap();
    let d = data(job_dir.path(), "x");
    let job = ChildJob::Checksum { data: &d, size: 1 };
    let t0 = Instant::now();
    let e = run_in_child(&HelperCommand::new("/bin/true"), &job, &|_, _| {}, &|| {
        false
    })
    .unwrap_err();
    assert!(e.to_string().contains("without a report"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    let e = run_in_child(&HelperCommand::new("/bin/echo"), &job, &|_, _| {}, &|| {
        false
    })
    .unwrap_err();
    assert!(e.to_string().contains("unreadable line"), "{e}");
}

/// The copy reads from a GlusterFS mount whose brick is frozen: the child
/// hangs in the mount, the job's abort ends the call at once, and no
/// thread of this process is in the storage.
#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn a_copy_stuck_on_frozen_storage_is_aborted_at_once() {
    depot_testkit::require_root();
    depot_testkit::require_program("glusterd");
    let g = Gluster::start().expect("gluster");
    let mnt = tempfile::tempdir().unwrap();
    let mount = g.mount(mnt.path()).expect("mount");
    let local = tempfile::tempdir().unwrap();
    // Larger than any cache holds for long: 64 MiB, written through the
    // mount, then dropped from the page cache by the O_DIRECT reads.
    let bytes: Vec<u8> = (0..64u32 << 20).map(|i| (i % 253) as u8).collect();
    fs::write(mount.path().join("src"), &bytes).unwrap();
    fs::write(local.path().join("dst"), vec![0u8; 64 << 20]).unwrap();
    let (src, dst) = (data(mount.path(), "src"), data(local.path(), "dst"));

    let frozen = g.freeze_brick().expect("freeze");
    let started = Instant::now();
    let stop = AtomicBool::new(false);
    let abort_at = Duration::from_secs(3);
    let abort = || {
        if started.elapsed() >= abort_at {
            stop.store(true, Ordering::SeqCst);
        }
        stop.load(Ordering::SeqCst)
    };
    let checked = std::cell::Cell::new(false);
    let progress = |_: u64, _: u64| {};
    let watcher = std::thread::scope(|s| {
        let h = s.spawn(|| {
            // While the call runs: nothing of this process in the mount.
            std::thread::sleep(Duration::from_secs(2));
            threads_in_the_storage(std::process::id())
        });
        let r = run_in_child(&command(), &copy_job(&src, &dst, false), &progress, &abort);
        checked.set(true);
        (r, h.join().unwrap())
    });
    let (result, stuck) = watcher;
    let took = started.elapsed();
    assert!(checked.get());
    assert!(
        stuck.is_empty(),
        "threads of the test in the mount: {stuck:?}"
    );
    assert!(matches!(result, Err(CopyError::Aborted)), "{result:?}");
    assert!(
        took < abort_at + Duration::from_secs(2),
        "the abort took {took:?}"
    );
    frozen.thaw();
    drop(mount);
}
