//! VDSM's SPM tasks that depotd persists, in the state directory:
//!
//! - the tasks of the OVF_STORE streams: `downloadImageFromStream` (the
//!   engine's PUT) and `uploadImageToStream` (its GET), whose ids the
//!   streams answer in `Task-Id`;
//! - the tasks of the SPM verbs depot finishes before it answers
//!   (`createVolume`, `deleteVolume`, ...: [`SpmVerb`]), recorded born
//!   finished before the verb answers ([`TaskStore::record_finished`]), with
//!   the pool they belong to.
//!
//! Each task is a file `<state_dir>/tasks/<id>.json` (`"format": 2`,
//! docs/formats.md; format 1, the streams' layout before the SPM verbs'
//! tasks were kept here, is read too), replaced atomically on each change,
//! so a restart does not lose one: a task that was running when the daemon
//! stopped is reported finished with `cleanFailure` and 9001
//! (JobInterrupted). A file that cannot be read, or written by a newer
//! depot, is moved aside as `<id>.json.corrupt`. At most
//! `tasks.max_finished` finished tasks are kept; beyond that the oldest go.
//!
//! Everything here that touches a file blocks: call it from a blocking
//! thread.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use depot_api::results::TaskStatus;
use depot_api::storage::{ImgUuid, SdUuid, SpUuid, VolUuid};
use depot_api::types::Uuid;
use depot_api::{ApiError, Code};
use serde::{Deserialize, Serialize};

/// The layout this depot writes (here and on the master domain:
/// master_tasks.rs).
pub(crate) const FORMAT: u32 = 2;
/// The oldest layout it still reads: 1 had only the streams' tasks, each
/// with its volume (a subset of 2).
const OLDEST_FORMAT: u32 = 1;

/// VDSM's message of a task that succeeded.
pub const SUCCESS_MESSAGE: &str = "1 jobs completed successfully";

/// The directory under the state directory.
pub const TASKS_DIR: &str = "tasks";

/// VDSM's verb names (the engine's `AsyncTaskType`), as `Task.getInfo`
/// reports them and the task files hold them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verb {
    /// The engine's PUT: an upload into an OVF_STORE.
    #[serde(rename = "downloadImageFromStream")]
    Upload,
    /// The engine's GET: a read of an OVF_STORE.
    #[serde(rename = "uploadImageToStream")]
    Download,
    #[serde(rename = "createVolume")]
    CreateVolume,
    #[serde(rename = "deleteVolume")]
    DeleteVolume,
    #[serde(rename = "extendVolumeSize")]
    ExtendVolumeSize,
    #[serde(rename = "deleteImage")]
    DeleteImage,
    #[serde(rename = "create_lease")]
    CreateLease,
    #[serde(rename = "delete_lease")]
    DeleteLease,
    #[serde(rename = "rebuild_leases")]
    RebuildLeases,
    #[serde(rename = "switchMaster")]
    SwitchMaster,
}

impl Verb {
    pub fn name(self) -> &'static str {
        match self {
            Verb::Upload => "downloadImageFromStream",
            Verb::Download => "uploadImageToStream",
            Verb::CreateVolume => "createVolume",
            Verb::DeleteVolume => "deleteVolume",
            Verb::ExtendVolumeSize => "extendVolumeSize",
            Verb::DeleteImage => "deleteImage",
            Verb::CreateLease => "create_lease",
            Verb::DeleteLease => "delete_lease",
            Verb::RebuildLeases => "rebuild_leases",
            Verb::SwitchMaster => "switchMaster",
        }
    }
}

/// The streams' verbs ([`TaskStore::begin`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamVerb {
    Upload,
    Download,
}

impl From<StreamVerb> for Verb {
    fn from(v: StreamVerb) -> Verb {
        match v {
            StreamVerb::Upload => Verb::Upload,
            StreamVerb::Download => Verb::Download,
        }
    }
}

/// The SPM verbs depot finishes before it answers
/// ([`TaskStore::record_finished`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpmVerb {
    CreateVolume,
    DeleteVolume,
    ExtendVolumeSize,
    DeleteImage,
    CreateLease,
    DeleteLease,
    RebuildLeases,
    SwitchMaster,
}

