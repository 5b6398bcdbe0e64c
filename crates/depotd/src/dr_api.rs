//! The disaster-recovery verbs (docs/dr.md) but `DR.plan` (dr_plan.rs):
//! `DR.failover` and `DR.failback` as a host job running the five steps
//! in order (depot-storage's; step 5 weighed against the OVF backup
//! providers by depot-ovf-backup's `dr`), with the journal file (state
//! directory) written after each; and `DR.status`. No storage logic here.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use depot_api::results::{DrStarted, DrStatusReport};
use depot_api::storage::SpUuid;
use depot_api::types::JobType;
use depot_api::{params, ApiError, Code};
use depot_dr::journal::{
    not_resynced, run_digest, Journal, Operation, JOURNAL_FILE, REPORT_FILE, STEPS,
};
use depot_dr::{Format, MappingError};
use depot_ovf_backup::OvfBackup;
use depot_storage::engine::Storage;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// A refused mapping as the wire says it: its code, the entry and why.
fn refused(e: MappingError) -> ApiError {
    ApiError::new(e.code(), e.to_string())
}

/// The job kind's stored name: never rename.
pub const DR_JOB: &str = "dr_failover";

/// A failover job's spec (kept in the job file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrSpec {
    pub operation: Operation,
    pub mapping: String,
    /// `toml` or `ansible`.
    pub format: String,
    pub confirmed: Vec<u64>,
    pub host_id: u64,
    /// `recoveryPoolID` (absent in the specs of jobs started before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_pool: Option<SpUuid>,
}

/// The DR runs of this host: the journal's file and the one job that may
/// run at a time. Shared by the verbs and the job kind.
pub struct Dr {
    storage: Arc<Storage>,
    /// Step 5 reads the OVF backup providers too.
    backup: Arc<OvfBackup>,
    dir: PathBuf,
    running: AtomicBool,
    /// Test hook (daemon.test_verbs only): after this step's journal is
    /// written the job waits, so that a test can kill -9 the daemon there.
    pause_after: Option<u8>,
}

/// The test hook's environment variable: a step number, 1 to 4.
pub const PAUSE_ENV: &str = "DEPOTD_TEST_DR_PAUSE_AFTER_STEP";
const PAUSE: std::time::Duration = std::time::Duration::from_secs(60);

/// Clears the running flag when a run ends (or panics).
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

fn jerr(code: Code, detail: impl Into<String>) -> ApiError {
    ApiError::new(code, detail.into())
}

pub(crate) fn parse_mapping(
    text: &str,
    format: Option<&str>,
) -> Result<(depot_dr::Mapping, String), ApiError> {
    let format = match format {
        None => Format::Toml,
        Some(f) => Format::parse(f).ok_or_else(|| {
            ApiError::new(
                Code::InvalidParams,
                format!("parameter 'format': {f:?} is neither \"toml\" nor \"ansible\""),
            )
        })?,
    };
    let mapping = depot_dr::parse(text, format).map_err(refused)?;
    Ok((mapping, format.name().to_string()))
}

/// The mapping a run works with: parsed, reversed for a failback, and
/// given the caller's `recoveryPoolID` (9048 where the mapping names
/// another).
pub(crate) fn run_mapping(
    text: &str,
    format: Option<&str>,
    failback: bool,
    recovery_pool: Option<SpUuid>,
) -> Result<(depot_dr::Mapping, String), ApiError> {
    let (mapping, format) = parse_mapping(text, format)?;
    let mapping = if failback {
        mapping.reversed()
    } else {
        mapping
    };
    let mapping = match recovery_pool {
        Some(sp) => mapping
            .with_recovery_pool(sp, RECOVERY_POOL_PARAM)
            .map_err(refused)?,
        None => mapping,
    };
    Ok((mapping, format))
}

/// The wire name of the recovery pool's parameter, as refusals name it.
const RECOVERY_POOL_PARAM: &str = "recoveryPoolID";

impl Dr {
    /// `test_hooks`: honour [`PAUSE_ENV`] (daemon.test_verbs).
    pub fn new(
        storage: Arc<Storage>,
        backup: Arc<OvfBackup>,
        state_dir: PathBuf,
        test_hooks: bool,
    ) -> Dr {
        let pause_after = test_hooks
            .then(|| std::env::var(PAUSE_ENV).ok()?.parse().ok())
            .flatten();
        Dr {
            storage,
            backup,
            dir: state_dir,
            running: AtomicBool::new(false),
            pause_after,
        }
    }

