//! Series → the metrics each API lists: the registry a relist builds (sans-IO).
//!
//! Each rule contributes on its own, so a rule whose series query fails keeps what it found
//! last time while the others refresh (prometheus-adapter drops the whole update).

use std::collections::{BTreeMap, BTreeSet};

use crate::api::types::ApiResource;
use crate::prom::Labels;
use crate::rules::resources::{GroupResource, ResourceInfo};
use crate::rules::{Rule, RuleKind, RuleSet};

/// Where a custom metric comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomEntry {
    /// Index into [`RuleSet::custom`].
    pub rule: usize,
    /// The series name (`<<.Series>>`).
    pub series: String,
    /// The resource the metric describes.
    pub info: ResourceInfo,
}

/// Where an external metric comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalEntry {
    /// Index into [`RuleSet::external`].
    pub rule: usize,
    /// The series name.
    pub series: String,
}

/// What one rule found in one relist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleFindings {
    /// (resource, metric) → (series, info) for custom rules.
    custom: BTreeMap<(GroupResource, String), (String, ResourceInfo)>,
    /// metric → series for external rules.
    external: BTreeMap<String, String>,
}

impl RuleFindings {
    /// Reads a rule's series: filters, naming, resources.
    pub fn from_series(rule: &Rule, series: &[Labels]) -> Self {
        let mut found = Self::default();
        for labels in series {
            let Some(name) = labels.get("__name__") else {
                continue;
            };
            let Some(metric) = rule.namer.metric_name(name) else {
                continue;
            };
            match rule.kind {
                RuleKind::Custom => {
                    for (_, info) in rule
                        .resources
                        .resources_of(labels.keys().map(String::as_str))
                    {
                        found
                            .custom
                            .entry((info.group_resource.clone(), metric.clone()))
                            .or_insert_with(|| (name.clone(), info));
                    }
                }
                RuleKind::External => {
                    found
                        .external
                        .entry(metric.clone())
                        .or_insert_with(|| name.clone());
                }
            }
        }
        found
    }

    /// What a rule names without asking Prometheus: a literal series name in its
    /// `seriesQuery` (`cheddar{…}`, `{__name__="queue_depth"}`) with its override resources.
    pub fn from_rule_text(rule: &Rule) -> Self {
        let Some(series) = literal_series_name(&rule.series_query) else {
            return Self::default();
        };
        let mut labels: Labels = rule
            .resources
            .override_labels()
            .map(|l| (l.to_owned(), String::new()))
            .collect();
        labels.insert("__name__".into(), series);
        Self::from_series(rule, &[labels])
    }

    /// How many metrics this rule found.
    pub fn len(&self) -> usize {
        self.custom.len() + self.external.len()
    }

    /// Whether the rule found nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The metric name a series selector pins, if it pins exactly one.
pub fn literal_series_name(selector: &str) -> Option<String> {
    let s = selector.trim();
    let head: String = s
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
        .collect();
    if !head.is_empty() {
        return Some(head);
    }
    // `{__name__="x", …}`: an equality matcher on the name.
    let inner = s.strip_prefix('{')?.strip_suffix('}')?;
    inner.split(',').find_map(|m| {
        let (k, v) = m.split_once('=')?;
        if k.trim() != "__name__" || v.starts_with('~') {
            return None;
        }
        let v = v.trim().strip_prefix('"')?.strip_suffix('"')?;
        (!v.is_empty()).then(|| v.to_owned())
    })
}

/// Every discovered metric, merged over the rules in order (earlier rules win).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    per_rule: Vec<RuleFindings>,
    custom: BTreeMap<(GroupResource, String), CustomEntry>,
    external: BTreeMap<String, ExternalEntry>,
    /// Whether the findings came from Prometheus at least once (else only rule text).
    pub discovered: bool,
}

impl Registry {
    /// A registry of what the rules name by themselves, served until the first relist.
    pub fn from_rules(rules: &RuleSet) -> Self {
        let findings = rules.iter().map(RuleFindings::from_rule_text).collect();
        let mut r = Self::merge(rules, findings);
        r.discovered = false;
        r
    }

