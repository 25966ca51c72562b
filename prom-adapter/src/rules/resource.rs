//! `resourceRules`: the PromQL behind `metrics.k8s.io` (what `kubectl top` and CPU/memory HPAs
//! read), in prometheus-adapter's shape: a `cpu` and a `memory` rule, each with a
//! `containerQuery`, a `nodeQuery`, `resources` and a `containerLabel`, plus a `window`.
//!
//! The queries are rendered as prometheus-adapter's resource provider renders them: the pod
//! queries match the namespace (then the pod, for one pod) and group by the pod label and
//! the container label; the node queries match the node and group by the node label. Two
//! changes: a list asks by namespace only, as custom metrics do (no `pod=~"a|b|…"` regex
//! that outgrows URL limits), and the answer is filtered by the watch cache afterwards; and
//! the lists prometheus-adapter never renders (every namespace, every node) match the
//! object label as non-empty, so `{<<.LabelMatchers>>,…}` stays valid PromQL.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::panic
)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::query::{QueryInput, quote};
use super::resources::{GroupResource, ResourceMapper};
use super::template::{Template, TemplateError};
use super::{QUERY_FIELDS, ResourcesSpec};

/// `window` when a config gives none: the window metrics-server reports for kubelet data
/// is about this long, and the HPA only uses it for CPU readiness.
pub const DEFAULT_RESOURCE_WINDOW: Duration = Duration::from_secs(60);

/// `resourceRules` as written (YAML) or as `[adapter.resource_rules]` (TOML).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceRulesSpec {
    /// How CPU usage (cores) is queried.
    pub cpu: ResourceRuleSpec,
    /// How memory usage (bytes) is queried.
    pub memory: ResourceRuleSpec,
    /// Reported as each answer's `window`; not put into the queries (their ranges are).
    #[serde(default)]
    pub window: Option<common::units::Duration>,
    /// Extension: the backend both queries go to (default: the first backend).
    #[serde(default)]
    pub backend: Option<String>,
}

/// One resource's rule (`cpu` or `memory`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourceRuleSpec {
    /// Usage per container; must keep the pod and container labels (`sum by (<<.GroupBy>>)`).
    #[serde(alias = "container_query")]
    pub container_query: String,
    /// Usage per node; must keep the node label.
    #[serde(alias = "node_query")]
    pub node_query: String,
    /// Which labels hold the namespace, pod and node names.
    #[serde(default)]
    pub resources: ResourcesSpec,
    /// The label that holds container names.
    #[serde(alias = "container_label")]
    pub container_label: String,
}

/// Validated `resourceRules`.
#[derive(Debug, Clone)]
pub struct ResourceRules {
    /// `file:line:col` of the section, for logs.
    pub position: String,
    /// CPU, in cores.
    pub cpu: ResourceRule,
    /// Memory, in bytes.
    pub memory: ResourceRule,
    /// Reported as `window`.
    pub window: Duration,
    /// The backend named by the section; `None`: the first one.
    pub backend: Option<String>,
    /// Where the section was written (set by the front-end), for backend errors.
    pub origin: super::RuleOrigin,
}

/// One validated resource rule, its labels resolved once.
#[derive(Debug, Clone)]
pub struct ResourceRule {
    container_query: Template,
    node_query: Template,
    /// The label of container names.
    pub container_label: String,
    /// The label of pod names.
    pub pod_label: String,
    /// The label of namespace names.
    pub namespace_label: String,
    /// The label of node names.
    pub node_label: String,
}

/// Why a `resourceRules` section can't be used; the caller adds where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceRuleError {
    /// A field that must say something is empty.
    #[error("must not be empty")]
    Empty,
    /// `resources` maps no label to a resource the queries need.
    #[error("resources maps no label to {0}")]
    NoLabelFor(&'static str),
    /// `resources.namespaced` belongs to external rules.
    #[error("resources.namespaced is for externalRules only")]
    Namespaced,
    /// `resources` itself is invalid.
    #[error("{0}")]
    Resources(String),
    /// A query doesn't parse, uses an unknown field, or renders to nothing.
    #[error("{0}")]
    Query(String),
    /// `window` is zero.
    #[error("must be at least 1s")]
    ZeroWindow,
}

