//! Block domain metadata in VG tags, VDSM's `TagBasedSDMetadata` layout:
//! one tag `MDT_<line>` per `KEY=value` line of the sealed metadata (the
//! seal is the line `_SHA_CKSUM=<sha1>`, so its tag is `MDT__SHA_CKSUM=..`).
//!
//! LVM tags allow only `[A-Za-z0-9_+.-/=!:#&]`; every other character of a
//! line is written as `&<decimal code point>&` (VDSM's `lvmTagEncode`), and
//! `&` itself as `&38&`, so decoding is unambiguous.

use depot_api::Code;

use crate::error::{StorageError, StorageResult};
use crate::metadata::kv::KvMetadata;

/// The prefix of metadata tags.
pub const MDT_PREFIX: &str = "MDT_";
/// The VG tag of a complete block domain.
pub const DOMAIN_TAG: &str = "RHAT_storage_domain";
/// The VG tag while the domain is being created.
pub const UNREADY_TAG: &str = "RHAT_storage_domain_UNREADY";

fn plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_+.-/=!:#".contains(c)
}

/// `lvmTagEncode`.
pub fn encode(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for c in line.chars() {
        if plain(c) {
            out.push(c);
        } else {
            out.push('&');
            out.push_str(&(c as u32).to_string());
            out.push('&');
        }
    }
    out
}

/// `lvmTagDecode`; `None` for a malformed escape.
pub fn decode(tag: &str) -> Option<String> {
    let mut out = String::with_capacity(tag.len());
    let mut rest = tag;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let j = after.find('&')?;
        let code: u32 = after[..j].parse().ok()?;
        out.push(char::from_u32(code)?);
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// The tags of sealed metadata.
pub fn to_tags(kv: &KvMetadata) -> Vec<String> {
    kv.to_text()
        .lines()
        .map(|line| format!("{MDT_PREFIX}{}", encode(line)))
        .collect()
}

/// Metadata from a VG's tags (other tags ignored). The seal is checked as
/// for a file domain: a mismatch is 752.
pub fn from_tags(tags: &[String]) -> StorageResult<KvMetadata> {
    let mut lines = Vec::new();
    for tag in tags {
        let Some(enc) = tag.strip_prefix(MDT_PREFIX) else {
            continue;
        };
        let line = decode(enc).ok_or_else(|| {
            StorageError::new(
                Code::MetaDataGeneralError,
                "read domain metadata",
                format!("malformed metadata tag {tag:?}"),
            )
        })?;
        lines.push(line);
    }
    // Tags come back in LVM's order; the seal covers the sorted lines.
    lines.sort();
    let mut text = lines.join("\n");
    text.push('\n');
    KvMetadata::parse(&text)
}

/// The metadata tags of `tags` (to delete before adding new ones).
pub fn metadata_tags(tags: &[String]) -> Vec<String> {
    tags.iter()
        .filter(|t| t.starts_with(MDT_PREFIX))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_vdsms() {
        assert_eq!(encode("DESCRIPTION=my dom,1"), "DESCRIPTION=my&32&dom&44&1");
        assert_eq!(encode("A=b&c"), "A=b&38&c");
        assert_eq!(encode("POOL_UUID="), "POOL_UUID=");
        assert_eq!(encode("D=é"), "D=&233&");
        for s in [
            "DESCRIPTION=my dom,1",
            "A=b&c",
            "D=é ü",
            "PV0=pv:36001,uuid:x-y",
        ] {
            assert_eq!(decode(&encode(s)).as_deref(), Some(s));
            assert!(depot_os::lvm::valid_tag(&encode(s)), "{s}");
        }
        assert_eq!(decode("a&12"), None);
        assert_eq!(decode("a&x&"), None);
    }

    #[test]
    fn sealed_roundtrip_and_broken_seal() {
        let mut kv = KvMetadata::new();
        kv.set("SDUUID", "x").unwrap();
        kv.set("DESCRIPTION", "a b").unwrap();
        let mut tags = to_tags(&kv);
        assert!(tags.iter().any(|t| t.starts_with("MDT__SHA_CKSUM=")));
        tags.reverse();
        tags.push(DOMAIN_TAG.to_owned());
        let back = from_tags(&tags).unwrap();
        assert_eq!(back, kv);
        assert!(back.sealed());

        let tampered: Vec<String> = tags.iter().map(|t| t.replace("a&32&b", "a&32&c")).collect();
        let e = from_tags(&tampered).unwrap_err();
        assert_eq!(e.code, Code::MetaDataSealIsBroken, "{e}");
    }
}
