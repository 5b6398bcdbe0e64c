//! The host id of one monitored domain: VDSM's monitor acquires it
//! asynchronously once the domain is checked valid, asks sanlock each
//! round whether it is held (repoStats' `acquired`), and releases it when
//! the domain stops being monitored, but not at shutdown (the host keeps
//! its id across a restart of depotd, as VDSM's does, so that a new
//! depotd finds it held).
//!
//! Every sanlock call has a deadline (depot_os::sanlock runs them on its
//! own worker) and the daemon does the I/O: nothing here waits in a
//! storage mount. A lockspace that cannot be joined is logged once per
//! new reason and reported as not acquired; it never fails anything.

use std::path::Path;

use depot_api::storage::SdUuid;
use depot_os::sanlock::{AddOutcome, HostIdState, Lockspace, RemOutcome, Sanlock};

use crate::lockspace::lockspace;

pub(super) struct HostIdKeeper {
    sanlock: Sanlock,
    sd: SdUuid,
    /// The lockspace this keeper added (or found held): what it releases.
    joined: Option<Lockspace>,
    /// Whether sanlock said it was held in the last round.
    held: bool,
    /// The last problem logged, so a lasting one is logged once.
    last_problem: Option<String>,
}

impl HostIdKeeper {
    pub fn new(sanlock: Sanlock, sd: SdUuid) -> Self {
        HostIdKeeper {
            sanlock,
            sd,
            joined: None,
            held: false,
            last_problem: None,
        }
    }

    /// One round: `wanted` is the host id the domain's pool connected
    /// with (`None`: not in a connected pool), `domain_dir` the domain's
    /// directory once located, `valid` whether its last check passed.
    /// Returns whether the host id is held now. `check_ids` is asked
    /// right before the lockspace on `ids` is handed to sanlock (a file
    /// domain's `ids` must be a regular file reached without a symlink:
    /// crate::lockspace::check_sanlock_file); `Err` says why not.
    pub fn round(
        &mut self,
        wanted: Option<u64>,
        domain_dir: Option<&Path>,
        valid: bool,
        check_ids: impl FnOnce(&Path) -> Result<(), String>,
    ) -> bool {
        if self
            .joined
            .as_ref()
            .is_some_and(|ls| Some(ls.host_id) != wanted)
        {
            self.release();
        }
        let (Some(host_id), Some(dir)) = (wanted, domain_dir) else {
            return false;
        };
        let was_held = std::mem::take(&mut self.held);
        let ls = lockspace(self.sd, host_id, &dir.join("dom_md").join("ids"));
        match self.sanlock.inq_lockspace(&ls) {
            Ok(HostIdState::Held) => {
                if !was_held {
                    tracing::info!(sd = %self.sd, host_id, "host id acquired");
                }
                self.ok();
                self.joined = Some(ls);
                self.held = true;
                true
            }
            // Our add under way (`joined` already says so), or a release
            // finishing: wait for the next round either way.
            Ok(HostIdState::Changing | HostIdState::Removing) => false,
            // As VDSM: acquire only on storage that answers.
            Ok(HostIdState::Free) if !valid => false,
            Ok(HostIdState::Free) => {
                if self.joined.take().is_some() {
                    self.problem(if was_held {
                        format!("host id {host_id} was lost; acquiring it again")
                    } else {
                        format!(
                            "sanlock gave up acquiring host id {host_id} (its log says why); \
                             trying again"
                        )
                    });
                }
                match check_ids(&ls.area.path) {
                    Ok(()) => self.acquire(ls),
                    Err(why) => self.problem(format!("cannot acquire host id {host_id}: {why}")),
                }
                false
            }
            Err(e) => {
                self.problem(e.to_string());
                false
            }
        }
    }

    /// Whether an acquisition this keeper started is still under way.
    pub fn pending(&self) -> bool {
        self.joined.is_some() && !self.held
    }

    /// Between rounds, while [`pending`](Self::pending): asks sanlock only
    /// whether the host id is held now (never adds nor releases; a failed
    /// acquisition is the next round's business). Returns whether it is.
    pub fn peek(&mut self) -> bool {
        let Some(ls) = &self.joined else {
            return self.held;
        };
        if let Ok(HostIdState::Held) = self.sanlock.inq_lockspace(ls) {
            tracing::info!(sd = %self.sd, host_id = ls.host_id, "host id acquired");
            self.ok();
            self.held = true;
        }
        self.held
    }

    fn acquire(&mut self, ls: Lockspace) {
        // With the client's io_timeout: sanlock.io_timeout_s (10 s by
        // default, VDSM's sanlock io_timeout).
        match self.sanlock.add_lockspace(&ls) {
            Ok(outcome) => {
                tracing::info!(sd = %self.sd, host_id = ls.host_id, ids = %ls.area.path.display(),
                    ?outcome, "acquiring host id");
                if outcome != AddOutcome::BeingRemoved {
                    self.joined = Some(ls);
                }
            }
            Err(e) => self.problem(format!("cannot acquire host id {}: {e}", ls.host_id)),
        }
    }

    /// Releases the host id this keeper holds or is acquiring
    /// (asynchronously: sanlock finishes about 2 s later). Leases still
    /// held in the lockspace make sanlock refuse (`UNUSED`), logged.
    pub fn release(&mut self) {
        let Some(ls) = self.joined.take() else {
            return;
        };
        match self.sanlock.rem_lockspace(&ls, true) {
            Ok(RemOutcome::Busy) => tracing::warn!(sd = %self.sd, host_id = ls.host_id,
                "host id not released: leases in the lockspace are held"),
            Ok(outcome) => {
                tracing::info!(sd = %self.sd, host_id = ls.host_id, ?outcome, "host id released")
            }
            Err(e) => tracing::warn!(sd = %self.sd, host_id = ls.host_id, error = %e,
                "cannot release host id"),
        }
    }

    fn problem(&mut self, what: String) {
        if self.last_problem.as_deref() != Some(what.as_str()) {
            tracing::warn!(sd = %self.sd, problem = %what, "host id not acquired");
            self.last_problem = Some(what);
        }
    }

    fn ok(&mut self) {
        self.last_problem = None;
    }
}
