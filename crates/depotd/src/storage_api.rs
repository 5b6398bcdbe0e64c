//! The storage verbs: typed calls to `depot_storage::Storage` on blocking
//! threads (storage calls do file I/O that can hang), and the typed answers
//! back to VDSM's wire shapes. No storage logic here.

use std::collections::BTreeMap;
use std::sync::Arc;

use depot_api::catalogue::returns;
use depot_api::results::{
    BlockDeviceInfo, ConnectionStatus, DomainHostStats, DomainInfo, DomainStats, Done, FileStat,
    HostLiveness, HostStats, JobMetadata, LeaseInfo, LeaseStatus, OvfEntities, OvfEntitySummary,
    OvfEntityText, OvfEntryError, OvfImageRef, OvfStore, PathInfo, PathStatus, PoolDetails,
    PoolDomainInfo, PoolInfo, PreparedImage, PreparedPath, PreparedVolume, PvInfo, RepoStats,
    SpmStatus, VgAttr, VolumeGroupInfo, VolumeInfo, VolumeLeaseStatus, VolumeSize,
};
use depot_api::storage::{ConnectionDict, ConnectionList, DomainType, ImgUuid, SdUuid, SpUuid};
use depot_api::types::Uuid;
use depot_api::{params, ApiError, Code};
use depot_storage::connection::ConnectionParams;
use depot_storage::devices::{BlockDevice, TypeFilter};
use depot_storage::engine::{PoolDomainStatus, SpmRole, Storage};
use depot_storage::CreateDomain;
use depot_storage::StorageResult;
use serde_json::{Map, Value};

/// Runs a storage call on a blocking thread.
pub async fn blocking<T: Send + 'static>(
    storage: &Arc<Storage>,
    f: impl FnOnce(&Storage) -> StorageResult<T> + Send + 'static,
) -> Result<T, ApiError> {
    let s = storage.clone();
    match tokio::task::spawn_blocking(move || f(&s)).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::new(
            Code::InternalError,
            format!("storage call panicked: {e}"),
        )),
    }
}

/// `true` once `call` returned: the answer of every verb whose schema
/// returns nothing.
async fn done(
    storage: &Arc<Storage>,
    call: impl FnOnce(&Storage) -> StorageResult<()> + Send + 'static,
) -> Result<Done, ApiError> {
    blocking(storage, call).await.map(|()| Done)
}

// ---- connections ----

fn connection_params(dict: &ConnectionDict) -> Result<ConnectionParams, String> {
    let num = |name: &str, v: &Option<String>| -> Result<Option<i64>, String> {
        v.as_deref()
            .map(|s| {
                s.trim()
                    .parse::<i64>()
                    .map_err(|_| format!("{name} {s:?} is not a number"))
            })
            .transpose()
    };
    Ok(ConnectionParams {
        id: dict.id.clone().unwrap_or_default(),
        connection: dict.connection.clone().unwrap_or_default(),
        vfs_type: dict.vfs_type.clone().filter(|s| !s.is_empty()),
        mnt_options: dict.mnt_options.clone().filter(|s| !s.is_empty()),
        protocol_version: dict.protocol_version.clone().filter(|s| !s.is_empty()),
        timeout: num("timeout", &dict.timeout)?,
        retrans: num("retrans", &dict.retrans)?,
        port: num("port", &dict.port)?,
        iqn: dict.iqn.clone().filter(|s| !s.is_empty()),
        tpgt: num("tpgt", &dict.tpgt)?,
        user: dict.user.clone().filter(|s| !s.is_empty()),
        password: dict
            .password
            .as_ref()
            .filter(|p| !p.expose().is_empty())
            .map(|p| depot_os::Secret::new(p.expose())),
        iface: dict.iface.clone().filter(|s| !s.is_empty()),
    })
}

/// One status per entry, in order; a malformed entry fails alone. The
/// well-formed entries go to storage in one call, so SAN logins can run in
/// parallel.
async fn per_connection(
    storage: &Arc<Storage>,
    domain_type: DomainType,
    list: ConnectionList,
    connect: bool,
) -> Result<Vec<ConnectionStatus>, ApiError> {
    let mut out: Vec<Option<ConnectionStatus>> = Vec::new();
    let mut valid = Vec::new();
    for entry in list.0 {
        let parsed = entry.and_then(|d| connection_params(&d).map_err(|m| (d.id.clone(), m)));
        match parsed {
            Err((id, msg)) => {
                tracing::warn!(id = id.as_deref().unwrap_or("-"), error = %msg, "bad connection entry");
                out.push(Some(ConnectionStatus {
                    id: id.unwrap_or_default(),
                    status: Code::InvalidParameterException.number().into(),
                }));
            }
            Ok(p) => {
                out.push(None);
                valid.push(p);
            }
        }
    }
    let statuses = blocking(storage, move |s| {
        Ok(if connect {
            s.connect_storage_server(domain_type, &valid)
        } else {
            s.disconnect_storage_server(domain_type, &valid)
        })
    })
    .await?;
    let mut statuses = statuses.into_iter();
    Ok(out
        .into_iter()
        .map(|slot| {
            slot.unwrap_or_else(|| match statuses.next() {
                Some(st) => ConnectionStatus {
                    id: st.id,
                    status: st.status.into(),
                },
                None => ConnectionStatus {
                    id: String::new(),
                    status: Code::InternalError.number().into(),
                },
            })
        })
        .collect())
}

pub async fn connect(
    storage: &Arc<Storage>,
    p: params::StoragePoolConnectStorageServer,
) -> Result<returns::StoragePoolConnectStorageServer, ApiError> {
    per_connection(storage, p.domainType, p.connectionParams, true).await
}

pub async fn disconnect(
    storage: &Arc<Storage>,
    p: params::StoragePoolDisconnectStorageServer,
) -> Result<returns::StoragePoolDisconnectStorageServer, ApiError> {
    per_connection(storage, p.domainType, p.connectionParams, false).await
}

// ---- SAN: discovery and devices ----

pub async fn discover_send_targets(
    storage: &Arc<Storage>,
    p: params::IscsiConnectionDiscoverSendTargets,
) -> Result<returns::IscsiConnectionDiscoverSendTargets, ApiError> {
    let password = p.password.map(|pw| depot_os::Secret::new(pw.expose()));
    let targets = blocking(storage, move |s| {
        s.discover_send_targets(
            &p.host,
            p.port.0,
            p.user.as_deref(),
            password,
            p.ipv6_enabled.unwrap_or(false),
        )
    })
    .await?;
    // VDSM's wire value is the fullTargets list: "host:port,tpgt iqn".
    Ok(targets.iter().map(|t| t.to_string()).collect())
}

pub async fn get_device_list(
    storage: &Arc<Storage>,
    p: params::HostGetDeviceList,
) -> Result<returns::HostGetDeviceList, ApiError> {
    let filter = match p.storageType {
        Some(DomainType::Iscsi) => TypeFilter::Iscsi,
        Some(DomainType::Fcp) => TypeFilter::Fcp,
        // VDSM lists everything for other types too.
        _ => TypeFilter::All,
    };
    let guids = p.guids.unwrap_or_default();
    let check = p.checkStatus.unwrap_or(true);
    let refresh = p.refresh.unwrap_or(true);
    let devs = blocking(storage, move |s| {
        s.device_list(filter, &guids, check, refresh)
    })
    .await?;
    Ok(devs.iter().map(block_device).collect())
}

