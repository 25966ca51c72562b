//! The `[adapter]` table of `pipeline.toml`. Every field's doc comment is its reference.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::config::ConfigError;
use common::telemetry::LogFormat;
use common::units::Duration as ConfigDuration;
use serde::Deserialize;
use toml::Spanned;

use crate::prom::http::{BasicAuth, ClientConfig, Verb};
use crate::rules::named::NamedQuerySpec;
use crate::rules::resource::ResourceRulesSpec;
use crate::rules::{self, RuleSet, RuleSpec, Warnings};

/// The whole file as the adapter reads it: its own table, the bridge's ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    #[allow(dead_code)]
    version: u32,
    /// Read and validated by statsd-bridge.
    #[serde(default)]
    #[allow(dead_code)]
    bridge: Option<toml::Table>,
    #[serde(default)]
    adapter: AdapterConfig,
}

/// Settings of prom-adapter (`[adapter]` in `pipeline.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdapterConfig {
    /// HTTPS address (`--bind-address` and `--secure-port` override its parts).
    pub listen: Spanned<String>,
    /// Base URL of the Prometheus API; a path prefix (`http://h/prometheus`) is kept.
    pub prometheus_url: Spanned<String>,
    /// `GET` or `POST` (form-encoded; avoids URL length limits with long queries).
    pub prometheus_verb: Spanned<String>,
    /// Per-query timeout, also sent to Prometheus as the `timeout` parameter.
    pub prometheus_timeout: ConfigDuration,
    /// Headers sent with every backend request (`X-Scope-OrgID` for Mimir/Cortex tenants).
    pub prometheus_headers: BTreeMap<String, String>,
    /// Bearer token file; re-read when it changes, so rotated tokens work.
    pub prometheus_token_file: String,
    /// Basic auth user name (`""`: none; `user:pass@` in the URL also works).
    pub prometheus_basic_auth_username: String,
    /// File holding the basic auth password.
    pub prometheus_basic_auth_password_file: String,
    /// CA bundle for an HTTPS Prometheus; `""` uses the system roots.
    pub prometheus_ca_file: String,
    /// Client certificate for mutual TLS to Prometheus.
    pub prometheus_client_cert_file: String,
    /// Its key.
    pub prometheus_client_key_file: String,
    /// Several named backends (`[[adapter.backends]]`); rules pick one with `backend`, or use
    /// the first. Replaces the `prometheus_*` keys (giving both is an error).
    pub backends: Vec<Spanned<BackendSpec>>,
    /// Another external metrics server (KEDA's) that gets the external metrics requests this
    /// adapter has no rule for, and whose discovery list is merged into ours.
    pub external_upstream: Option<Spanned<UpstreamSpec>>,
    /// How often every rule's series query runs to refresh the metric lists.
    pub relist_interval: Spanned<ConfigDuration>,
    /// How far back discovery looks for series; `"0s"` means the relist interval.
    pub metrics_max_age: Spanned<ConfigDuration>,
    /// prometheus-adapter rules YAML, read unchanged; `""` for none.
    pub rules_file: Spanned<String>,
    /// Rules written here, with prometheus-adapter's field names (`seriesQuery` or
    /// `series_query`, …); they come after the YAML file's.
    pub rules: Vec<Spanned<RuleSpec>>,
    /// External rules written here.
    pub external_rules: Vec<Spanned<RuleSpec>>,
    /// prometheus-adapter's `resourceRules` written here (`cpu` and `memory` tables, and
    /// `window`): with them the adapter also serves `metrics.k8s.io` (`kubectl top`, CPU and
    /// memory HPAs). Either here or in the rules file, not both.
    pub resource_rules: Option<Spanned<ResourceRulesSpec>>,
    /// Named queries (`[[adapter.queries]]`): `name`, `query`, `max_age` (default 2m),
    /// `refresh` (15s), `namespace`, `backend`. Each is served as an external metric from a
    /// cache refreshed in the background; a value older than `max_age` is a 503, never 0.
    pub queries: Vec<Spanned<NamedQuerySpec>>,
    /// How many named queries may run at once (the rest wait their turn).
    pub query_concurrency: usize,
    /// Queries each backend may run at once (requests, discovery and named queries).
    pub max_concurrent_queries: usize,
    /// Queries that may wait for a turn per backend; more are answered 503 with
    /// `Retry-After` at once, so a slow backend can't pile up unbounded work.
    pub max_queued_queries: usize,
    /// Watch `PrometheusMetric` objects (the CRD in deploy/) and serve each as a named query
    /// in its namespace, writing its status back.
    pub watch_prometheus_metrics: bool,
    /// Serving certificate and key (PEM). Without them a self-signed pair is used.
    pub tls_cert_file: String,
    /// The key of `tls_cert_file`.
    pub tls_private_key_file: String,
    /// Where the self-signed pair is kept (`apiserver.crt`, `apiserver.key`); `""` keeps
    /// it in memory only.
    pub cert_dir: String,
    /// Names the self-signed certificate is valid for.
    pub self_signed_hosts: Vec<String>,
    /// How often the serving certificate files are checked for a new pair (cert-manager
    /// rotation); new connections get it, open ones keep theirs.
    pub cert_reload_interval: ConfigDuration,
    /// Serve every request without authentication or authorization. Local use only: warned
    /// about at start and every minute. Without it the adapter needs an authentication source
    /// and an authorization source, or refuses to start.
    pub insecure_dev: bool,
    /// Front-proxy CA (kube-apiserver's `--requestheader-client-ca-file`); `""` reads it from
    /// the `kube-system/extension-apiserver-authentication` ConfigMap when a kubeconfig or the
    /// in-cluster config is at hand.
    pub requestheader_client_ca_file: String,
    /// Front-proxy certificate CNs accepted; `[]` accepts any certificate of that CA.
    pub requestheader_allowed_names: Vec<String>,
    /// Headers naming the user.
    pub requestheader_username_headers: Vec<String>,
    /// Headers naming the groups.
    pub requestheader_group_headers: Vec<String>,
    /// Prefixes of the extra-attribute headers.
    pub requestheader_extra_headers_prefix: Vec<String>,
    /// Headers naming the user's UID.
    pub requestheader_uid_headers: Vec<String>,
    /// CA of client certificates that authenticate users directly (CN = user, O = groups).
    pub client_ca_file: String,
    /// Kubeconfig of the cluster whose objects (pods, namespaces, and what the rules map to)
    /// are watched to resolve `labelSelector` and named objects; `""`: the in-cluster config
    /// in a pod, else no cache (series labels stand in for object labels).
    pub lister_kubeconfig: String,
    /// Kubeconfig for TokenReview and the authentication ConfigMap; `""`: in-cluster config
    /// when running in a pod.
    pub authentication_kubeconfig: String,
    /// Kubeconfig for SubjectAccessReview; `""`: in-cluster config when running in a pod.
    pub authorization_kubeconfig: String,
    /// Don't read the authentication ConfigMap (flags only).
    pub authentication_skip_lookup: bool,
    /// Paths served without authentication or authorization (`*` suffix = prefix).
    pub authorization_always_allow_paths: Vec<String>,
    /// How long a TokenReview answer is reused.
    pub authentication_token_webhook_cache_ttl: ConfigDuration,
    /// How long an allowing SubjectAccessReview answer is reused.
    pub authorization_webhook_cache_authorized_ttl: ConfigDuration,
    /// How long a denying SubjectAccessReview answer is reused.
    pub authorization_webhook_cache_unauthorized_ttl: ConfigDuration,
    /// On SIGTERM, in-flight requests get this long to finish.
    pub shutdown_grace: ConfigDuration,
    /// `error`, `warn`, `info`, `debug` or `trace`; `RUST_LOG` overrides it.
    pub log_level: Spanned<String>,
    /// `text` or `json`.
    pub log_format: LogFormat,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        Self {
            listen: Spanned::new(0..0, "0.0.0.0:6443".into()),
            prometheus_url: Spanned::new(0..0, "http://127.0.0.1:9090".into()),
            prometheus_verb: Spanned::new(0..0, "GET".into()),
            prometheus_timeout: ConfigDuration(Duration::from_secs(30)),
            prometheus_headers: BTreeMap::new(),
            prometheus_token_file: String::new(),
            prometheus_basic_auth_username: String::new(),
            prometheus_basic_auth_password_file: String::new(),
            prometheus_ca_file: String::new(),
            prometheus_client_cert_file: String::new(),
            prometheus_client_key_file: String::new(),
            backends: Vec::new(),
            external_upstream: None,
            relist_interval: Spanned::new(0..0, ConfigDuration(Duration::from_secs(60))),
            metrics_max_age: Spanned::new(0..0, ConfigDuration(Duration::ZERO)),
            rules_file: Spanned::new(0..0, String::new()),
            rules: Vec::new(),
            external_rules: Vec::new(),
            resource_rules: None,
            queries: Vec::new(),
            query_concurrency: 4,
            max_concurrent_queries: crate::provider::DEFAULT_MAX_CONCURRENT_QUERIES,
            max_queued_queries: crate::provider::DEFAULT_MAX_QUEUED_QUERIES,
            watch_prometheus_metrics: false,
            tls_cert_file: String::new(),
            tls_private_key_file: String::new(),
            cert_dir: String::new(),
            self_signed_hosts: vec!["localhost".into(), "127.0.0.1".into()],
            cert_reload_interval: ConfigDuration(Duration::from_secs(10)),
            insecure_dev: false,
            requestheader_client_ca_file: String::new(),
            requestheader_allowed_names: Vec::new(),
            requestheader_username_headers: vec!["X-Remote-User".into()],
            requestheader_group_headers: vec!["X-Remote-Group".into()],
            requestheader_extra_headers_prefix: vec!["X-Remote-Extra-".into()],
            requestheader_uid_headers: Vec::new(),
            client_ca_file: String::new(),
            lister_kubeconfig: String::new(),
            authentication_kubeconfig: String::new(),
            authorization_kubeconfig: String::new(),
            authentication_skip_lookup: false,
            authorization_always_allow_paths: ["/healthz", "/livez", "/readyz", "/openapi/*"]
                .map(String::from)
                .to_vec(),
            authentication_token_webhook_cache_ttl: ConfigDuration(Duration::from_secs(10)),
            authorization_webhook_cache_authorized_ttl: ConfigDuration(Duration::from_secs(10)),
            authorization_webhook_cache_unauthorized_ttl: ConfigDuration(Duration::from_secs(10)),
            shutdown_grace: ConfigDuration(Duration::from_secs(5)),
            log_level: Spanned::new(0..0, "info".into()),
            log_format: LogFormat::Text,
        }
    }
}

