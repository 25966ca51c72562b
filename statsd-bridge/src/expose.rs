//! Prometheus text exposition (format 0.0.4) of a store snapshot.
//!
//! Produces bytes only; `http` serves them. Families come sorted by name and series by
//! labels, so output is deterministic and golden tests are stable.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::panic
)]

use std::fmt::Write as _;

use common::prom::{escape_help, escape_label_value, write_f64};

use crate::aggregate::{Kind, SeriesSnapshot, Snapshot, Value};

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
}

impl Format {
    /// The `Content-Type` header value.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Text => TEXT_CONTENT_TYPE,
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
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
    let mut current: Option<&str> = None;
    let mut counter_name = String::new();
    for series in &snapshot.series {
        let name = series.name();
        let family = snapshot.family(name);
        let kind = match (&series.value, family.as_ref().map(|f| f.kind)) {
            (_, Some(k)) if k != Kind::Reserved => k.type_str(),
            (Value::Counter(_), _) => "counter",
            (Value::Gauge(_), _) => "gauge",
            (Value::Histogram { .. }, _) => "histogram",
            (Value::Summary { .. }, _) => "summary",
        };
        let is_om_counter = format == Format::OpenMetrics && kind == "counter";
        if current != Some(name) {
            current = Some(name);
            let help = family.as_ref().map_or("", |f| &f.help);
            let family_name = if is_om_counter {
                name.strip_suffix("_total").unwrap_or(name)
            } else {
                name
            };
            write_header(out, family_name, help, kind, format);
        }
        if is_om_counter {
            counter_name.clear();
            counter_name.push_str(name.strip_suffix("_total").unwrap_or(name));
            counter_name.push_str("_total");
            encode_series(series, &counter_name, format, out);
        } else {
            encode_series(series, name, format, out);
        }
    }
}

fn write_header(out: &mut String, name: &str, help: &str, kind: &str, format: Format) {
    match format {
        Format::Text => {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
        }
        // OpenMetrics escapes quotes in HELP too.
        Format::OpenMetrics => {
            let _ = writeln!(out, "# HELP {name} {}", escape_label_value(help));
        }
    }
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes the bridge's self-metrics (a `prometheus` registry's families) in OpenMetrics.
pub fn encode_families_openmetrics(families: &[prometheus::proto::MetricFamily], out: &mut String) {
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
            let labels: Vec<(&str, &str)> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            let mut line = |suffix: &str, extra: Option<(&str, &str)>, v: f64| {
                om_sample(out, family_name, suffix, &labels, extra, v);
            };
            match mf.get_field_type() {
                MetricType::COUNTER => line("_total", None, m.get_counter().get_value()),
                MetricType::GAUGE => line("", None, m.get_gauge().get_value()),
                MetricType::UNTYPED => {}
                MetricType::HISTOGRAM => {
                    let h = m.get_histogram();
                    let mut le = String::new();
                    for b in h.get_bucket() {
                        le.clear();
                        write_f64(&mut le, b.upper_bound());
                        line("_bucket", Some(("le", &le)), b.cumulative_count() as f64);
                    }
                    line("_bucket", Some(("le", "+Inf")), h.get_sample_count() as f64);
                    line("_sum", None, h.get_sample_sum());
                    line("_count", None, h.get_sample_count() as f64);
                }
                MetricType::SUMMARY => {
                    let s = m.get_summary();
                    let mut q = String::new();
                    for quantile in s.get_quantile() {
                        q.clear();
                        write_f64(&mut q, quantile.quantile());
                        line("", Some(("quantile", &q)), quantile.value());
                    }
                    line("_sum", None, s.sample_sum());
                    line("_count", None, s.sample_count() as f64);
                }
            }
        }
    }
}

fn om_sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(&str, &str)],
    extra: Option<(&str, &str)>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    write_labels(out, labels.iter().copied().chain(extra));
    out.push(' ');
    write_f64(out, value);
    out.push('\n');
}

fn write_labels<'a>(out: &mut String, labels: impl Iterator<Item = (&'a str, &'a str)>) {
    let mut labels = labels.peekable();
    if labels.peek().is_some() {
        out.push('{');
        for (i, (k, v)) in labels.enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape_label_value(v));
        }
        out.push('}');
    }
}

fn encode_series(series: &SeriesSnapshot, name: &str, format: Format, out: &mut String) {
    // OpenMetrics treats `_sum` as counter-like: it can't be negative (or NaN), and `_count`
    // goes with it; with negative observations both are left out (the `+Inf` bucket still
    // carries the count of a histogram).
    let sum_ok = |sum: f64| format == Format::Text || sum >= 0.0;
    match &series.value {
        Value::Counter(v) | Value::Gauge(v) => sample(out, name, "", series, None, *v),
        Value::Histogram {
            bounds,
            cumulative,
            sum,
            count,
        } => {
            let mut le = String::new();
            for (i, c) in cumulative.iter().enumerate() {
                le.clear();
                match bounds.get(i) {
                    Some(b) => write_f64(&mut le, *b),
                    None => le.push_str("+Inf"),
                }
                sample(out, name, "_bucket", series, Some(("le", &le)), *c);
            }
            if sum_ok(*sum) {
                sample(out, name, "_sum", series, None, *sum);
                sample(out, name, "_count", series, None, *count);
            }
        }
        Value::Summary {
            quantiles,
            sum,
            count,
        } => {
            let mut q = String::new();
            for (quantile, v) in quantiles {
                q.clear();
                write_f64(&mut q, *quantile);
                sample(out, name, "", series, Some(("quantile", &q)), *v);
            }
            if sum_ok(*sum) {
                sample(out, name, "_sum", series, None, *sum);
                sample(out, name, "_count", series, None, *count);
            }
        }
    }
}

fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    series: &SeriesSnapshot,
    extra: Option<(&str, &str)>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    write_labels(out, series.labels().chain(extra));
    out.push(' ');
    write_f64(out, value);
    out.push('\n');
}
