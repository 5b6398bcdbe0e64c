//! The incremental parser of untrusted bytes.
//!
//! STOMP 1.2 grammar, as read here:
//!
//! ```text
//! stream  = *( EOL | frame )          ; EOLs between frames are heart-beats
//! frame   = command EOL *( header EOL ) EOL body NUL
//! EOL     = [CR] LF
//! header  = name ":" value            ; first ':' separates, first repeat wins
//! body    = content-length octets (may hold NUL) | octets up to the first NUL
//! ```
//!
//! Leniency, on purpose: a raw `:` inside a header *value* is kept as is
//! (oVirt's engine does not escape its headers, and its flow ids may hold
//! one). Strictness, on purpose: a CR that is not part of an EOL, an
//! undefined escape, a header that is not UTF-8, a `content-length` that is
//! not plain decimal digits, and a body that does not end in NUL are errors.

use crate::error::FrameError;
use crate::frame::{printable, unescape, Command, Frame};

/// How big a frame may get. Checked while reading: the parser never holds
/// more than one frame's worth of these plus the last piece pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The command line and the header lines together, with their EOLs and
    /// the blank line.
    pub max_header_bytes: usize,
    /// Header lines in one frame.
    pub max_headers: usize,
    /// The body, NUL excluded.
    pub max_body_bytes: usize,
}

/// Offsets are relative to `Parser::pos`, the start of the frame (or of
/// the bytes not looked at yet, between frames).
#[derive(Debug)]
enum State {
    /// Between frames.
    Idle,
    /// In the command and headers: the lines before `line` are complete,
    /// `lines` of them.
    Head {
        line: usize,
        lines: usize,
    },
    /// In the body, which starts at `start`; `scanned` bytes of it hold no
    /// NUL (when there is no content-length).
    Body {
        command: Command,
        headers: Vec<(String, String)>,
        start: usize,
        len: Option<usize>,
        scanned: usize,
    },
    Failed(FrameError),
}

pub struct Parser {
    limits: Limits,
    buf: Vec<u8>,
    pos: usize,
    state: State,
}

impl Parser {
    pub fn new(limits: Limits) -> Parser {
        Parser {
            limits,
            buf: Vec::new(),
            pos: 0,
            state: State::Idle,
        }
    }

    /// Appends bytes read from the peer. What earlier frames used is
    /// dropped first.
    pub fn push(&mut self, data: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes held: the frame being read and what follows it.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// True while a frame has begun and not ended: the peer closing now
    /// cuts a frame in two.
    pub fn in_frame(&self) -> bool {
        match self.state {
            State::Head { .. } | State::Body { .. } => true,
            State::Idle => self.buffered() > 0 && self.buf[self.pos..] != [b'\r'],
            State::Failed(_) => false,
        }
    }

    /// The next complete frame, `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        match self.step() {
            Err(e) => {
                self.state = State::Failed(e.clone());
                Err(e)
            }
            ok => ok,
        }
    }

    fn step(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            let data = &self.buf[self.pos..];
            match &mut self.state {
                State::Failed(e) => return Err(e.clone()),
                State::Idle => match data {
                    [] | [b'\r'] => return Ok(None),
                    [b'\n', ..] => self.pos += 1,
                    [b'\r', b'\n', ..] => self.pos += 2,
                    _ => self.state = State::Head { line: 0, lines: 0 },
                },
                State::Head { line, lines } => {
                    let limit = self.limits.max_header_bytes;
                    let Some(nl) = memchr::memchr(b'\n', &data[*line..]) else {
                        if data.len() > limit {
                            return Err(FrameError::HeaderTooLarge { limit });
                        }
                        return Ok(None);
                    };
                    let end = *line + nl;
                    let text = strip_cr(&data[*line..end]);
                    let next = end + 1;
                    if next > limit {
                        return Err(FrameError::HeaderTooLarge { limit });
                    }
                    if !text.is_empty() {
                        // The command line is line 0.
                        if *lines > self.limits.max_headers {
                            return Err(FrameError::TooManyHeaders {
                                limit: self.limits.max_headers,
                            });
                        }
                        *lines += 1;
                        *line = next;
                        continue;
                    }
                    // Line 0, the command, is never blank (the EOLs before a
                    // frame are skipped), so `line` >= 1 here: the head is
                    // everything before the last line's LF.
                    let (command, headers) = parse_head(&data[..*line - 1], self.limits)?;
                    let len = content_length(&headers, self.limits.max_body_bytes)?;
                    self.state = State::Body {
                        command,
                        headers,
                        start: next,
                        len,
                        scanned: 0,
                    };
                }
                State::Body {
                    start,
                    len,
                    scanned,
                    ..
                } => {
                    let body = &data[*start..];
                    let end = match *len {
                        Some(n) => {
                            if body.len() <= n {
                                return Ok(None);
                            }
                            if body[n] != 0 {
                                return Err(FrameError::MissingNul);
                            }
                            n
                        }
                        None => {
                            let limit = self.limits.max_body_bytes;
                            match memchr::memchr(0, &body[*scanned..]) {
                                Some(i) if *scanned + i <= limit => *scanned + i,
                                Some(_) => return Err(FrameError::BodyTooLarge { limit }),
                                None if body.len() > limit => {
                                    return Err(FrameError::BodyTooLarge { limit })
                                }
                                None => {
                                    *scanned = body.len();
                                    return Ok(None);
                                }
                            }
                        }
                    };
                    let body_at = self.pos + *start;
                    let State::Body {
                        command, headers, ..
                    } = std::mem::replace(&mut self.state, State::Idle)
                    else {
                        unreachable!("matched above")
                    };
                    let frame = Frame {
                        command,
                        headers,
                        body: self.buf[body_at..body_at + end].to_vec(),
                    };
                    self.pos = body_at + end + 1;
                    return Ok(Some(frame));
                }
            }
        }
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The command and headers of a complete head (its lines, blank line
/// excluded).
fn parse_head(head: &[u8], limits: Limits) -> Result<(Command, Vec<(String, String)>), FrameError> {
    let mut lines = head.split(|&b| b == b'\n').map(strip_cr);
    let first = lines.next().unwrap_or_default();
    let command =
        Command::from_bytes(first).ok_or_else(|| FrameError::UnknownCommand(printable(first)))?;
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() == limits.max_headers {
            return Err(FrameError::TooManyHeaders {
                limit: limits.max_headers,
            });
        }
        let malformed = || FrameError::MalformedHeader(printable(line));
        if line.contains(&b'\r') {
            return Err(malformed());
        }
        let colon = memchr::memchr(b':', line).ok_or_else(malformed)?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() {
            return Err(malformed());
        }
        let decode = |raw: &[u8]| {
            if command.escapes_headers() {
                unescape(raw)
            } else {
                String::from_utf8(raw.to_vec()).map_err(|_| FrameError::NotUtf8)
            }
        };
        headers.push((decode(name)?, decode(value)?));
    }
    Ok((command, headers))
}

