//! Mapping rules: statsd_exporter's mapping language, compiled once, matched per name.
//!
//! Two front-ends feed one model ([`MappingSpec`]): statsd_exporter's YAML ([`yaml`]) and
//! `[[bridge.mapping]]` tables in `pipeline.toml` (the `config` module). [`Mapper::compile`]
//! validates the rules the way statsd_exporter does and builds a [`glob::GlobTree`] for glob
//! rules; regex rules are tried in file order when no glob matched (statsd_exporter's order:
//! a glob match beats any regex). [`Mapper::resolve`] is pure; [`Resolver`] adds a bounded
//! per-thread LRU cache.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::panic
)]

pub mod glob;
pub mod template;
pub mod yaml;

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use regex::Regex;

use crate::aggregate::native::NativeOptions;
use crate::aggregate::{ObserverType, SummaryOptions, Target};
use crate::protocol::MetricType;
use glob::GlobTree;
use template::GlobTemplate;

/// How a rule's `match` is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchType {
    /// Dot-separated components, `*` for one whole component.
    Glob,
    /// A regular expression, unanchored, as Go's `regexp` reads it.
    Regex,
}

/// statsd_exporter's `match_metric_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchMetricType {
    /// `c` lines.
    Counter,
    /// `g` lines (and sets, which the bridge exposes as gauges).
    Gauge,
    /// `ms`, `h` and `d` lines.
    Observer,
}

impl MatchMetricType {
    fn index(self) -> usize {
        match self {
            Self::Counter => 0,
            Self::Gauge => 1,
            Self::Observer => 2,
        }
    }

    /// The match type of a StatsD type.
    pub fn of(t: MetricType) -> Self {
        match t {
            MetricType::Counter => Self::Counter,
            MetricType::Gauge | MetricType::Set => Self::Gauge,
            MetricType::Timer | MetricType::Histogram | MetricType::Distribution => Self::Observer,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Observer => "observer",
        }
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Rename and label (the default).
    #[default]
    Map,
    /// Drop the line.
    Drop,
}

/// A summary objective; the error is accepted for compatibility (the sketch bounds its own).
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Objective {
    /// The quantile, in (0, 1).
    pub quantile: f64,
    /// statsd_exporter's allowed error.
    #[serde(default)]
    pub error: f64,
}

/// Summary settings of a rule or of the defaults; unset fields inherit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SummarySpec {
    /// Quantiles.
    pub quantiles: Option<Vec<Objective>>,
    /// Window length.
    pub max_age: Option<Duration>,
    /// Buffers in the window.
    pub age_buckets: Option<u32>,
    /// Samples per buffer.
    pub buf_cap: Option<u32>,
}

/// One rule, as any front-end reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleSpec {
    /// `file:line:col` of the rule, for errors.
    pub position: Option<String>,
    /// `match`.
    pub match_text: String,
    /// `match_type`; the defaults' when unset.
    pub match_type: Option<MatchType>,
    /// `match_metric_type`.
    pub match_metric_type: Option<MatchMetricType>,
    /// `name`.
    pub name: String,
    /// `labels`, in a stable order.
    pub labels: Vec<(String, String)>,
    /// `honor_labels`.
    pub honor_labels: bool,
    /// `action`.
    pub action: Action,
    /// `observer_type` (or legacy `timer_type`).
    pub observer_type: Option<ObserverType>,
    /// `histogram_options.buckets`; `Some(None)` is a histogram_options block without buckets.
    pub histogram_options: Option<Option<Vec<f64>>>,
    /// `histogram_options.native_histogram_*`.
    pub native: NativeSpec,
    /// Legacy top-level `buckets`.
    pub legacy_buckets: Option<Vec<f64>>,
    /// `summary_options`.
    pub summary_options: Option<SummarySpec>,
    /// Legacy top-level `quantiles`.
    pub legacy_quantiles: Option<Vec<Objective>>,
    /// `ttl`.
    pub ttl: Option<Duration>,
    /// `help`.
    pub help: Option<String>,
    /// `scale`.
    pub scale: Option<f64>,
}

