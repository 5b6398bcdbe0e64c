//! Storage events: what the storage layer reports as it happens, typed.
//!
//! depot-storage knows no JSON and no transport: it hands each event to an
//! [`EventSink`] the daemon gave it ([`crate::Storage::with_events`]), and
//! the daemon turns it into a notification for its subscribers
//! (docs/protocol.md, "Storage events"). Publishing must not block: the
//! monitor threads and the verbs' threads call it.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use depot_api::storage::{DomainType, ImgUuid, SdUuid, VolUuid};

/// One storage event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageEvent {
    /// A monitored domain became invalid, valid again, or (while invalid)
    /// failed in another way: its repoStats `valid`/`code` changed.
    DomainState {
        sd: SdUuid,
        valid: bool,
        /// 0 when valid, else the failure's code (as repoStats).
        code: i32,
        /// What is wrong; empty when valid.
        message: String,
        previous_valid: bool,
        previous_code: i32,
    },
    /// An OVF_STORE upload was committed: the new content is durable.
    OvfStoreWritten {
        sd: SdUuid,
        img: ImgUuid,
        vol: VolUuid,
        /// The store's generation (its trailer's), counting its writes.
        generation: u64,
        /// The archive's size in bytes.
        size: u64,
    },
    /// A storage server connection of this host, connected when last
    /// seen, is not there any more (see connection/watch.rs).
    ConnectionLost {
        /// oVirt's connection id.
        id: String,
        domain_type: DomainType,
        /// The connection string (`server:/path`, the local path, or the
        /// iSCSI portal and target).
        connection: String,
        /// The mount point or link of a file connection.
        mount_point: Option<PathBuf>,
        /// What was found instead.
        reason: String,
    },
}

/// Receives storage events; the daemon's implementation turns them into
/// notifications. Must return quickly and never block.
pub trait EventSink: Send + Sync {
    fn publish(&self, event: StorageEvent);
}

/// The sink a [`crate::Storage`] publishes to (none by default).
#[derive(Clone, Default)]
pub struct Events(Option<Arc<dyn EventSink>>);

impl Events {
    pub fn new(sink: Arc<dyn EventSink>) -> Self {
        Events(Some(sink))
    }

    /// Events that go nowhere.
    pub fn none() -> Self {
        Events(None)
    }

    pub fn publish(&self, event: StorageEvent) {
        tracing::debug!(?event, "storage event");
        if let Some(sink) = &self.0 {
            sink.publish(event);
        }
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Events(sink)"
        } else {
            "Events(none)"
        })
    }
}

/// A sink that keeps every event, for tests.
#[derive(Debug, Default)]
pub struct Recorder(std::sync::Mutex<Vec<StorageEvent>>);

impl Recorder {
    /// The events so far.
    pub fn events(&self) -> Vec<StorageEvent> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl EventSink for Recorder {
    fn publish(&self, event: StorageEvent) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(event);
    }
}
