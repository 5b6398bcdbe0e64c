//! Mount options: an allow-list per file system type.
//!
//! The engine's `mnt_options` reach `mount -o` as root, so they are checked
//! against a list rather than a deny-list: an option not listed here is
//! refused, whatever it is. Each listed option says what value it takes,
//! and the value is checked too (numbers, a fixed set of words, host names,
//! absolute paths of plain characters).
//!
//! # Refused on purpose (with their own message)
//!
//! * `suid`, `dev`, `exec`, `defaults` (which implies them), `user`,
//!   `users`, `owner`, `group`, `nouser`: setuid programs, device nodes and
//!   user mounts on storage the host does not control.
//! * `helper=`, `uhelper=`, `x-*`/`X-*` (e.g. `X-mount.mkdir`,
//!   `x-systemd.*`), `comment=`: run programs or act outside the mount.
//! * `loop`, `offset=`, `sizelimit=`, `encryption=`: set up loop devices.
//! * `bind`, `rbind`, `move`, `remount` and the propagation flags
//!   (`shared`, `private`, `slave`, `unbindable` and their `r` forms):
//!   change other mounts.
//! * `context=`, `fscontext=`, `defcontext=`, `rootcontext=`: SELinux labels
//!   (their values may hold commas; depot does not run SELinux labelling).
//! * NFS `bg` (mount would return before the file system is there), gluster
//!   `log-file=`/`dump-fuse=` (write files anywhere), `xlator-option=`,
//!   `volfile-id=`/`volume-name=` (mount another volume than the spec), CIFS
//!   `password=`/`pass=` (the password would end up in logs: use
//!   `credentials=`), Ceph `secret=` (use `secretfile=`), ext4 `noload`,
//!   `nobarrier`, `errors=panic` (corruption or a host panic).
//!
//! # Always added
//!
//! [`ALWAYS`]: `nosuid` and `nodev` go on every storage mount depot makes
//! (NFS, GlusterFS, POSIXFS), whatever the engine sent. The storage is not
//! the host's: a setuid program or a device node on it must never work
//! here, even if the server or another host put one there.
//!
//! Items are split on `,`; surrounding spaces are dropped and empty items
//! skipped (as VDSM does). A value can therefore never hold a comma; quotes,
//! whitespace and control characters inside an item are refused, so no
//! quoting trick can smuggle one in either.

use super::spec::{check_host, check_hostname};

/// Options every storage mount gets, added by [`with_always`].
pub const ALWAYS: &[&str] = &["nosuid", "nodev"];

/// `options` with each of [`ALWAYS`] appended unless it is there already.
pub fn with_always(mut options: Vec<String>) -> Vec<String> {
    for o in ALWAYS {
        if !options.iter().any(|x| x == o) {
            options.push((*o).to_owned());
        }
    }
    options
}

/// What value an option takes.
#[derive(Debug, Clone, Copy)]
enum Val {
    /// No value (`noatime`).
    Flag,
    /// A decimal number (`timeo=600`).
    Uint,
    /// A size: digits with an optional k/m/g suffix (`logbsize=256k`).
    Size,
    /// An octal mode (`file_mode=0660`).
    Octal,
    /// One of these words.
    Word(&'static [&'static str]),
    /// A host name, IPv4 or IPv6 address.
    Host,
    /// Host names or IPv4 addresses separated by `:` (gluster).
    HostList,
    /// A name: letters, digits, `.`, `_`, `-` (`name=admin`).
    Name,
    /// An absolute path of plain characters, no `..` (`secretfile=`).
    AbsPath,
    /// A relative path of plain characters, no `..` (btrfs `subvol=`).
    RelPath,
}

use Val::*;

/// Options of every file system (handled by mount(8) and the VFS).
const COMMON: &[(&str, Val)] = &[
    ("ro", Flag),
    ("rw", Flag),
    ("atime", Flag),
    ("noatime", Flag),
    ("relatime", Flag),
    ("norelatime", Flag),
    ("strictatime", Flag),
    ("nostrictatime", Flag),
    ("diratime", Flag),
    ("nodiratime", Flag),
    ("lazytime", Flag),
    ("nolazytime", Flag),
    ("sync", Flag),
    ("async", Flag),
    ("dirsync", Flag),
    ("nosuid", Flag),
    ("nodev", Flag),
    ("noexec", Flag),
    ("_netdev", Flag),
    ("nofail", Flag),
];

