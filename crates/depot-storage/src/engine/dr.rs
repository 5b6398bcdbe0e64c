//! `DR.plan` (depot's own verb, docs/dr.md): what a failover with a
//! mapping would do, worked out without changing anything. Per connection
//! pair, whether each side is connected now and what failover's step 2
//! would do with it; per domain, whether this host sees it and on which
//! side; and the fence check (step 1): which hosts still renew their
//! delta leases on the domains this host sees, and whether that refuses
//! the failover.
//!
//! Read-only by construction: the mount table, the LOCALFS links, sysfs,
//! `pvs` and sanlock's host list are read; the domain lookups are the
//! helpers' `lstat`s ([`file::domain::find_in`]), not [`Storage::locate`],
//! which may clean a crash's leftovers in a mount it sees first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use depot_api::storage::SdUuid;
use depot_dr::{ConnectionPair, ConnectionType, Endpoint, Hosts, Mapping};
use depot_os::sanlock::HostStatus;

use super::Storage;
use crate::connection::{Connection, ConnectionParams};
use crate::file;
use crate::layout;

/// A plan: the mapping's pairs as they are now, and the fence check.
#[derive(Debug, Clone)]
pub struct DrPlan {
    pub pairs: Vec<PairPlan>,
    pub fence: FenceCheck,
}

#[derive(Debug, Clone)]
pub struct PairPlan {
    pub name: String,
    pub kind: ConnectionType,
    pub backup: bool,
    pub primary: SidePlan,
    pub secondary: SidePlan,
    pub domains: Vec<DomainSight>,
}

/// One side of a pair: how it is connected now, and failover's step 2.
#[derive(Debug, Clone)]
pub struct SidePlan {
    pub describe: String,
    pub link: Link,
    pub step: Step,
    /// Where a file side is (or would be) mounted.
    pub mount_point: Option<PathBuf>,
}

/// Whether a side is connected on this host now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    Connected,
    NotConnected,
    /// Could not tell; why.
    Unknown(String),
}

impl Link {
    pub fn name(&self) -> &'static str {
        match self {
            Link::Connected => "connected",
            Link::NotConnected => "not connected",
            Link::Unknown(_) => "unknown",
        }
    }
}

/// What failover's step 2 would do with a side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Disconnect the primary (an unreachable primary tolerated).
    Disconnect,
    /// Connect the secondary.
    Connect,
    /// Nothing: the primary is not connected, or the secondary is.
    Nothing,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Disconnect => "disconnect",
            Step::Connect => "connect",
            Step::Nothing => "none",
        }
    }
}

/// A side of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Primary,
    Secondary,
}

/// Where this host sees a domain now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// On one side of its pair.
    On(Side),
    /// A block domain whose VG this host sees, on a side the mapping's
    /// LUNs cannot tell (it lists none, or both sides' LUNs are there).
    Block(String),
    /// On storage that is neither side of its pair (a mount directory).
    Elsewhere(PathBuf),
    /// Nowhere this host can see.
    Nowhere,
    /// A place it may be in could not be read.
    Unreadable(String),
}

impl Seen {
    pub fn visible(&self) -> bool {
        matches!(self, Seen::On(_) | Seen::Block(_) | Seen::Elsewhere(_))
    }
}

#[derive(Debug, Clone)]
pub struct DomainSight {
    pub sd: SdUuid,
    /// Listed in the mapping; false for a domain found on a side that the
    /// mapping does not list (or an Ansible entry that lists none).
    pub expected: bool,
    pub seen: Seen,
}

/// Which site a host id is of, by the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    Primary,
    Secondary,
    Unlisted,
}

impl Site {
    pub fn name(self) -> &'static str {
        match self {
            Site::Primary => "primary",
            Site::Secondary => "secondary",
            Site::Unlisted => "unlisted",
        }
    }
}

/// One domain of the fence check.
#[derive(Debug, Clone)]
pub struct FenceDomain {
    pub sd: SdUuid,
    /// This host's id in the domain's lockspace (the mapping's, else the
    /// one its pool connect gave), excluded from the check.
    pub this_host: Option<u64>,
    /// Each host id sanlock has seen, with its status; or why the
    /// lockspace could not be read.
    pub hosts: Result<Vec<(u64, Option<HostStatus>)>, String>,
}

