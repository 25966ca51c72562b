//! Who is calling: `k8s.io/apiserver`'s delegating authenticator.
//!
//! In Kubernetes' order, the first that succeeds wins:
//! 1. **Front proxy** (`requestheader`): the client certificate chains to the front-proxy CA
//!    and its CN is allowed; the user comes from the `X-Remote-*` headers. A valid front-proxy
//!    certificate without a user name header falls through to the next step.
//! 2. **x509**: the client certificate chains to the client CA; user = CN, groups = O.
//! 3. **Bearer token**: `Authorization: Bearer …`, reviewed by kube-apiserver (`TokenReview`)
//!    and cached.
//!
//! `X-Remote-*` headers are read only in step 1, so no other client can claim an identity
//! with them. Every authenticated user gets the group `system:authenticated`.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use common::http::ConnInfo;
use common::tls::ClientCa;
use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;
use tokio_util::sync::CancellationToken;

use super::cache::{Clock, TtlCache};
use super::extension::{self, AuthConfigError};
use super::kube_api::{KubeAuthApi, user_from_review};
use super::metrics::{AuthMetrics, Method};
use super::{ALL_AUTHENTICATED, ALL_UNAUTHENTICATED, ANONYMOUS, Decision, UserInfo};

/// kube-apiserver's default `--requestheader-username-headers`.
pub const DEFAULT_USERNAME_HEADERS: &[&str] = &["X-Remote-User"];
/// kube-apiserver's default `--requestheader-group-headers`.
pub const DEFAULT_GROUP_HEADERS: &[&str] = &["X-Remote-Group"];
/// kube-apiserver's default `--requestheader-extra-headers-prefix`.
pub const DEFAULT_EXTRA_PREFIXES: &[&str] = &["X-Remote-Extra-"];
/// How many reviewed tokens are remembered at most.
const TOKEN_CACHE_CAPACITY: usize = 4096;

/// How to trust kube-apiserver's front proxy: `--requestheader-*`.
#[derive(Debug, Clone)]
pub struct RequestHeaderConfig {
    /// The CA that signs the front proxy's client certificate.
    pub ca: ClientCa,
    /// The common names the front-proxy certificate may have; empty allows any.
    pub allowed_names: Vec<String>,
    /// Headers to take the user name from; the first non-empty one wins.
    pub username_headers: Vec<String>,
    /// Headers to take groups from; every value of every one counts.
    pub group_headers: Vec<String>,
    /// Prefixes of headers that carry extras: `<prefix><key>: <value>`.
    pub extra_prefixes: Vec<String>,
    /// Headers to take the UID from (`X-Remote-Uid` where kube-apiserver sends it).
    pub uid_headers: Vec<String>,
}

impl RequestHeaderConfig {
    /// Kubernetes' defaults for the names and headers: any CN, `X-Remote-User`,
    /// `X-Remote-Group`, `X-Remote-Extra-`, no UID header.
    pub fn new(ca: ClientCa) -> Self {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Self {
            ca,
            allowed_names: Vec::new(),
            username_headers: owned(DEFAULT_USERNAME_HEADERS),
            group_headers: owned(DEFAULT_GROUP_HEADERS),
            extra_prefixes: owned(DEFAULT_EXTRA_PREFIXES),
            uid_headers: Vec::new(),
        }
    }

    /// Whether a verified front-proxy certificate with common name `cn` may act as the proxy.
    fn allows(&self, cn: Option<&str>) -> bool {
        self.allowed_names.is_empty()
            || self
                .allowed_names
                .iter()
                .any(|allowed| Some(allowed.as_str()) == cn)
    }

    /// The user the headers name; `None` without a user name.
    fn user(&self, headers: &HeaderMap) -> Option<UserInfo> {
        let name = first_value(headers, &self.username_headers)?;
        Some(UserInfo {
            name,
            uid: first_value(headers, &self.uid_headers).unwrap_or_default(),
            groups: all_values(headers, &self.group_headers),
            extra: extras(headers, &self.extra_prefixes),
        })
    }
}

