//! The `master` LV's file system of a block domain (VDSM's blockSD
//! `_createVMSfs`, `mountMaster`, `unmountMaster`; docs/storage.md "SPM
//! tasks", "On the master domain"): an ext3 file system made when the
//! domain is created, checked (`e2fsck -p`) and mounted at
//! `<repository>/mnt/blockSD/<sd>/master` by the SPM at spmStart,
//! unmounted at spmStop. The SPM's task records live in its `tasks`
//! directory (the engine's `master_tasks` module).
//!
//! Only the commands and what their output means are here (each through
//! depot-os's command runner: argv, a timeout); when they run is the
//! engine's (its `block_master` module). Every call blocks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use depot_api::storage::SdUuid;
use depot_os::command::{Cmd, CmdError, CommandRunner};
use depot_os::mount::MountEntry;

use crate::layout::{BLOCK_DIR, MNT};

/// The LV, and the directory it is mounted on in the domain's link
/// directory (VDSM's names).
pub const MASTER_LV: &str = "master";
pub const MOUNT_DIR: &str = "master";

/// `mkfs.ext3` of a 1 GiB LV: a second on a quiet host, tens under TCG.
pub const MKFS_TIMEOUT: Duration = Duration::from_secs(300);
/// `e2fsck -p` of 1 GiB with a journal to replay.
pub const FSCK_TIMEOUT: Duration = Duration::from_secs(300);
/// `blkid -p`, `mount`, `umount` of a local file system.
pub const SHORT_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the SPM mounts block domain `sd`'s master file system.
pub fn mount_point(repository: &Path, sd: SdUuid) -> PathBuf {
    super::link_dir(repository, sd).join(MOUNT_DIR)
}

/// What `blkid -p` finds on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// No signature at all: a master LV made by a depot that did not make
    /// its file system (or never written).
    None,
    /// An ext2/3/4 file system (`TYPE=`).
    Ext(String),
    /// Anything else, or signatures blkid could not decide between: never
    /// written over.
    Other(String),
}

/// The meaning of `blkid -p -o export` (exit 0) output: `KEY=value`
/// lines; `TYPE` names a file system, `PTTYPE` a partition table.
pub fn parse_blkid(out: &str) -> Signature {
    let mut fs = None;
    let mut pt = None;
    for line in out.lines() {
        match line.split_once('=') {
            Some(("TYPE", v)) => fs = Some(v.trim().to_owned()),
            Some(("PTTYPE", v)) => pt = Some(v.trim().to_owned()),
            _ => {}
        }
    }
    match (fs, pt) {
        (Some(t), None) if matches!(t.as_str(), "ext2" | "ext3" | "ext4") => Signature::Ext(t),
        (Some(t), _) => Signature::Other(t),
        (None, Some(p)) => Signature::Other(format!("partition table {p}")),
        // blkid answered 0 with no type: something it knows and names
        // otherwise (a USAGE line only); not ours to overwrite.
        (None, None) => Signature::Other(format!("unnamed ({})", out.trim().replace('\n', " "))),
    }
}

/// `blkid -p -o export DEV`: exit 2 is "nothing found", 8 "ambivalent"
/// (more than one signature).
pub fn probe(runner: &CommandRunner, dev: &Path) -> Result<Signature, CmdError> {
    let cmd = Cmd::new("blkid", SHORT_TIMEOUT)
        .args(["-p", "-o", "export"])
        .arg(dev)
        .ok_codes(&[0, 2, 8]);
    let out = runner.run(&cmd)?;
    Ok(match out.code {
        2 => Signature::None,
        8 => Signature::Other("ambivalent: more than one signature".into()),
        _ => parse_blkid(&out.stdout_lossy()),
    })
}

/// `mkfs.ext3 -q -F -E nodiscard DEV` (VDSM's flags: a journal, no discard
/// of the LV's extents; `-F`: no question asked, the caller found no
/// signature on it).
pub fn mkfs(runner: &CommandRunner, dev: &Path) -> Result<(), CmdError> {
    let cmd = Cmd::new("mkfs.ext3", MKFS_TIMEOUT)
        .args(["-q", "-F", "-E", "nodiscard"])
        .arg(dev);
    runner.run(&cmd).map(drop)
}

/// What `e2fsck -p` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fsck {
    Clean,
    /// Errors corrected (exit 1, or 2: "reboot", which means nothing for a
    /// file system not mounted); its stderr, for the log.
    Fixed(String),
}

