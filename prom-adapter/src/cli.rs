//! Command-line flags, under prometheus-adapter's names so its Deployment args work unchanged.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use common::units::Duration as ConfigDuration;

use crate::config::AdapterConfig;

/// Serves the Kubernetes custom and external metrics APIs (custom.metrics.k8s.io v1beta1 and
/// v1beta2, external.metrics.k8s.io v1beta1) from PromQL, for the HorizontalPodAutoscaler; with
/// resourceRules also metrics.k8s.io v1beta1 (kubectl top, CPU/memory HPAs).
/// Reads prometheus-adapter's rules file and flags unchanged. Settings also come from the
/// `[adapter]` table of a pipeline.toml; flags override it.
#[derive(Debug, Clone, Parser)]
#[command(name = "prom-adapter", version, about, long_about = None)]
pub struct Cli {
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Rules: prometheus-adapter's config YAML (`rules`, `externalRules`, `resourceRules`). A
    /// file ending in `.toml` is read as pipeline.toml instead (its `[adapter]` table, rules
    /// included).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Base URL of the Prometheus API (Thanos, Mimir and VictoriaMetrics work too); a path
    /// prefix is kept. It is the backend named `default`; several backends are configured
    /// as `[[adapter.backends]]` in pipeline.toml instead. Default: http://127.0.0.1:9090.
    #[arg(long, global = true, value_name = "URL")]
    pub prometheus_url: Option<String>,

    /// How often every rule's series query refreshes the metric lists. Default: 1m.
    #[arg(long, global = true, value_name = "DURATION")]
    pub metrics_relist_interval: Option<ConfigDuration>,

    /// How far back discovery looks for series; at least the relist interval (its default).
    #[arg(long, global = true, value_name = "DURATION")]
    pub metrics_max_age: Option<ConfigDuration>,

    /// HTTPS port; 0 picks a free one (see --ready-file). Default: 6443.
    #[arg(long, value_name = "PORT")]
    pub secure_port: Option<u16>,

    /// Address to listen on. Default: 0.0.0.0.
    #[arg(long, value_name = "IP")]
    pub bind_address: Option<IpAddr>,

    /// Serving certificate (PEM). Without it, a self-signed pair is generated at start.
    #[arg(long, value_name = "FILE", requires = "tls_private_key_file")]
    pub tls_cert_file: Option<String>,

    /// Key of --tls-cert-file (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert_file")]
    pub tls_private_key_file: Option<String>,

    /// Directory for the self-signed pair (apiserver.crt, apiserver.key), reused across
    /// restarts. Ignored when --tls-cert-file is given.
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<String>,

    /// HTTP method for Prometheus queries: GET or POST (POST avoids URL length limits).
    #[arg(long, global = true, value_name = "VERB")]
    pub prometheus_verb: Option<String>,

    /// Extra header for every Prometheus request, `Key=Value`; repeatable
    /// (e.g. X-Scope-OrgID=tenant-1).
    #[arg(long = "prometheus-header", global = true, value_name = "KEY=VALUE")]
    pub prometheus_headers: Vec<String>,

    /// CA bundle (PEM) to verify an HTTPS Prometheus.
    #[arg(long, global = true, value_name = "FILE")]
    pub prometheus_ca_file: Option<String>,

    /// Bearer token file for Prometheus; re-read when it changes.
    #[arg(long, global = true, value_name = "FILE")]
    pub prometheus_token_file: Option<String>,

    /// Client certificate (PEM) for mutual TLS to Prometheus.
    #[arg(long, global = true, value_name = "FILE")]
    pub prometheus_client_tls_cert_file: Option<String>,

    /// Key of --prometheus-client-tls-cert-file.
    #[arg(long, global = true, value_name = "FILE")]
    pub prometheus_client_tls_key_file: Option<String>,

    /// Timeout of each Prometheus call, also sent as its `timeout` parameter. Default: 30s.
    #[arg(long, global = true, value_name = "DURATION")]
    pub prometheus_timeout: Option<ConfigDuration>,

