//! End-to-end tests of the job machinery with the built-in sleep kind, real
//! temp directories and real time.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use depot_api::error::Code;
use depot_api::types::{JobId, JobInfo, JobStatus, JobType};
use depot_jobs::{JobKind, JobManager, JobsConfig, Recovery, SleepJob, SLEEP_KIND};
use serde_json::{json, Value};

fn kinds() -> Vec<Arc<dyn JobKind>> {
    vec![Arc::new(SleepJob)]
}

fn cfg() -> JobsConfig {
    JobsConfig::default()
}

async fn open(dir: &Path, config: JobsConfig) -> (JobManager, Recovery) {
    JobManager::open(dir, config, kinds()).await.unwrap()
}

fn spec(ms: u64) -> Value {
    json!({"duration_ms": ms})
}

async fn start(m: &JobManager, ms: u64) -> JobId {
    let id = JobId::new_v4();
    m.start(id, SLEEP_KIND, JobType::Storage, spec(ms))
        .await
        .unwrap();
    id
}

trait NewId {
    fn new_v4() -> Self;
}
impl NewId for JobId {
    fn new_v4() -> Self {
        JobId(depot_api::types::Uuid::new_v4())
    }
}

fn info(m: &JobManager, id: JobId) -> JobInfo {
    m.get(id).expect("job listed")
}

/// Polls until `pred` holds for the job, panicking after `limit`.
async fn wait_for(
    m: &JobManager,
    id: JobId,
    limit: Duration,
    pred: impl Fn(&JobInfo) -> bool,
) -> JobInfo {
    let t = Instant::now();
    loop {
        if let Some(i) = m.get(id) {
            if pred(&i) {
                return i;
            }
        }
        assert!(
            t.elapsed() < limit,
            "job {id} not as expected: {:?}",
            m.get(id)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_status(m: &JobManager, id: JobId, status: JobStatus, limit: Duration) -> JobInfo {
    wait_for(m, id, limit, |i| i.status == status).await
}

fn job_file(dir: &Path, id: JobId) -> std::path::PathBuf {
    dir.join("jobs").join(format!("{id}.json"))
}

fn read_file(dir: &Path, id: JobId) -> Value {
    serde_json::from_slice(&std::fs::read(job_file(dir, id)).unwrap()).unwrap()
}

const SEC: Duration = Duration::from_secs(1);
/// How long a test waits for what must happen (one-sided: a loaded machine
/// only makes things later).
const LIMIT: Duration = Duration::from_secs(30);

/// The job's `ended_at` (unix seconds) from its file.
fn ended_at(dir: &Path, id: JobId) -> f64 {
    read_file(dir, id)["ended_at"]
        .as_f64()
        .expect("ended_at in the job file")
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn completes_with_result_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, rec) = open(tmp.path(), cfg()).await;
    assert_eq!(rec.loaded, 0);
    let id = start(&m, 150).await;
    let i = wait_status(&m, id, JobStatus::Done, 3 * SEC).await;
    assert_eq!(i.progress, Some(100));
    assert_eq!(i.description, "sleep 150 ms");
    let slept = i.result.unwrap()["slept_ms"].as_u64().unwrap();
    assert!(slept >= 150, "slept {slept}");
    // Written before it was published: a client that saw `done` never
    // finds the job running again after a crash.
    let f = read_file(tmp.path(), id);
    assert_eq!(f["format"], 1);
    assert_eq!(f["status"], "done");
    assert_eq!(f["kind"], "sleep");
    assert!(f["ended_at"].as_f64().is_some());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(tmp.path().join("jobs"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[tokio::test]
async fn progress_increases() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, _) = open(tmp.path(), cfg()).await;
    // 1% per 100 ms: it cannot end while the test looks.
    let id = start(&m, 10_000).await;
    let a = wait_for(&m, id, LIMIT, |i| i.progress.is_some_and(|p| p > 0)).await;
    let b = wait_for(&m, id, LIMIT, |i| i.progress > a.progress).await;
    assert_eq!(b.status, JobStatus::Running);
    assert!(b.progress < Some(100));
    m.abort(id).await.unwrap();
}

#[tokio::test]
async fn failing_job_reports_its_code() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, _) = open(tmp.path(), cfg()).await;
    let id = JobId::new_v4();
    let s = json!({"duration_ms": 10, "fail_code": 911});
    m.start(id, SLEEP_KIND, JobType::Storage, s).await.unwrap();
    let i = wait_status(&m, id, JobStatus::Failed, 2 * SEC).await;
    assert_eq!(i.error.unwrap().code, 911);
    let id2 = JobId::new_v4();
    let s = json!({"duration_ms": 10, "fail_code": 123456});
    m.start(id2, SLEEP_KIND, JobType::Storage, s).await.unwrap();
    let i = wait_status(&m, id2, JobStatus::Failed, 2 * SEC).await;
    assert_eq!(i.error.unwrap().code, 100);
}

#[tokio::test]
async fn start_is_idempotent_and_refuses_reuse() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, _) = open(tmp.path(), cfg()).await;
    let id = JobId::new_v4();
    m.start(id, SLEEP_KIND, JobType::Storage, spec(100))
        .await
        .unwrap();
    m.start(id, SLEEP_KIND, JobType::Storage, spec(100))
        .await
        .unwrap();
    assert_eq!(m.list(None, &[]).len(), 1);
    let e = m
        .start(id, SLEEP_KIND, JobType::Storage, spec(200))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::JobExists);
    assert_eq!(e.to_wire().code, 69);
    wait_status(&m, id, JobStatus::Done, 2 * SEC).await;
    // Still the same job after it ended: nothing new starts.
    m.start(id, SLEEP_KIND, JobType::Storage, spec(100))
        .await
        .unwrap();
    assert_eq!(info(&m, id).status, JobStatus::Done);
    let e = m
        .start(JobId::new_v4(), "nope", JobType::Storage, spec(1))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::InternalError);
    let e = m
        .start(JobId::new_v4(), SLEEP_KIND, JobType::Storage, json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::InvalidParams);
    assert_eq!(m.list(None, &[]).len(), 1);
}