/// VDSM's BlockDeviceInfo of a device.
fn block_device(d: &BlockDevice) -> BlockDeviceInfo {
    let pathlist = d
        .sessions
        .iter()
        .map(|s| PathInfo {
            connection: s.connection.clone(),
            port: s.port.to_string(),
            iqn: s.iqn.clone(),
            portal: s.tpgt.to_string(),
            initiatorname: s.iface.clone(),
            // VDSM adds user and password; depot never returns a secret.
            user: s.user.clone(),
        })
        .collect();
    let pathstatus = d
        .paths
        .iter()
        .map(|p| PathStatus {
            physdev: p.physdev.clone(),
            // A path dmsetup does not list is not usable: VDSM says failed.
            state: p.state.map(|s| s.as_str()).unwrap_or("failed").into(),
            capacity: p.capacity.to_string(),
            lun: p.lun.to_string(),
            r#type: p.dev_type.as_str().into(),
        })
        .collect();
    BlockDeviceInfo {
        GUID: d.guid.clone(),
        capacity: d.capacity.to_string(),
        devtype: d.dev_type.map(|t| t.as_str()).unwrap_or("").into(),
        vendorID: d.vendor.clone(),
        productID: d.product.clone(),
        fwrev: d.fwrev.clone(),
        serial: d.serial.clone(),
        logicalblocksize: d.logical_block_size.to_string(),
        physicalblocksize: d.physical_block_size.to_string(),
        pathlist,
        pathstatus,
        pvUUID: d.pv.as_ref().map(|p| p.pv_uuid.clone()).unwrap_or_default(),
        pvsize: d
            .pv
            .as_ref()
            .map(|p| p.pv_size.to_string())
            .unwrap_or_default(),
        vgUUID: d.pv.as_ref().map(|p| p.vg_uuid.clone()).unwrap_or_default(),
        status: d.status.as_str().into(),
        partitioned: d.partitioned,
        discard_max_bytes: d.discard_max_bytes,
        discard_zeroes_data: 0,
    }
}

pub async fn devices_visibility(
    storage: &Arc<Storage>,
    p: params::HostGetDevicesVisibility,
) -> Result<returns::HostGetDevicesVisibility, ApiError> {
    let guids = p.guidList;
    let seen = blocking(storage, move |s| s.devices_visibility(&guids)).await?;
    Ok(seen.into_iter().collect())
}

pub async fn get_storage_domains(
    storage: &Arc<Storage>,
    p: params::HostGetStorageDomains,
) -> Result<returns::HostGetStorageDomains, ApiError> {
    let pool = p.storagepoolID.map(SpUuid);
    let found = blocking(storage, move |s| {
        Ok(s.find_domains(pool, p.domainClass, p.storageType, p.remotePath.as_deref()))
    })
    .await?;
    Ok(found.iter().map(|sd| sd.to_string()).collect())
}

// ---- domains ----

pub async fn create_domain(
    storage: &Arc<Storage>,
    p: params::StorageDomainCreate,
) -> Result<returns::StorageDomainCreate, ApiError> {
    let block_size = match p.blockSize.unwrap_or(512) {
        0 => None,
        512 => Some(512),
        4096 => Some(4096),
        other => {
            return Err(ApiError::new(
                Code::InvalidParameterException,
                format!("blockSize={other} (512, 4096, or 0 to detect)"),
            ))
        }
    };
    let max_hosts = match p.maxHosts.unwrap_or(2000) {
        n @ 1..=2000 => n as u32,
        other => {
            return Err(ApiError::new(
                Code::InvalidParameterException,
                format!("maxHosts={other} (1..2000)"),
            ))
        }
    };
    let req = CreateDomain {
        sd: p.storagedomainID,
        domain_type: p.domainType,
        class: p.domainClass,
        description: p.name,
        remote_path: p.typeArgs,
        block_size,
        max_hosts,
        backup: p.backup.unwrap_or(false),
    };
    let version = p.version.unwrap_or(5);
    done(storage, move |s| s.create_domain(req, version)).await
}

pub async fn domain_info(
    storage: &Arc<Storage>,
    sd: SdUuid,
) -> Result<returns::StorageDomainGetInfo, ApiError> {
    let (info, block) = blocking(storage, move |s| {
        let info = s.domain_info(sd)?;
        let block = match info.domain.is_block() {
            true => Some(s.block_domain_info(sd)?),
            false => None,
        };
        Ok((info, block))
    })
    .await?;
    let md = &info.metadata;
    // VDSM's blockSD.getInfo adds the block keys; the engine reads
    // vguuid when it imports a block domain.
    let state = |b: &depot_storage::block::BlockDomainInfo| match b.partial {
        true => "PARTIAL".to_string(),
        false => "OK".to_string(),
    };
    Ok(DomainInfo {
        uuid: md.sd_uuid.to_string(),
        name: md.description.clone(),
        r#type: md.domain_type.name().into(),
        class: md.class.name().into(),
        role: md.role.name().into(),
        pool: md.attached_pools().iter().map(|p| p.to_string()).collect(),
        version: md.version.to_string(),
        master_ver: md.master_version.unwrap_or(0),
        lver: -1,
        spm_id: -1,
        remotePath: md.remote_path.clone(),
        block_size: md.block_size,
        alignment: md.alignment,
        backup: md.backup,
        vguuid: block.as_ref().map(|b| b.vg_uuid.clone()),
        state: block.as_ref().map(state),
        metadataDevice: block.as_ref().map(|b| b.metadata_device.clone()),
        vgMetadataDevice: block.and_then(|b| b.vg_metadata_device),
    })
}

pub async fn domain_stats(
    storage: &Arc<Storage>,
    sd: SdUuid,
) -> Result<returns::StorageDomainGetStats, ApiError> {
    let stats = blocking(storage, move |s| s.domain_stats(sd)).await?;
    // VDSM sends sizes as decimal strings; mda* are block-domain figures,
    // reported as VDSM does for file domains.
    Ok(DomainStats {
        disktotal: stats.total_bytes.to_string(),
        diskfree: stats.free_bytes.to_string(),
        mdasize: 0,
        mdafree: 0,
        mdavalid: true,
        mdathreshold: true,
    })
}

// ---- pools ----

pub async fn create_pool(
    storage: &Arc<Storage>,
    p: params::StoragePoolCreate,
) -> Result<returns::StoragePoolCreate, ApiError> {
    let others = p.domainList.unwrap_or_default();
    done(storage, move |s| {
        s.create_pool(
            p.storagepoolID,
            p.name,
            p.masterSdUUID,
            p.masterVersion,
            others,
        )
    })
    .await
}

