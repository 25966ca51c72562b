//! May this user do that: `k8s.io/apiserver`'s delegating authorizer.
//!
//! Members of `system:masters` may do anything without asking (kube-apiserver's availability
//! checks and discovery come as one). Everyone else is checked with a `SubjectAccessReview`,
//! whose answer is cached per user and attributes. Always-allowed paths are the caller's
//! business ([`super::always_allowed`]), since they also skip authentication.

use std::time::Duration;

use super::cache::{Clock, TtlCache};
use super::kube_api::KubeAuthApi;
use super::metrics::AuthMetrics;
use super::{Attributes, Decision, SYSTEM_MASTERS, UserInfo};

/// How many decisions are remembered at most.
const CACHE_CAPACITY: usize = 10_000;

/// How long decisions are remembered: `--authorization-webhook-cache-authorized-ttl` and
/// `--authorization-webhook-cache-unauthorized-ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthzConfig {
    /// How long an allow is remembered (10s).
    pub authorized_ttl: Duration,
    /// How long a deny is remembered (10s).
    pub unauthorized_ttl: Duration,
}

impl Default for AuthzConfig {
    fn default() -> Self {
        Self {
            authorized_ttl: Duration::from_secs(10),
            unauthorized_ttl: Duration::from_secs(10),
        }
    }
}

/// Authorizes requests; see the module docs. Without `K`, only `system:masters` is allowed
/// (as `k8s.io/apiserver` does without an authorization kubeconfig).
pub struct Authorizer<K> {
    kube: Option<K>,
    config: AuthzConfig,
    cache: TtlCache<(UserInfo, Attributes), Decision>,
    metrics: AuthMetrics,
    clock: Clock,
}

impl<K> std::fmt::Debug for Authorizer<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("config", &self.config)
            .field("subject_access_review", &self.kube.is_some())
            .finish_non_exhaustive()
    }
}

impl<K> Authorizer<K> {
    /// An authorizer asking kube-apiserver through `kube`, when given.
    pub fn new(kube: Option<K>, config: AuthzConfig, metrics: AuthMetrics) -> Self {
        Self {
            kube,
            config,
            cache: TtlCache::new(CACHE_CAPACITY),
            metrics,
            clock: Clock::default(),
        }
    }

    #[cfg(test)]
    fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }
}

impl<K: KubeAuthApi> Authorizer<K> {
    /// [`Decision::Allow`], [`Decision::Deny`] with the review's reason (often empty; see
    /// [`super::forbidden_message`]), or [`Decision::Unavailable`] when kube-apiserver could
    /// not be asked (not cached).
    pub async fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Decision {
        let decision = self.decide(user, attrs).await;
        self.metrics.decided(&decision);
        match &decision {
            Decision::Allow => {}
            Decision::Unavailable(reason) => {
                tracing::warn!(user = %user.name, %reason, "Cannot authorize a request.");
            }
            Decision::Deny(reason) | Decision::Unauthenticated(reason) => {
                tracing::debug!(user = %user.name, ?attrs, %reason, "Request forbidden.");
            }
        }
        decision
    }

