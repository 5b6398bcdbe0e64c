//! The disaster-recovery mapping readers (`depot_dr`): depot's TOML and
//! the Ansible role's YAML var file, the text a DR.plan caller sends to a
//! daemon that runs as root. The first byte picks the format (even: TOML,
//! odd: Ansible); the rest is the text.
//!
//! Checked beyond "does not panic":
//! - a refusal has one of the DR codes, 9040 to 9048, and names an entry;
//! - an accepted mapping keeps its rules: every domain listed once, no
//!   secondary equal to its primary (but an FCP side without LUNs, which
//!   the domain's UUID tells apart), no primary twice;
//! - failback twice is the mapping again (but this host's id, which
//!   failback drops).
#![no_main]

use depot_dr::{Endpoint, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let format = if first % 2 == 0 {
        Format::Toml
    } else {
        Format::Ansible
    };
    let m = match depot_dr::parse(text, format) {
        Ok(m) => m,
        Err(e) => {
            let n = e.code().number();
            assert!((9040..=9048).contains(&n), "code {n} for {e}");
            assert!(!e.entry.is_empty(), "no entry named: {e}");
            return;
        }
    };
    let mut seen = std::collections::BTreeSet::new();
    for (i, c) in m.connections().iter().enumerate() {
        for sd in c.domains() {
            assert!(seen.insert(*sd), "{sd} listed twice");
        }
        let fcp_by_domain = matches!(c.primary(), Endpoint::Fcp { luns } if luns.is_empty());
        assert!(
            c.primary() != c.secondary() || fcp_by_domain,
            "{}: secondary is primary",
            c.name()
        );
        assert_eq!(c.primary().connection_type(), c.secondary().connection_type());
        let block_by_domain = c.connection_type().is_block()
            && match c.primary() {
                Endpoint::Iscsi { luns, .. } | Endpoint::Fcp { luns } => luns.is_empty(),
                _ => false,
            };
        if !block_by_domain {
            for earlier in &m.connections()[..i] {
                assert!(earlier.primary() != c.primary(), "{}: primary twice", c.name());
            }
        }
    }
    let again = m.reversed().reversed();
    assert_eq!(again.connections(), m.connections());
    assert_eq!(again.primary_pool(), m.primary_pool());
    assert_eq!(again.secondary_pool(), m.secondary_pool());
    assert_eq!(again.hosts().primary_site(), m.hosts().primary_site());
    assert_eq!(again.hosts().secondary_site(), m.hosts().secondary_site());
});
