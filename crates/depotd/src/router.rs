//! Maps each typed [`Call`] to the service that does the work, and the
//! service's typed answer back to the wire value. Nothing else happens here:
//! no validation beyond what the wire types enforce, no storage logic.

use depot_api::catalogue::returns;
use depot_api::results::{Done, TaskId};
use depot_api::storage::{DomainType, MoveOperation};
use depot_api::types::{Capabilities, JobType, SanlockCapability};
use depot_api::{params, ApiError, Call, Code};
use depot_jobs::{JobManager, SLEEP_KIND};
use depot_storage::Storage;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::call::CallCtx;
use crate::dr_api;
use crate::fencing::{self, Fencer};
use crate::ovf_backup;
use crate::storage_api;
use crate::storage_jobs;
use crate::task_store::SpmVerb;
use crate::tasks::{Scope, Tasks};
use depot_dr::journal::Operation;

/// What an SPM verb's task belongs to: the pool named, or the connected
/// pool of the domain (none for a domain attached to no pool).
#[derive(Clone, Copy)]
enum TaskOf {
    Pool(depot_api::storage::SpUuid),
    Domain(depot_api::storage::SdUuid),
}

#[derive(Clone)]
pub struct Router {
    jobs: JobManager,
    storage: Arc<Storage>,
    tasks: Arc<Tasks>,
    fencer: Arc<Fencer>,
    /// `daemon.test_verbs`: whether `Host.sleepJob` exists.
    test_verbs: bool,
    /// The OVF backup providers (`OvfBackup.*`).
    ovf_backup: Arc<depot_ovf_backup::OvfBackup>,
    /// The DR runs (`DR.failover`, `DR.failback`, `DR.status`); none in
    /// a router made without a state directory.
    dr: Option<Arc<dr_api::Dr>>,
}

impl Router {
    pub fn new(
        jobs: JobManager,
        storage: Arc<Storage>,
        tasks: Arc<Tasks>,
        fencer: Arc<Fencer>,
        test_verbs: bool,
    ) -> Self {
        Router {
            jobs,
            storage,
            tasks,
            fencer,
            test_verbs,
            ovf_backup: Arc::new(depot_ovf_backup::OvfBackup::noop()),
            dr: None,
        }
    }

    /// The DR runs, shared with their job kind.
    pub fn with_dr(mut self, dr: Arc<dr_api::Dr>) -> Self {
        self.dr = Some(dr);
        self
    }

    fn dr(&self) -> Result<&Arc<dr_api::Dr>, ApiError> {
        self.dr
            .as_ref()
            .ok_or_else(|| ApiError::new(Code::InternalError, "DR is not set up in this daemon"))
    }

    /// The OVF backup providers the `OvfBackup.*` verbs read.
    pub fn with_ovf_backup(mut self, backup: Arc<depot_ovf_backup::OvfBackup>) -> Self {
        self.ovf_backup = backup;
        self
    }

