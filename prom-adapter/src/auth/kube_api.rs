//! What authentication and authorization need from kube-apiserver, behind [`KubeAuthApi`]:
//! `TokenReview`, `SubjectAccessReview`, and the `extension-apiserver-authentication`
//! ConfigMap. [`KubeAuth`] does it with kube-rs; [`FakeKube`] answers from memory for tests.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::kube_client::{self, ClientError, flatten};
use k8s_openapi::api::authentication::v1 as authn;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    SubjectAccessReviewStatus,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::PostParams;

use super::{Attributes, UserInfo};

/// Where kube-apiserver publishes how to authenticate its front proxy and its clients.
pub const CONFIG_MAP_NAMESPACE: &str = "kube-system";
/// See [`CONFIG_MAP_NAMESPACE`].
pub const CONFIG_MAP_NAME: &str = "extension-apiserver-authentication";
/// How long one call to kube-apiserver may take, retries included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a call to kube-apiserver failed, or a client for it could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeError {
    /// No client: a kubeconfig or the in-cluster configuration could not be used.
    #[error(transparent)]
    Config(#[from] ClientError),
    /// kube-apiserver could not be reached, or its answer could not be read.
    #[error("kube-apiserver request failed: {reason}")]
    Transport {
        /// The error chain, flattened.
        reason: String,
    },
    /// No answer within [`REQUEST_TIMEOUT`].
    #[error("kube-apiserver did not answer within {after:?}")]
    Timeout {
        /// How long we waited.
        after: Duration,
    },
    /// kube-apiserver answered with a `Status` error, e.g. 403 when the adapter's service
    /// account lacks `system:auth-delegator`.
    #[error("kube-apiserver answered {code} {reason}: {message}")]
    Api {
        /// HTTP status code.
        code: u16,
        /// The `Status.reason` (`Forbidden`).
        reason: String,
        /// The `Status.message`.
        message: String,
    },
}

impl KubeError {
    fn from_kube(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(status) => KubeError::Api {
                code: status.code,
                reason: status.reason,
                message: status.message,
            },
            other => KubeError::Transport {
                reason: flatten(&other),
            },
        }
    }
}

/// What authentication and authorization ask kube-apiserver. Implemented by [`KubeAuth`] and
/// [`FakeKube`].
pub trait KubeAuthApi: Send + Sync + 'static {
    /// `POST /apis/authentication.k8s.io/v1/tokenreviews` for `token`.
    fn token_review(
        &self,
        token: &str,
    ) -> impl Future<Output = Result<TokenReviewStatus, KubeError>> + Send;

    /// `POST /apis/authorization.k8s.io/v1/subjectaccessreviews`: may `user` do `attrs`?
    fn subject_access_review(
        &self,
        user: &UserInfo,
        attrs: &Attributes,
    ) -> impl Future<Output = Result<SubjectAccessReviewStatus, KubeError>> + Send;

    /// The data of ConfigMap `kube-system/extension-apiserver-authentication`; `None` when it
    /// does not exist.
    fn authentication_config_map(
        &self,
    ) -> impl Future<Output = Result<Option<BTreeMap<String, String>>, KubeError>> + Send;
}

/// Shared ownership: a test can keep one `Arc` to a [`FakeKube`] and hand another out.
impl<T: KubeAuthApi> KubeAuthApi for Arc<T> {
    fn token_review(
        &self,
        token: &str,
    ) -> impl Future<Output = Result<TokenReviewStatus, KubeError>> + Send {
        T::token_review(self, token)
    }

    fn subject_access_review(
        &self,
        user: &UserInfo,
        attrs: &Attributes,
    ) -> impl Future<Output = Result<SubjectAccessReviewStatus, KubeError>> + Send {
        T::subject_access_review(self, user, attrs)
    }

    fn authentication_config_map(
        &self,
    ) -> impl Future<Output = Result<Option<BTreeMap<String, String>>, KubeError>> + Send {
        T::authentication_config_map(self)
    }
}

