//! The streaming tar validator of OVF_STORE uploads (`TarValidator`), and
//! the walk that reads stored archives (`check_store`: the same tar rules,
//! then `xml_check` on each OVF).
//!
//! The input is the archive, zero-padded to a multiple of 512 bytes so
//! that the fuzzer's inputs get past the length rule. Checked beyond "does
//! not panic":
//! - the outcome does not depend on how the stream is cut: fed whole and
//!   fed in pieces of sizes drawn from the input, the same summary or the
//!   same error, and the same events;
//! - the events are consistent: each Start is followed by exactly `size`
//!   bytes of Data and one End, and the summary lists the Starts;
//! - `check_store` accepts only what the validator accepts, with the same
//!   summary, and refuses whatever it refuses.
#![no_main]

use depot_storage::ovf::tar_check::{self, TarEvent, TarValidator};
use depot_storage::ovf::{check_store, ArchiveSummary, OvfError};
use libfuzzer_sys::fuzz_target;

/// What the validator reported, as owned values.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Start(String, u64, u64),
    Data(usize),
    End,
}

/// Feeds `data` in pieces of the given sizes (cycled); the first error
/// ends it.
fn run(data: &[u8], pieces: &[usize]) -> (Result<ArchiveSummary, String>, Vec<Seen>) {
    let mut seen = Vec::new();
    let mut v = match TarValidator::new(data.len() as u64) {
        Ok(v) => v,
        Err(e) => return (Err(e.to_string()), seen),
    };
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = pieces[i % pieces.len()].clamp(1, rest.len());
        i += 1;
        let fed = v.feed_with(&rest[..n], &mut |ev| {
            seen.push(match ev {
                TarEvent::Start { name, size, offset } => Seen::Start(name.into(), size, offset),
                TarEvent::Data(d) => Seen::Data(d.len()),
                TarEvent::End => Seen::End,
            });
            Ok::<(), OvfError>(())
        });
        if let Err(e) = fed {
            return (Err(e.to_string()), seen);
        }
        rest = &rest[n..];
    }
    (v.finish().map_err(|e| e.to_string()), seen)
}

/// Adjacent Data events merged: how the content was cut is not content.
fn merged(seen: Vec<Seen>) -> Vec<Seen> {
    let mut out: Vec<Seen> = Vec::new();
    for s in seen {
        match (out.last_mut(), s) {
            (Some(Seen::Data(a)), Seen::Data(b)) => *a += b,
            (_, s) => out.push(s),
        }
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let mut data = input.to_vec();
    data.resize(input.len().div_ceil(512).max(2) * 512, 0);

    let (whole, seen_whole) = run(&data, &[data.len()]);
    // Piece sizes from the input's last bytes: the fuzzer explores cuts too.
    let pieces: Vec<usize> = input
        .iter()
        .rev()
        .take(8)
        .map(|&b| 1 + (b as usize * 7) % 1100)
        .collect();
    let (cut, seen_cut) = run(&data, if pieces.is_empty() { &[1] } else { &pieces });
    assert_eq!(whole, cut, "the outcome depends on how the stream is cut");
    let seen = merged(seen_whole);
    assert_eq!(seen, merged(seen_cut), "the events depend on the cut");

    // Each Start: its size in Data, then End (Data events of an empty
    // entry: none).
    let mut starts = Vec::new();
    let mut open: Option<u64> = None;
    for s in &seen {
        match s {
            Seen::Start(name, size, _) => {
                assert!(open.is_none(), "Start inside an entry");
                assert!(tar_check::check_name(name).is_ok(), "{name:?} passed");
                starts.push((name.clone(), *size));
                open = Some(*size);
            }
            Seen::Data(n) => {
                let left = open.as_mut().expect("Data outside an entry");
                *left = left.checked_sub(*n as u64).expect("more Data than size");
            }
            Seen::End => assert_eq!(open.take(), Some(0), "End before size bytes"),
        }
    }
    if let Ok(summary) = &whole {
        assert!(open.is_none(), "accepted with an entry open");
        assert_eq!(summary.entries, starts);
    }

    // Refused: for the tar's reason, or an OVF's (xml_check).
    if let Ok(summary) = check_store(&data[..], data.len() as u64) {
        assert_eq!(whole.as_ref().ok(), Some(&summary));
    }
});
