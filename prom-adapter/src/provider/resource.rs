//! `metrics.k8s.io` answers: pod and node usage from the resource rules' two queries, for the
//! pods and nodes the watch cache has, with metrics-server's semantics: an object without
//! usable samples is left out of a list and is a 404 alone; a container needs both its CPU
//! and its memory to be listed. A NaN, infinite or negative sample counts as no sample
//! (prometheus-adapter turns them into 0, which `kubectl top` and the HPA would believe).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::{Provider, bad_selector};
use crate::api::ApiError;
use crate::api::resource::{ContainerMetrics, Meta, NodeMetrics, PodMetrics, Usage};
use crate::api::route::{ResourceKind, ResourceRequest};
use crate::api::types::rfc3339;
use crate::objects::{ObjectRef, ObjectsError};
use crate::prom::{PromApi, QueryResult, Sample};
use crate::quantity::{self, ValueError};
use crate::rules::resource::{ResourceRule, ResourceRules, Target};
use crate::rules::resources::GroupResource;
use crate::selector::Selector;
use crate::telemetry::now_unix;

/// The resource a missing pod's metrics are reported under (metrics-server's wording).
const POD_METRICS: &str = "podmetrics.metrics.k8s.io";
/// The same for nodes.
const NODE_METRICS: &str = "nodemetrics.metrics.k8s.io";

/// CPU or memory: how a sample becomes a Quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Measure {
    /// Cores, DecimalSI (`250m`, `1234567n`).
    Cpu,
    /// Bytes, BinarySI (`100Mi`).
    Memory,
}

/// A `fieldSelector` as metrics-server applies it: terms on `metadata.name` and (pods)
/// `metadata.namespace`, with `=`, `==` or `!=`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FieldSelector {
    /// (field, whether it must equal rather than differ, value); all must hold.
    terms: Vec<(Field, bool, String)>,
}

/// The fields metrics-server's objects expose to a `fieldSelector`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Name,
    Namespace,
}

impl FieldSelector {
    fn parse(src: &str, kind: ResourceKind) -> Result<FieldSelector, ApiError> {
        let mut terms = Vec::new();
        for term in src.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (key, equal, value) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, true, v)
            } else {
                return Err(bad_selector(
                    "fieldSelector",
                    format!("{term:?}: expected key=value, key==value or key!=value"),
                ));
            };
            let field = match (key.trim(), kind) {
                ("metadata.name", _) => Field::Name,
                ("metadata.namespace", ResourceKind::Pods) => Field::Namespace,
                (other, _) => {
                    return Err(bad_selector(
                        "fieldSelector",
                        format!("field label not supported: {other}"),
                    ));
                }
            };
            terms.push((field, equal, value.trim().to_owned()));
        }
        Ok(FieldSelector { terms })
    }

    fn matches(&self, namespace: Option<&str>, name: &str) -> bool {
        self.terms.iter().all(|(field, equal, value)| {
            let actual = match field {
                Field::Name => name,
                Field::Namespace => namespace.unwrap_or(""),
            };
            (actual == value) == *equal
        })
    }
}

/// One pod's or node's usage as the samples give it, by container (`""` for nodes).
#[derive(Debug, Default)]
struct Found {
    cpu: Option<Quantity>,
    memory: Option<Quantity>,
    /// The oldest sample's time: metrics-server and prometheus-adapter report the
    /// conservative one.
    oldest: Option<f64>,
}

impl Found {
    fn usage(&self) -> Option<Usage> {
        Some(Usage {
            cpu: self.cpu.clone()?,
            memory: self.memory.clone()?,
        })
    }
}

/// Samples by (namespace, object) then container.
type ByObject = BTreeMap<(String, String), BTreeMap<String, Found>>;

