//! Which connections use which iSCSI session, kept across restarts.
//!
//! Two connections of one host to the same target, portal group, portal
//! and iface share one session; the last one to disconnect logs it out.
//! The references are kept in memory and, when the connector has a state
//! file, written to it after every change (`write_atomic`: a crash leaves
//! the old list or the new, never a mix). On start the file is read back,
//! so a restart of depotd between two connects and their disconnects does
//! not make the first disconnect log out a session the second still uses.
//!
//! Stale entries (a reboot logged every session out, or an admin did) do no
//! harm: a connect that has to log in starts the session's list afresh with
//! its own id, and a disconnect of a session that is not there is success.
//!
//! # The file (version 1, docs/formats.md "iSCSI session references")
//!
//! ```text
//! depot-iscsi-sessions 1
//! <iqn>\t<portal host>\t<portal port>\t<tpgt>\t<iface>\t<connection id>
//! ...
//! ```
//!
//! One line per (session, connection id), sorted. Fields are escaped with
//! `%XX` for `%`, tab, newline and carriage return (connection ids are the
//! engine's strings). A file that does not parse is logged and ignored:
//! depotd then behaves as without one (the first disconnect logs out), and
//! the next change rewrites it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use depot_os::iscsi::Portal;

use super::iscsi::SessionKey;

const MAGIC: &str = "depot-iscsi-sessions";
const VERSION: u32 = 1;

type Refs = BTreeMap<SessionKey, BTreeSet<String>>;

/// Connection ids per session, optionally persisted to a file.
#[derive(Debug, Default)]
pub struct SessionRefs {
    refs: Mutex<Refs>,
    file: Option<PathBuf>,
}

impl SessionRefs {
    /// References kept in memory only.
    pub fn in_memory() -> Self {
        SessionRefs::default()
    }

    /// References kept in `file`, starting from what it holds.
    pub fn persistent(file: PathBuf) -> Self {
        let refs = match std::fs::read_to_string(&file) {
            Ok(text) => parse(&text).unwrap_or_else(|why| {
                tracing::warn!(file = %file.display(), %why,
                    "ignoring the iSCSI session references");
                Refs::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Refs::new(),
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e,
                    "cannot read the iSCSI session references");
                Refs::new()
            }
        };
        SessionRefs {
            refs: Mutex::new(refs),
            file: Some(file),
        }
    }

    /// The file, if the references are persisted.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// `id` uses the session.
    pub fn add(&self, key: &SessionKey, id: &str) {
        self.change(|refs| {
            refs.entry(key.clone()).or_default().insert(id.to_owned());
        });
    }

    /// The session was just logged in: whatever the list held before is
    /// stale (the session was not there), and `id` is its only user.
    pub fn reset(&self, key: &SessionKey, id: &str) {
        self.change(|refs| {
            refs.insert(key.clone(), BTreeSet::from([id.to_owned()]));
        });
    }

    /// `id` no longer uses the session; returns the ids that still do.
    pub fn remove(&self, key: &SessionKey, id: &str) -> Vec<String> {
        let mut left = Vec::new();
        self.change(|refs| {
            if let Some(ids) = refs.get_mut(key) {
                ids.remove(id);
                left = ids.iter().cloned().collect();
                if ids.is_empty() {
                    refs.remove(key);
                }
            }
        });
        left
    }

