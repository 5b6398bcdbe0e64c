//! The OVF_STORE streams on the JSON-RPC port, VDSM's wire:
//!
//! - `PUT /` with `Storage-Pool-Id`, `Storage-Domain-Id`, `Image-Id`,
//!   `Volume-Id` and `Content-Length`: the engine's tar. 200 with a
//!   `Task-Id` header once the store is durable.
//! - `GET /` with the same ids and `Range: bytes=a-b`: 206 with exactly those
//!   bytes, read with O_DIRECT, and a `Task-Id` header.
//! - Errors: 4xx/5xx with `{"status": {"code": N, "message": "..."}}`.
//!
//! Each `Task-Id` is a real task ([`crate::task_store`]), persisted before
//! the work starts and finished by the thread that does the work, whatever
//! becomes of the request: `Task.getStatus` shows it running, then
//! finished with `success` or `cleanFailure` and the error's code. A PUT
//! gets its task once its headers are valid, so a failed upload's answer
//! carries a `Task-Id` too; a GET gets one when its 206 goes out.
//!
//! The body is passed between the network and the storage thread through a
//! small bounded channel, so memory stays bounded whatever the size, and a
//! slow disk slows the client down instead of piling data up. The client
//! must keep up a minimum pace ([`crate::pace`]): an upload that stalls is
//! answered 408 and releases the volume's upload slot; a download the
//! client stops reading is cut off by the connection's paced socket, which
//! ends the read and releases the image lock it holds.

use bytes::{Buf, Bytes};
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::json;
use std::io;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};

use depot_api::storage::{ImgUuid, SdUuid, SpUuid, VolUuid};
use depot_api::types::Uuid;
use depot_api::{ApiError, Code};
use depot_storage::{Storage, UploadDone};

use super::http::{empty, full, Body};
use crate::conn::Conn;
use crate::pace::{BodyError, PaceLimits, PacedBody, TooSlow};
use crate::task_store::{StreamVerb, TaskStore};

/// Chunks in flight between the socket and the disk, each up to hyper's
/// frame size (at most a few hundred KiB).
const CHANNEL_DEPTH: usize = 8;

pub const TASK_ID_HEADER: &str = "Task-Id";

struct Ids {
    _pool: SpUuid,
    sd: SdUuid,
    img: ImgUuid,
    vol: VolUuid,
}

fn header_uuid(headers: &HeaderMap, name: &str) -> Result<Uuid, ApiError> {
    let value = headers.get(name).ok_or_else(|| {
        ApiError::new(
            Code::InvalidParameterException,
            format!("missing header {name}"),
        )
    })?;
    let text = value.to_str().map_err(|_| {
        ApiError::new(
            Code::InvalidParameterException,
            format!("header {name} is not text"),
        )
    })?;
    text.parse().map_err(|e| {
        ApiError::new(
            Code::InvalidParameterException,
            format!("header {name}: {e}"),
        )
    })
}

fn ids(headers: &HeaderMap) -> Result<Ids, ApiError> {
    Ok(Ids {
        _pool: SpUuid(header_uuid(headers, "Storage-Pool-Id")?),
        sd: SdUuid(header_uuid(headers, "Storage-Domain-Id")?),
        img: ImgUuid(header_uuid(headers, "Image-Id")?),
        vol: VolUuid(header_uuid(headers, "Volume-Id")?),
    })
}