#[tokio::test]
async fn list_filters() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, _) = open(tmp.path(), cfg()).await;
    let a = start(&m, 50).await;
    let b = start(&m, 50).await;
    assert_eq!(
        m.list(None, &[]).iter().map(|i| i.id).collect::<Vec<_>>(),
        vec![a, b]
    );
    assert_eq!(
        m.list(Some(JobType::Storage), &[b, JobId::new_v4()]).len(),
        1
    );
    assert!(m.list(Some(JobType::V2v), &[]).is_empty());
}

#[tokio::test]
async fn abort_running_job() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, _) = open(tmp.path(), cfg()).await;
    let id = start(&m, 10_000).await;
    wait_for(&m, id, LIMIT, |i| {
        i.status == JobStatus::Running && i.progress.is_some()
    })
    .await;
    let t = Instant::now();
    m.abort(id).await.unwrap();
    let i = wait_status(&m, id, JobStatus::Aborted, SEC).await;
    // The bound: a job stops within a second of its abort.
    assert!(t.elapsed() < SEC, "took {:?}", t.elapsed());
    assert_eq!(i.error.unwrap().code, 411);
    assert_eq!(read_file(tmp.path(), id)["status"], "aborted");
    // Finished: 84; unknown: 66.
    assert_eq!(m.abort(id).await.unwrap_err().code, Code::JobNotActive);
    assert_eq!(m.abort(id).await.unwrap_err().to_wire().code, 84);
    let e = m.abort(JobId::new_v4()).await.unwrap_err();
    assert_eq!(e.to_wire().code, 66);
}

#[tokio::test]
async fn abort_done_job_is_not_active() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, _) = open(tmp.path(), cfg()).await;
    let id = start(&m, 10).await;
    wait_status(&m, id, JobStatus::Done, 2 * SEC).await;
    assert_eq!(m.abort(id).await.unwrap_err().code, Code::JobNotActive);
}

