//! The PromQL a request runs: a rule's `metricsQuery` rendered with the request's matchers.
//!
//! The matchers are prometheus-adapter's, in its order (metric selector, namespace, object),
//! with one change: a request for every object (`pods/*`) matches by namespace only and the
//! answer is filtered afterwards, instead of sending a `pod=~"a|b|…"` regex that grows with
//! the pod count until backends refuse it (prometheus-adapter #668).

use std::collections::BTreeMap;

use super::resources::GroupResource;
use super::template::{Data, Template, TemplateError, Value};
use super::{Rule, RuleKind};
use crate::selector::{Selector, SelectorError};

/// The values a `metricsQuery` is rendered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryInput {
    /// `<<.Series>>`.
    pub series: String,
    /// `<<.LabelMatchers>>`, joined with `,`.
    pub matchers: Vec<String>,
    /// `<<.LabelValuesByName>>`: label → values, joined with `|`.
    pub values_by_name: BTreeMap<String, Vec<String>>,
    /// `<<.GroupBy>>` (joined with `,`) and `<<.GroupBySlice>>`.
    pub group_by: Vec<String>,
}

impl QueryInput {
    /// Renders `template` with these values.
    pub fn render(&self, template: &Template) -> Result<String, TemplateError> {
        let mut data = Data::new();
        data.insert("Series", Value::Str(self.series.clone()));
        data.insert("LabelMatchers", Value::Str(self.matchers.join(",")));
        data.insert(
            "LabelValuesByName",
            Value::Map(
                self.values_by_name
                    .iter()
                    .map(|(k, v)| (k.clone(), v.join("|")))
                    .collect(),
            ),
        );
        data.insert("GroupBy", Value::Str(self.group_by.join(",")));
        data.insert("GroupBySlice", Value::List(self.group_by.clone()));
        template.render(&data)
    }
}

/// Which objects of a resource a custom-metrics request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Objects<'a> {
    /// One named object.
    Named(&'a str),
    /// Every object (`*`), optionally narrowed by a label selector.
    All,
}

/// A rendered query and how to read its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedQuery {
    /// The PromQL.
    pub promql: String,
    /// The label whose value names the described object (custom metrics only).
    pub object_label: Option<String>,
}