const NFS: &[(&str, Val)] = &[
    ("soft", Flag),
    ("softerr", Flag),
    ("hard", Flag),
    ("intr", Flag),
    ("nointr", Flag),
    ("fg", Flag),
    ("timeo", Uint),
    ("retrans", Uint),
    ("retry", Uint),
    ("rsize", Uint),
    ("wsize", Uint),
    ("ac", Flag),
    ("noac", Flag),
    ("acregmin", Uint),
    ("acregmax", Uint),
    ("acdirmin", Uint),
    ("acdirmax", Uint),
    ("actimeo", Uint),
    ("sharecache", Flag),
    ("nosharecache", Flag),
    ("resvport", Flag),
    ("noresvport", Flag),
    ("lock", Flag),
    ("nolock", Flag),
    ("cto", Flag),
    ("nocto", Flag),
    ("acl", Flag),
    ("noacl", Flag),
    ("rdirplus", Flag),
    ("nordirplus", Flag),
    ("fsc", Flag),
    ("nofsc", Flag),
    ("migration", Flag),
    ("nomigration", Flag),
    ("nconnect", Uint),
    ("max_connect", Uint),
    ("port", Uint),
    ("mountport", Uint),
    ("mountvers", Uint),
    ("namlen", Uint),
    ("nfsvers", Word(&["3", "4", "4.0", "4.1", "4.2"])),
    ("vers", Word(&["3", "4", "4.0", "4.1", "4.2"])),
    ("minorversion", Word(&["0", "1", "2"])),
    (
        "sec",
        Word(&[
            "sys",
            "krb5",
            "krb5i",
            "krb5p",
            "none",
            "krb5:krb5i",
            "krb5:krb5i:krb5p",
        ]),
    ),
    (
        "proto",
        Word(&["tcp", "udp", "rdma", "tcp6", "udp6", "rdma6"]),
    ),
    ("mountproto", Word(&["tcp", "udp", "tcp6", "udp6"])),
    ("lookupcache", Word(&["all", "none", "pos", "positive"])),
    ("local_lock", Word(&["all", "flock", "posix", "none"])),
    ("xprtsec", Word(&["none", "tls", "mtls"])),
    ("clientaddr", Host),
    ("mounthost", Host),
];

/// What depot builds itself for an NFS domain from `timeout`, `retrans` and
/// `protocol_version`; the engine refuses them in the additional options
/// too ("mount options contain a managed property").
pub const NFS_MANAGED: &[&str] = &["timeo", "retrans", "nfsvers", "vers", "minorversion"];

const GLUSTER: &[(&str, Val)] = &[
    ("backup-volfile-servers", HostList),
    ("backupvolfile-server", Host),
    (
        "log-level",
        Word(&[
            "CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "TRACE", "NONE",
        ]),
    ),
    ("transport", Word(&["tcp", "rdma"])),
    ("direct-io-mode", Word(&["enable", "disable"])),
    ("attribute-timeout", Uint),
    ("entry-timeout", Uint),
    ("negative-timeout", Uint),
    ("gid-timeout", Uint),
    ("background-qlen", Uint),
    ("volfile-max-fetch-attempts", Uint),
    ("fetch-attempts", Uint),
    ("lru-limit", Uint),
    ("invalidate-limit", Uint),
    ("reader-thread-count", Uint),
    ("use-readdirp", Word(&["yes", "no"])),
    ("acl", Flag),
    ("selinux", Flag),
    ("fopen-keep-cache", Flag),
    ("worm", Flag),
];

const EXT: &[(&str, Val)] = &[
    ("discard", Flag),
    ("nodiscard", Flag),
    ("barrier", Flag),
    ("journal_checksum", Flag),
    ("user_xattr", Flag),
    ("acl", Flag),
    ("noacl", Flag),
    ("delalloc", Flag),
    ("nodelalloc", Flag),
    ("block_validity", Flag),
    ("noblock_validity", Flag),
    ("auto_da_alloc", Flag),
    ("noauto_da_alloc", Flag),
    ("commit", Uint),
    ("stripe", Uint),
    ("inode_readahead_blks", Uint),
    ("max_batch_time", Uint),
    ("min_batch_time", Uint),
    ("data", Word(&["ordered", "writeback", "journal"])),
    ("errors", Word(&["remount-ro", "continue"])),
];

