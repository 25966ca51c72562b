//! Native (sparse, exponential) histograms, bucketed as Prometheus' client libraries do:
//! a bucket factor picks the schema, bucket `i` holds `(base^(i-1), base^i]` with
//! `base = 2^(2^-schema)`, and past the bucket limit the schema drops by one (neighbouring
//! buckets merge), as client_golang does without a reset period or a zero-threshold limit.

use std::sync::OnceLock;

/// client_golang's default zero threshold, 2^-128.
pub const DEFAULT_ZERO_THRESHOLD: f64 = 2.938_735_877_055_719e-39;

/// The bucket limit when a factor is set without one: client_golang's documented example,
/// which bounds a series to a few kilobytes.
pub const DEFAULT_MAX_BUCKETS: u32 = 160;

/// The coarsest and finest schemas Prometheus accepts.
const MIN_SCHEMA: i8 = -4;
const MAX_SCHEMA: i8 = 8;

/// How native histograms are built for a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NativeOptions {
    /// Resolution: each bucket's upper bound is `2^(2^-schema)` times its lower one.
    pub schema: i8,
    /// Populated buckets at most; past it the schema drops.
    pub max_buckets: u32,
    /// Observations with an absolute value up to this go to the zero bucket.
    pub zero_threshold: f64,
}

impl NativeOptions {
    /// Options from statsd_exporter's `native_histogram_bucket_factor` (> 1; the widest
    /// bucket growth allowed) and `native_histogram_max_buckets` (0: the default).
    pub fn from_factor(factor: f64, max_buckets: u32, zero_threshold: Option<f64>) -> Option<Self> {
        (factor > 1.0 && factor.is_finite()).then(|| Self {
            schema: schema_for_factor(factor),
            max_buckets: if max_buckets == 0 {
                DEFAULT_MAX_BUCKETS
            } else {
                max_buckets
            },
            zero_threshold: zero_threshold
                .filter(|z| z.is_finite() && *z >= 0.0)
                .unwrap_or(DEFAULT_ZERO_THRESHOLD),
        })
    }
}

/// The finest schema whose bucket growth doesn't exceed `factor` (client_golang's
/// `pickSchema`).
pub fn schema_for_factor(factor: f64) -> i8 {
    let floor = factor.log2().log2().floor();
    if floor <= -8.0 {
        MAX_SCHEMA
    } else if floor >= 4.0 {
        MIN_SCHEMA
    } else {
        // -8 < floor < 4, so the cast is exact.
        -(floor as i8)
    }
}

/// `frexp`: `v = frac * 2^exp` with `frac` in [0.5, 1), for finite `v > 0`.
fn frexp(v: f64) -> (f64, i32) {
    let bits = v.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    if biased == 0 {
        // Subnormal: scale into the normal range first.
        let (frac, exp) = frexp(v * f64::from_bits(0x43f0_0000_0000_0000)); // 2^64
        return (frac, exp - 64);
    }
    let frac = f64::from_bits((bits & 0x800f_ffff_ffff_ffff) | (1022 << 52));
    (frac, biased - 1022)
}

/// Per schema 1..=8, the bucket bounds within one power of two, as fractions in [0.5, 1).
fn bounds(schema: i8) -> &'static [f64] {
    static TABLES: OnceLock<Vec<Vec<f64>>> = OnceLock::new();
    let tables = TABLES.get_or_init(|| {
        (0..=MAX_SCHEMA)
            .map(|s| {
                let n = 1u32 << s;
                (0..n)
                    .map(|i| (f64::from(i) / f64::from(n) - 1.0).exp2())
                    .collect()
            })
            .collect()
    });
    tables
        .get(usize::try_from(schema).unwrap_or(0))
        .map_or(&[], Vec::as_slice)
}

/// The index of the bucket holding `|v|` at `schema` (client_golang's key computation).
pub fn bucket_index(v: f64, schema: i8) -> i32 {
    let v = v.abs();
    let v = if v.is_finite() { v } else { f64::MAX };
    let (frac, exp) = frexp(v);
    if schema > 0 {
        let b = bounds(schema);
        let n = i32::try_from(b.len()).unwrap_or(1);
        let i = i32::try_from(b.partition_point(|x| *x < frac)).unwrap_or(0);
        i + (exp - 1) * n
    } else {
        let mut key = exp;
        if frac == 0.5 {
            key -= 1;
        }
        let shift = u32::from((-schema).unsigned_abs());
        let offset = (1i32 << shift) - 1;
        (key + offset) >> shift
    }
}