    /// Every session with its ids, sorted.
    pub fn snapshot(&self) -> Vec<(SessionKey, Vec<String>)> {
        self.lock()
            .iter()
            .map(|(k, ids)| (k.clone(), ids.iter().cloned().collect()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Refs> {
        self.refs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `f` and writes the result while still holding the lock, so
    /// the file's order of writes is the order of changes. A failed write
    /// is logged: the references in memory are right, and only a restart
    /// before the next successful write would lose the change.
    fn change(&self, f: impl FnOnce(&mut Refs)) {
        let mut refs = self.lock();
        let before = refs.clone();
        f(&mut refs);
        let Some(file) = &self.file else { return };
        if *refs == before {
            return;
        }
        if let Err(e) = depot_os::fsutil::write_atomic(file, render(&refs).as_bytes(), 0o600) {
            tracing::warn!(file = %file.display(), error = %e,
                "cannot write the iSCSI session references");
        }
    }
}

fn render(refs: &Refs) -> String {
    let mut out = format!("{MAGIC} {VERSION}\n");
    for (k, ids) in refs {
        for id in ids {
            let fields = [
                escape(&k.iqn),
                escape(&k.portal.host),
                k.portal.port.to_string(),
                k.tpgt.to_string(),
                escape(&k.iface),
                escape(id),
            ];
            out.push_str(&fields.join("\t"));
            out.push('\n');
        }
    }
    out
}

fn parse(text: &str) -> Result<Refs, String> {
    let mut lines = text.lines();
    match lines.next() {
        Some(h) if h == format!("{MAGIC} {VERSION}") => {}
        Some(h) => return Err(format!("unknown header {h:?}")),
        None => return Err("empty file".into()),
    }
    let mut refs = Refs::new();
    for (n, line) in lines.enumerate() {
        let bad = |what: &str| format!("line {}: {what}", n + 2);
        let f: Vec<&str> = line.split('\t').collect();
        let [iqn, host, port, tpgt, iface, id] = f[..] else {
            return Err(bad("not 6 fields"));
        };
        let key = SessionKey {
            iqn: unescape(iqn).ok_or_else(|| bad("bad escape"))?,
            portal: Portal::new(
                unescape(host).ok_or_else(|| bad("bad escape"))?,
                port.parse().map_err(|_| bad("bad port"))?,
            ),
            tpgt: tpgt.parse().map_err(|_| bad("bad tpgt"))?,
            iface: unescape(iface).ok_or_else(|| bad("bad escape"))?,
        };
        let id = unescape(id).ok_or_else(|| bad("bad escape"))?;
        refs.entry(key).or_default().insert(id);
    }
    Ok(refs)
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' | '\t' | '\n' | '\r' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(iqn: &str, host: &str) -> SessionKey {
        SessionKey {
            iqn: iqn.into(),
            portal: Portal::new(host, 3260),
            tpgt: 1,
            iface: "default".into(),
        }
    }

    #[test]
    fn references_survive_a_new_instance_on_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("iscsi-sessions");
        let a = key("iqn.2026-11.org.depot:a", "10.0.2.15");
        let b = key("iqn.2026-11.org.depot:b", "fe80::1");
        {
            let r = SessionRefs::persistent(file.clone());
            r.add(&a, "one");
            r.add(&a, "two\twith a tab, 100% odd");
            r.add(&b, "three");
            assert_eq!(r.remove(&b, "three"), Vec::<String>::new());
        }
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("depot-iscsi-sessions 1\n"), "{text}");
        assert_eq!(text.lines().count(), 3, "{text}");

        let r = SessionRefs::persistent(file.clone());
        assert_eq!(
            r.snapshot(),
            vec![(
                a.clone(),
                vec!["one".to_string(), "two\twith a tab, 100% odd".to_string()]
            )]
        );
        assert_eq!(r.remove(&a, "one"), vec!["two\twith a tab, 100% odd"]);
        // A fresh login: the stale id goes.
        r.reset(&a, "four");
        let r = SessionRefs::persistent(file);
        assert_eq!(r.snapshot(), vec![(a, vec!["four".to_string()])]);
    }

    #[test]
    fn a_bad_or_missing_file_starts_empty_and_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("iscsi-sessions");
        assert!(SessionRefs::persistent(file.clone()).snapshot().is_empty());
        for bad in [
            "",
            "depot-iscsi-sessions 2\n",
            "depot-iscsi-sessions 1\niqn\thost\t3260\t1\tdefault\n",
            "depot-iscsi-sessions 1\niqn\thost\tport\t1\tdefault\tid\n",
            "depot-iscsi-sessions 1\niqn\thost\t3260\t1\tdefault\tid%4\n",
        ] {
            std::fs::write(&file, bad).unwrap();
            let r = SessionRefs::persistent(file.clone());
            assert!(r.snapshot().is_empty(), "{bad:?}");
            r.add(&key("iqn.x", "h"), "id");
            assert_eq!(SessionRefs::persistent(file.clone()).snapshot().len(), 1);
        }
    }

    #[test]
    fn in_memory_references_write_nothing() {
        let r = SessionRefs::in_memory();
        let a = key("iqn.x", "h");
        r.add(&a, "one");
        r.add(&a, "two");
        assert_eq!(r.remove(&a, "one"), vec!["two"]);
        assert_eq!(r.remove(&a, "two"), Vec::<String>::new());
        assert!(r.snapshot().is_empty());
        assert!(r.file().is_none());
    }

    #[test]
    fn escapes_round_trip() {
        for s in ["", "plain", "%", "%25", "a\tb\nc\rd", "é%0A"] {
            assert_eq!(unescape(&escape(s)).as_deref(), Some(s), "{s:?}");
        }
        assert_eq!(unescape("%4"), None);
        assert_eq!(unescape("%zz"), None);
    }
}
