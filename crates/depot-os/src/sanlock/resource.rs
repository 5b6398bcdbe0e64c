//! Resource leases (paxos leases): the SPM's lease in a domain's `leases`
//! area, volume and VM leases. sanlock grants a lease to a registered
//! process and keeps it while that process's registration (a connection
//! to the daemon) is open: when depotd exits or dies, the daemon releases
//! its leases; when depotd's host id in the lease's lockspace cannot be
//! renewed, the daemon kills depotd (SIGTERM, then SIGKILL), so a host
//! that lost its storage cannot go on writing under a lease another host
//! may take once the host id expires. That is VDSM's model (its
//! `clusterlock.SANLock`), and docs/architecture.md, "sanlock", tells
//! what it means for depotd.

use std::ffi::{c_int, c_void};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use super::client::{fill, take_hosts, RawDisk, RawHost, Sanlock};
use super::{check_name, disk_path, Area, Geometry, HostInfo, SanlockError, NAME_LEN};

// sanlock.h, sanlock_resource.h, sanlock_rv.h
const SANLK_RES_LVER: u32 = 0x1;
const SANLK_ACQUIRE_LVB: u32 = 0x1;
const SANLK_ACQUIRE_OWNER_NOWAIT: u32 = 0x8;
const SANLK_ACQUIRE_LVER: c_int = -240;
const SANLK_ACQUIRE_IDLIVE: c_int = -243;
const SANLK_ACQUIRE_OWNED: c_int = -244;
const SANLK_ACQUIRE_OTHER: c_int = -245;
const SANLK_ACQUIRE_OWNED_RETRY: c_int = -247;

/// `struct sanlk_resource` with its one disk (sanlock.h: the disks follow
/// the fixed part; depot's leases have one): 128 + 1040 bytes.
#[repr(C)]
pub(super) struct RawResource {
    lockspace_name: [std::ffi::c_char; NAME_LEN],
    name: [std::ffi::c_char; NAME_LEN],
    lver: u64,
    data64: u64,
    data32: u32,
    unused: u32,
    flags: u32,
    num_disks: u32,
    disk: RawDisk,
}

/// A paxos lease: the lockspace it belongs to (VDSM: the domain id), its
/// name (`SDM` for the SPM's lease, a volume or VM id for the others) and
/// where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub lockspace: String,
    pub name: String,
    pub area: Area,
}

impl Resource {
    pub fn new(lockspace: impl Into<String>, name: impl Into<String>, area: Area) -> Self {
        Resource {
            lockspace: lockspace.into(),
            name: name.into(),
            area,
        }
    }
}

/// A lease as it is on disk now (`sanlock_read_resource_owners`): its
/// version (`lver`, raised by each acquire) and the hosts that hold it
/// (none when it is free).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    pub lver: u64,
    pub owners: Vec<HostInfo>,
}

/// Why an acquire was refused, for the cases a caller acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Another live host holds the lease (or its host id is still live).
    Held,
    /// The lease's version is not the one asked for (`lver`).
    Lver,
}

impl SanlockError {
    /// What an acquire's error means, when it is a refusal rather than a
    /// failure to reach the storage or the daemon.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            SanlockError::Call { rv, .. } => match *rv {
                SANLK_ACQUIRE_IDLIVE
                | SANLK_ACQUIRE_OWNED
                | SANLK_ACQUIRE_OTHER
                | SANLK_ACQUIRE_OWNED_RETRY => Some(Refusal::Held),
                SANLK_ACQUIRE_LVER => Some(Refusal::Lver),
                _ => None,
            },
            _ => None,
        }
    }
}

/// This process's registration with the daemon (`sanlock_register`): the
/// connection that holds its leases. Made once, at the first acquire, and
/// kept for the life of the process (closing it releases every lease).
#[derive(Debug, Default)]
pub(super) struct Registration(Mutex<Option<Arc<OwnedFd>>>);

impl Registration {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Arc<OwnedFd>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The socket, if this process has registered.
    fn current(&self) -> Option<Arc<OwnedFd>> {
        self.slot().clone()
    }
}