/// What authentication trusts. Replaceable at runtime ([`Authenticator::set_config`]) since
/// the CAs and headers can come from a ConfigMap that changes.
#[derive(Debug, Clone)]
pub struct AuthnConfig {
    /// The front proxy; `None` disables front-proxy authentication.
    pub requestheader: Option<RequestHeaderConfig>,
    /// `--client-ca-file`; `None` disables x509 client-certificate authentication.
    pub client_ca: Option<ClientCa>,
    /// How long a successful `TokenReview` is remembered (10s, as
    /// `--authentication-token-webhook-cache-ttl`).
    pub token_cache_ttl: Duration,
    /// How long a failed `TokenReview` is remembered (2s).
    pub negative_token_cache_ttl: Duration,
}

impl Default for AuthnConfig {
    fn default() -> Self {
        Self {
            requestheader: None,
            client_ca: None,
            token_cache_ttl: Duration::from_secs(10),
            negative_token_cache_ttl: Duration::from_secs(2),
        }
    }
}

/// A reviewed token's cache key: two independently keyed hashes of it (128 bits), so the
/// token itself is never stored and a collision cannot be provoked without the keys.
type TokenKey = (u64, u64);

/// Authenticates requests; see the module docs. `K` asks kube-apiserver for `TokenReview`s and
/// the ConfigMap; without it, bearer tokens are not accepted.
pub struct Authenticator<K> {
    config: RwLock<Arc<AuthnConfig>>,
    kube: Option<K>,
    tokens: TtlCache<TokenKey, Result<UserInfo, String>>,
    token_keys: (RandomState, RandomState),
    /// The ConfigMap data last applied by [`Authenticator::reload_from_cluster`].
    applied: Mutex<Option<BTreeMap<String, String>>>,
    metrics: AuthMetrics,
    clock: Clock,
}

impl<K> std::fmt::Debug for Authenticator<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("config", &self.config())
            .field("token_review", &self.kube.is_some())
            .finish_non_exhaustive()
    }
}

impl<K> Authenticator<K> {
    /// An authenticator trusting `config`, reviewing tokens through `kube` when given.
    pub fn new(config: AuthnConfig, kube: Option<K>, metrics: AuthMetrics) -> Self {
        Self {
            config: RwLock::new(Arc::new(config)),
            kube,
            tokens: TtlCache::new(TOKEN_CACHE_CAPACITY),
            token_keys: (RandomState::new(), RandomState::new()),
            applied: Mutex::new(None),
            metrics,
            clock: Clock::default(),
        }
    }

