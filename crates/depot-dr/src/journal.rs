//! The failover journal (docs/dr.md "The journal", docs/formats.md): what
//! a `DR.failover` or `DR.failback` has done, step by step, kept in one
//! versioned file of the state directory so that a crash or a rerun
//! continues at the first unfinished step, and the report it ends with.
//!
//! Plain data with serde: the file's encoding (JSON) is chosen here, the
//! file's I/O is the daemon's (written atomically after each step). The
//! storage code fills the records; it never sees the encoding.

use depot_api::storage::SpUuid;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The journal's format version. Version 2 added each entity's `copy`
/// (step 5 reads the OVF backup providers too). A version 1 file is read
/// (its entities without `copy`) and written back as version 2; any other
/// version is refused, never guessed at.
pub const JOURNAL_VERSION: u32 = 2;
/// The oldest version this depot still reads.
const OLDEST_READ: u32 = 1;
/// The journal's file name in the state directory.
pub const JOURNAL_FILE: &str = "dr-journal.json";
/// The finished run's report, in the state directory.
pub const REPORT_FILE: &str = "dr-report.json";

/// The steps, in order (issue 17): step `n` is `STEPS[n - 1]`.
pub const STEPS: [&str; 5] = [
    "fence check",
    "switch connections",
    "find domains",
    "take over",
    "find VMs",
];

/// Which way the mapping is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Failover,
    /// The mapping reversed.
    Failback,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::Failover => "failover",
            Operation::Failback => "failback",
        }
    }
}

