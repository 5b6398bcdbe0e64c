//! Storage server connections: the work behind
//! `StoragePool.connectStorageServer` and `disconnectStorageServer` for the
//! file domain types NFS (1), LOCALFS (4), POSIXFS (6) and GLUSTERFS (7).
//! The SAN types ISCSI (3) and FCP (2) are in [`san`] (with [`iscsi`]
//! checking an ISCSI connection's fields).
//!
//! The daemon maps each engine dict to a [`ConnectionParams`];
//! [`Connection::new`] checks every field before anything runs (see
//! [`spec`] for the connection string grammar and [`options`] for the mount
//! option allow-list), and [`Connector`] mounts, unmounts and links.
//!
//! # Layout (VDSM's)
//!
//! * NFS and POSIXFS: `<repository>/mnt/<transform(spec)>`, where
//!   [`transform`] turns `_` into `__` and then `/` into `_`
//!   (`srv:/export/data_1` -> `srv:_export_data__1`).
//! * GLUSTERFS: `<repository>/mnt/glusterSD/<transform(spec)>`.
//! * LOCALFS: a symlink `<repository>/mnt/<transform(path)>` -> `path`.
//!
//! # Behaviour and error codes
//!
//! * Invalid input: 1000 InvalidParameterException (`id`, `mnt_options`,
//!   `protocol_version`, `timeout`, `retrans`), 471 MountParsingError (the
//!   `connection` string), 470 MountTypeError (`vfs_type`), 372
//!   StorageDomainTypeError (a domain type this module does not connect).
//!   The detail starts with `field="value":`.
//! * [`Connector::connect`] is idempotent: a mount of the same source at the
//!   mount point (as the mount table shows it) is success. A mount point
//!   held by a different source is refused with 451
//!   StorageServerConnectionError and nothing is mounted over it. (VDSM
//!   would stack a second mount on top; a different source there means a
//!   name collision of `transform` -- `a_/b` and `a/_b` give the same name --
//!   or a mount made by hand, and stacking would hide it.) A failed mount is
//!   477 MountError with mount's own message; the mount point it created is
//!   removed again. After mounting, the mount root is stat'ed in a helper
//!   process (depot_os::fsproc; on an [`IoWorker`] thread when no helper
//!   command is set): EACCES gives 469 StorageServerAccessPermissionError,
//!   a hang or other error 477, and the mount is undone.
//! * [`Connector::disconnect`] succeeds if nothing is mounted (and removes
//!   the empty mount point directory). It unmounts without `-l` (VDSM uses
//!   `-f -l`): a mount still busy after about a second of retries
//!   ([`BUSY_PAUSES`]) fails with 452 StorageServerDisconnectionError
//!   and umount's message ("target is busy"), and stays mounted, instead of
//!   being detached lazily with files still open. `-f` is used for NFS only
//!   (it aborts requests to a dead server); on FUSE (gluster) `-f` would
//!   abort the connection of a busy mount and leave it broken. A mount point
//!   held by another source is not unmounted (452).
//! * LOCALFS: the path must exist (453 StorageServerValidationError) and be
//!   a directory that is not itself a symlink (1000): the link in `mnt/`
//!   must point at the domain, not at a second link that can be moved
//!   under it. Parent components may be symlinks. An existing link to
//!   another path is refused (451; VDSM would replace it).
//! * The caller keeps domain logic: before disconnecting, it checks its
//!   active domains against [`Connection::mount_point`], or passes a check
//!   to [`Connector::disconnect_all`].
//! * Permissions: depot runs as root, so VDSM's vdsm/qemu `access()` checks
//!   are not repeated here beyond the stat above.
//!
//! Calls for the same mount point are serialized inside one [`Connector`].