    /// The config in force.
    pub fn config(&self) -> Arc<AuthnConfig> {
        Arc::clone(&self.config.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the config; requests already being authenticated finish with the old one.
    /// Cached token reviews stay (they do not depend on it).
    pub fn set_config(&self, config: AuthnConfig) {
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
    }

    #[cfg(test)]
    fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn token_key(&self, token: &str) -> TokenKey {
        (
            self.token_keys.0.hash_one(token),
            self.token_keys.1.hash_one(token),
        )
    }

    fn authenticated(&self, method: Method, mut user: UserInfo) -> UserInfo {
        self.metrics.authenticated(method);
        add_authenticated_group(&mut user);
        user
    }
}

impl<K: KubeAuthApi> Authenticator<K> {
    /// Who sent a request with `headers` over `conn`. `Err` is
    /// [`Decision::Unauthenticated`] (401) or, when kube-apiserver could not review a token,
    /// [`Decision::Unavailable`] (503).
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        conn: &ConnInfo,
    ) -> Result<UserInfo, Decision> {
        let config = self.config();
        let mut failures: Vec<String> = Vec::new();
        let mut method = Method::None;

        if !conn.client_certs.is_empty() {
            method = Method::X509;
            if let Some(rh) = &config.requestheader {
                match rh.ca.verify(&conn.client_certs) {
                    Ok(client) if rh.allows(client.common_name.as_deref()) => {
                        if let Some(user) = rh.user(headers) {
                            return Ok(self.authenticated(Method::FrontProxy, user));
                        }
                        // A valid proxy certificate without a user: not an error, next method.
                    }
                    Ok(client) => failures.push(format!(
                        "front proxy: subject with cn={} is not in the allowed list",
                        client.common_name.unwrap_or_default()
                    )),
                    Err(e) => failures.push(format!("front proxy: {e}")),
                }
            }
            if let Some(ca) = &config.client_ca {
                match ca.verify(&conn.client_certs) {
                    Ok(client) => {
                        // A certificate without a CN authenticates nobody (Go: no error).
                        if let Some(name) = client.common_name {
                            let user = UserInfo {
                                name,
                                groups: client.organizations,
                                ..UserInfo::default()
                            };
                            return Ok(self.authenticated(Method::X509, user));
                        }
                    }
                    Err(e) => failures.push(format!("x509: {e}")),
                }
            }
        }

        if let Some(token) = bearer_token(headers) {
            method = Method::Token;
            match self.review(token, &config).await {
                Ok(Ok(user)) => return Ok(self.authenticated(Method::Token, user)),
                Ok(Err(reason)) => failures.push(format!("token: {reason}")),
                Err(reason) => {
                    self.metrics.authentication_error(Method::Token);
                    return Err(Decision::Unavailable(reason));
                }
            }
        }

        self.metrics.unauthenticated(method);
        Err(Decision::Unauthenticated(if failures.is_empty() {
            "no credentials".to_owned()
        } else {
            failures.join("; ")
        }))
    }

    /// `Ok(Ok(user))`: authenticated; `Ok(Err(reason))`: not; `Err(reason)`: could not ask.
    async fn review(
        &self,
        token: &str,
        config: &AuthnConfig,
    ) -> Result<Result<UserInfo, String>, String> {
        let Some(kube) = &self.kube else {
            return Ok(Err("no TokenReview client is configured".to_owned()));
        };
        let key = self.token_key(token);
        if let Some(cached) = self.tokens.get(&key, self.clock.now()) {
            self.metrics.cache_hit("token");
            return Ok(cached);
        }
        let status = kube
            .token_review(token)
            .await
            .map_err(|e| format!("token review: {e}"))?;
        let user = user_from_review(status.user);
        let answer = if status.authenticated == Some(true) && !user.name.is_empty() {
            Ok(user)
        } else {
            Err(status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "invalid bearer token".to_owned()))
        };
        let ttl = if answer.is_ok() {
            config.token_cache_ttl
        } else {
            config.negative_token_cache_ttl
        };
        self.tokens
            .insert(key, answer.clone(), ttl, self.clock.now());
        Ok(answer)
    }

    /// Re-reads the `extension-apiserver-authentication` ConfigMap and applies its front-proxy
    /// config and client CA, except where `pinned` (what the operator configured from files)
    /// sets them: those win, as flags do over the ConfigMap in Kubernetes. TTLs come from
    /// `pinned`. `Ok(true)` when something new was applied, `Ok(false)` when the ConfigMap is
    /// unchanged since the last call. On error the config in force stays.
    pub async fn reload_from_cluster(&self, pinned: &AuthnConfig) -> Result<bool, AuthConfigError> {
        let Some(kube) = &self.kube else {
            return Err(AuthConfigError::NoClient);
        };
        let data = kube
            .authentication_config_map()
            .await
            .map_err(AuthConfigError::Fetch)?
            .ok_or(AuthConfigError::Missing)?;
        if self
            .applied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            == Some(&data)
        {
            return Ok(false);
        }
        let (requestheader, client_ca) = extension::from_config_map(&data)?;
        self.set_config(AuthnConfig {
            requestheader: pinned.requestheader.clone().or(requestheader),
            client_ca: pinned.client_ca.clone().or(client_ca),
            ..pinned.clone()
        });
        *self.applied.lock().unwrap_or_else(PoisonError::into_inner) = Some(data);
        Ok(true)
    }