/// The `defaults` block.
#[derive(Debug, Clone, PartialEq)]
pub struct DefaultsSpec {
    /// Observer for rules without one and for unmapped lines.
    pub observer_type: ObserverType,
    /// Match type for rules without one.
    pub match_type: MatchType,
    /// First match found wins instead of the lowest rule index.
    pub glob_disable_ordering: bool,
    /// TTL for rules without one and for unmapped lines.
    pub ttl: Duration,
    /// Histogram buckets.
    pub buckets: Vec<f64>,
    /// Summary settings.
    pub summary: SummaryOptions,
    /// Native histogram settings.
    pub native: NativeSpec,
}

/// statsd_exporter's `histogram_options.native_histogram_*` keys; unset keys fall back to the
/// defaults'.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NativeSpec {
    /// `native_histogram_bucket_factor`: above 1 turns native histograms on.
    pub factor: Option<f64>,
    /// `native_histogram_max_buckets`.
    pub max_buckets: Option<u32>,
    /// `native_histogram_zero_threshold` (the bridge's own key).
    pub zero_threshold: Option<f64>,
}

impl NativeSpec {
    /// This spec with `fallback`'s values where it has none.
    pub fn or(self, fallback: NativeSpec) -> NativeSpec {
        NativeSpec {
            factor: self.factor.or(fallback.factor),
            max_buckets: self.max_buckets.or(fallback.max_buckets),
            zero_threshold: self.zero_threshold.or(fallback.zero_threshold),
        }
    }

    /// The options it turns on, if any.
    pub fn options(self) -> Option<NativeOptions> {
        NativeOptions::from_factor(
            self.factor.unwrap_or(0.0),
            self.max_buckets.unwrap_or(0),
            self.zero_threshold,
        )
    }
}

/// A whole mapping configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct MappingSpec {
    /// Defaults.
    pub defaults: DefaultsSpec,
    /// Rules, in file order.
    pub rules: Vec<RuleSpec>,
}

/// A rule that can't be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", position.as_ref().map(|p| format!("{p}: ")).unwrap_or_default())]
pub struct MappingError {
    /// Where the rule is.
    pub position: Option<String>,
    /// What is wrong (statsd_exporter's wording where it has one).
    pub message: String,
}

/// What a rule (or the defaults) makes of the lines it matches.
#[derive(Debug)]
pub struct RuleOutput {
    /// Rule index in the file; `None` for the defaults.
    pub index: Option<usize>,
    /// The `match` text.
    pub match_text: String,
    /// Map or drop.
    pub action: Action,
    /// Observer type.
    pub observer: ObserverType,
    /// Histogram buckets.
    pub buckets: Arc<[f64]>,
    /// Native histograms, when on.
    pub native: Option<NativeOptions>,
    /// Summary settings.
    pub summary: Arc<SummaryOptions>,
    /// TTL (zero: never).
    pub ttl: Duration,
    /// HELP text.
    pub help: Option<String>,
    /// Tags win over the rule's labels.
    pub honor_labels: bool,
    /// Values are multiplied by this.
    pub scale: Option<f64>,
}

#[derive(Debug)]
enum Matcher {
    Glob {
        name: GlobTemplate,
        labels: Vec<(String, GlobTemplate)>,
    },
    Regex {
        re: Regex,
        name: String,
        labels: Vec<(String, String)>,
    },
}

#[derive(Debug)]
struct Rule {
    matcher: Matcher,
    match_metric_type: Option<MatchMetricType>,
    output: Arc<RuleOutput>,
}

/// What the mapping makes of one name.
#[derive(Debug)]
pub enum Resolution {
    /// A rule matched.
    Mapped {
        /// The templated name (sanitized later, like every name).
        name: String,
        /// The templated labels.
        labels: Vec<(String, String)>,
        /// The rule.
        rule: Arc<RuleOutput>,
    },
    /// A rule with `action: drop` matched.
    Dropped {
        /// The rule.
        rule: Arc<RuleOutput>,
    },
    /// No rule matched: the defaults apply.
    Unmapped {
        /// The defaults.
        defaults: Arc<RuleOutput>,
    },
}

