//! What a request asks, read from its method, path and query exactly as apimachinery's
//! `RequestInfoFactory.NewRequestInfo` (`k8s.io/apiserver/pkg/endpoints/request/requestinfo.go`)
//! reads them; and the always-allowed paths of `k8s.io/apiserver/pkg/authorization/path`.
//!
//! Kubernetes' RBAC rules and kube-apiserver's own authorization of the proxied request both
//! work on these attributes, so we copy the parser rather than derive them from our router:
//! `/apis/custom.metrics.k8s.io/v1beta2/namespaces/ns/metrics/m` is resource `metrics`, name
//! `m` in namespace `ns` here (as RBAC sees it), even though the router serves it as the
//! namespace object's metric.
//!
//! Two refinements of newer apimachinery versions are left out, both on the strict side: a
//! `fieldSelector=metadata.name=x` on a list does not narrow the name, and label/field
//! selectors are not sent with the review (`AuthorizeWithSelectors`); RBAC ignores both.

use super::Attributes;

/// The paths that skip authentication and authorization by default: the probes, and the
/// OpenAPI documents kube-apiserver's aggregator fetches.
pub const DEFAULT_ALWAYS_ALLOW: &[&str] = &["/healthz", "/livez", "/readyz", "/openapi/*"];

/// Verbs that come as a path segment after the version (`/api/v1/watch/pods`).
const SPECIAL_VERBS: &[&str] = &["proxy", "watch"];
/// Subresources of a namespace, as opposed to resources inside one.
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

