//! The oVirt Ansible role's var file (`roles/disaster_recovery`, the file
//! `ovirt-dr generate` writes): its `dr_import_storages` list, read into
//! the same typed mapping as depot's own file. Every other key of the file
//! (engine URLs, cluster, network, role mappings, ...) is for the engine,
//! not for storage: ignored, and named in a warning. docs/dr.md has the
//! table of keys.

use depot_api::storage::Password;
use serde_norway::Value;

use crate::error::{MappingError, Problem};
use crate::mapping::{build, Draft, DraftEndpoint, DraftPair, DraftPool, Format, Mapping, Rules};

/// The list this reader takes.
pub const STORAGES_KEY: &str = "dr_import_storages";

/// Keys of an entry that are the engine's settings of the domain: known,
/// not needed for storage, so not warned about.
const ENGINE_SETTINGS: &[&str] = &[
    "dr_wipe_after_delete",
    "dr_critical_space_action_blocker",
    "dr_warning_low_space",
    "dr_discard_after_delete",
    "dr_storage_domain_type",
];

/// Per-site keys that are known and not read: the master flag (depot
/// reconstructs the master itself).
const SITE_IGNORED: &[&str] = &["master_domain"];

/// Per-site keys that are read.
const SITE_READ: &[&str] = &[
    "name", "dc_name", "address", "path", "vfs_type", "port", "target", "username", "password",
];

