//! The domain metadata parser (`dom_md/metadata`): the sealed key=value
//! text (`KvMetadata`) and the typed keys on top of it (`DomainMetadata`).
//!
//! Checked beyond "does not panic":
//! - text that parses writes back sealed, and that text parses to the
//!   same entries (and never again differently: a second round trip gives
//!   the same bytes);
//! - metadata that reads as a domain writes back, unless it holds a key
//!   VDSM could not read back (then 753, nothing written), and what it
//!   writes reads as the same domain.
#![no_main]

use depot_api::Code;
use depot_storage::metadata::{DomainMetadata, KvMetadata};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(kv) = KvMetadata::parse_bytes(data) else {
        return;
    };
    let text = kv.to_text();
    let back = KvMetadata::parse(&text).expect("what depot writes, it reads");
    assert_eq!(back, kv, "round trip changed the entries:\n{text}");
    assert!(back.sealed() || back.is_empty(), "not sealed:\n{text}");
    assert_eq!(
        back.to_text(),
        text,
        "a second round trip changed the bytes"
    );

    let Ok(md) = DomainMetadata::from_kv(&kv) else {
        return;
    };
    match md.to_kv() {
        Ok(written) => {
            let again = DomainMetadata::from_kv(&written).expect("what depot writes, it reads");
            assert_eq!(
                again,
                md,
                "round trip changed the domain:\n{}",
                written.to_text()
            );
        }
        Err(e) => assert_eq!(e.code, Code::MetaDataValidationError, "{e}"),
    }
});
