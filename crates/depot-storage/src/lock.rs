//! In-process shared/exclusive locks on named storage resources, so that
//! concurrent verbs never interleave their metadata changes.
//!
//! The resources follow VDSM's resource manager namespaces, so log lines and
//! error messages name them the way VDSM's do:
//!
//! | resource                  | full name                |
//! |---------------------------|--------------------------|
//! | [`ResourceName::pool`]    | `00_storage.<sp>`        |
//! | [`ResourceName::domain`]  | `00_storage.<sd>`        |
//! | [`ResourceName::image`]   | `01_img_<sd>.<img>`      |
//! | [`ResourceName::volume`]  | `02_vol_<sd>.<vol>`      |
//!
//! # Semantics
//!
//! A resource is held by any number of [`LockMode::Shared`] holders, or by
//! one [`LockMode::Exclusive`] holder. Requests are served in arrival order
//! (as VDSM's queue does): a shared request joins the current shared holders
//! only when nobody is waiting, so a waiting exclusive request blocks new
//! shared ones and writers are never starved. A request that is not granted
//! within its timeout fails with [`Code::ResourceTimeout`] (851), naming the
//! resource and how it is held.
//!
//! Locks are released when the [`LockGuard`] is dropped. They are not
//! reentrant: a thread that asks again for a resource it holds exclusively
//! (or exclusively for one it holds shared) waits for itself and times out.
//!
//! A resource's entry exists only while someone holds or waits for it, so
//! locking millions of different images over a daemon's life leaks nothing.
//!
//! # Lock order (deadlock avoidance)
//!
//! Code that takes more than one lock takes them in this order:
//!
//! 1. the pool (`00_storage.<sp>`; a host is connected to one pool, and
//!    the pool verbs take it exclusive before any domain, as VDSM's
//!    connect, disconnect, refresh, destroy and reconstructMaster do);
//! 2. domains (`00_storage`), several sorted by domain id;
//! 3. images (`01_img_*`), several sorted by (domain id, image id);
//! 4. volumes (`02_vol_*`), several sorted by (domain id, volume id).
//!
//! This is the order of [`ResourceName`]'s `Ord`, and
//! [`LockManager::acquire_all`] takes a set of locks in exactly that order,
//! so callers that use it cannot deadlock against each other. For example a
//! copy between two images takes `00_storage` shared on both domains, then
//! the source image shared and the destination image exclusive, sorted by
//! id whichever is the source.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use depot_api::storage::{ImgUuid, SdUuid, SpUuid, VolUuid};
use depot_api::Code;

use crate::error::{StorageError, StorageResult};

/// How a resource is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LockMode {
    /// Any number of holders at once: readers.
    Shared,
    /// One holder and no shared ones: writers.
    Exclusive,
}

impl LockMode {
    pub fn name(self) -> &'static str {
        match self {
            LockMode::Shared => "shared",
            LockMode::Exclusive => "exclusive",
        }
    }
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name of a lockable resource. Ordered pool < domain < image < volume, then
/// by ids: the lock order (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceName(Kind);

// The variant order is the lock order: do not reorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Pool(SpUuid),
    Domain(SdUuid),
    Image(SdUuid, ImgUuid),
    Volume(SdUuid, VolUuid),
}

impl ResourceName {
    /// A storage pool, for the verbs that change this host's view of it:
    /// VDSM's `00_storage` namespace (pool and domain ids share it).
    pub fn pool(sp: SpUuid) -> Self {
        ResourceName(Kind::Pool(sp))
    }

    /// A whole storage domain: VDSM's `00_storage` namespace.
    pub fn domain(sd: SdUuid) -> Self {
        ResourceName(Kind::Domain(sd))
    }

    /// An image of a domain: VDSM's `01_img_<sd>` namespace.
    pub fn image(sd: SdUuid, img: ImgUuid) -> Self {
        ResourceName(Kind::Image(sd, img))
    }

    /// A volume of a domain: VDSM's `02_vol_<sd>` namespace.
    pub fn volume(sd: SdUuid, vol: VolUuid) -> Self {
        ResourceName(Kind::Volume(sd, vol))
    }

