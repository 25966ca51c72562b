//! The Prometheus protobuf exposition format (`io.prometheus.client.MetricFamily`, each
//! message length-delimited), the only one that carries native histograms. Prometheus asks
//! for it first when started with `--enable-feature=native-histograms`.
//!
//! The messages are written with `prost` derives from `metrics.proto` of
//! prometheus/client_model (field numbers as there), so no protoc runs at build time.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::ops::ControlFlow;

use prost::Message;

use crate::aggregate::native::NativeSnapshot;
use crate::aggregate::{Kind, SeriesSnapshot, Snapshot, Value};

/// The content type Prometheus asks for and this format answers with.
pub const PROTOBUF_CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// `io.prometheus.client` messages, as `metrics.proto` numbers their fields.
#[allow(missing_docs)]
pub mod wire {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelPair {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
    #[repr(i32)]
    pub enum MetricType {
        Counter = 0,
        Gauge = 1,
        Summary = 2,
        Untyped = 3,
        Histogram = 4,
        GaugeHistogram = 5,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Gauge {
        #[prost(double, tag = "1")]
        pub value: f64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Counter {
        #[prost(double, tag = "1")]
        pub value: f64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Quantile {
        #[prost(double, tag = "1")]
        pub quantile: f64,
        #[prost(double, tag = "2")]
        pub value: f64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Summary {
        #[prost(uint64, tag = "1")]
        pub sample_count: u64,
        #[prost(double, tag = "2")]
        pub sample_sum: f64,
        #[prost(message, repeated, tag = "3")]
        pub quantile: Vec<Quantile>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Bucket {
        #[prost(uint64, tag = "1")]
        pub cumulative_count: u64,
        #[prost(double, tag = "4")]
        pub cumulative_count_float: f64,
        #[prost(double, tag = "2")]
        pub upper_bound: f64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct BucketSpan {
        #[prost(sint32, tag = "1")]
        pub offset: i32,
        #[prost(uint32, tag = "2")]
        pub length: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Histogram {
        #[prost(uint64, tag = "1")]
        pub sample_count: u64,
        #[prost(double, tag = "4")]
        pub sample_count_float: f64,
        #[prost(double, tag = "2")]
        pub sample_sum: f64,
        #[prost(message, repeated, tag = "3")]
        pub bucket: Vec<Bucket>,
        #[prost(sint32, tag = "5")]
        pub schema: i32,
        #[prost(double, tag = "6")]
        pub zero_threshold: f64,
        #[prost(uint64, tag = "7")]
        pub zero_count: u64,
        #[prost(double, tag = "8")]
        pub zero_count_float: f64,
        #[prost(message, repeated, tag = "9")]
        pub negative_span: Vec<BucketSpan>,
        #[prost(sint64, repeated, tag = "10")]
        pub negative_delta: Vec<i64>,
        #[prost(double, repeated, tag = "11")]
        pub negative_count: Vec<f64>,
        #[prost(message, repeated, tag = "12")]
        pub positive_span: Vec<BucketSpan>,
        #[prost(sint64, repeated, tag = "13")]
        pub positive_delta: Vec<i64>,
        #[prost(double, repeated, tag = "14")]
        pub positive_count: Vec<f64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metric {
        #[prost(message, repeated, tag = "1")]
        pub label: Vec<LabelPair>,
        #[prost(message, optional, tag = "2")]
        pub gauge: Option<Gauge>,
        #[prost(message, optional, tag = "3")]
        pub counter: Option<Counter>,
        #[prost(message, optional, tag = "4")]
        pub summary: Option<Summary>,
        #[prost(message, optional, tag = "7")]
        pub histogram: Option<Histogram>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MetricFamily {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub help: String,
        #[prost(enumeration = "MetricType", tag = "3")]
        pub r#type: i32,
        #[prost(message, repeated, tag = "4")]
        pub metric: Vec<Metric>,
    }
}

use wire::{
    Bucket, BucketSpan, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
    Quantile, Summary,
};

/// A weighted count as the format wants it: whole counts as integers, anything else in
/// the `_float` field (sample rates like 0.3 make fractional weights).
fn is_whole(c: f64) -> bool {
    c.fract() == 0.0 && (0.0..=9.007_199_254_740_992e15).contains(&c)
}

/// Spans and per-bucket counts of one side, from sorted `(index, count)` pairs.
fn spans(buckets: &[(i32, f64)]) -> (Vec<BucketSpan>, Vec<f64>) {
    let mut spans: Vec<BucketSpan> = Vec::new();
    let mut counts = Vec::with_capacity(buckets.len());
    let mut next: Option<i32> = None;
    for &(index, count) in buckets {
        match (next, spans.last_mut()) {
            (Some(n), Some(span)) if n == index => span.length += 1,
            (Some(n), _) => spans.push(BucketSpan {
                offset: index - n,
                length: 1,
            }),
            (None, _) => spans.push(BucketSpan {
                offset: index,
                length: 1,
            }),
        }
        counts.push(count);
        next = Some(index + 1);
    }
    (spans, counts)
}

/// Absolute counts as the deltas the integer encoding sends.
fn deltas(counts: &[f64]) -> Vec<i64> {
    let mut previous = 0i64;
    counts
        .iter()
        .map(|c| {
            // Whole and below 2^53: exact.
            let c = *c as i64;
            let d = c - previous;
            previous = c;
            d
        })
        .collect()
}

fn native_fields(h: &mut Histogram, n: &NativeSnapshot, whole: bool) {
    h.schema = i32::from(n.schema);
    h.zero_threshold = n.zero_threshold;
    let (pos_spans, pos) = spans(&n.positive);
    let (neg_spans, neg) = spans(&n.negative);
    // Prometheus tells a native histogram by its spans, counts or zero bucket; with a zero
    // threshold of 0 and nothing in a bucket (only NaN seen) there'd be none: client_golang
    // sends an empty span then.
    h.positive_span = if pos_spans.is_empty() && neg_spans.is_empty() {
        vec![BucketSpan {
            offset: 0,
            length: 0,
        }]
    } else {
        pos_spans
    };
    h.negative_span = neg_spans;
    if whole {
        h.zero_count = n.zero_count as u64;
        h.positive_delta = deltas(&pos);
        h.negative_delta = deltas(&neg);
    } else {
        h.zero_count_float = n.zero_count;
        h.positive_count = pos;
        h.negative_count = neg;
    }
}

fn histogram(
    bounds: &[f64],
    cumulative: &[f64],
    sum: f64,
    count: f64,
    native: Option<&NativeSnapshot>,
) -> Histogram {
    let whole = is_whole(count)
        && cumulative.iter().all(|c| is_whole(*c))
        && native.is_none_or(|n| {
            is_whole(n.zero_count)
                && n.positive
                    .iter()
                    .chain(&n.negative)
                    .all(|(_, c)| is_whole(*c))
        });
    let mut h = Histogram {
        sample_sum: sum,
        // The last cumulative count is +Inf's, which the format implies by the count.
        bucket: bounds
            .iter()
            .zip(cumulative)
            .map(|(upper_bound, c)| Bucket {
                cumulative_count: if whole { *c as u64 } else { 0 },
                cumulative_count_float: if whole { 0.0 } else { *c },
                upper_bound: *upper_bound,
            })
            .collect(),
        ..Histogram::default()
    };
    if whole {
        h.sample_count = count as u64;
    } else {
        h.sample_count_float = count;
    }
    if let Some(n) = native {
        native_fields(&mut h, n, whole);
    }
    h
}

fn metric(series: &SeriesSnapshot) -> Metric {
    let mut m = Metric {
        label: series
            .labels()
            .map(|(name, value)| LabelPair {
                name: name.to_owned(),
                value: value.to_owned(),
            })
            .collect(),
        ..Metric::default()
    };
    match &series.value {
        Value::Counter(v) => m.counter = Some(Counter { value: *v }),
        Value::Gauge(v) => m.gauge = Some(Gauge { value: *v }),
        Value::Histogram {
            bounds,
            cumulative,
            sum,
            count,
            native,
        } => {
            m.histogram = Some(histogram(
                bounds,
                cumulative,
                *sum,
                *count,
                native.as_deref(),
            ));
        }
        Value::Summary {
            quantiles,
            sum,
            count,
        } => {
            m.summary = Some(Summary {
                // The format has whole counts only for summaries.
                sample_count: count.max(0.0).round() as u64,
                sample_sum: *sum,
                quantile: quantiles
                    .iter()
                    .map(|(quantile, value)| Quantile {
                        quantile: *quantile,
                        value: *value,
                    })
                    .collect(),
            });
        }
    }
    m
}

fn metric_type(kind: Option<Kind>, value: &Value) -> MetricType {
    match (kind, value) {
        (Some(Kind::Counter), _) | (_, Value::Counter(_)) => MetricType::Counter,
        (Some(Kind::Histogram), _) | (_, Value::Histogram { .. }) => MetricType::Histogram,
        (Some(Kind::Summary), _) | (_, Value::Summary { .. }) => MetricType::Summary,
        _ => MetricType::Gauge,
    }
}

/// Appends every family of the snapshot, one length-delimited `MetricFamily` each.
pub fn encode_protobuf(snapshot: &Snapshot, out: &mut Vec<u8>) {
    let _ = encode_protobuf_chunked(snapshot, usize::MAX, out, |_| ControlFlow::Continue(()));
}

/// [`encode_protobuf`] in chunks, as [`super::encode_chunked`]: `flush` gets `out` after each
/// family once it holds `chunk` bytes.
pub fn encode_protobuf_chunked(
    snapshot: &Snapshot,
    chunk: usize,
    out: &mut Vec<u8>,
    mut flush: impl FnMut(&mut Vec<u8>) -> ControlFlow<()>,
) -> ControlFlow<()> {
    let mut family: Option<MetricFamily> = None;
    for series in &snapshot.series {
        let name = series.name();
        if family.as_ref().is_none_or(|f| f.name != name) {
            if let Some(done) = family.take() {
                write(&done, out);
                if out.len() >= chunk {
                    flush(out)?;
                }
            }
            let meta = snapshot.family(name);
            family = Some(MetricFamily {
                name: name.to_owned(),
                help: meta
                    .as_ref()
                    .map(|f| f.help.to_string())
                    .unwrap_or_default(),
                r#type: metric_type(meta.map(|f| f.kind), &series.value) as i32,
                metric: Vec::new(),
            });
        }
        if let Some(f) = &mut family {
            f.metric.push(metric(series));
        }
    }
    if let Some(done) = family {
        write(&done, out);
    }
    ControlFlow::Continue(())
}

fn write(family: &MetricFamily, out: &mut Vec<u8>) {
    // Writing into a Vec can't run out of room.
    let _ = family.encode_length_delimited(out);
}

/// Appends the self-metrics (the `prometheus` crate's families) in the same format.
pub fn encode_families_protobuf(families: &[prometheus::proto::MetricFamily], out: &mut Vec<u8>) {
    use prometheus::proto::MetricType as T;
    for mf in families {
        let kind = match mf.get_field_type() {
            T::COUNTER => MetricType::Counter,
            T::GAUGE => MetricType::Gauge,
            T::HISTOGRAM => MetricType::Histogram,
            T::SUMMARY => MetricType::Summary,
            T::UNTYPED => MetricType::Untyped,
        };
        let metric = mf
            .get_metric()
            .iter()
            .map(|m| {
                let mut out = Metric {
                    label: m
                        .get_label()
                        .iter()
                        .map(|l| LabelPair {
                            name: l.name().to_owned(),
                            value: l.value().to_owned(),
                        })
                        .collect(),
                    ..Metric::default()
                };
                match kind {
                    MetricType::Counter => {
                        out.counter = Some(Counter {
                            value: m.get_counter().get_value(),
                        });
                    }
                    MetricType::Gauge | MetricType::Untyped => {
                        out.gauge = Some(Gauge {
                            value: m.get_gauge().get_value(),
                        });
                    }
                    MetricType::Histogram | MetricType::GaugeHistogram => {
                        let h = m.get_histogram();
                        out.histogram = Some(Histogram {
                            sample_count: h.get_sample_count(),
                            sample_sum: h.get_sample_sum(),
                            bucket: h
                                .get_bucket()
                                .iter()
                                .map(|b| Bucket {
                                    cumulative_count: b.cumulative_count(),
                                    cumulative_count_float: 0.0,
                                    upper_bound: b.upper_bound(),
                                })
                                .collect(),
                            ..Histogram::default()
                        });
                    }
                    MetricType::Summary => {
                        let s = m.get_summary();
                        out.summary = Some(Summary {
                            sample_count: s.sample_count(),
                            sample_sum: s.sample_sum(),
                            quantile: s
                                .get_quantile()
                                .iter()
                                .map(|q| Quantile {
                                    quantile: q.quantile(),
                                    value: q.value(),
                                })
                                .collect(),
                        });
                    }
                }
                out
            })
            .collect();
        let kind = if kind == MetricType::Untyped {
            MetricType::Gauge
        } else {
            kind
        };
        write(
            &MetricFamily {
                name: mf.name().to_owned(),
                help: mf.help().to_owned(),
                r#type: kind as i32,
                metric,
            },
            out,
        );
    }
}

/// Decodes a delimited stream back into families (tests and the `explain` of a scrape).
pub fn decode_all(mut bytes: &[u8]) -> Result<Vec<MetricFamily>, prost::DecodeError> {
    let mut families = Vec::new();
    while !bytes.is_empty() {
        families.push(MetricFamily::decode_length_delimited(&mut bytes)?);
    }
    Ok(families)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::native::NativeHistogram;
    use crate::aggregate::{Store, StoreConfig};
    use crate::mapping::NativeSpec;
    use crate::protocol::ParseOptions;
    use std::time::Instant;

    #[test]
    fn a_counter_family_in_golden_bytes() {
        let store = Store::new(StoreConfig::default(), []);
        let mut worker = crate::ingest::Worker::unmapped(store.config());
        let now = Instant::now();
        crate::ingest::ingest_line(
            &store,
            b"a:1|c|#k:v",
            &ParseOptions::default(),
            &mut worker,
            now,
        );
        let mut out = Vec::new();
        encode_protobuf(&store.snapshot(now), &mut out);
        // Written out by hand from metrics.proto: family {1: "a", 2: help, 3: COUNTER (0,
        // omitted), 4: metric {1: label {1: "k", 2: "v"}, 3: counter {1: 1.0}}}.
        let help = b"Metric autogenerated by statsd-bridge.";
        let mut family = vec![0x0a, 1, b'a', 0x12, help.len() as u8];
        family.extend_from_slice(help);
        let metric: &[u8] = &[
            0x0a, 6, 0x0a, 1, b'k', 0x12, 1, b'v', // label
            0x1a, 9, 0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, // counter { value: 1.0 }
        ];
        family.push(0x22);
        family.push(metric.len() as u8);
        family.extend_from_slice(metric);
        let mut want = vec![family.len() as u8];
        want.extend_from_slice(&family);
        assert_eq!(out, want);
    }

    #[test]
    fn every_kind_decodes_back() {
        let cfg = StoreConfig {
            native: NativeSpec {
                factor: Some(1.1),
                ..NativeSpec::default()
            },
            ..StoreConfig::default()
        };
        let store = Store::new(cfg, []);
        let mut worker = crate::ingest::Worker::unmapped(store.config());
        let now = Instant::now();
        for line in [
            "c:2|c",
            "g:-3.5|g|#env:prod",
            "t:100|ms",
            "t:200|ms",
            "t:0|ms",
            "w:1|h|@0.3",
            "v:1|h|@0.5",
            "s:a|s",
        ] {
            crate::ingest::ingest_line(
                &store,
                line.as_bytes(),
                &ParseOptions::default(),
                &mut worker,
                now,
            );
        }
        let mut out = Vec::new();
        encode_protobuf(&store.snapshot(now), &mut out);
        let families = decode_all(&out).unwrap();
        let by_name = |n: &str| families.iter().find(|f| f.name == n).unwrap();
        assert_eq!(by_name("c").r#type, MetricType::Counter as i32);
        assert_eq!(by_name("c").metric[0].counter.as_ref().unwrap().value, 2.0);
        let g = &by_name("g").metric[0];
        assert_eq!(g.gauge.as_ref().unwrap().value, -3.5);
        assert_eq!(
            g.label,
            [LabelPair {
                name: "env".into(),
                value: "prod".into()
            }]
        );
        assert_eq!(by_name("s").r#type, MetricType::Gauge as i32);

        let t = by_name("t");
        assert_eq!(t.r#type, MetricType::Histogram as i32);
        let h = t.metric[0].histogram.as_ref().unwrap();
        assert_eq!(h.sample_count, 3);
        assert!((h.sample_sum - 0.3).abs() < 1e-12);
        assert_eq!(h.bucket.len(), 11, "the classic buckets stay");
        assert_eq!(h.bucket[4].upper_bound, 0.1);
        assert_eq!(h.bucket[4].cumulative_count, 2);
        // Native: schema 3, 0.1 s and 0.2 s one power of two apart (8 buckets at schema 3).
        assert_eq!(h.schema, 3);
        assert_eq!(h.zero_count, 1);
        let mut native = NativeHistogram::new(&cfg_native());
        native.observe(0.1, 1.0);
        native.observe(0.2, 1.0);
        let want = native.snapshot();
        assert_eq!(
            h.positive_span,
            [
                BucketSpan {
                    offset: want.positive[0].0,
                    length: 1
                },
                BucketSpan {
                    offset: 7,
                    length: 1
                },
            ]
        );
        assert_eq!(h.positive_delta, [1, 0]);

        // 1/0.3 is not a whole weight: the float fields carry it, in the native bucket as in
        // the count (1 is bucket 0's upper bound, upper bounds being inclusive).
        let w = by_name("w").metric[0].histogram.as_ref().unwrap();
        assert_eq!(w.sample_count, 0);
        assert!((w.sample_count_float - 1.0 / 0.3).abs() < 1e-9);
        assert_eq!(
            w.positive_span,
            [BucketSpan {
                offset: 0,
                length: 1
            }]
        );
        assert_eq!(w.positive_count.len(), 1);
        assert!(
            (w.positive_count[0] - 1.0 / 0.3).abs() < 1e-9,
            "the sample rate's weight in the native bucket: {:?}",
            w.positive_count
        );
        assert!(w.positive_delta.is_empty() && w.zero_count_float == 0.0);
        // A whole weight (@0.5 counts 2) goes out in the integer fields, native ones too.
        let v = by_name("v").metric[0].histogram.as_ref().unwrap();
        assert_eq!((v.sample_count, v.positive_delta.as_slice()), (2, &[2][..]));
    }

    fn cfg_native() -> crate::aggregate::native::NativeOptions {
        crate::aggregate::native::NativeOptions::from_factor(1.1, 0, None).unwrap()
    }

    #[test]
    fn a_native_histogram_with_no_bucket_still_reads_as_native() {
        let opts = crate::aggregate::native::NativeOptions::from_factor(2.0, 0, Some(0.0)).unwrap();
        let mut n = NativeHistogram::new(&opts);
        n.observe(f64::NAN, 1.0);
        let h = histogram(&[], &[1.0], f64::NAN, 1.0, Some(&n.snapshot()));
        assert_eq!(
            h.positive_span,
            [BucketSpan {
                offset: 0,
                length: 0
            }]
        );
        assert!(h.negative_span.is_empty() && h.positive_delta.is_empty());
    }

    #[test]
    fn spans_and_deltas() {
        let (s, c) = spans(&[(-3, 1.0), (-2, 4.0), (5, 2.0), (6, 2.0), (7, 7.0)]);
        assert_eq!(
            s,
            [
                BucketSpan {
                    offset: -3,
                    length: 2
                },
                BucketSpan {
                    offset: 6,
                    length: 3
                }
            ]
        );
        assert_eq!(deltas(&c), [1, 3, -2, 0, 5]);
        assert_eq!(spans(&[]), (vec![], vec![]));
    }

    #[test]
    fn self_metrics_encode_too() {
        let t = crate::telemetry::Telemetry::new().unwrap();
        t.sample_rate_invalid.inc();
        let mut out = Vec::new();
        encode_families_protobuf(&t.registry.gather(), &mut out);
        let families = decode_all(&out).unwrap();
        let invalid = families
            .iter()
            .find(|f| f.name == "statsd_bridge_sample_rate_invalid_total")
            .unwrap();
        assert_eq!(invalid.r#type, MetricType::Counter as i32);
        assert_eq!(invalid.metric[0].counter.as_ref().unwrap().value, 1.0);
        assert!(
            families
                .iter()
                .any(|f| f.r#type == MetricType::Histogram as i32)
        );
    }
}
