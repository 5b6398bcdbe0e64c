//! The providers that read or write a domain: its own OVF_STOREs
//! ([`stores`]) and a mirror domain ([`mirror`]). The ones that need no
//! storage (the archive, NoOp) are depot-ovf-archive's.

pub mod mirror;
pub mod stores;

use depot_ovf_archive::ProviderError;

fn unavailable(provider: &str, e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Unavailable {
        provider: provider.into(),
        reason: e.to_string(),
    }
}
