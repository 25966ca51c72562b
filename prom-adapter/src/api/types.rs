//! The Kubernetes wire shapes: `k8s.io/metrics` value lists, discovery documents, `Status`.
//!
//! The value lists mirror the Go structs field for field (`pkg/apis/custom_metrics/*/types.go`,
//! `pkg/apis/external_metrics/v1beta1/types.go`): `omitempty` where Go has it and nowhere
//! else, so `selector` and `metricLabels` serialise as `null` when absent, as Go's do.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::{Deserialize, Serialize};

use super::{CUSTOM_GROUP, EXTERNAL_GROUP, RESOURCE_GROUP};

/// `metav1.ListMeta`, always empty here; Go emits it as `{}`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ListMeta {}

/// `v1.ObjectReference` as the adapter fills it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    /// `Pod`, `Namespace`, …
    pub kind: String,
    /// Absent for cluster-scoped objects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The object's name.
    pub name: String,
    /// `v1`, `apps/v1`; never `/v1` as prometheus-adapter writes it.
    pub api_version: String,
}

/// One custom metric value, independent of the API version it is served in.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricValue {
    /// The object the value describes.
    pub described_object: ObjectReference,
    /// The metric's name.
    pub metric: String,
    /// The metric label selector of the request, echoed back.
    pub selector: Option<LabelSelector>,
    /// RFC 3339 timestamp of the sample.
    pub timestamp: String,
    /// `windowSeconds`.
    pub window_seconds: Option<i64>,
    /// The value.
    pub value: Quantity,
}

/// `custom.metrics.k8s.io/v1beta2` `MetricIdentifier`.
#[derive(Debug, Serialize)]
struct MetricIdentifier<'a> {
    name: &'a str,
    selector: &'a Option<LabelSelector>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ValueV1beta2<'a> {
    described_object: &'a ObjectReference,
    metric: MetricIdentifier<'a>,
    timestamp: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    window_seconds: Option<i64>,
    value: &'a Quantity,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ValueV1beta1<'a> {
    described_object: &'a ObjectReference,
    metric_name: &'a str,
    timestamp: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    window: Option<i64>,
    value: &'a Quantity,
    selector: &'a Option<LabelSelector>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct List<'a, T> {
    kind: &'static str,
    api_version: String,
    metadata: ListMeta,
    items: &'a [T],
}

/// Which custom metrics version a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomVersion {
    /// `v1beta1`: `metricName`, `window`, top-level `selector`.
    V1beta1,
    /// `v1beta2`: `metric: {name, selector}`, `windowSeconds`.
    V1beta2,
}

impl CustomVersion {
    /// The version string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1beta1 => "v1beta1",
            Self::V1beta2 => "v1beta2",
        }
    }
}

/// A `MetricValueList` body in the given version.
pub fn metric_value_list(
    version: CustomVersion,
    items: &[MetricValue],
) -> Result<Vec<u8>, serde_json::Error> {
    let api_version = format!("{CUSTOM_GROUP}/{}", version.as_str());
    match version {
        CustomVersion::V1beta2 => {
            let items: Vec<ValueV1beta2<'_>> = items
                .iter()
                .map(|v| ValueV1beta2 {
                    described_object: &v.described_object,
                    metric: MetricIdentifier {
                        name: &v.metric,
                        selector: &v.selector,
                    },
                    timestamp: &v.timestamp,
                    window_seconds: v.window_seconds,
                    value: &v.value,
                })
                .collect();
            serde_json::to_vec(&List {
                kind: "MetricValueList",
                api_version,
                metadata: ListMeta {},
                items: &items,
            })
        }
        CustomVersion::V1beta1 => {
            let items: Vec<ValueV1beta1<'_>> = items
                .iter()
                .map(|v| ValueV1beta1 {
                    described_object: &v.described_object,
                    metric_name: &v.metric,
                    timestamp: &v.timestamp,
                    window: v.window_seconds,
                    value: &v.value,
                    selector: &v.selector,
                })
                .collect();
            serde_json::to_vec(&List {
                kind: "MetricValueList",
                api_version,
                metadata: ListMeta {},
                items: &items,
            })
        }
    }
}

/// `external.metrics.k8s.io/v1beta1` `ExternalMetricValue`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalMetricValue {
    /// The metric's name.
    pub metric_name: String,
    /// The sample's labels; `null` for a scalar result.
    pub metric_labels: Option<BTreeMap<String, String>>,
    /// RFC 3339 timestamp of the sample.
    pub timestamp: String,
    /// Go's JSON name for `WindowSeconds` here is `window`.
    #[serde(rename = "window", skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<i64>,
    /// The value.
    pub value: Quantity,
}

/// An `ExternalMetricValueList` body.
pub fn external_metric_value_list(
    items: &[ExternalMetricValue],
) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&List {
        kind: "ExternalMetricValueList",
        api_version: format!("{EXTERNAL_GROUP}/v1beta1"),
        metadata: ListMeta {},
        items,
    })
}

