//! Request paths of the aggregated API, as custom-metrics-apiserver installs them.

use super::types::CustomVersion;
use super::{ApiError, CUSTOM_GROUP, EXTERNAL_GROUP, RESOURCE_GROUP};

/// Which objects a custom-metrics request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectName {
    /// One object.
    Named(String),
    /// `*`: every object matching `labelSelector`.
    All,
}

/// A custom-metrics request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomRequest {
    /// `v1beta1` or `v1beta2`.
    pub version: CustomVersion,
    /// The namespace of namespaced requests.
    pub namespace: Option<String>,
    /// Group-qualified resource (`pods`, `deployments.apps`).
    pub resource: String,
    /// The object or `*`.
    pub name: ObjectName,
    /// The metric.
    pub metric: String,
    /// `labelSelector`: which objects.
    pub label_selector: String,
    /// `metricLabelSelector`: which series.
    pub metric_label_selector: String,
}

/// An external-metrics request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalRequest {
    /// The HPA's namespace.
    pub namespace: String,
    /// The metric.
    pub metric: String,
    /// `labelSelector`: the HPA's `metric.selector`.
    pub label_selector: String,
}

/// Pods or nodes, in `metrics.k8s.io`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    /// `PodMetrics`.
    Pods,
    /// `NodeMetrics`.
    Nodes,
}

/// A `metrics.k8s.io` request: one pod or node (`name`), or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRequest {
    /// Pods or nodes.
    pub kind: ResourceKind,
    /// For pods: the namespace; `None` lists every namespace.
    pub namespace: Option<String>,
    /// One object; `None` for a list.
    pub name: Option<String>,
    /// `labelSelector`: which objects, by their labels.
    pub label_selector: String,
    /// `fieldSelector`: `metadata.name` and `metadata.namespace`, as metrics-server reads it.
    pub field_selector: String,
}

/// What a path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/apis`.
    Apis,
    /// `/apis/{group}`.
    Group(String),
    /// `/apis/{group}/{version}`.
    ResourceList {
        /// The group.
        group: &'static str,
        /// The version.
        version: &'static str,
    },
    /// A custom metric.
    Custom(CustomRequest),
    /// An external metric.
    External(ExternalRequest),
    /// Pod or node metrics.
    Resource(ResourceRequest),
}