impl Resolution {
    /// The store target for this resolution.
    pub fn target(&self) -> Option<Target<'_>> {
        let (name, labels, out) = match self {
            Self::Mapped { name, labels, rule } => (Some(name.as_str()), labels.as_slice(), rule),
            Self::Unmapped { defaults } => (None, &[][..], defaults),
            Self::Dropped { .. } => return None,
        };
        Some(Target {
            name,
            labels,
            honor_labels: out.honor_labels,
            observer: out.observer,
            buckets: &out.buckets,
            native: out.native,
            summary: &out.summary,
            ttl: out.ttl,
            help: out.help.as_deref(),
            scale: out.scale,
        })
    }
}

/// Compiled rules.
#[derive(Debug)]
pub struct Mapper {
    rules: Vec<Rule>,
    glob: GlobTree,
    has_glob: bool,
    regex_rules: Vec<usize>,
    defaults: Arc<RuleOutput>,
    /// Returned for every name when there are no rules, so that path allocates nothing.
    unmapped: Arc<Resolution>,
}

/// statsd_exporter's labelNameRE: two characters at least.
const LABEL_NAME_RE: &str = r"^[a-zA-Z_][a-zA-Z0-9_]+$";
const METRIC_NAME_RE: &str = r"^([a-zA-Z_]|(\$\{?\d+\}?))([a-zA-Z0-9_]|(\$\{?\d+\}?))*$";
const GLOB_MATCH_RE: &str =
    r"^(\*\.|[a-zA-Z_](-?[a-zA-Z0-9_])*\.)+(\*|[a-zA-Z_](-?[a-zA-Z0-9_])*)$";

fn summary_options(spec: Option<&SummarySpec>, base: &SummaryOptions) -> SummaryOptions {
    let Some(spec) = spec else {
        return base.clone();
    };
    SummaryOptions {
        quantiles: spec
            .quantiles
            .as_ref()
            .filter(|q| !q.is_empty())
            .map_or_else(
                || base.quantiles.clone(),
                |q| q.iter().map(|o| o.quantile).collect(),
            ),
        max_age: spec
            .max_age
            .filter(|d| !d.is_zero())
            .unwrap_or(base.max_age),
        age_buckets: spec
            .age_buckets
            .filter(|n| *n > 0)
            .unwrap_or(base.age_buckets),
        buf_cap: spec
            .buf_cap
            .filter(|n| *n > 0)
            .map_or(base.buf_cap, |n| n as usize),
    }
}

fn check_buckets(buckets: &[f64], position: &Option<String>) -> Result<(), MappingError> {
    if buckets.iter().any(|b| !b.is_finite())
        || buckets.windows(2).any(|w| matches!(w, [a, b] if a >= b))
    {
        return Err(MappingError {
            position: position.clone(),
            message: "histogram buckets must be finite and strictly increasing".to_owned(),
        });
    }
    Ok(())
}

/// A factor of 0 to 1 leaves native histograms off (statsd_exporter's reading); NaN,
/// negative or infinite values are mistakes.
pub fn check_native(spec: &NativeSpec, position: &Option<String>) -> Result<(), MappingError> {
    let bad = |message: &str| MappingError {
        position: position.clone(),
        message: message.to_owned(),
    };
    if spec.factor.is_some_and(|f| !f.is_finite() || f < 0.0) {
        return Err(bad(
            "native_histogram_bucket_factor must be a finite number (above 1 to enable native histograms)",
        ));
    }
    if spec
        .zero_threshold
        .is_some_and(|z| !z.is_finite() || z < 0.0)
    {
        return Err(bad(
            "native_histogram_zero_threshold must be a finite number, 0 or more",
        ));
    }
    Ok(())
}

fn check_quantiles(q: &[f64], position: &Option<String>) -> Result<(), MappingError> {
    if q.iter().any(|q| !(*q > 0.0 && *q < 1.0)) {
        return Err(MappingError {
            position: position.clone(),
            message: "summary quantiles must be in (0, 1)".to_owned(),
        });
    }
    Ok(())
}

impl Mapper {
    /// A mapper with no rules: every line gets `defaults`.
    pub fn without_rules(defaults: &DefaultsSpec) -> Self {
        let defaults_out = Arc::new(RuleOutput {
            index: None,
            match_text: String::new(),
            action: Action::Map,
            observer: defaults.observer_type,
            buckets: Arc::from(defaults.buckets.as_slice()),
            native: defaults.native.options(),
            summary: Arc::new(defaults.summary.clone()),
            ttl: defaults.ttl,
            help: None,
            honor_labels: false,
            scale: None,
        });
        Self {
            rules: Vec::new(),
            glob: GlobTree::new(!defaults.glob_disable_ordering),
            has_glob: false,
            regex_rules: Vec::new(),
            unmapped: Arc::new(Resolution::Unmapped {
                defaults: Arc::clone(&defaults_out),
            }),
            defaults: defaults_out,
        }
    }

