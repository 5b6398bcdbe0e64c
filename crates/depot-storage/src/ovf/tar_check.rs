//! A push-based validator of the engine's OVF_STORE tar.
//!
//! The caller feeds the upload as it arrives, in pieces of any size; every
//! piece is checked before the next one is asked for, so a bad archive
//! fails at the first bad byte, before anything is written to the volume.
//! Memory is bounded whatever the upload size: one 512-byte header block, a
//! pax extended header (at most [`MAX_PAX_SIZE`]) and the list of entry
//! names and sizes.
//!
//! What is accepted (docs/formats.md, "OVF_STORE volumes"):
//!
//! - a Content-Length that is a non-zero multiple of 512;
//! - header blocks with a valid checksum and POSIX ustar (`ustar\0`) or GNU
//!   (`ustar  \0`) magic;
//! - regular files (typeflag `0` or NUL) named exactly `info.json`,
//!   `metadata.json` or `<uuid>.ovf` (canonical lower-case UUID), and pax
//!   extended headers (`x`, whose `path` and `size` records apply to the next
//!   entry; `g` without `path`, `size` or `linkpath`);
//! - the end-of-archive marker (two zero blocks), then only zero bytes up to
//!   exactly Content-Length.
//!
//! Everything else is refused: links, devices, FIFOs, directories,
//! contiguous files, GNU long names and links, sparse files, volume labels,
//! names with `/`, `..`, a leading `/` or NUL, entries that would run past
//! Content-Length, garbage after the end blocks, and streams shorter or
//! longer than declared.

use super::OvfError;

/// The tar block size.
pub const BLOCK: usize = 512;
/// The largest pax extended header accepted (the engine writes none; GNU
/// tar's are a few hundred bytes).
pub const MAX_PAX_SIZE: u64 = 64 * 1024;

/// What a valid archive holds, in order: each entry's name and size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveSummary {
    pub entries: Vec<(String, u64)>,
}

/// What [`TarValidator::feed_with`] reports as it goes.
#[derive(Debug, PartialEq, Eq)]
pub enum TarEvent<'a> {
    /// A regular file entry starts (its name passed the rules); `offset`
    /// is where its header block starts.
    Start {
        name: &'a str,
        size: u64,
        offset: u64,
    },
    /// The next bytes of the current entry's content.
    Data(&'a [u8]),
    /// The current entry's content is complete.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a header block.
    Header,
    /// Collecting a pax extended header's data, then its padding.
    Pax {
        global: bool,
        remaining: u64,
        pad: u64,
    },
    /// Passing an entry's content, then its padding.
    Data { remaining: u64, pad: u64 },
    /// One zero block seen; collecting the block that must be the second.
    SecondEnd,
    /// After the end-of-archive marker: zeros only.
    Trailing,
    /// An error was reported; nothing more is accepted.
    Failed,
}

/// What a header block says, checked (see [`TarValidator::parse_header`]).
struct Header {
    name: Vec<u8>,
    /// The name for messages.
    shown: String,
    size: u64,
    typeflag: u8,
}

/// `path` and `size` from a pax `x` header, for the next entry.
#[derive(Debug, Default)]
struct PaxOverrides {
    path: Option<String>,
    size: Option<u64>,
    /// Where the pax header started (for messages).
    at: Option<u64>,
}

/// The streaming validator. See the [module docs](self) for the rules.
#[derive(Debug)]
pub struct TarValidator {
    content_length: u64,
    /// Bytes consumed so far.
    pos: u64,
    state: State,
    block: [u8; BLOCK],
    fill: usize,
    pax: Vec<u8>,
    pending: PaxOverrides,
    /// Name of the entry whose content is being passed, and where its
    /// header started.
    current: Option<(String, u64)>,
    entries: Vec<(String, u64)>,
}

