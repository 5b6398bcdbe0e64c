//! Disk copy and move end to end (issue 5) over a real daemon, real files
//! and real qemu-img: SDM.copy_data (raw sparse and preallocated, qcow2 to
//! raw, raw to qcow2), Image.move COPY and MOVE of a 3-volume chain,
//! Volume.getChecksum, the generation check (911), abort, kill -9 and
//! resume, a destination too small, a source that grows during the copy.
//! Every checksum is compared with an independent blkhash in Python.
//!
//! Root tier (reported as ignored in the others): copies both
//! ways between LOCALFS and POSIXFS on xfs with 4096-byte sectors, and
//! GlusterFS (depot-storage's harness); a full destination file system.
//!
//! The copies run one at a time (`HEAVY`): the machine is shared and the
//! daemon is a debug build.

mod common;
mod copy_common;
mod storage_common;
#[path = "../../depot-storage/tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use common::Daemon;
use copy_common::*;
use depot_client::Client;
use serde_json::json;
use storage_common::*;

/// A daemon with `n` LOCALFS domains on temporary directories.
struct Env {
    d: Daemon,
    c: Client,
    doms: Vec<Dom>,
    _dirs: Vec<tempfile::TempDir>,
}

async fn env(n: usize) -> Env {
    let d = Daemon::start(CONFIG);
    let c = d.client().await;
    let mut doms = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..n {
        let dir = tempfile::tempdir().unwrap();
        doms.push(local_domain(&c, &d, dir.path()).await);
        dirs.push(dir);
    }
    Env {
        d,
        c,
        doms,
        _dirs: dirs,
    }
}

/// Asserts the volume's `.meta` says LEGALITY and GEN.
fn assert_md(v: &Vol, legality: &str, generation: u32) {
    let md = v.md();
    assert_eq!(
        (md["LEGALITY"].as_str(), md["GEN"].as_str()),
        (legality, generation.to_string().as_str()),
        "{}: {md:?}",
        v.meta().display()
    );
}

/// A raw sparse source: random data at a few offsets (one unaligned), an
/// allocated range of zeros, holes elsewhere. Returns the bytes of data.
fn fill_sparse(path: &std::path::Path, size: u64, seed: u64) -> u64 {
    let pieces = [
        (0, MIB),
        (17 * MIB + 4096, 300 * 1024),
        (40 * MIB - 512, 2 * MIB + 1536),
        (size - 4096, 4096),
    ];
    for (i, (off, len)) in pieces.iter().enumerate() {
        write_random(path, *off, *len, seed + i as u64);
    }
    // Zeros that are allocated in the source: the copier must treat them
    // as a hole.
    write_at(path, 50 * MIB, &vec![0u8; 2 * MIB as usize]);
    pieces.iter().map(|p| p.1).sum()
}

// ---------------------------------------------------------------------------
// 1 and 9: raw sparse -> raw, checksums
// ---------------------------------------------------------------------------

#[tokio::test]
async fn raw_sparse_to_raw_checksum_matches_python_and_holes_stay_holes() {
    let _heavy = HEAVY.lock().await;
    let e = env(2).await;
    let (a, b, c) = (&e.doms[0], &e.doms[1], &e.c);
    let size = 64 * MIB;
    let src = a.new_volume(c, size, "RAW", "SPARSE").await;
    let dst = b.new_volume(c, size, "RAW", "SPARSE").await;
    let data = fill_sparse(&src.path, size, 1);
    let src_digest = file_digest(&src.path);
    let src_meta = std::fs::read(src.meta()).unwrap();
    assert_md(&dst, "LEGAL", 0);

    let t = Instant::now();
    let res = copy_ok(c, &src, &dst, Some(0)).await;
    eprintln!(
        "raw sparse 64 MiB ({data} bytes of data): copy job {:.2?}: {res}",
        t.elapsed()
    );
    assert_eq!(res["method"], "native", "{res}");
    assert_eq!(res["verified"], true, "{res}");
    assert_eq!(res["generation"], 1, "{res}");
    assert_eq!(res["resumed_from"], 0, "{res}");
    let sum = result_checksum(&res);

    // The independent implementation, over the source and the copy.
    let t = Instant::now();
    let py = python_blkhash(&src.path, size);
    eprintln!("python blkhash of 64 MiB: {:.2?}", t.elapsed());
    assert_eq!(
        sum, py,
        "the copy's checksum vs Python's blkhash of the source"
    );
    assert_eq!(python_blkhash(&dst.path, size), py);
    assert_same_bytes(&src.path, &dst.path, size);
    assert_eq!(dst.size(), size);

    // The destination is LEGAL with GEN+1; the source untouched.
    assert_md(&dst, "LEGAL", 1);
    let vi = vol_info(c, &dst).await;
    assert_eq!(
        (vi["legality"].as_str(), &vi["generation"]),
        (Some("LEGAL"), &json!(1)),
        "{vi}"
    );
    assert_eq!(file_digest(&src.path), src_digest, "source data changed");
    assert_eq!(
        std::fs::read(src.meta()).unwrap(),
        src_meta,
        "source metadata changed"
    );

    // Holes stay holes, and allocated zeros become holes.
    let (sa, da) = (src.allocated(), dst.allocated());
    eprintln!("allocated: source {sa}, destination {da}, data {data}");
    assert!(
        da <= data + MIB,
        "destination allocates {da} bytes for {data} bytes of data"
    );
    assert!(
        da < sa,
        "the source's 2 MiB of allocated zeros were not copied as a hole: {da} >= {sa}"
    );

    // 9: Volume.getChecksum of the source (and of the copy) agrees.
    let t = Instant::now();
    assert_eq!(
        checksum_job(c, &src).await,
        py,
        "Volume.getChecksum of the source"
    );
    eprintln!("Volume.getChecksum of 64 MiB sparse: {:.2?}", t.elapsed());
    assert_eq!(
        checksum_job(c, &dst).await,
        py,
        "Volume.getChecksum of the copy"
    );

    // Copying again over the copy (now GEN 1) with other data: the old
    // bytes where the new source has holes must go.
    let src2 = a.new_volume(c, size, "RAW", "SPARSE").await;
    write_random(&src2.path, 8 * MIB, MIB, 99);
    let res = copy_ok(c, &src2, &dst, Some(1)).await;
    assert_eq!(result_checksum(&res), python_blkhash(&src2.path, size));
    assert_same_bytes(&src2.path, &dst.path, size);
    assert_md(&dst, "LEGAL", 2);
    assert!(
        dst.allocated() <= 2 * MIB,
        "old data left allocated: {}",
        dst.allocated()
    );
}

