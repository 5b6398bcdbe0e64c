//! The method catalogue: one declaration per verb gives its typed parameters,
//! its entry in [`Call`], and its documentation in docs/api.md. Adding a verb
//! here is the only way to make the daemon answer it, so the docs cannot
//! forget one.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{ApiError, Code};
use crate::types::{JobId, JobType, Uuid};

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
    pub result: &'static str,
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
        } -> $result:literal;
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
                    result: $result,
                },
            )*]
        }
    };
}

verbs! {
    /// Tests connectivity to the agent.
    "Host.ping2" => HostPing2 {} -> "`true`";

    /// Returns the host's storage capabilities: depot's version, the domain
    /// types and versions it supports.
    "Host.getCapabilities" => HostGetCapabilities {} -> "Capabilities";

    /// Lists host jobs with their status, progress, error and result.
    "Host.getJobs" => HostGetJobs {
        /// Return only jobs of this type.
        job_type: Option<JobType>,
        /// Return only the jobs with these ids (all when left out or empty).
        job_ids: Option<Vec<JobId>>,
    } -> "HostJobInfoMap: `{job_id: HostJobInfo}`";

    /// Asks a running or pending job to stop. The job ends as `aborted`.
    /// depot's verb, named after VDSM's `Host.abortV2VJob`.
    "Host.abortJob" => HostAbortJob {
        /// The job to abort.
        job_id: JobId,
    } -> "`true`; the abort is asynchronous: poll Host.getJobs";

    /// Removes a finished job from the job list before its auto-delete time.
    /// depot's verb, named after VDSM's `Host.deleteV2VJob`.
    "Host.deleteJob" => HostDeleteJob {
        /// The job to delete; it must have ended.
        job_id: JobId,
    } -> "`true`";

    /// Subscribes this WebSocket connection to events (JSON-RPC
    /// notifications such as `|jobs|status|<job_id>`). depot's verb: VDSM
    /// subscribes over STOMP instead.
    "Host.subscribeEvents" => HostSubscribeEvents {
        /// Send only events whose name starts with one of these prefixes, for
        /// example `|jobs|status|`. All events when left out.
        prefixes: Option<Vec<String>>,
    } -> "`true`";

    /// Starts a built-in no-op job that sleeps, reporting progress. It
    /// exercises the job machinery (status, abort, persistence, events)
    /// without touching storage. depot's verb.
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
    } -> "`true`; the job runs in the background";
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
