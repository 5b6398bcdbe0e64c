//! The bytes of VDSM's SPM mailbox (docs/formats.md, "SPM mailbox
//! (version 1)"): 64-byte messages, 4 KiB host mailboxes with a checksum,
//! and the event block. Everything here parses bytes another host wrote,
//! so nothing in it trusts them: every field is checked and a bad one is
//! an error, never a panic (fuzz target `mailbox_format`).
//!
//! VDSM's layout, so that a depot host and a VDSM host could in principle
//! share one pool:
//!
//! ```text
//! message (64 bytes)
//!   0      version      b'1'
//!   1..5   op code      b"xtnd" (extend)
//!   5..21  domain UUID  its 128-bit value, little endian
//!   21..37 volume UUID  idem
//!   37..53 size         16 lower-case hex digits, MiB
//!   53..64 padding      b'0'
//!   a first byte 0 is an empty slot; 64 bytes of 0x01 a "clean" message
//!
//! host mailbox (4096 bytes) at host_id * 4096 of inbox and outbox
//!   0..4032     63 message slots
//!   4032..4092  reserved (zero)
//!   4092..4096  checksum: the sum of bytes 0..4092, u32 little endian
//! ```

use std::fmt;

use depot_api::storage::{SdUuid, VolUuid};
use depot_api::types::Uuid;

pub const MESSAGE_SIZE: usize = 64;
pub const MAILBOX_SIZE: usize = 4096;
pub const CHECKSUM_SIZE: usize = 4;
/// Message slots per host mailbox: the last 64 bytes hold the checksum.
pub const MESSAGES_PER_MAILBOX: usize = MAILBOX_SIZE / MESSAGE_SIZE - 1;
/// The size of `inbox` and `outbox` (as VDSM creates them).
pub const AREA_SIZE: u64 = 16 << 20;
/// The highest host id (sanlock's and VDSM's limit); host id 0's mailbox
/// in `inbox` is the event block.
pub const MAX_HOST_ID: u32 = 2000;
/// The largest size an extend message may ask for, in MiB (VDSM's
/// `VOLUME_MAX_SIZE`).
pub const MAX_SIZE_MIB: u64 = 0xFFFF_FFFF;

pub const VERSION: u8 = b'1';
pub const EXTEND: [u8; 4] = *b"xtnd";
/// What a host writes over an answered request, and the SPM over its
/// answer once it has seen that (VDSM's `CLEAN_MESSAGE`).
pub const CLEAN: [u8; MESSAGE_SIZE] = [1; MESSAGE_SIZE];
const EVENT: [u8; 4] = *b"\0evt";

const DOMAIN_AT: usize = 5;
const VOLUME_AT: usize = 21;
const SIZE_AT: usize = 37;
const PAD_AT: usize = 53;
/// The bytes a reply shares with its request: version, code, domain and
/// volume (VDSM's `checkReply`).
const MATCH_LEN: usize = SIZE_AT;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("{what} of {len} bytes, not {want}")]
    Length {
        what: &'static str,
        len: usize,
        want: usize,
    },
    #[error("mailbox checksum {found:#010x}, its bytes sum to {expected:#010x}")]
    Checksum { expected: u32, found: u32 },
    #[error("message version {0:#04x}, not '1'")]
    Version(u8),
    #[error("unknown message code {0:?}")]
    Code([u8; 4]),
    #[error("size field {0:?} is not 16 hex digits")]
    SizeField(String),
    #[error("size {0} MiB is larger than {MAX_SIZE_MIB} MiB")]
    SizeTooLarge(u64),
    #[error("host id {0} is not in 1..={MAX_HOST_ID}")]
    HostId(u64),
}

/// A host id that has a mailbox (1..=2000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(u32);