    /// Validates and compiles a mapping configuration.
    pub fn compile(spec: &MappingSpec) -> Result<Self, MappingError> {
        let d = &spec.defaults;
        check_buckets(&d.buckets, &None)?;
        check_quantiles(&d.summary.quantiles, &None)?;
        let mut mapper = Self::without_rules(d);
        let constant = |re: &str| {
            Regex::new(re).map_err(|e| MappingError {
                position: None,
                message: e.to_string(),
            })
        };
        let (label_re, name_re, glob_re) = (
            constant(LABEL_NAME_RE)?,
            constant(METRIC_NAME_RE)?,
            constant(GLOB_MATCH_RE)?,
        );
        for (i, r) in spec.rules.iter().enumerate() {
            let err = |message: String| MappingError {
                position: r.position.clone(),
                message,
            };
            for (k, _) in &r.labels {
                if !label_re.is_match(k) {
                    return Err(err(format!("invalid label key: {k}")));
                }
            }
            if r.name.is_empty() && r.action != Action::Drop {
                return Err(err(format!(
                    "line {i}: metric mapping didn't set a metric name"
                )));
            }
            if !r.name.is_empty() && !name_re.is_match(&r.name) {
                return Err(err(format!(
                    "metric name '{}' doesn't match regex '{METRIC_NAME_RE}'",
                    r.name
                )));
            }
            if r.legacy_quantiles.is_some()
                && r.summary_options
                    .as_ref()
                    .is_some_and(|s| s.quantiles.is_some())
            {
                return Err(err(format!(
                    "cannot use quantiles in both the top level and summary options at the same time in {}",
                    r.match_text
                )));
            }
            if r.legacy_buckets.is_some() && matches!(r.histogram_options, Some(Some(_))) {
                return Err(err(format!(
                    "cannot use buckets in both the top level and histogram options at the same time in {}",
                    r.match_text
                )));
            }
            let observer = r.observer_type.unwrap_or(d.observer_type);
            if observer == ObserverType::Histogram && r.summary_options.is_some() {
                return Err(err(
                    "cannot use histogram observer and summary options at the same time".to_owned(),
                ));
            }
            if observer == ObserverType::Summary && r.histogram_options.is_some() {
                return Err(err(
                    "cannot use summary observer and histogram options at the same time".to_owned(),
                ));
            }
            let buckets = r
                .legacy_buckets
                .clone()
                .filter(|b| !b.is_empty())
                .or_else(|| {
                    r.histogram_options
                        .clone()
                        .flatten()
                        .filter(|b| !b.is_empty())
                })
                .unwrap_or_else(|| d.buckets.clone());
            check_buckets(&buckets, &r.position)?;
            let native = r.native.or(d.native);
            check_native(&native, &r.position)?;
            let mut summary_spec = r.summary_options.clone().unwrap_or_default();
            if let Some(q) = r.legacy_quantiles.clone().filter(|q| !q.is_empty()) {
                summary_spec.quantiles = Some(q);
            }
            let summary = summary_options(Some(&summary_spec), &d.summary);
            check_quantiles(&summary.quantiles, &r.position)?;
            if r.scale.is_some_and(|s| !s.is_finite()) {
                return Err(err("scale must be a finite number".to_owned()));
            }
            let output = Arc::new(RuleOutput {
                index: Some(i),
                match_text: r.match_text.clone(),
                action: r.action,
                observer,
                buckets: Arc::from(buckets),
                native: native.options(),
                summary: Arc::new(summary),
                ttl: r.ttl.filter(|t| !t.is_zero()).unwrap_or(d.ttl),
                help: r.help.clone().filter(|h| !h.is_empty()),
                honor_labels: r.honor_labels,
                scale: r.scale,
            });
            let rule_index = u32::try_from(i).map_err(|_| err("too many rules".to_owned()))?;
            let matcher = match r.match_type.unwrap_or(d.match_type) {
                MatchType::Glob => {
                    if !glob_re.is_match(&r.match_text) {
                        return Err(err(format!("invalid match: {}", r.match_text)));
                    }
                    let types: Vec<usize> = match r.match_metric_type {
                        Some(t) => vec![t.index()],
                        None => (0..glob::TYPES).collect(),
                    };
                    let captures = mapper.glob.insert(&r.match_text, rule_index, &types);
                    mapper.has_glob = true;
                    Matcher::Glob {
                        name: GlobTemplate::parse(&r.name, captures),
                        labels: r
                            .labels
                            .iter()
                            .map(|(k, v)| (k.clone(), GlobTemplate::parse(v, captures)))
                            .collect(),
                    }
                }
                MatchType::Regex => {
                    let re = Regex::new(&r.match_text).map_err(|e| {
                        err(format!("invalid regex {} in mapping: {e}", r.match_text))
                    })?;
                    mapper.regex_rules.push(i);
                    Matcher::Regex {
                        re,
                        name: r.name.clone(),
                        labels: r.labels.clone(),
                    }
                }
            };
            mapper.rules.push(Rule {
                matcher,
                match_metric_type: r.match_metric_type,
                output,
            });
        }
        Ok(mapper)
    }

