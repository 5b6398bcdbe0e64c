//! The mapping as typed values: what the storage code gets. Nothing in
//! here came unchecked from a file: a [`Mapping`] is made only by
//! [`build`] (from either format's drafts), which applies every rule of
//! docs/dr.md ("Validation").

use std::collections::BTreeMap;
use std::fmt;

use depot_api::storage::{DomainType, Password, SdUuid, SpUuid};

use crate::error::{MappingError, Problem};

/// sanlock's host ids: 1 to 2000.
pub const HOST_ID_MAX: u16 = 2000;
/// iSCSI's port, when the entry gives none.
pub const ISCSI_PORT: u16 = 3260;

/// Which file the mapping came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// depot's own TOML (docs/dr.md).
    Toml,
    /// The oVirt Ansible role's var file (`dr_import_storages`).
    Ansible,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Toml => "toml",
            Format::Ansible => "ansible",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "toml" => Some(Format::Toml),
            "ansible" => Some(Format::Ansible),
            _ => None,
        }
    }
}

/// The storage types a mapping can fail over (VDSM's, without CIFS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConnectionType {
    Nfs,
    GlusterFs,
    PosixFs,
    Iscsi,
    Fcp,
    LocalFs,
}

impl ConnectionType {
    pub const ALL: [ConnectionType; 6] = [
        ConnectionType::Nfs,
        ConnectionType::GlusterFs,
        ConnectionType::PosixFs,
        ConnectionType::Iscsi,
        ConnectionType::Fcp,
        ConnectionType::LocalFs,
    ];

    /// VDSM's name (`StorageDomainType`).
    pub fn name(self) -> &'static str {
        self.domain_type().name()
    }

    /// Any case: `NFS`, `nfs`, `GlusterFS`, `iSCSI` (the Ansible role
    /// writes the engine's lower-case names).
    pub fn parse(s: &str) -> Result<ConnectionType, Problem> {
        let upper = s.trim().to_ascii_uppercase();
        Self::ALL
            .into_iter()
            .find(|t| t.name() == upper)
            .ok_or_else(|| Problem::UnknownType(s.to_string()))
    }

    pub fn domain_type(self) -> DomainType {
        match self {
            ConnectionType::Nfs => DomainType::Nfs,
            ConnectionType::GlusterFs => DomainType::GlusterFs,
            ConnectionType::PosixFs => DomainType::PosixFs,
            ConnectionType::Iscsi => DomainType::Iscsi,
            ConnectionType::Fcp => DomainType::Fcp,
            ConnectionType::LocalFs => DomainType::LocalFs,
        }
    }

    pub fn is_block(self) -> bool {
        matches!(self, ConnectionType::Iscsi | ConnectionType::Fcp)
    }
}

impl fmt::Display for ConnectionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A sanlock host id, 1 to 2000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId(u16);

impl HostId {
    pub fn new(id: i64) -> Result<HostId, String> {
        match u16::try_from(id) {
            Ok(n) if (1..=HOST_ID_MAX).contains(&n) => Ok(HostId(n)),
            _ => Err(format!("host id {id} is not in 1..={HOST_ID_MAX}")),
        }
    }