/// The HTTP status for a storage error code.
fn status_for(code: Code) -> StatusCode {
    match code {
        Code::VolumeIsBusy => StatusCode::CONFLICT,
        Code::StorageDomainDoesNotExist
        | Code::VolumeDoesNotExist
        | Code::ImageDoesNotExistInSD => StatusCode::NOT_FOUND,
        Code::InvalidParameterException | Code::InvalidParams => StatusCode::BAD_REQUEST,
        Code::VolumeResizeValueError | Code::OvfUploadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error(status: StatusCode, err: &ApiError) -> Response<Body> {
    tracing::info!(status = status.as_u16(), code = err.code.number(), error = %err, "OVF stream refused");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(json!({"status": err.to_wire()}).to_string()))
        .unwrap_or_default()
}

fn storage_error(err: ApiError) -> Response<Body> {
    error(status_for(err.code), &err)
}

fn with_task(mut resp: Response<Body>, task: Option<Uuid>) -> Response<Body> {
    if let Some(id) = task {
        if let Ok(v) = header::HeaderValue::from_str(&id.to_string()) {
            resp.headers_mut().insert(TASK_ID_HEADER, v);
        }
    }
    resp
}

/// What the storage thread of an upload ends with: the task's id (none
/// when the task could not be begun) and the outcome.
type Upload = (Option<Uuid>, Result<UploadDone, ApiError>);

/// `PUT /`: streams the tar to the storage thread, answers when durable.
pub async fn put(
    req: Request<Incoming>,
    conn: &Conn,
    body_pace: PaceLimits,
    storage: Arc<Storage>,
    tasks: Arc<TaskStore>,
) -> Response<Body> {
    let ids = match ids(req.headers()) {
        Ok(i) => i,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let Some(length) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return error(
            StatusCode::LENGTH_REQUIRED,
            &ApiError::new(
                Code::InvalidParameterException,
                "Content-Length is required",
            ),
        );
    };
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_DEPTH);
    let task_id = Uuid::new_v4();
    // Set before the body is cut off for being too slow, so the task
    // records why the upload ended early.
    let slow = Arc::new(std::sync::OnceLock::<String>::new());
    let mut upload = spawn_upload(&ids, length, task_id, rx, slow.clone(), storage, tasks);
    let body = PacedBody::new(req.into_body(), body_pace);
    let (finished, too_slow) = feed(body, tx, &mut upload, conn, &slow).await;
    let outcome = match finished {
        Some(done) => done,
        None => upload.await,
    };
    let (task, result) = match outcome {
        Ok(o) => o,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &ApiError::new(Code::InternalError, format!("upload task failed: {e}")),
            )
        }
    };
    // (A store the whole body reached is stored, however slow the end.)
    if let (Some(e), Err(_)) = (too_slow, &result) {
        let mut resp = error(
            StatusCode::REQUEST_TIMEOUT,
            &ApiError::new(
                Code::GeneralException,
                format!("upload body too slow: {}", e.detail),
            ),
        );
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        return with_task(resp, task);
    }

    match result {
        Ok(done) => {
            tracing::info!(peer = %conn.peer, sd = %ids.sd, img = %ids.img, vol = %ids.vol,
                size = done.size, generation = done.generation, task = %task_id,
                "OVF store updated");
            let resp = Response::builder()
                .status(StatusCode::OK)
                .body(empty())
                .unwrap_or_default();
            with_task(resp, task)
        }
        Err(e) => with_task(storage_error(e), task),
    }
}

/// The storage thread of an upload, reading the body from `rx`. The task
/// is begun and finished there, so it records the storage's real outcome
/// even if the request goes away.
fn spawn_upload(
    ids: &Ids,
    length: u64,
    task_id: Uuid,
    mut rx: mpsc::Receiver<io::Result<Bytes>>,
    slow: Arc<std::sync::OnceLock<String>>,
    storage: Arc<Storage>,
    tasks: Arc<TaskStore>,
) -> JoinHandle<Upload> {
    let (sd, img, vol) = (ids.sd, ids.img, ids.vol);
    tokio::task::spawn_blocking(move || {
        let task = match tasks.begin(task_id, StreamVerb::Upload, sd, img, vol) {
            Ok(t) => t,
            Err(e) => return (None, Err(e)),
        };
        let mut pending = Bytes::new();
        let mut source = |buf: &mut [u8]| -> io::Result<usize> {
            loop {
                if !pending.is_empty() {
                    let n = buf.len().min(pending.len());
                    buf[..n].copy_from_slice(&pending[..n]);
                    pending.advance(n);
                    return Ok(n);
                }
                match rx.blocking_recv() {
                    Some(Ok(b)) => pending = b,
                    Some(Err(e)) => return Err(e),
                    // The body ended: EOF.
                    None => return Ok(0),
                }
            }
        };
        let result = storage
            .ovf_upload(sd, img, vol, length, &mut source)
            .map_err(ApiError::from);
        let result = match (result, slow.get()) {
            (Err(_), Some(detail)) => Err(ApiError::new(
                Code::GeneralException,
                format!("upload body too slow: {detail}"),
            )),
            (r, _) => r,
        };
        task.finish(result.as_ref().map(|_| ()));
        (Some(task_id), result)
    })
}

