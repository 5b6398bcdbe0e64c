//! Block storage domains end to end in the VM tier (tests/vm/run): a real
//! LIO iSCSI target with CHAP, two paths per LUN through dm-multipath, and
//! real LVM, driven through depotd's JSON-RPC and HTTP. Reported as ignored
//! outside the tier (docs/testing.md).
//!
//! The iSCSI login is done here with iscsiadm as test setup; depot's own
//! iSCSI connection verbs are tested in vm_iscsi.rs.

mod common;
#[allow(unused_imports)]
mod ovf_common;
mod storage_common;
#[path = "../../depot-storage/tests/support/mod.rs"]
mod support;
mod vdsm_schema;

use common::Daemon;
use serde_json::json;
use storage_common::*;
use support::vm::{ok, Luns};

const ISCSI: i64 = 3;
const SLOW: std::time::Duration = std::time::Duration::from_secs(600);

/// `vgs` tags of a VG, read with LVM directly (not through depot).
fn vg_tags(vg: &str, luns: &Luns) -> Vec<String> {
    let cfg = luns.lvm_config();
    let out = ok(&["vgs", "--config", &cfg, "--noheadings", "-o", "vg_tags", vg]);
    out.trim().split(',').map(str::to_string).collect()
}

fn lv_tags(vg: &str, lv: &str, luns: &Luns) -> Vec<String> {
    let cfg = luns.lvm_config();
    let out = ok(&[
        "lvs",
        "--config",
        &cfg,
        "--noheadings",
        "-o",
        "lv_tags",
        &format!("{vg}/{lv}"),
    ]);
    out.trim().split(',').map(str::to_string).collect()
}

