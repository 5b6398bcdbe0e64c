//! Finding domain candidates under `<repository>/mnt` (for
//! `Host.getStorageDomains`): directory listing only, no metadata parsing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use depot_api::types::Uuid;
use depot_os::IoWorker;

use super::params::{BLOCK_DIR, GLUSTER_DIR, MNT_DIR};

/// The `dom_md/metadata` files of the domains visible under
/// `<repository>/mnt/*` and `<repository>/mnt/glusterSD/*` (like VDSM's
/// `fileSD.scanDomains`), sorted.
///
/// A candidate is `<mount>/<sdUUID>/dom_md/metadata` where `<sdUUID>` is a
/// canonical UUID and the file exists. `<repository>/mnt` itself is local
/// and listed directly; every mount (or LOCALFS link) is listed on `worker`
/// with `timeout`, so a dead server only drops its own mount from the
/// result (with a warning) instead of hanging the call.
pub fn mounted_domains(repository: &Path, worker: &IoWorker, timeout: Duration) -> Vec<PathBuf> {
    let mnt = repository.join(MNT_DIR);
    let mut mounts = list(&mnt, &[BLOCK_DIR, GLUSTER_DIR]);
    mounts.extend(list(&mnt.join(GLUSTER_DIR), &[]));
    let mut found = Vec::new();
    for m in mounts {
        let dir = m.clone();
        match worker.run(timeout, move || scan_mount(&dir)) {
            Ok(v) => found.extend(v),
            Err(e) => tracing::warn!(mount = %m.display(), error = %e,
                "cannot list mount for storage domains; skipped"),
        }
    }
    found.sort();
    found
}

/// Entries of a local directory (no stat of them: they may be dead mounts).
fn list(dir: &Path, skip: &[&str]) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| !skip.iter().any(|s| e.file_name() == *s))
        .map(|e| e.path())
        .collect()
}

fn scan_mount(mount: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(mount) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<Uuid>().is_ok())
        })
        .map(|e| e.path().join("dom_md").join("metadata"))
        .filter(|md| md.is_file())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_metadata_under_mounts_links_and_gluster() {
        let repo = tempfile::tempdir().unwrap();
        let mnt = repo.path().join("mnt");
        let sd1 = "11111111-2222-3333-4444-555555555555";
        let sd2 = "aaaaaaaa-2222-3333-4444-555555555555";
        let sd3 = "bbbbbbbb-2222-3333-4444-555555555555";
        let mk = |p: PathBuf| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"").unwrap();
        };
        mk(mnt.join("srv:_e").join(sd1).join("dom_md/metadata"));
        // A domain without metadata, a non-UUID directory, blockSD.
        std::fs::create_dir_all(mnt.join("srv:_e/cccccccc-2222-3333-4444-555555555555/dom_md"))
            .unwrap();
        mk(mnt.join("srv:_e/not-a-uuid/dom_md/metadata"));
        mk(mnt.join("blockSD").join(sd3).join("dom_md/metadata"));
        mk(mnt
            .join("glusterSD/gl:_vol")
            .join(sd2)
            .join("dom_md/metadata"));
        // A LOCALFS link.
        let local = tempfile::tempdir().unwrap();
        mk(local.path().join(sd3).join("dom_md/metadata"));
        std::os::unix::fs::symlink(local.path(), mnt.join("_local")).unwrap();

        let worker = IoWorker::new("scan-test", 2);
        let got = mounted_domains(repo.path(), &worker, Duration::from_secs(5));
        let want: Vec<PathBuf> = vec![
            mnt.join("_local").join(sd3).join("dom_md/metadata"),
            mnt.join("glusterSD/gl:_vol")
                .join(sd2)
                .join("dom_md/metadata"),
            mnt.join("srv:_e").join(sd1).join("dom_md/metadata"),
        ];
        let mut want = want;
        want.sort();
        assert_eq!(got, want);
        // No repository: nothing, no error.
        assert!(
            mounted_domains(Path::new("/nonexistent"), &worker, Duration::from_secs(1)).is_empty()
        );
    }
}