/// `Some(s)` unless `s` is empty: Go's `omitempty`.
fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// The review `k8s.io/apiserver`'s webhook authorizer sends for `user` doing `attrs`: empty
/// fields left out, as Go's `omitempty` does.
pub fn subject_access_review_spec(user: &UserInfo, attrs: &Attributes) -> SubjectAccessReviewSpec {
    let (resource_attributes, non_resource_attributes) = match attrs {
        Attributes::Resource {
            verb,
            group,
            version,
            resource,
            subresource,
            namespace,
            name,
        } => (
            Some(ResourceAttributes {
                namespace: non_empty(namespace),
                verb: non_empty(verb),
                group: non_empty(group),
                version: non_empty(version),
                resource: non_empty(resource),
                subresource: non_empty(subresource),
                name: non_empty(name),
                ..ResourceAttributes::default()
            }),
            None,
        ),
        Attributes::NonResource { verb, path } => (
            None,
            Some(NonResourceAttributes {
                path: non_empty(path),
                verb: non_empty(verb),
            }),
        ),
    };
    SubjectAccessReviewSpec {
        user: non_empty(&user.name),
        uid: non_empty(&user.uid),
        groups: (!user.groups.is_empty()).then(|| user.groups.clone()),
        extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
        resource_attributes,
        non_resource_attributes,
    }
}

/// The user a `TokenReview` status names, in our terms.
pub(crate) fn user_from_review(user: Option<authn::UserInfo>) -> UserInfo {
    let user = user.unwrap_or_default();
    UserInfo {
        name: user.username.unwrap_or_default(),
        uid: user.uid.unwrap_or_default(),
        groups: user.groups.unwrap_or_default(),
        extra: user.extra.unwrap_or_default(),
    }
}

/// kube-rs clients for kube-apiserver: one for authentication (`TokenReview`, the ConfigMap)
/// and one for authorization (`SubjectAccessReview`), as `--authentication-kubeconfig` and
/// `--authorization-kubeconfig` choose them. Every call is bounded by [`REQUEST_TIMEOUT`].
#[derive(Clone)]
pub struct KubeAuth {
    authn: kube::Client,
    authz: kube::Client,
}

impl fmt::Debug for KubeAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeAuth").finish_non_exhaustive()
    }
}

impl KubeAuth {
    /// Clients from the given kubeconfig files; where one is not given, the in-cluster
    /// configuration when running in a pod (`KUBERNETES_SERVICE_HOST` is set), else the other
    /// file. `Ok(None)` when there is nothing to connect with (neither file, not in a pod).
    pub async fn new(
        authentication_kubeconfig: Option<&Path>,
        authorization_kubeconfig: Option<&Path>,
    ) -> Result<Option<KubeAuth>, KubeError> {
        let authn = match authentication_kubeconfig {
            Some(path) => Some(from_kubeconfig(path).await?),
            None => None,
        };
        let authz = match authorization_kubeconfig {
            Some(path) => Some(from_kubeconfig(path).await?),
            None => None,
        };
        let in_cluster = kube_client::in_cluster();
        let (authn, authz) = match (authn, authz) {
            (Some(authn), Some(authz)) => (authn, authz),
            (authn, authz) if in_cluster => {
                let client = client(kube_client::incluster()?)?;
                (
                    authn.unwrap_or_else(|| client.clone()),
                    authz.unwrap_or(client),
                )
            }
            (Some(one), None) | (None, Some(one)) => (one.clone(), one),
            (None, None) => return Ok(None),
        };
        Ok(Some(KubeAuth { authn, authz }))
    }

    /// Clients from ready-made configurations (timeouts are set on them as in [`KubeAuth::new`]).
    pub fn from_configs(
        authentication: kube::Config,
        authorization: kube::Config,
    ) -> Result<KubeAuth, KubeError> {
        Ok(KubeAuth {
            authn: client(authentication)?,
            authz: client(authorization)?,
        })
    }
}

async fn from_kubeconfig(path: &Path) -> Result<kube::Client, KubeError> {
    client(kube_client::from_kubeconfig(path).await?)
}

fn client(config: kube::Config) -> Result<kube::Client, KubeError> {
    Ok(kube_client::build(
        config,
        REQUEST_TIMEOUT,
        REQUEST_TIMEOUT,
        Some(REQUEST_TIMEOUT),
    )?)
}

