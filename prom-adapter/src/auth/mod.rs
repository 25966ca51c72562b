//! Delegated authentication and authorization, as `k8s.io/apiserver` does them for an
//! aggregated API server.
//!
//! kube-apiserver authenticates and authorizes every request before it proxies it here, and
//! then tells us who the caller is through `X-Remote-*` headers, vouched for by its front-proxy
//! client certificate. We check that certificate, believe the headers only when it is valid,
//! and ask kube-apiserver again whether that user may do what the request asks
//! (`SubjectAccessReview`), as sample-apiserver and custom-metrics-apiserver do. Direct callers
//! (Prometheus scraping `/metrics`) authenticate with a client certificate or a bearer token
//! (`TokenReview`).
//!
//! A request goes through, in order:
//! 1. [`always_allowed`]: paths such as `/healthz` skip everything below.
//! 2. [`Authenticator::authenticate`]: front-proxy headers, then x509, then bearer token;
//!    failure is 401 (503 when kube-apiserver cannot be asked).
//! 3. [`attributes`]: what the request asks, as apimachinery's `RequestInfo` reads the path.
//! 4. [`Authorizer::authorize`]: `system:masters`, else a cached `SubjectAccessReview`.
//!
//! # Layout
//! - [`request_info`]: path → [`Attributes`], and the always-allowed path patterns (pure).
//! - [`authn`]: [`Authenticator`] and its [`AuthnConfig`].
//! - [`authz`]: [`Authorizer`] and its [`AuthzConfig`].
//! - [`extension`]: the `kube-system/extension-apiserver-authentication` ConfigMap → config.
//! - [`kube_api`]: the [`KubeAuthApi`] trait, its kube-rs implementation [`KubeAuth`], and
//!   [`kube_api::FakeKube`] for tests.
//! - [`metrics`]: [`AuthMetrics`], the self-metrics of this module.
//! - `cache`: the TTL cache both share.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::panic
)]

pub mod authn;
pub mod authz;
mod cache;
pub mod extension;
pub mod kube_api;
pub mod metrics;
pub mod request_info;

use std::collections::BTreeMap;

pub use authn::{Authenticator, AuthnConfig, RequestHeaderConfig};
pub use authz::{Authorizer, AuthzConfig};
pub use extension::{AuthConfigError, from_config_map};
pub use kube_api::{KubeAuth, KubeAuthApi, KubeError};
pub use metrics::AuthMetrics;
pub use request_info::{
    DEFAULT_ALWAYS_ALLOW, always_allowed, attributes, check_always_allow_patterns,
};

/// The group of every authenticated user.
pub const ALL_AUTHENTICATED: &str = "system:authenticated";
/// The group of anonymous requests (only recognised here, never assigned).
pub const ALL_UNAUTHENTICATED: &str = "system:unauthenticated";
/// The anonymous user's name (only recognised here, never assigned).
pub const ANONYMOUS: &str = "system:anonymous";
/// The group that is allowed everything without a `SubjectAccessReview`; kube-apiserver's
/// availability checks and discovery come as a member of it.
pub const SYSTEM_MASTERS: &str = "system:masters";

/// Who made a request: `k8s.io/apiserver`'s `user.Info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserInfo {
    /// The user name (`system:serviceaccount:kube-system:horizontal-pod-autoscaler`).
    pub name: String,
    /// The user's UID, when the authenticator knows one (empty otherwise).
    pub uid: String,
    /// Groups, `system:authenticated` included once authenticated.
    pub groups: Vec<String>,
    /// Extra attributes (scopes, the service account's pod name…), keys lower-case.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What a request asks, as apimachinery's `RequestInfo` sees it; what the
/// `SubjectAccessReview` names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Attributes {
    /// A request under `/api/{version}/…` or `/apis/{group}/{version}/…` with at least one
    /// segment after the version.
    Resource {
        /// `get`, `list`, `watch`, `create`…
        verb: String,
        /// The API group (`custom.metrics.k8s.io`).
        group: String,
        /// The API version (`v1beta2`).
        version: String,
        /// The path segment naming the resource, as-is (`pods`, `deployments.apps`).
        resource: String,
        /// The segment after the name (for custom metrics: the metric).
        subresource: String,
        /// The namespace, empty for cluster-scoped requests.
        namespace: String,
        /// The object name (`*` stays `*`), empty for lists.
        name: String,
    },
    /// Anything else: discovery (`/apis`, `/apis/{group}/{version}`), `/metrics`, `/healthz`.
    NonResource {
        /// The lower-cased HTTP method (`get`, `head`).
        verb: String,
        /// The percent-decoded URL path.
        path: String,
    },
}

impl Attributes {
    /// The verb, for either kind.
    pub fn verb(&self) -> &str {
        match self {
            Attributes::Resource { verb, .. } | Attributes::NonResource { verb, .. } => verb,
        }
    }
}

/// The outcome of authentication or authorization, as an HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Go ahead (200).
    Allow,
    /// Authenticated, but not allowed (403). Holds the `SubjectAccessReview`'s reason, often
    /// empty; [`forbidden_message`] turns it into Kubernetes' wording.
    Deny(String),
    /// No valid credentials (401). Holds why, for the log only: clients get `Unauthorized`,
    /// as from Kubernetes, so that the message does not help probing.
    Unauthenticated(String),
    /// kube-apiserver could not be asked (503): we fail closed.
    Unavailable(String),
}