fn is_active(vg: &str, lv: &str) -> bool {
    std::path::Path::new(&format!("/dev/{vg}/{lv}")).exists()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the vm tier (tests/vm/run)"]
async fn block_domain_lifecycle_on_iscsi_with_multipath() {
    depot_testkit::require_vm();
    let luns = Luns::login();
    // depot's udev rule, as docs/install.md installs it.
    let rule = concat!(env!("CARGO_MANIFEST_DIR"), "/../../udev/61-depot-lvm.rules");
    ok(&[
        "install",
        "-m",
        "0644",
        rule,
        "/etc/udev/rules.d/61-depot-lvm.rules",
    ]);
    ok(&["udevadm", "control", "--reload"]);
    // sanlock on (`--dev` leaves it off): the domain's lockspace, SDM
    // lease and volume leases are formatted by the program (no daemon).
    let mut d = Daemon::start(&format!("{CONFIG}[sanlock]\nenabled = true\n"));
    let mut c = d.client().await;
    // LVM under TCG on a loaded machine: seconds per command.
    c.set_call_timeout(SLOW);
    let sd = new_id();
    let w = &luns.wwids;
    // The SAN verbs' results against VDSM's schema (tests/conformance.rs).
    let conform = vdsm_schema::Checker::new();

    // A VG on the first LUN: UNREADY until the domain is created on it.
    let vg_uuid = call_ok(
        &c,
        "LVMVolumeGroup.create",
        json!({"name": sd, "devlist": [w[0]], "force": false}),
    )
    .await;
    conform.check("LVMVolumeGroup.create", &vg_uuid);
    let vg_uuid = vg_uuid.as_str().unwrap().to_string();
    assert!(vg_tags(&sd, &luns).contains(&"RHAT_storage_domain_UNREADY".to_string()));
    let info = call_ok(
        &c,
        "LVMVolumeGroup.getInfo",
        json!({"lvmvolumegroupID": vg_uuid}),
    )
    .await;
    conform.check("LVMVolumeGroup.getInfo", &info);
    assert_eq!(info["name"], json!(sd));
    assert_eq!(info["pvlist"][0]["GUID"], json!(w[0]));
    assert_eq!(info["state"], json!("OK"));
    assert_eq!(info["attr"]["exported"], json!("-"), "{info}");
    // Each PV with its device's details, as VDSM's: the engine builds the
    // LUNs of a block domain it imports from them.
    let pv = &info["pvlist"][0];
    assert_eq!(pv["devtype"], json!("iSCSI"), "{info}");
    assert_eq!(pv["pathstatus"].as_array().map(Vec::len), Some(2), "{info}");
    assert!(
        pv["pathlist"].as_array().is_some_and(|l| !l.is_empty()),
        "{info}"
    );
    assert!(
        pv["serial"].is_string() && pv["vendorID"].is_string(),
        "{info}"
    );
    let all = call_ok(&c, "Host.getLVMVolumeGroups", json!({})).await;
    conform.check("Host.getLVMVolumeGroups", &all);
    let mine = all
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vgUUID"] == json!(vg_uuid))
        .unwrap_or_else(|| panic!("{vg_uuid} not listed: {all}"));
    assert_eq!(mine["pvlist"][0]["devtype"], json!("iSCSI"), "{mine}");
    // The same LUN again is refused (it is in a VG now).
    call_err(
        &c,
        "LVMVolumeGroup.create",
        json!({"name": new_id(), "devlist": [w[0]]}),
        601,
    )
    .await;
    // A GUID that is not a device name.
    call_err(
        &c,
        "LVMVolumeGroup.create",
        json!({"name": new_id(), "devlist": ["../sda"]}),
        1000,
    )
    .await;

    // The domain: VDSM's tags on the VG, the special LVs.
    call_ok(
        &c,
        "StorageDomain.create",
        create_domain_params(&sd, ISCSI, &vg_uuid, "block one", 512),
    )
    .await;
    let tags = vg_tags(&sd, &luns);
    assert!(
        tags.contains(&"RHAT_storage_domain".to_string()),
        "{tags:?}"
    );
    assert!(!tags.contains(&"RHAT_storage_domain_UNREADY".to_string()));
    assert!(tags.contains(&format!("MDT_SDUUID={sd}")), "{tags:?}");
    assert!(
        tags.contains(&"MDT_DESCRIPTION=block&32&one".to_string()),
        "{tags:?}"
    );
    assert!(tags.iter().any(|t| t.starts_with("MDT__SHA_CKSUM=")));
    assert!(tags.contains(&format!("MDT_VGUUID={vg_uuid}")), "{tags:?}");
    assert!(
        tags.iter().any(|t| t.starts_with("MDT_PV0=pv:")),
        "{tags:?}"
    );
    for lv in [
        "metadata", "ids", "leases", "xleases", "inbox", "outbox", "master",
    ] {
        assert!(lv_tags(&sd, lv, &luns).len() <= 1, "special LV {lv} exists");
    }
    // sanlock's lockspace on the ids LV and the SDM lease at slot 1 of
    // the leases LV (docs/formats.md "Lockspace and leases").
    let direct = depot_os::sanlock::DirectConfig::default();
    let dev = |lv: &str| std::path::PathBuf::from(format!("/dev/{sd}/{lv}"));
    let ids = depot_os::sanlock::direct_read_leader(
        &direct,
        &sd,
        "1",
        false,
        &depot_os::sanlock::Area::new(dev("ids"), 0),
    )
    .expect("a lockspace on the ids LV");
    assert_eq!(
        (ids["magic"].as_str(), ids["space_name"].as_str()),
        ("0x12212010", sd.as_str()),
        "{ids:?}"
    );
    let sdm = depot_os::sanlock::direct_read_leader(
        &direct,
        &sd,
        "SDM",
        true,
        &depot_os::sanlock::Area::new(dev("leases"), 1 << 20),
    )
    .expect("the SDM lease on the leases LV");
    assert_eq!(sdm["magic"], "0x6152010", "{sdm:?}");
    // The xleases LV's index, and a lease on it (docs/storage.md "VM and
    // external leases (xleases)"; storage_xleases.rs tests the rest on a
    // file domain).
    let lease_id = new_id();
    let lease = json!({"lease": {"sd_id": sd, "lease_id": lease_id}});
    call_ok(&c, "Lease.create", lease.clone()).await;
    let li = call_ok(&c, "Lease.info", lease.clone()).await;
    assert_eq!(li["path"], json!(format!("/dev/{sd}/xleases")), "{li}");
    assert_eq!(li["offset"], json!(3 << 20), "{li}");
    let leader = depot_os::sanlock::direct_read_leader(
        &direct,
        &sd,
        &lease_id,
        true,
        &depot_os::sanlock::Area::new(dev("xleases"), 3 << 20),
    )
    .expect("the lease on the xleases LV");
    assert_eq!(leader["resource_name"], lease_id, "{leader:?}");
    call_ok(&c, "Lease.delete", lease.clone()).await;
    call_err(&c, "Lease.info", lease, 936).await;
    let info = call_ok(&c, "StorageDomain.getInfo", json!({"storagedomainID": sd})).await;
    conform.check("StorageDomain.getInfo", &info);
    assert_eq!(info["type"], json!("ISCSI"), "{info}");
    assert_eq!(info["name"], json!("block one"));
    // VDSM's block additions (blockSD.getInfo); the engine's import reads
    // vguuid. One LUN: it holds the metadata LV and the VG's metadata.
    assert_eq!(info["vguuid"], json!(vg_uuid), "{info}");
    assert_eq!(info["state"], json!("OK"), "{info}");
    assert_eq!(info["metadataDevice"], json!(w[0]), "{info}");
    assert_eq!(info["vgMetadataDevice"], json!(w[0]), "{info}");
    let stats = call_ok(&c, "StorageDomain.getStats", json!({"storagedomainID": sd})).await;
    conform.check("StorageDomain.getStats", &stats);
    assert!(num(&stats["disktotal"], "disktotal") > 5 * GIB, "{stats}");
    call_err(
        &c,
        "StorageDomain.create",
        create_domain_params(&sd, ISCSI, &vg_uuid, "again", 512),
        365,
    )
    .await;
    let found = call_ok(&c, "Host.getStorageDomains", json!({"storageType": ISCSI})).await;
    assert!(found.as_array().unwrap().contains(&json!(sd)), "{found}");

    // Volumes: RAW preallocated, and a COW chain of two.
    let (img1, raw) = (new_id(), new_id());
    call_ok(
        &c,
        "Volume.create",
        volume_params(
            &sd,
            &img1,
            &raw,
            32 * MIB,
            "RAW",
            "PREALLOCATED",
            "raw",
            None,
        ),
    )
    .await;
    let t = lv_tags(&sd, &raw, &luns);
    assert!(t.contains(&format!("IU_{img1}")), "{t:?}");
    assert!(t.contains(&format!("PU_{BLANK}")), "{t:?}");
    assert!(t.iter().any(|t| t.starts_with("MD_")), "{t:?}");
    assert!(!t.contains(&"OVIRT_VOL_INITIALIZING".to_string()), "{t:?}");
    // Its sanlock lease at slot 100 + its metadata slot of the leases LV
    // (docs/formats.md "Lockspace and leases (depot)"), 1 MiB alignment.
    let slot: u64 = t
        .iter()
        .find_map(|t| t.strip_prefix("MD_"))
        .and_then(|n| n.parse().ok())
        .expect("an MD_ tag");
    let lease = depot_os::sanlock::direct_read_leader(
        &direct,
        &sd,
        &raw,
        true,
        &depot_os::sanlock::Area::new(dev("leases"), (100 + slot) << 20),
    )
    .expect("the volume's lease on the leases LV");
    assert_eq!(
        (lease["magic"].as_str(), lease["resource_name"].as_str()),
        ("0x6152010", raw.as_str()),
        "{lease:?}"
    );
    let vi = volume_info(&c, &sd, &img1, &raw).await;
    assert_eq!(vi["format"], json!("RAW"));
    assert_eq!(num(&vi["capacity"], "capacity"), 32 * MIB);
    // RAW sparse cannot be an LV.
    call_err(
        &c,
        "Volume.create",
        volume_params(&sd, &img1, &new_id(), 32 * MIB, "RAW", "SPARSE", "x", None),
        202,
    )
    .await;

    let (img2, base, top) = (new_id(), new_id(), new_id());
    call_ok(
        &c,
        "Volume.create",
        volume_params(&sd, &img2, &base, 64 * MIB, "COW", "SPARSE", "base", None),
    )
    .await;
    call_ok(
        &c,
        "Volume.setLegality",
        json!({"storagepoolID": BLANK, "storagedomainID": sd, "imageID": img2,
               "volumeID": base, "legality": "LEGAL"}),
    )
    .await;
    call_ok(
        &c,
        "Volume.create",
        volume_params(
            &sd,
            &img2,
            &top,
            64 * MIB,
            "COW",
            "SPARSE",
            "top",
            Some(&base),
        ),
    )
    .await;
    call_ok(
        &c,
        "Volume.setLegality",
        json!({"storagepoolID": BLANK, "storagedomainID": sd, "imageID": img2,
               "volumeID": top, "legality": "LEGAL"}),
    )
    .await;
    assert!(lv_tags(&sd, &top, &luns).contains(&format!("PU_{base}")));
    let bi = volume_info(&c, &sd, &img2, &base).await;
    assert_eq!(bi["voltype"], json!("INTERNAL"), "{bi}");
    assert_eq!(list_volumes(&c, &sd, &img2).await, set(&[&base, &top]));
    assert_eq!(list_images(&c, &sd).await, set(&[&img1, &img2]));
    call_ok(
        &c,
        "Volume.setDescription",
        json!({"storagepoolID": BLANK, "storagedomainID": sd, "imageID": img2,
               "volumeID": top, "description": "{\"DiskAlias\":\"a b\"}"}),
    )
    .await;
    assert_eq!(
        volume_info(&c, &sd, &img2, &top).await["description"],
        json!("{\"DiskAlias\":\"a b\"}")
    );

    // Prepare activates the chain and links it; qemu sees the backing chain.
    let prep = call_ok(
        &c,
        "Image.prepare",
        json!({"storagepoolID": BLANK, "storagedomainID": sd, "imageID": img2, "volumeID": top}),
    )
    .await;
    let path = prep["path"].as_str().unwrap().to_string();
    assert!(is_active(&sd, &top) && is_active(&sd, &base));
    let qi = ok(&["qemu-img", "info", "--backing-chain", "-U", &path]);
    assert!(qi.contains(&base), "{qi}");
    // The udev rule gave the volume LVs to qemu's group.
    ok(&["udevadm", "settle"]);
    let owner = ok(&["stat", "-L", "-c", "%U:%G %a", &path]);
    assert_eq!(owner.trim(), "root:kvm 660", "volume LV {path}");
    let md_owner = ok(&[
        "stat",
        "-L",
        "-c",
        "%U:%G %a",
        &format!("/dev/{sd}/metadata"),
    ]);
    assert_eq!(md_owner.trim(), "root:root 600", "metadata LV");
    call_ok(
        &c,
        "Image.teardown",
        json!({"storagepoolID": BLANK, "storagedomainID": sd, "imageID": img2}),
    )
    .await;
    assert!(
        !is_active(&sd, &top) && !is_active(&sd, &base),
        "teardown deactivates"
    );

    // Extend a COW volume.
    call_ok(
        &c,
        "Volume.extendSize",
        json!({"storagepoolID": BLANK, "storagedomainID": sd, "imageID": img2,
               "volumeID": top, "newSize": (128 * MIB).to_string()}),
    )
    .await;
    assert_eq!(
        num(
            &volume_info(&c, &sd, &img2, &top).await["capacity"],
            "capacity"
        ),
        128 * MIB
    );

    // OVF_STORE on the block domain: PUT, GET back, listing.
    let (oimg, ovol) = (new_id(), new_id());
    let mut p = volume_params(
        &sd,
        &oimg,
        &ovol,
        128 * MIB,
        "RAW",
        "PREALLOCATED",
        "OVF_STORE",
        None,
    );
    p["diskType"] = json!("OVFS");
    call_ok(&c, "Volume.create", p).await;
    let vm = ovf_common::Entity::vm("vm-on-block", &[(&img2, &top)]);
    let tar = ovf_common::engine_tar(&sd, &[vm], &[]);
    let headers = [
        ("Storage-Pool-Id", BLANK),
        ("Storage-Domain-Id", sd.as_str()),
        ("Image-Id", oimg.as_str()),
        ("Volume-Id", ovol.as_str()),
    ];
    let mut tc = d.tls_client().await;
    tc.set_call_timeout(SLOW);
    tc.put_stream(&headers, tar.len() as u64, &tar[..])
        .await
        .expect("OVF PUT on a block domain");
    let mut back = Vec::new();
    tc.get_range(&headers, 0, tar.len() as u64 - 1, &mut back)
        .await
        .expect("OVF GET");
    assert!(back == tar, "OVF_STORE content differs after a round trip");

    // A second LUN: StorageDomain.extend.
    let extended = call_ok(
        &c,
        "StorageDomain.extend",
        json!({"storagedomainID": sd, "storagepoolID": BLANK, "devlist": [w[1]]}),
    )
    .await;
    conform.check("StorageDomain.extend", &extended);
    let info = call_ok(
        &c,
        "LVMVolumeGroup.getInfo",
        json!({"lvmvolumegroupID": vg_uuid}),
    )
    .await;
    assert_eq!(info["pvlist"].as_array().unwrap().len(), 2, "{info}");
    assert!(vg_tags(&sd, &luns)
        .iter()
        .any(|t| t.starts_with("MDT_PV1=pv:")));
    // Both PVs keep a copy of the VG's metadata now: as VDSM, no
    // vgMetadataDevice then. The metadata LV stays on the first LUN.
    let info = call_ok(&c, "StorageDomain.getInfo", json!({"storagedomainID": sd})).await;
    conform.check("StorageDomain.getInfo", &info);
    assert_eq!(info["metadataDevice"], json!(w[0]), "{info}");
    assert!(info.get("vgMetadataDevice").is_none(), "{info}");
    // resizePV on a LUN that did not grow: the PV's size as it is, a bare
    // decimal string (VDSM's answer; the engine reads that string).
    let size = call_ok(
        &c,
        "StorageDomain.resizePV",
        json!({"storagedomainID": sd, "storagepoolID": BLANK, "guid": w[1]}),
    )
    .await;
    conform.check("StorageDomain.resizePV", &size);
    let vg = call_ok(
        &c,
        "LVMVolumeGroup.getInfo",
        json!({"lvmvolumegroupID": vg_uuid}),
    )
    .await;
    conform.check("LVMVolumeGroup.getInfo", &vg);
    let pv = vg["pvlist"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["GUID"] == json!(w[1]))
        .unwrap_or_else(|| panic!("no PV on {}: {vg}", w[1]));
    assert_eq!(size, pv["capacity"], "resizePV answered {size}");
    assert!(num(&size, "resizePV") > 0);

    // A volume whose creation a crash interrupted: its LV still carries
    // OVIRT_VOL_INITIALIZING. After kill -9 and a start, depot finds the
    // domain on the VG again and removes that LV.
    let (himg, half) = (new_id(), new_id());
    ok(&[
        "lvcreate",
        "--config",
        &luns.lvm_config(),
        "--activate",
        "n",
        "--zero",
        "n",
        "--size",
        "128m",
        "--name",
        &half,
        "--addtag",
        "OVIRT_VOL_INITIALIZING",
        "--addtag",
        &format!("IU_{himg}"),
        "--addtag",
        &format!("PU_{BLANK}"),
        "--addtag",
        "MD_999",
        &sd,
    ]);
    d.crash();
    d.restart();
    let mut c = d.client().await;
    c.set_call_timeout(SLOW);
    let vi = volume_info(&c, &sd, &img2, &top).await;
    assert_eq!(vi["description"], json!("{\"DiskAlias\":\"a b\"}"));
    let lvs = ok(&[
        "lvs",
        "--config",
        &luns.lvm_config(),
        "--noheadings",
        "-o",
        "lv_name",
        &sd,
    ]);
    assert!(
        !lvs.contains(&half),
        "the half-created LV was removed: {lvs}"
    );
    assert!(!list_images(&c, &sd).await.contains(&himg));

    // Delete: the child first; its parent becomes a leaf again.
    call_err(
        &c,
        "Volume.delete",
        json!({"storagepoolID": BLANK, "storagedomainID": sd, "imageID": img2,
               "volumeID": base, "postZero": false, "force": false}),
        204,
    )
    .await;
    call_ok(
        &c,
        "Volume.delete",
        json!({"storagepoolID": BLANK, "storagedomainID": sd, "imageID": img2,
               "volumeID": top, "postZero": true, "force": false}),
    )
    .await;
    assert_eq!(list_volumes(&c, &sd, &img2).await, set(&[&base]));
    assert_eq!(
        volume_info(&c, &sd, &img2, &base).await["voltype"],
        json!("LEAF")
    );
    call_ok(
        &c,
        "Image.delete",
        json!({"storagepoolID": BLANK, "storagedomainID": sd, "imageID": img1,
               "postZero": false, "force": false}),
    )
    .await;
    assert_eq!(list_images(&c, &sd).await, set(&[&img2, &oimg]));

    // A pool with the block domain as master: the domain's metadata goes
    // into its VG tags, and the monitor reads the metadata LV (dom_md).
    let sp = new_id();
    call_ok(
        &c,
        "StoragePool.create",
        json!({"storagepoolID": sp, "name": "san pool", "masterSdUUID": sd,
               "masterVersion": 1, "domainList": [sd]}),
    )
    .await;
    assert!(vg_tags(&sd, &luns).contains(&"MDT_ROLE=Master".to_string()));
    assert!(vg_tags(&sd, &luns).contains(&format!("MDT_POOL_UUID={sp}")));
    call_ok(
        &c,
        "StoragePool.connect",
        json!({"storagepoolID": sp, "hostID": 1, "scsiKey": sp, "masterSdUUID": sd,
               "masterVersion": 1, "domainDict": {sd.clone(): "active"}}),
    )
    .await;
    let stats = wait_actual(&c, &sd).await;
    assert_eq!(stats["valid"], json!(true), "{stats}");
    // sanlock without its daemon: spmStart cannot take the SPM's lease,
    // so this host is not the SPM and the SPM's verbs refuse (654),
    // changing nothing (docs/storage.md "Verbs only the SPM runs").
    let tags = vg_tags(&sd, &luns);
    call_err(
        &c,
        "StorageDomain.deactivate",
        json!({"storagedomainID": sd, "storagepoolID": sp, "masterSdUUID": sd, "masterVersion": 1}),
        654,
    )
    .await;
    call_err(
        &c,
        "Volume.create",
        volume_params(
            &sd,
            &new_id(),
            &new_id(),
            MIB,
            "RAW",
            "SPARSE",
            "not spm",
            None,
        ),
        654,
    )
    .await;
    assert_eq!(vg_tags(&sd, &luns), tags, "a refused verb changed the VG");
    call_ok(
        &c,
        "StoragePool.disconnect",
        json!({"storagepoolID": sp, "hostID": 1, "scsiKey": sp}),
    )
    .await;

    // The VG cannot be removed while it holds a domain; format removes both.
    call_err(
        &c,
        "LVMVolumeGroup.remove",
        json!({"lvmvolumegroupID": vg_uuid}),
        515,
    )
    .await;
    call_ok(
        &c,
        "StorageDomain.format",
        json!({"storagedomainID": sd, "autoDetach": true}),
    )
    .await;
    call_err(
        &c,
        "StorageDomain.getInfo",
        json!({"storagedomainID": sd}),
        358,
    )
    .await;
    call_err(
        &c,
        "LVMVolumeGroup.getInfo",
        json!({"lvmvolumegroupID": vg_uuid}),
        506,
    )
    .await;

    // A VG that holds no domain is removed with its PVs.
    let spare = call_ok(
        &c,
        "LVMVolumeGroup.create",
        json!({"name": new_id(), "devlist": [w[1]]}),
    )
    .await;
    let removed = call_ok(
        &c,
        "LVMVolumeGroup.remove",
        json!({"lvmvolumegroupID": spare}),
    )
    .await;
    conform.check("LVMVolumeGroup.remove", &removed);
    call_err(
        &c,
        "LVMVolumeGroup.getInfo",
        json!({"lvmvolumegroupID": spare}),
        506,
    )
    .await;
    conform.assert_all_used("vm_block");
    d.stop();
}
