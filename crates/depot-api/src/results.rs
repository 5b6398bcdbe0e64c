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
                format!("{{{}}}", [$(field::<$ty>(stringify!($field))),*].join(", "))
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
