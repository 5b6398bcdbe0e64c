//! The storage job kinds: copies, image moves, the engine's fence,
//! checksums and the SPM's start, run by depot-jobs on blocking threads. A job's spec is JSON
//! (the job store persists it); each kind turns it into a typed storage
//! call and the outcome back into the job's result.
//!
//! Restart behaviour (docs/copy.md): `copy_data` and `checksum` resume
//! (a raw copy from its journal, anything else from the start: the
//! destination stayed ILLEGAL with its generation unchanged, so the rerun
//! passes the same checks); `move_image` and `update_volume` are reported
//! failed with 9001, their destination volumes left ILLEGAL.

use std::path::PathBuf;
use std::sync::Arc;

use depot_api::storage::{ImgUuid, Legality, SdUuid, SpUuid, VolUuid};
use depot_api::{ApiError, Code};
use depot_jobs::{JobContext, JobKind, RunFuture};
use depot_storage::{Control, CopyOutcome, DestinationLease, Storage, VolRef};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub const COPY_DATA: &str = "copy_data";
pub const MOVE_IMAGE: &str = "move_image";
pub const UPDATE_VOLUME: &str = "update_volume";
pub const CHECKSUM: &str = "checksum";
pub const SPM_START: &str = "spm_start";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolSpec {
    pub sd: SdUuid,
    pub img: ImgUuid,
    pub vol: VolUuid,
}

