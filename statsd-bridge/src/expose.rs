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

/// The content type of [`encode_text`]'s output.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Appends the whole snapshot to `out`.
pub fn encode_text(snapshot: &Snapshot, out: &mut String) {
    let mut current: Option<&str> = None;
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
            let help = family.as_ref().map_or("", |f| &f.help);
            let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
            let _ = writeln!(out, "# TYPE {name} {kind}");
        }
        encode_series(series, name, out);
    }
}

fn encode_series(series: &SeriesSnapshot, name: &str, out: &mut String) {
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
            sample(out, name, "_sum", series, None, *sum);
            sample(out, name, "_count", series, None, *count);
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
            sample(out, name, "_sum", series, None, *sum);
            sample(out, name, "_count", series, None, *count);
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
    let mut labels = series.labels().chain(extra).peekable();
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
    out.push(' ');
    write_f64(out, value);
    out.push('\n');
}
