//! The typed results of the verbs: what the daemon answers, serialized
//! with serde, and how docs/api.md shows each (generated from the types,
//! so the reference cannot drift from the answers).
//!
//! The daemon serializes a result into a `serde_json::Value` before the
//! response is written. serde_json is built without `preserve_order` in
//! this workspace, so an object's keys go out sorted, whatever the order
//! of a struct's fields: the wire is the same as the `json!` objects these
//! types replace.

use serde::{Serialize, Serializer};
use std::collections::BTreeMap;

use crate::types::{Capabilities, JobInfo, Uuid};

/// A verb's result type, and how the docs show it.
pub trait WireResult: Serialize {
    /// The shape: `true`, `string`, `{a, b: {c}}`, `[...]`.
    fn describe() -> String;
    /// A value shown by its name alone inside an object.
    const SCALAR: bool = false;
}

macro_rules! scalar {
    ($($t:ty => $d:literal),* $(,)?) => {$(
        impl WireResult for $t {
            fn describe() -> String { $d.to_string() }
            const SCALAR: bool = true;
        }
    )*};
}

scalar! {
    String => "string",
    bool => "boolean",
    u32 => "uint",
    u64 => "uint",
    i64 => "int",
    Uuid => "UUID",
    serde_json::Value => "object (docs/dr.md)",
}

impl<T: WireResult> WireResult for Vec<T> {
    fn describe() -> String {
        format!("[{}]", T::describe())
    }
}

impl<T: WireResult> WireResult for Option<T> {
    fn describe() -> String {
        T::describe()
    }
    const SCALAR: bool = T::SCALAR;
}

impl<T: WireResult> WireResult for BTreeMap<String, T> {
    fn describe() -> String {
        format!("{{key: {}}}", T::describe())
    }
}

/// One field of an object, for [`WireResult::describe`].
pub fn field<T: WireResult>(name: &str) -> String {
    let name = name.trim_start_matches("r#");
    if T::SCALAR {
        name.to_string()
    } else {
        format!("{name}: {}", T::describe())
    }
}

/// A field's description marked `key?` when serde leaves the key out
/// (`skip_serializing_if`), as the docs write a key that may be absent.
pub fn maybe_absent(described: String, attrs: &str) -> String {
    if !attrs.contains("skip_serializing_if") {
        return described;
    }
    match described.split_once(':') {
        Some((name, ty)) => format!("{name}?:{ty}"),
        None => format!("{described}?"),
    }
}