impl From<SpmVerb> for Verb {
    fn from(v: SpmVerb) -> Verb {
        match v {
            SpmVerb::CreateVolume => Verb::CreateVolume,
            SpmVerb::DeleteVolume => Verb::DeleteVolume,
            SpmVerb::ExtendVolumeSize => Verb::ExtendVolumeSize,
            SpmVerb::DeleteImage => Verb::DeleteImage,
            SpmVerb::CreateLease => Verb::CreateLease,
            SpmVerb::DeleteLease => Verb::DeleteLease,
            SpmVerb::RebuildLeases => Verb::RebuildLeases,
            SpmVerb::SwitchMaster => Verb::SwitchMaster,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Running,
    Finished,
}

/// One task as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub format: u32,
    pub id: Uuid,
    pub verb: Verb,
    /// The pool whose SPM ran it; `None` for a domain in no pool (depot's
    /// single-host use) and for the streams (any host serves them).
    #[serde(default)]
    pub pool: Option<SpUuid>,
    pub state: State,
    /// Whether the stream did its work; meaningful once finished.
    pub success: bool,
    /// 0, or the error code of a failure.
    pub code: i32,
    pub message: String,
    /// The volume of a stream; `None` for the SPM verbs' tasks.
    #[serde(default)]
    pub sd_id: Option<SdUuid>,
    #[serde(default)]
    pub img_id: Option<ImgUuid>,
    #[serde(default)]
    pub vol_id: Option<VolUuid>,
    /// Wall-clock seconds since the epoch.
    pub created_at: f64,
    #[serde(default)]
    pub ended_at: Option<f64>,
}

impl TaskRecord {
    /// VDSM's `Task.getStatus`: `taskState` running|finished and
    /// `taskResult` ''|success|cleanFailure. A failed stream leaves nothing
    /// half-done (an upload is swapped in whole or not at all), so its
    /// failure is clean.
    pub fn status(&self) -> TaskStatus {
        let (state, result) = match (self.state, self.success) {
            (State::Running, _) => ("running", ""),
            (State::Finished, true) => ("finished", "success"),
            (State::Finished, false) => ("finished", "cleanFailure"),
        };
        TaskStatus {
            taskID: self.id.to_string(),
            taskState: state.into(),
            taskResult: result.into(),
            code: self.code.into(),
            message: self.message.clone(),
        }
    }

    pub(crate) fn decode(bytes: &[u8], expected: &str) -> Result<TaskRecord, DecodeError> {
        let bad = |why: String| DecodeError { newer: false, why };
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        match value.get("format").and_then(serde_json::Value::as_u64) {
            Some(f) if (u64::from(OLDEST_FORMAT)..=u64::from(FORMAT)).contains(&f) => {}
            Some(f) if f > u64::from(FORMAT) => {
                return Err(DecodeError {
                    newer: true,
                    why: format!("unsupported format {f} (newer than this depotd's {FORMAT})"),
                })
            }
            Some(f) => return Err(bad(format!("unsupported format {f}"))),
            None => return Err(bad("no format field".to_string())),
        }
        let record: TaskRecord =
            serde_json::from_value(value).map_err(|e| bad(format!("bad task record: {e}")))?;
        if record.id.to_string() != expected.to_ascii_lowercase() {
            return Err(bad(format!("file holds task {}", record.id)));
        }
        Ok(record)
    }

    /// Always in this depot's format (a format 1 record rewritten becomes
    /// a format 2 one: the same fields and `pool`).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let record = TaskRecord {
            format: FORMAT,
            ..self.clone()
        };
        let mut bytes = serde_json::to_vec_pretty(&record).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

/// Why a record file cannot be read: `newer` when a newer depot wrote it
/// (its format is above [`FORMAT`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{why}")]
pub struct DecodeError {
    pub newer: bool,
    pub why: String,
}

/// A task recorded by [`TaskStore::record_finished`], and the finished
/// tasks the bound pushed out for it (their files removed here; their
/// copies on a master domain are the caller's).
#[derive(Debug)]
pub struct Recorded {
    pub record: TaskRecord,
    pub pruned: Vec<TaskRecord>,
}

/// What [`TaskStore::open`] found, for the start-up log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub loaded: usize,
    /// Running when the daemon stopped: now failed with 9001.
    pub interrupted: usize,
    /// Unreadable files moved aside.
    pub corrupt: Vec<PathBuf>,
    /// Finished tasks over the bound, removed.
    pub pruned: usize,
}