impl TarValidator {
    /// A validator for an upload of exactly `content_length` bytes. Fails at
    /// once if that length cannot be a tar (zero, or not a multiple of 512).
    pub fn new(content_length: u64) -> Result<Self, OvfError> {
        let bad = |reason: &str| OvfError::BadLength {
            content_length,
            reason: reason.to_string(),
        };
        if content_length < 2 * BLOCK as u64 {
            return Err(bad(
                "too short for a tar archive (at least its two 512-byte end blocks)",
            ));
        }
        if content_length & (BLOCK as u64 - 1) != 0 {
            return Err(bad("not a multiple of 512 bytes, so not a tar archive"));
        }
        Ok(TarValidator {
            content_length,
            pos: 0,
            state: State::Header,
            block: [0; BLOCK],
            fill: 0,
            pax: Vec::new(),
            pending: PaxOverrides::default(),
            current: None,
            entries: Vec::new(),
        })
    }

    /// Bytes accepted so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The declared length.
    pub fn content_length(&self) -> u64 {
        self.content_length
    }

    /// Checks the next bytes of the stream.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), OvfError> {
        self.feed_with(bytes, &mut |_| Ok(()))
    }

    /// Checks the next bytes of the stream and reports entries and their
    /// content to `on` (which may fail, e.g. on an entry too large for it).
    pub fn feed_with(
        &mut self,
        bytes: &[u8],
        on: &mut dyn FnMut(TarEvent<'_>) -> Result<(), OvfError>,
    ) -> Result<(), OvfError> {
        if self.state == State::Failed {
            return Err(OvfError::archive(
                self.pos,
                None,
                "the archive was already refused",
            ));
        }
        // Bytes past Content-Length are an error, after the ones before it
        // were checked (their error, if any, says more).
        let room = (self.content_length - self.pos).min(bytes.len() as u64) as usize;
        let mut r = self.consume(&bytes[..room], on);
        if r.is_ok() && room < bytes.len() {
            r = Err(OvfError::TooLong {
                content_length: self.content_length,
            });
        }
        if r.is_err() {
            self.state = State::Failed;
        }
        r
    }

    /// Ends the stream: the archive must be complete and exactly
    /// Content-Length bytes long.
    pub fn finish(self) -> Result<ArchiveSummary, OvfError> {
        if self.state == State::Failed {
            return Err(OvfError::archive(
                self.pos,
                None,
                "the archive was already refused",
            ));
        }
        if self.pos < self.content_length {
            return Err(OvfError::Truncated {
                received: self.pos,
                content_length: self.content_length,
            });
        }
        if self.state != State::Trailing {
            // Unreachable with the "fits" checks on each header, kept as a
            // guard.
            return Err(OvfError::archive(
                self.pos,
                self.current.as_ref().map(|(n, _)| n.as_str()),
                "the archive ends without its two end-of-archive zero blocks",
            ));
        }
        Ok(ArchiveSummary {
            entries: self.entries,
        })
    }

    fn consume(
        &mut self,
        mut input: &[u8],
        on: &mut dyn FnMut(TarEvent<'_>) -> Result<(), OvfError>,
    ) -> Result<(), OvfError> {
        while !input.is_empty() {
            let n = match self.state {
                State::Header | State::SecondEnd => {
                    let n = (BLOCK - self.fill).min(input.len());
                    self.block[self.fill..self.fill + n].copy_from_slice(&input[..n]);
                    self.fill += n;
                    self.pos += n as u64;
                    if self.fill == BLOCK {
                        self.fill = 0;
                        self.on_block(on)?;
                    }
                    n
                }
                State::Pax {
                    global,
                    remaining,
                    pad,
                } => self.take_pax(input, global, remaining, pad)?,
                State::Data { remaining, pad } => self.take_data(input, remaining, pad, on)?,
                State::Trailing => {
                    if let Some(i) = input.iter().position(|&b| b != 0) {
                        return Err(OvfError::archive(
                            self.pos + i as u64,
                            None,
                            format!(
                                "non-zero byte after the end-of-archive blocks (everything up \
                                 to Content-Length {} must be zero)",
                                self.content_length
                            ),
                        ));
                    }
                    self.pos += input.len() as u64;
                    input.len()
                }
                State::Failed => unreachable!("checked in feed_with"),
            };
            input = &input[n..];
        }
        Ok(())
    }

    /// Takes bytes of a pax extended header's data, then of its padding;
    /// parses the header when both are complete. Returns the bytes taken.
    fn take_pax(
        &mut self,
        input: &[u8],
        global: bool,
        remaining: u64,
        pad: u64,
    ) -> Result<usize, OvfError> {
        let n = if remaining > 0 {
            let n = (remaining.min(input.len() as u64)) as usize;
            self.pax.extend_from_slice(&input[..n]);
            n
        } else {
            (pad.min(input.len() as u64)) as usize
        };
        self.pos += n as u64;
        let (remaining, pad) = if remaining > 0 {
            (remaining - n as u64, pad)
        } else {
            (0, pad - n as u64)
        };
        if remaining == 0 && pad == 0 {
            self.parse_pax(global)?;
            self.state = State::Header;
        } else {
            self.state = State::Pax {
                global,
                remaining,
                pad,
            };
        }
        Ok(n)
    }

    /// Passes bytes of an entry's content to `on`, then takes its padding.
    /// Returns the bytes taken.
    fn take_data(
        &mut self,
        input: &[u8],
        remaining: u64,
        pad: u64,
        on: &mut dyn FnMut(TarEvent<'_>) -> Result<(), OvfError>,
    ) -> Result<usize, OvfError> {
        let n;
        if remaining > 0 {
            n = (remaining.min(input.len() as u64)) as usize;
            on(TarEvent::Data(&input[..n]))?;
            let left = remaining - n as u64;
            if left == 0 {
                on(TarEvent::End)?;
            }
            self.state = State::Data {
                remaining: left,
                pad,
            };
        } else {
            n = (pad.min(input.len() as u64)) as usize;
            self.state = State::Data {
                remaining: 0,
                pad: pad - n as u64,
            };
        }
        self.pos += n as u64;
        if self.state
            == (State::Data {
                remaining: 0,
                pad: 0,
            })
        {
            self.current = None;
            self.state = State::Header;
        }
        Ok(n)
    }

    /// A complete block is in `self.block`; `self.pos` is just past it.
    fn on_block(
        &mut self,
        on: &mut dyn FnMut(TarEvent<'_>) -> Result<(), OvfError>,
    ) -> Result<(), OvfError> {
        let at = self.pos - BLOCK as u64;
        let zero = self.block.iter().all(|&b| b == 0);
        if self.state == State::SecondEnd {
            if !zero {
                return Err(OvfError::archive(
                    at,
                    None,
                    "a zero block not followed by a second one (the end-of-archive marker is \
                     two zero blocks)",
                ));
            }
            self.state = State::Trailing;
            return Ok(());
        }
        if zero {
            if let Some(pax_at) = self.pending.at {
                return Err(OvfError::archive(
                    pax_at,
                    None,
                    "pax extended header not followed by an entry",
                ));
            }
            self.state = State::SecondEnd;
            return Ok(());
        }
        self.on_header(at, on)
    }

    fn on_header(
        &mut self,
        at: u64,
        on: &mut dyn FnMut(TarEvent<'_>) -> Result<(), OvfError>,
    ) -> Result<(), OvfError> {
        let Header {
            name,
            shown,
            size,
            typeflag,
        } = self.parse_header(at)?;
        match typeflag {
            b'x' | b'g' => self.on_pax_header(at, typeflag, size),
            b'0' | 0 => self.on_file_header(at, name, &shown, size, on),
            other => {
                let name = self.pending.path.take().unwrap_or(shown);
                Err(OvfError::archive(
                    at,
                    Some(&name),
                    format!(
                        "{} (typeflag {:?}): only regular files are allowed",
                        type_name(other),
                        other as char
                    ),
                ))
            }
        }
    }

    /// The fields of the header block in `self.block` (at `at`), checked:
    /// checksum, magic, name (with a ustar prefix), size.
    fn parse_header(&self, at: u64) -> Result<Header, OvfError> {
        // The tar crate's typed view of the block: field offsets only.
        // Its value parsers are laxer than these rules (see
        // docs/architecture.md), so the values are parsed here.
        let th = tar::Header::from_byte_slice(&self.block);
        let old = th.as_old();
        let h = th.as_bytes();
        let first = at == 0;
        let raw_name = cstr(&old.name).to_vec();
        let shown = String::from_utf8_lossy(&raw_name).into_owned();

        let stored = parse_octal(&old.cksum);
        let (unsigned, signed) = checksums(h);
        if stored.is_none_or(|s| s != unsigned && s as i64 != signed) {
            let rule = format!(
                "bad header checksum (stored {}, computed {unsigned})",
                field_text(&old.cksum)
            );
            let rule = if first {
                format!("not a tar archive: {rule}")
            } else {
                rule
            };
            return Err(OvfError::archive(at, None, rule));
        }
        // Not `as_ustar()`: it also wants version "00", and depot has
        // always taken `ustar\0` with any version.
        let magic = &h[257..263];
        let ustar = magic == b"ustar\0";
        let gnu = th.as_gnu().is_some();
        if !ustar && !gnu {
            let rule = format!(
                "header magic {:?} is neither POSIX ustar nor GNU tar",
                String::from_utf8_lossy(&h[257..265])
            );
            let rule = if first {
                format!("not a tar archive: {rule}")
            } else {
                rule
            };
            return Err(OvfError::archive(at, Some(&shown), rule));
        }
        let name = if ustar {
            let prefix = cstr(&h[345..500]);
            if prefix.is_empty() {
                raw_name
            } else {
                let mut full = prefix.to_vec();
                full.push(b'/');
                full.extend_from_slice(&raw_name);
                full
            }
        } else {
            raw_name
        };
        let shown = String::from_utf8_lossy(&name).into_owned();
        let size = parse_number(&old.size).ok_or_else(|| {
            OvfError::archive(
                at,
                Some(&shown),
                format!("bad size field {}", field_text(&old.size)),
            )
        })?;
        Ok(Header {
            name,
            shown,
            size,
            typeflag: th.entry_type().as_byte(),
        })
    }

    /// A pax extended header (`x`: for the next entry; `g`: global).
    fn on_pax_header(&mut self, at: u64, typeflag: u8, size: u64) -> Result<(), OvfError> {
        if self.pending.at.is_some() {
            return Err(OvfError::archive(
                at,
                None,
                "two pax extended headers in a row",
            ));
        }
        if size > MAX_PAX_SIZE {
            return Err(OvfError::archive(
                at,
                None,
                format!("pax extended header of {size} bytes (at most {MAX_PAX_SIZE})"),
            ));
        }
        self.check_fits(at, None, size)?;
        self.pax.clear();
        let global = typeflag == b'g';
        if !global {
            self.pending.at = Some(at);
        }
        self.state = State::Pax {
            global,
            remaining: size,
            pad: padding(size),
        };
        if size == 0 {
            self.parse_pax(global)?;
            self.state = State::Header;
        }
        Ok(())
    }

    /// A regular file: its name (a pax `path` wins) and size must pass the
    /// rules; then its content follows.
    fn on_file_header(
        &mut self,
        at: u64,
        name: Vec<u8>,
        shown: &str,
        size: u64,
        on: &mut dyn FnMut(TarEvent<'_>) -> Result<(), OvfError>,
    ) -> Result<(), OvfError> {
        let pending = std::mem::take(&mut self.pending);
        let name = match pending.path {
            Some(p) => p,
            None => String::from_utf8(name)
                .map_err(|_| OvfError::archive(at, Some(shown), "the name is not valid UTF-8"))?,
        };
        let size = pending.size.unwrap_or(size);
        check_name(&name).map_err(|rule| OvfError::archive(at, Some(&name), rule))?;
        self.check_fits(at, Some(&name), size)?;
        on(TarEvent::Start {
            name: &name,
            size,
            offset: at,
        })?;
        self.entries.push((name.clone(), size));
        if size == 0 {
            on(TarEvent::End)?;
            self.state = State::Header;
        } else {
            self.current = Some((name, at));
            self.state = State::Data {
                remaining: size,
                pad: padding(size),
            };
        }
        Ok(())
    }

    /// An entry (or pax header) of `size` bytes whose header starts at `at`
    /// must leave room for its padding and the two end blocks before
    /// Content-Length.
    fn check_fits(&self, at: u64, name: Option<&str>, size: u64) -> Result<(), OvfError> {
        let end = (at + BLOCK as u64)
            .checked_add(size)
            .and_then(|e| e.checked_add(padding(size) + 2 * BLOCK as u64));
        match end {
            Some(end) if end <= self.content_length => Ok(()),
            _ => Err(OvfError::archive(
                at,
                name,
                format!(
                    "{size} bytes of content do not fit before Content-Length {} with the \
                     end-of-archive blocks",
                    self.content_length
                ),
            )),
        }
    }

    /// Parses the collected pax records ("<len> <key>=<value>\n").
    fn parse_pax(&mut self, global: bool) -> Result<(), OvfError> {
        let data = std::mem::take(&mut self.pax);
        let at = self.pending.at.unwrap_or(self.pos);
        let bad = |rule: String| OvfError::archive(at, None, rule);
        let mut rest = &data[..];
        while !rest.is_empty() {
            let sp = rest
                .iter()
                .position(|&b| b == b' ')
                .ok_or_else(|| bad("malformed pax record (no length)".into()))?;
            let len: usize = std::str::from_utf8(&rest[..sp])
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("malformed pax record length".into()))?;
            if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
                return Err(bad("malformed pax record (length does not match)".into()));
            }
            let record = &rest[sp + 1..len - 1];
            rest = &rest[len..];
            let eq = record
                .iter()
                .position(|&b| b == b'=')
                .ok_or_else(|| bad("malformed pax record (no '=')".into()))?;
            let key = String::from_utf8_lossy(&record[..eq]).into_owned();
            let value = &record[eq + 1..];
            match key.as_str() {
                "path" | "size" | "linkpath" if global => {
                    return Err(bad(format!(
                        "global pax header sets {key:?}, which would apply to every entry"
                    )));
                }
                "path" => {
                    let p = std::str::from_utf8(value)
                        .map_err(|_| bad("pax path is not valid UTF-8".into()))?;
                    self.pending.path = Some(p.to_string());
                }
                "size" => {
                    let s = std::str::from_utf8(value)
                        .ok()
                        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or_else(|| bad("malformed pax size".into()))?;
                    self.pending.size = Some(s);
                }
                "linkpath" => {
                    return Err(bad(
                        "pax header sets a link target: links are not allowed".into()
                    ));
                }
                k if k.starts_with("GNU.sparse") => {
                    return Err(bad(format!(
                        "pax header {k:?} describes a sparse file: not allowed"
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Whether `name` is one of the names an OVF_STORE holds: `info.json`,
/// `metadata.json` or `<uuid>.ovf` with a canonical lower-case UUID.
/// Returns the rule broken otherwise.
pub fn check_name(name: &str) -> Result<(), String> {
    if name == "info.json" || name == "metadata.json" {
        return Ok(());
    }
    if name.contains('\0') {
        return Err("NUL byte in the name".into());
    }
    if name.starts_with('/') {
        return Err("absolute name: entries must be plain file names".into());
    }
    if name.split('/').any(|c| c == "..") {
        return Err("'..' in the name: entries must be plain file names".into());
    }
    if name.contains('/') {
        return Err("'/' in the name: entries must be plain file names".into());
    }
    if let Some(stem) = name.strip_suffix(".ovf") {
        if is_canonical_uuid(stem) {
            return Ok(());
        }
        return Err(
            "an .ovf entry must be named <uuid>.ovf with a lower-case canonical UUID".into(),
        );
    }
    Err("not an OVF_STORE entry name (info.json, metadata.json or <uuid>.ovf)".into())
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lower-case hex.
pub fn is_canonical_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// The bytes of a NUL-terminated field.
fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// A numeric field for messages.
fn field_text(field: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(field))
}

/// The unsigned and signed sums of the header with the checksum field read
/// as spaces (POSIX uses unsigned; some old tars wrote signed).
fn checksums(h: &[u8; BLOCK]) -> (u64, i64) {
    let mut u = 0u64;
    let mut s = 0i64;
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        u += u64::from(b);
        s += i64::from(b as i8);
    }
    (u, s)
}

/// An octal field: optional leading spaces, octal digits, then NULs or
/// spaces to the end.
fn parse_octal(field: &[u8]) -> Option<u64> {
    let mut i = 0;
    while i < field.len() && field[i] == b' ' {
        i += 1;
    }
    let start = i;
    let mut v: u64 = 0;
    while i < field.len() && (b'0'..=b'7').contains(&field[i]) {
        v = v.checked_mul(8)?.checked_add(u64::from(field[i] - b'0'))?;
        i += 1;
    }
    if i == start {
        return None;
    }
    if field[i..].iter().all(|&b| b == 0 || b == b' ') {
        Some(v)
    } else {
        None
    }
}

/// A size field: octal, or GNU base-256 (first byte 0x80, big-endian).
fn parse_number(field: &[u8]) -> Option<u64> {
    if field[0] == 0x80 {
        let mut v: u64 = 0;
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        Some(v)
    } else if field[0] & 0x80 != 0 {
        None // negative base-256
    } else {
        parse_octal(field)
    }
}

fn type_name(t: u8) -> &'static str {
    match t {
        b'1' => "hard link",
        b'2' => "symbolic link",
        b'3' => "character device",
        b'4' => "block device",
        b'5' => "directory",
        b'6' => "FIFO",
        b'7' => "contiguous file",
        b'L' => "GNU long name",
        b'K' => "GNU long link name",
        b'S' => "GNU sparse file",
        b'V' => "volume label",
        b'M' => "multi-volume continuation",
        b'D' => "GNU directory dump",
        _ => "unknown entry type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovf::tests_common::*;

    fn validate(
        data: &[u8],
        content_length: u64,
        piece: usize,
    ) -> Result<ArchiveSummary, OvfError> {
        let mut v = TarValidator::new(content_length)?;
        for chunk in data.chunks(piece.max(1)) {
            v.feed(chunk)?;
        }
        v.finish()
    }

    fn refused(data: &[u8], needle: &str) -> OvfError {
        let e = validate(data, data.len() as u64, 4096).unwrap_err();
        assert!(
            e.to_string().contains(needle),
            "expected {needle:?} in: {e}"
        );
        assert_eq!(e.code(), depot_api::Code::InvalidParameterException);
        e
    }

    #[test]
    fn engine_shaped_archive_passes_in_any_piece_size() {
        let (tar, ids) = engine_tar(3);
        assert_eq!(tar.len() % 512, 0);
        assert_ne!(
            tar.len() % 4096,
            0,
            "test archive should not be 4 KiB aligned"
        );
        for piece in [1, 7, 511, 512, 513, 4096, 65536, tar.len()] {
            let s = validate(&tar, tar.len() as u64, piece).unwrap();
            let names: Vec<&str> = s.entries.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names[0], "info.json");
            assert_eq!(
                names[1..4],
                ids.iter()
                    .map(|i| format!("{i}.ovf"))
                    .collect::<Vec<_>>()
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()[..]
            );
            assert_eq!(names[4], "metadata.json");
        }
    }

    #[test]
    fn events_carry_the_content() {
        let (tar, _) = engine_tar(2);
        let mut v = TarValidator::new(tar.len() as u64).unwrap();
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        let mut ended = 0;
        for chunk in tar.chunks(100) {
            v.feed_with(chunk, &mut |ev| {
                match ev {
                    TarEvent::Start { name, .. } => files.push((name.to_string(), Vec::new())),
                    TarEvent::Data(d) => files.last_mut().unwrap().1.extend_from_slice(d),
                    TarEvent::End => ended += 1,
                }
                Ok(())
            })
            .unwrap();
        }
        v.finish().unwrap();
        assert_eq!(ended, files.len());
        assert!(String::from_utf8_lossy(&files[0].1).contains("Last Updated"));
        assert!(String::from_utf8_lossy(&files[1].1).contains("ovf:Envelope"));
    }

    #[test]
    fn trailing_zeros_up_to_content_length_are_fine() {
        let (mut tar, _) = engine_tar(1);
        tar.extend_from_slice(&[0u8; 10 * 512]);
        validate(&tar, tar.len() as u64, 1000).unwrap();
    }

    #[test]
    fn bad_lengths() {
        for cl in [0u64, 512, 1000, 1025] {
            let e = TarValidator::new(cl).unwrap_err();
            assert!(matches!(e, OvfError::BadLength { .. }), "{e}");
        }
    }

    #[test]
    fn truncated_stream_names_missing_bytes() {
        let (tar, _) = engine_tar(2);
        let short = &tar[..tar.len() - 700];
        let e = validate(short, tar.len() as u64, 4096).unwrap_err();
        assert!(matches!(e, OvfError::Truncated { .. }), "{e}");
        assert!(e.to_string().contains("700 bytes missing"), "{e}");
    }

    #[test]
    fn longer_than_declared() {
        let (mut tar, _) = engine_tar(1);
        let declared = tar.len() as u64;
        tar.extend_from_slice(&[0u8; 512]);
        let e = validate(&tar, declared, 4096).unwrap_err();
        assert!(matches!(e, OvfError::TooLong { .. }), "{e}");
        // Declared shorter than the archive: the entry that does not fit is
        // refused at its header, before its content arrives.
        let e = validate(&tar, declared - 1024, 4096).unwrap_err();
        assert!(e.to_string().contains("do not fit"), "{e}");
    }

    #[test]
    fn declared_too_short_for_an_entry_fails_at_its_header() {
        let (tar, _) = engine_tar(1);
        let mut v = TarValidator::new(2048).unwrap();
        let e = v.feed(&tar[..2048]).unwrap_err();
        assert_eq!(v.position(), 1536, "stopped at the second header");
        assert!(e.to_string().contains("do not fit"), "{e}");
    }

    #[test]
    fn not_a_tar() {
        let junk: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
        refused(&junk, "not a tar archive");
        let text = "hello world\n".repeat(400).into_bytes();
        let mut t = text.clone();
        t.truncate(4096);
        refused(&t, "not a tar archive");
    }

    #[test]
    fn bad_checksum_of_a_later_header() {
        let (mut tar, _) = engine_tar(2);
        // The second header starts after info.json's header and content.
        let second = 512 + (info_json().len().div_ceil(512)) * 512;
        tar[second + 10] ^= 0x01;
        let e = refused(&tar, "bad header checksum");
        assert!(e.to_string().contains(&format!("byte {second}")), "{e}");
    }

    #[test]
    fn names_are_refused() {
        for (name, rule) in [
            ("../x", "'..'"),
            ("/etc/x", "absolute"),
            ("a/info.json", "'/'"),
            ("x.txt", "not an OVF_STORE entry name"),
            ("INFO.JSON", "not an OVF_STORE entry name"),
            ("6F1B4E0A-0D1C-4E4B-9C5E-2B7F3A9D1C00.ovf", "lower-case"),
            ("not-a-uuid.ovf", "lower-case"),
        ] {
            let tar = raw_tar(&[raw_entry(name, b'0', b"data", "")]);
            let e = refused(&tar, rule);
            assert!(e.to_string().contains(&format!("{name:?}")), "{e}");
        }
    }

    #[test]
    fn entry_types_are_refused() {
        for (t, what) in [
            (b'2', "symbolic link"),
            (b'1', "hard link"),
            (b'3', "character device"),
            (b'4', "block device"),
            (b'5', "directory"),
            (b'6', "FIFO"),
            (b'L', "GNU long name"),
            (b'K', "GNU long link"),
        ] {
            let tar = raw_tar(&[
                raw_entry("info.json", b'0', b"{}", ""),
                raw_entry("metadata.json", t, b"", "/etc/passwd"),
            ]);
            let e = refused(&tar, what);
            assert!(e.to_string().contains("metadata.json"), "{e}");
        }
    }

    #[test]
    fn garbage_after_end_blocks() {
        let (mut tar, _) = engine_tar(1);
        tar.extend_from_slice(&[0u8; 1024]);
        let n = tar.len();
        tar[n - 100] = b'X';
        refused(&tar, "non-zero byte after the end-of-archive");
    }

    #[test]
    fn a_single_zero_block_then_data() {
        let one = raw_entry("info.json", b'0', b"{}", "");
        let mut tar = one.clone();
        tar.extend_from_slice(&[0u8; 512]);
        tar.extend_from_slice(&raw_entry("metadata.json", b'0', b"{}", ""));
        tar.extend_from_slice(&[0u8; 1024]);
        refused(&tar, "not followed by a second one");
    }

    #[test]
    fn no_end_blocks() {
        let tar = raw_entry("info.json", b'0', b"{}", "");
        let mut v = TarValidator::new(tar.len() as u64).unwrap();
        let e = v.feed(&tar).unwrap_err();
        assert!(e.to_string().contains("do not fit"), "{e}");
    }

    #[test]
    fn pax_path_and_size_apply() {
        let id = "0b6c0f59-5a4d-4c1a-9a55-7f5b0a3c2d11";
        let pax = pax_entry(&[("path", &format!("{id}.ovf")), ("mtime", "1700000000.5")]);
        let tar = raw_tar(&[
            pax,
            raw_entry("some-long-name-that-is-replaced", b'0', b"<x/>", ""),
        ]);
        let s = validate(&tar, tar.len() as u64, 333).unwrap();
        assert_eq!(s.entries, vec![(format!("{id}.ovf"), 4)]);
        // A pax path that breaks the rules is refused by its name.
        let pax = pax_entry(&[("path", "../../etc/cron.d/x")]);
        let tar = raw_tar(&[pax, raw_entry("info.json", b'0', b"{}", "")]);
        refused(&tar, "'..'");
        // A pax header that gives a link target.
        let pax = pax_entry(&[("linkpath", "/etc/shadow")]);
        let tar = raw_tar(&[pax, raw_entry("info.json", b'0', b"{}", "")]);
        refused(&tar, "links are not allowed");
    }

    #[test]
    fn global_pax_header_setting_path_is_refused() {
        let mut g = pax_entry(&[("path", "info.json")]);
        g[156] = b'g';
        fix_checksum(&mut g);
        let tar = raw_tar(&[g, raw_entry("info.json", b'0', b"{}", "")]);
        refused(&tar, "global pax header sets \"path\"");
        let mut g = pax_entry(&[("comment", "hello")]);
        g[156] = b'g';
        fix_checksum(&mut g);
        let tar = raw_tar(&[g, raw_entry("info.json", b'0', b"{}", "")]);
        validate(&tar, tar.len() as u64, 512).unwrap();
    }

    #[test]
    fn gnu_magic_is_accepted() {
        let mut e = raw_entry("info.json", b'0', b"{}", "");
        e[257..265].copy_from_slice(b"ustar  \0");
        fix_checksum(&mut e);
        let tar = raw_tar(&[e]);
        validate(&tar, tar.len() as u64, 512).unwrap();
    }

    #[test]
    fn ustar_prefix_makes_a_path() {
        let mut e = raw_entry("info.json", b'0', b"{}", "");
        e[345..348].copy_from_slice(b"etc");
        fix_checksum(&mut e);
        refused(&raw_tar(&[e]), "'/'");
    }

    #[test]
    fn check_name_rules() {
        assert!(check_name("info.json").is_ok());
        assert!(check_name("metadata.json").is_ok());
        assert!(check_name("0b6c0f59-5a4d-4c1a-9a55-7f5b0a3c2d11.ovf").is_ok());
        assert!(check_name("0b6c0f59-5a4d-4c1a-9a55-7f5b0a3c2d11.ovf\0").is_err());
        assert!(check_name("./info.json").is_err());
        assert!(check_name("").is_err());
    }
}