const XFS: &[(&str, Val)] = &[
    ("discard", Flag),
    ("nodiscard", Flag),
    ("inode64", Flag),
    ("inode32", Flag),
    ("largeio", Flag),
    ("nolargeio", Flag),
    ("attr2", Flag),
    ("noattr2", Flag),
    ("grpid", Flag),
    ("nogrpid", Flag),
    ("bsdgroups", Flag),
    ("sysvgroups", Flag),
    ("filestreams", Flag),
    ("ikeep", Flag),
    ("noikeep", Flag),
    ("swalloc", Flag),
    ("wsync", Flag),
    ("noquota", Flag),
    ("uquota", Flag),
    ("gquota", Flag),
    ("pquota", Flag),
    ("usrquota", Flag),
    ("grpquota", Flag),
    ("prjquota", Flag),
    ("logbufs", Uint),
    ("logbsize", Size),
    ("allocsize", Size),
    ("sunit", Uint),
    ("swidth", Uint),
];

const BTRFS: &[(&str, Val)] = &[
    ("discard", Flag),
    ("nodiscard", Flag),
    ("ssd", Flag),
    ("nossd", Flag),
    ("autodefrag", Flag),
    ("noautodefrag", Flag),
    ("commit", Uint),
    ("compress", Word(&["zlib", "lzo", "zstd", "no"])),
    ("subvol", RelPath),
    ("subvolid", Uint),
];

const CLUSTER_FS: &[(&str, Val)] = &[("discard", Flag), ("nodiscard", Flag), ("acl", Flag)];

const CEPH: &[(&str, Val)] = &[
    ("name", Name),
    ("secretfile", AbsPath),
    ("mds_namespace", Name),
    ("fs", Name),
    ("recover_session", Word(&["no", "clean"])),
    ("rsize", Uint),
    ("wsize", Uint),
    ("rasize", Uint),
    ("acl", Flag),
    ("noacl", Flag),
];

const CIFS: &[(&str, Val)] = &[
    ("credentials", AbsPath),
    ("username", Name),
    ("user", Name),
    ("domain", Name),
    (
        "vers",
        Word(&["2.0", "2.1", "3", "3.0", "3.02", "3.1.1", "default"]),
    ),
    (
        "sec",
        Word(&[
            "krb5", "krb5i", "ntlmssp", "ntlmsspi", "ntlmv2", "ntlmv2i", "none",
        ]),
    ),
    ("cache", Word(&["strict", "none", "loose"])),
    ("uid", Uint),
    ("gid", Uint),
    ("file_mode", Octal),
    ("dir_mode", Octal),
    ("seal", Flag),
    ("nounix", Flag),
    ("serverino", Flag),
    ("noserverino", Flag),
    ("rsize", Uint),
    ("wsize", Uint),
];

const LUSTRE: &[(&str, Val)] = &[("flock", Flag), ("localflock", Flag), ("noflock", Flag)];

/// The option set of a file system type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionSet {
    Nfs,
    Gluster,
    Ext,
    Xfs,
    Btrfs,
    ClusterFs,
    Ceph,
    Cifs,
    Lustre,
}

impl OptionSet {
    fn table(self) -> &'static [(&'static str, Val)] {
        match self {
            OptionSet::Nfs => NFS,
            OptionSet::Gluster => GLUSTER,
            OptionSet::Ext => EXT,
            OptionSet::Xfs => XFS,
            OptionSet::Btrfs => BTRFS,
            OptionSet::ClusterFs => CLUSTER_FS,
            OptionSet::Ceph => CEPH,
            OptionSet::Cifs => CIFS,
            OptionSet::Lustre => LUSTRE,
        }
    }
}

/// The POSIXFS `vfs_type`s depot mounts, and their option sets. Others
/// (`fuse`, which runs any program named in the source; `tmpfs`, which
/// loses data; `bind`/`none`) are refused with MountTypeError.
pub const POSIX_VFS_TYPES: &[(&str, OptionSet)] = &[
    ("ext2", OptionSet::Ext),
    ("ext3", OptionSet::Ext),
    ("ext4", OptionSet::Ext),
    ("xfs", OptionSet::Xfs),
    ("btrfs", OptionSet::Btrfs),
    ("gfs2", OptionSet::ClusterFs),
    ("ocfs2", OptionSet::ClusterFs),
    ("ceph", OptionSet::Ceph),
    ("nfs", OptionSet::Nfs),
    ("nfs4", OptionSet::Nfs),
    ("glusterfs", OptionSet::Gluster),
    ("cifs", OptionSet::Cifs),
    ("smb3", OptionSet::Cifs),
    ("lustre", OptionSet::Lustre),
];