/// An empty (all-hole) source: the checksum is the blkhash of zeros.
#[tokio::test]
async fn raw_empty_source_checksum() {
    let _heavy = HEAVY.lock().await;
    let e = env(2).await;
    let (a, b, c) = (&e.doms[0], &e.doms[1], &e.c);
    let size = 32 * MIB + 512 * 1024; // a short last block
    let src = a.new_volume(c, size, "RAW", "SPARSE").await;
    let dst = b.new_volume(c, size, "RAW", "SPARSE").await;
    let res = copy_ok(c, &src, &dst, Some(0)).await;
    let py = python_blkhash(&src.path, size);
    assert_eq!(result_checksum(&res), py);
    assert_eq!(checksum_job(c, &src).await, py);
    assert_eq!(dst.allocated(), 0, "nothing to allocate");
    assert_md(&dst, "LEGAL", 1);
}

// ---------------------------------------------------------------------------
// 2: preallocated, qcow2 -> raw, raw -> qcow2
// ---------------------------------------------------------------------------

#[tokio::test]
async fn raw_preallocated_to_raw_preallocated() {
    let _heavy = HEAVY.lock().await;
    let e = env(2).await;
    let (a, b, c) = (&e.doms[0], &e.doms[1], &e.c);
    let size = 64 * MIB;
    let src = a.new_volume(c, size, "RAW", "PREALLOCATED").await;
    let dst = b.new_volume(c, size, "RAW", "PREALLOCATED").await;
    assert!(src.allocated() >= size && dst.allocated() >= size);
    for (i, off) in [0, 9 * MIB + 4096, 33 * MIB, 63 * MIB].iter().enumerate() {
        write_random(&src.path, *off, MIB, 10 + i as u64);
    }
    let t = Instant::now();
    let res = copy_ok(c, &src, &dst, Some(0)).await;
    eprintln!("raw preallocated 64 MiB: {:.2?}: {res}", t.elapsed());
    assert_eq!(res["method"], "native");
    assert_eq!(result_checksum(&res), python_blkhash(&src.path, size));
    assert_same_bytes(&src.path, &dst.path, size);
    assert_compare(&src.path, "raw", &dst.path, "raw");
    assert_md(&dst, "LEGAL", 1);
    assert!(
        dst.allocated() >= size,
        "a PREALLOCATED destination stays fully allocated: {} < {size}",
        dst.allocated()
    );
}