/// The identity of a run: a rerun with the same operation and mapping
/// text continues the journal; anything else is another run.
pub fn mapping_digest(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

/// The identity of a run given a recovery pool besides its mapping (the
/// verbs' `recoveryPoolID`): the same text with another pool is another
/// run. Without one it is [`mapping_digest`], as journals before the
/// parameter were written.
pub fn run_digest(text: &str, recovery_pool: Option<SpUuid>) -> String {
    match recovery_pool {
        None => mapping_digest(text),
        Some(sp) => {
            let mut h = Sha256::new();
            h.update(text.as_bytes());
            h.update(format!("\0recoveryPoolID={sp}").as_bytes());
            hex(&h.finalize())
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The journal: one per run, rewritten whole after each step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    pub version: u32,
    pub operation: Operation,
    /// [`run_digest`] of the mapping's text (and the recovery pool given
    /// beside it).
    pub mapping_sha256: String,
    /// The recovery pool (the mapping's secondary pool, after reversal
    /// for a failback).
    pub pool: String,
    /// This host's sanlock host id in the recovered domains.
    pub host_id: u64,
    /// Seconds since the epoch.
    pub started: u64,
    /// Steps finished: 0 to 5. The next run starts at `steps_done + 1`.
    pub steps_done: u8,
    /// Step 1's check (before joining the lockspaces), with the
    /// confirmations it rests on.
    pub fence: Option<FenceRecord>,
    /// Failback: each domain's metadata on the primary (the site failed
    /// over to, running now) as read in step 1, before step 2 disconnects
    /// it; step 3 compares the secondary's copies with it.
    #[serde(default)]
    pub primary_metadata: Vec<MetadataRecord>,
    /// Step 2.
    #[serde(default)]
    pub connections: Vec<ConnectionRecord>,
    /// Step 3.
    #[serde(default)]
    pub domains: Vec<DomainRecord>,
    /// Step 4.
    pub takeover: Option<TakeoverRecord>,
    /// Step 5.
    #[serde(default)]
    pub entities: Vec<EntityRecord>,
    /// Step 5: what could not be read (a domain without an OVF_STORE
    /// that verifies), one line each.
    #[serde(default)]
    pub notes: Vec<String>,
    /// Seconds since the epoch, once step 5 is done.
    pub finished: Option<u64>,
}

impl Journal {
    pub fn new(
        operation: Operation,
        mapping_sha256: String,
        pool: String,
        host_id: u64,
        started: u64,
    ) -> Journal {
        Journal {
            version: JOURNAL_VERSION,
            operation,
            mapping_sha256,
            pool,
            host_id,
            started,
            steps_done: 0,
            fence: None,
            primary_metadata: Vec::new(),
            connections: Vec::new(),
            domains: Vec::new(),
            takeover: None,
            entities: Vec::new(),
            notes: Vec::new(),
            finished: None,
        }
    }

    /// Whether this journal is the run of `operation` with that mapping.
    pub fn same_run(&self, operation: Operation, mapping_sha256: &str) -> bool {
        self.operation == operation && self.mapping_sha256 == mapping_sha256
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Reads a journal (or a report: the same record). Another version,
    /// or text that is not one, is an error saying which.
    pub fn decode(bytes: &[u8]) -> Result<Journal, String> {
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let v: Versioned =
            serde_json::from_slice(bytes).map_err(|e| format!("not a DR journal ({e})"))?;
        if !(OLDEST_READ..=JOURNAL_VERSION).contains(&v.version) {
            return Err(format!(
                "DR journal version {}, this depot reads versions {OLDEST_READ} to \
                 {JOURNAL_VERSION}",
                v.version
            ));
        }
        let mut j: Journal = serde_json::from_slice(bytes)
            .map_err(|e| format!("DR journal version {}: {e}", v.version))?;
        // Version 1 is version 2 without the entities' `copy` (serde's
        // default): from now on it is written as version 2.
        j.version = JOURNAL_VERSION;
        Ok(j)
    }
}

/// A fence check as it was when the run relied on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceRecord {
    /// `pass`, `pass (confirmed fenced)`, `unknown` (step 1: this host is
    /// not in the lockspaces yet), or `unchecked` (sanlock disabled).
    pub verdict: String,
    pub message: String,
    /// Host ids other than this one not known dead, and their status.
    pub hosts: Vec<FencedHost>,
    /// The host ids the admin confirmed fenced (`--confirm-fenced`).
    pub confirmed_fenced: Vec<u64>,
    /// Seconds since the epoch.
    pub at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FencedHost {
    pub host_id: u64,
    pub status: String,
    pub confirmed: bool,
}

/// What step 2 did with one side of a pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionRecord {
    pub pair: String,
    /// `primary` or `secondary`.
    pub side: String,
    pub connection: String,
    /// `disconnect`, `connect` or `none` (already so).
    pub action: String,
    /// `ok`, or what went wrong (a primary's failure is tolerated: it may
    /// be unreachable).
    pub outcome: String,
}

/// A domain's metadata, as step 3 (or step 1, for a failback's primary)
/// read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataRecord {
    pub sd: String,
    pub version: i64,
    pub role: String,
    pub pools: Vec<String>,
    pub master_version: Option<i64>,
    pub backup: bool,
    /// The seal over the key/value lines (`_SHA_CKSUM`'s algorithm),
    /// computed from what was read: equal seals, equal metadata.
    pub checksum: String,
}

/// One domain of step 3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRecord {
    pub sd: String,
    /// Listed in the mapping; false: found on a secondary, not listed.
    pub expected: bool,
    /// A backup domain (the mapping's `backup`): never the master.
    pub backup: bool,
    /// The domain's directory on the secondary, when found.
    pub path: Option<String>,
    /// Its metadata, when found and readable (sealed, version 5).
    pub metadata: Option<MetadataRecord>,
    /// Why it is not taken over: missing, unreadable, seal broken, ...
    pub problem: Option<String>,
}

impl DomainRecord {
    /// Found with good metadata, listed: step 4 takes it over.
    pub fn usable(&self) -> bool {
        self.expected && self.metadata.is_some() && self.problem.is_none()
    }
}

/// What step 4 did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakeoverRecord {
    pub pool: String,
    pub master: String,
    pub master_version: i64,
    pub host_id: u64,
    /// The domains active in the recovery pool.
    pub domains: Vec<String>,
    /// What was done, in order, one line each.
    pub actions: Vec<String>,
    /// The fence check again, once this host had joined the lockspaces.
    pub fence: FenceRecord,
}