/// A host other than this one that is not known dead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveHost {
    pub host_id: u64,
    /// sanlock's status name (`live`, `fail`, `unknown`).
    pub status: &'static str,
    pub site: Site,
    /// The admin confirmed it fenced (DR.plan's `confirmedFenced`).
    pub confirmed: bool,
    pub domains: Vec<SdUuid>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every lockspace was read, and no host but this one may still write.
    Pass,
    /// As Pass, with hosts the admin confirmed fenced.
    PassConfirmed,
    /// Hosts other than this one may still write: failover refuses.
    Refuse,
    /// Nothing refuses, but some lockspace could not be read (this host
    /// is not in it yet, or no sanlock): failover checks again once it
    /// has joined.
    Unknown,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::PassConfirmed => "pass (confirmed fenced)",
            Verdict::Refuse => "refuse",
            Verdict::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone)]
pub struct FenceCheck {
    pub verdict: Verdict,
    /// Says what the verdict rests on, naming the hosts.
    pub message: String,
    pub hosts: Vec<LiveHost>,
    pub domains: Vec<FenceDomain>,
}

impl Storage {
    /// `DR.plan`: what a failover with `mapping` would do. Changes
    /// nothing (docs/dr.md). `confirmed`: host ids the admin says are
    /// fenced.
    pub fn dr_plan(&self, mapping: &Mapping, confirmed: &[u64]) -> DrPlan {
        let mut pairs = Vec::with_capacity(mapping.connections().len());
        for pair in mapping.connections() {
            pairs.push(self.plan_pair(pair));
        }
        let mut seen = BTreeSet::new();
        let mut fence_domains = Vec::new();
        for sight in pairs.iter().flat_map(|p| &p.domains) {
            if !sight.seen.visible() || !seen.insert(sight.sd) {
                continue;
            }
            let this_host = mapping
                .hosts()
                .this_host()
                .map(|h| h.get())
                .or_else(|| self.monitor.host_id(sight.sd));
            let hosts = self
                .lockspace_hosts(sight.sd)
                .map(|hs| hs.into_iter().map(|h| (h.host_id, h.status)).collect())
                .map_err(|e| e.to_string());
            fence_domains.push(FenceDomain {
                sd: sight.sd,
                this_host,
                hosts,
            });
        }
        DrPlan {
            pairs,
            fence: fence_check(fence_domains, mapping.hosts(), confirmed),
        }
    }

    fn plan_pair(&self, pair: &ConnectionPair) -> PairPlan {
        let kind = pair.connection_type();
        let primary = self.side_now(pair, pair.primary());
        let secondary = self.side_now(pair, pair.secondary());
        let primary = SidePlan {
            step: match primary.link {
                Link::NotConnected => Step::Nothing,
                _ => Step::Disconnect,
            },
            ..primary
        };
        let secondary = SidePlan {
            step: match secondary.link {
                Link::Connected => Step::Nothing,
                _ => Step::Connect,
            },
            ..secondary
        };
        let domains = if kind.is_block() {
            self.block_sights(pair)
        } else {
            self.file_sights(pair, &primary, &secondary)
        };
        PairPlan {
            name: pair.name().to_string(),
            kind,
            backup: pair.backup(),
            primary,
            secondary,
            domains,
        }
    }

    /// A side as it is now; its step is the caller's.
    pub(super) fn side_now(&self, pair: &ConnectionPair, end: &Endpoint) -> SidePlan {
        let describe = end.describe();
        let (link, mount_point) = match end {
            Endpoint::Iscsi {
                address, targets, ..
            } => (self.iscsi_link(address.as_str(), targets), None),
            Endpoint::Fcp { luns } => (self.luns_link(luns), None),
            _ => match self.file_connection(pair, end) {
                Ok(conn) => {
                    let link = match self.connector.is_connected(&conn) {
                        Ok(true) => Link::Connected,
                        Ok(false) => Link::NotConnected,
                        Err(e) => Link::Unknown(e.to_string()),
                    };
                    (link, Some(conn.mount_point().to_path_buf()))
                }
                Err(why) => (Link::Unknown(why), None),
            },
        };
        SidePlan {
            describe,
            link,
            step: Step::Nothing,
            mount_point,
        }
    }

    /// The checked connection of a file side, as connectStorageServer
    /// would make it.
    pub(super) fn file_connection(
        &self,
        pair: &ConnectionPair,
        end: &Endpoint,
    ) -> Result<Connection, String> {
        let vfs_type = match end {
            Endpoint::PosixFs { vfs_type, .. } => Some(vfs_type.clone()),
            _ => None,
        };
        let params = ConnectionParams {
            // The id is the engine's; the checks want a UUID, and nothing
            // is connected under it.
            id: depot_api::types::Uuid::nil().to_string(),
            connection: end.connection(),
            vfs_type,
            ..ConnectionParams::default()
        };
        self.connector
            .prepare(pair.connection_type().domain_type(), &params)
            .map_err(|e| e.to_string())
    }