    /// Calls [`Authenticator::reload_from_cluster`] every `every` until `stop`, logging what
    /// happens. Start it after a first successful reload.
    pub async fn reload_loop(&self, pinned: AuthnConfig, every: Duration, stop: CancellationToken) {
        // The caller has read it once at start; the first re-read is one period later.
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match self.reload_from_cluster(&pinned).await {
                Ok(true) => tracing::info!(
                    "Applied a changed kube-system/extension-apiserver-authentication ConfigMap."
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!(
                    error = %e,
                    "Cannot reload the authentication ConfigMap; keeping the current config."
                ),
            }
        }
    }
}

/// Adds `system:authenticated` unless the user is anonymous or already in it (or in
/// `system:unauthenticated`), as `AuthenticatedGroupAdder` does.
fn add_authenticated_group(user: &mut UserInfo) {
    if user.name == ANONYMOUS
        || user
            .groups
            .iter()
            .any(|g| g == ALL_AUTHENTICATED || g == ALL_UNAUTHENTICATED)
    {
        return;
    }
    user.groups.push(ALL_AUTHENTICATED.to_owned());
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive), as Go's
/// `bearertoken` authenticator reads it; `None` for other schemes or an empty token.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let mut parts = value.splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn text(value: &hyper::header::HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

/// The first value of the first header in `names` that has a non-empty one (Go's
/// `headerValue`).
fn first_value(headers: &HeaderMap, names: &[String]) -> Option<String> {
    names
        .iter()
        .filter_map(|name| headers.get(name.as_str()))
        .map(text)
        .find(|v| !v.is_empty())
}

/// Every non-empty value of every header in `names`, in order (Go's `allHeaderValues`).
fn all_values(headers: &HeaderMap, names: &[String]) -> Vec<String> {
    names
        .iter()
        .flat_map(|name| headers.get_all(name.as_str()))
        .map(text)
        .filter(|v| !v.is_empty())
        .collect()
}

/// Extras from `<prefix><key>` headers: the key lower-cased, then `%`-unescaped (kept as-is
/// when the escapes are malformed), every value kept (Go's `newExtra`).
fn extras(headers: &HeaderMap, prefixes: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for prefix in prefixes {
        let prefix = prefix.to_ascii_lowercase();
        // Header names are lower-case in a `HeaderMap`.
        for name in headers.keys() {
            let Some(key) = name.as_str().strip_prefix(prefix.as_str()) else {
                continue;
            };
            let key = path_unescape(key).unwrap_or_else(|| key.to_owned());
            extra
                .entry(key)
                .or_default()
                .extend(headers.get_all(name).iter().map(text));
        }
    }
    extra
}

