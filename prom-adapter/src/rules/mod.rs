//! Rules: prometheus-adapter's config (YAML) and `[adapter]` rules (TOML), compiled into one
//! model that discovery and the provider share.
//!
//! Both front-ends deserialize the same [`RuleSpec`]; field names are prometheus-adapter's
//! (`seriesQuery`), and TOML may also spell them in snake case (`series_query`).

pub mod named;
pub mod naming;
pub mod query;
pub mod resource;
pub mod resources;
pub mod template;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::config::ConfigError;
use serde::Deserialize;

use self::naming::{Namer, SeriesFilter};
use self::resource::{ResourceRules, ResourceRulesSpec};
use self::resources::ResourceMapper;
use self::template::Template;

/// One rule as written, before validation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleSpec {
    /// Series selector for discovery (`/api/v1/series` `match[]`).
    #[serde(alias = "series_query")]
    pub series_query: String,
    /// Regexes on the series name that must (`is`) or must not (`isNot`) match.
    #[serde(default, alias = "series_filters")]
    pub series_filters: Vec<FilterSpec>,
    /// Which labels name Kubernetes objects.
    #[serde(default)]
    pub resources: ResourcesSpec,
    /// How series names become metric names.
    #[serde(default)]
    pub name: NameSpec,
    /// The PromQL template run per request.
    #[serde(alias = "metrics_query")]
    pub metrics_query: String,
    /// Extension: the window the query looks at, reported as `windowSeconds` (default 1m).
    #[serde(default)]
    pub window: Option<common::units::Duration>,
    /// Extension: what a NaN or ±Inf sample becomes.
    #[serde(default, alias = "on_non_finite")]
    pub on_non_finite: Option<NonFinitePolicy>,
    /// Extension: what a query with no sample for the object becomes.
    #[serde(default, alias = "on_empty")]
    pub on_empty: Option<EmptyPolicy>,
    /// Extension: the name of the backend this rule's discovery and queries go to (default:
    /// the first backend).
    #[serde(default)]
    pub backend: Option<String>,
}

/// A `seriesFilters` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FilterSpec {
    /// Keep series whose name matches.
    #[serde(default)]
    pub is: Option<String>,
    /// Drop series whose name matches.
    #[serde(default, alias = "is_not")]
    pub is_not: Option<String>,
}

/// The `resources` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSpec {
    /// Label → resource.
    #[serde(default)]
    pub overrides: BTreeMap<String, OverrideSpec>,
    /// Label-name template over `<<.Group>>` and `<<.Resource>>`.
    #[serde(default)]
    pub template: Option<String>,
    /// External rules: `false` drops the namespace matcher (cross-namespace reads).
    #[serde(default)]
    pub namespaced: Option<bool>,
}

/// One `resources.overrides` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideSpec {
    /// API group; empty for core.
    #[serde(default)]
    pub group: String,
    /// Resource, singular or plural.
    pub resource: String,
}

/// The `name` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameSpec {
    /// Regex on the series name.
    #[serde(default)]
    pub matches: Option<String>,
    /// Replacement, with `$1`/`${1}` captures.
    #[serde(default, rename = "as")]
    pub as_: Option<String>,
}

/// What a NaN or ±Inf sample becomes. prometheus-adapter turns NaN into 0 and +Inf into
/// garbage; scaling on either silently is worse than the HPA holding still.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NonFinitePolicy {
    /// Answer 503 with the reason; the HPA keeps its current scale.
    #[default]
    Error,
    /// Serve `0`.
    Zero,
    /// Leave the object out of the answer.
    Skip,
}

/// What an object with no sample becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmptyPolicy {
    /// 404 for a named object, 503 for an external metric: never a silent 0.
    #[default]
    Error,
    /// Serve `0` (KEDA's `ignoreNullValues`).
    Zero,
}

/// Custom (`rules`) or external (`externalRules`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// Serves `custom.metrics.k8s.io`.
    Custom,
    /// Serves `external.metrics.k8s.io`.
    External,
}

