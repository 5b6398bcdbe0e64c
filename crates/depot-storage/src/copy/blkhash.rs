//! ovirt-imageio's block checksum ("blkhash"), bit for bit.
//!
//! The construction, from `ovirt_imageio/_internal/blkhash.py` (class
//! `Hash`, function `checksum`):
//!
//! - split the image into `block_size` blocks (4 MiB by default; the last
//!   block is shorter when the size is not a multiple, and is hashed as it
//!   is: no padding);
//! - hash each block with unkeyed `blake2b(digest_size=32)`; an all-zero
//!   block of full size uses the precomputed digest of `block_size` zero
//!   bytes (the same value, computed once), a short zero block the digest of
//!   that many zeros;
//! - feed the 32-byte block digests, in order and nothing else (no sizes,
//!   no offsets, no count), into an outer unkeyed `blake2b(digest_size=32)`;
//! - the checksum is the outer digest in lower-case hex. An empty image is
//!   the outer hash of nothing: `0e5751c0...`.
//!
//! So anyone with ovirt-imageio's client (`ovirt_imageio.client.checksum`)
//! or ten lines of Python (`hashlib.blake2b`) can check a depot copy.

use std::fmt;
use std::sync::OnceLock;

use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};

/// blake2b with a 32-byte digest (`hashlib.blake2b(digest_size=32)`).
type Blake2b256 = Blake2b<U32>;

/// A block digest.
pub type BlockDigest = [u8; 32];

/// ovirt-imageio's default block size: 4 MiB.
pub const BLOCK_SIZE: u64 = 4 * 1024 * 1024;

/// The only algorithm: ovirt-imageio's default, `blake2b` with 32 bytes.
pub const ALGORITHM: &str = "blake2b";

/// The largest block size ovirt-imageio accepts (the smallest is 1 MiB
/// there; smaller ones are allowed here for tests).
pub const MAX_BLOCK_SIZE: u64 = 16 * 1024 * 1024;

/// A checksum result, as ovirt-imageio reports it:
/// `{"algorithm":"blake2b","block_size":4194304,"checksum":"<hex>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlkHash {
    pub algorithm: String,
    pub block_size: u64,
    /// 64 lower-case hex digits.
    pub checksum: String,
}

impl BlkHash {
    /// The JSON object ovirt-imageio returns, keys in its order.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"algorithm\":\"{}\",\"block_size\":{},\"checksum\":\"{}\"}}",
            self.algorithm, self.block_size, self.checksum
        )
    }
}

impl fmt::Display for BlkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}:{}",
            self.algorithm, self.block_size, self.checksum
        )
    }
}

/// 64 KiB of zeros, fed to the inner hash where a block mixes zeros and
/// data.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

fn hash_zeros(h: &mut Blake2b256, mut n: u64) {
    while n > 0 {
        let take = n.min(ZEROS.len() as u64) as usize;
        h.update(&ZEROS[..take]);
        n -= take as u64;
    }
}

/// The digest of `n` zero bytes.
fn zero_digest_of(n: u64) -> BlockDigest {
    let mut h = Blake2b256::new();
    hash_zeros(&mut h, n);
    h.finalize().into()
}

/// The digest of one all-zero block of `block_size` bytes; computed once
/// for the default size.
pub fn zero_block_digest(block_size: u64) -> BlockDigest {
    static DEFAULT: OnceLock<BlockDigest> = OnceLock::new();
    if block_size == BLOCK_SIZE {
        *DEFAULT.get_or_init(|| zero_digest_of(BLOCK_SIZE))
    } else {
        zero_digest_of(block_size)
    }
}

/// Incremental blkhash over an image fed in order, as data (`update`) or
/// as ranges known to read as zeros (`zero`, which costs nothing for whole
/// blocks). Pieces need not match block boundaries: a block may be built
/// from several pieces, data and zero mixed.
///
/// With [`BlockHasher::record_digests`] it keeps the digests of completed
/// blocks, so a journal can persist them and [`BlockHasher::resume`] can
/// continue after a crash without rereading the part already hashed.
pub struct BlockHasher {
    block_size: u64,
    outer: Blake2b256,
    zero_digest: BlockDigest,
    /// The current block's inner hash, once it has seen data. While `None`
    /// the current block's `filled` bytes are all zeros.
    inner: Option<Blake2b256>,
    /// Bytes of the current block seen so far (< block_size).
    filled: u64,
    /// Completed blocks.
    blocks: u64,
    record: bool,
    recorded: Vec<BlockDigest>,
}