/// Feeds the body to the storage thread until it ends, or until the
/// storage side has answered on its own (a refusal before the body is
/// read: 404, 409, 9005 ...), which must not wait for bytes the client may
/// never send. Returns that early answer, and whether the body was too slow.
async fn feed(
    mut body: PacedBody<Incoming>,
    tx: mpsc::Sender<io::Result<Bytes>>,
    upload: &mut JoinHandle<Upload>,
    conn: &Conn,
    slow: &std::sync::OnceLock<String>,
) -> (Option<Result<Upload, JoinError>>, Option<TooSlow>) {
    let mut too_slow = None;
    let finished = loop {
        tokio::select! {
            frame = body.frame() => {
                let Some(frame) = frame else { break None };
                match frame {
                    Ok(f) => {
                        let Ok(data) = f.into_data() else { continue }; // trailers
                        // The storage side stops reading when it refuses.
                        if tx.send(Ok(data)).await.is_err() {
                            break None;
                        }
                    }
                    // The client stopped sending: for the storage side
                    // this is the end of the body, which it reports as a
                    // truncated upload (400, naming the missing bytes).
                    Err(BodyError::Inner(e)) => {
                        tracing::info!(peer = %conn.peer, error = %e, "OVF upload body ended early");
                        break None;
                    }
                    // Too slow: the same for the storage side, and 408 for
                    // the client.
                    Err(BodyError::TooSlow(e)) => {
                        tracing::info!(peer = %conn.peer, detail = %e.detail, "OVF upload too slow; closing");
                        let _ = slow.set(e.detail.clone());
                        too_slow = Some(e);
                        break None;
                    }
                }
            }
            done = &mut *upload => break Some(done),
        }
    };
    // Dropped here, as before the wait for the storage thread: EOF for it.
    drop(tx);
    (finished, too_slow)
}

/// `bytes=a-b` (inclusive), the only form the engine sends.
fn parse_range(headers: &HeaderMap) -> Result<(u64, u64), ApiError> {
    let bad = |d: &str| ApiError::new(Code::InvalidParameterException, format!("Range: {d}"));
    let value = headers
        .get(header::RANGE)
        .ok_or_else(|| bad("required (bytes=start-end)"))?
        .to_str()
        .map_err(|_| bad("not text"))?;
    let spec = value
        .strip_prefix("bytes=")
        .ok_or_else(|| bad("only bytes ranges"))?;
    let (a, b) = spec
        .split_once('-')
        .ok_or_else(|| bad("expected start-end"))?;
    let start: u64 = a.trim().parse().map_err(|_| bad("bad start"))?;
    let end: u64 = b
        .trim()
        .parse()
        .map_err(|_| bad("bad end (open ranges are not supported)"))?;
    if end < start {
        return Err(bad("end before start"));
    }
    Ok((start, end))
}

/// `GET /`: 206 with exactly the requested bytes of a store that verifies.
pub async fn get(
    req: Request<Incoming>,
    storage: Arc<Storage>,
    tasks: Arc<TaskStore>,
) -> Response<Body> {
    let ids = match ids(req.headers()) {
        Ok(i) => i,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let (start, end) = match parse_range(req.headers()) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::RANGE_NOT_SATISFIABLE, &e),
    };
    let (sd, img, vol) = (ids.sd, ids.img, ids.vol);
    // Check before the 206 goes out: a torn store is an error, not data.
    let s = storage.clone();
    let checked =
        match tokio::task::spawn_blocking(move || s.ovf_check_readable(sd, img, vol, start, end))
            .await
        {
            Ok(Ok(checked)) => checked,
            Ok(Err(e)) => return storage_error(e.into()),
            Err(e) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &ApiError::new(Code::InternalError, e.to_string()),
                )
            }
        };
    // The task exists before its id goes out. (Should this request go
    // away meanwhile, the dropped guard records a failure.)
    let task_id = Uuid::new_v4();
    let task = match tokio::task::spawn_blocking(move || {
        tasks.begin(task_id, StreamVerb::Download, sd, img, vol)
    })
    .await
    {
        Ok(Ok(task)) => task,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e),
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &ApiError::new(Code::InternalError, e.to_string()),
            )
        }
    };
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_DEPTH);
    tokio::task::spawn_blocking(move || {
        let mut sink = |chunk: &[u8]| -> io::Result<()> {
            tx.blocking_send(Ok(Bytes::copy_from_slice(chunk)))
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))
        };
        let result = storage
            .ovf_read(
                sd,
                img,
                vol,
                start,
                end - start + 1,
                checked.generation,
                &mut sink,
            )
            .map_err(ApiError::from);
        if let Err(e) = &result {
            // The status is sent already: breaking the body tells the client.
            let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
        }
        task.finish(result.as_ref().map(|_| ()));
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item.map(Frame::data), rx))
    });
    Response::builder()
        .status(StatusCode::PARTIAL_CONTENT)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, end - start + 1)
        .header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{end}/{}", checked.size),
        )
        .header(TASK_ID_HEADER, task_id.to_string())
        .body(StreamBody::new(stream).boxed())
        .unwrap_or_default()
}