/// The earlier of two optional sample times.
fn earliest(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn not_served() -> ApiError {
    ApiError::NotFound(
        "the server could not find the requested resource (metrics.k8s.io is served only \
         with resourceRules in the config)"
            .into(),
    )
}

fn cache_error(e: ObjectsError) -> Option<ApiError> {
    match e {
        ObjectsError::NotWatched { .. } => None,
        e @ ObjectsError::NotSynced { .. } => Some(ApiError::Unavailable(e.to_string())),
    }
}

impl<P: PromApi> Provider<P> {
    /// Whether `metrics.k8s.io` is served (the rules have `resourceRules`).
    pub fn serves_resource_metrics(&self) -> bool {
        self.catalog().rules.resource.is_some()
    }

    /// The request's field selector, and the objects it selects from the watch cache:
    /// `None` without a cache (the series then name the objects, and a label selector can't
    /// be honoured).
    fn selected(
        &self,
        req: &ResourceRequest,
        kind: ResourceKind,
    ) -> Result<(FieldSelector, Option<Vec<ObjectRef>>), ApiError> {
        let selector =
            Selector::parse(&req.label_selector).map_err(|e| bad_selector("labelSelector", e))?;
        let fields = FieldSelector::parse(&req.field_selector, kind)?;
        let (resource, noun) = match kind {
            ResourceKind::Pods => ("pods", "pod"),
            ResourceKind::Nodes => ("nodes", "node"),
        };
        let known =
            self.cached_objects(&GroupResource::new("", resource), req, &selector, &fields)?;
        if known.is_none() && !selector.is_empty() {
            return Err(ApiError::Unavailable(format!(
                "labelSelector needs the {noun} cache, and there is none (give \
                 --lister-kubeconfig, or run in a cluster)"
            )));
        }
        Ok((fields, known))
    }

    /// Which objects of `resource` a request is about, from the watch cache: `Ok(None)` when
    /// there is no cache or it doesn't watch them (then the samples name the objects).
    fn cached_objects(
        &self,
        resource: &GroupResource,
        req: &ResourceRequest,
        selector: &Selector,
        fields: &FieldSelector,
    ) -> Result<Option<Vec<ObjectRef>>, ApiError> {
        let Some(objects) = &self.objects else {
            return Ok(None);
        };
        let namespace = req.namespace.as_deref();
        let found = match &req.name {
            Some(name) => objects.get(resource, namespace, name).map(|o| match o {
                Some(o) => Ok(vec![o]),
                None => Err(ApiError::object_not_found(&resource.resource, name)),
            }),
            None => objects.objects(resource, namespace, selector).map(|all| {
                Ok(all
                    .into_iter()
                    .filter(|o| fields.matches(o.namespace.as_deref(), &o.name))
                    .collect())
            }),
        };
        match found {
            Ok(answer) => answer.map(Some),
            Err(e) => cache_error(e).map_or(Ok(None), Err),
        }
    }

    /// Runs one rule's query and files its samples by object and container.
    async fn collect(
        &self,
        backend: &super::Backend<P>,
        rule: &ResourceRule,
        target: &Target<'_>,
        measure: Measure,
        into: &mut ByObject,
    ) -> Result<(), ApiError> {
        let q = rule
            .render(target)
            .map_err(|e| ApiError::Internal(format!("resource rule: {e}")))?;
        let samples = match self.run_query(backend, &q.promql).await? {
            QueryResult::Vector(samples) => samples,
            other => {
                return Err(ApiError::Internal(format!(
                    "resource queries must return a vector, this returned a {}: {}",
                    other.result_type(),
                    q.promql
                )));
            }
        };
        let nodes = matches!(target, Target::Nodes { .. });
        for Sample {
            labels,
            timestamp,
            value,
        } in &samples
        {
            let Some(object) = labels.get(&q.object_label).filter(|o| !o.is_empty()) else {
                continue;
            };
            let namespace = match target {
                Target::Pods { namespace, .. } => (*namespace).to_owned(),
                Target::AllPods => match labels.get(&rule.namespace_label) {
                    Some(ns) if !ns.is_empty() => ns.clone(),
                    _ => continue,
                },
                Target::Nodes { .. } => String::new(),
            };
            let container = if nodes {
                String::new()
            } else {
                match labels.get(&rule.container_label) {
                    Some(c) if !c.is_empty() => c.clone(),
                    _ => continue,
                }
            };
            let Some(quantity) = self.usage_quantity(value, measure) else {
                continue;
            };
            let found = into
                .entry((namespace, object.clone()))
                .or_default()
                .entry(container)
                .or_default();
            let slot = match measure {
                Measure::Cpu => &mut found.cpu,
                Measure::Memory => &mut found.memory,
            };
            if slot.replace(quantity).is_some() {
                let by = if nodes {
                    q.object_label.clone()
                } else {
                    format!("{} and {}", q.object_label, rule.container_label)
                };
                return Err(ApiError::Internal(format!(
                    "a resource query returned several samples for {object}; it must \
                     aggregate by {by}: {}",
                    q.promql
                )));
            }
            found.oldest = earliest(found.oldest, Some(*timestamp));
        }
        Ok(())
    }

    /// A sample as a usage Quantity; `None` (counted) for NaN, infinities and negatives.
    fn usage_quantity(&self, value: &str, measure: Measure) -> Option<Quantity> {
        let converted = match measure {
            Measure::Cpu => quantity::from_prometheus(value),
            Measure::Memory => quantity::bytes_from_prometheus(value),
        };
        match converted {
            Ok(c) if c.quantity.0.starts_with('-') => {
                tracing::debug!(value, "Skipped a negative resource usage sample.");
                None
            }
            Ok(c) => {
                if c.clamped {
                    self.metrics.clamped.inc();
                }
                Some(c.quantity)
            }
            Err(ValueError::NaN | ValueError::PositiveInfinity | ValueError::NegativeInfinity) => {
                self.metrics.non_finite.with_label_values(&["skip"]).inc();
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, "Skipped an unreadable resource usage sample.");
                None
            }
        }
    }

    /// Both queries of `rules` for `target`, run together.
    async fn usage(
        &self,
        rules: &ResourceRules,
        target: &Target<'_>,
    ) -> Result<ByObject, ApiError> {
        let backend = self.backend(rules.backend.as_deref())?;
        let (mut cpu, mut memory) = (ByObject::new(), ByObject::new());
        let (a, b) = tokio::join!(
            self.collect(backend, &rules.cpu, target, Measure::Cpu, &mut cpu),
            self.collect(backend, &rules.memory, target, Measure::Memory, &mut memory),
        );
        a?;
        b?;
        for (key, containers) in memory {
            let merged = cpu.entry(key).or_default();
            for (name, m) in containers {
                let found = merged.entry(name).or_default();
                found.memory = m.memory;
                found.oldest = earliest(found.oldest, m.oldest);
            }
        }
        Ok(cpu)
    }

    /// `GET /apis/metrics.k8s.io/v1beta1/…/pods[/name]`: one item for a named pod (or a
    /// 404), else every selected pod that has usage.
    pub async fn pod_metrics(&self, req: &ResourceRequest) -> Result<Vec<PodMetrics>, ApiError> {
        let catalog = self.catalog();
        let rules = catalog.rules.resource.as_ref().ok_or_else(not_served)?;
        let (fields, known) = self.selected(req, ResourceKind::Pods)?;
        if known.as_ref().is_some_and(Vec::is_empty) {
            return Ok(Vec::new());
        }
        let target = match (req.namespace.as_deref(), req.name.as_deref()) {
            (Some(namespace), name) => Target::Pods { namespace, name },
            (None, _) => Target::AllPods,
        };
        let mut found = self.usage(rules, &target).await?;
        let wanted: Vec<(String, String, BTreeMap<String, String>)> = match known {
            Some(objects) => objects
                .into_iter()
                .map(|o| (o.namespace.unwrap_or_default(), o.name, o.labels))
                .collect(),
            None => found
                .keys()
                .filter(|(ns, pod)| {
                    fields.matches(Some(ns), pod) && req.name.as_deref().is_none_or(|n| n == pod)
                })
                .map(|(ns, pod)| (ns.clone(), pod.clone(), BTreeMap::new()))
                .collect(),
        };
        let created = rfc3339(now_unix());
        let items: Vec<PodMetrics> = wanted
            .into_iter()
            .filter_map(|(namespace, name, labels)| {
                let containers = found.remove(&(namespace.clone(), name.clone()))?;
                let mut oldest: Option<f64> = None;
                let containers: Vec<ContainerMetrics> = containers
                    .into_iter()
                    .filter_map(|(container, f)| {
                        let usage = f.usage()?;
                        oldest = earliest(oldest, f.oldest);
                        Some(ContainerMetrics {
                            name: container,
                            usage,
                        })
                    })
                    .collect();
                if containers.is_empty() {
                    return None;
                }
                Some(PodMetrics {
                    meta: Meta {
                        name,
                        namespace: Some(namespace),
                        labels,
                        created: created.clone(),
                        timestamp: rfc3339(oldest.unwrap_or_else(now_unix)),
                        window: rules.window,
                    },
                    containers,
                })
            })
            .collect();
        if let Some(name) = &req.name
            && items.is_empty()
        {
            self.metrics.empty.with_label_values(&["resource"]).inc();
            let namespace = req.namespace.as_deref().unwrap_or_default();
            return Err(ApiError::object_not_found(
                POD_METRICS,
                &format!("{namespace}/{name}"),
            ));
        }
        Ok(items)
    }

    /// `GET /apis/metrics.k8s.io/v1beta1/nodes[/name]`.
    pub async fn node_metrics(&self, req: &ResourceRequest) -> Result<Vec<NodeMetrics>, ApiError> {
        let catalog = self.catalog();
        let rules = catalog.rules.resource.as_ref().ok_or_else(not_served)?;
        let (fields, known) = self.selected(req, ResourceKind::Nodes)?;
        if known.as_ref().is_some_and(Vec::is_empty) {
            return Ok(Vec::new());
        }
        let target = Target::Nodes {
            name: req.name.as_deref(),
        };
        let mut found = self.usage(rules, &target).await?;
        let wanted: Vec<(String, BTreeMap<String, String>)> = match known {
            Some(objects) => objects.into_iter().map(|o| (o.name, o.labels)).collect(),
            None => found
                .keys()
                .map(|(_, node)| node)
                .filter(|node| {
                    fields.matches(None, node) && req.name.as_deref().is_none_or(|n| n == *node)
                })
                .map(|node| (node.clone(), BTreeMap::new()))
                .collect(),
        };
        let created = rfc3339(now_unix());
        let items: Vec<NodeMetrics> = wanted
            .into_iter()
            .filter_map(|(name, labels)| {
                let f = found.remove(&(String::new(), name.clone()))?.remove("")?;
                Some(NodeMetrics {
                    usage: f.usage()?,
                    meta: Meta {
                        name,
                        namespace: None,
                        labels,
                        created: created.clone(),
                        timestamp: rfc3339(f.oldest.unwrap_or_else(now_unix)),
                        window: rules.window,
                    },
                })
            })
            .collect();
        if let Some(name) = &req.name
            && items.is_empty()
        {
            self.metrics.empty.with_label_values(&["resource"]).inc();
            return Err(ApiError::object_not_found(NODE_METRICS, name));
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::objects::FakeObjects;
    use crate::prom::PromError;
    use crate::prom::fake::{FakeProm, sample};
    use crate::rules::from_yaml;
    use crate::telemetry::Metrics;

    const RULES: &str = r#"
resourceRules:
  cpu:
    containerQuery: 'sum by (<<.GroupBy>>) (rate(cpu{<<.LabelMatchers>>}[1m]))'
    nodeQuery: 'sum by (<<.GroupBy>>) (rate(node_cpu{<<.LabelMatchers>>}[1m]))'
    resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}, node: {resource: node}}}
    containerLabel: container
  memory:
    containerQuery: 'sum by (<<.GroupBy>>) (mem{<<.LabelMatchers>>})'
    nodeQuery: 'sum by (<<.GroupBy>>) (node_mem{<<.LabelMatchers>>})'
    resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}, node: {resource: node}}}
    containerLabel: container
  window: 2m