impl fmt::Debug for BlockHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockHasher")
            .field("block_size", &self.block_size)
            .field("position", &self.position())
            .finish()
    }
}

impl Default for BlockHasher {
    fn default() -> Self {
        Self::new(BLOCK_SIZE)
    }
}

impl BlockHasher {
    /// A hasher with `block_size`, which must be in 1..=16 MiB (panics
    /// otherwise: a programming error).
    pub fn new(block_size: u64) -> Self {
        assert!(
            (1..=MAX_BLOCK_SIZE).contains(&block_size),
            "blkhash block size {block_size} out of range"
        );
        BlockHasher {
            block_size,
            outer: Blake2b256::new(),
            zero_digest: zero_block_digest(block_size),
            inner: None,
            filled: 0,
            blocks: 0,
            record: false,
            recorded: Vec::new(),
        }
    }

    /// A hasher that continues after `digests`, the digests of the first
    /// `digests.len()` full blocks of the image.
    pub fn resume(block_size: u64, digests: &[BlockDigest]) -> Self {
        let mut h = Self::new(block_size);
        for d in digests {
            h.outer.update(d);
        }
        h.blocks = digests.len() as u64;
        h
    }

    /// Keep the digests of the blocks completed from now on, to be taken
    /// with [`BlockHasher::take_digests`].
    pub fn record_digests(&mut self, on: bool) {
        self.record = on;
    }

    /// The digests of blocks completed since the last call (only when
    /// recording).
    pub fn take_digests(&mut self) -> Vec<BlockDigest> {
        std::mem::take(&mut self.recorded)
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Bytes hashed so far.
    pub fn position(&self) -> u64 {
        self.blocks * self.block_size + self.filled
    }

    /// Completed blocks so far.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Hashes `block`'s bytes, which may be a whole block, part of one, or
    /// span several; `known_zero` says it is all zeros (then only its length
    /// matters and whole blocks cost nothing).
    pub fn feed(&mut self, data: &[u8], known_zero: bool) {
        if known_zero {
            self.zero(data.len() as u64);
        } else {
            self.update(data);
        }
    }

    /// Hashes data bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = (self.block_size - self.filled) as usize;
            let take = data.len().min(room);
            let filled = self.filled;
            let inner = self.inner.get_or_insert_with(|| {
                let mut h = Blake2b256::new();
                hash_zeros(&mut h, filled);
                h
            });
            inner.update(&data[..take]);
            self.filled += take as u64;
            data = &data[take..];
            if self.filled == self.block_size {
                self.finish_block();
            }
        }
    }

    /// Hashes `len` bytes known to be zeros.
    pub fn zero(&mut self, mut len: u64) {
        while len > 0 {
            let take = len.min(self.block_size - self.filled);
            if let Some(inner) = self.inner.as_mut() {
                hash_zeros(inner, take);
            }
            self.filled += take;
            len -= take;
            if self.filled == self.block_size {
                self.finish_block();
            }
        }
    }

    /// Hashes data like [`BlockHasher::update`], but detects zeros and
    /// hashes the whole blocks inside `data` on up to `threads` threads.
    /// The result is the same; only the time differs.
    pub fn update_parallel(&mut self, mut data: &[u8], threads: usize) {
        let bs = self.block_size as usize;
        if self.filled > 0 {
            let take = data.len().min(bs - self.filled as usize);
            self.update_detect(&data[..take]);
            data = &data[take..];
        }
        let full = data.len() / bs;
        if full > 0 {
            let blocks = &data[..full * bs];
            let zero_digest = self.zero_digest;
            let digest = |b: &[u8]| -> BlockDigest {
                if is_zero(b) {
                    zero_digest
                } else {
                    Blake2b256::digest(b).into()
                }
            };
            let threads = threads.clamp(1, full);
            let per = full.div_ceil(threads) * bs;
            let digests: Vec<BlockDigest> = if threads == 1 {
                blocks.chunks(bs).map(digest).collect()
            } else {
                std::thread::scope(|sc| {
                    let mut groups = blocks.chunks(per);
                    let first = groups.next().expect("at least one block");
                    let handles: Vec<_> = groups
                        .map(|g| sc.spawn(move || g.chunks(bs).map(digest).collect::<Vec<_>>()))
                        .collect();
                    let mut all: Vec<BlockDigest> = first.chunks(bs).map(digest).collect();
                    for h in handles {
                        all.extend(h.join().expect("hash thread panicked"));
                    }
                    all
                })
            };
            for d in digests {
                self.outer.update(d);
                if self.record {
                    self.recorded.push(d);
                }
                self.blocks += 1;
            }
            data = &data[full * bs..];
        }
        self.update_detect(data);
    }

    fn update_detect(&mut self, data: &[u8]) {
        if is_zero(data) {
            self.zero(data.len() as u64);
        } else {
            self.update(data);
        }
    }

    fn finish_block(&mut self) {
        let digest: BlockDigest = match self.inner.take() {
            Some(h) => h.finalize().into(),
            None if self.filled == self.block_size => self.zero_digest,
            None => zero_digest_of(self.filled),
        };
        self.outer.update(digest);
        if self.record {
            self.recorded.push(digest);
        }
        self.blocks += 1;
        self.filled = 0;
    }

    /// Hashes the short last block, if any, and returns the checksum.
    pub fn finish(mut self) -> BlkHash {
        if self.filled > 0 {
            self.finish_block();
        }
        BlkHash {
            algorithm: ALGORITHM.to_string(),
            block_size: self.block_size,
            checksum: to_hex(&self.outer.finalize()),
        }
    }
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

