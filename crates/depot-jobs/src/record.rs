//! The persisted form of a job: `<state_dir>/jobs/<job_id>.json`.
//!
//! Every field is written, `null` included, so an administrator reading the
//! file sees the whole job. `format` lets a later depot change the layout and
//! still recognise (or refuse) old files.

use std::time::{SystemTime, UNIX_EPOCH};

use depot_api::error::WireError;
use depot_api::types::{JobId, JobInfo, JobStatus, JobType};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The only layout this depot writes and reads.
pub(crate) const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct JobRecord {
    pub format: u32,
    pub id: JobId,
    /// [`crate::JobKind::name`].
    pub kind: String,
    pub job_type: JobType,
    pub spec: Value,
    pub status: JobStatus,
    #[serde(default)]
    pub progress: Option<u8>,
    pub description: String,
    #[serde(default)]
    pub error: Option<WireError>,
    #[serde(default)]
    pub result: Option<Value>,
    /// The runner's resume state, from [`crate::JobContext::checkpoint`].
    #[serde(default)]
    pub checkpoint: Option<Value>,
    /// Wall-clock seconds since the epoch.
    pub created_at: f64,
    /// Wall-clock seconds since the epoch; wall clock rather than a monotonic
    /// instant so the auto-delete countdown survives a restart.
    #[serde(default)]
    pub ended_at: Option<f64>,
}

impl JobRecord {
    pub fn new(id: JobId, kind: &str, job_type: JobType, spec: Value, description: String) -> Self {
        JobRecord {
            format: FORMAT,
            id,
            kind: kind.to_string(),
            job_type,
            spec,
            status: JobStatus::Pending,
            progress: None,
            description,
            error: None,
            result: None,
            checkpoint: None,
            created_at: now(),
            ended_at: None,
        }
    }

    pub fn info(&self) -> JobInfo {
        JobInfo {
            id: self.id,
            status: self.status,
            progress: self.progress,
            description: self.description.clone(),
            job_type: self.job_type,
            error: self.error.clone(),
            result: self.result.clone(),
        }
    }

    /// Parses a job file, refusing other formats and files whose content
    /// does not match their name (a copied or renamed file).
    pub fn decode(bytes: &[u8], expected: &str) -> Result<JobRecord, String> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        match value.get("format").and_then(Value::as_u64) {
            Some(f) if f == u64::from(FORMAT) => {}
            Some(f) => return Err(format!("unsupported format {f}")),
            None => return Err("no format field".to_string()),
        }
        let record: JobRecord =
            serde_json::from_value(value).map_err(|e| format!("bad job record: {e}"))?;
        if record.id.to_string() != expected.to_ascii_lowercase() {
            return Err(format!("file holds job {}", record.id));
        }
        if record.progress.is_some_and(|p| p > 100) {
            return Err("progress above 100".to_string());
        }
        Ok(record)
    }

    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        Ok(bytes)
    }
}

/// Wall-clock seconds since the epoch (0 if the clock is before 1970).
pub(crate) fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checks() {
        let id: JobId = "5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8a".parse().unwrap();
        let rec = JobRecord::new(
            id,
            "sleep",
            JobType::Storage,
            serde_json::json!({"duration_ms": 5}),
            "sleep 5 ms".into(),
        );
        let bytes = rec.encode().unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"format\": 1"));
        assert!(text.contains("\"checkpoint\": null"));
        let back = JobRecord::decode(&bytes, &id.to_string()).unwrap();
        // serde_json may change a float's last bit; a timestamp needs no more.
        assert!((back.created_at - rec.created_at).abs() < 1e-6);
        assert_eq!(
            JobRecord {
                created_at: rec.created_at,
                ..back
            },
            rec
        );
        let other = "00000000-0000-0000-0000-000000000001";
        assert!(JobRecord::decode(&bytes, other).is_err());
        let v2 = text.replace("\"format\": 1", "\"format\": 2");
        assert!(JobRecord::decode(v2.as_bytes(), &id.to_string())
            .unwrap_err()
            .contains("unsupported format 2"));
        assert!(JobRecord::decode(b"{", &id.to_string()).is_err());
    }
}