/// Percent-decodes one path segment; `None` when the result isn't UTF-8.
fn decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |j: usize| bytes.get(j).and_then(|c| (*c as char).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn not_found() -> ApiError {
    ApiError::NotFound("the server could not find the requested resource".into())
}

/// Parses a path (without query) and its query string.
pub fn parse(path: &str, query: Option<&str>) -> Result<Route, ApiError> {
    let segments: Vec<String> = path
        .trim_end_matches('/')
        .split('/')
        .skip(1)
        .map(|s| decode(s).ok_or_else(|| ApiError::BadRequest("invalid request path".into())))
        .collect::<Result<_, _>>()?;
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let param = |name: &str| -> String {
        query
            .map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    };
    match segs.as_slice() {
        ["apis"] => Ok(Route::Apis),
        ["apis", group] => Ok(Route::Group((*group).to_owned())),
        ["apis", group, version, rest @ ..] => {
            let (group, version) = super::types::GROUPS
                .iter()
                .find(|(g, _)| g == group)
                .and_then(|(g, versions)| versions.iter().find(|v| *v == version).map(|v| (*g, *v)))
                .ok_or_else(not_found)?;
            if rest.is_empty() {
                return Ok(Route::ResourceList { group, version });
            }
            if group == RESOURCE_GROUP {
                return resource_route(rest, &param);
            }
            if group == EXTERNAL_GROUP {
                return match rest {
                    ["namespaces", ns, metric] => Ok(Route::External(ExternalRequest {
                        namespace: (*ns).to_owned(),
                        metric: (*metric).to_owned(),
                        label_selector: param("labelSelector"),
                    })),
                    _ => Err(ApiError::BadRequest("invalid request path".into())),
                };
            }
            debug_assert_eq!(group, CUSTOM_GROUP);
            let version = if version == "v1beta1" {
                CustomVersion::V1beta1
            } else {
                CustomVersion::V1beta2
            };
            let request = |namespace: Option<&str>, resource: &str, name: &str, metric: &str| {
                Route::Custom(CustomRequest {
                    version,
                    namespace: namespace.map(str::to_owned),
                    resource: resource.to_owned(),
                    name: if name == "*" {
                        ObjectName::All
                    } else {
                        ObjectName::Named(name.to_owned())
                    },
                    metric: metric.to_owned(),
                    label_selector: param("labelSelector"),
                    metric_label_selector: param("metricLabelSelector"),
                })
            };
            match rest {
                // The namespace object itself: resource `namespaces`, name = the namespace.
                ["namespaces", ns, "metrics", metric] => {
                    Ok(request(None, "namespaces", ns, metric))
                }
                ["namespaces", ns, resource, name, metric] => {
                    Ok(request(Some(ns), resource, name, metric))
                }
                [resource, name, metric] => Ok(request(None, resource, name, metric)),
                _ => Err(ApiError::BadRequest("invalid request path".into())),
            }
        }
        _ => Err(not_found()),
    }
}

/// The paths metrics-server serves under `/apis/metrics.k8s.io/v1beta1`.
fn resource_route(rest: &[&str], param: &dyn Fn(&str) -> String) -> Result<Route, ApiError> {
    let watch = param("watch");
    if !(watch.is_empty() || watch == "0" || watch.eq_ignore_ascii_case("false")) {
        // Get and list only, as metrics-server.
        return Err(ApiError::MethodNotAllowed);
    }
    let (kind, namespace, name) = match rest {
        ["pods"] => (ResourceKind::Pods, None, None),
        ["namespaces", ns, "pods"] => (ResourceKind::Pods, Some(*ns), None),
        ["namespaces", ns, "pods", name] => (ResourceKind::Pods, Some(*ns), Some(*name)),
        ["nodes"] => (ResourceKind::Nodes, None, None),
        ["nodes", name] => (ResourceKind::Nodes, None, Some(*name)),
        _ => return Err(not_found()),
    };
    Ok(Route::Resource(ResourceRequest {
        kind,
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
        label_selector: param("labelSelector"),
        field_selector: param("fieldSelector"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn custom(path: &str, query: Option<&str>) -> CustomRequest {
        match parse(path, query).unwrap() {
            Route::Custom(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn discovery_paths() {
        assert_eq!(parse("/apis", None).unwrap(), Route::Apis);
        assert_eq!(
            parse("/apis/custom.metrics.k8s.io/", None).unwrap(),
            Route::Group("custom.metrics.k8s.io".into())
        );
        assert_eq!(
            parse("/apis/external.metrics.k8s.io/v1beta1", None).unwrap(),
            Route::ResourceList {
                group: EXTERNAL_GROUP,
                version: "v1beta1"
            }
        );
        assert_eq!(
            parse("/apis/external.metrics.k8s.io/v1beta2", None)
                .unwrap_err()
                .code(),
            404
        );
        assert_eq!(parse("/api/v1", None).unwrap_err().code(), 404);
    }

    #[test]
    fn pods_star_with_selectors() {
        let c = custom(
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/http_requests",
            Some("labelSelector=app%3Dweb%2Ctier+in+%28a%2Cb%29&metricLabelSelector=verb%3DGET"),
        );
        assert_eq!(c.version, CustomVersion::V1beta2);
        assert_eq!(c.namespace.as_deref(), Some("default"));
        assert_eq!(c.resource, "pods");
        assert_eq!(c.name, ObjectName::All);
        assert_eq!(c.label_selector, "app=web,tier in (a,b)");
        assert_eq!(c.metric_label_selector, "verb=GET");
    }

    #[test]
    fn encoded_star_and_named_object() {
        let c = custom(
            "/apis/custom.metrics.k8s.io/v1beta1/namespaces/ns/deployments.apps/%2A/m",
            None,
        );
        assert_eq!(
            (c.resource.as_str(), &c.name),
            ("deployments.apps", &ObjectName::All)
        );
        let c = custom(
            "/apis/custom.metrics.k8s.io/v1beta1/namespaces/ns/pods/web-0/m",
            None,
        );
        assert_eq!(c.name, ObjectName::Named("web-0".into()));
        assert_eq!(c.version, CustomVersion::V1beta1);
    }

    #[test]
    fn namespace_object_and_root_scoped() {
        let c = custom(
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/prod/metrics/queue",
            None,
        );
        assert_eq!(c.namespace, None);
        assert_eq!(c.resource, "namespaces");
        assert_eq!(c.name, ObjectName::Named("prod".into()));
        let c = custom(
            "/apis/custom.metrics.k8s.io/v1beta2/nodes/*/node_load1",
            None,
        );
        assert_eq!((c.namespace, c.resource.as_str()), (None, "nodes"));
    }

    #[test]
    fn external_path() {
        match parse(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/queue_depth",
            Some("labelSelector=queue%3Dorders"),
        )
        .unwrap()
        {
            Route::External(e) => {
                assert_eq!(e.namespace, "default");
                assert_eq!(e.metric, "queue_depth");
                assert_eq!(e.label_selector, "queue=orders");
            }
            other => panic!("{other:?}"),
        }
    }

    fn resource(path: &str, query: Option<&str>) -> ResourceRequest {
        match parse(path, query).unwrap() {
            Route::Resource(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resource_metrics_paths() {
        const BASE: &str = "/apis/metrics.k8s.io/v1beta1";
        let r = resource(&format!("{BASE}/pods"), Some("labelSelector=app%3Dweb"));
        assert_eq!(
            r,
            ResourceRequest {
                kind: ResourceKind::Pods,
                namespace: None,
                name: None,
                label_selector: "app=web".into(),
                field_selector: String::new(),
            }
        );
        let r = resource(
            &format!("{BASE}/namespaces/default/pods"),
            Some("fieldSelector=metadata.name%3Dweb-0"),
        );
        assert_eq!(
            (r.namespace.as_deref(), r.name, r.field_selector.as_str()),
            (Some("default"), None, "metadata.name=web-0")
        );
        let r = resource(&format!("{BASE}/namespaces/default/pods/web-0"), None);
        assert_eq!(r.name.as_deref(), Some("web-0"));
        let r = resource(&format!("{BASE}/nodes/"), None);
        assert_eq!(
            (r.kind, r.namespace, r.name),
            (ResourceKind::Nodes, None, None)
        );
        let r = resource(&format!("{BASE}/nodes/node-a"), None);
        assert_eq!(r.name.as_deref(), Some("node-a"));
        assert_eq!(
            parse(BASE, None).unwrap(),
            Route::ResourceList {
                group: RESOURCE_GROUP,
                version: "v1beta1"
            }
        );
        for p in [
            "/pods/web-0",
            "/namespaces/default",
            "/namespaces/default/pods/web-0/x",
            "/services",
        ] {
            assert_eq!(
                parse(&format!("{BASE}{p}"), None).unwrap_err().code(),
                404,
                "{p}"
            );
        }
        assert_eq!(
            parse(&format!("{BASE}/pods"), Some("watch=true"))
                .unwrap_err()
                .code(),
            405
        );
        assert_eq!(
            parse("/apis/metrics.k8s.io/v1", None).unwrap_err().code(),
            404
        );
    }

    #[test]
    fn short_paths_are_bad_requests() {
        for p in [
            "/apis/custom.metrics.k8s.io/v1beta2/pods/x",
            "/apis/external.metrics.k8s.io/v1beta1/queue_depth",
            "/apis/custom.metrics.k8s.io/v1beta2/a/b/c/d/e/f/g",
        ] {
            assert_eq!(parse(p, None).unwrap_err().code(), 400, "{p}");
        }
    }

    #[test]
    fn invalid_utf8_is_a_bad_request_not_a_panic() {
        assert_eq!(
            parse(
                "/apis/custom.metrics.k8s.io/v1beta2/namespaces/%ff/pods/*/m",
                None
            )
            .unwrap_err()
            .code(),
            400
        );
        assert!(parse("/apis/%", None).is_ok());
    }
}
