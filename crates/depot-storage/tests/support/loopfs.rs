//! A loop device over a sparse image with a fresh file system, for the root
//! tier. On drop, whatever is still mounted from it is lazily unmounted and
//! the device detached, even when the test failed.

use std::time::Duration;

use super::run;

const T: Duration = Duration::from_secs(120);

pub struct LoopFs {
    pub dev: String,
    // Fields drop in order: the device is detached before its image goes.
    lo: depot_testkit::LoopDevice,
    _dir: tempfile::TempDir,
}

impl LoopFs {
    /// `size` bytes of `fstype` (`mkfs.<fstype>`), with 512-byte sectors or
    /// `sector_size` ones.
    pub fn new(fstype: &str, size: u64, sector_size: Option<u32>) -> LoopFs {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::File::create(&img).unwrap().set_len(size).unwrap();
        let lo = depot_testkit::LoopDevice::attach_with(&img, sector_size, false);
        let dev = lo.path_str().to_owned();
        let fs = LoopFs { dev, lo, _dir: dir };
        let mkfs = format!("mkfs.{fstype}");
        run(&mkfs, &["-q", &fs.dev], T).unwrap_or_else(|e| {
            panic!(
                "{mkfs} {} (apt-get install e2fsprogs xfsprogs): {e}",
                fs.dev
            )
        });
        fs
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if let Ok(table) = depot_os::mount::read_mountinfo() {
            for e in table.iter().rev().filter(|e| e.source == self.dev) {
                eprintln!(
                    "unmounting leftover {} from {}",
                    e.target.display(),
                    self.dev
                );
                let _ = run("umount", &["-l", "--", e.target.to_str().unwrap()], T);
            }
        }
        // The fields drop next: `lo` detaches the device, then the
        // image's directory goes.
    }
}