/// A validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Custom or external.
    pub kind: RuleKind,
    /// `file:line:col` of the rule, for logs and errors.
    pub position: String,
    /// The discovery selector.
    pub series_query: String,
    /// Filters and naming.
    pub namer: Namer,
    /// Label ↔ resource mapping.
    pub resources: ResourceMapper,
    /// External rules: whether the HPA's namespace restricts the query.
    pub namespaced: bool,
    /// The query template.
    pub metrics_query: Template,
    /// Reported as `windowSeconds`.
    pub window: Duration,
    /// NaN/±Inf handling.
    pub on_non_finite: NonFinitePolicy,
    /// No-sample handling.
    pub on_empty: EmptyPolicy,
    /// The backend named by the rule; `None`: the first one.
    pub backend: Option<String>,
    /// Where the rule was written, so a backend checked later can name the rule.
    pub origin: RuleOrigin,
}

/// Where a rule was written, kept for errors found after compiling (an unknown backend).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleOrigin {
    /// The file.
    pub path: std::path::PathBuf,
    /// 1-based line and column.
    pub position: (usize, usize),
    /// `rules[3]`, `adapter.external_rules[0]`, `resourceRules`.
    pub field: String,
}

impl RuleOrigin {
    /// A config error about `sub` (a key of the rule).
    pub fn error(&self, sub: &str, message: String) -> ConfigError {
        ConfigError {
            path: self.path.clone(),
            position: Some(self.position),
            field: Some(format!("{}.{sub}", self.field)),
            message,
        }
    }
}

/// Every rule, in file order (earlier rules win when two name the same metric).
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    /// `rules`.
    pub custom: Vec<Rule>,
    /// `externalRules`.
    pub external: Vec<Rule>,
    /// `resourceRules`: `metrics.k8s.io` is served only when they are given.
    pub resource: Option<ResourceRules>,
    /// Named queries (`externalQueries`, `[[adapter.queries]]`), served from a cache.
    pub queries: Vec<named::NamedQuery>,
}

impl RuleSet {
    /// Every rule, custom first.
    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.custom.iter().chain(&self.external)
    }

    /// Checks that every rule names a backend in `names`: an error names the rule and its
    /// `backend` field.
    pub fn check_backends(&self, names: &[&str]) -> Result<(), ConfigError> {
        let known = || names.join(", ");
        for rule in self.iter() {
            if let Some(b) = &rule.backend
                && !names.contains(&b.as_str())
            {
                return Err(rule.origin.error(
                    "backend",
                    format!("unknown backend `{b}` (configured: {})", known()),
                ));
            }
        }
        if let Some(r) = &self.resource
            && let Some(b) = &r.backend
            && !names.contains(&b.as_str())
        {
            return Err(r.origin.error(
                "backend",
                format!("unknown backend `{b}` (configured: {})", known()),
            ));
        }
        for q in &self.queries {
            if let (Some(b), named::QuerySource::Config(origin)) = (&q.backend, &q.source)
                && !names.contains(&b.as_str())
            {
                return Err(origin.error(
                    "backend",
                    format!("unknown backend `{b}` (configured: {})", known()),
                ));
            }
        }
        Ok(())
    }

    /// Appends another set (TOML rules after a YAML file's); its resource rules, if any,
    /// replace these (the config refuses them twice).
    pub fn extend(&mut self, other: RuleSet) {
        self.custom.extend(other.custom);
        self.external.extend(other.external);
        self.queries.extend(other.queries);
        if other.resource.is_some() {
            self.resource = other.resource;
        }
    }
}

/// The fields a `metricsQuery` may use.
pub const QUERY_FIELDS: &[&str] = &[
    "Series",
    "LabelMatchers",
    "LabelValuesByName",
    "GroupBy",
    "GroupBySlice",
];

/// The default `windowSeconds`, as the HPA assumes when none is given.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// Where a rule was written, for error messages.
pub struct Origin<'a> {
    /// The file.
    pub path: &'a Path,
    /// 1-based line and column of the rule.
    pub position: (usize, usize),
    /// `rules[3]`, `externalRules[0]`, `adapter.rules[1]`.
    pub field: String,
}

