//! A small deterministic generator (xorshift64*): the same cases or data
//! on every run, with no dependency. For tests that mutate inputs and for
//! the benchmarks' source data; not for anything that must be
//! unpredictable.

/// xorshift64* (Vigna). A state of 0 stays 0: seed it with anything else.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Fills `buf`, eight bytes a number (little-endian; the last one
    /// cut short).
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sequence is xorshift64*'s, so that a test's cases and a
    /// benchmark's data stay what they were.
    #[test]
    fn the_sequence_is_xorshift64_star() {
        // Computed apart from this code (Python, the same three shifts
        // and multiplier).
        let mut r = Rng::new(1);
        let first: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(
            first,
            [
                0x47e4_ce4b_896c_dd1d,
                0xabcf_a6a8_e079_651d,
                0xb9d1_0d8f_eb73_1f57
            ]
        );
        let mut r = Rng::new(0x5eed_f00d_1234_5678);
        let mut buf = [0u8; 11];
        r.fill(&mut buf);
        let mut again = Rng::new(0x5eed_f00d_1234_5678);
        assert_eq!(buf[..8], again.next_u64().to_le_bytes());
        assert_eq!(buf[8..], again.next_u64().to_le_bytes()[..3]);
        assert_eq!(Rng::new(7).below(0), 0);
        assert!((0..1000).all(|_| r.below(10) < 10));
    }
}
