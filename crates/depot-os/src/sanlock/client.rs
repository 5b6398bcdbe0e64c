//! The sanlock daemon's client API, from `libsanlock_client.so.1` loaded
//! with `dlopen` (libloading): nothing of sanlock is linked, so a depotd
//! without sanlock installed starts and reports why sanlock is unavailable.
//!
//! Every call runs on this client's [`IoWorker`] with a timeout: the
//! library connects to the daemon's socket and waits for its answer with
//! no deadline of its own. A call the daemon does not answer is abandoned
//! on its worker thread (a socket wait, never a wait in a storage mount:
//! the daemon does the I/O).

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libloading::Library;

use super::resource::{RawResource, Registration};
use super::{check_name, disk_path, Lockspace, SanlockError, NAME_LEN, PATH_LEN};
use crate::worker::IoWorker;

/// The library names tried, in order, when no path is configured: the
/// client-only library (Debian's `libsanlock-client1`, no direct I/O code),
/// then the full one (`libsanlock1`).
const LIBRARIES: [&str; 2] = ["libsanlock_client.so.1", "libsanlock.so.1"];

/// Threads of the client's worker: host-id calls of a few domains at once;
/// a daemon that hangs costs at most this many stuck threads, then calls
/// fail at once (`Hung`).
const THREADS: usize = 4;

/// The longest [`Sanlock::daemon_version`] waits: it answers "is sanlock
/// there" for `Host.getCapabilities` and the log, which should not wait
/// the full call timeout on a daemon that hangs.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

// sanlock_admin.h
const SANLK_ADD_ASYNC: u32 = 0x1;
const SANLK_REM_ASYNC: u32 = 0x1;
const SANLK_REM_UNUSED: u32 = 0x2;
const SANLK_HOST_MASK: u32 = 0xf;

/// `struct sanlk_disk` (sanlock.h).
#[repr(C)]
pub(super) struct RawDisk {
    path: [c_char; PATH_LEN],
    pub(super) offset: u64,
    pad1: u32,
    pad2: u32,
}

impl RawDisk {
    /// `path` (escaped, checked to fit) at `offset`.
    pub(super) fn new(path: &str, offset: u64) -> RawDisk {
        let mut disk = RawDisk {
            path: [0; PATH_LEN],
            offset,
            pad1: 0,
            pad2: 0,
        };
        fill(&mut disk.path, path);
        disk
    }

