//! The volume metadata parser (`<vol>.meta`, the 512-byte KEY=value/EOF
//! record).
//!
//! Checked beyond "does not panic": a record that parses writes back (or
//! is refused with 753/756 when it cannot fit 512 bytes or holds what
//! VDSM's writer refuses), and what is written parses to the same volume
//! and writes the same bytes again.
#![no_main]

use depot_api::Code;
use depot_storage::metadata::VolumeMetadata;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(md) = VolumeMetadata::parse(data) else {
        return;
    };
    let bytes = match md.to_bytes() {
        Ok(b) => b,
        Err(e) => {
            assert!(
                matches!(
                    e.code,
                    Code::MetadataOverflowError | Code::MetaDataValidationError
                ),
                "{e}"
            );
            return;
        }
    };
    assert!(bytes.len() <= 512);
    let back = VolumeMetadata::parse(&bytes).expect("what depot writes, it reads");
    assert_eq!(
        back,
        md,
        "round trip changed the volume:\n{}",
        String::from_utf8_lossy(&bytes)
    );
    assert_eq!(back.to_bytes().unwrap(), bytes);
});