impl VolSpec {
    fn vol_ref(&self) -> VolRef {
        VolRef {
            sd: self.sd,
            img: self.img,
            vol: self.vol,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopySpec {
    pub src: VolSpec,
    pub dst: VolSpec,
    pub generation: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MoveSpec {
    pub src_sd: SdUuid,
    pub dst_sd: SdUuid,
    pub img: ImgUuid,
    pub delete_source: bool,
    pub post_zero: bool,
    pub force: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateSpec {
    pub vol: VolSpec,
    pub generation: u32,
    pub legality: Option<Legality>,
    pub description: Option<String>,
    pub new_generation: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpmStartSpec {
    pub sp: SpUuid,
    pub prev_id: i64,
    pub prev_lver: i64,
}

pub fn spec<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn parse<T: DeserializeOwned>(spec: &Value) -> Result<T, ApiError> {
    serde_json::from_value(spec.clone())
        .map_err(|e| ApiError::new(Code::InternalError, format!("bad job spec: {e}")))
}

/// What a storage job does with its typed spec, on a blocking thread.
type Work<S> = fn(&Storage, &Env, S, &Control<'_>) -> Result<Value, ApiError>;

/// What every storage job may need besides its spec.
pub struct Env {
    /// Where raw copies keep their resume journals (the state directory).
    pub journal_dir: PathBuf,
    /// What spmStart does once this host holds the SPM lease of a pool,
    /// before it reports SPM (the daemon loads the master domain's tasks:
    /// master_tasks.rs). A hook, so that the jobs do not depend on
    /// the tasks module, which names their kinds.
    pub on_spm_lease: SpmLeaseHook,
}

/// See [`Env::on_spm_lease`]. Blocks.
pub type SpmLeaseHook = Arc<dyn Fn(&Storage, SpUuid) + Send + Sync>;

/// One storage job kind: a name, its restart and abort behaviour, and the
/// typed work. One `JobKind` implementation serves them all.
pub struct StorageJob<S> {
    name: &'static str,
    abortable: bool,
    resumable: bool,
    describe: fn(&S) -> String,
    work: Work<S>,
    storage: Arc<Storage>,
    env: Arc<Env>,
}

impl<S: DeserializeOwned + Send + 'static> JobKind for StorageJob<S> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn abortable(&self) -> bool {
        self.abortable
    }
    fn resumable(&self, _spec: &Value) -> bool {
        self.resumable
    }
    fn describe(&self, spec: &Value) -> String {
        parse::<S>(spec)
            .map(|s| (self.describe)(&s))
            .unwrap_or_else(|_| self.name.to_string())
    }
    fn validate(&self, spec: &Value) -> Result<(), ApiError> {
        parse::<S>(spec).map(|_| ())
    }

    /// Runs on a blocking thread with progress and abort wired to the job:
    /// abort and daemon shutdown both stop the work; shutdown then leaves
    /// the job to be resumed (or failed) by the next start.
    fn run(&self, ctx: JobContext, spec: Value) -> RunFuture {
        let (storage, env, work) = (self.storage.clone(), self.env.clone(), self.work);
        let parsed = parse::<S>(&spec);
        Box::pin(async move {
            let s = parsed?;
            let c = ctx.clone();
            let out = tokio::task::spawn_blocking(move || {
                let progress = |p: u8| c.set_progress(p);
                let abort = || c.is_aborted() || c.is_stopping();
                let ctl = Control {
                    progress: &progress,
                    abort: &abort,
                };
                work(&storage, &env, s, &ctl)
            })
            .await
            .map_err(|e| ApiError::new(Code::InternalError, format!("job thread: {e}")))?;
            match out {
                Ok(v) => Ok(Some(v)),
                Err(_) if ctx.is_stopping() && !ctx.is_aborted() => Err(ctx.stopped_error()),
                Err(e) => Err(e),
            }
        })
    }
}

fn outcome_json(o: &CopyOutcome) -> Value {
    json!({
        "method": o.method,
        "verified": o.verified,
        "generation": o.generation,
        "resumed_from": o.resumed_from,
        "checksum": o.checksum.as_ref().map(|c| json!({
            "algorithm": c.algorithm, "block_size": c.block_size, "checksum": c.checksum})),
    })
}

/// The storage job kinds, for the job manager.
pub fn kinds(
    storage: &Arc<Storage>,
    journal_dir: PathBuf,
    on_spm_lease: SpmLeaseHook,
) -> Vec<Arc<dyn JobKind>> {
    let env = Arc::new(Env {
        journal_dir,
        on_spm_lease,
    });
    let s = || storage.clone();
    vec![
        Arc::new(StorageJob::<CopySpec> {
            name: COPY_DATA,
            abortable: true,
            resumable: true,
            describe: |spec| {
                format!(
                    "copy {}/{} to {}/{}",
                    spec.src.sd, spec.src.vol, spec.dst.sd, spec.dst.vol
                )
            },
            work: |storage, env, spec, ctl| {
                let o = storage.copy_volume(
                    spec.src.vol_ref(),
                    spec.dst.vol_ref(),
                    spec.generation,
                    true,
                    Some(&env.journal_dir),
                    ctl,
                    DestinationLease::Hold,
                )?;
                Ok(outcome_json(&o))
            },
            storage: s(),
            env: env.clone(),
        }),
        Arc::new(StorageJob::<MoveSpec> {
            name: MOVE_IMAGE,
            abortable: true,
            resumable: false,
            describe: |spec| {
                let verb = if spec.delete_source { "move" } else { "copy" };
                format!(
                    "{verb} image {} from {} to {}",
                    spec.img, spec.src_sd, spec.dst_sd
                )
            },
            work: |storage, env, spec, ctl| {
                let outcomes = storage.move_image(
                    spec.src_sd,
                    spec.dst_sd,
                    spec.img,
                    spec.delete_source,
                    spec.post_zero,
                    spec.force,
                    Some(&env.journal_dir),
                    ctl,
                )?;
                Ok(json!({"volumes": outcomes.iter().map(outcome_json).collect::<Vec<_>>()}))
            },
            storage: s(),
            env: env.clone(),
        }),
        Arc::new(StorageJob::<UpdateSpec> {
            name: UPDATE_VOLUME,
            abortable: false,
            resumable: false,
            describe: |spec| format!("update volume {}", spec.vol.vol),
            work: |storage, _, spec, _| {
                storage.update_volume_fenced(
                    spec.vol.vol_ref(),
                    spec.generation,
                    spec.legality,
                    spec.description,
                    spec.new_generation,
                )?;
                Ok(Value::Null)
            },
            storage: s(),
            env: env.clone(),
        }),
        Arc::new(StorageJob::<VolSpec> {
            name: CHECKSUM,
            abortable: true,
            resumable: true,
            describe: |spec| format!("checksum of volume {}", spec.vol),
            work: |storage, _, spec, ctl| {
                let c = storage.volume_checksum(spec.vol_ref(), ctl)?;
                Ok(
                    json!({"algorithm": c.algorithm, "block_size": c.block_size, "checksum": c.checksum}),
                )
            },
            storage: s(),
            env: env.clone(),
        }),
        spm_start_kind(storage, env),
    ]
}

/// Not resumable: the lease goes with the process that held it, so after
/// a restart this host is not SPM and the task failed (9001); the engine
/// starts the SPM again. Once the lease is held, and before this host
/// reports SPM, the master domain's tasks are loaded (master_tasks.rs:
/// a new SPM answers for the old one's tasks).
fn spm_start_kind(storage: &Arc<Storage>, env: Arc<Env>) -> Arc<dyn JobKind> {
    Arc::new(StorageJob::<SpmStartSpec> {
        name: SPM_START,
        abortable: false,
        resumable: false,
        describe: |spec| format!("start SPM of pool {}", spec.sp),
        work: |storage, env, spec, _| {
            let lver =
                storage.spm_start_then(spec.sp, spec.prev_id, spec.prev_lver, &mut || {
                    (env.on_spm_lease)(storage, spec.sp);
                })?;
            Ok(json!({ "lver": lver }))
        },
        storage: storage.clone(),
        env,
    })
}