#[tokio::test]
async fn qcow2_to_raw() {
    let _heavy = HEAVY.lock().await;
    let e = env(2).await;
    let (a, b, c) = (&e.doms[0], &e.doms[1], &e.c);
    let size = 64 * MIB;
    let src = a.new_volume(c, size, "COW", "SPARSE").await;
    let dst = b.new_volume(c, size, "RAW", "SPARSE").await;
    qemu_io(&src.path, "qcow2", "write -P 0x55 0 1M");
    qemu_io(&src.path, "qcow2", "write -P 0xaa 20M 3M");
    qemu_io(&src.path, "qcow2", "write -P 0x01 63M 1M");
    let t = Instant::now();
    let res = copy_ok(c, &src, &dst, Some(0)).await;
    eprintln!("qcow2 -> raw 64 MiB: {:.2?}: {res}", t.elapsed());
    assert_eq!(res["method"], "qemu-img", "{res}");
    assert_eq!(res["generation"], 1, "{res}");
    assert_compare(&src.path, "qcow2", &dst.path, "raw");
    assert_eq!(qemu_img_info(&dst.path)["format"], "raw");
    assert_md(&dst, "LEGAL", 1);
    // The copy holds what qemu-io wrote, read as raw bytes.
    let mut buf = vec![0u8; MIB as usize];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(&dst.path).unwrap(),
        &mut buf,
        20 * MIB,
    )
    .unwrap();
    assert!(buf.iter().all(|&x| x == 0xaa));
}

#[tokio::test]
async fn raw_to_qcow2() {
    let _heavy = HEAVY.lock().await;
    let e = env(2).await;
    let (a, b, c) = (&e.doms[0], &e.doms[1], &e.c);
    let size = 64 * MIB;
    let src = a.new_volume(c, size, "RAW", "SPARSE").await;
    let dst = b.new_volume(c, size, "COW", "SPARSE").await;
    fill_sparse(&src.path, size, 20);
    let t = Instant::now();
    let res = copy_ok(c, &src, &dst, Some(0)).await;
    eprintln!("raw -> qcow2 64 MiB: {:.2?}: {res}", t.elapsed());
    assert_eq!(res["method"], "qemu-img", "{res}");
    assert_eq!(res["verified"], true, "{res}");
    let q = qemu_img_info(&dst.path);
    assert_eq!(q["format"], "qcow2", "still a qcow2: {q}");
    assert_eq!(q["virtual-size"], size, "{q}");
    assert_compare(&src.path, "raw", &dst.path, "qcow2");
    assert_md(&dst, "LEGAL", 1);
}

/// A copy onto a qcow2 volume that already holds data (a second copy,
/// GEN 1) must give the new source's data.
#[tokio::test]
async fn copy_onto_a_non_empty_qcow2_destination() {
    let _heavy = HEAVY.lock().await;
    let e = env(2).await;
    let (a, b, c) = (&e.doms[0], &e.doms[1], &e.c);
    let size = 64 * MIB;
    let src = a.new_volume(c, size, "RAW", "SPARSE").await;
    let dst = b.new_volume(c, size, "COW", "SPARSE").await;
    fill_sparse(&src.path, size, 22);
    copy_ok(c, &src, &dst, Some(0)).await;
    assert_compare(&src.path, "raw", &dst.path, "qcow2");
    // The second source has its data elsewhere and zeros where the first
    // one had data.
    let src2 = a.new_volume(c, size, "RAW", "SPARSE").await;
    write_random(&src2.path, 30 * MIB, MIB, 21);
    let id = start_copy(c, &src2, &dst, Some(1)).await;
    let j = wait_job(c, &id, JOB_WAIT).await;
    assert_eq!(
        j["status"], "done",
        "second copy onto a non-empty qcow2: {j}"
    );
    assert_compare(&src2.path, "raw", &dst.path, "qcow2");
    assert_md(&dst, "LEGAL", 2);
}

// ---------------------------------------------------------------------------
// 3: Image.move COPY and MOVE of a 3-volume chain
// ---------------------------------------------------------------------------

