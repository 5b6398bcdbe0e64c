//! A storage server that stops answering (issue 15), end to end on a real
//! depotd, whatever the server: a file domain on it and a LOCALFS domain
//! (master) in one connected pool, then the server frozen. Shared by the
//! GlusterFS tests (storage_frozen.rs, brick stopped with SIGSTOP) and the
//! NFS ones of the VM tier (vm_nfs_frozen.rs, the server's packets
//! dropped), which give a [`Server`].
//!
//! The contract the verbs are held to (docs/architecture.md, "File-system
//! calls in helper processes"): no depotd thread ever waits inside the
//! frozen mount; a verb on the frozen
//! domain answers within the I/O timeout (plus a margin) with 2001 (2002
//! for a write) naming the mount, never 358; scans over every mount are
//! bounded and report the mount they could not read; SIGTERM with calls
//! stuck exits within the grace and a new depotd answers at once; after the
//! thaw everything answers again without any call but repoStats.
//!
//! The contract tests note every figure as they see it ([`Findings`]) and
//! fail at the end with all the broken ones, so one broken figure does not
//! hide the state of the others.
//!
//! A test file uses it with `mod common; mod storage_common; mod
//! frozen_common;`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use depot_client::{Client, ClientError, Endpoint, Options};
use serde_json::{json, Value};

use crate::common::{eventually, Daemon, WAIT};
use crate::storage_common::*;

/// A one-second monitor, an I/O timeout short enough that a verb's
/// deadline comes well within a test, and a short shutdown grace. The
/// helpers per mount are the default, written out: the "answers at once"
/// figure counts on 4 stuck calls filling them.
pub const FROZEN_CONFIG: &str = "[storage]\nmonitor_interval_s = 1\nio_timeout_s = 3\n\
    fsproc_helpers_per_mount = 4\n[daemon]\nshutdown_grace_s = 5\n";
pub const INTERVAL: Duration = Duration::from_secs(1);
pub const IO_TIMEOUT: Duration = Duration::from_secs(3);
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Added to every bound of the contract, for a shared 2-CPU machine (and a
/// TCG guest in the VM tier).
pub const MARGIN: Duration = Duration::from_secs(10);
/// A verb on the frozen domain answers within its I/O timeout.
pub const VERB_BOUND: Duration = Duration::from_secs(3 + 10);
/// The monitor's interval and its check's deadline, plus a margin.
pub const REPORTED_WITHIN: Duration = Duration::from_secs(15);
/// A call the test times gives up after this: past every bound, so that a
/// verb that hangs is reported as such instead of holding the test.
const CALL_CAP: Duration = Duration::from_secs(20);
/// A depotd thread seen in the storage for this long is one that waits
/// there (a short `D` on the local disk is not).
const STUCK_FOR: Duration = Duration::from_secs(1);

/// A storage server the tests can freeze.
pub trait Server {
    /// The file domain type of a domain on it (GLUSTERFS, NFS).
    fn domain_type(&self) -> i64;
    /// The engine's connection to it.
    fn connection(&self) -> ConnectionSpec;
    /// Makes it stop answering; it answers again when the guard is thawed
    /// or dropped.
    fn freeze(&self) -> Thaw;
    /// How long after the thaw its domain may take to be valid again.
    fn recovers_within(&self) -> Duration;

    /// Whether a helper killed after its deadline stays stuck in the file
    /// system (GlusterFS: the FUSE wait does not end with SIGKILL), so that
    /// once all of a mount's helpers are stuck its calls are refused at
    /// once. Where a killed helper dies (NFS: the wait is killable), each
    /// call starts a fresh helper and takes its deadline again: bounded,
    /// not at once.
    fn killed_helpers_stay_stuck(&self) -> bool {
        true
    }

    /// How soon a new depotd answers on its socket and port ("at once").
    fn starts_within(&self) -> Duration {
        Duration::from_secs(5)
    }

    /// A new directory for a LOCALFS domain: on a file system with
    /// O_DIRECT, which a domain needs.
    fn local_dir(&self) -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }
}

/// Undoes a freeze: on [`Thaw::thaw`] or on drop (a failed test thaws
/// too, so the mounts can go).
pub struct Thaw(Option<Box<dyn FnOnce() + Send>>);