/// Validates a rule: regexes compile, templates parse and use only known fields, and the
/// query renders to something.
pub fn compile(spec: RuleSpec, kind: RuleKind, origin: &Origin<'_>) -> Result<Rule, ConfigError> {
    let err = |field: &str, message: String| ConfigError {
        path: origin.path.to_path_buf(),
        position: Some(origin.position),
        field: Some(format!("{}.{field}", origin.field)),
        message,
    };
    if spec.series_query.trim().is_empty() {
        return Err(err("seriesQuery", "must not be empty".into()));
    }
    let mut filters = Vec::with_capacity(spec.series_filters.len());
    for (i, f) in spec.series_filters.iter().enumerate() {
        let field = format!("seriesFilters[{i}]");
        let filter = match (&f.is, &f.is_not) {
            (Some(re), None) => {
                SeriesFilter::Is(naming::compile("is", re).map_err(|e| err(&field, e.to_string()))?)
            }
            (None, Some(re)) => SeriesFilter::IsNot(
                naming::compile("isNot", re).map_err(|e| err(&field, e.to_string()))?,
            ),
            _ => return Err(err(&field, naming::NamingError::BadFilter.to_string())),
        };
        filters.push(filter);
    }
    let namer = Namer::new(
        filters,
        spec.name.matches.as_deref(),
        spec.name.as_.as_deref(),
    )
    .map_err(|e| err("name", e.to_string()))?;
    let overrides = spec
        .resources
        .overrides
        .iter()
        .map(|(label, o)| (label.clone(), (o.group.clone(), o.resource.clone())))
        .collect();
    let resources = ResourceMapper::new(&overrides, spec.resources.template.as_deref())
        .map_err(|e| err("resources", e.to_string()))?;
    let metrics_query =
        Template::parse(&spec.metrics_query).map_err(|e| err("metricsQuery", e.to_string()))?;
    if let Some(unknown) = metrics_query
        .fields()
        .into_iter()
        .find(|f| !QUERY_FIELDS.contains(&f.as_str()))
    {
        return Err(err(
            "metricsQuery",
            format!(
                "unknown template field <<.{unknown}>> (known: {})",
                QUERY_FIELDS.join(", ")
            ),
        ));
    }
    let probe = query::QueryInput {
        series: "probe_series".into(),
        matchers: vec!["namespace=\"default\"".into()],
        values_by_name: BTreeMap::from([("namespace".into(), vec!["default".into()])]),
        group_by: vec!["pod".into()],
    };
    match probe.render(&metrics_query) {
        Ok(q) if q.trim().is_empty() => {
            return Err(err("metricsQuery", "renders to an empty query".into()));
        }
        Ok(_) => {}
        Err(e) => return Err(err("metricsQuery", e.to_string())),
    }
    let window = spec.window.map_or(DEFAULT_WINDOW, |w| w.0);
    if window.as_secs() == 0 {
        return Err(err("window", "must be at least 1s".into()));
    }
    Ok(Rule {
        kind,
        position: format!(
            "{}:{}:{}",
            origin.path.display(),
            origin.position.0,
            origin.position.1
        ),
        series_query: spec.series_query,
        namer,
        resources,
        namespaced: spec.resources.namespaced.unwrap_or(true),
        metrics_query,
        window,
        on_non_finite: spec.on_non_finite.unwrap_or_default(),
        on_empty: spec.on_empty.unwrap_or_default(),
        backend: spec.backend,
        origin: RuleOrigin {
            path: origin.path.to_path_buf(),
            position: origin.position,
            field: origin.field.clone(),
        },
    })
}

/// Warnings about accepted settings that change nothing (logged by the caller).
pub type Warnings = Vec<String>;

/// prometheus-adapter's config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AdapterFile {
    #[serde(default)]
    rules: Vec<serde_saphyr::Spanned<RuleSpec>>,
    #[serde(default)]
    external_rules: Vec<serde_saphyr::Spanned<RuleSpec>>,
    #[serde(default)]
    resource_rules: Option<serde_saphyr::Spanned<ResourceRulesSpec>>,
    /// Extension: named queries, served from a cache as external metrics.
    #[serde(default)]
    external_queries: Vec<serde_saphyr::Spanned<named::NamedQuerySpec>>,
}