pub mod iscsi;
pub mod options;
mod params;
pub mod san;
pub mod session_refs;
pub mod spec;
pub mod watch;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use depot_api::storage::DomainType;
use depot_api::Code;
use depot_os::fsproc::{FileKind, FsPool, FsProcError, HelperCommand, PoolConfig};
use depot_os::mount::{find_in, read_mountinfo, MountEntry};
use depot_os::{IoWorker, Mounter};

pub use params::{
    Connection, ConnectionKind, ConnectionParams, MountPlan, BLOCK_DIR, GLUSTER_DIR, MNT_DIR,
    MOUNT_TIMEOUT, NFS_DEFAULT_OPTIONS, NFS_DEFAULT_RETRANS, NFS_DEFAULT_TIMEO,
    NFS_MOUNT_TIMEOUT_MAX,
};
pub use spec::transform;

use crate::error::{BoxError, StorageError, StorageResult};

const OP_CONNECT: &str = "connect storage server";
const OP_DISCONNECT: &str = "disconnect storage server";

/// How long a stat of a fresh mount, or a listing of one, may take.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How many stacked mounts of one source disconnect removes at most.
const MAX_STACKED: usize = 8;

/// The pauses before a busy umount is tried again. A mount can be busy for
/// a moment with nobody using it: every command a process starts gets a
/// copy of its file table from fork until exec, so a file that one thread
/// has open in the mount is briefly held by another thread's child too
/// (and the monitor's reads are short). A mount still busy after about a
/// second is in use, and disconnect says so (452).
const BUSY_PAUSES: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(300),
    Duration::from_millis(600),
];

/// One entry of the status list: `{id, status}`, status 0 for success or
/// the error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionStatus {
    pub id: String,
    pub status: i32,
}

impl ConnectionStatus {
    pub fn new(id: impl Into<String>, result: &StorageResult<()>) -> Self {
        ConnectionStatus {
            id: id.into(),
            status: match result {
                Ok(()) => 0,
                Err(e) => e.code.number(),
            },
        }
    }
}

/// Connects and disconnects storage servers under one repository
/// (`/rhev/data-center` in production).
///
/// Blocking: mount commands and file checks run on the calling thread
/// (bounded by their timeouts). See the [module docs](self).
pub struct Connector {
    repository: PathBuf,
    mounter: Mounter,
    worker: IoWorker,
    /// Where the fresh mount's stat runs, when set (depot_os::fsproc).
    helper: Option<HelperCommand>,
    io_timeout: Duration,
    locks: Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("repository", &self.repository)
            .field("io_timeout", &self.io_timeout)
            .finish_non_exhaustive()
    }
}

fn connect_err(code: Code, detail: impl Into<String>) -> StorageError {
    StorageError::new(code, OP_CONNECT, detail)
}

fn disconnect_err(code: Code, detail: impl Into<String>) -> StorageError {
    StorageError::new(code, OP_DISCONNECT, detail)
}

fn describe(e: &MountEntry) -> String {
    format!("{} ({})", e.source, e.fstype)
}

