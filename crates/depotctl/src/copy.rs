//! `depotctl copy` (SDM.copy_data) and `depotctl move` (Image.move): start
//! the job, then watch it with the jobs table until it ends.

use depot_api::types::{JobStatus, Uuid};
use depot_client::{ClientError, Endpoint, Options};
use serde_json::{json, Value};
use std::sync::Mutex;
use std::time::Duration;

use crate::args::VolPath;
use crate::jobs;
use crate::rpc::Rpc;
use crate::Failure;

/// Seconds between listings while watching (events update sooner).
const INTERVAL: Duration = Duration::from_secs(2);

/// The job being watched, for the Ctrl-C message.
static WATCHING: Mutex<Option<String>> = Mutex::new(None);

/// What to print when Ctrl-C stops the watch (None when not watching a job).
pub fn interrupted_message() -> Option<String> {
    let id = WATCHING.lock().ok()?.clone()?;
    Some(format!(
        "depotctl: stopped watching; job {id} continues \
         (abort it with: depotctl call Host.abortJob job_id={id})"
    ))
}

/// A copy endpoint: `{endpoint_type: "div", sd_id, img_id, vol_id, generation?}`.
pub fn endpoint(v: &VolPath, generation: Option<u64>) -> Value {
    let mut e = json!({
        "endpoint_type": "div",
        "sd_id": v.sd.to_string(),
        "img_id": v.img.to_string(),
        "vol_id": v.vol.to_string(),
    });
    if let Some(g) = generation {
        e["generation"] = json!(g);
    }
    e
}

/// `depotctl copy SRC DST [--generation N] [--no-wait]`.
#[allow(clippy::too_many_arguments)]
pub async fn copy(
    ep: &Endpoint,
    opts: Options,
    flow_id: Option<&str>,
    src: &VolPath,
    dst: &VolPath,
    generation: Option<u64>,
    no_wait: bool,
    tty: bool,
) -> Result<(), Failure> {
    let job_id = Uuid::new_v4().to_string();
    let params = json!({
        "job_id": job_id,
        "source": endpoint(src, None),
        "destination": endpoint(dst, generation),
    });
    let client = Rpc::connect(ep, opts, flow_id).await?;
    client.call("SDM.copy_data", params).await?;
    drop(client);
    finish(ep, opts, flow_id, &job_id, no_wait, tty).await
}

/// `depotctl move --domain SD --to SD --image IMG [...]`.
#[allow(clippy::too_many_arguments)]
pub async fn move_image(
    ep: &Endpoint,
    opts: Options,
    flow_id: Option<&str>,
    domain: Uuid,
    to: Uuid,
    image: Uuid,
    copy: bool,
    post_zero: bool,
    force: bool,
    no_wait: bool,
    tty: bool,
) -> Result<(), Failure> {
    let params = move_params(domain, to, image, copy, post_zero, force);
    let client = Rpc::connect(ep, opts, flow_id).await?;
    let v = client.call("Image.move", params).await?;
    drop(client);
    let job_id = match v.as_str().map(|s| s.parse::<Uuid>()) {
        Some(Ok(id)) => id.to_string(),
        _ => {
            return Err(
                ClientError::Protocol(format!("Image.move returned {v}, not a job id")).into(),
            )
        }
    };
    finish(ep, opts, flow_id, &job_id, no_wait, tty).await
}

pub fn move_params(
    domain: Uuid,
    to: Uuid,
    image: Uuid,
    copy: bool,
    post_zero: bool,
    force: bool,
) -> Value {
    json!({
        "imageID": image.to_string(),
        "storagedomainID": domain.to_string(),
        "dstSdUUID": to.to_string(),
        "operation": if copy { "COPY" } else { "MOVE" },
        "postZero": post_zero,
        "force": force,
    })
}