    /// VDSM's namespace, e.g. `01_img_<sd>`.
    pub fn namespace(&self) -> String {
        match self.0 {
            Kind::Pool(_) | Kind::Domain(_) => "00_storage".to_owned(),
            Kind::Image(sd, _) => format!("01_img_{sd}"),
            Kind::Volume(sd, _) => format!("02_vol_{sd}"),
        }
    }

    /// The name inside the namespace (an id).
    pub fn name(&self) -> String {
        match self.0 {
            Kind::Pool(sp) => sp.to_string(),
            Kind::Domain(sd) => sd.to_string(),
            Kind::Image(_, img) => img.to_string(),
            Kind::Volume(_, vol) => vol.to_string(),
        }
    }

    /// The domain the resource belongs to (none for a pool).
    pub fn domain_id(&self) -> Option<SdUuid> {
        match self.0 {
            Kind::Pool(_) => None,
            Kind::Domain(sd) | Kind::Image(sd, _) | Kind::Volume(sd, _) => Some(sd),
        }
    }
}

/// `<namespace>.<name>`, as VDSM logs resources.
impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.namespace(), self.name())
    }
}

/// One resource that is held or waited for.
struct Entry {
    /// Shared holders.
    shared: usize,
    /// Held exclusively.
    exclusive: bool,
    /// Waiting requests, oldest first.
    queue: VecDeque<(u64, LockMode)>,
    /// Holders plus waiters; the entry is removed when this reaches 0.
    users: usize,
    /// Waiters of this resource wait here (always with the table lock).
    cv: Arc<Condvar>,
}

impl Entry {
    fn new() -> Self {
        Entry {
            shared: 0,
            exclusive: false,
            queue: VecDeque::new(),
            users: 0,
            cv: Arc::new(Condvar::new()),
        }
    }

    fn compatible(&self, mode: LockMode) -> bool {
        match mode {
            LockMode::Shared => !self.exclusive,
            LockMode::Exclusive => !self.exclusive && self.shared == 0,
        }
    }

    fn grant(&mut self, mode: LockMode) {
        match mode {
            LockMode::Shared => self.shared += 1,
            LockMode::Exclusive => self.exclusive = true,
        }
    }

    /// How the resource is held, for the timeout message.
    fn describe(&self, own_id: u64) -> String {
        let held = if self.exclusive {
            "held exclusive".to_owned()
        } else if self.shared > 0 {
            format!("held shared by {} holder(s)", self.shared)
        } else {
            "not held".to_owned()
        };
        let ahead = self
            .queue
            .iter()
            .take_while(|(id, _)| *id != own_id)
            .count();
        if ahead > 0 {
            format!("{held}, {ahead} request(s) queued ahead")
        } else {
            held
        }
    }
}

#[derive(Default)]
struct Table {
    entries: HashMap<ResourceName, Entry>,
    next_id: u64,
}

#[derive(Default)]
struct Inner {
    table: Mutex<Table>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // Critical sections do not panic and leave the table consistent.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The lock table of one process. Cheap to clone: clones share the table.
#[derive(Clone, Default)]
pub struct LockManager {
    inner: Arc<Inner>,
}

impl fmt::Debug for LockManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockManager")
            .field("active_resources", &self.active_resources())
            .finish()
    }
}

impl LockManager {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes `resource` shared, waiting up to `timeout`.
    pub fn shared(&self, resource: &ResourceName, timeout: Duration) -> StorageResult<LockGuard> {
        self.acquire(resource, LockMode::Shared, timeout)
    }

    /// Takes `resource` exclusive, waiting up to `timeout`.
    pub fn exclusive(
        &self,
        resource: &ResourceName,
        timeout: Duration,
    ) -> StorageResult<LockGuard> {
        self.acquire(resource, LockMode::Exclusive, timeout)
    }

    /// Takes `resource` in `mode`, waiting up to `timeout` (`Duration::MAX`
    /// waits forever). Fails with [`Code::ResourceTimeout`].
    pub fn acquire(
        &self,
        resource: &ResourceName,
        mode: LockMode,
        timeout: Duration,
    ) -> StorageResult<LockGuard> {
        let deadline = Instant::now().checked_add(timeout);
        self.acquire_until(resource, mode, deadline, timeout)
    }