pub async fn connect_pool(
    storage: &Arc<Storage>,
    p: params::StoragePoolConnect,
) -> Result<returns::StoragePoolConnect, ApiError> {
    let dict = match p.domainDict {
        None => None,
        Some(map) => Some(domain_dict(&map)?),
    };
    done(storage, move |s| {
        s.connect_pool(
            p.storagepoolID,
            p.hostID,
            p.masterSdUUID,
            p.masterVersion,
            dict,
        )
    })
    .await
}

/// `{sdUUID: "active"|"attached"}` (VDSM also accepts other case).
fn domain_dict(map: &Map<String, Value>) -> Result<BTreeMap<SdUuid, PoolDomainStatus>, ApiError> {
    let bad =
        |d: String| ApiError::new(Code::InvalidParams, format!("parameter 'domainDict': {d}"));
    map.iter()
        .map(|(k, v)| {
            let sd: SdUuid = k.parse().map_err(|e| bad(format!("{e}")))?;
            let status = match v.as_str().map(str::to_ascii_lowercase).as_deref() {
                Some("active") => PoolDomainStatus::Active,
                Some("attached") => PoolDomainStatus::Attached,
                _ => {
                    return Err(bad(format!(
                        "status of {sd} must be \"active\" or \"attached\", not {v}"
                    )))
                }
            };
            Ok((sd, status))
        })
        .collect()
}

pub async fn pool_info(
    storage: &Arc<Storage>,
    sp: SpUuid,
) -> Result<returns::StoragePoolGetInfo, ApiError> {
    let (pool, master_type, doms) = blocking(storage, move |s| {
        let pool = s.pool(sp)?;
        // VDSM reports the master's type as the pool's (sp.py getInfo).
        let master_type = s.domain_info(pool.master)?.metadata.domain_type;
        let doms: Vec<_> = pool
            .domains
            .iter()
            .map(|(sd, status)| (*sd, *status, s.health(*sd)))
            .collect();
        Ok((pool, master_type, doms))
    })
    .await?;
    let dominfo = doms
        .iter()
        .map(|(sd, status, health)| {
            // As VDSM (hsm._getDomsStats): the sizes only when the monitor
            // knows both, never null.
            let sizes = health
                .as_ref()
                .and_then(|h| Some((h.disk_free?, h.disk_total?)));
            let d = PoolDomainInfo {
                status: status.name().into(),
                alerts: Vec::new(),
                version: 5,
                isoprefix: String::new(),
                diskfree: sizes.map(|(free, _)| free.to_string()),
                disktotal: sizes.map(|(_, total)| total.to_string()),
            };
            (sd.to_string(), d)
        })
        .collect();
    let domains = doms
        .iter()
        .map(|(sd, status, _)| format!("{sd}:{}", status.name()))
        .collect::<Vec<_>>()
        .join(",");
    Ok(PoolInfo {
        info: PoolDetails {
            name: pool.name,
            r#type: master_type.name().into(),
            master_uuid: pool.master.to_string(),
            master_ver: pool.master_version,
            // This host's view: itself when it is the SPM, else unknown
            // (getSpmStatus reads the lease for who holds it).
            spm_id: match pool.spm.role {
                SpmRole::Spm => pool.host_id.unwrap_or(-1),
                _ => -1,
            },
            lver: pool.spm.lver.map_or(-1, |v| v as i64),
            domains,
            pool_status: "connected".into(),
            version: "5".into(),
            isoprefix: String::new(),
        },
        dominfo,
    })
}

// ---- health ----

/// VDSM's repoStats entry of one domain.
pub fn repo_stats_entry(h: &depot_storage::monitor::DomainHealth) -> RepoStats {
    RepoStats {
        code: h.code.into(),
        lastCheck: h.last_check_str(std::time::Instant::now()),
        delay: h.delay_str(),
        valid: h.valid,
        version: h.version.unwrap_or(5),
        acquired: h.acquired,
        actual: h.actual,
    }
}

pub async fn repo_stats(
    storage: &Arc<Storage>,
    only: Option<Vec<SdUuid>>,
) -> Result<returns::HostGetStorageRepoStats, ApiError> {
    let all = blocking(storage, move |s| Ok(s.repo_stats(only.as_deref()))).await?;
    Ok(all
        .iter()
        .map(|(sd, h)| (sd.to_string(), repo_stats_entry(h)))
        .collect())
}

pub async fn host_stats(storage: &Arc<Storage>) -> Result<returns::HostGetStats, ApiError> {
    let all = blocking(storage, move |s| Ok(s.repo_stats(None))).await?;
    let domains = all
        .iter()
        .map(|(sd, h)| {
            let sizes = DomainHostStats::new(
                repo_stats_entry(h),
                h.disk_total.map(|x| x.to_string()),
                h.disk_free.map(|x| x.to_string()),
            );
            (sd.to_string(), sizes)
        })
        .collect();
    Ok(HostStats {
        storageDomains: domains,
    })
}

// ---- volumes and images ----

/// `imageID` of getVolumes: the blank UUID means the whole domain.
fn image_or_all(img: Uuid) -> Option<depot_api::storage::ImgUuid> {
    (img != Uuid::nil()).then_some(depot_api::storage::ImgUuid(img))
}

pub async fn get_volumes(
    storage: &Arc<Storage>,
    p: params::StorageDomainGetVolumes,
) -> Result<returns::StorageDomainGetVolumes, ApiError> {
    let img = image_or_all(p.imageID);
    let sd = p.storagedomainID;
    let vols = blocking(storage, move |s| s.list_volumes(sd, img)).await?;
    Ok(vols.iter().map(|v| v.to_string()).collect())
}

pub async fn get_images(
    storage: &Arc<Storage>,
    sd: SdUuid,
) -> Result<returns::StorageDomainGetImages, ApiError> {
    let imgs = blocking(storage, move |s| s.list_images(sd)).await?;
    Ok(imgs.iter().map(|v| v.to_string()).collect())
}

pub async fn create_volume(
    storage: &Arc<Storage>,
    p: params::VolumeCreate,
) -> Result<(), ApiError> {
    // A base volume has the blank parent; a layer names its parent in the
    // same image (cross-image templates are not supported yet).
    let parent = depot_api::storage::VolUuid(p.srcVolUUID);
    if !parent.is_blank() && p.srcImgUUID != p.imageID.0 {
        return Err(ApiError::new(
            Code::InvalidParameterException,
            format!("srcImgUUID={} (a parent must be in the same image; templates in other images are not supported yet)", p.srcImgUUID),
        ));
    }
    let sequence = match p.sequence.unwrap_or(0) {
        n if n <= u64::from(u32::MAX) => n as u32,
        n => {
            return Err(ApiError::new(
                Code::InvalidParameterException,
                format!("sequence={n}"),
            ))
        }
    };
    let req = depot_storage::CreateVolume {
        capacity: p.size.0,
        format: p.volFormat,
        alloc: p.preallocate,
        disk_type: p.diskType,
        description: p.desc,
        parent,
        legal: p.legal.unwrap_or(true),
        sequence,
    };
    let (sd, img, vol) = (p.storagedomainID, p.imageID, p.volumeID);
    blocking(storage, move |s| s.create_volume(sd, img, vol, req))
        .await
        .map(|_| ())
}

