//! Data and hole extents of a file, from `lseek(SEEK_DATA/SEEK_HOLE)`.
//!
//! Holes read as zeros and are never read by the copier. Filesystems that
//! track allocation (ext4, xfs, tmpfs, NFS 4.2, ...) report real holes;
//! ext4 and xfs also report preallocated but unwritten extents as holes.
//! Where the call is not supported (old kernels return `EINVAL`; FUSE
//! without the `lseek` op returns `ENOTSUP`/`ENOSYS`) and for block
//! devices, the whole range is one data extent.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;

/// A range of a file: data (must be read) or a hole (reads as zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub start: u64,
    pub len: u64,
    /// A hole: reads as zeros.
    pub zero: bool,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

fn lseek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let off = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
    // SAFETY: lseek only takes integers; the fd is owned by `file`, which
    // outlives the call. The file position it moves is not used by the
    // copier (it uses pread/pwrite).
    let rc = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if rc >= 0 {
        return Ok(Some(rc as u64));
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(err)
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS)
    )
}

/// The extents covering `[start, end)` of `file`, in order, contiguous,
/// adjacent extents of the same kind merged. `end` is the size the caller
/// copies (a file that is longer is cut there; the part of the range past
/// the end of a shorter file is reported as a hole, and the copier's reads
/// then detect the change).
pub fn extents(file: &File, start: u64, end: u64) -> io::Result<Vec<Extent>> {
    let mut out = Vec::new();
    let mut pos = start;
    while pos < end {
        let data = match lseek(file, pos, libc::SEEK_DATA) {
            Ok(Some(d)) => d.min(end),
            Ok(None) => end,
            Err(e) if unsupported(&e) && out.is_empty() && pos == start => {
                return Ok(vec![Extent {
                    start,
                    len: end - start,
                    zero: false,
                }]);
            }
            Err(e) => return Err(e),
        };
        if data > pos {
            push(&mut out, pos, data, true);
        }
        if data >= end {
            break;
        }
        let hole = match lseek(file, data, libc::SEEK_HOLE)? {
            Some(h) => h.min(end),
            None => end,
        };
        // A hole at `data` would mean the two calls raced with a writer;
        // take one byte's worth as data to make progress.
        let hole = hole.max(data + 1).min(end);
        push(&mut out, data, hole, false);
        pos = hole;
    }
    Ok(out)
}

fn push(out: &mut Vec<Extent>, start: u64, end: u64, zero: bool) {
    if end <= start {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.zero == zero && last.end() == start {
            last.len += end - start;
            return;
        }
    }
    out.push(Extent {
        start,
        len: end - start,
        zero,
    });
}

/// Rounds data extents out to `align` (data wins over holes), clipped to
/// `[start, end)`, so that every data read starts aligned for `O_DIRECT`.
/// The result is contiguous, merged, and covers `[start, end)`. `start`
/// must be aligned.
pub fn align_extents(exts: &[Extent], align: u64, start: u64, end: u64) -> Vec<Extent> {
    debug_assert!(align.is_power_of_two() && start & (align - 1) == 0);
    let down = |x: u64| x & !(align - 1);
    let up = |x: u64| x.div_ceil(align) * align;
    let mut data: Vec<(u64, u64)> = Vec::new();
    for e in exts.iter().filter(|e| !e.zero) {
        let s = down(e.start).max(start);
        let t = up(e.end()).min(end);
        if t <= s {
            continue;
        }
        match data.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(t),
            _ => data.push((s, t)),
        }
    }
    let mut out = Vec::new();
    let mut pos = start;
    for (s, t) in data {
        push(&mut out, pos, s, true);
        push(&mut out, s, t, false);
        pos = t;
    }
    push(&mut out, pos, end, true);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    const MIB: u64 = 1024 * 1024;

    fn ext(start: u64, len: u64, zero: bool) -> Extent {
        Extent { start, len, zero }
    }

    #[test]
    fn sparse_file_extents() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        f.set_len(10 * MIB).unwrap();
        f.write_all_at(&vec![1u8; MIB as usize], 2 * MIB).unwrap();
        f.write_all_at(&vec![2u8; MIB as usize], 6 * MIB).unwrap();
        f.sync_all().unwrap();
        let e = extents(&f, 0, 10 * MIB).unwrap();
        assert_eq!(
            e,
            vec![
                ext(0, 2 * MIB, true),
                ext(2 * MIB, MIB, false),
                ext(3 * MIB, 3 * MIB, true),
                ext(6 * MIB, MIB, false),
                ext(7 * MIB, 3 * MIB, true),
            ]
        );
        // A sub-range, cut in the middle of extents.
        let e = extents(&f, 2 * MIB + 4096, 6 * MIB + 4096).unwrap();
        assert_eq!(
            e,
            vec![
                ext(2 * MIB + 4096, MIB - 4096, false),
                ext(3 * MIB, 3 * MIB, true),
                ext(6 * MIB, 4096, false),
            ]
        );
        // Past the end of the file: a hole.
        let e = extents(&f, 9 * MIB, 12 * MIB).unwrap();
        assert_eq!(e, vec![ext(9 * MIB, 3 * MIB, true)]);
        // Empty range.
        assert!(extents(&f, 5, 5).unwrap().is_empty());
    }

    /// tmpfs, like ext4 and xfs (tests/extents.rs, root tier), reports a
    /// preallocated range nobody wrote as a hole, and written data in it as
    /// data.
    #[test]
    fn fallocated_ranges_read_as_holes_on_tmpfs() {
        let dir = tempfile::tempdir_in(depot_testkit::require_tmpfs_dev_shm()).unwrap();
        let p = dir.path().join("f");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        depot_os::fsutil::fallocate(&f, 0, 4 * MIB).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 4 * MIB);
        assert_eq!(
            extents(&f, 0, 4 * MIB).unwrap(),
            vec![ext(0, 4 * MIB, true)]
        );
        f.write_all_at(&vec![7u8; MIB as usize], MIB).unwrap();
        assert_eq!(
            extents(&f, 0, 4 * MIB).unwrap(),
            vec![
                ext(0, MIB, true),
                ext(MIB, MIB, false),
                ext(2 * MIB, 2 * MIB, true)
            ]
        );
    }

    #[test]
    fn align_rounds_data_out() {
        let exts = vec![
            ext(0, 1000, true),
            ext(1000, 100, false),
            ext(1100, 8000, true),
            ext(9100, 10, false),
            ext(9110, 900, true),
        ];
        let a = align_extents(&exts, 4096, 0, 10_010);
        assert_eq!(
            a,
            vec![
                ext(0, 4096, false),
                ext(4096, 4096, true),
                ext(8192, 10_010 - 8192, false),
            ]
        );
        // Two data extents rounding into the same block merge.
        let exts = vec![ext(0, 10, false), ext(10, 10, true), ext(20, 10, false)];
        assert_eq!(
            align_extents(&exts, 512, 0, 4096),
            vec![ext(0, 512, false), ext(512, 3584, true)]
        );
        // All holes.
        assert_eq!(
            align_extents(&[ext(0, 8192, true)], 4096, 0, 8192),
            vec![ext(0, 8192, true)]
        );
    }
}
