//! `DR.failover` and `DR.failback`'s storage steps (docs/dr.md "Failover
//! steps"): each a function of its own, idempotent (a rerun of a done
//! step changes nothing), filling depot-dr's journal records. The order,
//! the journal and its file are the daemon's; the steps reuse the verbs'
//! own code (connections, forced detach, reconstruct, connect, SPM start,
//! activate, OVF_STORE reading), never their JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use depot_api::storage::{DomainRole, ImgUuid, SdUuid, VolUuid};
use depot_api::Code;
use depot_dr::journal::{
    ConnectionRecord, CopyRecord, DiskRecord, DomainRecord, EntityRecord, FenceRecord, FencedHost,
    MetadataRecord, TakeoverRecord,
};
use depot_dr::{ConnectionPair, Endpoint, Mapping};
use sha2::{Digest, Sha256};

use super::dr::{FenceCheck, Link, Seen, Side, Verdict};
use super::pools::PoolDomainStatus;
use super::Storage;
use crate::connection::ConnectionParams;
use crate::file;
use crate::metadata::domain::DomainMetadata;
use crate::ovf::{OvfEntity, StoreState};
use crate::{StorageError, StorageResult};

/// How long step 4 waits for this host's id in the lockspaces it joined
/// before it checks the fence again (sanlock's acquire takes about
/// 2 x its I/O timeout, more after an unclean stop).
const JOIN_WAIT: Duration = Duration::from_secs(180);
const JOIN_POLL: Duration = Duration::from_millis(500);

