//! depotd's JSON-RPC request parser: what `JsonRpc::handle`
//! (crates/depotd/src/jsonrpc.rs) does with a message body before anything
//! runs: `parse_message` (the JSON, the batch rule and the memory budget,
//! checked while reading), each request's envelope (`Request::from_value`)
//! and its typed parameters (`Call::parse`).
//!
//! Checked beyond "does not panic":
//! - `parse_message` agrees with serde_json on what JSON is: a message it
//!   accepts is the value serde_json reads, and it answers -32700 only
//!   for bytes serde_json refuses (its other refusals are -32600: the
//!   batch rule and the budget);
//! - a parsed call names the method it was asked for;
//! - every refusal is an error response that serializes to JSON-RPC with a
//!   numeric code.
#![no_main]

use depot_api::{ApiError, Call, Code};
use depot_api::jsonrpc::{error_response, parse_message, Message, ParseLimits, Request};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// depotd's default `max_batch` and `max_request_bytes` (docs/config.md).
const MAX_BATCH: usize = 100;
const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

/// The requests of a message, as `JsonRpc::handle` splits it. `Err`:
/// the whole message is refused.
fn parse(body: &[u8]) -> Result<Vec<Value>, ApiError> {
    let parsed = parse_message(body, ParseLimits::new(MAX_BATCH, MAX_REQUEST_BYTES));
    let reference = serde_json::from_slice::<Value>(body);
    match (&parsed, &reference) {
        (Ok(Message::Single(v)), Ok(r)) => assert_eq!(v, r),
        (Ok(Message::Batch(items)), Ok(Value::Array(r))) => assert_eq!(items, r),
        (Ok(_), _) => panic!("parse_message accepted what serde_json reads otherwise: {reference:?}"),
        (Err(e), Ok(_)) => assert_ne!(e.code, Code::ParseError, "-32700 for valid JSON: {e:?}"),
        (Err(_), Err(_)) => {}
    }
    match parsed? {
        Message::Single(v) => Ok(vec![v]),
        // An empty batch parses; `JsonRpc::handle` refuses it (-32600).
        Message::Batch(items) if items.is_empty() => {
            Err(ApiError::new(Code::InvalidRequest, "empty batch"))
        }
        Message::Batch(items) => {
            assert!(items.len() <= MAX_BATCH, "{}", items.len());
            Ok(items)
        }
    }
}

/// An error response must be JSON-RPC 2.0 with a numeric code.
fn check_error(id: Value, err: &ApiError) {
    let text = error_response(id, err).to_string();
    let back: Value = serde_json::from_str(&text).expect("the response is JSON");
    assert_eq!(back["jsonrpc"], "2.0");
    assert!(back["error"]["code"].is_i64(), "{text}");
    assert!(back["error"]["message"].is_string(), "{text}");
}

fuzz_target!(|body: &[u8]| {
    let requests = match parse(body) {
        Ok(r) => r,
        Err(e) => return check_error(Value::Null, &e),
    };
    for request in requests {
        let req = match Request::from_value(request) {
            Ok(r) => r,
            Err((id, e)) => {
                check_error(id, &e);
                continue;
            }
        };
        match Call::parse(&req.method, req.params) {
            Ok(call) => {
                assert_eq!(call.method(), req.method);
                let _ = format!("{call:?}");
            }
            Err(e) => check_error(req.id.unwrap_or(Value::Null), &e),
        }
    }
});