impl Connector {
    /// A connector for `repository`, mounting with `mounter`.
    ///
    /// The mount table shows mount points with symlinks resolved, so an
    /// existing `repository` is canonicalized here; a repository created
    /// later must be given in canonical form, or connect could not find its
    /// own mounts.
    pub fn new(repository: impl Into<PathBuf>, mounter: Mounter) -> Self {
        let repository: PathBuf = repository.into();
        Connector {
            repository: std::fs::canonicalize(&repository).unwrap_or(repository),
            mounter,
            worker: IoWorker::new("connections", 4),
            helper: None,
            io_timeout: DEFAULT_IO_TIMEOUT,
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// Sets the timeout of the stat after a mount and of each mount's
    /// listing in [`crate::layout::mount_dirs`].
    pub fn with_io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout;
        self
    }

    /// Stats a fresh mount in a helper process started with `helper`, so
    /// that no thread of this process waits in a mount that hangs.
    pub fn with_helper(mut self, helper: Option<HelperCommand>) -> Self {
        self.helper = helper;
        self
    }

    pub fn repository(&self) -> &Path {
        &self.repository
    }

    /// Checks one engine connection (see [`Connection::new`]).
    pub fn prepare(
        &self,
        domain_type: DomainType,
        params: &ConnectionParams,
    ) -> StorageResult<Connection> {
        Connection::new(domain_type, params, &self.repository)
    }

    /// Connects each entry, in order; one status per entry.
    pub fn connect_all(
        &self,
        domain_type: DomainType,
        params: &[ConnectionParams],
    ) -> Vec<ConnectionStatus> {
        params
            .iter()
            .map(|p| {
                let r = self.prepare(domain_type, p).and_then(|c| self.connect(&c));
                if let Err(e) = &r {
                    tracing::warn!(id = %p.id, error = %e, "could not connect to storage server");
                }
                ConnectionStatus::new(&p.id, &r)
            })
            .collect()
    }

    /// Disconnects each entry, in order, after `check` allowed it (the
    /// caller's hook, e.g. refusing with its own code while an active
    /// domain lives under [`Connection::mount_point`]).
    pub fn disconnect_all(
        &self,
        domain_type: DomainType,
        params: &[ConnectionParams],
        mut check: impl FnMut(&Connection) -> StorageResult<()>,
    ) -> Vec<ConnectionStatus> {
        params
            .iter()
            .map(|p| {
                let r = self
                    .prepare(domain_type, p)
                    .and_then(|c| check(&c).and_then(|()| self.disconnect(&c)));
                if let Err(e) = &r {
                    tracing::warn!(id = %p.id, error = %e, "could not disconnect from storage server");
                }
                ConnectionStatus::new(&p.id, &r)
            })
            .collect()
    }

    /// Mounts (or links) `conn` unless it already is. See the module docs.
    pub fn connect(&self, conn: &Connection) -> StorageResult<()> {
        let lock = self.lock_for(conn.mount_point());
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let result = match conn.kind() {
            ConnectionKind::Mount(plan) => self.mount(conn, plan),
            ConnectionKind::Local { path } => self.link(conn.mount_point(), path),
        };
        drop(_guard);
        self.release(conn.mount_point(), lock);
        result
    }

    /// Unmounts (or unlinks) `conn`; success if it is not connected.
    pub fn disconnect(&self, conn: &Connection) -> StorageResult<()> {
        let lock = self.lock_for(conn.mount_point());
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let result = match conn.kind() {
            ConnectionKind::Mount(plan) => self.umount(conn, plan),
            ConnectionKind::Local { path } => unlink(conn.mount_point(), path),
        };
        drop(_guard);
        self.release(conn.mount_point(), lock);
        result
    }

    /// The connected mount point that holds the storage `connection` (a
    /// domain's REMOTE_PATH, `StorageDomain.create`'s typeArgs), found as
    /// VDSM finds it: by the transformed name, without the mount options or
    /// vfs_type of the original connection (the engine does not send them
    /// with create). 360 when it is not connected.
    pub fn connected_mount_point(
        &self,
        domain_type: DomainType,
        connection: &str,
    ) -> StorageResult<PathBuf> {
        const OP: &str = "find the mount of a connection";
        let not_connected = || {
            StorageError::new(
                Code::StorageDomainFSNotMounted,
                OP,
                format!("{connection} is not connected (StoragePool.connectStorageServer first)"),
            )
        };
        let table = read_table(OP)?;
        for candidate in params::mount_point_candidates(domain_type, connection, &self.repository) {
            let connected = match domain_type {
                DomainType::LocalFs => std::fs::read_link(&candidate).is_ok(),
                _ => find_in(table.clone(), &candidate).is_some(),
            };
            if connected {
                return Ok(candidate);
            }
        }
        Err(not_connected())
    }

    /// Whether `conn` is mounted (or linked) as it should be. Reads only the
    /// mount table (or the link), so it does not block on a dead server.
    pub fn is_connected(&self, conn: &Connection) -> StorageResult<bool> {
        match conn.kind() {
            ConnectionKind::Mount(plan) => {
                let table = read_table(OP_CONNECT)?;
                Ok(find_in(table, conn.mount_point()).is_some_and(|e| plan.matches(&e)))
            }
            ConnectionKind::Local { path } => {
                Ok(std::fs::read_link(conn.mount_point()).is_ok_and(|t| same_path(&t, path)))
            }
        }
    }

    fn lock_for(&self, key: &Path) -> Arc<Mutex<()>> {
        let mut map = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(key.to_owned()).or_default())
    }

