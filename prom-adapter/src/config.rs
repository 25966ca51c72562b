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
            relist_interval: Spanned::new(0..0, ConfigDuration(Duration::from_secs(60))),
            metrics_max_age: Spanned::new(0..0, ConfigDuration(Duration::ZERO)),
            rules_file: Spanned::new(0..0, String::new()),
            rules: Vec::new(),
            external_rules: Vec::new(),
            resource_rules: None,
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

/// A validated config: what [`crate::run`] needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The raw table (after flags).
    pub adapter: AdapterConfig,
    /// The HTTPS address.
    pub listen: SocketAddr,
    /// The backend client settings.
    pub prometheus: ClientConfig,
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
        let verb: Verb = adapter.prometheus_verb.get_ref().parse().map_err(|_| {
            at(
                adapter.prometheus_verb.span(),
                "prometheus_verb",
                format!("`{}` is not GET or POST", adapter.prometheus_verb.get_ref()),
            )
        })?;
        let url = adapter.prometheus_url.get_ref();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(at(
                adapter.prometheus_url.span(),
                "prometheus_url",
                format!("`{url}` must start with http:// or https://"),
            ));
        }
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
        if adapter.prometheus_client_cert_file.is_empty()
            != adapter.prometheus_client_key_file.is_empty()
        {
            return Err(at(
                0..0,
                "prometheus_client_cert_file",
                "prometheus_client_cert_file and prometheus_client_key_file go together".into(),
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
        let basic_auth = (!adapter.prometheus_basic_auth_username.is_empty()).then(|| BasicAuth {
            username: adapter.prometheus_basic_auth_username.clone(),
            password_file: opt_path(&adapter.prometheus_basic_auth_password_file),
            password: None,
        });
        let prometheus = ClientConfig {
            url: url.clone(),
            verb,
            timeout: adapter.prometheus_timeout.0,
            headers: adapter
                .prometheus_headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            bearer_token_file: opt_path(&adapter.prometheus_token_file),
            basic_auth,
            ca_file: opt_path(&adapter.prometheus_ca_file),
            client_cert_file: opt_path(&adapter.prometheus_client_cert_file),
            client_key_file: opt_path(&adapter.prometheus_client_key_file),
            ..ClientConfig::default()
        };
        Ok(Config {
            listen,
            prometheus,
            relist_interval,
            max_age,
            rules,
            warnings,
            sources,
            adapter,
        })
    }
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
}
