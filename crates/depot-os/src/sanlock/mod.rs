//! sanlock: host ids (delta leases), resource leases (paxos leases: the
//! SPM's, volumes', VMs') and lease areas on shared storage, through the
//! real sanlock daemon (docs/architecture.md, "sanlock").
//!
//! Two ways in, neither doing storage I/O on a thread of this process:
//!
//! * [`Sanlock`]: the daemon's client API from `libsanlock_client.so.1`,
//!   loaded at run time with `dlopen` (so a depotd built here starts on a
//!   machine without sanlock and says why it cannot use it). The daemon
//!   does the I/O; the library only talks to it over its Unix socket
//!   (`/run/sanlock/sanlock.sock`). A call can still wait on a daemon that
//!   does not answer, so every call runs on an [`IoWorker`] with a
//!   timeout, and the lockspace calls are the asynchronous ones where
//!   sanlock has them (add and remove). A new volume's lease is written
//!   this way too ([`Sanlock::write_resource`], VDSM's way).
//! * [`direct_init_lockspace`] and [`direct_init_resource`]: `sanlock
//!   direct init` in a child process through the command runner (the I/O
//!   is the child's, with a timeout), for formatting a new domain's `ids`
//!   and `leases` without a running daemon, as VDSM's `initLock` does
//!   with the library's `write_lockspace`/`write_resource`, and a volume's
//!   lease when no daemon answers.

mod client;
mod direct;
mod resource;

use std::path::{Path, PathBuf};

pub use client::{AddOutcome, HostIdState, HostInfo, HostStatus, RemOutcome, Sanlock};
pub use direct::{
    direct_clear_resource, direct_init_lockspace, direct_init_resource, direct_read_leader,
    direct_read_resource, program_found, DirectConfig,
};
pub use resource::{LeaseState, Refusal, Resource};

use crate::command::CmdError;
use crate::worker::WorkerError;

/// The highest host id sanlock accepts in any lockspace (512-byte sectors
/// with 1 MiB alignment, or 4 KiB sectors with 8 MiB).
pub const MAX_HOST_ID: u64 = 2000;

/// sanlock's `SANLK_NAME_LEN`: lockspace and resource names, no NUL needed.
pub const NAME_LEN: usize = 48;

/// sanlock's `SANLK_PATH_LEN`, the terminating NUL included.
pub const PATH_LEN: usize = 1024;

/// A failed sanlock call.
#[derive(Debug, thiserror::Error)]
pub enum SanlockError {
    /// The library could not be loaded or the daemon cannot be reached.
    #[error("sanlock unavailable: {0}")]
    Unavailable(String),

    /// The daemon answered with an error: a negative errno or one of
    /// sanlock's own codes (`rv`), with sanlock's text for it.
    #[error("sanlock {op} {target}: {message} (rv {rv})")]
    Call {
        op: &'static str,
        target: String,
        rv: i32,
        message: String,
    },

    /// The call did not come back in time (the daemon does not answer).
    #[error("sanlock {op} {target}: {source}")]
    NoAnswer {
        op: &'static str,
        target: String,
        #[source]
        source: WorkerError,
    },

    /// A name, path or size sanlock cannot take; nothing was called.
    #[error("sanlock {op}: invalid argument: {reason}")]
    Invalid { op: &'static str, reason: String },

    /// `sanlock direct ...` failed, timed out or could not start.
    #[error("sanlock {op} {target}: {source}")]
    Command {
        op: &'static str,
        target: String,
        #[source]
        source: Box<CmdError>,
    },
}

impl SanlockError {
    /// The errno of a daemon's answer (`-rv`), when it is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            SanlockError::Call { rv, .. } if *rv < 0 && *rv > -200 => Some(-rv),
            _ => None,
        }
    }
}

/// Sector size and alignment of a lockspace or lease area, as VDSM passes
/// them to sanlock (`sector=`, `align=`): a domain's `BLOCK_SIZE` and
/// `ALIGNMENT`. Only sanlock's valid pairs can be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    sector: u32,
    align: u64,
}

const MIB: u64 = 1 << 20;

