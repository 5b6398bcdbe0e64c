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

    // VDSM common errors (lib/vdsm/common/exception.py).
    /// `Host.getJobs`/`Host.abortJob` named a job that does not exist.
    NoSuchJob = 66, "Job Id does not exists";
    /// A job id was reused for a different job.
    JobExists = 69, "Job id already exists";
    /// The job kind cannot be aborted.
    AbortNotSupported = 80, "Job does not support aborting";
    /// The job already ended, so it cannot be aborted.
    JobNotActive = 84, "Job is not active";

    // VDSM storage errors (lib/vdsm/storage/exception.py).
    GeneralException = 100, "General Exception";
    StorageException = 200, "Storage Exception";
    /// A job was aborted on request.
    TaskAborted = 411, "Task is aborted";
    GenerationMismatch = 911, "Generation mismatch";

    // depot's own errors.
    /// The daemon stopped (crash or restart) while the job was running, and
    /// the job's kind cannot resume. Its outcome is unknown: treat any
    /// volume it touched as suspect (the engine fences it by generation).
    JobInterrupted = 9001, "Job was interrupted by a daemon restart";
    /// The verb needs a transport feature this connection lacks (for
    /// example event subscription over plain HTTP POST).
    TransportNotSupported = 9002, "Not supported on this transport";
    /// The daemon is shutting down and takes no new work.
    ShuttingDown = 9003, "Daemon is shutting down";
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.number())
    }
}

/// An error as a verb returns it: a code and the detail that says what went
/// wrong with which argument. Displayed (and sent) as `"<text>: <detail>"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ApiError {
    pub code: Code,
    pub detail: String,
}

impl ApiError {
    pub fn new(code: Code, detail: impl Into<String>) -> Self {
        ApiError {
            code,
            detail: detail.into(),
        }
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
            "Generation mismatch"
        );
    }
}