impl Decision {
    /// The HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            Decision::Allow => 200,
            Decision::Deny(_) => 403,
            Decision::Unauthenticated(_) => 401,
            Decision::Unavailable(_) => 503,
        }
    }

    /// The `metav1.StatusReason` of the error answer (`""` for [`Decision::Allow`]).
    pub fn reason(&self) -> &'static str {
        match self {
            Decision::Allow => "",
            Decision::Deny(_) => "Forbidden",
            Decision::Unauthenticated(_) => "Unauthorized",
            Decision::Unavailable(_) => "ServiceUnavailable",
        }
    }

    /// A closed label vocabulary: `allow`, `deny`, `unauthenticated`, `unavailable`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny(_) => "deny",
            Decision::Unauthenticated(_) => "unauthenticated",
            Decision::Unavailable(_) => "unavailable",
        }
    }
}

/// The `Status.message` of a 403, worded as `k8s.io/apiserver`'s `responsewriters.Forbidden`
/// words it (with `apierrors.NewForbidden`'s prefix), so that clients and humans see what
/// kube-apiserver would have said:
/// `pods.custom.metrics.k8s.io "*" is forbidden: User "bob" cannot get resource
/// "pods/http_requests" in API group "custom.metrics.k8s.io" in the namespace "default"`.
pub fn forbidden_message(user: &UserInfo, attrs: &Attributes, reason: &str) -> String {
    // Go replaces these so that a message rendered as HTML cannot inject markup.
    let sanitize = |s: String| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let (inner, qualified, name) = match attrs {
        Attributes::NonResource { verb, path } => (
            format!("User {:?} cannot {verb} path {:?}", user.name, path),
            String::new(),
            "",
        ),
        Attributes::Resource {
            verb,
            group,
            resource,
            subresource,
            namespace,
            name,
            ..
        } => {
            let full = if subresource.is_empty() {
                resource.clone()
            } else {
                format!("{resource}/{subresource}")
            };
            let inner = if namespace.is_empty() {
                format!(
                    "User {:?} cannot {verb} resource {full:?} in API group {group:?} at the \
                     cluster scope",
                    user.name
                )
            } else {
                format!(
                    "User {:?} cannot {verb} resource {full:?} in API group {group:?} in the \
                     namespace {namespace:?}",
                    user.name
                )
            };
            let qualified = match (resource.is_empty(), group.is_empty()) {
                (true, _) => String::new(),
                (false, true) => resource.clone(),
                (false, false) => format!("{resource}.{group}"),
            };
            (inner, qualified, name.as_str())
        }
    };
    let mut inner = sanitize(inner);
    if !reason.is_empty() {
        inner = format!("{inner}: {reason}");
    }
    match (qualified.is_empty(), name.is_empty()) {
        (true, _) => format!("forbidden: {inner}"),
        (false, true) => format!("{qualified} is forbidden: {inner}"),
        (false, false) => format!("{qualified} {name:?} is forbidden: {inner}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserInfo {
        UserInfo {
            name: name.to_owned(),
            ..UserInfo::default()
        }
    }

    #[test]
    fn forbidden_messages_match_kubernetes_wording() {
        let attrs = attributes(
            "GET",
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/http_requests",
            None,
        );
        assert_eq!(
            forbidden_message(&user("bob"), &attrs, ""),
            "pods.custom.metrics.k8s.io \"*\" is forbidden: User \"bob\" cannot get resource \
             \"pods/http_requests\" in API group \"custom.metrics.k8s.io\" in the namespace \
             \"default\""
        );
        let attrs = attributes(
            "GET",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/ns/queue_depth",
            None,
        );
        assert_eq!(
            forbidden_message(&user("bob"), &attrs, "no RBAC policy matched"),
            "queue_depth.external.metrics.k8s.io is forbidden: User \"bob\" cannot list resource \
             \"queue_depth\" in API group \"external.metrics.k8s.io\" in the namespace \"ns\": \
             no RBAC policy matched"
        );
        let attrs = attributes(
            "GET",
            "/apis/custom.metrics.k8s.io/v1beta2/nodes/n1/load",
            None,
        );
        assert_eq!(
            forbidden_message(&user("bob"), &attrs, ""),
            "nodes.custom.metrics.k8s.io \"n1\" is forbidden: User \"bob\" cannot get resource \
             \"nodes/load\" in API group \"custom.metrics.k8s.io\" at the cluster scope"
        );
        let attrs = attributes("GET", "/metrics", None);
        assert_eq!(
            forbidden_message(&user("<script>"), &attrs, ""),
            "forbidden: User \"&lt;script&gt;\" cannot get path \"/metrics\""
        );
    }

    /// The server spawns request handling on a multi-threaded runtime: every future here
    /// must be `Send` with the real client.
    #[allow(dead_code)]
    fn futures_are_send(
        authn: &'static Authenticator<KubeAuth>,
        authz: &'static Authorizer<KubeAuth>,
        headers: &'static hyper::HeaderMap,
        conn: &'static common::http::ConnInfo,
        user: &'static UserInfo,
        attrs: &'static Attributes,
    ) {
        fn send<T: Send>(_: T) {}
        send(authn.authenticate(headers, conn));
        send(authn.reload_from_cluster(&AuthnConfig::default()));
        send(authn.reload_loop(
            AuthnConfig::default(),
            std::time::Duration::from_secs(60),
            tokio_util::sync::CancellationToken::new(),
        ));
        send(authz.authorize(user, attrs));
    }

    #[test]
    fn decisions_map_to_http() {
        for (d, code, reason, label) in [
            (Decision::Allow, 200, "", "allow"),
            (Decision::Deny(String::new()), 403, "Forbidden", "deny"),
            (
                Decision::Unauthenticated("x".into()),
                401,
                "Unauthorized",
                "unauthenticated",
            ),
            (
                Decision::Unavailable("x".into()),
                503,
                "ServiceUnavailable",
                "unavailable",
            ),
        ] {
            assert_eq!((d.code(), d.reason(), d.as_str()), (code, reason, label));
        }
    }
}
