//! The generator's random draws, on the raw PCG stream only (never `rand`'s distributions,
//! whose outputs may change between versions).

use chrono::{DateTime, Duration, Utc};
use rand_core::Rng as _;
use rand_pcg::Pcg64;
use uuid::Uuid;

use crate::codec::format_dotnet;

/// The random draws, on the raw PCG stream only.
#[derive(Debug)]
pub(super) struct Draw(pub(super) Pcg64);

impl Draw {
    /// Uniform-enough integer in `0..n` (multiply-shift; the bias is below 2^-60 for small n).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.0.next_u64()) * u128::from(n.max(1))) >> 64) as u64
    }

    pub(super) fn range(&mut self, lo: u64, hi_inclusive: u64) -> u64 {
        lo + self.below(hi_inclusive - lo + 1)
    }

    pub(super) fn chance(&mut self, p: f64) -> bool {
        // 53 random bits as a float in [0, 1).
        ((self.0.next_u64() >> 11) as f64) * (1.0 / (1u64 << 53) as f64) < p
    }

    pub(super) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub(super) fn uuid(&mut self) -> Uuid {
        let mut bytes = [0u8; 16];
        self.0.fill_bytes(&mut bytes);
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    pub(super) fn hex(&mut self, len: usize, upper: bool) -> String {
        let digits: &[u8; 16] = if upper {
            b"0123456789ABCDEF"
        } else {
            b"0123456789abcdef"
        };
        (0..len)
            .map(|_| char::from(digits[self.below(16) as usize]))
            .collect()
    }

    pub(super) fn base64ish(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+=";
        (0..len).map(|_| char::from(*self.pick(ALPHABET))).collect()
    }

    /// A time between 2023-01-01 and mid-2026, at 100 ns resolution.
    pub(super) fn time(&mut self) -> DateTime<Utc> {
        let base = DateTime::<Utc>::from_timestamp(1_672_531_200, 0).unwrap_or_default();
        let secs = self.below(3 * 365 * 86_400 + 180 * 86_400) as i64;
        let ticks = self.below(10_000_000) as i64;
        base + Duration::seconds(secs) + Duration::nanoseconds(ticks * 100)
    }

    pub(super) fn later(&mut self, t: DateTime<Utc>, max_secs: u64) -> DateTime<Utc> {
        t + Duration::seconds(self.below(max_secs) as i64)
            + Duration::nanoseconds(self.below(10_000_000) as i64 * 100)
    }

    /// A date-time in one of the historical spellings: 7 digits and `Z` (most), no offset,
    /// fewer digits, or an offset.
    pub(super) fn date_string(&mut self, t: DateTime<Utc>) -> String {
        let canonical = format_dotnet(t);
        match self.below(20) {
            0..=11 => canonical,
            12..=15 => canonical.trim_end_matches('Z').to_owned(),
            16..=17 => {
                let digits = self.below(7) as usize;
                let whole = t.format("%Y-%m-%dT%H:%M:%S").to_string();
                let frac = &canonical[20..20 + digits];
                let z = if self.chance(0.5) { "Z" } else { "" };
                // Dropped digits change the value; the generator keeps only what it writes.
                if digits == 0 {
                    format!("{whole}{z}")
                } else {
                    format!("{whole}.{frac}{z}")
                }
            }
            _ => {
                let local = t + Duration::hours(2);
                format!("{}+02:00", format_dotnet(local).trim_end_matches('Z'))
            }
        }
    }
}
