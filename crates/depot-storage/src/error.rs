//! The storage layer's error: a VDSM code (depot_api::Code), the operation
//! that failed, and the context that says on what.

use depot_api::{ApiError, Code};
use std::fmt;

/// An error of a storage operation. `code` is what oVirt sees; `op` and
/// `detail` make the message say what failed on what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageError {
    pub code: Code,
    /// What was being done, e.g. "create volume".
    pub op: &'static str,
    /// On what and why, e.g. the path and the OS error.
    pub detail: String,
}

pub type StorageResult<T> = Result<T, StorageError>;

impl StorageError {
    pub fn new(code: Code, op: &'static str, detail: impl Into<String>) -> Self {
        StorageError {
            code,
            op,
            detail: detail.into(),
        }
    }

    /// An OS error on a path, kept with both.
    pub fn io(code: Code, op: &'static str, path: &std::path::Path, e: &std::io::Error) -> Self {
        StorageError::new(code, op, format!("{}: {e}", path.display()))
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.code.text(), self.op, self.detail)
    }
}

impl std::error::Error for StorageError {}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> ApiError {
        ApiError::new(e.code, format!("{}: {}", e.op, e.detail))
    }
}