/// One entry of an `APIResourceList` (read too: an upstream's list is merged into ours).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase", default)]
pub struct ApiResource {
    /// `pods/http_requests` or, for external metrics, `queue_depth`.
    pub name: String,
    /// Always empty, as the Go servers leave it.
    pub singular_name: String,
    /// The same for every entry under one resource.
    pub namespaced: bool,
    /// `MetricValueList` or `ExternalMetricValueList`.
    pub kind: String,
    /// `["get"]`.
    pub verbs: Vec<String>,
}

/// An `APIResourceList` body.
pub fn api_resource_list(
    group_version: &str,
    resources: &[ApiResource],
) -> Result<Vec<u8>, serde_json::Error> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Doc<'a> {
        kind: &'static str,
        api_version: &'static str,
        group_version: &'a str,
        resources: &'a [ApiResource],
    }
    serde_json::to_vec(&Doc {
        kind: "APIResourceList",
        api_version: "v1",
        group_version,
        resources,
    })
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct GroupVersionForDiscovery {
    group_version: String,
    version: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct ApiGroup {
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_version: Option<&'static str>,
    name: &'static str,
    versions: Vec<GroupVersionForDiscovery>,
    preferred_version: GroupVersionForDiscovery,
}

fn group(name: &'static str, versions: &[&'static str], top_level: bool) -> ApiGroup {
    let gv = |v: &'static str| GroupVersionForDiscovery {
        group_version: format!("{name}/{v}"),
        version: v,
    };
    ApiGroup {
        kind: top_level.then_some("APIGroup"),
        api_version: top_level.then_some("v1"),
        name,
        versions: versions.iter().map(|v| gv(v)).collect(),
        preferred_version: gv(versions.first().copied().unwrap_or("v1beta1")),
    }
}

/// The groups served, preferred version first: kube-apiserver prefers v1beta2 for custom
/// metrics when the APIServices have equal priority, and so does the HPA. `metrics.k8s.io`
/// only when resource rules are configured (see [`served`]).
pub const GROUPS: &[(&str, &[&str])] = &[
    (CUSTOM_GROUP, &["v1beta2", "v1beta1"]),
    (EXTERNAL_GROUP, &["v1beta1"]),
    (RESOURCE_GROUP, &[super::resource::RESOURCE_VERSION]),
];

/// Whether `group` is served: `metrics.k8s.io` only with resource rules, since `kubectl top`
/// takes its presence in `/apis` to mean that it works.
pub fn served(group: &str, resource_metrics: bool) -> bool {
    group != RESOURCE_GROUP || resource_metrics
}

/// The `APIGroup` document of one group, if served.
pub fn api_group(name: &str, resource_metrics: bool) -> Option<Result<Vec<u8>, serde_json::Error>> {
    GROUPS
        .iter()
        .find(|(g, _)| *g == name && served(g, resource_metrics))
        .map(|(g, versions)| serde_json::to_vec(&group(g, versions, true)))
}

/// The `APIGroupList` of `/apis`.
pub fn api_group_list(resource_metrics: bool) -> Result<Vec<u8>, serde_json::Error> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Doc {
        kind: &'static str,
        api_version: &'static str,
        groups: Vec<ApiGroup>,
    }
    serde_json::to_vec(&Doc {
        kind: "APIGroupList",
        api_version: "v1",
        groups: GROUPS
            .iter()
            .filter(|(g, _)| served(g, resource_metrics))
            .map(|(g, versions)| group(g, versions, false))
            .collect(),
    })
}