#[tokio::test]
async fn delete_ended_job_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, _) = open(tmp.path(), cfg()).await;
    let id = start(&m, 60_000).await;
    let e = m.delete(id).await.unwrap_err();
    assert_eq!(e.code, Code::GeneralException);
    assert!(e.detail.contains("abort it first"), "{e}");
    m.abort(id).await.unwrap();
    wait_status(&m, id, JobStatus::Aborted, LIMIT).await;
    assert!(job_file(tmp.path(), id).exists());
    m.delete(id).await.unwrap();
    assert!(m.list(None, &[]).is_empty());
    assert!(!job_file(tmp.path(), id).exists());
    assert_eq!(m.delete(id).await.unwrap_err().code, Code::NoSuchJob);
    // The id is free again.
    m.start(id, SLEEP_KIND, JobType::Storage, spec(500))
        .await
        .unwrap();
    assert!(job_file(tmp.path(), id).exists());
}

#[tokio::test]
async fn autodelete_after_delay() {
    let tmp = tempfile::tempdir().unwrap();
    let config = JobsConfig {
        autodelete: Duration::from_millis(300),
        ..cfg()
    };
    let (m, _) = open(tmp.path(), config).await;
    let id = start(&m, 10).await;
    wait_status(&m, id, JobStatus::Done, 2 * SEC).await;
    let ended = ended_at(tmp.path(), id);
    let deadline = Instant::now() + LIMIT;
    while m.get(id).is_some() {
        assert!(Instant::now() < deadline, "not auto-deleted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Not before the delay, counted from the job's own end.
    let gone = unix_now();
    assert!(
        gone >= ended + 0.3,
        "deleted {:.3} s after it ended",
        gone - ended
    );
    assert!(!job_file(tmp.path(), id).exists());
}

/// The delay counts from the job's end (its `ended_at`), not from the start
/// of the manager that loads it.
#[tokio::test]
async fn autodelete_honours_ended_at_after_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let delay = Duration::from_secs(4);
    let config = JobsConfig {
        autodelete: delay,
        ..cfg()
    };
    let (m, _) = open(tmp.path(), config.clone()).await;
    let id = start(&m, 10).await;
    wait_status(&m, id, JobStatus::Done, 2 * SEC).await;
    let ended = ended_at(tmp.path(), id);
    m.shutdown(SEC).await;
    // Reopened at once: still listed, still done.
    let (m2, rec) = open(tmp.path(), config.clone()).await;
    assert_eq!(rec.loaded, 1);
    assert_eq!(info(&m2, id).status, JobStatus::Done);
    m2.shutdown(SEC).await;
    // Closed until its delay has passed; opened again, it goes at once,
    // not a whole delay after this open.
    while unix_now() < ended + delay.as_secs_f64() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (m3, _) = open(tmp.path(), config).await;
    let reopened = Instant::now();
    while m3.get(id).is_some() {
        assert!(
            reopened.elapsed() < delay - SEC,
            "not deleted {:?} after a reopen past its delay",
            reopened.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!job_file(tmp.path(), id).exists());
}

#[tokio::test]
async fn max_running_keeps_jobs_pending() {
    let tmp = tempfile::tempdir().unwrap();
    let config = JobsConfig {
        max_running: 1,
        ..cfg()
    };
    let (m, _) = open(tmp.path(), config).await;
    // `a` runs until it is aborted: `b` waits for its slot meanwhile.
    let a = start(&m, 60_000).await;
    let b = start(&m, 100).await;
    assert_eq!(info(&m, a).status, JobStatus::Running);
    assert_eq!(info(&m, b).status, JobStatus::Pending);
    wait_for(&m, a, LIMIT, |i| i.progress.is_some()).await;
    assert_eq!(info(&m, b).status, JobStatus::Pending);
    m.abort(a).await.unwrap();
    wait_status(&m, a, JobStatus::Aborted, LIMIT).await;
    wait_status(&m, b, JobStatus::Done, LIMIT).await;
    // A pending job aborts at once.
    let c = start(&m, 60_000).await;
    let d = start(&m, 100).await;
    assert_eq!(info(&m, d).status, JobStatus::Pending);
    m.abort(d).await.unwrap();
    let i = info(&m, d);
    assert_eq!(i.status, JobStatus::Aborted);
    assert_eq!(i.error.unwrap().code, 411);
    m.abort(c).await.unwrap();
    wait_status(&m, c, JobStatus::Aborted, LIMIT).await;
}

#[tokio::test]
async fn events_for_status_and_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, _) = open(tmp.path(), cfg()).await;
    let mut rx = m.subscribe();
    let id = start(&m, 1000).await;
    let mut statuses = Vec::new();
    let mut progress = Vec::new();
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ev.id, id);
        if statuses.last() != Some(&ev.status) {
            statuses.push(ev.status);
        } else {
            progress.push(ev.progress);
        }
        if ev.status.is_final() {
            break;
        }
    }
    assert_eq!(
        statuses,
        vec![JobStatus::Pending, JobStatus::Running, JobStatus::Done]
    );
    assert!(progress.len() >= 2, "{progress:?}");
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
}