    /// Drops the map's entry when no other call holds it.
    fn release(&self, key: &Path, lock: Arc<Mutex<()>>) {
        let mut map = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        drop(lock);
        if map.get(key).is_some_and(|l| Arc::strong_count(l) == 1) {
            map.remove(key);
        }
    }

    fn mount(&self, conn: &Connection, plan: &MountPlan) -> StorageResult<()> {
        let target = conn.mount_point();
        if let Some(e) = find_in(read_table(OP_CONNECT)?, target) {
            if plan.matches(&e) {
                tracing::debug!(id = conn.id(), target = %target.display(), "already mounted");
                return Ok(());
            }
            return Err(connect_err(
                Code::StorageServerConnectionError,
                format!(
                    "mount point {} is already used by {}, not by {}",
                    target.display(),
                    describe(&e),
                    plan.source
                ),
            ));
        }
        let created = make_mount_dir(target)?;
        tracing::info!(id = conn.id(), cmd = %plan.command(), "mounting");
        if let Err(e) = self.mounter.mount(
            &plan.source,
            target,
            Some(&plan.fstype),
            &plan.options,
            plan.timeout,
        ) {
            if created {
                if let Err(re) = std::fs::remove_dir(target) {
                    tracing::warn!(target = %target.display(), error = %re,
                        "cannot remove mount point after failed mount");
                }
            }
            return Err(connect_err(Code::MountError, e.to_string()).caused_by(e));
        }
        match find_in(read_table(OP_CONNECT)?, target) {
            None => {
                return Err(connect_err(
                    Code::MountError,
                    format!(
                        "mount {} on {} succeeded but the mount table does not show it",
                        plan.source,
                        target.display()
                    ),
                ))
            }
            Some(e) if !plan.matches(&e) => {
                tracing::warn!(target = %target.display(), shown = %describe(&e),
                    source = %plan.source, "mount table shows another source than mounted");
            }
            Some(_) => {}
        }
        if let Err(err) = self.check_mounted_dir(target) {
            // Lazy: the mount may be hung, and nothing of ours uses it yet.
            if let Err(ue) = self
                .mounter
                .umount(target, conn.is_nfs(), true, plan.timeout)
            {
                tracing::warn!(error = %ue, "cannot undo mount after failed check");
            }
            let _ = std::fs::remove_dir(target);
            return Err(err);
        }
        tracing::info!(id = conn.id(), target = %target.display(), "mounted");
        Ok(())
    }

