//! The JSON-RPC 2.0 layer: takes a message (one request or a batch),
//! enforces the batch limit and the per-connection concurrency limit, maps
//! each request to a typed [`Call`], hands it to the [`Router`], and logs
//! it once.
//!
//! Transports (HTTP POST, WebSocket, STOMP) hand it bytes and send back
//! what it returns; they know nothing about JSON-RPC. It knows nothing
//! about them: what it needs of the caller is in [`CallCtx`].
//!
//! The envelope itself (the one parser of untrusted message bytes, and
//! the error responses) is depot-api's [`depot_api::jsonrpc`].

use depot_api::jsonrpc::error_response;
use depot_api::{ApiError, Call, Code};
use futures_util::future::join_all;
use serde_json::{json, Value};
use std::time::Instant;

use crate::call::CallCtx;
use crate::router::Router;
pub use depot_api::jsonrpc::{parse_message, Message, ParseLimits, Request, PARSE_MEMORY_FACTOR};

/// The JSON-RPC layer of the daemon, one for all connections.
pub struct JsonRpc {
    router: Router,
    limits: ParseLimits,
}

impl JsonRpc {
    pub fn new(router: Router, limits: ParseLimits) -> Self {
        JsonRpc { router, limits }
    }

    /// Handles one message. Returns the response text, or `None` when the
    /// message held only notifications (JSON-RPC sends nothing back then).
    pub async fn handle(&self, body: &[u8], ctx: &CallCtx) -> Option<String> {
        let message = match parse_message(body, self.limits) {
            Ok(m) => m,
            Err(err) => {
                log_rejected(ctx, &err);
                return Some(error_response(Value::Null, &err).to_string());
            }
        };
        match message {
            Message::Batch(items) => {
                if items.is_empty() {
                    let err = ApiError::new(Code::InvalidRequest, "empty batch");
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
            Message::Single(v) => self.handle_one(v, ctx).await.map(|v| v.to_string()),
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
            // What failed underneath (an OS error, a command with its exit
            // and stderr): the wire has only code and message.
            if let Some(cause) = e.cause() {
                tracing::warn!(
                    target: "depotd::request",
                    method = %truncate(&req.method),
                    code,
                    flow_id = ctx.flow_id.as_deref().unwrap_or("-"),
                    error = %e.detail,
                    cause = %cause,
                    "request failed underneath"
                );
            }
        }
        let id = req.id?;
        Some(match outcome {
            Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Err(e) => error_response(id, &e),
        })
    }
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