    /// Log verbosity as Kubernetes components take it: 0-3 info, 4-7 debug (each
    /// Prometheus call), 8+ trace. RUST_LOG overrides it.
    #[arg(long = "v", visible_alias = "verbosity", value_name = "N")]
    pub verbosity: Option<u8>,

    /// Log format: text or json.
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,

    /// How often the --tls-cert-file/--tls-private-key-file pair is checked for changes.
    /// Default: 10s.
    #[arg(long, value_name = "DURATION")]
    pub cert_reload_interval: Option<ConfigDuration>,

    /// Serve every request without authentication or authorization: for local use only,
    /// never in a cluster. Warned about at start and every minute.
    #[arg(long)]
    pub insecure_dev: bool,

    /// Watch `PrometheusMetric` objects (prom-adapter.io/v1alpha1, the CRD in deploy/) and
    /// serve each as a named query in its namespace, writing its status back. Needs a
    /// cluster (--lister-kubeconfig or in a pod).
    #[arg(long)]
    pub watch_prometheus_metrics: bool,

    /// How many named queries may run at once. Default: 4.
    #[arg(long, value_name = "N")]
    pub query_concurrency: Option<usize>,

    /// Queries each backend may run at once (requests, discovery and named queries
    /// together). Default: 32.
    #[arg(long, value_name = "N")]
    pub max_concurrent_queries: Option<usize>,

    /// Queries that may wait for a turn per backend; beyond that a request is answered 503
    /// with Retry-After at once, so a slow backend can't pile up work. Default: 256.
    #[arg(long, value_name = "N")]
    pub max_queued_queries: Option<usize>,

    /// CA bundle that signs kube-apiserver's front-proxy client certificate. Default: the
    /// kube-system/extension-apiserver-authentication ConfigMap.
    #[arg(long, value_name = "FILE")]
    pub requestheader_client_ca_file: Option<String>,

    /// Front-proxy certificate common names accepted (comma-separated); empty: any
    /// certificate signed by the front-proxy CA.
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub requestheader_allowed_names: Option<Vec<String>>,

    /// Request headers naming the user (comma-separated). Default: X-Remote-User.
    #[arg(long, value_name = "HEADERS", value_delimiter = ',')]
    pub requestheader_username_headers: Option<Vec<String>>,

    /// Request headers naming the groups. Default: X-Remote-Group.
    #[arg(long, value_name = "HEADERS", value_delimiter = ',')]
    pub requestheader_group_headers: Option<Vec<String>>,

    /// Prefixes of request headers carrying extra user attributes. Default: X-Remote-Extra-.
    #[arg(long, value_name = "PREFIXES", value_delimiter = ',')]
    pub requestheader_extra_headers_prefix: Option<Vec<String>>,

    /// Request headers naming the user's UID. Default: none.
    #[arg(long, value_name = "HEADERS", value_delimiter = ',')]
    pub requestheader_uid_headers: Option<Vec<String>>,

    /// CA bundle of client certificates that authenticate users directly (CN = user,
    /// O = groups).
    #[arg(long, value_name = "FILE")]
    pub client_ca_file: Option<String>,

    /// Kubeconfig of the cluster whose pods, namespaces and mapped objects are watched (a
    /// cache that resolves labelSelector without a LIST per request). Default: the in-cluster
    /// config in a pod; elsewhere, no cache: series labels stand in for object labels.
    #[arg(long, value_name = "FILE")]
    pub lister_kubeconfig: Option<String>,

    /// Kubeconfig of the kube-apiserver that reviews bearer tokens (TokenReview) and holds the
    /// authentication ConfigMap. Default: the in-cluster config.
    #[arg(long, value_name = "FILE")]
    pub authentication_kubeconfig: Option<String>,

