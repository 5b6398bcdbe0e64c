//! VDSM's sealed `key=value` metadata: the format of a file domain's
//! `dom_md/metadata` (VDSM `lib/vdsm/storage/persistent.py` and
//! `FileMetadataRW` in `fileSD.py`).
//!
//! The file is one `key=value` line per key, sorted by key, then a last line
//! `_SHA_CKSUM=<sha1 hex>`, every line ending in `\n`, UTF-8. The seal is the
//! SHA-1 of the sorted `key=value` lines concatenated with no separator, each
//! line encoded to ASCII with non-ASCII characters as `&#<decimal>;`. Both
//! sides must agree on every byte, so parsing follows VDSM's reader exactly:
//! lines split as Python's `str.splitlines()`, keys stripped, values kept
//! as is, lines without `=` skipped, the last of duplicated keys kept.

use std::collections::BTreeMap;

use depot_api::Code;
use sha1::{Digest, Sha1};

use super::pytext::{
    is_py_space, is_str_line_break, push_xmlcharref_ascii, py_strip, str_splitlines,
};
use crate::error::{StorageError, StorageResult};

/// The key of the seal line (VDSM's `SHA_CKSUM_TAG`).
pub const SEAL_KEY: &str = "_SHA_CKSUM";

/// A set of `key=value` pairs as VDSM's `PersistentDict` holds them: sorted,
/// every key kept (unknown ones too, so a rewrite never drops what another
/// agent wrote).
#[derive(Debug, Clone, Default)]
pub struct KvMetadata {
    entries: BTreeMap<String, String>,
    /// Whether the parsed text carried a seal that matched.
    sealed: bool,
}

/// Equal when the entries are: how the text was sealed is not content.
impl PartialEq for KvMetadata {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl Eq for KvMetadata {}

impl KvMetadata {
    pub fn new() -> Self {
        KvMetadata::default()
    }

    /// Reads the file's bytes as VDSM does: trailing NUL padding removed,
    /// then UTF-8 (anything else is a general metadata error, 749).
    pub fn parse_bytes(data: &[u8]) -> StorageResult<KvMetadata> {
        let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let text = std::str::from_utf8(&data[..end]).map_err(|e| {
            StorageError::new(
                Code::MetaDataGeneralError,
                "read domain metadata",
                format!("metadata is not UTF-8: {e}"),
            )
            .caused_by(e)
        })?;
        KvMetadata::parse(text)
    }

    /// Parses the text of a metadata file and checks its seal.
    ///
    /// A seal that does not match is MetaDataSealIsBroken (752) naming both
    /// checksums. Like VDSM, text with no seal line is trusted (see
    /// [`KvMetadata::sealed`]), and text with no entries is accepted as
    /// empty whatever its seal says: VDSM returns before checking it.
    pub fn parse(text: &str) -> StorageResult<KvMetadata> {
        let mut entries = BTreeMap::new();
        for line in str_splitlines(text) {
            // Lines without "=" (blank ones too) are skipped, as VDSM does.
            if let Some((key, value)) = line.split_once('=') {
                entries.insert(py_strip(key).to_string(), value.to_string());
            }
        }
        let declared = entries.remove(SEAL_KEY);
        let mut md = KvMetadata {
            entries,
            sealed: false,
        };
        if md.entries.is_empty() {
            return Ok(md);
        }
        let Some(declared) = declared else {
            tracing::warn!("domain metadata has no seal; trusting it as VDSM does");
            return Ok(md);
        };
        let computed = md.checksum();
        if declared != computed {
            return Err(StorageError::new(
                Code::MetaDataSealIsBroken,
                "read domain metadata",
                format!("metadata declares checksum {declared:?}, its content has {computed:?}"),
            ));
        }
        md.sealed = true;
        Ok(md)
    }