    /// Stats the root of a fresh mount in a helper (or on the worker).
    fn check_mounted_dir(&self, target: &Path) -> StorageResult<()> {
        let res = match &self.helper {
            Some(command) => {
                // A pool of its own, dropped after the call: the helper
                // exits (or, stuck, is killed and reaped).
                let pool = FsPool::new(PoolConfig {
                    command: command.clone(),
                    root: target.to_owned(),
                    max_helpers: 1,
                    timeout: self.io_timeout,
                });
                match pool.stat("") {
                    Ok(st) => Ok(Ok(st.kind == FileKind::Dir)),
                    Err(FsProcError::Io { source, .. }) => Ok(Err(source)),
                    Err(e) => Err(BoxError::from(e)),
                }
            }
            None => {
                let t = target.to_owned();
                self.worker
                    .run(self.io_timeout, move || {
                        std::fs::metadata(&t).map(|m| m.is_dir())
                    })
                    .map_err(BoxError::from)
            }
        };
        let what = target.display();
        match res {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(connect_err(
                Code::MountError,
                format!("{what}: the mounted root is not a directory"),
            )),
            Ok(Err(e)) if e.kind() == io::ErrorKind::PermissionDenied => Err(connect_err(
                Code::StorageServerAccessPermissionError,
                format!("{what}: {e}"),
            )
            .caused_by(e)),
            Ok(Err(e)) => Err(connect_err(Code::MountError, format!("{what}: {e}")).caused_by(e)),
            Err(e) => Err(connect_err(
                Code::MountError,
                format!("{what}: the new mount does not answer: {e}"),
            )
            .caused_by(e)),
        }
    }

    fn umount(&self, conn: &Connection, plan: &MountPlan) -> StorageResult<()> {
        let target = conn.mount_point();
        for _ in 0..MAX_STACKED {
            let Some(e) = find_in(read_table(OP_DISCONNECT)?, target) else {
                remove_mount_dir(target);
                return Ok(());
            };
            if !plan.matches(&e) {
                return Err(disconnect_err(
                    Code::StorageServerDisconnectionError,
                    format!(
                        "mount point {} is used by {}, not by {}: not unmounting it",
                        target.display(),
                        describe(&e),
                        plan.source
                    ),
                ));
            }
            tracing::info!(id = conn.id(), target = %target.display(), "unmounting");
            let mut pauses = BUSY_PAUSES.iter();
            loop {
                match self
                    .mounter
                    .umount(target, conn.is_nfs(), false, plan.timeout)
                {
                    Ok(()) => break,
                    Err(e) => match pauses.next() {
                        Some(pause) if e.is_busy() => std::thread::sleep(*pause),
                        _ => {
                            return Err(disconnect_err(
                                Code::StorageServerDisconnectionError,
                                e.to_string(),
                            )
                            .caused_by(e))
                        }
                    },
                }
            }
        }
        Err(disconnect_err(
            Code::StorageServerDisconnectionError,
            format!(
                "{} is still mounted after {MAX_STACKED} unmounts",
                target.display()
            ),
        ))
    }

    /// LOCALFS connect: check the directory, then make or keep the link.
    fn link(&self, link: &Path, path: &Path) -> StorageResult<()> {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(connect_err(
                    Code::StorageServerValidationError,
                    format!(
                        "connection={:?}: the path does not exist",
                        path.display().to_string()
                    ),
                )
                .caused_by(e))
            }
            Err(e) => {
                return Err(StorageError::io(
                    Code::StorageServerValidationError,
                    OP_CONNECT,
                    path,
                    e,
                ))
            }
            Ok(m) if m.file_type().is_symlink() => {
                return Err(connect_err(
                    Code::InvalidParameterException,
                    format!(
                        "connection={:?}: is a symlink; give the directory it points to",
                        path.display().to_string()
                    ),
                ))
            }
            Ok(m) if !m.is_dir() => {
                return Err(connect_err(
                    Code::InvalidParameterException,
                    format!(
                        "connection={:?}: not a directory",
                        path.display().to_string()
                    ),
                ))
            }
            Ok(_) => {}
        }
        let parent = link.parent().unwrap_or(link);
        std::fs::create_dir_all(parent).map_err(|e| {
            StorageError::io(Code::StorageServerConnectionError, OP_CONNECT, parent, e)
        })?;
        for _ in 0..2 {
            match std::fs::read_link(link) {
                Ok(t) if same_path(&t, path) => return Ok(()),
                Ok(t) => {
                    return Err(connect_err(
                        Code::StorageServerConnectionError,
                        format!(
                            "{} already links to {}, not to {}",
                            link.display(),
                            t.display(),
                            path.display()
                        ),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(connect_err(
                        Code::StorageServerConnectionError,
                        format!("{} exists and is not a symlink", link.display()),
                    )
                    .caused_by(e))
                }
            }
            match std::os::unix::fs::symlink(path, link) {
                Ok(()) => {
                    tracing::info!(link = %link.display(), path = %path.display(), "linked local domain directory");
                    return Ok(());
                }
                // Lost a race with another link: look again.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(StorageError::io(
                        Code::StorageServerConnectionError,
                        OP_CONNECT,
                        link,
                        e,
                    ))
                }
            }
        }
        Err(connect_err(
            Code::StorageServerConnectionError,
            format!("{}: the link keeps changing", link.display()),
        ))
    }
}

