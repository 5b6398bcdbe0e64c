//! JSON-RPC 2.0 messages depotd sends on its own, outside an answer to a
//! call: error responses and notifications (events). Shared by the
//! JSON-RPC layer, the transports and the event bus; imports none of them.

use depot_api::ApiError;
use serde_json::{json, Map, Value};

pub fn error_response(id: Value, err: &ApiError) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": err.to_wire()})
}

/// A JSON-RPC notification (an event): no id.
pub fn notification(method: &str, params: Map<String, Value>) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params})
}
