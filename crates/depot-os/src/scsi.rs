//! SCSI host rescans: writing `- - -` to `/sys/class/scsi_host/hostN/scan`
//! makes the kernel probe every channel, target and LUN of that host, so
//! LUNs newly mapped to this host (FC zoning and LUN masking, a new LUN on
//! an iSCSI target) appear as disks.
//!
//! # Why a worker
//!
//! The write returns only when the scan of that host is over, and a scan of
//! an FC fabric with a dead remote port can take minutes or not return at
//! all (the thread is then stuck in the kernel, in `D` state). So each host
//! is scanned on an [`IoWorker`] thread with a timeout, all hosts at once:
//! a hung host costs one abandoned thread and is reported, the others are
//! still scanned. VDSM runs its `fc-scan` helper per host in a child
//! process for the same reason.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::sysfs_block::{Sysfs, SysfsError};
use crate::IoWorker;

/// What a rescan did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RescanReport {
    /// Hosts whose scan finished.
    pub scanned: Vec<String>,
    /// Hosts whose scan failed or did not finish in time, with why.
    pub failed: Vec<(String, String)>,
    pub took: Duration,
}

/// Rescans SCSI hosts.
#[derive(Debug)]
pub struct ScsiScanner {
    sysfs: Sysfs,
    worker: IoWorker,
}

impl ScsiScanner {
    /// A scanner whose worker keeps at most `max_threads` threads (stuck
    /// ones included; see [`IoWorker`]).
    pub fn new(sysfs: Sysfs, max_threads: usize) -> Self {
        ScsiScanner {
            sysfs,
            worker: IoWorker::new("scsi-scan", max_threads),
        }
    }

    /// The SCSI hosts of the machine.
    pub fn hosts(&self) -> Result<Vec<String>, SysfsError> {
        self.sysfs.scsi_hosts()
    }

    /// Scans every SCSI host (FC HBAs, iSCSI sessions' hosts, local
    /// controllers: a scan of a host without new LUNs is cheap), each with
    /// `timeout`, in parallel.
    pub fn rescan_all(&self, timeout: Duration) -> Result<RescanReport, SysfsError> {
        let hosts = self.hosts()?;
        Ok(self.rescan(&hosts, timeout))
    }

    /// Scans `hosts` (`host0`, ...), each with `timeout`, in parallel.
    pub fn rescan(&self, hosts: &[String], timeout: Duration) -> RescanReport {
        let start = Instant::now();
        let results: Vec<(String, Result<(), String>)> = std::thread::scope(|s| {
            let handles: Vec<_> = hosts
                .iter()
                .map(|h| {
                    let path = self.sysfs.scsi_host_scan_path(h);
                    let worker = &self.worker;
                    s.spawn(move || {
                        let r = worker.run(timeout, move || -> std::io::Result<()> {
                            let mut f = std::fs::OpenOptions::new().write(true).open(&path)?;
                            f.write_all(b"- - -")
                        });
                        match r {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(e) => Err(e.to_string()),
                        }
                    })
                })
                .collect();
            hosts
                .iter()
                .zip(handles)
                .map(|(h, j)| {
                    let r = j
                        .join()
                        .unwrap_or_else(|_| Err("scan thread panicked".into()));
                    (h.clone(), r)
                })
                .collect()
        });
        let mut report = RescanReport::default();
        for (host, r) in results {
            match r {
                Ok(()) => report.scanned.push(host),
                Err(why) => {
                    tracing::warn!(%host, error = %why, "SCSI host rescan failed");
                    report.failed.push((host, why));
                }
            }
        }
        report.took = start.elapsed();
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysfs_block::fake;

    #[test]
    fn writes_the_wildcard_to_every_host() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fake::write(root, "class/scsi_host/host0/scan", "");
        fake::write(root, "class/scsi_host/host3/scan", "");
        // A host whose scan attribute cannot be opened fails alone.
        std::fs::create_dir_all(root.join("class/scsi_host/host7/scan")).unwrap();
        let s = ScsiScanner::new(Sysfs::new(root), 4);
        let r = s.rescan_all(Duration::from_secs(5)).unwrap();
        assert_eq!(r.scanned, ["host0", "host3"]);
        assert_eq!(r.failed.len(), 1);
        assert_eq!(r.failed[0].0, "host7");
        for h in ["host0", "host3"] {
            let p = root.join(format!("class/scsi_host/{h}/scan"));
            assert_eq!(std::fs::read_to_string(p).unwrap(), "- - -");
        }
    }

    #[test]
    fn a_hung_scan_times_out_and_others_finish() {
        // A FIFO without a reader: opening it for writing blocks, like a
        // scan that never returns.
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fake::write(root, "class/scsi_host/host0/scan", "");
        let fifo = root.join("class/scsi_host/host1/scan");
        std::fs::create_dir_all(fifo.parent().unwrap()).unwrap();
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let s = ScsiScanner::new(Sysfs::new(root), 4);
        let start = Instant::now();
        let r = s.rescan_all(Duration::from_millis(300)).unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(r.scanned, ["host0"]);
        assert_eq!(r.failed[0].0, "host1");
        assert!(r.failed[0].1.contains("did not return"), "{:?}", r.failed);
        // Unblock the stuck thread so the test leaves nothing behind.
        let _ = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo);
    }

    use std::os::unix::fs::OpenOptionsExt;
}