/// RFC 3339 in UTC at second precision, as `metav1.Time` marshals, from Unix seconds.
pub fn rfc3339(unix_seconds: f64) -> String {
    let secs = if unix_seconds.is_finite() {
        unix_seconds.floor() as i64
    } else {
        0
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod_value(selector: Option<LabelSelector>) -> MetricValue {
        MetricValue {
            described_object: ObjectReference {
                kind: "Pod".into(),
                namespace: Some("default".into()),
                name: "sample-app-7cfb596f98-8h5fv".into(),
                api_version: "v1".into(),
            },
            metric: "http_requests_per_second".into(),
            selector,
            timestamp: "2025-04-01T10:00:00Z".into(),
            window_seconds: Some(120),
            value: Quantity("500m".into()),
        }
    }

    fn parse(bytes: Vec<u8>) -> Value {
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn v1beta2_golden() {
        let body = parse(metric_value_list(CustomVersion::V1beta2, &[pod_value(None)]).unwrap());
        assert_eq!(
            body,
            json!({
              "kind": "MetricValueList",
              "apiVersion": "custom.metrics.k8s.io/v1beta2",
              "metadata": {},
              "items": [{
                "describedObject": {"kind": "Pod", "namespace": "default",
                                    "name": "sample-app-7cfb596f98-8h5fv", "apiVersion": "v1"},
                "metric": {"name": "http_requests_per_second", "selector": null},
                "timestamp": "2025-04-01T10:00:00Z",
                "windowSeconds": 120,
                "value": "500m"
              }]
            })
        );
    }

    #[test]
    fn v1beta1_golden_with_selector_echo() {
        let selector = LabelSelector {
            match_labels: Some(BTreeMap::from([("verb".into(), "GET".into())])),
            match_expressions: None,
        };
        let body =
            parse(metric_value_list(CustomVersion::V1beta1, &[pod_value(Some(selector))]).unwrap());
        assert_eq!(
            body,
            json!({
              "kind": "MetricValueList",
              "apiVersion": "custom.metrics.k8s.io/v1beta1",
              "metadata": {},
              "items": [{
                "describedObject": {"kind": "Pod", "namespace": "default",
                                    "name": "sample-app-7cfb596f98-8h5fv", "apiVersion": "v1"},
                "metricName": "http_requests_per_second",
                "timestamp": "2025-04-01T10:00:00Z",
                "window": 120,
                "value": "500m",
                "selector": {"matchLabels": {"verb": "GET"}}
              }]
            })
        );
    }

    #[test]
    fn empty_list_keeps_items_array() {
        let body = parse(metric_value_list(CustomVersion::V1beta2, &[]).unwrap());
        assert_eq!(body["items"], json!([]));
    }

    #[test]
    fn external_golden() {
        let items = [ExternalMetricValue {
            metric_name: "queue_depth".into(),
            metric_labels: Some(BTreeMap::from([("queue".into(), "orders".into())])),
            timestamp: "2025-04-01T10:00:00Z".into(),
            window_seconds: None,
            value: Quantity("42".into()),
        }];
        assert_eq!(
            parse(external_metric_value_list(&items).unwrap()),
            json!({"kind": "ExternalMetricValueList", "apiVersion": "external.metrics.k8s.io/v1beta1",
                   "metadata": {},
                   "items": [{"metricName": "queue_depth", "metricLabels": {"queue": "orders"},
                              "timestamp": "2025-04-01T10:00:00Z", "value": "42"}]})
        );
        let scalar = ExternalMetricValue {
            metric_labels: None,
            ..items[0].clone()
        };
        let body = parse(external_metric_value_list(&[scalar]).unwrap());
        assert_eq!(body["items"][0]["metricLabels"], Value::Null);
    }

    #[test]
    fn discovery_golden() {
        let resources = [ApiResource {
            name: "pods/http_requests_per_second".into(),
            singular_name: String::new(),
            namespaced: true,
            kind: "MetricValueList".into(),
            verbs: vec!["get".into()],
        }];
        assert_eq!(
            parse(api_resource_list("custom.metrics.k8s.io/v1beta2", &resources).unwrap()),
            json!({"kind": "APIResourceList", "apiVersion": "v1",
                   "groupVersion": "custom.metrics.k8s.io/v1beta2",
                   "resources": [{"name": "pods/http_requests_per_second", "singularName": "",
                                  "namespaced": true, "kind": "MetricValueList", "verbs": ["get"]}]})
        );
        assert_eq!(
            parse(api_group("custom.metrics.k8s.io", false).unwrap().unwrap()),
            json!({"kind": "APIGroup", "apiVersion": "v1", "name": "custom.metrics.k8s.io",
                   "versions": [{"groupVersion": "custom.metrics.k8s.io/v1beta2", "version": "v1beta2"},
                                {"groupVersion": "custom.metrics.k8s.io/v1beta1", "version": "v1beta1"}],
                   "preferredVersion": {"groupVersion": "custom.metrics.k8s.io/v1beta2", "version": "v1beta2"}})
        );
        let list = parse(api_group_list(false).unwrap());
        assert_eq!(list["kind"], "APIGroupList");
        assert_eq!(list["groups"][1]["name"], "external.metrics.k8s.io");
        assert_eq!(list["groups"].as_array().unwrap().len(), 2);
        assert!(list["groups"][0].get("kind").is_none());
        assert!(api_group("metrics.k8s.io", false).is_none());
        // With resource rules, metrics.k8s.io is listed as metrics-server lists it.
        let list = parse(api_group_list(true).unwrap());
        assert_eq!(
            list["groups"][2],
            json!({"name": "metrics.k8s.io",
                   "versions": [{"groupVersion": "metrics.k8s.io/v1beta1", "version": "v1beta1"}],
                   "preferredVersion": {"groupVersion": "metrics.k8s.io/v1beta1", "version": "v1beta1"}})
        );
        assert_eq!(
            parse(api_group("metrics.k8s.io", true).unwrap().unwrap())["kind"],
            "APIGroup"
        );
    }

    #[test]
    fn timestamps_are_rfc3339_seconds() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_743_501_600.781), "2025-04-01T10:00:00Z");
        assert_eq!(rfc3339(951_782_400.0), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(f64::NAN), "1970-01-01T00:00:00Z");
    }
}
