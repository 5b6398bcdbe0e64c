//! The JSON-RPC 2.0 envelope: reading a message (one request or a batch)
//! and writing what depotd sends on its own (error responses, events).
//! depotd's JSON-RPC layer (crates/depotd/src/jsonrpc.rs) dispatches; this
//! is wire format only, no I/O, so the fuzz target builds without depotd.
//!
//! [`parse_message`] is the one parser of untrusted message bytes (the
//! fuzz target's entry point). It never builds more than the limits allow:
//! a batch stops being read at its `max_batch + 1`-th call, and a message
//! whose parsed form would take more than [`PARSE_MEMORY_FACTOR`] times the
//! request size limit (tiny values by the million: an 8 MiB `[0,0,...]`
//! becomes over 200 MB of `serde_json::Value`s) stops being read there.
//! [`Request::from_value`] does the envelope checks of one request.

use crate::{ApiError, Code};
use serde::de::{self, DeserializeSeed, Deserializer as _, MapAccess, SeqAccess, Visitor};
use serde_json::{json, Map, Number, Value};
use std::cell::{Cell, RefCell};
use std::fmt;

/// A request after the envelope checks. `id: None` is a notification.
/// Public for the fuzz target of the request parser
/// (fuzz/fuzz_targets/jsonrpc_request.rs), with [`Request::from_value`].
pub struct Request {
    pub id: Option<Value>,
    pub method: String,
    pub params: Option<Value>,
}

impl Request {
    /// The envelope checks of one request of a message; the error carries
    /// the id to answer with.
    pub fn from_value(v: Value) -> Result<Request, (Value, ApiError)> {
        let invalid = |id: Value, detail: &str| (id, ApiError::new(Code::InvalidRequest, detail));
        let Value::Object(mut obj) = v else {
            return Err(invalid(Value::Null, "a request must be a JSON object"));
        };
        let id = obj.remove("id");
        let reply_id = match &id {
            None | Some(Value::Null) | Some(Value::String(_)) | Some(Value::Number(_)) => {
                id.clone().unwrap_or(Value::Null)
            }
            Some(_) => {
                return Err(invalid(
                    Value::Null,
                    "id must be a string, a number or null",
                ))
            }
        };
        if obj.get("jsonrpc") != Some(&Value::String("2.0".into())) {
            return Err(invalid(reply_id, "jsonrpc must be \"2.0\""));
        }
        let method = match obj.remove("method") {
            Some(Value::String(m)) => m,
            _ => return Err(invalid(reply_id, "method must be a string")),
        };
        Ok(Request {
            id,
            method,
            params: obj.remove("params"),
        })
    }
}

/// How much [`parse_message`] may build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    /// Most calls in one batch (`limits.max_batch`).
    pub max_batch: usize,
    /// Bytes the parsed message may take, as estimated by [`Budget`].
    pub max_memory: usize,
}

/// The parsed form of a message may take this many times
/// `limits.max_request_bytes` (docs/config.md).
pub const PARSE_MEMORY_FACTOR: usize = 4;

impl ParseLimits {
    pub fn new(max_batch: usize, max_request_bytes: usize) -> ParseLimits {
        ParseLimits {
            max_batch,
            max_memory: max_request_bytes.saturating_mul(PARSE_MEMORY_FACTOR),
        }
    }
}

/// One JSON-RPC message: a request (or anything that is not an array,
/// which the request checks refuse with its own error) or a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Single(Value),
    Batch(Vec<Value>),
}