/// LOCALFS disconnect: remove our link; nothing there is success.
fn unlink(link: &Path, path: &Path) -> StorageResult<()> {
    match std::fs::read_link(link) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(disconnect_err(
            Code::StorageServerDisconnectionError,
            format!("{} is not a symlink: not removing it", link.display()),
        )
        .caused_by(e)),
        Ok(t) if !same_path(&t, path) => Err(disconnect_err(
            Code::StorageServerDisconnectionError,
            format!(
                "{} links to {}, not to {}: not removing it",
                link.display(),
                t.display(),
                path.display()
            ),
        )),
        Ok(_) => match std::fs::remove_file(link) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io(
                Code::StorageServerDisconnectionError,
                OP_DISCONNECT,
                link,
                e,
            )),
        },
    }
}

fn same_path(link_target: &Path, path: &Path) -> bool {
    link_target
        .to_str()
        .and_then(|t| spec::normalize_abs_path(t).ok())
        .as_deref()
        == path.to_str()
}

fn read_table(op: &'static str) -> StorageResult<Vec<MountEntry>> {
    let code = if op == OP_CONNECT {
        Code::StorageServerConnectionError
    } else {
        Code::StorageServerDisconnectionError
    };
    read_mountinfo().map_err(|e| StorageError::new(code, op, e.to_string()).caused_by(e))
}

