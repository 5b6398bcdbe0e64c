//! The copier's unit tests.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::thread;

use super::chunk::Run;
use super::options::no_progress;
use super::reader::{split_runs, ZERO_GRAIN};
use super::*;
use crate::copy::blkhash::{BlkHash, BLOCK_SIZE};
use crate::copy::journal::Journal;
use crate::copy::testutil::python_blkhash;
use crate::copy::CopyError;
use std::cell::Cell;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

const MIB: u64 = 1024 * 1024;

/// Non-repeating bytes, fast even in a debug build.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap()
}

/// A sparse source: data pieces at the given (offset, len), holes
/// elsewhere, plus `zero_written` ranges written with zeros.
fn make_src(path: &Path, size: u64, data: &[(u64, u64)], zero_written: &[(u64, u64)]) {
    let f = rw(path);
    f.set_len(size).unwrap();
    for (i, &(off, len)) in data.iter().enumerate() {
        f.write_all_at(&noise(len as usize, i as u64 + 1), off)
            .unwrap();
    }
    for &(off, len) in zero_written {
        f.write_all_at(&vec![0u8; len as usize], off).unwrap();
    }
    f.sync_all().unwrap();
}

fn make_dst(path: &Path, size: u64) {
    rw(path).set_len(size).unwrap();
}

/// First `size` bytes equal.
fn same(a: &Path, b: &Path, size: u64) -> bool {
    let mut fa = File::open(a).unwrap();
    let mut fb = File::open(b).unwrap();
    let mut ba = vec![0u8; MIB as usize];
    let mut bb = vec![0u8; MIB as usize];
    let mut left = size;
    while left > 0 {
        let n = left.min(MIB) as usize;
        io::Read::read_exact(&mut fa, &mut ba[..n]).unwrap();
        io::Read::read_exact(&mut fb, &mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
        left -= n as u64;
    }
    true
}

fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

fn check_python(path: &Path, size: u64, got: &BlkHash) {
    let py = python_blkhash(path, size, BLOCK_SIZE);
    assert_eq!(got.checksum, py, "python reference");
}

fn opts<'a>() -> CopyOptions<'a> {
    CopyOptions::default()
}

#[test]
fn split_runs_finds_zero_runs() {
    let g = ZERO_GRAIN;
    let mut buf = noise(16 * g, 1);
    buf[2 * g..6 * g].fill(0); // 4 grains of zeros
    buf[8 * g..9 * g].fill(0); // 1 grain
    let r = split_runs(&buf, g, g);
    assert_eq!(
        r,
        vec![
            Run {
                start: 0,
                len: 2 * g,
                zero: false
            },
            Run {
                start: 2 * g,
                len: 4 * g,
                zero: true
            },
            Run {
                start: 6 * g,
                len: 2 * g,
                zero: false
            },
            Run {
                start: 8 * g,
                len: g,
                zero: true
            },
            Run {
                start: 9 * g,
                len: 7 * g,
                zero: false
            },
        ]
    );
    // With a 4-grain minimum the single-grain run is written as data.
    let r = split_runs(&buf, g, 4 * g);
    assert_eq!(r.len(), 3);
    assert_eq!(
        r[1],
        Run {
            start: 2 * g,
            len: 4 * g,
            zero: true
        }
    );
    // All zeros: one zero run, even if short; a short unaligned tail.
    assert_eq!(
        split_runs(&vec![0u8; 1000], g, 4 * g),
        vec![Run {
            start: 0,
            len: 1000,
            zero: true
        }]
    );
}

#[test]
fn sparse_source_to_zero_destination_keeps_holes() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    // 37 MiB + 8 KiB: a short last blkhash block; data in the middle
    // of blocks, across a block boundary, and 6 MiB of written zeros.
    let size = 37 * MIB + 8192;
    let data = [(MIB, 3 * MIB), (7 * MIB + 4096, 2 * MIB), (37 * MIB, 8192)];
    make_src(&src, size, &data, &[(20 * MIB, 6 * MIB)]);
    make_dst(&dst, size);
    let progress_calls = Cell::new(0u32);
    let last = Cell::new((0u64, 0u64));
    let progress = |d: u64, t: u64| {
        progress_calls.set(progress_calls.get() + 1);
        assert!(d >= last.get().0, "progress goes forward");
        last.set((d, t));
    };
    let res = copy_raw(
        &src,
        &dst,
        CopyOptions {
            dst_is_zero: true,
            progress: &progress,
            ..opts()
        },
    )
    .unwrap();
    assert!(same(&src, &dst, size));
    assert_eq!(fs::metadata(&dst).unwrap().len(), size);
    let data_bytes: u64 = data.iter().map(|d| d.1).sum();
    assert_eq!(res.bytes_copied, data_bytes);
    assert_eq!(res.bytes_zeroed, 0);
    assert_eq!(res.bytes_skipped, size - data_bytes);
    assert!(res.verified);
    assert_eq!(last.get(), (size, size));
    assert!(progress_calls.get() >= 3);
    // Holes stay holes, and the written zeros were not written.
    let alloc = allocated(&dst);
    assert!(alloc <= data_bytes + 64 * 1024, "allocated {alloc}");
    assert!(allocated(&src) >= data_bytes + 6 * MIB);
    let sum = res.checksum.unwrap();
    check_python(&src, size, &sum);
    assert_eq!(sum.block_size, BLOCK_SIZE);
    verify_raw(&dst, size, &sum).unwrap();
}

