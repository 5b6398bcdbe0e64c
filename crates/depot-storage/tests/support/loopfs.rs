//! A loop device over a sparse image with a fresh file system, for the root
//! tier. On drop, whatever is still mounted from it is lazily unmounted and
//! the device detached, even when the test failed.

use std::time::Duration;

use super::run;

const T: Duration = Duration::from_secs(120);

pub struct LoopFs {
    pub dev: String,
    _dir: tempfile::TempDir,
}

impl LoopFs {
    /// `size` bytes of `fstype` (`mkfs.<fstype>`), with 512-byte sectors or
    /// `sector_size` ones.
    pub fn new(fstype: &str, size: u64, sector_size: Option<u32>) -> LoopFs {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::File::create(&img).unwrap().set_len(size).unwrap();
        let sector = sector_size.map(|s| s.to_string());
        let mut args = vec!["-f", "--show"];
        if let Some(s) = &sector {
            args.extend(["--sector-size", s.as_str()]);
        }
        args.push(img.to_str().unwrap());
        let dev = run("losetup", &args, Duration::from_secs(30))
            .expect("losetup")
            .trim()
            .to_owned();
        let fs = LoopFs { dev, _dir: dir };
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
        let _ = run("losetup", &["-d", &self.dev], Duration::from_secs(30));
    }
}