/// Runs `call` for at most [`REQUEST_TIMEOUT`].
async fn bounded<T>(call: impl Future<Output = Result<T, kube::Error>>) -> Result<T, KubeError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(result) => result.map_err(KubeError::from_kube),
        Err(_elapsed) => Err(KubeError::Timeout {
            after: REQUEST_TIMEOUT,
        }),
    }
}

impl KubeAuthApi for KubeAuth {
    async fn token_review(&self, token: &str) -> Result<TokenReviewStatus, KubeError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let api = kube::Api::<TokenReview>::all(self.authn.clone());
        let answer = bounded(api.create(&PostParams::default(), &review)).await?;
        Ok(answer.status.unwrap_or_default())
    }

    async fn subject_access_review(
        &self,
        user: &UserInfo,
        attrs: &Attributes,
    ) -> Result<SubjectAccessReviewStatus, KubeError> {
        let review = SubjectAccessReview {
            spec: subject_access_review_spec(user, attrs),
            ..SubjectAccessReview::default()
        };
        let api = kube::Api::<SubjectAccessReview>::all(self.authz.clone());
        let answer = bounded(api.create(&PostParams::default(), &review)).await?;
        Ok(answer.status.unwrap_or_default())
    }

    async fn authentication_config_map(
        &self,
    ) -> Result<Option<BTreeMap<String, String>>, KubeError> {
        let api = kube::Api::<ConfigMap>::namespaced(self.authn.clone(), CONFIG_MAP_NAMESPACE);
        let map = bounded(api.get_opt(CONFIG_MAP_NAME)).await?;
        Ok(map.map(|m| m.data.unwrap_or_default()))
    }
}

/// An in-memory kube-apiserver for tests. Clones share state.
///
/// - `TokenReview`: tokens added with [`FakeKube::add_token`] (or a raw status with
///   [`FakeKube::set_token_status`]) are answered as set; any other token is not
///   authenticated (`error: "invalid bearer token"`).
/// - `SubjectAccessReview`: the answer set for the user's name, else the default answer
///   (not allowed, no reason: what RBAC says when no rule matches).
/// - Failures: [`FakeKube::fail_token_reviews`], [`FakeKube::fail_subject_access_reviews`],
///   [`FakeKube::fail_config_map`] make every such call fail until cleared with `None`.
/// - Calls are counted (tokens are not recorded); reviews record their user and attributes.
#[derive(Debug, Clone, Default)]
pub struct FakeKube {
    state: Arc<Mutex<FakeState>>,
}

#[derive(Debug, Default)]
struct FakeState {
    tokens: HashMap<String, TokenReviewStatus>,
    token_error: Option<KubeError>,
    sar_by_user: HashMap<String, SubjectAccessReviewStatus>,
    sar_default: SubjectAccessReviewStatus,
    sar_error: Option<KubeError>,
    config_map: Option<BTreeMap<String, String>>,
    config_map_error: Option<KubeError>,
    token_reviews: usize,
    reviews: Vec<(UserInfo, Attributes)>,
    config_map_reads: usize,
}

impl FakeKube {
    /// A fake that knows no token, allows nothing, and has no ConfigMap.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        // A panicking test thread must not hide the state from the others.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `token` authenticates as `user`.
    pub fn add_token(&self, token: &str, user: &UserInfo) {
        let status = TokenReviewStatus {
            authenticated: Some(true),
            user: Some(authn::UserInfo {
                username: non_empty(&user.name),
                uid: non_empty(&user.uid),
                groups: Some(user.groups.clone()),
                extra: Some(user.extra.clone()),
            }),
            ..TokenReviewStatus::default()
        };
        self.set_token_status(token, status);
    }

    /// The status a review of `token` answers.
    pub fn set_token_status(&self, token: &str, status: TokenReviewStatus) {
        self.state().tokens.insert(token.to_owned(), status);
    }

    /// Makes every `TokenReview` fail with `error` (`None`: answer again).
    pub fn fail_token_reviews(&self, error: Option<KubeError>) {
        self.state().token_error = error;
    }

    /// The `SubjectAccessReview` answer for the user named `user`.
    pub fn set_review(&self, user: &str, allowed: bool, reason: &str) {
        self.state()
            .sar_by_user
            .insert(user.to_owned(), review_status(allowed, reason));
    }