    /// One arm per verb; what a verb does beyond one call is in a function
    /// of its own (here for host, job and task verbs, in
    /// [`storage_api`] for storage verbs).
    // long: the catalogue has more verbs than 100 lines; one line each
    // (rustfmt wraps some), so the match is the list of verbs.
    pub async fn dispatch(&self, call: Call, ctx: &CallCtx) -> Result<Value, ApiError> {
        let storage = &self.storage;
        match call {
            Call::HostPing2(_) => wire(Ok(Done)),
            Call::HostGetCapabilities(_) => {
                // One bounded call to the sanlock daemon, off the runtime.
                let s = storage.clone();
                let sanlock = tokio::task::spawn_blocking(move || s.sanlock_status())
                    .await
                    .unwrap_or_default();
                wire(Ok(capabilities(sanlock)))
            }
            Call::HostGetJobs(p) => wire(Ok(self.get_jobs(p))),
            Call::HostAbortJob(p) => wire(self.jobs.abort(p.job_id).await.map(|()| Done)),
            Call::HostDeleteJob(p) => wire(self.jobs.delete(p.job_id).await.map(|()| Done)),
            Call::HostSubscribeEvents(p) => wire(subscribe_events(p, ctx)),
            Call::HostSleepJob(p) if self.test_verbs => wire(self.sleep_job(p).await),
            // Without test verbs the verb does not exist, in the words
            // of any unknown method.
            Call::HostSleepJob(_) => Err(ApiError::new(Code::MethodNotFound, "'Host.sleepJob'")),
            Call::StoragePoolConnectStorageServer(p) => {
                wire(storage_api::connect(storage, p).await)
            }
            Call::StoragePoolDisconnectStorageServer(p) => {
                wire(storage_api::disconnect(storage, p).await)
            }
            Call::HostGetStorageDomains(p) => {
                wire(storage_api::get_storage_domains(storage, p).await)
            }
            Call::IscsiConnectionDiscoverSendTargets(p) => {
                wire(storage_api::discover_send_targets(storage, p).await)
            }
            Call::HostGetDeviceList(p) => wire(storage_api::get_device_list(storage, p).await),
            Call::HostGetDevicesVisibility(p) => {
                wire(storage_api::devices_visibility(storage, p).await)
            }
            Call::StorageDomainCreate(p) => wire(storage_api::create_domain(storage, p).await),
            Call::LvmVolumeGroupCreate(p) => wire(storage_api::create_vg(storage, p).await),
            Call::LvmVolumeGroupGetInfo(p) => {
                wire(storage_api::vg_info(storage, p.lvmvolumegroupID).await)
            }
            Call::LvmVolumeGroupRemove(p) => wire(storage_api::remove_vg(storage, p).await),
            Call::HostGetLvmVolumeGroups(_) => wire(storage_api::list_vgs(storage).await),
            Call::StorageDomainExtend(p) => wire(storage_api::extend_domain(storage, p).await),
            Call::StorageDomainResizePv(p) => wire(storage_api::resize_pv(storage, p).await),
            Call::StorageDomainGetInfo(p) => {
                wire(storage_api::domain_info(storage, p.storagedomainID).await)
            }
            Call::StorageDomainGetStats(p) => {
                wire(storage_api::domain_stats(storage, p.storagedomainID).await)
            }
            Call::StorageDomainSetDescription(p) => {
                wire(storage_api::set_domain_description(storage, p).await)
            }
            Call::StorageDomainSetBackup(p) => wire(storage_api::set_backup(storage, p).await),
            Call::StorageDomainGetOvfStores(p) => {
                wire(storage_api::ovf_stores(storage, p.storagedomainID).await)
            }
            Call::StorageDomainGetOvfEntities(p) => {
                wire(storage_api::ovf_entities(storage, p.storagedomainID).await)
            }
            Call::StorageDomainGetOvfEntity(p) => {
                wire(storage_api::ovf_entity(storage, p.storagedomainID, p.entityID).await)
            }
            Call::OvfBackupList(_) => {
                let b = self.ovf_backup.clone();
                wire(off_runtime(move || Ok(ovf_backup::list(&b))).await)
            }
            Call::OvfBackupShow(p) => {
                let b = self.ovf_backup.clone();
                wire(off_runtime(move || ovf_backup::show(&b, p.entityID)).await)
            }
            Call::OvfBackupAttach(p) => {
                let b = self.ovf_backup.clone();
                wire(off_runtime(move || ovf_backup::attach(&b, &p.path, &p.mode)).await)
            }
            Call::OvfBackupRestore(p) => {
                let (b, s) = (self.ovf_backup.clone(), storage.clone());
                wire(
                    off_runtime(move || {
                        ovf_backup::restore(
                            &b,
                            &s,
                            p.storagedomainID,
                            p.imageID,
                            p.volumeID,
                            p.entityIDs,
                            p.provider,
                        )
                    })
                    .await,
                )
            }
            Call::TaskGetStatus(p) => wire(self.tasks.status(&self.jobs, p.taskID)),
            Call::TaskGetInfo(p) => wire(self.tasks.info(&self.jobs, p.taskID)),
            Call::TaskClear(p) => wire(self.clear_task(p).await),
            Call::HostGetAllTasksStatuses(_) => wire(self.tasks.all(&self.jobs, &self.scope())),
            Call::HostGetAllTasksInfo(_) => wire(self.tasks.all_info(&self.jobs, &self.scope())),
            Call::SdmCopyData(p) => wire(self.copy_data(p).await),
            Call::SdmUpdateVolume(p) => wire(self.update_volume(p).await),
            Call::ImageMove(p) => wire(self.move_image(p).await),
            Call::VolumeGetChecksum(p) => wire(self.checksum(p).await),
            Call::StorageDomainValidate(p) => wire(storage_api::validate_domain(storage, p).await),
            Call::StorageDomainFormat(p) => wire(storage_api::format_domain(storage, p).await),
            Call::StorageDomainGetImages(p) => {
                wire(storage_api::get_images(storage, p.storagedomainID).await)
            }
            Call::StorageDomainGetVolumes(p) => wire(storage_api::get_volumes(storage, p).await),
            Call::StorageDomainGetFileStats(p) => wire(storage_api::file_stats(storage, p).await),
            Call::HostFenceNode(p) => wire(fencing::fence_node(&self.fencer, storage, p).await),
            Call::StorageDomainGetHostLiveness(p) => {
                wire(storage_api::host_liveness(storage, p.storagedomainID).await)
            }
            Call::DrPlan(p) => wire(crate::dr_plan::plan(storage, p).await),
            Call::DrFailover(p) => match self.dr() {
                Ok(dr) => wire(dr.start(&self.jobs, Operation::Failover, p).await),
                Err(e) => Err(e),
            },
            Call::DrFailback(p) => match self.dr() {
                Ok(dr) => {
                    let p = params::DrFailover {
                        mapping: p.mapping,
                        format: p.format,
                        confirmedFenced: p.confirmedFenced,
                        dryRun: p.dryRun,
                        hostId: p.hostId,
                        recoveryPoolID: p.recoveryPoolID,
                        job_id: p.job_id,
                    };
                    wire(dr.start(&self.jobs, Operation::Failback, p).await)
                }
                Err(e) => Err(e),
            },
            Call::DrStatus(_) => match self.dr() {
                Ok(dr) => {
                    let dr = dr.clone();
                    wire(off_runtime(move || dr.status()).await)
                }
                Err(e) => Err(e),
            },
            Call::StoragePoolCreate(p) => wire(storage_api::create_pool(storage, p).await),
            Call::StoragePoolConnect(p) => wire(storage_api::connect_pool(storage, p).await),
            Call::StoragePoolDisconnect(p) => wire(storage_api::disconnect_pool(storage, p).await),
            Call::StoragePoolSpmStart(p) => wire(self.spm_start(p).await),
            Call::StoragePoolSpmStop(p) => wire(storage_api::spm_stop(storage, p).await),
            Call::StoragePoolGetSpmStatus(p) => wire(storage_api::spm_status(storage, p).await),
            Call::StoragePoolSwitchMaster(p) => {
                let of = TaskOf::Pool(p.storagepoolID);
                let work = storage_api::switch_master(storage, p).await;
                wire(self.finished(SpmVerb::SwitchMaster, of, work).await)
            }
            Call::StoragePoolReconstructMaster(p) => {
                wire(storage_api::reconstruct_master(storage, p).await)
            }
            Call::StoragePoolDestroy(p) => wire(storage_api::destroy_pool(storage, p).await),
            Call::StoragePoolRefresh(p) => wire(storage_api::refresh_pool(storage, p).await),
            Call::StoragePoolGetInfo(p) => {
                wire(storage_api::pool_info(storage, p.storagepoolID).await)
            }
            Call::StorageDomainAttach(p) => wire(storage_api::attach(storage, p).await),
            Call::StorageDomainDetach(p) => wire(storage_api::detach(storage, p).await),
            Call::StorageDomainActivate(p) => wire(storage_api::activate(storage, p).await),
            Call::StorageDomainDeactivate(p) => wire(storage_api::deactivate(storage, p).await),
            Call::VolumeCreate(p) => {
                let of = TaskOf::Domain(p.storagedomainID);
                let work = storage_api::create_volume(storage, p).await;
                wire(self.finished(SpmVerb::CreateVolume, of, work).await)
            }
            Call::VolumeGetInfo(p) => wire(storage_api::volume_info(storage, p).await),
            Call::VolumeGetSize(p) => wire(storage_api::volume_size(storage, p).await),
            Call::VolumeDelete(p) => {
                let of = TaskOf::Domain(p.storagedomainID);
                let work = storage_api::delete_volume(storage, p).await;
                wire(self.finished(SpmVerb::DeleteVolume, of, work).await)
            }
            Call::VolumeSetDescription(p) => {
                wire(storage_api::set_volume_description(storage, p).await)
            }
            Call::VolumeSetLegality(p) => wire(storage_api::set_volume_legality(storage, p).await),
            Call::VolumeExtendSize(p) => {
                let of = TaskOf::Domain(p.storagedomainID);
                let work = storage_api::extend_volume(storage, p).await;
                wire(self.finished(SpmVerb::ExtendVolumeSize, of, work).await)
            }
            Call::VolumeRequestExtend(p) => wire(storage_api::request_extend(storage, p).await),
            Call::ImageDelete(p) => {
                let of = TaskOf::Domain(p.storagedomainID);
                let work = storage_api::delete_image(storage, p).await;
                wire(self.finished(SpmVerb::DeleteImage, of, work).await)
            }
            Call::LeaseCreate(p) => {
                let of = TaskOf::Domain(p.lease.sd_id);
                let work = storage_api::create_lease(storage, p).await;
                wire(self.finished(SpmVerb::CreateLease, of, work).await)
            }
            Call::LeaseDelete(p) => {
                let of = TaskOf::Domain(p.lease.sd_id);
                let work = storage_api::delete_lease(storage, p).await;
                wire(self.finished(SpmVerb::DeleteLease, of, work).await)
            }
            Call::LeaseRebuildLeases(p) => {
                let of = TaskOf::Domain(p.sd_id);
                let work = storage_api::rebuild_leases(storage, p).await;
                wire(self.finished(SpmVerb::RebuildLeases, of, work).await)
            }
            Call::LeaseLookup(p) => wire(storage_api::lease_info(storage, p).await),
            Call::LeaseGetStatus(p) => wire(storage_api::lease_status(storage, p).await),
            Call::LeaseFence(p) => wire(storage_api::fence_lease(storage, p).await),
            Call::ImagePrepare(p) => wire(storage_api::prepare(storage, p).await),
            Call::ImageTeardown(p) => wire(storage_api::teardown(storage, p).await),
            Call::HostGetStorageRepoStats(p) => {
                wire(storage_api::repo_stats(storage, p.domains).await)
            }
            Call::HostGetStats(_) => wire(storage_api::host_stats(storage).await),
        }
    }

