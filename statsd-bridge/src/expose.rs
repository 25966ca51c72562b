//! Prometheus text exposition (format 0.0.4) and OpenMetrics 1.0 of a store snapshot.
//!
//! Produces bytes only; `http` serves them. Families come sorted by name and series by
//! labels, so output is deterministic and golden tests are stable. The encoder writes into a
//! `Vec<u8>`: series keys are stored as bytes built from valid UTF-8, so nothing is decoded
//! or validated again on the way out (that validation was most of a scrape's cost).
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::panic
)]

use std::io::Write as _;
use std::ops::ControlFlow;
use std::sync::Arc;

use crate::aggregate::{Kind, SeriesSnapshot, Snapshot, Value};

pub mod protobuf;

/// The content type of the 0.0.4 text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The content type of OpenMetrics 1.0.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which exposition format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4: counters keep their names.
    Text,
    /// OpenMetrics 1.0: counter samples end in `_total`, no `_created`, `# EOF` last.
    OpenMetrics,
    /// Prometheus' protobuf format: the only one with native histograms.
    Protobuf,
}

impl Format {
    /// The `Content-Type` header value.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Text => TEXT_CONTENT_TYPE,
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Self::Protobuf => protobuf::PROTOBUF_CONTENT_TYPE,
        }
    }
}

/// Appends the whole snapshot to `out` in the text format.
pub fn encode_text(snapshot: &Snapshot, out: &mut String) {
    encode(snapshot, Format::Text, out);
}

/// Appends the whole snapshot to `out` (without OpenMetrics' `# EOF`, which goes after the
/// self-metrics).
pub fn encode(snapshot: &Snapshot, format: Format, out: &mut String) {
    let mut bytes = Vec::new();
    encode_bytes(snapshot, format, &mut bytes);
    out.push_str(&String::from_utf8_lossy(&bytes));
}

/// [`encode`] into bytes.
pub fn encode_bytes(snapshot: &Snapshot, format: Format, out: &mut Vec<u8>) {
    let _ = encode_chunked(snapshot, format, usize::MAX, out, |_| {
        ControlFlow::Continue(())
    });
}

/// [`encode_bytes`], handing `out` to `flush` whenever it holds `chunk` bytes or more (after
/// a whole series, or a whole family in protobuf), so the HTTP edge sends a page of a million
/// series while it is written instead of holding it. `flush` takes what it sends out of
/// `out`; `Break` stops the encoding (the scraper went away), and is returned.
pub fn encode_chunked(
    snapshot: &Snapshot,
    format: Format,
    chunk: usize,
    out: &mut Vec<u8>,
    mut flush: impl FnMut(&mut Vec<u8>) -> ControlFlow<()>,
) -> ControlFlow<()> {
    if format == Format::Protobuf {
        return protobuf::encode_protobuf_chunked(snapshot, chunk, out, flush);
    }
    let mut current: Option<&str> = None;
    // Looked up once per family, not per series.
    let mut is_om_counter = false;
    let mut counter_name = String::new();
    let mut le = LeCache::default();
    for series in &snapshot.series {
        let name = series.name();
        if current != Some(name) {
            current = Some(name);
            let family = snapshot.family(name);
            let kind = match (&series.value, family.as_ref().map(|f| f.kind)) {
                (_, Some(k)) if k != Kind::Reserved => k.type_str(),
                (Value::Counter(_), _) => "counter",
                (Value::Gauge(_), _) => "gauge",
                (Value::Histogram { .. }, _) => "histogram",
                (Value::Summary { .. }, _) => "summary",
            };
            is_om_counter = format == Format::OpenMetrics && kind == "counter";
            let help = family.as_ref().map_or("", |f| &f.help);
            let family_name = if is_om_counter {
                name.strip_suffix("_total").unwrap_or(name)
            } else {
                name
            };
            write_header(out, family_name, help, kind, format);
            counter_name.clear();
            counter_name.push_str(family_name);
            counter_name.push_str("_total");
        }
        let sample_name = if is_om_counter {
            counter_name.as_str()
        } else {
            name
        };
        encode_series(series, sample_name, format, &mut le, out);
        if out.len() >= chunk {
            flush(out)?;
        }
    }
    ControlFlow::Continue(())
}

