//! Why a mapping file is refused, naming the entry. Each problem has a
//! stable error code in depot's 9040..=9049 range (docs/api.md, docs/dr.md).

use depot_api::storage::SdUuid;
use depot_api::Code;

/// A refused mapping: which entry, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry}: {problem}")]
pub struct MappingError {
    /// The entry as the file names it: `connection 'data' secondary`,
    /// `dr_import_storages[2] ('path2') primary`, `hosts`, `file`.
    pub entry: String,
    pub problem: Problem,
}

impl MappingError {
    pub fn new(entry: impl Into<String>, problem: Problem) -> Self {
        MappingError {
            entry: entry.into(),
            problem,
        }
    }

    /// The wire code of this refusal.
    pub fn code(&self) -> Code {
        self.problem.code()
    }
}

/// What is wrong with an entry. One variant per rule of docs/dr.md
/// ("Validation").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The text is not TOML (or YAML), or not the format's shape: an
    /// unknown key, a value of the wrong type.
    #[error("the file does not parse: {0}")]
    Syntax(String),
    /// `version` is not one this depot reads.
    #[error("mapping version {0} is not supported (this depot reads version 1)")]
    Version(i64),
    /// A primary without the connection it fails over to.
    #[error("no secondary: each primary needs the connection it fails over to")]
    MissingSecondary,
    /// A field the entry needs is not there (or is empty).
    #[error("'{0}' is missing")]
    Missing(&'static str),
    /// The same domain UUID in two places.
    #[error("domain {sd} is listed twice (also in {other})")]
    DuplicateDomain { sd: SdUuid, other: String },
    /// Two entries with the same primary connection.
    #[error("the same primary connection as {0}")]
    DuplicatePrimary(String),
    /// Two entries failing over to the same secondary connection.
    #[error("the same secondary connection as {0}")]
    DuplicateSecondary(String),
    /// A connection type depot does not know (or cannot fail over).
    #[error("unknown connection type {0:?} (NFS, GLUSTERFS, POSIXFS, ISCSI, FCP or LOCALFS)")]
    UnknownType(String),
    /// A path that is relative, has `..`, or is not a path at all.
    #[error("{field} {path:?}: {why}")]
    PathEscape {
        field: &'static str,
        path: String,
        why: String,
    },
    /// The secondary is the primary: a failover to itself.
    #[error("the secondary is the primary itself ({0})")]
    SecondaryIsPrimary(String),
    /// An iSCSI connection without a target.
    #[error("an iSCSI connection needs at least one target")]
    IscsiNoTarget,
    /// A block connection (iSCSI, FCP) without its LUNs.
    #[error("an {0} connection needs its LUNs (WWIDs)")]
    NoLuns(&'static str),
    /// A LOCALFS side that is not a local directory path.
    #[error("a LOCALFS connection is a local directory: {0}")]
    LocalNotDirectory(String),
    /// A value that is not what the field takes (a bad UUID, address,
    /// port, host id, ...), or entries that contradict each other (two
    /// data centers, a host in both sites).
    #[error("{field}: {why}")]
    BadValue { field: String, why: String },
}

impl Problem {
    pub(crate) fn bad(field: impl Into<String>, why: impl Into<String>) -> Problem {
        Problem::BadValue {
            field: field.into(),
            why: why.into(),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Problem::Syntax(_) | Problem::Version(_) => Code::DrMappingUnreadable,
            Problem::MissingSecondary => Code::DrMissingSecondary,
            Problem::DuplicateDomain { .. }
            | Problem::DuplicatePrimary(_)
            | Problem::DuplicateSecondary(_) => Code::DrDuplicateEntry,
            Problem::UnknownType(_) => Code::DrUnknownConnectionType,
            Problem::PathEscape { .. } => Code::DrPathEscape,
            Problem::SecondaryIsPrimary(_) => Code::DrSecondaryIsPrimary,
            Problem::IscsiNoTarget | Problem::NoLuns(_) => Code::DrBlockConnectionIncomplete,
            Problem::LocalNotDirectory(_) => Code::DrLocalNotDirectory,
            Problem::Missing(_) | Problem::BadValue { .. } => Code::DrMappingInvalid,
        }
    }
}
