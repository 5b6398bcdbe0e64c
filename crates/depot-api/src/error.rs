//! Error codes and the error value every verb returns.
//!
//! The wire shape is VDSM's: `{"code": N, "message": "<text>: <detail>"}`.
//! Codes follow VDSM's numbering where VDSM has the error (read from
//! `lib/vdsm/storage/exception.py` and `lib/vdsm/common/exception.py`), so an
//! oVirt engine maps them the way it maps VDSM's. Protocol errors use
//! JSON-RPC's reserved `-326xx` range. Errors VDSM does not have get codes in
//! depot's own range 9000..=9999, which VDSM never uses.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! codes {
    ($( $(#[$doc:meta])* $name:ident = $code:literal, $text:literal; )*) => {
        /// Every error code depot can return. The numeric value is stable: it
        /// is part of the wire contract and listed in docs/api.md.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $( $(#[$doc])* $name, )*
        }

        impl Code {
            /// All codes, in declaration order (used to generate docs/api.md).
            pub const ALL: &'static [Code] = &[ $( Code::$name, )* ];

            pub const fn number(self) -> i32 {
                match self { $( Code::$name => $code, )* }
            }

            /// The fixed text, VDSM's `msg` where VDSM has the error.
            pub const fn text(self) -> &'static str {
                match self { $( Code::$name => $text, )* }
            }

            pub const fn name(self) -> &'static str {
                match self { $( Code::$name => stringify!($name), )* }
            }

            pub fn from_number(n: i32) -> Option<Code> {
                match n { $( $code => Some(Code::$name), )* _ => None }
            }
        }
    };
}