#[tokio::test]
async fn restart_fails_non_resumable_job() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, _) = open(tmp.path(), cfg()).await;
    let id = start(&m, 60_000).await;
    wait_for(&m, id, LIMIT, |i| i.progress.is_some()).await;
    // The job stops when told: the shutdown does not wait out its grace.
    let grace = Duration::from_secs(60);
    let t = Instant::now();
    m.shutdown(grace).await;
    assert!(t.elapsed() < LIMIT, "shutdown took {:?}", t.elapsed());
    let e = m
        .start(JobId::new_v4(), SLEEP_KIND, JobType::Storage, spec(1))
        .await
        .unwrap_err();
    assert_eq!(e.to_wire().code, 9003);
    assert_eq!(read_file(tmp.path(), id)["status"], "running");

    let (m2, rec) = open(tmp.path(), cfg()).await;
    assert_eq!(rec.failed, vec![id]);
    assert!(rec.resumed.is_empty());
    let i = info(&m2, id);
    assert_eq!(i.status, JobStatus::Failed);
    assert_eq!(i.error.unwrap().code, 9001);
    let f = read_file(tmp.path(), id);
    assert_eq!(f["status"], "failed");
    assert_eq!(f["error"]["code"], 9001);
}

#[tokio::test]
async fn restart_resumes_resumable_job_from_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, _) = open(tmp.path(), cfg()).await;
    let id = JobId::new_v4();
    let total = 6000;
    let s = json!({"duration_ms": total, "resumable": true});
    m.start(id, SLEEP_KIND, JobType::Storage, s).await.unwrap();
    // A third of it slept, then the daemon stops.
    wait_for(&m, id, LIMIT, |i| i.progress >= Some(34)).await;
    m.shutdown(Duration::from_secs(2)).await;
    let f = read_file(tmp.path(), id);
    assert_eq!(f["status"], "running");
    let saved = f["checkpoint"]["elapsed_ms"].as_u64().unwrap();
    assert!((2000..total).contains(&saved), "checkpoint {saved}");

    let (m2, rec) = open(tmp.path(), cfg()).await;
    assert_eq!(rec.resumed, vec![id]);
    // It goes on from its checkpoint: the next one it writes (a second
    // later) counts on from the saved time. Started over, it would say
    // about 1000 ms.
    let deadline = Instant::now() + LIMIT;
    let next = loop {
        let f = read_file(tmp.path(), id);
        match f["checkpoint"]["elapsed_ms"].as_u64() {
            Some(ms) if ms != saved => break ms,
            _ => {}
        }
        assert!(Instant::now() < deadline, "no new checkpoint: {f}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        next > saved,
        "checkpoint {next} ms after resuming from {saved} ms"
    );
    let i = wait_status(&m2, id, JobStatus::Done, LIMIT).await;
    let slept = i.result.unwrap()["slept_ms"].as_u64().unwrap();
    assert!(slept >= total, "slept {slept}");
}

