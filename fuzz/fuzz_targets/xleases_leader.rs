//! sanlock's leader record parser (`depot_storage::xlease::leader`: the
//! first sector of each lease slot of a domain's `xleases` volume, written
//! by sanlock on other hosts, read by `Lease.rebuild_leases`).
//!
//! Checked beyond "does not panic": a record that parses writes back to
//! the same fields, a parsed lease's name is what `resource_name` finds
//! in its own lockspace, and any bit flipped in a good record is refused
//! (the checksum) or no longer a lease (the magic).
#![no_main]

use depot_storage::xlease::leader::{Leader, LeaderError, LEADER_LEN, PAXOS_DISK_MAGIC};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Leader::resource_name(data, "sd");
    let Ok(leader) = Leader::parse(data) else {
        return;
    };
    let bytes = leader.to_bytes().expect("parsed names fit");
    assert_eq!(bytes.len(), LEADER_LEN);
    assert_eq!(Leader::parse(&bytes).expect("round trip"), leader);
    if leader.magic == PAXOS_DISK_MAGIC && !leader.resource_name.is_empty() {
        let name = Leader::resource_name(data, &leader.space_name).expect("parsed");
        assert_eq!(name.as_deref(), Some(leader.resource_name.as_str()));
    }
    // One bit flipped where the checksum covers.
    let at = data.len() % 168;
    let mut flipped = bytes.clone();
    flipped[at] ^= 1 << (data.len() % 8);
    match Leader::parse(&flipped) {
        Err(LeaderError::Checksum { .. }) => {}
        other => panic!("a flipped bit at {at} passed: {other:?}"),
    }
});