/// One `[[adapter.backends]]` entry: a Prometheus-compatible API and how to reach it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// What rules call it (`backend = "…"`) and the `backend` label of the self-metrics.
    pub name: Spanned<String>,
    /// Base URL of its API; a path prefix is kept.
    pub url: Spanned<String>,
    /// `GET` or `POST`.
    #[serde(default)]
    pub verb: Option<Spanned<String>>,
    /// Per-query timeout, also sent as the `timeout` parameter (default 30s).
    #[serde(default)]
    pub timeout: Option<ConfigDuration>,
    /// Headers sent with every request (`X-Scope-OrgID`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Parameters added to every request (Thanos' `partial_response = "false"`).
    #[serde(default)]
    pub query_params: BTreeMap<String, String>,
    /// Bearer token file, re-read when it changes.
    #[serde(default)]
    pub token_file: String,
    /// Basic auth user name.
    #[serde(default)]
    pub basic_auth_username: String,
    /// File holding the basic auth password.
    #[serde(default)]
    pub basic_auth_password_file: String,
    /// CA bundle for HTTPS; `""` uses the system roots.
    #[serde(default)]
    pub ca_file: String,
    /// Client certificate for mutual TLS.
    #[serde(default)]
    pub client_cert_file: String,
    /// Its key.
    #[serde(default)]
    pub client_key_file: String,
}