pub async fn volume_info(
    storage: &Arc<Storage>,
    p: params::VolumeGetInfo,
) -> Result<returns::VolumeGetInfo, ApiError> {
    let (sd, img, vol) = (p.storagedomainID, p.imageID, p.volumeID);
    let (info, lease) = blocking(storage, move |s| s.volume_info_with_lease(sd, img, vol)).await?;
    let md = &info.metadata;
    let status = match md.legality {
        depot_api::storage::Legality::Legal => "OK",
        _ => "ILLEGAL",
    };
    // `lease` as VDSM's getInfo: absent without volume leases; path and
    // offset, with owners and version when the daemon could read it.
    let lease = lease.map(|l| VolumeLeaseStatus {
        path: l.path.display().to_string(),
        offset: l.offset,
        owners: l.status.as_ref().map(|s| s.owners.clone()),
        version: l.status.map(|s| s.version),
    });
    Ok(VolumeInfo {
        uuid: vol.to_string(),
        image: md.image.to_string(),
        domain: md.domain.to_string(),
        pool: p.storagepoolID.map(|u| u.to_string()).unwrap_or_default(),
        parent: md.parent.to_string(),
        children: info.children.iter().map(|c| c.to_string()).collect(),
        format: md.format.name().into(),
        voltype: md.vol_type.name().into(),
        r#type: md.alloc_type.name().into(),
        allocType: md.alloc_type.name().into(),
        disktype: md.disk_type.name().into(),
        description: md.description.clone(),
        legality: md.legality.name().into(),
        status: status.into(),
        capacity: md.capacity.to_string(),
        apparentsize: info.apparent_size.to_string(),
        truesize: info.true_size.to_string(),
        ctime: md.ctime.to_string(),
        mtime: info.mtime.to_string(),
        generation: md.generation,
        sequence: md.sequence,
        lease,
    })
}

pub async fn volume_size(
    storage: &Arc<Storage>,
    p: params::VolumeGetSize,
) -> Result<returns::VolumeGetSize, ApiError> {
    let (sd, img, vol) = (p.storagedomainID, p.imageID, p.volumeID);
    let (apparent, truesize) = blocking(storage, move |s| s.volume_size(sd, img, vol)).await?;
    Ok(VolumeSize {
        apparentsize: apparent.to_string(),
        truesize: truesize.to_string(),
    })
}

pub async fn prepare(
    storage: &Arc<Storage>,
    p: params::ImagePrepare,
) -> Result<returns::ImagePrepare, ApiError> {
    let (sp, sd, img, vol) = (
        SpUuid(p.storagepoolID),
        p.storagedomainID,
        p.imageID,
        p.volumeID,
    );
    let allow = p.allowIllegal.unwrap_or(false);
    let purpose = depot_storage::backup::PreparePurpose::parse(p.purpose.as_deref())
        .map_err(|e| ApiError::new(Code::InvalidParameterException, e))?;
    let prepared = blocking(storage, move |s| {
        s.prepare_image(sp, sd, img, vol, allow, purpose)
    })
    .await?;
    let path = prepared.path.display().to_string();
    let link_dir = prepared
        .path
        .parent()
        .map(|d| d.to_path_buf())
        .unwrap_or_default();
    let chain = prepared
        .chain
        .iter()
        .map(|v| PreparedVolume {
            domainID: sd.to_string(),
            imageID: img.to_string(),
            volumeID: v.volume.to_string(),
            path: link_dir.join(v.volume.to_string()).display().to_string(),
            leasePath: link_dir
                .join(format!("{}.lease", v.volume))
                .display()
                .to_string(),
            leaseOffset: 0,
        })
        .collect();
    Ok(PreparedImage {
        info: PreparedPath {
            r#type: "file".into(),
            path: path.clone(),
        },
        path,
        imgVolumesInfo: chain,
    })
}

pub async fn file_stats(
    storage: &Arc<Storage>,
    p: params::StorageDomainGetFileStats,
) -> Result<returns::StorageDomainGetFileStats, ApiError> {
    let (sd, pattern, case) = (
        p.storagedomainID,
        p.pattern,
        p.caseSensitive.unwrap_or(true),
    );
    let files = blocking(storage, move |s| s.file_stats(sd, &pattern, case)).await?;
    Ok(files
        .into_iter()
        .map(|f| {
            // VDSM's status: 0, or 469 when QEMU could not read it.
            let status = match f.qemu_readable {
                true => 0,
                false => Code::StorageServerAccessPermissionError.number().into(),
            };
            let stat = FileStat {
                size: f.size.to_string(),
                ctime: f.ctime.to_string(),
                status,
            };
            (f.name, stat)
        })
        .collect())
}

// ---- OVF_STORE restore verbs ----

fn ovf_store(s: &depot_storage::OvfStoreInfo) -> OvfStore {
    use depot_storage::ovf::StoreState;
    let (trailer, reason) = match &s.state {
        StoreState::Valid { trailer } => (Some(trailer), None),
        StoreState::Torn { reason, .. } => (None, Some(reason.clone())),
        StoreState::Unknown => (None, None),
    };
    OvfStore {
        imageID: s.img.to_string(),
        volumeID: s.vol.to_string(),
        state: s.state.as_str().into(),
        valid: matches!(s.state, StoreState::Valid { .. }),
        size: s.size,
        description: s.description.clone(),
        generation: trailer.map(|t| t.generation),
        sha256: trailer.map(|t| t.sha256_hex()),
        updated: trailer.map(|t| t.updated),
        reason,
    }
}

pub async fn ovf_stores(
    storage: &Arc<Storage>,
    sd: SdUuid,
) -> Result<returns::StorageDomainGetOvfStores, ApiError> {
    let stores = blocking(storage, move |s| s.ovf_stores(sd)).await?;
    Ok(stores.iter().map(ovf_store).collect())
}

pub async fn ovf_entities(
    storage: &Arc<Storage>,
    sd: SdUuid,
) -> Result<returns::StorageDomainGetOvfEntities, ApiError> {
    let listing = blocking(storage, move |s| s.ovf_entities(sd)).await?;
    let entities = listing
        .contents
        .entities
        .iter()
        .map(|e| OvfEntitySummary {
            id: e.id.to_string(),
            name: e.name.clone(),
            r#type: e.kind.as_str().into(),
            images: e
                .images
                .iter()
                .map(|(img, vol)| OvfImageRef {
                    imageID: img.to_string(),
                    volumeID: vol.to_string(),
                    present: listing.present.contains(&(*img, *vol)),
                })
                .collect(),
            complete: e.images.iter().all(|k| listing.present.contains(k)),
        })
        .collect();
    let errors = listing
        .contents
        .errors
        .iter()
        .map(|(entry, why)| OvfEntryError {
            entry: entry.clone(),
            error: why.clone(),
        })
        .collect();
    Ok(OvfEntities {
        store: ovf_store(&listing.store),
        entities,
        errors,
    })
}

pub async fn ovf_entity(
    storage: &Arc<Storage>,
    sd: SdUuid,
    id: Uuid,
) -> Result<returns::StorageDomainGetOvfEntity, ApiError> {
    let text = blocking(storage, move |s| s.ovf_entity(sd, id)).await?;
    let parsed = depot_storage::ovf::parse_ovf(id, text.as_bytes()).ok();
    Ok(OvfEntityText {
        id: id.to_string(),
        name: parsed.as_ref().map(|e| e.name.clone()),
        r#type: parsed.as_ref().map(|e| e.kind.as_str().to_string()),
        ovf: text,
    })
}