/// Why an option is refused even though it may look harmless.
fn refused_reason(name: &str, set: OptionSet) -> Option<&'static str> {
    let r = match name {
        "suid" | "dev" | "exec" | "defaults" => {
            "allows setuid programs, device nodes or executables (use nosuid, nodev, noexec)"
        }
        "user" | "users" | "owner" | "group" | "nouser" if set != OptionSet::Cifs => {
            "user mounts are not allowed"
        }
        "helper" | "uhelper" | "comment" => "runs a helper or acts outside the mount",
        "loop" | "offset" | "sizelimit" | "encryption" => "sets up a loop device",
        "bind" | "rbind" | "move" | "remount" | "shared" | "rshared" | "private" | "rprivate"
        | "slave" | "rslave" | "unbindable" | "runbindable" => "changes other mounts",
        "context" | "fscontext" | "defcontext" | "rootcontext" => {
            "SELinux context options are not supported"
        }
        "bg" if set == OptionSet::Nfs => "mount would return before the file system is there",
        "log-file" | "dump-fuse" if set == OptionSet::Gluster => "writes a file anywhere",
        "xlator-option" | "volfile-id" | "volume-name" if set == OptionSet::Gluster => {
            "changes what is mounted; put the volume in the connection"
        }
        "password" | "pass" if set == OptionSet::Cifs => {
            "would show the password in logs; use credentials=<file>"
        }
        "secret" if set == OptionSet::Ceph => "would show the key in logs; use secretfile=<file>",
        "noload" | "nobarrier" if set == OptionSet::Ext => "risks file system corruption",
        _ if name.starts_with("x-") || name.starts_with("X-") => {
            "runs a helper or acts outside the mount"
        }
        _ => return None,
    };
    Some(r)
}

/// Splits and checks `mnt_options`; returns the items, in order.
///
/// `managed` names options depot sets itself (NFS domain): they are refused
/// so the engine's fields are the one way to set them.
pub fn check_options(text: &str, set: OptionSet, managed: &[&str]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for item in text.split(',') {
        let item = item.trim_matches(' ');
        if item.is_empty() {
            continue;
        }
        if let Some(c) = item
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || "\"'\\`$;|&<>".contains(*c))
        {
            return Err(format!("option {item:?} contains {c:?}"));
        }
        let (name, value) = match item.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (item, None),
        };
        if managed.contains(&name) {
            return Err(format!(
                "option {name:?} is set by depot from the connection's own fields \
                 (timeout, retrans, protocol_version)"
            ));
        }
        if let Some(why) = refused_reason(name, set) {
            return Err(format!("option {item:?} is not allowed: {why}"));
        }
        let kind = set
            .table()
            .iter()
            .chain(COMMON)
            .find(|(n, _)| *n == name)
            .map(|(_, k)| *k)
            .ok_or_else(|| format!("option {name:?} is not in the allowed list for {set:?}"))?;
        check_value(name, kind, value)?;
        out.push(item.to_owned());
    }
    Ok(out)
}

