//! Benchmark of issue 7 (not a timed test): LVM invocations and wall time
//! per verb for creating 100 volumes on a block domain, with the LVM cache
//! on and off, through the `Storage` engine (no daemon, so the counts are
//! the engine's alone). VM tier only; not in tests/vm/targets because it
//! takes minutes under TCG. Run it with
//!
//! ```text
//! tests/vm/run vm_lvm_bench -- --nocapture
//! ```
//!
//! It asserts only that every volume was created and is listed, and prints
//! the figures recorded in docs/performance.md.

mod support;

use std::time::{Duration, Instant};

use depot_api::storage::{
    AllocType, DiskType, DomainClass, DomainType, ImgUuid, SdUuid, VolUuid, VolumeFormat,
};
use depot_os::fsproc::HelperCommand;
use depot_os::CommandRunner;
use depot_storage::engine::{Storage, StorageConfig};
use depot_storage::CreateDomain;
use depot_storage::CreateVolume;
use support::vm::Luns;

/// Volumes per round; DEPOT_BENCH_VOLUMES overrides (the counts per volume
/// do not depend on it, the wall time under TCG does).
fn volumes() -> usize {
    std::env::var("DEPOT_BENCH_VOLUMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

fn new_uuid<T: std::str::FromStr>() -> T
where
    T::Err: std::fmt::Debug,
{
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

struct Round {
    label: &'static str,
    calls: u64,
    elapsed: Duration,
}

fn create_round(s: &Storage, sd: SdUuid, label: &'static str) -> Round {
    let calls = s.lvm().calls();
    let start = Instant::now();
    for i in 0..volumes() {
        if i % 10 == 0 {
            eprintln!(
                "{label}: {i} volumes, {} LVM calls, {:.1?}",
                s.lvm().calls() - calls,
                start.elapsed()
            );
        }
        let (img, vol): (ImgUuid, VolUuid) = (new_uuid(), new_uuid());
        s.create_volume(
            sd,
            img,
            vol,
            CreateVolume {
                capacity: 1 << 20,
                format: VolumeFormat::Raw,
                alloc: AllocType::Preallocated,
                disk_type: DiskType::Data,
                description: String::new(),
                parent: VolUuid::BLANK,
                legal: true,
                sequence: 0,
            },
        )
        .expect("create volume");
    }
    Round {
        label,
        calls: s.lvm().calls() - calls,
        elapsed: start.elapsed(),
    }
}

#[test]
#[ignore = "needs the vm tier (tests/vm/run)"]
fn lvm_calls_per_volume_create_with_and_without_the_cache() {
    depot_testkit::require_vm();
    let luns = Luns::login();
    let repo = tempfile::tempdir().unwrap();
    let s = Storage::new(
        StorageConfig {
            repository: repo.path().to_path_buf(),
            io_timeout: Duration::from_secs(60),
            lock_timeout: Duration::from_secs(60),
            qemu_img_timeout: Duration::from_secs(120),
            monitor_interval: Duration::from_secs(10),
            fsproc_command: Some(HelperCommand::new(env!(
                "CARGO_BIN_EXE_depot-storage-fsproc"
            ))),
            fsproc_helpers_per_mount: 4,
            sanlock: None,
        },
        CommandRunner::new(),
    );
    let sd: SdUuid = new_uuid();
    // Three LUNs: 200 one-extent volumes and the special LVs need ~30 GiB.
    let vg = s.create_vg(sd, &luns.wwids, false).expect("create VG");
    s.create_domain(
        CreateDomain {
            sd,
            domain_type: DomainType::Iscsi,
            class: DomainClass::Data,
            description: "bench".into(),
            remote_path: vg,
            block_size: Some(512),
            max_hosts: 250,
            backup: false,
        },
        5,
    )
    .expect("create domain");

    let on = create_round(&s, sd, "cache on (30 s)");
    s.lvm().set_cache(None);
    let off = create_round(&s, sd, "cache off");
    assert_eq!(
        s.list_volumes(sd, None).expect("list").len(),
        2 * volumes(),
        "every volume exists"
    );

    println!(
        "\nLVM invocations and wall time per Volume.create, {} RAW volumes each:",
        volumes()
    );
    println!("| cache | LVM calls | calls/volume | wall s | ms/volume |");
    println!("|---|---|---|---|---|");
    for r in [&on, &off] {
        println!(
            "| {} | {} | {:.2} | {:.1} | {:.0} |",
            r.label,
            r.calls,
            r.calls as f64 / volumes() as f64,
            r.elapsed.as_secs_f64(),
            r.elapsed.as_secs_f64() * 1000.0 / volumes() as f64
        );
    }
    s.format_domain(sd, true).expect("format");
}