/// Prints the job id (--no-wait), or watches the job until it ends and
/// prints its result, or fails with its error.
async fn finish(
    ep: &Endpoint,
    opts: Options,
    flow_id: Option<&str>,
    job_id: &str,
    no_wait: bool,
    tty: bool,
) -> Result<(), Failure> {
    if no_wait {
        println!("{job_id}");
        return Ok(());
    }
    if let Ok(mut w) = WATCHING.lock() {
        *w = Some(job_id.to_string());
    }
    let board = jobs::watch_jobs(ep, opts, flow_id, INTERVAL, tty, Some(job_id)).await;
    if let Ok(mut w) = WATCHING.lock() {
        *w = None;
    }
    let board = board?;
    let Some(job) = board.jobs.get(job_id) else {
        return Err(Failure::Failed(format!("job {job_id} not found")));
    };
    match (job.status, &job.error) {
        (JobStatus::Done, _) => {
            print!(
                "{}",
                render_result(job.result.as_ref().unwrap_or(&Value::Null))
            );
            Ok(())
        }
        (_, Some(e)) => Err(ClientError::Rpc(e.clone()).into()),
        (status, None) => Err(Failure::Failed(format!("job {job_id} ended {status}"))),
    }
}

/// One volume's outcome: `checksum: blake2b:<hex>`, `method: ...`,
/// `generation: N`, each on its line (what the result has of them).
fn render_outcome(v: &Value, indent: &str) -> String {
    let mut out = String::new();
    let c = &v["checksum"];
    if let Some(sum) = c["checksum"].as_str() {
        match c["algorithm"].as_str() {
            Some(a) => out.push_str(&format!("{indent}checksum: {a}:{sum}\n")),
            None => out.push_str(&format!("{indent}checksum: {sum}\n")),
        }
    }
    if let Some(m) = v["method"].as_str() {
        out.push_str(&format!("{indent}method: {m}\n"));
    }
    if let Some(g) = v["generation"].as_u64() {
        out.push_str(&format!("{indent}generation: {g}\n"));
    }
    out
}

/// A done job's result: a copy's outcome, or one per volume of a moved
/// image (base first); anything else as JSON.
pub fn render_result(v: &Value) -> String {
    if let Some(vols) = v["volumes"].as_array() {
        let mut out = String::new();
        for (i, o) in vols.iter().enumerate() {
            out.push_str(&format!("volume {}:\n", i + 1));
            out.push_str(&render_outcome(o, "  "));
        }
        return out;
    }
    let out = render_outcome(v, "");
    if out.is_empty() {
        format!("{v}\n")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SD: &str = "75f8a1bb-4504-4314-91ca-d9365a30692b";
    const IMG: &str = "c6f9f2b3-0d3c-4a8e-9a57-6f3c1b2a9e10";
    const VOL: &str = "0f6e1d2c-3b4a-4958-8776-655443322110";

    #[test]
    fn endpoints_and_move_params() {
        let v = VolPath {
            sd: SD.parse().unwrap(),
            img: IMG.parse().unwrap(),
            vol: VOL.parse().unwrap(),
        };
        assert_eq!(
            endpoint(&v, None),
            json!({"endpoint_type": "div", "sd_id": SD, "img_id": IMG, "vol_id": VOL})
        );
        assert_eq!(endpoint(&v, Some(0))["generation"], json!(0));
        let id = |s: &str| s.parse::<Uuid>().unwrap();
        let p = move_params(id(SD), id(VOL), id(IMG), false, true, false);
        assert_eq!(
            p,
            json!({"imageID": IMG, "storagedomainID": SD, "dstSdUUID": VOL,
                   "operation": "MOVE", "postZero": true, "force": false})
        );
        assert_eq!(
            move_params(id(SD), id(VOL), id(IMG), true, false, true)["operation"],
            "COPY"
        );
    }

    #[test]
    fn results() {
        let one = json!({"method": "sparse", "verified": true, "generation": 1,
            "checksum": {"algorithm": "blake2b", "block_size": 4194304, "checksum": "ab12"}});
        assert_eq!(
            render_result(&one),
            "checksum: blake2b:ab12\nmethod: sparse\ngeneration: 1\n"
        );
        let moved =
            json!({"volumes": [one, {"method": "full", "generation": 0, "checksum": null}]});
        assert_eq!(
            render_result(&moved),
            "volume 1:\n  checksum: blake2b:ab12\n  method: sparse\n  generation: 1\n\
             volume 2:\n  method: full\n  generation: 0\n"
        );
        assert_eq!(render_result(&json!(true)), "true\n");
    }
}