"#;

    const CPU_NS: &str = r#"sum by (pod,container) (rate(cpu{namespace="default"}[1m]))"#;
    const MEM_NS: &str = r#"sum by (pod,container) (mem{namespace="default"})"#;

    fn provider(rules: &str, objects: Option<&FakeObjects>) -> (Provider<FakeProm>, FakeProm) {
        let set = from_yaml(rules, Path::new("t.yaml")).unwrap().0;
        let prom = FakeProm::new();
        let mut p = Provider::new(
            prom.clone(),
            Arc::new(set),
            Arc::new(Metrics::new()),
            Duration::from_secs(60),
        );
        if let Some(objects) = objects {
            p = p.with_objects(Arc::new(objects.clone()));
        }
        (p, prom)
    }

    fn cluster() -> FakeObjects {
        let objects = FakeObjects::new();
        objects.set(
            &GroupResource::new("", "pods"),
            [
                ObjectRef::new("web-0", Some("default"), [("app", "web")]),
                ObjectRef::new("web-1", Some("default"), [("app", "web")]),
                ObjectRef::new("db-0", Some("default"), [("app", "db")]),
                ObjectRef::new("idle-0", Some("default"), [("app", "idle")]),
                ObjectRef::new("web-0", Some("other"), [("app", "web")]),
            ],
        );
        objects.set(
            &GroupResource::new("", "nodes"),
            [
                ObjectRef::new("node-a", None, [("zone", "a")]),
                ObjectRef::new("node-b", None, [("zone", "b")]),
                ObjectRef::new("node-c", None, [("zone", "c")]),
            ],
        );
        objects
    }

    /// web-0: two containers; web-1: one container, plus one with CPU only (left out);
    /// db-0: only a NaN CPU sample (left out); gone-0: samples but no pod (left out);
    /// idle-0: no samples at all.
    fn default_samples(prom: &FakeProm) {
        let s =
            |pod: &str, c: &str, ts: f64, v: &str| sample(&[("pod", pod), ("container", c)], ts, v);
        prom.set_vector(
            CPU_NS,
            vec![
                s("web-0", "web", 1_743_501_600.0, "0.25"),
                s("web-0", "sidecar", 1_743_501_600.0, "0.001234567"),
                s("web-1", "web", 1_743_501_600.0, "1.5"),
                s("web-1", "init", 1_743_501_600.0, "0.1"),
                s("db-0", "db", 1_743_501_600.0, "NaN"),
                s("gone-0", "x", 1_743_501_600.0, "1"),
            ],
        );
        prom.set_vector(
            MEM_NS,
            vec![
                s("web-0", "web", 1_743_501_590.0, "104857600"),
                s("web-0", "sidecar", 1_743_501_600.0, "52432896"),
                s("web-1", "web", 1_743_501_600.0, "1073741824"),
                s("db-0", "db", 1_743_501_600.0, "2048"),
                s("gone-0", "x", 1_743_501_600.0, "1024"),
            ],
        );
    }

    fn pods(namespace: Option<&str>, name: Option<&str>, selector: &str) -> ResourceRequest {
        ResourceRequest {
            kind: ResourceKind::Pods,
            namespace: namespace.map(Into::into),
            name: name.map(Into::into),
            label_selector: selector.into(),
            field_selector: String::new(),
        }
    }

    fn nodes(name: Option<&str>, selector: &str) -> ResourceRequest {
        ResourceRequest {
            kind: ResourceKind::Nodes,
            namespace: None,
            name: name.map(Into::into),
            label_selector: selector.into(),
            field_selector: String::new(),
        }
    }

    fn usage_of(p: &PodMetrics) -> Vec<(&str, &str, &str)> {
        p.containers
            .iter()
            .map(|c| {
                (
                    c.name.as_str(),
                    c.usage.cpu.0.as_str(),
                    c.usage.memory.0.as_str(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn namespace_list_serves_the_cached_pods_with_usage_as_metrics_server_does() {
        let objects = cluster();
        let (p, prom) = provider(RULES, Some(&objects));
        default_samples(&prom);
        let items = p
            .pod_metrics(&pods(Some("default"), None, ""))
            .await
            .unwrap();
        let names: Vec<&str> = items.iter().map(|i| i.meta.name.as_str()).collect();
        // Cache order (by name); db-0 (NaN CPU), idle-0 (no samples), gone-0 (no pod) out.
        assert_eq!(names, ["web-0", "web-1"]);
        let web0 = &items[0];
        assert_eq!(
            usage_of(web0),
            [("sidecar", "1234567n", "51204Ki"), ("web", "250m", "100Mi")]
        );
        assert_eq!(web0.meta.namespace.as_deref(), Some("default"));
        assert_eq!(web0.meta.labels["app"], "web");
        assert_eq!(
            web0.meta.timestamp, "2025-04-01T09:59:50Z",
            "the oldest sample"
        );
        assert_eq!(web0.meta.window, Duration::from_secs(120));
        // The container with CPU but no memory is left out, not given a 0.
        assert_eq!(usage_of(&items[1]), [("web", "1500m", "1Gi")]);
        // Asked by namespace only, both queries once.
        let mut asked = prom.queries();
        asked.sort();
        assert_eq!(asked, [MEM_NS, CPU_NS]);
    }

    #[tokio::test]
    async fn label_and_field_selectors_filter_by_the_cache_not_the_query() {
        let objects = cluster();
        let (p, prom) = provider(RULES, Some(&objects));
        default_samples(&prom);
        let items = p
            .pod_metrics(&pods(Some("default"), None, "app in (web,db)"))
            .await
            .unwrap();
        assert_eq!(items.len(), 2);
        let mut req = pods(Some("default"), None, "");
        req.field_selector = "metadata.name=web-1".into();
        let items = p.pod_metrics(&req).await.unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].meta.name, "web-1");
        req.field_selector = "metadata.name!=web-1,metadata.namespace==default".into();
        let items = p.pod_metrics(&req).await.unwrap();
        assert_eq!(items[0].meta.name, "web-0");
        assert!(prom.queries().iter().all(|q| q == CPU_NS || q == MEM_NS));
        // Nothing selected: an empty list, without asking Prometheus.
        prom.clear_calls();
        let items = p
            .pod_metrics(&pods(Some("default"), None, "app=none"))
            .await
            .unwrap();
        assert!(items.is_empty());
        assert!(prom.queries().is_empty());
        // Malformed selectors are 400s.
        for (selector, field) in [("app in (", ""), ("", "spec.nodeName=n"), ("", "nonsense")] {
            let mut req = pods(Some("default"), None, selector);
            req.field_selector = field.into();
            let e = p.pod_metrics(&req).await.unwrap_err();
            assert_eq!((e.code(), e.reason()), (400, "BadRequest"), "{e}");
        }
    }

    #[tokio::test]
    async fn one_pod_is_asked_by_name_and_404s_as_metrics_server_does() {
        let objects = cluster();
        let (p, prom) = provider(RULES, Some(&objects));
        let cpu = r#"sum by (pod,container) (rate(cpu{namespace="default",pod="web-0"}[1m]))"#;
        let mem = r#"sum by (pod,container) (mem{namespace="default",pod="web-0"})"#;
        prom.set_vector(
            cpu,
            vec![sample(&[("pod", "web-0"), ("container", "web")], 5.0, "2")],
        );
        prom.set_vector(
            mem,
            vec![sample(
                &[("pod", "web-0"), ("container", "web")],
                5.0,
                "1000",
            )],
        );
        let items = p
            .pod_metrics(&pods(Some("default"), Some("web-0"), ""))
            .await
            .unwrap();
        assert_eq!(usage_of(&items[0]), [("web", "2", "1k")]);
        // In the cluster, no samples: metrics-server's "no metrics known" 404.
        let e = p
            .pod_metrics(&pods(Some("default"), Some("idle-0"), ""))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), e.to_string().as_str()),
            (
                404,
                r#"podmetrics.metrics.k8s.io "default/idle-0" not found"#
            )
        );
        // Not in the cluster: the pod's own 404, without a query.
        prom.clear_calls();
        let e = p
            .pod_metrics(&pods(Some("default"), Some("gone-0"), ""))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), e.to_string().as_str()),
            (404, r#"pods "gone-0" not found"#)
        );
        assert!(prom.queries().is_empty());
    }

    #[tokio::test]
    async fn every_namespace_is_one_query_grouped_by_namespace() {
        let objects = cluster();
        let (p, prom) = provider(RULES, Some(&objects));
        let s = |ns: &str, pod: &str, v: &str| {
            sample(
                &[("namespace", ns), ("pod", pod), ("container", "c")],
                1.0,
                v,
            )
        };
        prom.set_vector(
            r#"sum by (pod,container,namespace) (rate(cpu{pod!=""}[1m]))"#,
            vec![s("default", "web-0", "1"), s("other", "web-0", "2")],
        );
        prom.set_vector(
            r#"sum by (pod,container,namespace) (mem{pod!=""})"#,
            vec![s("default", "web-0", "1024"), s("other", "web-0", "2048")],
        );
        let items = p.pod_metrics(&pods(None, None, "app=web")).await.unwrap();
        let got: Vec<(&str, &str, &str)> = items
            .iter()
            .map(|i| {
                (
                    i.meta.namespace.as_deref().unwrap_or_default(),
                    i.meta.name.as_str(),
                    i.containers[0].usage.cpu.0.as_str(),
                )
            })
            .collect();
        assert_eq!(got, [("default", "web-0", "1"), ("other", "web-0", "2")]);
    }

    #[tokio::test]
    async fn nodes_list_and_get() {
        let objects = cluster();
        let (p, prom) = provider(RULES, Some(&objects));
        prom.set_vector(
            r#"sum by (node) (rate(node_cpu{node!=""}[1m]))"#,
            vec![
                sample(&[("node", "node-a")], 7.0, "1.5"),
                sample(&[("node", "node-b")], 7.0, "0.5"),
                sample(&[("node", "node-z")], 7.0, "9"),
            ],
        );
        prom.set_vector(
            r#"sum by (node) (node_mem{node!=""})"#,
            vec![
                sample(&[("node", "node-a")], 6.0, "2147483648"),
                sample(&[("node", "node-b")], 7.0, "-1"),
                sample(&[("node", "node-z")], 7.0, "1"),
            ],
        );
        let items = p.node_metrics(&nodes(None, "")).await.unwrap();
        assert_eq!(
            items.len(),
            1,
            "node-b's memory is negative, node-c has none"
        );
        let a = &items[0];
        assert_eq!(
            (
                a.meta.name.as_str(),
                a.usage.cpu.0.as_str(),
                a.usage.memory.0.as_str()
            ),
            ("node-a", "1500m", "2Gi")
        );
        assert_eq!(a.meta.namespace, None);
        assert_eq!(a.meta.labels["zone"], "a");
        assert_eq!(a.meta.timestamp, "1970-01-01T00:00:06Z");
        assert!(
            p.node_metrics(&nodes(None, "zone=b"))
                .await
                .unwrap()
                .is_empty()
        );
        prom.set_vector(
            r#"sum by (node) (rate(node_cpu{node="node-c"}[1m]))"#,
            vec![sample(&[("node", "node-c")], 1.0, "0.1")],
        );
        let e = p
            .node_metrics(&nodes(Some("node-c"), ""))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), e.to_string().as_str()),
            (404, r#"nodemetrics.metrics.k8s.io "node-c" not found"#)
        );
        let e = p
            .node_metrics(&nodes(Some("node-x"), ""))
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), r#"nodes "node-x" not found"#);
        let mut req = nodes(None, "");
        req.field_selector = "metadata.namespace=x".into();
        assert_eq!(p.node_metrics(&req).await.unwrap_err().code(), 400);
    }

    #[tokio::test]
    async fn without_a_cache_the_samples_name_the_pods() {
        let (p, prom) = provider(RULES, None);
        default_samples(&prom);
        let items = p
            .pod_metrics(&pods(Some("default"), None, ""))
            .await
            .unwrap();
        let names: Vec<&str> = items.iter().map(|i| i.meta.name.as_str()).collect();
        assert_eq!(names, ["gone-0", "web-0", "web-1"]);
        assert!(items[1].meta.labels.is_empty());
        let e = p
            .pod_metrics(&pods(Some("default"), None, "app=web"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), 503, "{e}");
        // A cache that is still listing: 503, never an answer that misses pods.
        let objects = cluster();
        objects.set_synced(&GroupResource::new("", "pods"), false);
        let (p, _) = provider(RULES, Some(&objects));
        let e = p
            .pod_metrics(&pods(Some("default"), None, ""))
            .await
            .unwrap_err();
        assert_eq!(e.code(), 503, "{e}");
    }

    #[tokio::test]
    async fn failures_are_statuses() {
        let objects = cluster();
        let (p, prom) = provider(RULES, Some(&objects));
        // Not aggregated by container: 500 naming what to fix.
        prom.set_vector(
            CPU_NS,
            vec![
                sample(
                    &[("pod", "web-0"), ("container", "web"), ("cpu", "0")],
                    1.0,
                    "1",
                ),
                sample(
                    &[("pod", "web-0"), ("container", "web"), ("cpu", "1")],
                    1.0,
                    "1",
                ),
            ],
        );
        let e = p
            .pod_metrics(&pods(Some("default"), None, ""))
            .await
            .unwrap_err();
        assert_eq!(e.code(), 500);
        assert!(
            e.to_string().contains("aggregate by pod and container"),
            "{e}"
        );
        // Prometheus down: 503.
        prom.set_error(Some(PromError::Unreachable {
            reason: "connection refused".into(),
        }));
        let e = p
            .pod_metrics(&pods(Some("default"), None, ""))
            .await
            .unwrap_err();
        assert_eq!(e.code(), 503);
        // No resource rules: metrics.k8s.io doesn't exist.
        let (p, _) = provider("rules: []\n", Some(&objects));
        assert!(!p.serves_resource_metrics());
        let e = p.node_metrics(&nodes(None, "")).await.unwrap_err();
        assert_eq!(e.code(), 404);
    }

    #[tokio::test]
    async fn resource_rules_query_the_backend_they_name() {
        let rules = RULES.replace("  window: 2m", "  window: 2m\n  backend: usage");
        let set = from_yaml(&rules, Path::new("t.yaml")).unwrap().0;
        let (first, usage) = (FakeProm::new(), FakeProm::new());
        default_samples(&usage);
        let p = Provider::with_backends(
            vec![
                ("main".into(), first.clone()),
                ("usage".into(), usage.clone()),
            ],
            Arc::new(set),
            Arc::new(Metrics::new()),
            Duration::from_secs(60),
        )
        .with_objects(Arc::new(cluster()));
        let items = p
            .pod_metrics(&pods(Some("default"), None, "app=web"))
            .await
            .unwrap();
        assert_eq!(items.len(), 2);
        assert!(first.queries().is_empty(), "{:?}", first.queries());
        let mut asked = usage.queries();
        asked.sort();
        assert_eq!(asked, [MEM_NS, CPU_NS]);
    }
}
