//! The engine's connection fields ([`ConnectionParams`]) and their checked
//! form ([`Connection`]), with the mount to run ([`MountPlan`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use depot_api::storage::DomainType;
use depot_api::types::Uuid;
use depot_api::Code;
use depot_os::mount::MountEntry;
use depot_os::Cmd;

use super::options::{check_options, with_always, OptionSet, NFS_MANAGED, POSIX_VFS_TYPES};
use super::spec::{
    gluster_key, normalize_abs_path, normalize_table_source, parse_gluster, parse_remote,
    transform, Remote, NAME_MAX,
};
use crate::error::{StorageError, StorageResult};

/// `<repository>/mnt`: where mount points and LOCALFS links live.
pub const MNT_DIR: &str = "mnt";
/// `<repository>/mnt/glusterSD`: GLUSTERFS mount points.
pub const GLUSTER_DIR: &str = "glusterSD";
/// `<repository>/mnt/blockSD`: block domains (not a connection's).
pub const BLOCK_DIR: &str = "blockSD";

/// VDSM's NFS defaults: `timeo` in deciseconds and `retrans`.
pub const NFS_DEFAULT_TIMEO: i64 = 100;
pub const NFS_DEFAULT_RETRANS: i64 = 3;
/// The options VDSM puts first on every NFS mount.
pub const NFS_DEFAULT_OPTIONS: &[&str] = &["soft", "nosharecache"];

/// How long a GLUSTERFS or POSIXFS mount may take.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound of the NFS mount timeout, which follows `timeo` and
/// `retrans`; below the engine's 180 s call timeout.
pub const NFS_MOUNT_TIMEOUT_MAX: Duration = Duration::from_secs(170);

const OP: &str = "validate storage server connection";

/// One entry of `connectionParams`, typed. The daemon maps the JSON dict;
/// fields the engine did not send are `None`. Fields a type does not use
/// are ignored, as VDSM ignores them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionParams {
    /// The engine's connection id (a UUID), echoed in the status list.
    pub id: String,
    /// `server:/path` (NFS, POSIXFS, GLUSTERFS also `server:volume`);
    /// a local absolute path (LOCALFS; a device for POSIXFS).
    pub connection: String,
    /// POSIXFS: the file system type (`-t`). GLUSTERFS: `glusterfs` or none.
    pub vfs_type: Option<String>,
    /// Comma-separated extra mount options.
    pub mnt_options: Option<String>,
    /// NFS: `3` (the default when absent), `4`, `4.0`, `4.1`, `4.2`, `auto`.
    pub protocol_version: Option<String>,
    /// NFS: `timeo`, in deciseconds (default 100).
    pub timeout: Option<i64>,
    /// NFS: `retrans` (default 3).
    pub retrans: Option<i64>,
    /// ISCSI: the portal's port (default 3260).
    pub port: Option<i64>,
    /// ISCSI: the target name.
    pub iqn: Option<String>,
    /// ISCSI: the target portal group tag (default 1).
    pub tpgt: Option<i64>,
    /// ISCSI: CHAP user (empty or absent: no CHAP).
    pub user: Option<String>,
    /// ISCSI: CHAP password; never printed.
    pub password: Option<depot_os::Secret>,
    /// ISCSI: the open-iscsi iface (VDSM's ifaceName; default `default`).
    pub iface: Option<String>,
}

/// How a mount-table entry is recognised as this connection's.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SourceKey {
    /// A remote spec, normalized (gluster: without the leading `/`).
    Remote { key: String, gluster: bool },
    /// A local device or image path (POSIXFS).
    Local(String),
}

/// One mount to run: exactly what [`depot_os::Mounter::mount`] gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    /// The `mount` source, normalized (`srv:/export`, `[fd00::1]:/e`).
    pub source: String,
    /// The mount point.
    pub target: PathBuf,
    /// `-t` (`nfs`, `glusterfs`, the POSIXFS `vfs_type`).
    pub fstype: String,
    /// `-o`, in order.
    pub options: Vec<String>,
    /// The mount (and umount) command's timeout.
    pub timeout: Duration,
    key: SourceKey,
}