pub(crate) fn from_hex(s: &str) -> Option<Vec<u8>> {
    fn nib(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let b = s.as_bytes();
    if b.len() & 1 == 1 {
        return None;
    }
    b.chunks_exact(2)
        .map(|p| Some(nib(p[0])? << 4 | nib(p[1])?))
        .collect()
}

/// Whether `buf` is all zeros. Safe code the compiler vectorises: OR 64
/// bytes at a time, stop at the first non-zero chunk.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(64);
    for c in &mut chunks {
        let mut acc = 0u64;
        for w in c.chunks_exact(8) {
            acc |= u64::from_ne_bytes(w.try_into().expect("8 bytes"));
        }
        if acc != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    fn blkhash_of(data: &[u8], block_size: u64) -> BlkHash {
        let mut h = BlockHasher::new(block_size);
        h.update(data);
        h.finish()
    }

    #[test]
    fn upstream_test_vectors() {
        // ovirt-imageio test/blkhash_test.py::test_checksum: b"data" then
        // truncated to the size.
        for (size, want) in [
            (
                4 * MIB,
                "f426bb2cf1e1901fe4e87423950944ecfed6d9d18a09e6e802aa4912e1c9b2d6",
            ),
            (
                3 * MIB,
                "42f3b76772a6d3dcffae2a24697721687975e2c60ddfd4ba7831ea9ce772ca71",
            ),
            (
                5 * MIB,
                "0da53b583fc1fbbac7edea14454c79f84a8107613e614f2c7a47071dfdcf41a6",
            ),
            (
                0,
                "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8",
            ),
        ] {
            let mut data = vec![0u8; size];
            if size > 0 {
                data[..4].copy_from_slice(b"data");
            }
            let got = blkhash_of(&data, BLOCK_SIZE);
            assert_eq!(got.checksum, want, "size {size}");
            // The same with the zero tail declared as zero.
            let mut h = BlockHasher::default();
            if size > 0 {
                h.update(b"data");
                h.zero(size as u64 - 4);
            }
            assert_eq!(h.finish().checksum, want, "size {size}, zero path");
        }
    }

    #[test]
    fn upstream_algorithm_basic() {
        // test_algorithm_basic: 10 blocks "%02d\n" padded with zeros.
        let mut h = BlockHasher::default();
        for i in 0..10 {
            let mut block = vec![0u8; BLOCK_SIZE as usize];
            let head = format!("{i:02}\n");
            block[..3].copy_from_slice(head.as_bytes());
            h.update(&block);
        }
        assert_eq!(
            h.finish().checksum,
            "7934079f80b53142d738d2bb7efaedf696a3d34d76a7865a24130bc7b4a7acfe"
        );
    }

    #[test]
    fn json_and_display() {
        let h = BlockHasher::default().finish();
        assert_eq!(
            h.to_json(),
            "{\"algorithm\":\"blake2b\",\"block_size\":4194304,\"checksum\":\
             \"0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8\"}"
        );
        assert!(h.to_string().starts_with("blake2b/4194304:0e5751"));
    }

    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn any_split_and_zero_declaration_gives_the_same_hash() {
        // 3 blocks of 64 KiB plus a short one; data and zeros mixed.
        let bs = 64 * 1024u64;
        let mut data = pattern(3 * bs as usize + 1000, 7);
        data[10_000..150_000].fill(0);
        data[3 * bs as usize..].fill(0);
        let want = blkhash_of(&data, bs);
        for piece in [777usize, 4096, 5000, 65536, 100_000, data.len()] {
            let mut h = BlockHasher::new(bs);
            for c in data.chunks(piece) {
                h.feed(c, is_zero(c));
            }
            assert_eq!(h.finish(), want, "piece {piece}");
        }
    }

    #[test]
    fn parallel_update_gives_the_same_hash() {
        let bs = 64 * 1024u64;
        let mut data = pattern(9 * bs as usize + 500, 5);
        data[2 * bs as usize..4 * bs as usize].fill(0);
        let want = blkhash_of(&data, bs);
        for threads in [1, 2, 3, 8] {
            for piece in [bs as usize, 3 * bs as usize + 7, data.len()] {
                let mut h = BlockHasher::new(bs);
                h.record_digests(true);
                for c in data.chunks(piece) {
                    h.update_parallel(c, threads);
                }
                assert_eq!(h.take_digests().len(), 9);
                assert_eq!(h.finish(), want, "threads {threads} piece {piece}");
            }
        }
    }

    #[test]
    fn resume_from_digests() {
        let bs = 64 * 1024u64;
        let data = pattern(5 * bs as usize + 123, 9);
        let want = blkhash_of(&data, bs);
        let mut h = BlockHasher::new(bs);
        h.record_digests(true);
        h.update(&data[..2 * bs as usize + 77]);
        let digests = h.take_digests();
        assert_eq!(digests.len(), 2);
        let mut r = BlockHasher::resume(bs, &digests);
        assert_eq!(r.position(), 2 * bs);
        r.update(&data[2 * bs as usize..]);
        assert_eq!(r.finish(), want);
    }

    #[test]
    fn is_zero_finds_any_byte() {
        let mut b = vec![0u8; 4096 + 13];
        assert!(is_zero(&b));
        for i in [0, 63, 64, 4095, 4096 + 12] {
            b[i] = 1;
            assert!(!is_zero(&b), "{i}");
            b[i] = 0;
        }
        assert!(is_zero(&[]));
    }

    #[test]
    fn hex_round_trip() {
        let d = [0u8, 1, 0xab, 0xff];
        assert_eq!(to_hex(&d), "0001abff");
        assert_eq!(from_hex("0001abff").unwrap(), d);
        assert!(from_hex("0g").is_none());
        assert!(from_hex("abc").is_none());
    }

    #[test]
    fn matches_python_hashlib() {
        // Data, a zero block, data, zeros, and a short last block.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let bs = BLOCK_SIZE as usize;
        let mut data = pattern(3 * bs + 12345, 3);
        data[bs..2 * bs].fill(0);
        data[2 * bs + 100..2 * bs + 200_000].fill(0);
        std::fs::write(&p, &data).unwrap();
        let py = crate::copy::testutil::python_blkhash(&p, data.len() as u64, BLOCK_SIZE);
        let Some(py) = py else {
            eprintln!("SKIP: python3 not found");
            return;
        };
        let mut h = BlockHasher::default();
        for c in data.chunks(1024 * 1024) {
            h.feed(c, is_zero(c));
        }
        assert_eq!(h.finish().checksum, py);
    }
    /// Prints the hash and zero-detection speed; no assertions. Run with
    /// `cargo test --release -p depot-storage copy::blkhash::tests::speed
    /// -- --ignored --nocapture`.
    #[test]
    #[ignore = "speed self-check; run with --ignored --nocapture"]
    fn speed() {
        let data = pattern(256 * MIB, 11);
        let t = std::time::Instant::now();
        let mut h = BlockHasher::default();
        h.update(&data);
        let sum = h.finish();
        let hash = 256.0 / t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let mut h = BlockHasher::default();
        for c in data.chunks(8 * MIB) {
            h.update_parallel(c, 2);
        }
        assert_eq!(h.finish(), sum);
        let par = 256.0 / t.elapsed().as_secs_f64();
        println!("blkhash on 2 threads, 8 MiB pieces: {par:.0} MiB/s");
        let zeros = vec![0u8; 256 * MIB];
        let t = std::time::Instant::now();
        assert!(is_zero(std::hint::black_box(&zeros)));
        let zero = 256.0 / t.elapsed().as_secs_f64();
        println!(
            "blkhash {hash:.0} MiB/s, is_zero {zero:.0} MiB/s ({})",
            &sum.checksum[..8]
        );
    }
}
