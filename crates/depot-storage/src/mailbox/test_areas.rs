//! Plain files standing in for a master domain's `inbox` and `outbox`
//! LVs, for the mailbox's tests and the engine's (the real LVs:
//! crates/depotd/tests/vm_mailbox.rs).

use std::path::PathBuf;

use super::format::AREA_SIZE;

/// The two areas, removed with their directory when dropped.
pub(crate) struct Areas {
    _dir: tempfile::TempDir,
    pub(crate) inbox: PathBuf,
    pub(crate) outbox: PathBuf,
}

/// Two zeroed areas of the real size, in /var/tmp (they are opened with
/// O_DIRECT, which a tmpfs /tmp may refuse).
pub(crate) fn areas() -> Areas {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let mk = |n: &str| {
        let p = dir.path().join(n);
        std::fs::File::create(&p)
            .unwrap()
            .set_len(AREA_SIZE)
            .unwrap();
        p
    };
    Areas {
        inbox: mk("inbox"),
        outbox: mk("outbox"),
        _dir: dir,
    }
}