impl Thaw {
    pub fn new(undo: impl FnOnce() + Send + 'static) -> Thaw {
        Thaw(Some(Box::new(undo)))
    }

    pub fn thaw(mut self) {
        self.undo();
    }

    fn undo(&mut self) {
        if let Some(undo) = self.0.take() {
            undo();
        }
    }
}

impl Drop for Thaw {
    fn drop(&mut self) {
        self.undo();
    }
}

/// The pool of a LOCALFS (master: a pool connect must read the master's
/// metadata, which a frozen server would refuse) and a domain on the
/// server, connected.
pub struct Setup<S: Server> {
    // Dropped in order: the client, the daemon's mounts, the daemon, then
    // the server (which a Thaw of the test has thawed first).
    pub c: Client,
    _mounts: UnmountGuard,
    pub d: Daemon,
    _local: tempfile::TempDir,
    pub server: S,
    pub sp: String,
    pub sd_frozen: String,
    pub sd_local: String,
}

impl<S: Server> Setup<S> {
    pub async fn new(server: S) -> Setup<S> {
        let d = Daemon::start(FROZEN_CONFIG);
        let mounts = UnmountGuard(d.dir.path().to_path_buf());
        let c = d.client().await;
        let local = server.local_dir();
        let fconn = server.connection();
        let lconn = ConnectionSpec::local(&local.path().canonicalize().unwrap());
        let mut sds = Vec::new();
        for (domain_type, conn) in [(server.domain_type(), &fconn), (LOCALFS, &lconn)] {
            let id = new_id();
            let st = call_ok(
                &c,
                "StoragePool.connectStorageServer",
                connect_params(domain_type, vec![conn.params(&id)]),
            )
            .await;
            assert_eq!(statuses(&st), vec![0], "{st}");
            let sd = new_id();
            call_ok(
                &c,
                "StorageDomain.create",
                create_domain_params(&sd, domain_type, &conn.connection, "frozen", 0),
            )
            .await;
            sds.push(sd);
        }
        let (sd_frozen, sd_local) = (sds[0].clone(), sds[1].clone());
        let sp = new_id();
        call_ok(
            &c,
            "StoragePool.create",
            json!({
                "storagepoolID": sp, "name": "frozen pool", "masterSdUUID": sd_local,
                "masterVersion": 1, "domainList": [sd_frozen, sd_local],
                "lockRenewalIntervalSec": 5, "leaseTimeSec": 60,
                "ioOpTimeoutSec": 10, "leaseRetries": 3,
            }),
        )
        .await;
        let s = Setup {
            c,
            _mounts: mounts,
            d,
            _local: local,
            server,
            sp,
            sd_frozen,
            sd_local,
        };
        let answer = call_ok(&s.c, "StoragePool.connect", s.connect_params()).await;
        assert_eq!(answer, json!(true));
        // Volumes on the pool's domains are the SPM's to create.
        start_spm(&s.c, &s.sp).await;
        wait_actual(&s.c, &s.sd_frozen).await;
        wait_actual(&s.c, &s.sd_local).await;
        s
    }

    pub fn connect_params(&self) -> Value {
        json!({
            "storagepoolID": self.sp, "hostID": 1, "scsiKey": self.sp,
            "masterSdUUID": self.sd_local, "masterVersion": 1,
            "domainDict": {self.sd_frozen.clone(): "active", self.sd_local.clone(): "active"},
        })
    }

    /// The frozen domain's mount point, as errors and the log name it.
    pub fn mount(&self) -> PathBuf {
        mount_point(
            &self.d,
            self.server.domain_type(),
            &self.server.connection().connection,
        )
    }

    pub fn freeze(&self) -> Thaw {
        let thaw = self.server.freeze();
        eprintln!("{} frozen", self.server.connection().connection);
        thaw
    }

    pub async fn repo_stats(&self) -> Value {
        call_ok(&self.c, "Host.getStorageRepoStats", json!({})).await
    }

    /// Waits, calling nothing but repoStats, until `sd`'s entry satisfies
    /// `cond`.
    pub async fn wait_stats(
        &self,
        sd: &str,
        limit: Duration,
        what: &str,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        eventually(what, limit, || async {
            let all = self.repo_stats().await;
            all.get(sd).filter(|e| cond(e)).cloned()
        })
        .await
    }