#[test]
fn preallocated_source_over_garbage_is_zeroed() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let size = 24 * MIB;
    // Fully written: data, then 10 MiB of zeros, then data.
    let f = rw(&src);
    f.write_all_at(&noise(8 * MIB as usize, 3), 0).unwrap();
    f.write_all_at(&vec![0u8; 10 * MIB as usize], 8 * MIB)
        .unwrap();
    f.write_all_at(&noise(6 * MIB as usize, 4), 18 * MIB)
        .unwrap();
    f.sync_all().unwrap();
    drop(f);
    // A preallocated destination full of garbage, larger than the source.
    fs::write(&dst, vec![0xEEu8; (size + MIB) as usize]).unwrap();
    let before = allocated(&dst);
    let res = copy_raw(&src, &dst, opts()).unwrap();
    assert!(same(&src, &dst, size));
    // The byte past the source's size is untouched.
    let tail = fs::read(&dst).unwrap();
    assert!(tail[size as usize..].iter().all(|&b| b == 0xEE));
    assert_eq!(res.bytes_copied, 14 * MIB);
    assert_eq!(res.bytes_zeroed, 10 * MIB);
    assert_eq!(res.bytes_skipped, 0);
    // ZERO_RANGE keeps the allocation.
    assert!(allocated(&dst) >= before - 64 * 1024);
    check_python(&src, size, res.checksum.as_ref().unwrap());

    // sparse: zeros are punched out instead.
    fs::write(&dst, vec![0xEEu8; size as usize]).unwrap();
    let res = copy_raw(
        &src,
        &dst,
        CopyOptions {
            sparse: true,
            ..opts()
        },
    )
    .unwrap();
    assert!(same(&src, &dst, size));
    assert_eq!(res.bytes_zeroed, 10 * MIB);
    assert!(
        allocated(&dst) <= 14 * MIB + 64 * 1024,
        "{}",
        allocated(&dst)
    );
}

#[test]
fn fallocated_source_reads_as_holes() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let size = 16 * MIB;
    let f = rw(&src);
    depot_os::fsutil::fallocate(&f, 0, size).unwrap();
    f.write_all_at(&noise(MIB as usize, 5), 4 * MIB).unwrap();
    f.sync_all().unwrap();
    drop(f);
    make_dst(&dst, size);
    let res = copy_raw(
        &src,
        &dst,
        CopyOptions {
            dst_is_zero: true,
            ..opts()
        },
    )
    .unwrap();
    assert!(same(&src, &dst, size));
    assert_eq!(res.bytes_copied, MIB);
    assert!(allocated(&dst) <= MIB + 64 * 1024);
    check_python(&src, size, res.checksum.as_ref().unwrap());
}

