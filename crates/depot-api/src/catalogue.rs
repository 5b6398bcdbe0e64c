//! The method catalogue: one declaration per verb gives its typed parameters,
//! its entry in [`Call`], and its documentation in docs/api.md. Adding a verb
//! here is the only way to make the daemon answer it, so the docs cannot
//! forget one.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{ApiError, Code};
use crate::results::{
    BlockDeviceInfo, ConnectionStatus, DomainInfo, DomainStats, Done, DrPlanReport, DrStarted,
    DrStatusReport, FenceNodeResult, FileStat, HostLiveness, HostStats, LeaseInfo, LeaseStatus,
    OvfBackupAttached, OvfBackupEntity, OvfBackupListing, OvfBackupRestored, OvfEntities,
    OvfEntityText, OvfStore, PoolInfo, PreparedImage, RepoStats, SpmStatus, TaskId, TaskInfo,
    TaskStatus, VolumeGroupInfo, VolumeInfo, VolumeSize, WireResult,
};
use crate::storage::{
    AllocType, ByteSize, ConnectionList, CopyEndpoint, DiskType, DomainClass, DomainType,
    FencePort, FencingPolicy, ImgUuid, Lease, Legality, MoveOperation, Password, Port, SdUuid,
    SpUuid, VolUuid, VolumeAttributes, VolumeFormat, VolumeRef,
};
use crate::types::{Capabilities, JobInfo};
use crate::types::{JobId, JobType, Uuid};
use std::collections::BTreeMap;

/// How a parameter's type is described in the docs, and whether it may be
/// left out.
pub trait WireType: DeserializeOwned {
    fn describe() -> String;
    const OPTIONAL: bool = false;
}

macro_rules! wire_type {
    ($($t:ty => $d:literal),* $(,)?) => {$(
        impl WireType for $t {
            fn describe() -> String { $d.to_string() }
        }
    )*};
}

wire_type! {
    String => "string",
    bool => "boolean",
    u32 => "uint",
    u64 => "uint",
    i64 => "int",
    f64 => "float",
    Uuid => "UUID",
    JobId => "UUID",
    JobType => "HostJobType (storage, v2v)",
    Value => "any",
    Map<String, Value> => "object",
    SdUuid => "UUID",
    SpUuid => "UUID",
    ImgUuid => "UUID",
    VolUuid => "UUID",
    DomainType => "StorageDomainType: NFS=1, FCP=2, ISCSI=3, LOCALFS=4, CIFS=5, POSIXFS=6, GLUSTERFS=7 (name or number)",
    DomainClass => "StorageDomainImageClass: Data=1, Iso=2, Backup=3 (name or number)",
    VolumeFormat => "VolumeFormat: COW, RAW",
    AllocType => "VolumeAllocation: PREALLOCATED, SPARSE",
    DiskType => "DiskContentType: DATA, OVFS, MEMD, MEMM, ISOF, HEVD, HESD, HEMD, HECI, SCRD",
    Legality => "VolumeLegality: LEGAL, ILLEGAL, FAKE",
    ByteSize => "size in bytes (decimal string or number)",
    ConnectionList => "[ConnectionRefParameters]",
    CopyEndpoint => "CopyDataEndpoint: {endpoint_type: \"div\", sd_id, img_id, vol_id, generation?}",
    VolumeRef => "VolumeInfo: {sd_id, img_id, vol_id, generation}",
    VolumeAttributes => "VolumeAttributes: {legality?, description?, generation?} (type is refused: not supported yet)",
    MoveOperation => "ImageMoveOperation: COPY (1) or MOVE (2)",
    Password => "string (a secret: never logged or returned)",
    Port => "TCP port 1-65535 (number or decimal string)",
    FencePort => "the agent's port or plug (number, string, or \"\" for none)",
    Lease => "Lease: {sd_id, lease_id} (UUIDs)",
    FencingPolicy => "FencingPolicy: {storageDomainHostIdMap?: {sdUUID: hostId}, skipFencingIfGlusterBricksUp?, skipFencingIfGlusterQuorumNotMet?, glusterServerUuid?}",
}

impl<T: WireType> WireType for Option<T> {
    fn describe() -> String {
        T::describe()
    }
    const OPTIONAL: bool = true;
}

impl<T: WireType> WireType for Vec<T> {
    fn describe() -> String {
        format!("[{}]", T::describe())
    }
}

/// One parameter of a verb, for the docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: &'static str,
    pub ty: String,
    pub required: bool,
    pub doc: String,
}

/// One verb, for the docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodSpec {
    pub name: &'static str,
    pub doc: String,
    pub params: Vec<ParamSpec>,
    pub result: String,
}

/// Takes one named parameter out of the request. A missing optional
/// parameter and an explicit `null` both mean "not given".
fn take<T: WireType>(params: &mut Map<String, Value>, name: &str) -> Result<T, ApiError> {
    match params.remove(name) {
        None if T::OPTIONAL => serde_json::from_value(Value::Null).map_err(|e| bad(name, e)),
        None => Err(ApiError::new(
            Code::InvalidParams,
            format!("missing required parameter '{name}' ({})", T::describe()),
        )),
        Some(v) => serde_json::from_value(v).map_err(|e| bad(name, e)),
    }
}

fn bad(name: &str, e: serde_json::Error) -> ApiError {
    ApiError::new(Code::InvalidParams, format!("parameter '{name}': {e}"))
}

