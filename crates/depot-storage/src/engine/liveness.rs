//! `StorageDomain.getHostLiveness` (depot's own verb): the hosts of a
//! domain's lockspace and their liveness as this host's sanlock daemon
//! sees their delta leases (docs/storage.md "Host liveness").

use std::time::{Duration, Instant};

use depot_api::storage::SdUuid;
use depot_api::Code;
use depot_os::sanlock::{HostInfo, SanlockError};

use super::Storage;
use crate::{StorageError, StorageResult};

/// sanlock answers `EAGAIN` for a while after this host joined the
/// lockspace, until it has read the other hosts' leases once (one renewal
/// interval, 20 s with its default 10 s I/O timeout).
const SETTLE_WAIT: Duration = Duration::from_secs(25);
const SETTLE_POLL: Duration = Duration::from_millis(500);

impl Storage {
    /// The hosts sanlock has seen in `sd`'s lockspace, by host id. 358
    /// for an unknown domain; 9021 when this host is not in the lockspace
    /// (no host id acquired there, or no sanlock).
    pub fn host_liveness(&self, sd: SdUuid) -> StorageResult<Vec<HostInfo>> {
        self.locate(sd)?;
        self.lockspace_hosts(sd)
    }

    /// [`host_liveness`](Self::host_liveness) without looking for the
    /// domain first: only sanlock is asked (DR.plan, which has found the
    /// domain its own read-only way). 9021 as there.
    pub(super) fn lockspace_hosts(&self, sd: SdUuid) -> StorageResult<Vec<HostInfo>> {
        const OP: &str = "host liveness";
        let not_held =
            |why: String| StorageError::new(Code::HostIdNotHeld, OP, format!("{sd}: {why}"));
        let Some(sanlock) = self.config.sanlock.as_ref().map(|s| &s.client) else {
            return Err(not_held(
                "sanlock is disabled (sanlock.enabled = false)".into(),
            ));
        };
        let deadline = Instant::now() + SETTLE_WAIT;
        loop {
            match sanlock.get_hosts(&sd.to_string(), 0) {
                Ok(mut hosts) => {
                    hosts.sort_by_key(|h| h.host_id);
                    return Ok(hosts);
                }
                Err(e) if e.errno() == Some(libc::EAGAIN) && Instant::now() < deadline => {
                    std::thread::sleep(SETTLE_POLL)
                }
                Err(e) => return Err(classify(e, &not_held)),
            }
        }
    }

    /// Whether a host still renews its lease in one of `domains` (each
    /// with the host's id there), as `Host.fenceNode`'s policy asks: one
    /// `live` answer is enough. A domain that cannot answer (unknown, this
    /// host not in its lockspace, sanlock off) counts as not live, as in
    /// VDSM, where an error lets the fencing go on; each is logged.
    pub fn lease_live_somewhere(&self, domains: &[(SdUuid, u64)]) -> bool {
        if domains.is_empty() {
            return false;
        }
        let Some(sanlock) = self.config.sanlock.as_ref().map(|s| &s.client) else {
            tracing::warn!("fencing policy: sanlock is disabled, no lease can show the host alive");
            return false;
        };
        for (sd, host_id) in domains {
            match sanlock.get_hosts(&sd.to_string(), *host_id) {
                Ok(hosts) => {
                    let live = hosts.iter().any(|h| {
                        h.host_id == *host_id
                            && h.status == Some(depot_os::sanlock::HostStatus::Live)
                    });
                    if live {
                        tracing::info!(%sd, host_id, "fencing policy: the host renews its lease");
                        return true;
                    }
                }
                Err(e) => {
                    tracing::warn!(%sd, host_id, error = %e, "fencing policy: no lease status")
                }
            }
        }
        false
    }
}

fn classify(e: SanlockError, not_held: &dyn Fn(String) -> StorageError) -> StorageError {
    let why = match (&e, e.errno()) {
        (SanlockError::Unavailable(_), _) => e.to_string(),
        // sanlock's "no such lockspace", and also the library's answer when
        // the daemon's socket is not there at all.
        (_, Some(libc::ENOENT)) => {
            format!("no host id acquired in its lockspace, or no sanlock daemon ({e})")
        }
        // The library is there, the daemon is not (not running, or
        // restarting), or it is not ours to use.
        (_, Some(libc::ECONNREFUSED | libc::ECONNRESET | libc::EPIPE | libc::EACCES)) => {
            format!("the sanlock daemon does not answer ({e})")
        }
        (_, Some(libc::EAGAIN)) => {
            format!("sanlock has not read the lockspace's hosts yet; try again ({e})")
        }
        _ => {
            return StorageError::new(Code::GeneralException, "host liveness", e.to_string())
                .caused_by(e)
        }
    };
    not_held(why).caused_by(e)
}