    /// The path, up to its NUL (tests).
    #[cfg(test)]
    pub(super) fn path(&self) -> String {
        let bytes: Vec<u8> = self
            .path
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// `struct sanlk_lockspace` (sanlock.h): 1104 bytes, `host_id` at 48,
/// `flags` at 56, the disk at 64 (checked by a test against these).
#[repr(C)]
struct RawLockspace {
    name: [c_char; NAME_LEN],
    host_id: u64,
    flags: u32,
    host_id_disk: RawDisk,
}

/// `struct sanlk_host` (sanlock.h).
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct RawHost {
    host_id: u64,
    generation: u64,
    timestamp: u64,
    io_timeout: u32,
    flags: u32,
}

type LsFn = unsafe extern "C" fn(*mut RawLockspace, u32) -> c_int;
type AddTimeoutFn = unsafe extern "C" fn(*mut RawLockspace, u32, u32) -> c_int;
type GetHostsFn =
    unsafe extern "C" fn(*const c_char, u64, *mut *mut RawHost, *mut c_int, u32) -> c_int;
type VersionFn = unsafe extern "C" fn(u32, *mut u32, *mut u32) -> c_int;
type RegisterFn = unsafe extern "C" fn() -> c_int;
pub(super) type ResFn =
    unsafe extern "C" fn(c_int, c_int, u32, c_int, *mut *mut RawResource, *mut c_void) -> c_int;
type ReleaseFn = unsafe extern "C" fn(c_int, c_int, u32, c_int, *mut *mut RawResource) -> c_int;
type OwnersFn = unsafe extern "C" fn(*mut RawResource, u32, *mut *mut RawHost, *mut c_int) -> c_int;
pub(super) type WriteResFn = unsafe extern "C" fn(*mut RawResource, c_int, c_int, u32) -> c_int;
type StrerrorFn = unsafe extern "C" fn(c_int) -> *const c_char;
pub(super) type LvbFn = unsafe extern "C" fn(u32, *mut RawResource, *mut c_char, c_int) -> c_int;

/// The loaded library and the entry points depot uses.
pub(super) struct Lib {
    add_lockspace_timeout: AddTimeoutFn,
    inq_lockspace: LsFn,
    rem_lockspace: LsFn,
    get_hosts: GetHostsFn,
    version: VersionFn,
    strerror: StrerrorFn,
    pub(super) register: RegisterFn,
    pub(super) acquire: ResFn,
    pub(super) release: ReleaseFn,
    pub(super) read_resource_owners: OwnersFn,
    pub(super) write_resource: WriteResFn,
    pub(super) get_lvb: LvbFn,
    pub(super) set_lvb: LvbFn,
    /// Where it was loaded from, for messages.
    name: String,
    // Last: the function pointers above are valid while it is loaded.
    _lib: Library,
}

impl Lib {
    fn load(path: Option<&Path>) -> Result<Lib, String> {
        let names: Vec<String> = match path {
            Some(p) => vec![p.display().to_string()],
            None => LIBRARIES.iter().map(|s| s.to_string()).collect(),
        };
        let mut why = Vec::new();
        for name in names {
            // SAFETY: loading a shared library runs its initialisers;
            // libsanlock's only set up its own static state.
            match unsafe { Library::new(&name) } {
                Ok(lib) => return Lib::bind(lib, name),
                Err(e) => why.push(e.to_string()),
            }
        }
        Err(format!("cannot load libsanlock: {}", why.join("; ")))
    }

    fn bind(lib: Library, name: String) -> Result<Lib, String> {
        // SAFETY: each symbol is declared with the C signature of
        // sanlock_admin.h / sanlock.h, and is used only while `lib` lives
        // (it is moved into the same struct, dropped last).
        unsafe {
            macro_rules! sym {
                ($s:literal) => {
                    *lib.get(concat!($s, "\0").as_bytes())
                        .map_err(|e| format!("{name}: no {}: {e}", $s))?
                };
            }
            Ok(Lib {
                add_lockspace_timeout: sym!("sanlock_add_lockspace_timeout"),
                inq_lockspace: sym!("sanlock_inq_lockspace"),
                rem_lockspace: sym!("sanlock_rem_lockspace"),
                get_hosts: sym!("sanlock_get_hosts"),
                version: sym!("sanlock_version"),
                strerror: sym!("sanlock_strerror"),
                register: sym!("sanlock_register"),
                acquire: sym!("sanlock_acquire"),
                release: sym!("sanlock_release"),
                read_resource_owners: sym!("sanlock_read_resource_owners"),
                write_resource: sym!("sanlock_write_resource"),
                get_lvb: sym!("sanlock_get_lvb"),
                set_lvb: sym!("sanlock_set_lvb"),
                name,
                _lib: lib,
            })
        }
    }

    fn message(&self, rv: c_int) -> String {
        // SAFETY: sanlock_strerror returns a static string for any value.
        let p = unsafe { (self.strerror)(rv) };
        if p.is_null() {
            return format!("error {rv}");
        }
        // SAFETY: non-null, NUL-terminated, static.
        let text = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
        if rv < 0 && rv > -200 {
            let os = std::io::Error::from_raw_os_error(-rv);
            format!("{text} ({os})")
        } else {
            text
        }
    }
}

/// What `add_lockspace` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddOutcome {
    /// The daemon started acquiring the host id (asynchronously).
    Started,
    /// It already holds this host id in this lockspace (`-EEXIST`).
    AlreadyHeld,
    /// An add of this lockspace is already under way (`-EINPROGRESS`).
    InProgress,
    /// The lockspace is being removed; try again later (`-EAGAIN`).
    BeingRemoved,
}

/// What `inq_lockspace` said about this host's id in a lockspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostIdState {
    /// Acquired: the delta lease is held and renewed.
    Held,
    /// An add or a remove of it is under way (`-EINPROGRESS`: sanlock
    /// answers so while acquiring and also while an asynchronous release
    /// finishes).
    Changing,
    /// Being released (`-EAGAIN`).
    Removing,
    /// Not held (`-ENOENT`): never added, released, or lost.
    Free,
}

