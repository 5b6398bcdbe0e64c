//! The LVM wrapper against real lvm2 on loop devices (root tier). This
//! kernel has no device-mapper, so `global { activation = 0 }` is passed:
//! metadata changes are real, activation is not (and must be reported as
//! such). Activation is tested in the VM tier.

use std::path::PathBuf;
use std::time::Duration;

use depot_os::lvm::{Lvm, LvmError};
use depot_os::CommandRunner;

/// A loop device over a sparse file in its own directory.
struct Loop {
    _lo: depot_testkit::LoopDevice,
    dev: PathBuf,
    _dir: tempfile::TempDir,
}

impl Loop {
    fn new(size: u64) -> Loop {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::File::create(&img).unwrap().set_len(size).unwrap();
        let lo = depot_testkit::LoopDevice::attach(&img);
        let dev = lo.path().to_owned();
        Loop {
            _lo: lo,
            dev,
            _dir: dir,
        }
    }
}

fn lvm() -> Lvm {
    Lvm::new(CommandRunner::new(), Duration::from_secs(60))
        .with_extra_config("global { activation = 0 }")
}

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn vg_and_lv_lifecycle_with_tags_filter_and_cache() {
    depot_testkit::require_root();
    depot_testkit::require_program("lvm");
    let (a, b) = (Loop::new(1 << 30), Loop::new(1 << 30));
    let vg = format!("depottest{}", std::process::id());
    let l = lvm();

    // The filter hides devices depot was not told about.
    l.pvcreate(std::slice::from_ref(&a.dev), true).unwrap();
    let other = lvm();
    assert!(
        other
            .pvs()
            .unwrap()
            .iter()
            .all(|p| p.name != a.dev.to_string_lossy()),
        "a wrapper with no devices sees no PV"
    );

    let tags = vec![
        "RHAT_storage_domain_UNREADY".to_owned(),
        "MDT_A=b&44&c".to_owned(),
    ];
    l.vgcreate(&vg, std::slice::from_ref(&a.dev), 128 << 20, &tags)
        .unwrap();
    let info = l.vg(&vg).unwrap();
    assert_eq!(info.extent_size, 128 << 20);
    assert_eq!(info.tags.len(), 2);

    l.vg_tags(
        &vg,
        &["RHAT_storage_domain".to_owned()],
        &["RHAT_storage_domain_UNREADY".to_owned()],
    )
    .unwrap();
    assert!(l
        .vg(&vg)
        .unwrap()
        .tags
        .contains(&"RHAT_storage_domain".to_owned()));

    // With the VG and its LVs cached, a new LV joins the cache without an
    // lvs, with the size LVM gives it.
    l.vg(&vg).unwrap();
    l.lvs(&vg).unwrap();
    let calls = l.calls();
    l.lvcreate(
        &vg,
        "lv1",
        200 << 20,
        &["IU_img".to_owned(), "MD_1".to_owned()],
    )
    .unwrap();
    let lvs = l.lvs(&vg).unwrap();
    assert_eq!(l.calls(), calls + 1, "lvcreate only");
    assert_eq!(lvs[0].size, l.lvs_fresh(&vg).unwrap()[0].size);
    let free = l.vg(&vg).unwrap().free;
    assert_eq!(free, l.vg_fresh(&vg).unwrap().free, "free space kept exact");
    // And the next one too: the VG report (extent size, free) stays cached.
    let calls = l.calls();
    l.lvcreate(&vg, "lv3", 1, &[]).unwrap();
    assert!(l.lvs(&vg).unwrap().iter().any(|lv| lv.name == "lv3"));
    assert_eq!(l.vg(&vg).unwrap().free, free - (128 << 20));
    assert_eq!(l.calls(), calls + 1, "lvcreate only");
    l.lvremove(&vg, &["lv3"]).unwrap();
    assert_eq!(l.vg(&vg).unwrap().free, free);
    assert_eq!(l.calls(), calls + 2, "lvremove only");
    // Cached: the second read runs nothing.
    let lvs = l.lvs(&vg).unwrap();
    let calls = l.calls();
    assert_eq!(l.lvs(&vg).unwrap(), lvs);
    assert_eq!(l.calls(), calls, "a fresh cache entry answers");
    assert_eq!(lvs.len(), 1);
    assert_eq!(
        lvs[0].size,
        256 << 20,
        "rounded up to whole 128 MiB extents"
    );
    assert_eq!(lvs[0].tag_value("MD_"), Some("1"));

    // A change through the wrapper updates the cached list in place: no
    // lvs is needed to see it, and it matches what LVM reports.
    l.lv_tags(&vg, "lv1", &["PU_x".to_owned()], &["MD_1".to_owned()])
        .unwrap();
    let calls = l.calls();
    let lv = l.lv(&vg, "lv1").unwrap().unwrap();
    assert_eq!(l.calls(), calls, "answered from the updated cache");
    let mut cached = lv.tags.clone();
    let mut real = l.lvs_fresh(&vg).unwrap()[0].tags.clone();
    cached.sort();
    real.sort();
    assert_eq!(cached, real);
    assert_eq!(lv.tag_value("PU_"), Some("x"));
    assert_eq!(lv.tag_value("MD_"), None);

    // Another host's change (a second wrapper) is found by lv()'s re-read.
    let other = lvm();
    other.set_devices([a.dev.clone()]);
    other.lvcreate(&vg, "lv2", 1, &[]).unwrap();
    l.lvs(&vg).unwrap();
    assert!(l.lv(&vg, "lv2").unwrap().is_some());

    l.lvextend(&vg, "lv1", 300 << 20).unwrap();
    assert_eq!(l.lv(&vg, "lv1").unwrap().unwrap().size, 384 << 20);

    // Activation without device-mapper: rc 0, no device; reported.
    match l.activate(&vg, &["lv1"]) {
        Err(LvmError::NotActivated { .. }) => {}
        other => panic!("expected NotActivated, got {other:?}"),
    }

    l.pvcreate(std::slice::from_ref(&b.dev), true).unwrap();
    l.vgextend(&vg, std::slice::from_ref(&b.dev)).unwrap();
    assert_eq!(l.vg(&vg).unwrap().pv_count, 2);
    assert_eq!(l.pvs_of(&vg).unwrap().len(), 2);

    l.lvremove(&vg, &["lv1", "lv2"]).unwrap();
    assert!(l.lvs(&vg).unwrap().is_empty());

    // A failed command keeps its stderr.
    let e = l.lvremove(&vg, &["nosuchlv"]).unwrap_err();
    assert!(!e.stderr().is_empty(), "{e}");

    l.vgremove(&vg).unwrap();
    assert!(matches!(l.vg_fresh(&vg), Err(LvmError::VgNotFound(_))));
    l.pvremove(&[a.dev.clone(), b.dev.clone()]).unwrap();
}