fn write_header(out: &mut Vec<u8>, name: &str, help: &str, kind: &str, format: Format) {
    out.extend_from_slice(b"# HELP ");
    out.extend_from_slice(name.as_bytes());
    out.push(b' ');
    // OpenMetrics escapes quotes in HELP too.
    escape_into(out, help.as_bytes(), format == Format::OpenMetrics);
    out.extend_from_slice(b"\n# TYPE ");
    out.extend_from_slice(name.as_bytes());
    out.push(b' ');
    out.extend_from_slice(kind.as_bytes());
    out.push(b'\n');
}

/// Escapes `\`, newline and (when `quotes`) `"`, as the exposition formats want.
fn escape_into(out: &mut Vec<u8>, v: &[u8], quotes: bool) {
    for &b in v {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'"' if quotes => out.extend_from_slice(b"\\\""),
            b => out.push(b),
        }
    }
}

/// Writes a value as the formats spell it (see `common::prom::write_f64`).
fn put_f64(out: &mut Vec<u8>, v: f64) {
    if v.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 { b"+Inf" } else { b"-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        // Exact: |v| < 2^53, so the cast loses nothing (and `-0.0` prints as `0`).
        out.extend_from_slice(itoa::Buffer::new().format(v as i64).as_bytes());
    } else {
        let _ = write!(out, "{v:?}");
    }
}

/// The `le` strings of the last bucket layout seen: series of a family share one layout.
#[derive(Default)]
struct LeCache {
    bounds: Option<Arc<[f64]>>,
    strings: Vec<Vec<u8>>,
}

impl LeCache {
    fn get(&mut self, bounds: &Arc<[f64]>) -> &[Vec<u8>] {
        if !self.bounds.as_ref().is_some_and(|b| Arc::ptr_eq(b, bounds)) {
            self.strings = bounds
                .iter()
                .map(|b| {
                    let mut s = Vec::new();
                    put_f64(&mut s, *b);
                    s
                })
                .chain(std::iter::once(b"+Inf".to_vec()))
                .collect();
            self.bounds = Some(Arc::clone(bounds));
        }
        &self.strings
    }
}

/// Writes the bridge's self-metrics (a `prometheus` registry's families) in OpenMetrics.
pub fn encode_families_openmetrics(
    families: &[prometheus::proto::MetricFamily],
    out: &mut Vec<u8>,
) {
    use prometheus::proto::MetricType;
    for mf in families {
        let name = mf.name();
        let (kind, family_name) = match mf.get_field_type() {
            MetricType::COUNTER => ("counter", name.strip_suffix("_total").unwrap_or(name)),
            MetricType::GAUGE => ("gauge", name),
            MetricType::HISTOGRAM => ("histogram", name),
            MetricType::SUMMARY => ("summary", name),
            // The bridge registers no untyped metrics; skip rather than guess.
            MetricType::UNTYPED => continue,
        };
        write_header(out, family_name, mf.help(), kind, Format::OpenMetrics);
        for m in mf.get_metric() {
            let labels: Vec<(&[u8], &[u8])> = m
                .get_label()
                .iter()
                .map(|l| (l.name().as_bytes(), l.value().as_bytes()))
                .collect();
            let mut line = |suffix: &str, extra: Option<(&[u8], &[u8])>, v: f64| {
                write_sample(
                    out,
                    family_name,
                    suffix,
                    labels.iter().copied().chain(extra),
                    v,
                );
            };
            match mf.get_field_type() {
                MetricType::COUNTER => line("_total", None, m.get_counter().get_value()),
                MetricType::GAUGE => line("", None, m.get_gauge().get_value()),
                MetricType::UNTYPED => {}
                MetricType::HISTOGRAM => {
                    let h = m.get_histogram();
                    for b in h.get_bucket() {
                        let mut le = Vec::new();
                        put_f64(&mut le, b.upper_bound());
                        line("_bucket", Some((b"le", &le)), b.cumulative_count() as f64);
                    }
                    line(
                        "_bucket",
                        Some((b"le", b"+Inf")),
                        h.get_sample_count() as f64,
                    );
                    line("_sum", None, h.get_sample_sum());
                    line("_count", None, h.get_sample_count() as f64);
                }
                MetricType::SUMMARY => {
                    let s = m.get_summary();
                    for quantile in s.get_quantile() {
                        let mut q = Vec::new();
                        put_f64(&mut q, quantile.quantile());
                        line("", Some((b"quantile", &q)), quantile.value());
                    }
                    line("_sum", None, s.sample_sum());
                    line("_count", None, s.sample_count() as f64);
                }
            }
        }
    }
}

