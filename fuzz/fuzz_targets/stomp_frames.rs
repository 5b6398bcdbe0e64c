//! depot-stomp's frame parser, the first code that reads a STOMP client's
//! bytes on the TLS port. The checks live beside the parser in
//! `depot_stomp::fuzz_parser` (crates/depot-stomp/src/fuzz.rs), where its
//! unit tests exercise them too: the first byte picks the size of the
//! pieces the rest arrives in; the parser never holds more than a frame's
//! limits plus one piece; pieces and one whole piece give the same frames
//! and the same error; every frame parsed encodes to bytes that parse back
//! to it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| depot_stomp::fuzz_parser(data));