/// Reads the role's var file.
pub fn parse_ansible(text: &str) -> Result<Mapping, MappingError> {
    let doc: Value = serde_norway::from_str(text)
        .map_err(|e| MappingError::new("file", Problem::Syntax(e.to_string())))?;
    let Value::Mapping(top) = doc else {
        return Err(MappingError::new(
            "file",
            Problem::Syntax("the file is not a mapping of variables".into()),
        ));
    };
    let mut draft = Draft::default();
    let mut others = Vec::new();
    let mut storages = None;
    for (k, v) in &top {
        let key = k.as_str().map_or_else(|| format!("{k:?}"), str::to_string);
        if key == STORAGES_KEY {
            storages = Some(v);
        } else {
            others.push(key);
        }
    }
    if !others.is_empty() {
        draft.warnings.push(format!(
            "ignored (not storage, the engine's part of the file): {}",
            others.join(", ")
        ));
    }
    let Some(storages) = storages else {
        return Err(MappingError::new("file", Problem::Missing(STORAGES_KEY)));
    };
    let Value::Sequence(entries) = storages else {
        return Err(MappingError::new(
            STORAGES_KEY,
            Problem::Syntax("not a list".into()),
        ));
    };
    let mut dc: [Option<(String, String)>; 2] = [None, None];
    for (i, entry) in entries.iter().enumerate() {
        let pair = entry_draft(i, entry, &mut draft.warnings)?;
        for (side, slot) in ["primary", "secondary"].into_iter().zip(dc.iter_mut()) {
            let field = format!("dr_{side}_dc_name");
            let name = text_of(entry, &field).map_err(|p| MappingError::new(&pair.entry, p))?;
            let Some(name) = name else {
                // A missing secondary is the entry's problem, said below.
                if side == "secondary" && pair.secondary.is_none() {
                    continue;
                }
                return Err(MappingError::new(
                    &pair.entry,
                    Problem::bad(field, "missing: the data center of the domain on that site"),
                ));
            };
            match slot {
                None => *slot = Some((name, pair.entry.clone())),
                Some((first, where_)) if *first != name => {
                    return Err(MappingError::new(
                        &pair.entry,
                        Problem::bad(
                            field,
                            format!(
                                "{name:?}, where {where_} has {first:?}: a host serves one pool, \
                                 so every domain of a mapping is in one data center per site"
                            ),
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        draft.pairs.push(pair);
    }
    let [primary_dc, secondary_dc] = dc;
    draft.primary_pool = DraftPool {
        id: None,
        name: primary_dc.map(|(n, _)| n),
    };
    draft.secondary_pool = DraftPool {
        id: None,
        name: secondary_dc.map(|(n, _)| n),
    };
    if draft.pairs.is_empty() {
        return Err(MappingError::new(STORAGES_KEY, Problem::Missing("entries")));
    }
    build(
        draft,
        Rules {
            format: Format::Ansible,
            luns_optional: true,
            file_domains_optional: true,
            pool_id_required: false,
        },
    )
}

/// One entry of `dr_import_storages`.
fn entry_draft(
    i: usize,
    entry: &Value,
    warnings: &mut Vec<String>,
) -> Result<DraftPair, MappingError> {
    let Value::Mapping(map) = entry else {
        return Err(MappingError::new(
            format!("{STORAGES_KEY}[{i}]"),
            Problem::Syntax("an entry is not a mapping".into()),
        ));
    };
    let label = match text_of(entry, "dr_primary_name") {
        Ok(Some(n)) => format!("{STORAGES_KEY}[{i}] ('{n}')"),
        _ => format!("{STORAGES_KEY}[{i}]"),
    };
    let err = |p: Problem| MappingError::new(label.clone(), p);
    let mut unknown = Vec::new();
    for k in map.keys() {
        let key = k.as_str().unwrap_or("");
        if !known_key(key) {
            unknown.push(format!("{k:?}").trim_matches('"').to_string());
        }
    }
    if !unknown.is_empty() {
        warnings.push(format!(
            "{label}: unknown keys ignored: {}",
            unknown.join(", ")
        ));
    }
    if let Some(t) = text_of(entry, "dr_storage_domain_type").map_err(err)? {
        if t.eq_ignore_ascii_case("export") {
            return Err(err(Problem::bad(
                "dr_storage_domain_type",
                "an export domain is not part of disaster recovery (the role's validator refuses it too)",
            )));
        }
    }
    let kind = text_of(entry, "dr_domain_type").map_err(err)?;
    let domains = text_of(entry, "dr_domain_id")
        .map_err(err)?
        .into_iter()
        .collect();
    let backup = match text_of(entry, "dr_backup").map_err(err)? {
        None => false,
        Some(b) => parse_bool(&b)
            .ok_or_else(|| err(Problem::bad("dr_backup", format!("{b:?} is not a boolean"))))?,
    };
    let primary = side(entry, "primary").map_err(err)?;
    let secondary = side(entry, "secondary").map_err(err)?;
    Ok(DraftPair {
        entry: label.clone(),
        kind,
        primary,
        secondary,
        domains,
        backup,
    })
}

fn known_key(key: &str) -> bool {
    if matches!(key, "dr_domain_type" | "dr_domain_id" | "dr_backup")
        || ENGINE_SETTINGS.contains(&key)
    {
        return true;
    }
    ["dr_primary_", "dr_secondary_"].iter().any(|p| {
        key.strip_prefix(p)
            .is_some_and(|rest| SITE_READ.contains(&rest) || SITE_IGNORED.contains(&rest))
    })
}

/// One site's keys; `None` when the entry has none of the keys that say
/// where the storage is (the generator leaves a secondary's values empty
/// for the admin to fill in: `dr_secondary_address: # yy.yy.yy.yy`).
fn side(entry: &Value, site: &str) -> Result<Option<DraftEndpoint>, Problem> {
    let key = |k: &str| format!("dr_{site}_{k}");
    let targets = match entry.get(key("target")) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(seq)) => {
            let mut out = Vec::new();
            for v in seq {
                out.push(
                    scalar(v)
                        .ok_or_else(|| Problem::bad(key("target"), "a target is not a string"))?,
                );
            }
            out
        }
        Some(v) => {
            vec![scalar(v).ok_or_else(|| Problem::bad(key("target"), "not a string or a list"))?]
        }
    };
    let port = match text_of(entry, &key("port"))? {
        None => None,
        Some(p) => Some(
            p.trim()
                .parse::<i64>()
                .map_err(|_| Problem::bad(key("port"), format!("{p:?} is not a number")))?,
        ),
    };
    let d = DraftEndpoint {
        address: text_of(entry, &key("address"))?,
        path: text_of(entry, &key("path"))?,
        vfs_type: text_of(entry, &key("vfs_type"))?,
        port,
        targets,
        luns: Vec::new(),
        name: text_of(entry, &key("name"))?,
        username: text_of(entry, &key("username"))?,
        // A password is taken as written (spaces are a password's own).
        password: password_of(entry, &key("password"))?,
    };
    let where_ = d.address.is_some() || d.path.is_some() || !d.targets.is_empty();
    // An FCP side is only its name and data center.
    let fcp = text_of(entry, "dr_domain_type")?.is_some_and(|t| t.eq_ignore_ascii_case("fcp"));
    let fcp_side = fcp && (d.name.is_some() || text_of(entry, &key("dc_name"))?.is_some());
    Ok((where_ || fcp_side).then_some(d))
}

/// A scalar value as text (YAML writes `True`, `3260`, `"x"` alike);
/// `None` for null or a missing key.
fn text_of(entry: &Value, key: &str) -> Result<Option<String>, Problem> {
    match entry.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => scalar(v)
            .map(|s| (!s.trim().is_empty()).then(|| s.trim().to_string()))
            .ok_or_else(|| Problem::bad(key, "not a single value")),
    }
}

/// A password as written; `None` for null, a missing key or an empty
/// value. The problem never quotes it.
fn password_of(entry: &Value, key: &str) -> Result<Option<Password>, Problem> {
    match entry.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match scalar(v) {
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => Ok(Some(Password::new(s))),
            None => Err(Problem::bad(key, "not a single value")),
        },
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" => Some(true),
        "false" | "no" => Some(false),
        _ => None,
    }
}