impl HostId {
    pub fn new(id: u64) -> Result<HostId, FormatError> {
        match u32::try_from(id) {
            Ok(n @ 1..=MAX_HOST_ID) => Ok(HostId(n)),
            _ => Err(FormatError::HostId(id)),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// Where this host's mailbox starts in `inbox` and `outbox`.
    pub fn offset(self) -> u64 {
        u64::from(self.0) * MAILBOX_SIZE as u64
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An extend request (host -> SPM), or its answer (SPM -> host) with the
/// size reached, 0 when the SPM failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extend {
    pub domain: SdUuid,
    pub volume: VolUuid,
    /// The LV size asked for (or reached), in MiB.
    pub size_mib: u64,
}

impl Extend {
    pub fn new(domain: SdUuid, volume: VolUuid, size_mib: u64) -> Result<Extend, FormatError> {
        if size_mib > MAX_SIZE_MIB {
            return Err(FormatError::SizeTooLarge(size_mib));
        }
        Ok(Extend {
            domain,
            volume,
            size_mib,
        })
    }

    pub fn to_bytes(&self) -> [u8; MESSAGE_SIZE] {
        let mut m = [b'0'; MESSAGE_SIZE];
        m[0] = VERSION;
        m[1..DOMAIN_AT].copy_from_slice(&EXTEND);
        m[DOMAIN_AT..VOLUME_AT].copy_from_slice(&self.domain.0.as_u128().to_le_bytes());
        m[VOLUME_AT..SIZE_AT].copy_from_slice(&self.volume.0.as_u128().to_le_bytes());
        m[SIZE_AT..PAD_AT].copy_from_slice(format!("{:016x}", self.size_mib).as_bytes());
        m
    }

    /// Whether `reply` answers this request: the same version, code,
    /// domain and volume (the size is the SPM's answer).
    pub fn is_answered_by(&self, reply: &[u8; MESSAGE_SIZE]) -> bool {
        reply[..MATCH_LEN] == self.to_bytes()[..MATCH_LEN]
    }
}

/// One message slot, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// First byte 0: nothing there.
    Empty,
    /// All 0x01: the request was answered and the answer read.
    Clean,
    Extend(Extend),
}

impl Message {
    pub fn parse(m: &[u8]) -> Result<Message, FormatError> {
        let m: &[u8; MESSAGE_SIZE] = m.try_into().map_err(|_| FormatError::Length {
            what: "message",
            len: m.len(),
            want: MESSAGE_SIZE,
        })?;
        if m[0] == 0 {
            return Ok(Message::Empty);
        }
        if *m == CLEAN {
            return Ok(Message::Clean);
        }
        if m[0] != VERSION {
            return Err(FormatError::Version(m[0]));
        }
        let code: [u8; 4] = m[1..DOMAIN_AT].try_into().expect("4 bytes");
        if code != EXTEND {
            return Err(FormatError::Code(code));
        }
        let uuid = |at: usize| {
            let b: [u8; 16] = m[at..at + 16].try_into().expect("16 bytes");
            Uuid::from_u128(u128::from_le_bytes(b))
        };
        let field = &m[SIZE_AT..PAD_AT];
        // Exactly 16 hex digits: u64::from_str_radix would also take a
        // sign.
        if !field.iter().all(u8::is_ascii_hexdigit) {
            return Err(FormatError::SizeField(
                String::from_utf8_lossy(field).into_owned(),
            ));
        }
        let text = std::str::from_utf8(field).expect("hex digits are ASCII");
        let size = u64::from_str_radix(text, 16).expect("16 hex digits fit in u64");
        // The padding is not checked, as VDSM does not.
        Extend::new(SdUuid(uuid(DOMAIN_AT)), VolUuid(uuid(VOLUME_AT)), size).map(Message::Extend)
    }
}

/// The sum of `data`'s bytes in 32 bits (VDSM's `checksum`).
pub fn checksum(data: &[u8]) -> u32 {
    data.iter().fold(0u32, |s, &b| s.wrapping_add(u32::from(b)))
}

/// One host's 4 KiB mailbox: 63 raw message slots. Kept raw, so that a
/// slot that does not parse is still compared and rewritten as it was.
#[derive(Clone, PartialEq, Eq)]
pub struct Mailbox {
    bytes: Box<[u8; MAILBOX_SIZE]>,
}

impl fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let used: Vec<usize> = (0..MESSAGES_PER_MAILBOX)
            .filter(|&i| self.slot(i)[0] != 0)
            .collect();
        f.debug_struct("Mailbox").field("used", &used).finish()
    }
}