/// Reads prometheus-adapter's config YAML, unchanged (unknown keys are errors, as its
/// strict loader makes them).
pub fn from_yaml(src: &str, path: &Path) -> Result<(RuleSet, Warnings), ConfigError> {
    let file: AdapterFile = if src.trim().is_empty() {
        AdapterFile::default()
    } else {
        serde_saphyr::from_str(src).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            position: e
                .location()
                .map(|l| (l.line() as usize, l.column() as usize)),
            field: None,
            message: common::config::yaml_message(&e.to_string()),
        })?
    };
    let warnings = Warnings::new();
    let mut set = RuleSet::default();
    let queries = file
        .external_queries
        .into_iter()
        .map(|s| {
            let loc = s.referenced;
            (s.value, (loc.line() as usize, loc.column() as usize))
        })
        .collect();
    set.queries = named::compile_list(queries, path, "externalQueries", &[])?;
    if let Some(spanned) = file.resource_rules {
        let loc = spanned.referenced;
        set.resource = Some(compile_resource(
            &spanned.value,
            path,
            (loc.line() as usize, loc.column() as usize),
            "resourceRules",
        )?);
    }
    for (kind, list, name) in [
        (RuleKind::Custom, file.rules, "rules"),
        (RuleKind::External, file.external_rules, "externalRules"),
    ] {
        for (i, spanned) in list.into_iter().enumerate() {
            let loc = spanned.referenced;
            let origin = Origin {
                path,
                position: (loc.line() as usize, loc.column() as usize),
                field: format!("{name}[{i}]"),
            };
            let rule = compile(spanned.value, kind, &origin)?;
            match kind {
                RuleKind::Custom => set.custom.push(rule),
                RuleKind::External => set.external.push(rule),
            }
        }
    }
    Ok((set, warnings))
}

/// Validates a `resourceRules` section written at `position` of `path`; `field` is its
/// name there (`resourceRules`, `adapter.resource_rules`).
fn compile_resource(
    spec: &ResourceRulesSpec,
    path: &Path,
    position: (usize, usize),
    field: &str,
) -> Result<ResourceRules, ConfigError> {
    let at = format!("{}:{}:{}", path.display(), position.0, position.1);
    let mut rules = ResourceRules::compile(spec, at).map_err(|(sub, e)| ConfigError {
        path: path.to_path_buf(),
        position: Some(position),
        field: Some(format!("{field}.{sub}")),
        message: e.to_string(),
    })?;
    rules.origin = RuleOrigin {
        path: path.to_path_buf(),
        position,
        field: field.to_owned(),
    };
    Ok(rules)
}

/// Compiles `[adapter.resource_rules]` of `pipeline.toml`.
pub fn resource_from_toml(
    spec: &toml::Spanned<ResourceRulesSpec>,
    src: &str,
    path: &Path,
) -> Result<ResourceRules, ConfigError> {
    let position = common::config::line_col(src, spec.span().start);
    compile_resource(spec.get_ref(), path, position, "adapter.resource_rules")
}

/// Compiles rules written in `pipeline.toml` (`[[adapter.rules]]`, `[[adapter.external_rules]]`).
pub fn from_toml_specs(
    custom: Vec<toml::Spanned<RuleSpec>>,
    external: Vec<toml::Spanned<RuleSpec>>,
    src: &str,
    path: &Path,
) -> Result<RuleSet, ConfigError> {
    let mut set = RuleSet::default();
    for (kind, list, name) in [
        (RuleKind::Custom, custom, "adapter.rules"),
        (RuleKind::External, external, "adapter.external_rules"),
    ] {
        for (i, spanned) in list.into_iter().enumerate() {
            let origin = Origin {
                path,
                position: common::config::line_col(src, spanned.span().start),
                field: format!("{name}[{i}]"),
            };
            let rule = compile(spanned.into_inner(), kind, &origin)?;
            match kind {
                RuleKind::Custom => set.custom.push(rule),
                RuleKind::External => set.external.push(rule),
            }
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(src: &str) -> Result<RuleSet, String> {
        from_yaml(src, Path::new("adapter.yaml"))
            .map(|(set, _)| set)
            .map_err(|e| e.to_string())
    }

    /// The shapes of prometheus-adapter's docs (docs/config.md, docs/walkthrough.md),
    /// without the trailing commas that make its sample-config.yaml invalid YAML.
    const DOCUMENTED: &str = r#"
rules:
- seriesQuery: '{__name__=~"^container_.*",container!="POD",namespace!="",pod!=""}'
  resources:
    overrides:
      namespace: {resource: "namespace"}
      pod: {resource: "pod"}
  name:
    matches: "^container_(.*)_seconds_total$"
  metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>,container!="POD"}[2m])) by (<<.GroupBy>>)'
- seriesQuery: '{__name__=~"^container_.*_total",container!="POD",namespace!="",pod!=""}'
  seriesFilters:
  - isNot: "^container_.*_seconds_total$"
  resources:
    overrides: {namespace: {resource: "namespace"}, pod: {resource: "pod"}}
  name: {matches: "^container_(.*)_total$"}
  metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>,container!="POD"}[2m])) by (<<.GroupBy>>)'
- seriesQuery: '{namespace!="",__name__!~"^container_.*"}'
  resources:
    template: "<<.Resource>>"
  name:
    matches: "^(.*)_total$"
    as: "${1}_per_second"
  metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)'