impl MountPlan {
    /// The command [`depot_os::Mounter::mount`] runs for this plan
    /// (`mount -t T -o O -- SOURCE TARGET`), for logs and tests; the real
    /// call goes through the Mounter.
    pub fn command(&self) -> Cmd {
        let mut cmd = Cmd::new("mount", self.timeout).args(["-t", &self.fstype]);
        if !self.options.is_empty() {
            cmd = cmd.arg("-o").arg(self.options.join(","));
        }
        cmd.arg("--").arg(&self.source).arg(&self.target)
    }

    /// Whether a mount-table entry (at the target) is this plan's source.
    ///
    /// The table shows the source as mount(8) got it, except: NFSv4 may
    /// add slashes, gluster may add `.rdma`, and a POSIXFS image file or
    /// device symlink shows as the loop device or the real device.
    pub fn matches(&self, e: &MountEntry) -> bool {
        match &self.key {
            SourceKey::Remote { key, gluster } => {
                normalize_table_source(&e.source, *gluster).as_deref() == Some(key.as_str())
            }
            SourceKey::Local(path) => {
                if e.source == *path {
                    return true;
                }
                let Ok(real) = std::fs::canonicalize(path) else {
                    return false;
                };
                Path::new(&e.source) == real
                    || loop_backing_file(&e.source).is_some_and(|b| b == real)
            }
        }
    }

    fn is_nfs(&self) -> bool {
        self.fstype.starts_with("nfs")
    }
}

/// The file behind `/dev/loopN`, from sysfs.
fn loop_backing_file(dev: &str) -> Option<PathBuf> {
    let name = dev.strip_prefix("/dev/")?;
    if !name.starts_with("loop") {
        return None;
    }
    let text = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    Some(PathBuf::from(text.trim_end_matches('\n')))
}

/// What connecting means for a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionKind {
    /// Mount a file system on [`Connection::mount_point`].
    Mount(MountPlan),
    /// LOCALFS: link [`Connection::mount_point`] to this directory.
    Local { path: PathBuf },
}

/// A checked connection: nothing in it came unchecked from the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    id: String,
    domain_type: DomainType,
    /// The connection string, normalized.
    spec: String,
    mount_point: PathBuf,
    kind: ConnectionKind,
}

fn invalid(code: Code, field: &str, value: &str, why: impl std::fmt::Display) -> StorageError {
    let shown: String = value.chars().take(200).collect();
    StorageError::new(code, OP, format!("{field}={shown:?}: {why}"))
}

/// A connection string that cannot be used.
fn bad_spec(params: &ConnectionParams, why: String) -> StorageError {
    invalid(
        Code::MountParsingError,
        "connection",
        &params.connection,
        why,
    )
}

/// Mount options that cannot be used.
fn bad_options(params: &ConnectionParams, why: String) -> StorageError {
    invalid(
        Code::InvalidParameterException,
        "mnt_options",
        params.mnt_options.as_deref().unwrap_or(""),
        why,
    )
}

/// LOCALFS: the directory, normalized; not `/`, not inside the repository.
fn local_spec(params: &ConnectionParams, repository: &Path) -> StorageResult<String> {
    let path = normalize_abs_path(&params.connection).map_err(|e| bad_spec(params, e))?;
    if path == "/" || Path::new(&path).starts_with(repository) {
        return Err(bad_spec(
            params,
            format!(
                "a local domain cannot be / or inside the repository {}",
                repository.display()
            ),
        ));
    }
    Ok(path)
}