/// A VM or template found in step 5.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityRecord {
    pub id: String,
    pub name: String,
    /// `VM` or `TEMPLATE`.
    pub kind: String,
    /// The domain whose OVF_STORE held it (for a copy only a provider
    /// holds: the domain of the store it was taken from), where its disks
    /// are looked for.
    pub sd: String,
    /// Which copy of the OVF was used, in a line: `OVF_STORE <img>/<vol>
    /// of <sd>` and its state (`valid, generation N` or `written by
    /// another agent`), or the provider's copy (`archive: generation N of
    /// OVF_STORE <img>/<vol> of <sd>`).
    pub ovf_copy: String,
    /// The same, typed, with why it was used (version 2; None in a
    /// version 1 journal).
    #[serde(default)]
    pub copy: Option<CopyRecord>,
    pub disks: Vec<DiskRecord>,
}

/// The copy of an entity's OVF that step 5 used, and why (docs/dr.md
/// "Failover steps", 5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRecord {
    /// [`STORE_COPY`] (the domain's own OVF_STORE, as step 5 read it) or
    /// the backup provider's name (`archive`, `mirror`, `attached`,
    /// `stores`).
    pub provider: String,
    /// The source store's generation (None: a store written by another
    /// agent).
    pub generation: Option<u64>,
    /// Lowercase hex SHA-256 of the OVF text.
    pub sha256: String,
    /// Chosen by the providers' trust rule (docs/storage.md, "OVF backup
    /// providers"); false: the domain's OVF_STORE, or the newest copy,
    /// because the rule trusts none.
    pub trusted: bool,
    /// Why this copy: the rule's reason, or why the OVF_STORE was used.
    pub reason: String,
    /// The domain's OVF_STORE holds the entity; false: found only in a
    /// provider.
    pub in_store: bool,
    /// Where the OVF_STORE's copy is not the one used: what the store
    /// holds instead (its generation and SHA-256). None: the same text,
    /// or the store does not hold it.
    pub store_differs: Option<String>,
}

/// [`CopyRecord::provider`] of the domain's own OVF_STORE read by step 5.
pub const STORE_COPY: &str = "OVF_STORE";

impl EntityRecord {
    /// Every disk present and complete.
    pub fn complete(&self) -> bool {
        self.disks.iter().all(|d| d.present && d.complete)
    }
}

/// One disk of an entity: the volume its OVF names (the chain's leaf).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRecord {
    pub image: String,
    pub volume: String,
    /// The volume exists on the domain.
    pub present: bool,
    /// Legal, the right size, and its chain complete down to the base.
    pub complete: bool,
    pub legality: Option<String>,
    /// Virtual size, bytes.
    pub capacity: Option<u64>,
    /// The chain, leaf first.
    pub chain: Vec<String>,
    /// Why it is not complete.
    pub problem: Option<String>,
}

