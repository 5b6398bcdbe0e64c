//! The event bus: JSON-RPC notifications for subscribed WebSocket clients.
//!
//! VDSM sends events as notifications whose method is the event id, e.g.
//! `|jobs|status|<job_id>` with the job's info and `notify_time` (monotonic
//! milliseconds) as params. Each event is serialized once, however many
//! clients receive it.

use serde_json::{json, Map, Value};
use std::sync::Arc;
use tokio::sync::broadcast;

use depot_api::types::JobInfo;
use depot_api::{
    CONNECTION_LOST_EVENT, DOMAIN_STATE_EVENT, JOB_STATUS_EVENT, OVF_STORE_WRITTEN_EVENT,
};
use depot_jobs::JobManager;
use depot_storage::events::{EventSink, StorageEvent};

use depot_api::jsonrpc::notification;

/// A serialized notification and its name (for prefix filtering).
#[derive(Debug)]
pub struct Event {
    pub name: String,
    pub text: String,
}

#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<Event>>,
}

impl EventBus {
    /// `capacity` events may queue per slow subscriber before it starts
    /// missing some (it is told, see `transport::ws::Subscriber`).
    pub fn new(capacity: usize) -> Self {
        EventBus {
            tx: broadcast::channel(capacity).0,
        }
    }

    pub fn publish(&self, name: String, mut params: Map<String, Value>) {
        params.insert("notify_time".into(), Value::from(monotonic_ms()));
        let text = notification(&name, params).to_string();
        // No receiver is fine: nobody subscribed.
        let _ = self.tx.send(Arc::new(Event { name, text }));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Forwards every job status change as `|jobs|status|<id>`.
    pub fn forward_jobs(&self, jobs: &JobManager) -> tokio::task::JoinHandle<()> {
        let mut rx = jobs.subscribe();
        let bus = self.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(info) => bus.publish_job(&info),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "job events were dropped (event bus lagging)");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        })
    }

    fn publish_job(&self, info: &JobInfo) {
        if let Ok(Value::Object(params)) = serde_json::to_value(info) {
            self.publish(format!("{JOB_STATUS_EVENT}{}", info.id), params);
        }
    }
}

/// The storage layer's events, as notifications (docs/protocol.md,
/// "Storage events"). Publishing only serializes and queues: it never
/// blocks the monitor or verb thread that calls it.
impl EventSink for EventBus {
    fn publish(&self, event: StorageEvent) {
        let (name, params) = storage_notification(event);
        EventBus::publish(self, name, params);
    }
}

/// The name and params of a storage event.
pub fn storage_notification(event: StorageEvent) -> (String, Map<String, Value>) {
    let (name, params) = match event {
        StorageEvent::DomainState {
            sd,
            valid,
            code,
            message,
            previous_valid,
            previous_code,
        } => (
            format!("{DOMAIN_STATE_EVENT}{sd}"),
            json!({"sd_id": sd.to_string(), "valid": valid, "code": code, "message": message,
                "previous_valid": previous_valid, "previous_code": previous_code}),
        ),
        StorageEvent::OvfStoreWritten {
            sd,
            img,
            vol,
            generation,
            size,
        } => (
            format!("{OVF_STORE_WRITTEN_EVENT}{sd}"),
            json!({"sd_id": sd.to_string(), "img_id": img.to_string(), "vol_id": vol.to_string(),
                "generation": generation, "size": size}),
        ),
        StorageEvent::ConnectionLost {
            id,
            domain_type,
            connection,
            mount_point,
            reason,
        } => (
            format!("{CONNECTION_LOST_EVENT}{id}"),
            json!({"id": id, "domain_type": domain_type.name(),
                "domain_type_number": domain_type.number(), "connection": connection,
                "mount_point": mount_point.map(|p| p.display().to_string()), "reason": reason}),
        ),
    };
    let params = match params {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    (name, params)
}

/// CLOCK_MONOTONIC in milliseconds, VDSM's `notify_time`.
fn monotonic_ms() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => (ts.tv_sec() as u64) * 1000 + (ts.tv_nsec() as u64) / 1_000_000,
        Err(_) => 0,
    }
}