#[tokio::test]
async fn image_move_copy_and_move_of_a_chain() {
    let _heavy = HEAVY.lock().await;
    let e = env(3).await;
    let (a, b, m, c) = (&e.doms[0], &e.doms[1], &e.doms[2], &e.c);
    let size = 64 * MIB;
    let img = new_id();
    let base = a.create_volume(c, &img, size, "RAW", "SPARSE", None).await;
    write_random(&base.path, 0, 4 * MIB, 30);
    write_random(&base.path, 30 * MIB, MIB, 31);
    let l1 = a
        .create_volume(c, &img, size, "COW", "SPARSE", Some(&base.vol))
        .await;
    let l2 = a
        .create_volume(c, &img, size, "COW", "SPARSE", Some(&l1.vol))
        .await;
    qemu_io(&l1.path, "qcow2", "write -P 0x55 0 1M");
    qemu_io(&l2.path, "qcow2", "write -P 0x66 2M 1M");
    qemu_io(&l2.path, "qcow2", "write -P 0x77 30M 512k");
    let chain = [&base, &l1, &l2];
    let src_md: Vec<_> = chain.iter().map(|v| v.md()).collect();
    let src_digests: Vec<_> = chain.iter().map(|v| file_digest(&v.path)).collect();
    let base_sum = python_blkhash(&base.path, size);
    let leaf_alloc = l2.allocated();

    // COPY a -> b.
    let t = Instant::now();
    let id = start_move(c, a, b, &img, "COPY").await;
    let res = wait_done(c, &id).await;
    eprintln!(
        "Image.move COPY of a 3-volume chain: {:.2?}: {res}",
        t.elapsed()
    );
    let vols = res["volumes"].as_array().unwrap_or_else(|| panic!("{res}"));
    assert_eq!(vols.len(), 3, "{res}");
    assert_eq!(vols[0]["method"], "native", "{res}");
    assert_eq!(result_checksum(&vols[0]), base_sum, "the base's checksum");
    assert_eq!(
        (vols[1]["method"].as_str(), vols[2]["method"].as_str()),
        (Some("qemu-img"), Some("qemu-img"))
    );

    let check_chain = |dom: &Dom| {
        let dst: Vec<Vol> = chain.iter().map(|v| dom.vol(&img, &v.vol)).collect();
        for (i, (s, d)) in chain.iter().zip(&dst).enumerate() {
            let md = d.md();
            for k in [
                "CAP",
                "FORMAT",
                "PUUID",
                "VOLTYPE",
                "TYPE",
                "DISKTYPE",
                "IMAGE",
                "DESCRIPTION",
            ] {
                assert_eq!(
                    md[k], src_md[i][k],
                    "{k} of volume {i} ({}) on {}",
                    s.vol, dom.sd
                );
            }
            assert_eq!(md["DOMAIN"], dom.sd);
            assert_eq!(md["LEGALITY"], "LEGAL", "volume {i} on {}: {md:?}", dom.sd);
        }
        let q0 = qemu_img_info(&dst[0].path);
        assert_eq!(q0["format"], "raw", "{q0}");
        for i in 1..3 {
            let q = qemu_img_info(&dst[i].path);
            assert_eq!(q["format"], "qcow2", "{q}");
            assert_eq!(
                q["backing-filename"],
                chain[i - 1].vol.as_str(),
                "relative backing file: {q}"
            );
        }
        assert_eq!(python_blkhash(&dst[0].path, size), base_sum);
        // Each layer holds its own clusters, not the collapsed chain.
        assert!(
            dst[2].allocated() <= leaf_alloc + MIB,
            "the leaf was collapsed: {} vs {}",
            dst[2].allocated(),
            leaf_alloc
        );
        dst
    };
    let on_b = check_chain(b);
    let mut imgs = list_images(c, &b.sd).await;
    assert!(imgs.remove(&img));
    assert_eq!(
        list_volumes(c, &b.sd, &img).await,
        chain.iter().map(|v| v.vol.clone()).collect()
    );
    for i in 0..3 {
        let f = if i == 0 { "raw" } else { "qcow2" };
        assert_compare(&chain[i].path, f, &on_b[i].path, f);
    }
    // COPY kept the source, unchanged and LEGAL.
    assert!(list_images(c, &a.sd).await.contains(&img));
    for (i, v) in chain.iter().enumerate() {
        assert_eq!(v.md(), src_md[i], "source volume {i} metadata");
        assert_eq!(
            file_digest(&v.path),
            src_digests[i],
            "source volume {i} data"
        );
    }
    // The same image again without force: refused, b unchanged.
    let id = start_move(c, a, b, &img, "COPY").await;
    let j = wait_job(c, &id, JOB_WAIT).await;
    assert_eq!(j["status"], "failed", "{j}");
    assert_compare(&l2.path, "qcow2", &on_b[2].path, "qcow2");

    // MOVE a -> m: the copy there equals the one on b, and a loses it.
    let t = Instant::now();
    let id = start_move(c, a, m, &img, "MOVE").await;
    let res = wait_done(c, &id).await;
    eprintln!("Image.move MOVE of a 3-volume chain: {:.2?}", t.elapsed());
    let on_m = check_chain(m);
    assert_compare(&on_b[2].path, "qcow2", &on_m[2].path, "qcow2");
    assert_eq!(result_checksum(&res["volumes"][0]), base_sum);
    assert!(
        !list_images(c, &a.sd).await.contains(&img),
        "MOVE removed the source image"
    );
    assert!(
        !a.dom.join("images").join(&img).exists(),
        "the source image directory is gone"
    );
    for v in chain {
        call_err(c, "Volume.getInfo", vol_ref(&a.sd, &img, &v.vol), 201).await;
    }
}

