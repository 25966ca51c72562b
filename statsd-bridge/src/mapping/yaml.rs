//! statsd_exporter's mapping YAML, read unchanged (unknown keys are errors, as its strict
//! unmarshalling makes them), into the shared [`MappingSpec`].
//!
//! Unlike the bridge's own config, a mapping file keeps statsd_exporter's defaults: without
//! `defaults.observer_type`, observers become summaries.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{
    Action, DefaultsSpec, MappingError, MappingSpec, MatchMetricType, MatchType, NativeSpec,
    Objective, RuleSpec, SummarySpec,
};
use crate::aggregate::{DEFAULT_BUCKETS, ObserverType, SummaryOptions};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    mappings: Vec<Spanned<Rule>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Defaults {
    observer_type: Option<Observer>,
    timer_type: Option<Observer>,
    buckets: Option<Vec<f64>>,
    quantiles: Option<Vec<Objective>>,
    match_type: Option<MatchType>,
    #[serde(default)]
    glob_disable_ordering: bool,
    ttl: Option<GoDuration>,
    summary_options: Option<Summary>,
    histogram_options: Option<Histogram>,
}

/// statsd_exporter's observer names; `""` is its default (summary).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Observer {
    Histogram,
    Summary,
    #[serde(rename = "")]
    Default,
}

impl Observer {
    fn get(self) -> Option<ObserverType> {
        match self {
            Self::Histogram => Some(ObserverType::Histogram),
            Self::Summary => Some(ObserverType::Summary),
            Self::Default => None,
        }
    }
}

/// One rule with statsd_exporter's field names; `[[bridge.mapping]]` tables use it too.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(rename = "match")]
    match_text: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, Scalar>,
    #[serde(default)]
    honor_labels: bool,
    observer_type: Option<Observer>,
    timer_type: Option<Observer>,
    buckets: Option<Vec<f64>>,
    quantiles: Option<Vec<Objective>>,
    match_type: Option<MatchType>,
    help: Option<String>,
    action: Option<Action>,
    match_metric_type: Option<MatchMetricType>,
    ttl: Option<GoDuration>,
    summary_options: Option<Summary>,
    histogram_options: Option<Histogram>,
    scale: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Summary {
    quantiles: Option<Vec<Objective>>,
    max_age: Option<GoDuration>,
    age_buckets: Option<u32>,
    buf_cap: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Histogram {
    buckets: Option<Vec<f64>>,
    native_histogram_bucket_factor: Option<f64>,
    native_histogram_max_buckets: Option<u32>,
    /// The bridge's own key (statsd_exporter keeps client_golang's default, 2^-128).
    native_histogram_zero_threshold: Option<f64>,
}

impl Histogram {
    fn native(&self) -> NativeSpec {
        NativeSpec {
            factor: self.native_histogram_bucket_factor,
            max_buckets: self.native_histogram_max_buckets,
            zero_threshold: self.native_histogram_zero_threshold,
        }
    }
}

/// A label value: YAML may write `code: 200`; Go reads it as the string "200".
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn into_string(self) -> String {
        match self {
            Self::Str(s) => s,
            Self::Int(i) => i.to_string(),
            Self::Float(f) => f.to_string(),
            Self::Bool(b) => b.to_string(),
        }
    }
}

/// A Go duration string (`"30s"`, `"1h30m"`, `"500ms"`) or `0`.
#[derive(Debug, Clone, Copy)]
struct GoDuration(Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Scalar::deserialize(d)?.into_string();
        s.parse::<common::units::Duration>()
            .map(|v| GoDuration(v.0))
            .map_err(serde::de::Error::custom)
    }
}

fn summary_spec(s: Summary) -> SummarySpec {
    SummarySpec {
        quantiles: s.quantiles,
        max_age: s.max_age.map(|d| d.0),
        age_buckets: s.age_buckets,
        buf_cap: s.buf_cap,
    }
}