    /// A verb VDSM runs as an SPM task and depot completes before the
    /// answer: once the work succeeded, a finished task's id, recorded on
    /// disk before the answer (the engine may poll it at once, or after a
    /// crash that followed the answer). A failure is answered as itself,
    /// with no task.
    async fn finished(
        &self,
        verb: SpmVerb,
        of: TaskOf,
        work: Result<(), ApiError>,
    ) -> Result<TaskId, ApiError> {
        work?;
        let (tasks, storage) = (self.tasks.clone(), self.storage.clone());
        // The record's fsyncs: off the runtime.
        tokio::task::spawn_blocking(move || {
            let pool = match of {
                TaskOf::Pool(sp) => Some(sp),
                TaskOf::Domain(sd) => storage.connected_pool_of(sd),
            };
            TaskId(tasks.finished(&storage, verb, pool))
        })
        .await
        .map_err(|e| ApiError::new(Code::InternalError, e.to_string()))
    }

    /// Which pools' tasks `Host.getAllTasks*` lists here.
    fn scope(&self) -> Scope {
        let mut scope = Scope::default();
        for (sp, spm) in self.storage.connected_pools_spm() {
            if spm {
                scope.spm_of.push(sp);
            } else {
                scope.not_spm_of.push(sp);
            }
        }
        scope
    }