codes! {
    // JSON-RPC protocol errors.
    /// The request is not valid JSON.
    ParseError = -32700, "Parse error";
    /// Not a JSON-RPC 2.0 request object, an empty or oversized batch, or a
    /// request larger than the configured limit.
    InvalidRequest = -32600, "Invalid request";
    /// No verb of that name.
    MethodNotFound = -32601, "Method not found";
    /// A parameter is missing, of the wrong type, or positional.
    InvalidParams = -32602, "Invalid params";
    /// A bug in depot; the message says where.
    InternalError = -32603, "Internal error";

    /// `Host.fenceNode`: the fence agent failed, or answered that the
    /// action failed (VDSM answers the agent's exit code, 1 or 2, with its
    /// output; depot answers 1 with the output and the code).
    FenceAgentFailed = 1, "Fence agent failed";
    // VDSM common errors (lib/vdsm/common/exception.py).
    /// `Host.fenceNode` names an agent that is not installed.
    UnsupportedFenceAgent = 43, "Unsupported fencing agent";
    /// `Host.getJobs`/`Host.abortJob` named a job that does not exist.
    NoSuchJob = 66, "Job Id does not exists";
    /// A job id was reused for a different job.
    JobExists = 69, "Job id already exists";
    /// The job kind cannot be aborted.
    AbortNotSupported = 80, "Job does not support aborting";
    /// The job already ended, so it cannot be aborted.
    JobNotActive = 84, "Job is not active";

    // VDSM storage errors (lib/vdsm/storage/exception.py, HEAD fd4b0df2).
    GeneralException = 100, "General Exception";
    StorageException = 200, "General Storage Exception";
    VolumeDoesNotExist = 201, "Volume does not exist";
    IncorrectFormat = 202, "Incorrect Volume format";
    VolumeIsBusy = 203, "Volume is busy";
    VolumeImageHasChildren = 204, "Cannot delete volume which has children (non-ethical)";
    VolumeCreationError = 205, "Error creating a new volume";
    VolumeExtendingError = 206, "Error extending volume";
    VolumeMetadataReadError = 207, "Error while processing volume meta data";
    VolumeMetadataWriteError = 208, "Error while updating volume meta data";
    VolumeAlreadyExists = 212, "Volume already exists";
    CannotDeleteVolume = 222, "Volume deletion error";
    VolumeCopyError = 225, "Volume copy failed";
    PrepareIllegalVolumeError = 227, "Cannot prepare illegal volume";
    CreateVolumeSizeError = 229, "Requested size is too small. Must be larger or equal to 1";
    IncorrectType = 231, "Incorrect Volume Preallocate Type";
    VolumeResizeValueError = 232, "Incorrect size value for volume resize";
    MoveImageError = 253, "Error moving image";
    ImagePathError = 254, "Image path does not exist or cannot be accessed/created";
    ImageDeleteError = 256, "Could not remove all image's volumes";
    ImageDoesNotExistInSD = 268, "Image does not exist in domain";
    StoragePoolActionError = 300, "Error storage pool action";
    StoragePoolCreationError = 301, "Error creating a storage pool";
    StoragePoolUnknown = 309, "Unknown pool id, pool not connected";
    StoragePoolNotConnected = 313, "Storage pool not connected";
    StoragePoolAlreadyExists = 316, "Error creating a storage pool - pool already exists";
    IsoCannotBeMasterDomain = 317, "ISO domain cannot be a master storage domain";
    BackupCannotBeMasterDomain = 319, "Backup domain cannot be a master storage domain";
    CannotConnectMultiplePools = 323, "Cannot connect pool, already connected to another pool";
    StoragePoolWrongMaster = 324, "Wrong Master domain or its version";
    StoragePoolConnected = 325, "Cannot perform action while storage pool is connected";
    StorageDomainIllegalState = 347, "Storage domain is in illegal state";
    StorageDomainActionError = 350, "Error in storage domain action";
    StorageDomainCreationError = 351, "Error creating a storage domain";
    StorageDomainFormatError = 352, "Error formatting a storage domain";
    /// `StoragePool.switchMaster`, `Volume.requestExtend`: the domain is
    /// not a domain of the pool.
    StorageDomainNotInPool = 353, "Storage domain not in pool";
    StorageDomainAttachError = 354, "Error attaching storage domain";
    StorageDomainDetachError = 356, "Error detaching storage domain";
    StorageDomainDoesNotExist = 358, "Storage domain does not exist";
    StorageDomainActivateError = 359, "Error activating storage domain";
    StorageDomainFSNotMounted = 360, "Storage domain remote path not mounted";
    StorageDomainNotEmpty = 361, "Storage domain is not empty - requires cleaning";
    StorageDomainAlreadyExists = 365, "Storage domain already exists";
    /// `spmStop` (and what stops the SPM role): the block master's `master`
    /// file system could not be unmounted; this host stays the SPM.
    StorageDomainMasterUnmountError = 366, "Error unmounting master storage domain";
    /// `spmStart`: `e2fsck -p` left errors on the block master's `master`
    /// file system (exit code 4 or more); the SPM's lease is given back.
    BlockStorageDomainMasterFSCKError = 367, "BlockSD master file system FSCK error";
    /// `spmStart`: the block master's `master` file system could not be
    /// made (an old domain's), activated or mounted, or its LV holds an
    /// unknown signature; the SPM's lease is given back.
    BlockStorageDomainMasterMountError = 368, "BlockSD master file system mount error";
    StorageDomainNotActive = 369, "Storage domain not active";
    StorageDomainLayoutError = 371, "Storage domain layout corrupted";
    StorageDomainTypeError = 372, "Unsupported Storage Domain type";
    StorageDomainCheckError = 377, "Domain has errors";
    StorageDomainAccessError = 379, "Domain is either partially accessible or entirely inaccessible";
    StorageDomainAlreadyAttached = 380, "Storage domain already attached to pool";
    StorageDomainStateTransitionIllegal = 381, "Domain state change illegal";
    StorageDomainActive = 382, "Illegal action, domain active";
    CannotDetachMasterStorageDomain = 383, "Illegal action";
    FileStorageDomainStaleNFSHandle = 384, "Stale NFS handle on underlying NFS server";
    StorageDomainInsufficientPermissions = 385, "Insufficient access permissions to underlying storage";
    StorageDomainClassError = 386, "Invalid domain class value";
    StorageDomainDescriptionTooLongError = 387, "Storage domain description is too long";
    UnsupportedDomainVersion = 394, "Domain version is unsupported by this version of depot";
    UnknownTask = 401, "Task id unknown";
    TaskNotFinished = 403, "Task not finished";
    /// A job was aborted on request.
    TaskAborted = 411, "Task is aborted";
    StorageServerConnectionError = 451, "Error storage server connection";
    StorageServerDisconnectionError = 452, "Error storage server disconnection";
    StorageServerValidationError = 453, "The specified path does not exist or cannot be reached.";
    /// An iSCSI operation failed that has no more specific code (e.g. the
    /// session list could not be read).
    #[allow(non_camel_case_types)]
    StorageServeriSCSIError = 454, "iSCSI connection error";
    /// Creating or updating the iSCSI node record (or its CHAP settings)
    /// failed.
    #[allow(non_camel_case_types)]
    AddiSCSINodeError = 460, "Add iSCSI node error";
    /// Login to the iSCSI node failed for a reason other than
    /// authentication (unreachable portal, unknown target, ...).
    #[allow(non_camel_case_types)]
    iSCSILoginError = 464, "Failed to login to iSCSI node";
    /// The iSCSI subsystem is not usable (iscsid not running, no initiator
    /// name).
    #[allow(non_camel_case_types)]
    iSCSISetupError = 465, "Failed to setup iSCSI subsystem";
    /// Multipath could not be read or set up (multipathd or dmsetup
    /// failed).
    MultipathSetupError = 467, "Failed to setup multipath";
    StorageServerAccessPermissionError = 469, "Permission settings on the specified path do not allow";
    MountTypeError = 470, "Mount type error";
    MountParsingError = 471, "Mount parsing error";
    /// The iSCSI iface named by the connection does not exist.
    #[allow(non_camel_case_types)]
    iSCSIifaceError = 473, "iscsiadm iface error";
    /// Logout from the iSCSI node failed.
    #[allow(non_camel_case_types)]
    iSCSILogoutError = 474, "Failed to logout from iSCSI node";
    /// SendTargets discovery failed (portal unreachable, no targets, ...).
    #[allow(non_camel_case_types)]
    iSCSIDiscoveryError = 475, "Failed discovery of iSCSI targets";
    /// iSCSI login or discovery was refused: wrong CHAP user or password.
    #[allow(non_camel_case_types)]
    iSCSILoginAuthError = 476, "Failed to login to iSCSI node due to authorization failure";
    MountError = 477, "Problem while trying to mount target";
    VolumeGroupActionError = 500, "Error volume group action";
    VolumeGroupCreateError = 502, "Cannot create Volume Group";
    VolumeGroupExtendError = 503, "Cannot extend Volume Group";
    VolumeGroupSizeError = 504, "Volume Group not big enough";
    VolumeGroupAlreadyExistsError = 505, "Volume Group Already Exists";
    VolumeGroupDoesNotExist = 506, "Volume Group does not exist";
    VolumeGroupRemoveError = 508, "Volume Group remove error";
    VolumeGroupUninitialized = 509, "Volume Group not initialize";
    VolumeGroupHasDomainTag = 515, "Volume Group has domain tag - requires cleaning";
    VolumeGroupReplaceTagError = 516, "Replace Volume Group tag error";
    CannotCreateLogicalVolume = 550, "Cannot create Logical Volume";
    CannotRemoveLogicalVolume = 551, "Cannot remove Logical Volume";
    CannotDeactivateLogicalVolume = 552, "Cannot deactivate Logical Volume";
    LogicalVolumeExtendError = 554, "Logical Volume extend failed";
    LogicalVolumeRefreshError = 556, "Cannot refresh Logical Volume";
    CannotActivateLogicalVolume = 558, "Cannot activate Logical Volume";
    LogicalVolumeReplaceTagError = 572, "Replace Logical Volume tag error";
    /// Listing or checking block devices failed (Host.getDeviceList,
    /// Host.getDevicesVisibility).
    BlockDeviceActionError = 600, "Error block device action";
    PhysDevInitializationError = 601, "Failed to initialize physical device";
    LogicalVolumeAlreadyExists = 604, "Cannot create logical volume - already exists";
    InaccessiblePhysDev = 606, "Multipath cannot access physical device(s)";
    /// `StorageDomain.create` of a block domain: `mkfs.ext3` on its
    /// `master` LV failed.
    MkfsError = 608, "Cannot create filesystem on device";
    LogicalVolumeDoesNotExistError = 610, "Logical volume does not exist";
    CouldNotResizePhysicalVolume = 615, "Could not resize PV";
    LVMCommandError = 621, "LVM command failed";
    /// `spmStart` could not take the SPM's lease (`SDM` in the master's
    /// `leases`): another host holds it, sanlock is unavailable, or this
    /// host's id in the master's lockspace was not acquired in time.
    AcquireLockFailure = 651, "Cannot obtain lock";
    /// A verb for the SPM on a host that is not the SPM.
    SpmStatusError = 654, "Not SPM";
    /// `spmStop` (or a disconnect) could not release the SPM's lease.
    ReleaseLockFailure = 660, "Cannot release lock";
    /// sanlock refused or could not start acquiring the host id; also a
    /// `StoragePool.connect` host id outside 1..=2000 (sanlock's range:
    /// VDSM passes it on and reports sanlock's EINVAL with this code).
    AcquireHostIdFailure = 661, "Cannot acquire host id";
    /// `StoragePool.destroy` with a host id that is not the one this host
    /// connected the pool with.
    HostIdMismatch = 700, "Host id not found or does not match manager host id";
    /// The lockspace (`dom_md/ids`) or the SDM lease (`dom_md/leases`) of a
    /// new domain could not be formatted; a lease of `xleases` could not be
    /// written, cleared or read by `sanlock direct`.
    ClusterLockInitError = 701, "Could not initialize cluster lock";
    /// A lease's value block (a job's metadata: `Lease.create` with
    /// metadata, `Lease.status`, `Lease.fence`) could not be read, written
    /// or parsed.
    SanlockLVBError = 703, "LVB operation failed";
    MetaDataGeneralError = 749, "General Meta data error";
    MetaDataKeyError = 750, "Meta data key error";
    /// VDSM raises `MetaDataSealIsBroken` (a subclass of 749) with 752.
    MetaDataSealIsBroken = 752, "Meta Data seal is broken (checksum mismatch)";
    MetaDataValidationError = 753, "Meta Data self-validation failed";
    MetadataOverflowError = 756, "Metadata is too big. Cannot change Metadata";
    MetadataCleared = 757, "Metadata was cleared, volume is partly deleted";
    ResourceTimeout = 851, "Resource timeout";
    GenerationMismatch = 911, "The provided generation does not match the actual generation";
    /// `Lease.fence`: the job status on the lease is not the one given.
    JobStatusMismatch = 912, "The provided job status does not match the expected job status";
    /// `Lease.info`, `Lease.status`: no lease of that id in the domain's
    /// `xleases` index (VDSM's `NoSuchLease`).
    NoSuchLease = 936, "No such lease";
    InvalidParameterException = 1000, "Invalid parameter";
    MiscFileReadException = 2001, "Internal file read failure";
    MiscFileWriteException = 2002, "Internal file write failure";
    /// `spmStart` while another `spmStart` of the pool is under way.
    MiscOperationInProgress = 2005, "Operation is already in progress";
    /// VDSM's `UnsupportedOperation`: `Lease.*` without sanlock;
    /// `Lease.fence` of a lease whose job type or id is not the one given.
    UnsupportedOperation = 2009, "Operation is not supported";

    // depot's own errors.
    /// The daemon stopped (crash or restart) while the job was running, and
    /// the job's kind cannot resume. Its outcome is unknown: treat any
    /// volume it touched as suspect (the engine fences it by generation).
    /// Also the code of an OVF_STORE stream's task that was running then.
    JobInterrupted = 9001, "Job was interrupted by a daemon restart";
    /// The verb needs a transport feature this connection lacks (for
    /// example event subscription over plain HTTP POST).
    TransportNotSupported = 9002, "Not supported on this transport";
    /// The daemon is shutting down and takes no new work.
    ShuttingDown = 9003, "Daemon is shutting down";
    /// An OVF_STORE update did not finish (a crash mid-write): its content
    /// is not served. Upload it again.
    OvfStoreTorn = 9004, "OVF store is torn: an update did not finish";
    /// The upload does not fit in the OVF_STORE volume (its last 4 KiB
    /// hold depot's integrity trailer).
    OvfUploadTooLarge = 9005, "OVF upload is larger than the OVF store volume";
    /// The domain has no OVF_STORE that verifies.
    NoValidOvfStore = 9006, "No valid OVF store on the domain";
    /// No VM or template with that id in the OVF store.
    OvfEntityNotFound = 9007, "No such VM or template in the OVF store";
    // Backup storage domains (docs/backup.md): one code per rule.
    /// Only data domains can be backup domains (not ISO, not the legacy
    /// export class).
    BackupNeedsDataDomain = 9010, "Only a data domain can be a backup domain";
    /// A backup domain never runs a VM: preparing a volume for a VM (run,
    /// hot-plug, preview) is refused.
    BackupDomainCannotRunVm = 9011, "A backup domain cannot run VMs: volumes on it cannot be prepared for a VM";
    /// Memory volumes (MEMD, MEMM) never go to a backup domain.
    BackupDomainNoMemoryVolumes = 9012, "A backup domain cannot hold memory volumes";
    /// The flag cannot be set while a volume of the domain is in use.
    BackupFlagDomainInUse = 9013, "Cannot make a domain a backup domain while its volumes are in use";
    /// The hosted engine's disks never go to a backup domain.
    BackupDomainNoHostedEngine = 9014, "A backup domain cannot hold the hosted engine's disks";
    /// A disk in use by a running VM cannot be moved live into a backup
    /// domain.
    BackupDomainNoLiveMove = 9015, "Cannot move a disk in use by a running VM into a backup domain";
    /// `Volume.getChecksum` could not compute the checksum (the data could
    /// not be read, or changed size while it was read).
    VolumeChecksumError = 9016, "Volume checksum failed";
    /// `jobs.max_active` jobs are pending or running already: start the
    /// job again once some have ended.
    TooManyJobs = 9020, "Too many active jobs";
    /// `StorageDomain.getHostLiveness` on a host that holds no host id in
    /// the domain's lockspace (sanlock tells liveness only to a member),
    /// or without sanlock.
    HostIdNotHeld = 9021, "This host holds no host id in the domain's lockspace";
    /// `Lease.*` on a domain whose `xleases` index is missing (a domain
    /// made without sanlock), not VDSM's format, or left half-rewritten
    /// (`Lease.rebuild_leases` repairs the last). VDSM raises its
    /// `InvalidIndex` errors, which have no code of their own.
    XleasesIndexInvalid = 9031, "The domain's xleases index is missing or invalid";
    /// `Lease.create` with every lease slot of the domain's `xleases`
    /// volume taken (VDSM's `NoSpace`, which has no code of its own).
    XleasesFull = 9032, "No free lease slot in the domain's xleases volume";
    // Disaster recovery (docs/dr.md): the mapping file, one code per rule.
    /// `DR.plan`: the mapping is not TOML (or YAML for the Ansible
    /// format), has a key the format does not know, or a version this
    /// depot does not read.
    DrMappingUnreadable = 9040, "The disaster recovery mapping cannot be read";
    /// A primary connection without its secondary.
    DrMissingSecondary = 9041, "A primary connection in the disaster recovery mapping has no secondary";
    /// A domain UUID listed twice, or two entries with the same primary
    /// (or the same secondary) connection.
    DrDuplicateEntry = 9042, "The disaster recovery mapping lists an entry twice";
    /// A connection type other than NFS, GLUSTERFS, POSIXFS, ISCSI, FCP,
    /// LOCALFS.
    DrUnknownConnectionType = 9043, "Unknown connection type in the disaster recovery mapping";
    /// A relative path, a path with `..`, or one that is not a path.
    DrPathEscape = 9044, "A path in the disaster recovery mapping is not absolute or escapes";
    /// An entry whose secondary is its primary.
    DrSecondaryIsPrimary = 9045, "A secondary connection in the disaster recovery mapping is its own primary";
    /// An iSCSI entry without a target, or an iSCSI or FCP entry without
    /// its LUNs.
    DrBlockConnectionIncomplete = 9046, "A block connection in the disaster recovery mapping lacks its target or LUNs";
    /// A LOCALFS side that is not a local directory path.
    DrLocalNotDirectory = 9047, "A LOCALFS connection in the disaster recovery mapping is not a local directory";
    /// Any other value the mapping cannot take (a field missing, a bad
    /// UUID, address, port or host id, two data centers, a host in both
    /// sites).
    DrMappingInvalid = 9048, "The disaster recovery mapping is invalid";
    // Disaster recovery: DR.failover and DR.failback (docs/dr.md).
    /// The fence check refused: a host other than this one may still
    /// write to the storage (not dead or free in a lockspace), and the
    /// admin did not confirm it fenced; the message names each host.
    /// Also when the check cannot be made once this host has joined the
    /// lockspaces (sanlock enabled, a lockspace not readable).
    DrFenceRefused = 9049, "Disaster recovery refused: a host may still write to the storage";
    /// A journal of another run (another mapping, or the other
    /// direction) is open and unfinished: finish that run first.
    DrJournalOpen = 9050, "Another disaster recovery run is unfinished";
    /// Failback: the site failed over to (the primary of the reversed
    /// mapping) holds domain metadata the other site's copy does not: it
    /// was not resynced.
    DrFailbackNotResynced = 9051, "Failback refused: the primary's domain metadata is newer than the secondary's";
    /// A DR.failover or DR.failback job is running on this host already.
    DrBusy = 9052, "A disaster recovery job is running already";
    /// Step 4 cannot be done: the mapping names no recovery pool id, no
    /// host id is known, no domain was found usable, only backup domains
    /// could be the master, or a domain is on both sides.
    DrCannotTakeOver = 9053, "The domains cannot be taken over";
    /// The journal in the state directory cannot be read (corrupt, or
    /// written by a newer depot): nothing is done until it is moved away.
    DrJournalUnreadable = 9054, "The disaster recovery journal cannot be read";
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.number())
    }
}