    /// Takes several locks in the lock order (see the [module docs](self)),
    /// within one overall `timeout`. A resource named twice is taken once,
    /// exclusive if either request was. On failure the locks already taken
    /// are released. The guards are returned in the order they were taken.
    pub fn acquire_all(
        &self,
        requests: impl IntoIterator<Item = (ResourceName, LockMode)>,
        timeout: Duration,
    ) -> StorageResult<Vec<LockGuard>> {
        let mut wanted: Vec<(ResourceName, LockMode)> = requests.into_iter().collect();
        // Sorted by name, exclusive after shared for the same name: keep
        // the last of each run.
        wanted.sort();
        wanted.reverse();
        wanted.dedup_by_key(|(name, _)| *name);
        wanted.reverse();
        let deadline = Instant::now().checked_add(timeout);
        let mut guards = Vec::with_capacity(wanted.len());
        for (name, mode) in wanted {
            guards.push(self.acquire_until(&name, mode, deadline, timeout)?);
        }
        Ok(guards)
    }

    /// How many resources are held or waited for now.
    pub fn active_resources(&self) -> usize {
        self.inner.lock().entries.len()
    }

    fn acquire_until(
        &self,
        resource: &ResourceName,
        mode: LockMode,
        deadline: Option<Instant>,
        timeout: Duration,
    ) -> StorageResult<LockGuard> {
        let mut table = self.inner.lock();
        let id = table.next_id;
        table.next_id += 1;
        let entry = table.entries.entry(*resource).or_insert_with(Entry::new);
        entry.users += 1;
        if entry.queue.is_empty() && entry.compatible(mode) {
            entry.grant(mode);
            return Ok(self.guard(*resource, mode));
        }
        entry.queue.push_back((id, mode));
        let cv = Arc::clone(&entry.cv);
        tracing::debug!(resource = %resource, %mode, "waiting for lock");
        loop {
            table = match deadline {
                None => cv.wait(table).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    cv.wait_timeout(table, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
            let entry = table
                .entries
                .get_mut(resource)
                .expect("a resource with a waiter stays in the table");
            let first = entry.queue.front().map(|(i, _)| *i) == Some(id);
            if first && entry.compatible(mode) {
                entry.queue.pop_front();
                entry.grant(mode);
                // The next in line may be a shared request that can join.
                entry.cv.notify_all();
                return Ok(self.guard(*resource, mode));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                let held = entry.describe(id);
                entry.queue.retain(|(i, _)| *i != id);
                entry.users -= 1;
                if entry.users == 0 {
                    table.entries.remove(resource);
                } else if first {
                    // Whoever was behind us may be grantable now.
                    entry.cv.notify_all();
                }
                return Err(StorageError::new(
                    Code::ResourceTimeout,
                    match mode {
                        LockMode::Shared => "acquire shared lock",
                        LockMode::Exclusive => "acquire exclusive lock",
                    },
                    format!("{resource}: not granted within {timeout:?}: {held}"),
                ));
            }
        }
    }

    fn guard(&self, resource: ResourceName, mode: LockMode) -> LockGuard {
        LockGuard {
            inner: Arc::clone(&self.inner),
            resource,
            mode,
        }
    }
}

/// Locks a verb holds, shared with what works under them (a copy's job,
/// an upload's writer): they are released when the last holder lets go.
/// A file-system call that missed its deadline was made by a helper
/// process that is killed and abandoned, so no thread of depotd holds a
/// lock past its call; what such a call may still do when the server
/// answers is a crash's leftover (docs/storage.md, "Locks").
#[derive(Debug, Clone, Default)]
pub struct Held {
    /// Only dropped: the last clone's drop releases the locks.
    _guards: Option<Arc<Vec<LockGuard>>>,
}

impl Held {
    pub fn new(guards: Vec<LockGuard>) -> Held {
        Held {
            _guards: Some(Arc::new(guards)),
        }
    }

    /// No locks (for calls made without any).
    pub fn none() -> Held {
        Held { _guards: None }
    }
}

/// A held lock; released when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard {
    inner: Arc<Inner>,
    resource: ResourceName,
    mode: LockMode,
}

impl LockGuard {
    pub fn resource(&self) -> &ResourceName {
        &self.resource
    }