/// Image.move of single-volume images (what works while chains do not):
/// RAW COPY then MOVE, and a qcow2 MOVE.
#[tokio::test]
async fn image_move_single_volume_copy_and_move() {
    let _heavy = HEAVY.lock().await;
    let e = env(3).await;
    let (a, b, m, c) = (&e.doms[0], &e.doms[1], &e.doms[2], &e.c);
    let size = 64 * MIB;
    let raw = a.new_volume(c, size, "RAW", "SPARSE").await;
    fill_sparse(&raw.path, size, 40);
    let sum = python_blkhash(&raw.path, size);
    let cow = a.new_volume(c, size, "COW", "SPARSE").await;
    qemu_io(&cow.path, "qcow2", "write -P 0x55 0 1M");
    let raw_md = raw.md();

    // COPY: same ids on b, LEGAL, GEN 1; the source stays as it was.
    let t = Instant::now();
    let id = start_move(c, a, b, &raw.img, "COPY").await;
    let res = wait_done(c, &id).await;
    eprintln!(
        "Image.move COPY of one 64 MiB RAW volume: {:.2?}: {res}",
        t.elapsed()
    );
    assert_eq!(result_checksum(&res["volumes"][0]), sum, "{res}");
    let on_b = b.vol(&raw.img, &raw.vol);
    assert_eq!(list_volumes(c, &b.sd, &raw.img).await, set(&[&raw.vol]));
    let md = on_b.md();
    for k in [
        "CAP",
        "FORMAT",
        "PUUID",
        "VOLTYPE",
        "TYPE",
        "DISKTYPE",
        "DESCRIPTION",
    ] {
        assert_eq!(md[k], raw_md[k], "{k}");
    }
    assert_eq!(md["LEGALITY"], "LEGAL");
    assert_same_bytes(&raw.path, &on_b.path, size);
    assert_eq!(raw.md(), raw_md, "COPY left the source as it was");
    assert!(list_images(c, &a.sd).await.contains(&raw.img));

    // MOVE: on m, and gone from a.
    let id = start_move(c, a, m, &raw.img, "MOVE").await;
    let res = wait_done(c, &id).await;
    assert_eq!(result_checksum(&res["volumes"][0]), sum, "{res}");
    let on_m = m.vol(&raw.img, &raw.vol);
    assert_eq!(on_m.md()["LEGALITY"], "LEGAL");
    assert_same_bytes(&on_b.path, &on_m.path, size);
    assert!(
        !list_images(c, &a.sd).await.contains(&raw.img),
        "MOVE removed the source"
    );
    assert!(!a.dom.join("images").join(&raw.img).exists());

    // A qcow2 volume moves through qemu-img.
    let id = start_move(c, a, b, &cow.img, "MOVE").await;
    let res = wait_done(c, &id).await;
    assert_eq!(res["volumes"][0]["method"], "qemu-img", "{res}");
    let cow_b = b.vol(&cow.img, &cow.vol);
    assert_eq!(qemu_img_info(&cow_b.path)["format"], "qcow2");
    assert_eq!(cow_b.md()["LEGALITY"], "LEGAL");
    let mut buf = vec![0u8; 4096];
    let out = std::process::Command::new("qemu-img")
        .args(["dd", "-f", "qcow2", "-O", "raw", "bs=1M", "count=1"])
        .arg(format!("if={}", cow_b.path.display()))
        .arg(format!("of={}", e.d.dir.path().join("head.raw").display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::io::Read::read_exact(
        &mut std::fs::File::open(e.d.dir.path().join("head.raw")).unwrap(),
        &mut buf,
    )
    .unwrap();
    assert!(
        buf.iter().all(|&x| x == 0x55),
        "the moved qcow2 holds its data"
    );
    assert!(!list_images(c, &a.sd).await.contains(&cow.img));
}

// ---------------------------------------------------------------------------
// 5: generation mismatch
// ---------------------------------------------------------------------------

#[tokio::test]
async fn generation_mismatch_fails_911_and_changes_nothing() {
    let _heavy = HEAVY.lock().await;
    let e = env(2).await;
    let (a, b, c) = (&e.doms[0], &e.doms[1], &e.c);
    let size = 32 * MIB;
    let src = a.new_volume(c, size, "RAW", "SPARSE").await;
    let dst = b.new_volume(c, size, "RAW", "SPARSE").await;
    write_random(&src.path, 0, 4 * MIB, 50);
    write_random(&dst.path, MIB, MIB, 51);
    let (data, meta) = (file_digest(&dst.path), std::fs::read(dst.meta()).unwrap());

    let id = start_copy(c, &src, &dst, Some(5)).await;
    let err = wait_failed(c, &id).await;
    assert_eq!(err["code"], 911, "{err}");
    assert_eq!(file_digest(&dst.path), data, "destination data changed");
    assert_eq!(
        std::fs::read(dst.meta()).unwrap(),
        meta,
        "destination metadata changed"
    );
    assert_md(&dst, "LEGAL", 0);

    // The right generation copies; then the old one is stale (911).
    copy_ok(c, &src, &dst, Some(0)).await;
    assert_md(&dst, "LEGAL", 1);
    let (data, meta) = (file_digest(&dst.path), std::fs::read(dst.meta()).unwrap());
    let id = start_copy(c, &src, &dst, Some(0)).await;
    assert_eq!(wait_failed(c, &id).await["code"], 911);
    assert_eq!(file_digest(&dst.path), data);
    assert_eq!(std::fs::read(dst.meta()).unwrap(), meta);

    // SDM.update_volume: the engine's fence, with the same check.
    let fence = |gen: u32| {
        json!({"job_id": new_id(), "vol_info": {"sd_id": dst.sd, "img_id": dst.img, "vol_id": dst.vol, "generation": gen},
               "vol_attr": {"legality": "ILLEGAL", "generation": 7}})
    };
    let p = fence(0);
    call_ok(c, "SDM.update_volume", p.clone()).await;
    assert_eq!(
        wait_failed(c, p["job_id"].as_str().unwrap()).await["code"],
        911
    );
    assert_md(&dst, "LEGAL", 1);
    let p = fence(1);
    call_ok(c, "SDM.update_volume", p.clone()).await;
    wait_done(c, p["job_id"].as_str().unwrap()).await;
    assert_md(&dst, "ILLEGAL", 7);
}

// ---------------------------------------------------------------------------
// 6: abort midway
// ---------------------------------------------------------------------------

#[tokio::test]
async fn abort_midway_leaves_destination_illegal() {
    let _heavy = HEAVY.lock().await;
    let e = env(2).await;
    let (a, b, c) = (&e.doms[0], &e.doms[1], &e.c);
    let size = 128 * MIB;
    let src = a.new_volume(c, size, "RAW", "SPARSE").await;
    let dst = b.new_volume(c, size, "RAW", "SPARSE").await;
    write_random(&src.path, 0, size, 60);

    let t0 = Instant::now();
    let id = start_copy(c, &src, &dst, Some(0)).await;
    let j = wait_progress(c, &id, 10, Duration::from_secs(120)).await;
    eprintln!("abort: at {}% after {:.2?}", j["progress"], t0.elapsed());
    assert_md(&dst, "ILLEGAL", 0); // during the copy
    let t = Instant::now();
    assert_eq!(
        call_ok(c, "Host.abortJob", json!({"job_id": id})).await,
        json!(true)
    );
    let j = wait_job(c, &id, Duration::from_secs(30)).await;
    let took = t.elapsed();
    eprintln!("abort took {took:.2?}: {j}");
    assert_eq!(j["status"], "aborted", "{j}");
    assert!(took < Duration::from_secs(2), "abort took {took:?}");
    assert_md(&dst, "ILLEGAL", 0);
    let vi = vol_info(c, &dst).await;
    assert_eq!(vi["legality"], "ILLEGAL", "{vi}");

    // A new copy job for the same volumes finishes the work.
    let res = copy_ok(c, &src, &dst, Some(0)).await;
    eprintln!("after abort: {res}");
    assert_eq!(result_checksum(&res), python_blkhash(&src.path, size));
    assert_same_bytes(&src.path, &dst.path, size);
    assert_md(&dst, "LEGAL", 1);
}

// ---------------------------------------------------------------------------
// 7: kill -9 midway, restart, resume
// ---------------------------------------------------------------------------

/// The watermark of a copy journal's last checkpoint (docs/copy.md).
fn journal_watermark(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix("ckpt "))
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn kill_9_midway_then_restart_resumes_to_done() {
    let _heavy = HEAVY.lock().await;
    let mut e = env(2).await;
    let (a, b) = (e.doms[0].clone(), e.doms[1].clone());
    // 1 GiB with 4 MiB of data every 32 MiB: checkpoints every 256 MiB
    // (holes count), 128 MiB of data.
    let size = 1024 * MIB;
    let src = a.new_volume(&e.c, size, "RAW", "SPARSE").await;
    let dst = b.new_volume(&e.c, size, "RAW", "SPARSE").await;
    for i in 0..32 {
        write_random(&src.path, i * 32 * MIB + 4096, 4 * MIB, 70 + i);
    }
    let py = python_blkhash(&src.path, size);

    let t0 = Instant::now();
    let id = start_copy(&e.c, &src, &dst, Some(0)).await;
    let j = wait_progress(&e.c, &id, 40, Duration::from_secs(120)).await;
    eprintln!("kill -9 at {}% after {:.2?}", j["progress"], t0.elapsed());
    e.d.crash();
    let journal =
        e.d.state_dir()
            .join("copy-journals")
            .join(format!("{}.copy-journal", dst.vol));
    let text = std::fs::read_to_string(&journal)
        .unwrap_or_else(|err| panic!("{}: {err}", journal.display()));
    let wm = journal_watermark(&text);
    eprintln!("journal after the crash: watermark {wm}");
    assert!(wm >= 256 * MIB, "a checkpoint below 40%: {wm}");
    assert_md(&dst, "ILLEGAL", 0);

    let t = Instant::now();
    e.d.restart();
    e.c = e.d.client().await;
    let j = wait_job(&e.c, &id, JOB_WAIT).await;
    eprintln!("after restart, ended in {:.2?}: {j}", t.elapsed());
    assert_eq!(j["status"], "done", "copy_data is resumable: {j}");
    let res = &j["result"];
    assert_eq!(
        res["resumed_from"], wm,
        "resumed at the journal's watermark: {res}"
    );
    assert_eq!(
        result_checksum(res),
        py,
        "the resumed copy's checksum is the whole image's"
    );
    assert_same_bytes(&src.path, &dst.path, size);
    assert_md(&dst, "LEGAL", 1);
    assert!(!journal.exists(), "journal removed after done");
}

// ---------------------------------------------------------------------------
// 8: destination too small, source that grows, full destination
// ---------------------------------------------------------------------------

#[tokio::test]
async fn destination_too_small_fails_clearly() {
    let _heavy = HEAVY.lock().await;
    let e = env(2).await;
    let (a, b, c) = (&e.doms[0], &e.doms[1], &e.c);
    let src = a.new_volume(c, 64 * MIB, "RAW", "SPARSE").await;
    write_random(&src.path, 60 * MIB, MIB, 80);
    for fmt in ["RAW", "COW"] {
        let dst = b.new_volume(c, 32 * MIB, fmt, "SPARSE").await;
        let data = file_digest(&dst.path);
        let id = start_copy(c, &src, &dst, Some(0)).await;
        let err = wait_failed(c, &id).await;
        eprintln!(
            "64 MiB into a 32 MiB {fmt}: {err}; destination {:?}",
            dst.md()["LEGALITY"]
        );
        assert_eq!(err["code"], 232, "{fmt}: {err}");
        let msg = err["message"].as_str().unwrap();
        assert!(
            msg.contains(&(32 * MIB).to_string()) && msg.contains(&(64 * MIB).to_string()),
            "the message names both sizes: {msg}"
        );
        assert_eq!(
            file_digest(&dst.path),
            data,
            "{fmt}: destination data changed"
        );
        assert_eq!(dst.md()["GEN"], "0", "{fmt}: never done");
    }
}

#[tokio::test]
async fn source_that_grows_during_the_copy_fails() {
    let _heavy = HEAVY.lock().await;
    let e = env(2).await;
    let (a, b, c) = (&e.doms[0], &e.doms[1], &e.c);
    let size = 128 * MIB;
    let src = a.new_volume(c, size, "RAW", "SPARSE").await;
    let dst = b.new_volume(c, 256 * MIB, "RAW", "SPARSE").await;
    write_random(&src.path, 0, size, 90);
    let id = start_copy(c, &src, &dst, Some(0)).await;
    wait_progress(c, &id, 5, Duration::from_secs(120)).await;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&src.path)
        .unwrap()
        .set_len(size + 32 * MIB)
        .unwrap();
    // Still copying after the truncate: the end-of-copy check comes later.
    let j = job(c, &id).await.unwrap();
    let p = j["progress"].as_u64().unwrap_or(0);
    eprintln!("source grown at {p}%");
    assert!(
        j["status"] == "running" && p < 95,
        "the copy ran ahead of the test: {j}"
    );
    let err = wait_failed(c, &id).await;
    eprintln!("source grew: {err}");
    assert_eq!(err["code"], 225, "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("changed"),
        "{err}"
    );
    assert_md(&dst, "ILLEGAL", 0);
}

#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn full_destination_filesystem_fails_illegal() {
    depot_testkit::require_root();
    let _heavy = HEAVY.lock().await;
    let e = env(1).await;
    let (a, c) = (&e.doms[0], &e.c);
    let fs = LoopFs::new("ext4", 64 * MIB, None);
    let _mounts = UnmountGuard(e.d.dir.path().to_path_buf());
    let small = create_domain(c, &e.d, POSIXFS, posix_conn(&fs, "ext4")).await;
    let size = 96 * MIB;
    let src = a.new_volume(c, size, "RAW", "SPARSE").await;
    let dst = small.new_volume(c, size, "RAW", "SPARSE").await;
    write_random(&src.path, 0, size, 100);
    let stats = call_ok(
        c,
        "StorageDomain.getStats",
        json!({"storagedomainID": small.sd}),
    )
    .await;
    let free = num(&stats["diskfree"], "diskfree");
    assert!(free < size, "the destination has room: {stats}");
    let t = Instant::now();
    let id = start_copy(c, &src, &dst, Some(0)).await;
    let err = wait_failed(c, &id).await;
    eprintln!("96 MiB into {free} free bytes: {:.2?}: {err}", t.elapsed());
    assert_eq!(err["code"], 225, "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("No space left"),
        "{err}"
    );
    assert_md(&dst, "ILLEGAL", 0);
    // The daemon is fine, and the domain still answers.
    call_ok(
        c,
        "StorageDomain.getInfo",
        json!({"storagedomainID": small.sd}),
    )
    .await;
}