#[test]
fn unaligned_size_and_empty_source() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let size = 10 * MIB + 1000;
    fs::write(&src, noise(size as usize, 6)).unwrap();
    fs::write(&dst, vec![0xAAu8; size as usize]).unwrap();
    let res = copy_raw(&src, &dst, opts()).unwrap();
    assert!(same(&src, &dst, size));
    assert_eq!(res.bytes_copied, size);
    check_python(&src, size, res.checksum.as_ref().unwrap());

    // A zero unaligned tail over garbage is zeroed.
    let f = rw(&src);
    f.write_all_at(&[0u8; 1000], 10 * MIB).unwrap();
    drop(f);
    fs::write(&dst, vec![0xAAu8; size as usize]).unwrap();
    copy_raw(&src, &dst, opts()).unwrap();
    assert!(same(&src, &dst, size));

    let empty = dir.path().join("empty");
    fs::write(&empty, b"").unwrap();
    let res = copy_raw(&empty, &dst, opts()).unwrap();
    assert_eq!(res.size, 0);
    assert_eq!(
        res.checksum.unwrap().checksum,
        "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8"
    );
}

#[test]
fn no_checksum_no_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    make_src(&src, 8 * MIB, &[(0, MIB)], &[]);
    make_dst(&dst, 8 * MIB);
    let res = copy_raw(
        &src,
        &dst,
        CopyOptions {
            checksum: false,
            verify: false,
            dst_is_zero: true,
            ..opts()
        },
    )
    .unwrap();
    assert!(res.checksum.is_none());
    assert!(!res.verified);
    assert!(same(&src, &dst, 8 * MIB));
}

#[test]
fn verify_detects_one_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let size = 12 * MIB;
    make_src(&src, size, &[(MIB, 9 * MIB)], &[]);
    make_dst(&dst, size);
    let sum = copy_raw(&src, &dst, opts()).unwrap().checksum.unwrap();
    verify_raw(&dst, size, &sum).unwrap();
    for at in [5 * MIB + 77, 11 * MIB] {
        // In data, then in a hole.
        let f = rw(&dst);
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 1], at).unwrap();
        f.sync_all().unwrap();
        let err = verify_raw(&dst, size, &sum).unwrap_err();
        assert!(matches!(err, CopyError::ChecksumMismatch { .. }), "{err}");
        f.write_all_at(&b, at).unwrap();
        f.sync_all().unwrap();
        verify_raw(&dst, size, &sum).unwrap();
    }
}

#[test]
fn destination_too_small() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    make_src(&src, 8 * MIB, &[(0, MIB)], &[]);
    make_dst(&dst, 8 * MIB - 4096);
    let err = copy_raw(&src, &dst, opts()).unwrap_err();
    assert!(
        matches!(err, CopyError::DestinationTooSmall { src_size, dst_size, .. }
            if src_size == 8 * MIB && dst_size == 8 * MIB - 4096),
        "{err}"
    );
    // Same file.
    let err = copy_raw(&src, &src, opts()).unwrap_err();
    assert!(matches!(err, CopyError::Invalid(_)), "{err}");
}

#[test]
fn source_that_grows_or_shrinks_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let size = 32 * MIB;
    for grow in [true, false] {
        fs::write(&src, noise(size as usize, 7)).unwrap();
        make_dst(&dst, 2 * size);
        let changed = Cell::new(false);
        let progress = |_: u64, _: u64| {
            if !changed.replace(true) {
                let f = rw(&src);
                if grow {
                    f.write_all_at(b"more", size).unwrap();
                } else {
                    f.set_len(4 * MIB).unwrap();
                }
            }
        };
        let err = copy_raw(
            &src,
            &dst,
            CopyOptions {
                buffer_size: MIB as usize,
                progress: &progress,
                ..opts()
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, CopyError::SourceChanged { .. }),
            "grow={grow}: {err}"
        );
    }
}