/// Go's `url.PathUnescape`: `None` on a malformed escape or a result that is not UTF-8.
fn path_unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = |j: usize| bytes.get(j).and_then(|c| char::from(*c).to_digit(16));
            let (h, l) = (hex(i + 1)?, hex(i + 2)?);
            out.push(u8::try_from(h * 16 + l).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::kube_api::{FakeKube, KubeError};
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;

    fn pem_ca(pem: &str) -> ClientCa {
        ClientCa::from_pem(pem.as_bytes(), "test").unwrap()
    }

    fn front_proxy_ca() -> ClientCa {
        pem_ca(include_str!("testdata/front-proxy-ca.pem"))
    }

    fn client_ca() -> ClientCa {
        pem_ca(include_str!("testdata/client-ca.pem"))
    }

    fn conn(pem: Option<&str>) -> ConnInfo {
        ConnInfo {
            peer: "127.0.0.1:50000".parse().unwrap(),
            alpn: None,
            client_certs: pem
                .map(|p| vec![CertificateDer::from_pem_slice(p.as_bytes()).unwrap()])
                .unwrap_or_default(),
        }
    }

    const FRONT_PROXY_CLIENT: &str = include_str!("testdata/front-proxy-client.pem");
    const OTHER_PROXY: &str = include_str!("testdata/other-proxy.pem");
    const ALICE: &str = include_str!("testdata/alice.pem");
    const NO_CN: &str = include_str!("testdata/no-cn.pem");
    const MALLORY: &str = include_str!("testdata/mallory.pem");

    fn config() -> AuthnConfig {
        let mut rh = RequestHeaderConfig::new(front_proxy_ca());
        rh.allowed_names = vec!["front-proxy-client".into()];
        rh.uid_headers = vec!["X-Remote-Uid".into()];
        AuthnConfig {
            requestheader: Some(rh),
            client_ca: Some(client_ca()),
            ..AuthnConfig::default()
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    const AGGREGATED: &[(&str, &str)] = &[
        (
            "X-Remote-User",
            "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
        ),
        ("X-Remote-Uid", "uid-1"),
        ("X-Remote-Group", "system:serviceaccounts"),
        ("X-Remote-Group", "system:serviceaccounts:kube-system"),
        ("X-Remote-Group", ""),
        (
            "X-Remote-Extra-Authentication.kubernetes.io%2fpod-name",
            "hpa-0",
        ),
        ("x-remote-extra-scopes", "a"),
        ("X-Remote-Extra-Scopes", "b"),
        ("X-Remote-Extra-Bad%zz", "c"),
    ];

    struct Setup {
        authn: Authenticator<FakeKube>,
        kube: FakeKube,
        metrics: AuthMetrics,
        clock: Clock,
    }

    fn setup(config: AuthnConfig) -> Setup {
        let kube = FakeKube::new();
        let metrics = AuthMetrics::new();
        let clock = Clock::manual();
        let authn = Authenticator::new(config, Some(kube.clone()), metrics.clone())
            .with_clock(clock.clone());
        Setup {
            authn,
            kube,
            metrics,
            clock,
        }
    }

    fn count(metrics: &AuthMetrics, method: &str, result: &str) -> u64 {
        metrics
            .authentication
            .with_label_values(&[method, result])
            .get()
    }

    #[tokio::test]
    async fn front_proxy_headers_make_the_user() {
        let s = setup(config());
        let user = s
            .authn
            .authenticate(&headers(AGGREGATED), &conn(Some(FRONT_PROXY_CLIENT)))
            .await
            .unwrap();
        assert_eq!(
            user,
            UserInfo {
                name: "system:serviceaccount:kube-system:horizontal-pod-autoscaler".into(),
                uid: "uid-1".into(),
                groups: vec![
                    "system:serviceaccounts".into(),
                    "system:serviceaccounts:kube-system".into(),
                    "system:authenticated".into(),
                ],
                extra: BTreeMap::from([
                    (
                        "authentication.kubernetes.io/pod-name".into(),
                        vec!["hpa-0".into()]
                    ),
                    ("bad%zz".into(), vec!["c".into()]),
                    ("scopes".into(), vec!["a".into(), "b".into()]),
                ]),
            }
        );
        assert_eq!(count(&s.metrics, "front_proxy", "authenticated"), 1);
        assert_eq!(s.kube.token_reviews(), 0);
    }

    #[tokio::test]
    async fn first_non_empty_username_header_wins() {
        let mut config = config();
        if let Some(rh) = config.requestheader.as_mut() {
            rh.username_headers = vec!["X-Remote-User".into(), "X-Other-User".into()];
            rh.allowed_names.clear();
        }
        let s = setup(config);
        let user = s
            .authn
            .authenticate(
                &headers(&[("X-Remote-User", ""), ("X-Other-User", "carol")]),
                // Any CN is allowed when the list is empty.
                &conn(Some(OTHER_PROXY)),
            )
            .await
            .unwrap();
        assert_eq!(user.name, "carol");
        assert_eq!(user.groups, ["system:authenticated"]);
    }

    #[tokio::test]
    async fn headers_without_a_front_proxy_certificate_are_ignored() {
        let s = setup(config());
        // No certificate at all.
        let err = s
            .authn
            .authenticate(&headers(AGGREGATED), &conn(None))
            .await
            .unwrap_err();
        assert_eq!(err, Decision::Unauthenticated("no credentials".into()));
        // A certificate of the client CA: the CN counts, the headers don't.
        let user = s
            .authn
            .authenticate(&headers(AGGREGATED), &conn(Some(ALICE)))
            .await
            .unwrap();
        assert_eq!(user.name, "alice");
        assert!(user.extra.is_empty());
        // A certificate with the proxy's CN from another CA.
        let err = s
            .authn
            .authenticate(&headers(AGGREGATED), &conn(Some(MALLORY)))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Decision::Unauthenticated(m) if m.contains("unknown authority")),
            "{err:?}"
        );
        assert_eq!(count(&s.metrics, "x509", "unauthenticated"), 1);
        assert_eq!(count(&s.metrics, "none", "unauthenticated"), 1);
    }

    #[tokio::test]
    async fn front_proxy_cn_must_be_allowed() {
        let s = setup(config());
        let err = s
            .authn
            .authenticate(&headers(AGGREGATED), &conn(Some(OTHER_PROXY)))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Decision::Unauthenticated(m)
                if m.contains("subject with cn=other-proxy is not in the allowed list")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn front_proxy_certificate_without_user_falls_through() {
        let s = setup(config());
        s.kube.add_token(
            "t0k3n",
            &UserInfo {
                name: "prometheus".into(),
                ..UserInfo::default()
            },
        );
        let user = s
            .authn
            .authenticate(
                &headers(&[("Authorization", "Bearer t0k3n")]),
                &conn(Some(FRONT_PROXY_CLIENT)),
            )
            .await
            .unwrap();
        assert_eq!(user.name, "prometheus");
        // Without a token: nothing authenticates, and no failure is invented for the proxy.
        let err = s
            .authn
            .authenticate(&HeaderMap::new(), &conn(Some(FRONT_PROXY_CLIENT)))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Decision::Unauthenticated(m) if m.starts_with("x509: ")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn x509_user_is_cn_and_groups_are_o() {
        let s = setup(AuthnConfig {
            requestheader: None,
            ..config()
        });
        let user = s
            .authn
            .authenticate(&HeaderMap::new(), &conn(Some(ALICE)))
            .await
            .unwrap();
        assert_eq!(user.name, "alice");
        assert_eq!(user.groups, ["dev", "ops", "system:authenticated"]);
        assert_eq!(count(&s.metrics, "x509", "authenticated"), 1);
        // No CN: nobody.
        assert!(
            s.authn
                .authenticate(&HeaderMap::new(), &conn(Some(NO_CN)))
                .await
                .is_err()
        );
        // Without a client CA, client certificates authenticate nobody.
        s.authn.set_config(AuthnConfig::default());
        assert!(
            s.authn
                .authenticate(&HeaderMap::new(), &conn(Some(ALICE)))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn config_can_be_replaced_at_runtime() {
        let s = setup(AuthnConfig::default());
        let req = headers(AGGREGATED);
        let proxy = conn(Some(FRONT_PROXY_CLIENT));
        assert!(s.authn.authenticate(&req, &proxy).await.is_err());
        s.authn.set_config(config());
        assert!(s.authn.authenticate(&req, &proxy).await.is_ok());
    }

    #[tokio::test]
    async fn token_reviews_are_cached_for_the_ttl() {
        let s = setup(config());
        s.kube.add_token(
            "good",
            &UserInfo {
                name: "system:serviceaccount:monitoring:prometheus".into(),
                groups: vec!["system:serviceaccounts".into()],
                ..UserInfo::default()
            },
        );
        let req = headers(&[("Authorization", "bearer good")]);
        for _ in 0..3 {
            let user = s.authn.authenticate(&req, &conn(None)).await.unwrap();
            assert_eq!(
                user.groups,
                ["system:serviceaccounts", "system:authenticated"]
            );
        }
        assert_eq!(s.kube.token_reviews(), 1);
        assert_eq!(s.metrics.cache_hits.with_label_values(&["token"]).get(), 2);
        s.clock.advance(Duration::from_millis(9_999));
        s.authn.authenticate(&req, &conn(None)).await.unwrap();
        assert_eq!(s.kube.token_reviews(), 1);
        s.clock.advance(Duration::from_millis(1));
        s.authn.authenticate(&req, &conn(None)).await.unwrap();
        assert_eq!(s.kube.token_reviews(), 2);
        assert_eq!(count(&s.metrics, "token", "authenticated"), 5);
    }

    #[tokio::test]
    async fn rejected_tokens_are_cached_for_the_negative_ttl() {
        let s = setup(config());
        let req = headers(&[("Authorization", "Bearer bad")]);
        for _ in 0..2 {
            let err = s.authn.authenticate(&req, &conn(None)).await.unwrap_err();
            assert_eq!(
                err,
                Decision::Unauthenticated("token: invalid bearer token".into())
            );
        }
        assert_eq!(s.kube.token_reviews(), 1);
        s.clock.advance(Duration::from_secs(2));
        s.authn.authenticate(&req, &conn(None)).await.unwrap_err();
        assert_eq!(s.kube.token_reviews(), 2);
        // A token that turns good is seen once the negative entry expired.
        s.kube.add_token(
            "bad",
            &UserInfo {
                name: "x".into(),
                ..UserInfo::default()
            },
        );
        s.clock.advance(Duration::from_secs(2));
        assert!(s.authn.authenticate(&req, &conn(None)).await.is_ok());
        assert_eq!(count(&s.metrics, "token", "unauthenticated"), 3);
    }

    #[tokio::test]
    async fn token_review_failure_is_unavailable_and_not_cached() {
        let s = setup(config());
        s.kube.add_token(
            "good",
            &UserInfo {
                name: "p".into(),
                ..UserInfo::default()
            },
        );
        s.kube.fail_token_reviews(Some(KubeError::Timeout {
            after: Duration::from_secs(5),
        }));
        let req = headers(&[("Authorization", "Bearer good")]);
        let err = s.authn.authenticate(&req, &conn(None)).await.unwrap_err();
        assert_eq!(
            err,
            Decision::Unavailable("token review: kube-apiserver did not answer within 5s".into())
        );
        assert_eq!(count(&s.metrics, "token", "error"), 1);
        s.kube.fail_token_reviews(None);
        assert!(s.authn.authenticate(&req, &conn(None)).await.is_ok());
        assert_eq!(s.kube.token_reviews(), 2);
    }

    #[tokio::test]
    async fn token_review_answers_without_a_user_are_rejected() {
        let s = setup(config());
        s.kube.set_token_status(
            "odd",
            k8s_openapi::api::authentication::v1::TokenReviewStatus {
                authenticated: Some(true),
                ..Default::default()
            },
        );
        s.kube.set_token_status(
            "expired",
            k8s_openapi::api::authentication::v1::TokenReviewStatus {
                authenticated: Some(false),
                error: Some("[invalid bearer token, token has expired]".into()),
                ..Default::default()
            },
        );
        let req = |t: &str| headers(&[("Authorization", &format!("Bearer {t}"))]);
        assert!(
            s.authn
                .authenticate(&req("odd"), &conn(None))
                .await
                .is_err()
        );
        assert_eq!(
            s.authn
                .authenticate(&req("expired"), &conn(None))
                .await
                .unwrap_err(),
            Decision::Unauthenticated("token: [invalid bearer token, token has expired]".into())
        );
    }

    #[tokio::test]
    async fn without_a_kube_client_tokens_authenticate_nobody() {
        let authn: Authenticator<FakeKube> = Authenticator::new(config(), None, AuthMetrics::new());
        assert!(matches!(
            authn.reload_from_cluster(&AuthnConfig::default()).await,
            Err(AuthConfigError::NoClient)
        ));
        let err = authn
            .authenticate(&headers(&[("Authorization", "Bearer t")]), &conn(None))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            Decision::Unauthenticated("token: no TokenReview client is configured".into())
        );
    }

    #[test]
    fn bearer_token_parsing_follows_go() {
        for (value, token) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER abc", Some("abc")),
            ("  Bearer abc  ", Some("abc")),
            ("Bearer abc extra", Some("abc")),
            ("Bearer  abc", None),
            ("Bearer", None),
            ("Basic YWxhZGRpbjpvcGVuc2VzYW1l", None),
            ("", None),
        ] {
            assert_eq!(
                bearer_token(&headers(&[("Authorization", value)])),
                token,
                "{value:?}"
            );
        }
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn authenticated_group_is_added_once() {
        let mut user = UserInfo {
            name: "a".into(),
            groups: vec!["system:authenticated".into()],
            ..UserInfo::default()
        };
        add_authenticated_group(&mut user);
        assert_eq!(user.groups, ["system:authenticated"]);
        let mut anonymous = UserInfo {
            name: ANONYMOUS.into(),
            ..UserInfo::default()
        };
        add_authenticated_group(&mut anonymous);
        assert!(anonymous.groups.is_empty());
    }

    #[test]
    fn path_unescape_matches_go() {
        assert_eq!(path_unescape("a%2fb").as_deref(), Some("a/b"));
        assert_eq!(path_unescape("plain").as_deref(), Some("plain"));
        assert_eq!(path_unescape("%zz"), None);
        assert_eq!(path_unescape("trailing%"), None);
        assert_eq!(path_unescape("%ff"), None);
    }

    #[tokio::test]
    async fn reload_applies_the_config_map_unless_pinned() {
        let s = setup(AuthnConfig::default());
        let mut data = BTreeMap::from([
            (
                "requestheader-client-ca-file".to_owned(),
                include_str!("testdata/front-proxy-ca.pem").to_owned(),
            ),
            (
                "requestheader-allowed-names".to_owned(),
                r#"["front-proxy-client"]"#.to_owned(),
            ),
        ]);
        assert!(matches!(
            s.authn.reload_from_cluster(&AuthnConfig::default()).await,
            Err(AuthConfigError::Missing)
        ));
        s.kube.set_config_map(Some(data.clone()));
        assert!(
            s.authn
                .reload_from_cluster(&AuthnConfig::default())
                .await
                .unwrap()
        );
        assert!(
            !s.authn
                .reload_from_cluster(&AuthnConfig::default())
                .await
                .unwrap()
        );
        let req = headers(AGGREGATED);
        assert!(
            s.authn
                .authenticate(&req, &conn(Some(FRONT_PROXY_CLIENT)))
                .await
                .is_ok()
        );
        // A broken update keeps the config in force.
        data.insert("requestheader-allowed-names".into(), "nope".into());
        s.kube.set_config_map(Some(data.clone()));
        assert!(
            s.authn
                .reload_from_cluster(&AuthnConfig::default())
                .await
                .is_err()
        );
        assert!(
            s.authn
                .authenticate(&req, &conn(Some(FRONT_PROXY_CLIENT)))
                .await
                .is_ok()
        );
        // A pinned front-proxy config wins over the ConfigMap's.
        data.insert("requestheader-allowed-names".into(), "[]".into());
        s.kube.set_config_map(Some(data));
        let mut pinned_rh = RequestHeaderConfig::new(front_proxy_ca());
        pinned_rh.allowed_names = vec!["someone-else".into()];
        let pinned = AuthnConfig {
            requestheader: Some(pinned_rh),
            ..AuthnConfig::default()
        };
        assert!(s.authn.reload_from_cluster(&pinned).await.unwrap());
        assert!(
            s.authn
                .authenticate(&req, &conn(Some(FRONT_PROXY_CLIENT)))
                .await
                .is_err()
        );
    }
}