    /// Connected when this host has a session to one of the targets on
    /// that portal (sysfs).
    fn iscsi_link(&self, address: &str, targets: &[depot_dr::Iqn]) -> Link {
        let sysfs = self.san.sysfs();
        let sids = match sysfs.iscsi_sessions() {
            Ok(s) => s,
            Err(e) => return Link::Unknown(format!("iSCSI sessions: {e}")),
        };
        let bare = |a: &str| {
            a.trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase()
        };
        let connected = sids
            .into_iter()
            .filter_map(|sid| sysfs.iscsi_session(sid).ok())
            .any(|s| {
                targets.iter().any(|t| t.as_str() == s.target_name)
                    && bare(&s.persistent_address) == bare(address)
            });
        if connected {
            Link::Connected
        } else {
            Link::NotConnected
        }
    }

    /// Connected when every listed LUN has its multipath map.
    fn luns_link(&self, luns: &[depot_dr::LunId]) -> Link {
        if luns.is_empty() {
            return Link::Unknown(
                "the mapping lists no LUNs; the domain's VG is looked for by its UUID".into(),
            );
        }
        let maps = self.multipath_wwids();
        match maps {
            Ok(maps) if luns.iter().all(|l| maps.contains_key(l.as_str())) => Link::Connected,
            Ok(_) => Link::NotConnected,
            Err(e) => Link::Unknown(e),
        }
    }

    /// The multipath maps: WWID to device path.
    fn multipath_wwids(&self) -> Result<BTreeMap<String, PathBuf>, String> {
        depot_os::multipath::list_maps(self.san.sysfs())
            .map(|maps| {
                maps.into_iter()
                    .map(|m| (m.wwid.clone(), m.dev_path()))
                    .collect()
            })
            .map_err(|e| format!("multipath maps: {e}"))
    }

    /// The listed domains of a file pair, each where it is seen; then the
    /// domains on either connected side that the mapping does not list.
    fn file_sights(
        &self,
        pair: &ConnectionPair,
        primary: &SidePlan,
        secondary: &SidePlan,
    ) -> Vec<DomainSight> {
        let sides: Vec<(Side, &Path)> = [(Side::Primary, primary), (Side::Secondary, secondary)]
            .into_iter()
            .filter(|(_, s)| s.link == Link::Connected)
            .filter_map(|(side, s)| s.mount_point.as_deref().map(|m| (side, m)))
            .collect();
        let mut out = Vec::new();
        for &sd in pair.domains() {
            out.push(DomainSight {
                sd,
                expected: true,
                seen: self.find_file_domain(sd, &sides),
            });
        }
        for (side, mount) in &sides {
            let Ok(listed) = file::domain::list_in(&self.scan_fs(mount), mount) else {
                continue;
            };
            for (sd, _) in listed {
                if !pair.domains().contains(&sd) && !out.iter().any(|d| d.sd == sd) {
                    out.push(DomainSight {
                        sd,
                        expected: false,
                        seen: Seen::On(*side),
                    });
                }
            }
        }
        out
    }

    /// Where a file domain is: a side of its pair first, then any mount.
    fn find_file_domain(&self, sd: SdUuid, sides: &[(Side, &Path)]) -> Seen {
        let mut unreadable = Vec::new();
        for (side, mount) in sides {
            match file::domain::find_in(&self.scan_fs(mount), mount, sd) {
                Ok(Some(_)) => return Seen::On(*side),
                Ok(None) => {}
                Err(e) => unreadable.push(format!("{}: {e}", mount.display())),
            }
        }
        for dir in layout::mount_dirs(&self.config.repository) {
            if sides.iter().any(|(_, m)| *m == dir) {
                continue;
            }
            match file::domain::find_in(&self.scan_fs(&dir), &dir, sd) {
                Ok(Some(_)) => return Seen::Elsewhere(dir),
                Ok(None) => {}
                Err(e) => unreadable.push(format!("{}: {e}", dir.display())),
            }
        }
        if unreadable.is_empty() {
            Seen::Nowhere
        } else {
            Seen::Unreadable(unreadable.join("; "))
        }
    }

