//! Randomised inputs for the fuzz and abuse tests, all from a seeded generator so that a
//! failure reproduces from the seed it prints.
//!
//! [`Rng`] is a xorshift64* generator. [`packets`] builds Ethernet frames that know where their
//! headers end and mutates them; [`model`] applies the classifier's parsing rules to any frame
//! to predict whether it parses and what flow it carries. [`requests`] produces well-formed,
//! malformed and hostile HTTP requests and sends them over raw TCP without panicking on a
//! broken connection. [`views`] turns what a daemon holds (its listings, its state file, its
//! memory use) into values a test can compare before and after.

pub mod model;
pub mod packets;
pub mod requests;
pub mod views;

/// A small deterministic generator (xorshift64*), so failures reproduce from their seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (0 is replaced, since xorshift would stay at 0).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A value in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next_u64() % den < num
    }

    /// One of `items`.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    /// `n` random bytes from `alphabet`.
    pub fn bytes_from(&mut self, alphabet: &[u8], n: usize) -> Vec<u8> {
        (0..n).map(|_| self.pick(alphabet)).collect()
    }
}

/// The seed to use: `VANTAGE_FUZZ_SEED` (decimal or 0x-hex) when set, otherwise `default`.
pub fn seed_from_env(default: u64) -> u64 {
    let Ok(text) = std::env::var("VANTAGE_FUZZ_SEED") else {
        return default;
    };
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.unwrap_or_else(|e| panic!("VANTAGE_FUZZ_SEED={text:?}: {e}"))
}

/// A count from the environment variable `var` when set, otherwise `default`.
pub fn count_from_env(var: &str, default: usize) -> usize {
    match std::env::var(var) {
        Ok(text) => text.trim().parse().unwrap_or_else(|e| panic!("{var}={text:?}: {e}")),
        Err(_) => default,
    }
}
