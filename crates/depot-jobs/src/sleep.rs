//! The built-in `sleep` job: sleeps, reporting progress. It exercises the
//! job machinery (status, abort, resume, events) without touching storage;
//! the daemon's `Host.sleepJob` verb and its tests use it.

use std::time::Duration;

use depot_api::error::{ApiError, Code};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::time::Instant;
use tracing::warn;

use crate::context::JobContext;
use crate::kind::{JobKind, RunFuture};

/// The kind's persisted name.
pub const SLEEP_KIND: &str = "sleep";

/// Longest sleep accepted: one day, as `Host.sleepJob` documents.
pub const MAX_DURATION_MS: u64 = 86_400_000;

/// Longest uninterrupted sleep, so progress moves and polling runners (and
/// tests) see abort/stop within this.
const SLICE: Duration = Duration::from_millis(100);

/// How often a resumable sleep saves its elapsed time.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The job's spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepSpec {
    pub duration_ms: u64,
    /// Resume after a daemon restart instead of failing with 9001.
    #[serde(default)]
    pub resumable: bool,
    /// Fail with this error code at the end instead of succeeding.
    #[serde(default)]
    pub fail_code: Option<i64>,
}

impl SleepSpec {
    pub fn to_value(&self) -> Value {
        json!({
            "duration_ms": self.duration_ms,
            "resumable": self.resumable,
            "fail_code": self.fail_code,
        })
    }

    fn parse(spec: &Value) -> Result<SleepSpec, ApiError> {
        let s: SleepSpec = serde_json::from_value(spec.clone())
            .map_err(|e| ApiError::new(Code::InvalidParams, format!("sleep job spec: {e}")))?;
        if s.duration_ms > MAX_DURATION_MS {
            return Err(ApiError::new(
                Code::InvalidParams,
                format!(
                    "sleep job duration {} ms is above {MAX_DURATION_MS} ms",
                    s.duration_ms
                ),
            ));
        }
        Ok(s)
    }
}

/// The `sleep` kind. Abortable; resumable when the spec says so.
#[derive(Debug, Clone, Copy, Default)]
pub struct SleepJob;

impl JobKind for SleepJob {
    fn name(&self) -> &'static str {
        SLEEP_KIND
    }

    fn abortable(&self) -> bool {
        true
    }

    fn resumable(&self, spec: &Value) -> bool {
        SleepSpec::parse(spec).is_ok_and(|s| s.resumable)
    }

    fn describe(&self, spec: &Value) -> String {
        match SleepSpec::parse(spec) {
            Ok(s) => format!("sleep {} ms", s.duration_ms),
            Err(_) => "sleep (invalid spec)".to_string(),
        }
    }

    fn validate(&self, spec: &Value) -> Result<(), ApiError> {
        SleepSpec::parse(spec).map(|_| ())
    }

    fn run(&self, ctx: JobContext, spec: Value) -> RunFuture {
        Box::pin(async move {
            let spec = SleepSpec::parse(&spec)?;
            sleep(ctx, spec).await
        })
    }
}

async fn sleep(ctx: JobContext, spec: SleepSpec) -> Result<Option<Value>, ApiError> {
    let total = spec.duration_ms;
    // Time slept before a restart, as last checkpointed.
    let before = ctx
        .resume_state()
        .and_then(|v| v.get("elapsed_ms").and_then(Value::as_u64))
        .unwrap_or(0)
        .min(total);
    let started = Instant::now();
    let elapsed = || before.saturating_add(millis(started.elapsed()));
    let mut last_checkpoint = Instant::now();
    loop {
        let done = elapsed();
        // A zero-length sleep is complete at once.
        let percent = (done.min(total) * 100)
            .checked_div(total)
            .map_or(100, |p| u8::try_from(p).unwrap_or(100));
        ctx.set_progress(percent);
        if done >= total {
            break;
        }
        if ctx.is_aborted() {
            return Err(ApiError::new(
                Code::TaskAborted,
                format!("job {}", ctx.job_id()),
            ));
        }
        if ctx.is_stopping() {
            if spec.resumable {
                save(&ctx, elapsed()).await;
            }
            return Err(ctx.stopped_error());
        }
        if spec.resumable && last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            save(&ctx, done).await;
            last_checkpoint = Instant::now();
        }
        let slice = SLICE.min(Duration::from_millis(total - done));
        tokio::select! {
            _ = tokio::time::sleep(slice) => {}
            _ = ctx.aborted() => {}
            _ = ctx.stopping() => {}
        }
    }
    let slept = elapsed();
    match spec.fail_code {
        None => Ok(Some(json!({ "slept_ms": slept }))),
        Some(n) => {
            let code = i32::try_from(n)
                .ok()
                .and_then(Code::from_number)
                .unwrap_or(Code::GeneralException);
            Err(ApiError::new(
                code,
                format!("sleep job failed as requested (fail_code {n})"),
            ))
        }
    }
}

/// A failed checkpoint only costs resumability, so the sleep goes on.
async fn save(ctx: &JobContext, elapsed_ms: u64) {
    if let Err(e) = ctx.checkpoint(json!({ "elapsed_ms": elapsed_ms })).await {
        warn!(job_id = %ctx.job_id(), error = %e, "cannot checkpoint sleep job");
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_and_description() {
        let k = SleepJob;
        let spec = json!({"duration_ms": 250, "resumable": true});
        assert!(k.validate(&spec).is_ok());
        assert!(k.resumable(&spec));
        assert_eq!(k.describe(&spec), "sleep 250 ms");
        assert!(!k.resumable(&json!({"duration_ms": 1})));
        let bad = k.validate(&json!({"duration": 1})).unwrap_err();
        assert_eq!(bad.code, Code::InvalidParams);
        assert!(k
            .validate(&json!({"duration_ms": MAX_DURATION_MS + 1}))
            .is_err());
        let s = SleepSpec {
            duration_ms: 5,
            resumable: false,
            fail_code: Some(100),
        };
        assert_eq!(SleepSpec::parse(&s.to_value()).unwrap(), s);
    }
}
