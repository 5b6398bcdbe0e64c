//! Multipath maps: which maps exist (by WWID), their paths and the paths'
//! states, and waiting for maps to appear after new LUNs show up.
//!
//! # Sources
//!
//! * The maps and their paths come from sysfs (`/sys/block/dm-N/dm/uuid`
//!   is `mpath-<wwid>`, `slaves/` are the paths): the kernel's own table,
//!   read without a process and without I/O to the devices. A map is named
//!   by its WWID, never by a path name like `sdb`, which the kernel hands
//!   out in discovery order and may give to another LUN after a rescan.
//! * Path states come from `dmsetup status --target multipath` (each path
//!   is `major:minor A|F`, active or failed), as VDSM reads them: what the
//!   kernel will actually use for I/O, not what a checker last thought.
//! * New LUNs: [`Multipath::wait_for_maps`] waits for exactly the maps
//!   (and `/dev/mapper` nodes) of the disks in question, which is much
//!   quicker than `udevadm settle` (every queued event of the machine) or
//!   polling `multipathd show status` for idleness.
//! * [`Multipath::remove_pathless`] flushes (`multipath -f`) maps left
//!   without paths after a logout.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::command::{Cmd, CmdError, CommandRunner};
use crate::sysfs_block::{Sysfs, SysfsError};

/// `/dev/mapper`.
pub const DEV_MAPPER: &str = "/dev/mapper";

/// One multipath map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipathMap {
    /// The WWID (from the dm uuid `mpath-<wwid>`).
    pub wwid: String,
    /// The map name, i.e. `/dev/mapper/<name>`. Equal to the WWID unless
    /// multipath is configured with friendly names or aliases.
    pub name: String,
    /// The kernel name, `dm-3`.
    pub dm: String,
    /// The path devices (`sda`, ...).
    pub paths: Vec<String>,
    /// Devices built on the map (partitions, LVs), by kernel name.
    pub holders: Vec<String>,
}

impl MultipathMap {
    pub fn dev_path(&self) -> std::path::PathBuf {
        std::path::Path::new(DEV_MAPPER).join(&self.name)
    }
}

/// The kernel's view of one path of a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathState {
    Active,
    Failed,
}

impl PathState {
    /// VDSM's words.
    pub fn as_str(self) -> &'static str {
        match self {
            PathState::Active => "active",
            PathState::Failed => "failed",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MultipathError {
    #[error("reading multipath maps from sysfs: {0}")]
    Sysfs(#[from] SysfsError),
    #[error("{what}: {cause}")]
    Command {
        what: &'static str,
        #[source]
        cause: Box<CmdError>,
    },
}

/// Lists the multipath maps, sorted by WWID.
pub fn list_maps(sysfs: &Sysfs) -> Result<Vec<MultipathMap>, MultipathError> {
    let mut maps = Vec::new();
    for name in sysfs.block_devices()? {
        if !name.starts_with("dm-") {
            continue;
        }
        // A map removed while we list it is simply not there.
        let dm = match sysfs.dm_device(&name) {
            Ok(Some(dm)) => dm,
            Ok(None) => continue,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        let Some(wwid) = dm.multipath_wwid() else {
            continue;
        };
        maps.push(MultipathMap {
            wwid: wwid.to_owned(),
            name: dm.name.clone(),
            dm: name.clone(),
            paths: sysfs.slaves(&name)?,
            holders: sysfs.holders(&name)?,
        });
    }
    maps.sort_by(|a, b| a.wwid.cmp(&b.wwid));
    Ok(maps)
}

/// The map that `disk` (e.g. `sda`) is a path of, if any.
pub fn map_of_path<'a>(maps: &'a [MultipathMap], disk: &str) -> Option<&'a MultipathMap> {
    maps.iter().find(|m| m.paths.iter().any(|p| p == disk))
}

/// Parses `dmsetup status --target multipath`: per map name, each path's
/// `major:minor` and state, in table order.
///
/// A line is `<name>: <start> <len> multipath <status...>`, where each
/// path appears as `<major:minor> <A|F> <fail count> [selector args]`.
/// With no maps dmsetup prints `No devices found`.
pub fn parse_dmsetup_status(text: &str) -> BTreeMap<String, Vec<(String, PathState)>> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(": ") else {
            continue;
        };
        let tokens: Vec<&str> = rest.split_whitespace().collect();
        if tokens.get(2) != Some(&"multipath") {
            continue;
        }
        let mut paths = Vec::new();
        for w in tokens.windows(2) {
            let is_dev = w[0]
                .split_once(':')
                .is_some_and(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok());
            let state = match w[1] {
                "A" => PathState::Active,
                "F" => PathState::Failed,
                _ => continue,
            };
            if is_dev {
                paths.push((w[0].to_owned(), state));
            }
        }
        out.insert(name.to_owned(), paths);
    }
    out
}

