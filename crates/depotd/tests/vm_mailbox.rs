//! Thin block volume extension through the SPM mailbox in the VM tier
//! (tests/vm/run; docs/storage.md "Thin volume extension"): a block domain
//! on the guest's iSCSI LUN as a pool's master, this host its SPM (the
//! local role: sanlock off), a thin COW volume prepared. The host's
//! requests go through the real `inbox` and `outbox` LVs to the SPM's
//! thread (the same daemon: VDSM's SPM also asks itself through the
//! mailbox), which extends the LV; the host refreshes it. A writer fills
//! the volume in steps and never gets an I/O error: the watermark asks
//! for an extend before the LV fills. The round trips are printed (issue
//! 16's benchmark, docs/performance.md).

mod common;
mod storage_common;
#[path = "../../depot-storage/tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use common::Daemon;
use depot_client::Client;
use serde_json::{json, Value};
use storage_common::*;
use support::vm::{ok, run, Luns};

const ISCSI: i64 = 3;
const SLOW: Duration = Duration::from_secs(600);
/// A 256 MiB chunk, asked when less than 128 MiB is free.
const MAILBOX_CONFIG: &str = "[storage]\nmonitor_interval_s = 0.2\n\
    [sanlock]\nenabled = false\n\
    [mailbox]\nmax_host_id = 10\n\
    [thinp]\nchunk_mb = 256\nutilization_percent = 50\ncheck_interval_s = 0.5\n";
const CHUNK: u64 = 256 * MIB;
const FREE_LIMIT: u64 = 128 * MIB;
const STEP: u64 = 64 * MIB;

fn lv_size(vg: &str, lv: &str, luns: &Luns) -> u64 {
    let cfg = luns.lvm_config();
    let out = ok(&[
        "lvs",
        "--config",
        &cfg,
        "--noheadings",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        "lv_size",
        &format!("{vg}/{lv}"),
    ]);
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("lv_size {out:?}"))
}

/// The size of the active LV's device on this host (what a writer sees).
fn dev_size(path: &str) -> u64 {
    ok(&["blockdev", "--getsize64", path])
        .trim()
        .parse()
        .unwrap()
}

fn image_end(path: &str) -> u64 {
    let out = run(&[
        "qemu-img", "check", "-U", "--output", "json", "-f", "qcow2", path,
    ]);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("qemu-img check {path}: {e}: {out:?}"));
    v["image-end-offset"].as_u64().expect("image-end-offset")
}