// ---------------------------------------------------------------------------
// 4: xfs with 4096-byte sectors, GlusterFS (root tier)
// ---------------------------------------------------------------------------

/// LOCALFS -> other -> LOCALFS, raw, with the checksums compared.
async fn both_ways(c: &Client, local: &Dom, other: &Dom, what: &str) {
    let size = 64 * MIB;
    let src = local.new_volume(c, size, "RAW", "SPARSE").await;
    fill_sparse(&src.path, size, 110);
    write_random(&src.path, 5 * MIB + 512, 3 * MIB, 111);
    let py = python_blkhash(&src.path, size);
    let mid = other.new_volume(c, size, "RAW", "SPARSE").await;
    let back = local.new_volume(c, size, "RAW", "SPARSE").await;
    let t = Instant::now();
    let res = copy_ok(c, &src, &mid, Some(0)).await;
    eprintln!("{what}: LOCALFS -> {what} {:.2?}: {res}", t.elapsed());
    assert_eq!(res["method"], "native");
    assert_eq!(result_checksum(&res), py, "to {what}");
    assert_same_bytes(&src.path, &mid.path, size);
    assert_md(&mid, "LEGAL", 1);
    assert_eq!(
        checksum_job(c, &mid).await,
        py,
        "Volume.getChecksum on {what}"
    );
    let t = Instant::now();
    let res = copy_ok(c, &mid, &back, Some(0)).await;
    eprintln!("{what}: {what} -> LOCALFS {:.2?}", t.elapsed());
    assert_eq!(result_checksum(&res), py, "from {what}");
    assert_same_bytes(&src.path, &back.path, size);
    assert_md(&back, "LEGAL", 1);
}