// ---- LVM volume groups (block domains) ----

/// The device (`/dev/mapper/<GUID>`) of a PV: its GUID.
fn pv_guid(p: &depot_os::lvm::PvInfo) -> String {
    p.name.rsplit('/').next().unwrap_or(&p.name).to_string()
}

/// The devices of the PVs of `reports`, by GUID. Best effort: a PV whose
/// device multipath does not list is reported without its details.
fn pv_devices(
    s: &Storage,
    reports: &[depot_storage::engine::lvm::VgReport],
) -> BTreeMap<String, BlockDevice> {
    let guids: Vec<String> = reports
        .iter()
        .flat_map(|r| r.pvs.iter().map(pv_guid))
        .collect();
    if guids.is_empty() {
        return BTreeMap::new();
    }
    match s.device_list(TypeFilter::All, &guids, false, false) {
        Ok(devs) => devs.into_iter().map(|d| (d.guid.clone(), d)).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "no device details for the PVs");
            BTreeMap::new()
        }
    }
}

/// One PV of a VG. The keys that describe its device are taken from
/// getDeviceList's, as VDSM's hsm.__fillPVDict does: the engine builds
/// its LUNs from them when it imports a block domain.
fn pv_info(p: &depot_os::lvm::PvInfo, devices: &BTreeMap<String, BlockDevice>) -> PvInfo {
    let guid = pv_guid(p);
    let dev = devices.get(&guid).map(block_device);
    PvInfo {
        pvUUID: p.uuid.clone(),
        vgUUID: p.vg_uuid.clone(),
        capacity: p.size.to_string(),
        devcapacity: p.dev_size.to_string(),
        pe_count: p.pe_count.to_string(),
        pe_alloc_count: p.pe_alloc_count.to_string(),
        vendorID: dev.as_ref().map(|d| d.vendorID.clone()),
        productID: dev.as_ref().map(|d| d.productID.clone()),
        serial: dev.as_ref().map(|d| d.serial.clone()),
        fwrev: dev.as_ref().map(|d| d.fwrev.clone()),
        devtype: dev.as_ref().map(|d| d.devtype.clone()),
        discard_max_bytes: dev.as_ref().map(|d| d.discard_max_bytes),
        discard_zeroes_data: dev.as_ref().map(|d| d.discard_zeroes_data),
        pathlist: dev.as_ref().map(|d| d.pathlist.clone()),
        pathstatus: dev.map(|d| d.pathstatus),
        GUID: guid,
    }
}

fn vg_info_of(
    r: &depot_storage::engine::lvm::VgReport,
    devices: &BTreeMap<String, BlockDevice>,
) -> VolumeGroupInfo {
    let vg = &r.vg;
    let attr = vg.attr.as_bytes();
    let at = |i: usize| (attr.get(i).copied().unwrap_or(b'-') as char).to_string();
    VolumeGroupInfo {
        name: vg.name.clone(),
        vgUUID: vg.uuid.clone(),
        vgsize: vg.size.to_string(),
        vgfree: vg.free.to_string(),
        extent_size: vg.extent_size.to_string(),
        r#type: 3,
        // vg_attr's columns, as VDSM's VG_ATTR names them.
        attr: VgAttr {
            permission: at(0),
            resizeable: at(1),
            exported: at(2),
            partial: at(3),
            allocation: at(4),
            clustered: at(5),
        },
        state: if vg.is_partial() { "PARTIAL" } else { "OK" }.into(),
        tags: vg.tags.clone(),
        pvlist: r.pvs.iter().map(|p| pv_info(p, devices)).collect(),
    }
}

pub async fn create_vg(
    storage: &Arc<Storage>,
    p: params::LvmVolumeGroupCreate,
) -> Result<returns::LvmVolumeGroupCreate, ApiError> {
    let (name, devs, force) = (p.name, p.devlist, p.force.unwrap_or(false));
    blocking(storage, move |s| s.create_vg(name, &devs, force)).await
}

pub async fn vg_info(
    storage: &Arc<Storage>,
    uuid: String,
) -> Result<returns::LvmVolumeGroupGetInfo, ApiError> {
    let (r, devs) = blocking(storage, move |s| {
        let r = s.vg_info(&uuid)?;
        let devs = pv_devices(s, std::slice::from_ref(&r));
        Ok((r, devs))
    })
    .await?;
    Ok(vg_info_of(&r, &devs))
}

pub async fn list_vgs(storage: &Arc<Storage>) -> Result<returns::HostGetLvmVolumeGroups, ApiError> {
    let (all, devs) = blocking(storage, move |s| {
        let all = s.list_vgs()?;
        let devs = pv_devices(s, &all);
        Ok((all, devs))
    })
    .await?;
    Ok(all.iter().map(|r| vg_info_of(r, &devs)).collect())
}

// ---- verbs answered `true` once the storage call returns ----

pub async fn remove_vg(
    storage: &Arc<Storage>,
    p: params::LvmVolumeGroupRemove,
) -> Result<returns::LvmVolumeGroupRemove, ApiError> {
    let uuid = p.lvmvolumegroupID;
    done(storage, move |s| s.remove_vg(&uuid)).await
}

pub async fn extend_domain(
    storage: &Arc<Storage>,
    p: params::StorageDomainExtend,
) -> Result<returns::StorageDomainExtend, ApiError> {
    let (sd, devs, force) = (p.storagedomainID, p.devlist, p.force.unwrap_or(false));
    done(storage, move |s| s.extend_domain(sd, &devs, force)).await
}

pub async fn resize_pv(
    storage: &Arc<Storage>,
    p: params::StorageDomainResizePv,
) -> Result<returns::StorageDomainResizePv, ApiError> {
    let (sd, guid) = (p.storagedomainID, p.guid);
    let size = blocking(storage, move |s| s.resize_pv(sd, &guid)).await?;
    // The bare size, as VDSM's Bridge answers (its 'size' key);
    // the engine reads the result as that string.
    Ok(size.to_string())
}

pub async fn set_domain_description(
    storage: &Arc<Storage>,
    p: params::StorageDomainSetDescription,
) -> Result<returns::StorageDomainSetDescription, ApiError> {
    let (sd, d) = (p.storagedomainID, p.description);
    done(storage, move |s| s.set_domain_description(sd, d)).await
}

pub async fn set_backup(
    storage: &Arc<Storage>,
    p: params::StorageDomainSetBackup,
) -> Result<returns::StorageDomainSetBackup, ApiError> {
    let (sd, b) = (p.storagedomainID, p.backup);
    done(storage, move |s| s.set_backup(sd, b)).await
}

pub async fn validate_domain(
    storage: &Arc<Storage>,
    p: params::StorageDomainValidate,
) -> Result<returns::StorageDomainValidate, ApiError> {
    let sd = p.storagedomainID;
    done(storage, move |s| s.validate_domain(sd)).await
}