/// Parses untrusted bytes into a [`Message`] within `limits`. Errors:
/// -32700 for bytes that are not JSON, -32600 for a batch over
/// `max_batch` or a message over `max_memory` (reading stops there, so the
/// refusal costs no more than the limit).
pub fn parse_message(body: &[u8], limits: ParseLimits) -> Result<Message, ApiError> {
    let budget = Budget {
        left: Cell::new(limits.max_memory),
        refusal: RefCell::new(None),
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    // JSON's own whitespace; the first other byte says what the message is.
    let first = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    let parsed = if first == Some(&b'[') {
        de.deserialize_seq(BatchVisitor {
            budget: &budget,
            max_batch: limits.max_batch,
        })
        .map(Message::Batch)
    } else {
        ValueSeed(&budget).deserialize(&mut de).map(Message::Single)
    };
    match parsed.and_then(|m| de.end().map(|()| m)) {
        Ok(m) => Ok(m),
        Err(e) => Err(match budget.refusal.into_inner() {
            Some(detail) => ApiError::new(Code::InvalidRequest, detail),
            None => ApiError::new(Code::ParseError, e.to_string()),
        }),
    }
}

/// What the values parsed so far cost, roughly as the allocator sees it.
/// A container pays for the places of its values: an array 32 bytes per
/// `Value`, and twice that again for a growing `Vec`'s spare capacity and
/// the old buffer while it moves;
/// an object a B-tree leaf (11 entries) and, past 11 entries, a share of
/// the further nodes. A string pays its bytes and an allocation's
/// overhead. Numbers, booleans and null live in their place.
struct Budget {
    left: Cell<usize>,
    /// Why parsing stopped, when it stopped on a limit.
    refusal: RefCell<Option<String>>,
}

const TOO_MANY_VALUES: &str =
    "the message is too large to parse: too many values for its size (arrays or objects of tiny values by the thousand)";

const SLOT_COST: usize = 3 * std::mem::size_of::<Value>();
const ALLOC_COST: usize = 16;
/// `BTreeMap<String, Value>`'s leaf node: 11 keys, 11 values, a header.
const LEAF_ENTRIES: usize = 11;
const LEAF_COST: usize =
    LEAF_ENTRIES * (std::mem::size_of::<String>() + std::mem::size_of::<Value>()) + 16;
/// Past the first leaf, nodes are at least half full.
const ENTRY_COST: usize = 2 * LEAF_COST / LEAF_ENTRIES;

impl Budget {
    fn charge<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        match self.left.get().checked_sub(bytes) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => Err(self.refuse(TOO_MANY_VALUES.into())),
        }
    }

    fn refuse<E: de::Error>(&self, detail: String) -> E {
        let e = E::custom(&detail);
        self.refusal.borrow_mut().get_or_insert(detail);
        e
    }
}

/// The calls of a batch, up to `max_batch`.
struct BatchVisitor<'b> {
    budget: &'b Budget,
    max_batch: usize,
}

impl<'de> Visitor<'de> for BatchVisitor<'_> {
    type Value = Vec<Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a batch of JSON-RPC requests")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Value>, A::Error> {
        let mut calls = Vec::new();
        self.budget.charge::<A::Error>(ALLOC_COST)?;
        while let Some(v) = seq.next_element_seed(ValueSeed(self.budget))? {
            self.budget.charge::<A::Error>(SLOT_COST)?;
            if calls.len() == self.max_batch {
                return Err(self.budget.refuse(format!(
                    "batch of {} or more calls exceeds the limit of {}",
                    self.max_batch + 1,
                    self.max_batch
                )));
            }
            calls.push(v);
        }
        Ok(calls)
    }
}

/// A `serde_json::Value`, charged to the budget as it is built.
#[derive(Clone, Copy)]
struct ValueSeed<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.0.charge(ALLOC_COST + v.len())?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.0.charge(ALLOC_COST + v.len())?;
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.0.charge(ALLOC_COST)?;
        let mut items = Vec::new();
        loop {
            // The place is paid before a value is parsed into it.
            self.0.charge::<A::Error>(SLOT_COST)?;
            match seq.next_element_seed(self)? {
                Some(v) => items.push(v),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut obj = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let place = match obj.len() {
                0 => LEAF_COST,
                n if n < LEAF_ENTRIES => 0,
                _ => ENTRY_COST,
            };
            self.0.charge(place + ALLOC_COST + key.len())?;
            let v = map.next_value_seed(self)?;
            obj.insert(key, v);
        }
        Ok(Value::Object(obj))
    }
}

/// The error response to the request with `id` (`null` when the message
/// was refused before an id could be read).
pub fn error_response(id: Value, err: &ApiError) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": err.to_wire()})
}