fn write_sample<'a>(
    out: &mut Vec<u8>,
    name: &str,
    suffix: &str,
    labels: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    value: f64,
) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(suffix.as_bytes());
    let mut labels = labels.peekable();
    if labels.peek().is_some() {
        out.push(b'{');
        for (i, (k, v)) in labels.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(k);
            out.extend_from_slice(b"=\"");
            escape_into(out, v, true);
            out.push(b'"');
        }
        out.push(b'}');
    }
    out.push(b' ');
    put_f64(out, value);
    out.push(b'\n');
}

fn encode_series(
    series: &SeriesSnapshot,
    name: &str,
    format: Format,
    le: &mut LeCache,
    out: &mut Vec<u8>,
) {
    // OpenMetrics treats `_sum` as counter-like: it can't be negative (or NaN), and `_count`
    // goes with it; with negative observations both are left out (the `+Inf` bucket still
    // carries the count of a histogram).
    let sum_ok = |sum: f64| format == Format::Text || sum >= 0.0;
    match &series.value {
        Value::Counter(v) | Value::Gauge(v) => {
            write_sample(out, name, "", series.label_bytes(), *v)
        }
        Value::Histogram {
            bounds,
            cumulative,
            sum,
            native: _,
            count,
        } => {
            let les = le.get(bounds);
            for (c, le) in cumulative.iter().zip(les) {
                let with_le = series
                    .label_bytes()
                    .chain(std::iter::once((&b"le"[..], le.as_slice())));
                write_sample(out, name, "_bucket", with_le, *c);
            }
            if sum_ok(*sum) {
                write_sample(out, name, "_sum", series.label_bytes(), *sum);
                write_sample(out, name, "_count", series.label_bytes(), *count);
            }
        }
        Value::Summary {
            quantiles,
            sum,
            count,
        } => {
            let mut q = Vec::new();
            for (quantile, v) in quantiles {
                q.clear();
                put_f64(&mut q, *quantile);
                let with_q = series
                    .label_bytes()
                    .chain(std::iter::once((&b"quantile"[..], q.as_slice())));
                write_sample(out, name, "", with_q, *v);
            }
            if sum_ok(*sum) {
                write_sample(out, name, "_sum", series.label_bytes(), *sum);
                write_sample(out, name, "_count", series.label_bytes(), *count);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing, clippy::panic)]

    use std::time::Instant;

    use super::*;
    use crate::aggregate::{Store, StoreConfig};
    use crate::ingest::{Worker, ingest_line};
    use crate::protocol::ParseOptions;

    fn snapshot() -> Snapshot {
        let store = Store::new(StoreConfig::default(), []);
        let mut worker = Worker::unmapped(store.config());
        let now = Instant::now();
        for i in 0..300 {
            for line in [
                format!("chunk.hits:{i}|c|#pod:p{i}"),
                format!("chunk.temp:{i}.5|g|#pod:p{i}"),
                format!("chunk.latency:{i}|ms|#pod:p{}", i % 7),
            ] {
                ingest_line(
                    &store,
                    line.as_bytes(),
                    &ParseOptions::default(),
                    &mut worker,
                    now,
                );
            }
        }
        store.snapshot(now)
    }

    #[test]
    fn chunks_add_up_to_the_whole_page() {
        let snapshot = snapshot();
        for format in [Format::Text, Format::OpenMetrics, Format::Protobuf] {
            let mut whole = Vec::new();
            encode_bytes(&snapshot, format, &mut whole);
            let mut chunks: Vec<Vec<u8>> = Vec::new();
            let mut out = Vec::new();
            let sent = encode_chunked(&snapshot, format, 1000, &mut out, |out| {
                chunks.push(std::mem::take(out));
                ControlFlow::Continue(())
            });
            assert!(sent.is_continue());
            // Protobuf flushes between families only: three here.
            let least = if format == Format::Protobuf { 2 } else { 10 };
            assert!(chunks.len() >= least, "{format:?}: {} chunks", chunks.len());
            assert!(
                chunks.iter().all(|c| c.len() >= 1000),
                "{format:?}: a chunk was flushed short"
            );
            chunks.push(out);
            assert_eq!(chunks.concat(), whole, "{format:?}");
        }
    }

    #[test]
    fn a_sink_that_breaks_stops_the_encoder() {
        let snapshot = snapshot();
        let mut calls = 0;
        let mut out = Vec::new();
        let sent = encode_chunked(&snapshot, Format::Text, 100, &mut out, |out| {
            calls += 1;
            out.clear();
            if calls == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert!(sent.is_break());
        assert_eq!(calls, 2);
    }
}
