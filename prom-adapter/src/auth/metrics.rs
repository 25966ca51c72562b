//! Self-metrics of authentication and authorization, with a closed label vocabulary.

use prometheus::{IntCounterVec, Opts, Registry};

/// How a request was (or was not) authenticated: the `method` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// kube-apiserver's front-proxy certificate plus `X-Remote-*` headers.
    FrontProxy,
    /// A client certificate from the client CA.
    X509,
    /// A bearer token, reviewed by kube-apiserver.
    Token,
    /// No usable credential was presented.
    None,
}

impl Method {
    /// Every method, for pre-initializing series.
    pub const ALL: [Method; 4] = [
        Method::FrontProxy,
        Method::X509,
        Method::Token,
        Method::None,
    ];

    /// `front_proxy`, `x509`, `token`, `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::FrontProxy => "front_proxy",
            Method::X509 => "x509",
            Method::Token => "token",
            Method::None => "none",
        }
    }
}

/// The `result` label of `prom_adapter_authentication_total`.
const RESULTS: [&str; 3] = ["authenticated", "unauthenticated", "error"];
/// The `decision` label of `prom_adapter_authorization_total`.
const DECISIONS: [&str; 3] = ["allow", "deny", "unavailable"];
/// The `cache` label of `prom_adapter_auth_cache_hits_total`.
const CACHES: [&str; 2] = ["token", "authorization"];

/// The counters [`super::Authenticator`] and [`super::Authorizer`] update. Clones share the
/// counters; register them once with [`AuthMetrics::register`].
#[derive(Debug, Clone)]
pub struct AuthMetrics {
    /// Authentications by `method` and `result` (`authenticated`, `unauthenticated`, `error`:
    /// kube-apiserver could not be asked).
    pub authentication: IntCounterVec,
    /// Authorization decisions by `decision` (`allow`, `deny`, `unavailable`).
    pub authorization: IntCounterVec,
    /// Answers taken from a cache, by `cache` (`token`, `authorization`).
    pub cache_hits: IntCounterVec,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("constant metric {name} is valid: {e}"))
}

impl AuthMetrics {
    /// Fresh counters, every label combination present at zero.
    pub fn new() -> Self {
        let metrics = Self {
            authentication: counter(
                "prom_adapter_authentication_total",
                "Request authentications by method (front_proxy, x509, token, none) and result \
                 (authenticated, unauthenticated, error).",
                &["method", "result"],
            ),
            authorization: counter(
                "prom_adapter_authorization_total",
                "Request authorization decisions (allow, deny, unavailable).",
                &["decision"],
            ),
            cache_hits: counter(
                "prom_adapter_auth_cache_hits_total",
                "TokenReview (token) and SubjectAccessReview (authorization) answers served \
                 from cache.",
                &["cache"],
            ),
        };
        for method in Method::ALL {
            for result in RESULTS {
                metrics
                    .authentication
                    .with_label_values(&[method.as_str(), result]);
            }
        }
        for decision in DECISIONS {
            metrics.authorization.with_label_values(&[decision]);
        }
        for cache in CACHES {
            metrics.cache_hits.with_label_values(&[cache]);
        }
        metrics
    }

    /// Registers the three counters in `registry`. Fails if they are registered there already.
    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.authentication.clone()))?;
        registry.register(Box::new(self.authorization.clone()))?;
        registry.register(Box::new(self.cache_hits.clone()))?;
        Ok(())
    }

    pub(crate) fn authenticated(&self, method: Method) {
        self.authentication
            .with_label_values(&[method.as_str(), "authenticated"])
            .inc();
    }

    pub(crate) fn unauthenticated(&self, method: Method) {
        self.authentication
            .with_label_values(&[method.as_str(), "unauthenticated"])
            .inc();
    }

    pub(crate) fn authentication_error(&self, method: Method) {
        self.authentication
            .with_label_values(&[method.as_str(), "error"])
            .inc();
    }

    pub(crate) fn decided(&self, decision: &super::Decision) {
        // Unauthenticated never comes out of the authorizer; count it as a denial if it did.
        let label = match decision {
            super::Decision::Allow => "allow",
            super::Decision::Unavailable(_) => "unavailable",
            super::Decision::Deny(_) | super::Decision::Unauthenticated(_) => "deny",
        };
        self.authorization.with_label_values(&[label]).inc();
    }

    pub(crate) fn cache_hit(&self, cache: &'static str) {
        self.cache_hits.with_label_values(&[cache]).inc();
    }
}

impl Default for AuthMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder as _, TextEncoder};

    #[test]
    fn registers_every_series_at_zero() {
        let registry = Registry::new();
        let metrics = AuthMetrics::new();
        metrics.register(&registry).unwrap();
        assert!(metrics.register(&registry).is_err());
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(
            "prom_adapter_authentication_total{method=\"front_proxy\",result=\"authenticated\"} 0"
        ));
        assert!(text.contains("prom_adapter_authorization_total{decision=\"unavailable\"} 0"));
        assert!(text.contains("prom_adapter_auth_cache_hits_total{cache=\"token\"} 0"));
        assert_eq!(
            text.matches("prom_adapter_authentication_total{").count(),
            12
        );
    }
}