pub async fn format_domain(
    storage: &Arc<Storage>,
    p: params::StorageDomainFormat,
) -> Result<returns::StorageDomainFormat, ApiError> {
    let (sd, auto) = (p.storagedomainID, p.autoDetach.unwrap_or(false));
    done(storage, move |s| s.format_domain(sd, auto)).await
}

pub async fn disconnect_pool(
    storage: &Arc<Storage>,
    p: params::StoragePoolDisconnect,
) -> Result<returns::StoragePoolDisconnect, ApiError> {
    let sp = p.storagepoolID;
    done(storage, move |s| s.disconnect_pool(sp)).await
}

pub async fn host_liveness(
    storage: &Arc<Storage>,
    sd: SdUuid,
) -> Result<returns::StorageDomainGetHostLiveness, ApiError> {
    let hosts = blocking(storage, move |s| s.host_liveness(sd)).await?;
    Ok(hosts
        .into_iter()
        .map(|h| HostLiveness {
            host_id: h.host_id,
            status: h.status.map_or("unknown", |s| s.name()).into(),
            generation: h.generation,
            timestamp: h.timestamp,
            io_timeout: h.io_timeout,
        })
        .collect())
}

/// 309 unless `sp` is connected on this host (VDSM's `getPool`), for the
/// verbs that answer a task id before their work runs.
pub async fn require_connected_pool(storage: &Arc<Storage>, sp: SpUuid) -> Result<(), ApiError> {
    blocking(storage, move |s| s.pool(sp).map(|_| ())).await
}

pub async fn switch_master(
    storage: &Arc<Storage>,
    p: params::StoragePoolSwitchMaster,
) -> Result<(), ApiError> {
    let (sp, old, new, v) = (
        p.storagepoolID,
        p.oldMasterUUID,
        p.newMasterUUID,
        p.masterVersion,
    );
    blocking(storage, move |s| s.switch_master(sp, old, new, v)).await
}

pub async fn reconstruct_master(
    storage: &Arc<Storage>,
    p: params::StoragePoolReconstructMaster,
) -> Result<returns::StoragePoolReconstructMaster, ApiError> {
    let dict = domain_dict(&p.domainDict)?;
    done(storage, move |s| {
        s.reconstruct_master(
            p.storagepoolID,
            p.hostId,
            p.name,
            p.masterSdUUID,
            p.masterVersion,
            dict,
        )
    })
    .await
}

pub async fn destroy_pool(
    storage: &Arc<Storage>,
    p: params::StoragePoolDestroy,
) -> Result<returns::StoragePoolDestroy, ApiError> {
    let (sp, host_id) = (p.storagepoolID, p.hostID);
    done(storage, move |s| s.destroy_pool(sp, host_id)).await
}

pub async fn refresh_pool(
    storage: &Arc<Storage>,
    p: params::StoragePoolRefresh,
) -> Result<returns::StoragePoolRefresh, ApiError> {
    let (sp, sd, v) = (p.storagepoolID, p.masterSdUUID, p.masterVersion);
    done(storage, move |s| s.refresh_pool(sp, sd, v)).await
}

pub async fn spm_stop(
    storage: &Arc<Storage>,
    p: params::StoragePoolSpmStop,
) -> Result<returns::StoragePoolSpmStop, ApiError> {
    let sp = p.storagepoolID;
    done(storage, move |s| s.spm_stop(sp)).await
}

pub async fn spm_status(
    storage: &Arc<Storage>,
    p: params::StoragePoolGetSpmStatus,
) -> Result<returns::StoragePoolGetSpmStatus, ApiError> {
    let sp = p.storagepoolID;
    let st = blocking(storage, move |s| s.spm_status(sp)).await?;
    Ok(SpmStatus {
        spmId: st.spm_id,
        spmStatus: st.role.name().into(),
        spmLver: st.lver,
    })
}

pub async fn attach(
    storage: &Arc<Storage>,
    p: params::StorageDomainAttach,
) -> Result<returns::StorageDomainAttach, ApiError> {
    let (sd, sp) = (p.storagedomainID, p.storagepoolID);
    done(storage, move |s| s.attach(sd, sp)).await
}

pub async fn detach(
    storage: &Arc<Storage>,
    p: params::StorageDomainDetach,
) -> Result<returns::StorageDomainDetach, ApiError> {
    let (sd, sp, force) = (p.storagedomainID, p.storagepoolID, p.force.unwrap_or(false));
    done(storage, move |s| s.detach(sd, sp, force)).await
}

pub async fn activate(
    storage: &Arc<Storage>,
    p: params::StorageDomainActivate,
) -> Result<returns::StorageDomainActivate, ApiError> {
    let (sd, sp) = (p.storagedomainID, p.storagepoolID);
    done(storage, move |s| s.activate(sd, sp)).await
}

pub async fn deactivate(
    storage: &Arc<Storage>,
    p: params::StorageDomainDeactivate,
) -> Result<returns::StorageDomainDeactivate, ApiError> {
    let (sd, sp, m, v) = (
        p.storagedomainID,
        p.storagepoolID,
        p.masterSdUUID,
        p.masterVersion,
    );
    done(storage, move |s| s.deactivate(sd, sp, m, v)).await
}

pub async fn set_volume_description(
    storage: &Arc<Storage>,
    p: params::VolumeSetDescription,
) -> Result<returns::VolumeSetDescription, ApiError> {
    let (sd, img, vol, d) = (p.storagedomainID, p.imageID, p.volumeID, p.description);
    done(storage, move |s| s.set_volume_description(sd, img, vol, d)).await
}

pub async fn set_volume_legality(
    storage: &Arc<Storage>,
    p: params::VolumeSetLegality,
) -> Result<returns::VolumeSetLegality, ApiError> {
    let (sd, img, vol, l) = (p.storagedomainID, p.imageID, p.volumeID, p.legality);
    done(storage, move |s| s.set_volume_legality(sd, img, vol, l)).await
}

pub async fn teardown(
    storage: &Arc<Storage>,
    p: params::ImageTeardown,
) -> Result<returns::ImageTeardown, ApiError> {
    let (sd, img): (_, ImgUuid) = (p.storagedomainID, p.imageID);
    let _ = SpUuid(p.storagepoolID);
    done(storage, move |s| s.teardown_image(sd, img)).await
}

// ---- verbs VDSM runs as SPM tasks: done before the answer ----

pub async fn delete_volume(
    storage: &Arc<Storage>,
    p: params::VolumeDelete,
) -> Result<(), ApiError> {
    let (sd, img, vol) = (p.storagedomainID, p.imageID, p.volumeID);
    let (zero, force) = (p.postZero.unwrap_or(false), p.force.unwrap_or(false));
    blocking(storage, move |s| s.delete_volume(sd, img, vol, zero, force)).await
}

pub async fn extend_volume(
    storage: &Arc<Storage>,
    p: params::VolumeExtendSize,
) -> Result<(), ApiError> {
    let (sd, img, vol, size) = (p.storagedomainID, p.imageID, p.volumeID, p.newSize.0);
    blocking(storage, move |s| s.extend_volume(sd, img, vol, size)).await
}