impl std::fmt::Display for Recovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} loaded, {} interrupted, {} corrupt, {} pruned",
            self.loaded,
            self.interrupted,
            self.corrupt.len(),
            self.pruned
        )
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot open the task directory {path}: {source}")]
pub struct OpenError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The persisted stream tasks. See the [module docs](self).
#[derive(Debug)]
pub struct TaskStore {
    dir: PathBuf,
    max_finished: usize,
    tasks: Mutex<HashMap<Uuid, TaskRecord>>,
}

impl TaskStore {
    /// Creates `<state_dir>/tasks` (0700) and loads it. Blocks.
    pub fn open(
        state_dir: &Path,
        max_finished: usize,
    ) -> Result<(Arc<TaskStore>, Recovered), OpenError> {
        let dir = state_dir.join(TASKS_DIR);
        let err = |source| OpenError {
            path: dir.clone(),
            source,
        };
        {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(err)?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(err)?;
        }
        let store = TaskStore {
            dir: dir.clone(),
            max_finished: max_finished.max(1),
            tasks: Mutex::new(HashMap::new()),
        };
        let mut rec = Recovered::default();
        for entry in fs::read_dir(&dir).map_err(err)? {
            let entry = entry.map_err(err)?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with('.') && name.contains(".tmp-") {
                // An interrupted write; the task file itself is intact.
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(stem) = name.strip_suffix(".json") else {
                continue; // *.corrupt, and anything an admin left here
            };
            match read_record(&path, stem) {
                Ok(mut record) => {
                    if record.state == State::Running {
                        let e = ApiError::new(
                            Code::JobInterrupted,
                            format!(
                                "the {} task was running when depotd stopped; its answer never \
                                 went out (check the store with StorageDomain.getOvfStores)",
                                record.verb.name()
                            ),
                        );
                        record.state = State::Finished;
                        record.success = false;
                        record.code = e.code.number();
                        record.message = e.message();
                        record.ended_at = Some(now());
                        if let Err(e) = store.write(&record) {
                            tracing::warn!(task = %record.id, error = %e, "cannot record an interrupted task");
                        }
                        rec.interrupted += 1;
                    }
                    rec.loaded += 1;
                    store.lock().insert(record.id, record);
                }
                Err(why) => {
                    let aside = aside_path(&path);
                    tracing::warn!(path = %path.display(), aside = %aside.display(), reason = %why,
                        "unreadable task file, moving it aside");
                    match fs::rename(&path, &aside) {
                        Ok(()) => rec.corrupt.push(aside),
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "cannot move task file aside")
                        }
                    }
                }
            }
        }
        rec.pruned = store.prune();
        Ok((Arc::new(store), rec))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, TaskRecord>> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn path(&self, id: Uuid) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn write(&self, record: &TaskRecord) -> Result<(), depot_os::fsutil::FsError> {
        depot_os::fsutil::write_atomic(&self.path(record.id), &record.encode(), 0o600)
    }

    /// Records a new running task, durably, before its work starts. The
    /// returned guard finishes it; dropped unfinished, it records a
    /// failure. Blocks.
    pub fn begin(
        self: &Arc<Self>,
        id: Uuid,
        verb: StreamVerb,
        sd: SdUuid,
        img: ImgUuid,
        vol: VolUuid,
    ) -> Result<TaskGuard, ApiError> {
        let verb = Verb::from(verb);
        let record = TaskRecord {
            format: FORMAT,
            id,
            verb,
            pool: None,
            state: State::Running,
            success: false,
            code: 0,
            message: "running".into(),
            sd_id: Some(sd),
            img_id: Some(img),
            vol_id: Some(vol),
            created_at: now(),
            ended_at: None,
        };
        self.write(&record).map_err(|e| {
            ApiError::new(
                Code::GeneralException,
                format!("cannot record the {} task: {e}", verb.name()),
            )
        })?;
        self.lock().insert(id, record);
        Ok(TaskGuard {
            store: Arc::clone(self),
            id,
            done: false,
        })
    }