    /// The test hook: waits after step `step` (until stopped).
    fn maybe_pause(&self, step: u8, stop: &dyn Fn() -> bool) {
        if self.pause_after != Some(step) {
            return;
        }
        tracing::warn!(step, "test hook {PAUSE_ENV}: the DR job waits");
        let deadline = std::time::Instant::now() + PAUSE;
        while std::time::Instant::now() < deadline && !stop() {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join(JOURNAL_FILE)
    }

    /// The journal, if there is one (9054 when it cannot be read).
    fn load(&self) -> Result<Option<Journal>, ApiError> {
        let path = self.journal_path();
        match std::fs::read(&path) {
            Ok(bytes) => Journal::decode(&bytes).map(Some).map_err(|e| {
                jerr(
                    Code::DrJournalUnreadable,
                    format!("{}: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(jerr(
                Code::DrJournalUnreadable,
                format!("{}: {e}", path.display()),
            )),
        }
    }

    /// Written whole, atomically and durably (a crash leaves the old
    /// journal or the new one).
    fn save(&self, j: &Journal) -> Result<(), ApiError> {
        depot_os::fsutil::write_atomic(&self.journal_path(), &j.encode(), 0o600)
            .map_err(|e| jerr(Code::InternalError, format!("DR journal: {e}")))
    }

    /// The journal this run continues: the same run's (finished or not),
    /// none for a new run, 9050 while another run is unfinished.
    fn journal_of(&self, op: Operation, digest: &str) -> Result<Option<Journal>, ApiError> {
        match self.load()? {
            Some(j) if j.same_run(op, digest) => Ok(Some(j)),
            Some(j) if j.finished.is_none() => Err(jerr(
                Code::DrJournalOpen,
                format!(
                    "an unfinished {} with another mapping (started {}, {} of 5 steps done) \
                     is in {}: rerun it with its mapping, or move the journal away",
                    j.operation.name(),
                    j.started,
                    j.steps_done,
                    self.journal_path().display()
                ),
            )),
            _ => Ok(None),
        }
    }

    /// `DR.failover` / `DR.failback`: the dry run's report at once, or
    /// the job started (its refusals before anything is created).
    pub async fn start(
        self: &Arc<Self>,
        jobs: &depot_jobs::JobManager,
        op: Operation,
        p: params::DrFailover,
    ) -> Result<DrStarted, ApiError> {
        let failback = op == Operation::Failback;
        let (mapping, format) =
            run_mapping(&p.mapping, p.format.as_deref(), failback, p.recoveryPoolID)?;
        let confirmed = p.confirmedFenced.unwrap_or_default();
        if p.dryRun.unwrap_or(false) {
            let s = self.storage.clone();
            let report = tokio::task::spawn_blocking(move || dry_run(&s, op, &mapping, &confirmed))
                .await
                .map_err(|e| jerr(Code::InternalError, format!("dry run: {e}")))?;
            return Ok(DrStarted {
                job_id: None,
                dry_run: Some(report),
            });
        }
        if self.running.load(Ordering::SeqCst) {
            return Err(jerr(Code::DrBusy, "a DR job is running on this host"));
        }
        let digest = run_digest(&p.mapping, p.recoveryPoolID);
        let dr = self.clone();
        let journal = tokio::task::spawn_blocking(move || dr.journal_of(op, &digest))
            .await
            .map_err(|e| jerr(Code::InternalError, format!("DR journal: {e}")))??;
        let host_id = p
            .hostId
            .or(journal.as_ref().map(|j| j.host_id))
            .or(mapping.hosts().this_host().map(|h| h.get()))
            .ok_or_else(|| {
                jerr(
                    Code::DrCannotTakeOver,
                    "no host id: give hostId (the mapping's hosts.this_host is not there, \
                     or the failback dropped it)",
                )
            })?;
        // Checked now, not when step 4 hands it to sanlock.
        let host_id = i64::try_from(host_id)
            .map_err(|e| e.to_string())
            .and_then(depot_dr::HostId::new)
            .map_err(|e| jerr(Code::InvalidParameterException, format!("hostId: {e}")))?
            .get();
        let spec = DrSpec {
            operation: op,
            mapping: p.mapping,
            format,
            confirmed,
            host_id,
            recovery_pool: p.recoveryPoolID,
        };
        let id = match p.job_id {
            Some(id) => id,
            None => depot_api::types::Uuid::new_v4()
                .to_string()
                .parse()
                .map_err(|e| jerr(Code::InternalError, format!("job id: {e}")))?,
        };
        let spec = serde_json::to_value(&spec)
            .map_err(|e| jerr(Code::InternalError, format!("DR job spec: {e}")))?;
        jobs.start(id, DR_JOB, JobType::Storage, spec).await?;
        Ok(DrStarted {
            job_id: Some(id.to_string()),
            dry_run: None,
        })
    }

    /// `DR.status`.
    pub fn status(&self) -> Result<DrStatusReport, ApiError> {
        let journal = self.load()?;
        let state = match &journal {
            None => "none",
            Some(j) if j.finished.is_some() => "finished",
            Some(_) if self.running.load(Ordering::SeqCst) => "running",
            Some(_) => "interrupted",
        };
        Ok(DrStatusReport {
            state: state.into(),
            journal: journal.map(|j| serde_json::to_value(&j).unwrap_or(Value::Null)),
        })
    }

    /// The job's work, on a blocking thread: the steps from the first
    /// unfinished one, the journal written after each.
    fn run(
        &self,
        spec: DrSpec,
        progress: &dyn Fn(u8),
        stop: &dyn Fn() -> bool,
    ) -> Result<Journal, ApiError> {
        if self.running.swap(true, Ordering::SeqCst) {
            return Err(jerr(Code::DrBusy, "a DR job is running on this host"));
        }
        let _running = Running(&self.running);
        let failback = spec.operation == Operation::Failback;
        let (mapping, _) = run_mapping(
            &spec.mapping,
            Some(&spec.format),
            failback,
            spec.recovery_pool,
        )?;
        let digest = run_digest(&spec.mapping, spec.recovery_pool);
        let mut j = match self.journal_of(spec.operation, &digest)? {
            Some(j) => j,
            None => Journal::new(
                spec.operation,
                digest,
                mapping
                    .secondary_pool()
                    .id
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                spec.host_id,
                depot_storage::engine::dr_now(),
            ),
        };
        let s = &self.storage;
        let e = |e: depot_storage::StorageError| ApiError::from(e);
        for step in (j.steps_done + 1)..=5 {
            if stop() {
                return Err(jerr(Code::ShuttingDown, "the DR job was stopped"));
            }
            progress((step - 1) * 20);
            tracing::info!(
                step,
                name = STEPS[usize::from(step - 1)],
                op = spec.operation.name(),
                "DR step"
            );
            match step {
                1 => {
                    j.fence = Some(s.dr_fence_check(&mapping, &spec.confirmed).map_err(e)?);
                    if failback {
                        j.primary_metadata = s.dr_side_metadata(&mapping, false);
                        // What can be read of the secondary's copies now
                        // is compared now, before anything changes.
                        check_resynced(&j, &s.dr_side_metadata(&mapping, true))?;
                    }
                }
                2 => j.connections = s.dr_switch_connections(&mapping, false).map_err(e)?,
                3 => {
                    j.domains = s.dr_find_domains(&mapping, true);
                    if failback {
                        let copies: Vec<_> = j
                            .domains
                            .iter()
                            .filter_map(|d| d.metadata.clone())
                            .collect();
                        check_resynced(&j, &copies)?;
                    }
                }
                4 => {
                    j.takeover = Some(
                        s.dr_take_over(&mapping, &j.domains, j.host_id, &spec.confirmed)
                            .map_err(e)?,
                    )
                }
                _ => {
                    let domains = j
                        .takeover
                        .as_ref()
                        .map(|t| t.domains.clone())
                        .unwrap_or_default();
                    (j.entities, j.notes) =
                        depot_ovf_backup::dr::find_vms(s, &self.backup, &domains);
                    j.finished = Some(depot_storage::engine::dr_now());
                }
            }
            j.steps_done = step;
            self.save(&j)?;
            self.maybe_pause(step, stop);
        }
        depot_os::fsutil::write_atomic(&self.dir.join(REPORT_FILE), &j.encode(), 0o600)
            .map_err(|e| jerr(Code::InternalError, format!("DR report: {e}")))?;
        progress(100);
        Ok(j)
    }
}

/// 9051 when a copy on the secondary is not the primary's metadata.
fn check_resynced(
    j: &Journal,
    secondary: &[depot_dr::journal::MetadataRecord],
) -> Result<(), ApiError> {
    let stale = not_resynced(&j.primary_metadata, secondary);
    if stale.is_empty() {
        Ok(())
    } else {
        Err(jerr(
            Code::DrFailbackNotResynced,
            format!(
                "resync the secondary from the primary first: {}",
                stale.join("; ")
            ),
        ))
    }
}

/// The dry run: steps 1 and 3 as read now, what 2, 4 and 5 would do.
fn dry_run(s: &Storage, op: Operation, mapping: &depot_dr::Mapping, confirmed: &[u64]) -> Value {
    let plan = s.dr_plan(mapping, confirmed);
    let fence = depot_storage::engine::dr_fence_record(&plan.fence, confirmed, s.sanlock_enabled());
    let connections = s.dr_switch_connections(mapping, true).unwrap_or_default();
    let domains = s.dr_find_domains(mapping, false);
    let mut would = Vec::new();
    let usable: Vec<&str> = domains
        .iter()
        .filter(|d| d.usable())
        .map(|d| d.sd.as_str())
        .collect();
    would.push(format!(
        "step 4: join the lockspaces, check the fence again, force-detach from the lost pool, \
         reconstruct the master of {} (never a backup domain), connect, start the SPM, \
         activate: {}",
        mapping
            .secondary_pool()
            .id
            .map_or("the recovery pool".into(), |p| p.to_string()),
        if usable.is_empty() {
            "no domain found usable yet (a secondary that is not connected is read after step 2)"
                .to_string()
        } else {
            usable.join(", ")
        }
    ));
    would.push(
        "step 5: read every OVF_STORE of those domains and the backup providers, and each \
         VM's disks"
            .into(),
    );
    let mut resync = Vec::new();
    if op == Operation::Failback {
        let primary = s.dr_side_metadata(mapping, false);
        let secondary: Vec<_> = domains.iter().filter_map(|d| d.metadata.clone()).collect();
        resync = not_resynced(&primary, &secondary);
    }
    json!({
        "operation": op.name(),
        "fence": fence,
        "connections": connections,
        "domains": domains,
        "would": would,
        "not_resynced": resync,
    })
}

/// The job kind: not resumable (a run killed midway is failed by the
/// next start with JobInterrupted; its journal says where it stopped, and
/// a rerun with the same mapping continues there).
pub struct DrJob(pub Arc<Dr>);

impl depot_jobs::JobKind for DrJob {
    fn name(&self) -> &'static str {
        DR_JOB
    }
    fn abortable(&self) -> bool {
        true
    }
    fn resumable(&self, _spec: &Value) -> bool {
        false
    }
    fn describe(&self, spec: &Value) -> String {
        serde_json::from_value::<DrSpec>(spec.clone())
            .map(|s| format!("DR {} (5 steps)", s.operation.name()))
            .unwrap_or_else(|_| "DR".into())
    }
    fn validate(&self, spec: &Value) -> Result<(), ApiError> {
        serde_json::from_value::<DrSpec>(spec.clone())
            .map(|_| ())
            .map_err(|e| jerr(Code::InternalError, format!("bad DR job spec: {e}")))
    }
    fn run(&self, ctx: depot_jobs::JobContext, spec: Value) -> depot_jobs::RunFuture {
        let dr = self.0.clone();
        Box::pin(async move {
            let spec: DrSpec = serde_json::from_value(spec)
                .map_err(|e| jerr(Code::InternalError, format!("bad DR job spec: {e}")))?;
            let c = ctx.clone();
            let out = tokio::task::spawn_blocking(move || {
                let progress = |p: u8| c.set_progress(p);
                let stop = || c.is_aborted() || c.is_stopping();
                dr.run(spec, &progress, &stop)
            })
            .await
            .map_err(|e| jerr(Code::InternalError, format!("DR job thread: {e}")))?;
            match out {
                Ok(j) => Ok(Some(serde_json::to_value(&j).unwrap_or(Value::Null))),
                Err(_) if ctx.is_stopping() && !ctx.is_aborted() => Err(ctx.stopped_error()),
                Err(e) => Err(e),
            }
        })
    }
}