    /// Kubeconfig of the kube-apiserver that authorizes requests (SubjectAccessReview).
    /// Default: the in-cluster config.
    #[arg(long, value_name = "FILE")]
    pub authorization_kubeconfig: Option<String>,

    /// Don't read the kube-system/extension-apiserver-authentication ConfigMap.
    #[arg(long)]
    pub authentication_skip_lookup: bool,

    /// Paths served without authentication or authorization (comma-separated; a trailing
    /// `*` matches a prefix). Default: /healthz,/livez,/readyz,/openapi/*.
    #[arg(long, value_name = "PATHS", value_delimiter = ',')]
    pub authorization_always_allow_paths: Option<Vec<String>>,

    /// How long a TokenReview answer is reused. Default: 10s.
    #[arg(long, value_name = "DURATION")]
    pub authentication_token_webhook_cache_ttl: Option<ConfigDuration>,

    /// How long an allowing SubjectAccessReview answer is reused. Default: 10s.
    #[arg(long, value_name = "DURATION")]
    pub authorization_webhook_cache_authorized_ttl: Option<ConfigDuration>,

    /// How long a denying SubjectAccessReview answer is reused. Default: 10s.
    #[arg(long, value_name = "DURATION")]
    pub authorization_webhook_cache_unauthorized_ttl: Option<ConfigDuration>,

    /// Write `{"secure": "ADDR"}` here once the HTTPS listener is bound (for tests and
    /// scripts that start the adapter on port 0).
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
}

/// Subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Validate a rules YAML or a pipeline.toml and exit (0: valid; 64: an error naming
    /// the file, line and field).
    CheckConfig {
        /// The file; defaults to --config, then pipeline.toml.
        file: Option<PathBuf>,
    },
    /// Print the PromQL a request would run. Asks Prometheus for the series (as discovery
    /// does) to find the series behind the metric.
    Render {
        /// The metric name as the API serves it.
        #[arg(long)]
        metric: String,
        /// Group-qualified resource (pods, namespaces, deployments.apps); ignored with
        /// --external.
        #[arg(long, default_value = "pods")]
        resource: String,
        /// The request's namespace.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// One object's name; without it, every object (`*`).
        #[arg(long)]
        name: Option<String>,
        /// `labelSelector` (for --external: the metric selector).
        #[arg(long, default_value = "")]
        selector: String,
        /// `metricLabelSelector`.
        #[arg(long, default_value = "")]
        metric_selector: String,
        /// An external metric instead of a custom one.
        #[arg(long)]
        external: bool,
    },
    /// Print a running adapter's state as tables (GET /status): every rule and named query,
    /// discovered metric counts, last discovery and its error, each metric's last value,
    /// sample age and error, backend health and latency. Run it in the adapter's pod
    /// (`kubectl exec deploy/prom-adapter -- prom-adapter status --insecure-skip-tls-verify`),
    /// where the pod's service account token is used, or with a client certificate.
    Status {
        /// Where and how to reach the adapter.
        #[command(flatten)]
        remote: Remote,
    },
    /// Ask a running adapter how it answers one request (GET /explain): the rule or named
    /// query serving it, the PromQL, the backend's answer now, and the Quantity returned.
    Explain {
        /// The metric name as the API serves it.
        #[arg(long)]
        metric: String,
        /// The request's namespace.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// `labelSelector`: the HPA's selector (external) or the objects' (custom).
        #[arg(long, default_value = "")]
        selector: String,
        /// A custom metric's group-qualified resource (pods, deployments.apps); default: a
        /// named query or external metric of that name, else the one resource serving it.
        #[arg(long)]
        resource: Option<String>,
        /// One object's name (custom metrics); without it, every object (`*`).
        #[arg(long)]
        name: Option<String>,
        /// A custom metric's `metricLabelSelector`.
        #[arg(long, default_value = "")]
        metric_selector: String,
        /// Where and how to reach the adapter.
        #[command(flatten)]
        remote: Remote,
    },
}