    pub fn get(self) -> u64 {
        u64::from(self.0)
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An absolute path, normalized: no `.` component, no repeated or
/// trailing slash, no `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AbsPath(String);

impl AbsPath {
    pub fn parse(s: &str) -> Result<AbsPath, String> {
        if s.is_empty() {
            return Err("empty".into());
        }
        if s.chars().any(|c| c.is_control()) {
            return Err("has a control character".into());
        }
        if !s.starts_with('/') {
            return Err("not an absolute path".into());
        }
        let mut parts = Vec::new();
        for c in s.split('/') {
            match c {
                "" | "." => {}
                ".." => return Err("has a '..' component".into()),
                c => parts.push(c),
            }
        }
        Ok(AbsPath(format!("/{}", parts.join("/"))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }
}

impl fmt::Display for AbsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A server: a host name, an IPv4 address, or an IPv6 address (kept
/// without brackets).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(String);

impl Address {
    pub fn parse(s: &str) -> Result<Address, String> {
        let s = s.trim();
        if let Some(inner) = s.strip_prefix('[').and_then(|i| i.strip_suffix(']')) {
            return inner
                .parse::<std::net::Ipv6Addr>()
                .map(|_| Address(inner.to_string()))
                .map_err(|_| format!("{inner:?} is not an IPv6 address"));
        }
        if s.parse::<std::net::Ipv6Addr>().is_ok() {
            return Ok(Address(s.to_string()));
        }
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if ok {
            Ok(Address(s.to_ascii_lowercase()))
        } else {
            Err(format!("{s:?} is not a host name or an IP address"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// As it goes before `:` in a connection string (IPv6 in brackets).
    pub fn in_connection(&self) -> String {
        if self.0.contains(':') {
            format!("[{}]", self.0)
        } else {
            self.0.clone()
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An iSCSI target name (`iqn.`, `eui.` or `naa.`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Iqn(String);

impl Iqn {
    pub fn parse(s: &str) -> Result<Iqn, String> {
        let s = s.trim();
        let lower = s.to_ascii_lowercase();
        let prefixed = ["iqn.", "eui.", "naa."]
            .iter()
            .any(|p| lower.starts_with(p));
        if !prefixed || s.len() > 223 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "{s:?} is not an iSCSI target name (iqn., eui. or naa.)"
            ));
        }
        Ok(Iqn(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A LUN's WWID as multipath names it (`36001405...`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LunId(String);

impl LunId {
    pub fn parse(s: &str) -> Result<LunId, String> {
        let s = s.trim();
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
        if ok {
            Ok(LunId(s.to_string()))
        } else {
            Err(format!("{s:?} is not a LUN WWID"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One side of a connection pair: where the storage is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Nfs {
        address: Address,
        path: AbsPath,
    },
    /// `volume` is the volume name as a path (`/data`, `/data/sub`).
    GlusterFs {
        address: Address,
        volume: AbsPath,
    },
    /// `address` is absent for a local device (`/dev/...`).
    PosixFs {
        address: Option<Address>,
        path: AbsPath,
        vfs_type: String,
    },
    /// `luns` is empty only for an Ansible entry, which lists none: the
    /// domain's VG is found by its UUID.
    Iscsi {
        address: Address,
        port: u16,
        targets: Vec<Iqn>,
        luns: Vec<LunId>,
        /// The CHAP credentials of the login, if the target wants them.
        chap: Option<Chap>,
    },
    /// `luns` as for iSCSI.
    Fcp {
        luns: Vec<LunId>,
    },
    LocalFs {
        path: AbsPath,
    },
}

/// An iSCSI side's CHAP credentials: both or neither. The password
/// never prints (`Debug` shows `***`), and no report, journal or message
/// names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chap {
    pub username: String,
    pub password: Password,
}

/// By the username only (consistent with `Eq`: equal credentials have
/// equal usernames); the password is not hashed, as it is never printed.
impl std::hash::Hash for Chap {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.username.hash(state);
    }
}

impl Endpoint {
    /// The same storage, whatever the credentials of its login: what the
    /// rules against duplicates and self-failover compare.
    pub fn same_place(&self, other: &Endpoint) -> bool {
        self.without_chap() == other.without_chap()
    }

    fn without_chap(&self) -> Endpoint {
        match self {
            Endpoint::Iscsi {
                address,
                port,
                targets,
                luns,
                ..
            } => Endpoint::Iscsi {
                address: address.clone(),
                port: *port,
                targets: targets.clone(),
                luns: luns.clone(),
                chap: None,
            },
            other => other.clone(),
        }
    }

    pub fn connection_type(&self) -> ConnectionType {
        match self {
            Endpoint::Nfs { .. } => ConnectionType::Nfs,
            Endpoint::GlusterFs { .. } => ConnectionType::GlusterFs,
            Endpoint::PosixFs { .. } => ConnectionType::PosixFs,
            Endpoint::Iscsi { .. } => ConnectionType::Iscsi,
            Endpoint::Fcp { .. } => ConnectionType::Fcp,
            Endpoint::LocalFs { .. } => ConnectionType::LocalFs,
        }
    }

    /// The connection string as `connectStorageServer` takes it
    /// (`server:/path`, the LOCALFS directory, the iSCSI portal host); an
    /// FCP connection has none (`""`).
    pub fn connection(&self) -> String {
        match self {
            Endpoint::Nfs { address, path } => format!("{}:{path}", address.in_connection()),
            Endpoint::GlusterFs { address, volume } => {
                format!("{}:{volume}", address.in_connection())
            }
            Endpoint::PosixFs {
                address: Some(a),
                path,
                ..
            } => format!("{}:{path}", a.in_connection()),
            Endpoint::PosixFs {
                address: None,
                path,
                ..
            } => path.to_string(),
            Endpoint::Iscsi { address, .. } => address.to_string(),
            Endpoint::Fcp { .. } => String::new(),
            Endpoint::LocalFs { path } => path.to_string(),
        }
    }

    /// A short description for reports and messages.
    pub fn describe(&self) -> String {
        match self {
            Endpoint::Iscsi {
                address,
                port,
                targets,
                luns,
                chap,
            } => format!(
                "{}:{port} {}{}{}",
                address.in_connection(),
                targets
                    .iter()
                    .map(Iqn::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
                describe_luns(luns),
                if chap.is_some() { " (CHAP)" } else { "" }
            ),
            Endpoint::Fcp { luns } => format!("FCP{}", describe_luns(luns)),
            Endpoint::PosixFs { vfs_type, .. } => format!("{} ({vfs_type})", self.connection()),
            _ => self.connection(),
        }
    }
}

fn describe_luns(luns: &[LunId]) -> String {
    if luns.is_empty() {
        String::new()
    } else {
        format!(
            " LUNs {}",
            luns.iter().map(LunId::as_str).collect::<Vec<_>>().join(",")
        )
    }
}

/// One primary connection and the secondary it fails over to, with the
/// domains on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionPair {
    name: String,
    primary: Endpoint,
    secondary: Endpoint,
    domains: Vec<SdUuid>,
    backup: bool,
}

impl ConnectionPair {
    /// The entry's name, as messages and reports call it.
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn connection_type(&self) -> ConnectionType {
        self.primary.connection_type()
    }
    pub fn primary(&self) -> &Endpoint {
        &self.primary
    }
    pub fn secondary(&self) -> &Endpoint {
        &self.secondary
    }
    /// The domains expected on this storage, by UUID. Empty only for an
    /// Ansible file-domain entry, which names its domain by name only:
    /// what is on the connection is reported then.
    pub fn domains(&self) -> &[SdUuid] {
        &self.domains
    }
    /// A backup domain (docs/backup.md): never to become the master.
    pub fn backup(&self) -> bool {
        self.backup
    }
}

/// A data center (pool) on one site. At least one of the two is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SitePool {
    pub id: Option<SpUuid>,
    pub name: Option<String>,
}

/// The hosts of both sites, by sanlock host id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hosts {
    this_host: Option<HostId>,
    primary_site: Vec<HostId>,
    secondary_site: Vec<HostId>,
}

impl Hosts {
    /// This host's id (a host of the secondary site). When absent, the
    /// id this host holds in each domain's lockspace stands for it.
    pub fn this_host(&self) -> Option<HostId> {
        self.this_host
    }
    /// The lost site's hosts (at failover): the fence check wants them
    /// dead.
    pub fn primary_site(&self) -> &[HostId] {
        &self.primary_site
    }
    pub fn secondary_site(&self) -> &[HostId] {
        &self.secondary_site
    }
}

/// A checked mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    format: Format,
    primary_pool: SitePool,
    secondary_pool: SitePool,
    hosts: Hosts,
    connections: Vec<ConnectionPair>,
    warnings: Vec<String>,
}

impl Mapping {
    pub fn format(&self) -> Format {
        self.format
    }
    /// The pool that is lost (the failover's source).
    pub fn primary_pool(&self) -> &SitePool {
        &self.primary_pool
    }
    /// The recovery pool.
    pub fn secondary_pool(&self) -> &SitePool {
        &self.secondary_pool
    }
    pub fn hosts(&self) -> &Hosts {
        &self.hosts
    }
    pub fn connections(&self) -> &[ConnectionPair] {
        &self.connections
    }
    /// What was read but not used (the Ansible file's other keys).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The failback mapping: every primary becomes its secondary and back,
    /// the pools and the sites' hosts swap. This host's id is dropped: it
    /// is a host of the other site, and failback runs on a host of the
    /// old primary site (its id is then the one it holds in each
    /// domain's lockspace, or given in a mapping of its own).
    pub fn reversed(&self) -> Mapping {
        Mapping {
            format: self.format,
            primary_pool: self.secondary_pool.clone(),
            secondary_pool: self.primary_pool.clone(),
            hosts: Hosts {
                this_host: None,
                primary_site: self.hosts.secondary_site.clone(),
                secondary_site: self.hosts.primary_site.clone(),
            },
            connections: self
                .connections
                .iter()
                .map(|c| ConnectionPair {
                    name: c.name.clone(),
                    primary: c.secondary.clone(),
                    secondary: c.primary.clone(),
                    domains: c.domains.clone(),
                    backup: c.backup,
                })
                .collect(),
            warnings: self.warnings.clone(),
        }
    }

    /// The mapping with its recovery pool's id given by the caller (the
    /// verbs' `recoveryPoolID`): an Ansible var file knows the data
    /// centers by name only, so without it step 4 has no pool to recover
    /// into. Refused (naming `entry`, the parameter) where it contradicts
    /// the mapping: another id already named for the recovery pool.
    pub fn with_recovery_pool(mut self, id: SpUuid, entry: &str) -> Result<Mapping, MappingError> {
        if let Some(named) = self.secondary_pool.id.filter(|named| *named != id) {
            let why = format!(
                "{id} is not the recovery pool the mapping names ({named}): give one of them, \
                 or the same"
            );
            return Err(MappingError::new(entry, Problem::bad("id", why)));
        }
        self.secondary_pool.id = Some(id);
        Ok(self)
    }
}

// ---- drafts: what a format read, before the rules ----

/// One side as a format read it.
#[derive(Debug, Clone, Default)]
pub(crate) struct DraftEndpoint {
    pub address: Option<String>,
    pub path: Option<String>,
    pub vfs_type: Option<String>,
    pub port: Option<i64>,
    pub targets: Vec<String>,
    pub luns: Vec<String>,
    /// The domain's name on this site (Ansible), for the entry's label.
    pub name: Option<String>,
    /// iSCSI CHAP.
    pub username: Option<String>,
    pub password: Option<Password>,
}

/// One entry as a format read it.
#[derive(Debug, Clone, Default)]
pub(crate) struct DraftPair {
    /// How messages name it (`connection 'data'`).
    pub entry: String,
    pub kind: Option<String>,
    pub primary: Option<DraftEndpoint>,
    pub secondary: Option<DraftEndpoint>,
    pub domains: Vec<String>,
    pub backup: bool,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct DraftPool {
    pub id: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Draft {
    pub primary_pool: DraftPool,
    pub secondary_pool: DraftPool,
    pub this_host: Option<i64>,
    pub primary_site: Vec<i64>,
    pub secondary_site: Vec<i64>,
    pub pairs: Vec<DraftPair>,
    pub warnings: Vec<String>,
}

/// What differs between the formats' rules.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    pub format: Format,
    /// Block entries may leave out their LUNs (the Ansible file lists
    /// none; its dr_domain_id finds the VG).
    pub luns_optional: bool,
    /// File entries may leave out their domains (the Ansible file names
    /// them by name only).
    pub file_domains_optional: bool,
    /// The pool must have an id (depot's file); the Ansible file knows
    /// the data centers by name only.
    pub pool_id_required: bool,
}

/// Applies every rule; the first broken one is the answer, naming its
/// entry.
pub(crate) fn build(draft: Draft, rules: Rules) -> Result<Mapping, MappingError> {
    // The entries first: an Ansible file's pools come from its entries,
    // so an entry's own problem (a missing secondary) is the one to name.
    if draft.pairs.is_empty() {
        return Err(MappingError::new("file", Problem::Missing("connections")));
    }
    let mut connections = Vec::with_capacity(draft.pairs.len());
    for d in &draft.pairs {
        connections.push(pair(d, rules)?);
    }
    check_unique(&draft.pairs, &connections)?;
    let primary_pool = pool(&draft.primary_pool, "pool.primary", rules)?;
    let secondary_pool = pool(&draft.secondary_pool, "pool.secondary", rules)?;
    let hosts = hosts(&draft)?;
    Ok(Mapping {
        format: rules.format,
        primary_pool,
        secondary_pool,
        hosts,
        connections,
        warnings: draft.warnings,
    })
}

fn pool(d: &DraftPool, entry: &str, rules: Rules) -> Result<SitePool, MappingError> {
    let id =
        match d.id.as_deref() {
            Some(s) => Some(s.trim().parse::<SpUuid>().map_err(|e| {
                MappingError::new(entry, Problem::bad("id", format!("{s:?}: {e}")))
            })?),
            None if rules.pool_id_required => {
                return Err(MappingError::new(entry, Problem::Missing("id")))
            }
            None => None,
        };
    let name = d.name.as_ref().map(|n| n.trim().to_string());
    if name.as_deref() == Some("") {
        return Err(MappingError::new(entry, Problem::Missing("name")));
    }
    if id.is_none() && name.is_none() {
        return Err(MappingError::new(entry, Problem::Missing("name")));
    }
    Ok(SitePool { id, name })
}

fn hosts(d: &Draft) -> Result<Hosts, MappingError> {
    let id = |n: i64| {
        HostId::new(n).map_err(|why| MappingError::new("hosts", Problem::bad("host id", why)))
    };
    let list = |ids: &[i64], field: &str| -> Result<Vec<HostId>, MappingError> {
        let mut out: Vec<HostId> = Vec::new();
        for &n in ids {
            let h = id(n)?;
            if out.contains(&h) {
                return Err(MappingError::new(
                    "hosts",
                    Problem::bad(field, format!("host id {h} is listed twice")),
                ));
            }
            out.push(h);
        }
        Ok(out)
    };
    let primary_site = list(&d.primary_site, "primary_site")?;
    let secondary_site = list(&d.secondary_site, "secondary_site")?;
    if let Some(h) = primary_site.iter().find(|h| secondary_site.contains(h)) {
        return Err(MappingError::new(
            "hosts",
            Problem::bad("primary_site", format!("host id {h} is in both sites")),
        ));
    }
    let this_host = d.this_host.map(id).transpose()?;
    if let Some(h) = this_host {
        if primary_site.contains(&h) {
            return Err(MappingError::new(
                "hosts",
                Problem::bad(
                    "this_host",
                    format!("host id {h} is a host of the primary site, the site that is lost"),
                ),
            ));
        }
    }
    Ok(Hosts {
        this_host,
        primary_site,
        secondary_site,
    })
}

fn pair(d: &DraftPair, rules: Rules) -> Result<ConnectionPair, MappingError> {
    let err = |p: Problem| MappingError::new(d.entry.clone(), p);
    let kind = ConnectionType::parse(d.kind.as_deref().ok_or(err(Problem::Missing("type")))?)
        .map_err(err)?;
    let primary_d = d.primary.as_ref().ok_or(err(Problem::Missing("primary")))?;
    let secondary_d = d.secondary.as_ref().ok_or(err(Problem::MissingSecondary))?;
    let primary = endpoint(kind, primary_d, rules)
        .map_err(|p| MappingError::new(format!("{} primary", d.entry), p))?;
    let secondary = endpoint(kind, secondary_d, rules)
        .map_err(|p| MappingError::new(format!("{} secondary", d.entry), p))?;
    // An FCP side without LUNs (the Ansible form) is "the SAN this host
    // sees": both sides are alike, the domain's UUID tells them apart.
    let fcp_by_domain = matches!(&primary, Endpoint::Fcp { luns } if luns.is_empty());
    if primary.same_place(&secondary) && !fcp_by_domain {
        return Err(err(Problem::SecondaryIsPrimary(primary.describe())));
    }
    let mut domains = Vec::with_capacity(d.domains.len());
    for s in &d.domains {
        let sd = s.trim().parse::<SdUuid>().map_err(|e| {
            err(Problem::bad(
                "domains",
                format!("{s:?} is not a domain UUID: {e}"),
            ))
        })?;
        if domains.contains(&sd) {
            return Err(err(Problem::DuplicateDomain {
                sd,
                other: "this entry".into(),
            }));
        }
        domains.push(sd);
    }
    let optional = !kind.is_block() && rules.file_domains_optional;
    if domains.is_empty() && !optional {
        return Err(err(Problem::Missing(if rules.format == Format::Ansible {
            "dr_domain_id"
        } else {
            "domains"
        })));
    }
    Ok(ConnectionPair {
        name: d.entry.clone(),
        primary,
        secondary,
        domains,
        backup: d.backup,
    })
}

fn required<'a>(v: &'a Option<String>, field: &'static str) -> Result<&'a str, Problem> {
    match v.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(Problem::Missing(field)),
    }
}

fn address(v: &Option<String>) -> Result<Address, Problem> {
    Address::parse(required(v, "address")?).map_err(|why| Problem::bad("address", why))
}

fn abs_path(v: &Option<String>, field: &'static str) -> Result<AbsPath, Problem> {
    let s = required(v, field)?;
    AbsPath::parse(s).map_err(|why| Problem::PathEscape {
        field,
        path: s.to_string(),
        why,
    })
}

/// CHAP: a username and a password, or neither. The problem names the
/// field that is missing, never the value of the other.
fn chap(d: &DraftEndpoint) -> Result<Option<Chap>, Problem> {
    match (&d.username, &d.password) {
        (None, None) => Ok(None),
        (Some(u), Some(p)) if !u.trim().is_empty() && !p.expose().is_empty() => Ok(Some(Chap {
            username: u.trim().to_string(),
            password: p.clone(),
        })),
        (Some(u), _) if u.trim().is_empty() => Err(Problem::Missing("username")),
        (None, _) => Err(Problem::Missing("username")),
        (Some(_), _) => Err(Problem::Missing("password")),
    }
}

fn luns(d: &DraftEndpoint) -> Result<Vec<LunId>, Problem> {
    let mut out = Vec::new();
    for s in &d.luns {
        let l = LunId::parse(s).map_err(|why| Problem::bad("luns", why))?;
        if !out.contains(&l) {
            out.push(l);
        }
    }
    Ok(out)
}

/// Directories that are not a place for a domain's files.
const NOT_DIRECTORIES: &[&str] = &["/dev", "/proc", "/sys"];

fn endpoint(kind: ConnectionType, d: &DraftEndpoint, rules: Rules) -> Result<Endpoint, Problem> {
    if kind != ConnectionType::Iscsi && (d.username.is_some() || d.password.is_some()) {
        return Err(Problem::bad(
            "username",
            "only an iSCSI connection logs in with CHAP credentials",
        ));
    }
    Ok(match kind {
        ConnectionType::Nfs => Endpoint::Nfs {
            address: address(&d.address)?,
            path: abs_path(&d.path, "path")?,
        },
        ConnectionType::GlusterFs => {
            // The engine writes a gluster volume with or without its
            // leading slash; a volume name is not a relative path.
            let raw = required(&d.path, "path")?;
            let as_path = if raw.starts_with('/') {
                raw.to_string()
            } else {
                format!("/{raw}")
            };
            let volume = AbsPath::parse(&as_path).map_err(|why| Problem::PathEscape {
                field: "path",
                path: raw.to_string(),
                why,
            })?;
            if volume.is_root() {
                return Err(Problem::Missing("path"));
            }
            Endpoint::GlusterFs {
                address: address(&d.address)?,
                volume,
            }
        }
        ConnectionType::PosixFs => Endpoint::PosixFs {
            address: match d.address.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(_) => Some(address(&d.address)?),
            },
            path: abs_path(&d.path, "path")?,
            vfs_type: required(&d.vfs_type, "vfs_type")?.to_string(),
        },
        ConnectionType::LocalFs => local(d)?,
        ConnectionType::Iscsi => {
            let port = match d.port {
                None => ISCSI_PORT,
                Some(p) => u16::try_from(p)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| Problem::bad("port", format!("{p} is not a TCP port")))?,
            };
            let address = address(&d.address)?;
            let mut targets = Vec::new();
            for t in &d.targets {
                let t = Iqn::parse(t).map_err(|why| Problem::bad("target", why))?;
                if !targets.contains(&t) {
                    targets.push(t);
                }
            }
            if targets.is_empty() {
                return Err(Problem::IscsiNoTarget);
            }
            let luns = luns(d)?;
            if luns.is_empty() && !rules.luns_optional {
                return Err(Problem::NoLuns("iSCSI"));
            }
            Endpoint::Iscsi {
                address,
                port,
                targets,
                luns,
                chap: chap(d)?,
            }
        }
        ConnectionType::Fcp => {
            let luns = luns(d)?;
            if luns.is_empty() && !rules.luns_optional {
                return Err(Problem::NoLuns("FCP"));
            }
            Endpoint::Fcp { luns }
        }
    })
}

/// A LOCALFS side: a local directory, nothing else.
fn local(d: &DraftEndpoint) -> Result<Endpoint, Problem> {
    if let Some(a) = d.address.as_deref().filter(|a| !a.trim().is_empty()) {
        return Err(Problem::LocalNotDirectory(format!(
            "it has an address ({a:?}); give the local path only"
        )));
    }
    let raw = required(&d.path, "path")?;
    if raw.contains(':') && !raw.starts_with('/') {
        return Err(Problem::LocalNotDirectory(format!(
            "{raw:?} is a remote spec, not a local path"
        )));
    }
    let path = abs_path(&d.path, "path")?;
    if path.is_root() {
        return Err(Problem::LocalNotDirectory("\"/\" is the root".into()));
    }
    if let Some(top) = NOT_DIRECTORIES
        .iter()
        .find(|t| path.as_str() == **t || path.as_str().starts_with(&format!("{t}/")))
    {
        return Err(Problem::LocalNotDirectory(format!(
            "{path} is under {top}, not a directory of files"
        )));
    }
    Ok(Endpoint::LocalFs { path })
}

/// The same domain twice, the same primary twice, the same secondary
/// twice.
fn check_unique(drafts: &[DraftPair], pairs: &[ConnectionPair]) -> Result<(), MappingError> {
    let mut domains: BTreeMap<SdUuid, &str> = BTreeMap::new();
    for (d, p) in drafts.iter().zip(pairs) {
        for sd in &p.domains {
            if let Some(other) = domains.insert(*sd, &d.entry) {
                return Err(MappingError::new(
                    d.entry.clone(),
                    Problem::DuplicateDomain {
                        sd: *sd,
                        other: other.to_string(),
                    },
                ));
            }
        }
    }
    for (i, p) in pairs.iter().enumerate() {
        for earlier in &pairs[..i] {
            // Two block entries on the same SAN without LUN lists (the
            // Ansible form) are told apart by their domains.
            let block_by_domain = p.connection_type().is_block()
                && matches!(
                    (&p.primary, &earlier.primary),
                    (Endpoint::Fcp { luns: a }, Endpoint::Fcp { luns: b }) if a.is_empty() && b.is_empty()
                )
                || matches!(
                    (&p.primary, &earlier.primary),
                    (Endpoint::Iscsi { luns: a, .. }, Endpoint::Iscsi { luns: b, .. }) if a.is_empty() && b.is_empty()
                );
            if block_by_domain {
                continue;
            }
            if p.primary.same_place(&earlier.primary) {
                return Err(MappingError::new(
                    p.name.clone(),
                    Problem::DuplicatePrimary(earlier.name.clone()),
                ));
            }
            if p.secondary.same_place(&earlier.secondary) {
                return Err(MappingError::new(
                    p.name.clone(),
                    Problem::DuplicateSecondary(earlier.name.clone()),
                ));
            }
        }
    }
    Ok(())
}
