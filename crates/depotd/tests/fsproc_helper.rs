//! `depotd fsproc`: depotd re-executes itself as the file-system helper of
//! depot_os::fsproc. The helper must speak the protocol on stdout from its
//! first byte (no clap, no logging before it).

use std::time::Duration;

use depot_os::fsproc::{FsPool, HelperCommand, PoolConfig};

fn pool(root: &std::path::Path) -> FsPool {
    FsPool::new(PoolConfig {
        command: HelperCommand::new(env!("CARGO_BIN_EXE_depotd")).arg("fsproc"),
        root: root.to_owned(),
        max_helpers: 1,
        timeout: Duration::from_secs(30),
    })
}

#[test]
fn depotd_serves_as_the_fsproc_helper() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("dom_md")).unwrap();
    std::fs::write(dir.path().join("dom_md/metadata"), b"VERSION=5\n").unwrap();
    let p = pool(dir.path());
    p.ping().expect("depotd fsproc answers a ping");
    assert_eq!(
        p.read("dom_md/metadata", 0, 4096, false).unwrap(),
        b"VERSION=5\n"
    );
    assert!(p.statvfs("").unwrap().total_bytes > 0);
    // One helper served every call.
    let h = p.health();
    assert_eq!((h.started, h.idle, h.stuck), (1, 1, 0), "{h:?}");
}

/// Even with a `RUST_LOG` that would log at once, nothing but frames
/// reaches the helper's stdout.
#[test]
fn depotd_fsproc_ignores_logging_settings() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_depotd"))
        .arg("fsproc")
        .env("RUST_LOG", "trace")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    // No hello on stdin: the helper exits at end of input and says nothing.
    assert!(
        out.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.status.success(), "{out:?}");
}