    async fn decide(&self, user: &UserInfo, attrs: &Attributes) -> Decision {
        if user.groups.iter().any(|g| g == SYSTEM_MASTERS) {
            return Decision::Allow;
        }
        let Some(kube) = &self.kube else {
            return Decision::Deny("no SubjectAccessReview client is configured".to_owned());
        };
        let key = (user.clone(), attrs.clone());
        if let Some(cached) = self.cache.get(&key, self.clock.now()) {
            self.metrics.cache_hit("authorization");
            return cached;
        }
        let status = match kube.subject_access_review(user, attrs).await {
            Ok(status) => status,
            Err(e) => return Decision::Unavailable(format!("subject access review: {e}")),
        };
        let (decision, ttl) = if status.allowed {
            (Decision::Allow, self.config.authorized_ttl)
        } else {
            (
                Decision::Deny(status.reason.unwrap_or_default()),
                self.config.unauthorized_ttl,
            )
        };
        self.cache
            .insert(key, decision.clone(), ttl, self.clock.now());
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::attributes;
    use crate::auth::kube_api::{FakeKube, KubeError};

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..UserInfo::default()
        }
    }

    fn pods_star() -> Attributes {
        attributes(
            "GET",
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/http_requests",
            None,
        )
    }

    struct Setup {
        authz: Authorizer<FakeKube>,
        kube: FakeKube,
        metrics: AuthMetrics,
        clock: Clock,
    }

    fn setup() -> Setup {
        let kube = FakeKube::new();
        let metrics = AuthMetrics::new();
        let clock = Clock::manual();
        let authz = Authorizer::new(Some(kube.clone()), AuthzConfig::default(), metrics.clone())
            .with_clock(clock.clone());
        Setup {
            authz,
            kube,
            metrics,
            clock,
        }
    }

    fn decisions(metrics: &AuthMetrics, decision: &str) -> u64 {
        metrics.authorization.with_label_values(&[decision]).get()
    }

    #[tokio::test]
    async fn system_masters_needs_no_review() {
        let s = setup();
        let aggregator = user("system:kube-aggregator", &["system:masters"]);
        assert_eq!(
            s.authz.authorize(&aggregator, &pods_star()).await,
            Decision::Allow
        );
        assert!(s.kube.subject_access_reviews().is_empty());
        // Also without any client.
        let bare: Authorizer<FakeKube> =
            Authorizer::new(None, AuthzConfig::default(), AuthMetrics::new());
        assert_eq!(
            bare.authorize(&aggregator, &pods_star()).await,
            Decision::Allow
        );
        assert_eq!(
            bare.authorize(&user("hpa", &[]), &pods_star()).await,
            Decision::Deny("no SubjectAccessReview client is configured".into())
        );
    }

    #[tokio::test]
    async fn review_allows_and_denies() {
        let s = setup();
        s.kube
            .set_review("hpa", true, "RBAC: allowed by ClusterRoleBinding");
        s.kube.set_review("bob", false, "");
        s.kube.set_review("eve", false, "denied by policy");
        let hpa = user("hpa", &["system:authenticated"]);
        assert_eq!(s.authz.authorize(&hpa, &pods_star()).await, Decision::Allow);
        assert_eq!(
            s.authz.authorize(&user("bob", &[]), &pods_star()).await,
            Decision::Deny(String::new())
        );
        assert_eq!(
            s.authz.authorize(&user("eve", &[]), &pods_star()).await,
            Decision::Deny("denied by policy".into())
        );
        let reviews = s.kube.subject_access_reviews();
        assert_eq!(reviews.len(), 3);
        assert_eq!(reviews[0], (hpa, pods_star()));
        assert_eq!(decisions(&s.metrics, "allow"), 1);
        assert_eq!(decisions(&s.metrics, "deny"), 2);
    }

    #[tokio::test]
    async fn decisions_are_cached_per_user_and_attributes() {
        let s = setup();
        s.kube.set_review("hpa", true, "");
        let hpa = user("hpa", &["system:authenticated"]);
        let other = attributes(
            "GET",
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/other/pods/*/http_requests",
            None,
        );
        for _ in 0..3 {
            assert_eq!(s.authz.authorize(&hpa, &pods_star()).await, Decision::Allow);
        }
        assert_eq!(s.kube.subject_access_reviews().len(), 1);
        assert_eq!(
            s.metrics
                .cache_hits
                .with_label_values(&["authorization"])
                .get(),
            2
        );
        // Other attributes, other groups, other extras: reviewed on their own.
        s.authz.authorize(&hpa, &other).await;
        s.authz
            .authorize(&user("hpa", &["system:authenticated", "x"]), &pods_star())
            .await;
        let mut with_extra = hpa.clone();
        with_extra.extra.insert("scopes".into(), vec!["s".into()]);
        s.authz.authorize(&with_extra, &pods_star()).await;
        assert_eq!(s.kube.subject_access_reviews().len(), 4);
        // Expiry after the TTL.
        s.clock.advance(Duration::from_secs(10));
        s.authz.authorize(&hpa, &pods_star()).await;
        assert_eq!(s.kube.subject_access_reviews().len(), 5);
    }

    #[tokio::test]
    async fn denials_are_cached_for_the_unauthorized_ttl() {
        let kube = FakeKube::new();
        let clock = Clock::manual();
        let config = AuthzConfig {
            authorized_ttl: Duration::from_secs(300),
            unauthorized_ttl: Duration::from_secs(1),
        };
        let authz = Authorizer::new(Some(kube.clone()), config, AuthMetrics::new())
            .with_clock(clock.clone());
        let bob = user("bob", &[]);
        authz.authorize(&bob, &pods_star()).await;
        authz.authorize(&bob, &pods_star()).await;
        assert_eq!(kube.subject_access_reviews().len(), 1);
        clock.advance(Duration::from_secs(1));
        kube.set_review("bob", true, "");
        assert_eq!(authz.authorize(&bob, &pods_star()).await, Decision::Allow);
        assert_eq!(kube.subject_access_reviews().len(), 2);
    }

    #[tokio::test]
    async fn review_failure_is_unavailable_and_not_cached() {
        let s = setup();
        s.kube.set_review("hpa", true, "");
        s.kube
            .fail_subject_access_reviews(Some(KubeError::Transport {
                reason: "connection refused".into(),
            }));
        let hpa = user("hpa", &[]);
        assert_eq!(
            s.authz.authorize(&hpa, &pods_star()).await,
            Decision::Unavailable(
                "subject access review: kube-apiserver request failed: connection refused".into()
            )
        );
        assert_eq!(decisions(&s.metrics, "unavailable"), 1);
        s.kube.fail_subject_access_reviews(None);
        assert_eq!(s.authz.authorize(&hpa, &pods_star()).await, Decision::Allow);
        assert_eq!(s.kube.subject_access_reviews().len(), 2);
    }
}