/// `Volume.requestExtend`: the LV's size after, in both fields.
pub async fn request_extend(
    storage: &Arc<Storage>,
    p: params::VolumeRequestExtend,
) -> Result<returns::VolumeRequestExtend, ApiError> {
    let (sp, sd, img, vol, size) = (
        p.storagepoolID,
        p.storagedomainID,
        p.imageID,
        p.volumeID,
        p.newSize.0,
    );
    let now = blocking(storage, move |s| s.request_extend(sp, sd, img, vol, size)).await?;
    Ok(VolumeSize {
        apparentsize: now.to_string(),
        truesize: now.to_string(),
    })
}

pub async fn delete_image(storage: &Arc<Storage>, p: params::ImageDelete) -> Result<(), ApiError> {
    let (sd, img) = (p.storagedomainID, p.imageID);
    let (zero, force) = (p.postZero.unwrap_or(false), p.force.unwrap_or(false));
    blocking(storage, move |s| s.delete_image(sd, img, zero, force)).await
}

// ---- VM and external leases (xleases) ----

pub async fn create_lease(storage: &Arc<Storage>, p: params::LeaseCreate) -> Result<(), ApiError> {
    let (sd, lease) = (p.lease.sd_id, p.lease.lease_id);
    let metadata = p.metadata;
    blocking(storage, move |s| {
        s.lease_create(sd, lease, metadata).map(drop)
    })
    .await
}

pub async fn delete_lease(storage: &Arc<Storage>, p: params::LeaseDelete) -> Result<(), ApiError> {
    let (sd, lease) = (p.lease.sd_id, p.lease.lease_id);
    blocking(storage, move |s| s.lease_delete(sd, lease)).await
}

pub async fn rebuild_leases(
    storage: &Arc<Storage>,
    p: params::LeaseRebuildLeases,
) -> Result<(), ApiError> {
    let sd = p.sd_id;
    blocking(storage, move |s| s.lease_rebuild(sd).map(drop)).await
}

pub async fn lease_info(
    storage: &Arc<Storage>,
    p: params::LeaseLookup,
) -> Result<returns::LeaseLookup, ApiError> {
    let (sd, lease) = (p.lease.sd_id, p.lease.lease_id);
    let info = blocking(storage, move |s| s.lease_info(sd, lease)).await?;
    Ok(LeaseInfo {
        sd_id: info.sd.to_string(),
        lease_id: info.lease,
        path: info.path.display().to_string(),
        offset: info.offset,
    })
}

pub async fn lease_status(
    storage: &Arc<Storage>,
    p: params::LeaseGetStatus,
) -> Result<returns::LeaseGetStatus, ApiError> {
    let (sd, lease) = (p.lease.sd_id, p.lease.lease_id);
    let st = blocking(storage, move |s| s.lease_status(sd, lease)).await?;
    Ok(LeaseStatus {
        owners: st.owners,
        version: st.version,
        metadata: st.metadata.and_then(|md| job_metadata(&md)),
    })
}

pub async fn fence_lease(
    storage: &Arc<Storage>,
    p: params::LeaseFence,
) -> Result<returns::LeaseFence, ApiError> {
    let (sd, lease, metadata) = (p.lease.sd_id, p.lease.lease_id, p.metadata);
    done(storage, move |s| s.lease_fence(sd, lease, metadata)).await
}

/// A lease's job metadata as VDSM's JobMetadata; `None` (logged) when
/// what the value block holds is not one (never written: `{}`).
fn job_metadata(md: &Map<String, Value>) -> Option<JobMetadata> {
    let text = |k: &str| md.get(k).and_then(Value::as_str).map(str::to_owned);
    let number = |k: &str| md.get(k).and_then(Value::as_u64);
    let parsed = (|| {
        Some(JobMetadata {
            r#type: text("type")?,
            job_id: text("job_id")?,
            job_status: text("job_status")?,
            generation: number("generation")?,
            created: number("created"),
            modified: number("modified"),
            host_hardware_id: text("host_hardware_id"),
        })
    })();
    if parsed.is_none() && !md.is_empty() {
        tracing::warn!(?md, "a lease's metadata is not a JobMetadata: not reported");
    }
    parsed
}

#[cfg(test)]
mod tests {
    //! The typed answers go out as the `json!` objects they replaced did,
    //! byte for byte: the old builders are copied here verbatim and run
    //! on the same input.
    use super::*;
    use depot_os::lvm::VgInfo;
    use depot_os::multipath::PathState;
    use depot_storage::devices::{DevType, DevicePath, DeviceStatus, PathSession, PvFacts};
    use depot_storage::engine::lvm::VgReport;
    use depot_storage::ovf::{StoreState, Trailer, TrailerState};
    use serde_json::json;

    fn bytes<T: serde::Serialize>(typed: &T) -> String {
        serde_json::to_value(typed).unwrap().to_string()
    }

    fn old_block_device(d: &BlockDevice) -> Value {
        let pathlist: Vec<Value> = d
            .sessions
            .iter()
            .map(|s| {
                let mut v = json!({
                    "connection": s.connection,
                    "port": s.port.to_string(),
                    "iqn": s.iqn,
                    "portal": s.tpgt.to_string(),
                    "initiatorname": s.iface,
                });
                if let Some(u) = &s.user {
                    v["user"] = json!(u);
                }
                v
            })
            .collect();
        let pathstatus: Vec<Value> = d
            .paths
            .iter()
            .map(|p| {
                json!({
                    "physdev": p.physdev,
                    "state": p.state.map(|s| s.as_str()).unwrap_or("failed"),
                    "capacity": p.capacity.to_string(),
                    "lun": p.lun.to_string(),
                    "type": p.dev_type.as_str(),
                })
            })
            .collect();
        json!({
            "GUID": d.guid,
            "capacity": d.capacity.to_string(),
            "devtype": d.dev_type.map(|t| t.as_str()).unwrap_or(""),
            "vendorID": d.vendor,
            "productID": d.product,
            "fwrev": d.fwrev,
            "serial": d.serial,
            "logicalblocksize": d.logical_block_size.to_string(),
            "physicalblocksize": d.physical_block_size.to_string(),
            "pathlist": pathlist,
            "pathstatus": pathstatus,
            "pvUUID": d.pv.as_ref().map(|p| p.pv_uuid.as_str()).unwrap_or(""),
            "pvsize": d.pv.as_ref().map(|p| p.pv_size.to_string()).unwrap_or_default(),
            "vgUUID": d.pv.as_ref().map(|p| p.vg_uuid.as_str()).unwrap_or(""),
            "status": d.status.as_str(),
            "partitioned": d.partitioned,
            "discard_max_bytes": d.discard_max_bytes,
            "discard_zeroes_data": 0,
        })
    }

    const PV_DEVICE_KEYS: [&str; 9] = [
        "vendorID",
        "productID",
        "serial",
        "fwrev",
        "devtype",
        "pathlist",
        "pathstatus",
        "discard_max_bytes",
        "discard_zeroes_data",
    ];

