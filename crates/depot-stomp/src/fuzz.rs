//! The body of the parser's fuzz target (`fuzz/`, cargo-fuzz), kept here so
//! that it builds and is tested with the crate.

use crate::frame::Frame;
use crate::parser::{Limits, Parser};

const FUZZ_LIMITS: Limits = Limits {
    max_header_bytes: 512,
    max_headers: 8,
    max_body_bytes: 1024,
};

/// Feeds `data` to a [`Parser`] in pieces (the first byte picks their
/// size) and checks what must always hold, panicking otherwise:
///
/// - the parser never holds more than one frame's limits plus one piece;
/// - the same bytes in one piece give the same frames and the same error;
/// - every frame parsed encodes to bytes that parse back to it.
pub fn fuzz_parser(data: &[u8]) {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let piece = usize::from(first % 64) + 1;
    let bound = FUZZ_LIMITS.max_header_bytes + FUZZ_LIMITS.max_body_bytes + 2 + piece;
    let mut p = Parser::new(FUZZ_LIMITS);
    let mut frames = Vec::new();
    let mut error = None;
    'feed: for chunk in data.chunks(piece) {
        p.push(chunk);
        assert!(p.buffered() <= bound, "{} bytes held", p.buffered());
        loop {
            match p.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break 'feed;
                }
            }
        }
    }

    let mut whole = Parser::new(FUZZ_LIMITS);
    whole.push(data);
    let mut again = Vec::new();
    let mut error_again = None;
    loop {
        match whole.next_frame() {
            Ok(Some(f)) => again.push(f),
            Ok(None) => break,
            Err(e) => {
                error_again = Some(e);
                break;
            }
        }
    }
    assert_eq!(frames, again, "pieces of {piece} and one piece differ");
    assert_eq!(error, error_again);

    for f in &frames {
        let bytes = f.encode();
        let mut p = Parser::new(Limits {
            // Escaping can double a header's length.
            max_header_bytes: 4 * FUZZ_LIMITS.max_header_bytes + 64,
            // The encoder adds a content-length the frame may not have had.
            max_headers: FUZZ_LIMITS.max_headers + 1,
            ..FUZZ_LIMITS
        });
        p.push(&bytes);
        let back = p.next_frame().expect("an encoded frame parses");
        let mut back: Frame = back.expect("an encoded frame is complete");
        // The encoder sets content-length; the original may not have had one.
        back.headers.retain(|(n, _)| n != "content-length");
        let mut orig = f.clone();
        orig.headers.retain(|(n, _)| n != "content-length");
        if f.command.escapes_headers() {
            assert_eq!(back, orig);
        } else {
            assert_eq!(back.body, orig.body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_on_sample_inputs() {
        for input in [
            &b""[..],
            b"\x05SEND\ndestination:a\\cb\n\nbody\0\n",
            b"\x00CONNECT\naccept-version:1.2\n\n\0SEND\ncontent-length:3\n\na\0b\0",
            b"\x10SEND\nx:\\q\n\n\0",
            b"\x3fMESSAGE\nsubscription:1\nmessage-id:2\n\n\0\r\n\r\nRECEIPT\nreceipt-id:9\n\n\0",
            // As many headers as the limit allows and no content-length:
            // the encoder adds one (found by the fuzz target).
            b"\x01SEND\na:1\nb:2\nc:3\nd:4\ne:5\nf:6\ng:7\nh:8\n\nx\0",
        ] {
            fuzz_parser(input);
        }
        // Something like random bytes.
        let mut x: u32 = 12345;
        for _ in 0..200 {
            let data: Vec<u8> = (0..300)
                .map(|_| {
                    x = x.wrapping_mul(1103515245).wrapping_add(12345);
                    b"SEND\n:\\c0content-length:5\r\0ab"[(x >> 16) as usize % 29]
                })
                .collect();
            fuzz_parser(&data);
        }
    }
}
