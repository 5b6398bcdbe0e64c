//! The xleases index parser (`depot_storage::xlease::index`: VDSM's
//! index at one alignment into a domain's `xleases` volume, written by
//! another host).
//!
//! Checked beyond "does not panic": an index that parses writes back to
//! the same bytes wherever depot reads fields (metadata and every record
//! that parses), lookups agree with the records, and a record written
//! parses back to itself.
#![no_main]

use depot_storage::xlease::index::{Index, Metadata, Record, INDEX_SIZE, MAX_RECORDS, RECORD_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The metadata block alone, from any bytes.
    if let Ok(md) = Metadata::parse(data) {
        let back = Metadata::parse(&md.to_bytes()).expect("what depot writes, it reads");
        assert_eq!(back.lockspace, md.lockspace);
        assert_eq!(back.updating, md.updating);
    }
    // One record, from any bytes.
    if let Ok(rec) = Record::parse(0, data) {
        assert_eq!(Record::parse(0, &rec.to_bytes()).expect("round trip"), rec);
    }
    // A whole index: the input repeated to its size, so that short
    // inputs reach the records too.
    if data.is_empty() {
        return;
    }
    // Most inputs have no valid metadata: cheap to tell from the first
    // block, before the whole index is built.
    let head: Vec<u8> = data.iter().copied().cycle().take(512).collect();
    if Metadata::parse(&head).is_err() {
        assert!(Index::from_bytes(head).is_err());
        return;
    }
    let buf: Vec<u8> = data.iter().copied().cycle().take(INDEX_SIZE).collect();
    let Ok(idx) = Index::from_bytes(buf) else {
        return;
    };
    let md = idx.metadata().expect("checked by from_bytes");
    assert_eq!(md.version, 1);
    for n in 0..MAX_RECORDS {
        let Ok(rec) = idx.record(n) else { continue };
        if !rec.is_free() {
            // The first committed or updating record of a name is found.
            let found = idx.find(&rec.lease, MAX_RECORDS).expect("a record's lease is found");
            assert!(found <= n);
        }
        let bytes = rec.to_bytes();
        assert_eq!(bytes.len(), RECORD_SIZE);
        assert_eq!(Record::parse(n, &bytes).unwrap(), rec);
    }
    if let Some(free) = idx.find_free(MAX_RECORDS) {
        assert!(idx.record(free).unwrap().is_free());
    }
});
