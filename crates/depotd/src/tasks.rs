//! VDSM's task verbs (`Task.getStatus`, `Task.getInfo`, `Task.clear`,
//! `Host.getAllTasksStatuses`, `Host.getAllTasksInfo`) over three kinds of
//! task id:
//!
//! - The SPM verbs that depot finishes before it answers
//!   (Volume.create/delete/extendSize, Image.delete, Lease.create/delete/
//!   rebuild_leases, StoragePool.switchMaster): their task ids are born
//!   finished and persisted, with their pool, before the verb answers
//!   ([`crate::task_store`]), so a restart or a crash keeps them until
//!   `Task.clear`; a pool's are written to its master domain too, where a
//!   new SPM host loads them at spmStart ([`crate::master_tasks`]).
//! - Image.move and StoragePool.spmStart: the id is a host job's, and its
//!   status is the job's (depot-jobs persists the job and resumes or fails
//!   it at a restart), mapped to VDSM's task states.
//! - The OVF_STORE streams (the `Task-Id` of a PUT or GET): persisted in
//!   the same store.
//!
//! At most `tasks.max_finished` finished tasks are kept in the store; the
//! oldest go first (the engine clears the tasks it has seen, so this only
//! bounds a client that never does).
//!
//! Which tasks `Host.getAllTasks*` list is VDSM's rule (docs/storage.md,
//! "SPM tasks"): a pool's SPM tasks only on its SPM, 654 on a host whose
//! connected pool has another SPM; `Task.getStatus` and the other verbs
//! that name a task answer for any task this host knows.

use std::collections::BTreeMap;
use std::sync::Arc;

use depot_api::results::{TaskInfo, TaskStatus};
use depot_api::storage::SpUuid;
use depot_api::types::{JobId, JobStatus, Uuid};
use depot_api::{ApiError, Code};
use depot_jobs::JobManager;
use depot_storage::Storage;

use crate::task_store::{SpmVerb, TaskStore};

/// VDSM's verb names of the tasks that are host jobs.
pub mod verb {
    pub const MOVE_IMAGE: &str = "moveImage";
    pub const SPM_START: &str = "spmStart";
}

/// The pools whose tasks `Host.getAllTasks*` may list on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Connected pools whose SPM this host is.
    pub spm_of: Vec<SpUuid>,
    /// Connected pools whose SPM it is not.
    pub not_spm_of: Vec<SpUuid>,
}

pub struct Tasks {
    store: Arc<TaskStore>,
}

impl Tasks {
    pub fn new(store: Arc<TaskStore>) -> Self {
        Tasks { store }
    }

    /// The persisted tasks (the OVF_STORE streams write theirs here).
    pub fn streams(&self) -> &Arc<TaskStore> {
        &self.store
    }

    /// Records the task of an SPM verb of `pool` whose work has already
    /// succeeded, on this host and on the pool's master domain (a failure
    /// there is logged: crate::master_tasks); its new id. After a
    /// switchMaster, every task of the pool kept here is written to the
    /// new master. Blocks: call it from a blocking thread.
    pub fn finished(&self, storage: &Storage, verb: SpmVerb, pool: Option<SpUuid>) -> Uuid {
        let done = self.store.record_finished(verb, pool);
        match pool {
            Some(sp) if verb == SpmVerb::SwitchMaster => {
                crate::master_tasks::write_all(storage, sp, &self.store)
            }
            Some(_) => crate::master_tasks::write(storage, &done.record),
            None => {}
        }
        crate::master_tasks::remove(storage, &done.pruned);
        done.record.id
    }

    /// spmStart's step once this host holds the lease of `sp`: the master
    /// domain's tasks it does not know are taken in. Blocks.
    pub fn load_master(&self, storage: &Storage, sp: SpUuid) -> crate::master_tasks::Loaded {
        crate::master_tasks::load(storage, sp, &self.store)
    }