/// NFS: the server and export, and the mount with the managed options.
fn nfs_plan(params: &ConnectionParams) -> StorageResult<(String, MountPlan)> {
    let mnt_options = params.mnt_options.as_deref().unwrap_or("");
    let r = parse_remote(&params.connection, false).map_err(|e| bad_spec(params, e))?;
    let mut options = nfs_options(params)?;
    let extra = check_options(mnt_options, OptionSet::Nfs, NFS_MANAGED)
        .map_err(|e| bad_options(params, e))?;
    let v3_or_auto = matches!(
        params.protocol_version.as_deref().map(str::trim),
        None | Some("3") | Some("auto")
    );
    // VDSM (bz 1550127): NFSv3 remote locks break HA VM failover,
    // so v3 (and auto, which may negotiate v3) uses local locks
    // unless the engine asked for `lock` explicitly.
    let add_nolock = v3_or_auto && !extra.iter().any(|o| o == "lock" || o == "nolock");
    options.extend(extra);
    if add_nolock {
        options.push("nolock".into());
    }
    let timeout = nfs_mount_timeout(params);
    let plan = remote_plan(&r, "nfs", options, timeout, false);
    Ok((r.spec(), plan))
}

/// GLUSTERFS: the volume and its servers; the vfs type, if given, is
/// glusterfs.
fn gluster_plan(params: &ConnectionParams) -> StorageResult<(String, MountPlan)> {
    match params.vfs_type.as_deref().map(str::trim) {
        None | Some("") | Some("glusterfs") => {}
        Some(other) => {
            return Err(invalid(
                Code::MountTypeError,
                "vfs_type",
                other,
                "a GLUSTERFS connection mounts glusterfs",
            ))
        }
    }
    let mnt_options = params.mnt_options.as_deref().unwrap_or("");
    let r = parse_gluster(&params.connection).map_err(|e| bad_spec(params, e))?;
    let options =
        check_options(mnt_options, OptionSet::Gluster, &[]).map_err(|e| bad_options(params, e))?;
    let plan = remote_plan(&r, "glusterfs", options, MOUNT_TIMEOUT, true);
    Ok((r.spec(), plan))
}

/// POSIXFS: one of the supported vfs types, its options, and a local
/// device path or a remote source.
fn posix_plan(params: &ConnectionParams) -> StorageResult<(String, MountPlan)> {
    let vfs = params.vfs_type.as_deref().map(str::trim).unwrap_or("");
    let set = POSIX_VFS_TYPES
        .iter()
        .find(|(t, _)| *t == vfs)
        .map(|(_, s)| *s)
        .ok_or_else(|| {
            let allowed: Vec<_> = POSIX_VFS_TYPES.iter().map(|(t, _)| *t).collect();
            invalid(
                Code::MountTypeError,
                "vfs_type",
                vfs,
                format!(
                    "not a supported POSIXFS type (one of {})",
                    allowed.join(", ")
                ),
            )
        })?;
    let mnt_options = params.mnt_options.as_deref().unwrap_or("");
    let options = check_options(mnt_options, set, &[]).map_err(|e| bad_options(params, e))?;
    if params.connection.starts_with('/') {
        let path = normalize_abs_path(&params.connection).map_err(|e| bad_spec(params, e))?;
        let plan = MountPlan {
            source: path.clone(),
            target: PathBuf::new(),
            fstype: vfs.to_owned(),
            options,
            timeout: MOUNT_TIMEOUT,
            key: SourceKey::Local(path.clone()),
        };
        Ok((path, plan))
    } else {
        let gluster = set == OptionSet::Gluster;
        let r = if gluster {
            parse_gluster(&params.connection)
        } else {
            parse_remote(&params.connection, set != OptionSet::Nfs)
        }
        .map_err(|e| bad_spec(params, e))?;
        let plan = remote_plan(&r, vfs, options, MOUNT_TIMEOUT, gluster);
        Ok((r.spec(), plan))
    }
}

