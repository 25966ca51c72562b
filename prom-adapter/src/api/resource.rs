//! `metrics.k8s.io/v1beta1`: `PodMetrics` and `NodeMetrics` (and their lists) as
//! metrics-server writes them (`k8s.io/metrics/pkg/apis/metrics/v1beta1/types.go`): list items
//! without `kind`/`apiVersion`, `metadata` with `name`, `namespace`, `creationTimestamp` and
//! `labels` (left out when empty), `window` as a Go duration string (`5m0s`), `usage` as a
//! map of Quantities.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::Serialize;

use super::RESOURCE_GROUP;
use super::types::{ApiResource, ListMeta, api_resource_list};

/// The one version of `metrics.k8s.io` served (`v1` has the same schema and is not asked
/// for by any released client yet).
pub const RESOURCE_VERSION: &str = "v1beta1";

/// What every answer shares about one pod or node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`; `None` for nodes.
    pub namespace: Option<String>,
    /// `metadata.labels`, from the watch cache (empty without one).
    pub labels: BTreeMap<String, String>,
    /// `metadata.creationTimestamp`: when the answer was made, as metrics-server sets it.
    pub created: String,
    /// RFC 3339 time of the oldest sample used.
    pub timestamp: String,
    /// The rules' `window`.
    pub window: Duration,
}

/// Usage of CPU (cores) and memory (bytes).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Usage {
    /// CPU cores (`250m`, `1234567n`).
    pub cpu: Quantity,
    /// Memory bytes (`100Mi`, `51204Ki`).
    pub memory: Quantity,
}

/// One container of a [`PodMetrics`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerMetrics {
    /// The container's name.
    pub name: String,
    /// Its usage.
    pub usage: Usage,
}

/// A pod's usage, by container.
#[derive(Debug, Clone, PartialEq)]
pub struct PodMetrics {
    /// Name, namespace, labels and times.
    pub meta: Meta,
    /// Containers, sorted by name.
    pub containers: Vec<ContainerMetrics>,
}

/// A node's usage.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeMetrics {
    /// Name, labels and times.
    pub meta: Meta,
    /// The node's usage.
    pub usage: Usage,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ObjectMeta<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    creation_timestamp: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Item<'a, T: Serialize> {
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_version: Option<String>,
    metadata: ObjectMeta<'a>,
    timestamp: &'a str,
    window: String,
    #[serde(flatten)]
    body: T,
}

#[derive(Serialize)]
struct PodBody<'a> {
    containers: &'a [ContainerMetrics],
}

#[derive(Serialize)]
struct NodeBody<'a> {
    usage: &'a Usage,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct List<T: Serialize> {
    kind: &'static str,
    api_version: String,
    metadata: ListMeta,
    items: Vec<T>,
}

fn group_version() -> String {
    format!("{RESOURCE_GROUP}/{RESOURCE_VERSION}")
}

/// Top-level objects carry `kind` and `apiVersion`; list items don't (Go's inline TypeMeta
/// is omitempty and the list's items leave it unset).
fn item<'a, T: Serialize>(meta: &'a Meta, kind: Option<&'static str>, body: T) -> Item<'a, T> {
    Item {
        kind,
        api_version: kind.map(|_| group_version()),
        metadata: ObjectMeta {
            name: &meta.name,
            namespace: meta.namespace.as_deref(),
            creation_timestamp: &meta.created,
            labels: &meta.labels,
        },
        timestamp: &meta.timestamp,
        window: go_duration(meta.window),
        body,
    }
}

/// A `PodMetrics` body.
pub fn pod_metrics(pod: &PodMetrics) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&item(
        &pod.meta,
        Some("PodMetrics"),
        PodBody {
            containers: &pod.containers,
        },
    ))
}

/// A `PodMetricsList` body.
pub fn pod_metrics_list(pods: &[PodMetrics]) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&List {
        kind: "PodMetricsList",
        api_version: group_version(),
        metadata: ListMeta {},
        items: pods
            .iter()
            .map(|p| {
                item(
                    &p.meta,
                    None,
                    PodBody {
                        containers: &p.containers,
                    },
                )
            })
            .collect(),
    })
}

/// A `NodeMetrics` body.
pub fn node_metrics(node: &NodeMetrics) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&item(
        &node.meta,
        Some("NodeMetrics"),
        NodeBody { usage: &node.usage },
    ))
}

/// A `NodeMetricsList` body.
pub fn node_metrics_list(nodes: &[NodeMetrics]) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&List {
        kind: "NodeMetricsList",
        api_version: group_version(),
        metadata: ListMeta {},
        items: nodes
            .iter()
            .map(|n| item(&n.meta, None, NodeBody { usage: &n.usage }))
            .collect(),
    })
}

/// The `APIResourceList` of `metrics.k8s.io/v1beta1`: `nodes` and `pods`, get and list.
pub fn resource_list() -> Result<Vec<u8>, serde_json::Error> {
    let resource = |name: &str, namespaced: bool, kind: &str| ApiResource {
        name: name.to_owned(),
        singular_name: String::new(),
        namespaced,
        kind: kind.to_owned(),
        verbs: vec!["get".to_owned(), "list".to_owned()],
    };
    api_resource_list(
        &group_version(),
        &[
            resource("nodes", false, "NodeMetrics"),
            resource("pods", true, "PodMetrics"),
        ],
    )
}