    fn old_vg_json(r: &VgReport, devices: &BTreeMap<String, BlockDevice>) -> Value {
        let vg = &r.vg;
        let attr = vg.attr.as_bytes();
        let at = |i: usize| attr.get(i).copied().unwrap_or(b'-') as char;
        let pvlist: Vec<Value> = r
            .pvs
            .iter()
            .map(|p| {
                let guid = pv_guid(p);
                let mut v = json!({
                    "GUID": guid,
                    "pvUUID": p.uuid,
                    "vgUUID": p.vg_uuid,
                    "capacity": p.size.to_string(),
                    "devcapacity": p.dev_size.to_string(),
                    "pe_count": p.pe_count.to_string(),
                    "pe_alloc_count": p.pe_alloc_count.to_string(),
                });
                if let Some(d) = devices.get(&guid) {
                    let dev = old_block_device(d);
                    for k in PV_DEVICE_KEYS {
                        v[k] = dev[k].clone();
                    }
                }
                v
            })
            .collect();
        json!({
            "name": vg.name,
            "vgUUID": vg.uuid,
            "vgsize": vg.size.to_string(),
            "vgfree": vg.free.to_string(),
            "extent_size": vg.extent_size.to_string(),
            "type": 3,
            "attr": {
                "permission": at(0).to_string(),
                "resizeable": at(1).to_string(),
                "exported": at(2).to_string(),
                "partial": at(3).to_string(),
                "allocation": at(4).to_string(),
                "clustered": at(5).to_string(),
            },
            "state": if vg.is_partial() { "PARTIAL" } else { "OK" },
            "tags": vg.tags,
            "pvlist": pvlist,
        })
    }

    fn old_store_json(s: &depot_storage::OvfStoreInfo) -> Value {
        let mut v = json!({
            "imageID": s.img.to_string(),
            "volumeID": s.vol.to_string(),
            "state": s.state.as_str(),
            "valid": matches!(s.state, StoreState::Valid { .. }),
            "size": s.size,
            "description": s.description,
        });
        match &s.state {
            StoreState::Valid { trailer } => {
                v["generation"] = json!(trailer.generation);
                v["sha256"] = json!(trailer.sha256_hex());
                v["updated"] = json!(trailer.updated);
            }
            StoreState::Torn { reason, .. } => v["reason"] = json!(reason),
            StoreState::Unknown => {}
        }
        v
    }

    fn device(guid: &str, with_pv: bool) -> BlockDevice {
        BlockDevice {
            guid: guid.into(),
            path: format!("/dev/mapper/{guid}").into(),
            dm: "dm-3".into(),
            capacity: 1 << 30,
            vendor: "LIO-ORG".into(),
            product: "disk0".into(),
            fwrev: "4.0".into(),
            serial: "SLIO-ORG_disk0".into(),
            logical_block_size: 512,
            physical_block_size: 4096,
            discard_max_bytes: 4194304,
            dev_type: with_pv.then_some(DevType::Iscsi),
            paths: vec![
                DevicePath {
                    physdev: "sdb".into(),
                    state: Some(PathState::Active),
                    capacity: 1 << 30,
                    lun: 1,
                    dev_type: DevType::Iscsi,
                    session: Some(1),
                },
                DevicePath {
                    physdev: "sdc".into(),
                    state: None,
                    capacity: 1 << 30,
                    lun: 1,
                    dev_type: DevType::Fcp,
                    session: None,
                },
            ],
            sessions: vec![
                PathSession {
                    connection: "10.0.0.1".into(),
                    port: 3260,
                    iqn: "iqn.2003-01.org.x:t".into(),
                    tpgt: 1,
                    iface: "default".into(),
                    user: Some("u".into()),
                },
                PathSession {
                    connection: "10.0.0.2".into(),
                    port: 3261,
                    iqn: "iqn.2003-01.org.x:t".into(),
                    tpgt: 2,
                    iface: "default".into(),
                    user: None,
                },
            ],
            holders: vec![],
            partitioned: !with_pv,
            pv: with_pv.then(|| PvFacts {
                device: format!("/dev/mapper/{guid}"),
                pv_uuid: "pv-uuid".into(),
                pv_size: 1 << 29,
                vg_uuid: "vg-uuid".into(),
            }),
            status: if with_pv {
                DeviceStatus::Used
            } else {
                DeviceStatus::Free
            },
        }
    }

    #[test]
    fn device_list_keeps_the_wire_bytes() {
        for d in [device("3600a", true), device("3600b", false)] {
            assert_eq!(bytes(&block_device(&d)), old_block_device(&d).to_string());
        }
    }

    #[test]
    fn volume_groups_keep_the_wire_bytes() {
        let pv = |guid: &str| depot_os::lvm::PvInfo {
            name: format!("/dev/mapper/{guid}"),
            uuid: format!("pv-{guid}"),
            size: 1 << 29,
            dev_size: 1 << 30,
            vg_name: "vg".into(),
            vg_uuid: "vg-uuid".into(),
            pe_start: 1 << 20,
            pe_count: 4,
            pe_alloc_count: 2,
            mda_count: 1,
            mda_used_count: 1,
            mda_size: 1 << 20,
        };
        let report = |attr: &str| VgReport {
            vg: VgInfo {
                name: "vg".into(),
                uuid: "vg-uuid".into(),
                attr: attr.into(),
                size: 1 << 30,
                free: 1 << 29,
                extent_size: 128 << 20,
                extent_count: 8,
                free_count: 4,
                tags: vec!["RHAT_storage_domain".into()],
                mda_size: 1 << 20,
                mda_free: 1 << 19,
                pv_count: 2,
                lv_count: 0,
            },
            // A device multipath lists and one it does not.
            pvs: vec![pv("3600a"), pv("3600b")],
        };
        let devices: BTreeMap<String, BlockDevice> =
            [("3600a".to_string(), device("3600a", true))].into();
        // A full attr, a partial VG and a short attr string.
        for r in [report("wz--n-"), report("wz-pn-"), report("wz")] {
            assert_eq!(
                bytes(&vg_info_of(&r, &devices)),
                old_vg_json(&r, &devices).to_string()
            );
            assert_eq!(
                bytes(&vg_info_of(&r, &BTreeMap::new())),
                old_vg_json(&r, &BTreeMap::new()).to_string()
            );
        }
    }

    #[test]
    fn ovf_stores_keep_the_wire_bytes() {
        let trailer = Trailer {
            state: TrailerState::Valid,
            generation: 7,
            size: 10240,
            sha256: [0xab; 32],
            updated: 1_700_000_000,
        };
        let store = |state: StoreState, size: Option<u64>| depot_storage::OvfStoreInfo {
            img: ImgUuid(Uuid::new_v4()),
            vol: depot_api::storage::VolUuid(Uuid::new_v4()),
            state,
            description: "{\"Disk Description\":\"OVF_STORE\"}".into(),
            size,
        };
        for s in [
            store(StoreState::Valid { trailer }, Some(10240)),
            store(
                StoreState::Torn {
                    trailer: None,
                    reason: "a write did not finish".into(),
                },
                Some(0),
            ),
            store(StoreState::Unknown, None),
        ] {
            assert_eq!(bytes(&ovf_store(&s)), old_store_json(&s).to_string());
        }
    }
}