/// Declares an object result: a struct whose fields are the wire's keys
/// (serde attributes allowed), and its description.
macro_rules! object {
    ($(#[doc = $doc:literal])* $name:ident {
        $( $(#[$attr:meta])* $field:ident : $ty:ty ),* $(,)?
    }) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[allow(non_snake_case)]
        pub struct $name { $( $(#[$attr])* pub $field: $ty, )* }

        impl WireResult for $name {
            fn describe() -> String {
                let fields: &[String] = &[$(
                    maybe_absent(field::<$ty>(stringify!($field)), stringify!($($attr)*)),
                )*];
                format!("{{{}}}", fields.join(", "))
            }
        }
    };
}

/// `true`: the answer of a verb whose schema returns nothing, as VDSM's
/// JSON-RPC server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Done;

impl Serialize for Done {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(true)
    }
}

impl WireResult for Done {
    fn describe() -> String {
        "true".into()
    }
    const SCALAR: bool = true;
}

/// The id of a task (VDSM's SPM task id, or depot's job id where it plays
/// that part).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct TaskId(pub Uuid);

impl WireResult for TaskId {
    fn describe() -> String {
        "task id (UUID)".into()
    }
    const SCALAR: bool = true;
}

impl WireResult for Capabilities {
    fn describe() -> String {
        format!(
            "{{{}}}",
            [
                field::<String>("version_name"),
                field::<String>("software_version"),
                field::<String>("software_revision"),
                field::<Vec<u32>>("domain_versions"),
                field::<Vec<String>>("storage_domain_types"),
                field::<BTreeMap<String, Vec<u32>>>("supported_block_size"),
                field::<Vec<String>>("additionalFeatures"),
            ]
            .join(", ")
        )
    }
}

impl WireResult for JobInfo {
    fn describe() -> String {
        "HostJobInfo".into()
    }
    const SCALAR: bool = true;
}

object! {
    /// The outcome of one entry of a connect or disconnect.
    ConnectionStatus {
        id: String,
        /// 0, or the connection's error code.
        status: i64,
    }
}

object! {
    /// VDSM's TaskStatus.
    TaskStatus {
        taskID: String,
        /// running or finished.
        taskState: String,
        /// success, cleanFailure or empty while running.
        taskResult: String,
        code: i64,
        message: String,
    }
}

object! {
    /// VDSM's TaskInfo.
    TaskInfo {
        id: String,
        verb: String,
    }
}

object! {
    /// Sizes as decimal strings, as VDSM; `mda*` are block-domain figures,
    /// reported as VDSM does for file domains.
    DomainStats {
        disktotal: String,
        diskfree: String,
        mdasize: u64,
        mdafree: u64,
        mdavalid: bool,
        mdathreshold: bool,
    }
}

object! {
    /// Sizes as decimal strings.
    VolumeSize {
        apparentsize: String,
        truesize: String,
    }
}

// ---- devices and LVM volume groups ----

object! {
    /// One iSCSI session of a device's paths.
    PathInfo {
        connection: String,
        port: String,
        iqn: String,
        /// The target portal group tag.
        portal: String,
        initiatorname: String,
        /// VDSM adds user and password; depot never returns a secret.
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    }
}

object! {
    /// One path of a device.
    PathStatus {
        physdev: String,
        /// active or failed.
        state: String,
        capacity: String,
        lun: String,
        r#type: String,
    }
}

object! {
    /// VDSM's BlockDeviceInfo: sizes and block sizes as decimal strings,
    /// discard_max_bytes a number.
    BlockDeviceInfo {
        GUID: String,
        capacity: String,
        devtype: String,
        vendorID: String,
        productID: String,
        fwrev: String,
        serial: String,
        logicalblocksize: String,
        physicalblocksize: String,
        pathlist: Vec<PathInfo>,
        pathstatus: Vec<PathStatus>,
        pvUUID: String,
        pvsize: String,
        vgUUID: String,
        status: String,
        partitioned: bool,
        discard_max_bytes: u64,
        discard_zeroes_data: u32,
    }
}

object! {
    /// vg_attr's columns, as VDSM's VG_ATTR names them.
    VgAttr {
        permission: String,
        resizeable: String,
        exported: String,
        partial: String,
        allocation: String,
        clustered: String,
    }
}

object! {
    /// One PV of a volume group; the device's keys (as in
    /// Host.getDeviceList) when multipath lists the device.
    PvInfo {
        GUID: String,
        pvUUID: String,
        vgUUID: String,
        capacity: String,
        devcapacity: String,
        pe_count: String,
        pe_alloc_count: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        vendorID: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        productID: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        serial: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        fwrev: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        devtype: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pathlist: Option<Vec<PathInfo>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pathstatus: Option<Vec<PathStatus>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        discard_max_bytes: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        discard_zeroes_data: Option<u32>,
    }
}

object! {
    /// VDSM's VolumeGroupInfo; sizes as decimal strings.
    VolumeGroupInfo {
        name: String,
        vgUUID: String,
        vgsize: String,
        vgfree: String,
        extent_size: String,
        /// 3: VDSM's LVM type.
        r#type: u32,
        attr: VgAttr,
        /// OK or PARTIAL.
        state: String,
        tags: Vec<String>,
        pvlist: Vec<PvInfo>,
    }
}

// ---- domains, pools and their health ----

object! {
    /// VDSM's StorageDomainInfo; block domains add the keys that may be
    /// absent.
    DomainInfo {
        uuid: String,
        name: String,
        r#type: String,
        class: String,
        role: String,
        pool: Vec<String>,
        version: String,
        master_ver: i64,
        lver: i64,
        spm_id: i64,
        remotePath: String,
        block_size: u32,
        alignment: u64,
        backup: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        vguuid: Option<String>,
        /// OK or PARTIAL.
        #[serde(skip_serializing_if = "Option::is_none")]
        state: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        metadataDevice: Option<String>,
        /// Present when one PV alone holds the VG's metadata.
        #[serde(skip_serializing_if = "Option::is_none")]
        vgMetadataDevice: Option<String>,
    }
}

object! {
    /// One file of StorageDomain.getFileStats: size and ctime as decimal
    /// strings.
    FileStat {
        size: String,
        ctime: String,
        /// 0, or 469 when QEMU could not read the file.
        status: i64,
    }
}

object! {
    /// The pool part of StoragePool.getInfo.
    PoolDetails {
        name: String,
        /// The master domain's type.
        r#type: String,
        master_uuid: String,
        master_ver: i64,
        spm_id: i64,
        lver: i64,
        /// `sdUUID:status` joined by commas.
        domains: String,
        pool_status: String,
        version: String,
        isoprefix: String,
    }
}

object! {
    /// One domain of a pool, as StoragePool.getInfo reports it; the sizes
    /// (decimal strings) once the monitor has checked the domain.
    PoolDomainInfo {
        status: String,
        alerts: Vec<String>,
        version: u32,
        isoprefix: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        diskfree: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        disktotal: Option<String>,
    }
}

object! {
    /// One host of a domain's lockspace, as this host's sanlock daemon sees
    /// its delta lease (`StorageDomain.getHostLiveness`).
    HostLiveness {
        host_id: u64,
        /// `live`, `fail` (stopped renewing, may recover), `dead` (stopped
        /// long enough for its watchdog to have fired), `free` (not held)
        /// or `unknown` (not watched long enough to tell): VDSM's names.
        status: String,
        /// Raised each time the host acquires its id anew.
        generation: u64,
        /// Its last renewal, in seconds of that host's monotonic clock (as
        /// sanlock stores it; not comparable with this host's clock).
        timestamp: u64,
        /// sanlock's I/O timeout of that host, seconds.
        io_timeout: u32,
    }
}

object! {
    /// `DR.failover` and `DR.failback`'s answer: the job, or the dry run's
    /// report.
    DrStarted {
        /// The job running the steps: poll `Host.getJobs`; its result is
        /// the report.
        #[serde(skip_serializing_if = "Option::is_none")]
        job_id: Option<String>,
        /// The dry run's report: steps 1 and 3 as read, what 2, 4 and 5
        /// would do.
        #[serde(skip_serializing_if = "Option::is_none")]
        dry_run: Option<serde_json::Value>,
    }
}

object! {
    /// `DR.status`: this host's DR journal.
    DrStatusReport {
        /// `none` (no journal), `running` (a job runs it),
        /// `interrupted` (unfinished, no job: rerun with the same
        /// mapping) or `finished`.
        state: String,
        /// The journal (docs/formats.md); once finished, the report.
        #[serde(skip_serializing_if = "Option::is_none")]
        journal: Option<serde_json::Value>,
    }
}

object! {
    /// `DR.plan`'s answer (docs/dr.md): what a failover with the mapping
    /// would do, read without changing anything.
    DrPlanReport {
        /// The mapping's format: `toml` or `ansible`.
        format: String,
        /// Whether this is the failback plan (the mapping reversed).
        failback: bool,
        /// What the mapping had that depot does not use (the Ansible
        /// file's engine keys), named.
        warnings: Vec<String>,
        /// The data center that is lost.
        primary_pool: DrPool,
        /// The data center the domains are recovered into.
        secondary_pool: DrPool,
        connections: Vec<DrConnectionPlan>,
        /// Failover's step 1.
        fence: DrFenceCheck,
    }
}

object! {
    /// A data center of a DR mapping: its id, its name, or both.
    DrPool {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    }
}

object! {
    /// One primary connection of a DR mapping and its secondary.
    DrConnectionPlan {
        /// The entry's name (`connection 'data'`, `dr_import_storages[0] ('x')`).
        name: String,
        /// NFS, GLUSTERFS, POSIXFS, ISCSI, FCP or LOCALFS.
        r#type: String,
        /// A backup domain: never made the master.
        backup: bool,
        primary: DrSidePlan,
        secondary: DrSidePlan,
        /// The mapping's domains, then any found on a side that it does
        /// not list.
        domains: Vec<DrDomainSight>,
    }
}

object! {
    /// One side of a DR connection pair now, and what failover would do.
    DrSidePlan {
        /// The connection (`server:/path`, the directory, the portal and
        /// targets, the LUNs).
        connection: String,
        /// `connected`, `not connected` or `unknown`.
        state: String,
        /// Why the state is unknown.
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        /// Failover's step 2: `disconnect` (primary), `connect`
        /// (secondary) or `none`.
        action: String,
        /// Where a file connection is (or would be) mounted.
        #[serde(skip_serializing_if = "Option::is_none")]
        mount_point: Option<String>,
    }
}

object! {
    /// Where this host sees one domain of a DR mapping.
    DrDomainSight {
        sd_id: String,
        /// Listed in the mapping (false: found on a side, not listed).
        expected: bool,
        visible: bool,
        /// `primary`, `secondary` (a side of its pair), `block` (its VG,
        /// side not told by the LUNs), `elsewhere`, `nowhere` or
        /// `unreadable`.
        on: String,
        /// The VG and its LUNs, the other mount, or why unreadable.
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    }
}

object! {
    /// Failover's step 1 (read-only): who still renews a delta lease.
    DrFenceCheck {
        /// `pass`, `pass (confirmed fenced)`, `refuse` or `unknown`.
        verdict: String,
        /// What the verdict rests on, naming the hosts.
        message: String,
        /// Every host other than this one that is not known dead.
        live_hosts: Vec<DrLiveHost>,
        /// Each visible domain's lockspace as read.
        domains: Vec<DrFenceDomain>,
    }
}

object! {
    /// A host other than this one that sanlock does not see dead.
    DrLiveHost {
        host_id: u64,
        /// sanlock's status: `live`, `fail` or `unknown`.
        status: String,
        /// `primary`, `secondary` or `unlisted` (by the mapping's hosts).
        site: String,
        /// Confirmed fenced by the caller (`confirmedFenced`).
        confirmed: bool,
        /// The domains whose lockspace it is in.
        domains: Vec<String>,
    }
}

object! {
    /// One lockspace of the fence check.
    DrFenceDomain {
        sd_id: String,
        /// Whether sanlock's host list was read.
        checked: bool,
        /// This host's id there, left out of the check.
        #[serde(skip_serializing_if = "Option::is_none")]
        this_host: Option<u64>,
        /// Why it could not be read.
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    }
}

object! {
    /// VDSM's LeaseInfo (`Lease.info`): where the lease is, for acquiring
    /// it with sanlock (lockspace `sd_id`, resource `lease_id`).
    LeaseInfo {
        sd_id: String,
        lease_id: String,
        /// The domain's `xleases` file or LV.
        path: String,
        /// Byte offset of the lease in `path`.
        offset: u64,
    }
}

object! {
    /// VDSM's JobMetadata, kept in a lease's value block.
    JobMetadata {
        /// `JOB`.
        r#type: String,
        job_id: String,
        /// PENDING, FAILED, SUCCEEDED or FENCED.
        job_status: String,
        generation: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        created: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        modified: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        host_hardware_id: Option<String>,
    }
}

object! {
    /// VDSM's ExternalLeaseStatus (`Lease.status`).
    LeaseStatus {
        /// Host ids holding the lease (empty: free).
        owners: Vec<u64>,
        /// The lease's version (sanlock's lver).
        version: u64,
        /// The job metadata in the lease, when it is free and this host
        /// could read it.
        #[serde(skip_serializing_if = "Option::is_none")]
        metadata: Option<JobMetadata>,
    }
}

object! {
    /// VDSM's FenceNodeResult: `power` for `status` (on, off, unknown),
    /// `operationStatus` `initiated` for an action that ran, `skipped` when
    /// the policy found the host alive on storage.
    FenceNodeResult {
        #[serde(skip_serializing_if = "Option::is_none")]
        operationStatus: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        power: Option<String>,
    }
}

object! {
    /// VDSM's SpmStatus (`StoragePool.getSpmStatus`).
    SpmStatus {
        /// The SPM's host id, -1 when no host is known to hold the lease.
        spmId: i64,
        /// This host's role: `SPM`, `Contend` or `Free`.
        spmStatus: String,
        /// The SPM lease's version, -1 when unknown.
        spmLver: i64,
    }
}

object! {
    /// VDSM's StoragePoolInfo.
    PoolInfo {
        info: PoolDetails,
        /// By domain UUID.
        dominfo: BTreeMap<String, PoolDomainInfo>,
    }
}

object! {
    /// VDSM's repoStats entry of one domain.
    RepoStats {
        code: i64,
        lastCheck: String,
        delay: String,
        valid: bool,
        version: u32,
        acquired: bool,
        actual: bool,
    }
}

object! {
    /// A domain in Host.getStats: its repoStats and its sizes (decimal
    /// strings, null until the monitor has checked the domain).
    DomainHostStats {
        code: i64,
        lastCheck: String,
        delay: String,
        valid: bool,
        version: u32,
        acquired: bool,
        actual: bool,
        disktotal: Option<String>,
        diskfree: Option<String>,
    }
}

impl DomainHostStats {
    /// A domain's repoStats with its sizes.
    pub fn new(r: RepoStats, disktotal: Option<String>, diskfree: Option<String>) -> Self {
        DomainHostStats {
            code: r.code,
            lastCheck: r.lastCheck,
            delay: r.delay,
            valid: r.valid,
            version: r.version,
            acquired: r.acquired,
            actual: r.actual,
            disktotal,
            diskfree,
        }
    }
}

object! {
    /// Host.getStats: the storage part.
    HostStats {
        /// By domain UUID.
        storageDomains: BTreeMap<String, DomainHostStats>,
    }
}

// ---- volumes and images ----

object! {
    /// VDSM's VolumeLeaseStatus: where a volume's lease is and, when it
    /// could be read, who holds it. `owners` and `version` are left out
    /// when it could not (VDSM: "needs repair"); `version` is null when
    /// the lease is free.
    VolumeLeaseStatus {
        path: String,
        offset: u64,
        /// Host ids; empty when the lease is free.
        #[serde(skip_serializing_if = "Option::is_none")]
        owners: Option<Vec<u64>>,
        /// The lease's version (lver), null when it is free.
        #[serde(skip_serializing_if = "Option::is_none")]
        version: Option<Option<u64>>,
    }
}

object! {
    /// VDSM's VolumeInfo; sizes and times as decimal strings. `lease` is
    /// left out when the domain has no volume leases (sanlock disabled,
    /// or a domain made without a lockspace), as VDSM leaves it out.
    VolumeInfo {
        uuid: String,
        image: String,
        domain: String,
        pool: String,
        parent: String,
        children: Vec<String>,
        format: String,
        voltype: String,
        /// The allocation, as allocType.
        r#type: String,
        allocType: String,
        disktype: String,
        description: String,
        legality: String,
        /// OK, or ILLEGAL when the volume is not LEGAL.
        status: String,
        capacity: String,
        apparentsize: String,
        truesize: String,
        ctime: String,
        mtime: String,
        generation: u32,
        sequence: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        lease: Option<VolumeLeaseStatus>,
    }
}

object! {
    /// How a prepared volume is reached.
    PreparedPath {
        /// file.
        r#type: String,
        path: String,
    }
}

object! {
    /// One volume of a prepared chain.
    PreparedVolume {
        domainID: String,
        imageID: String,
        volumeID: String,
        path: String,
        leasePath: String,
        leaseOffset: u64,
    }
}

object! {
    /// Image.prepare's answer: the leaf's path under the run links and
    /// the chain, base to leaf.
    PreparedImage {
        path: String,
        info: PreparedPath,
        imgVolumesInfo: Vec<PreparedVolume>,
    }
}

// ---- OVF_STORE restore verbs ----

object! {
    /// One OVF_STORE volume and its state as depot verifies it; the
    /// trailer's generation, sha256 and updated when valid, the reason
    /// when torn.
    OvfStore {
        imageID: String,
        volumeID: String,
        /// valid, torn or unknown.
        state: String,
        valid: bool,
        /// null when unknown.
        size: Option<u64>,
        description: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        generation: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        updated: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    }
}

object! {
    /// A disk image an entity references, and whether the domain has it.
    OvfImageRef {
        imageID: String,
        volumeID: String,
        present: bool,
    }
}

object! {
    /// A VM or template of an OVF_STORE.
    OvfEntitySummary {
        id: String,
        name: String,
        /// VM or TEMPLATE.
        r#type: String,
        images: Vec<OvfImageRef>,
        /// Whether every image is present.
        complete: bool,
    }
}

object! {
    /// An archive entry that could not be read as an OVF.
    OvfEntryError {
        entry: String,
        error: String,
    }
}

object! {
    /// StorageDomain.getOvfEntities' answer.
    OvfEntities {
        store: OvfStore,
        entities: Vec<OvfEntitySummary>,
        errors: Vec<OvfEntryError>,
    }
}

object! {
    /// One entity's OVF text; name and type null when the OVF does not
    /// parse.
    OvfEntityText {
        id: String,
        name: Option<String>,
        r#type: Option<String>,
        ovf: String,
    }
}

object! {
    /// A configured OVF backup provider, and why it could not be read.
    OvfBackupProvider {
        name: String,
        /// Whether uploads are recorded in it (false: a read-only view).
        records: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    }
}

object! {
    /// One copy of an entity's OVF that a provider holds.
    OvfBackupCopy {
        provider: String,
        /// The source store's generation; null for a store written by
        /// another agent.
        generation: Option<u64>,
        sha256: String,
        sourceDomainID: String,
        sourceImageID: String,
        sourceVolumeID: String,
        /// When it was recorded, seconds since the epoch (0: unknown).
        time: u64,
        /// The providers holding the same source, generation and sha256.
        agreesWith: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        unusable: Option<String>,
    }
}

object! {
    /// A VM or template across the providers, and the copy depot trusts.
    OvfBackupEntity {
        id: String,
        name: String,
        /// VM or TEMPLATE.
        r#type: String,
        copies: Vec<OvfBackupCopy>,
        /// The provider of the trusted copy; null when none is trusted.
        trusted: Option<String>,
        trustedGeneration: Option<u64>,
        trustedSha256: Option<String>,
        /// Why that copy (or why none).
        reason: String,
        /// The trusted copy's text (OvfBackup.show only).
        #[serde(skip_serializing_if = "Option::is_none")]
        ovf: Option<String>,
    }
}

object! {
    /// OvfBackup.list's answer.
    OvfBackupListing {
        providers: Vec<OvfBackupProvider>,
        entities: Vec<OvfBackupEntity>,
    }
}

object! {
    /// An entity OvfBackup.restore wrote, and from which copy.
    OvfBackupRestoredEntity {
        id: String,
        name: String,
        provider: String,
        generation: Option<u64>,
        sha256: String,
    }
}

object! {
    /// An entity OvfBackup.restore did not write, and why.
    OvfBackupSkipped {
        id: String,
        reason: String,
    }
}

object! {
    /// OvfBackup.restore's answer: the store written and its generation.
    OvfBackupRestored {
        storagedomainID: String,
        imageID: String,
        volumeID: String,
        generation: u64,
        restored: Vec<OvfBackupRestoredEntity>,
        skipped: Vec<OvfBackupSkipped>,
    }
}

object! {
    /// The newest generation an archive holds of one source store.
    OvfBackupGeneration {
        sourceDomainID: String,
        sourceVolumeID: String,
        generation: u64,
    }
}

object! {
    /// OvfBackup.attach's answer.
    OvfBackupAttached {
        path: String,
        /// resume or fresh.
        mode: String,
        /// The archive uploads are recorded in from now on.
        recording: Option<String>,
        /// What the attached archive holds: each source store's newest
        /// generation.
        latest: Vec<OvfBackupGeneration>,
    }
}
