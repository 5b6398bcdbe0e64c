//! What a new storage domain is asked to be ([`CreateDomain`]) and the
//! rules both kinds follow when making one (the format version, the lease
//! alignment). File domains (file/) and block domains (block/) both
//! build from it; it imports neither.

use depot_api::storage::{DomainClass, DomainType, SdUuid};

const MIB: u64 = 1 << 20;

/// The only format version depot creates.
pub const VERSION: i64 = 5;

/// What `StorageDomain.create` asks for, after the API layer's typing.
#[derive(Debug, Clone)]
pub struct CreateDomain {
    pub sd: SdUuid,
    pub domain_type: DomainType,
    pub class: DomainClass,
    pub description: String,
    /// The connection the domain lives on (`server:/path`, or the local
    /// path), recorded as REMOTE_PATH.
    pub remote_path: String,
    /// 512 or 4096; `None` detects it with an O_DIRECT probe.
    pub block_size: Option<u32>,
    pub max_hosts: u32,
    /// depot's backup storage domain flag (DEPOT_BACKUP).
    pub backup: bool,
}

/// VDSM's rule: 512-byte storage uses 1 MiB alignment; 4 KiB storage needs
/// 1/2/4/8 MiB for up to 250/500/1000/2000 hosts.
pub fn alignment_for(block_size: u32, max_hosts: u32) -> u64 {
    if block_size == 512 {
        return MIB;
    }
    match max_hosts {
        0..=250 => MIB,
        251..=500 => 2 * MIB,
        501..=1000 => 4 * MIB,
        _ => 8 * MIB,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_rule() {
        assert_eq!(alignment_for(512, 2000), MIB);
        assert_eq!(alignment_for(4096, 250), MIB);
        assert_eq!(alignment_for(4096, 251), 2 * MIB);
        assert_eq!(alignment_for(4096, 2000), 8 * MIB);
    }
}
