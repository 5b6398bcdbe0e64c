//! Disaster recovery's mapping file (docs/dr.md): depot's own TOML and
//! the storage part of the oVirt Ansible role's var file
//! (`dr_import_storages`), both read into one typed, validated
//! [`Mapping`]. The storage code gets the typed values only; no TOML or
//! YAML goes further than this crate. No I/O: the caller gives the text.

mod ansible;
mod error;
pub mod journal;
mod mapping;
mod toml_format;

pub use ansible::{parse_ansible, STORAGES_KEY};
pub use error::{MappingError, Problem};
pub use mapping::{
    AbsPath, Address, Chap, ConnectionPair, ConnectionType, Endpoint, Format, HostId, Hosts, Iqn,
    LunId, Mapping, SitePool, HOST_ID_MAX, ISCSI_PORT,
};
pub use toml_format::{parse_toml, VERSION};

/// The largest mapping text read (a mapping of a few hundred domains is
/// tens of KiB).
pub const MAX_MAPPING_BYTES: usize = 1 << 20;

/// Reads a mapping in `format`.
pub fn parse(text: &str, format: Format) -> Result<Mapping, MappingError> {
    if text.len() > MAX_MAPPING_BYTES {
        return Err(MappingError::new(
            "file",
            Problem::Syntax(format!(
                "{} bytes, more than the {MAX_MAPPING_BYTES} a mapping may have",
                text.len()
            )),
        ));
    }
    match format {
        Format::Toml => parse_toml(text),
        Format::Ansible => parse_ansible(text),
    }
}

#[cfg(test)]
mod tests;