/// An error as a verb returns it: a code and the detail that says what went
/// wrong with which argument. Displayed (and sent) as `"<text>: <detail>"`.
///
/// It may also carry, for the daemon's log only, the text of what failed
/// underneath (the chain of a storage error's sources): never on the wire,
/// not in `Display`, not compared by equality.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ApiError {
    pub code: Code,
    pub detail: String,
    cause: Option<String>,
}

impl ApiError {
    pub fn new(code: Code, detail: impl Into<String>) -> Self {
        ApiError {
            code,
            detail: detail.into(),
            cause: None,
        }
    }

    /// Keeps `cause` (what failed underneath, as text) for the log.
    #[must_use]
    pub fn with_cause(mut self, cause: impl Into<String>) -> Self {
        self.cause = Some(cause.into());
        self
    }

    /// What failed underneath, if the error was made with one: for logs,
    /// never sent.
    pub fn cause(&self) -> Option<&str> {
        self.cause.as_deref()
    }

    pub fn message(&self) -> String {
        if self.detail.is_empty() {
            self.code.text().to_string()
        } else {
            format!("{}: {}", self.code.text(), self.detail)
        }
    }

    pub fn to_wire(&self) -> WireError {
        WireError {
            code: self.code.number(),
            message: self.message(),
        }
    }
}