/// A JSON-RPC notification (an event): no id.
pub fn notification(method: &str, params: Map<String, Value>) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ParseLimits {
        ParseLimits::new(3, 4096)
    }

    #[test]
    fn parses_requests_and_batches_like_serde_json() {
        for text in [
            r#"{"jsonrpc":"2.0","method":"Host.ping2","id":1}"#,
            r#" {"a":[1,-2,3.5,"x",null,true,{"b":{}}],"c":"\u00e9\n"} "#,
            r#""just a string""#,
            "7",
            "null",
        ] {
            let want: Value = serde_json::from_str(text).unwrap();
            assert_eq!(
                parse_message(text.as_bytes(), limits()).unwrap(),
                Message::Single(want),
                "{text}"
            );
        }
        let text = r#"[{"id":1},2,"x"]"#;
        let want: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            parse_message(text.as_bytes(), limits()).unwrap(),
            Message::Batch(want.as_array().unwrap().clone())
        );
        assert_eq!(
            parse_message(b"\n[ ]", limits()).unwrap(),
            Message::Batch(vec![])
        );
    }

    #[test]
    fn bad_json_is_a_parse_error() {
        for text in ["{not json", "[1,2", "", "{} {}", "[1] x", "[1,,2]"] {
            let e = parse_message(text.as_bytes(), limits()).unwrap_err();
            assert_eq!(e.code, Code::ParseError, "{text}: {e}");
        }
    }

    #[test]
    fn a_batch_over_the_limit_stops_at_the_first_call_too_many() {
        let e = parse_message(b"[1,2,3,4]", limits()).unwrap_err();
        assert_eq!(e.code, Code::InvalidRequest);
        assert!(e.detail.contains("batch of 4 or more"), "{e}");
        // Reading stops there: what follows is never looked at.
        let e = parse_message(b"[1,2,3,4,this is not JSON", limits()).unwrap_err();
        assert_eq!(e.code, Code::InvalidRequest, "{e}");
        assert!(parse_message(b"[1,2,3]", limits()).is_ok());
    }

    #[test]
    fn tiny_values_by_the_thousand_are_refused_within_the_budget() {
        // 4 KiB limit, 16 KiB budget. Each shape fits the request limit
        // and would take far more than the budget as Values.
        let zeros = format!("[{}0]", "0,".repeat(2000));
        let nested = format!(r#"{{"params":{{"pad":{zeros}}}}}"#);
        let objects = format!("[{}{{}}]", r#"{"a":0},"#.repeat(400));
        for text in [&zeros, &nested, &objects] {
            assert!(text.len() <= 4096, "{}", text.len());
            let e = parse_message(text.as_bytes(), ParseLimits::new(10_000, 4096)).unwrap_err();
            assert_eq!(e.code, Code::InvalidRequest, "{e}");
            assert!(e.detail.contains("too large to parse"), "{e}");
        }
        // An ordinary request is far within it, and so is a full batch of
        // them in a limit of three times its size: objects with short
        // strings take about 10 times their text as Values.
        let req = r#"{"jsonrpc":"2.0","method":"StoragePool.connectStorageServer","id":"5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8a","params":{"storagepoolID":"00000000-0000-0000-0000-000000000000","domainType":1,"connectionParams":[{"id":"5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8b","connection":"nfs.example.com:/export/data","port":"","iqn":"","user":"","password":"","protocol_version":"4.2","mnt_options":"","vfs_type":"nfs","timeout":600,"retrans":6}]}}"#;
        assert!(parse_message(req.as_bytes(), ParseLimits::new(1, 4096)).is_ok());
        let batch = format!("[{}]", vec![req; 100].join(","));
        assert!(parse_message(batch.as_bytes(), ParseLimits::new(100, 3 * batch.len())).is_ok());
    }

    #[test]
    fn nesting_is_bounded_by_serde_json() {
        let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
        let e = parse_message(deep.as_bytes(), ParseLimits::new(10, 1 << 20)).unwrap_err();
        assert_eq!(e.code, Code::ParseError, "{e}");
        assert!(e.detail.contains("recursion limit"), "{e}");
    }
}
