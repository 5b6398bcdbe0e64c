//! depot-storage: connections, storage domains (file and block), volumes
//! and images, the OVF store and the copy engine.
//!
//! No JSON-RPC and no process spawning here: the daemon hands in typed calls
//! (ids and enumerations from `depot_api::storage`), and every OS call goes
//! through `depot-os`. Functions here are blocking: they do file I/O that
//! can hang on a dead server, so the daemon calls them from blocking threads,
//! and the calls that touch a mount run through `depot_os::IoWorker` with a
//! timeout.

pub mod backup;
pub mod block;
pub mod connection;
pub mod copy;
pub mod devices;
pub mod domain;
pub mod domain_spec;
pub mod engine;
pub mod error;
pub mod events;
pub mod file;
pub mod layout;
pub mod lock;
pub mod lockspace;
pub mod mailbox;
pub mod metadata;
pub mod monitor;
pub mod mount_fs;
pub mod ovf;
pub mod volume_data;
pub mod volume_store;
pub mod xlease;

pub use domain_spec::CreateDomain;
/// `DR.plan`'s typed report (docs/dr.md).
pub use engine::dr;
pub use engine::{Control, CopyOutcome, DestinationLease, VolRef};
pub use engine::{MailboxConfig, Prepared, Storage, StorageConfig};
pub use engine::{OvfListing, OvfStoreInfo, Readable, StoreTexts, UploadDone};
pub use engine::{VolumeLease, VolumeLeaseStatus};
pub use error::{StorageError, StorageResult};
pub use volume_store::{CreateVolume, VolumeInfo, VolumeStore};