#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn raw_copies_with_xfs_4k_sectors_both_ways() {
    depot_testkit::require_root();
    let _heavy = HEAVY.lock().await;
    let e = env(1).await;
    let fs = LoopFs::new("xfs", 512 * MIB, Some(4096));
    let _mounts = UnmountGuard(e.d.dir.path().to_path_buf());
    let xfs = create_domain(&e.c, &e.d, POSIXFS, posix_conn(&fs, "xfs")).await;
    let info = call_ok(
        &e.c,
        "StorageDomain.getInfo",
        json!({"storagedomainID": xfs.sd}),
    )
    .await;
    assert_eq!(info["block_size"], 4096, "{info}");
    both_ways(&e.c, &e.doms[0], &xfs, "xfs-4k").await;
}

#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn raw_copies_with_glusterfs_both_ways() {
    depot_testkit::require_root();
    depot_testkit::require_program("glusterd");
    let _heavy = HEAVY.lock().await;
    // Dropped in reverse: the daemon's mounts, the daemon, then gluster.
    let g = depot_testkit::gluster::Gluster::start().expect("gluster harness");
    let e = env(1).await;
    let _mounts = UnmountGuard(e.d.dir.path().to_path_buf());
    let conn = ConnectionSpec {
        connection: g.spec(),
        vfs_type: Some("glusterfs".into()),
        mnt_options: None,
        protocol_version: None,
    };
    let gl = create_domain(&e.c, &e.d, GLUSTERFS, conn).await;
    both_ways(&e.c, &e.doms[0], &gl, "glusterfs").await;
}