/// Failback's refusal (docs/dr.md "Failback"): each domain whose copy
/// on the secondary (the site failed back to) is not the primary's
/// metadata, one line each; empty when every copy is. The primary is the
/// site that ran since the failover: its metadata changed then (the
/// recovery pool, a new master version), so a copy that was not resynced
/// differs. Equal seals mean equal metadata; a domain whose primary
/// metadata was not read cannot be shown resynced and is named too.
pub fn not_resynced(primary: &[MetadataRecord], secondary: &[MetadataRecord]) -> Vec<String> {
    let show = |m: &MetadataRecord| {
        format!(
            "ROLE={} POOL_UUID={} MASTER_VERSION={}",
            m.role,
            m.pools.join(","),
            m.master_version.map_or("-".into(), |v| v.to_string())
        )
    };
    secondary
        .iter()
        .filter_map(|s| match primary.iter().find(|p| p.sd == s.sd) {
            None => Some(format!(
                "domain {}: its metadata on the primary was not read",
                s.sd
            )),
            Some(p) if p.checksum != s.checksum => Some(format!(
                "domain {}: the primary has {}, the secondary's copy {}",
                s.sd,
                show(p),
                show(s)
            )),
            Some(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(sd: &str, pool: &str, version: i64, checksum: &str) -> MetadataRecord {
        MetadataRecord {
            sd: sd.into(),
            version: 5,
            role: "Master".into(),
            pools: vec![pool.into()],
            master_version: Some(version),
            backup: false,
            checksum: checksum.into(),
        }
    }

    #[test]
    fn a_copy_that_differs_from_the_primary_is_not_resynced() {
        let p = [md("a", "recovery", 2, "c2"), md("b", "recovery", 0, "c3")];
        assert!(not_resynced(&p, &[md("a", "recovery", 2, "c2")]).is_empty());
        let stale = not_resynced(
            &p,
            &[md("a", "prod", 1, "c1"), md("b", "recovery", 0, "c3")],
        );
        assert_eq!(stale.len(), 1, "{stale:?}");
        assert!(
            stale[0].contains("domain a") && stale[0].contains("POOL_UUID=prod"),
            "{stale:?}"
        );
        let unread = not_resynced(&p[..1], &[md("b", "recovery", 0, "c3")]);
        assert!(unread[0].contains("not read"), "{unread:?}");
    }

    #[test]
    fn a_journal_reads_back_and_another_version_is_refused() {
        let mut j = Journal::new(
            Operation::Failover,
            mapping_digest("x"),
            "5849b030-626e-47cb-ad90-3ce782d831b3".into(),
            3,
            1,
        );
        j.steps_done = 2;
        let back = Journal::decode(&j.encode()).unwrap();
        assert_eq!(back, j);
        assert!(back.same_run(Operation::Failover, &mapping_digest("x")));
        assert!(!back.same_run(Operation::Failback, &mapping_digest("x")));
        assert!(!back.same_run(Operation::Failover, &mapping_digest("y")));
        // A recovery pool given beside the text: another run, and
        // another again with another pool; none is the same as the
        // text's own digest, which stays what it was before the pool.
        let (a, b): (SpUuid, SpUuid) = (
            "5e7a1c2b-3d4e-4f50-8a61-b72c83d94e05".parse().unwrap(),
            "6f8b2d3c-4e5f-4061-9b72-c83d94e05f16".parse().unwrap(),
        );
        assert_eq!(run_digest("x", None), mapping_digest("x"));
        assert!(!back.same_run(Operation::Failover, &run_digest("x", Some(a))));
        assert_ne!(run_digest("x", Some(a)), run_digest("x", Some(b)));
        assert_eq!(run_digest("x", Some(a)), run_digest("x", Some(a)));
        let newer = String::from_utf8(j.encode())
            .unwrap()
            .replace("\"version\": 2", "\"version\": 3");
        let e = Journal::decode(newer.as_bytes()).unwrap_err();
        assert!(e.contains("version 3"), "{e}");
        assert!(Journal::decode(b"{}").is_err());
        assert!(Journal::decode(b"garbage").is_err());
    }

    #[test]
    fn a_version_1_journal_is_read_as_version_2_without_copies() {
        let mut j = Journal::new(Operation::Failover, mapping_digest("x"), "p".into(), 3, 1);
        j.steps_done = 5;
        j.entities.push(EntityRecord {
            id: "e".into(),
            name: "web".into(),
            kind: "VM".into(),
            sd: "sd".into(),
            ovf_copy: "OVF_STORE i/v of sd (valid, generation 4)".into(),
            copy: None,
            disks: Vec::new(),
        });
        // What depot wrote before version 2: no `copy` key at all.
        let mut v: serde_json::Value = serde_json::from_slice(&j.encode()).unwrap();
        v["version"] = 1.into();
        v["entities"][0].as_object_mut().unwrap().remove("copy");
        let old = serde_json::to_vec(&v).unwrap();
        let back = Journal::decode(&old).unwrap();
        assert_eq!(back.version, JOURNAL_VERSION);
        assert_eq!(back.entities, j.entities);
        assert!(String::from_utf8(back.encode())
            .unwrap()
            .contains("\"version\": 2"));
    }
}