/// Warnings about accepted settings that change nothing (logged by the caller).
pub type Warnings = Vec<String>;

/// Parses mapping YAML. `path` names the file in errors and positions.
pub fn parse(src: &str, path: &Path) -> Result<(MappingSpec, Warnings), MappingError> {
    let file: File = if src.trim().is_empty() {
        File::default()
    } else {
        serde_saphyr::from_str(src).map_err(|e| MappingError {
            position: e
                .location()
                .map(|l| format!("{}:{}:{}", path.display(), l.line(), l.column())),
            message: common::config::yaml_message(&e.to_string()),
        })?
    };
    let warnings = Vec::new();
    let d = file.defaults;
    let mut summary = SummaryOptions::default();
    let quantiles = d
        .summary_options
        .as_ref()
        .and_then(|s| s.quantiles.clone())
        .filter(|q| !q.is_empty())
        .or(d.quantiles.filter(|q| !q.is_empty()));
    if let Some(q) = quantiles {
        summary.quantiles = q.iter().map(|o| o.quantile).collect();
    }
    if let Some(s) = &d.summary_options {
        if let Some(age) = s.max_age.filter(|a| !a.0.is_zero()) {
            summary.max_age = age.0;
        }
        if let Some(n) = s.age_buckets.filter(|n| *n > 0) {
            summary.age_buckets = n;
        }
        if let Some(n) = s.buf_cap.filter(|n| *n > 0) {
            summary.buf_cap = n as usize;
        }
    }
    let buckets = d
        .histogram_options
        .as_ref()
        .and_then(|h| h.buckets.clone())
        .filter(|b| !b.is_empty())
        .or(d.buckets.filter(|b| !b.is_empty()))
        .unwrap_or_else(|| DEFAULT_BUCKETS.to_vec());
    let native = d
        .histogram_options
        .as_ref()
        .map(Histogram::native)
        .unwrap_or_default();
    let defaults = DefaultsSpec {
        observer_type: d
            .observer_type
            .and_then(Observer::get)
            .or(d.timer_type.and_then(Observer::get))
            .unwrap_or(ObserverType::Summary),
        match_type: d.match_type.unwrap_or(MatchType::Glob),
        glob_disable_ordering: d.glob_disable_ordering,
        ttl: d.ttl.map_or(Duration::ZERO, |t| t.0),
        buckets,
        summary,
        native,
    };
    super::check_native(
        &defaults.native,
        &Some(format!("{}: defaults", path.display())),
    )?;
    let mut rules = Vec::with_capacity(file.mappings.len());
    for spanned in file.mappings {
        let loc = spanned.referenced;
        let position = format!("{}:{}:{}", path.display(), loc.line(), loc.column());
        rules.push(rule_spec(spanned.value, position));
    }
    Ok((MappingSpec { defaults, rules }, warnings))
}

/// Converts a rule read by either front-end.
pub fn rule_spec(r: Rule, position: String) -> RuleSpec {
    let native = r
        .histogram_options
        .as_ref()
        .map(Histogram::native)
        .unwrap_or_default();
    RuleSpec {
        position: Some(position),
        match_text: r.match_text,
        match_type: r.match_type,
        match_metric_type: r.match_metric_type,
        name: r.name,
        labels: r
            .labels
            .into_iter()
            .map(|(k, v)| (k, v.into_string()))
            .collect(),
        honor_labels: r.honor_labels,
        action: r.action.unwrap_or_default(),
        observer_type: r
            .observer_type
            .and_then(Observer::get)
            .or(r.timer_type.and_then(Observer::get)),
        histogram_options: r.histogram_options.map(|h| h.buckets),
        native,
        legacy_buckets: r.buckets,
        summary_options: r.summary_options.map(summary_spec),
        legacy_quantiles: r.quantiles,
        ttl: r.ttl.map(|t| t.0),
        help: r.help,
        scale: r.scale,
    }
}