/// Aborts once the copy has passed `at` bytes; records when.
struct AbortAt {
    at: u64,
    done: Cell<u64>,
    when: Cell<Option<Instant>>,
}

impl AbortAt {
    fn new(at: u64) -> Self {
        AbortAt {
            at,
            done: Cell::new(0),
            when: Cell::new(None),
        }
    }
    fn progress(&self, d: u64, _: u64) {
        self.done.set(d);
    }
    fn abort(&self) -> bool {
        if self.done.get() >= self.at {
            if self.when.get().is_none() {
                self.when.set(Some(Instant::now()));
            }
            return true;
        }
        false
    }
}

#[test]
fn abort_then_resume_from_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let size = 40 * MIB + 4096;
    make_src(
        &src,
        size,
        &[(0, 18 * MIB), (26 * MIB, 14 * MIB + 4096)],
        &[],
    );
    make_dst(&dst, size);
    let journal = Journal::new(dir.path().join("copy.journal"), 3).with_interval(4 * MIB);

    let a = AbortAt::new(16 * MIB);
    let progress = |d, t| a.progress(d, t);
    let abort = || a.abort();
    let err = copy_raw(
        &src,
        &dst,
        CopyOptions {
            dst_is_zero: true,
            buffer_size: MIB as usize,
            progress: &progress,
            abort: &abort,
            journal: Some(&journal),
            ..opts()
        },
    )
    .unwrap_err();
    let took = a.when.get().unwrap().elapsed();
    assert!(matches!(err, CopyError::Aborted), "{err}");
    assert!(took < Duration::from_secs(1), "abort took {took:?}");
    let st = journal.state().expect("journal left behind");
    assert!(st.watermark >= 12 * MIB && st.watermark < size, "{st:?}");
    assert_eq!(st.watermark % BLOCK_SIZE, 0);
    assert_eq!(st.digests as u64, st.watermark / BLOCK_SIZE);

    // Resume: starts at the watermark, copies the rest, right checksum.
    let res = copy_raw(
        &src,
        &dst,
        CopyOptions {
            dst_is_zero: true,
            journal: Some(&journal),
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(res.resumed_from, st.watermark);
    let data = 32 * MIB + 4096;
    assert!(res.bytes_copied < data, "{res:?}");
    assert_eq!(res.bytes_copied + res.bytes_skipped, size - st.watermark);
    assert!(res.verified);
    assert!(same(&src, &dst, size));
    check_python(&src, size, res.checksum.as_ref().unwrap());
    assert!(!journal.exists(), "journal removed after success");
}

#[test]
fn resume_keeps_skipping_holes_of_a_destination_that_began_zero() {
    // The engine passes dst_is_zero only while the destination has
    // nothing allocated; after a crash it has data, so the resumed run
    // is called with dst_is_zero false. The journal remembers that the
    // copy began on zeros: the holes after the watermark are skipped
    // (not zeroed, not allocated), and the result is still exact.
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let size = 48 * MIB;
    make_src(
        &src,
        size,
        &[(0, 12 * MIB), (20 * MIB, 2 * MIB), (40 * MIB, MIB)],
        &[(30 * MIB, 4 * MIB)],
    );
    make_dst(&dst, size);
    let journal = Journal::new(dir.path().join("j"), 5).with_interval(4 * MIB);
    let a = AbortAt::new(8 * MIB);
    let (p, ab) = (|d, t| a.progress(d, t), || a.abort());
    let err = copy_raw(
        &src,
        &dst,
        CopyOptions {
            dst_is_zero: true,
            buffer_size: MIB as usize,
            progress: &p,
            abort: &ab,
            journal: Some(&journal),
            ..opts()
        },
    )
    .unwrap_err();
    assert!(matches!(err, CopyError::Aborted), "{err}");
    let st = journal.state().unwrap();
    assert!(st.dst_zero && st.watermark < 20 * MIB, "{st:?}");
    let res = copy_raw(
        &src,
        &dst,
        CopyOptions {
            dst_is_zero: false,
            journal: Some(&journal),
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(res.resumed_from, st.watermark);
    assert_eq!(res.bytes_zeroed, 0, "{res:?}");
    assert!(res.bytes_skipped >= 30 * MIB - 12 * MIB, "{res:?}");
    assert!(res.verified);
    assert!(same(&src, &dst, size));
    assert!(
        allocated(&dst) <= 15 * MIB + 64 * 1024,
        "{}",
        allocated(&dst)
    );
    check_python(&src, size, res.checksum.as_ref().unwrap());

    // Without the journal the same call must zero the holes: nothing
    // says the destination is zero any more.
    let res = copy_raw(&src, &dst, opts()).unwrap();
    assert!(res.bytes_zeroed >= 30 * MIB, "{res:?}");
    assert!(same(&src, &dst, size));
}

#[test]
fn resume_without_checksum_and_journal_of_another_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, dst) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("dst"),
    );
    let size = 32 * MIB;
    make_src(&a, size, &[(0, size)], &[]);
    // b: mostly holes where a has data.
    make_src(&b, size, &[(2 * MIB, MIB)], &[]);
    make_dst(&dst, size);
    let journal = Journal::new(dir.path().join("j"), 1).with_interval(2 * MIB);
    let stop = AbortAt::new(12 * MIB);
    let (p, ab) = (|d, t| stop.progress(d, t), || stop.abort());
    let no_sum = |progress: &'static dyn Fn(u64, u64)| CopyOptions {
        checksum: false,
        verify: false,
        dst_is_zero: true,
        buffer_size: MIB as usize,
        progress,
        ..opts()
    };
    let err = copy_raw(
        &a,
        &dst,
        CopyOptions {
            progress: &p,
            abort: &ab,
            journal: Some(&journal),
            ..no_sum(&no_progress)
        },
    )
    .unwrap_err();
    assert!(matches!(err, CopyError::Aborted));
    let wm = journal.state().unwrap().watermark;
    assert!(wm >= 10 * MIB, "{wm}");

    // The same journal for a copy of b: discarded, and the destination
    // (which now holds part of a) is no longer taken as zero.
    let res = copy_raw(
        &b,
        &dst,
        CopyOptions {
            journal: Some(&journal),
            ..no_sum(&no_progress)
        },
    )
    .unwrap();
    assert_eq!(res.resumed_from, 0);
    assert!(res.bytes_zeroed >= size - MIB, "{res:?}");
    assert!(same(&b, &dst, size));
    assert!(!journal.exists());

    // Resume without a checksum: any aligned watermark.
    make_dst(&dst, size);
    let stop = AbortAt::new(5 * MIB);
    let (p, ab) = (|d, t| stop.progress(d, t), || stop.abort());
    copy_raw(
        &a,
        &dst,
        CopyOptions {
            progress: &p,
            abort: &ab,
            journal: Some(&journal),
            ..no_sum(&no_progress)
        },
    )
    .unwrap_err();
    let wm = journal.state().unwrap().watermark;
    let res = copy_raw(
        &a,
        &dst,
        CopyOptions {
            journal: Some(&journal),
            ..no_sum(&no_progress)
        },
    )
    .unwrap();
    assert_eq!(res.resumed_from, wm);
    assert_eq!(res.bytes_copied, size - wm);
    assert!(same(&a, &dst, size));
}