    pub fn status(&self, jobs: &JobManager, id: Uuid) -> Result<TaskStatus, ApiError> {
        if let Some(r) = self.store.get(id) {
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
                crate::task_store::SUCCESS_MESSAGE.to_string(),
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
        let verb = if let Some(r) = self.store.get(id) {
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

    /// Forgets a finished task: a stored task's file is removed (and its
    /// master domain's copy, on the SPM of its pool); a host
    /// job that is an SPM task (Image.move's, spmStart's) is deleted as
    /// `Host.deleteJob` does, so that it is 401 afterwards as a cleared
    /// VDSM task is. Another job's id (SDM.copy_data, ...: VDSM has no
    /// task for it) is left to `Host.deleteJob`.
    pub async fn clear(
        self: &Arc<Self>,
        storage: &Arc<Storage>,
        jobs: &JobManager,
        id: Uuid,
    ) -> Result<(), ApiError> {
        if self.store.get(id).is_some() {
            // The files' removal and their directories' fsyncs: off the
            // runtime.
            let (me, storage) = (Arc::clone(self), Arc::clone(storage));
            return tokio::task::spawn_blocking(move || {
                let record = me.store.clear(id)?;
                crate::master_tasks::remove(&storage, &[record]);
                Ok(())
            })
            .await
            .map_err(|e| ApiError::new(Code::InternalError, e.to_string()))?;
        }
        let unknown = || ApiError::new(Code::UnknownTask, format!("'{id}'"));
        let job = jobs.get(JobId(id)).ok_or_else(unknown)?;
        if !job.status.is_final() {
            return Err(ApiError::new(
                Code::TaskNotFinished,
                format!("'{id}' is {}", job.status),
            ));
        }
        let kind = jobs.kind_of(JobId(id)).unwrap_or_default();
        if !is_task_job(&kind) {
            return Ok(());
        }
        match jobs.delete(JobId(id)).await {
            // Deleted meanwhile (its auto-delete, a second clear).
            Err(e) if e.code == Code::NoSuchJob => Err(unknown()),
            other => other,
        }
    }

    /// Every task `Host.getAllTasks*` lists in `scope`, each as `f` renders
    /// it: the stored tasks of no pool or of a pool this host is the SPM
    /// of, and the Image.move jobs (VDSM's SPM tasks; other host jobs,
    /// spmStart's included, are not SPM tasks there). 654 when a pool is
    /// connected here and this host is not its SPM, as VDSM.
    fn each<T>(
        &self,
        jobs: &JobManager,
        scope: &Scope,
        f: impl Fn(&Self, Uuid) -> Result<T, ApiError>,
    ) -> Result<BTreeMap<String, T>, ApiError> {
        if scope.spm_of.is_empty() {
            if let Some(sp) = scope.not_spm_of.first() {
                return Err(ApiError::new(
                    Code::SpmStatusError,
                    format!("this host is not the SPM of pool {sp}"),
                ));
            }
        }
        let mut ids: Vec<Uuid> = self
            .store
            .all()
            .iter()
            .filter(|r| r.pool.is_none_or(|sp| scope.spm_of.contains(&sp)))
            .map(|r| r.id)
            .collect();
        ids.extend(
            jobs.list(None, &[])
                .iter()
                .filter(|j| jobs.kind_of(j.id).as_deref() == Some(crate::storage_jobs::MOVE_IMAGE))
                .map(|j| j.id.0),
        );
        let mut out = BTreeMap::new();
        for id in ids {
            if let Ok(v) = f(self, id) {
                out.insert(id.to_string(), v);
            }
        }
        Ok(out)
    }

    pub fn all(
        &self,
        jobs: &JobManager,
        scope: &Scope,
    ) -> Result<BTreeMap<String, TaskStatus>, ApiError> {
        self.each(jobs, scope, |t, id| t.status(jobs, id))
    }

    /// VDSM's `Host.getAllTasksInfo`: `{taskID: {id, verb}}`.
    pub fn all_info(
        &self,
        jobs: &JobManager,
        scope: &Scope,
    ) -> Result<BTreeMap<String, TaskInfo>, ApiError> {
        self.each(jobs, scope, |t, id| t.info(jobs, id))
    }
}

/// Whether a host job of `kind` is one of VDSM's tasks (Image.move's and
/// spmStart's ids are task ids).
fn is_task_job(kind: &str) -> bool {
    kind == crate::storage_jobs::MOVE_IMAGE || kind == crate::storage_jobs::SPM_START
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