/// What `rem_lockspace` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemOutcome {
    /// Released (or, async, the release started).
    Released,
    /// The host id was not held (`-ENOENT`).
    NotHeld,
    /// A release is already under way (`-EINPROGRESS`).
    InProgress,
    /// Resources of the lockspace are held (`-EBUSY`, with `unused`).
    Busy,
}

/// Another host's state in a lockspace, as sanlock sees its delta lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostStatus {
    /// Not watched long enough to tell.
    Unknown,
    /// Its delta lease is not held.
    Free,
    /// It renewed recently.
    Live,
    /// It stopped renewing and may be recovering.
    Fail,
    /// It stopped renewing long enough for its watchdog to have fired.
    Dead,
}

impl HostStatus {
    /// From `sanlk_host.flags & SANLK_HOST_MASK`.
    pub fn from_flags(flags: u32) -> Option<HostStatus> {
        Some(match flags & SANLK_HOST_MASK {
            1 => HostStatus::Unknown,
            2 => HostStatus::Free,
            3 => HostStatus::Live,
            4 => HostStatus::Fail,
            5 => HostStatus::Dead,
            _ => return None,
        })
    }

    /// VDSM's names (`clusterlock.HOST_STATUS_*`).
    pub fn name(self) -> &'static str {
        match self {
            HostStatus::Unknown => "unknown",
            HostStatus::Free => "free",
            HostStatus::Live => "live",
            HostStatus::Fail => "fail",
            HostStatus::Dead => "dead",
        }
    }
}

/// One host of a lockspace (`sanlock_get_hosts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    pub host_id: u64,
    pub generation: u64,
    /// The last renewal the daemon saw, in the host's monotonic seconds.
    pub timestamp: u64,
    pub io_timeout: u32,
    /// `None` for a status value this code does not know.
    pub status: Option<HostStatus>,
}

/// The sanlock daemon's client: either a loaded library, or why there is
/// none. Cheap to share (`Arc` inside); every call has a deadline.
#[derive(Clone)]
pub struct Sanlock {
    lib: Result<Arc<Lib>, String>,
    worker: Arc<IoWorker>,
    timeout: Duration,
    /// The `io_timeout` this host's delta leases are acquired with (0: the
    /// daemon's default, 10 s). sanlock derives every other timeout from
    /// it: renewal every 2×, renewal failed at 8×, a host dead at 8× + 60 s.
    io_timeout: u32,
    /// This process's registration with the daemon, made at the first
    /// lease acquired (resource.rs).
    pub(super) registration: Arc<Registration>,
    /// The lockspaces this client asked the daemon to leave
    /// asynchronously that it may still list: see [`Sanlock::rem_lockspace`].
    removing: Arc<Mutex<Vec<Lockspace>>>,
}

impl std::fmt::Debug for Sanlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sanlock")
            .field("library", &self.lib.as_ref().map(|l| &l.name))
            .field("timeout", &self.timeout)
            .field("io_timeout", &self.io_timeout)
            .finish()
    }
}

impl Sanlock {
    /// Loads the library from `path`, or by its usual names. Never fails:
    /// without a library every call answers [`SanlockError::Unavailable`]
    /// with the reason. `timeout` bounds each call to the daemon.
    pub fn load(path: Option<&Path>, timeout: Duration) -> Sanlock {
        Sanlock {
            lib: Lib::load(path).map(Arc::new),
            worker: Arc::new(IoWorker::new("sanlock", THREADS)),
            timeout,
            io_timeout: 0,
            registration: Arc::default(),
            removing: Arc::default(),
        }
    }

