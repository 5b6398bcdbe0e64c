//! Building JSON-RPC 2.0 requests and reading responses.

use depot_api::WireError;
use serde_json::{json, Map, Value};

use crate::error::ClientError;

/// A fresh request id: a UUID v4 string.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A request (with `id`) or a notification (`id` None). A `null` params is
/// left out.
pub fn request(method: &str, params: Value, id: Option<&str>) -> Value {
    let mut m = Map::new();
    m.insert("jsonrpc".into(), json!("2.0"));
    m.insert("method".into(), json!(method));
    if !params.is_null() {
        m.insert("params".into(), params);
    }
    if let Some(id) = id {
        m.insert("id".into(), json!(id));
    }
    Value::Object(m)
}

/// Reads an error object; anything malformed becomes a protocol error.
fn wire_error(e: Value) -> ClientError {
    match serde_json::from_value::<WireError>(e.clone()) {
        Ok(w) => ClientError::Rpc(w),
        Err(_) => ClientError::Protocol(format!("malformed error object: {}", snippet(&e))),
    }
}

/// The result of the response to request `id`, or its error.
pub fn read_response(resp: Value, id: &str) -> Result<Value, ClientError> {
    let Value::Object(mut m) = resp else {
        return Err(ClientError::Protocol(format!(
            "response is not an object: {}",
            snippet(&resp)
        )));
    };
    if let Some(e) = m.remove("error") {
        // An error about an unreadable request carries a null id: it is still
        // the answer to ours.
        return Err(wire_error(e));
    }
    match m.get("id") {
        Some(Value::String(s)) if s == id => {}
        other => {
            return Err(ClientError::Protocol(format!(
                "response id {} does not match request id {id:?}",
                other.map(snippet).unwrap_or_else(|| "(none)".into())
            )))
        }
    }
    m.remove("result").ok_or_else(|| {
        ClientError::Protocol(format!(
            "response has neither result nor error: {}",
            snippet(&Value::Object(m))
        ))
    })
}

/// At most 200 characters of a value, for error messages.
pub fn snippet(v: &Value) -> String {
    let s = v.to_string();
    truncate(&s, 200)
}

pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_shape() {
        assert_eq!(
            request("Host.ping2", Value::Null, Some("1")),
            json!({"jsonrpc": "2.0", "method": "Host.ping2", "id": "1"})
        );
        assert_eq!(
            request("A.b", json!({"x": 1}), None),
            json!({"jsonrpc": "2.0", "method": "A.b", "params": {"x": 1}})
        );
    }

    #[test]
    fn responses() {
        let ok = json!({"jsonrpc": "2.0", "id": "a", "result": true});
        assert_eq!(read_response(ok.clone(), "a").unwrap(), json!(true));
        assert!(matches!(
            read_response(ok, "b"),
            Err(ClientError::Protocol(_))
        ));
        let err = json!({"jsonrpc": "2.0", "id": null,
            "error": {"code": -32700, "message": "Parse error"}});
        assert_eq!(
            read_response(err, "a").unwrap_err().rpc_code(),
            Some(-32700)
        );
        let bad = json!({"jsonrpc": "2.0", "id": "a", "error": "nope"});
        assert!(matches!(
            read_response(bad, "a"),
            Err(ClientError::Protocol(_))
        ));
    }
}