impl Default for Mailbox {
    fn default() -> Self {
        Mailbox {
            bytes: Box::new([0; MAILBOX_SIZE]),
        }
    }
}

impl Mailbox {
    fn sized(data: &[u8]) -> Result<Box<[u8; MAILBOX_SIZE]>, FormatError> {
        let a: [u8; MAILBOX_SIZE] = data.try_into().map_err(|_| FormatError::Length {
            what: "mailbox",
            len: data.len(),
            want: MAILBOX_SIZE,
        })?;
        Ok(Box::new(a))
    }

    /// A host's mailbox as the SPM reads it from `inbox`: its checksum
    /// must match (a mailbox half written, or garbage, is not read).
    pub fn parse_checked(data: &[u8]) -> Result<Mailbox, FormatError> {
        let bytes = Self::sized(data)?;
        let (body, sum) = bytes.split_at(MAILBOX_SIZE - CHECKSUM_SIZE);
        let found = u32::from_le_bytes(sum.try_into().expect("4 bytes"));
        let expected = checksum(body);
        if found != expected {
            return Err(FormatError::Checksum { expected, found });
        }
        Ok(Mailbox::slots_only(bytes))
    }

    /// Keeps the message slots only: the rest is rewritten by `to_bytes`,
    /// and two mailboxes with the same messages are equal.
    fn slots_only(mut bytes: Box<[u8; MAILBOX_SIZE]>) -> Mailbox {
        bytes[MESSAGES_PER_MAILBOX * MESSAGE_SIZE..].fill(0);
        Mailbox { bytes }
    }

    /// A host's mailbox as the host reads it from `outbox`: VDSM's SPM
    /// writes its answers there without a checksum.
    pub fn parse_unchecked(data: &[u8]) -> Result<Mailbox, FormatError> {
        Ok(Mailbox::slots_only(Self::sized(data)?))
    }

    pub fn slot(&self, i: usize) -> &[u8; MESSAGE_SIZE] {
        assert!(i < MESSAGES_PER_MAILBOX, "slot {i}");
        self.bytes[i * MESSAGE_SIZE..(i + 1) * MESSAGE_SIZE]
            .try_into()
            .expect("64 bytes")
    }

    pub fn message(&self, i: usize) -> Result<Message, FormatError> {
        Message::parse(self.slot(i))
    }

    pub fn set(&mut self, i: usize, m: &[u8; MESSAGE_SIZE]) {
        assert!(i < MESSAGES_PER_MAILBOX, "slot {i}");
        self.bytes[i * MESSAGE_SIZE..(i + 1) * MESSAGE_SIZE].copy_from_slice(m);
    }

    /// No slot in use (every first byte 0).
    pub fn is_empty(&self) -> bool {
        (0..MESSAGES_PER_MAILBOX).all(|i| self.slot(i)[0] == 0)
    }

    /// The mailbox with its checksum, as written.
    pub fn to_bytes(&self) -> [u8; MAILBOX_SIZE] {
        let mut out = *self.bytes;
        let body = MAILBOX_SIZE - CHECKSUM_SIZE;
        out[MESSAGES_PER_MAILBOX * MESSAGE_SIZE..body].fill(0);
        let sum = checksum(&out[..body]);
        out[body..].copy_from_slice(&sum.to_le_bytes());
        out
    }
}