/// The child of `kill_9_then_resume`: copies slowly with a journal
/// until it is killed. Not a test of its own: it is ignored, so no
/// tier runs it (tests/run never passes `--ignored`), and run without
/// the parent's directory it fails instead of passing.
#[test]
#[ignore = "run by kill_9_then_resume in a child process"]
fn crash_child() {
    let dir = std::env::var("DEPOT_CRASH_DIR").expect(
        "crash_child is the child process of kill_9_then_resume, which sets \
         DEPOT_CRASH_DIR: run kill_9_then_resume instead",
    );
    let dir = PathBuf::from(dir);
    let journal = Journal::new(dir.join("journal"), 9).with_interval(2 * MIB);
    // The hasher (the caller's thread) takes at most 2 buffers per
    // step, and the reader waits for it: 40 MiB take 1 s at least.
    let slow = |_: u64, _: u64| thread::sleep(Duration::from_millis(50));
    let _ = copy_raw(
        &dir.join("src"),
        &dir.join("dst"),
        CopyOptions {
            dst_is_zero: true,
            buffer_size: MIB as usize,
            queue_depth: 2,
            progress: &slow,
            journal: Some(&journal),
            ..opts()
        },
    );
    panic!("the parent should have killed this copy");
}

#[test]
fn kill_9_then_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let size = 40 * MIB;
    make_src(&src, size, &[(0, 12 * MIB), (16 * MIB, 24 * MIB)], &[]);
    make_dst(&dst, size);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "copy::copier::tests::crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("DEPOT_CRASH_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let journal = Journal::new(dir.path().join("journal"), 9);
    let t = Instant::now();
    loop {
        if journal.state().is_some_and(|s| s.watermark >= 8 * MIB) {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child ended before it was killed"
        );
        assert!(t.elapsed() < Duration::from_secs(60), "no progress");
        thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let st = journal.state().unwrap();
    assert!(st.watermark < size, "{st:?}");
    let res = copy_raw(
        &src,
        &dst,
        CopyOptions {
            dst_is_zero: true,
            journal: Some(&journal),
            ..opts()
        },
    )
    .unwrap();
    assert!(res.resumed_from >= st.watermark, "{res:?} {st:?}");
    assert!(res.resumed_from > 0);
    assert!(res.verified);
    assert!(same(&src, &dst, size));
    check_python(&src, size, res.checksum.as_ref().unwrap());
    assert!(!journal.exists());
}

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn to_a_4k_sector_block_device() {
    depot_testkit::require_root();
    let dir = tempfile::tempdir().unwrap();
    let (src, backing) = (dir.path().join("src"), dir.path().join("backing"));
    let size = 40 * MIB;
    make_src(
        &src,
        size,
        &[(0, 5 * MIB), (17 * MIB + 8192, 3 * MIB)],
        &[(30 * MIB, 2 * MIB)],
    );
    fs::write(&backing, vec![0x5Au8; (size + 8 * MIB) as usize]).unwrap();
    let lo = depot_testkit::LoopDevice::attach_with(&backing, Some(4096), true);
    let a = depot_os::direct::probe_alignment_path(lo.path()).unwrap();
    assert_eq!(a.offset_align, 4096);
    let res = copy_raw(&src, lo.path(), opts()).unwrap();
    assert!(res.bytes_zeroed > 0);
    assert!(same(&src, lo.path(), size));
    check_python(&src, size, res.checksum.as_ref().unwrap());
    verify_raw(lo.path(), size, res.checksum.as_ref().unwrap()).unwrap();
    // Past the source's size the device is untouched.
    let f = File::open(lo.path()).unwrap();
    let mut b = vec![0u8; 4096];
    f.read_exact_at(&mut b, size).unwrap();
    assert!(b.iter().all(|&x| x == 0x5A));
    // And back: the block device as the source.
    let back = dir.path().join("back");
    make_dst(&back, size);
    let res2 = copy_raw(
        lo.path(),
        &back,
        CopyOptions {
            dst_is_zero: true,
            ..opts()
        },
    );
    // The device is larger than the file: DestinationTooSmall.
    assert!(matches!(res2, Err(CopyError::DestinationTooSmall { .. })));
    make_dst(&back, size + 8 * MIB);
    let res2 = copy_raw(
        lo.path(),
        &back,
        CopyOptions {
            dst_is_zero: true,
            ..opts()
        },
    )
    .unwrap();
    assert!(same(lo.path(), &back, size + 8 * MIB));
    assert!(
        res2.bytes_skipped > 0,
        "zero data read from the device is skipped"
    );
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok()?.parse().ok()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Prints MiB/s of copy_raw next to dd on the same files; no
/// assertions on time. Run with
/// `cargo test --release -p depot-storage copy::copier::tests::throughput
/// -- --ignored --nocapture`. DEPOT_COPY_MIB, DEPOT_COPY_BUF_MIB,
/// DEPOT_COPY_DEPTH, DEPOT_COPY_RUNS override the size, buffer, depth
/// and number of runs; DEPOT_COPY_DIR the directory.
#[test]
#[ignore = "throughput self-check; run with --ignored --nocapture"]
fn throughput() {
    let mib = env_usize("DEPOT_COPY_MIB").unwrap_or(512) as u64;
    let runs = env_usize("DEPOT_COPY_RUNS").unwrap_or(3);
    let buf = env_usize("DEPOT_COPY_BUF_MIB").map_or(DEFAULT_BUFFER_SIZE, |m| m << 20);
    let depth = env_usize("DEPOT_COPY_DEPTH").unwrap_or(DEFAULT_QUEUE_DEPTH);
    let hash_threads = env_usize("DEPOT_COPY_HASH_THREADS").unwrap_or(0);
    let dir = match std::env::var("DEPOT_COPY_DIR") {
        Ok(d) => tempfile::tempdir_in(d).unwrap(),
        Err(_) => tempfile::tempdir_in("/var/tmp").unwrap(),
    };
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let size = mib * MIB;
    let st = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "status=none"])
        .arg(format!("of={}", src.display()))
        .arg(format!("count={mib}"))
        .status()
        .unwrap();
    assert!(st.success());
    let rate = |secs: f64| size as f64 / MIB as f64 / secs;
    let (mut ours, mut ours_nosum, mut dd, mut verify) = (vec![], vec![], vec![], vec![]);
    let fresh_dst = || {
        make_dst(&dst, 0);
        make_dst(&dst, size);
    };
    for run in 0..runs {
        // dd and depot alternate which goes first; the destination is
        // a new sparse file each time, for both.
        let mut order = ["dd", "sum", "nosum"];
        if run % 2 == 1 {
            order.reverse();
        }
        for what in order {
            fresh_dst();
            let t = Instant::now();
            if what == "dd" {
                let st = Command::new("dd")
                    .args([
                        "bs=8M",
                        "iflag=direct",
                        "oflag=direct",
                        "conv=notrunc,fsync",
                    ])
                    .arg("status=none")
                    .arg(format!("if={}", src.display()))
                    .arg(format!("of={}", dst.display()))
                    .status()
                    .unwrap();
                assert!(st.success());
                dd.push(rate(t.elapsed().as_secs_f64()));
                continue;
            }
            let checksum = what == "sum";
            let res = copy_raw(
                &src,
                &dst,
                CopyOptions {
                    buffer_size: buf,
                    queue_depth: depth,
                    hash_threads,
                    dst_is_zero: true,
                    checksum,
                    verify: false,
                    ..opts()
                },
            )
            .unwrap();
            let r = rate(t.elapsed().as_secs_f64());
            if checksum {
                ours.push(r);
                let t = Instant::now();
                let sum = res.checksum.as_ref().unwrap();
                let back = checksum_raw(
                    &dst,
                    size,
                    &ChecksumOptions {
                        buffer_size: buf,
                        queue_depth: depth,
                        hash_threads,
                        ..Default::default()
                    },
                )
                .unwrap();
                assert_eq!(&back, sum);
                verify.push(rate(t.elapsed().as_secs_f64()));
            } else {
                ours_nosum.push(r);
            }
        }
    }
    println!(
        "copy_raw {mib} MiB random, buffer {} MiB, depth {depth}, hash threads {}, {runs} runs \
         (median MiB/s): \
         depot+checksum {:.0}, depot no checksum {:.0}, dd bs=8M direct {:.0}, \
         verify (read back) {:.0}; ratio depot/dd {:.2}",
        buf >> 20,
        super::hashing::hash_threads(hash_threads),
        median(ours.clone()),
        median(ours_nosum.clone()),
        median(dd.clone()),
        median(verify.clone()),
        median(ours.clone()) / median(dd.clone()),
    );
    println!("  all: depot {ours:.0?} nosum {ours_nosum:.0?} dd {dd:.0?} verify {verify:.0?}");
}
