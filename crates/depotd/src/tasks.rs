//! VDSM's task verbs (`Task.getStatus`, `Task.getInfo`, `Task.clear`,
//! `Host.getAllTasksStatuses`, `Host.getAllTasksInfo`) over three kinds of
//! task id:
//!
//! - The SPM verbs that depot finishes before it answers
//!   (Volume.create/delete/extendSize, Image.delete, Lease.create/delete/
//!   rebuild_leases): their task ids are
//!   born finished and live in memory (an id unknown after a restart is
//!   401, as for VDSM after the task was cleared).
//! - Image.move and StoragePool.spmStart: the id is a host job's, and its status is the job's,
//!   mapped to VDSM's task states.
//! - The OVF_STORE streams (the `Task-Id` of a PUT or GET): persisted in
//!   the state directory ([`crate::task_store`]), so they survive a restart.
//!
//! At most `tasks.max_finished` finished tasks of each stored kind are
//! kept; the oldest go first (the engine clears the tasks it has seen, so
//! this only bounds a client that never does).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use depot_api::results::{TaskInfo, TaskStatus};
use depot_api::types::{JobId, JobStatus, Uuid};
use depot_api::{ApiError, Code};
use depot_jobs::JobManager;
use std::collections::BTreeMap;

use crate::task_store::TaskStore;

/// VDSM's verb names of the SPM tasks depot answers born finished.
pub mod verb {
    pub const CREATE_VOLUME: &str = "createVolume";
    pub const DELETE_VOLUME: &str = "deleteVolume";
    pub const EXTEND_VOLUME_SIZE: &str = "extendVolumeSize";
    pub const DELETE_IMAGE: &str = "deleteImage";
    pub const MOVE_IMAGE: &str = "moveImage";
    pub const SPM_START: &str = "spmStart";
    pub const CREATE_LEASE: &str = "create_lease";
    pub const DELETE_LEASE: &str = "delete_lease";
    pub const REBUILD_LEASES: &str = "rebuild_leases";
    pub const SWITCH_MASTER: &str = "switchMaster";
}

/// Born-finished tasks: id -> (insertion serial, verb).
#[derive(Default)]
struct Finished {
    tasks: HashMap<Uuid, (u64, &'static str)>,
    serial: u64,
}

pub struct Tasks {
    finished: Mutex<Finished>,
    streams: Arc<TaskStore>,
    max_finished: usize,
}

impl Tasks {
    pub fn new(streams: Arc<TaskStore>, max_finished: usize) -> Self {
        Tasks {
            finished: Mutex::default(),
            streams,
            max_finished: max_finished.max(1),
        }
    }

    /// The persisted tasks of the OVF_STORE streams.
    pub fn streams(&self) -> &Arc<TaskStore> {
        &self.streams
    }

    fn finished_lock(&self) -> std::sync::MutexGuard<'_, Finished> {
        self.finished.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new task id for work `verb` that has already succeeded.
    pub fn finished(&self, verb: &'static str) -> Uuid {
        let id = Uuid::new_v4();
        let mut f = self.finished_lock();
        f.serial += 1;
        let serial = f.serial;
        f.tasks.insert(id, (serial, verb));
        if f.tasks.len() > self.max_finished {
            if let Some(oldest) = f.tasks.iter().min_by_key(|(_, v)| v.0).map(|(k, _)| *k) {
                f.tasks.remove(&oldest);
            }
        }
        id
    }

    fn finished_verb(&self, id: Uuid) -> Option<&'static str> {
        self.finished_lock().tasks.get(&id).map(|v| v.1)
    }