    /// Records the task of an SPM verb whose work has succeeded, born
    /// finished, and returns its new id. The file replaces its temporary
    /// file before this returns, without an fsync (docs/storage.md, "SPM
    /// tasks"): a crash of depotd right after the answer keeps it (the page
    /// cache has it), a crash of the host may lose it within the file
    /// system's commit interval (the task is then 401, as a cleared one);
    /// an fsync would cost a journal commit per Volume.create.
    ///
    /// A record that cannot be written is kept in memory (logged): the work
    /// is done, and answering an error would make the engine roll back
    /// work that succeeded; such an id is lost by a restart (401), as in
    /// VDSM when persisting a task fails. Blocks.
    pub fn record_finished(&self, verb: SpmVerb, pool: Option<SpUuid>) -> Recorded {
        let id = Uuid::new_v4();
        let at = now();
        let verb = Verb::from(verb);
        let record = TaskRecord {
            format: FORMAT,
            id,
            verb,
            pool,
            state: State::Finished,
            success: true,
            code: 0,
            message: SUCCESS_MESSAGE.into(),
            sd_id: None,
            img_id: None,
            vol_id: None,
            created_at: at,
            ended_at: Some(at),
        };
        let written =
            depot_os::fsutil::replace_unsynced(&self.path(record.id), &record.encode(), 0o600);
        if let Err(e) = written {
            tracing::warn!(task = %id, verb = verb.name(), error = %e,
                "cannot record a finished task; it is kept in memory only");
        }
        let gone = {
            let mut tasks = self.lock();
            tasks.insert(id, record.clone());
            self.over_bound(&mut tasks)
        };
        self.remove_files(&gone);
        Recorded {
            record,
            pruned: gone,
        }
    }

    /// Takes in a task another host recorded (a master domain's, at
    /// spmStart: master_tasks.rs), unless this host knows its id
    /// already: written here (with an fsync: spmStart is rare), kept as
    /// given. `None` when it was known; else the finished tasks the bound
    /// pushed out for it (as [`Recorded::pruned`]). Blocks.
    pub fn adopt(&self, record: TaskRecord) -> Option<Vec<TaskRecord>> {
        if self.lock().contains_key(&record.id) {
            return None;
        }
        if let Err(e) = self.write(&record) {
            tracing::warn!(task = %record.id, error = %e,
                "cannot record a task loaded from the master domain; it is kept in memory only");
        }
        let gone = {
            let mut tasks = self.lock();
            if tasks.contains_key(&record.id) {
                return None;
            }
            tasks.insert(record.id, record);
            self.over_bound(&mut tasks)
        };
        self.remove_files(&gone);
        Some(gone)
    }

    fn finish(&self, id: Uuid, outcome: Result<(), &ApiError>) {
        // The state change and the bound are one step for readers: nobody
        // sees more finished tasks than the bound.
        let (record, gone) = {
            let mut tasks = self.lock();
            let Some(r) = tasks.get_mut(&id) else {
                return;
            };
            r.state = State::Finished;
            r.ended_at = Some(now());
            match outcome {
                Ok(()) => {
                    r.success = true;
                    r.code = 0;
                    r.message = SUCCESS_MESSAGE.into();
                }
                Err(e) => {
                    r.success = false;
                    r.code = e.code.number();
                    r.message = e.message();
                }
            }
            let record = r.clone();
            (record, self.over_bound(&mut tasks))
        };
        // In memory it is finished either way; on disk, a failed write
        // leaves it running, which a restart reports as interrupted.
        if let Err(e) = self.write(&record) {
            tracing::warn!(task = %id, error = %e, "cannot record a finished task");
        }
        self.remove_files(&gone);
    }

    /// Removes the oldest finished tasks over the bound; how many went.
    /// (At start-up: a master domain's copies of SPM tasks pruned here are
    /// removed when this host next loads that master, at spmStart.)
    fn prune(&self) -> usize {
        let gone = self.over_bound(&mut self.lock());
        self.remove_files(&gone);
        gone.len()
    }