    async fn clear_task(&self, p: params::TaskClear) -> Result<returns::TaskClear, ApiError> {
        self.tasks
            .clear(&self.storage, &self.jobs, p.taskID)
            .await
            .map(|()| Done)
    }

    async fn update_volume(
        &self,
        p: params::SdmUpdateVolume,
    ) -> Result<returns::SdmUpdateVolume, ApiError> {
        let spec = storage_jobs::spec(&storage_jobs::UpdateSpec {
            vol: storage_jobs::VolSpec {
                sd: p.vol_info.sd_id,
                img: p.vol_info.img_id,
                vol: p.vol_info.vol_id,
            },
            generation: p.vol_info.generation,
            legality: p.vol_attr.legality,
            description: p.vol_attr.description,
            new_generation: p.vol_attr.generation,
        });
        self.start_job(p.job_id, storage_jobs::UPDATE_VOLUME, spec)
            .await
    }

    async fn move_image(&self, p: params::ImageMove) -> Result<returns::ImageMove, ApiError> {
        // VDSM refuses a host that is not the SPM before it schedules the
        // task: so does depot, before the job (the job checks again).
        let (src, dst) = (p.storagedomainID, p.dstSdUUID);
        storage_api::blocking(&self.storage, move |s| {
            s.require_spm_of(src, "move image")?;
            s.require_spm_of(dst, "move image")
        })
        .await?;
        let spec = storage_jobs::spec(&storage_jobs::MoveSpec {
            src_sd: p.storagedomainID,
            dst_sd: p.dstSdUUID,
            img: p.imageID,
            delete_source: p.operation == MoveOperation::Move,
            post_zero: p.postZero.unwrap_or(false),
            force: p.force.unwrap_or(false),
        });
        // VDSM answers with an SPM task id; depot's job id plays
        // that part (docs/copy.md).
        let id = depot_api::types::JobId(depot_api::types::Uuid::new_v4());
        self.start_job(id, storage_jobs::MOVE_IMAGE, spec).await?;
        Ok(TaskId(id.0))
    }

    /// VDSM runs spmStart as an SPM task; depot as a host job, whose id
    /// is the task id (the lease can take minutes: the host id first).
    async fn spm_start(
        &self,
        p: params::StoragePoolSpmStart,
    ) -> Result<returns::StoragePoolSpmStart, ApiError> {
        storage_api::require_connected_pool(&self.storage, p.storagepoolID).await?;
        let spec = storage_jobs::spec(&storage_jobs::SpmStartSpec {
            sp: p.storagepoolID,
            prev_id: p.prevID,
            prev_lver: p.prevLver.trim().parse().unwrap_or(-1),
        });
        let id = depot_api::types::JobId(depot_api::types::Uuid::new_v4());
        self.start_job(id, storage_jobs::SPM_START, spec).await?;
        Ok(TaskId(id.0))
    }

    async fn checksum(
        &self,
        p: params::VolumeGetChecksum,
    ) -> Result<returns::VolumeGetChecksum, ApiError> {
        let spec = storage_jobs::spec(&storage_jobs::VolSpec {
            sd: p.storagedomainID,
            img: p.imageID,
            vol: p.volumeID,
        });
        self.start_job(p.job_id, storage_jobs::CHECKSUM, spec).await
    }