fn check_value(name: &str, kind: Val, value: Option<&str>) -> Result<(), String> {
    let v = match (kind, value) {
        (Flag, None) => return Ok(()),
        (Flag, Some(_)) => return Err(format!("option {name:?} takes no value")),
        (_, None) | (_, Some("")) => return Err(format!("option {name:?} needs a value")),
        (_, Some(v)) => v,
    };
    let digits = |s: &str| !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit());
    let plain = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
    };
    let ok = match kind {
        Flag => true,
        Uint => digits(v),
        Size => {
            let n = v.strip_suffix(['k', 'K', 'm', 'M', 'g', 'G']).unwrap_or(v);
            digits(n)
        }
        Octal => v.len() <= 4 && v.bytes().all(|b| (b'0'..=b'7').contains(&b)),
        Word(words) => words.contains(&v),
        Host => check_host(v).is_ok() || check_host(&format!("[{v}]")).is_ok(),
        HostList => v.split(':').all(|h| check_hostname(h).is_ok()),
        Name => {
            !v.starts_with('-')
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        }
        AbsPath => v.starts_with('/') && plain(v) && !v.split('/').any(|c| c == ".."),
        RelPath => !v.starts_with(['/', '-']) && plain(v) && !v.split('/').any(|c| c == ".."),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("option {name:?} has an invalid value {v:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str, set: OptionSet) -> Vec<String> {
        check_options(text, set, &[]).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn bad(text: &str, set: OptionSet, why: &str) {
        let err = check_options(text, set, NFS_MANAGED).unwrap_err();
        assert!(err.contains(why), "{text:?}: {err}");
    }

    #[test]
    fn accepts_listed_options() {
        assert_eq!(
            ok(" rw, noatime,,nosuid,rsize=1048576 ", OptionSet::Nfs),
            vec!["rw", "noatime", "nosuid", "rsize=1048576"]
        );
        assert_eq!(ok("", OptionSet::Nfs), Vec::<String>::new());
        ok(
            "sec=krb5p,proto=tcp6,clientaddr=fd00::5,lookupcache=pos",
            OptionSet::Nfs,
        );
        ok(
            "backup-volfile-servers=gl2:gl3.example.com:10.0.0.4",
            OptionSet::Gluster,
        );
        ok(
            "log-level=WARNING,direct-io-mode=enable",
            OptionSet::Gluster,
        );
        ok(
            "data=ordered,errors=remount-ro,commit=30,discard",
            OptionSet::Ext,
        );
        ok("logbsize=256k,inode64", OptionSet::Xfs);
        ok(
            "name=admin,secretfile=/etc/ceph/admin.secret",
            OptionSet::Ceph,
        );
        ok(
            "credentials=/etc/depot/smb.cred,file_mode=0660,vers=3.1.1",
            OptionSet::Cifs,
        );
        ok("subvol=vm/images", OptionSet::Btrfs);
    }

    #[test]
    fn nosuid_and_nodev_are_always_there_once() {
        assert_eq!(with_always(Vec::new()), ["nosuid", "nodev"]);
        assert_eq!(
            with_always(ok("noatime,nodev", OptionSet::Ext)),
            ["noatime", "nodev", "nosuid"]
        );
        assert_eq!(
            with_always(ok("nosuid,nodev,noexec", OptionSet::Nfs)),
            ["nosuid", "nodev", "noexec"]
        );
    }

    #[test]
    fn refuses_dangerous_and_unknown_options() {
        bad("rw,exec", OptionSet::Nfs, "not allowed");
        bad("suid", OptionSet::Ext, "setuid");
        bad("dev", OptionSet::Xfs, "device");
        bad("defaults", OptionSet::Ext, "not allowed");
        bad("helper=/bin/sh", OptionSet::Nfs, "helper");
        bad("X-mount.mkdir", OptionSet::Ext, "helper");
        bad("x-systemd.automount", OptionSet::Ext, "helper");
        bad("loop", OptionSet::Ext, "loop");
        bad("offset=512", OptionSet::Ext, "loop");
        bad("bind", OptionSet::Ext, "other mounts");
        bad("remount", OptionSet::Nfs, "other mounts");
        bad(
            "context=system_u:object_r:nfs_t:s0",
            OptionSet::Nfs,
            "SELinux",
        );
        bad("user", OptionSet::Nfs, "user mounts");
        bad("bg", OptionSet::Nfs, "before");
        bad("log-file=/etc/passwd", OptionSet::Gluster, "writes a file");
        bad("xlator-option=a.b=c", OptionSet::Gluster, "changes what");
        bad("password=x", OptionSet::Cifs, "credentials");
        bad("secret=AQ==", OptionSet::Ceph, "secretfile");
        bad("errors=panic", OptionSet::Ext, "invalid value");
        bad("nobarrier", OptionSet::Ext, "corruption");
        bad("frobnicate", OptionSet::Nfs, "not in the allowed list");
        bad("rsize=1048576", OptionSet::Ext, "not in the allowed list");
        // Managed NFS options.
        bad("timeo=5", OptionSet::Nfs, "set by depot");
        bad("vers=4.1", OptionSet::Nfs, "set by depot");
        // Values.
        bad("rsize=1m", OptionSet::Nfs, "invalid value");
        bad("rsize=", OptionSet::Nfs, "needs a value");
        bad("soft=1", OptionSet::Nfs, "takes no value");
        bad("clientaddr=-x", OptionSet::Nfs, "invalid value");
        bad(
            "backup-volfile-servers=gl2:-o",
            OptionSet::Gluster,
            "invalid value",
        );
        bad("secretfile=../x", OptionSet::Ceph, "invalid value");
        bad("secretfile=/etc/../x", OptionSet::Ceph, "invalid value");
        bad("subvol=/abs", OptionSet::Btrfs, "invalid value");
        // Quoting and whitespace tricks.
        bad("sec=\"sys,exec\"", OptionSet::Nfs, "contains");
        bad("rsize=1 exec", OptionSet::Nfs, "contains");
        bad("rw\nexec", OptionSet::Nfs, "contains");
        bad("rw;reboot", OptionSet::Nfs, "contains");
        bad("nolock\u{00e9}", OptionSet::Nfs, "not in the allowed list");
    }
}