    /// The same client, acquiring host ids with `io_timeout` seconds
    /// (sanlock's lockspace `io_timeout`; 0: the daemon's default).
    pub fn with_io_timeout(mut self, io_timeout: u32) -> Sanlock {
        self.io_timeout = io_timeout;
        self
    }

    /// The `io_timeout` [`Sanlock::add_lockspace`] acquires host ids with
    /// (0: the daemon's default).
    pub fn io_timeout(&self) -> u32 {
        self.io_timeout
    }

    /// A client that never calls anything (sanlock disabled, or tests).
    pub fn unavailable(why: impl Into<String>) -> Sanlock {
        Sanlock {
            lib: Err(why.into()),
            worker: Arc::new(IoWorker::new("sanlock", 1)),
            timeout: Duration::from_secs(1),
            io_timeout: 0,
            registration: Arc::default(),
            removing: Arc::default(),
        }
    }

    /// Why the library is not loaded, `None` when it is.
    pub fn library_error(&self) -> Option<&str> {
        self.lib.as_ref().err().map(String::as_str)
    }

    /// The library's name when loaded.
    pub fn library(&self) -> Option<&str> {
        self.lib.as_ref().ok().map(|l| l.name.as_str())
    }

    pub(super) fn call<T: Send + 'static>(
        &self,
        op: &'static str,
        target: &str,
        f: impl FnOnce(&Lib) -> T + Send + 'static,
    ) -> Result<T, SanlockError> {
        self.call_within(self.timeout, op, target, f)
    }

    fn call_within<T: Send + 'static>(
        &self,
        timeout: Duration,
        op: &'static str,
        target: &str,
        f: impl FnOnce(&Lib) -> T + Send + 'static,
    ) -> Result<T, SanlockError> {
        let lib = Arc::clone(
            self.lib
                .as_ref()
                .map_err(|e| SanlockError::Unavailable(e.clone()))?,
        );
        self.worker
            .run(timeout, move || f(&lib))
            .map_err(|source| SanlockError::NoAnswer {
                op,
                target: target.to_owned(),
                source,
            })
    }

    pub(super) fn error(&self, op: &'static str, target: &str, rv: c_int) -> SanlockError {
        let message = match &self.lib {
            Ok(lib) => lib.message(rv),
            Err(_) => format!("error {rv}"),
        };
        SanlockError::Call {
            op,
            target: target.to_owned(),
            rv,
            message,
        }
    }

    /// The daemon's version (`sanlock_version`): a call that needs the
    /// daemon, so it tells whether sanlock can be used at all.
    pub fn daemon_version(&self) -> Result<String, SanlockError> {
        const OP: &str = "version";
        let timeout = self.timeout.min(VERSION_TIMEOUT);
        let (rv, version, proto) = self.call_within(timeout, OP, "daemon", |lib| {
            let (mut version, mut proto) = (0u32, 0u32);
            // SAFETY: two valid out pointers.
            let rv = unsafe { (lib.version)(0, &mut version, &mut proto) };
            (rv, version, proto)
        })?;
        if rv < 0 {
            return Err(match self.error(OP, "daemon", rv) {
                SanlockError::Call { message, .. } => SanlockError::Unavailable(format!(
                    "the sanlock daemon does not answer: {message}"
                )),
                e => e,
            });
        }
        Ok(format!(
            "{}.{}.{} (protocol {:#x})",
            version >> 24,
            (version >> 16) & 0xff,
            (version >> 8) & 0xff,
            proto
        ))
    }

    /// Starts acquiring `ls.host_id` in the lockspace (`add_lockspace` with
    /// `SANLK_ADD_ASYNC`, as VDSM's domain monitor does): returns once the
    /// daemon has taken the request; [`Sanlock::inq_lockspace`] tells when
    /// the host id is held (about 20 s with a 10 s `io_timeout`, longer if
    /// the last owner of the id did not release it), with this client's
    /// [`io_timeout`](Sanlock::io_timeout) (0: the daemon's default).
    /// While a removal this client asked for is not finished, no add is
    /// sent (`BeingRemoved`): see [`Sanlock::rem_lockspace`].
    pub fn add_lockspace(&self, ls: &Lockspace) -> Result<AddOutcome, SanlockError> {
        const OP: &str = "add_lockspace";
        if self.removal_pending(ls) && self.inq_lockspace(ls)? != HostIdState::Free {
            return Ok(AddOutcome::BeingRemoved);
        }
        let (mut raw, target) = raw_lockspace(OP, ls)?;
        let io_timeout = self.io_timeout;
        let rv = self.call(OP, &target, move |lib| {
            // SAFETY: a valid, fully initialised sanlk_lockspace.
            unsafe { (lib.add_lockspace_timeout)(&mut *raw, SANLK_ADD_ASYNC, io_timeout) }
        })?;
        match rv {
            0 => Ok(AddOutcome::Started),
            r if r == -libc::EEXIST => Ok(AddOutcome::AlreadyHeld),
            r if r == -libc::EINPROGRESS => Ok(AddOutcome::InProgress),
            r if r == -libc::EAGAIN => Ok(AddOutcome::BeingRemoved),
            r => Err(self.error(OP, &target, r)),
        }
    }

    /// Whether this host holds `ls.host_id` in the lockspace now
    /// (`inq_lockspace`, without waiting). A lockspace this client asked
    /// to leave asynchronously is `Removing` until the daemon no longer
    /// lists it, even while the daemon still answers "held".
    pub fn inq_lockspace(&self, ls: &Lockspace) -> Result<HostIdState, SanlockError> {
        const OP: &str = "inq_lockspace";
        let (mut raw, target) = raw_lockspace(OP, ls)?;
        let rv = self.call(OP, &target, move |lib| {
            // SAFETY: a valid, fully initialised sanlk_lockspace.
            unsafe { (lib.inq_lockspace)(&mut *raw, 0) }
        })?;
        let state = match rv {
            0 => HostIdState::Held,
            r if r == -libc::ENOENT => HostIdState::Free,
            r if r == -libc::EINPROGRESS => HostIdState::Changing,
            r if r == -libc::EAGAIN => HostIdState::Removing,
            r => return Err(self.error(OP, &target, r)),
        };
        if !self.removal_pending(ls) {
            return Ok(state);
        }
        Ok(match state {
            HostIdState::Held => HostIdState::Removing,
            HostIdState::Free => {
                self.removal_done(ls);
                HostIdState::Free
            }
            other => other,
        })
    }

    /// Whether a release of `ls` this client started may not be over.
    /// By name and host id: the daemon refuses a second lockspace of one
    /// name whatever its path (a domain reached through another link).
    fn removal_pending(&self, ls: &Lockspace) -> bool {
        self.removing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|l| same_lockspace(l, ls))
    }

    fn removal_done(&self, ls: &Lockspace) {
        self.removing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|l| !same_lockspace(l, ls));
    }

    /// Releases `ls.host_id` (`rem_lockspace` with `SANLK_REM_UNUSED`, so a
    /// lockspace whose leases are still held is refused (`Busy`) instead
    /// of sanlock killing their holders; `async_` returns before the
    /// release completes, about 2 s later).
    ///
    /// After an asynchronous release the daemon keeps the lockspace in
    /// its list, answering "held" to `inq_lockspace` and `EEXIST` to
    /// `add_lockspace`, until its main loop picks the removal up (up to
    /// a second); it then kills every process holding a lease in it,
    /// including one acquired in that window. So this client remembers
    /// the release: until the daemon no longer lists the lockspace,
    /// [`inq_lockspace`](Sanlock::inq_lockspace) answers `Removing` and
    /// [`add_lockspace`](Sanlock::add_lockspace) sends nothing and answers
    /// `BeingRemoved`, and a caller that waits for the host id waits for
    /// the release to end and adds it again.
    pub fn rem_lockspace(&self, ls: &Lockspace, async_: bool) -> Result<RemOutcome, SanlockError> {
        const OP: &str = "rem_lockspace";
        let (mut raw, target) = raw_lockspace(OP, ls)?;
        let flags = SANLK_REM_UNUSED | if async_ { SANLK_REM_ASYNC } else { 0 };
        let rv = self.call(OP, &target, move |lib| {
            // SAFETY: a valid, fully initialised sanlk_lockspace.
            unsafe { (lib.rem_lockspace)(&mut *raw, flags) }
        })?;
        let outcome = match rv {
            0 => RemOutcome::Released,
            r if r == -libc::ENOENT => RemOutcome::NotHeld,
            r if r == -libc::EINPROGRESS => RemOutcome::InProgress,
            r if r == -libc::EBUSY => RemOutcome::Busy,
            r => return Err(self.error(OP, &target, r)),
        };
        let started = matches!(outcome, RemOutcome::Released | RemOutcome::InProgress);
        if async_ && started {
            let mut removing = self.removing.lock().unwrap_or_else(|e| e.into_inner());
            if !removing.iter().any(|l| same_lockspace(l, ls)) {
                removing.push(ls.clone());
            }
        } else if !async_ && outcome != RemOutcome::Busy {
            // Done (or nothing to do): the daemon lists it no more.
            self.removal_done(ls);
        }
        Ok(outcome)
    }

    /// The hosts of lockspace `name` the daemon has seen (`host_id` 0: all
    /// of them; else that one), with their liveness. Needs this host to be
    /// in the lockspace; `-EAGAIN` for a while after joining it, until the
    /// daemon has read the other hosts' leases once.
    pub fn get_hosts(&self, name: &str, host_id: u64) -> Result<Vec<HostInfo>, SanlockError> {
        const OP: &str = "get_hosts";
        check_name(OP, name)?;
        let cname = CString::new(name).map_err(|_| SanlockError::Invalid {
            op: OP,
            reason: "NUL in name".into(),
        })?;
        let (rv, hosts) = self.call(OP, name, move |lib| {
            let mut p: *mut RawHost = std::ptr::null_mut();
            let mut n: c_int = 0;
            // SAFETY: a NUL-terminated name and two valid out pointers.
            let rv = unsafe { (lib.get_hosts)(cname.as_ptr(), host_id, &mut p, &mut n, 0) };
            // SAFETY: on success sanlock allocated `n` records at `p`.
            (rv, unsafe { take_hosts(p, n, rv == 0) })
        })?;
        if rv < 0 {
            return Err(self.error(OP, name, rv));
        }
        Ok(hosts.iter().map(HostInfo::from_raw).collect())
    }
}