/// How `status` and `explain` reach a running adapter. Its requests are authenticated and
/// authorized like any other (non-resource URLs `/status` and `/explain`, verb `get`).
#[derive(Debug, Clone, clap::Args)]
pub struct Remote {
    /// The adapter's base URL.
    #[arg(long, default_value = "https://127.0.0.1:6443")]
    pub url: String,
    /// Bearer token file. Default: the pod's service account token, when there is one and
    /// no client certificate is given.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Client certificate (PEM), for an adapter that trusts its CA (--client-ca-file).
    #[arg(long, value_name = "FILE", requires = "client_key")]
    pub client_certificate: Option<PathBuf>,
    /// Its key (PEM).
    #[arg(long, value_name = "FILE", requires = "client_certificate")]
    pub client_key: Option<PathBuf>,
    /// CA bundle to verify the adapter's serving certificate with.
    #[arg(long, value_name = "FILE")]
    pub certificate_authority: Option<PathBuf>,
    /// Don't verify the adapter's serving certificate (its self-signed one, on localhost).
    #[arg(long)]
    pub insecure_skip_tls_verify: bool,
    /// Print the JSON answer instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Where a pod's service account token is mounted.
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// prometheus-adapter and k8s.io/apiserver flags accepted for compatibility, with no
/// effect here (logged once at start). Those taking no value are marked `false`.
pub const IGNORED_FLAGS: &[(&str, bool)] = &[
    ("prometheus-auth-incluster", false),
    ("prometheus-auth-config", true),
    ("disable-http2", false),
    ("kubeconfig", true),
    ("discovery-interval", true),
    ("client-qps", true),
    ("client-burst", true),
    ("authentication-tolerate-lookup-failure", false),
    ("tls-cipher-suites", true),
    ("tls-min-version", true),
    ("tls-sni-cert-key", true),
    ("profiling", false),
    ("enable-priority-and-fairness", false),
    ("logtostderr", false),
    ("alsologtostderr", false),
    ("log-dir", true),
    ("log-file", true),
    ("feature-gates", true),
    ("audit-log-path", true),
    ("audit-policy-file", true),
];

/// Splits prometheus-adapter's no-op flags off `args` (program name first). Returns the
/// arguments for clap and the names of the flags dropped. Go flags may be written `-flag`,
/// `--flag`, `--flag=value` or `--flag value`; boolean ones also `--flag=false`.
pub fn strip_ignored(args: Vec<String>) -> (Vec<String>, Vec<String>) {
    let mut kept = Vec::with_capacity(args.len());
    let mut dropped = Vec::new();
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        let name = arg.trim_start_matches('-');
        let (name, inline_value) = match name.split_once('=') {
            Some((n, _)) => (n, true),
            None => (name, false),
        };
        let known = if arg.starts_with('-') && !arg.starts_with("---") {
            IGNORED_FLAGS.iter().find(|(n, _)| *n == name)
        } else {
            None
        };
        match known {
            Some((n, takes_value)) => {
                dropped.push((*n).to_owned());
                if *takes_value && !inline_value {
                    iter.next();
                }
            }
            None => kept.push(go_style(arg)),
        }
    }
    (kept, dropped)
}

/// Go's flag package takes `-flag`; clap wants `--flag` for long names.
fn go_style(arg: String) -> String {
    match arg.strip_prefix('-') {
        Some(rest) if !rest.starts_with('-') && rest.len() > 1 => format!("--{rest}"),
        _ => arg,
    }
}