- seriesQuery: 'cheddar{sharp="true"}'
  name: {as: "cheesy_goodness"}
  resources:
    overrides:
      brand: {group: "cheese.io", resource: "brand"}
  metricsQuery: 'count(cheddar{sharp="true"})'
externalRules:
- seriesQuery: '{__name__="queue_consumer_lag",name!=""}'
  resources:
    overrides: {namespace: {resource: "namespace"}}
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (name)'
- seriesQuery: '{__name__="queue_depth",topic!=""}'
  resources:
    namespaced: false
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (name)'
"#;

    #[test]
    fn documented_config_loads() {
        let set = yaml(DOCUMENTED).unwrap();
        assert_eq!((set.custom.len(), set.external.len()), (4, 2));
        assert_eq!(set.custom[0].position, "adapter.yaml:3:3");
        assert!(set.external[0].namespaced);
        assert!(!set.external[1].namespaced);
        assert_eq!(set.custom[2].window, DEFAULT_WINDOW);
        assert_eq!(
            set.custom[2]
                .namer
                .metric_name("http_requests_total")
                .as_deref(),
            Some("http_requests_per_second")
        );
    }

    #[test]
    fn unknown_key_is_an_error_at_its_line() {
        let e = yaml("rules:\n- seriesQuery: 'up'\n  metricsQuery: 'up'\n  seriesQery: 'x'\n")
            .unwrap_err();
        assert!(e.starts_with("adapter.yaml:4:"), "{e}");
        assert!(e.contains("seriesQery"), "{e}");
    }

    #[test]
    fn unknown_template_field_names_the_rule() {
        let e = yaml("rules:\n- seriesQuery: 'up'\n  metricsQuery: '<<.Foo>>'\n").unwrap_err();
        assert_eq!(
            e,
            "adapter.yaml:2:3: field `rules[0].metricsQuery`: unknown template field <<.Foo>> \
             (known: Series, LabelMatchers, LabelValuesByName, GroupBy, GroupBySlice)"
        );
    }

    #[test]
    fn bad_regex_and_bad_filter_are_errors() {
        let e = yaml("rules:\n- seriesQuery: 'up'\n  name: {matches: '('}\n  metricsQuery: 'up'\n")
            .unwrap_err();
        assert!(e.contains("rules[0].name"), "{e}");
        let e = yaml(
            "rules:\n- seriesQuery: 'up'\n  seriesFilters: [{is: a, isNot: b}]\n  metricsQuery: 'up'\n",
        )
        .unwrap_err();
        assert!(e.contains("exactly one of"), "{e}");
    }

    #[test]
    fn missing_metrics_query_is_an_error() {
        let e = yaml("rules:\n- seriesQuery: 'up'\n").unwrap_err();
        assert!(e.contains("metricsQuery"), "{e}");
    }

    #[test]
    fn trailing_comma_sample_config_is_rejected_with_a_position() {
        // prometheus-adapter's docs/sample-config.yaml has `{resource: "pod"},` lines.
        let e = yaml(
            "rules:\n- seriesQuery: 'up'\n  resources:\n    overrides:\n      pod: {resource: \"pod\"},\n  metricsQuery: up\n",
        )
        .unwrap_err();
        assert!(e.starts_with("adapter.yaml:"), "{e}");
    }

    #[test]
    fn extensions_parse() {
        let set = yaml(
            "rules:\n- seriesQuery: 'up'\n  metricsQuery: 'up'\n  window: 2m\n  onNonFinite: zero\n  onEmpty: zero\n",
        )
        .unwrap();
        let r = &set.custom[0];
        assert_eq!(r.window, Duration::from_secs(120));
        assert_eq!(r.on_non_finite, NonFinitePolicy::Zero);
        assert_eq!(r.on_empty, EmptyPolicy::Zero);
    }

    #[test]
    fn resource_rules_are_compiled_without_warnings() {
        let (set, warnings) = from_yaml(resource::tests::STANDARD, Path::new("a.yaml")).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let r = set.resource.unwrap();
        assert_eq!(r.cpu.container_label, "container");
        assert_eq!(
            (r.cpu.pod_label.as_str(), r.cpu.namespace_label.as_str()),
            ("pod", "namespace")
        );
        assert_eq!(r.memory.node_label, "node");
        assert!(yaml(DOCUMENTED).unwrap().resource.is_none());
    }
}