/// The body length the first `content-length` header gives, if any.
fn content_length(headers: &[(String, String)], limit: usize) -> Result<Option<usize>, FrameError> {
    let Some((_, v)) = headers.iter().find(|(n, _)| n == "content-length") else {
        return Ok(None);
    };
    let bad = || FrameError::BadContentLength(printable(v.as_bytes()));
    if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = v.parse().map_err(|_| bad())?;
    if n > limit as u64 {
        return Err(FrameError::BodyTooLarge { limit });
    }
    Ok(Some(n as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_header_bytes: 256,
            max_headers: 4,
            max_body_bytes: 64,
        }
    }

    /// Every frame in `data`, fed in pieces of `chunk` bytes.
    fn parse_in(data: &[u8], chunk: usize) -> Result<Vec<Frame>, FrameError> {
        let mut p = Parser::new(limits());
        let mut out = Vec::new();
        for piece in data.chunks(chunk.max(1)) {
            p.push(piece);
            while let Some(f) = p.next_frame()? {
                out.push(f);
            }
        }
        Ok(out)
    }

    /// The same answer whatever the pieces.
    fn parse(data: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let whole = parse_in(data, data.len());
        for chunk in [1, 2, 3, 7, 16] {
            assert_eq!(parse_in(data, chunk), whole, "pieces of {chunk}");
        }
        whole
    }

    fn one(data: &[u8]) -> Frame {
        let mut v = parse(data).unwrap();
        assert_eq!(v.len(), 1, "{v:?}");
        v.remove(0)
    }

    #[test]
    fn a_plain_frame() {
        let f = one(b"SEND\ndestination:/q\nreply-to:r\n\n{\"a\":1}\0");
        assert_eq!(f.command, Command::Send);
        assert_eq!(f.get("destination"), Some("/q"));
        assert_eq!(f.get("reply-to"), Some("r"));
        assert_eq!(f.body, b"{\"a\":1}");
    }

    #[test]
    fn crlf_heartbeats_and_several_frames_in_one_piece() {
        let data = b"\n\r\n\nCONNECT\r\naccept-version:1.2\r\nhost:h:1\r\n\r\n\0\n\nSEND\ndestination:d\n\nx\0\r\n";
        let v = parse(data).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].command, Command::Connect);
        // CONNECT headers are not unescaped; the raw colon stays.
        assert_eq!(v[0].get("host"), Some("h:1"));
        assert_eq!(v[1].body, b"x");
    }

    #[test]
    fn content_length_bodies_may_hold_nul() {
        let f = one(b"SEND\ncontent-length:5\ndestination:d\n\na\0b\0c\0");
        assert_eq!(f.body, b"a\0b\0c");
        let f = one(b"SEND\ncontent-length:0\n\n\0");
        assert!(f.body.is_empty());
    }

    #[test]
    fn headers_are_unescaped_first_repeat_wins_and_raw_colons_in_values_stay() {
        let f = one(b"SEND\ndestination:a\\cb\\\\c\\nd\\re\ndestination:other\nid:x:y\n\n\0");
        assert_eq!(f.get("destination"), Some("a:b\\c\nd\re"));
        assert_eq!(f.get("id"), Some("x:y"));
        assert_eq!(f.headers.len(), 3);
    }

    #[test]
    fn round_trips_through_the_encoder() {
        let f = Frame::new(Command::Message)
            .with("subscription", "s:1")
            .with("weird\\name", "v\r\n")
            .with_body(&b"\0\0body"[..]);
        let mut back = one(&f.encode());
        assert_eq!(back.get("content-length"), Some("6"));
        back.headers.retain(|(n, _)| n != "content-length");
        assert_eq!(back, f);
    }

    #[test]
    fn every_malformed_kind_is_an_error() {
        type Case = (&'static [u8], fn(&FrameError) -> bool);
        let cases: &[Case] = &[
            (b"FOO\n\n\0", |e| matches!(e, FrameError::UnknownCommand(_))),
            (b"send\n\n\0", |e| {
                matches!(e, FrameError::UnknownCommand(_))
            }),
            (b"SEND\nnocolon\n\n\0", |e| {
                matches!(e, FrameError::MalformedHeader(_))
            }),
            (b"SEND\n:empty\n\n\0", |e| {
                matches!(e, FrameError::MalformedHeader(_))
            }),
            (b"SEND\na:b\rc\n\n\0", |e| {
                matches!(e, FrameError::MalformedHeader(_))
            }),
            (b"SEND\na:b\\t\n\n\0", |e| {
                matches!(e, FrameError::BadEscape(_))
            }),
            (b"SEND\na:\xff\n\n\0", |e| *e == FrameError::NotUtf8),
            (b"SEND\ncontent-length:x\n\n\0", |e| {
                matches!(e, FrameError::BadContentLength(_))
            }),
            (b"SEND\ncontent-length:-1\n\n\0", |e| {
                matches!(e, FrameError::BadContentLength(_))
            }),
            (b"SEND\ncontent-length: 1\n\nx\0", |e| {
                matches!(e, FrameError::BadContentLength(_))
            }),
            (b"SEND\ncontent-length:99999999999999999999999\n\n\0", |e| {
                matches!(e, FrameError::BadContentLength(_))
            }),
            (b"SEND\ncontent-length:65\n\n", |e| {
                matches!(e, FrameError::BodyTooLarge { .. })
            }),
            (b"SEND\ncontent-length:2\n\nabc\0", |e| {
                *e == FrameError::MissingNul
            }),
            (b"SEND\na:1\nb:2\nc:3\nd:4\ne:5\n\n\0", |e| {
                matches!(e, FrameError::TooManyHeaders { .. })
            }),
        ];
        for (data, want) in cases {
            let e = parse(data).unwrap_err();
            assert!(want(&e), "{:?}: {e:?}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn limits_are_checked_while_reading() {
        // A head that never ends: refused once past the limit, without
        // waiting for the blank line.
        let mut p = Parser::new(limits());
        p.push(b"SEND\n");
        assert_eq!(p.next_frame(), Ok(None));
        p.push(&[b'a'; 300]);
        assert_eq!(
            p.next_frame(),
            Err(FrameError::HeaderTooLarge { limit: 256 })
        );
        // And the error stays.
        p.push(b"\n\n\0");
        assert!(p.next_frame().is_err());

        // A body without NUL and without content-length.
        let mut p = Parser::new(limits());
        p.push(b"SEND\n\n");
        p.push(&[b'x'; 64]);
        assert_eq!(p.next_frame(), Ok(None));
        assert!(p.in_frame());
        p.push(b"x");
        assert_eq!(p.next_frame(), Err(FrameError::BodyTooLarge { limit: 64 }));
        // A body exactly at the limit is fine.
        assert_eq!(
            parse(&[&b"SEND\n\n"[..], &[b'x'; 64], b"\0"].concat())
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn consumed_frames_are_dropped_and_in_frame_tracks_the_middle() {
        let mut p = Parser::new(limits());
        assert!(!p.in_frame());
        p.push(b"\n\r");
        assert_eq!(p.next_frame(), Ok(None));
        assert!(!p.in_frame());
        p.push(b"\nSEND\n\nab\0SE");
        assert!(p.next_frame().unwrap().is_some());
        assert_eq!(p.next_frame(), Ok(None));
        assert!(p.in_frame());
        p.push(b"ND\n\n\0");
        assert!(p.next_frame().unwrap().is_some());
        assert_eq!(p.buffered(), 0);
    }
}