    fn get_jobs(&self, p: params::HostGetJobs) -> returns::HostGetJobs {
        let ids = p.job_ids.unwrap_or_default();
        self.jobs
            .list(p.job_type, &ids)
            .into_iter()
            .map(|info| (info.id.to_string(), info))
            .collect()
    }

    async fn start_job(
        &self,
        id: depot_api::types::JobId,
        kind: &str,
        spec: Value,
    ) -> Result<Done, ApiError> {
        self.jobs
            .start(id, kind, JobType::Storage, spec)
            .await
            .map(|()| Done)
    }

    async fn copy_data(&self, p: params::SdmCopyData) -> Result<returns::SdmCopyData, ApiError> {
        for (name, e) in [("source", &p.source), ("destination", &p.destination)] {
            if e.endpoint_type != "div" {
                return Err(ApiError::new(
                    Code::InvalidParameterException,
                    format!(
                        "{name}.endpoint_type={:?} (only \"div\" endpoints are supported)",
                        e.endpoint_type
                    ),
                ));
            }
        }
        let vol = |e: &depot_api::storage::CopyEndpoint| storage_jobs::VolSpec {
            sd: e.sd_id,
            img: e.img_id,
            vol: e.vol_id,
        };
        let spec = storage_jobs::spec(&storage_jobs::CopySpec {
            src: vol(&p.source),
            dst: vol(&p.destination),
            generation: p.destination.generation,
        });
        self.start_job(p.job_id, storage_jobs::COPY_DATA, spec)
            .await
    }

    async fn sleep_job(&self, p: params::HostSleepJob) -> Result<returns::HostSleepJob, ApiError> {
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
            .map(|()| Done)
    }
}

fn subscribe_events(
    p: params::HostSubscribeEvents,
    ctx: &CallCtx,
) -> Result<returns::HostSubscribeEvents, ApiError> {
    match &ctx.subscriber {
        Some(sub) => {
            sub.subscribe(p.prefixes.unwrap_or_default());
            Ok(Done)
        }
        None => Err(ApiError::new(
            Code::TransportNotSupported,
            "events need a WebSocket connection (over STOMP: SUBSCRIBE to jms.queue.events)",
        )),
    }
}

/// A typed result as the wire value. Through a `Value`, whose objects
/// keep their keys sorted (serde_json without `preserve_order`), as the
/// `json!` answers did.
fn wire<T: Serialize>(result: Result<T, ApiError>) -> Result<Value, ApiError> {
    serde_json::to_value(result?).map_err(|e| ApiError::new(Code::InternalError, e.to_string()))
}

/// The file storage types depot serves: block sizes 512 and 4096, or 0 to
/// detect it when the domain is created.
const FILE_TYPES: [DomainType; 4] = [
    DomainType::Nfs,
    DomainType::LocalFs,
    DomainType::PosixFs,
    DomainType::GlusterFs,
];

/// The SAN storage types depot serves (block domains on LVM): 512-byte
/// blocks, as VDSM's blockSD (`supported_block_size = (512,)`).
const BLOCK_TYPES: [DomainType; 2] = [DomainType::Iscsi, DomainType::Fcp];

/// The storage part of VDSM's capabilities: what this build can do, and
/// whether sanlock can be used here.
pub fn capabilities(sanlock: SanlockCapability) -> Capabilities {
    let sizes = FILE_TYPES
        .iter()
        .map(|t| (t.name().to_string(), vec![0, 512, 4096]))
        .chain(
            BLOCK_TYPES
                .iter()
                .map(|t| (t.name().to_string(), vec![512])),
        );
    Capabilities {
        version_name: "depot".into(),
        software_version: env!("CARGO_PKG_VERSION").into(),
        software_revision: option_env!("DEPOT_GIT_REVISION").unwrap_or("0").into(),
        domain_versions: vec![5],
        storage_domain_types: FILE_TYPES
            .iter()
            .chain(&BLOCK_TYPES)
            .map(|t| t.name().to_string())
            .collect(),
        supported_block_size: sizes.collect::<BTreeMap<_, _>>(),
        additional_features: [
            "host_jobs",
            "job_abort",
            "ovf_store_checksum",
            "backup_domain",
            "copy_checksum",
        ]
        .map(String::from)
        .to_vec(),
        sanlock,
    }
}

