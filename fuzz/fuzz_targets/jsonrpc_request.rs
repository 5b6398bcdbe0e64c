//! depotd's JSON-RPC request parser: what `RpcEngine::handle`
//! (crates/depotd/src/rpc.rs) does with a message body before anything
//! runs: the JSON, the batch rule, each request's envelope
//! (`Request::from_value`) and its typed parameters (`Call::parse`).
//!
//! Kept thin on purpose: when rpc.rs has one public entry point that
//! parses a whole body, point `parse` below at it.
//!
//! Checked beyond "does not panic": a parsed call names the method it
//! was asked for; every refusal is an error response that serializes to
//! JSON-RPC with a numeric code.
#![no_main]

use depot_api::{ApiError, Call};
use depotd::rpc::{error_response, Request};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// depotd's default `max_batch` (docs/config.md).
const MAX_BATCH: usize = 100;

/// The requests of a message, as `RpcEngine::handle` splits it: one
/// request, or a batch of 1 to MAX_BATCH. `Err`: the whole message is
/// refused.
fn parse(body: &[u8]) -> Result<Vec<Value>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(depot_api::Code::ParseError, e.to_string()))?;
    match value {
        Value::Array(items) if items.is_empty() || items.len() > MAX_BATCH => {
            Err(ApiError::new(depot_api::Code::InvalidRequest, "batch size"))
        }
        Value::Array(items) => Ok(items),
        v => Ok(vec![v]),
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
