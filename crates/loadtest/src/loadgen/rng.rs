//! Randomness: splitmix64, seeded per run and per user, so a run's values follow from its seed;
//! and times in whole milliseconds.

use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub(super) struct Rng(u64);

impl Rng {
    /// Stream `stream` of `seed`. Both are mixed before they meet: splitmix64 walks its state
    /// by a constant step, so unmixed neighbouring streams would replay each other's values
    /// one step apart (and users would share ids).
    pub(super) fn new(seed: u64, stream: u64) -> Self {
        let mixed_seed = Rng(seed).next();
        let mixed_stream = Rng(stream ^ 0x5851_f42d_4c95_7f2d).next();
        Rng(mixed_seed ^ mixed_stream.rotate_left(17))
    }

    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub(super) fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    pub(super) fn uuid(&mut self) -> Uuid {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next().to_le_bytes());
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    pub(super) fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Now, in whole milliseconds (both stores keep those exactly).
pub(super) fn now_ms() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}
