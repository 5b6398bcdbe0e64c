//! The DR mapping the LOCALFS tests share (docs/dr.md): one LOCALFS
//! connection pair from `primary` to `secondary` holding `domains`, the
//! lost pool `primary_pool`, the recovery pool [`RECOVERY`], this host 3
//! with the lost site's hosts 1 and 2.

use std::path::Path;

/// The lost pool of docs/examples/dr-mapping.toml.
pub const PROD: &str = "5849b030-626e-47cb-ad90-3ce782d831b3";
/// The recovery pool of docs/examples/dr-mapping.toml.
pub const RECOVERY: &str = "a1f2c3d4-0e5f-4a6b-8c7d-9e0f1a2b3c4d";

pub fn localfs_mapping(
    primary_pool: &str,
    primary: &Path,
    secondary: &Path,
    domains: &[&str],
) -> String {
    let domains = domains
        .iter()
        .map(|d| format!("\"{d}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
version = 1
[pool.primary]
id = "{primary_pool}"
name = "Prod"
[pool.secondary]
id = "{RECOVERY}"
name = "Recovery"
[hosts]
this_host = 3
primary_site = [1, 2]
secondary_site = [3]

[[connections]]
name = "local"
type = "LOCALFS"
domains = [{domains}]
primary = {{ path = "{}" }}
secondary = {{ path = "{}" }}
"#,
        primary.display(),
        secondary.display()
    )
}
