//! The xleases volume on a file, with sanlock's own `sanlock direct` for
//! the resources (no daemon needed; the root tier installs sanlock).

use std::time::Duration;

use depot_api::storage::SdUuid;
use depot_api::Code;
use depot_os::sanlock::{direct_init_resource, direct_read_resource, Area, DirectConfig, Geometry};

use super::index::{self, Index, Record, INDEX_SIZE};
use super::*;

const MIB: u64 = 1 << 20;
const A: &str = "0b8c7f1e-3a2d-4e5f-8a9b-1c2d3e4f5a6b";
const B: &str = "1b8c7f1e-3a2d-4e5f-8a9b-1c2d3e4f5a6b";
const C: &str = "2b8c7f1e-3a2d-4e5f-8a9b-1c2d3e4f5a6b";

struct Fixture {
    _dir: tempfile::TempDir,
    vol: Xleases,
    direct: DirectConfig,
}

fn fixture() -> Fixture {
    fixture_with(512, MIB)
}

fn fixture_with(block_size: u32, alignment: u64) -> Fixture {
    depot_testkit::require_program("sanlock");
    // Not /dev/shm: O_DIRECT needs a real file system.
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let path = dir.path().join(XLEASES);
    std::fs::write(&path, b"").unwrap();
    let fs = MountFs::in_process(dir.path(), Duration::from_secs(30));
    let sd: SdUuid = "5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8a".parse().unwrap();
    let vol = Xleases::file(fs, path, sd, block_size, alignment);
    Fixture {
        _dir: dir,
        vol,
        direct: DirectConfig::default(),
    }
}

/// What a crash leaves: the record of `lease` at `recnum` written
/// "updating", with the index's own code, and nothing else.
fn crash_after_updating(vol: &Xleases, recnum: usize, lease: &str) {
    let data = vol.read(index::index_offset(MIB), INDEX_SIZE).unwrap();
    let mut idx = Index::from_bytes(data).unwrap();
    let rec = Record {
        lease: lease.into(),
        offset: index::lease_offset(recnum, MIB),
        updating: true,
    };
    vol.write_record(&mut idx, recnum, &rec, "test").unwrap();
}