impl ResourceRule {
    /// Validates one rule; errors name the field (`containerQuery`, `resources`, …).
    pub fn compile(
        spec: &ResourceRuleSpec,
    ) -> Result<ResourceRule, (&'static str, ResourceRuleError)> {
        if spec.container_label.trim().is_empty() {
            return Err(("containerLabel", ResourceRuleError::Empty));
        }
        if spec.resources.namespaced.is_some() {
            return Err(("resources", ResourceRuleError::Namespaced));
        }
        let overrides = spec
            .resources
            .overrides
            .iter()
            .map(|(label, o)| (label.clone(), (o.group.clone(), o.resource.clone())))
            .collect();
        let mapper = ResourceMapper::new(&overrides, spec.resources.template.as_deref())
            .map_err(|e| ("resources", ResourceRuleError::Resources(e.to_string())))?;
        let label = |resource: &'static str| {
            mapper
                .label_for(&GroupResource::new("", resource))
                .ok_or(("resources", ResourceRuleError::NoLabelFor(resource)))
        };
        let rule = ResourceRule {
            container_query: query("containerQuery", &spec.container_query)?,
            node_query: query("nodeQuery", &spec.node_query)?,
            container_label: spec.container_label.clone(),
            pod_label: label("pods")?,
            namespace_label: label("namespaces")?,
            node_label: label("nodes")?,
        };
        // Every shape of request must render to something.
        for target in [
            Target::Pods {
                namespace: "default",
                name: Some("probe"),
            },
            Target::AllPods,
            Target::Nodes { name: None },
        ] {
            let field = if matches!(target, Target::Nodes { .. }) {
                "nodeQuery"
            } else {
                "containerQuery"
            };
            match rule.render(&target) {
                Ok(q) if q.promql.trim().is_empty() => {
                    return Err((
                        field,
                        ResourceRuleError::Query("renders to an empty query".into()),
                    ));
                }
                Ok(_) => {}
                Err(e) => return Err((field, ResourceRuleError::Query(e.to_string()))),
            }
        }
        Ok(rule)
    }

    /// The query for `target`, and the labels its samples are read by.
    pub fn render(&self, target: &Target<'_>) -> Result<ResourceQuery, TemplateError> {
        let mut matchers = Vec::new();
        let mut values_by_name = BTreeMap::new();
        let (template, object_label, group_by) = match target {
            Target::Pods { namespace, name } => {
                matchers.push(format!("{}={}", self.namespace_label, quote(namespace)));
                values_by_name.insert(self.namespace_label.clone(), vec![(*namespace).to_owned()]);
                if let Some(name) = name {
                    matchers.push(format!("{}={}", self.pod_label, quote(name)));
                    values_by_name.insert(self.pod_label.clone(), vec![(*name).to_owned()]);
                }
                (
                    &self.container_query,
                    &self.pod_label,
                    vec![self.pod_label.clone(), self.container_label.clone()],
                )
            }
            Target::AllPods => {
                matchers.push(format!("{}!=\"\"", self.pod_label));
                (
                    &self.container_query,
                    &self.pod_label,
                    vec![
                        self.pod_label.clone(),
                        self.container_label.clone(),
                        self.namespace_label.clone(),
                    ],
                )
            }
            Target::Nodes { name } => {
                match name {
                    Some(name) => {
                        matchers.push(format!("{}={}", self.node_label, quote(name)));
                        values_by_name.insert(self.node_label.clone(), vec![(*name).to_owned()]);
                    }
                    None => matchers.push(format!("{}!=\"\"", self.node_label)),
                }
                (
                    &self.node_query,
                    &self.node_label,
                    vec![self.node_label.clone()],
                )
            }
        };
        let input = QueryInput {
            series: String::new(),
            matchers,
            values_by_name,
            group_by,
        };
        Ok(ResourceQuery {
            promql: input.render(template)?,
            object_label: object_label.clone(),
        })
    }
}

/// What a resource-metrics request needs from Prometheus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// The pods of one namespace: all, or the one named.
    Pods {
        /// The namespace.
        namespace: &'a str,
        /// One pod, or `None` for every pod.
        name: Option<&'a str>,
    },
    /// The pods of every namespace (also grouped by the namespace label).
    AllPods,
    /// Nodes: all, or the one named.
    Nodes {
        /// One node, or `None` for every node.
        name: Option<&'a str>,
    },
}

/// A rendered resource query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceQuery {
    /// The PromQL.
    pub promql: String,
    /// The label naming the pod or node of each sample.
    pub object_label: String,
}