/// One domain's best OVF_STORE as step 5 read it.
#[derive(Debug, Clone)]
pub struct DrStoreRead {
    pub sd: SdUuid,
    pub img: ImgUuid,
    pub vol: VolUuid,
    /// The store in a line: `OVF_STORE <img>/<vol> of <sd> (<state>)`.
    pub copy: String,
    /// Its generation (None: written by another agent).
    pub generation: Option<u64>,
    /// Each VM and template with its OVF text.
    pub entities: Vec<(OvfEntity, String)>,
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fence check as the journal keeps it.
pub fn fence_record(check: &FenceCheck, confirmed: &[u64], sanlock: bool) -> FenceRecord {
    let verdict = if !sanlock && check.verdict == Verdict::Unknown {
        "unchecked".to_string()
    } else {
        check.verdict.name().to_string()
    };
    FenceRecord {
        verdict,
        message: if sanlock {
            check.message.clone()
        } else {
            format!(
                "sanlock is disabled on this host: no lease to read ({})",
                check.message
            )
        },
        hosts: check
            .hosts
            .iter()
            .map(|h| FencedHost {
                host_id: h.host_id,
                status: h.status.to_string(),
                confirmed: h.confirmed,
            })
            .collect(),
        confirmed_fenced: confirmed.to_vec(),
        at: now(),
    }
}

/// The connection id depot uses for a side of a pair: the same on every
/// run (a rerun connects under the same id), derived from the pair and
/// the connection.
fn connection_id(pair: &ConnectionPair, side: &str, end: &Endpoint) -> String {
    let d = Sha256::digest(format!("{}\0{side}\0{}", pair.name(), end.connection()).as_bytes());
    let h: String = d.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn fence_refused(message: &str) -> StorageError {
    StorageError::new(
        Code::DrFenceRefused,
        "disaster recovery",
        message.to_string(),
    )
}

fn cannot(why: String) -> StorageError {
    StorageError::new(Code::DrCannotTakeOver, "disaster recovery", why)
}

/// A domain's metadata as the journal keeps it.
fn metadata_record(md: &DomainMetadata) -> StorageResult<MetadataRecord> {
    Ok(MetadataRecord {
        sd: md.sd_uuid.to_string(),
        version: md.version,
        role: md.role.name().to_string(),
        pools: md.pools.iter().map(ToString::to_string).collect(),
        master_version: md.master_version,
        backup: md.backup,
        checksum: md.to_kv()?.checksum(),
    })
}

impl Storage {
    /// Whether sanlock is enabled (the fence check can read leases).
    pub fn sanlock_enabled(&self) -> bool {
        self.config.sanlock.is_some()
    }

    /// Step 1: the fence check over the domains this host sees now. A
    /// refusal is 9049 naming the hosts; `unknown` (this host is not in
    /// the lockspaces yet) goes on: step 4 checks again once it is.
    pub fn dr_fence_check(
        &self,
        mapping: &Mapping,
        confirmed: &[u64],
    ) -> StorageResult<FenceRecord> {
        let check = self.dr_plan(mapping, confirmed).fence;
        if check.verdict == Verdict::Refuse {
            return Err(fence_refused(&check.message));
        }
        Ok(fence_record(&check, confirmed, self.sanlock_enabled()))
    }

    /// The directory a file side's domains are in, for reading: its mount
    /// point when connected; a LOCALFS side's own directory otherwise
    /// (readable without connecting: the dry run's step 3).
    fn side_dir(&self, pair: &ConnectionPair, end: &Endpoint) -> Result<PathBuf, String> {
        let side = self.side_now(pair, end);
        match (&side.link, end) {
            (Link::Connected, _) => side
                .mount_point
                .ok_or_else(|| "connected, but no mount point".to_string()),
            (_, Endpoint::LocalFs { path }) => Ok(PathBuf::from(path.as_str())),
            (Link::NotConnected, _) => Err(format!("{} is not connected", side.describe)),
            (Link::Unknown(why), _) => Err(format!("{}: {why}", side.describe)),
        }
    }

    /// Failback's check: each listed domain's metadata on one side
    /// (`secondary` false: the primary, the site running now), where it
    /// can be read now: a file domain on a connected side or a LOCALFS
    /// directory; a block domain whose VG this host sees on that side's
    /// LUNs alone (by WWID, as step 3 finds it: never a VG on both
    /// sides', which would be one UUID twice). A domain that cannot be
    /// read is left out (and so refused when the copies are compared).
    pub fn dr_side_metadata(&self, mapping: &Mapping, secondary: bool) -> Vec<MetadataRecord> {
        let mut out = Vec::new();
        let want = if secondary {
            Side::Secondary
        } else {
            Side::Primary
        };
        // LVM's device list once, for every block pair.
        if mapping
            .connections()
            .iter()
            .any(|p| p.connection_type().is_block())
        {
            self.refresh_lvm_devices();
        }
        for pair in mapping.connections() {
            if pair.connection_type().is_block() {
                for sight in self.block_sights(pair) {
                    if sight.seen != Seen::On(want) {
                        continue;
                    }
                    let md = crate::block::read_metadata(&self.lvm, sight.sd)
                        .and_then(|md| metadata_record(&md));
                    match md {
                        Ok(md) => out.push(md),
                        Err(e) => tracing::warn!(sd = %sight.sd, error = %e,
                            "DR failback: a block domain's metadata cannot be read"),
                    }
                }
                continue;
            }
            let end = if secondary {
                pair.secondary()
            } else {
                pair.primary()
            };
            let Ok(dir) = self.side_dir(pair, end) else {
                continue;
            };
            let fs = self.scan_fs(&dir);
            for &sd in pair.domains() {
                let md = file::domain::find_in(&fs, &dir, sd)
                    .ok()
                    .flatten()
                    .and_then(|paths| file::domain::read_metadata(&fs, &paths).ok())
                    .and_then(|md| metadata_record(&md).ok());
                out.extend(md);
            }
        }
        out
    }

    /// Step 2: leaves the lost pool if this host is connected to it,
    /// disconnects each primary (a failure is recorded and tolerated: the
    /// primary may be unreachable) and connects each secondary (a failure
    /// stops the step). `dry_run`: says what it would do, does nothing.
    pub fn dr_switch_connections(
        &self,
        mapping: &Mapping,
        dry_run: bool,
    ) -> StorageResult<Vec<ConnectionRecord>> {
        let mut out = Vec::new();
        if let Some(sp) = mapping.primary_pool().id {
            if self.pool(sp).is_ok() {
                let outcome = if dry_run {
                    "would be done".to_string()
                } else {
                    match self.disconnect_pool(sp) {
                        Ok(()) => "ok".to_string(),
                        Err(e) => format!("tolerated: {e}"),
                    }
                };
                out.push(ConnectionRecord {
                    pair: "pool".into(),
                    side: "primary".into(),
                    connection: sp.to_string(),
                    action: "disconnect pool".into(),
                    outcome,
                });
            }
        }
        for pair in mapping.connections() {
            let kind = pair.connection_type();
            for (side, end) in [("primary", pair.primary()), ("secondary", pair.secondary())] {
                let now = self.side_now(pair, end);
                let (action, wanted) = match (side, &now.link) {
                    ("primary", Link::NotConnected) => ("none", false),
                    ("primary", _) => ("disconnect", true),
                    (_, Link::Connected) => ("none", false),
                    _ => ("connect", true),
                };
                let mut rec = ConnectionRecord {
                    pair: pair.name().to_string(),
                    side: side.into(),
                    connection: now.describe.clone(),
                    action: action.into(),
                    outcome: if wanted && dry_run {
                        "would be done".into()
                    } else {
                        "ok".into()
                    },
                };
                if kind == depot_dr::ConnectionType::Fcp && wanted {
                    // Nothing to log in to: the LUNs are the SAN's zoning.
                    rec.action = "none".into();
                    rec.outcome = "FCP: the LUNs are zoned by the SAN, nothing to connect".into();
                    out.push(rec);
                    continue;
                }
                if !wanted || dry_run {
                    out.push(rec);
                    continue;
                }
                let params = self.side_params(pair, side, end);
                let status = if side == "primary" {
                    self.disconnect_storage_server(kind.domain_type(), &params)
                } else {
                    self.connect_storage_server(kind.domain_type(), &params)
                };
                let failed: Vec<i32> = status
                    .iter()
                    .map(|s| s.status)
                    .filter(|s| *s != 0)
                    .collect();
                if side == "primary" && failed.is_empty() && !kind.is_block() {
                    // Watched under the id its connect gave (the engine's),
                    // not ours: forgotten by what it is, so that no loss
                    // of a connection left on purpose is reported.
                    for p in &params {
                        if let Ok(c) = self.connector.prepare(kind.domain_type(), p) {
                            self.watch.forget_connection(c.spec());
                        }
                    }
                }
                if let Some(code) = failed.first() {
                    if side == "secondary" {
                        return Err(StorageError::new(
                            Code::from_number(*code).unwrap_or(Code::StorageServerConnectionError),
                            "disaster recovery: connect the secondary",
                            format!("{}: {}", pair.name(), now.describe),
                        ));
                    }
                    rec.outcome = format!("tolerated: the disconnect failed with code {code}");
                }
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// The connect parameters of a side: one per iSCSI target.
    fn side_params(
        &self,
        pair: &ConnectionPair,
        side: &str,
        end: &Endpoint,
    ) -> Vec<ConnectionParams> {
        let id = connection_id(pair, side, end);
        match end {
            Endpoint::Iscsi {
                address,
                port,
                targets,
                chap,
                ..
            } => targets
                .iter()
                .map(|t| ConnectionParams {
                    id: id.clone(),
                    connection: address.as_str().to_string(),
                    port: Some(i64::from(*port)),
                    iqn: Some(t.as_str().to_string()),
                    user: chap.as_ref().map(|c| c.username.clone()),
                    password: chap
                        .as_ref()
                        .map(|c| depot_os::Secret::new(c.password.expose())),
                    ..ConnectionParams::default()
                })
                .collect(),
            Endpoint::PosixFs { vfs_type, .. } => vec![ConnectionParams {
                id,
                connection: end.connection(),
                vfs_type: Some(vfs_type.clone()),
                ..ConnectionParams::default()
            }],
            _ => vec![ConnectionParams {
                id,
                connection: end.connection(),
                ..ConnectionParams::default()
            }],
        }
    }

    /// Step 3, read-only: each listed domain looked for by UUID on its
    /// secondary, its metadata read (the seal and version checked by the
    /// reader), and the domains found there that the mapping does not
    /// list. `switched` (after step 2): a domain also seen on a primary
    /// still connected is not usable (two copies of one UUID on this
    /// host); the dry run, before step 2, does not look.
    pub fn dr_find_domains(&self, mapping: &Mapping, switched: bool) -> Vec<DomainRecord> {
        let mut out = Vec::new();
        for pair in mapping.connections() {
            if pair.connection_type().is_block() {
                out.extend(self.find_block(pair));
                continue;
            }
            let dir = self.side_dir(pair, pair.secondary());
            let primary = match self.side_now(pair, pair.primary()) {
                s if switched && s.link == Link::Connected => s.mount_point,
                _ => None,
            };
            for &sd in pair.domains() {
                let mut rec = self.find_on(sd, &dir, pair.backup());
                if let Some(p) = &primary {
                    if matches!(file::domain::find_in(&self.scan_fs(p), p, sd), Ok(Some(_))) {
                        rec.problem = Some(format!(
                            "also on the primary, still connected at {}: one UUID twice on this host",
                            p.display()
                        ));
                    }
                }
                out.push(rec);
            }
            if let Ok(dir) = &dir {
                let listed = file::domain::list_in(&self.scan_fs(dir), dir).unwrap_or_default();
                for (sd, paths) in listed {
                    if pair.domains().contains(&sd) {
                        continue;
                    }
                    out.push(DomainRecord {
                        sd: sd.to_string(),
                        expected: false,
                        backup: false,
                        path: Some(paths.root.display().to_string()),
                        metadata: None,
                        problem: Some("present on the secondary but not in the mapping".into()),
                    });
                }
            }
        }
        out
    }

    /// Step 3 for a block pair: each listed domain's VG (named by its
    /// UUID) among the PVs of this host's multipath maps, used only when
    /// every PV is on the secondary's LUNs (by WWID): a VG on the
    /// primary's LUNs, on both sides' or on LUNs the mapping does not name
    /// is a problem (one UUID twice, or the wrong copy). The metadata is
    /// read from the VG's tags (the seal and version checked by the
    /// reader), without the lookup of the other verbs (which activates
    /// the metadata LV and cleans a crash's leftovers: not read-only).
    fn find_block(&self, pair: &ConnectionPair) -> Vec<DomainRecord> {
        self.refresh_lvm_devices();
        let secondary = self.side_now(pair, pair.secondary());
        self.block_sights(pair)
            .into_iter()
            .map(|sight| {
                let sd = sight.sd;
                let vg = crate::block::vg_name(sd);
                let mut rec = DomainRecord {
                    sd: sd.to_string(),
                    expected: true,
                    backup: pair.backup(),
                    path: None,
                    metadata: None,
                    problem: None,
                };
                rec.problem = match sight.seen {
                    Seen::On(Side::Secondary) => {
                        match crate::block::read_metadata(&self.lvm, sd)
                            .and_then(|md| metadata_record(&md))
                        {
                            Ok(md) => {
                                rec.path = Some(format!("VG {vg}"));
                                rec.metadata = Some(md);
                                None
                            }
                            Err(e) => Some(format!("metadata: {e}")),
                        }
                    }
                    Seen::On(Side::Primary) => Some(format!(
                        "VG {vg} is on the primary's LUNs, not the secondary's"
                    )),
                    Seen::Block(what) => Some(format!(
                        "{what}: not on the secondary's LUNs alone (one UUID twice, or LUNs \
                         the mapping does not name)"
                    )),
                    Seen::Nowhere if secondary.link != Link::Connected => Some(format!(
                        "the secondary cannot be read: {} is not connected",
                        secondary.describe
                    )),
                    Seen::Nowhere => Some(format!("missing: no VG {vg} on this host's LUNs")),
                    Seen::Elsewhere(p) => Some(format!("elsewhere: {}", p.display())),
                    Seen::Unreadable(why) => Some(format!("unreadable: {why}")),
                };
                rec
            })
            .collect()
    }

    fn find_on(&self, sd: SdUuid, dir: &Result<PathBuf, String>, backup: bool) -> DomainRecord {
        let mut rec = DomainRecord {
            sd: sd.to_string(),
            expected: true,
            backup,
            path: None,
            metadata: None,
            problem: None,
        };
        let dir = match dir {
            Ok(d) => d,
            Err(why) => {
                rec.problem = Some(format!("the secondary cannot be read: {why}"));
                return rec;
            }
        };
        let fs = self.scan_fs(dir);
        match file::domain::find_in(&fs, dir, sd) {
            Ok(Some(paths)) => {
                rec.path = Some(paths.root.display().to_string());
                match file::domain::read_metadata(&fs, &paths).and_then(|md| metadata_record(&md)) {
                    Ok(md) => rec.metadata = Some(md),
                    Err(e) => rec.problem = Some(format!("metadata: {e}")),
                }
            }
            Ok(None) => rec.problem = Some(format!("missing: not in {}", dir.display())),
            Err(e) => rec.problem = Some(format!("unreadable: {e}")),
        }
        rec
    }

    /// Step 4: joins the usable domains' lockspaces with `host_id`, checks
    /// the fence again (9049 and nothing written when a host other than
    /// this one may still write, or, with sanlock, when a lockspace cannot
    /// be read), then force-detaches each domain from the pool it was in,
    /// reconstructs the recovery pool's master (never a backup domain) or
    /// keeps the one a former run made, connects the pool, starts the
    /// SPM and activates every domain.
    // long: one step of the list, its six parts in order, each
    // idempotent (what a former run did is kept, not redone differently).
    pub fn dr_take_over(
        &self,
        mapping: &Mapping,
        domains: &[DomainRecord],
        host_id: u64,
        confirmed: &[u64],
    ) -> StorageResult<TakeoverRecord> {
        let sp = mapping
            .secondary_pool()
            .id
            .ok_or_else(|| cannot("the mapping names no recovery pool id".into()))?;
        let usable: Vec<(SdUuid, bool)> = domains
            .iter()
            .filter(|d| d.usable())
            .filter_map(|d| d.sd.parse().ok().map(|sd| (sd, d.backup)))
            .collect();
        if usable.is_empty() {
            return Err(cannot(
                "no domain of the mapping was found usable (step 3)".into(),
            ));
        }
        let mut actions = Vec::new();
        // 1. Join the lockspaces (the monitor acquires the host id).
        for (sd, _) in &usable {
            self.monitor.set_host_id(*sd, Some(host_id));
            self.start_monitoring(*sd)?;
        }
        actions.push(format!("joined the lockspaces as host {host_id}"));
        // 2. The fence check again, now that this host can read them.
        let fence = self.fence_after_join(mapping, &usable, confirmed)?;
        // 3. Out of the lost pool.
        let mut mds = BTreeMap::new();
        for (sd, _) in &usable {
            let domain = self.locate(*sd)?;
            let md = self.read_md(&domain)?;
            if let Some(old) = md.attached_pools().into_iter().find(|p| *p != sp) {
                self.detach(*sd, old, true)?;
                actions.push(format!("{sd}: detached from the lost pool {old} (forced)"));
            }
            mds.insert(*sd, self.read_md(&self.locate(*sd)?)?);
        }
        // 4. The master: the one a former run made, else a new one.
        let claimed = mds
            .iter()
            .find(|(_, md)| md.role == DomainRole::Master && md.attached_pools().contains(&sp))
            .map(|(sd, md)| (*sd, md.master_version.unwrap_or(1)));
        let (master, version) = match claimed {
            Some(m) => m,
            None => {
                let candidates: Vec<SdUuid> = usable
                    .iter()
                    .filter(|(sd, backup)| !backup && mds.get(sd).is_some_and(|m| !m.backup))
                    .map(|(sd, _)| *sd)
                    .collect();
                let former = candidates
                    .iter()
                    .find(|sd| mds.get(sd).is_some_and(|m| m.role == DomainRole::Master));
                let master = former.or(candidates.first()).copied().ok_or_else(|| {
                    cannot("every usable domain is a backup domain: none can be the master".into())
                })?;
                let top = mds
                    .values()
                    .filter_map(|m| m.master_version)
                    .max()
                    .unwrap_or(0);
                (master, top + 1)
            }
        };
        let dict: BTreeMap<SdUuid, PoolDomainStatus> = usable
            .iter()
            .map(|(sd, _)| (*sd, PoolDomainStatus::Active))
            .collect();
        let host = i64::try_from(host_id).unwrap_or(i64::MAX);
        if self.pool(sp).is_err() {
            let name = mapping
                .secondary_pool()
                .name
                .clone()
                .unwrap_or_else(|| "recovery".into());
            self.reconstruct_master(sp, host, name, master, version, dict.clone())?;
            actions.push(format!("{master}: the master of {sp} at version {version}"));
            for (sd, _) in &usable {
                if *sd != master {
                    self.attach_domain(*sd, sp, "disaster recovery: attach")?;
                }
            }
            actions.push(format!("attached to {sp}: {}", ids(&usable)));
            // 5. Connect the pool (the host ids acquired in each domain).
            self.connect_pool(sp, host, master, version, Some(dict))?;
            actions.push(format!("connected to {sp} as host {host_id}"));
        }
        let lver = self.spm_start(sp, -1, -1)?;
        actions.push(format!("SPM of {sp} (lver {lver})"));
        // 6. Every domain active.
        for (sd, _) in &usable {
            self.activate(*sd, sp)?;
        }
        actions.push(format!("active: {}", ids(&usable)));
        Ok(TakeoverRecord {
            pool: sp.to_string(),
            master: master.to_string(),
            master_version: version,
            host_id,
            domains: usable.iter().map(|(sd, _)| sd.to_string()).collect(),
            actions,
            fence,
        })
    }

    /// Waits (sanlock enabled) until this host holds its id in each
    /// lockspace, then checks the fence: a refusal, or a lockspace that
    /// still cannot be read, is 9049.
    fn fence_after_join(
        &self,
        mapping: &Mapping,
        usable: &[(SdUuid, bool)],
        confirmed: &[u64],
    ) -> StorageResult<FenceRecord> {
        let sanlock = self.sanlock_enabled();
        if sanlock {
            let deadline = Instant::now() + JOIN_WAIT;
            while !usable
                .iter()
                .all(|(sd, _)| self.monitor.status(*sd).is_some_and(|h| h.acquired))
            {
                if Instant::now() >= deadline {
                    return Err(fence_refused(&format!(
                        "this host did not acquire its id in every lockspace within {} s: \
                         the fence cannot be checked",
                        JOIN_WAIT.as_secs()
                    )));
                }
                std::thread::sleep(JOIN_POLL);
            }
        }
        let check = self.dr_plan(mapping, confirmed).fence;
        match check.verdict {
            Verdict::Refuse => Err(fence_refused(&check.message)),
            Verdict::Unknown if sanlock => Err(fence_refused(&check.message)),
            _ => Ok(fence_record(&check, confirmed, sanlock)),
        }
    }

    /// Step 5's reading of the OVF_STOREs, read-only: each domain's best
    /// store (the newest that verifies) with every entity's OVF text. A
    /// domain whose stores cannot be read gives a note instead. The
    /// backup providers are weighed against these by depot-ovf-backup's
    /// `dr` module (this crate does not know the providers).
    pub fn dr_store_reads(&self, domains: &[String]) -> (Vec<DrStoreRead>, Vec<String>) {
        let mut out = Vec::new();
        let mut notes = Vec::new();
        for sd in domains {
            let Ok(sd) = sd.parse::<SdUuid>() else {
                continue;
            };
            let read = self
                .best_ovf_store(sd)
                .and_then(|st| Ok((self.ovf_store_texts(sd, st.img, st.vol)?, st)));
            let (texts, store) = match read {
                Ok(r) => r,
                Err(e) => {
                    notes.push(format!("{sd}: no OVF_STORE read: {e}"));
                    continue;
                }
            };
            let state = match &store.state {
                StoreState::Valid { trailer } => {
                    format!("valid, generation {}", trailer.generation)
                }
                StoreState::Unknown => "written by another agent (no checksum)".into(),
                StoreState::Torn { reason, .. } => format!("torn: {reason}"),
            };
            out.push(DrStoreRead {
                sd,
                img: store.img,
                vol: store.vol,
                copy: format!("OVF_STORE {}/{} of {sd} ({state})", store.img, store.vol),
                generation: texts.generation,
                entities: texts.entities,
            });
        }
        (out, notes)
    }

    /// One VM or template of step 5, its disks looked at on domain `sd`
    /// (`ovf_copy`, `copy`: the copy of its OVF used, and why).
    pub fn dr_entity(
        &self,
        sd: SdUuid,
        ent: &OvfEntity,
        ovf_copy: String,
        copy: Option<CopyRecord>,
    ) -> EntityRecord {
        EntityRecord {
            id: ent.id.to_string(),
            name: ent.name.clone(),
            kind: ent.kind.as_str().to_string(),
            sd: sd.to_string(),
            ovf_copy,
            copy,
            disks: ent
                .images
                .iter()
                .map(|(img, vol)| self.disk_record(sd, *img, *vol))
                .collect(),
        }
    }

    /// One disk: present, legal, its size right (a RAW file as large as
    /// its capacity, a COW one not empty) and its chain complete (every
    /// parent there and legal, down to a base).
    fn disk_record(&self, sd: SdUuid, img: ImgUuid, vol: VolUuid) -> DiskRecord {
        let mut rec = DiskRecord {
            image: img.to_string(),
            volume: vol.to_string(),
            present: false,
            complete: false,
            legality: None,
            capacity: None,
            chain: Vec::new(),
            problem: None,
        };
        let leaf = match self.volume_info(sd, img, vol) {
            Ok(i) => i,
            Err(e) => {
                rec.problem = Some(format!("missing: {e}"));
                return rec;
            }
        };
        rec.present = true;
        rec.legality = Some(leaf.metadata.legality.name().to_string());
        rec.capacity = Some(leaf.metadata.capacity);
        let mut info = leaf;
        let mut problems = Vec::new();
        loop {
            rec.chain.push(info.volume.to_string());
            if info.metadata.legality != depot_api::storage::Legality::Legal {
                problems.push(format!(
                    "{} is {}",
                    info.volume,
                    info.metadata.legality.name()
                ));
            }
            let short = match info.metadata.format {
                depot_api::storage::VolumeFormat::Raw => {
                    info.apparent_size < info.metadata.capacity
                }
                depot_api::storage::VolumeFormat::Cow => info.apparent_size == 0,
            };
            if short {
                problems.push(format!(
                    "{} is {} bytes, short of its {} ({})",
                    info.volume,
                    info.apparent_size,
                    info.metadata.capacity,
                    info.metadata.format.name()
                ));
            }
            let parent = info.metadata.parent;
            if parent.is_blank() || rec.chain.len() > 128 {
                break;
            }
            match self.volume_info(sd, img, parent) {
                Ok(p) => info = p,
                Err(e) => {
                    problems.push(format!("parent {parent} of {}: {e}", info.volume));
                    break;
                }
            }
        }
        rec.complete = problems.is_empty();
        if !problems.is_empty() {
            rec.problem = Some(problems.join("; "));
        }
        rec
    }
}

fn ids(d: &[(SdUuid, bool)]) -> String {
    d.iter()
        .map(|(sd, _)| sd.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_are_uuids_and_stable() {
        let m = depot_dr::parse_toml(include_str!("../../../../docs/examples/dr-mapping.toml"))
            .unwrap();
        let pair = &m.connections()[0];
        let a = connection_id(pair, "primary", pair.primary());
        assert_eq!(a, connection_id(pair, "primary", pair.primary()));
        assert_ne!(a, connection_id(pair, "secondary", pair.secondary()));
        assert!(a.parse::<depot_api::types::Uuid>().is_ok(), "{a}");
    }
}