fn offset_of(vol: &Xleases, lease: &str) -> Option<u64> {
    vol.lookup(lease).unwrap().map(|i| i.offset)
}

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn create_lookup_delete_on_a_file() {
    depot_testkit::require_root();
    let f = fixture();
    let vol = &f.vol;
    // Not formatted yet: 9031, for every verb, and nothing written.
    for e in [
        vol.lookup(A).unwrap_err(),
        vol.create(&f.direct, A).unwrap_err(),
        vol.delete(&f.direct, A).unwrap_err(),
        vol.rebuild().unwrap_err(),
    ] {
        assert_eq!(e.code, Code::XleasesIndexInvalid, "{e}");
    }
    assert_eq!(std::fs::metadata(vol.path()).unwrap().len(), 0);

    vol.format().unwrap();
    assert_eq!(offset_of(vol, A), None);
    let (created, info) = vol.create(&f.direct, A).unwrap();
    assert_eq!(created, Created::New);
    assert_eq!(info.offset, 3 * MIB);
    assert_eq!(info.path, vol.path());
    // The resource is sanlock's, named by the lease, in the domain's
    // lockspace.
    let sd = vol.sd.to_string();
    let area = Area::new(vol.path(), 3 * MIB);
    assert_eq!(
        direct_read_resource(&f.direct, &sd, &area).unwrap(),
        Some(A.to_owned())
    );
    // Idempotent: the same lease, nothing new.
    assert_eq!(vol.create(&f.direct, A).unwrap(), (Created::Existed, info));
    let (_, b) = vol.create(&f.direct, B).unwrap();
    assert_eq!(b.offset, 4 * MIB);

    assert!(vol.delete(&f.direct, A).unwrap());
    assert_eq!(offset_of(vol, A), None);
    assert_eq!(direct_read_resource(&f.direct, &sd, &area).unwrap(), None);
    assert!(!vol.delete(&f.direct, A).unwrap(), "a second delete");
    // The freed slot is the next one taken.
    assert_eq!(vol.create(&f.direct, C).unwrap().1.offset, 3 * MIB);
    assert_eq!(offset_of(vol, B), Some(4 * MIB));
}

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn a_crash_between_updating_and_commit_is_repaired() {
    depot_testkit::require_root();
    let f = fixture();
    let vol = &f.vol;
    vol.format().unwrap();
    vol.create(&f.direct, A).unwrap();

    // A crash after the record of B was written "updating", before its
    // resource: B is no lease, and the next create of B takes the same
    // record over.
    crash_after_updating(vol, 1, B);
    assert_eq!(offset_of(vol, B), None);
    let (created, info) = vol.create(&f.direct, B).unwrap();
    assert_eq!((created, info.offset), (Created::New, 4 * MIB));
    assert_eq!(offset_of(vol, B), Some(4 * MIB));

    // A crash after C's resource was written, before the commit: a
    // rebuild keeps C (its resource is there)...
    crash_after_updating(vol, 2, C);
    let g = Geometry::new(512, MIB).unwrap();
    let sd = vol.sd.to_string();
    direct_init_resource(&f.direct, &sd, C, &Area::new(vol.path(), 5 * MIB), g).unwrap();
    assert_eq!(offset_of(vol, C), None);
    // ... and a record left updating without a resource is dropped.
    crash_after_updating(vol, 3, "3b8c7f1e-3a2d-4e5f-8a9b-1c2d3e4f5a6b");
    assert_eq!(vol.rebuild().unwrap(), 3);
    assert_eq!(offset_of(vol, A), Some(3 * MIB));
    assert_eq!(offset_of(vol, B), Some(4 * MIB));
    assert_eq!(offset_of(vol, C), Some(5 * MIB));
    let dump = vol.dump().unwrap();
    assert_eq!(dump.len(), 3, "{dump:?}");
    assert!(dump.iter().all(|(_, _, updating)| !updating));
}

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn rebuild_restores_a_lost_index_from_the_resources() {
    depot_testkit::require_root();
    let f = fixture();
    let vol = &f.vol;
    vol.format().unwrap();
    vol.create(&f.direct, A).unwrap();
    vol.create(&f.direct, B).unwrap();
    vol.create(&f.direct, C).unwrap();
    vol.delete(&f.direct, B).unwrap();

    // The index lost (formatted again): no lease is known...
    vol.format().unwrap();
    assert_eq!(offset_of(vol, A), None);
    // ... until the rebuild reads them back from sanlock's resources; the
    // deleted one stays deleted.
    assert_eq!(vol.rebuild().unwrap(), 2);
    assert_eq!(offset_of(vol, A), Some(3 * MIB));
    assert_eq!(offset_of(vol, B), None);
    assert_eq!(offset_of(vol, C), Some(5 * MIB));

    // A rebuild that did not finish leaves the index "updating": refused
    // by every verb but the rebuild, which repairs it.
    let data = vol.read(index::index_offset(MIB), INDEX_SIZE).unwrap();
    let mut idx = Index::from_bytes(data).unwrap();
    idx.set_metadata(&index::Metadata::new(&vol.sd.to_string(), 1, true));
    vol.write_first_block(&idx, "test").unwrap();
    let e = vol.lookup(A).unwrap_err();
    assert_eq!(e.code, Code::XleasesIndexInvalid);
    assert!(e.detail.contains("updating"), "{e}");
    assert_eq!(vol.rebuild().unwrap(), 2);
    assert_eq!(offset_of(vol, A), Some(3 * MIB));
}

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn a_full_index_refuses_a_new_lease_and_changes_nothing() {
    depot_testkit::require_root();
    let f = fixture();
    let vol = &f.vol;
    vol.format().unwrap();
    // Every record taken (written with the index's code: creating 3960
    // leases would write 4 GiB).
    let data = vol.read(index::index_offset(MIB), INDEX_SIZE).unwrap();
    let mut idx = Index::from_bytes(data).unwrap();
    for n in 0..index::MAX_RECORDS {
        let rec = Record {
            lease: format!("{n:08}-0000-4000-8000-000000000000"),
            offset: index::lease_offset(n, MIB),
            updating: false,
        };
        idx.set_record(n, &rec);
    }
    vol.write(index::index_offset(MIB), idx.as_bytes()).unwrap();
    let before = std::fs::read(vol.path()).unwrap();
    let e = vol.create(&f.direct, A).unwrap_err();
    assert_eq!(e.code, Code::XleasesFull, "{e}");
    assert_eq!(std::fs::read(vol.path()).unwrap(), before);
    // An existing one is still found.
    assert_eq!(
        offset_of(vol, "00000007-0000-4000-8000-000000000000"),
        Some(index::lease_offset(7, MIB))
    );
}

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn leases_with_4k_sectors_and_2m_alignment() {
    depot_testkit::require_root();
    // 4 KiB blocks: the metadata shares the first block with records 0-55,
    // so a record's write carries the metadata block along unchanged.
    let align = 2 * MIB;
    let f = fixture_with(4096, align);
    let vol = &f.vol;
    vol.format().unwrap();
    assert_eq!(
        std::fs::metadata(vol.path()).unwrap().len(),
        align + INDEX_SIZE as u64
    );
    let (_, a) = vol.create(&f.direct, A).unwrap();
    assert_eq!(a.offset, 3 * align);
    let (_, b) = vol.create(&f.direct, B).unwrap();
    assert_eq!(b.offset, 4 * align);
    let leader = depot_os::sanlock::direct_read_leader(
        &f.direct,
        &vol.sd.to_string(),
        B,
        true,
        &Area::new(vol.path(), b.offset),
    )
    .unwrap();
    assert_eq!(leader["sector_size"], "4096", "{leader:?}");
    assert_eq!(leader["resource_name"], B, "{leader:?}");
    assert!(vol.delete(&f.direct, A).unwrap());
    vol.format().unwrap();
    assert_eq!(vol.rebuild().unwrap(), 1);
    assert_eq!(offset_of(vol, A), None);
    assert_eq!(offset_of(vol, B), Some(4 * align));
    // The metadata block is intact after record writes in its block.
    assert!(vol.lookup(B).is_ok());
}

/// A lease whose leader record is damaged (a bit flipped under its
/// checksum): the rebuild is 9031 and writes nothing, the index stays as
/// it was (VDSM's sanlock.read_resource refuses such a record too).
#[test]
fn rebuild_refuses_a_damaged_leader_and_writes_nothing() {
    let f = fixture();
    let vol = &f.vol;
    vol.format().unwrap();
    vol.create(&f.direct, A).unwrap();
    vol.create(&f.direct, B).unwrap();
    let before = std::fs::read(vol.path()).unwrap();
    let mut damaged = before.clone();
    let at = index::lease_offset(1, MIB) as usize + 110;
    damaged[at] ^= 0x01;
    std::fs::write(vol.path(), &damaged).unwrap();
    let e = vol.rebuild().unwrap_err();
    assert_eq!(e.code, Code::XleasesIndexInvalid, "{e}");
    assert!(e.to_string().contains("checksum"), "{e}");
    assert_eq!(std::fs::read(vol.path()).unwrap(), damaged);
    assert_eq!(offset_of(vol, A), Some(3 * MIB));
}