    /// Rules loaded.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The glob rules as Graphviz dot.
    pub fn glob_dot(&self) -> String {
        self.glob.to_dot(["counter", "gauge", "observer"])
    }

    /// What the rules make of `name` (the metric name as sent, tags removed) of type `t`.
    pub fn resolve(&self, name: &str, t: MatchMetricType) -> Resolution {
        if self.has_glob
            && let Some(m) = self.glob.find(name, t.index())
            && let Some(rule) = self.rules.get(m.rule as usize)
        {
            return Self::apply(rule, |matcher| match matcher {
                Matcher::Glob {
                    name: template,
                    labels,
                } => (
                    template.render(&m.captures),
                    labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.render(&m.captures)))
                        .collect(),
                ),
                Matcher::Regex { .. } => (String::new(), Vec::new()),
            });
        }
        for &i in &self.regex_rules {
            let Some(rule) = self.rules.get(i) else {
                continue;
            };
            let Matcher::Regex {
                re,
                name: name_template,
                labels,
            } = &rule.matcher
            else {
                continue;
            };
            let Some(caps) = re.captures(name) else {
                continue;
            };
            if rule.match_metric_type.is_some_and(|mt| mt != t) {
                continue;
            }
            return Self::apply(rule, |_| {
                let mut out = String::new();
                caps.expand(name_template, &mut out);
                let labels = labels
                    .iter()
                    .map(|(k, v)| {
                        let mut value = String::new();
                        caps.expand(v, &mut value);
                        (k.clone(), value)
                    })
                    .collect();
                (out, labels)
            });
        }
        Resolution::Unmapped {
            defaults: Arc::clone(&self.defaults),
        }
    }

    /// The defaults unmapped lines get.
    pub fn defaults(&self) -> &Arc<RuleOutput> {
        &self.defaults
    }

    fn apply(
        rule: &Rule,
        render: impl FnOnce(&Matcher) -> (String, Vec<(String, String)>),
    ) -> Resolution {
        if rule.output.action == Action::Drop {
            return Resolution::Dropped {
                rule: Arc::clone(&rule.output),
            };
        }
        let (name, labels) = render(&rule.matcher);
        Resolution::Mapped {
            name,
            labels,
            rule: Arc::clone(&rule.output),
        }
    }

    /// A one-line description of a resolution, for `explain`.
    pub fn describe(res: &Resolution, t: MatchMetricType) -> String {
        let rule = |o: &RuleOutput| {
            format!(
                "rule #{} (match {:?})",
                o.index.map_or(0, |i| i + 1),
                o.match_text
            )
        };
        let observer = |o: &RuleOutput| match (t, o.observer) {
            (MatchMetricType::Observer, ObserverType::Histogram) => {
                format!(" histogram buckets {:?}", o.buckets)
            }
            (MatchMetricType::Observer, ObserverType::Summary) => {
                format!(" summary quantiles {:?}", o.summary.quantiles)
            }
            _ => String::new(),
        };
        match res {
            Resolution::Dropped { rule: o } => format!("dropped by {}", rule(o)),
            Resolution::Mapped {
                name,
                labels,
                rule: o,
            } => {
                let labels: Vec<String> =
                    labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
                let mut s = format!(
                    "{} -> name {:?} labels {{{}}} type {}{}",
                    rule(o),
                    common::prom::sanitize_name(name),
                    labels.join(", "),
                    t.as_str(),
                    observer(o)
                );
                if o.honor_labels {
                    s.push_str(" honor_labels");
                }
                if let Some(scale) = o.scale {
                    s.push_str(&format!(" scale {scale}"));
                }
                if !o.ttl.is_zero() {
                    s.push_str(&format!(" ttl {:?}", o.ttl));
                }
                s
            }
            Resolution::Unmapped { defaults } => {
                format!(
                    "no rule matched -> defaults, type {}{}",
                    t.as_str(),
                    observer(defaults)
                )
            }
        }
    }
}