    /// A block pair's domains: whether this host sees each VG, and on
    /// which side's LUNs its PVs are.
    pub(super) fn block_sights(&self, pair: &ConnectionPair) -> Vec<DomainSight> {
        let maps = self.multipath_wwids();
        let pvs = match &maps {
            Ok(maps) if !maps.is_empty() => {
                let devices: Vec<PathBuf> = maps.values().cloned().collect();
                self.san.pvs_of(&devices).map_err(|e| format!("pvs: {e}"))
            }
            Ok(_) => Ok(Vec::new()),
            Err(e) => Err(e.clone()),
        };
        let luns = |end: &Endpoint| -> Vec<String> {
            match end {
                Endpoint::Iscsi { luns, .. } | Endpoint::Fcp { luns } => {
                    luns.iter().map(|l| l.as_str().to_string()).collect()
                }
                _ => Vec::new(),
            }
        };
        let (primary_luns, secondary_luns) = (luns(pair.primary()), luns(pair.secondary()));
        pair.domains()
            .iter()
            .map(|&sd| {
                let seen = match (&pvs, &maps) {
                    (Err(e), _) => Seen::Unreadable(e.clone()),
                    (Ok(pvs), Ok(maps)) => {
                        let vg = crate::block::vg_name(sd);
                        let wwids: Vec<&str> = pvs
                            .iter()
                            .filter(|p| p.vg_name == vg)
                            .filter_map(|p| {
                                maps.iter()
                                    .find(|(_, dev)| Path::new(&p.name) == dev.as_path())
                                    .map(|(w, _)| w.as_str())
                            })
                            .collect();
                        block_side(&vg, &wwids, &primary_luns, &secondary_luns)
                    }
                    (Ok(_), Err(e)) => Seen::Unreadable(e.clone()),
                };
                DomainSight {
                    sd,
                    expected: true,
                    seen,
                }
            })
            .collect()
    }
}

/// Which side a VG's PVs (by WWID) are on.
fn block_side(vg: &str, wwids: &[&str], primary: &[String], secondary: &[String]) -> Seen {
    if wwids.is_empty() {
        return Seen::Nowhere;
    }
    let within =
        |luns: &[String]| !luns.is_empty() && wwids.iter().all(|w| luns.iter().any(|l| l == w));
    match (within(primary), within(secondary)) {
        (true, false) => Seen::On(Side::Primary),
        (false, true) => Seen::On(Side::Secondary),
        _ => Seen::Block(format!("VG {vg} on {}", wwids.join(", "))),
    }
}