/// `[adapter.external_upstream]`: where external metrics this adapter doesn't serve go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// Base URL of the other server (`https://keda-operator-metrics-apiserver.keda:443`);
    /// request paths are appended unchanged.
    pub url: Spanned<String>,
    /// CA bundle of its serving certificate; `""` uses the system roots.
    #[serde(default)]
    pub ca_file: String,
    /// Client certificate this adapter presents to it.
    #[serde(default)]
    pub client_cert_file: String,
    /// Its key.
    #[serde(default)]
    pub client_key_file: String,
    /// Bearer token file this adapter presents (its ServiceAccount token); re-read on change.
    #[serde(default)]
    pub token_file: String,
    /// How long a forwarded request may take (default 30s).
    #[serde(default)]
    pub timeout: Option<ConfigDuration>,
}

/// A backend as [`crate::run`] builds it.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// Its name.
    pub name: String,
    /// How to reach it.
    pub client: ClientConfig,
}

/// The first single-backend key set to something other than its default, if any: with
/// `[[adapter.backends]]` those keys would be silently ignored, so they are refused.
fn single_backend_key_given(a: &AdapterConfig) -> Option<&'static str> {
    let d = AdapterConfig::default();
    [
        (
            "prometheus_url",
            a.prometheus_url.get_ref() != d.prometheus_url.get_ref(),
        ),
        (
            "prometheus_verb",
            a.prometheus_verb.get_ref() != d.prometheus_verb.get_ref(),
        ),
        (
            "prometheus_timeout",
            a.prometheus_timeout.0 != d.prometheus_timeout.0,
        ),
        ("prometheus_headers", !a.prometheus_headers.is_empty()),
        ("prometheus_token_file", !a.prometheus_token_file.is_empty()),
        (
            "prometheus_basic_auth_username",
            !a.prometheus_basic_auth_username.is_empty(),
        ),
        (
            "prometheus_basic_auth_password_file",
            !a.prometheus_basic_auth_password_file.is_empty(),
        ),
        ("prometheus_ca_file", !a.prometheus_ca_file.is_empty()),
        (
            "prometheus_client_cert_file",
            !a.prometheus_client_cert_file.is_empty(),
        ),
        (
            "prometheus_client_key_file",
            !a.prometheus_client_key_file.is_empty(),
        ),
    ]
    .into_iter()
    .find_map(|(key, given)| given.then_some(key))
}

/// A validated config: what [`crate::run`] needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The raw table (after flags).
    pub adapter: AdapterConfig,
    /// The HTTPS address.
    pub listen: SocketAddr,
    /// The backends, in order (the first serves rules that name none); never empty.
    pub backends: Vec<BackendConfig>,
    /// The external metrics server unserved external metrics are forwarded to.
    pub external_upstream: Option<ClientConfig>,
    /// Relist period.
    pub relist_interval: Duration,
    /// Discovery lookback.
    pub max_age: Duration,
    /// Every rule.
    pub rules: RuleSet,
    /// Things to log once at start.
    pub warnings: Warnings,
    /// The files the config was read from, watched for changes to reload the rules.
    pub sources: Vec<PathBuf>,
}

fn opt_path(s: &str) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

/// The `[adapter]` table of a pipeline.toml's text (`path` names it in errors).
pub fn adapter_from_toml(src: &str, path: &Path) -> Result<AdapterConfig, ConfigError> {
    let file: PipelineFile = common::config::from_toml(src, path)?;
    Ok(file.adapter)
}

/// Reads `pipeline.toml` and returns the `[adapter]` table and the file's text.
pub fn load_pipeline(path: &Path) -> Result<(AdapterConfig, String), ConfigError> {
    let (file, src): (PipelineFile, String) = common::config::load(path)?;
    Ok((file.adapter, src))
}