impl Sanlock {
    /// The registration's socket, registering first if need be.
    fn registered(&self) -> Result<Arc<OwnedFd>, SanlockError> {
        const OP: &str = "register";
        let mut slot = self.registration.slot();
        if let Some(fd) = slot.as_ref() {
            return Ok(Arc::clone(fd));
        }
        let rv = self.call(OP, "daemon", |lib| {
            // SAFETY: no arguments; returns a socket or a negative error.
            unsafe { (lib.register)() }
        })?;
        if rv < 0 {
            return Err(self.error(OP, "daemon", rv));
        }
        // SAFETY: sanlock_register returned a new socket this process owns.
        let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(rv) });
        *slot = Some(Arc::clone(&fd));
        Ok(fd)
    }

    /// Acquires `res` for this process (exclusively; with `lver`, only if
    /// the lease is at that version) and returns the lease's version now.
    /// Needs this host's id in the lockspace. A lease another live host
    /// holds is refused at once ([`SanlockError::refusal`]); one whose
    /// holder's host id expired is taken over. Acquiring a lease this
    /// process already holds is an error (`-EEXIST`).
    ///
    /// A holder whose host id has stopped being renewed but is not dead
    /// yet (sanlock's host_dead_seconds, 140 s, since this daemon last saw
    /// it renew) is refused at once too (`SANLK_ACQUIRE_OWNER_NOWAIT`:
    /// `OWNED_RETRY`), not waited for inside the call: that wait would
    /// outlast the call's deadline while the daemon goes on and grants
    /// the lease to this process's registration after depotd gave up on
    /// it (a lease held that depotd does not know of, and every later
    /// acquire refused with `-EEXIST`), and would hold up every other
    /// sanlock call on the worker meanwhile. The caller retries, as the
    /// engine retries spmStart.
    pub fn acquire(&self, res: &Resource, lver: Option<u64>) -> Result<u64, SanlockError> {
        self.acquire_with(res, lver, SANLK_ACQUIRE_OWNER_NOWAIT)
    }

    /// [`acquire`](Self::acquire) with the lease's value block (LVB):
    /// the block as the lease holds it is read at the acquire
    /// ([`get_lvb`](Self::get_lvb)), and one set while the lease is held
    /// ([`set_lvb`](Self::set_lvb)) is written at the release. VDSM keeps
    /// a job's metadata there (`clusterlock.SANLock.acquire(lvb=True)`).
    pub fn acquire_lvb(&self, res: &Resource) -> Result<u64, SanlockError> {
        self.acquire_with(res, None, SANLK_ACQUIRE_LVB)
    }

    fn acquire_with(
        &self,
        res: &Resource,
        lver: Option<u64>,
        flags: u32,
    ) -> Result<u64, SanlockError> {
        const OP: &str = "acquire";
        let (mut raw, target) = raw_resource(OP, res)?;
        if let Some(v) = lver {
            raw.lver = v;
            raw.flags |= SANLK_RES_LVER;
        }
        let sock = self.registered()?;
        let rv = self.call(OP, &target, move |lib| {
            let mut list = [&mut *raw as *mut RawResource];
            // SAFETY: a registered socket kept open by `sock`, and one
            // valid, fully initialised resource.
            unsafe {
                (lib.acquire)(
                    sock.as_raw_fd(),
                    -1,
                    flags,
                    1,
                    list.as_mut_ptr(),
                    std::ptr::null_mut::<c_void>(),
                )
            }
        })?;
        if rv < 0 {
            return Err(self.error(OP, &target, rv));
        }
        Ok(self.read_lease(res)?.lver)
    }

    /// Releases `res`, held by this process.
    pub fn release(&self, res: &Resource) -> Result<(), SanlockError> {
        const OP: &str = "release";
        let (mut raw, target) = raw_resource(OP, res)?;
        let Some(sock) = self.registration.current() else {
            // Never registered: this process holds nothing.
            return Err(self.error(OP, &target, -libc::ENOENT));
        };
        let rv = self.call(OP, &target, move |lib| {
            let mut list = [&mut *raw as *mut RawResource];
            // SAFETY: the registered socket (kept open by `sock`) and one
            // valid resource.
            unsafe { (lib.release)(sock.as_raw_fd(), -1, 0, 1, list.as_mut_ptr()) }
        })?;
        if rv < 0 {
            return Err(self.error(OP, &target, rv));
        }
        Ok(())
    }

    /// Formats the lease `res` on disk (`sanlock_write_resource`, what
    /// VDSM's `sanlock.write_resource` of a volume lease does): a free
    /// paxos lease, version 0, with `geometry`'s sector size and
    /// alignment. The daemon does the I/O (no host id and no registration
    /// needed); the file or LV must exist. A daemon that is not running
    /// answers with an errno (`ENOENT`, `ECONNREFUSED`): callers that can
    /// format without it use [`super::direct_init_resource`] then.
    pub fn write_resource(&self, res: &Resource, geometry: Geometry) -> Result<(), SanlockError> {
        const OP: &str = "write_resource";
        let (mut raw, target) = raw_resource(OP, res)?;
        raw.flags |= geometry.resource_flags();
        let rv = self.call(OP, &target, move |lib| {
            // SAFETY: one valid, fully initialised resource; max_hosts and
            // num_hosts 0 (derived from the flags), no write flags.
            unsafe { (lib.write_resource)(&mut *raw, 0, 0, 0) }
        })?;
        if rv < 0 {
            return Err(self.error(OP, &target, rv));
        }
        Ok(())
    }

    /// The value block of `res`, held by this process and acquired with
    /// [`acquire_lvb`](Self::acquire_lvb): `len` bytes (at most the
    /// lease's sector size; VDSM uses 512).
    pub fn get_lvb(&self, res: &Resource, len: usize) -> Result<Vec<u8>, SanlockError> {
        const OP: &str = "get_lvb";
        let (mut raw, target) = raw_resource(OP, res)?;
        let n = lvb_len(OP, len)?;
        let (rv, data) = self.call(OP, &target, move |lib| {
            let mut buf = vec![0u8; len];
            // SAFETY: one valid resource and a buffer of `n` bytes.
            let rv = unsafe { (lib.get_lvb)(0, &mut *raw, buf.as_mut_ptr().cast(), n) };
            (rv, buf)
        })?;
        if rv < 0 {
            return Err(self.error(OP, &target, rv));
        }
        Ok(data)
    }

    /// Sets the value block of `res` (held by this process, acquired with
    /// [`acquire_lvb`](Self::acquire_lvb)) to `data`; sanlock writes it
    /// to the lease at the release.
    pub fn set_lvb(&self, res: &Resource, data: &[u8]) -> Result<(), SanlockError> {
        const OP: &str = "set_lvb";
        let (mut raw, target) = raw_resource(OP, res)?;
        let n = lvb_len(OP, data.len())?;
        let mut buf = data.to_vec();
        let rv = self.call(OP, &target, move |lib| {
            // SAFETY: one valid resource and a buffer of `n` bytes.
            unsafe { (lib.set_lvb)(0, &mut *raw, buf.as_mut_ptr().cast(), n) }
        })?;
        if rv < 0 {
            return Err(self.error(OP, &target, rv));
        }
        Ok(())
    }

    /// The lease as it is on disk: its version and holders (the daemon
    /// reads it; no host id needed).
    pub fn read_lease(&self, res: &Resource) -> Result<LeaseState, SanlockError> {
        const OP: &str = "read_resource_owners";
        let (mut raw, target) = raw_resource(OP, res)?;
        let (rv, lver, hosts) = self.call(OP, &target, move |lib| {
            let mut p: *mut RawHost = std::ptr::null_mut();
            let mut n: c_int = 0;
            // SAFETY: one valid resource and two valid out pointers.
            let rv = unsafe { (lib.read_resource_owners)(&mut *raw, 0, &mut p, &mut n) };
            // SAFETY: on success sanlock allocated `n` records at `p`.
            let hosts = unsafe { take_hosts(p, n, rv == 0) };
            (rv, raw.lver, hosts)
        })?;
        if rv < 0 {
            return Err(self.error(OP, &target, rv));
        }
        Ok(LeaseState {
            lver,
            owners: hosts.iter().map(HostInfo::from_raw).collect(),
        })
    }
}