    /// Waits until the monitor reports the frozen domain in trouble: from
    /// then on the kernel's caches (which answer for a moment after a
    /// freeze) no longer hide the outage.
    pub async fn wait_in_trouble(&self) -> Value {
        let froze = Instant::now();
        let bad = self
            .wait_stats(
                &self.sd_frozen,
                REPORTED_WITHIN,
                "the frozen domain in trouble",
                |e| e["code"] != 0,
            )
            .await;
        eprintln!("frozen domain reported after {:?}: {bad}", froze.elapsed());
        bad
    }

    /// Waits, calling nothing but repoStats, until the frozen domain is
    /// valid again.
    pub async fn wait_valid_again(&self) -> Value {
        let thawed = Instant::now();
        let good = self
            .wait_stats(
                &self.sd_frozen,
                self.server.recovers_within(),
                "valid after the thaw",
                |e| e["actual"] == true && e["code"] == 0 && e["valid"] == true,
            )
            .await;
        eprintln!("valid again {:?} after the thaw: {good}", thawed.elapsed());
        good
    }

    /// Creates a volume on the frozen domain's storage (before the freeze):
    /// (image, volume).
    pub async fn volume_before(&self) -> (String, String) {
        let (img, vol) = (new_id(), new_id());
        call_ok(
            &self.c,
            "Volume.create",
            volume_params(
                &self.sd_frozen,
                &img,
                &vol,
                GIB,
                "RAW",
                "SPARSE",
                "before",
                None,
            ),
        )
        .await;
        (img, vol)
    }
}

pub fn last_check(entry: &Value) -> f64 {
    entry["lastCheck"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("lastCheck: {entry}"))
}

/// The threads of process `pid` waiting inside a file system (a thread
/// of depotd there is one its shutdown would wait for, issue 15).
pub fn threads_in_the_storage(pid: i32) -> Vec<String> {
    depot_testkit::process::threads_in_the_storage(pid as u32)
}

fn threads_waiting(pid: i32) -> Vec<depot_testkit::process::WaitingThread> {
    depot_testkit::process::threads_waiting(pid as u32)
}

/// How many threads of `pid` and of its descendants (its fsproc helpers)
/// wait inside a file system: a call on the frozen mount is in flight once
/// one more does.
pub fn tree_in_the_storage(pid: i32) -> usize {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(p.path().join("stat")) else {
            continue;
        };
        // After the ")" that ends the command name: state, ppid.
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(child);
        }
    }
    let mut count = 0;
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        count += threads_waiting(p).len();
        todo.extend(children.get(&p).into_iter().flatten());
    }
    count
}

/// Watches depotd's own threads for one in the storage, the whole time
/// it is alive (issue 15: "no depotd thread is ever inside the frozen
/// mount"). A thread counts when it is seen there for [`STUCK_FOR`]: a
/// moment of `D` on the local disk does not. Its kernel stack goes into
/// the report.
pub struct StorageWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl StorageWatch {
    pub fn start(pid: i32) -> StorageWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut since: HashMap<String, Instant> = HashMap::new();
            let mut found: Vec<String> = Vec::new();
            let mut reported: Vec<String> = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                let now = Instant::now();
                let seen = threads_waiting(pid);
                since.retain(|tid, _| seen.iter().any(|t| &t.tid == tid));
                for t in seen {
                    let first = *since.entry(t.tid.clone()).or_insert(now);
                    if now - first >= STUCK_FOR && !reported.contains(&t.tid) {
                        let task = format!("/proc/{pid}/task/{}", t.tid);
                        let read = |f: &str| {
                            std::fs::read_to_string(format!("{task}/{f}")).unwrap_or_default()
                        };
                        found.push(format!(
                            "thread {} ({}) waits in {} for {:?}; stack:\n{}",
                            t.tid,
                            read("comm").trim(),
                            t.wchan,
                            now - first,
                            read("stack").trim_end()
                        ));
                        reported.push(t.tid);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            found
        });
        StorageWatch { stop, thread }
    }

    /// Stops watching: the threads found waiting in the storage.
    pub fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the watch thread")
    }
}

