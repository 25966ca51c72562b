//! Checks on `name{sorted labels} → value` maps (a `/metrics` page read with
//! [`crate::exposition::series_map`], or a Prometheus query read with
//! [`crate::Prometheus::query_map`]). Every check reports all of its problems at once.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, anyhow, ensure};

use crate::util::values_equal;

/// The metric name of a `name{labels}` key (the whole key when it has no `{`).
pub fn name_of(key: &str) -> &str {
    key.split('{').next().unwrap_or(key)
}

/// `map[key]`, or an error naming the key and listing the series of that name.
pub fn get(map: &BTreeMap<String, f64>, key: &str) -> Result<f64> {
    map.get(key).copied().ok_or_else(|| {
        let name = name_of(key);
        let similar: Vec<&String> = map.keys().filter(|k| k.starts_with(name)).collect();
        anyhow!("{key} is missing (series of that name: {similar:?})")
    })
}

/// Checks that `map` holds `key` with a value equal to `want`.
pub fn expect(map: &BTreeMap<String, f64>, key: &str, want: f64) -> Result<()> {
    let got = get(map, key)?;
    ensure!(values_equal(got, want), "{key} is {got}, want {want}");
    Ok(())
}

/// Checks every `(key, want)` as [`expect`] does (other keys are not looked at) and reports
/// all mismatches at once.
pub fn expect_all(map: &BTreeMap<String, f64>, expected: &[(&str, f64)]) -> Result<()> {
    let problems: Vec<String> = expected
        .iter()
        .filter_map(|(k, w)| expect(map, k, *w).err().map(|e| format!("{e:#}")))
        .collect();
    ensure!(
        problems.is_empty(),
        "{} mismatch(es):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
    Ok(())
}

/// Checks `got` against `expected` exactly: every expected key with an equal value, and no
/// key `selected(key)` picks that is not expected. Reports every problem at once, followed by
/// all of `got`.
pub fn compare(
    got: &BTreeMap<String, f64>,
    expected: &[(&str, f64)],
    selected: impl Fn(&str) -> bool,
) -> Result<()> {
    let mut problems = Vec::new();
    for (key, want) in expected {
        match got.get(*key) {
            Some(v) if values_equal(*v, *want) => {}
            Some(v) => problems.push(format!("{key}: got {v}, want {want}")),
            None => problems.push(format!("{key}: missing (want {want})")),
        }
    }
    let wanted: BTreeSet<&str> = expected.iter().map(|(k, _)| *k).collect();
    for (key, v) in got {
        if selected(key) && !wanted.contains(key.as_str()) {
            problems.push(format!("{key}: unexpected series (value {v})"));
        }
    }
    ensure!(
        problems.is_empty(),
        "{} problem(s):\n  {}\nall series: {got:#?}",
        problems.len(),
        problems.join("\n  ")
    );
    Ok(())
}

/// The series of a `/metrics` map that come from the traffic, not from the bridge itself
/// (`statsd_bridge_*` and `process_*` left out).
pub fn user_series(map: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    map.iter()
        .filter(|(k, _)| !k.starts_with("statsd_bridge_") && !k.starts_with("process_"))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}