impl Connection {
    /// Checks `params` for `domain_type` and works out the mount point under
    /// `repository`. Runs nothing and touches no file.
    pub fn new(
        domain_type: DomainType,
        params: &ConnectionParams,
        repository: &Path,
    ) -> StorageResult<Connection> {
        if params.id.parse::<Uuid>().is_err() {
            return Err(invalid(
                Code::InvalidParameterException,
                "id",
                &params.id,
                "not a UUID",
            ));
        }
        let mnt = repository.join(MNT_DIR);
        let spec_err = |why: String| bad_spec(params, why);
        let (spec, base, kind_of): (String, PathBuf, Option<MountPlan>) = match domain_type {
            DomainType::LocalFs => (local_spec(params, repository)?, mnt, None),
            DomainType::Nfs => {
                let (spec, plan) = nfs_plan(params)?;
                (spec, mnt, Some(plan))
            }
            DomainType::GlusterFs => {
                let (spec, plan) = gluster_plan(params)?;
                (spec, mnt.join(GLUSTER_DIR), Some(plan))
            }
            DomainType::PosixFs => {
                let (spec, plan) = posix_plan(params)?;
                (spec, mnt, Some(plan))
            }
            other => {
                return Err(StorageError::new(
                    Code::StorageDomainTypeError,
                    OP,
                    format!(
                    "domainType={} ({}): depot connects NFS, LOCALFS, POSIXFS and GLUSTERFS here",
                    other.number().unwrap_or(0),
                    other.name()
                ),
                ))
            }
        };

        let name = transform(&spec);
        if name.len() > NAME_MAX {
            return Err(spec_err(format!(
                "the mount point name would be {} bytes, more than {NAME_MAX}",
                name.len()
            )));
        }
        let mount_point = base.join(name);
        let kind = match kind_of {
            Some(mut plan) => {
                plan.target = mount_point.clone();
                plan.options = with_always(std::mem::take(&mut plan.options));
                ConnectionKind::Mount(plan)
            }
            None => ConnectionKind::Local {
                path: PathBuf::from(&spec),
            },
        };
        Ok(Connection {
            id: params.id.clone(),
            domain_type,
            spec,
            mount_point,
            kind,
        })
    }

    /// The engine's connection id.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn domain_type(&self) -> DomainType {
        self.domain_type
    }

    /// The connection string, normalized (`srv:/export`, `/data/local`).
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// Where the storage appears: the mount point, or LOCALFS's link.
    /// Domains of this connection are `<mount_point>/<sdUUID>`; a caller
    /// that must not disconnect storage in use checks its active domains
    /// against this path first.
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    pub fn kind(&self) -> &ConnectionKind {
        &self.kind
    }

    /// The mount, for the mounting types.
    pub fn mount_plan(&self) -> Option<&MountPlan> {
        match &self.kind {
            ConnectionKind::Mount(p) => Some(p),
            ConnectionKind::Local { .. } => None,
        }
    }

    pub(crate) fn is_nfs(&self) -> bool {
        self.mount_plan().is_some_and(MountPlan::is_nfs)
    }
}

/// The mount points `connection` may be mounted at, for each way a
/// connection of `domain_type` can be spelled (a POSIXFS connection is a
/// device path, or remote like NFS or GlusterFS), without checking options.
pub(crate) fn mount_point_candidates(
    domain_type: DomainType,
    connection: &str,
    repository: &Path,
) -> Vec<PathBuf> {
    let mnt = repository.join(MNT_DIR);
    let mut specs: Vec<(String, PathBuf)> = Vec::new();
    match domain_type {
        DomainType::LocalFs => specs.extend(
            normalize_abs_path(connection)
                .ok()
                .map(|p| (p, mnt.clone())),
        ),
        DomainType::Nfs => specs.extend(
            parse_remote(connection, false)
                .ok()
                .map(|r| (r.spec(), mnt.clone())),
        ),
        DomainType::GlusterFs => specs.extend(
            parse_gluster(connection)
                .ok()
                .map(|r| (r.spec(), mnt.join(GLUSTER_DIR))),
        ),
        DomainType::PosixFs => {
            if connection.starts_with('/') {
                specs.extend(
                    normalize_abs_path(connection)
                        .ok()
                        .map(|p| (p, mnt.clone())),
                );
            } else {
                specs.extend(
                    parse_remote(connection, true)
                        .ok()
                        .map(|r| (r.spec(), mnt.clone())),
                );
                specs.extend(
                    parse_gluster(connection)
                        .ok()
                        .map(|r| (r.spec(), mnt.clone())),
                );
            }
        }
        _ => {}
    }
    let mut out: Vec<PathBuf> = specs
        .into_iter()
        .map(|(spec, base)| base.join(transform(&spec)))
        .collect();
    out.dedup();
    out
}