/// The current mapper, swapped whole on reload; readers notice by the generation number.
#[derive(Debug)]
pub struct MapperHandle {
    current: std::sync::RwLock<Arc<Mapper>>,
    generation: AtomicU64,
}

impl MapperHandle {
    /// Starts with `mapper`.
    pub fn new(mapper: Mapper) -> Self {
        Self {
            current: std::sync::RwLock::new(Arc::new(mapper)),
            generation: AtomicU64::new(0),
        }
    }

    /// Replaces the rules; every resolver drops its cache at its next lookup.
    pub fn replace(&self, mapper: Mapper) {
        let mut guard = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard = Arc::new(mapper);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The current rules.
    pub fn load(&self) -> (u64, Arc<Mapper>) {
        let generation = self.generation.load(Ordering::Acquire);
        let guard = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (generation, Arc::clone(&guard))
    }

    /// The generation number, bumped on each replace.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// A per-thread resolver: the current mapper plus a bounded LRU cache of results.
#[derive(Debug)]
pub struct Resolver {
    handle: Arc<MapperHandle>,
    mapper: Arc<Mapper>,
    generation: u64,
    cache: Option<lru::LruCache<String, Arc<Resolution>>>,
    key: String,
}

/// Whether a lookup came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// Found in the cache.
    Hit,
    /// Computed (and cached when there is a cache).
    Miss,
    /// No rules are loaded: nothing to look up.
    NoRules,
}

impl Resolver {
    /// A resolver over `handle` with a cache of `cache_size` names (0: no cache).
    pub fn new(handle: Arc<MapperHandle>, cache_size: usize) -> Self {
        let (generation, mapper) = handle.load();
        Self {
            handle,
            mapper,
            generation,
            cache: NonZeroUsize::new(cache_size).map(lru::LruCache::new),
            key: String::new(),
        }
    }

    /// Whether answers are cached (a cache size above 0).
    pub fn has_cache(&self) -> bool {
        self.cache.is_some()
    }

    /// The generation of the rules in force, as the handle has it now.
    pub fn generation(&self) -> u64 {
        self.handle.generation()
    }

    /// What the current rules make of `name` of type `t`.
    pub fn resolve(&mut self, name: &str, t: MatchMetricType) -> (Arc<Resolution>, CacheUse) {
        if self.handle.generation() != self.generation {
            (self.generation, self.mapper) = self.handle.load();
            if let Some(c) = &mut self.cache {
                c.clear();
            }
        }
        if self.mapper.is_empty() {
            return (Arc::clone(&self.mapper.unmapped), CacheUse::NoRules);
        }
        let Some(cache) = &mut self.cache else {
            return (Arc::new(self.mapper.resolve(name, t)), CacheUse::Miss);
        };
        self.key.clear();
        self.key
            .push(char::from(b'0' + u8::try_from(t.index()).unwrap_or(0)));
        self.key.push_str(name);
        if let Some(hit) = cache.get(self.key.as_str()) {
            return (Arc::clone(hit), CacheUse::Hit);
        }
        let res = Arc::new(self.mapper.resolve(name, t));
        cache.put(self.key.clone(), Arc::clone(&res));
        (res, CacheUse::Miss)
    }
}

#[cfg(test)]
mod tests;
