//! Volume metadata slots in a block domain's `metadata` LV (V5 layout):
//! slot `n` starts at `1 MiB + n * 8 KiB`; slot 0 is reserved. A record is
//! the same `KEY=value` text as a file volume's `.meta` (at most 512
//! bytes), written zero-padded to the domain's block size with `O_DIRECT`,
//! so a 512-byte or a 4 KiB sector device takes it in one aligned write
//! that cannot tear across sectors of another slot.
//!
//! Which slot a volume owns is recorded in its LV's `MD_<n>` tag, not here:
//! a slot that no LV names is free, whatever it holds.
//!
//! The I/O runs on a small worker with a timeout: with every path of a
//! LUN down, multipath may queue it for a long time, and the verb must
//! fail rather than hang (the stuck thread is abandoned, as on a dead NFS
//! server).

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use depot_api::Code;
use depot_os::{
    open_direct, read_at_direct, sync_and_close, write_at_direct, AlignedBuf, IoWorker,
};

use crate::error::{BoxError, StorageError, StorageResult};
use crate::metadata::volume::METADATA_SIZE;

/// Where slot 1 ... start: the first MiB is reserved (VDSM's V5 layout).
pub const SLOTS_OFFSET: u64 = 1 << 20;
/// Bytes per slot.
pub const SLOT_SIZE: u64 = 8 << 10;
/// The first slot a volume may take.
pub const FIRST_SLOT: u32 = 1;

/// Longest a slot read or write may take.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

fn worker() -> &'static IoWorker {
    static WORKER: OnceLock<IoWorker> = OnceLock::new();
    WORKER.get_or_init(|| IoWorker::new("io/block-md", 4))
}

/// Runs `f` on the worker; a timeout is `code`.
fn on_worker<T: Send + 'static>(
    op: &'static str,
    code: Code,
    dev: &Path,
    f: impl FnOnce() -> StorageResult<T> + Send + 'static,
) -> StorageResult<T> {
    run_on_device_worker(worker(), IO_TIMEOUT, (op, code, dev), f)
}

/// Runs `f`, direct I/O on shared block device `dev`, on `worker` within
/// `timeout`; a call past it is `code` naming the device (with every path
/// of a LUN down, multipath may queue I/O for a long time: the caller
/// notices instead of hanging). Also the mailbox's (mailbox/io.rs).
pub(crate) fn run_on_device_worker<T: Send + 'static>(
    worker: &IoWorker,
    timeout: Duration,
    (op, code, dev): (&'static str, Code, &Path),
    f: impl FnOnce() -> StorageResult<T> + Send + 'static,
) -> StorageResult<T> {
    worker.run(timeout, f).unwrap_or_else(|e| {
        Err(StorageError::new(
            code,
            op,
            format!("{}: {e} (are the LUN's paths up?)", dev.display()),
        )
        .caused_by(e))
    })
}

/// Byte offset of `slot` in the metadata LV.
pub fn offset(slot: u32) -> u64 {
    SLOTS_OFFSET + u64::from(slot) * SLOT_SIZE
}

/// How many slots a metadata LV of `size` bytes holds.
pub fn capacity(size: u64) -> u32 {
    u32::try_from(size.saturating_sub(SLOTS_OFFSET) / SLOT_SIZE).unwrap_or(u32::MAX)
}

fn err(
    op: &'static str,
    dev: &Path,
    slot: u32,
    e: impl std::fmt::Display + Into<BoxError>,
) -> StorageError {
    StorageError::new(
        Code::VolumeMetadataReadError,
        op,
        format!("{} slot {slot}: {e}", dev.display()),
    )
    .caused_by(e)
}

/// Reads slot `slot` of the metadata device; returns the record's bytes up
/// to the first NUL (at most 512).
pub fn read(dev: &Path, slot: u32, block_size: u32) -> StorageResult<Vec<u8>> {
    let d = dev.to_path_buf();
    on_worker(
        "read volume metadata",
        Code::VolumeMetadataReadError,
        dev,
        move || read_now(&d, slot, block_size),
    )
}

fn read_now(dev: &Path, slot: u32, block_size: u32) -> StorageResult<Vec<u8>> {
    const OP: &str = "read volume metadata";
    let bs = block_size as usize;
    let file = open_direct(dev, false).map_err(|e| err(OP, dev, slot, e))?;
    let mut buf = AlignedBuf::new(bs, bs).map_err(|e| err(OP, dev, slot, e))?;
    let n = read_at_direct(&file, offset(slot), &mut buf).map_err(|e| err(OP, dev, slot, e))?;
    let data = &buf[..n.min(METADATA_SIZE)];
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    Ok(data[..end].to_vec())
}

/// Writes `record` (at most 512 bytes) into slot `slot`, padded with zeros
/// to the block size, and flushes it.
pub fn write(dev: &Path, slot: u32, block_size: u32, record: &[u8]) -> StorageResult<()> {
    let (d, r) = (dev.to_path_buf(), record.to_vec());
    on_worker(
        "write volume metadata",
        Code::VolumeMetadataWriteError,
        dev,
        move || write_now(&d, slot, block_size, &r),
    )
}

fn write_now(dev: &Path, slot: u32, block_size: u32, record: &[u8]) -> StorageResult<()> {
    const OP: &str = "write volume metadata";
    let werr = |e: BoxError| err(OP, dev, slot, e).with_code(Code::VolumeMetadataWriteError);
    let refuse = |why: &str| {
        StorageError::new(
            Code::VolumeMetadataWriteError,
            OP,
            format!("{} slot {slot}: {why}", dev.display()),
        )
    };
    if record.len() > METADATA_SIZE {
        return Err(refuse(&format!(
            "record of {} bytes exceeds {METADATA_SIZE}",
            record.len()
        )));
    }
    if slot < FIRST_SLOT {
        return Err(refuse("slot 0 is reserved"));
    }
    let bs = block_size as usize;
    let mut buf = AlignedBuf::new(bs, bs).map_err(|e| werr(e.into()))?;
    buf[..record.len()].copy_from_slice(record);
    let file = open_direct(dev, true).map_err(|e| werr(e.into()))?;
    write_at_direct(&file, offset(slot), &buf, bs).map_err(|e| werr(e.into()))?;
    sync_and_close(file).map_err(|e| werr(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v5_offsets() {
        assert_eq!(offset(1), (1 << 20) + 8192);
        assert_eq!(capacity(128 << 20), 16256);
        assert_eq!(capacity(1 << 20), 0);
    }

    #[test]
    fn roundtrip_on_a_file_leaves_other_slots_alone() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("metadata");
        std::fs::File::create(&dev)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        write(&dev, 3, 4096, b"A=1\nEOF\n").unwrap();
        write(&dev, 4, 4096, b"B=2\nEOF\n").unwrap();
        assert_eq!(read(&dev, 3, 4096).unwrap(), b"A=1\nEOF\n");
        assert_eq!(read(&dev, 4, 512).unwrap(), b"B=2\nEOF\n");
        assert_eq!(read(&dev, 5, 512).unwrap(), b"");
        assert!(write(&dev, 0, 512, b"x").is_err(), "slot 0 is reserved");
        assert!(write(&dev, 1, 512, &[b'x'; 513]).is_err());
    }
}