/// The request attributes of `method` on `path` (raw, as on the wire) with `query`.
///
/// Paths under `/api/{version}/` and `/apis/{group}/{version}/` with at least one segment after
/// the version are resource requests; everything else is a non-resource request with the
/// lower-cased method as its verb.
pub fn attributes(method: &str, path: &str, query: Option<&str>) -> Attributes {
    let path = percent_decode(path);
    let non_resource = |path: String| Attributes::NonResource {
        verb: method.to_ascii_lowercase(),
        path,
    };
    let trimmed = path.trim_matches('/');
    let parts: Vec<&str> = if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed.split('/').collect()
    };
    if parts.len() < 3 {
        return non_resource(path);
    }
    let (group, version, mut rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] if !rest.is_empty() => (*group, *version, rest),
        _ => return non_resource(path),
    };

    let mut verb = match (rest, method) {
        ([special, tail @ ..], _) if SPECIAL_VERBS.contains(special) => {
            if tail.is_empty() {
                // Go gives up here ("unable to determine kind and namespace"); report what it
                // knows: a resource request of this method with no resource.
                return Attributes::Resource {
                    verb: method.to_ascii_lowercase(),
                    group: group.to_owned(),
                    version: version.to_owned(),
                    resource: String::new(),
                    subresource: String::new(),
                    namespace: String::new(),
                    name: String::new(),
                };
            }
            rest = tail;
            *special
        }
        (_, "POST") => "create",
        (_, "GET" | "HEAD") => "get",
        (_, "PUT") => "update",
        (_, "PATCH") => "patch",
        (_, "DELETE") => "delete",
        _ => "",
    };

    let mut namespace = "";
    if let ["namespaces", ns, tail @ ..] = rest {
        namespace = ns;
        if let [next, ..] = tail
            && !NAMESPACE_SUBRESOURCES.contains(next)
        {
            rest = tail;
        }
    }

    let (mut resource, mut name, mut subresource) = ("", "", "");
    if let [r, tail @ ..] = rest {
        resource = r;
        if let [n, tail @ ..] = tail {
            name = n;
            if let [s, ..] = tail
                && verb != "proxy"
            {
                subresource = s;
            }
        }
    }

    if name.is_empty() && verb == "get" {
        verb = if watch_requested(query) {
            "watch"
        } else {
            "list"
        };
    }
    if name.is_empty() && verb == "delete" {
        verb = "deletecollection";
    }
    Attributes::Resource {
        verb: verb.to_owned(),
        group: group.to_owned(),
        version: version.to_owned(),
        resource: resource.to_owned(),
        subresource: subresource.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

/// `?watch=…` as `metav1.ListOptions` decodes it: absent, empty, `0` or `false` (any case)
/// is false, anything else true. Only the first value counts.
fn watch_requested(query: Option<&str>) -> bool {
    let Some(query) = query else {
        return false;
    };
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "watch")
        .is_some_and(|(_, v)| !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false")))
}

/// Decodes `%XX` escapes in the whole path, as Go's `url.URL.Path` holds it (so an encoded
/// `/` separates segments there too). Malformed escapes stay as they are; bytes that are not
/// UTF-8 become U+FFFD.
fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |j: usize| bytes.get(j).and_then(|c| char::from(*c).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                // Two hex digits fit a byte.
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `path` skips authentication and authorization, with
/// `k8s.io/apiserver/pkg/authorization/path` semantics: a pattern matches its exact path, a
/// pattern ending in `*` every path with that prefix, leading `/` ignored on both sides. Only
/// non-resource paths can match (a resource request is never always-allowed, whatever
/// the patterns say). A pattern with a `*` elsewhere matches nothing; reject it at startup
/// with [`check_always_allow_patterns`].
pub fn always_allowed<S: AsRef<str>>(path: &str, patterns: &[S]) -> bool {
    if matches!(attributes("GET", path, None), Attributes::Resource { .. }) {
        return false;
    }
    let path = path.strip_prefix('/').unwrap_or(path);
    patterns.iter().any(|pattern| {
        let pattern = pattern.as_ref();
        let pattern = pattern.strip_prefix('/').unwrap_or(pattern);
        match pattern.strip_suffix('*') {
            Some(prefix) if !prefix.contains('*') => path.starts_with(prefix),
            Some(_) => false,
            None => !pattern.contains('*') && path == pattern,
        }
    })
}

/// Rejects always-allow patterns with a `*` anywhere but at the end, as Kubernetes does
/// (`only trailing * allowed in "…"`).
pub fn check_always_allow_patterns<S: AsRef<str>>(patterns: &[S]) -> Result<(), String> {
    for pattern in patterns {
        let pattern = pattern.as_ref();
        let body = pattern.strip_suffix('*').unwrap_or(pattern);
        if body.contains('*') {
            return Err(format!("only trailing * allowed in {pattern:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders attributes as `verb group/version ns resource/name/subresource` or
    /// `verb path` so that a case fits on one line.
    fn render(a: &Attributes) -> String {
        match a {
            Attributes::Resource {
                verb,
                group,
                version,
                resource,
                subresource,
                namespace,
                name,
            } => {
                format!("R {verb} {group}/{version} ns={namespace} {resource}/{name}/{subresource}")
            }
            Attributes::NonResource { verb, path } => format!("N {verb} {path}"),
        }
    }

    #[track_caller]
    fn check(method: &str, url: &str, expected: &str) {
        let (path, query) = match url.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (url, None),
        };
        assert_eq!(
            render(&attributes(method, path, query)),
            expected,
            "{method} {url}"
        );
    }

    /// `TestGetAPIRequestInfo`'s success cases, one for one.
    #[test]
    fn apimachinery_resource_cases() {
        const CASES: &[(&str, &str, &str)] = &[
            ("GET", "/api/v1/namespaces", "R list /v1 ns= namespaces//"),
            (
                "GET",
                "/api/v1/namespaces/other",
                "R get /v1 ns=other namespaces/other/",
            ),
            (
                "GET",
                "/api/v1/namespaces/other/pods",
                "R list /v1 ns=other pods//",
            ),
            (
                "GET",
                "/api/v1/namespaces/other/pods/foo",
                "R get /v1 ns=other pods/foo/",
            ),
            (
                "HEAD",
                "/api/v1/namespaces/other/pods/foo",
                "R get /v1 ns=other pods/foo/",
            ),
            ("GET", "/api/v1/pods", "R list /v1 ns= pods//"),
            ("HEAD", "/api/v1/pods", "R list /v1 ns= pods//"),
            (
                "PATCH",
                "/api/v1/namespaces/new-namespace",
                "R patch /v1 ns=new-namespace namespaces/new-namespace/",
            ),
            // Special verbs.
            (
                "GET",
                "/api/v1/proxy/namespaces/other/pods/foo",
                "R proxy /v1 ns=other pods/foo/",
            ),
            (
                "GET",
                "/api/v1/proxy/namespaces/other/pods/foo/subpath/not/a/subresource",
                "R proxy /v1 ns=other pods/foo/",
            ),
            ("GET", "/api/v1/watch/pods", "R watch /v1 ns= pods//"),
            ("GET", "/api/v1/pods?watch=true", "R watch /v1 ns= pods//"),
            ("GET", "/api/v1/pods?watch=false", "R list /v1 ns= pods//"),
            (
                "GET",
                "/api/v1/watch/namespaces/other/pods",
                "R watch /v1 ns=other pods//",
            ),
            (
                "GET",
                "/api/v1/namespaces/other/pods?watch=1",
                "R watch /v1 ns=other pods//",
            ),
            (
                "GET",
                "/api/v1/namespaces/other/pods?watch=0",
                "R list /v1 ns=other pods//",
            ),
            // Subresource identification.
            (
                "GET",
                "/api/v1/namespaces/other/pods/foo/status",
                "R get /v1 ns=other pods/foo/status",
            ),
            (
                "GET",
                "/api/v1/namespaces/other/pods/foo/proxy/subpath",
                "R get /v1 ns=other pods/foo/proxy",
            ),
            (
                "PUT",
                "/api/v1/namespaces/other/finalize",
                "R update /v1 ns=other namespaces/other/finalize",
            ),
            (
                "PUT",
                "/api/v1/namespaces/other/status",
                "R update /v1 ns=other namespaces/other/status",
            ),
            // Verb identification.
            (
                "PATCH",
                "/api/v1/namespaces/other/pods/foo",
                "R patch /v1 ns=other pods/foo/",
            ),
            (
                "DELETE",
                "/api/v1/namespaces/other/pods/foo",
                "R delete /v1 ns=other pods/foo/",
            ),
            (
                "POST",
                "/api/v1/namespaces/other/pods",
                "R create /v1 ns=other pods//",
            ),
            // Deletecollection verb identification.
            (
                "DELETE",
                "/api/v1/nodes",
                "R deletecollection /v1 ns= nodes//",
            ),
            (
                "DELETE",
                "/api/v1/namespaces",
                "R deletecollection /v1 ns= namespaces//",
            ),
            (
                "DELETE",
                "/api/v1/namespaces/other/pods",
                "R deletecollection /v1 ns=other pods//",
            ),
            (
                "DELETE",
                "/apis/extensions/v1/namespaces/other/pods",
                "R deletecollection extensions/v1 ns=other pods//",
            ),
            // API group and version identification.
            (
                "POST",
                "/apis/extensions/v1/namespaces/other/pods",
                "R create extensions/v1 ns=other pods//",
            ),
            (
                "POST",
                "/apis/extensions/v1beta3/namespaces/other/pods",
                "R create extensions/v1beta3 ns=other pods//",
            ),
            // TestGetNonAPIRequestInfo's resource requests.
            (
                "GET",
                "/api/version/resource",
                "R list /version ns= resource//",
            ),
            (
                "GET",
                "/apis/group/version/resource/name/subresource",
                "R get group/version ns= resource/name/subresource",
            ),
            (
                "GET",
                "/api/version/resource/name/subresource",
                "R get /version ns= resource/name/subresource",
            ),
            ("GET", "/apis/batch/v1/job", "R list batch/v1 ns= job//"),
            (
                "GET",
                "/apis/batch/v1/job/foo",
                "R get batch/v1 ns= job/foo/",
            ),
            (
                "GET",
                "/apis/batch/v1/job/foo/scale",
                "R get batch/v1 ns= job/foo/scale",
            ),
            // TestFieldSelectorParsing: the name is not narrowed (see the module docs).
            (
                "GET",
                "/apis/group/version/resource?fieldSelector=metadata.name=name1",
                "R list group/version ns= resource//",
            ),
            (
                "GET",
                "/apis/group/version/resource?watch=true&fieldSelector=metadata.name=name1",
                "R watch group/version ns= resource//",
            ),
        ];
        for (method, url, expected) in CASES {
            check(method, url, expected);
        }
    }

    /// `TestGetAPIRequestInfo`'s error cases and `TestGetNonAPIRequestInfo`'s non-resource
    /// cases: all non-resource requests.
    #[test]
    fn apimachinery_non_resource_cases() {
        for url in [
            "/",
            "/api/version/",
            "/apis/group/version/",
            "/badprefix/version/resource",
            "/apis/version/resource",
            "/not-api/version/resource",
            "/apis/extensions/v1beta1",
            "/apis/extensions/v1beta1/",
            "/api/version",
            "/api",
            "",
        ] {
            check("GET", url, &format!("N get {url}"));
        }
        check("HEAD", "/healthz", "N head /healthz");
    }

    /// The paths this server answers, and what RBAC therefore sees.
    #[test]
    fn metrics_api_paths() {
        const CASES: &[(&str, &str)] = &[
            ("/apis", "N get /apis"),
            (
                "/apis/custom.metrics.k8s.io",
                "N get /apis/custom.metrics.k8s.io",
            ),
            (
                "/apis/custom.metrics.k8s.io/v1beta2",
                "N get /apis/custom.metrics.k8s.io/v1beta2",
            ),
            (
                "/apis/custom.metrics.k8s.io/v1beta2/",
                "N get /apis/custom.metrics.k8s.io/v1beta2/",
            ),
            ("/metrics", "N get /metrics"),
            ("/openapi/v2", "N get /openapi/v2"),
            (
                "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/http_requests",
                "R get custom.metrics.k8s.io/v1beta2 ns=default pods/*/http_requests",
            ),
            (
                "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/web-0/http_requests",
                "R get custom.metrics.k8s.io/v1beta1 ns=default pods/web-0/http_requests",
            ),
            // The group-qualified resource is the path segment, as-is.
            (
                "/apis/custom.metrics.k8s.io/v1beta2/namespaces/ns/deployments.apps/%2A/m",
                "R get custom.metrics.k8s.io/v1beta2 ns=ns deployments.apps/*/m",
            ),
            // The namespace's own metric: resource "metrics", name = the metric.
            (
                "/apis/custom.metrics.k8s.io/v1beta2/namespaces/prod/metrics/queue",
                "R get custom.metrics.k8s.io/v1beta2 ns=prod metrics/queue/",
            ),
            (
                "/apis/custom.metrics.k8s.io/v1beta2/nodes/*/node_load1",
                "R get custom.metrics.k8s.io/v1beta2 ns= nodes/*/node_load1",
            ),
            (
                "/apis/custom.metrics.k8s.io/v1beta2/namespaces/*/queue",
                "R list custom.metrics.k8s.io/v1beta2 ns=* queue//",
            ),
            (
                "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/queue_depth",
                "R list external.metrics.k8s.io/v1beta1 ns=default queue_depth//",
            ),
            // metrics.k8s.io, as RBAC's system:aggregated-metrics-reader names it.
            (
                "/apis/metrics.k8s.io/v1beta1/pods",
                "R list metrics.k8s.io/v1beta1 ns= pods//",
            ),
            (
                "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods",
                "R list metrics.k8s.io/v1beta1 ns=default pods//",
            ),
            (
                "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/web-0",
                "R get metrics.k8s.io/v1beta1 ns=default pods/web-0/",
            ),
            (
                "/apis/metrics.k8s.io/v1beta1/nodes",
                "R list metrics.k8s.io/v1beta1 ns= nodes//",
            ),
            (
                "/apis/metrics.k8s.io/v1beta1/nodes/node-a",
                "R get metrics.k8s.io/v1beta1 ns= nodes/node-a/",
            ),
        ];
        for (path, expected) in CASES {
            check("GET", path, expected);
        }
        check(
            "GET",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/queue_depth?watch=true",
            "R watch external.metrics.k8s.io/v1beta1 ns=default queue_depth//",
        );
    }

    #[test]
    fn special_verb_without_resource_is_a_resource_request_without_resource() {
        check("GET", "/apis/g/v1/watch", "R get g/v1 ns= //");
        check("GET", "/api/v1/proxy", "R get /v1 ns= //");
    }

    #[test]
    fn percent_decoding_follows_go_url_path() {
        // An encoded slash separates segments, as in Go's decoded `URL.Path`.
        check(
            "GET",
            "/apis/g/v1/namespaces/a%2Fb/pods",
            "R get g/v1 ns=a b/pods/",
        );
        check("GET", "/apis/g/v1/pods/%zz", "R get g/v1 ns= pods/%zz/");
        check(
            "GET",
            "/apis/g/v1/pods/%ff",
            "R get g/v1 ns= pods/\u{fffd}/",
        );
        check("GET", "/metrics%3F", "N get /metrics?");
    }

    #[test]
    fn always_allowed_follows_the_path_authorizer() {
        let defaults = DEFAULT_ALWAYS_ALLOW;
        for (path, allowed) in [
            ("/healthz", true),
            ("healthz", true),
            ("/livez", true),
            ("/readyz", true),
            ("/openapi/v2", true),
            ("/openapi/v3/apis/custom.metrics.k8s.io/v1beta2", true),
            ("/openapi/", true),
            ("/openapi", false),
            ("/healthz/etcd", false),
            ("/healthzx", false),
            ("/metrics", false),
            ("/apis", false),
            (
                "/apis/custom.metrics.k8s.io/v1beta2/namespaces/d/pods/*/m",
                false,
            ),
            ("/", false),
        ] {
            assert_eq!(always_allowed(path, defaults), allowed, "{path}");
        }
        // A prefix pattern never opens resource requests.
        let everything = ["/*".to_owned()];
        assert!(always_allowed("/metrics", &everything));
        assert!(always_allowed("/apis/custom.metrics.k8s.io", &everything));
        assert!(!always_allowed(
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/d/pods/*/m",
            &everything
        ));
        // "/" matches the root only; an inner `*` matches nothing.
        assert!(always_allowed("/", &["/"]));
        assert!(!always_allowed("/x", &["/"]));
        assert!(!always_allowed("/a*b", &["/a*b"]));
        assert!(!always_allowed("/ab", &["/a*b*"]));
    }

    #[test]
    fn only_trailing_stars_are_valid_patterns() {
        assert_eq!(check_always_allow_patterns(DEFAULT_ALWAYS_ALLOW), Ok(()));
        assert_eq!(check_always_allow_patterns(&["/", "*", "/a/*"]), Ok(()));
        assert_eq!(
            check_always_allow_patterns(&["/a*/b"]),
            Err("only trailing * allowed in \"/a*/b\"".to_owned())
        );
    }
}