/// Exit codes of `e2fsck` that leave a file system fit to mount.
fn fsck_result(code: i32, stderr: &str) -> Option<Fsck> {
    match code {
        0 => Some(Fsck::Clean),
        1 | 2 => Some(Fsck::Fixed(stderr.trim().to_owned())),
        _ => None,
    }
}

/// `e2fsck -p DEV`: replays the journal a crashed SPM left and repairs
/// what it can without asking. Exit 4 and above (errors left, an
/// operational error) is the command's error, stderr in it.
pub fn fsck(runner: &CommandRunner, dev: &Path) -> Result<Fsck, CmdError> {
    let cmd = Cmd::new("e2fsck", FSCK_TIMEOUT)
        .arg("-p")
        .arg(dev)
        .ok_codes(&[0, 1, 2]);
    let out = runner.run(&cmd)?;
    // e2fsck -p reports what it did on stdout, problems on stderr.
    let said = format!("{}{}", out.stdout_lossy(), out.stderr);
    // ok_codes let only 0, 1 and 2 through.
    Ok(fsck_result(out.code, &said).unwrap_or(Fsck::Clean))
}

/// The mounts of this mount table on a master mount point of
/// `repository` (`<repository>/mnt/blockSD/<sd>/master`, `<sd>` a domain
/// UUID), with the domain of each.
pub fn master_mounts(entries: &[MountEntry], repository: &Path) -> Vec<(SdUuid, PathBuf)> {
    let base = repository.join(MNT).join(BLOCK_DIR);
    entries
        .iter()
        .filter_map(|e| {
            let rest = e.target.strip_prefix(&base).ok()?;
            let mut parts = rest.iter();
            let sd = parts.next()?.to_str()?.parse::<SdUuid>().ok()?;
            (parts.next()? == MOUNT_DIR && parts.next().is_none()).then(|| (sd, e.target.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkid_output() {
        assert_eq!(
            parse_blkid("DEVNAME=/dev/x\nUUID=1\nVERSION=1.0\nTYPE=ext3\nUSAGE=filesystem\n"),
            Signature::Ext("ext3".into())
        );
        assert_eq!(parse_blkid("TYPE=ext4\n"), Signature::Ext("ext4".into()));
        assert_eq!(
            parse_blkid("TYPE=xfs\nUSAGE=filesystem\n"),
            Signature::Other("xfs".into())
        );
        assert_eq!(
            parse_blkid("PTUUID=ab\nPTTYPE=gpt\n"),
            Signature::Other("partition table gpt".into())
        );
        assert!(matches!(parse_blkid("USAGE=other\n"), Signature::Other(_)));
        // A partition table beside an ext signature is not a plain file
        // system.
        assert_eq!(
            parse_blkid("TYPE=ext3\nPTTYPE=dos\n"),
            Signature::Other("ext3".into())
        );
    }

    #[test]
    fn fsck_exit_codes() {
        assert_eq!(fsck_result(0, ""), Some(Fsck::Clean));
        assert_eq!(
            fsck_result(1, "recovering journal\n"),
            Some(Fsck::Fixed("recovering journal".into()))
        );
        assert!(matches!(fsck_result(2, ""), Some(Fsck::Fixed(_))));
        for code in [4, 8, 12, 16, 32, 128] {
            assert_eq!(fsck_result(code, ""), None, "{code}");
        }
    }

    fn entry(target: &str) -> MountEntry {
        MountEntry {
            mount_id: 1,
            parent_id: 0,
            device: "253:3".into(),
            root: "/".into(),
            target: target.into(),
            options: vec![],
            optional_fields: vec![],
            fstype: "ext3".into(),
            source: "/dev/mapper/x-master".into(),
            super_options: vec![],
        }
    }

    #[test]
    fn master_mounts_of_a_repository() {
        let sd = "0c1f0a4e-6a4f-4b7e-9c43-2f8a1d0e5b6c";
        let repo = Path::new("/run/depot/repo");
        let mine = format!("/run/depot/repo/mnt/blockSD/{sd}/master");
        let table = [
            entry(&mine),
            // Another repository's, a file domain's, a directory beneath.
            entry(&format!("/other/mnt/blockSD/{sd}/master")),
            entry("/run/depot/repo/mnt/server:_export"),
            entry(&format!("/run/depot/repo/mnt/blockSD/{sd}/master/x")),
            entry("/run/depot/repo/mnt/blockSD/not-a-uuid/master"),
            entry(&format!("/run/depot/repo/mnt/blockSD/{sd}")),
        ];
        let found = master_mounts(&table, repo);
        assert_eq!(found, vec![(sd.parse().unwrap(), PathBuf::from(mine))]);
    }
}
