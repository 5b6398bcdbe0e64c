//! A job's metadata in a lease's value block (sanlock's LVB), as VDSM
//! keeps it for external leases of jobs (`sd.create_lease(metadata)`,
//! `fence_lease`, `clusterlock.SANLock.set_lvb`): a JSON object of
//! VDSM's `JobMetadata` (`type` "JOB", `job_id`, `job_status`,
//! `generation`, `created`, `modified`, `host_hardware_id`), NUL-padded
//! to [`LVB_SIZE`] bytes. An LVB of NULs (never written) holds none.

use depot_api::types::Uuid;
use serde_json::{Map, Value};

/// VDSM's LVB payload size (`clusterlock.LVB_SIZE`).
pub const LVB_SIZE: usize = 512;
/// VDSM's `MAX_GENERATION`: a generation is 0..=999 and wraps.
pub const MAX_GENERATION: u64 = 999;

/// VDSM's job statuses (`JobStatus`).
pub const JOB_STATUSES: [&str; 4] = ["PENDING", "FAILED", "SUCCEEDED", "FENCED"];

/// Checks `md` as VDSM's `validators.JobMetadata` does: `type` "JOB",
/// `job_id` a UUID, `job_status` one of [`JOB_STATUSES`], `generation`
/// 0..=999. Other keys are allowed (and kept where the metadata is
/// kept). The error says which key.
pub fn check(md: &Map<String, Value>) -> Result<(), String> {
    match md.get("type").and_then(Value::as_str) {
        Some("JOB") => {}
        other => return Err(format!("type {other:?}: must be \"JOB\"")),
    }
    let id = md.get("job_id").and_then(Value::as_str);
    if id.and_then(|s| s.parse::<Uuid>().ok()).is_none() {
        return Err(format!("job_id {id:?}: not a UUID"));
    }
    let status = md.get("job_status").and_then(Value::as_str);
    if !status.is_some_and(|s| JOB_STATUSES.contains(&s)) {
        return Err(format!(
            "job_status {status:?}: one of {}",
            JOB_STATUSES.join(", ")
        ));
    }
    match md.get("generation").and_then(Value::as_u64) {
        Some(g) if g <= MAX_GENERATION => Ok(()),
        _ => Err(format!(
            "generation {:?}: a whole number 0..={MAX_GENERATION}",
            md.get("generation")
        )),
    }
}

/// The next generation after `g` (VDSM's `next_generation`: wraps to 0).
pub fn next_generation(g: u64) -> u64 {
    (g + 1) % (MAX_GENERATION + 1)
}

/// The LVB bytes of `md`: its JSON, NUL-padded to [`LVB_SIZE`]; `None`
/// when it does not fit.
pub fn to_lvb(md: &Map<String, Value>) -> Option<Vec<u8>> {
    let mut data = serde_json::to_vec(md).ok()?;
    if data.len() > LVB_SIZE {
        return None;
    }
    data.resize(LVB_SIZE, 0);
    Some(data)
}

/// The metadata in an LVB: an empty map for one never written (VDSM
/// answers `{}` then), an error when it is not a JSON object.
pub fn from_lvb(data: &[u8]) -> Result<Map<String, Value>, String> {
    let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    if end == 0 {
        return Ok(Map::new());
    }
    match serde_json::from_slice(&data[..end]) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(format!("not a JSON object: {other}")),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn md(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn vdsms_job_metadata_is_checked() {
        let good = json!({"type": "JOB", "job_id": "5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8a",
            "job_status": "PENDING", "generation": 0, "other": 1});
        check(&md(good.clone())).unwrap();
        for (k, v) in [
            ("type", json!("VM")),
            ("job_id", json!("x")),
            ("job_status", json!("RUNNING")),
            ("generation", json!(1000)),
            ("generation", json!(-1)),
            ("generation", json!("1")),
        ] {
            let mut m = md(good.clone());
            m.insert(k.into(), v.clone());
            let e = check(&m).unwrap_err();
            assert!(e.starts_with(k), "{k}={v}: {e}");
        }
        let mut m = md(good);
        m.remove("job_id");
        assert!(check(&m).is_err());
    }

    #[test]
    fn lvbs_round_trip_and_pad() {
        let m = md(json!({"type": "JOB", "generation": 3}));
        let b = to_lvb(&m).unwrap();
        assert_eq!(b.len(), LVB_SIZE);
        assert_eq!(from_lvb(&b).unwrap(), m);
        assert_eq!(from_lvb(&[0; LVB_SIZE]).unwrap(), Map::new());
        assert!(from_lvb(b"[1]").is_err());
        assert!(from_lvb(b"{").is_err());
        let big = md(json!({"x": "y".repeat(LVB_SIZE)}));
        assert!(to_lvb(&big).is_none());
        assert_eq!(next_generation(998), 999);
        assert_eq!(next_generation(999), 0);
    }
}
