//! depot's own mapping file (TOML, docs/dr.md "The mapping file"). Every
//! key is known: an unknown one (a typo) is refused, never skipped.

use depot_api::storage::Password;
use serde::Deserialize;

use crate::error::{MappingError, Problem};
use crate::mapping::{build, Draft, DraftEndpoint, DraftPair, DraftPool, Format, Mapping, Rules};

/// The version of the format this depot reads.
pub const VERSION: i64 = 1;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: i64,
    pool: Pools,
    #[serde(default)]
    hosts: Hosts,
    #[serde(default)]
    connections: Vec<Connection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pools {
    primary: Pool,
    secondary: Pool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pool {
    id: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Hosts {
    this_host: Option<i64>,
    #[serde(default)]
    primary_site: Vec<i64>,
    #[serde(default)]
    secondary_site: Vec<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Connection {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    domains: Vec<String>,
    #[serde(default)]
    backup: bool,
    primary: Option<Side>,
    secondary: Option<Side>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Side {
    address: Option<String>,
    path: Option<String>,
    vfs_type: Option<String>,
    port: Option<i64>,
    #[serde(default)]
    targets: Vec<String>,
    #[serde(default)]
    luns: Vec<String>,
    /// iSCSI CHAP.
    username: Option<String>,
    password: Option<Password>,
}

impl From<Side> for DraftEndpoint {
    fn from(s: Side) -> Self {
        DraftEndpoint {
            address: s.address,
            path: s.path,
            vfs_type: s.vfs_type,
            port: s.port,
            targets: s.targets,
            luns: s.luns,
            name: None,
            username: s.username,
            password: s.password,
        }
    }
}

/// A parse error as a message: where and what, never the text around it
/// (toml's own rendering quotes the line, which may hold a CHAP
/// password).
fn syntax(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {}", e.message())
        }
        None => e.message().to_string(),
    }
}

/// Reads depot's mapping file.
pub fn parse_toml(text: &str) -> Result<Mapping, MappingError> {
    let file: File = toml::from_str(text)
        .map_err(|e| MappingError::new("file", Problem::Syntax(syntax(text, &e))))?;
    if file.version != VERSION {
        return Err(MappingError::new("file", Problem::Version(file.version)));
    }
    let mut names: Vec<&str> = Vec::new();
    for c in &file.connections {
        if c.name.trim().is_empty() {
            return Err(MappingError::new("connection ''", Problem::Missing("name")));
        }
        if names.contains(&c.name.as_str()) {
            return Err(MappingError::new(
                format!("connection '{}'", c.name),
                Problem::bad("name", "two connections have this name"),
            ));
        }
        names.push(&c.name);
    }
    let draft = Draft {
        primary_pool: DraftPool {
            id: file.pool.primary.id,
            name: file.pool.primary.name,
        },
        secondary_pool: DraftPool {
            id: file.pool.secondary.id,
            name: file.pool.secondary.name,
        },
        this_host: file.hosts.this_host,
        primary_site: file.hosts.primary_site,
        secondary_site: file.hosts.secondary_site,
        pairs: file
            .connections
            .into_iter()
            .map(|c| DraftPair {
                entry: format!("connection '{}'", c.name),
                kind: Some(c.kind),
                primary: c.primary.map(Into::into),
                secondary: c.secondary.map(Into::into),
                domains: c.domains,
                backup: c.backup,
            })
            .collect(),
        warnings: Vec::new(),
    };
    build(
        draft,
        Rules {
            format: Format::Toml,
            luns_optional: false,
            file_domains_optional: false,
            pool_id_required: true,
        },
    )
}