/// Equal when the wire says the same: the cause is not compared.
impl PartialEq for ApiError {
    fn eq(&self, other: &Self) -> bool {
        self.code == other.code && self.detail == other.detail
    }
}

impl Eq for ApiError {}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.message(), self.code.number())
    }
}

/// The error object on the wire: JSON-RPC's `error` member, and VDSM's
/// `ErrorInfo` inside a job's info.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    pub code: i32,
    pub message: String,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl From<ApiError> for WireError {
    fn from(e: ApiError) -> Self {
        e.to_wire()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn the_cause_is_for_the_log_only() {
        let plain = ApiError::new(Code::VolumeCopyError, "copy: on x");
        let caused = plain.clone().with_cause("qemu-img convert: exit 1");
        assert_eq!(caused.cause(), Some("qemu-img convert: exit 1"));
        assert_eq!(plain.cause(), None);
        assert_eq!(caused.to_wire(), plain.to_wire());
        assert_eq!(caused.to_string(), plain.to_string());
        assert_eq!(caused.message(), plain.message());
        assert_eq!(caused, plain);
    }

    #[test]
    fn numbers_are_unique() {
        let mut seen = HashSet::new();
        for c in Code::ALL {
            assert!(seen.insert(c.number()), "duplicate code {c}");
            assert_eq!(Code::from_number(c.number()), Some(*c));
        }
    }

    #[test]
    fn message_is_text_colon_detail() {
        let e = ApiError::new(Code::NoSuchJob, "'abc'");
        assert_eq!(e.message(), "Job Id does not exists: 'abc'");
        assert_eq!(e.to_wire().code, 66);
        assert_eq!(
            ApiError::new(Code::GenerationMismatch, "").message(),
            "The provided generation does not match the actual generation"
        );
    }
}
