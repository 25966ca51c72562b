//! Data-driven cases (`tests/data/*.jsonl`): StatsD lines in, exposition series out.
//!
//! See `tests/data/VECTORS.md` for the format.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

/// One case: lines sent to a bridge and the series they must produce.
#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    /// The case name (unique per observer).
    pub case: String,
    /// `histogram` or `summary`: the bridge's `observer_type` the case was measured with.
    pub observer: String,
    /// `true`: all lines in one datagram joined by `\n`; `false`: one datagram per line.
    pub packet: bool,
    /// The StatsD lines.
    pub lines: Vec<String>,
    /// Every series the lines produce, `name{sorted labels}` → value as printed; empty when
    /// the lines are rejected.
    pub expected: BTreeMap<String, String>,
}

impl Case {
    /// The datagrams to send, per [`Case::packet`].
    pub fn datagrams(&self) -> Vec<Vec<u8>> {
        if self.packet {
            vec![self.lines.join("\n").into_bytes()]
        } else {
            self.lines.iter().map(|l| l.as_bytes().to_vec()).collect()
        }
    }

    /// The sanitized metric names of the case's lines (events and service checks left out).
    pub fn metric_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .lines
            .iter()
            .flat_map(|l| l.split(['\n', '\r']))
            .filter_map(line_metric_name)
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// Reads a JSON-lines file of cases (blank lines skipped).
pub fn load(path: &Path) -> Result<Vec<Case>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

/// The cases to run with a bridge whose observer is `observer`: for each case name, its line
/// for that observer, else its `histogram` line (the vectors list only the `histogram` line
/// where both observers give the same answer).
pub fn cases_for_observer(cases: &[Case], observer: &str) -> Vec<Case> {
    let mut by_name: BTreeMap<&str, &Case> = BTreeMap::new();
    for case in cases {
        let slot = by_name.entry(case.case.as_str()).or_insert(case);
        if case.observer == observer {
            *slot = case;
        }
    }
    let mut out: Vec<Case> = Vec::new();
    // Keep file order.
    for case in cases {
        let chosen = by_name[case.case.as_str()];
        if std::ptr::eq(chosen, case) {
            out.push(case.clone());
        }
    }
    out
}

/// The metric name a StatsD line carries, sanitized as Prometheus names are (`.`/`-` and other
/// invalid characters become `_`, a leading digit gets a `_` prefix); `None` for events,
/// service checks and lines without a name.
pub fn line_metric_name(line: &str) -> Option<String> {
    if line.starts_with("_e{") || line.starts_with("_sc|") {
        return None;
    }
    let end = line.find([':', ',', '#', '[', '|']).unwrap_or(line.len());
    let raw = &line[..end];
    if raw.is_empty() {
        return None;
    }
    Some(sanitize_metric_name(raw))
}

/// Prometheus metric-name sanitizing as statsd_exporter does it for unmapped lines.
pub fn sanitize_metric_name(raw: &str) -> String {
    let mut out: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_names_from_lines() {
        assert_eq!(
            line_metric_name("vc.dots-and-dashes.name:1|c").unwrap(),
            "vc_dots_and_dashes_name"
        );
        assert_eq!(
            line_metric_name("vc_influx,env=prod:1|c").unwrap(),
            "vc_influx"
        );
        assert_eq!(
            line_metric_name("vc_librato#env=prod:1|c").unwrap(),
            "vc_librato"
        );
        assert_eq!(
            line_metric_name("vc_signalfx[env=prod]:1|c").unwrap(),
            "vc_signalfx"
        );
        assert_eq!(line_metric_name("vmiss:1").unwrap(), "vmiss");
        assert_eq!(line_metric_name("_sc|x|0"), None);
        assert_eq!(line_metric_name("_e{1,1}:a|b"), None);
    }
}