    pub fn mode(&self) -> LockMode {
        self.mode
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("resource", &self.resource.to_string())
            .field("mode", &self.mode)
            .finish()
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let mut table = self.inner.lock();
        let Some(entry) = table.entries.get_mut(&self.resource) else {
            debug_assert!(false, "held resource missing from the table");
            return;
        };
        match self.mode {
            LockMode::Shared => entry.shared -= 1,
            LockMode::Exclusive => entry.exclusive = false,
        }
        entry.users -= 1;
        if entry.users == 0 {
            table.entries.remove(&self.resource);
        } else {
            entry.cv.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use depot_api::types::Uuid;

    #[test]
    fn held_locks_go_with_the_last_holder() {
        let m = LockManager::new();
        let r = ResourceName::domain(SdUuid(Uuid::new_v4()));
        let t = Duration::from_millis(20);
        let held = Held::new(vec![m.exclusive(&r, t).unwrap()]);
        let worker_copy = held.clone();
        drop(held);
        assert!(m.exclusive(&r, t).is_err(), "still held by the copy");
        drop(worker_copy);
        assert!(m.exclusive(&r, t).is_ok());
        drop(Held::none());
    }

    #[test]
    fn names_follow_vdsm_namespaces() {
        let sd = SdUuid(Uuid::new_v4());
        let img = ImgUuid(Uuid::new_v4());
        let vol = VolUuid(Uuid::new_v4());
        assert_eq!(
            ResourceName::domain(sd).to_string(),
            format!("00_storage.{sd}")
        );
        assert_eq!(
            ResourceName::image(sd, img).to_string(),
            format!("01_img_{sd}.{img}")
        );
        assert_eq!(
            ResourceName::volume(sd, vol).to_string(),
            format!("02_vol_{sd}.{vol}")
        );
        assert_eq!(ResourceName::volume(sd, vol).domain_id(), Some(sd));
        let sp = SpUuid(Uuid::new_v4());
        assert_eq!(
            ResourceName::pool(sp).to_string(),
            format!("00_storage.{sp}")
        );
        assert_eq!(ResourceName::pool(sp).domain_id(), None);
    }

    #[test]
    fn order_is_pool_domain_image_volume() {
        let sp = SpUuid("ffffffff-0000-0000-0000-00000000000f".parse().unwrap());
        let a = SdUuid("00000000-0000-0000-0000-00000000000a".parse().unwrap());
        let b = SdUuid("00000000-0000-0000-0000-00000000000b".parse().unwrap());
        let i1 = ImgUuid("00000000-0000-0000-0000-000000000001".parse().unwrap());
        let i2 = ImgUuid("00000000-0000-0000-0000-000000000002".parse().unwrap());
        let v = VolUuid("00000000-0000-0000-0000-000000000001".parse().unwrap());
        let mut names = vec![
            ResourceName::volume(a, v),
            ResourceName::image(b, i1),
            ResourceName::image(a, i2),
            ResourceName::domain(b),
            ResourceName::image(a, i1),
            ResourceName::domain(a),
            ResourceName::pool(sp),
        ];
        names.sort();
        assert_eq!(
            names,
            vec![
                ResourceName::pool(sp),
                ResourceName::domain(a),
                ResourceName::domain(b),
                ResourceName::image(a, i1),
                ResourceName::image(a, i2),
                ResourceName::image(b, i1),
                ResourceName::volume(a, v),
            ]
        );
    }

    #[test]
    fn acquire_all_merges_duplicates_to_the_stronger_mode() {
        let m = LockManager::new();
        let sd = SdUuid(Uuid::new_v4());
        let img = ImgUuid(Uuid::new_v4());
        let guards = m
            .acquire_all(
                [
                    (ResourceName::image(sd, img), LockMode::Shared),
                    (ResourceName::domain(sd), LockMode::Shared),
                    (ResourceName::image(sd, img), LockMode::Exclusive),
                ],
                Duration::from_secs(1),
            )
            .unwrap();
        let got: Vec<_> = guards.iter().map(|g| (*g.resource(), g.mode())).collect();
        assert_eq!(
            got,
            vec![
                (ResourceName::domain(sd), LockMode::Shared),
                (ResourceName::image(sd, img), LockMode::Exclusive),
            ]
        );
        drop(guards);
        assert_eq!(m.active_resources(), 0);
    }
}