/// The event block (host 0's mailbox in `inbox`): a host that sent a
/// request writes a new random id there, so an SPM that watches the block
/// reads every mailbox at once instead of at its next full poll.
pub fn event_block(id: [u8; 16]) -> [u8; MAILBOX_SIZE] {
    let mut b = [0; MAILBOX_SIZE];
    b[..4].copy_from_slice(&EVENT);
    b[4..20].copy_from_slice(&id);
    b
}

/// The id in an event block (bytes 4..20, whatever the rest holds, as
/// VDSM reads it); `None` for a block shorter than that.
pub fn event_id(block: &[u8]) -> Option<[u8; 16]> {
    block.get(4..20).map(|b| b.try_into().expect("16 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn sd() -> SdUuid {
        SdUuid::from_str("1f2c3d4e-5a6b-4c7d-8e9f-a0b1c2d3e4f5").unwrap()
    }
    fn vol() -> VolUuid {
        VolUuid::from_str("00112233-4455-6677-8899-aabbccddeeff").unwrap()
    }

    #[test]
    fn extend_message_has_vdsms_bytes() {
        let m = Extend::new(sd(), vol(), 3072).unwrap().to_bytes();
        assert_eq!(&m[..5], b"1xtnd");
        // The UUID's 128-bit value, little endian: its last byte first.
        assert_eq!(m[5], 0xf5);
        assert_eq!(m[20], 0x1f);
        assert_eq!(
            &m[21..37],
            &[
                0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22,
                0x11, 0x00
            ]
        );
        assert_eq!(&m[37..53], b"0000000000000c00");
        assert_eq!(&m[53..], b"00000000000");
    }

    #[test]
    fn extend_round_trip() {
        let e = Extend::new(sd(), vol(), MAX_SIZE_MIB).unwrap();
        assert_eq!(Message::parse(&e.to_bytes()), Ok(Message::Extend(e)));
        assert!(e.is_answered_by(&Extend { size_mib: 0, ..e }.to_bytes()));
    }

    #[test]
    fn a_reply_for_another_domain_or_volume_does_not_answer() {
        let e = Extend::new(sd(), vol(), 10).unwrap();
        let other_sd = SdUuid::from_str("1f2c3d4e-5a6b-4c7d-8e9f-a0b1c2d3e4f6").unwrap();
        let other_vol = VolUuid::from_str("10112233-4455-6677-8899-aabbccddeeff").unwrap();
        for reply in [
            Extend {
                domain: other_sd,
                ..e
            },
            Extend {
                volume: other_vol,
                ..e
            },
        ] {
            assert!(!e.is_answered_by(&reply.to_bytes()), "{reply:?}");
        }
        assert!(!e.is_answered_by(&CLEAN));
        assert!(!e.is_answered_by(&[0; MESSAGE_SIZE]));
    }

    #[test]
    fn sizes_beyond_vdsms_limit_are_refused() {
        assert_eq!(
            Extend::new(sd(), vol(), MAX_SIZE_MIB + 1),
            Err(FormatError::SizeTooLarge(MAX_SIZE_MIB + 1))
        );
        let mut m = Extend::new(sd(), vol(), 1).unwrap().to_bytes();
        m[37..53].copy_from_slice(b"ffffffffffffffff");
        assert_eq!(Message::parse(&m), Err(FormatError::SizeTooLarge(u64::MAX)));
    }

    #[test]
    fn garbage_messages_are_errors() {
        let good = Extend::new(sd(), vol(), 1).unwrap().to_bytes();
        let mut m = good;
        m[0] = b'2';
        assert_eq!(Message::parse(&m), Err(FormatError::Version(b'2')));
        let mut m = good;
        m[1..5].copy_from_slice(b"shrk");
        assert_eq!(Message::parse(&m), Err(FormatError::Code(*b"shrk")));
        for bad in [
            b"+000000000000001",
            b"000000000000000g",
            b"               1",
        ] {
            let mut m = good;
            m[37..53].copy_from_slice(bad);
            assert!(
                matches!(Message::parse(&m), Err(FormatError::SizeField(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Message::parse(&good[..63]),
            Err(FormatError::Length { len: 63, .. })
        ));
        assert_eq!(Message::parse(&[0; 64]), Ok(Message::Empty));
        assert_eq!(Message::parse(&CLEAN), Ok(Message::Clean));
        // Upper-case digits parse (VDSM's int(x, 16) takes them).
        let mut m = good;
        m[37..53].copy_from_slice(b"00000000000000FF");
        assert!(matches!(
            Message::parse(&m),
            Ok(Message::Extend(Extend { size_mib: 255, .. }))
        ));
    }

    #[test]
    fn mailbox_round_trip_with_checksum() {
        let mut mb = Mailbox::default();
        assert!(mb.is_empty());
        let e = Extend::new(sd(), vol(), 2560).unwrap();
        mb.set(62, &e.to_bytes());
        mb.set(3, &CLEAN);
        let bytes = mb.to_bytes();
        let sum = checksum(&bytes[..4092]);
        assert_eq!(&bytes[4092..], &sum.to_le_bytes());
        let back = Mailbox::parse_checked(&bytes).unwrap();
        assert_eq!(back, mb);
        assert_eq!(back.message(62), Ok(Message::Extend(e)));
        assert_eq!(back.message(3), Ok(Message::Clean));
        assert_eq!(back.message(0), Ok(Message::Empty));
        assert!(!back.is_empty());
        // An empty mailbox sums to 0 (VDSM skips it).
        assert_eq!(&Mailbox::default().to_bytes()[4092..], &[0; 4]);
    }

    #[test]
    fn a_bad_checksum_is_refused_only_where_checked() {
        let mut mb = Mailbox::default();
        mb.set(0, &Extend::new(sd(), vol(), 1).unwrap().to_bytes());
        let mut bytes = mb.to_bytes();
        bytes[100] ^= 1;
        assert!(matches!(
            Mailbox::parse_checked(&bytes),
            Err(FormatError::Checksum { .. })
        ));
        // Half a mailbox (a torn write of the first sector).
        let mut torn = mb.to_bytes();
        torn[512..].fill(0);
        assert!(Mailbox::parse_checked(&torn).is_err());
        assert!(Mailbox::parse_unchecked(&bytes).is_ok());
        assert!(matches!(
            Mailbox::parse_checked(&bytes[..4095]),
            Err(FormatError::Length { len: 4095, .. })
        ));
    }

    #[test]
    fn to_bytes_clears_the_reserved_bytes() {
        let mut raw = [0u8; MAILBOX_SIZE];
        raw[4040] = 7;
        let mb = Mailbox::parse_unchecked(&raw).unwrap();
        let out = mb.to_bytes();
        assert_eq!(out[4040], 0);
        assert!(Mailbox::parse_checked(&out).is_ok());
    }

    #[test]
    fn host_ids_and_offsets() {
        assert_eq!(HostId::new(0), Err(FormatError::HostId(0)));
        assert_eq!(HostId::new(2001), Err(FormatError::HostId(2001)));
        assert_eq!(HostId::new(u64::MAX), Err(FormatError::HostId(u64::MAX)));
        assert_eq!(HostId::new(1).unwrap().offset(), 4096);
        assert!(HostId::new(2000).unwrap().offset() + MAILBOX_SIZE as u64 <= AREA_SIZE);
    }

    #[test]
    fn event_blocks() {
        let b = event_block([7; 16]);
        assert_eq!(&b[..4], b"\0evt");
        assert_eq!(event_id(&b), Some([7; 16]));
        assert_eq!(event_id(&b[..19]), None);
        // An event block is an empty mailbox to the SPM's scan (first
        // byte 0 in every slot but the first, whose first byte is 0 too).
        assert!(Mailbox::parse_unchecked(&b).unwrap().is_empty());
    }
}