    /// The answer for users without one of their own.
    pub fn set_default_review(&self, allowed: bool, reason: &str) {
        self.state().sar_default = review_status(allowed, reason);
    }

    /// Makes every `SubjectAccessReview` fail with `error` (`None`: answer again).
    pub fn fail_subject_access_reviews(&self, error: Option<KubeError>) {
        self.state().sar_error = error;
    }

    /// The ConfigMap's data (`None`: it does not exist).
    pub fn set_config_map(&self, data: Option<BTreeMap<String, String>>) {
        self.state().config_map = data;
    }

    /// Makes reading the ConfigMap fail with `error` (`None`: answer again).
    pub fn fail_config_map(&self, error: Option<KubeError>) {
        self.state().config_map_error = error;
    }

    /// How many `TokenReview`s were asked for, failed ones included.
    pub fn token_reviews(&self) -> usize {
        self.state().token_reviews
    }

    /// Every `SubjectAccessReview` asked for, failed ones included, in order.
    pub fn subject_access_reviews(&self) -> Vec<(UserInfo, Attributes)> {
        self.state().reviews.clone()
    }

    /// How many times the ConfigMap was read, failed reads included.
    pub fn config_map_reads(&self) -> usize {
        self.state().config_map_reads
    }
}

fn review_status(allowed: bool, reason: &str) -> SubjectAccessReviewStatus {
    SubjectAccessReviewStatus {
        allowed,
        denied: Some(!allowed),
        reason: non_empty(reason),
        evaluation_error: None,
    }
}

impl KubeAuthApi for FakeKube {
    async fn token_review(&self, token: &str) -> Result<TokenReviewStatus, KubeError> {
        let mut state = self.state();
        state.token_reviews += 1;
        if let Some(e) = &state.token_error {
            return Err(e.clone());
        }
        Ok(state
            .tokens
            .get(token)
            .cloned()
            .unwrap_or_else(|| TokenReviewStatus {
                authenticated: Some(false),
                error: Some("invalid bearer token".to_owned()),
                ..TokenReviewStatus::default()
            }))
    }

    async fn subject_access_review(
        &self,
        user: &UserInfo,
        attrs: &Attributes,
    ) -> Result<SubjectAccessReviewStatus, KubeError> {
        let mut state = self.state();
        state.reviews.push((user.clone(), attrs.clone()));
        if let Some(e) = &state.sar_error {
            return Err(e.clone());
        }
        Ok(state
            .sar_by_user
            .get(&user.name)
            .unwrap_or(&state.sar_default)
            .clone())
    }