    /// Takes the oldest finished tasks over the bound out of `tasks`.
    fn over_bound(&self, tasks: &mut HashMap<Uuid, TaskRecord>) -> Vec<TaskRecord> {
        let mut finished: Vec<(f64, Uuid)> = tasks
            .values()
            .filter(|r| r.state == State::Finished)
            .map(|r| (r.ended_at.unwrap_or(r.created_at), r.id))
            .collect();
        if finished.len() <= self.max_finished {
            return Vec::new();
        }
        finished.sort_by(|a, b| a.0.total_cmp(&b.0));
        let over = finished.len() - self.max_finished;
        finished
            .into_iter()
            .take(over)
            .filter_map(|(_, id)| tasks.remove(&id))
            .collect()
    }

    fn remove_files(&self, gone: &[TaskRecord]) {
        for r in gone {
            self.remove_file(r.id);
        }
        if !gone.is_empty() {
            tracing::info!(
                removed = gone.len(),
                max = self.max_finished,
                "oldest finished tasks removed"
            );
        }
    }

    fn remove_file(&self, id: Uuid) {
        match fs::remove_file(self.path(id)) {
            Ok(()) => {
                if let Err(e) = depot_os::fsutil::fsync_dir(&self.dir) {
                    tracing::warn!(task = %id, error = %e, "cannot sync the task directory");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(task = %id, error = %e, "cannot remove a task file"),
        }
    }

    pub fn get(&self, id: Uuid) -> Option<TaskRecord> {
        self.lock().get(&id).cloned()
    }

    pub fn all(&self) -> Vec<TaskRecord> {
        self.lock().values().cloned().collect()
    }

    /// `Task.clear`: forgets a finished task (401 unknown, 403 running);
    /// the record it was (its pool says whether a master domain has a
    /// copy). Blocks.
    pub fn clear(&self, id: Uuid) -> Result<TaskRecord, ApiError> {
        let record = {
            let mut tasks = self.lock();
            match tasks.get(&id) {
                None => return Err(ApiError::new(Code::UnknownTask, format!("'{id}'"))),
                Some(r) if r.state == State::Running => {
                    return Err(ApiError::new(
                        Code::TaskNotFinished,
                        format!("'{id}' is running"),
                    ))
                }
                Some(_) => tasks.remove(&id),
            }
        };
        self.remove_file(id);
        record.ok_or_else(|| ApiError::new(Code::UnknownTask, format!("'{id}'")))
    }
}

/// A running task; [`TaskGuard::finish`] ends it. Dropped unfinished (the
/// work panicked, or its request went away before it started), the task
/// ends as a failure rather than staying "running" forever.
#[derive(Debug)]
pub struct TaskGuard {
    store: Arc<TaskStore>,
    id: Uuid,
    done: bool,
}

impl TaskGuard {
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Records the outcome. Blocks.
    pub fn finish(mut self, outcome: Result<(), &ApiError>) {
        self.done = true;
        self.store.finish(self.id, outcome);
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if !self.done {
            let e = ApiError::new(
                Code::GeneralException,
                "the task ended without an outcome (its request went away)",
            );
            self.store.finish(self.id, Err(&e));
        }
    }
}

fn read_record(path: &Path, stem: &str) -> Result<TaskRecord, String> {
    let meta = fs::symlink_metadata(path).map_err(|e| format!("cannot stat: {e}"))?;
    if !meta.file_type().is_file() {
        return Err("not a regular file".to_string());
    }
    let bytes = fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    TaskRecord::decode(&bytes, stem).map_err(|e| e.why)
}

/// `<name>.corrupt`, or `<name>.corrupt.<n>`: earlier evidence is kept.
fn aside_path(path: &Path) -> PathBuf {
    let base = format!("{}.corrupt", path.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 1;
    while candidate.symlink_metadata().is_ok() {
        candidate = PathBuf::from(format!("{base}.{n}"));
        n += 1;
    }
    candidate
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (SdUuid, ImgUuid, VolUuid) {
        (
            SdUuid(Uuid::new_v4()),
            ImgUuid(Uuid::new_v4()),
            VolUuid(Uuid::new_v4()),
        )
    }

    #[test]
    fn record_round_trip_and_checks() {
        let (sd, img, vol) = ids();
        let r = TaskRecord {
            format: FORMAT,
            id: Uuid::new_v4(),
            verb: Verb::Upload,
            pool: None,
            state: State::Finished,
            success: false,
            code: 9005,
            message: "too large".into(),
            sd_id: Some(sd),
            img_id: Some(img),
            vol_id: Some(vol),
            created_at: 1.5,
            ended_at: Some(2.5),
        };
        let bytes = r.encode();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"format\": 2"), "{text}");
        assert!(
            text.contains("\"verb\": \"downloadImageFromStream\""),
            "{text}"
        );
        assert_eq!(TaskRecord::decode(&bytes, &r.id.to_string()).unwrap(), r);
        assert!(TaskRecord::decode(&bytes, &Uuid::new_v4().to_string()).is_err());
        let v3 = text.replace("\"format\": 2", "\"format\": 3");
        assert!(TaskRecord::decode(v3.as_bytes(), &r.id.to_string())
            .unwrap_err()
            .why
            .contains("unsupported format 3 (newer than this depotd's 2)"));
        let v0 = text.replace("\"format\": 2", "\"format\": 0");
        assert!(TaskRecord::decode(v0.as_bytes(), &r.id.to_string())
            .unwrap_err()
            .why
            .contains("unsupported format 0"));
        let s = r.status();
        assert_eq!(s.taskState, "finished");
        assert_eq!(s.taskResult, "cleanFailure");
        assert_eq!(s.code, 9005);
    }

    #[test]
    fn running_at_restart_is_interrupted_and_corrupt_goes_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (store, rec) = TaskStore::open(dir.path(), 10).unwrap();
        assert_eq!(rec, Recovered::default());
        let (sd, img, vol) = ids();
        let running = store
            .begin(Uuid::new_v4(), StreamVerb::Upload, sd, img, vol)
            .unwrap();
        let done = store
            .begin(Uuid::new_v4(), StreamVerb::Download, sd, img, vol)
            .unwrap();
        let (running_id, done_id) = (running.id(), done.id());
        done.finish(Ok(()));
        // A crash: the guard never runs.
        std::mem::forget(running);
        let tasks = dir.path().join(TASKS_DIR);
        fs::write(tasks.join(format!("{}.json", Uuid::new_v4())), b"{").unwrap();
        fs::write(tasks.join(".x.json.tmp-1"), b"half").unwrap();
        drop(store);

        let (store, rec) = TaskStore::open(dir.path(), 10).unwrap();
        assert_eq!((rec.loaded, rec.interrupted, rec.corrupt.len()), (2, 1, 1));
        let r = store.get(running_id).unwrap();
        assert_eq!((r.state, r.success, r.code), (State::Finished, false, 9001));
        assert!(store.get(done_id).unwrap().success);
        assert!(!tasks.join(".x.json.tmp-1").exists());
        // The interrupted state is on disk too.
        let (store, rec) = TaskStore::open(dir.path(), 10).unwrap();
        assert_eq!(rec.interrupted, 0);
        assert_eq!(store.get(running_id).unwrap().code, 9001);
    }