/// The upper bound of bucket `index` at `schema`.
pub fn upper_bound(index: i32, schema: i8) -> f64 {
    (f64::from(index) * (-f64::from(schema)).exp2()).exp2()
}

/// One side's populated buckets, sorted by index.
#[derive(Debug, Clone, Default, PartialEq)]
struct Buckets(Vec<(i32, f64)>);

impl Buckets {
    fn add(&mut self, index: i32, weight: f64) {
        match self.0.binary_search_by_key(&index, |(i, _)| *i) {
            Ok(at) => {
                if let Some((_, c)) = self.0.get_mut(at) {
                    *c += weight;
                }
            }
            Err(at) => self.0.insert(at, (index, weight)),
        }
    }

    /// Merges each pair of neighbours: index `i` becomes `ceil(i / 2)`.
    fn halve(&mut self) {
        let mut merged: Vec<(i32, f64)> = Vec::with_capacity(self.0.len() / 2 + 1);
        for (i, c) in self.0.drain(..) {
            let j = (i + 1) >> 1;
            match merged.last_mut() {
                Some((last, sum)) if *last == j => *sum += c,
                _ => merged.push((j, c)),
            }
        }
        self.0 = merged;
    }
}

/// A native histogram's state.
#[derive(Debug, Clone, PartialEq)]
pub struct NativeHistogram {
    schema: i8,
    max_buckets: u32,
    zero_threshold: f64,
    zero_count: f64,
    positive: Buckets,
    negative: Buckets,
}

impl NativeHistogram {
    /// An empty histogram.
    pub fn new(opts: &NativeOptions) -> Self {
        Self {
            schema: opts.schema.clamp(MIN_SCHEMA, MAX_SCHEMA),
            max_buckets: opts.max_buckets.max(1),
            zero_threshold: opts.zero_threshold,
            zero_count: 0.0,
            positive: Buckets::default(),
            negative: Buckets::default(),
        }
    }

    /// Counts `value` with `weight` (a sample rate's inverse). NaN is counted by the
    /// caller's count and sum only, as in client_golang.
    pub fn observe(&mut self, value: f64, weight: f64) {
        if value.is_nan() {
            return;
        }
        if value.abs() <= self.zero_threshold {
            self.zero_count += weight;
            return;
        }
        let index = bucket_index(value, self.schema);
        if value > 0.0 {
            self.positive.add(index, weight);
        } else {
            self.negative.add(index, weight);
        }
        while self.positive.0.len() + self.negative.0.len() > self.max_buckets as usize
            && self.schema > MIN_SCHEMA
        {
            self.positive.halve();
            self.negative.halve();
            self.schema -= 1;
        }
    }

    /// The current state, for encoding.
    pub fn snapshot(&self) -> NativeSnapshot {
        NativeSnapshot {
            schema: self.schema,
            zero_threshold: self.zero_threshold,
            zero_count: self.zero_count,
            positive: self.positive.0.clone(),
            negative: self.negative.0.clone(),
        }
    }
}

