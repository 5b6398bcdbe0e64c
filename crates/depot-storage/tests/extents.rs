//! Data and hole extents on the file systems file domains live on, in the
//! root tier: ext4 and xfs on loop devices. Both report a preallocated
//! range that was never written as a hole (so a copy skips it), and what
//! was written into it as data. (tmpfs: the unit tests of copy::extents.)

mod support;

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::Duration;

use depot_storage::copy::extents::{extents, Extent};
use support::loopfs::LoopFs;

const MIB: u64 = 1 << 20;
const T: Duration = Duration::from_secs(120);

fn ext(start: u64, len: u64, zero: bool) -> Extent {
    Extent { start, len, zero }
}

fn preallocated_then_written(fstype: &str, size: u64) {
    let fs = LoopFs::new(fstype, size, None);
    let mnt = tempfile::tempdir().unwrap();
    let target = mnt.path().to_str().unwrap();
    support::run("mount", &["-t", fstype, &fs.dev, target], T).expect("mount");
    let p = mnt.path().join("volume");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap();
    depot_os::fsutil::fallocate(&f, 0, 8 * MIB).unwrap();
    f.sync_all().unwrap();
    assert_eq!(f.metadata().unwrap().len(), 8 * MIB);
    // Allocated, not sparse: what a PREALLOCATED file volume is.
    assert!(f.metadata().unwrap().blocks() * 512 >= 8 * MIB, "{fstype}");
    assert_eq!(
        extents(&f, 0, 8 * MIB).unwrap(),
        vec![ext(0, 8 * MIB, true)],
        "{fstype}: an unwritten preallocated range is a hole"
    );
    f.write_all_at(&vec![7u8; 2 * MIB as usize], 2 * MIB)
        .unwrap();
    f.sync_all().unwrap();
    assert_eq!(
        extents(&f, 0, 8 * MIB).unwrap(),
        vec![
            ext(0, 2 * MIB, true),
            ext(2 * MIB, 2 * MIB, false),
            ext(4 * MIB, 4 * MIB, true)
        ],
        "{fstype}: written data in it is data"
    );
    drop(f);
    support::run("umount", &[target], T).expect("umount");
}

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn fallocated_ranges_read_as_holes_on_ext4() {
    depot_testkit::require_root();
    preallocated_then_written("ext4", 64 * MIB);
}

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn fallocated_ranges_read_as_holes_on_xfs() {
    depot_testkit::require_root();
    // mkfs.xfs refuses file systems smaller than 300 MiB.
    preallocated_then_written("xfs", 512 * MIB);
}