/// Runs blocking work (the providers read files and domains) off the
/// async runtime.
async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(ApiError::new(Code::InternalError, format!("panicked: {e}"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use depot_api::results::{ConnectionStatus, DomainStats, VolumeSize};
    use depot_api::types::Uuid;
    use std::collections::BTreeMap;

    /// The typed results go out as the `json!` objects they replaced did,
    /// byte for byte (the old expressions are copied here).
    #[test]
    fn typed_results_keep_the_wire_bytes() {
        let text = |r: Value| r.to_string();
        assert_eq!(text(wire(Ok(Done)).unwrap()), text(Value::Bool(true)));
        let id = Uuid::new_v4();
        assert_eq!(
            text(wire(Ok(TaskId(id))).unwrap()),
            text(Value::String(id.to_string()))
        );
        let statuses = vec![
            ConnectionStatus {
                id: "a".into(),
                status: 0,
            },
            ConnectionStatus {
                id: "b".into(),
                status: 100,
            },
        ];
        assert_eq!(
            text(wire(Ok(statuses)).unwrap()),
            text(json!([{"id": "a", "status": 0}, {"id": "b", "status": 100}]))
        );
        let stats = DomainStats {
            disktotal: "1024".into(),
            diskfree: "512".into(),
            mdasize: 0,
            mdafree: 0,
            mdavalid: true,
            mdathreshold: true,
        };
        assert_eq!(
            text(wire(Ok(stats)).unwrap()),
            text(json!({
                "disktotal": "1024",
                "diskfree": "512",
                "mdasize": 0,
                "mdafree": 0,
                "mdavalid": true,
                "mdathreshold": true,
            }))
        );
        let size = VolumeSize {
            apparentsize: "1".into(),
            truesize: "2".into(),
        };
        assert_eq!(
            text(wire(Ok(size)).unwrap()),
            text(json!({"apparentsize": "1", "truesize": "2"}))
        );
        let seen: BTreeMap<String, bool> = [("g1".into(), true), ("g0".into(), false)].into();
        assert_eq!(text(wire(Ok(seen)).unwrap()), r#"{"g0":false,"g1":true}"#);
        let status = depot_api::results::TaskStatus {
            taskID: id.to_string(),
            taskState: "finished".into(),
            taskResult: "cleanFailure".into(),
            code: 9005,
            message: "m".into(),
        };
        assert_eq!(
            text(wire(Ok(status)).unwrap()),
            text(json!({"taskID": id.to_string(), "taskState": "finished",
                "taskResult": "cleanFailure", "code": 9005, "message": "m"}))
        );
        let info = depot_api::results::TaskInfo {
            id: id.to_string(),
            verb: "createVolume".into(),
        };
        assert_eq!(
            text(wire(Ok(info)).unwrap()),
            text(json!({"id": id.to_string(), "verb": "createVolume"}))
        );
        assert_eq!(
            text(wire(Ok(capabilities(SanlockCapability::default()))).unwrap()),
            text(serde_json::to_value(capabilities(SanlockCapability::default())).unwrap())
        );
    }

    /// The results typed last, against the `json!` the old storage_api
    /// built (its expressions copied, over values of the same types), with
    /// each key that is only sometimes there both present and absent.
    /// storage_api's tests run the builders that need no storage.
    #[test]
    fn typed_storage_results_keep_the_wire_bytes() {
        use depot_api::results::*;
        let text = |r: Value| r.to_string();
        let typed = |t: &dyn erased::Wire| t.bytes();

        // StorageDomain.getInfo: a file domain, a block domain with and
        // without vgMetadataDevice.
        let pools: Vec<String> = vec!["p1".into()];
        let (master_version, block_size, alignment): (Option<i64>, u32, u64) =
            (Some(3), 512, 1 << 20);
        let old_info = |block: Option<(&str, bool, &str, Option<&str>)>| {
            let mut v = json!({
                "uuid": "sd", "name": "n", "type": "NFS", "class": "Data",
                "role": "Regular", "pool": pools, "version": 5i64.to_string(),
                "master_ver": master_version.unwrap_or(0), "lver": -1, "spm_id": -1,
                "remotePath": "h:/e", "block_size": block_size,
                "alignment": alignment, "backup": false,
            });
            if let Some((vg_uuid, partial, metadata_device, vg_metadata_device)) = block {
                v["vguuid"] = json!(vg_uuid);
                v["state"] = json!(if partial { "PARTIAL" } else { "OK" });
                v["metadataDevice"] = json!(metadata_device);
                if let Some(dev) = vg_metadata_device {
                    v["vgMetadataDevice"] = json!(dev);
                }
            }
            v
        };
        let new_info = |block: Option<(&str, bool, &str, Option<&str>)>| DomainInfo {
            uuid: "sd".into(),
            name: "n".into(),
            r#type: "NFS".into(),
            class: "Data".into(),
            role: "Regular".into(),
            pool: pools.clone(),
            version: "5".into(),
            master_ver: 3,
            lver: -1,
            spm_id: -1,
            remotePath: "h:/e".into(),
            block_size,
            alignment,
            backup: false,
            vguuid: block.map(|b| b.0.into()),
            state: block.map(|b| if b.1 { "PARTIAL" } else { "OK" }.into()),
            metadataDevice: block.map(|b| b.2.into()),
            vgMetadataDevice: block.and_then(|b| b.3.map(String::from)),
        };
        for block in [
            None,
            Some(("vg", false, "3600a", None)),
            Some(("vg", true, "3600a", Some("3600b"))),
        ] {
            assert_eq!(typed(&new_info(block)), text(old_info(block)));
        }

        // StoragePool.getInfo: one domain the monitor has checked, one not.
        let old_dom = |sizes: Option<(u64, u64)>| {
            let mut d = json!({"status": "Active", "alerts": [], "version": 5, "isoprefix": ""});
            if let Some((free, total)) = sizes {
                d["diskfree"] = json!(free.to_string());
                d["disktotal"] = json!(total.to_string());
            }
            d
        };
        let new_dom = |sizes: Option<(u64, u64)>| PoolDomainInfo {
            status: "Active".into(),
            alerts: vec![],
            version: 5,
            isoprefix: "".into(),
            diskfree: sizes.map(|s| s.0.to_string()),
            disktotal: sizes.map(|s| s.1.to_string()),
        };
        let master_ver: i64 = 2;
        let old_pool = json!({
            "info": {
                "name": "pool", "type": "NFS", "master_uuid": "sd1",
                "master_ver": master_ver, "spm_id": -1, "lver": -1,
                "domains": "sd1:Active,sd2:Active", "pool_status": "connected",
                "version": "5", "isoprefix": "",
            },
            "dominfo": {"sd2": old_dom(None), "sd1": old_dom(Some((1, 2)))},
        });
        let new_pool = PoolInfo {
            info: PoolDetails {
                name: "pool".into(),
                r#type: "NFS".into(),
                master_uuid: "sd1".into(),
                master_ver,
                spm_id: -1,
                lver: -1,
                domains: "sd1:Active,sd2:Active".into(),
                pool_status: "connected".into(),
                version: "5".into(),
                isoprefix: "".into(),
            },
            dominfo: [
                ("sd2".to_string(), new_dom(None)),
                ("sd1".to_string(), new_dom(Some((1, 2)))),
            ]
            .into(),
        };
        assert_eq!(typed(&new_pool), text(old_pool));

        // Host.getStorageRepoStats and Host.getStats, sizes known or not.
        let (code, version, delay): (i32, Option<u32>, String) = (358, None, "0.001".into());
        let old_repo = json!({
            "code": code, "lastCheck": "1.5", "delay": delay, "valid": false,
            "version": version.unwrap_or(5), "acquired": false, "actual": true,
        });
        let repo = RepoStats {
            code: code.into(),
            lastCheck: "1.5".into(),
            delay: delay.clone(),
            valid: false,
            version: 5,
            acquired: false,
            actual: true,
        };
        let repo_map: BTreeMap<String, RepoStats> = [("sd".to_string(), repo.clone())].into();
        assert_eq!(typed(&repo_map), text(json!({"sd": old_repo})));
        for (total, free) in [(Some(2u64), Some(1u64)), (None, None)] {
            let mut old = old_repo.clone();
            old["disktotal"] = json!(total.map(|x| x.to_string()));
            old["diskfree"] = json!(free.map(|x| x.to_string()));
            let new = HostStats {
                storageDomains: [(
                    "sd".to_string(),
                    DomainHostStats::new(
                        repo.clone(),
                        total.map(|x| x.to_string()),
                        free.map(|x| x.to_string()),
                    ),
                )]
                .into(),
            };
            assert_eq!(typed(&new), text(json!({"storageDomains": {"sd": old}})));
        }

        // Volume.getInfo.
        let (generation, sequence): (u32, u32) = (4, 1);
        let old_vol = json!({
            "uuid": "v", "image": "i", "domain": "d", "pool": "", "parent": "p",
            "children": vec!["c".to_string()], "format": "COW", "voltype": "LEAF",
            "type": "SPARSE", "allocType": "SPARSE", "disktype": "DATA",
            "description": "x", "legality": "ILLEGAL", "status": "ILLEGAL",
            "capacity": "1", "apparentsize": "2", "truesize": "3", "ctime": "4",
            "mtime": "5", "generation": generation, "sequence": sequence,
        });
        let new_vol = VolumeInfo {
            uuid: "v".into(),
            image: "i".into(),
            domain: "d".into(),
            pool: "".into(),
            parent: "p".into(),
            children: vec!["c".into()],
            format: "COW".into(),
            voltype: "LEAF".into(),
            r#type: "SPARSE".into(),
            allocType: "SPARSE".into(),
            disktype: "DATA".into(),
            description: "x".into(),
            legality: "ILLEGAL".into(),
            status: "ILLEGAL".into(),
            capacity: "1".into(),
            apparentsize: "2".into(),
            truesize: "3".into(),
            ctime: "4".into(),
            mtime: "5".into(),
            generation,
            sequence,
            lease: None,
        };
        assert_eq!(typed(&new_vol), text(old_vol));

        // Image.prepare.
        let path = "/run/depot/storage/sd/img/leaf".to_string();
        let chain = vec![json!({
            "domainID": "sd", "imageID": "img", "volumeID": "base",
            "path": "/run/depot/storage/sd/img/base",
            "leasePath": "/run/depot/storage/sd/img/base.lease", "leaseOffset": 0,
        })];
        let old_prep =
            json!({"path": path, "info": {"type": "file", "path": path}, "imgVolumesInfo": chain});
        let new_prep = PreparedImage {
            path: path.clone(),
            info: PreparedPath {
                r#type: "file".into(),
                path: path.clone(),
            },
            imgVolumesInfo: vec![PreparedVolume {
                domainID: "sd".into(),
                imageID: "img".into(),
                volumeID: "base".into(),
                path: "/run/depot/storage/sd/img/base".into(),
                leasePath: "/run/depot/storage/sd/img/base.lease".into(),
                leaseOffset: 0,
            }],
        };
        assert_eq!(typed(&new_prep), text(old_prep));

        // StorageDomain.getFileStats: readable and not.
        let unreadable = Code::StorageServerAccessPermissionError.number();
        let old_files = json!({
            "b.iso": {"size": "1", "ctime": "2", "status": 0},
            "a.iso": {"size": "3", "ctime": "4", "status": unreadable},
        });
        let new_files: BTreeMap<String, FileStat> = [
            ("b.iso".to_string(), file_stat("1", "2", 0)),
            ("a.iso".to_string(), file_stat("3", "4", unreadable.into())),
        ]
        .into();
        assert_eq!(typed(&new_files), text(old_files));

        // StorageDomain.getOvfEntities (the store's own bytes are checked
        // in storage_api's tests) and getOvfEntity, parsed and not.
        let store = OvfStore {
            imageID: "i".into(),
            volumeID: "v".into(),
            state: "unknown".into(),
            valid: false,
            size: None,
            description: "".into(),
            generation: None,
            sha256: None,
            updated: None,
            reason: None,
        };
        let old_store = json!({"imageID": "i", "volumeID": "v", "state": "unknown",
            "valid": false, "size": None::<u64>, "description": ""});
        let old_entities = json!({
            "store": old_store,
            "entities": vec![json!({"id": "e", "name": "vm", "type": "VM",
                "images": vec![json!({"imageID": "i", "volumeID": "v", "present": false})],
                "complete": false})],
            "errors": vec![json!({"entry": "x.ovf", "error": "bad"})],
        });
        let new_entities = OvfEntities {
            store,
            entities: vec![OvfEntitySummary {
                id: "e".into(),
                name: "vm".into(),
                r#type: "VM".into(),
                images: vec![OvfImageRef {
                    imageID: "i".into(),
                    volumeID: "v".into(),
                    present: false,
                }],
                complete: false,
            }],
            errors: vec![OvfEntryError {
                entry: "x.ovf".into(),
                error: "bad".into(),
            }],
        };
        assert_eq!(typed(&new_entities), text(old_entities));
        for parsed in [Some(("vm", "VM")), None] {
            let old = json!({
                "id": "e",
                "name": parsed.map(|p| p.0.to_string()),
                "type": parsed.map(|p| p.1),
                "ovf": "<ovf/>",
            });
            let new = OvfEntityText {
                id: "e".into(),
                name: parsed.map(|p| p.0.into()),
                r#type: parsed.map(|p| p.1.into()),
                ovf: "<ovf/>".into(),
            };
            assert_eq!(typed(&new), text(old));
        }
    }

    fn file_stat(size: &str, ctime: &str, status: i64) -> depot_api::results::FileStat {
        depot_api::results::FileStat {
            size: size.into(),
            ctime: ctime.into(),
            status,
        }
    }

    /// A typed result's bytes, through [`wire`] as the router sends them.
    mod erased {
        pub trait Wire {
            fn bytes(&self) -> String;
        }
        impl<T: serde::Serialize + Clone> Wire for T {
            fn bytes(&self) -> String {
                super::wire(Ok(self.clone())).unwrap().to_string()
            }
        }
    }

    /// depot serves block domains on iSCSI and FC LUNs as well as the file
    /// types; the engine reads which from here.
    #[test]
    fn capabilities_name_the_file_and_the_san_types() {
        let caps = capabilities(SanlockCapability::default());
        assert_eq!(
            caps.storage_domain_types,
            ["NFS", "LOCALFS", "POSIXFS", "GLUSTERFS", "ISCSI", "FCP"]
        );
        let with_sizes: Vec<&String> = caps.supported_block_size.keys().collect();
        let mut types: Vec<&String> = caps.storage_domain_types.iter().collect();
        types.sort();
        assert_eq!(with_sizes, types, "block sizes for every type served");
        for san in ["ISCSI", "FCP"] {
            assert_eq!(caps.supported_block_size[san], [512], "{san}");
        }
        assert_eq!(caps.supported_block_size["NFS"], [0, 512, 4096]);
    }
}
