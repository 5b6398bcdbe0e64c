//! Maps each typed [`Call`] to the service that does the work, and the
//! service's typed answer back to the wire value. Nothing else happens here:
//! no validation beyond what the wire types enforce, no storage logic.

use depot_api::types::{Capabilities, JobType};
use depot_api::{params, ApiError, Call, Code};
use depot_jobs::{JobManager, SLEEP_KIND};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

use crate::rpc::CallCtx;

#[derive(Clone)]
pub struct Router {
    jobs: JobManager,
}

impl Router {
    pub fn new(jobs: JobManager) -> Self {
        Router { jobs }
    }

    pub async fn dispatch(&self, call: Call, ctx: &CallCtx) -> Result<Value, ApiError> {
        match call {
            Call::HostPing2(_) => Ok(Value::Bool(true)),
            Call::HostGetCapabilities(_) => to_wire(&capabilities()),
            Call::HostGetJobs(p) => self.get_jobs(p),
            Call::HostAbortJob(p) => self.jobs.abort(p.job_id).await.map(|()| Value::Bool(true)),
            Call::HostDeleteJob(p) => self.jobs.delete(p.job_id).await.map(|()| Value::Bool(true)),
            Call::HostSubscribeEvents(p) => match &ctx.subscriber {
                Some(sub) => {
                    sub.subscribe(p.prefixes.unwrap_or_default());
                    Ok(Value::Bool(true))
                }
                None => Err(ApiError::new(
                    Code::TransportNotSupported,
                    "events need a WebSocket connection",
                )),
            },
            Call::HostSleepJob(p) => self.sleep_job(p).await,
        }
    }

    fn get_jobs(&self, p: params::HostGetJobs) -> Result<Value, ApiError> {
        let ids = p.job_ids.unwrap_or_default();
        let jobs: Map<String, Value> = self
            .jobs
            .list(p.job_type, &ids)
            .into_iter()
            .map(|info| Ok((info.id.to_string(), to_wire(&info)?)))
            .collect::<Result<_, ApiError>>()?;
        Ok(Value::Object(jobs))
    }

    async fn sleep_job(&self, p: params::HostSleepJob) -> Result<Value, ApiError> {
        if !(p.duration.is_finite() && (0.0..=86400.0).contains(&p.duration)) {
            return Err(ApiError::new(
                Code::InvalidParams,
                format!(
                    "parameter 'duration': {} is not within 0..=86400 seconds",
                    p.duration
                ),
            ));
        }
        let spec = json!({
            "duration_ms": (p.duration * 1000.0).round() as u64,
            "resumable": p.resumable.unwrap_or(false),
            "fail_code": p.fail_code,
        });
        self.jobs
            .start(p.job_id, SLEEP_KIND, JobType::Storage, spec)
            .await
            .map(|()| Value::Bool(true))
    }
}

fn to_wire<T: Serialize>(v: &T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::new(Code::InternalError, e.to_string()))
}

/// The storage part of VDSM's capabilities. Domain support grows with later
/// issues; this lists what the build can do today.
pub fn capabilities() -> Capabilities {
    Capabilities {
        version_name: "depot".into(),
        software_version: env!("CARGO_PKG_VERSION").into(),
        software_revision: option_env!("DEPOT_GIT_REVISION").unwrap_or("0").into(),
        domain_versions: vec![5],
        storage_domain_types: vec![],
        supported_block_size: BTreeMap::new(),
        additional_features: vec!["host_jobs".into(), "job_abort".into()],
    }
}
