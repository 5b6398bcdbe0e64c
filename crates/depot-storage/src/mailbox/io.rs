//! Reads and writes of `inbox` and `outbox` with `O_DIRECT` (another host
//! writes them: this host's page cache must not answer), each on a small
//! worker with a timeout: with every path of the LUN down, multipath may
//! queue the I/O for a long time, and the mailbox's threads must notice
//! rather than hang (the stuck call is abandoned, as for the metadata
//! slots, crate::block::slots).
//!
//! Offsets and lengths are multiples of 4 KiB, aligned for 512-byte and
//! 4 KiB sector devices alike.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use depot_api::Code;
use depot_os::{
    open_direct, read_at_direct, sync_and_close, write_at_direct, AlignedBuf, IoWorker,
};

use super::format::MAILBOX_SIZE;
use crate::error::{StorageError, StorageResult};

/// Longest one mailbox read or write may take.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn worker() -> &'static IoWorker {
    static WORKER: OnceLock<IoWorker> = OnceLock::new();
    WORKER.get_or_init(|| IoWorker::new("io/mailbox", 4))
}

/// Runs `f` on the mailbox worker; a call past [`IO_TIMEOUT`] is `code`
/// (2001 for a read, 2002 for a write).
fn on_worker<T: Send + 'static>(
    op: &'static str,
    code: Code,
    dev: &Path,
    f: impl FnOnce() -> StorageResult<T> + Send + 'static,
) -> StorageResult<T> {
    crate::block::slots::run_on_device_worker(worker(), IO_TIMEOUT, (op, code, dev), f)
}

fn check_aligned(
    op: &'static str,
    code: Code,
    dev: &Path,
    offset: u64,
    len: usize,
) -> StorageResult<()> {
    if !offset.is_multiple_of(MAILBOX_SIZE as u64) || len == 0 || !len.is_multiple_of(MAILBOX_SIZE)
    {
        return Err(StorageError::new(
            code,
            op,
            format!(
                "{}: {len} bytes at {offset} are not whole 4 KiB blocks",
                dev.display()
            ),
        ));
    }
    Ok(())
}

/// Reads `len` bytes at `offset` of a mailbox area. A short read (the
/// area is smaller than asked) is an error: the caller asked for mailboxes
/// that must be there.
pub fn read(dev: &Path, offset: u64, len: usize) -> StorageResult<Vec<u8>> {
    const OP: &str = "read mailbox";
    const CODE: Code = Code::MiscFileReadException;
    check_aligned(OP, CODE, dev, offset, len)?;
    let d = dev.to_path_buf();
    on_worker(OP, CODE, dev, move || {
        let err =
            |e: depot_os::DirectError| StorageError::new(CODE, OP, e.to_string()).caused_by(e);
        let file = open_direct(&d, false).map_err(err)?;
        let mut buf = AlignedBuf::new(len, MAILBOX_SIZE).map_err(err)?;
        let n = read_at_direct(&file, offset, &mut buf).map_err(err)?;
        if n != len {
            return Err(StorageError::new(
                Code::MiscFileReadException,
                OP,
                format!("{}: {n} of {len} bytes at {offset}", d.display()),
            ));
        }
        Ok(buf.to_vec())
    })
}

/// Writes `data` (whole 4 KiB blocks) at `offset` of a mailbox area and
/// flushes it.
pub fn write(dev: &Path, offset: u64, data: &[u8]) -> StorageResult<()> {
    const OP: &str = "write mailbox";
    const CODE: Code = Code::MiscFileWriteException;
    check_aligned(OP, CODE, dev, offset, data.len())?;
    let (d, data): (PathBuf, Vec<u8>) = (dev.to_path_buf(), data.to_vec());
    on_worker(OP, CODE, dev, move || {
        let err =
            |e: depot_os::DirectError| StorageError::new(CODE, OP, e.to_string()).caused_by(e);
        let file = open_direct(&d, true).map_err(err)?;
        let mut buf = AlignedBuf::new(data.len(), MAILBOX_SIZE).map_err(err)?;
        buf.copy_from_slice(&data);
        write_at_direct(&file, offset, &buf, data.len()).map_err(err)?;
        sync_and_close(file).map_err(err)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(dir: &tempfile::TempDir, name: &str, size: u64) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::File::create(&p).unwrap().set_len(size).unwrap();
        p
    }

    #[test]
    fn writes_read_back_through_o_direct() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let p = area(&dir, "inbox", 64 << 10);
        let data: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
        write(&p, 4096, &data).unwrap();
        assert_eq!(read(&p, 4096, 8192).unwrap(), data);
        assert_eq!(read(&p, 0, 4096).unwrap(), vec![0; 4096]);
    }

    #[test]
    fn unaligned_or_short_is_an_error() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let p = area(&dir, "outbox", 8192);
        assert!(read(&p, 100, 4096).is_err());
        assert!(read(&p, 0, 100).is_err());
        // A write's failures are write errors (2002), a read's read
        // errors (2001).
        let e = write(&p, 0, &[0; 10]).unwrap_err();
        assert_eq!(e.code, Code::MiscFileWriteException, "{e}");
        let e = write(&dir.path().join("missing"), 0, &[0; 4096]).unwrap_err();
        assert_eq!(e.code, Code::MiscFileWriteException, "{e}");
        assert_eq!(
            read(&p, 0, 100).unwrap_err().code,
            Code::MiscFileReadException
        );
        // Beyond the end of the area.
        let e = read(&p, 4096, 8192).unwrap_err();
        assert!(e.detail.contains("4096 of 8192"), "{e}");
        assert!(read(&dir.path().join("missing"), 0, 4096).is_err());
    }
}