/// A value block's length: 1 to 4096 bytes (one sector at most).
fn lvb_len(op: &'static str, len: usize) -> Result<c_int, SanlockError> {
    if len == 0 || len > 4096 {
        return Err(SanlockError::Invalid {
            op,
            reason: format!("a value block of {len} bytes (1 to 4096)"),
        });
    }
    Ok(len as c_int)
}

/// A `sanlk_resource` for `res` (boxed: over 1 KiB; its path as it is,
/// [`disk_path`]), and the resource as `LOCKSPACE:NAME:PATH:OFFSET`, for
/// messages.
fn raw_resource(
    op: &'static str,
    res: &Resource,
) -> Result<(Box<RawResource>, String), SanlockError> {
    check_name(op, &res.lockspace)?;
    check_name(op, &res.name)?;
    let path = disk_path(op, &res.area.path)?;
    let mut raw = Box::new(RawResource {
        lockspace_name: [0; NAME_LEN],
        name: [0; NAME_LEN],
        lver: 0,
        data64: 0,
        data32: 0,
        unused: 0,
        flags: 0,
        num_disks: 1,
        disk: RawDisk::new(&path, res.area.offset),
    });
    fill(&mut raw.lockspace_name, &res.lockspace);
    fill(&mut raw.name, &res.name);
    let target = format!(
        "{}:{}:{}:{}",
        res.lockspace, res.name, path, res.area.offset
    );
    Ok((raw, target))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn resource_matches_sanlock_h() {
        // sanlock.h 3.8.5 (x86_64): the fixed part is 128 bytes, the
        // disks follow it.
        assert_eq!(offset_of!(RawResource, lver), 96);
        assert_eq!(offset_of!(RawResource, flags), 120);
        assert_eq!(offset_of!(RawResource, num_disks), 124);
        assert_eq!(offset_of!(RawResource, disk), 128);
        assert_eq!(size_of::<RawResource>(), 128 + 1040);
    }

    #[test]
    fn resources_are_checked_before_any_call() {
        let area = Area::new("/m/a:b/dom_md/leases", 1 << 20);
        for (ls, name) in [("", "SDM"), ("sd", ""), ("sd", "a:b"), ("sd", "x y")] {
            let r = Resource::new(ls, name, area.clone());
            assert!(raw_resource("t", &r).is_err(), "{ls:?} {name:?} accepted");
        }
        let (raw, target) = raw_resource("t", &Resource::new("sd", "SDM", area)).unwrap();
        assert_eq!(target, "sd:SDM:/m/a:b/dom_md/leases:1048576");
        assert_eq!((raw.num_disks, raw.disk.offset), (1, 1 << 20));
        // The daemon opens the path it is given: the colon is not escaped.
        assert_eq!(raw.disk.path(), "/m/a:b/dom_md/leases");
    }

    #[test]
    fn value_blocks_are_one_sector_at_most() {
        assert_eq!(lvb_len("t", 512).unwrap(), 512);
        assert_eq!(lvb_len("t", 4096).unwrap(), 4096);
        for bad in [0, 4097, usize::MAX] {
            assert!(lvb_len("t", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refusals_are_told_from_failures() {
        let call = |rv| SanlockError::Call {
            op: "acquire",
            target: String::new(),
            rv,
            message: String::new(),
        };
        assert_eq!(call(-244).refusal(), Some(Refusal::Held));
        assert_eq!(call(-243).refusal(), Some(Refusal::Held));
        assert_eq!(call(-240).refusal(), Some(Refusal::Lver));
        assert_eq!(call(-libc::EIO).refusal(), None);
        assert_eq!(SanlockError::Unavailable("x".into()).refusal(), None);
    }
}
