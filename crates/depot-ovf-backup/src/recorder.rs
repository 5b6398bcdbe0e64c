//! The recorder: each durable OVF_STORE upload, read back and queued for
//! every recording provider.
//!
//! The recorder sees an upload through the storage's `OvfStoreWritten`
//! event, published once the new content is durable on the domain. The
//! event only goes into a channel (publishing never blocks): the upload
//! answers as fast with providers as without. A recorder thread reads the
//! store's entities back, persists one record per provider in the retry
//! queue (`<state_dir>/ovf-backup/queue`) and wakes the provider's worker,
//! which records it, or keeps it queued while the provider fails.
//!
//! A generation that is replaced before the recorder reads it is not
//! recorded on its own: the newer one is (its event follows).

use std::sync::mpsc;
use std::sync::Arc;

use depot_api::storage::{ImgUuid, SdUuid, VolUuid};
use depot_ovf_archive::queue::{RetryQueue, Worker};
use depot_ovf_archive::{now_secs, Provider, Source, UploadRecord};
use depot_storage::events::{EventSink, StorageEvent};
use depot_storage::Storage;

use crate::{entity_copies, u, Settings};

/// One durable upload, as the storage reported it.
#[derive(Debug, Clone, Copy)]
struct Written {
    sd: SdUuid,
    img: ImgUuid,
    vol: VolUuid,
    generation: u64,
}

/// Passes every storage event on to `inner`, and the OVF_STORE writes to
/// the recorder too. Never blocks: a channel send.
pub struct Tee {
    inner: Arc<dyn EventSink>,
    tx: mpsc::Sender<Written>,
}

impl EventSink for Tee {
    fn publish(&self, event: StorageEvent) {
        if let StorageEvent::OvfStoreWritten {
            sd,
            img,
            vol,
            generation,
            ..
        } = &event
        {
            let _ = self.tx.send(Written {
                sd: *sd,
                img: *img,
                vol: *vol,
                generation: *generation,
            });
        }
        self.inner.publish(event);
    }
}

/// What [`crate::OvfBackup::start`] needs before the storage exists: the
/// event sink to build the storage with, and the other end of its channel.
pub struct Pending {
    rx: mpsc::Receiver<Written>,
}

/// The sink for the storage, and what [`crate::OvfBackup::start`] takes.
pub fn tee(inner: Arc<dyn EventSink>) -> (Arc<dyn EventSink>, Pending) {
    let (tx, rx) = mpsc::channel();
    (Arc::new(Tee { inner, tx }), Pending { rx })
}

/// The retry queue, one worker per recording provider, and the recorder
/// thread that feeds them; None when the queue cannot be opened (logged).
pub(crate) fn start_recording(
    c: &Settings,
    storage: Arc<Storage>,
    recording: &[Arc<dyn Provider>],
    mirror: Option<SdUuid>,
    pending: Pending,
) -> Option<Arc<Vec<Worker>>> {
    let dir = c.dir.join("queue");
    let q = match RetryQueue::open(&dir) {
        Ok(q) => Arc::new(q),
        Err(e) => {
            tracing::error!(error = %e, "OVF backup queue unavailable; uploads are not recorded");
            return None;
        }
    };
    let backoff = c.backoff;
    let mut started = Vec::new();
    for p in recording {
        match Worker::spawn(q.clone(), p.clone(), backoff) {
            // Records queued before a restart are tried at once.
            Ok(w) => {
                w.wake();
                started.push((p.name().to_string(), w));
            }
            Err(e) => tracing::error!(provider = p.name(), error = %e,
                "cannot start the OVF backup worker"),
        }
    }
    let (names, w): (Vec<String>, Vec<Worker>) = started.into_iter().unzip();
    let w = Arc::new(w);
    let ww = w.clone();
    if let Err(e) = std::thread::Builder::new()
        .name("ovf-backup-recorder".into())
        .spawn(move || recorder(&storage, &q, &names, &ww, mirror, pending.rx))
    {
        tracing::error!(error = %e, "cannot start the OVF backup recorder");
    }
    Some(w)
}

/// The recorder thread: each durable upload, read back and queued for
/// every recording provider.
fn recorder(
    storage: &Storage,
    queue: &RetryQueue,
    names: &[String],
    workers: &[Worker],
    mirror: Option<SdUuid>,
    rx: mpsc::Receiver<Written>,
) {
    while let Ok(w) = rx.recv() {
        // The mirror's own writes are not uploads to back up.
        if Some(w.sd) == mirror {
            continue;
        }
        let texts = match storage.ovf_store_texts(w.sd, w.img, w.vol) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(sd = %w.sd, vol = %w.vol, generation = w.generation, error = %e,
                    "an OVF_STORE upload could not be read back for the backup providers");
                continue;
            }
        };
        if texts.generation != Some(w.generation) {
            tracing::debug!(sd = %w.sd, vol = %w.vol, generation = w.generation,
                now = ?texts.generation, "OVF_STORE replaced before it was recorded; the newer upload is");
            continue;
        }
        let rec = UploadRecord {
            source: Source {
                sd: u(w.sd.0),
                img: u(w.img.0),
                vol: u(w.vol.0),
            },
            generation: w.generation,
            time: now_secs(),
            entities: entity_copies(&texts),
        };
        for (name, worker) in names.iter().zip(workers) {
            match queue.push(name, &rec) {
                Ok(_) => worker.wake(),
                Err(e) => tracing::error!(provider = %name, error = %e,
                    "cannot queue an OVF backup record; this upload is not recorded there"),
            }
        }
    }
}