fn doc_of(lines: &[&'static str]) -> String {
    // Doc comments arrive one line at a time, each with a leading space.
    lines.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ")
}

macro_rules! verbs {
    ($(
        $(#[doc = $doc:literal])*
        $wire:literal => $variant:ident {
            $( $(#[doc = $pdoc:literal])* $field:ident : $ty:ty ),* $(,)?
        } -> $result:tt;
    )*) => {
        /// The typed parameters of each verb. Field names are the wire names.
        #[allow(non_snake_case)]
        pub mod params {
            #[allow(unused_imports)]
            use super::*;
            $(
                $(#[doc = $doc])*
                #[derive(Debug, Clone, PartialEq)]
                pub struct $variant { $( $(#[doc = $pdoc])* pub $field: $ty, )* }
            )*
        }

        /// A parsed call: the verb and its typed parameters.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Call {
            $( $variant(params::$variant), )*
        }

        impl Call {
            /// Maps a wire name and its named parameters to a typed call.
            /// Unknown parameters are ignored, as VDSM does: the engine sends
            /// some that older agents lack.
            pub fn parse(method: &str, params: Option<Value>) -> Result<Call, ApiError> {
                let mut map = match params {
                    None | Some(Value::Null) => Map::new(),
                    Some(Value::Object(m)) => m,
                    Some(_) => return Err(ApiError::new(
                        Code::InvalidParams,
                        "params must be an object of named parameters",
                    )),
                };
                #[allow(unused_variables)]
                let m = &mut map;
                match method {
                    $( $wire => Ok(Call::$variant(params::$variant {
                        $( $field: take::<$ty>(m, stringify!($field))?, )*
                    })), )*
                    _ => Err(ApiError::new(Code::MethodNotFound, format!("'{}'", method.chars().take(128).collect::<String>()))),
                }
            }

            /// The wire name of this call's verb.
            pub fn method(&self) -> &'static str {
                match self { $( Call::$variant(_) => $wire, )* }
            }
        }

        /// Every verb, in catalogue order.
        pub fn methods() -> Vec<MethodSpec> {
            vec![$(
                MethodSpec {
                    name: $wire,
                    doc: doc_of(&[$($doc),*]),
                    params: vec![$(
                        ParamSpec {
                            name: stringify!($field),
                            ty: <$ty as WireType>::describe(),
                            required: !<$ty as WireType>::OPTIONAL,
                            doc: doc_of(&[$($pdoc),*]),
                        },
                    )*],
                    result: result_doc!($result),
                },
            )*]
        }

        /// The result type of each verb, by the verb's name in [`Call`]:
        /// what the daemon's handler returns.
        #[allow(non_snake_case)]
        pub mod returns {
            #[allow(unused_imports)]
            use super::*;
            $( result_alias!($variant $result); )*
        }
    };
}

/// The docs of a verb's result, generated from its type: `-> (Type)`, or
/// `-> (Type, "note")` for what the type cannot say.
macro_rules! result_doc {
    (($t:ty)) => {
        format!("`{}`", <$t as WireResult>::describe())
    };
    (($t:ty, $note:literal)) => {
        format!("`{}`; {}", <$t as WireResult>::describe(), $note)
    };
}

macro_rules! result_alias {
    ($variant:ident ($t:ty)) => {
        pub type $variant = $t;
    };
    ($variant:ident ($t:ty, $note:literal)) => {
        pub type $variant = $t;
    };
}

verbs! {
    /// Tests connectivity to the agent.
    "Host.ping2" => HostPing2 {} -> (Done);

    /// Returns the host's storage capabilities: depot's version, the domain
    /// types and versions it supports.
    "Host.getCapabilities" => HostGetCapabilities {} -> (Capabilities);

    /// Lists host jobs with their status, progress, error and result.
    "Host.getJobs" => HostGetJobs {
        /// Return only jobs of this type.
        job_type: Option<JobType>,
        /// Return only the jobs with these ids (all when left out or empty).
        job_ids: Option<Vec<JobId>>,
    } -> (BTreeMap<String, JobInfo>, "by job id");

    /// Asks a running or pending job to stop. The job ends as `aborted`.
    /// depot's verb, named after VDSM's `Host.abortV2VJob`.
    "Host.abortJob" => HostAbortJob {
        /// The job to abort.
        job_id: JobId,
    } -> (Done, "the abort is asynchronous: poll Host.getJobs");

    /// Removes a finished job from the job list before its auto-delete time.
    /// depot's verb, named after VDSM's `Host.deleteV2VJob`.
    "Host.deleteJob" => HostDeleteJob {
        /// The job to delete; it must have ended.
        job_id: JobId,
    } -> (Done);

    /// Subscribes this WebSocket connection to events (JSON-RPC
    /// notifications such as `|jobs|status|<job_id>`). depot's verb: VDSM
    /// subscribes over STOMP instead.
    "Host.subscribeEvents" => HostSubscribeEvents {
        /// Send only events whose name starts with one of these prefixes, for
        /// example `|jobs|status|`. All events when left out.
        prefixes: Option<Vec<String>>,
    } -> (Done);

    /// Connects the host to storage: mounts NFS, POSIX and GlusterFS exports,
    /// links local directories, logs in to iSCSI targets (with CHAP) and
    /// waits for their multipath devices, rescans FC hosts. Idempotent.
    /// Returns one status per connection (0, or the error code of that
    /// connection).
    "StoragePool.connectStorageServer" => StoragePoolConnectStorageServer {
        /// Unused, as in VDSM.
        storagepoolID: Option<Uuid>,
        /// The storage type of every connection in the list.
        domainType: DomainType,
        /// The connections. File types: `{id, connection, vfs_type?, mnt_options?, protocol_version?, timeout?, retrans?}`. ISCSI: `{id, connection (portal host), port?, iqn, tpgt?, user?, password?, ifaceName?}`. FCP: `{id}` (connect rescans the SCSI hosts).
        connectionParams: ConnectionList,
    } -> (Vec<ConnectionStatus>, "status 0 or the connection's error code");

    /// Disconnects the host from storage: unmounts; logs out of an iSCSI
    /// session once no other connection of this host uses it. Refuses (per
    /// connection) while a domain on that storage is active or monitored.
    /// Idempotent.
    "StoragePool.disconnectStorageServer" => StoragePoolDisconnectStorageServer {
        /// Unused, as in VDSM.
        storagepoolID: Option<Uuid>,
        /// The storage type of every connection in the list.
        domainType: DomainType,
        /// The connections, as given to connectStorageServer.
        connectionParams: ConnectionList,
    } -> (Vec<ConnectionStatus>);

    /// Lists the targets an iSCSI portal offers (SendTargets discovery),
    /// with CHAP for the discovery session when user and password are
    /// given. Leaves no node records behind.
    "ISCSIConnection.discoverSendTargets" => IscsiConnectionDiscoverSendTargets {
        /// The portal: an IPv4 or IPv6 address or a host name.
        host: String,
        /// The portal's port (iSCSI's is 3260).
        port: Port,
        /// CHAP user for discovery (empty or left out: no authentication).
        user: Option<String>,
        /// CHAP password for discovery.
        password: Option<Password>,
        /// Also return portals on IPv6 addresses (default false).
        ipv6_enabled: Option<bool>,
    } -> (Vec<String>, "`\"host:port,tpgt iqn\"` each (VDSM's fullTargets; IPv6 hosts in brackets)");

    /// Lists the host's multipath block devices (SAN LUNs, by WWID), with
    /// their paths, path states, sizes and LVM use.
    "Host.getDeviceList" => HostGetDeviceList {
        /// Only ISCSI (3) or FCP (2) devices; all when left out.
        storageType: Option<DomainType>,
        /// Only these GUIDs (WWIDs); all when left out or empty.
        guids: Option<Vec<String>>,
        /// Whether to work out status used/free (default true); false
        /// reports "unknown" and skips the LVM and holder checks.
        checkStatus: Option<bool>,
        /// Rescan iSCSI sessions and SCSI hosts first and wait for
        /// multipath (default true, as VDSM).
        refresh: Option<bool>,
    } -> (Vec<BlockDeviceInfo>, "sizes as decimal strings");

    /// Whether each device is visible on this host (its multipath map
    /// exists). Rescans once when one is not.
    "Host.getDevicesVisibility" => HostGetDevicesVisibility {
        /// The GUIDs (WWIDs).
        guidList: Vec<String>,
    } -> (BTreeMap<String, bool>, "by device GUID");

    /// Lists the storage domains found on connected storage (used to import
    /// domains).
    "Host.getStorageDomains" => HostGetStorageDomains {
        /// Only domains attached to this pool.
        storagepoolID: Option<Uuid>,
        /// Only domains of this class.
        domainClass: Option<DomainClass>,
        /// Only domains of this type.
        storageType: Option<DomainType>,
        /// Only the domain on this connection (`server:/path`).
        remotePath: Option<String>,
    } -> (Vec<String>, "the domains' UUIDs");

    /// Creates a storage domain on connected storage (format version 5).
    "StorageDomain.create" => StorageDomainCreate {
        /// The new domain's id.
        storagedomainID: SdUuid,
        /// The storage type.
        domainType: DomainType,
        /// File domains: the connection (`server:/path` or the local path).
        typeArgs: String,
        /// The domain's description (at most 50 characters).
        name: String,
        /// Data or Iso.
        domainClass: DomainClass,
        /// Domain format version; 5 (the default) is the only one depot creates.
        version: Option<i64>,
        /// 512, 4096, or 0 to detect it with an O_DIRECT probe (default 512).
        blockSize: Option<i64>,
        /// Most hosts the domain serves (default 2000, VDSM's).
        maxHosts: Option<i64>,
        /// A backup storage domain (default false): holds copies, never runs
        /// a VM, never becomes master (docs/backup.md). depot's parameter.
        backup: Option<bool>,
    } -> (Done);

    /// Sets or clears a domain's backup flag, kept in its metadata
    /// (DEPOT_BACKUP). Setting it is refused while any volume of the domain
    /// is prepared. depot's verb.
    "StorageDomain.setBackup" => StorageDomainSetBackup {
        /// The domain.
        storagedomainID: SdUuid,
        /// true to make it a backup domain, false to clear the flag.
        backup: bool,
    } -> (Done);

    /// Returns a domain's metadata.
    "StorageDomain.getInfo" => StorageDomainGetInfo {
        /// The domain.
        storagedomainID: SdUuid,
    } -> (DomainInfo, "block domains add `vguuid`, `state` (OK or PARTIAL), `metadataDevice` and, when one PV alone holds the VG's metadata, `vgMetadataDevice`");

    /// Returns a domain's space figures.
    "StorageDomain.getStats" => StorageDomainGetStats {
        /// The domain.
        storagedomainID: SdUuid,
    } -> (DomainStats, "sizes as decimal strings, as VDSM");

    /// Changes a domain's description.
    /// The SPM's verb when the domain is attached to a pool: 309 while
    /// that pool is not connected here, 654 while this host is not its SPM.
    "StorageDomain.setDescription" => StorageDomainSetDescription {
        /// The domain.
        storagedomainID: SdUuid,
        /// At most 50 characters.
        description: String,
    } -> (Done);

    /// Checks that a domain's layout and metadata are sound.
    "StorageDomain.validate" => StorageDomainValidate {
        /// The domain.
        storagedomainID: SdUuid,
    } -> (Done);

    /// Removes a domain and everything on it. Refused while it is attached
    /// to a pool unless autoDetach.
    "StorageDomain.format" => StorageDomainFormat {
        /// The domain.
        storagedomainID: SdUuid,
        /// Format even when the domain is attached to a pool.
        autoDetach: Option<bool>,
    } -> (Done);

    /// Adds LUNs to a block domain's volume group (PVs made on them).
    /// The SPM's verb when the domain is attached to a pool: 309 while
    /// that pool is not connected here, 654 while this host is not its SPM.
    "StorageDomain.extend" => StorageDomainExtend {
        /// The block domain.
        storagedomainID: SdUuid,
        /// The pool (unused; VDSM's parameter).
        storagepoolID: Option<Uuid>,
        /// GUIDs (multipath WWIDs) of the LUNs to add.
        devlist: Vec<String>,
        /// Reuse LUNs that belong to another volume group (default false).
        force: Option<bool>,
    } -> (Done);

    /// Grows the PV of a LUN after the LUN was resized on the storage
    /// server; returns the PV's new size in bytes.
    /// The SPM's verb when the domain is attached to a pool: 309 while
    /// that pool is not connected here, 654 while this host is not its SPM.
    "StorageDomain.resizePV" => StorageDomainResizePv {
        /// The block domain.
        storagedomainID: SdUuid,
        /// The pool (unused; VDSM's parameter).
        storagepoolID: Option<Uuid>,
        /// The LUN's GUID.
        guid: String,
    } -> (String, "the PV's size in bytes, a decimal string");

    /// Makes PVs on LUNs and a volume group for a block domain, tagged
    /// RHAT_storage_domain_UNREADY until StorageDomain.create uses it.
    "LVMVolumeGroup.create" => LvmVolumeGroupCreate {
        /// Unused (VDSM's object id parameter).
        lvmvolumegroupID: Option<String>,
        /// The volume group's name: the future domain's id.
        name: SdUuid,
        /// GUIDs (multipath WWIDs) of the LUNs.
        devlist: Vec<String>,
        /// Reuse LUNs that belong to another volume group (default false).
        force: Option<bool>,
    } -> (String, "`vgUUID` (LVM's UUID of the new volume group)");

    /// A volume group and its PVs.
    "LVMVolumeGroup.getInfo" => LvmVolumeGroupGetInfo {
        /// LVM's UUID of the volume group.
        lvmvolumegroupID: String,
    } -> (VolumeGroupInfo, "a PV's device keys are there when multipath lists its device");

    /// Removes a volume group that holds no storage domain, and its PVs.
    "LVMVolumeGroup.remove" => LvmVolumeGroupRemove {
        /// LVM's UUID of the volume group.
        lvmvolumegroupID: String,
    } -> (Done);

    /// The volume groups on this host's multipath devices.
    "Host.getLVMVolumeGroups" => HostGetLvmVolumeGroups {
        /// Only this storage type (2 FCP or 3 ISCSI; informational).
        storageType: Option<DomainType>,
    } -> (Vec<VolumeGroupInfo>);

    /// Lists the images of a domain.
    "StorageDomain.getImages" => StorageDomainGetImages {
        /// The domain.
        storagedomainID: SdUuid,
    } -> (Vec<String>, "the images' UUIDs");

    /// Lists the volumes of an image (or of the whole domain when imageID
    /// is the blank UUID).
    "StorageDomain.getVolumes" => StorageDomainGetVolumes {
        /// The domain.
        storagedomainID: SdUuid,
        /// The pool (unused by file domains).
        storagepoolID: Option<Uuid>,
        /// The image.
        imageID: Uuid,
    } -> (Vec<String>, "the volumes' UUIDs");

    /// Size and change time of files in an ISO domain matching a glob.
    "StorageDomain.getFileStats" => StorageDomainGetFileStats {
        /// The domain.
        storagedomainID: SdUuid,
        /// A glob such as `*.iso`.
        pattern: String,
        /// Whether the pattern is case sensitive (default true).
        caseSensitive: Option<bool>,
    } -> (BTreeMap<String, FileStat>, "by file name; size and ctime as decimal strings; status 0, or 469 when QEMU could not read the file");

    /// Creates a pool with its master domain (which must be attachable).
    "StoragePool.create" => StoragePoolCreate {
        /// The pool.
        storagepoolID: SpUuid,
        /// The pool's name.
        name: String,
        /// The master domain.
        masterSdUUID: SdUuid,
        /// The master version.
        masterVersion: i64,
        /// Other domains to attach (VDSM's domainList).
        domainList: Option<Vec<SdUuid>>,
        /// Lease parameters (accepted and stored; leases are single-host for now).
        lockRenewalIntervalSec: Option<i64>,
        /// Lease parameter.
        leaseTimeSec: Option<i64>,
        /// Lease parameter.
        ioOpTimeoutSec: Option<i64>,
        /// Lease parameter.
        leaseRetries: Option<i64>,
    } -> (Done);

    /// Connects this host to a pool: its domains become known and monitored.
    "StoragePool.connect" => StoragePoolConnect {
        /// The pool.
        storagepoolID: SpUuid,
        /// This host's id in the pool.
        hostID: i64,
        /// Unused, as in VDSM.
        scsiKey: Option<String>,
        /// The master domain.
        masterSdUUID: SdUuid,
        /// The master version.
        masterVersion: i64,
        /// `{sdUUID: "active"|"attached"}`, the engine's view of the pool's domains.
        domainDict: Option<Map<String, Value>>,
    } -> (Done);

    /// Disconnects this host from a pool.
    "StoragePool.disconnect" => StoragePoolDisconnect {
        /// The pool.
        storagepoolID: SpUuid,
        /// This host's id in the pool.
        hostID: i64,
        /// Unused, as in VDSM.
        scsiKey: Option<String>,
        /// Unused.
        remove: Option<bool>,
    } -> (Done);

    /// The pool's master, version and domains with their status.
    "StoragePool.getInfo" => StoragePoolGetInfo {
        /// The pool.
        storagepoolID: SpUuid,
    } -> (PoolInfo, "dominfo by domain UUID; type: the master's; a domain's sizes once the monitor has checked it");

    /// depot's own: which hosts are live in the domain's lockspace,
    /// according to sanlock's delta leases (the storage's answer to "is
    /// that host really dead", for fencing and disaster recovery). Needs
    /// this host's id in the lockspace (9021 otherwise).
    "StorageDomain.getHostLiveness" => StorageDomainGetHostLiveness {
        /// The domain.
        storagedomainID: SdUuid,
    } -> (Vec<HostLiveness>, "each host sanlock has seen in the lockspace, by host id");

    /// depot's own (docs/dr.md): what a disaster-recovery failover with
    /// this mapping would do, changing nothing. Per connection pair,
    /// whether each side is connected and what step 2 would disconnect
    /// and connect; per domain, whether this host sees it and on which
    /// side; and the fence check (step 1): the hosts other than this one
    /// that still renew their delta leases on the domains this host
    /// sees, refusing (naming them) unless each is confirmed fenced. A
    /// mapping that is not valid is refused with a code of
    /// 9040..=9048 naming the entry.
    "DR.plan" => DrPlan {
        /// The mapping file's text. The text, not a path: depotd runs as
        /// root and opens no file a caller names.
        mapping: String,
        /// `toml` (depot's format, the default) or `ansible` (the oVirt
        /// Ansible role's var file: its `dr_import_storages`).
        format: Option<String>,
        /// Plan the failback: the same mapping reversed (default false).
        failback: Option<bool>,
        /// Host ids the admin confirms fenced: they do not refuse the
        /// fence check (the plan records nothing; DR.failover does).
        confirmedFenced: Option<Vec<u64>>,
        /// The recovery pool's id (the pool the domains are taken over
        /// into), where the mapping names none: an Ansible var file knows
        /// the data centers by name only. 9048 when the mapping names
        /// another.
        recoveryPoolID: Option<SpUuid>,
    } -> (DrPlanReport);

    /// depot's own (docs/dr.md): fails over to the mapping's secondaries as a host job in five steps
    /// (fence check, connections, find the domains, take them over, find
    /// the VMs), each idempotent and journaled in the state directory: a
    /// rerun with the same mapping continues at the first unfinished step
    /// and ends with the same report (DR.status). Progress: 20 per step.
    /// Refusals, nothing changed: a bad mapping (9040..=9048), a live host
    /// not confirmed fenced (9049), another run's unfinished journal
    /// (9050), a job running (9052), an unreadable journal (9054).
    "DR.failover" => DrFailover {
        /// The mapping file's text (as DR.plan takes it).
        mapping: String,
        /// `toml` (the default) or `ansible`.
        format: Option<String>,
        /// Host ids the admin confirms fenced, recorded in the journal.
        confirmedFenced: Option<Vec<u64>>,
        /// Steps 1 and 3 read-only, and what 2, 4 and 5 would do: answered
        /// at once, no job, no journal, nothing written.
        dryRun: Option<bool>,
        /// This host's sanlock host id in the recovered domains, 1 to
        /// 2000 (1000 otherwise; default: the mapping's
        /// `hosts.this_host`; failback has none).
        hostId: Option<u64>,
        /// The recovery pool's id (the pool the domains are taken over
        /// into), where the mapping names none: an Ansible var file knows
        /// the data centers by name only. 9048 when the mapping names
        /// another.
        recoveryPoolID: Option<SpUuid>,
        /// The job's id (default: a new one).
        job_id: Option<crate::types::JobId>,
    } -> (DrStarted);

    /// depot's own (docs/dr.md): fails back: DR.failover with the mapping reversed, refused (9051) while the primary (the site running now) holds domain metadata its copy on the secondary does not, as a host job in five steps
    /// (fence check, connections, find the domains, take them over, find
    /// the VMs), each idempotent and journaled in the state directory: a
    /// rerun with the same mapping continues at the first unfinished step
    /// and ends with the same report (DR.status). Progress: 20 per step.
    /// Refusals, nothing changed: a bad mapping (9040..=9048), a live host
    /// not confirmed fenced (9049), another run's unfinished journal
    /// (9050), a job running (9052), an unreadable journal (9054).
    "DR.failback" => DrFailback {
        /// The mapping file's text (as DR.plan takes it).
        mapping: String,
        /// `toml` (the default) or `ansible`.
        format: Option<String>,
        /// Host ids the admin confirms fenced, recorded in the journal.
        confirmedFenced: Option<Vec<u64>>,
        /// Steps 1 and 3 read-only, and what 2, 4 and 5 would do: answered
        /// at once, no job, no journal, nothing written.
        dryRun: Option<bool>,
        /// This host's sanlock host id in the recovered domains, 1 to
        /// 2000 (1000 otherwise; default: the mapping's
        /// `hosts.this_host`; failback has none).
        hostId: Option<u64>,
        /// The recovery pool's id (the pool the domains are taken over
        /// into), where the mapping names none: an Ansible var file knows
        /// the data centers by name only. 9048 when the mapping names
        /// another.
        recoveryPoolID: Option<SpUuid>,
        /// The job's id (default: a new one).
        job_id: Option<crate::types::JobId>,
    } -> (DrStarted);

    /// depot's own (docs/dr.md): the DR journal of this host (the run in
    /// progress or the last one) and, once finished, its report.
    "DR.status" => DrStatus {} -> (DrStatusReport);

    /// Creates a VM or external lease in the domain's `xleases` volume: a
    /// sanlock resource named by the lease id, and its record in the
    /// index. Idempotent (an existing lease is reused, as VDSM's task
    /// does). Needs sanlock (2009 without); 9031 for a domain without a
    /// valid xleases index, 9032 when every slot is taken.
    /// The SPM's verb when the domain is attached to a pool: 309 while
    /// that pool is not connected here, 654 while this host is not its SPM.
    "Lease.create" => LeaseCreate {
        /// The lease.
        lease: Lease,
        /// A job's metadata to keep in the new lease's value block (VDSM's
        /// JobMetadata: {type: JOB, job_id, job_status, generation}); the
        /// lease is acquired for it, so this host's id must be in the
        /// domain's lockspace (651 otherwise).
        metadata: Option<Map<String, Value>>,
    } -> (TaskId, "depot completes the work before answering");

    /// Deletes a lease: clears its sanlock resource and frees its record.
    /// Idempotent (a missing lease is not an error, as in VDSM's task).
    /// The SPM's verb when the domain is attached to a pool: 309 while
    /// that pool is not connected here, 654 while this host is not its SPM.
    "Lease.delete" => LeaseDelete {
        /// The lease.
        lease: Lease,
    } -> (TaskId, "depot completes the work before answering");

    /// Where a lease is: its domain, id, volume path and offset (936 when
    /// the index has no such lease).
    "Lease.info" => LeaseLookup {
        /// The lease.
        lease: Lease,
    } -> (LeaseInfo);

    /// Who holds a lease and its version, as sanlock reads them from
    /// storage, and the job metadata in it when it is free.
    "Lease.status" => LeaseGetStatus {
        /// The lease.
        lease: Lease,
    } -> (LeaseStatus, "`metadata` when the lease is free and this host could acquire it (its host id in the lockspace)");

    /// Rebuilds the domain's xleases index from the sanlock resources on
    /// its volume (repairs an index left half-written or lost).
    /// The SPM's verb when the domain is attached to a pool: 309 while
    /// that pool is not connected here, 654 while this host is not its SPM.
    "Lease.rebuild_leases" => LeaseRebuildLeases {
        /// The domain.
        sd_id: SdUuid,
    } -> (TaskId, "depot completes the work before answering");

    /// Fences a job's lease (VDSM 4.4.6): with the lease acquired (651
    /// while the job runs), checks that its metadata is the one given
    /// (2009 for another type or job id, 912 for another status, 911 for
    /// another generation) and writes it back FENCED with the next
    /// generation.
    "Lease.fence" => LeaseFence {
        /// The lease.
        lease: Lease,
        /// The job metadata expected on the lease (VDSM's JobMetadata).
        metadata: Map<String, Value>,
    } -> (Done);

    /// Makes this host the pool's SPM: takes the SPM's sanlock lease
    /// (`SDM` in the master domain's `leases`) as a task. Poll
    /// `Task.getStatus` or `StoragePool.getSpmStatus`.
    "StoragePool.spmStart" => StoragePoolSpmStart {
        /// The pool.
        storagepoolID: SpUuid,
        /// The previous SPM's host id (obsolete in VDSM: logged only).
        prevID: i64,
        /// The previous SPM's lease version (obsolete in VDSM: logged only).
        prevLver: String,
        /// Unused, as in VDSM.
        enableScsiFencing: String,
        /// The most host ids of the pool (for the mailbox; accepted).
        maxHostID: Option<i64>,
        /// The domain version expected (accepted; depot's domains are V5).
        domVersion: Option<String>,
    } -> (TaskId, "the task id (a host job): poll Task.getStatus");

    /// Gives up the SPM role: releases the SPM's lease. Idempotent.
    "StoragePool.spmStop" => StoragePoolSpmStop {
        /// The pool.
        storagepoolID: SpUuid,
    } -> (Done);

    /// Who is the pool's SPM (from the lease on the master domain), this
    /// host's role and the lease's version.
    "StoragePool.getSpmStatus" => StoragePoolGetSpmStatus {
        /// The pool.
        storagepoolID: SpUuid,
    } -> (SpmStatus, "spmId and spmLver -1 when unknown");

    /// Moves the pool's master role to another active Data domain of the
    /// pool (never a backup domain: 319). The SPM's verb (309, 654).
    /// `masterVersion` must be above the pool's (324); repeating a
    /// finished switch succeeds.
    "StoragePool.switchMaster" => StoragePoolSwitchMaster {
        /// The pool.
        storagepoolID: SpUuid,
        /// The current master.
        oldMasterUUID: SdUuid,
        /// The new master.
        newMasterUUID: SdUuid,
        /// The new master version.
        masterVersion: i64,
    } -> (TaskId, "depot completes the work before answering");

    /// Disaster recovery: on a host where the pool is not connected (325),
    /// makes `masterSdUUID` the master of a pool of `domainDict`'s
    /// domains, writing their pool metadata (docs/storage.md,
    /// "Reconstructing the master"). With sanlock, holds the new master's
    /// SPM lease meanwhile (651 while another host holds it).
    "StoragePool.reconstructMaster" => StoragePoolReconstructMaster {
        /// The pool.
        storagepoolID: SpUuid,
        /// This host's id (1 to 2000): the host id acquired in the new
        /// master's lockspace to hold its SPM lease around the writes (it
        /// stays acquired, as in VDSM).
        hostId: i64,
        /// The pool's name.
        name: String,
        /// The new master, one of `domainDict`'s domains.
        masterSdUUID: SdUuid,
        /// The new master version.
        masterVersion: i64,
        /// `{sdUUID: "active"|"attached"}`, the pool's domains.
        domainDict: Map<String, Value>,
        /// Lease parameter (accepted; the domains keep theirs).
        lockRenewalIntervalSec: i64,
        /// Lease parameter (accepted; the domains keep theirs).
        leaseTimeSec: i64,
        /// Lease parameter (accepted; the domains keep theirs).
        ioOpTimeoutSec: i64,
        /// Lease parameter (accepted; the domains keep theirs).
        leaseRetries: i64,
    } -> (Done);

    /// Destroys the pool: detaches every domain (the master last), then
    /// disconnects. The SPM's verb (309, 654); `hostID` must be the one
    /// the pool was connected with (700).
    "StoragePool.destroy" => StoragePoolDestroy {
        /// The pool.
        storagepoolID: SpUuid,
        /// This host's id in the pool.
        hostID: i64,
        /// Unused, as in VDSM.
        scsiKey: Option<String>,
    } -> (Done);

    /// Re-reads the pool's master (a host that is not the SPM learns the
    /// master the SPM switched to): 324 unless `masterSdUUID` is the
    /// pool's master at `masterVersion`.
    "StoragePool.refresh" => StoragePoolRefresh {
        /// The pool.
        storagepoolID: SpUuid,
        /// The master domain.
        masterSdUUID: SdUuid,
        /// The master version.
        masterVersion: i64,
    } -> (Done);

    /// Attaches a domain to a pool (POOL_UUID in its metadata).
    /// The SPM's verb: 309 while the pool is not connected here, 654
    /// while this host is not its SPM.
    "StorageDomain.attach" => StorageDomainAttach {
        /// The domain.
        storagedomainID: SdUuid,
        /// The pool.
        storagepoolID: SpUuid,
    } -> (Done);

    /// Detaches a domain from a pool. `force` detaches from a pool that is
    /// gone (disaster recovery).
    /// The SPM's verb: 309 while the pool is not connected here, 654
    /// while this host is not its SPM (a forced detach from a pool not
    /// connected here needs no SPM).
    "StorageDomain.detach" => StorageDomainDetach {
        /// The domain.
        storagedomainID: SdUuid,
        /// The pool.
        storagepoolID: SpUuid,
        /// The master domain after the detach.
        masterSdUUID: Option<SdUuid>,
        /// The master version.
        masterVersion: Option<i64>,
        /// Detach even when the pool is not connected here.
        force: Option<bool>,
    } -> (Done);

    /// Activates an attached domain in its pool.
    /// The SPM's verb: 309 while the pool is not connected here, 654
    /// while this host is not its SPM.
    "StorageDomain.activate" => StorageDomainActivate {
        /// The domain.
        storagedomainID: SdUuid,
        /// The pool.
        storagepoolID: SpUuid,
    } -> (Done);

    /// Deactivates a domain (maintenance).
    /// The SPM's verb: 309 while the pool is not connected here, 654
    /// while this host is not its SPM.
    "StorageDomain.deactivate" => StorageDomainDeactivate {
        /// The domain.
        storagedomainID: SdUuid,
        /// The pool.
        storagepoolID: SpUuid,
        /// The master domain.
        masterSdUUID: Option<SdUuid>,
        /// The master version.
        masterVersion: Option<i64>,
    } -> (Done);

    /// Creates a volume. ILLEGAL until its data and metadata are complete.
    /// The SPM's verb when the domain is attached to a pool: 309 while
    /// that pool is not connected here, 654 while this host is not its SPM.
    "Volume.create" => VolumeCreate {
        /// The new volume.
        volumeID: VolUuid,
        /// The pool.
        storagepoolID: Option<Uuid>,
        /// The domain.
        storagedomainID: SdUuid,
        /// The image (created if new).
        imageID: ImgUuid,
        /// Virtual size in bytes.
        size: ByteSize,
        /// RAW or COW.
        volFormat: VolumeFormat,
        /// SPARSE or PREALLOCATED.
        preallocate: AllocType,
        /// DATA, OVFS, ...
        diskType: DiskType,
        /// Description, at most 210 bytes.
        desc: String,
        /// Parent's image (the blank UUID for a base volume).
        srcImgUUID: Uuid,
        /// Parent volume (the blank UUID for a base volume).
        srcVolUUID: Uuid,
        /// Unused on file domains.
        initialSize: Option<ByteSize>,
        /// Create LEGAL (default true); false keeps it ILLEGAL.
        legal: Option<bool>,
        /// SEQ of the new volume (default 0).
        sequence: Option<u64>,
    } -> (TaskId, "depot completes the work before answering");

    /// Returns a volume's metadata and sizes.
    "Volume.getInfo" => VolumeGetInfo {
        /// The volume.
        volumeID: VolUuid,
        /// The pool.
        storagepoolID: Option<Uuid>,
        /// The domain.
        storagedomainID: SdUuid,
        /// The image.
        imageID: ImgUuid,
    } -> (VolumeInfo, "`lease` only on a domain with volume leases: path, offset, and owners (host ids) and version (null when free), from the lease's leader record (read through the mount's helper on file domains, by the sanlock daemon on block domains)");

    /// Returns a volume's apparent and allocated size.
    "Volume.getSize" => VolumeGetSize {
        /// The volume.
        volumeID: VolUuid,
        /// The pool.
        storagepoolID: Option<Uuid>,
        /// The domain.
        storagedomainID: SdUuid,
        /// The image.
        imageID: ImgUuid,
    } -> (VolumeSize, "decimal strings");

    /// Deletes a leaf volume; postZero wipes its data first.
    /// The SPM's verb when the domain is attached to a pool: 309 while
    /// that pool is not connected here, 654 while this host is not its SPM.
    "Volume.delete" => VolumeDelete {
        /// The volume.
        volumeID: VolUuid,
        /// The pool.
        storagepoolID: Option<Uuid>,
        /// The domain.
        storagedomainID: SdUuid,
        /// The image.
        imageID: ImgUuid,
        /// Overwrite the data with zeros before removing it.
        postZero: Option<bool>,
        /// Delete even when the volume has children or is in use.
        force: Option<bool>,
        /// Unused on file domains.
        discard: Option<bool>,
    } -> (TaskId, "completed");

    /// Sets a volume's description (at most 210 bytes).
    /// The SPM's verb when the domain is attached to a pool: 309 while
    /// that pool is not connected here, 654 while this host is not its SPM.
    "Volume.setDescription" => VolumeSetDescription {
        /// The volume.
        volumeID: VolUuid,
        /// The pool.
        storagepoolID: Option<Uuid>,
        /// The domain.
        storagedomainID: SdUuid,
        /// The image.
        imageID: ImgUuid,
        /// The description.
        description: String,
    } -> (Done);

    /// Sets a volume's legality.
    /// The SPM's verb when the domain is attached to a pool: 309 while
    /// that pool is not connected here, 654 while this host is not its SPM.
    "Volume.setLegality" => VolumeSetLegality {
        /// The volume.
        volumeID: VolUuid,
        /// The pool.
        storagepoolID: Option<Uuid>,
        /// The domain.
        storagedomainID: SdUuid,
        /// The image.
        imageID: ImgUuid,
        /// LEGAL or ILLEGAL.
        legality: Legality,
    } -> (Done);

    /// Grows a volume's virtual size.
    /// The SPM's verb when the domain is attached to a pool: 309 while
    /// that pool is not connected here, 654 while this host is not its SPM.
    "Volume.extendSize" => VolumeExtendSize {
        /// The pool.
        storagepoolID: Option<Uuid>,
        /// The domain.
        storagedomainID: SdUuid,
        /// The image.
        imageID: ImgUuid,
        /// The volume.
        volumeID: VolUuid,
        /// The new virtual size in bytes; must not shrink.
        newSize: ByteSize,
    } -> (TaskId, "completed");

    /// Asks the SPM, through the master domain's mailbox, to extend the LV
    /// of a thin (COW, sparse) volume of a block domain whose image is
    /// prepared on this host; waits for the answer and refreshes the LV
    /// (docs/storage.md, "Thin volume extension"). depot's verb: in VDSM
    /// only its VM monitor asks for extends. Idempotent: a size already
    /// reached is answered at once.
    "Volume.requestExtend" => VolumeRequestExtend {
        /// The pool whose SPM extends.
        storagepoolID: SpUuid,
        /// The domain.
        storagedomainID: SdUuid,
        /// The image (prepared on this host).
        imageID: ImgUuid,
        /// The volume.
        volumeID: VolUuid,
        /// The LV size wanted in bytes (rounded up to MiB; at most the
        /// volume's fully allocated size is given).
        newSize: ByteSize,
    } -> (VolumeSize, "the LV's size after, in both fields");

    /// Deletes an image and all its volumes; postZero wipes them first.
    /// The SPM's verb when the domain is attached to a pool: 309 while
    /// that pool is not connected here, 654 while this host is not its SPM.
    "Image.delete" => ImageDelete {
        /// The image.
        imageID: ImgUuid,
        /// The pool.
        storagepoolID: Option<Uuid>,
        /// The domain.
        storagedomainID: SdUuid,
        /// Overwrite the data with zeros before removing it.
        postZero: Option<bool>,
        /// Delete even when volumes are prepared.
        force: Option<bool>,
        /// Unused on file domains.
        discard: Option<bool>,
    } -> (TaskId, "completed");

    /// Prepares a volume (and its chain) for use: returns its path under
    /// the repository's run links.
    "Image.prepare" => ImagePrepare {
        /// The pool (names the run link directory).
        storagepoolID: Uuid,
        /// The domain.
        storagedomainID: SdUuid,
        /// The image.
        imageID: ImgUuid,
        /// The volume (the leaf of the chain to prepare).
        volumeID: VolUuid,
        /// Prepare even an ILLEGAL volume.
        allowIllegal: Option<bool>,
        /// What the volume is prepared for: "vm" (a VM runs, hot-plugs or
        /// previews it) or "copy" (the default: read or written on the
        /// host, by a copy or an image transfer, never by a VM). Backup
        /// domains refuse "vm" (9011). depot's parameter; the engine's
        /// calls lack it and are never for a VM (VDSM prepares a VM's
        /// volumes inside VM.create; docs/backup.md).
        purpose: Option<String>,
    } -> (PreparedImage);

    /// Undoes prepare.
    "Image.teardown" => ImageTeardown {
        /// The pool.
        storagepoolID: Uuid,
        /// The domain.
        storagedomainID: SdUuid,
        /// The image.
        imageID: ImgUuid,
        /// The volume (unused: the whole image is torn down).
        volumeID: Option<VolUuid>,
    } -> (Done);

    /// The health of monitored domains, VDSM's repoStats.
    "Host.getStorageRepoStats" => HostGetStorageRepoStats {
        /// Only these domains (all monitored ones when left out).
        domains: Option<Vec<SdUuid>>,
    } -> (BTreeMap<String, RepoStats>, "by domain UUID");

    /// Runs a fence agent (Debian's fence-agents) against another host's
    /// power switch, as VDSM does: the agent reads its options on stdin.
    /// With a policy, an action other than status is skipped while the
    /// host still renews its lease on one of the named domains.
    "Host.fenceNode" => HostFenceNode {
        /// The power switch's address.
        addr: String,
        /// Its port or plug ("" for none).
        port: FencePort,
        /// The agent, without `fence_` (`ipmilan`, `apc`, ...).
        agent: String,
        /// The switch's user.
        username: String,
        /// Its password (never logged).
        password: Password,
        /// `status`, `on`, `off` or `reboot`.
        action: String,
        /// Use the agent's secure transport (`secure=yes`).
        secure: Option<bool>,
        /// More `name=value` lines for the agent.
        options: Option<String>,
        /// When to skip fencing.
        policy: Option<FencingPolicy>,
    } -> (FenceNodeResult, "power for status; operationStatus initiated or skipped for the other actions");

    /// Host statistics; depot reports the storage part.
    "Host.getStats" => HostGetStats {} -> (HostStats, "by domain UUID; the sizes null until the monitor has checked the domain");

    /// Lists a domain's OVF_STORE volumes (DISKTYPE OVFS) with their state
    /// as depot verifies it: valid (checksum matches), torn (a write did
    /// not finish), or unknown (written by another agent, no checksum).
    /// depot's verb.
    "StorageDomain.getOvfStores" => StorageDomainGetOvfStores {
        /// The domain.
        storagedomainID: SdUuid,
    } -> (Vec<OvfStore>);

    /// Lists the VMs and templates in the domain's best valid OVF_STORE,
    /// with the disk images each references and whether each image exists
    /// on the domain. depot's verb, for disaster recovery.
    "StorageDomain.getOvfEntities" => StorageDomainGetOvfEntities {
        /// The domain.
        storagedomainID: SdUuid,
    } -> (OvfEntities);

    /// Returns one entity's OVF text from the domain's best valid OVF_STORE.
    /// depot's verb.
    "StorageDomain.getOvfEntity" => StorageDomainGetOvfEntity {
        /// The domain.
        storagedomainID: SdUuid,
        /// The VM or template id.
        entityID: Uuid,
    } -> (OvfEntityText);

    /// Lists every VM and template the OVF backup providers hold
    /// (docs/storage.md, "OVF backup providers"): the copies each provider
    /// has, with their generation and sha256, which providers agree, and
    /// which copy depot would trust and why. depot's verb.
    "OvfBackup.list" => OvfBackupList {} -> (OvfBackupListing);

    /// One entity's copies across the providers, the copy depot would
    /// trust and its OVF text. depot's verb.
    "OvfBackup.show" => OvfBackupShow {
        /// The VM or template id.
        entityID: Uuid,
    } -> (OvfBackupEntity);

    /// Writes the trusted copy of each entity (or `provider`'s newest)
    /// into the domain's OVF_STORE as a new generation, through the upload
    /// path and its checks; the store's other entities are kept. Not
    /// idempotent in the generation (each call writes one); the content
    /// is the same for the same copies. depot's verb.
    "OvfBackup.restore" => OvfBackupRestore {
        /// The domain to restore into.
        storagedomainID: SdUuid,
        /// The OVF_STORE's image; with volumeID, or neither (the domain's
        /// first OVF_STORE).
        imageID: Option<ImgUuid>,
        /// The OVF_STORE volume.
        volumeID: Option<VolUuid>,
        /// The entities to restore; all when absent.
        entityIDs: Option<Vec<Uuid>>,
        /// Restore this provider's newest copy instead of the trusted one
        /// (stores, archive or mirror).
        provider: Option<String>,
    } -> (OvfBackupRestored);

    /// Attaches an existing OVF archive (from another host, or kept after
    /// a disaster): `resume` records into it from now on, continuing from
    /// its latest generations; `fresh` keeps it read only for restores
    /// (provider "attached") while the configured archive goes on. The
    /// archive is checked first (1000, nothing changed, when it is not a
    /// depot archive this depot can read); the choice survives a restart.
    /// Attaching the same way again changes nothing. depot's verb.
    "OvfBackup.attach" => OvfBackupAttach {
        /// The archive file (absolute path on this host).
        path: String,
        /// resume or fresh.
        mode: String,
    } -> (OvfBackupAttached);

    /// Copies one volume's data into an existing volume, as a host job
    /// (poll Host.getJobs; abort with Host.abortJob). The destination must
    /// have the given generation (911), is ILLEGAL during the copy and
    /// LEGAL with generation+1 after; the job's result holds the checksum.
    "SDM.copy_data" => SdmCopyData {
        /// The job's id, chosen by the caller.
        job_id: crate::types::JobId,
        /// The source volume.
        source: CopyEndpoint,
        /// The destination volume (it exists; created by the engine).
        destination: CopyEndpoint,
        /// Accepted; bitmaps are not copied yet.
        copy_bitmaps: Option<bool>,
    } -> (Done, "the job runs in the background");

    /// The engine's fence: when the volume has `vol_info.generation`, sets
    /// the attributes given; a host job.
    "SDM.update_volume" => SdmUpdateVolume {
        /// The job's id.
        job_id: crate::types::JobId,
        /// The volume and its expected generation.
        vol_info: VolumeRef,
        /// What to set.
        vol_attr: VolumeAttributes,
    } -> (Done, "the job runs in the background");

    /// Copies (or moves) a whole image, every volume of its chain base to
    /// leaf, to another domain. VDSM runs this as an SPM task and returns
    /// its id; depot runs it as a host job whose id is returned (see
    /// docs/copy.md).
    /// The SPM's verb when either domain is attached to a pool: 309 while
    /// that pool is not connected here, 654 while this host is not its SPM
    /// (checked before the job starts).
    "Image.move" => ImageMove {
        /// The image.
        imageID: ImgUuid,
        /// The pool.
        storagepoolID: Option<Uuid>,
        /// The source domain.
        storagedomainID: SdUuid,
        /// The destination domain.
        dstSdUUID: SdUuid,
        /// VDSM's vmUUID (unused).
        vmUUID: Option<String>,
        /// COPY or MOVE (MOVE deletes the source after the copy is verified).
        operation: MoveOperation,
        /// Wipe the source when moving.
        postZero: Option<bool>,
        /// Replace an existing image on the destination.
        force: Option<bool>,
        /// Unused on file domains.
        discard: Option<bool>,
    } -> (TaskId, "the job id: poll Host.getJobs");

    /// The blkhash checksum of a RAW volume (ovirt-imageio's algorithm), as
    /// a host job whose result is `{algorithm, block_size, checksum}`.
    /// depot's verb.
    "Volume.getChecksum" => VolumeGetChecksum {
        /// The job's id.
        job_id: crate::types::JobId,
        /// The domain.
        storagedomainID: SdUuid,
        /// The image.
        imageID: ImgUuid,
        /// The volume.
        volumeID: VolUuid,
    } -> (Done, "the job's result holds the checksum");

    /// The status of a task id that an SPM verb returned (Volume.create,
    /// Volume.delete, Volume.extendSize, Image.delete, the Lease verbs,
    /// switchMaster, Image.move, spmStart) or an OVF_STORE stream answered
    /// in its `Task-Id` header, in VDSM's shape. depot finishes the SPM
    /// verbs before answering, except Image.move and spmStart, whose ids
    /// are host jobs'; every task survives a restart (until `Task.clear`;
    /// a job's until its auto-delete too)
    /// (docs/storage.md, "SPM tasks").
    "Task.getStatus" => TaskGetStatus {
        /// The task id.
        taskID: Uuid,
    } -> (TaskStatus, "taskState running or finished; taskResult success, cleanFailure or empty");

    /// What a task is: VDSM's verb name (createVolume, deleteVolume,
    /// extendVolumeSize, deleteImage, create_lease, delete_lease,
    /// rebuild_leases, switchMaster, moveImage, spmStart,
    /// downloadImageFromStream for an OVF_STORE upload, uploadImageToStream
    /// for a read).
    "Task.getInfo" => TaskGetInfo {
        /// The task id.
        taskID: Uuid,
    } -> (TaskInfo);

    /// Forgets a finished task (403 while it runs), for good: its record
    /// is removed, an Image.move's or spmStart's job deleted.
    "Task.clear" => TaskClear {
        /// The task id.
        taskID: Uuid,
    } -> (Done);

    /// The status of every SPM task of this host: a pool's only while this
    /// host is its SPM (654 while a pool is connected and this host is not
    /// its SPM, as VDSM), the tasks of domains in no pool, Image.move's;
    /// not spmStart's (docs/storage.md, "SPM tasks").
    "Host.getAllTasksStatuses" => HostGetAllTasksStatuses {} -> (BTreeMap<String, TaskStatus>, "by task id");

    /// What every SPM task of this host is, listed as
    /// `Host.getAllTasksStatuses` lists them (the engine asks this to find
    /// the tasks of a new SPM).
    "Host.getAllTasksInfo" => HostGetAllTasksInfo {} -> (BTreeMap<String, TaskInfo>, "by task id");

    /// Starts a built-in no-op job that sleeps, reporting progress. It
    /// exercises the job machinery (status, abort, persistence, events)
    /// without touching storage. depot's test verb: offered only with
    /// `daemon.test_verbs` (on in dev mode); otherwise it answers -32601 as
    /// if it did not exist.
    "Host.sleepJob" => HostSleepJob {
        /// The new job's id, chosen by the caller.
        job_id: JobId,
        /// How long the job runs, in seconds (at most 86400).
        duration: f64,
        /// Whether the job resumes where it was after a daemon restart
        /// (default false: it is then reported failed with code 9001).
        resumable: Option<bool>,
        /// Fail with this error code at the end instead of succeeding.
        fail_code: Option<i64>,
    } -> (Done, "the job runs in the background");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_named_params() {
        let c = Call::parse(
            "Host.getJobs",
            Some(json!({"job_ids": ["5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8a"], "extra": 1})),
        )
        .unwrap();
        let Call::HostGetJobs(p) = c else { panic!() };
        assert_eq!(p.job_type, None);
        assert_eq!(p.job_ids.unwrap().len(), 1);
    }

    #[test]
    fn null_and_missing_optional_are_none() {
        let c = Call::parse("Host.getJobs", Some(json!({"job_type": null}))).unwrap();
        assert_eq!(
            c,
            Call::HostGetJobs(params::HostGetJobs {
                job_type: None,
                job_ids: None
            })
        );
    }

    #[test]
    fn errors_name_the_parameter() {
        let e = Call::parse("Host.abortJob", Some(json!({}))).unwrap_err();
        assert_eq!(e.code, Code::InvalidParams);
        assert!(e.detail.contains("'job_id'"), "{e}");

        let e = Call::parse("Host.abortJob", Some(json!({"job_id": 7}))).unwrap_err();
        assert_eq!(e.code, Code::InvalidParams);
        assert!(e.detail.contains("'job_id'"), "{e}");

        let e = Call::parse("Host.abortJob", Some(json!({"job_id": "../../etc"}))).unwrap_err();
        assert_eq!(e.code, Code::InvalidParams);

        let e = Call::parse("Host.abortJob", Some(json!(["x"]))).unwrap_err();
        assert_eq!(e.code, Code::InvalidParams);

        let e = Call::parse("No.such", None).unwrap_err();
        assert_eq!(e.code, Code::MethodNotFound);
    }

    #[test]
    fn passwords_never_print_and_ports_are_lenient() {
        let c = Call::parse(
            "ISCSIConnection.discoverSendTargets",
            Some(json!({"host": "10.0.0.1", "port": "3260", "user": "u", "password": "hunter2"})),
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"), "{c:?}");
        let Call::IscsiConnectionDiscoverSendTargets(p) = c else {
            panic!()
        };
        assert_eq!(p.port, Port(3260));
        assert_eq!(p.password.unwrap().expose(), "hunter2");
        for bad in [json!(0), json!("70000"), json!("x"), json!(-1)] {
            let e = Call::parse(
                "ISCSIConnection.discoverSendTargets",
                Some(json!({"host": "h", "port": bad})),
            )
            .unwrap_err();
            assert_eq!(e.code, Code::InvalidParams, "{bad}");
        }
        // A wrong-typed password is refused without quoting it.
        let e = Call::parse(
            "ISCSIConnection.discoverSendTargets",
            Some(json!({"host": "h", "port": 3260, "password": ["hunter2"]})),
        )
        .unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        // Same inside a connection list.
        let c = Call::parse(
            "StoragePool.connectStorageServer",
            Some(json!({"domainType": 3, "connectionParams": [
                {"id": "a", "connection": "h", "iqn": "iqn.x:y", "password": "hunter2"},
                {"id": "b", "connection": "h", "password": {"x": "hunter2"}},
            ]})),
        )
        .unwrap();
        let text = format!("{c:?}");
        assert!(!text.contains("hunter2"), "{text}");
        let Call::StoragePoolConnectStorageServer(p) = c else {
            panic!()
        };
        let first = p.connectionParams.0[0].as_ref().unwrap();
        assert_eq!(first.password.as_ref().unwrap().expose(), "hunter2");
        let (id, why) = p.connectionParams.0[1].as_ref().unwrap_err();
        assert_eq!(id.as_deref(), Some("b"));
        assert!(!why.contains("hunter2"), "{why}");
    }

    #[test]
    fn update_volume_refuses_a_type_it_cannot_set() {
        let p = |attr: serde_json::Value| {
            Call::parse(
                "SDM.update_volume",
                Some(json!({
                    "job_id": "5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8a",
                    "vol_info": {"sd_id": "5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8b",
                        "img_id": "5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8c",
                        "vol_id": "5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8d", "generation": 1},
                    "vol_attr": attr,
                })),
            )
        };
        let e = p(json!({"description": "x", "type": "SHARED"})).unwrap_err();
        assert_eq!(e.code, Code::InvalidParams);
        assert!(e.detail.contains("type=\"SHARED\""), "{e}");
        p(json!({"description": "x", "type": null})).unwrap();
        p(json!({"description": "x"})).unwrap();
    }

    #[test]
    fn catalogue_matches_calls() {
        for m in methods() {
            let err = Call::parse(m.name, Some(json!({}))).err();
            let required: Vec<_> = m.params.iter().filter(|p| p.required).collect();
            // A verb parses from `{}` exactly when it has no required param.
            assert_eq!(err.is_none(), required.is_empty(), "{}", m.name);
            if let Some(e) = err {
                assert_eq!(e.code, Code::InvalidParams);
            } else {
                assert_eq!(Call::parse(m.name, None).unwrap().method(), m.name);
            }
            assert!(!m.doc.is_empty(), "{} has no doc", m.name);
        }
    }
}
