//! Where depot's wire differs from VDSM's schema (`vdsm-api.yml`), on
//! purpose. One list: the conformance test (crates/depotd/tests/
//! conformance.rs) excuses exactly these differences and fails on any
//! other, and on an entry that no longer differs; docs/api.md shows the
//! list. Some entries are VDSM's own departures from its schema, which
//! depot follows because the engine reads what VDSM sends, not the schema.

/// One deliberate difference of one verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Difference {
    /// The verb, as in the catalogue, or [`EVERY_VERB`] for a parameter
    /// that depot treats alike in every verb that has it.
    pub verb: &'static str,
    pub item: Item,
    /// Why depot differs.
    pub why: &'static str,
    /// Which test sees the difference: "conformance" (the unprivileged
    /// tier) or the VM-tier test binary that calls the verb ("vm_block").
    pub seen_by: &'static str,
}

/// What differs. Paths into values name properties with `.`, list
/// elements with `[]` and map values with `{}` (`dominfo{}.isoprefix`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// A verb of depot's own, in one of VDSM's namespaces.
    DepotVerb,
    /// A verb VDSM has whose results the unprivileged tier cannot produce
    /// (SAN storage): checked by the named VM-tier test binary.
    VmTier(&'static str),
    /// A verb VDSM has whose results need the sanlock daemon (the
    /// unprivileged tier's daemon runs without): checked by the named
    /// root-tier test binary.
    SanlockTier(&'static str),
    /// A parameter depot has and VDSM lacks (always optional).
    ExtraParam(&'static str),
    /// A parameter of VDSM's that depot does not read.
    IgnoredParam(&'static str),
    /// A parameter VDSM requires that depot lets a caller leave out.
    OptionalParam(&'static str),
    /// A parameter depot takes in another form than VDSM's schema gives:
    /// the form depot takes.
    ParamType(&'static str, &'static str),
    /// A value of a parameter's VDSM type that depot refuses (as JSON).
    RefusedValue(&'static str, &'static str),
    /// A property of an object parameter that depot does not read.
    IgnoredProperty(&'static str),
    /// A property VDSM's result type requires that depot leaves out.
    MissingProperty(&'static str),
    /// depot answers only these top-level properties of VDSM's result type
    /// (they must be there); the others are left out.
    OnlyProperties(&'static [&'static str]),
    /// A result property VDSM's type lacks.
    ExtraProperty(&'static str),
    /// A result value VDSM's type gives as one number that VDSM (and
    /// depot) send as a list of numbers.
    NumberList(&'static str),
    /// A result value VDSM's type gives as a number that depot sends as a
    /// decimal string (digits, or empty where VDSM sends it empty).
    DecimalString(&'static str),
}

impl Item {
    /// The parameter or result path the item is about ("" for a verb).
    pub fn path(&self) -> &'static str {
        match *self {
            Item::DepotVerb | Item::VmTier(_) | Item::SanlockTier(_) | Item::OnlyProperties(_) => {
                ""
            }
            Item::ExtraParam(p)
            | Item::IgnoredParam(p)
            | Item::OptionalParam(p)
            | Item::ParamType(p, _)
            | Item::RefusedValue(p, _)
            | Item::IgnoredProperty(p)
            | Item::MissingProperty(p)
            | Item::ExtraProperty(p)
            | Item::NumberList(p)
            | Item::DecimalString(p) => p,
        }
    }

    /// Whether the item is about a parameter (checked without a daemon).
    pub fn is_param(&self) -> bool {
        matches!(
            self,
            Item::ExtraParam(_)
                | Item::IgnoredParam(_)
                | Item::OptionalParam(_)
                | Item::ParamType(..)
                | Item::RefusedValue(..)
                | Item::IgnoredProperty(_)
        )
    }

    /// Whether the item is about a result (checked on a real call).
    pub fn is_result(&self) -> bool {
        matches!(
            self,
            Item::MissingProperty(_)
                | Item::OnlyProperties(_)
                | Item::ExtraProperty(_)
                | Item::NumberList(_)
                | Item::DecimalString(_)
        )
    }

    /// The difference in words, for docs/api.md.
    pub fn describe(&self) -> String {
        match *self {
            Item::DepotVerb => "depot's verb; VDSM has none by this name".into(),
            Item::VmTier(test) => format!("results checked in the VM tier ({test}.rs)"),
            Item::SanlockTier(test) => {
                format!("results checked in the root tier with the sanlock daemon ({test}.rs)")
            }
            Item::ExtraParam(p) => format!("parameter `{p}`: depot's; VDSM has none"),
            Item::IgnoredParam(p) => format!("parameter `{p}`: accepted and not read"),
            Item::OptionalParam(p) => {
                format!("parameter `{p}`: VDSM requires it, depot lets it be left out")
            }
            Item::ParamType(p, t) => format!("parameter `{p}`: depot takes {t}"),
            Item::RefusedValue(p, v) => format!("parameter `{p}`: the value `{v}` is refused"),
            Item::IgnoredProperty(p) => format!("parameter `{p}`: not read"),
            Item::MissingProperty(p) => format!("{}: left out", result_at(p)),
            Item::OnlyProperties(ps) => format!(
                "result: only {} of VDSM's type",
                ps.iter()
                    .map(|p| format!("`{p}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Item::ExtraProperty(p) => format!("{}: not in VDSM's type", result_at(p)),
            Item::NumberList(p) => format!(
                "{}: a list of numbers (VDSM's schema says one; VDSM sends a list)",
                result_at(p)
            ),
            Item::DecimalString(p) => format!("{}: a decimal string", result_at(p)),
        }
    }
}

/// The `verb` of a parameter difference shared by every verb with that
/// parameter.
pub const EVERY_VERB: &str = "*";

impl Difference {
    /// Whether the entry is about `verb`.
    pub fn is_for(&self, verb: &str) -> bool {
        self.verb == verb || (self.verb == EVERY_VERB && self.item.is_param())
    }
}

/// "result `path`", or "result" for the result itself.
fn result_at(path: &str) -> String {
    if path.is_empty() {
        "result".into()
    } else {
        format!("result `{path}`")
    }
}

const fn d(verb: &'static str, item: Item, why: &'static str) -> Difference {
    Difference {
        verb,
        item,
        why,
        seen_by: "conformance",
    }
}

const fn vm(verb: &'static str, test: &'static str, item: Item, why: &'static str) -> Difference {
    Difference {
        verb,
        item,
        why,
        seen_by: test,
    }
}

/// A `Lease.*` verb: its result is checked by storage_xleases in the
/// sanlock tier (its daemon has sanlock; the unprivileged tier's has not).
const fn xleases_tier(verb: &'static str) -> Difference {
    vm(
        verb,
        "storage_xleases",
        Item::SanlockTier("storage_xleases"),
        XLEASES_NEED_SANLOCK,
    )
}

const SAN: &str = "SAN storage: the unprivileged tier has none";
const CONNECTION_KEYS: &str = "a name of the schema's ConnectionRefParameters that nobody sends: \
    VDSM (storageServer.py) and the engine (StorageConnectionHelper.java) use connection, \
    vfs_type, mnt_options and protocol_version, which depot reads";
const VOLUME_TYPE: &str = "changing a volume's type (the engine makes a template's volumes \
    SHARED) is not supported yet: refused rather than ignored";
const OVF_BACKUP_VERB: &str = "OVF backup providers and their restore (issue 17): VDSM keeps \
     OVFs only in the domains' OVF_STOREs";
const OVF_VERB: &str = "disaster recovery from a domain's OVF_STORE volumes on the host \
    (docs/formats.md); VDSM leaves reading them to the engine";
const XLEASES_NEED_SANLOCK: &str = "leases are sanlock resources: the unprivileged tier's \
    daemon runs without sanlock, where these verbs answer 2009 or 9031";
const VG_EXTRA: &str = "depot's: LVM's figure, for depot's clients";
const PV_EXTRA: &str = "VDSM sends it too (hsm.__fillPVDict); the schema lacks it";
const CHAP_USER: &str = "VDSM's key for the CHAP user (multipath.pathListIter; the schema \
    says username); depot never returns the password";

/// Every deliberate difference: first those of every verb, then by verb in
/// catalogue order.
pub const DIFFERENCES: &[Difference] = &[
    // ---- every verb with the parameter ----
    d(
        EVERY_VERB,
        Item::OptionalParam("storagepoolID"),
        "depot finds domains and volumes by their own ids and does not need the pool; \
         the engine always sends it",
    ),
    d(
        EVERY_VERB,
        Item::OptionalParam("postZero"),
        "defaults to false: no wipe",
    ),
    d(
        EVERY_VERB,
        Item::OptionalParam("force"),
        "defaults to false",
    ),
    d(
        EVERY_VERB,
        Item::OptionalParam("scsiKey"),
        "unused, in VDSM too",
    ),
    d(
        EVERY_VERB,
        Item::RefusedValue("domainType", "\"SHAREDFS\""),
        "VDSM's code knows no SHAREDFS (its name is POSIXFS) and refuses it too",
    ),
    d(
        EVERY_VERB,
        Item::RefusedValue("domainType", "\"UNKNOWN\""),
        "names no storage",
    ),
    d(
        EVERY_VERB,
        Item::RefusedValue("storageType", "\"SHAREDFS\""),
        "VDSM's code knows no SHAREDFS (its name is POSIXFS)",
    ),
    d(
        EVERY_VERB,
        Item::RefusedValue("storageType", "\"UNKNOWN\""),
        "names no storage",
    ),
    d(
        EVERY_VERB,
        Item::RefusedValue("storageType", "\"MIXED\""),
        "names no storage type; VDSM refuses it too (sd.storageType)",
    ),
    d(
        EVERY_VERB,
        Item::RefusedValue("storageType", "\"iSCSI\""),
        "depot takes the storage type as the engine sends it: 3, or VDSM's name ISCSI \
         (VDSM upper-cases names, depot does not)",
    ),
    d(
        EVERY_VERB,
        Item::RefusedValue("domainClass", "\"Unknown\""),
        "names no class; VDSM knows only Data, Iso and Backup and refuses it too",
    ),
    d(
        EVERY_VERB,
        Item::IgnoredProperty("connectionParams[].spec"),
        CONNECTION_KEYS,
    ),
    d(
        EVERY_VERB,
        Item::IgnoredProperty("connectionParams[].vfstype"),
        CONNECTION_KEYS,
    ),
    d(
        EVERY_VERB,
        Item::IgnoredProperty("connectionParams[].options"),
        CONNECTION_KEYS,
    ),
    d(
        EVERY_VERB,
        Item::IgnoredProperty("connectionParams[].version"),
        CONNECTION_KEYS,
    ),
    d(
        EVERY_VERB,
        Item::IgnoredProperty("connectionParams[].export"),
        CONNECTION_KEYS,
    ),
    d(
        EVERY_VERB,
        Item::IgnoredProperty("connectionParams[].path"),
        CONNECTION_KEYS,
    ),
    // ---- by verb ----
    d(
        "Host.getCapabilities",
        Item::OnlyProperties(&[
            "software_version",
            "software_revision",
            "version_name",
            "additionalFeatures",
        ]),
        "depot is the host's storage agent: the CPU, memory, network and virtualization \
         capabilities are not its to report; version_name \"depot\" tells a client which \
         agent answers",
    ),
    d(
        "Host.getCapabilities",
        Item::ExtraProperty("storage_domain_types"),
        "depot's: the storage domain types this build serves",
    ),
    d(
        "Host.getCapabilities",
        Item::ExtraProperty("sanlock"),
        "depot's: whether this host can use sanlock, and why not (VDSM assumes it can; \
         depot also starts where sanlock is missing)",
    ),
    d(
        "Host.getJobs",
        Item::ExtraProperty("{}.result"),
        "depot's: what a finished job produced (a copy's generation and checksum)",
    ),
    d(
        "Host.abortJob",
        Item::DepotVerb,
        "VDSM has no verb to abort a storage job (only Host.abortV2VJob); depot's jobs \
         can be aborted",
    ),
    d(
        "Host.deleteJob",
        Item::DepotVerb,
        "VDSM forgets an ended job only after [jobs] autodelete_delay; depot's clients \
         may drop it sooner",
    ),
    d(
        "Volume.requestExtend",
        Item::DepotVerb,
        "VDSM's hosts ask the SPM for thin LV extends from their VM monitor only \
         (no verb); depot has no VM monitor, so a client may ask",
    ),
    d(
        "Host.subscribeEvents",
        Item::DepotVerb,
        "VDSM's clients subscribe to events over STOMP; depot's WebSocket clients with \
         this verb",
    ),
    d(
        "StoragePool.connectStorageServer",
        Item::RefusedValue("domainType", "0"),
        "0 (UNKNOWN) names no storage; VDSM has no connection of that type either",
    ),
    vm(
        "ISCSIConnection.discoverSendTargets",
        "vm_iscsi",
        Item::VmTier("vm_iscsi"),
        SAN,
    ),
    vm(
        "Host.getDeviceList",
        "vm_iscsi",
        Item::VmTier("vm_iscsi"),
        SAN,
    ),
    vm(
        "Host.getDeviceList",
        "vm_iscsi",
        Item::DecimalString("[].capacity"),
        "as VDSM sends it (hsm._getDeviceList)",
    ),
    vm(
        "Host.getDeviceList",
        "vm_iscsi",
        Item::DecimalString("[].logicalblocksize"),
        "as VDSM sends it (multipath.pathListIter)",
    ),
    vm(
        "Host.getDeviceList",
        "vm_iscsi",
        Item::DecimalString("[].physicalblocksize"),
        "as VDSM sends it (multipath.pathListIter)",
    ),
    vm(
        "Host.getDeviceList",
        "vm_iscsi",
        Item::DecimalString("[].pvsize"),
        "as VDSM sends it (hsm._getDeviceList); empty when the device is no PV",
    ),
    vm(
        "Host.getDeviceList",
        "vm_iscsi",
        Item::ExtraProperty("[].vgUUID"),
        "VDSM sends it too (hsm._getDeviceList); the schema lacks it",
    ),
    vm(
        "Host.getDeviceList",
        "vm_iscsi",
        Item::ExtraProperty("[].pathlist[].user"),
        CHAP_USER,
    ),
    vm(
        "Host.getDevicesVisibility",
        "vm_iscsi",
        Item::VmTier("vm_iscsi"),
        SAN,
    ),
    d(
        "StorageDomain.create",
        Item::ExtraParam("backup"),
        "the backup storage domain flag at creation (docs/backup.md)",
    ),
    d(
        "StorageDomain.create",
        Item::ParamType(
            "typeArgs",
            "a string: the connection of a file domain, the VG's UUID for a block domain",
        ),
        "what the engine sends and VDSM's hsm.createStorageDomain reads; nobody sends \
         the schema's object form",
    ),
    d(
        "StorageDomain.setBackup",
        Item::DepotVerb,
        "the backup storage domain flag (docs/backup.md), which VDSM leaves to the \
         engine's database",
    ),
    d(
        "StorageDomain.getInfo",
        Item::DecimalString("version"),
        "as VDSM sends it (sd.py getInfo: str(version))",
    ),
    d(
        "StorageDomain.getInfo",
        Item::ExtraProperty("remotePath"),
        "VDSM's file domains send it too (fileSD.getInfo); the schema lacks it",
    ),
    d(
        "StorageDomain.getInfo",
        Item::ExtraProperty("backup"),
        "depot's: the backup storage domain flag (StorageDomain.setBackup)",
    ),
    vm(
        "StorageDomain.getInfo",
        "vm_block",
        Item::ExtraProperty("vguuid"),
        "VDSM's block domains send it too (blockSD.getInfo), and the engine reads it \
         when it imports a block domain; the schema lacks it",
    ),
    vm(
        "StorageDomain.getInfo",
        "vm_block",
        Item::ExtraProperty("state"),
        "VDSM's block domains send it too (blockSD.getInfo: the VG's OK or PARTIAL); \
         the schema lacks it",
    ),
    d(
        "StorageDomain.getStats",
        Item::DecimalString("disktotal"),
        "as VDSM sends it (fileSD.getStats, blockSD.getStats)",
    ),
    d(
        "StorageDomain.getStats",
        Item::DecimalString("diskfree"),
        "as VDSM sends it (fileSD.getStats, blockSD.getStats)",
    ),
    d(
        "StorageDomain.format",
        Item::OptionalParam("autoDetach"),
        "defaults to false",
    ),
    vm(
        "StorageDomain.extend",
        "vm_block",
        Item::VmTier("vm_block"),
        SAN,
    ),
    vm(
        "StorageDomain.resizePV",
        "vm_block",
        Item::VmTier("vm_block"),
        SAN,
    ),
    vm(
        "StorageDomain.resizePV",
        "vm_block",
        Item::DecimalString(""),
        "as VDSM sends it (hsm.resizePV: str(pv.size)); the engine reads a string",
    ),
    vm(
        "LVMVolumeGroup.create",
        "vm_block",
        Item::VmTier("vm_block"),
        SAN,
    ),
    vm(
        "LVMVolumeGroup.getInfo",
        "vm_block",
        Item::VmTier("vm_block"),
        SAN,
    ),
    vm(
        "LVMVolumeGroup.getInfo",
        "vm_block",
        Item::ExtraProperty("extent_size"),
        VG_EXTRA,
    ),
    vm(
        "LVMVolumeGroup.getInfo",
        "vm_block",
        Item::ExtraProperty("tags"),
        VG_EXTRA,
    ),
    vm(
        "LVMVolumeGroup.getInfo",
        "vm_block",
        Item::ExtraProperty("pvlist[].pe_count"),
        PV_EXTRA,
    ),
    vm(
        "LVMVolumeGroup.getInfo",
        "vm_block",
        Item::ExtraProperty("pvlist[].pe_alloc_count"),
        PV_EXTRA,
    ),
    vm(
        "LVMVolumeGroup.getInfo",
        "vm_block",
        Item::ExtraProperty("pvlist[].discard_max_bytes"),
        PV_EXTRA,
    ),
    vm(
        "LVMVolumeGroup.getInfo",
        "vm_block",
        Item::ExtraProperty("pvlist[].discard_zeroes_data"),
        PV_EXTRA,
    ),
    vm(
        "LVMVolumeGroup.getInfo",
        "vm_block",
        Item::ExtraProperty("pvlist[].pathlist[].user"),
        CHAP_USER,
    ),
    vm(
        "LVMVolumeGroup.remove",
        "vm_block",
        Item::VmTier("vm_block"),
        SAN,
    ),
    vm(
        "Host.getLVMVolumeGroups",
        "vm_block",
        Item::VmTier("vm_block"),
        SAN,
    ),
    vm(
        "Host.getLVMVolumeGroups",
        "vm_block",
        Item::ExtraProperty("[].extent_size"),
        VG_EXTRA,
    ),
    vm(
        "Host.getLVMVolumeGroups",
        "vm_block",
        Item::ExtraProperty("[].tags"),
        VG_EXTRA,
    ),
    vm(
        "Host.getLVMVolumeGroups",
        "vm_block",
        Item::ExtraProperty("[].pvlist[].pe_count"),
        PV_EXTRA,
    ),
    vm(
        "Host.getLVMVolumeGroups",
        "vm_block",
        Item::ExtraProperty("[].pvlist[].pe_alloc_count"),
        PV_EXTRA,
    ),
    vm(
        "Host.getLVMVolumeGroups",
        "vm_block",
        Item::ExtraProperty("[].pvlist[].discard_max_bytes"),
        PV_EXTRA,
    ),
    vm(
        "Host.getLVMVolumeGroups",
        "vm_block",
        Item::ExtraProperty("[].pvlist[].discard_zeroes_data"),
        PV_EXTRA,
    ),
    vm(
        "Host.getLVMVolumeGroups",
        "vm_block",
        Item::ExtraProperty("[].pvlist[].pathlist[].user"),
        CHAP_USER,
    ),
    d(
        "StorageDomain.getFileStats",
        Item::OptionalParam("caseSensitive"),
        "defaults to true",
    ),
    d(
        "StorageDomain.getFileStats",
        Item::DecimalString("{}.size"),
        "as VDSM sends it (fileSD.getFileList)",
    ),
    d(
        "StorageDomain.getFileStats",
        Item::DecimalString("{}.ctime"),
        "as VDSM sends it (fileSD.getFileList)",
    ),
    d(
        "StoragePool.create",
        Item::OptionalParam("domainList"),
        "the master alone makes a pool; other domains can be attached later",
    ),
    d(
        "StoragePool.create",
        Item::OptionalParam("lockRenewalIntervalSec"),
        "leases are single-host for now: depot does not need it",
    ),
    d(
        "StoragePool.create",
        Item::OptionalParam("leaseTimeSec"),
        "leases are single-host for now: depot does not need it",
    ),
    d(
        "StoragePool.create",
        Item::OptionalParam("ioOpTimeoutSec"),
        "leases are single-host for now: depot does not need it",
    ),
    d(
        "StoragePool.create",
        Item::OptionalParam("leaseRetries"),
        "leases are single-host for now: depot does not need it",
    ),
    d(
        "StoragePool.getInfo",
        Item::MissingProperty("dominfo{}.disktotal"),
        "left out, as VDSM does, for a domain that is not active or not checked yet \
         (hsm._getDomsStats)",
    ),
    d(
        "StoragePool.getInfo",
        Item::MissingProperty("dominfo{}.diskfree"),
        "left out, as VDSM does, for a domain that is not active or not checked yet \
         (hsm._getDomsStats)",
    ),
    d(
        "StorageDomain.deactivate",
        Item::OptionalParam("masterSdUUID"),
        "needed only to move the master role away from the domain being deactivated",
    ),
    d(
        "StorageDomain.deactivate",
        Item::OptionalParam("masterVersion"),
        "needed only to move the master role away from the domain being deactivated",
    ),
    d(
        "Volume.create",
        Item::IgnoredParam("addBitmaps"),
        "dirty bitmaps (incremental backup) are not supported yet",
    ),
    d(
        "Volume.create",
        Item::IgnoredParam("bitmap"),
        "dirty bitmaps (incremental backup) are not supported yet",
    ),
    d(
        "Volume.getInfo",
        Item::DecimalString("capacity"),
        "as VDSM sends it (volume.py getInfo)",
    ),
    d(
        "Volume.getInfo",
        Item::DecimalString("apparentsize"),
        "as VDSM sends it (volume.py getInfo)",
    ),
    d(
        "Volume.getInfo",
        Item::DecimalString("truesize"),
        "as VDSM sends it (volume.py getInfo)",
    ),
    d(
        "Volume.getInfo",
        Item::DecimalString("ctime"),
        "as VDSM sends it (volume.py getInfo)",
    ),
    d(
        "Volume.getInfo",
        Item::DecimalString("mtime"),
        "as VDSM sends it (volume.py getInfo)",
    ),
    d(
        "Volume.getInfo",
        Item::ExtraProperty("type"),
        "VDSM sends the allocation as type too (volume.py metadata2info); the schema \
         lacks it",
    ),
    d(
        "Volume.getInfo",
        Item::ExtraProperty("sequence"),
        "VDSM sends it too (volume.py metadata2info); the schema lacks it",
    ),
    d(
        "Volume.getSize",
        Item::DecimalString("apparentsize"),
        "as VDSM sends it (hsm.getVolumeSize)",
    ),
    d(
        "Volume.getSize",
        Item::DecimalString("truesize"),
        "as VDSM sends it (hsm.getVolumeSize)",
    ),
    d(
        "Image.prepare",
        Item::ExtraParam("purpose"),
        "what the volume is prepared for, vm or copy: a backup domain refuses vm \
         (docs/backup.md)",
    ),
    d(
        "Image.prepare",
        Item::ExtraProperty("info"),
        "depot's: the volume's kind and path (VDSM's Bridge answers only path)",
    ),
    d(
        "Image.prepare",
        Item::ExtraProperty("imgVolumesInfo"),
        "depot's: the chain's volumes and their paths (VDSM's Bridge answers only path)",
    ),
    d("StorageDomain.getOvfStores", Item::DepotVerb, OVF_VERB),
    d(
        "StorageDomain.getHostLiveness",
        Item::DepotVerb,
        "the storage's own answer to whether a host is alive (sanlock's delta leases), for \
         fencing and disaster recovery; VDSM keeps it internal (hsm.getHostLeaseStatus)",
    ),
    d(
        "DR.plan",
        Item::DepotVerb,
        "disaster recovery from a mapping file (docs/dr.md); in oVirt the engine and its \
         Ansible role drive it, VDSM has no verb",
    ),
    d(
        "DR.failover",
        Item::DepotVerb,
        "disaster recovery from a mapping file (docs/dr.md); in oVirt the engine and its \
         Ansible role drive it, VDSM has no verb",
    ),
    d(
        "DR.failback",
        Item::DepotVerb,
        "disaster recovery from a mapping file (docs/dr.md); in oVirt the engine and its \
         Ansible role drive it, VDSM has no verb",
    ),
    d(
        "DR.status",
        Item::DepotVerb,
        "disaster recovery from a mapping file (docs/dr.md); in oVirt the engine and its \
         Ansible role drive it, VDSM has no verb",
    ),
    xleases_tier("Lease.create"),
    xleases_tier("Lease.delete"),
    xleases_tier("Lease.info"),
    xleases_tier("Lease.status"),
    xleases_tier("Lease.rebuild_leases"),
    xleases_tier("Lease.fence"),
    vm(
        "Lease.status",
        "storage_xleases",
        Item::NumberList("owners"),
        "VDSM's lease_status answers `owners: [host_id]` (or `[]` when free), not the \
         schema's one number",
    ),
    d("StorageDomain.getOvfEntities", Item::DepotVerb, OVF_VERB),
    d("StorageDomain.getOvfEntity", Item::DepotVerb, OVF_VERB),
    d("OvfBackup.list", Item::DepotVerb, OVF_BACKUP_VERB),
    d("OvfBackup.show", Item::DepotVerb, OVF_BACKUP_VERB),
    d("OvfBackup.restore", Item::DepotVerb, OVF_BACKUP_VERB),
    d("OvfBackup.attach", Item::DepotVerb, OVF_BACKUP_VERB),
    d(
        "SDM.copy_data",
        Item::IgnoredProperty("source.prepared"),
        "depot activates what a copy needs and never tears it down after, so an image \
         the engine prepared stays prepared",
    ),
    d(
        "SDM.copy_data",
        Item::IgnoredProperty("destination.prepared"),
        "depot activates what a copy needs and never tears it down after, so an image \
         the engine prepared stays prepared",
    ),
    d(
        "SDM.update_volume",
        Item::RefusedValue("vol_attr.type", "\"INTERNAL\""),
        VOLUME_TYPE,
    ),
    d(
        "SDM.update_volume",
        Item::RefusedValue("vol_attr.type", "\"LEAF\""),
        VOLUME_TYPE,
    ),
    d(
        "SDM.update_volume",
        Item::RefusedValue("vol_attr.type", "\"SHARED\""),
        VOLUME_TYPE,
    ),
    d(
        "Image.move",
        Item::ExtraParam("vmUUID"),
        "accepted and unused: VDSM's internal moveImage takes it, its JSON-RPC verb does \
         not",
    ),
    d(
        "Image.move",
        Item::RefusedValue("operation", "\"UNKNOWN\""),
        "names no operation",
    ),
    d(
        "Volume.getChecksum",
        Item::DepotVerb,
        "the checksum of a volume's data as a host job (for VDSM's hosts ovirt-imageio \
         computes it)",
    ),
    d(
        "Host.getStats",
        Item::OnlyProperties(&["storageDomains"]),
        "depot reports the storage part: the host's other statistics are not its to report",
    ),
    d(
        "Host.getStats",
        Item::ExtraProperty("storageDomains{}.disktotal"),
        "depot's: the domain's space, as in StorageDomain.getStats",
    ),
    d(
        "Host.getStats",
        Item::ExtraProperty("storageDomains{}.diskfree"),
        "depot's: the domain's space, as in StorageDomain.getStats",
    ),
    d(
        "Host.sleepJob",
        Item::DepotVerb,
        "a test verb, offered only with daemon.test_verbs",
    ),
];