    async fn authentication_config_map(
        &self,
    ) -> Result<Option<BTreeMap<String, String>>, KubeError> {
        let mut state = self.state();
        state.config_map_reads += 1;
        if let Some(e) = &state.config_map_error {
            return Err(e.clone());
        }
        Ok(state.config_map.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bob() -> UserInfo {
        UserInfo {
            name: "bob".into(),
            uid: "42".into(),
            groups: vec!["dev".into(), "system:authenticated".into()],
            extra: BTreeMap::from([("scopes".into(), vec!["a".into(), "b".into()])]),
        }
    }

    #[test]
    fn review_spec_golden_resource() {
        let attrs = super::super::attributes(
            "GET",
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/http_requests",
            None,
        );
        let spec = serde_json::to_value(subject_access_review_spec(&bob(), &attrs)).unwrap();
        assert_eq!(
            spec,
            json!({
                "user": "bob", "uid": "42", "groups": ["dev", "system:authenticated"],
                "extra": {"scopes": ["a", "b"]},
                "resourceAttributes": {
                    "namespace": "default", "verb": "get", "group": "custom.metrics.k8s.io",
                    "version": "v1beta2", "resource": "pods", "subresource": "http_requests",
                    "name": "*"
                }
            })
        );
    }

    #[test]
    fn review_spec_golden_omits_empty_fields() {
        let user = UserInfo {
            name: "system:kube-aggregator".into(),
            ..UserInfo::default()
        };
        let attrs = super::super::attributes(
            "GET",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/ns/queue",
            None,
        );
        assert_eq!(
            serde_json::to_value(subject_access_review_spec(&user, &attrs)).unwrap(),
            json!({
                "user": "system:kube-aggregator",
                "resourceAttributes": {
                    "namespace": "ns", "verb": "list", "group": "external.metrics.k8s.io",
                    "version": "v1beta1", "resource": "queue"
                }
            })
        );
        let attrs = super::super::attributes("GET", "/metrics", None);
        assert_eq!(
            serde_json::to_value(subject_access_review_spec(&user, &attrs)).unwrap(),
            json!({
                "user": "system:kube-aggregator",
                "nonResourceAttributes": {"path": "/metrics", "verb": "get"}
            })
        );
    }

    #[test]
    fn token_review_user_converts() {
        let status: TokenReviewStatus = serde_json::from_value(json!({
            "authenticated": true,
            "user": {
                "username": "system:serviceaccount:monitoring:prometheus",
                "uid": "u-1",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:monitoring"],
                "extra": {"authentication.kubernetes.io/pod-name": ["prometheus-0"]}
            }
        }))
        .unwrap();
        let user = user_from_review(status.user);
        assert_eq!(user.name, "system:serviceaccount:monitoring:prometheus");
        assert_eq!(user.uid, "u-1");
        assert_eq!(user.groups.len(), 2);
        assert_eq!(
            user.extra["authentication.kubernetes.io/pod-name"],
            vec!["prometheus-0".to_owned()]
        );
        assert_eq!(user_from_review(None), UserInfo::default());
    }

    #[tokio::test]
    async fn fake_answers_as_set_and_counts() {
        let kube = FakeKube::new();
        kube.add_token("t1", &bob());
        let status = kube.token_review("t1").await.unwrap();
        assert_eq!(status.authenticated, Some(true));
        assert_eq!(user_from_review(status.user), bob());
        let status = kube.token_review("nope").await.unwrap();
        assert_eq!(status.authenticated, Some(false));
        kube.fail_token_reviews(Some(KubeError::Timeout {
            after: REQUEST_TIMEOUT,
        }));
        assert!(kube.token_review("t1").await.is_err());
        assert_eq!(kube.token_reviews(), 3);

        let attrs = super::super::attributes("GET", "/metrics", None);
        assert!(
            !kube
                .subject_access_review(&bob(), &attrs)
                .await
                .unwrap()
                .allowed
        );
        kube.set_review("bob", true, "");
        assert!(
            kube.subject_access_review(&bob(), &attrs)
                .await
                .unwrap()
                .allowed
        );
        assert_eq!(kube.subject_access_reviews().len(), 2);

        assert_eq!(kube.authentication_config_map().await.unwrap(), None);
        kube.set_config_map(Some(BTreeMap::new()));
        assert_eq!(
            kube.authentication_config_map().await.unwrap(),
            Some(BTreeMap::new())
        );
        assert_eq!(kube.config_map_reads(), 2);
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            KubeError::Api {
                code: 403,
                reason: "Forbidden".into(),
                message: "tokenreviews.authentication.k8s.io is forbidden".into(),
            }
            .to_string(),
            "kube-apiserver answered 403 Forbidden: tokenreviews.authentication.k8s.io is \
             forbidden"
        );
        assert_eq!(
            KubeError::Timeout {
                after: REQUEST_TIMEOUT
            }
            .to_string(),
            "kube-apiserver did not answer within 5s"
        );
    }

    #[tokio::test]
    async fn kubeconfig_errors_name_the_file() {
        let err = KubeAuth::new(Some(Path::new("/nonexistent/kubeconfig")), None)
            .await
            .unwrap_err();
        let KubeError::Config(ClientError::Kubeconfig { path, .. }) = &err else {
            panic!("{err}");
        };
        assert_eq!(path, Path::new("/nonexistent/kubeconfig"));
    }

    #[tokio::test]
    async fn a_kubeconfig_builds_both_clients() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: \
             https://127.0.0.1:1\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: \
             u\ncurrent-context: x\nusers:\n- name: u\n  user:\n    token: abc\n",
        )
        .unwrap();
        let kube = KubeAuth::new(Some(&path), Some(&path)).await.unwrap();
        let kube = kube.expect("a kubeconfig gives clients");
        // Nothing listens on port 1: a transport error, not a hang or a panic.
        let err = kube.token_review("t").await.unwrap_err();
        assert!(matches!(err, KubeError::Transport { .. }), "{err}");
    }
}