/// What [`Multipath::wait_for_maps`] saw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MapWait {
    /// Each waited-for disk that is a path of a map, with the map's WWID.
    pub mapped: Vec<(String, String)>,
    /// Disks still without a map when the time was up.
    pub missing: Vec<String>,
    pub waited: Duration,
}

/// Runs `dmsetup` and `multipath`.
#[derive(Debug, Clone)]
pub struct Multipath {
    runner: CommandRunner,
    sysfs: Sysfs,
    dmsetup: OsString,
    multipath: OsString,
    timeout: Duration,
    /// Where udev makes the maps' nodes (`/dev/mapper`).
    dev_dir: PathBuf,
}

/// How often the waits look again.
const POLL: Duration = Duration::from_millis(200);

impl Multipath {
    pub fn new(runner: CommandRunner, sysfs: Sysfs) -> Self {
        Multipath {
            runner,
            sysfs,
            dmsetup: "dmsetup".into(),
            multipath: "multipath".into(),
            timeout: Duration::from_secs(30),
            dev_dir: PathBuf::from(DEV_MAPPER),
        }
    }

    /// Runs another program instead of `multipath` (tests).
    pub fn with_multipath_program(mut self, program: impl Into<OsString>) -> Self {
        self.multipath = program.into();
        self
    }

