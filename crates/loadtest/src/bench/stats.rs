//! The median and the range of one measure over a benchmark's runs.

/// The median and the range of one measure over the runs.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(super) struct Spread {
    pub(super) median: f64,
    pub(super) min: f64,
    pub(super) max: f64,
}

impl Spread {
    pub(super) fn of(values: impl IntoIterator<Item = f64>) -> Spread {
        let mut v: Vec<f64> = values.into_iter().collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Spread {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }

    pub(super) fn map(self, f: impl Fn(f64) -> f64) -> Spread {
        // for a decreasing f (seconds to rows/s) the ends swap
        let (a, b) = (f(self.min), f(self.max));
        Spread {
            median: f(self.median),
            min: a.min(b),
            max: a.max(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_give_the_median_and_keep_min_below_max_through_a_decreasing_map() {
        let s = Spread::of([30.0, 10.0, 20.0]);
        assert_eq!((s.median, s.min, s.max), (20.0, 10.0, 30.0));
        let even = Spread::of([4.0, 1.0, 2.0, 3.0]);
        assert_eq!(even.median, 2.5);
        // seconds to rows/s: the slowest run is the lowest throughput
        let rps = s.map(|secs| 600.0 / secs);
        assert_eq!((rps.median, rps.min, rps.max), (30.0, 20.0, 60.0));
    }
}