    /// A registry from one relist's findings per rule (custom rules first, then external,
    /// as [`RuleSet::iter`] orders them); `None` keeps the rule's findings from `self`.
    pub fn update(&self, rules: &RuleSet, findings: Vec<Option<RuleFindings>>) -> Self {
        let per_rule = findings
            .into_iter()
            .enumerate()
            .map(|(i, f)| {
                f.or_else(|| self.per_rule.get(i).cloned())
                    .unwrap_or_default()
            })
            .collect();
        let mut r = Self::merge(rules, per_rule);
        r.discovered = true;
        r
    }

    fn merge(rules: &RuleSet, per_rule: Vec<RuleFindings>) -> Self {
        let mut custom = BTreeMap::new();
        let mut external = BTreeMap::new();
        let n_custom = rules.custom.len();
        for (i, f) in per_rule.iter().enumerate() {
            if i < n_custom {
                for (key, (series, info)) in &f.custom {
                    custom.entry(key.clone()).or_insert_with(|| CustomEntry {
                        rule: i,
                        series: series.clone(),
                        info: info.clone(),
                    });
                }
            } else {
                for (metric, series) in &f.external {
                    external
                        .entry(metric.clone())
                        .or_insert_with(|| ExternalEntry {
                            rule: i - n_custom,
                            series: series.clone(),
                        });
                }
            }
        }
        Self {
            per_rule,
            custom,
            external,
            discovered: false,
        }
    }

    /// The source of a custom metric for a resource.
    pub fn custom(&self, resource: &GroupResource, metric: &str) -> Option<&CustomEntry> {
        self.custom.get(&(resource.clone(), metric.to_owned()))
    }

    /// The source of an external metric.
    pub fn external(&self, metric: &str) -> Option<&ExternalEntry> {
        self.external.get(metric)
    }

    /// The resources a custom metric is served for.
    pub fn resources_of(&self, metric: &str) -> Vec<GroupResource> {
        self.custom
            .keys()
            .filter(|(_, m)| m == metric)
            .map(|(gr, _)| gr.clone())
            .collect()
    }

    /// How many metrics each rule serves, in [`RuleSet::iter`] order (custom rules first).
    pub fn metrics_per_rule(&self, rules: &RuleSet) -> Vec<usize> {
        let mut counts = vec![0; rules.custom.len() + rules.external.len()];
        let custom = self.custom.values().map(|e| e.rule);
        let external = self.external.values().map(|e| rules.custom.len() + e.rule);
        for i in custom.chain(external) {
            if let Some(c) = counts.get_mut(i) {
                *c += 1;
            }
        }
        counts
    }

    /// Custom metrics count.
    pub fn custom_len(&self) -> usize {
        self.custom.len()
    }

    /// External metrics count.
    pub fn external_len(&self) -> usize {
        self.external.len()
    }

    /// The custom metrics API's resource list, `namespaced` fixed per resource.
    pub fn custom_resources(&self) -> Vec<ApiResource> {
        let mut list: Vec<ApiResource> = self
            .custom
            .iter()
            .map(|((gr, metric), e)| ApiResource {
                name: format!("{gr}/{metric}"),
                singular_name: String::new(),
                namespaced: e.info.namespaced,
                kind: "MetricValueList".into(),
                verbs: vec!["get".into()],
            })
            .collect();
        list.sort();
        list
    }

    /// The external metrics API's resource list.
    pub fn external_resources(&self) -> Vec<ApiResource> {
        self.external
            .keys()
            .map(|metric| ApiResource {
                name: metric.clone(),
                singular_name: String::new(),
                namespaced: true,
                kind: "ExternalMetricValueList".into(),
                verbs: vec!["get".into()],
            })
            .collect()
    }