/// Why a query can't be built for a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The rule has no label for the requested resource.
    #[error("rule has no label for resource {0}")]
    NoLabelFor(String),
    /// The selector can't be written as PromQL matchers.
    #[error(transparent)]
    Selector(#[from] SelectorError),
    /// The template failed to render.
    #[error("metricsQuery: {0}")]
    Template(#[from] TemplateError),
}

/// Go's `%q` for the label values we put in matchers.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The query for a custom-metrics request.
pub fn custom(
    rule: &Rule,
    series: &str,
    resource: &GroupResource,
    namespace: Option<&str>,
    objects: &Objects<'_>,
    metric_selector: &Selector,
) -> Result<RenderedQuery, QueryError> {
    debug_assert_eq!(rule.kind, RuleKind::Custom);
    let object_label = rule
        .resources
        .label_for(resource)
        .ok_or_else(|| QueryError::NoLabelFor(resource.to_string()))?;
    let mut matchers = metric_selector.to_prom_matchers()?;
    let mut values_by_name = BTreeMap::new();
    if let Some(ns) = namespace
        && let Some(ns_label) = rule.resources.namespace_label()
        && ns_label != object_label
    {
        matchers.push(format!("{ns_label}={}", quote(ns)));
        values_by_name.insert(ns_label, vec![ns.to_owned()]);
    }
    if let Objects::Named(name) = objects {
        matchers.push(format!("{object_label}={}", quote(name)));
        values_by_name.insert(object_label.clone(), vec![(*name).to_owned()]);
    }
    let input = QueryInput {
        series: series.to_owned(),
        matchers,
        values_by_name,
        group_by: vec![object_label.clone()],
    };
    Ok(RenderedQuery {
        promql: input.render(&rule.metrics_query)?,
        object_label: Some(object_label),
    })
}

/// The query for an external-metrics request.
pub fn external(
    rule: &Rule,
    series: &str,
    namespace: &str,
    selector: &Selector,
) -> Result<RenderedQuery, QueryError> {
    let mut matchers = selector.to_prom_matchers()?;
    let mut values_by_name = BTreeMap::new();
    if rule.namespaced
        && let Some(ns_label) = rule.resources.namespace_label()
    {
        matchers.push(format!("{ns_label}={}", quote(namespace)));
        values_by_name.insert(ns_label, vec![namespace.to_owned()]);
    }
    let input = QueryInput {
        series: series.to_owned(),
        matchers,
        values_by_name,
        group_by: Vec::new(),
    };
    Ok(RenderedQuery {
        promql: input.render(&rule.metrics_query)?,
        object_label: None,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::rules::from_yaml;

    fn rules(src: &str) -> crate::rules::RuleSet {
        from_yaml(src, Path::new("t.yaml")).unwrap().0
    }

    const PODS: &str = r#"
rules:
- seriesQuery: '{namespace!="",pod!=""}'
  resources:
    overrides:
      namespace: {resource: "namespace"}
      pod: {resource: "pod"}
  name: {matches: "^(.*)_total$", as: "${1}_per_second"}
  metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)'
- seriesQuery: '{namespace!=""}'
  resources: {template: "<<.Resource>>"}
  metricsQuery: '<<.Series>>{<<.LabelMatchers>>} / <<index .LabelValuesByName "namespace">> <<.GroupBySlice>>'
externalRules:
- seriesQuery: '{__name__="queue_depth"}'
  resources:
    overrides: {namespace: {resource: "namespace"}}
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
- seriesQuery: '{__name__="queue_depth"}'
  resources:
    overrides: {namespace: {resource: "namespace"}}
    namespaced: false
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (queue)'
"#;

    fn sel(s: &str) -> Selector {
        Selector::parse(s).unwrap()
    }

    #[test]
    fn pods_star_matches_by_namespace_only() {
        let set = rules(PODS);
        let q = custom(
            &set.custom[0],
            "http_requests_total",
            &GroupResource::parse("pods"),
            Some("somens"),
            &Objects::All,
            &Selector::default(),
        )
        .unwrap();
        assert_eq!(
            q.promql,
            r#"sum(rate(http_requests_total{namespace="somens"}[2m])) by (pod)"#
        );
        assert_eq!(q.object_label.as_deref(), Some("pod"));
    }

    #[test]
    fn named_object_and_metric_selector_in_prometheus_adapter_order() {
        let set = rules(PODS);
        let q = custom(
            &set.custom[0],
            "http_requests_total",
            &GroupResource::parse("pods"),
            Some("default"),
            &Objects::Named("web-0"),
            &sel("verb in (GET,POST),code!=500"),
        )
        .unwrap();
        assert_eq!(
            q.promql,
            r#"sum(rate(http_requests_total{code!="500",verb=~"GET|POST",namespace="default",pod="web-0"}[2m])) by (pod)"#
        );
    }

    #[test]
    fn namespace_object_uses_the_namespace_label_once() {
        let set = rules(PODS);
        let q = custom(
            &set.custom[0],
            "http_requests_total",
            &GroupResource::namespaces(),
            None,
            &Objects::Named("default"),
            &Selector::default(),
        )
        .unwrap();
        assert_eq!(
            q.promql,
            r#"sum(rate(http_requests_total{namespace="default"}[2m])) by (namespace)"#
        );
    }

    #[test]
    fn template_rule_renders_values_by_name_and_group_by_slice() {
        let set = rules(PODS);
        let q = custom(
            &set.custom[1],
            "queue_length",
            &GroupResource::parse("deployments.apps"),
            Some("prod"),
            &Objects::Named("api"),
            &Selector::default(),
        )
        .unwrap();
        assert_eq!(
            q.promql,
            r#"queue_length{namespace="prod",deployment="api"} / prod [deployment]"#
        );
    }

    #[test]
    fn unmapped_resource_is_an_error() {
        let set = rules(PODS);
        let e = custom(
            &set.custom[0],
            "x",
            &GroupResource::parse("services"),
            Some("d"),
            &Objects::All,
            &Selector::default(),
        )
        .unwrap_err();
        assert_eq!(e, QueryError::NoLabelFor("services".into()));
    }

    #[test]
    fn external_namespaced_and_not() {
        let set = rules(PODS);
        let q = external(
            &set.external[0],
            "queue_depth",
            "default",
            &sel("queue=orders"),
        )
        .unwrap();
        assert_eq!(
            q.promql,
            r#"sum(queue_depth{queue="orders",namespace="default"}) by ()"#
        );
        let q = external(
            &set.external[1],
            "queue_depth",
            "default",
            &sel("queue=orders"),
        )
        .unwrap();
        assert_eq!(q.promql, r#"sum(queue_depth{queue="orders"}) by (queue)"#);
    }

    #[test]
    fn quote_is_go_percent_q() {
        assert_eq!(quote("a\"b\\c\n"), r#""a\"b\\c\n""#);
    }
}