impl Cli {
    /// Applies the flags over the config table.
    pub fn apply(&self, a: &mut AdapterConfig) -> Result<(), String> {
        fn set(field: &mut toml::Spanned<String>, value: String) {
            *field = toml::Spanned::new(0..0, value);
        }
        if let Some(url) = &self.prometheus_url {
            set(&mut a.prometheus_url, url.clone());
        }
        if let Some(d) = self.metrics_relist_interval {
            a.relist_interval = toml::Spanned::new(0..0, d);
        }
        if let Some(d) = self.metrics_max_age {
            a.metrics_max_age = toml::Spanned::new(0..0, d);
        }
        if self.secure_port.is_some() || self.bind_address.is_some() {
            let current: std::net::SocketAddr = a
                .listen
                .get_ref()
                .parse()
                .unwrap_or_else(|_| ([0, 0, 0, 0], 6443).into());
            let ip = self.bind_address.unwrap_or(current.ip());
            let port = self.secure_port.unwrap_or(current.port());
            set(
                &mut a.listen,
                std::net::SocketAddr::new(ip, port).to_string(),
            );
        }
        if let Some(v) = &self.tls_cert_file {
            a.tls_cert_file = v.clone();
        }
        if let Some(v) = &self.tls_private_key_file {
            a.tls_private_key_file = v.clone();
        }
        if let Some(v) = &self.cert_dir {
            a.cert_dir = v.clone();
        }
        if let Some(v) = &self.prometheus_verb {
            set(&mut a.prometheus_verb, v.clone());
        }
        for h in &self.prometheus_headers {
            let (k, v) = h
                .split_once('=')
                .ok_or_else(|| format!("--prometheus-header `{h}`: expected Key=Value"))?;
            a.prometheus_headers
                .insert(k.trim().to_owned(), v.to_owned());
        }
        if let Some(v) = &self.prometheus_ca_file {
            a.prometheus_ca_file = v.clone();
        }
        if let Some(v) = &self.prometheus_token_file {
            a.prometheus_token_file = v.clone();
        }
        if let Some(v) = &self.prometheus_client_tls_cert_file {
            a.prometheus_client_cert_file = v.clone();
        }
        if let Some(v) = &self.prometheus_client_tls_key_file {
            a.prometheus_client_key_file = v.clone();
        }
        if let Some(d) = self.prometheus_timeout {
            a.prometheus_timeout = d;
        }
        if let Some(v) = self.verbosity {
            let level = match v {
                0..=3 => "info",
                4..=7 => "debug",
                _ => "trace",
            };
            set(&mut a.log_level, level.to_owned());
        }
        if let Some(d) = self.cert_reload_interval {
            a.cert_reload_interval = d;
        }
        a.insecure_dev |= self.insecure_dev;
        a.watch_prometheus_metrics |= self.watch_prometheus_metrics;
        if let Some(n) = self.query_concurrency {
            a.query_concurrency = n;
        }
        if let Some(n) = self.max_concurrent_queries {
            a.max_concurrent_queries = n;
        }
        if let Some(n) = self.max_queued_queries {
            a.max_queued_queries = n;
        }
        a.authentication_skip_lookup |= self.authentication_skip_lookup;
        let strings = [
            (
                &self.requestheader_client_ca_file,
                &mut a.requestheader_client_ca_file,
            ),
            (&self.client_ca_file, &mut a.client_ca_file),
            (&self.lister_kubeconfig, &mut a.lister_kubeconfig),
            (
                &self.authentication_kubeconfig,
                &mut a.authentication_kubeconfig,
            ),
            (
                &self.authorization_kubeconfig,
                &mut a.authorization_kubeconfig,
            ),
        ];
        for (flag, field) in strings {
            if let Some(v) = flag {
                field.clone_from(v);
            }
        }
        let lists = [
            (
                &self.requestheader_allowed_names,
                &mut a.requestheader_allowed_names,
            ),
            (
                &self.requestheader_username_headers,
                &mut a.requestheader_username_headers,
            ),
            (
                &self.requestheader_group_headers,
                &mut a.requestheader_group_headers,
            ),
            (
                &self.requestheader_extra_headers_prefix,
                &mut a.requestheader_extra_headers_prefix,
            ),
            (
                &self.requestheader_uid_headers,
                &mut a.requestheader_uid_headers,
            ),
            (
                &self.authorization_always_allow_paths,
                &mut a.authorization_always_allow_paths,
            ),
        ];
        for (flag, field) in lists {
            if let Some(v) = flag {
                *field = v.iter().filter(|s| !s.is_empty()).cloned().collect();
            }
        }
        let durations = [
            (
                self.authentication_token_webhook_cache_ttl,
                &mut a.authentication_token_webhook_cache_ttl,
            ),
            (
                self.authorization_webhook_cache_authorized_ttl,
                &mut a.authorization_webhook_cache_authorized_ttl,
            ),
            (
                self.authorization_webhook_cache_unauthorized_ttl,
                &mut a.authorization_webhook_cache_unauthorized_ttl,
            ),
        ];
        for (flag, field) in durations {
            if let Some(d) = flag {
                *field = d;
            }
        }
        if let Some(f) = &self.log_format {
            a.log_format = match f.as_str() {
                "text" => common::telemetry::LogFormat::Text,
                "json" => common::telemetry::LogFormat::Json,
                other => return Err(format!("--log-format `{other}`: expected text or json")),
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn prometheus_adapter_deployment_args_parse() {
        // The args of prometheus-adapter's deploy/manifests/deployment.yaml.
        let (kept, dropped) = strip_ignored(args(
            "prom-adapter --cert-dir=/var/run/serving-cert --config=/etc/adapter/config.yaml \
             --metrics-relist-interval=1m --prometheus-url=https://prometheus.monitoring.svc:9090/ \
             --secure-port=6443 --tls-cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 \
             --v=6 -logtostderr --disable-http2 --authentication-tolerate-lookup-failure \
             --requestheader-allowed-names=front-proxy-client,aggregator",
        ));
        assert_eq!(
            dropped,
            vec![
                "tls-cipher-suites",
                "logtostderr",
                "disable-http2",
                "authentication-tolerate-lookup-failure"
            ]
        );
        let cli = Cli::try_parse_from(kept).unwrap();
        assert_eq!(cli.secure_port, Some(6443));
        assert_eq!(cli.verbosity, Some(6));
        let mut cfg = AdapterConfig::default();
        cli.apply(&mut cfg).unwrap();
        assert_eq!(cfg.listen.get_ref(), "0.0.0.0:6443");
        assert_eq!(cfg.cert_dir, "/var/run/serving-cert");
        assert_eq!(
            cfg.requestheader_allowed_names,
            vec!["front-proxy-client", "aggregator"]
        );
        assert_eq!(cfg.log_level.get_ref(), "debug");
        assert_eq!(
            cfg.prometheus_url.get_ref(),
            "https://prometheus.monitoring.svc:9090/"
        );
    }

    #[test]
    fn headers_and_bind_address() {
        let cli = Cli::try_parse_from(args(
            "prom-adapter --prometheus-header X-Scope-OrgID=t1 --prometheus-header A=b=c \
             --bind-address 127.0.0.1 --secure-port 0",
        ))
        .unwrap();
        let mut cfg = AdapterConfig::default();
        cli.apply(&mut cfg).unwrap();
        assert_eq!(cfg.prometheus_headers["X-Scope-OrgID"], "t1");
        assert_eq!(cfg.prometheus_headers["A"], "b=c");
        assert_eq!(cfg.listen.get_ref(), "127.0.0.1:0");
        let bad = Cli::try_parse_from(args("prom-adapter --prometheus-header nope")).unwrap();
        assert!(bad.apply(&mut cfg).is_err());
    }

    #[test]
    fn unknown_flags_still_fail() {
        let (kept, dropped) = strip_ignored(args("prom-adapter --no-such-flag"));
        assert!(dropped.is_empty());
        assert!(Cli::try_parse_from(kept).is_err());
    }

    #[test]
    fn help_documents_every_flag() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        for arg in cmd.get_arguments() {
            assert!(
                arg.get_help().is_some() || arg.get_id() == "help" || arg.get_id() == "version",
                "flag {} has no help",
                arg.get_id()
            );
        }
    }
}
