//! Prometheus naming rules and text-exposition escaping.
//!
//! Sanitizing follows statsd_exporter's `EscapeMetricName`: every character outside
//! `[A-Za-z0-9_]` becomes one `_` (one per character, also for multi-byte ones), and a
//! leading digit gets a `_` in front. So `my.metric-x` and `my_metric_x` name the same series,
//! which is what users of statsd_exporter already rely on.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Appends the sanitized form of `raw` to `out`: the metric or label name Prometheus accepts.
pub fn sanitize_name_into(raw: &str, out: &mut String) {
    if raw.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        out.push('_');
    }
    // Bytes, not chars: an ASCII byte maps to itself or `_`; a multi-byte character becomes
    // one `_` (at its leading byte; continuation bytes 0x80..=0xBF are skipped).
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' {
            out.push(char::from(b));
        } else if !(0x80..0xC0).contains(&b) {
            out.push('_');
        }
    }
}

/// The sanitized form of `raw`, borrowed when nothing needed to change.
pub fn sanitize_name(raw: &str) -> Cow<'_, str> {
    if is_valid_name(raw) {
        Cow::Borrowed(raw)
    } else {
        let mut out = String::with_capacity(raw.len() + 1);
        sanitize_name_into(raw, &mut out);
        Cow::Owned(out)
    }
}

fn is_name_chars(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether `s` is a valid Prometheus label name (and metric name without colons).
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty() && !s.as_bytes().first().is_some_and(u8::is_ascii_digit) && is_name_chars(s)
}

/// Escapes a label value for the text format: `\` → `\\`, `"` → `\"`, newline → `\n`.
pub fn escape_label_value(v: &str) -> Cow<'_, str> {
    escape(v, true)
}

/// Escapes `# HELP` text: `\` → `\\`, newline → `\n` (quotes stay as they are).
pub fn escape_help(v: &str) -> Cow<'_, str> {
    escape(v, false)
}

fn escape(v: &str, quotes: bool) -> Cow<'_, str> {
    let needs = |b: u8| b == b'\\' || b == b'\n' || (quotes && b == b'"');
    if !v.bytes().any(needs) {
        return Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len() + 8);
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quotes => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Writes a sample value as the exposition formats spell it: `+Inf`, `-Inf`, `NaN`, whole
/// numbers without a fraction, others in the shortest form that reads back exactly.
pub fn write_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        // Exact: |v| < 2^53, so the cast loses nothing (and `-0.0` prints as `0`).
        out.push_str(itoa::Buffer::new().format(v as i64));
    } else {
        let _ = write!(out, "{v:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_are_sanitized_like_statsd_exporter() {
        let cases = [
            ("vc.dots-and-dashes.name", "vc_dots_and_dashes_name"),
            ("1st.metric", "_1st_metric"),
            ("my metric.x-y", "my_metric_x_y"),
            ("a--b", "a__b"),
            ("héllo", "h_llo"),
            ("ok_name", "ok_name"),
            ("", ""),
        ];
        for (raw, want) in cases {
            assert_eq!(sanitize_name(raw), want, "{raw}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label_value("line\nbreak"), "line\\nbreak");
        assert!(matches!(escape_label_value("plain"), Cow::Borrowed(_)));
        assert_eq!(escape_help("say \"hi\"\\\n"), "say \"hi\"\\\\\\n");
    }

    #[test]
    fn floats_are_spelled_as_the_format_wants() {
        let cases = [
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
            (3.0, "3"),
            (-0.0, "0"),
            (0.6000000000000001, "0.6000000000000001"),
            (1e-7, "1e-7"),
            (1e20, "1e20"),
            (-2.5, "-2.5"),
        ];
        for (v, want) in cases {
            let mut s = String::new();
            write_f64(&mut s, v);
            assert_eq!(s, want);
        }
    }

    proptest! {
        #[test]
        fn sanitized_names_are_valid(raw in "\\PC{1,20}") {
            prop_assert!(is_valid_name(&sanitize_name(&raw)));
        }

        #[test]
        fn floats_read_back_exactly(v in proptest::num::f64::NORMAL | proptest::num::f64::ZERO) {
            let mut s = String::new();
            write_f64(&mut s, v);
            prop_assert_eq!(s.parse::<f64>().unwrap(), v);
        }
    }
}