fn query(field: &'static str, src: &str) -> Result<Template, (&'static str, ResourceRuleError)> {
    if src.trim().is_empty() {
        return Err((field, ResourceRuleError::Empty));
    }
    let template =
        Template::parse(src).map_err(|e| (field, ResourceRuleError::Query(e.to_string())))?;
    if let Some(unknown) = template
        .fields()
        .into_iter()
        .find(|f| !QUERY_FIELDS.contains(&f.as_str()))
    {
        return Err((
            field,
            ResourceRuleError::Query(format!(
                "unknown template field <<.{unknown}>> (known: {})",
                QUERY_FIELDS.join(", ")
            )),
        ));
    }
    Ok(template)
}

impl ResourceRules {
    /// Validates the section; errors name the field under it (`cpu.containerQuery`).
    pub fn compile(
        spec: &ResourceRulesSpec,
        position: String,
    ) -> Result<ResourceRules, (String, ResourceRuleError)> {
        let cpu = ResourceRule::compile(&spec.cpu).map_err(|(f, e)| (format!("cpu.{f}"), e))?;
        let memory =
            ResourceRule::compile(&spec.memory).map_err(|(f, e)| (format!("memory.{f}"), e))?;
        let window = spec.window.map_or(DEFAULT_RESOURCE_WINDOW, |w| w.0);
        if window < Duration::from_secs(1) {
            return Err(("window".into(), ResourceRuleError::ZeroWindow));
        }
        Ok(ResourceRules {
            position,
            cpu,
            memory,
            window,
            backend: spec.backend.clone(),
            origin: super::RuleOrigin::default(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use super::*;
    use crate::rules::from_yaml;

    /// prometheus-adapter's deploy/manifests/config-map.yaml (v0.11+), as shipped.
    pub(crate) const STANDARD: &str = r#"
"resourceRules":
  "cpu":
    "containerLabel": "container"
    "containerQuery": |
      sum by (<<.GroupBy>>) (
        irate (
            container_cpu_usage_seconds_total{<<.LabelMatchers>>,container!="",pod!=""}[4m]
        )
      )
    "nodeQuery": |
      sum by (<<.GroupBy>>) (
        irate(
            node_cpu_usage_seconds_total{<<.LabelMatchers>>}[4m]
        )
      )
    "resources":
      "overrides":
        "namespace":
          "resource": "namespace"
        "node":
          "resource": "node"
        "pod":
          "resource": "pod"
  "memory":
    "containerLabel": "container"
    "containerQuery": |
      sum by (<<.GroupBy>>) (
        container_memory_working_set_bytes{<<.LabelMatchers>>,container!="",pod!=""}
      )
    "nodeQuery": |
      sum by (<<.GroupBy>>) (
        node_memory_working_set_bytes{<<.LabelMatchers>>}
      )
    "resources":
      "overrides":
        "node":
          "resource": "node"
        "namespace":
          "resource": "namespace"
        "pod":
          "resource": "pod"
  "window": "5m"
"#;

    fn standard() -> ResourceRules {
        from_yaml(STANDARD, Path::new("a.yaml"))
            .unwrap()
            .0
            .resource
            .unwrap()
    }

    /// Whitespace-insensitive: the queries are block scalars over several lines.
    fn squash(s: &str) -> String {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn standard_config_renders_as_prometheus_adapter_does_for_one_pod_and_one_node() {
        let r = standard();
        assert_eq!(r.window, Duration::from_secs(300));
        assert_eq!(r.position, "a.yaml:3:3");
        // prometheus-adapter: Build("", pods, "ns", ["container"], Everything(), "web-0").
        let q = r
            .cpu
            .render(&Target::Pods {
                namespace: "ns",
                name: Some("web-0"),
            })
            .unwrap();
        assert_eq!(
            squash(&q.promql),
            r#"sum by (pod,container) ( irate ( container_cpu_usage_seconds_total{namespace="ns",pod="web-0",container!="",pod!=""}[4m] ) )"#
        );
        assert_eq!(q.object_label, "pod");
        // Build("", nodes, "", nil, Everything(), "node-a").
        let q = r
            .memory
            .render(&Target::Nodes {
                name: Some("node-a"),
            })
            .unwrap();
        assert_eq!(
            squash(&q.promql),
            r#"sum by (node) ( node_memory_working_set_bytes{node="node-a"} )"#
        );
        assert_eq!(q.object_label, "node");
    }

    #[test]
    fn lists_match_by_namespace_or_a_present_label_never_a_name_regex() {
        let r = standard();
        let q = r
            .memory
            .render(&Target::Pods {
                namespace: "ns",
                name: None,
            })
            .unwrap();
        assert_eq!(
            squash(&q.promql),
            r#"sum by (pod,container) ( container_memory_working_set_bytes{namespace="ns",container!="",pod!=""} )"#
        );
        let q = r.cpu.render(&Target::AllPods).unwrap();
        assert_eq!(
            squash(&q.promql),
            r#"sum by (pod,container,namespace) ( irate ( container_cpu_usage_seconds_total{pod!="",container!="",pod!=""}[4m] ) )"#
        );
        let q = r.cpu.render(&Target::Nodes { name: None }).unwrap();
        assert_eq!(
            squash(&q.promql),
            r#"sum by (node) ( irate( node_cpu_usage_seconds_total{node!=""}[4m] ) )"#
        );
    }

    #[test]
    fn template_resources_and_group_by_slice_work() {
        let (set, _) = from_yaml(
            r#"
resourceRules:
  cpu:
    containerQuery: 'sum(rate(c{<<.LabelMatchers>>}[1m])) by (<<range $i, $l := .GroupBySlice>><<if $i>>,<<end>><<$l>><<end>>)'
    nodeQuery: 'sum(rate(n{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)'
    resources: {template: "kube_<<.Resource>>"}
    containerLabel: kube_container
  memory:
    containerQuery: 'sum(m{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
    nodeQuery: 'sum(nm{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
    resources: {template: "kube_<<.Resource>>"}
    containerLabel: kube_container
"#,
            Path::new("t.yaml"),
        )
        .unwrap();
        let r = set.resource.unwrap();
        assert_eq!(r.window, DEFAULT_RESOURCE_WINDOW);
        let q = r
            .cpu
            .render(&Target::Pods {
                namespace: "a",
                name: None,
            })
            .unwrap();
        assert_eq!(
            q.promql,
            r#"sum(rate(c{kube_namespace="a"}[1m])) by (kube_pod,kube_container)"#
        );
        assert_eq!(q.object_label, "kube_pod");
    }

    #[track_caller]
    fn rejected(yaml: &str, want: &str) {
        let e = from_yaml(yaml, Path::new("t.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "expected {want:?} in: {e}");
    }

    const Q: &str =
        "containerQuery: 'x{<<.LabelMatchers>>}'\n    nodeQuery: 'y{<<.LabelMatchers>>}'";
    const OVERRIDES: &str = "resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}, node: {resource: node}}}";

    #[test]
    fn invalid_rules_name_their_field() {
        let rule = |body: &str| format!("    {body}");
        let file = |cpu: &str, rest: &str| {
            format!(
                "resourceRules:\n  cpu:\n{cpu}\n  memory:\n    {Q}\n    {OVERRIDES}\n    containerLabel: container\n{rest}"
            )
        };
        let good_cpu = format!(
            "{}\n{}\n{}",
            rule(Q),
            rule(OVERRIDES),
            rule("containerLabel: container")
        );
        from_yaml(&file(&good_cpu, ""), Path::new("t.yaml")).unwrap();
        rejected(
            &file(&format!("{}\n{}", rule(Q), rule(OVERRIDES)), ""),
            "containerLabel",
        );
        rejected(
            &file(
                &format!(
                    "{}\n{}\n{}",
                    rule(Q),
                    rule(
                        "resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}"
                    ),
                    rule("containerLabel: c")
                ),
                "",
            ),
            "field `resourceRules.cpu.resources`: resources maps no label to nodes",
        );
        rejected(
            &file(
                &format!(
                    "{}\n{}\n{}",
                    rule("containerQuery: '<<.Window>>'\n    nodeQuery: 'y'"),
                    rule(OVERRIDES),
                    rule("containerLabel: c")
                ),
                "",
            ),
            "field `resourceRules.cpu.containerQuery`: unknown template field <<.Window>>",
        );
        rejected(
            &file(
                &format!(
                    "{}\n{}\n{}",
                    rule("containerQuery: 'x'\n    nodeQuery: '  '"),
                    rule(OVERRIDES),
                    rule("containerLabel: c")
                ),
                "",
            ),
            "field `resourceRules.cpu.nodeQuery`: must not be empty",
        );
        rejected(&file(&good_cpu, "  window: 0s\n"), "resourceRules.window");
        rejected(&file(&good_cpu, "  windw: 1m\n"), "windw");
        rejected(
            &format!("resourceRules:\n  cpu:\n{good_cpu}\n"),
            "missing field `memory`",
        );
    }
}