    pub fn status(&self, jobs: &JobManager, id: Uuid) -> Result<TaskStatus, ApiError> {
        if self.finished_verb(id).is_some() {
            return Ok(success(id));
        }
        if let Some(r) = self.streams.get(id) {
            return Ok(r.status());
        }
        let job = jobs
            .get(JobId(id))
            .ok_or_else(|| ApiError::new(Code::UnknownTask, format!("'{id}'")))?;
        let (state, result, code, message) = match job.status {
            JobStatus::Pending | JobStatus::Running => ("running", "", 0, "running".to_string()),
            JobStatus::Done => (
                "finished",
                "success",
                0,
                "1 jobs completed successfully".to_string(),
            ),
            JobStatus::Failed | JobStatus::Aborted => {
                let e = job.error.unwrap_or(depot_api::WireError {
                    code: Code::GeneralException.number(),
                    message: "failed".into(),
                });
                ("finished", "cleanFailure", e.code, e.message)
            }
        };
        Ok(TaskStatus {
            taskID: id.to_string(),
            taskState: state.into(),
            taskResult: result.into(),
            code: code.into(),
            message,
        })
    }

    /// VDSM's `Task.getInfo`: `{id, verb}`.
    pub fn info(&self, jobs: &JobManager, id: Uuid) -> Result<TaskInfo, ApiError> {
        let verb = if let Some(v) = self.finished_verb(id) {
            v.to_string()
        } else if let Some(r) = self.streams.get(id) {
            r.verb.name().to_string()
        } else {
            let kind = jobs
                .kind_of(JobId(id))
                .ok_or_else(|| ApiError::new(Code::UnknownTask, format!("'{id}'")))?;
            job_verb(&kind)
        };
        Ok(TaskInfo {
            id: id.to_string(),
            verb,
        })
    }

    /// Forgets a finished task. A stream task's file is removed, so this
    /// blocks: call it from a blocking thread.
    pub fn clear(&self, jobs: &JobManager, id: Uuid) -> Result<(), ApiError> {
        if self.finished_lock().tasks.remove(&id).is_some() {
            return Ok(());
        }
        if self.streams.get(id).is_some() {
            return self.streams.clear(id);
        }
        match jobs.get(JobId(id)) {
            None => Err(ApiError::new(Code::UnknownTask, format!("'{id}'"))),
            Some(j) if !j.status.is_final() => Err(ApiError::new(
                Code::TaskNotFinished,
                format!("'{id}' is {}", j.status),
            )),
            Some(_) => Ok(()),
        }
    }

    /// Every task id this host knows, each as `f` renders it.
    fn each<T>(
        &self,
        jobs: &JobManager,
        f: impl Fn(&Self, Uuid) -> Result<T, ApiError>,
    ) -> BTreeMap<String, T> {
        let mut ids: Vec<Uuid> = self.finished_lock().tasks.keys().copied().collect();
        ids.extend(self.streams.all().iter().map(|r| r.id));
        ids.extend(jobs.list(None, &[]).iter().map(|j| j.id.0));
        let mut out = BTreeMap::new();
        for id in ids {
            if let Ok(v) = f(self, id) {
                out.insert(id.to_string(), v);
            }
        }
        out
    }

    pub fn all(&self, jobs: &JobManager) -> BTreeMap<String, TaskStatus> {
        self.each(jobs, |t, id| t.status(jobs, id))
    }

    /// VDSM's `Host.getAllTasksInfo`: `{taskID: {id, verb}}`.
    pub fn all_info(&self, jobs: &JobManager) -> BTreeMap<String, TaskInfo> {
        self.each(jobs, |t, id| t.info(jobs, id))
    }
}

/// The verb a host job answers to `Task.getInfo`: Image.move's is VDSM's
/// `moveImage`; other jobs (which VDSM does not list as tasks) give their
/// kind.
fn job_verb(kind: &str) -> String {
    match kind {
        crate::storage_jobs::MOVE_IMAGE => verb::MOVE_IMAGE.to_string(),
        crate::storage_jobs::SPM_START => verb::SPM_START.to_string(),
        other => other.to_string(),
    }
}

fn success(id: Uuid) -> TaskStatus {
    TaskStatus {
        taskID: id.to_string(),
        taskState: "finished".into(),
        taskResult: "success".into(),
        code: 0,
        message: "1 jobs completed successfully".into(),
    }
}
