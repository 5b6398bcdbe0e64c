//! VDSM's task verbs for the SPM verbs that answer with a task id.
//!
//! depot finishes Volume.create/delete/extendSize and Image.delete before it
//! answers, so their task ids are born finished: they are recorded here
//! (in memory; an id unknown after a restart is 401, as for VDSM after the
//! task was cleared). Image.move's id is a host job's, and its status is
//! the job's, mapped to VDSM's task states.

use std::collections::HashMap;
use std::sync::Mutex;

use depot_api::types::{JobId, JobStatus, Uuid};
use depot_api::{ApiError, Code};
use depot_jobs::JobManager;
use serde_json::{json, Map, Value};

/// Finished tasks kept at most; the oldest go first (the engine clears
/// tasks it has seen, so this only bounds a client that never does).
const MAX_FINISHED: usize = 10_000;

#[derive(Default)]
pub struct Tasks {
    finished: Mutex<(HashMap<Uuid, u64>, u64)>,
}

impl Tasks {
    /// A new task id for work that has already succeeded.
    pub fn finished(&self) -> Value {
        let id = Uuid::new_v4();
        let mut guard = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        let (map, seq) = &mut *guard;
        *seq += 1;
        map.insert(id, *seq);
        if map.len() > MAX_FINISHED {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| **s).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        Value::String(id.to_string())
    }

    fn is_finished(&self, id: Uuid) -> bool {
        self.finished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .contains_key(&id)
    }

    pub fn status(&self, jobs: &JobManager, id: Uuid) -> Result<Value, ApiError> {
        if self.is_finished(id) {
            return Ok(success(id));
        }
        let job = jobs
            .list(None, &[JobId(id)])
            .into_iter()
            .next()
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
        Ok(
            json!({"taskID": id.to_string(), "taskState": state, "taskResult": result,
            "code": code, "message": message}),
        )
    }

    pub fn clear(&self, jobs: &JobManager, id: Uuid) -> Result<(), ApiError> {
        if self
            .finished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .remove(&id)
            .is_some()
        {
            return Ok(());
        }
        match jobs.list(None, &[JobId(id)]).into_iter().next() {
            None => Err(ApiError::new(Code::UnknownTask, format!("'{id}'"))),
            Some(j) if !j.status.is_final() => Err(ApiError::new(
                Code::TaskNotFinished,
                format!("'{id}' is {}", j.status),
            )),
            Some(_) => Ok(()),
        }
    }

    pub fn all(&self, jobs: &JobManager) -> Value {
        let ids: Vec<Uuid> = self
            .finished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .keys()
            .copied()
            .collect();
        let mut out = Map::new();
        for id in ids {
            out.insert(id.to_string(), success(id));
        }
        for job in jobs.list(None, &[]) {
            if let Ok(v) = self.status(jobs, job.id.0) {
                out.insert(job.id.to_string(), v);
            }
        }
        Value::Object(out)
    }
}

fn success(id: Uuid) -> Value {
    json!({"taskID": id.to_string(), "taskState": "finished", "taskResult": "success",
        "code": 0, "message": "1 jobs completed successfully"})
}