/// The figures of the contract as a test sees them, each printed at once;
/// [`Findings::finish`] fails the test with every broken one.
pub struct Findings {
    what: String,
    broken: Vec<String>,
}

impl Findings {
    pub fn new(what: &str) -> Findings {
        Findings {
            what: what.to_owned(),
            broken: Vec::new(),
        }
    }

    /// Notes one figure; `ok` whether it holds.
    pub fn check(&mut self, ok: bool, figure: impl Into<String>) -> bool {
        let figure = figure.into();
        eprintln!("{} {figure}", if ok { "holds: " } else { "BROKEN:" });
        if !ok {
            self.broken.push(figure);
        }
        ok
    }

    /// Notes the threads a [`StorageWatch`] found (none is the figure).
    pub fn no_thread_in_the_storage(&mut self, when: &str, found: Vec<String>) {
        self.check(
            found.is_empty(),
            format!(
                "no depotd thread waits in the storage {when}: {} did\n{}",
                found.len(),
                found.join("\n")
            ),
        );
    }

    /// A verb on the frozen domain: answered within [`VERB_BOUND`] with one
    /// of `codes` (never 358), its message naming `mount`.
    pub fn refused_naming_the_mount(&mut self, t: &Timed, codes: &[i32], mount: &Path) {
        let m = &t.method;
        self.check(
            t.took < VERB_BOUND,
            format!("{m} answers within {VERB_BOUND:?}: took {:?}", t.took),
        );
        let mount = mount.display().to_string();
        match &t.result {
            Ok(v) => {
                self.check(
                    false,
                    format!("{m} fails with {codes:?}: it succeeded: {v}"),
                );
            }
            Err(e) => match e.rpc_code() {
                Some(code) => {
                    self.check(
                        codes.contains(&code),
                        format!("{m} fails with {codes:?}, never 358: {e}"),
                    );
                    self.check(
                        e.to_string().contains(&mount),
                        format!("{m}'s error names the mount {mount}: {e}"),
                    );
                }
                None => {
                    self.check(false, format!("{m} fails with {codes:?}: no answer: {e}"));
                }
            },
        }
    }

    /// A call that must succeed within `limit`: its result, if it did.
    pub fn succeeds(&mut self, t: Timed, limit: Duration) -> Option<Value> {
        let m = &t.method;
        self.check(
            t.took < limit,
            format!("{m} answers within {limit:?}: took {:?}", t.took),
        );
        match t.result {
            Ok(v) => Some(v),
            Err(e) => {
                self.check(false, format!("{m} succeeds: {e}"));
                None
            }
        }
    }

    pub fn finish(self) {
        assert!(
            self.broken.is_empty(),
            "{}: {} figure(s) of the contract broken:\n- {}",
            self.what,
            self.broken.len(),
            self.broken.join("\n- ")
        );
    }
}

/// A call and how long it took to answer.
pub struct Timed {
    pub method: String,
    pub took: Duration,
    pub result: Result<Value, ClientError>,
}

/// One call on a client of its own (a client queues its calls, and one
/// that gave up waiting would hold the next), given up after
/// [`CALL_CAP`].
pub async fn timed_call(ep: &Endpoint, method: &str, params: Value) -> Timed {
    let t0 = Instant::now();
    let result = match Client::connect_with(ep, Options::with_timeout(CALL_CAP)).await {
        Ok(c) => c.call(method, params).await,
        Err(e) => Err(e),
    };
    Timed {
        method: method.to_owned(),
        took: t0.elapsed(),
        result,
    }
}