fn remote_plan(
    r: &Remote,
    fstype: &str,
    options: Vec<String>,
    timeout: Duration,
    gluster: bool,
) -> MountPlan {
    let key = if gluster { gluster_key(r) } else { r.spec() };
    MountPlan {
        source: r.spec(),
        target: PathBuf::new(),
        fstype: fstype.to_owned(),
        options,
        timeout,
        key: SourceKey::Remote { key, gluster },
    }
}

/// VDSM's NFS options from the typed fields:
/// `soft,nosharecache,timeo=T,retrans=R[,nfsvers=V[,minorversion=M]]`.
fn nfs_options(params: &ConnectionParams) -> StorageResult<Vec<String>> {
    let timeo = params.timeout.unwrap_or(NFS_DEFAULT_TIMEO);
    if !(1..=6000).contains(&timeo) {
        return Err(invalid(
            Code::InvalidParameterException,
            "timeout",
            &timeo.to_string(),
            "NFS timeout must be 1..6000 deciseconds",
        ));
    }
    let retrans = params.retrans.unwrap_or(NFS_DEFAULT_RETRANS);
    if !(0..=32767).contains(&retrans) {
        return Err(invalid(
            Code::InvalidParameterException,
            "retrans",
            &retrans.to_string(),
            "NFS retrans must be 0..32767",
        ));
    }
    let mut o: Vec<String> = NFS_DEFAULT_OPTIONS.iter().map(|s| s.to_string()).collect();
    o.push(format!("timeo={timeo}"));
    o.push(format!("retrans={retrans}"));
    let version = params
        .protocol_version
        .as_deref()
        .map(str::trim)
        .unwrap_or("3");
    let vers: &[&str] = match version {
        "auto" => &[],
        "3" => &["nfsvers=3"],
        "4" => &["nfsvers=4"],
        "4.0" => &["nfsvers=4", "minorversion=0"],
        "4.1" => &["nfsvers=4", "minorversion=1"],
        "4.2" => &["nfsvers=4", "minorversion=2"],
        other => {
            return Err(invalid(
                Code::InvalidParameterException,
                "protocol_version",
                other,
                "must be 3, 4, 4.0, 4.1, 4.2 or auto",
            ))
        }
    };
    o.extend(vers.iter().map(|s| s.to_string()));
    Ok(o)
}

