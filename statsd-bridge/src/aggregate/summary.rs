//! A bounded, windowed quantile sketch for summaries.
//!
//! Observations land in the newest of `age_buckets` rotating buffers, each covering
//! `max_age / age_buckets`, as client_golang's summaries do. A buffer that reaches its cap is
//! compacted by merging neighbours into weighted means, so memory per series is bounded and
//! quantiles stay approximate (the text format marks them as such for every client library).

use std::time::{Duration, Instant};

/// Sketch settings shared by every summary of a family.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryOptions {
    /// The quantiles to expose, e.g. 0.5, 0.9, 0.99.
    pub quantiles: Vec<f64>,
    /// How long an observation counts towards the quantiles.
    pub max_age: Duration,
    /// How many buffers the window rotates through.
    pub age_buckets: u32,
    /// Samples per buffer before it is compacted.
    pub buf_cap: usize,
}

impl Default for SummaryOptions {
    /// statsd_exporter's (client_golang's) defaults.
    fn default() -> Self {
        Self {
            quantiles: vec![0.5, 0.9, 0.99],
            max_age: Duration::from_secs(600),
            age_buckets: 5,
            buf_cap: 500,
        }
    }
}

#[derive(Debug, Clone)]
struct Bucket {
    start: Instant,
    samples: Vec<(f64, f64)>,
}

/// One summary series' quantile state.
#[derive(Debug, Clone)]
pub struct Sketch {
    buckets: Vec<Bucket>,
}

impl Sketch {
    /// An empty sketch starting at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            buckets: vec![Bucket {
                start: now,
                samples: Vec::new(),
            }],
        }
    }

    fn bucket_span(opts: &SummaryOptions) -> Duration {
        opts.max_age / opts.age_buckets.max(1)
    }

    fn rotate(&mut self, now: Instant, opts: &SummaryOptions) {
        let span = Self::bucket_span(opts);
        let max_age = opts.max_age;
        self.buckets
            .retain(|b| now.saturating_duration_since(b.start) < max_age);
        let newest_fresh = self
            .buckets
            .last()
            .is_some_and(|b| now.saturating_duration_since(b.start) < span);
        if !newest_fresh {
            self.buckets.push(Bucket {
                start: now,
                samples: Vec::new(),
            });
        }
    }

    /// Adds an observation with a weight (1 / sample rate).
    pub fn observe(&mut self, value: f64, weight: f64, now: Instant, opts: &SummaryOptions) {
        if value.is_nan() {
            return;
        }
        self.rotate(now, opts);
        let cap = opts.buf_cap.max(2);
        if let Some(b) = self.buckets.last_mut() {
            b.samples.push((value, weight));
            if b.samples.len() >= cap {
                compact(&mut b.samples, cap);
            }
        }
    }

    /// The configured quantiles over the live window; NaN when the window is empty. Reads
    /// only, so a scrape can take it under a shared lock.
    pub fn quantiles(&self, now: Instant, opts: &SummaryOptions) -> Vec<(f64, f64)> {
        let mut all: Vec<(f64, f64)> = self
            .buckets
            .iter()
            .filter(|b| now.saturating_duration_since(b.start) < opts.max_age)
            .flat_map(|b| b.samples.iter().copied())
            .collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total: f64 = all.iter().map(|s| s.1).sum();
        opts.quantiles
            .iter()
            .map(|&q| {
                if all.is_empty() || total <= 0.0 {
                    return (q, f64::NAN);
                }
                let rank = q * total;
                let mut seen = 0.0;
                for (v, w) in &all {
                    seen += w;
                    if seen >= rank {
                        return (q, *v);
                    }
                }
                (q, all.last().map_or(f64::NAN, |s| s.0))
            })
            .collect()
    }
}

/// Shrinks a full buffer by merging sorted neighbours into weighted means, never letting a
/// merged point outweigh `2 × total / cap`: points stay of similar weight, so a quantile's
/// rank error stays near `1 / cap` of the window instead of growing with each compaction.
fn compact(samples: &mut Vec<(f64, f64)>, cap: usize) {
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: f64 = samples.iter().map(|s| s.1).sum();
    let target = 2.0 * total / cap.max(2) as f64;
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(cap / 2 + 1);
    let mut group: Option<(f64, f64)> = None; // (weighted sum, weight)
    for &(v, w) in samples.iter() {
        group = match group {
            Some((sum, gw)) if gw + w <= target => Some((sum + v * w, gw + w)),
            Some((sum, gw)) => {
                merged.push((sum / gw, gw));
                Some((v * w, w))
            }
            None => Some((v * w, w)),
        };
    }
    if let Some((sum, gw)) = group {
        merged.push(if gw > 0.0 { (sum / gw, gw) } else { (0.0, 0.0) });
    }
    if merged.len() * 4 > cap * 3 {
        // Pathological weights (e.g. one huge sample rate): fall back to pairwise merging.
        merged = merged
            .chunks(2)
            .map(|pair| {
                let w: f64 = pair.iter().map(|s| s.1).sum();
                let v = if w > 0.0 {
                    pair.iter().map(|s| s.0 * s.1).sum::<f64>() / w
                } else {
                    0.0
                };
                (v, w)
            })
            .collect();
    }
    *samples = merged;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_uniform_stream_are_close() {
        let opts = SummaryOptions::default();
        let t0 = Instant::now();
        let mut s = Sketch::new(t0);
        for i in 1..=10_000 {
            s.observe(f64::from(i), 1.0, t0, &opts);
        }
        let q = s.quantiles(t0, &opts);
        let err = |got: f64, want: f64| (got - want).abs() / want;
        assert!(err(q[0].1, 5000.0) < 0.05, "{q:?}");
        assert!(err(q[1].1, 9000.0) < 0.05, "{q:?}");
        assert!(err(q[2].1, 9900.0) < 0.05, "{q:?}");
    }

    #[test]
    fn memory_is_bounded_and_old_samples_age_out() {
        let opts = SummaryOptions::default();
        let t0 = Instant::now();
        let mut s = Sketch::new(t0);
        for i in 0..100_000 {
            s.observe(f64::from(i), 1.0, t0, &opts);
        }
        assert!(s.buckets.iter().map(|b| b.samples.len()).sum::<usize>() <= opts.buf_cap);
        let q = s.quantiles(t0, &opts);
        assert!((q[0].1 - 50_000.0).abs() < 2_500.0, "{q:?}");
        let later = t0 + opts.max_age + Duration::from_secs(1);
        assert!(s.quantiles(later, &opts)[0].1.is_nan());
    }

    #[test]
    fn weights_count() {
        let opts = SummaryOptions::default();
        let t0 = Instant::now();
        let mut s = Sketch::new(t0);
        s.observe(1.0, 9.0, t0, &opts);
        s.observe(100.0, 1.0, t0, &opts);
        assert_eq!(s.quantiles(t0, &opts)[1].1, 1.0);
    }
}