/// Go's `time.Duration.String()`, which `metav1.Duration` marshals: `5m0s`, `1h0m0s`, `30s`,
/// `1.5s`, `500ms`.
pub fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < 1_000_000_000 {
        let (unit, scale) = match nanos {
            n if n < 1_000 => ("ns", 1),
            n if n < 1_000_000 => ("µs", 1_000),
            _ => ("ms", 1_000_000),
        };
        return format!("{}{unit}", fixed(nanos, scale));
    }
    let seconds = nanos / 1_000_000_000;
    let minutes = seconds / 60;
    let mut out = String::new();
    if minutes > 0 {
        let hours = minutes / 60;
        if hours > 0 {
            out.push_str(&format!("{hours}h"));
        }
        out.push_str(&format!("{}m", minutes % 60));
    }
    let rest = (seconds % 60) * 1_000_000_000 + nanos % 1_000_000_000;
    out.push_str(&fixed(rest, 1_000_000_000));
    out.push('s');
    out
}

/// `value / scale` with the fraction's trailing zeros dropped (`1500, 1000` → `1.5`).
fn fixed(value: u128, scale: u128) -> String {
    let whole = value / scale;
    let fraction = value % scale;
    if fraction == 0 {
        return whole.to_string();
    }
    let width = scale.to_string().len() - 1;
    let digits = format!("{fraction:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn meta(name: &str, namespace: Option<&str>, labels: &[(&str, &str)]) -> Meta {
        Meta {
            name: name.into(),
            namespace: namespace.map(Into::into),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            created: "2025-04-01T10:00:05Z".into(),
            timestamp: "2025-04-01T10:00:00Z".into(),
            window: Duration::from_secs(300),
        }
    }

    fn usage(cpu: &str, memory: &str) -> Usage {
        Usage {
            cpu: Quantity(cpu.into()),
            memory: Quantity(memory.into()),
        }
    }

    fn pod() -> PodMetrics {
        PodMetrics {
            meta: meta("web-0", Some("default"), &[("app", "web")]),
            containers: vec![
                ContainerMetrics {
                    name: "sidecar".into(),
                    usage: usage("1234567n", "51204Ki"),
                },
                ContainerMetrics {
                    name: "web".into(),
                    usage: usage("250m", "100Mi"),
                },
            ],
        }
    }

    fn parse(bytes: Vec<u8>) -> Value {
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn pod_metrics_list_golden() {
        assert_eq!(
            parse(pod_metrics_list(&[pod()]).unwrap()),
            json!({
              "kind": "PodMetricsList",
              "apiVersion": "metrics.k8s.io/v1beta1",
              "metadata": {},
              "items": [{
                "metadata": {"name": "web-0", "namespace": "default",
                             "creationTimestamp": "2025-04-01T10:00:05Z",
                             "labels": {"app": "web"}},
                "timestamp": "2025-04-01T10:00:00Z",
                "window": "5m0s",
                "containers": [
                  {"name": "sidecar", "usage": {"cpu": "1234567n", "memory": "51204Ki"}},
                  {"name": "web", "usage": {"cpu": "250m", "memory": "100Mi"}}
                ]
              }]
            })
        );
        assert_eq!(
            parse(pod_metrics_list(&[]).unwrap())["items"],
            json!([]),
            "an empty list keeps its items array"
        );
    }

    #[test]
    fn one_pod_golden() {
        let mut p = pod();
        p.meta.labels.clear();
        p.containers.truncate(1);
        assert_eq!(
            parse(pod_metrics(&p).unwrap()),
            json!({
              "kind": "PodMetrics",
              "apiVersion": "metrics.k8s.io/v1beta1",
              "metadata": {"name": "web-0", "namespace": "default",
                           "creationTimestamp": "2025-04-01T10:00:05Z"},
              "timestamp": "2025-04-01T10:00:00Z",
              "window": "5m0s",
              "containers": [{"name": "sidecar", "usage": {"cpu": "1234567n", "memory": "51204Ki"}}]
            })
        );
    }

    #[test]
    fn node_metrics_golden() {
        let node = NodeMetrics {
            meta: Meta {
                window: Duration::from_secs(60),
                ..meta("node-a", None, &[("kubernetes.io/hostname", "node-a")])
            },
            usage: usage("1500m", "2Gi"),
        };
        let expected_item = json!({
            "metadata": {"name": "node-a", "creationTimestamp": "2025-04-01T10:00:05Z",
                         "labels": {"kubernetes.io/hostname": "node-a"}},
            "timestamp": "2025-04-01T10:00:00Z",
            "window": "1m0s",
            "usage": {"cpu": "1500m", "memory": "2Gi"}
        });
        assert_eq!(
            parse(node_metrics_list(std::slice::from_ref(&node)).unwrap()),
            json!({"kind": "NodeMetricsList", "apiVersion": "metrics.k8s.io/v1beta1",
                   "metadata": {}, "items": [expected_item.clone()]})
        );
        let mut one = expected_item;
        one["kind"] = json!("NodeMetrics");
        one["apiVersion"] = json!("metrics.k8s.io/v1beta1");
        assert_eq!(parse(node_metrics(&node).unwrap()), one);
    }

    #[test]
    fn discovery_golden() {
        assert_eq!(
            parse(resource_list().unwrap()),
            json!({"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": "metrics.k8s.io/v1beta1",
            "resources": [
              {"name": "nodes", "singularName": "", "namespaced": false,
               "kind": "NodeMetrics", "verbs": ["get", "list"]},
              {"name": "pods", "singularName": "", "namespaced": true,
               "kind": "PodMetrics", "verbs": ["get", "list"]}
            ]})
        );
    }

    #[test]
    fn durations_print_as_go_does() {
        for (d, want) in [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(60), "1m0s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(300), "5m0s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(93_784), "26h3m4s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(10_062), "10.062s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_nanos(1500), "1.5µs"),
            (Duration::from_nanos(7), "7ns"),
            (Duration::from_nanos(61_000_000_001), "1m1.000000001s"),
        ] {
            assert_eq!(go_duration(d), want, "{d:?}");
        }
    }
}