/// NFS mount timeout: one retry cycle of `timeo * (retrans + 1)` plus 30 s
/// for name resolution, portmapper and mountd, at most
/// [`NFS_MOUNT_TIMEOUT_MAX`]. With VDSM's defaults (10 s, 3) that is 70 s.
fn nfs_mount_timeout(params: &ConnectionParams) -> Duration {
    let timeo = params.timeout.unwrap_or(NFS_DEFAULT_TIMEO).clamp(1, 6000) as u64;
    let retrans = params
        .retrans
        .unwrap_or(NFS_DEFAULT_RETRANS)
        .clamp(0, 32767) as u64;
    let t = Duration::from_millis(timeo * 100 * (retrans + 1)) + Duration::from_secs(30);
    t.min(NFS_MOUNT_TIMEOUT_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3c4e0bde-7c3f-4f9a-9d1a-2b2a3f3e4d5c";
    const REPO: &str = "/rhev/data-center";

    fn params(connection: &str) -> ConnectionParams {
        ConnectionParams {
            id: ID.into(),
            connection: connection.into(),
            ..Default::default()
        }
    }

    fn conn(t: DomainType, p: &ConnectionParams) -> StorageResult<Connection> {
        Connection::new(t, p, Path::new(REPO))
    }

    fn argv(p: &ConnectionParams) -> String {
        conn(DomainType::Nfs, p)
            .unwrap()
            .mount_plan()
            .unwrap()
            .command()
            .to_string()
    }

    #[test]
    fn nfs_argv_per_protocol_version() {
        let cases = [
            (None, "nfsvers=3,nolock"),
            (Some("3"), "nfsvers=3,nolock"),
            (Some("4"), "nfsvers=4"),
            (Some("4.0"), "nfsvers=4,minorversion=0"),
            (Some("4.1"), "nfsvers=4,minorversion=1"),
            (Some("4.2"), "nfsvers=4,minorversion=2"),
            (Some("auto"), "nolock"),
        ];
        for (version, tail) in cases {
            let mut p = params("srv:/export/data_1");
            p.protocol_version = version.map(Into::into);
            assert_eq!(
                argv(&p),
                format!(
                    "mount -t nfs -o soft,nosharecache,timeo=100,retrans=3,{tail},nosuid,nodev -- \
                     srv:/export/data_1 /rhev/data-center/mnt/srv:_export_data__1"
                ),
                "{version:?}"
            );
        }
    }

    #[test]
    fn every_mount_gets_nosuid_and_nodev() {
        let mut cases = Vec::new();
        let mut p = params("srv:/e");
        p.mnt_options = Some("nodev,noexec".into());
        cases.push((DomainType::Nfs, p));
        cases.push((DomainType::GlusterFs, params("gl1:/vol")));
        for (vfs, spec) in [
            ("ext4", "/dev/loop3"),
            ("nfs4", "srv:/e"),
            ("glusterfs", "gl:/v"),
        ] {
            let mut p = params(spec);
            p.vfs_type = Some(vfs.into());
            cases.push((DomainType::PosixFs, p));
        }
        for (t, p) in cases {
            let c = conn(t, &p).unwrap();
            let opts = &c.mount_plan().unwrap().options;
            for o in ["nosuid", "nodev"] {
                assert_eq!(
                    opts.iter().filter(|x| *x == o).count(),
                    1,
                    "{t:?} {p:?}: {opts:?}"
                );
            }
        }
    }

    #[test]
    fn nfs_engine_timeout_retrans_and_extra_options() {
        let mut p = params("[fd00::1]:/exp/");
        p.protocol_version = Some("4.2".into());
        p.timeout = Some(600);
        p.retrans = Some(6);
        p.mnt_options = Some("noatime,rsize=65536".into());
        let c = conn(DomainType::Nfs, &p).unwrap();
        let plan = c.mount_plan().unwrap();
        assert_eq!(
            plan.command().to_string(),
            "mount -t nfs -o soft,nosharecache,timeo=600,retrans=6,nfsvers=4,minorversion=2,\
             noatime,rsize=65536,nosuid,nodev -- '[fd00::1]:/exp' '/rhev/data-center/mnt/[fd00::1]:_exp'"
        );
        // 60 s * 7 + 30 s, capped.
        assert_eq!(plan.timeout, NFS_MOUNT_TIMEOUT_MAX);
        assert_eq!(
            c.mount_point(),
            Path::new("/rhev/data-center/mnt/[fd00::1]:_exp")
        );
        assert_eq!(c.spec(), "[fd00::1]:/exp");

        // v3 with an explicit `lock`: no nolock added.
        let mut p = params("srv:/e");
        p.mnt_options = Some("lock".into());
        assert!(
            argv(&p).contains("nfsvers=3,lock,nosuid,nodev --"),
            "{}",
            argv(&p)
        );
        p.mnt_options = Some("nolock".into());
        assert!(
            argv(&p).contains("nfsvers=3,nolock,nosuid,nodev --"),
            "{}",
            argv(&p)
        );
    }

    #[test]
    fn nfs_mount_timeout_follows_timeo_and_retrans() {
        let p = params("srv:/e");
        let c = conn(DomainType::Nfs, &p).unwrap();
        assert_eq!(c.mount_plan().unwrap().timeout, Duration::from_secs(70));
        let mut p = params("srv:/e");
        p.timeout = Some(10);
        p.retrans = Some(0);
        let c = conn(DomainType::Nfs, &p).unwrap();
        assert_eq!(c.mount_plan().unwrap().timeout, Duration::from_secs(31));
    }

    #[test]
    fn nfs_field_errors_name_the_field() {
        type Case = (fn(&mut ConnectionParams), Code, &'static str);
        let cases: [Case; 8] = [
            (
                |p| p.protocol_version = Some("2".into()),
                Code::InvalidParameterException,
                "protocol_version",
            ),
            (
                |p| p.protocol_version = Some("4.3".into()),
                Code::InvalidParameterException,
                "protocol_version",
            ),
            (
                |p| p.timeout = Some(0),
                Code::InvalidParameterException,
                "timeout",
            ),
            (
                |p| p.timeout = Some(-5),
                Code::InvalidParameterException,
                "timeout",
            ),
            (
                |p| p.retrans = Some(-1),
                Code::InvalidParameterException,
                "retrans",
            ),
            (
                |p| p.mnt_options = Some("rw,exec".into()),
                Code::InvalidParameterException,
                "mnt_options",
            ),
            (
                |p| p.mnt_options = Some("timeo=1".into()),
                Code::InvalidParameterException,
                "mnt_options",
            ),
            (
                |p| p.id = "not-a-uuid".into(),
                Code::InvalidParameterException,
                "id=",
            ),
        ];
        for (set, code, field) in cases {
            let mut p = params("srv:/e");
            set(&mut p);
            let err = conn(DomainType::Nfs, &p).unwrap_err();
            assert_eq!(err.code, code, "{err}");
            assert!(err.detail.starts_with(field), "{err}");
        }
    }

    #[test]
    fn bad_connection_strings() {
        for spec in [
            "srv:/a/../b",
            "srv:/x,y",
            "srv:relative",
            "",
            "srv:/ok\n",
            "sérveur:/x",
            "-o:/x",
        ] {
            let err = conn(DomainType::Nfs, &params(spec)).unwrap_err();
            assert_eq!(err.code, Code::MountParsingError, "{spec:?}: {err}");
            assert!(err.detail.starts_with("connection="), "{err}");
        }
        // Unicode in the path is fine; it is only bytes to the kernel.
        let c = conn(DomainType::Nfs, &params("srv:/données")).unwrap();
        assert_eq!(
            c.mount_point(),
            Path::new("/rhev/data-center/mnt/srv:_données")
        );
        // One file name at most.
        let long = format!("srv:/{}", "a".repeat(260));
        let err = conn(DomainType::Nfs, &params(&long)).unwrap_err();
        assert!(err.detail.contains("more than 255"), "{err}");
    }

    #[test]
    fn gluster_connections() {
        let mut p = params("gl1:/vol");
        p.vfs_type = Some("glusterfs".into());
        p.mnt_options = Some("backup-volfile-servers=gl2:gl3".into());
        let c = conn(DomainType::GlusterFs, &p).unwrap();
        assert_eq!(
            c.mount_plan().unwrap().command().to_string(),
            "mount -t glusterfs -o backup-volfile-servers=gl2:gl3,nosuid,nodev -- gl1:/vol \
             /rhev/data-center/mnt/glusterSD/gl1:_vol"
        );
        let c = conn(DomainType::GlusterFs, &params("gl1:vol")).unwrap();
        assert_eq!(
            c.mount_point(),
            Path::new("/rhev/data-center/mnt/glusterSD/gl1:vol")
        );
        assert_eq!(
            c.mount_plan().unwrap().command().to_string(),
            "mount -t glusterfs -o nosuid,nodev -- gl1:vol /rhev/data-center/mnt/glusterSD/gl1:vol"
        );
        let mut p = params("gl1:/vol");
        p.vfs_type = Some("nfs".into());
        assert_eq!(
            conn(DomainType::GlusterFs, &p).unwrap_err().code,
            Code::MountTypeError
        );
        let mut p = params("gl1:/vol");
        p.mnt_options = Some("log-file=/etc/x".into());
        assert_eq!(
            conn(DomainType::GlusterFs, &p).unwrap_err().code,
            Code::InvalidParameterException
        );
    }

    #[test]
    fn posix_connections() {
        let mut p = params("/dev/loop3");
        p.vfs_type = Some("xfs".into());
        p.mnt_options = Some("noatime".into());
        let c = conn(DomainType::PosixFs, &p).unwrap();
        assert_eq!(
            c.mount_plan().unwrap().command().to_string(),
            "mount -t xfs -o noatime,nosuid,nodev -- /dev/loop3 /rhev/data-center/mnt/_dev_loop3"
        );
        let mut p = params("mon1:6789:/vm");
        p.vfs_type = Some("ceph".into());
        p.mnt_options = Some("name=admin,secretfile=/etc/ceph/s".into());
        let c = conn(DomainType::PosixFs, &p).unwrap();
        assert_eq!(
            c.mount_point(),
            Path::new("/rhev/data-center/mnt/mon1:6789:_vm")
        );
        for (vfs, code) in [
            (None, Code::MountTypeError),
            (Some("fuse"), Code::MountTypeError),
            (Some("tmpfs"), Code::MountTypeError),
            (Some("-oexec"), Code::MountTypeError),
        ] {
            let mut p = params("srv:/x");
            p.vfs_type = vfs.map(Into::into);
            assert_eq!(
                conn(DomainType::PosixFs, &p).unwrap_err().code,
                code,
                "{vfs:?}"
            );
        }
        let mut p = params("srv:/x");
        p.vfs_type = Some("ext4".into());
        p.mnt_options = Some("rw,suid".into());
        assert_eq!(
            conn(DomainType::PosixFs, &p).unwrap_err().code,
            Code::InvalidParameterException
        );
    }

    #[test]
    fn localfs_connections() {
        let c = conn(DomainType::LocalFs, &params("/data/local_sd/")).unwrap();
        assert_eq!(
            c.mount_point(),
            Path::new("/rhev/data-center/mnt/_data_local__sd")
        );
        assert_eq!(
            c.kind(),
            &ConnectionKind::Local {
                path: "/data/local_sd".into()
            }
        );
        assert!(c.mount_plan().is_none());
        for bad in ["data", "/", "/a/../b", "/rhev/data-center/mnt/x"] {
            let err = conn(DomainType::LocalFs, &params(bad)).unwrap_err();
            assert_eq!(err.code, Code::MountParsingError, "{bad}: {err}");
        }
    }

    #[test]
    fn other_domain_types_are_refused() {
        for t in [DomainType::Iscsi, DomainType::Fcp, DomainType::Cifs] {
            let err = conn(t, &params("srv:/x")).unwrap_err();
            assert_eq!(err.code, Code::StorageDomainTypeError);
        }
    }

    #[test]
    fn plan_matches_table_sources() {
        let c = conn(DomainType::Nfs, &params("srv:/export")).unwrap();
        let plan = c.mount_plan().unwrap();
        let mut e = depot_os::mount::parse_mountinfo(
            b"40 1 0:50 / /rhev/data-center/mnt/srv:_export rw - nfs4 srv://export/ rw\n",
        )
        .unwrap()
        .remove(0);
        assert!(plan.matches(&e));
        e.source = "other:/export".into();
        assert!(!plan.matches(&e));
        let c = conn(DomainType::GlusterFs, &params("gl:/vol")).unwrap();
        e.source = "gl:vol".into();
        assert!(c.mount_plan().unwrap().matches(&e));
        e.source = "gl:/vol.rdma".into();
        assert!(c.mount_plan().unwrap().matches(&e));
    }
}