    /// Looks for map nodes in `dir` instead of `/dev/mapper` (tests).
    pub fn with_dev_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dev_dir = dir.into();
        self
    }

    pub fn sysfs(&self) -> &Sysfs {
        &self.sysfs
    }

    pub fn maps(&self) -> Result<Vec<MultipathMap>, MultipathError> {
        list_maps(&self.sysfs)
    }

    /// Each path's state by kernel name (`sda` -> active). Paths whose
    /// `major:minor` no longer resolves are left out.
    pub fn path_states(&self) -> Result<BTreeMap<String, PathState>, MultipathError> {
        let cmd = Cmd::new(&self.dmsetup, self.timeout).args(["status", "--target", "multipath"]);
        let out = self
            .runner
            .run(&cmd)
            .map_err(|cause| MultipathError::Command {
                what: "dmsetup status",
                cause: Box::new(cause),
            })?;
        let mut states = BTreeMap::new();
        for (_, paths) in parse_dmsetup_status(&out.stdout_lossy()) {
            for (dev_t, state) in paths {
                if let Some(name) = self.sysfs.name_of_dev_t(&dev_t) {
                    states.insert(name, state);
                }
            }
        }
        Ok(states)
    }

    /// Sets whether I/O to map `name` queues while the map has no usable
    /// path (`dmsetup message NAME 0 queue_if_no_path|fail_if_no_path`).
    /// Turned off before the last paths of a map are logged out: a reader
    /// that opens the map in that moment (udev's blkid, an LVM scan) would
    /// otherwise hang in the queue and keep the map open, so that it could
    /// not be removed (seen in the VM tier).
    pub fn set_queueing(&self, name: &str, queue: bool) -> Result<(), MultipathError> {
        let msg = if queue {
            "queue_if_no_path"
        } else {
            "fail_if_no_path"
        };
        let cmd = Cmd::new(&self.dmsetup, self.timeout).args(["message", name, "0", msg]);
        self.runner
            .run(&cmd)
            .map(drop)
            .map_err(|cause| MultipathError::Command {
                what: "dmsetup message",
                cause: Box::new(cause),
            })
    }

    /// Removes the map `name` (`multipath -f NAME`). Refused by multipath
    /// while the map is open or has holders. A map that is already gone is
    /// success.
    pub fn flush(&self, name: &str) -> Result<(), MultipathError> {
        let gone = |maps: &[MultipathMap]| !maps.iter().any(|m| m.name == name);
        if gone(&self.maps()?) {
            return Ok(());
        }
        let cmd = Cmd::new(&self.multipath, self.timeout).arg("-f").arg(name);
        match self.runner.run(&cmd) {
            Ok(_) => Ok(()),
            // Gone meanwhile (multipathd flushed it itself): fine.
            Err(_) if gone(&self.maps()?) => Ok(()),
            Err(cause) => Err(MultipathError::Command {
                what: "multipath -f",
                cause: Box::new(cause),
            }),
        }
    }

    /// Waits until none of `wwids` has a map, removing the maps that are
    /// left without paths and without holders (multipathd removes such a
    /// map itself when its last path goes, unless something had it open
    /// at that moment, e.g. udev's blkid; then the map would stay, queueing
    /// I/O, until someone flushes it). Maps that still have a path or a
    /// holder are left alone and reported back.
    pub fn remove_pathless(
        &self,
        wwids: &[String],
        timeout: Duration,
    ) -> Result<Vec<String>, MultipathError> {
        let start = Instant::now();
        loop {
            let maps = self.maps()?;
            let left: Vec<&MultipathMap> =
                maps.iter().filter(|m| wwids.contains(&m.wwid)).collect();
            if left.is_empty() {
                return Ok(Vec::new());
            }
            let waited = start.elapsed();
            for m in &left {
                // Give multipathd a moment to remove it on its own first.
                if m.paths.is_empty() && m.holders.is_empty() && waited >= POLL * 5 {
                    if let Err(e) = self.flush(&m.name) {
                        tracing::warn!(map = %m.name, error = %e, "cannot remove a map without paths");
                    }
                }
            }
            if waited >= timeout {
                return Ok(left.iter().map(|m| m.wwid.clone()).collect());
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until each of `disks` is a path of some multipath map whose
    /// node exists in `/dev/mapper`, or `timeout` passes; reports which got
    /// one. multipathd makes the maps on the uevents of new disks, a moment
    /// after a login or rescan, and udev then makes the node. (Waiting for
    /// exactly these is much quicker than `udevadm settle`, which waits for
    /// every queued event of the machine: 6-10 s per login in the VM tier.)
    pub fn wait_for_maps(
        &self,
        disks: &[String],
        timeout: Duration,
    ) -> Result<MapWait, MultipathError> {
        let start = Instant::now();
        loop {
            let maps = self.maps()?;
            let mut wait = MapWait::default();
            for d in disks {
                match map_of_path(&maps, d) {
                    Some(m) if self.dev_dir.join(&m.name).exists() => {
                        wait.mapped.push((d.clone(), m.wwid.clone()))
                    }
                    _ => wait.missing.push(d.clone()),
                }
            }
            wait.waited = start.elapsed();
            if wait.missing.is_empty() || wait.waited >= timeout {
                return Ok(wait);
            }
            std::thread::sleep(POLL.min(timeout.saturating_sub(wait.waited)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysfs_block::fake;

    #[test]
    fn pathless_maps_are_flushed_and_others_left() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("sys");
        fake::iscsi_disk(&root, "sda", "8:0", 2, 1, 0, 2048, "a");
        fake::mpath(&root, 0, "36001405aaaa", &[], 2048); // no paths left
        fake::mpath(&root, 1, "36001405bbbb", &["sda"], 2048); // a path left
        fake::mpath(&root, 2, "36001405cccc", &[], 2048); // held by an LV
        fake::link(&root, "block/dm-2/holders/dm-9", "/nonexistent");
        // A stand-in for `multipath -f NAME`: removes the map from the tree
        // and records the call.
        let prog = t.path().join("multipath");
        let log = t.path().join("calls");
        std::fs::write(
            &prog,
            format!(
                "#!/bin/sh\necho \"$*\" >> {log}\nfor d in {root}/block/dm-*; do \
                 [ \"$(cat $d/dm/name)\" = \"$2\" ] && rm $d; done\nexit 0\n",
                log = log.display(),
                root = root.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mp =
            Multipath::new(CommandRunner::new(), Sysfs::new(&root)).with_multipath_program(&prog);
        let wwids: Vec<String> = ["36001405aaaa", "36001405bbbb", "36001405cccc"]
            .map(String::from)
            .to_vec();
        let left = mp.remove_pathless(&wwids, Duration::from_secs(2)).unwrap();
        assert_eq!(left, ["36001405bbbb", "36001405cccc"]);
        let calls = std::fs::read_to_string(&log).unwrap();
        assert_eq!(calls, "-f 36001405aaaa\n");
        // Nothing to remove: returns at once, no command.
        let left = mp
            .remove_pathless(&["36001405aaaa".to_string()], Duration::from_secs(2))
            .unwrap();
        assert!(left.is_empty());
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "-f 36001405aaaa\n");
    }

    #[test]
    fn dmsetup_status_lines() {
        // Two maps (round-robin and service-time selectors), one failed
        // path, and a non-multipath target that must be skipped.
        let text = "\
36001405aaaa: 0 4194304 multipath 2 0 1 0 2 1 A 0 1 2 8:0 A 0 0 1 E 0 1 2 8:16 F 1 0 1 \n\
36001405bbbb: 0 4194304 multipath 2 0 1 0 1 1 A 0 2 0 8:32 A 0 8:48 A 0 \n\
vg-lv: 0 8192 linear \n";
        let st = parse_dmsetup_status(text);
        assert_eq!(st.len(), 2);
        assert_eq!(
            st["36001405aaaa"],
            [
                ("8:0".to_string(), PathState::Active),
                ("8:16".to_string(), PathState::Failed)
            ]
        );
        assert_eq!(st["36001405bbbb"].len(), 2);
        assert!(parse_dmsetup_status("No devices found\n").is_empty());

        // In the guest: 3 LIO LUNs over 2 portals, sda set offline.
        let st = parse_dmsetup_status(include_str!("testdata/dmsetup-status-path-failed.txt"));
        assert_eq!(st.len(), 3);
        assert_eq!(
            st["36001405de90700000004000800000000"],
            [
                ("8:0".to_string(), PathState::Failed),
                ("8:48".to_string(), PathState::Active)
            ]
        );
        assert!(st["36001405de90702000004000800000000"]
            .iter()
            .all(|(_, s)| *s == PathState::Active));
    }

    #[test]
    fn maps_from_a_fake_tree() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fake::iscsi_disk(root, "sda", "8:0", 2, 1, 0, 2048, "a");
        fake::iscsi_disk(root, "sdb", "8:16", 3, 2, 0, 2048, "a");
        fake::iscsi_disk(root, "sdc", "8:32", 2, 1, 1, 2048, "c");
        fake::mpath(root, 1, "36001405bbbb", &["sdc"], 2048);
        fake::mpath(root, 0, "36001405aaaa", &["sda", "sdb"], 2048);
        // An LV on top of map 0: a dm device that is not a multipath map.
        let lv = "devices/virtual/block/dm-2";
        fake::block(root, lv, "254:2", 8, 512, 512, 0);
        fake::write(root, &format!("{lv}/dm/name"), "vg-lv\n");
        fake::write(root, &format!("{lv}/dm/uuid"), "LVM-abc\n");
        fake::link(root, "block/dm-2", &root.join(lv).to_string_lossy());
        fake::link(
            root,
            "block/dm-0/holders/dm-2",
            &root.join(lv).to_string_lossy(),
        );

        let fs = Sysfs::new(root);
        let maps = list_maps(&fs).unwrap();
        assert_eq!(maps.len(), 2);
        assert_eq!(maps[0].wwid, "36001405aaaa");
        assert_eq!(maps[0].dm, "dm-0");
        assert_eq!(maps[0].paths, ["sda", "sdb"]);
        assert_eq!(maps[0].holders, ["dm-2"]);
        assert_eq!(
            maps[0].dev_path(),
            std::path::Path::new("/dev/mapper/36001405aaaa")
        );
        assert_eq!(map_of_path(&maps, "sdc").unwrap().wwid, "36001405bbbb");
        assert!(map_of_path(&maps, "sdz").is_none());

        let dev = tempfile::tempdir().unwrap();
        let mp = Multipath::new(CommandRunner::new(), fs).with_dev_dir(dev.path());
        let disks = ["sdb".to_string(), "sdc".to_string(), "sdz".to_string()];
        // No nodes yet: nothing counts as mapped.
        let w = mp
            .wait_for_maps(&disks, Duration::from_millis(300))
            .unwrap();
        assert!(w.mapped.is_empty());
        assert!(w.waited >= Duration::from_millis(300));
        std::fs::write(dev.path().join("36001405aaaa"), "").unwrap();
        let w = mp
            .wait_for_maps(&disks, Duration::from_millis(300))
            .unwrap();
        assert_eq!(w.mapped, [("sdb".to_string(), "36001405aaaa".to_string())]);
        assert_eq!(w.missing, ["sdc", "sdz"]);
        // A node appearing while waiting ends the wait early.
        let node = dev.path().join("36001405bbbb");
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            std::fs::write(node, "").unwrap();
        });
        let w = mp
            .wait_for_maps(&disks[..2], Duration::from_secs(10))
            .unwrap();
        t.join().unwrap();
        assert_eq!(w.missing, Vec::<String>::new());
        assert!(w.waited < Duration::from_secs(5), "{:?}", w.waited);
    }
}