/// Step 1, from what sanlock answered: every host other than this one
/// that is not known gone (`dead`, or `free`: not holding its id)
/// refuses the failover unless confirmed fenced. `fail` and `unknown`
/// refuse too: such a host may still write.
pub fn fence_check(domains: Vec<FenceDomain>, sites: &Hosts, confirmed: &[u64]) -> FenceCheck {
    let site = |id: u64| {
        if sites.primary_site().iter().any(|h| h.get() == id) {
            Site::Primary
        } else if sites.secondary_site().iter().any(|h| h.get() == id) {
            Site::Secondary
        } else {
            Site::Unlisted
        }
    };
    let mut hosts: BTreeMap<u64, LiveHost> = BTreeMap::new();
    let mut unchecked = Vec::new();
    for d in &domains {
        let listed = match &d.hosts {
            Ok(h) => h,
            Err(why) => {
                unchecked.push(format!("{} ({why})", d.sd));
                continue;
            }
        };
        for (id, status) in listed {
            if Some(*id) == d.this_host
                || matches!(status, Some(HostStatus::Dead | HostStatus::Free))
            {
                continue;
            }
            let name = status.map_or("unknown", |s| s.name());
            let h = hosts.entry(*id).or_insert_with(|| LiveHost {
                host_id: *id,
                status: name,
                site: site(*id),
                confirmed: confirmed.contains(id),
                domains: Vec::new(),
            });
            h.domains.push(d.sd);
        }
    }
    let hosts: Vec<LiveHost> = hosts.into_values().collect();
    let name = |h: &LiveHost| format!("host {} ({}, {} site)", h.host_id, h.status, h.site.name());
    let blocking: Vec<String> = hosts.iter().filter(|h| !h.confirmed).map(name).collect();
    let confirmed_hosts: Vec<String> = hosts.iter().filter(|h| h.confirmed).map(name).collect();
    let (verdict, message) = if !blocking.is_empty() {
        (
            Verdict::Refuse,
            format!(
                "refused: {} may still write to the storage; fence them, or confirm each as fenced by id",
                blocking.join(", ")
            ),
        )
    } else if domains.is_empty() {
        (
            Verdict::Unknown,
            "no domain of the mapping is visible on this host: nothing to check yet".into(),
        )
    } else if !unchecked.is_empty() {
        (
            Verdict::Unknown,
            format!(
                "no live host found, but these lockspaces could not be read: {}; failover checks them again once this host has joined",
                unchecked.join("; ")
            ),
        )
    } else if !confirmed_hosts.is_empty() {
        (
            Verdict::PassConfirmed,
            format!("passes: {} confirmed fenced", confirmed_hosts.join(", ")),
        )
    } else {
        (
            Verdict::Pass,
            "passes: no host but this one renews its lease".into(),
        )
    };
    FenceCheck {
        verdict,
        message,
        hosts,
        domains,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd(n: u8) -> SdUuid {
        format!("00000000-0000-4000-8000-0000000000{n:02}")
            .parse()
            .unwrap()
    }

    fn hosts() -> Hosts {
        let m = depot_dr::parse_toml(include_str!("../../../../docs/examples/dr-mapping.toml"))
            .unwrap();
        m.hosts().clone()
    }

    fn domain(n: u8, this: Option<u64>, hosts: &[(u64, HostStatus)]) -> FenceDomain {
        FenceDomain {
            sd: sd(n),
            this_host: this,
            hosts: Ok(hosts.iter().map(|(id, s)| (*id, Some(*s))).collect()),
        }
    }

    #[test]
    fn a_live_host_other_than_this_one_refuses_naming_it() {
        let check = fence_check(
            vec![
                domain(1, Some(3), &[(1, HostStatus::Live), (3, HostStatus::Live)]),
                domain(
                    2,
                    Some(3),
                    &[
                        (1, HostStatus::Live),
                        (7, HostStatus::Fail),
                        (2, HostStatus::Dead),
                    ],
                ),
            ],
            &hosts(),
            &[],
        );
        assert_eq!(check.verdict, Verdict::Refuse);
        let ids: Vec<u64> = check.hosts.iter().map(|h| h.host_id).collect();
        assert_eq!(
            ids,
            [1, 7],
            "this host (3) and the dead host (2) are not named"
        );
        assert_eq!(check.hosts[0].domains, [sd(1), sd(2)]);
        assert_eq!(check.hosts[0].site, Site::Primary);
        assert_eq!(check.hosts[1].site, Site::Unlisted);
        assert!(
            check.message.contains("host 1 (live, primary site)"),
            "{}",
            check.message
        );
        assert!(
            check.message.contains("host 7 (fail, unlisted site)"),
            "{}",
            check.message
        );
    }

    #[test]
    fn confirmed_hosts_pass_and_others_still_refuse() {
        let ds = || {
            vec![domain(
                1,
                Some(3),
                &[
                    (1, HostStatus::Live),
                    (2, HostStatus::Unknown),
                    (3, HostStatus::Live),
                ],
            )]
        };
        let check = fence_check(ds(), &hosts(), &[1]);
        assert_eq!(check.verdict, Verdict::Refuse);
        assert!(
            check.message.contains("host 2") && !check.message.contains("host 1"),
            "{}",
            check.message
        );
        let check = fence_check(ds(), &hosts(), &[1, 2]);
        assert_eq!(check.verdict, Verdict::PassConfirmed);
        assert!(check.hosts.iter().all(|h| h.confirmed));
    }

    #[test]
    fn dead_and_free_hosts_pass() {
        let check = fence_check(
            vec![domain(
                1,
                Some(3),
                &[
                    (1, HostStatus::Dead),
                    (2, HostStatus::Free),
                    (3, HostStatus::Live),
                ],
            )],
            &hosts(),
            &[],
        );
        assert_eq!(check.verdict, Verdict::Pass, "{}", check.message);
        assert!(check.hosts.is_empty());
    }

    #[test]
    fn an_unread_lockspace_is_unknown_never_pass() {
        let mut d = domain(2, None, &[]);
        d.hosts = Err("no host id".into());
        let check = fence_check(
            vec![domain(1, Some(3), &[(3, HostStatus::Live)]), d],
            &hosts(),
            &[],
        );
        assert_eq!(check.verdict, Verdict::Unknown);
        assert!(check.message.contains("no host id"), "{}", check.message);
        assert_eq!(
            fence_check(Vec::new(), &hosts(), &[]).verdict,
            Verdict::Unknown
        );
    }

    #[test]
    fn a_vg_is_on_the_side_whose_luns_hold_all_its_pvs() {
        let p = vec!["a".to_string(), "b".to_string()];
        let s = vec!["c".to_string()];
        assert_eq!(
            block_side("vg", &["a", "b"], &p, &s),
            Seen::On(Side::Primary)
        );
        assert_eq!(block_side("vg", &["c"], &p, &s), Seen::On(Side::Secondary));
        assert!(matches!(
            block_side("vg", &["a", "c"], &p, &s),
            Seen::Block(_)
        ));
        assert!(matches!(block_side("vg", &["a"], &[], &[]), Seen::Block(_)));
        assert_eq!(block_side("vg", &[], &p, &s), Seen::Nowhere);
    }
}