/// Waits up to `limit` for depotd to exit, without holding up the
/// runtime (the calls in flight are tasks on it).
async fn wait_exit(d: &mut Daemon, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = d.try_wait_exit(Duration::ZERO) {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The read verbs of the contract on the frozen domain, with a volume made
/// there before the freeze.
fn reads(sd: &str, img: &str, vol: &str) -> Vec<(&'static str, Value)> {
    vec![
        ("StorageDomain.getInfo", json!({"storagedomainID": sd})),
        ("StorageDomain.getStats", json!({"storagedomainID": sd})),
        ("Volume.getInfo", vol_ref(sd, img, vol)),
        ("StorageDomain.getImages", json!({"storagedomainID": sd})),
    ]
}

/// Items 1, 2 and 6 of the contract: verbs on the frozen domain answer
/// 2001 (2002 for a write) naming the mount within the I/O timeout, again
/// and again (once every helper of the mount is stuck, at once), with no
/// depotd thread in the mount; after the thaw they answer normally.
pub async fn verbs_on_the_frozen_domain<S: Server>(s: Setup<S>) {
    let mut f = Findings::new("verbs on the frozen domain");
    let mount = s.mount();
    let ep = s.d.unix();
    let (img, vol) = s.volume_before().await;
    let watch = StorageWatch::start(s.d.pid());

    let frozen = s.freeze();
    s.wait_in_trouble().await;
    for (method, params) in reads(&s.sd_frozen, &img, &vol) {
        let t = timed_call(&ep, method, params).await;
        f.refused_naming_the_mount(&t, &[2001], &mount);
    }
    let t = timed_call(
        &ep,
        "Volume.create",
        volume_params(
            &s.sd_frozen,
            &new_id(),
            &new_id(),
            GIB,
            "RAW",
            "SPARSE",
            "during",
            None,
        ),
    )
    .await;
    f.refused_naming_the_mount(&t, &[2001, 2002], &mount);
    // Five calls stuck: where killed helpers stay stuck, every helper of
    // the mount is, and the same calls again answer at once; elsewhere
    // each takes its deadline again. The same errors either way.
    let at_once = s.server.killed_helpers_stay_stuck();
    for (method, params) in reads(&s.sd_frozen, &img, &vol) {
        let t = timed_call(&ep, method, params).await;
        f.refused_naming_the_mount(&t, &[2001], &mount);
        let (bound, what) = if at_once {
            (IO_TIMEOUT, "at once (under the deadline)")
        } else {
            (IO_TIMEOUT + MARGIN, "within the deadline")
        };
        f.check(
            t.took < bound,
            format!(
                "{method} again answers {what} ({IO_TIMEOUT:?}): took {:?}",
                t.took
            ),
        );
    }

    frozen.thaw();
    s.wait_valid_again().await;
    after_the_thaw(&s, &mut f, &img, &vol).await;
    f.no_thread_in_the_storage("while frozen and after", watch.stop());
    f.finish();
}

/// Item 6: after the thaw, the frozen domain's verbs answer normally.
async fn after_the_thaw<S: Server>(s: &Setup<S>, f: &mut Findings, img: &str, vol: &str) {
    let ep = s.d.unix();
    for (method, params) in reads(&s.sd_frozen, img, vol) {
        let t = timed_call(&ep, method, params).await;
        let Some(v) = f.succeeds(t, WAIT) else {
            continue;
        };
        match method {
            "StorageDomain.getInfo" => {
                f.check(v["uuid"] == s.sd_frozen.as_str(), format!("getInfo: {v}"));
            }
            "Volume.getInfo" => {
                f.check(
                    v["uuid"] == vol && v["legality"] == "LEGAL",
                    format!("the volume made before the freeze, after the thaw: {v}"),
                );
            }
            "StorageDomain.getImages" => {
                f.check(
                    strings(&v).contains(img),
                    format!("getImages lists the image made before the freeze: {v}"),
                );
            }
            _ => {}
        }
    }
    let (img2, vol2) = (new_id(), new_id());
    let t = timed_call(
        &ep,
        "Volume.create",
        volume_params(
            &s.sd_frozen,
            &img2,
            &vol2,
            GIB,
            "RAW",
            "SPARSE",
            "after",
            None,
        ),
    )
    .await;
    if f.succeeds(t, WAIT).is_some() {
        let t = timed_call(&ep, "Volume.getInfo", vol_ref(&s.sd_frozen, &img2, &vol2)).await;
        f.succeeds(t, WAIT);
    }
}

/// Items 1, 3 and 4 of the contract: verbs that visit every mount are
/// bounded while one is frozen and report it (getStorageDomains still
/// lists the frozen domain, and the log names the mount it could not
/// read); a new LOCALFS domain is created as fast as ever.
pub async fn scans_while_frozen<S: Server>(s: Setup<S>) {
    let mut f = Findings::new("scans while frozen");
    let mount = s.mount().display().to_string();
    let ep = s.d.unix();
    let watch = StorageWatch::start(s.d.pid());

    let frozen = s.freeze();
    s.wait_in_trouble().await;
    let t = timed_call(&ep, "Host.getStorageDomains", json!({})).await;
    if let Some(v) = f.succeeds(t, Duration::from_secs(10)) {
        let found = strings(&v);
        f.check(
            found.contains(&s.sd_frozen),
            format!("getStorageDomains lists the frozen domain (known to this host): {v}"),
        );
        f.check(
            found.contains(&s.sd_local),
            format!("getStorageDomains lists the LOCALFS domain: {v}"),
        );
    }
    // The scan's warning: written before the answer; a moment for the log.
    let named = |log: String| {
        log.lines()
            .any(|l| l.contains("could not be read") && l.contains(&mount))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !named(s.d.log()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f.check(
        named(s.d.log()),
        format!("the log names the mount {mount} that \"could not be read\""),
    );

    // A new LOCALFS domain: a new connection, a new directory.
    let dir = s.server.local_dir();
    let conn = ConnectionSpec::local(&dir.path().canonicalize().unwrap());
    let t = timed_call(
        &ep,
        "StoragePool.connectStorageServer",
        connect_params(LOCALFS, vec![conn.params(&new_id())]),
    )
    .await;
    let connected = f
        .succeeds(t, Duration::from_secs(15))
        .is_some_and(|st| f.check(statuses(&st) == [0], format!("connected: {st}")));
    let sd_new = new_id();
    if connected {
        let t = timed_call(
            &ep,
            "StorageDomain.create",
            create_domain_params(&sd_new, LOCALFS, &conn.connection, "new while frozen", 0),
        )
        .await;
        if let Some(v) = f.succeeds(t, Duration::from_secs(15)) {
            f.check(v == json!(true), format!("StorageDomain.create: {v}"));
        }
    }

    frozen.thaw();
    s.wait_valid_again().await;
    let t = timed_call(&ep, "Host.getStorageDomains", json!({})).await;
    if let Some(v) = f.succeeds(t, WAIT) {
        let found = strings(&v);
        f.check(
            found.contains(&s.sd_frozen) && found.contains(&s.sd_local),
            format!("after the thaw getStorageDomains lists both pool domains: {v}"),
        );
        if connected {
            f.check(
                found.contains(&sd_new),
                format!("and the one created while frozen: {v}"),
            );
        }
    }
    f.no_thread_in_the_storage("while frozen and after", watch.stop());
    f.finish();
}

/// Item 5 (and 1, 6): SIGTERM with three calls in flight on the frozen
/// mount exits within the grace; a new depotd on the same state and port
/// answers at once, connects the pool while the storage is still frozen,
/// and the domain is valid again after the thaw with no call but
/// repoStats; the volume made before the freeze is there.
pub async fn shutdown_while_frozen<S: Server>(mut s: Setup<S>) {
    let mut f = Findings::new("shutdown while frozen");
    // A restart binds the same TLS port, as depotd on its configured port
    // does: nothing left of the old one may hold it.
    s.d.keep_port();
    let ep = s.d.unix();
    let (img, vol) = s.volume_before().await;
    let watch = StorageWatch::start(s.d.pid());

    let frozen = s.freeze();
    s.wait_in_trouble().await;
    let before = tree_in_the_storage(s.d.pid());
    let calls: Vec<_> = reads(&s.sd_frozen, &img, &vol)
        .into_iter()
        .take(3)
        .map(|(method, params)| {
            let ep = ep.clone();
            tokio::spawn(async move { timed_call(&ep, method, params).await })
        })
        .collect();
    // In flight: three more threads (of depotd or of its helpers) in the
    // storage, or the calls answered before that could be seen.
    let pid = s.d.pid();
    let limit = Instant::now() + REPORTED_WITHIN;
    while tree_in_the_storage(pid) < before + 3
        && !calls.iter().all(|c| c.is_finished())
        && Instant::now() < limit
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let in_flight = calls.iter().filter(|c| !c.is_finished()).count();
    f.check(
        in_flight == 3,
        format!("3 calls in flight on the frozen mount at SIGTERM: {in_flight}"),
    );

    let sent = Instant::now();
    s.d.signal(nix::sys::signal::Signal::SIGTERM);
    let within = SHUTDOWN_GRACE + MARGIN;
    let exited = wait_exit(&mut s.d, within).await;
    f.check(
        exited.is_some(),
        format!(
            "depotd exits within {within:?} of SIGTERM with calls stuck: {:?}",
            sent.elapsed()
        ),
    );
    if exited.is_none() {
        // How much later, so the rest can still be seen.
        let status = wait_exit(&mut s.d, Duration::from_secs(180)).await;
        eprintln!(
            "depotd exited {:?} after SIGTERM: {status:?}",
            sent.elapsed()
        );
        assert!(status.is_some(), "depotd still runs 3 min after SIGTERM");
    }
    for call in calls {
        let t = call.await.expect("the call's task");
        let answer = match &t.result {
            Ok(v) => v.to_string(),
            Err(e) => e.to_string(),
        };
        eprintln!(
            "in flight at SIGTERM: {} after {:?}: {answer}",
            t.method, t.took
        );
    }
    f.no_thread_in_the_storage("up to its exit", watch.stop());

    // A new depotd, still frozen: it starts and binds at once.
    let log_before = s.d.log().len();
    let started = Instant::now();
    s.d.respawn();
    let watch = StorageWatch::start(s.d.pid());
    let within = s.server.starts_within();
    let pinged = eventually("Host.ping2 on the new depotd", WAIT, || async {
        let c = Client::connect_with(&ep, Options::with_timeout(WAIT))
            .await
            .ok()?;
        c.call("Host.ping2", json!({})).await.ok()
    })
    .await;
    f.check(
        started.elapsed() < within,
        format!(
            "the new depotd answers Host.ping2 on its socket within {within:?}: {:?} ({pinged})",
            started.elapsed()
        ),
    );
    assert!(
        s.d.wait_notification("READY=1", WAIT),
        "no READY=1; log:\n{}",
        s.d.log()
    );
    let tls = timed_call(&s.d.tls(), "Host.ping2", json!({})).await;
    let tls_ok = tls.result.is_ok();
    f.check(
        tls_ok && started.elapsed() < within,
        format!(
            "and on its TLS port (the same as before) within {within:?}: {:?}, {}",
            started.elapsed(),
            if tls_ok { "answered" } else { "no answer" }
        ),
    );
    let log = s.d.log();
    eprintln!(
        "the new depotd's start:\n{}",
        log.get(log_before..)
            .unwrap_or("")
            .lines()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    s.c = s.d.client().await;

    // The pool connected while the storage is still frozen: the domain is
    // monitored (in trouble), and its verbs answer 2001, not 358, although
    // this depotd never saw it answer.
    let t = timed_call(&ep, "StoragePool.connect", s.connect_params()).await;
    if let Some(v) = f.succeeds(t, Duration::from_secs(15)) {
        f.check(v == json!(true), format!("StoragePool.connect: {v}"));
    }
    let bad = s
        .wait_stats(
            &s.sd_frozen,
            REPORTED_WITHIN,
            "the frozen domain monitored by the new depotd",
            |e| e["actual"] == true,
        )
        .await;
    f.check(
        bad["code"] == 2001 && bad["valid"] == false,
        format!("the new depotd reports the frozen domain in trouble: {bad}"),
    );
    let t = timed_call(&ep, "Volume.getInfo", vol_ref(&s.sd_frozen, &img, &vol)).await;
    f.refused_naming_the_mount(&t, &[2001], &s.mount());

    frozen.thaw();
    s.wait_valid_again().await;
    let t = timed_call(&ep, "Volume.getInfo", vol_ref(&s.sd_frozen, &img, &vol)).await;
    if let Some(v) = f.succeeds(t, WAIT) {
        f.check(
            v["uuid"] == vol.as_str(),
            format!("the volume made before the freeze, after restart and thaw: {v}"),
        );
    }
    f.no_thread_in_the_storage("after the restart", watch.stop());
    f.finish();
}