async fn task_end(c: &Client, task: &str) -> Value {
    let start = Instant::now();
    loop {
        let s = call_ok(c, "Task.getStatus", json!({"taskID": task})).await;
        if s["taskState"] == "finished" {
            return s;
        }
        assert!(start.elapsed() < SLOW, "task {task}: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the vm tier (tests/vm/run)"]
async fn thin_lv_is_extended_through_the_mailbox_before_it_fills() {
    depot_testkit::require_vm();
    let luns = Luns::login();
    let mut d = Daemon::start(MAILBOX_CONFIG);
    let mut c = d.client().await;
    c.set_call_timeout(SLOW);
    let sd = new_id();

    // A block domain, master of a pool; this host its SPM.
    let vg_uuid = call_ok(
        &c,
        "LVMVolumeGroup.create",
        json!({"name": sd, "devlist": [luns.wwids[0]], "force": false}),
    )
    .await;
    call_ok(
        &c,
        "StorageDomain.create",
        create_domain_params(&sd, ISCSI, vg_uuid.as_str().unwrap(), "thin", 512),
    )
    .await;
    let sp = new_id();
    call_ok(
        &c,
        "StoragePool.create",
        json!({"storagepoolID": sp, "name": "mailbox pool", "masterSdUUID": sd,
               "masterVersion": 1, "domainList": [sd]}),
    )
    .await;
    call_ok(
        &c,
        "StoragePool.connect",
        json!({"storagepoolID": sp, "hostID": 1, "scsiKey": sp, "masterSdUUID": sd,
               "masterVersion": 1, "domainDict": {sd.clone(): "active"}}),
    )
    .await;
    let task = call_ok(
        &c,
        "StoragePool.spmStart",
        json!({"storagepoolID": sp, "prevID": -1, "prevLver": "-1",
               "enableScsiFencing": "false", "maxHostID": 10}),
    )
    .await;
    let end = task_end(&c, task.as_str().unwrap()).await;
    assert_eq!(end["taskResult"], "success", "{end}");

    // A thin COW volume of 2 GiB: its LV starts at 1 GiB.
    let (img, vol) = (new_id(), new_id());
    call_ok(
        &c,
        "Volume.create",
        volume_params(&sd, &img, &vol, 2 << 30, "COW", "SPARSE", "thin", None),
    )
    .await;
    call_ok(
        &c,
        "Volume.setLegality",
        json!({"storagepoolID": BLANK, "storagedomainID": sd, "imageID": img,
               "volumeID": vol, "legality": "LEGAL"}),
    )
    .await;
    let first = lv_size(&sd, &vol, &luns);
    assert_eq!(first, 1 << 30);
    let extend = |size: u64, img: &str| {
        json!({"storagepoolID": sp, "storagedomainID": sd, "imageID": img,
               "volumeID": vol, "newSize": size.to_string()})
    };
    // Not prepared on this host: refused, nothing asked.
    call_err(&c, "Volume.requestExtend", extend(first + CHUNK, &img), 206).await;
    // A domain not in the pool.
    call_err(
        &c,
        "Volume.requestExtend",
        json!({"storagepoolID": sp, "storagedomainID": new_id(), "imageID": img,
               "volumeID": vol, "newSize": "1"}),
        353,
    )
    .await;

    let prep = call_ok(
        &c,
        "Image.prepare",
        json!({"storagepoolID": sp, "storagedomainID": sd, "imageID": img, "volumeID": vol}),
    )
    .await;
    let path = prep["path"].as_str().unwrap().to_string();
    let dev = format!("/dev/{sd}/{vol}");

    // The explicit request: one message round trip through the LVs, then
    // the refresh. The answer is the LV's new size, and the device on this
    // host has it.
    let t = Instant::now();
    let got = call_ok(&c, "Volume.requestExtend", extend(first + CHUNK, &img)).await;
    let round_trip = t.elapsed();
    let now = lv_size(&sd, &vol, &luns);
    assert_eq!(now, first + CHUNK);
    assert_eq!(got["apparentsize"], json!(now.to_string()), "{got}");
    assert_eq!(dev_size(&dev), now, "the LV is refreshed on this host");
    println!(
        "mailbox: explicit extend round trip (request, SPM lvextend, answer, refresh) {} ms",
        round_trip.as_millis()
    );
    // Where the time went, as depotd logged it (the host's answer wait, its
    // total with the refresh; the SPM's extend).
    for line in d.log().lines().filter(|l| {
        l.contains("volume extended through the mailbox") || l.contains("SPM: thin volume extended")
    }) {
        println!("mailbox: depotd: {}", line.trim());
    }
    // Idempotent: the same size again is answered at once, from the LV.
    let t = Instant::now();
    let again = call_ok(&c, "Volume.requestExtend", extend(first + CHUNK, &img)).await;
    assert_eq!(again, got);
    println!(
        "mailbox: a size already reached answered in {} ms",
        t.elapsed().as_millis()
    );
    assert_eq!(lv_size(&sd, &vol, &luns), now);

    // The writer: 64 MiB steps from offset 0. Before each step the LV has
    // at least the watermark's free space (the wait is for the watermark
    // and the mailbox, bounded); every write must succeed.
    let mut offset = 0;
    let mut crossings = Vec::new();
    let total = now + 2 * CHUNK;
    while offset < total {
        let size_before = dev_size(&dev);
        let out = run(&[
            "qemu-io",
            "-f",
            "qcow2",
            "-c",
            &format!("write -P 0x5a {offset} {STEP}"),
            &path,
        ]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !text.contains("error") && !text.contains("No space"),
            "write at {offset} (LV {size_before}): {text}"
        );
        offset += STEP;
        let end = image_end(&path);
        if size_before.saturating_sub(end) < FREE_LIMIT {
            // Over the watermark: the LV grows by a chunk.
            let t = Instant::now();
            loop {
                let size = dev_size(&dev);
                if size > size_before && size.saturating_sub(end) >= FREE_LIMIT {
                    crossings.push((size_before, size, t.elapsed()));
                    break;
                }
                assert!(
                    t.elapsed() < Duration::from_secs(120),
                    "LV still {size} bytes with the image at {end}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(
        !crossings.is_empty(),
        "the writer never crossed the watermark"
    );
    // The watermark's probe on this image, as the watermark runs it.
    let t = Instant::now();
    let end = image_end(&path);
    println!(
        "mailbox: qemu-img check -U of the {} MiB image: {} ms",
        end >> 20,
        t.elapsed().as_millis()
    );
    for (before, after, took) in &crossings {
        println!(
            "mailbox: watermark extend {} -> {} MiB seen by the writer {} ms after its write",
            before >> 20,
            after >> 20,
            took.as_millis()
        );
    }
    assert!(lv_size(&sd, &vol, &luns) > now);
    // Everything written reads back; the image is clean.
    let read = ok(&[
        "qemu-io",
        "-f",
        "qcow2",
        "-c",
        &format!("read -P 0x5a 0 {offset}"),
        &path,
    ]);
    assert!(!read.contains("Pattern verification failed"), "{read}");
    ok(&["qemu-img", "check", "-f", "qcow2", &path]);
    // Never beyond the fully allocated size (2 GiB + 10% + 1 MiB, in
    // 128 MiB extents) even when asked for more.
    let max = call_ok(&c, "Volume.requestExtend", extend(8 << 30, &img)).await;
    let max: u64 = max["apparentsize"].as_str().unwrap().parse().unwrap();
    let full: u64 = (2u64 << 30) + (2u64 << 30) / 10 + MIB;
    assert!(max >= full && max < full + 128 * MIB, "{max}");

    call_ok(
        &c,
        "Image.teardown",
        json!({"storagepoolID": sp, "storagedomainID": sd, "imageID": img}),
    )
    .await;
    // Cleanup as vm_block's: the SPM role given back, the pool
    // disconnected, the domain formatted with autoDetach (a deactivate
    // after spmStop is the SPM's verb and answers 654 now).
    call_ok(&c, "StoragePool.spmStop", json!({"storagepoolID": sp})).await;
    call_ok(
        &c,
        "StoragePool.disconnect",
        json!({"storagepoolID": sp, "hostID": 1, "scsiKey": sp}),
    )
    .await;
    call_ok(
        &c,
        "StorageDomain.format",
        json!({"storagedomainID": sd, "autoDetach": true}),
    )
    .await;
    d.stop();
}