impl Config {
    /// Validates the table: addresses, URL, verb, durations, rules (including the YAML file,
    /// resolved against `base_dir`). `src`/`path` locate errors.
    pub fn validate(
        adapter: AdapterConfig,
        src: &str,
        path: &Path,
        base_dir: &Path,
    ) -> Result<Config, ConfigError> {
        let at = |span: std::ops::Range<usize>, field: &str, message: String| {
            if span.is_empty() && span.start == 0 {
                ConfigError {
                    path: path.to_path_buf(),
                    position: None,
                    field: Some(format!("adapter.{field}")),
                    message,
                }
            } else {
                ConfigError::at(path, src, span, Some(&format!("adapter.{field}")), message)
            }
        };
        let listen: SocketAddr = adapter.listen.get_ref().parse().map_err(|e| {
            at(
                adapter.listen.span(),
                "listen",
                format!("`{}` is not an address: {e}", adapter.listen.get_ref()),
            )
        })?;
        let backends = if adapter.backends.is_empty() {
            vec![single_backend(&adapter, &at)?]
        } else {
            if let Some(key) = single_backend_key_given(&adapter) {
                let span = match key {
                    "prometheus_url" => adapter.prometheus_url.span(),
                    "prometheus_verb" => adapter.prometheus_verb.span(),
                    _ => 0..0,
                };
                return Err(at(
                    span,
                    key,
                    "give either [[adapter.backends]] or the prometheus_* settings \
                     (--prometheus-url, …), not both"
                        .into(),
                ));
            }
            let mut out: Vec<BackendConfig> = Vec::with_capacity(adapter.backends.len());
            for (i, spec) in adapter.backends.iter().enumerate() {
                let b = backend(i, spec, &at)?;
                if out.iter().any(|o| o.name == b.name) {
                    return Err(at(
                        spec.get_ref().name.span(),
                        &format!("backends[{i}].name"),
                        format!("backend `{}` is defined twice", b.name),
                    ));
                }
                out.push(b);
            }
            out
        };
        let relist_interval = adapter.relist_interval.get_ref().0;
        if relist_interval.is_zero() {
            return Err(at(
                adapter.relist_interval.span(),
                "relist_interval",
                "must be more than 0s".into(),
            ));
        }
        let max_age = match adapter.metrics_max_age.get_ref().0 {
            d if d.is_zero() => relist_interval,
            d if d < relist_interval => {
                return Err(at(
                    adapter.metrics_max_age.span(),
                    "metrics_max_age",
                    "must be at least the relist interval, or series vanish between relists".into(),
                ));
            }
            d => d,
        };
        if adapter.tls_cert_file.is_empty() != adapter.tls_private_key_file.is_empty() {
            return Err(at(
                0..0,
                "tls_cert_file",
                "tls_cert_file and tls_private_key_file go together".into(),
            ));
        }
        let mut rules = RuleSet::default();
        let mut warnings = Warnings::new();
        let mut sources = Vec::new();
        if !src.is_empty() {
            sources.push(path.to_path_buf());
        }
        let rules_file = adapter.rules_file.get_ref();
        if !rules_file.is_empty() {
            let file = base_dir.join(rules_file);
            let text = std::fs::read_to_string(&file).map_err(|e| {
                at(
                    adapter.rules_file.span(),
                    "rules_file",
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            let (set, w) = rules::from_yaml(&text, &file)?;
            sources.push(file.clone());
            rules.extend(set);
            warnings.extend(w);
        }
        rules.extend(rules::from_toml_specs(
            adapter.rules.clone(),
            adapter.external_rules.clone(),
            src,
            path,
        )?);
        if let Some(spec) = &adapter.resource_rules {
            if rules.resource.is_some() {
                return Err(at(
                    spec.span(),
                    "resource_rules",
                    format!(
                        "resource rules are already given in {}; keep one of the two",
                        rules_file
                    ),
                ));
            }
            rules.resource = Some(rules::resource_from_toml(spec, src, path)?);
        }
        let queries = adapter
            .queries
            .iter()
            .map(|q| {
                let at = common::config::line_col(src, q.span().start);
                (q.get_ref().clone(), at)
            })
            .collect();
        let queries = rules::named::compile_list(queries, path, "adapter.queries", &rules.queries)?;
        rules.queries.extend(queries);
        if adapter.max_concurrent_queries == 0 {
            return Err(at(
                0..0,
                "max_concurrent_queries",
                "must be at least 1".into(),
            ));
        }
        if adapter.query_concurrency == 0 {
            return Err(at(0..0, "query_concurrency", "must be at least 1".into()));
        }
        let names: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
        rules.check_backends(&names)?;
        let external_upstream = match &adapter.external_upstream {
            Some(u) => Some(upstream(u.get_ref(), &at)?),
            None => None,
        };
        Ok(Config {
            listen,
            backends,
            external_upstream,
            relist_interval,
            max_age,
            rules,
            warnings,
            sources,
            adapter,
        })
    }
}

/// Builds a config error from a span, the field under `adapter.` and a message.
type At<'a> = dyn Fn(std::ops::Range<usize>, &str, String) -> ConfigError + 'a;

fn parse_verb(v: &Spanned<String>, field: &str, at: &At<'_>) -> Result<Verb, ConfigError> {
    v.get_ref().parse().map_err(|_| {
        at(
            v.span(),
            field,
            format!("`{}` is not GET or POST", v.get_ref()),
        )
    })
}

fn check_url(url: &Spanned<String>, field: &str, at: &At<'_>) -> Result<(), ConfigError> {
    let u = url.get_ref();
    if u.starts_with("http://") || u.starts_with("https://") {
        Ok(())
    } else {
        Err(at(
            url.span(),
            field,
            format!("`{u}` must start with http:// or https://"),
        ))
    }
}

fn check_pair(cert: &str, key: &str, field: &str, at: &At<'_>) -> Result<(), ConfigError> {
    if cert.is_empty() == key.is_empty() {
        Ok(())
    } else {
        Err(at(
            0..0,
            field,
            "the client certificate and key files go together".into(),
        ))
    }
}

/// The backend named `default` from the `prometheus_*` keys (prometheus-adapter's flags).
fn single_backend(a: &AdapterConfig, at: &At<'_>) -> Result<BackendConfig, ConfigError> {
    let verb = parse_verb(&a.prometheus_verb, "prometheus_verb", at)?;
    check_url(&a.prometheus_url, "prometheus_url", at)?;
    check_pair(
        &a.prometheus_client_cert_file,
        &a.prometheus_client_key_file,
        "prometheus_client_cert_file",
        at,
    )?;
    let basic_auth = (!a.prometheus_basic_auth_username.is_empty()).then(|| BasicAuth {
        username: a.prometheus_basic_auth_username.clone(),
        password_file: opt_path(&a.prometheus_basic_auth_password_file),
        password: None,
    });
    Ok(BackendConfig {
        name: crate::provider::DEFAULT_BACKEND.to_owned(),
        client: ClientConfig {
            url: a.prometheus_url.get_ref().clone(),
            verb,
            timeout: a.prometheus_timeout.0,
            headers: pairs(&a.prometheus_headers),
            bearer_token_file: opt_path(&a.prometheus_token_file),
            basic_auth,
            ca_file: opt_path(&a.prometheus_ca_file),
            client_cert_file: opt_path(&a.prometheus_client_cert_file),
            client_key_file: opt_path(&a.prometheus_client_key_file),
            ..ClientConfig::default()
        },
    })
}

fn pairs(map: &BTreeMap<String, String>) -> Vec<(String, String)> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// `[adapter.external_upstream]`, checked.
fn upstream(u: &UpstreamSpec, at: &At<'_>) -> Result<ClientConfig, ConfigError> {
    check_url(&u.url, "external_upstream.url", at)?;
    check_pair(
        &u.client_cert_file,
        &u.client_key_file,
        "external_upstream.client_cert_file",
        at,
    )?;
    Ok(ClientConfig {
        url: u.url.get_ref().clone(),
        timeout: u
            .timeout
            .map_or(crate::prom::http::DEFAULT_TIMEOUT, |t| t.0),
        bearer_token_file: opt_path(&u.token_file),
        ca_file: opt_path(&u.ca_file),
        client_cert_file: opt_path(&u.client_cert_file),
        client_key_file: opt_path(&u.client_key_file),
        ..ClientConfig::default()
    })
}

/// One `[[adapter.backends]]` entry, checked.
fn backend(
    i: usize,
    spec: &Spanned<BackendSpec>,
    at: &At<'_>,
) -> Result<BackendConfig, ConfigError> {
    let b = spec.get_ref();
    let field = |f: &str| format!("backends[{i}].{f}");
    let name = b.name.get_ref();
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(at(
            b.name.span(),
            &field("name"),
            format!("`{name}` must be letters, digits, `-`, `_` or `.`"),
        ));
    }
    check_url(&b.url, &field("url"), at)?;
    let verb = match &b.verb {
        Some(v) => parse_verb(v, &field("verb"), at)?,
        None => Verb::Get,
    };
    check_pair(
        &b.client_cert_file,
        &b.client_key_file,
        &field("client_cert_file"),
        at,
    )?;
    let basic_auth = (!b.basic_auth_username.is_empty()).then(|| BasicAuth {
        username: b.basic_auth_username.clone(),
        password_file: opt_path(&b.basic_auth_password_file),
        password: None,
    });
    Ok(BackendConfig {
        name: name.clone(),
        client: ClientConfig {
            url: b.url.get_ref().clone(),
            verb,
            timeout: b
                .timeout
                .map_or(crate::prom::http::DEFAULT_TIMEOUT, |t| t.0),
            headers: pairs(&b.headers),
            query_params: pairs(&b.query_params),
            bearer_token_file: opt_path(&b.token_file),
            basic_auth,
            ca_file: opt_path(&b.ca_file),
            client_cert_file: opt_path(&b.client_cert_file),
            client_key_file: opt_path(&b.client_key_file),
            ..ClientConfig::default()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml_src: &str) -> Result<Config, String> {
        let path = Path::new("pipeline.toml");
        let file: PipelineFile =
            common::config::from_toml(toml_src, path).map_err(|e| e.to_string())?;
        Config::validate(file.adapter, toml_src, path, Path::new(".")).map_err(|e| e.to_string())
    }

    #[test]
    fn shipped_pipeline_toml_is_valid() {
        let src = include_str!("../../pipeline.toml");
        let cfg = check(src).unwrap();
        assert_eq!(cfg.listen.port(), 6443);
        assert_eq!(cfg.relist_interval, Duration::from_secs(60));
        assert_eq!(cfg.max_age, cfg.relist_interval);
    }

    #[test]
    fn unknown_key_names_line_and_field() {
        let e = check("version = 1\n[adapter]\nrelist_intervall = \"1m\"\n").unwrap_err();
        assert!(
            e.starts_with("pipeline.toml:3:1: field `adapter.relist_intervall`: unknown field"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        for (src, want) in [
            (
                "listen = \"nowhere\"",
                "pipeline.toml:3:10: field `adapter.listen`",
            ),
            (
                "prometheus_verb = \"PUT\"",
                "field `adapter.prometheus_verb`: `PUT` is not GET or POST",
            ),
            (
                "prometheus_url = \"localhost:9090\"",
                "field `adapter.prometheus_url`",
            ),
            (
                "relist_interval = \"1m\"\nmetrics_max_age = \"30s\"",
                "field `adapter.metrics_max_age`: must be at least the relist interval",
            ),
            (
                "rules_file = \"/nonexistent.yaml\"",
                "field `adapter.rules_file`: cannot read",
            ),
        ] {
            let e = check(&format!("version = 1\n[adapter]\n{src}\n")).unwrap_err();
            assert!(e.contains(want), "{src}: {e}");
        }
    }

    #[test]
    fn native_rules_share_the_model() {
        let cfg = check(
            r#"version = 1
[adapter]
[[adapter.rules]]
series_query = '{namespace!="",pod!=""}'
resources = { overrides = { namespace = { resource = "namespace" }, pod = { resource = "pod" } } }
name = { matches = "^(.*)_total$", as = "${1}_per_second" }
metrics_query = 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)'
window = "2m"

[[adapter.external_rules]]
seriesQuery = '{__name__="queue_depth"}'
metricsQuery = 'sum(<<.Series>>{<<.LabelMatchers>>})'
"#,
        )
        .unwrap();
        assert_eq!(cfg.rules.custom.len(), 1);
        assert_eq!(cfg.rules.external.len(), 1);
        assert_eq!(cfg.rules.custom[0].window, Duration::from_secs(120));
        assert_eq!(cfg.rules.custom[0].position, "pipeline.toml:3:1");
    }

    const NATIVE_RESOURCE_RULES: &str = r#"version = 1
[adapter]
[adapter.resource_rules]
window = "30s"
[adapter.resource_rules.cpu]
container_query = 'sum by (<<.GroupBy>>) (irate(container_cpu_usage_seconds_total{<<.LabelMatchers>>,container!=""}[4m]))'
node_query = 'sum by (<<.GroupBy>>) (irate(node_cpu_usage_seconds_total{<<.LabelMatchers>>}[4m]))'
container_label = "container"
resources = { overrides = { namespace = { resource = "namespace" }, pod = { resource = "pod" }, node = { resource = "node" } } }
[adapter.resource_rules.memory]
containerQuery = 'sum by (<<.GroupBy>>) (container_memory_working_set_bytes{<<.LabelMatchers>>,container!=""})'
nodeQuery = 'sum by (<<.GroupBy>>) (node_memory_working_set_bytes{<<.LabelMatchers>>})'
containerLabel = "container"
resources = { template = "<<.Resource>>" }
"#;

    #[test]
    fn native_resource_rules_share_the_model() {
        let cfg = check(NATIVE_RESOURCE_RULES).unwrap();
        let r = cfg.rules.resource.unwrap();
        assert_eq!(r.window, Duration::from_secs(30));
        assert_eq!(r.position, "pipeline.toml:3:1");
        let q = r
            .memory
            .render(&crate::rules::resource::Target::Nodes { name: Some("n1") })
            .unwrap();
        assert_eq!(
            q.promql,
            r#"sum by (node) (node_memory_working_set_bytes{node="n1"})"#
        );
    }

    #[test]
    fn native_resource_rules_errors_point_at_the_table() {
        let e = check(&NATIVE_RESOURCE_RULES.replace("container_label = \"container\"\n", ""))
            .unwrap_err();
        assert!(
            e.starts_with("pipeline.toml:5:1: field `adapter.resource_rules.cpu`")
                && e.contains("containerLabel"),
            "{e}"
        );
        let e = check(&NATIVE_RESOURCE_RULES.replace(
            "resources = { template = \"<<.Resource>>\" }",
            "resources = { template = \"kube_<<.Resource>>\", namespaced = false }",
        ))
        .unwrap_err();
        assert_eq!(
            e,
            "pipeline.toml:3:1: field `adapter.resource_rules.memory.resources`: \
             resources.namespaced is for externalRules only"
        );
    }

    #[test]
    fn resource_rules_in_both_places_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("rules.yaml"),
            crate::rules::resource::tests::STANDARD,
        )
        .unwrap();
        let src = NATIVE_RESOURCE_RULES
            .replace("[adapter]\n", "[adapter]\nrules_file = \"rules.yaml\"\n");
        let path = Path::new("pipeline.toml");
        let file: PipelineFile = common::config::from_toml(&src, path).unwrap();
        let e = Config::validate(file.adapter, &src, path, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "field `adapter.resource_rules`: resource rules are already given in rules.yaml"
            ),
            "{e}"
        );
    }

    #[test]
    fn bad_native_rule_points_at_it() {
        let e = check(
            "version = 1\n[adapter]\n[[adapter.rules]]\nseries_query = 'up'\nmetrics_query = '<<.Nope>>'\n",
        )
        .unwrap_err();
        assert!(
            e.starts_with(
                "pipeline.toml:3:1: field `adapter.rules[0].metricsQuery`: unknown template field"
            ),
            "{e}"
        );
    }

    const TWO_BACKENDS: &str = r#"version = 1
[adapter]
[[adapter.backends]]
name = "prom"
url = "http://127.0.0.1:9090"
[[adapter.backends]]
name = "thanos"
url = "https://thanos:10902/prefix"
verb = "POST"
timeout = "5s"
headers = { X-Scope-OrgID = "team-a" }
query_params = { partial_response = "false" }
token_file = "/var/run/token"
ca_file = "/etc/ca.pem"
client_cert_file = "/etc/c.pem"
client_key_file = "/etc/k.pem"

[[adapter.external_rules]]
series_query = '{__name__="queue_depth"}'
metrics_query = 'sum(<<.Series>>{<<.LabelMatchers>>})'
backend = "thanos"
"#;

    #[test]
    fn several_backends_load_in_order() {
        let cfg = check(TWO_BACKENDS).unwrap();
        let names: Vec<&str> = cfg.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, vec!["prom", "thanos"]);
        let thanos = &cfg.backends[1].client;
        assert_eq!(thanos.url, "https://thanos:10902/prefix");
        assert_eq!(thanos.verb, Verb::Post);
        assert_eq!(thanos.timeout, Duration::from_secs(5));
        assert_eq!(
            thanos.headers,
            vec![("X-Scope-OrgID".to_owned(), "team-a".to_owned())]
        );
        assert_eq!(
            thanos.query_params,
            vec![("partial_response".to_owned(), "false".to_owned())]
        );
        assert_eq!(
            thanos.bearer_token_file.as_deref(),
            Some(Path::new("/var/run/token"))
        );
        assert_eq!(cfg.backends[0].client.verb, Verb::Get);
        assert_eq!(cfg.rules.external[0].backend.as_deref(), Some("thanos"));
        // Every TLS and credential key reaches its own client setting.
        assert_eq!(thanos.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(
            thanos.client_cert_file.as_deref(),
            Some(Path::new("/etc/c.pem"))
        );
        assert_eq!(
            thanos.client_key_file.as_deref(),
            Some(Path::new("/etc/k.pem"))
        );
        assert_eq!(cfg.backends[0].client.ca_file, None);
        let basic = check(
            "version = 1\n[adapter]\n[[adapter.backends]]\nname = \"vm\"\nurl = \"http://vm:8428\"\nbasic_auth_username = \"reader\"\nbasic_auth_password_file = \"/etc/pw\"\n",
        )
        .unwrap();
        let auth = basic.backends[0].client.basic_auth.as_ref().unwrap();
        assert_eq!(auth.username, "reader");
        assert_eq!(auth.password_file.as_deref(), Some(Path::new("/etc/pw")));
    }

    #[test]
    fn named_queries_load_from_toml_and_yaml_with_their_positions() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("rules.yaml"),
            "externalQueries:\n- name: queue_depth\n  query: sum(jobs)\n  maxAge: 5m\n",
        )
        .unwrap();
        let src = "version = 1\n[adapter]\nrules_file = \"rules.yaml\"\nquery_concurrency = 2\n\n[[adapter.queries]]\nname = \"orders\"\nquery = \"sum(rate(orders_total[1m]))\"\nrefresh = \"5s\"\nnamespace = \"shop\"\n";
        let path = dir.path().join("pipeline.toml");
        let file: PipelineFile = common::config::from_toml(src, &path).unwrap();
        let cfg = Config::validate(file.adapter, src, &path, dir.path()).unwrap();
        let got: Vec<(&str, u64, u64, Option<&str>)> = cfg
            .rules
            .queries
            .iter()
            .map(|q| {
                (
                    q.name.as_str(),
                    q.max_age.as_secs(),
                    q.refresh.as_secs(),
                    q.namespace.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("queue_depth", 300, 15, None),
                ("orders", 120, 5, Some("shop"))
            ]
        );
        assert_eq!(cfg.adapter.query_concurrency, 2);
        // The same name in the same scope in both files.
        let twice = "version = 1\n[adapter]\nrules_file = \"rules.yaml\"\n[[adapter.queries]]\nname = \"queue_depth\"\nquery = \"1\"\n";
        let file: PipelineFile = common::config::from_toml(twice, &path).unwrap();
        let e = Config::validate(file.adapter, twice, &path, dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("pipeline.toml:4:1"), "{e}");
        assert!(e.contains("adapter.queries[0].name"), "{e}");
        assert!(e.contains("rules.yaml:2:3 (externalQueries[0])"), "{e}");
    }

    #[test]
    fn named_query_errors_name_their_field() {
        for (src, needle) in [
            (
                "version = 1\n[adapter]\n[[adapter.queries]]\nname = \"q\"\nquery = \"1\"\nmax_age = \"5s\"\n",
                "pipeline.toml:3:1: field `adapter.queries[0].maxAge`",
            ),
            (
                "version = 1\n[adapter]\n[[adapter.queries]]\nname = \"q\"\nquery = \"1\"\nbackend = \"nope\"\n",
                "field `adapter.queries[0].backend`: unknown backend `nope`",
            ),
            (
                "version = 1\n[adapter]\n[[adapter.queries]]\nname = \"q\"\nquery = \"1\"\nmaxage = \"5m\"\n",
                "unknown field `maxage`",
            ),
            (
                "version = 1\n[adapter]\nquery_concurrency = 0\n",
                "adapter.query_concurrency",
            ),
        ] {
            let e = check(src).unwrap_err();
            assert!(e.contains(needle), "{e} lacks {needle}");
        }
    }

    #[test]
    fn single_backend_keys_make_the_default_backend() {
        let cfg = check(
            "version = 1\n[adapter]\nprometheus_url = \"http://p:9090\"\nprometheus_verb = \"POST\"\n",
        )
        .unwrap();
        assert_eq!(cfg.backends.len(), 1);
        assert_eq!(cfg.backends[0].name, "default");
        assert_eq!(cfg.backends[0].client.url, "http://p:9090");
        assert_eq!(cfg.backends[0].client.verb, Verb::Post);
        // Nothing given at all: the default URL.
        let cfg = check("version = 1\n[adapter]\n").unwrap();
        assert_eq!(cfg.backends[0].client.url, "http://127.0.0.1:9090");
    }

    #[test]
    fn backend_errors_name_their_field() {
        for (edit, want) in [
            (
                (
                    "[[adapter.backends]]\nname = \"prom\"",
                    "[[adapter.backends]]\nname = \"prom\"\nprometheus_url = \"x\"",
                ),
                "pipeline.toml:5:1: field `adapter.backends.prometheus_url`: unknown field",
            ),
            (
                ("name = \"thanos\"", "name = \"prom\""),
                "pipeline.toml:7:8: field `adapter.backends[1].name`: backend `prom` is defined twice",
            ),
            (
                ("name = \"thanos\"", "name = \"th anos\""),
                "field `adapter.backends[1].name`: `th anos` must be letters",
            ),
            (
                ("verb = \"POST\"", "verb = \"PUT\""),
                "pipeline.toml:9:8: field `adapter.backends[1].verb`: `PUT` is not GET or POST",
            ),
            (
                ("url = \"https://thanos", "url = \"thanos"),
                "field `adapter.backends[1].url`: `thanos:10902/prefix` must start with",
            ),
            (
                ("client_key_file = \"/etc/k.pem\"\n", ""),
                "field `adapter.backends[1].client_cert_file`: the client certificate and key files go together",
            ),
            (
                ("backend = \"thanos\"", "backend = \"mimir\""),
                "pipeline.toml:18:1: field `adapter.external_rules[0].backend`: unknown backend `mimir` (configured: prom, thanos)",
            ),
            (
                (
                    "[adapter]\n",
                    "[adapter]\nprometheus_url = \"http://other:9090\"\n",
                ),
                "pipeline.toml:3:18: field `adapter.prometheus_url`: give either [[adapter.backends]] or the prometheus_* settings",
            ),
            (
                ("[adapter]\n", "[adapter]\nprometheus_token_file = \"/t\"\n"),
                "field `adapter.prometheus_token_file`: give either",
            ),
        ] {
            let src = TWO_BACKENDS.replacen(edit.0, edit.1, 1);
            assert_ne!(src, TWO_BACKENDS, "{edit:?}");
            let e = check(&src).unwrap_err();
            assert!(e.contains(want), "{edit:?}: {e}");
        }
    }

    #[test]
    fn a_flag_for_the_single_backend_conflicts_with_backends() {
        let path = Path::new("pipeline.toml");
        let file: PipelineFile = common::config::from_toml(TWO_BACKENDS, path).unwrap();
        let mut adapter = file.adapter;
        let cli = <crate::cli::Cli as clap::Parser>::try_parse_from([
            "prom-adapter",
            "--prometheus-url",
            "http://flag:9090",
        ])
        .unwrap();
        cli.apply(&mut adapter).unwrap();
        let e = Config::validate(adapter, TWO_BACKENDS, path, Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("field `adapter.prometheus_url`: give either [[adapter.backends]]"),
            "{e}"
        );
    }

    #[test]
    fn unknown_backend_in_yaml_and_resource_rules_names_the_rule() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("rules.yaml"),
            "rules:\n- seriesQuery: 'up'\n  metricsQuery: 'up'\n- seriesQuery: 'up'\n  metricsQuery: 'up'\n  backend: nope\n",
        )
        .unwrap();
        let path = Path::new("pipeline.toml");
        let src = "version = 1\n[adapter]\nrules_file = \"rules.yaml\"\n";
        let file: PipelineFile = common::config::from_toml(src, path).unwrap();
        let e = Config::validate(file.adapter, src, path, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with(
                "rules.yaml:4:3: field `rules[1].backend`: unknown backend `nope` (configured: default)"
            ),
            "{e}"
        );
        // Naming the default backend works without [[adapter.backends]].
        std::fs::write(
            dir.path().join("rules.yaml"),
            "rules:\n- seriesQuery: 'up'\n  metricsQuery: 'up'\n  backend: default\n",
        )
        .unwrap();
        let file: PipelineFile = common::config::from_toml(src, path).unwrap();
        assert!(Config::validate(file.adapter, src, path, dir.path()).is_ok());
        let e = check(
            &NATIVE_RESOURCE_RULES
                .replace("window = \"30s\"", "window = \"30s\"\nbackend = \"vm\""),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "pipeline.toml:3:1: field `adapter.resource_rules.backend`: unknown backend `vm` \
             (configured: default)"
        );
    }

    #[test]
    fn external_upstream_loads_and_checks_its_fields() {
        let src = "version = 1\n[adapter]\n[adapter.external_upstream]\nurl = \"https://keda:443\"\n\
                   ca_file = \"/ca.pem\"\ntoken_file = \"/token\"\ntimeout = \"5s\"\n";
        let cfg = check(src).unwrap();
        let u = cfg.external_upstream.unwrap();
        assert_eq!(u.url, "https://keda:443");
        assert_eq!(u.timeout, Duration::from_secs(5));
        assert_eq!(u.ca_file.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(u.bearer_token_file.as_deref(), Some(Path::new("/token")));
        assert!(
            check("version = 1\n[adapter]\n")
                .unwrap()
                .external_upstream
                .is_none()
        );
        let e = check(&src.replace("https://keda:443", "keda:443")).unwrap_err();
        assert!(
            e.starts_with(
                "pipeline.toml:4:7: field `adapter.external_upstream.url`: `keda:443` must start"
            ),
            "{e}"
        );
        let e = check(&format!("{src}client_cert_file = \"/c.pem\"\n")).unwrap_err();
        assert!(
            e.contains(
                "field `adapter.external_upstream.client_cert_file`: the client certificate and key"
            ),
            "{e}"
        );
        let e = check(&format!("{src}insecure = true\n")).unwrap_err();
        assert!(e.contains("unknown field `insecure`"), "{e}");
    }

    #[test]
    fn shipped_commented_backends_and_upstream_load_when_uncommented() {
        let src = include_str!("../../pipeline.toml");
        let (head, tail) = src.split_once("# Several backends").unwrap();
        let uncommented: String = tail
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                l.starts_with('[')
                    || l.split_once(" = ").is_some_and(|(key, _)| {
                        key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    })
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let cfg = check(&format!("{head}{uncommented}")).unwrap();
        let names: Vec<&str> = cfg.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, vec!["prometheus", "thanos"]);
        assert!(cfg.external_upstream.is_some());
        let queries: Vec<(&str, Option<&str>)> = cfg
            .rules
            .queries
            .iter()
            .map(|q| (q.name.as_str(), q.backend.as_deref()))
            .collect();
        assert_eq!(queries, [("queue_depth", Some("thanos"))]);
    }
}