    /// The sealed text, byte for byte as VDSM writes the file: sorted
    /// `key=value\n` lines, then `_SHA_CKSUM=<hex>\n`.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for (key, value) in &self.entries {
            text.push_str(key);
            text.push('=');
            text.push_str(value);
            text.push('\n');
        }
        text.push_str(SEAL_KEY);
        text.push('=');
        text.push_str(&self.checksum());
        text.push('\n');
        text
    }

    /// The seal of the current entries: lower-case hex SHA-1 over the
    /// sorted `key=value` lines, no separators, non-ASCII as `&#N;`.
    pub fn checksum(&self) -> String {
        let mut hasher = Sha1::new();
        let mut buf = Vec::new();
        for (key, value) in &self.entries {
            buf.clear();
            push_xmlcharref_ascii(&mut buf, key);
            buf.push(b'=');
            push_xmlcharref_ascii(&mut buf, value);
            hasher.update(&buf);
        }
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// True when the parsed text had a seal and it matched; false for text
    /// without one (trusted, as VDSM does) and for metadata built in memory.
    pub fn sealed(&self) -> bool {
        self.sealed
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// Sets a key, refusing what VDSM would read back differently: a key
    /// that is empty, is the seal key, holds `=` or a line break, or starts
    /// or ends with whitespace (VDSM strips keys); a value holding a line
    /// break. Those are MetaDataValidationError (753).
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> StorageResult<()> {
        let value = value.into();
        validate_key(key)?;
        if let Some(c) = value.chars().find(|&c| is_str_line_break(c)) {
            return Err(invalid(format!(
                "value of {key} holds the line break {c:?}"
            )));
        }
        self.entries.insert(key.to_string(), value);
        Ok(())
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.entries.remove(key)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn validate_key(key: &str) -> StorageResult<()> {
    let problem = if key.is_empty() {
        Some("is empty")
    } else if key == SEAL_KEY {
        Some("is reserved for the seal")
    } else if key.contains('=') {
        Some("holds '='")
    } else if key.chars().any(is_str_line_break) {
        Some("holds a line break")
    } else if key.starts_with(is_py_space) || key.ends_with(is_py_space) {
        Some("starts or ends with whitespace")
    } else {
        None
    };
    match problem {
        Some(p) => Err(invalid(format!("metadata key {key:?} {p}"))),
        None => Ok(()),
    }
}

fn invalid(detail: String) -> StorageError {
    StorageError::new(Code::MetaDataValidationError, "set domain metadata", detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// The seal computed by Python's hashlib over the lines as VDSM's
    /// `_calc_checksum` feeds them, independently of the code under test.
    fn python_seal(lines: &[&str]) -> String {
        let script = "import hashlib, sys\n\
                      h = hashlib.sha1()\n\
                      for l in sys.argv[1:]:\n    h.update(l.encode('ascii', 'xmlcharrefreplace'))\n\
                      print(h.hexdigest())";
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(lines)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    const LINES: &[&str] = &[
        "ALIGNMENT=1048576",
        "BLOCK_SIZE=512",
        "CLASS=Data",
        "DESCRIPTION=nfs-data é",
        "IOOPTIMEOUTSEC=10",
        "LEASERETRIES=3",
        "LEASETIMESEC=60",
        "LOCKPOLICY=",
        "LOCKRENEWALINTERVALSEC=5",
        "POOL_UUID=",
        "REMOTE_PATH=server:/export/data",
        "ROLE=Regular",
        "SDUUID=7b4ac2a6-2e1c-4b3a-9d6e-0d1b8f2c5a11",
        "TYPE=NFS",
        "VERSION=5",
    ];

    fn sealed_text() -> String {
        let mut text: String = LINES.iter().map(|l| format!("{l}\n")).collect();
        text.push_str(&format!("_SHA_CKSUM={}\n", python_seal(LINES)));
        text
    }

    #[test]
    fn known_good_file_parses_and_rewrites_identically() {
        let text = sealed_text();
        let md = KvMetadata::parse(&text).unwrap();
        assert!(md.sealed());
        assert_eq!(md.len(), LINES.len());
        assert_eq!(md.get("DESCRIPTION"), Some("nfs-data é"));
        assert_eq!(md.get("LOCKPOLICY"), Some(""));
        assert_eq!(md.to_text(), text);
        assert_eq!(md.checksum(), python_seal(LINES));
    }

    /// Seals published in VDSM's own tests (tests/storage/persistent_test.py
    /// at fd4b0df2), a check on the algorithm that does not go through
    /// Python here.
    #[test]
    fn seals_from_vdsm_tests() {
        let mut md = KvMetadata::new();
        md.set("int_str", "1").unwrap();
        md.set("str_str", "2").unwrap();
        assert_eq!(md.checksum(), "fd58b7962408a4956bd694d617a1201306b363c2");
        md.set("func_func", "3").unwrap();
        assert_eq!(md.checksum(), "5e5ad85614c502d9a2f44d0473b9384ac49eedff");
        let text = "int_str=1\nstr_str=2\nfunc_func=3\n_SHA_CKSUM=5e5ad85614c502d9a2f44d0473b9384ac49eedff\n";
        assert!(KvMetadata::parse(text).unwrap().sealed());
    }

    #[test]
    fn tampered_file_is_refused_naming_both_checksums() {
        let text = sealed_text().replace("LEASERETRIES=3", "LEASERETRIES=4");
        let err = KvMetadata::parse(&text).unwrap_err();
        assert_eq!(err.code, Code::MetaDataSealIsBroken);
        let good = python_seal(LINES);
        assert!(err.detail.contains(&good), "{}", err.detail);
        let mut tampered: Vec<&str> = LINES.to_vec();
        tampered[5] = "LEASERETRIES=4";
        assert!(
            err.detail.contains(&python_seal(&tampered)),
            "{}",
            err.detail
        );

        // A seal in upper case is not the seal VDSM computed either.
        let upper = sealed_text().replace(&good, &good.to_uppercase());
        assert_eq!(
            KvMetadata::parse(&upper).unwrap_err().code,
            Code::MetaDataSealIsBroken
        );
    }

    #[test]
    fn unsealed_text_is_trusted_and_reported() {
        let text: String = LINES.iter().map(|l| format!("{l}\n")).collect();
        let md = KvMetadata::parse(&text).unwrap();
        assert!(!md.sealed());
        assert_eq!(md.len(), LINES.len());
    }

    #[test]
    fn reader_follows_vdsm_line_rules() {
        // Unsorted input, blank and "="-less lines, padded keys, CRLF, a
        // duplicate key (the last wins), a value keeping its spaces.
        let lines = ["A=1", "B= two "];
        let text = format!(
            "\n  B  = two \r\nnot a pair\nA=0\nA=1\n_SHA_CKSUM={}\n",
            python_seal(&lines)
        );
        let md = KvMetadata::parse(&text).unwrap();
        assert!(md.sealed());
        assert_eq!(md.get("A"), Some("1"));
        assert_eq!(md.get("B"), Some(" two "));
        assert_eq!(
            md.to_text(),
            format!("A=1\nB= two \n_SHA_CKSUM={}\n", python_seal(&lines))
        );
    }

    #[test]
    fn nul_padding_and_empty_files() {
        let mut data = sealed_text().into_bytes();
        data.resize(4096, 0);
        assert!(KvMetadata::parse_bytes(&data).unwrap().sealed());
        assert!(KvMetadata::parse_bytes(&[]).unwrap().is_empty());
        // Only a seal, even a wrong one: empty, as VDSM reads it.
        assert!(KvMetadata::parse("_SHA_CKSUM=nonsense\n")
            .unwrap()
            .is_empty());
        assert_eq!(
            KvMetadata::new().to_text(),
            "_SHA_CKSUM=da39a3ee5e6b4b0d3255bfef95601890afd80709\n"
        );
        assert_eq!(
            KvMetadata::parse_bytes(b"A=\xff\n").unwrap_err().code,
            Code::MetaDataGeneralError
        );
    }

    #[test]
    fn set_refuses_what_would_not_read_back() {
        let mut md = KvMetadata::new();
        md.set("DEPOT_X", "a=b c").unwrap();
        for key in ["", "A=B", "A\nB", " A", "A\t", SEAL_KEY, "A\u{2028}"] {
            assert_eq!(
                md.set(key, "v").unwrap_err().code,
                Code::MetaDataValidationError,
                "{key:?}"
            );
        }
        for value in ["a\nb", "a\rb", "a\u{0b}b", "a\u{85}"] {
            assert_eq!(
                md.set("K", value).unwrap_err().code,
                Code::MetaDataValidationError,
                "{value:?}"
            );
        }
        assert_eq!(md.len(), 1);
        let back = KvMetadata::parse(&md.to_text()).unwrap();
        assert_eq!(back, md);
        assert!(back.sealed());
    }
}