impl Geometry {
    /// 512/1M, 4096/1M, 4096/2M, 4096/4M or 4096/8M.
    pub fn new(sector: u32, align: u64) -> Result<Self, SanlockError> {
        let ok = match sector {
            512 => align == MIB,
            4096 => matches!(align / MIB, 1 | 2 | 4 | 8) && align.is_multiple_of(MIB),
            _ => false,
        };
        if !ok {
            return Err(SanlockError::Invalid {
                op: "geometry",
                reason: format!(
                    "sector size {sector} with alignment {align} (valid: 512/1M, 4096/1M, 2M, 4M, 8M)"
                ),
            });
        }
        Ok(Geometry { sector, align })
    }

    pub fn sector(&self) -> u32 {
        self.sector
    }

    pub fn align(&self) -> u64 {
        self.align
    }

    /// The hosts a lockspace of this geometry holds: 2000, or 250 per MiB
    /// of alignment with 4 KiB sectors.
    pub fn max_hosts(&self) -> u64 {
        match self.sector {
            512 => MAX_HOST_ID,
            _ => 250 * (self.align / MIB),
        }
    }

    /// sanlock.h's `SANLK_RES_ALIGN*` and `SANLK_RES_SECTOR*` flags of a
    /// `sanlk_resource` (what `sanlock_write_resource` formats with).
    pub(super) fn resource_flags(&self) -> u32 {
        const ALIGN1M: u32 = 0x10;
        const SECTOR512: u32 = 0x100;
        const SECTOR4K: u32 = 0x200;
        // ALIGN1M, 2M, 4M, 8M are 0x10, 0x20, 0x40, 0x80.
        let align = ALIGN1M * (self.align / MIB) as u32;
        align
            | match self.sector {
                512 => SECTOR512,
                _ => SECTOR4K,
            }
    }

    /// `-Z <sector> -A <align>M`, sanlock's command line form.
    fn cli_args(&self) -> [String; 4] {
        [
            "-Z".into(),
            self.sector.to_string(),
            "-A".into(),
            format!("{}M", self.align / MIB),
        ]
    }
}

/// Where a lockspace or lease lives: a file or device and a byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Area {
    pub path: PathBuf,
    pub offset: u64,
}

impl Area {
    pub fn new(path: impl Into<PathBuf>, offset: u64) -> Self {
        Area {
            path: path.into(),
            offset,
        }
    }
}

/// A host's place in a lockspace: the lockspace `name` (VDSM: the domain
/// id), the host id, and the `ids` area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockspace {
    pub name: String,
    pub host_id: u64,
    pub area: Area,
}

impl Lockspace {
    pub fn new(name: impl Into<String>, host_id: u64, area: Area) -> Self {
        Lockspace {
            name: name.into(),
            host_id,
            area,
        }
    }
}

/// Checks a lockspace or resource name: 1..=48 bytes, no NUL, no `:` (the
/// separator of sanlock's `NAME:ID:PATH:OFFSET` arguments), no whitespace.
pub fn check_name(op: &'static str, name: &str) -> Result<(), SanlockError> {
    let bad = name.is_empty()
        || name.len() > NAME_LEN
        || name
            .bytes()
            .any(|b| b == b':' || b == 0 || b.is_ascii_whitespace() || b.is_ascii_control());
    if bad {
        return Err(SanlockError::Invalid {
            op,
            reason: format!("name {name:?} (1 to {NAME_LEN} bytes, no ':', NUL or blanks)"),
        });
    }
    Ok(())
}

/// A path as `sanlk_disk.path` takes it (the daemon's structs): as it is,
/// checked: absolute, UTF-8, no NUL or newline, and fitting in `PATH_LEN`
/// with its NUL. The daemon opens exactly this string; an NFS mount
/// directory's colon (`server:_export`) stays as it is (the escaping of
/// [`escape_path`] is the command line's, and the daemon does not undo
/// it: an escaped path is a file that does not exist).
pub fn disk_path(op: &'static str, path: &Path) -> Result<String, SanlockError> {
    let invalid = |reason: String| SanlockError::Invalid { op, reason };
    let text = path
        .to_str()
        .ok_or_else(|| invalid(format!("path {} is not UTF-8", path.display())))?;
    if !path.is_absolute() || text.bytes().any(|b| b == 0 || b == b'\n') {
        return Err(invalid(format!(
            "path {text:?} (absolute, no NUL or newline)"
        )));
    }
    if text.len() >= PATH_LEN {
        return Err(invalid(format!(
            "path {text:?} is longer than sanlock's {} bytes",
            PATH_LEN - 1
        )));
    }
    Ok(text.to_owned())
}