impl HostInfo {
    pub(super) fn from_raw(h: &RawHost) -> HostInfo {
        HostInfo {
            host_id: h.host_id,
            generation: h.generation,
            timestamp: h.timestamp,
            io_timeout: h.io_timeout,
            status: HostStatus::from_flags(h.flags),
        }
    }
}

/// Copies `text` into a C name or path field (checked to fit before).
pub(super) fn fill(field: &mut [c_char], text: &str) {
    for (d, s) in field.iter_mut().zip(text.bytes()) {
        *d = s as c_char;
    }
}

/// Takes `n` hosts sanlock allocated at `p` (a list it returns), and frees
/// the list.
///
/// # Safety
/// `p` is null or a `malloc`ed array of at least `n` `sanlk_host`s.
pub(super) unsafe fn take_hosts(p: *mut RawHost, n: c_int, ok: bool) -> Vec<RawHost> {
    let mut hosts = Vec::new();
    if !p.is_null() {
        if ok && n > 0 {
            // SAFETY: the caller's promise: `n` records at `p`.
            hosts = unsafe { std::slice::from_raw_parts(p, n as usize) }.to_vec();
        }
        // SAFETY: allocated by the library with malloc, ours to free.
        unsafe { libc::free(p.cast()) };
    }
    hosts
}