    #[test]
    fn bound_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = TaskStore::open(dir.path(), 2).unwrap();
        let (sd, img, vol) = ids();
        let running = store
            .begin(Uuid::new_v4(), StreamVerb::Upload, sd, img, vol)
            .unwrap();
        let mut finished = Vec::new();
        for _ in 0..3 {
            let t = store
                .begin(Uuid::new_v4(), StreamVerb::Download, sd, img, vol)
                .unwrap();
            finished.push(t.id());
            t.finish(Ok(()));
        }
        // The oldest finished one went, file and all; the running one stays.
        assert!(store.get(finished[0]).is_none());
        let tasks = dir.path().join(TASKS_DIR);
        assert!(!tasks.join(format!("{}.json", finished[0])).exists());
        assert!(store.get(finished[2]).is_some());
        assert_eq!(
            store.clear(running.id()).unwrap_err().code,
            Code::TaskNotFinished
        );
        store.clear(finished[2]).unwrap();
        assert!(!tasks.join(format!("{}.json", finished[2])).exists());
        assert_eq!(
            store.clear(finished[2]).unwrap_err().code,
            Code::UnknownTask
        );
        // Dropped unfinished: a failure, not a task running forever.
        let id = running.id();
        drop(running);
        let r = store.get(id).unwrap();
        assert_eq!((r.state, r.success, r.code), (State::Finished, false, 100));
    }

    /// A format 1 file (a stream's task as depot wrote it before the SPM
    /// verbs' tasks were kept here) is read as it was; rewritten, it is
    /// format 2.
    #[test]
    fn format_1_is_read_and_rewritten_as_2() {
        let dir = tempfile::tempdir().unwrap();
        let tasks = dir.path().join(TASKS_DIR);
        fs::create_dir_all(&tasks).unwrap();
        let (sd, img, vol) = ids();
        let (done, running) = (Uuid::new_v4(), Uuid::new_v4());
        for (id, state) in [(done, "finished"), (running, "running")] {
            let v1 = format!(
                r#"{{"format": 1, "id": "{id}", "verb": "uploadImageToStream",
                "state": "{state}", "success": true, "code": 0, "message": "ok",
                "sd_id": "{}", "img_id": "{}", "vol_id": "{}",
                "created_at": 1.0, "ended_at": null}}"#,
                sd.0, img.0, vol.0
            );
            fs::write(tasks.join(format!("{id}.json")), v1).unwrap();
        }
        let (store, rec) = TaskStore::open(dir.path(), 10).unwrap();
        assert_eq!((rec.loaded, rec.interrupted, rec.corrupt.len()), (2, 1, 0));
        let r = store.get(done).unwrap();
        assert_eq!((r.verb, r.pool, r.sd_id), (Verb::Download, None, Some(sd)));
        assert_eq!(r.status().taskResult, "success");
        // The interrupted one was rewritten, in format 2.
        let text = fs::read_to_string(tasks.join(format!("{running}.json"))).unwrap();
        assert!(text.contains("\"format\": 2"), "{text}");
        assert!(text.contains("\"pool\": null"), "{text}");
        let untouched = fs::read_to_string(tasks.join(format!("{done}.json"))).unwrap();
        assert!(untouched.contains("\"format\": 1"), "{untouched}");
    }

    /// The SPM verbs' tasks: on disk when `record_finished` returns, with
    /// their pool; one bound over them and the streams' tasks; cleared for
    /// good; a newer format's file is moved aside and the rest loads.
    #[test]
    fn spm_tasks_are_persisted_bounded_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let tasks = dir.path().join(TASKS_DIR);
        let (store, _) = TaskStore::open(dir.path(), 3).unwrap();
        let sp = SpUuid(Uuid::new_v4());
        let (sd, img, vol) = ids();
        let stream = store
            .begin(Uuid::new_v4(), StreamVerb::Upload, sd, img, vol)
            .unwrap();
        let stream_id = stream.id();
        stream.finish(Ok(()));
        let a = store
            .record_finished(SpmVerb::CreateVolume, Some(sp))
            .record
            .id;
        let b = store.record_finished(SpmVerb::CreateLease, None).record.id;
        let text = fs::read_to_string(tasks.join(format!("{a}.json"))).unwrap();
        assert!(text.contains("\"verb\": \"createVolume\""), "{text}");
        assert!(text.contains(&format!("\"pool\": \"{}\"", sp.0)), "{text}");
        // The fourth finished task pushes the oldest (the stream's) out.
        let c = store.record_finished(SpmVerb::DeleteVolume, Some(sp));
        assert_eq!(
            c.pruned.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![stream_id]
        );
        let c = c.record.id;
        assert!(store.get(stream_id).is_none());
        assert!(!tasks.join(format!("{stream_id}.json")).exists());
        store.clear(b).unwrap();
        assert!(!tasks.join(format!("{b}.json")).exists());
        // A file a newer depot wrote.
        let newer = Uuid::new_v4();
        let v3 = text
            .replace("\"format\": 2", "\"format\": 3")
            .replace(&a.to_string(), &newer.to_string());
        fs::write(tasks.join(format!("{newer}.json")), v3).unwrap();
        drop(store);

        let (store, rec) = TaskStore::open(dir.path(), 3).unwrap();
        assert_eq!((rec.loaded, rec.interrupted, rec.corrupt.len()), (2, 0, 1));
        assert!(tasks.join(format!("{newer}.json.corrupt")).exists());
        let r = store.get(a).unwrap();
        assert_eq!(
            (r.verb, r.pool, r.state),
            (Verb::CreateVolume, Some(sp), State::Finished)
        );
        assert_eq!(r.status().taskResult, "success");
        assert_eq!(store.get(c).unwrap().verb, Verb::DeleteVolume);
        assert!(store.get(b).is_none());
    }
}