/// A copy job that fails on an OS error underneath (ENOSPC on the
/// destination) says so in the daemon's log, with the io::Error's text as
/// the cause; the job's error is as it was.
#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn a_job_failed_underneath_logs_its_cause() {
    depot_testkit::require_root();
    let _heavy = HEAVY.lock().await;
    let mut e = env(1).await;
    let (a, c) = (&e.doms[0], &e.c);
    let fs = LoopFs::new("ext4", 64 * MIB, None);
    let _mounts = UnmountGuard(e.d.dir.path().to_path_buf());
    let small = create_domain(c, &e.d, POSIXFS, posix_conn(&fs, "ext4")).await;
    let size = 96 * MIB;
    let src = a.new_volume(c, size, "RAW", "SPARSE").await;
    let dst = small.new_volume(c, size, "RAW", "SPARSE").await;
    write_random(&src.path, 0, size, 101);
    let id = start_copy(c, &src, &dst, Some(0)).await;
    let err = wait_failed(c, &id).await;
    assert_eq!(err["code"], 225, "{err}");
    e.d.stop();
    let log = e.d.log();
    let below: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("job failed underneath"))
        .collect();
    assert_eq!(below.len(), 1, "log:\n{log}");
    for part in [
        id.as_str(),
        "code=225",
        "cause=",
        "No space left on device (os error 28)",
    ] {
        assert!(below[0].contains(part), "{part} missing in {}", below[0]);
    }
}