/// Creates the mount point (and its parents). Only called when nothing is
/// mounted there, so the stat is of a local directory. Returns whether it
/// was created.
fn make_mount_dir(target: &Path) -> StorageResult<bool> {
    let err =
        |e: io::Error| StorageError::io(Code::StorageServerConnectionError, OP_CONNECT, target, e);
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => return Ok(false),
        Ok(_) => {
            return Err(connect_err(
                Code::StorageServerConnectionError,
                format!("{}: exists and is not a directory", target.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    match std::fs::create_dir(target) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(err(e)),
    }
}

/// Removes an unmounted mount point. A non-empty one is left (something
/// wrote into the bare directory while it was not mounted) with a warning.
fn remove_mount_dir(target: &Path) {
    match std::fs::remove_dir(target) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(target = %target.display(), error = %e,
            "cannot remove the unmounted mount point; leaving it"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use depot_os::CommandRunner;

    const ID: &str = "3c4e0bde-7c3f-4f9a-9d1a-2b2a3f3e4d5c";

    #[test]
    fn status_list_entries() {
        assert_eq!(
            ConnectionStatus::new("x", &Ok(())),
            ConnectionStatus {
                id: "x".into(),
                status: 0
            }
        );
        let e = StorageError::new(Code::MountError, "op", "d");
        assert_eq!(ConnectionStatus::new("x", &Err(e)).status, 477);
    }

    #[test]
    fn connect_all_reports_validation_errors_per_entry() {
        let repo = tempfile::tempdir().unwrap();
        let c = Connector::new(repo.path(), Mounter::new(CommandRunner::new()));
        let params = [
            ConnectionParams {
                id: ID.into(),
                connection: "srv:relative".into(),
                ..Default::default()
            },
            ConnectionParams {
                id: "bad".into(),
                connection: "srv:/x".into(),
                ..Default::default()
            },
        ];
        let st = c.connect_all(DomainType::Nfs, &params);
        assert_eq!(
            st,
            vec![
                ConnectionStatus {
                    id: ID.into(),
                    status: 471
                },
                ConnectionStatus {
                    id: "bad".into(),
                    status: 1000
                },
            ]
        );
        let st = c.disconnect_all(DomainType::Iscsi, &params[..1], |_| Ok(()));
        assert_eq!(st[0].status, 372);
    }

    #[test]
    fn localfs_link_lifecycle() {
        let repo = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let c = Connector::new(repo.path(), Mounter::new(CommandRunner::new()));
        let dir = data.path().join("local_sd");
        let p = ConnectionParams {
            id: ID.into(),
            connection: format!("{}/", dir.display()),
            ..Default::default()
        };
        let conn = c.prepare(DomainType::LocalFs, &p).unwrap();
        let link = repo
            .path()
            .join("mnt")
            .join(transform(dir.to_str().unwrap()));
        assert_eq!(conn.mount_point(), link);

        // Missing directory: 453.
        assert_eq!(
            c.connect(&conn).unwrap_err().code,
            Code::StorageServerValidationError
        );
        // A file: 1000.
        std::fs::write(&dir, b"").unwrap();
        assert_eq!(
            c.connect(&conn).unwrap_err().code,
            Code::InvalidParameterException
        );
        std::fs::remove_file(&dir).unwrap();
        // A symlink to a directory: 1000.
        std::os::unix::fs::symlink(data.path(), &dir).unwrap();
        let err = c.connect(&conn).unwrap_err();
        assert_eq!(err.code, Code::InvalidParameterException);
        assert!(err.detail.contains("symlink"), "{err}");
        std::fs::remove_file(&dir).unwrap();

        std::fs::create_dir(&dir).unwrap();
        assert!(!c.is_connected(&conn).unwrap());
        c.connect(&conn).unwrap();
        c.connect(&conn).unwrap();
        assert!(c.is_connected(&conn).unwrap());
        assert_eq!(std::fs::read_link(&link).unwrap(), dir);

        // Disconnect refused by the caller's hook.
        let refused = c.disconnect_all(DomainType::LocalFs, std::slice::from_ref(&p), |cn| {
            assert_eq!(cn.mount_point(), link);
            Err(StorageError::new(
                Code::StorageDomainActive,
                "disconnect",
                "active",
            ))
        });
        assert_eq!(refused[0].status, Code::StorageDomainActive.number());
        assert!(link.exists());

        let st = c.disconnect_all(DomainType::LocalFs, std::slice::from_ref(&p), |_| Ok(()));
        assert_eq!(st[0].status, 0);
        assert!(std::fs::symlink_metadata(&link).is_err());
        c.disconnect(&conn).unwrap();

        // A link to somewhere else is not ours: refused both ways.
        std::os::unix::fs::symlink("/elsewhere", &link).unwrap();
        assert_eq!(
            c.connect(&conn).unwrap_err().code,
            Code::StorageServerConnectionError
        );
        assert_eq!(
            c.disconnect(&conn).unwrap_err().code,
            Code::StorageServerDisconnectionError
        );
    }

    #[test]
    fn disconnect_of_unmounted_connection_succeeds() {
        let repo = tempfile::tempdir().unwrap();
        let c = Connector::new(repo.path(), Mounter::new(CommandRunner::new()));
        let p = ConnectionParams {
            id: ID.into(),
            connection: "srv:/export".into(),
            ..Default::default()
        };
        let conn = c.prepare(DomainType::Nfs, &p).unwrap();
        std::fs::create_dir_all(conn.mount_point()).unwrap();
        c.disconnect(&conn).unwrap();
        assert!(!conn.mount_point().exists(), "empty mount point removed");
        c.disconnect(&conn).unwrap();
        assert!(!c.is_connected(&conn).unwrap());
    }
}