/// A native histogram at snapshot time.
#[derive(Debug, Clone, PartialEq)]
pub struct NativeSnapshot {
    /// Resolution.
    pub schema: i8,
    /// The zero bucket's half-width.
    pub zero_threshold: f64,
    /// Observations in the zero bucket (weighted).
    pub zero_count: f64,
    /// Populated positive buckets `(index, count)`, sorted.
    pub positive: Vec<(i32, f64)>,
    /// Populated negative buckets `(index of |v|, count)`, sorted.
    pub negative: Vec<(i32, f64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_from_factors_as_client_golang_picks_them() {
        // pickSchema's table: 1.1 → 3 (2^(1/8) = 1.09), 1.00271 → 8, 2 → 0, 4 → -1, 65536 → -4.
        for (factor, schema) in [
            (1.1, 3),
            (1.5, 1),
            (2.0, 0),
            (4.0, -1),
            (65536.0, -4),
            (1e300, -4),
            (1.002_71, 8),
            (1.000_001, 8),
        ] {
            assert_eq!(schema_for_factor(factor), schema, "factor {factor}");
        }
        assert_eq!(NativeOptions::from_factor(1.0, 0, None), None);
        assert_eq!(NativeOptions::from_factor(f64::NAN, 0, None), None);
        let o = NativeOptions::from_factor(1.1, 0, None).unwrap();
        assert_eq!(
            (o.schema, o.max_buckets, o.zero_threshold),
            (3, 160, DEFAULT_ZERO_THRESHOLD)
        );
    }

    #[test]
    fn frexp_matches_the_definition() {
        for v in [1.0, 0.5, 0.75, 3.0, 1024.0, 1e-300, 5e-324, f64::MAX] {
            let (frac, exp) = frexp(v);
            assert!((0.5..1.0).contains(&frac), "{v}: {frac}");
            assert_eq!((frac * 2.0) * f64::from(exp - 1).exp2(), v, "{v}");
        }
    }

    #[test]
    fn buckets_hold_their_upper_bound_and_not_their_lower() {
        for schema in MIN_SCHEMA..=MAX_SCHEMA {
            for i in [-20, -1, 0, 1, 2, 7, 100] {
                let upper = upper_bound(i, schema);
                if !upper.is_finite() || upper == 0.0 {
                    continue;
                }
                assert_eq!(
                    bucket_index(upper, schema),
                    i,
                    "schema {schema} bound {upper}"
                );
                let inside = upper * (1.0 - 1e-9);
                let lower = upper_bound(i - 1, schema);
                if inside > lower * (1.0 + 1e-9) {
                    assert_eq!(
                        bucket_index(inside, schema),
                        i,
                        "schema {schema} below {upper}"
                    );
                }
                assert_eq!(
                    bucket_index(upper * (1.0 + 1e-9), schema),
                    i + 1,
                    "schema {schema} above {upper}"
                );
            }
        }
        // Worked values from client_golang's tests (schema 3, factor 1.1).
        assert_eq!(bucket_index(1.0, 3), 0);
        assert_eq!(bucket_index(2.0, 3), 8);
        assert_eq!(bucket_index(1.1, 3), 2);
        assert_eq!(bucket_index(0.1, 3), -26);
        assert_eq!(bucket_index(-2.0, 3), 8);
        // Schema 0: powers of two; schema -1: powers of four.
        assert_eq!(bucket_index(3.0, 0), 2);
        assert_eq!(bucket_index(4.0, 0), 2);
        assert_eq!(bucket_index(4.1, 0), 3);
        assert_eq!(bucket_index(4.0, -1), 1);
        assert_eq!(bucket_index(5.0, -1), 2);
        assert_eq!(bucket_index(f64::INFINITY, 0), 1024);
    }

    #[test]
    fn observations_fill_the_zero_bucket_and_both_sides() {
        let mut h =
            NativeHistogram::new(&NativeOptions::from_factor(2.0, 100, Some(0.001)).unwrap());
        for (v, w) in [
            (0.0, 1.0),
            (0.0005, 2.0),
            (-0.001, 1.0),
            (3.0, 1.0),
            (4.0, 10.0),
            (-3.0, 1.0),
            (f64::NAN, 1.0),
        ] {
            h.observe(v, w);
        }
        let s = h.snapshot();
        assert_eq!(s.schema, 0);
        assert_eq!(s.zero_count, 4.0);
        assert_eq!(s.positive, [(2, 11.0)]);
        assert_eq!(s.negative, [(2, 1.0)]);
    }

    #[test]
    fn past_the_limit_neighbours_merge_and_the_schema_drops() {
        let mut h = NativeHistogram::new(&NativeOptions::from_factor(1.1, 4, None).unwrap());
        // 1, 2, 4, 8, 16 are five buckets at any schema ≥ 0: schema 3 → … → -1 (1: bucket 0,
        // 2 and 4: bucket 1, 8 and 16: bucket 2), 3 buckets.
        for v in [1.0, 2.0, 4.0, 8.0, 16.0] {
            h.observe(v, 1.0);
        }
        let s = h.snapshot();
        assert_eq!(s.schema, -1);
        assert_eq!(s.positive, [(0, 1.0), (1, 2.0), (2, 2.0)]);
        // The total weight is kept, and every value is still in the bucket that holds it.
        for v in [1.0, 2.0, 4.0, 8.0, 16.0] {
            let i = bucket_index(v, s.schema);
            assert!(s.positive.iter().any(|(j, _)| *j == i), "{v}");
        }
        // Negative indices merge towards their upper bound too.
        let mut h = NativeHistogram::new(&NativeOptions::from_factor(2.0, 1, None).unwrap());
        // Schema 0: 0.3 in bucket -1 (0.25, 0.5], 0.2 in -2 (0.125, 0.25]. Schema -1: indices
        // 0 and -1, still two; schema -2: both in 0, (1/16, 1].
        h.observe(0.3, 1.0);
        h.observe(0.2, 1.0);
        let s = h.snapshot();
        assert_eq!(s.schema, -2);
        assert_eq!(s.positive.len(), 1);
        assert!(upper_bound(s.positive[0].0, s.schema) >= 0.3);
    }
}