/// A path as sanlock's command line takes it (`NAME:ID:PATH:OFFSET`): `:`
/// (which separates the fields) and `\` escaped with `\`, as the
/// library's `sanlock_path_export` does. An NFS mount directory
/// (`server:_export`) has a colon. [`disk_path`]'s checks, and the
/// escaped form must fit in `PATH_LEN` too.
pub fn escape_path(op: &'static str, path: &Path) -> Result<String, SanlockError> {
    let text = disk_path(op, path)?;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, ':' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    if out.len() >= PATH_LEN {
        return Err(SanlockError::Invalid {
            op,
            reason: format!(
                "path {text:?} is longer than sanlock's {} bytes once escaped",
                PATH_LEN - 1
            ),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometries_are_sanlocks_pairs() {
        for (s, a, hosts) in [
            (512, MIB, 2000),
            (4096, MIB, 250),
            (4096, 2 * MIB, 500),
            (4096, 4 * MIB, 1000),
            (4096, 8 * MIB, 2000),
        ] {
            let g = Geometry::new(s, a).unwrap();
            assert_eq!(g.max_hosts(), hosts, "{s}/{a}");
        }
        for (s, a) in [
            (512, 2 * MIB),
            (4096, 3 * MIB),
            (4096, 16 * MIB),
            (1024, MIB),
            (4096, MIB + 1),
            (4096, 0),
        ] {
            assert!(Geometry::new(s, a).is_err(), "{s}/{a} accepted");
        }
        assert_eq!(
            Geometry::new(4096, 8 * MIB).unwrap().cli_args(),
            ["-Z", "4096", "-A", "8M"]
        );
        // sanlock.h: SANLK_RES_ALIGN1M 0x10 .. ALIGN8M 0x80, SECTOR512
        // 0x100, SECTOR4K 0x200.
        for (s, a, flags) in [
            (512, MIB, 0x110),
            (4096, MIB, 0x210),
            (4096, 2 * MIB, 0x220),
            (4096, 4 * MIB, 0x240),
            (4096, 8 * MIB, 0x280),
        ] {
            assert_eq!(
                Geometry::new(s, a).unwrap().resource_flags(),
                flags,
                "{s}/{a}"
            );
        }
    }

    #[test]
    fn paths_are_escaped_for_sanlock() {
        let p = Path::new("/rhev/data-center/mnt/server:_export/sd/dom_md/ids");
        assert_eq!(
            escape_path("t", p).unwrap(),
            "/rhev/data-center/mnt/server\\:_export/sd/dom_md/ids"
        );
        assert_eq!(escape_path("t", Path::new("/a\\b")).unwrap(), "/a\\\\b");
        assert!(escape_path("t", Path::new("relative/ids")).is_err());
        assert!(escape_path("t", Path::new("/a\nb")).is_err());
        let long = format!("/{}", "x".repeat(PATH_LEN));
        assert!(escape_path("t", Path::new(&long)).is_err());
        // The daemon's structs take the path as it is.
        assert_eq!(
            disk_path("t", p).unwrap(),
            "/rhev/data-center/mnt/server:_export/sd/dom_md/ids"
        );
        assert!(disk_path("t", Path::new("relative/ids")).is_err());
        assert!(disk_path("t", Path::new("/a\0b")).is_err());
        assert!(disk_path("t", Path::new(&long)).is_err());
    }

    #[test]
    fn names_fit_sanlock() {
        check_name("t", "5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8a").unwrap();
        check_name("t", "SDM").unwrap();
        for bad in ["", "a:b", "a b", "a\0b", &"x".repeat(NAME_LEN + 1)] {
            assert!(check_name("t", bad).is_err(), "{bad:?} accepted");
        }
        check_name("t", &"x".repeat(NAME_LEN)).unwrap();
    }

    #[test]
    fn errno_only_for_errno_answers() {
        let call = |rv| SanlockError::Call {
            op: "t",
            target: String::new(),
            rv,
            message: String::new(),
        };
        assert_eq!(call(-2).errno(), Some(2));
        assert_eq!(call(-223).errno(), None);
        assert_eq!(call(0).errno(), None);
    }
}
