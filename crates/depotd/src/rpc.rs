//! The JSON-RPC 2.0 engine: parses a message (one request or a batch),
//! enforces the batch limit and the per-connection concurrency limit, maps
//! each request to a typed [`Call`], dispatches it, and logs it once.
//!
//! Transports (HTTP POST, WebSocket, later STOMP) hand it bytes and send back
//! what it returns; they know nothing about JSON-RPC.

use depot_api::{ApiError, Call, Code};
use futures_util::future::join_all;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

use crate::router::Router;
use crate::ws::Subscriber;

/// What the engine knows about the caller of one message.
pub struct CallCtx {
    /// The certificate subject, or `uid=N` on the local socket.
    pub peer: Arc<str>,
    /// VDSM's flow id (`ovirtCorrelationId` header), when the client sent one.
    pub flow_id: Option<String>,
    /// Limits how many calls of this connection run at once.
    pub permits: Arc<Semaphore>,
    /// Present on WebSocket connections, which can receive events.
    pub subscriber: Option<Arc<Subscriber>>,
}

pub struct RpcEngine {
    router: Router,
    max_batch: usize,
}

impl RpcEngine {
    pub fn new(router: Router, max_batch: usize) -> Self {
        RpcEngine { router, max_batch }
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Handles one message. Returns the response text, or `None` when the
    /// message held only notifications (JSON-RPC sends nothing back then).
    pub async fn handle(&self, body: &[u8], ctx: &CallCtx) -> Option<String> {
        let value: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                let err = ApiError::new(Code::ParseError, e.to_string());
                log_rejected(ctx, &err);
                return Some(error_response(Value::Null, &err).to_string());
            }
        };
        match value {
            Value::Array(items) => {
                if items.is_empty() || items.len() > self.max_batch {
                    let detail = if items.is_empty() {
                        "empty batch".to_string()
                    } else {
                        format!(
                            "batch of {} calls exceeds the limit of {}",
                            items.len(),
                            self.max_batch
                        )
                    };
                    let err = ApiError::new(Code::InvalidRequest, detail);
                    log_rejected(ctx, &err);
                    return Some(error_response(Value::Null, &err).to_string());
                }
                let responses: Vec<Value> =
                    join_all(items.into_iter().map(|v| self.handle_one(v, ctx)))
                        .await
                        .into_iter()
                        .flatten()
                        .collect();
                (!responses.is_empty()).then(|| Value::Array(responses).to_string())
            }
            v => self.handle_one(v, ctx).await.map(|v| v.to_string()),
        }
    }

    async fn handle_one(&self, request: Value, ctx: &CallCtx) -> Option<Value> {
        let start = Instant::now();
        let req = match Request::from_value(request) {
            Ok(r) => r,
            Err((id, err)) => {
                log_rejected(ctx, &err);
                return Some(error_response(id, &err));
            }
        };
        let outcome = match Call::parse(&req.method, req.params) {
            Ok(call) => {
                // Wait for a slot before running, not before parsing: a
                // malformed call never queues behind slow ones.
                let _permit = ctx.permits.acquire().await;
                self.router.dispatch(call, ctx).await
            }
            Err(e) => Err(e),
        };
        let code = match &outcome {
            Ok(_) => 0,
            Err(e) => e.code.number(),
        };
        tracing::info!(
            target: "depotd::request",
            method = %truncate(&req.method),
            id = %req.id.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
            duration_ms = format_args!("{:.3}", start.elapsed().as_secs_f64() * 1e3),
            code,
            peer = %ctx.peer,
            flow_id = ctx.flow_id.as_deref().unwrap_or("-"),
            "request"
        );
        if let Err(e) = &outcome {
            if e.code == Code::InternalError {
                tracing::error!(method = %req.method, error = %e, "internal error");
            }
        }
        let id = req.id?;
        Some(match outcome {
            Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Err(e) => error_response(id, &e),
        })
    }
}

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

pub fn error_response(id: Value, err: &ApiError) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": err.to_wire()})
}

/// A JSON-RPC notification (an event): no id.
pub fn notification(method: &str, params: Map<String, Value>) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params})
}

fn log_rejected(ctx: &CallCtx, err: &ApiError) {
    tracing::info!(
        target: "depotd::request",
        method = "-",
        code = err.code.number(),
        peer = %ctx.peer,
        flow_id = ctx.flow_id.as_deref().unwrap_or("-"),
        error = %truncate(&err.detail),
        "request rejected"
    );
}

/// Keeps hostile input from flooding the log.
fn truncate(s: &str) -> &str {
    match s.char_indices().nth(128) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