    /// Distinct series queries with the rules (indexes in [`RuleSet::iter`] order) that share
    /// each: one `/api/v1/series` call serves them all.
    pub fn series_queries(rules: &RuleSet) -> Vec<(String, Vec<usize>)> {
        let mut by_query: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        let mut order: Vec<&str> = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, rule) in rules.iter().enumerate() {
            by_query.entry(&rule.series_query).or_default().push(i);
            if seen.insert(rule.series_query.as_str()) {
                order.push(&rule.series_query);
            }
        }
        order
            .into_iter()
            .map(|q| (q.to_owned(), by_query.remove(q).unwrap_or_default()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::prom::fake::labels;
    use crate::rules::from_yaml;

    const RULES: &str = r#"
rules:
- seriesQuery: '{namespace!="",pod!=""}'
  resources:
    overrides:
      namespace: {resource: "namespace"}
      pod: {resource: "pod"}
  name: {matches: "^(.*)_total$", as: "${1}_per_second"}
  metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)'
- seriesQuery: '{namespace!=""}'
  seriesFilters: [{isNot: "_total$"}]
  resources: {template: "<<.Resource>>"}
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
- seriesQuery: 'cheddar{sharp="true"}'
  name: {as: "cheesy_goodness"}
  resources:
    overrides:
      brand: {group: "cheese.io", resource: "brand"}
  metricsQuery: 'count(cheddar{sharp="true"})'
externalRules:
- seriesQuery: '{__name__="queue_depth",queue!=""}'
  name: {matches: "^queue_depth$"}
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (queue)'
"#;

    fn rules() -> RuleSet {
        from_yaml(RULES, Path::new("t.yaml")).unwrap().0
    }

    fn names(list: &[ApiResource]) -> Vec<(String, bool)> {
        list.iter()
            .map(|r| (r.name.clone(), r.namespaced))
            .collect()
    }

    #[test]
    fn relist_lists_resources_with_fixed_scopes() {
        let set = rules();
        let series = vec![
            labels(&[
                ("__name__", "http_requests_total"),
                ("namespace", "default"),
                ("pod", "web-0"),
            ]),
            labels(&[
                ("__name__", "queue_length"),
                ("namespace", "default"),
                ("deployment", "api"),
            ]),
            labels(&[("__name__", "queue_depth"), ("queue", "orders")]),
        ];
        let findings = set
            .iter()
            .map(|r| Some(RuleFindings::from_series(r, &series)))
            .collect();
        let reg = Registry::default().update(&set, findings);
        assert_eq!(
            names(&reg.custom_resources()),
            vec![
                ("deployments.apps/queue_length".into(), true),
                ("namespaces/http_requests_per_second".into(), false),
                ("namespaces/queue_length".into(), false),
                ("pods/http_requests_per_second".into(), true),
            ]
        );
        assert_eq!(
            names(&reg.external_resources()),
            vec![("queue_depth".into(), true)]
        );
        let e = reg
            .custom(&GroupResource::parse("pods"), "http_requests_per_second")
            .unwrap();
        assert_eq!((e.rule, e.series.as_str()), (0, "http_requests_total"));
        assert!(reg.discovered);
    }

    #[test]
    fn failed_rule_keeps_its_last_findings() {
        let set = rules();
        let first = vec![labels(&[
            ("__name__", "http_requests_total"),
            ("namespace", "a"),
            ("pod", "p"),
        ])];
        let reg = Registry::default().update(
            &set,
            set.iter()
                .map(|r| Some(RuleFindings::from_series(r, &first)))
                .collect(),
        );
        let mut next: Vec<Option<RuleFindings>> =
            set.iter().map(|_| Some(RuleFindings::default())).collect();
        next[0] = None;
        let reg = reg.update(&set, next);
        assert!(
            reg.custom(&GroupResource::parse("pods"), "http_requests_per_second")
                .is_some()
        );
    }

    #[test]
    fn static_listing_before_discovery() {
        let reg = Registry::from_rules(&rules());
        assert!(!reg.discovered);
        assert_eq!(
            names(&reg.custom_resources()),
            vec![("brands.cheese.io/cheesy_goodness".into(), true)]
        );
        assert_eq!(
            names(&reg.external_resources()),
            vec![("queue_depth".into(), true)]
        );
    }

    #[test]
    fn literal_names() {
        assert_eq!(
            literal_series_name("cheddar{a=\"b\"}").as_deref(),
            Some("cheddar")
        );
        assert_eq!(
            literal_series_name("{__name__=\"q\",x!=\"\"}").as_deref(),
            Some("q")
        );
        assert_eq!(literal_series_name("{__name__=~\"q.*\"}"), None);
        assert_eq!(literal_series_name("{namespace!=\"\"}"), None);
    }

    #[test]
    fn shared_series_queries_are_asked_once() {
        let mut set = rules();
        let dup = set.custom[0].clone();
        set.custom.push(dup);
        let qs = Registry::series_queries(&set);
        assert_eq!(qs.len(), 4);
        assert_eq!(qs[0].1, vec![0, 3]);
    }
}