/// Whether `a` and `b` are one lockspace to the daemon: by name and host
/// id (it refuses a second lockspace of one name whatever its path).
fn same_lockspace(a: &Lockspace, b: &Lockspace) -> bool {
    a.name == b.name && a.host_id == b.host_id
}

/// A `sanlk_lockspace` for `ls` (boxed: 1 KiB), and the lockspace as
/// sanlock's command line writes it, for messages.
fn raw_lockspace(
    op: &'static str,
    ls: &Lockspace,
) -> Result<(Box<RawLockspace>, String), SanlockError> {
    check_name(op, &ls.name)?;
    if ls.host_id == 0 || ls.host_id > super::MAX_HOST_ID {
        return Err(SanlockError::Invalid {
            op,
            reason: format!("host id {} (1 to {})", ls.host_id, super::MAX_HOST_ID),
        });
    }
    let path = disk_path(op, &ls.area.path)?;
    let mut raw = Box::new(RawLockspace {
        name: [0; NAME_LEN],
        host_id: ls.host_id,
        flags: 0,
        host_id_disk: RawDisk::new(&path, ls.area.offset),
    });
    fill(&mut raw.name, &ls.name);
    let target = format!("{}:{}:{}:{}", ls.name, ls.host_id, path, ls.area.offset);
    Ok((raw, target))
}

