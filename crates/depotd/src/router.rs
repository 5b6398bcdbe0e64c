//! Maps each typed [`Call`] to the service that does the work, and the
//! service's typed answer back to the wire value. Nothing else happens here:
//! no validation beyond what the wire types enforce, no storage logic.

use depot_api::storage::{DomainType, ImgUuid, MoveOperation, SpUuid};
use depot_api::types::{Capabilities, JobType};
use depot_api::{params, ApiError, Call, Code};
use depot_jobs::{JobManager, SLEEP_KIND};
use depot_storage::Storage;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::call::CallCtx;
use crate::storage_api::{self as st, blocking};
use crate::storage_jobs;
use crate::tasks::{verb, Tasks};

#[derive(Clone)]
pub struct Router {
    jobs: JobManager,
    storage: Arc<Storage>,
    tasks: Arc<Tasks>,
    /// `daemon.test_verbs`: whether `Host.sleepJob` exists.
    test_verbs: bool,
}

impl Router {
    pub fn new(
        jobs: JobManager,
        storage: Arc<Storage>,
        tasks: Arc<Tasks>,
        test_verbs: bool,
    ) -> Self {
        Router {
            jobs,
            storage,
            tasks,
            test_verbs,
        }
    }

    pub async fn dispatch(&self, call: Call, ctx: &CallCtx) -> Result<Value, ApiError> {
        let s = &self.storage;
        let done = |r: Result<(), ApiError>| r.map(|()| Value::Bool(true));
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
                    "events need a WebSocket connection (over STOMP: SUBSCRIBE to jms.queue.events)",
                )),
            },
            Call::HostSleepJob(p) if self.test_verbs => self.sleep_job(p).await,
            // Without test verbs the verb does not exist, in the words
            // of any unknown method.
            Call::HostSleepJob(_) => Err(ApiError::new(Code::MethodNotFound, "'Host.sleepJob'")),
            Call::StoragePoolConnectStorageServer(p) => st::connect(s, p).await,
            Call::StoragePoolDisconnectStorageServer(p) => st::disconnect(s, p).await,
            Call::HostGetStorageDomains(p) => st::get_storage_domains(s, p).await,
            Call::IscsiConnectionDiscoverSendTargets(p) => st::discover_send_targets(s, p).await,
            Call::HostGetDeviceList(p) => st::get_device_list(s, p).await,
            Call::HostGetDevicesVisibility(p) => st::devices_visibility(s, p).await,
            Call::StorageDomainCreate(p) => st::create_domain(s, p).await,
            Call::LvmVolumeGroupCreate(p) => st::create_vg(s, p).await,
            Call::LvmVolumeGroupGetInfo(p) => st::vg_info(s, p.lvmvolumegroupID).await,
            Call::LvmVolumeGroupRemove(p) => {
                let uuid = p.lvmvolumegroupID;
                done(blocking(s, move |s| s.remove_vg(&uuid)).await)
            }
            Call::HostGetLvmVolumeGroups(_) => st::list_vgs(s).await,
            Call::StorageDomainExtend(p) => {
                let (sd, devs, force) = (p.storagedomainID, p.devlist, p.force.unwrap_or(false));
                done(blocking(s, move |s| s.extend_domain(sd, &devs, force)).await)
            }
            Call::StorageDomainResizePv(p) => {
                let (sd, guid) = (p.storagedomainID, p.guid);
                let size = blocking(s, move |s| s.resize_pv(sd, &guid)).await?;
                // The bare size, as VDSM's Bridge answers (its 'size' key);
                // the engine reads the result as that string.
                Ok(Value::String(size.to_string()))
            }
            Call::StorageDomainGetInfo(p) => st::domain_info(s, p.storagedomainID).await,
            Call::StorageDomainGetStats(p) => st::domain_stats(s, p.storagedomainID).await,
            Call::StorageDomainSetDescription(p) => {
                let (sd, d) = (p.storagedomainID, p.description);
                done(blocking(s, move |s| s.set_domain_description(sd, d)).await)
            }
            Call::StorageDomainSetBackup(p) => {
                let (sd, b) = (p.storagedomainID, p.backup);
                done(blocking(s, move |s| s.set_backup(sd, b)).await)
            }
            Call::StorageDomainGetOvfStores(p) => st::ovf_stores(s, p.storagedomainID).await,
            Call::StorageDomainGetOvfEntities(p) => st::ovf_entities(s, p.storagedomainID).await,
            Call::StorageDomainGetOvfEntity(p) => {
                st::ovf_entity(s, p.storagedomainID, p.entityID).await
            }
            Call::TaskGetStatus(p) => self.tasks.status(&self.jobs, p.taskID),
            Call::TaskGetInfo(p) => self.tasks.info(&self.jobs, p.taskID),
            Call::TaskClear(p) => {
                // A stream task's file is removed: off the runtime.
                let (tasks, jobs, id) = (self.tasks.clone(), self.jobs.clone(), p.taskID);
                tokio::task::spawn_blocking(move || tasks.clear(&jobs, id))
                    .await
                    .map_err(|e| ApiError::new(Code::InternalError, e.to_string()))?
                    .map(|()| Value::Bool(true))
            }
            Call::HostGetAllTasksStatuses(_) => Ok(self.tasks.all(&self.jobs)),
            Call::HostGetAllTasksInfo(_) => Ok(self.tasks.all_info(&self.jobs)),
            Call::SdmCopyData(p) => self.copy_data(p).await,
            Call::SdmUpdateVolume(p) => {
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
            Call::ImageMove(p) => {
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
                Ok(Value::String(id.to_string()))
            }
            Call::VolumeGetChecksum(p) => {
                let spec = storage_jobs::spec(&storage_jobs::VolSpec {
                    sd: p.storagedomainID,
                    img: p.imageID,
                    vol: p.volumeID,
                });
                self.start_job(p.job_id, storage_jobs::CHECKSUM, spec).await
            }
            Call::StorageDomainValidate(p) => {
                let sd = p.storagedomainID;
                done(blocking(s, move |s| s.validate_domain(sd)).await)
            }
            Call::StorageDomainFormat(p) => {
                let (sd, auto) = (p.storagedomainID, p.autoDetach.unwrap_or(false));
                done(blocking(s, move |s| s.format_domain(sd, auto)).await)
            }
            Call::StorageDomainGetImages(p) => st::get_images(s, p.storagedomainID).await,
            Call::StorageDomainGetVolumes(p) => st::get_volumes(s, p).await,
            Call::StorageDomainGetFileStats(p) => st::file_stats(s, p).await,
            Call::StoragePoolCreate(p) => st::create_pool(s, p).await,
            Call::StoragePoolConnect(p) => st::connect_pool(s, p).await,
            Call::StoragePoolDisconnect(p) => {
                let sp = p.storagepoolID;
                done(blocking(s, move |s| s.disconnect_pool(sp)).await)
            }
            Call::StoragePoolGetInfo(p) => st::pool_info(s, p.storagepoolID).await,
            Call::StorageDomainAttach(p) => {
                let (sd, sp) = (p.storagedomainID, p.storagepoolID);
                done(blocking(s, move |s| s.attach(sd, sp)).await)
            }
            Call::StorageDomainDetach(p) => {
                let (sd, sp, force) =
                    (p.storagedomainID, p.storagepoolID, p.force.unwrap_or(false));
                done(blocking(s, move |s| s.detach(sd, sp, force)).await)
            }
            Call::StorageDomainActivate(p) => {
                let (sd, sp) = (p.storagedomainID, p.storagepoolID);
                done(blocking(s, move |s| s.activate(sd, sp)).await)
            }
            Call::StorageDomainDeactivate(p) => {
                let (sd, sp, m, v) = (
                    p.storagedomainID,
                    p.storagepoolID,
                    p.masterSdUUID,
                    p.masterVersion,
                );
                done(blocking(s, move |s| s.deactivate(sd, sp, m, v)).await)
            }
            Call::VolumeCreate(p) => {
                st::create_volume(s, p).await?;
                Ok(self.tasks.finished(verb::CREATE_VOLUME))
            }
            Call::VolumeGetInfo(p) => st::volume_info(s, p).await,
            Call::VolumeGetSize(p) => st::volume_size(s, p).await,
            Call::VolumeDelete(p) => {
                let (sd, img, vol) = (p.storagedomainID, p.imageID, p.volumeID);
                let (zero, force) = (p.postZero.unwrap_or(false), p.force.unwrap_or(false));
                blocking(s, move |s| s.delete_volume(sd, img, vol, zero, force)).await?;
                Ok(self.tasks.finished(verb::DELETE_VOLUME))
            }
            Call::VolumeSetDescription(p) => {
                let (sd, img, vol, d) = (p.storagedomainID, p.imageID, p.volumeID, p.description);
                done(blocking(s, move |s| s.set_volume_description(sd, img, vol, d)).await)
            }
            Call::VolumeSetLegality(p) => {
                let (sd, img, vol, l) = (p.storagedomainID, p.imageID, p.volumeID, p.legality);
                done(blocking(s, move |s| s.set_volume_legality(sd, img, vol, l)).await)
            }
            Call::VolumeExtendSize(p) => {
                let (sd, img, vol, size) = (p.storagedomainID, p.imageID, p.volumeID, p.newSize.0);
                blocking(s, move |s| s.extend_volume(sd, img, vol, size)).await?;
                Ok(self.tasks.finished(verb::EXTEND_VOLUME_SIZE))
            }
            Call::ImageDelete(p) => {
                let (sd, img) = (p.storagedomainID, p.imageID);
                let (zero, force) = (p.postZero.unwrap_or(false), p.force.unwrap_or(false));
                blocking(s, move |s| s.delete_image(sd, img, zero, force)).await?;
                Ok(self.tasks.finished(verb::DELETE_IMAGE))
            }
            Call::ImagePrepare(p) => st::prepare(s, p).await,
            Call::ImageTeardown(p) => {
                let (sd, img): (_, ImgUuid) = (p.storagedomainID, p.imageID);
                let _ = SpUuid(p.storagepoolID);
                done(blocking(s, move |s| s.teardown_image(sd, img)).await)
            }
            Call::HostGetStorageRepoStats(p) => st::repo_stats(s, p.domains).await,
            Call::HostGetStats(_) => st::host_stats(s).await,
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

    async fn start_job(
        &self,
        id: depot_api::types::JobId,
        kind: &str,
        spec: Value,
    ) -> Result<Value, ApiError> {
        self.jobs
            .start(id, kind, JobType::Storage, spec)
            .await
            .map(|()| Value::Bool(true))
    }

    async fn copy_data(&self, p: params::SdmCopyData) -> Result<Value, ApiError> {
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

/// The storage part of VDSM's capabilities: what this build can do.
pub fn capabilities() -> Capabilities {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// depot serves block domains on iSCSI and FC LUNs as well as the file
    /// types; the engine reads which from here.
    #[test]
    fn capabilities_name_the_file_and_the_san_types() {
        let caps = capabilities();
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