#[tokio::test]
async fn pending_job_at_shutdown_is_recovered() {
    let tmp = tempfile::tempdir().unwrap();
    let config = JobsConfig {
        max_running: 1,
        ..cfg()
    };
    let (m, _) = open(tmp.path(), config.clone()).await;
    let a = start(&m, 5000).await;
    let b = JobId::new_v4();
    let s = json!({"duration_ms": 50, "resumable": true});
    m.start(b, SLEEP_KIND, JobType::Storage, s).await.unwrap();
    // Not resumable, but it never ran: it starts after the restart.
    let c = JobId::new_v4();
    let s = json!({"duration_ms": 50, "resumable": false});
    m.start(c, SLEEP_KIND, JobType::Storage, s).await.unwrap();
    m.shutdown(SEC).await;
    assert_eq!(read_file(tmp.path(), b)["status"], "pending");
    assert_eq!(read_file(tmp.path(), c)["status"], "pending");
    let (m2, rec) = open(tmp.path(), config).await;
    assert_eq!(rec.failed, vec![a]);
    assert_eq!(rec.resumed, vec![b, c]);
    wait_status(&m2, b, JobStatus::Done, 2 * SEC).await;
    wait_status(&m2, c, JobStatus::Done, 2 * SEC).await;
}

#[tokio::test]
async fn corrupt_file_is_moved_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let jobs = tmp.path().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    let bad = JobId::new_v4();
    let bad_path = jobs.join(format!("{bad}.json"));
    std::fs::write(&bad_path, b"{\"format\": 1, \"id\": tru").unwrap();
    let stale_tmp = jobs.join(format!(".{bad}.json.tmp-1-1"));
    std::fs::write(&stale_tmp, b"partial").unwrap();
    let (m, rec) = open(tmp.path(), cfg()).await;
    assert_eq!(rec.loaded, 0);
    assert_eq!(rec.corrupt, vec![jobs.join(format!("{bad}.json.corrupt"))]);
    assert!(!bad_path.exists());
    assert!(!stale_tmp.exists());
    let good = start(&m, 10).await;
    wait_status(&m, good, JobStatus::Done, 2 * SEC).await;
    m.shutdown(SEC).await;

    // Corrupt again: earlier evidence is kept, the new file goes beside it;
    // the good job is loaded.
    std::fs::write(&bad_path, b"\x00\x01").unwrap();
    let (m2, rec) = open(tmp.path(), cfg()).await;
    assert_eq!(rec.loaded, 1);
    assert_eq!(
        rec.corrupt,
        vec![jobs.join(format!("{bad}.json.corrupt.1"))]
    );
    assert!(jobs.join(format!("{bad}.json.corrupt")).exists());
    assert!(!bad_path.exists());
    assert_eq!(m2.list(None, &[]).len(), 1);
    assert!(rec.to_string().contains("1 corrupt"));
}

#[tokio::test]
async fn max_active_refuses_one_more_and_keeps_restarts_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let config = JobsConfig {
        max_running: 1,
        max_active: 2,
        ..cfg()
    };
    let (m, _) = open(tmp.path(), config).await;
    let a = start(&m, 5000).await;
    let _b = start(&m, 5000).await;
    let c = JobId::new_v4();
    let e = m
        .start(c, SLEEP_KIND, JobType::Storage, spec(10))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::TooManyJobs, "{e}");
    assert!(m.get(c).is_none(), "a refused job was recorded");
    assert!(!job_file(tmp.path(), c).exists());
    // The same job again is not one more.
    m.start(a, SLEEP_KIND, JobType::Storage, spec(5000))
        .await
        .unwrap();
    // An ended job leaves room.
    m.abort(a).await.unwrap();
    wait_status(&m, a, JobStatus::Aborted, 5 * SEC).await;
    m.start(c, SLEEP_KIND, JobType::Storage, spec(10))
        .await
        .unwrap();
    m.shutdown(SEC).await;
}