#[cfg(test)]
mod tests {
    use super::super::Area;
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn structs_match_sanlock_h() {
        // Sizes and offsets from a C program compiled against sanlock.h
        // 3.8.5 (x86_64).
        assert_eq!(size_of::<RawDisk>(), 1040);
        assert_eq!(size_of::<RawLockspace>(), 1104);
        assert_eq!(offset_of!(RawLockspace, host_id), 48);
        assert_eq!(offset_of!(RawLockspace, flags), 56);
        assert_eq!(offset_of!(RawLockspace, host_id_disk), 64);
        assert_eq!(size_of::<RawHost>(), 32);
    }

    #[test]
    fn host_flags_map_to_vdsms_names() {
        assert_eq!(
            HostStatus::from_flags(0x3).map(HostStatus::name),
            Some("live")
        );
        assert_eq!(HostStatus::from_flags(0x13), Some(HostStatus::Live));
        assert_eq!(HostStatus::from_flags(0x5), Some(HostStatus::Dead));
        assert_eq!(HostStatus::from_flags(0x0), None);
        assert_eq!(HostStatus::from_flags(0x9), None);
    }

    #[test]
    fn lockspaces_are_checked_before_any_call() {
        let area = Area::new("/srv/sd/dom_md/ids", 0);
        for id in [0, 2001] {
            let ls = Lockspace::new("sd", id, area.clone());
            assert!(raw_lockspace("t", &ls).is_err(), "host id {id} accepted");
        }
        let (raw, target) =
            raw_lockspace("t", &Lockspace::new("sd", 7, Area::new("/m/a:b/ids", 512))).unwrap();
        assert_eq!(target, "sd:7:/m/a:b/ids:512");
        // The daemon opens the path it is given: the colon is not escaped.
        assert_eq!(raw.host_id_disk.path(), "/m/a:b/ids");
        assert_eq!(raw.host_id, 7);
        assert_eq!(raw.host_id_disk.offset, 512);
        assert_eq!(raw.name[..3], [b's' as c_char, b'd' as c_char, 0]);
    }

    #[test]
    fn a_missing_library_is_reported_not_fatal() {
        let s = Sanlock::load(
            Some(Path::new("/nonexistent/libsanlock.so")),
            Duration::from_secs(1),
        );
        let why = s.library_error().expect("no library there");
        assert!(why.contains("/nonexistent/libsanlock.so"), "{why}");
        let ls = Lockspace::new("sd", 1, Area::new("/x", 0));
        let e = s.inq_lockspace(&ls).unwrap_err();
        assert!(matches!(e, SanlockError::Unavailable(_)), "{e}");
        assert!(e.to_string().starts_with("sanlock unavailable: "), "{e}");
    }
}
