//! prom-adapter: serves `custom.metrics.k8s.io` and `external.metrics.k8s.io` (and, with
//! resource rules, `metrics.k8s.io`) from PromQL, for the HorizontalPodAutoscaler and
//! `kubectl top`, reading prometheus-adapter's rules unchanged.
//!
//! # Layout
//! - [`rules`]: rules YAML/TOML → compiled rules; naming, resources, query templates (pure).
//! - [`selector`]: Kubernetes label selectors → PromQL matchers (pure).
//! - [`quantity`]: sample values → canonical Kubernetes Quantity strings (pure).
//! - [`discovery`]: series → the metric registry the discovery documents list (pure).
//! - [`prom`]: the Prometheus API behind the [`prom::PromApi`] trait: HTTP client and fake.
//! - [`provider`]: rules + backend → API answers.
//! - [`api`]: request paths, Kubernetes wire types, `Status` errors; only it knows the JSON.
//! - [`server`]: the HTTPS edge and its pure router.
//! - [`config`], [`cli`], [`telemetry`]: `[adapter]` settings, flags, self-metrics.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod discovery;
pub mod forward;
pub mod fuzzing;
pub mod named;
pub use common::kube_client;
pub mod objects;
pub mod prom;
pub mod prometheus_metric;
pub mod provider;
pub mod quantity;
pub mod rules;
pub mod selector;
pub mod server;
pub mod status;
pub mod telemetry;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::prom::http::Client;
use crate::provider::Provider;
use crate::server::State;
use crate::telemetry::Metrics;

/// Why the adapter stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The Prometheus client could not be built (bad CA file, header, URL).
    #[error("prometheus client: {0}")]
    Client(String),
    /// The settings can't work (no way to authenticate, unreadable CA): a usage error.
    #[error("{0}")]
    Config(String),
    /// The listener could not be bound.
    #[error("{0}")]
    Bind(String),
}

/// How often `--insecure-dev` is warned about.
const INSECURE_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// How often the authentication ConfigMap is re-read.
const CONFIG_MAP_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Builds authentication and authorization from the settings, and starts re-reading the
/// authentication ConfigMap. Secure by default: without `insecure_dev` it needs an
/// authentication source and an authorization source.
pub async fn access(
    adapter: &config::AdapterConfig,
    registry: &prometheus::Registry,
    stop: &CancellationToken,
) -> Result<server::Access<auth::KubeAuth>, RunError> {
    if adapter.insecure_dev {
        return Ok(server::Access::Open);
    }
    let path = |s: &str| (!s.is_empty()).then(|| std::path::PathBuf::from(s));
    let authn_kubeconfig = path(&adapter.authentication_kubeconfig);
    let authz_kubeconfig = path(&adapter.authorization_kubeconfig);
    let kube = auth::KubeAuth::new(authn_kubeconfig.as_deref(), authz_kubeconfig.as_deref())
        .await
        .map_err(|e| RunError::Config(format!("kube-apiserver client: {e}")))?;
    let requestheader = match path(&adapter.requestheader_client_ca_file) {
        Some(file) => {
            let ca = common::tls::ClientCa::from_pem_file(&file)
                .map_err(|e| RunError::Config(format!("--requestheader-client-ca-file: {e}")))?;
            Some(auth::RequestHeaderConfig {
                allowed_names: adapter.requestheader_allowed_names.clone(),
                username_headers: adapter.requestheader_username_headers.clone(),
                group_headers: adapter.requestheader_group_headers.clone(),
                extra_prefixes: adapter.requestheader_extra_headers_prefix.clone(),
                uid_headers: adapter.requestheader_uid_headers.clone(),
                ..auth::RequestHeaderConfig::new(ca)
            })
        }
        None => None,
    };
    let client_ca = match path(&adapter.client_ca_file) {
        Some(file) => Some(
            common::tls::ClientCa::from_pem_file(&file)
                .map_err(|e| RunError::Config(format!("--client-ca-file: {e}")))?,
        ),
        None => None,
    };
    let pinned = auth::AuthnConfig {
        requestheader,
        client_ca,
        token_cache_ttl: adapter.authentication_token_webhook_cache_ttl.0,
        ..auth::AuthnConfig::default()
    };
    let Some(kube) = kube else {
        return Err(RunError::Config(
            "no kube-apiserver to authorize requests with (SubjectAccessReview): give \
             --authorization-kubeconfig (and --authentication-kubeconfig), run in a cluster, \
             or pass --insecure-dev for local use"
                .into(),
        ));
    };
    if let Err(e) = auth::check_always_allow_patterns(&adapter.authorization_always_allow_paths) {
        return Err(RunError::Config(format!(
            "--authorization-always-allow-paths: {e}"
        )));
    }
    let metrics = auth::AuthMetrics::new();
    if let Err(e) = metrics.register(registry) {
        tracing::warn!(error = %e, "Cannot register the authentication metrics.");
    }
    let authn = Arc::new(auth::Authenticator::new(
        pinned.clone(),
        Some(kube.clone()),
        metrics.clone(),
    ));
    if !adapter.authentication_skip_lookup {
        match authn.reload_from_cluster(&pinned).await {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "Cannot read the authentication ConfigMap; using the flags.")
            }
        }
        let (authn, stop) = (Arc::clone(&authn), stop.clone());
        tokio::spawn(async move { authn.reload_loop(pinned, CONFIG_MAP_EVERY, stop).await });
    }
    let authz = Arc::new(auth::Authorizer::new(
        Some(kube),
        auth::AuthzConfig {
            authorized_ttl: adapter.authorization_webhook_cache_authorized_ttl.0,
            unauthorized_ttl: adapter.authorization_webhook_cache_unauthorized_ttl.0,
        },
        metrics,
    ));
    Ok(server::Access::Delegated {
        authn,
        authz,
        always_allow: adapter.authorization_always_allow_paths.clone(),
    })
}

/// Reads the config again, with the same flags, for a reload.
pub type Reloader = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// How often the config files are checked for changes.
const CONFIG_POLL_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// What is set up before the listener is bound, so a config that can't work fails before the
/// adapter looks ready.
pub struct Prepared {
    /// Self-metrics.
    pub metrics: Arc<Metrics>,
    /// Authentication and authorization.
    pub access: server::Access<auth::KubeAuth>,
    /// Stops the background tasks.
    pub stop: CancellationToken,
    /// The backends' clients, in configured order, with their names.
    pub clients: Vec<(String, Client)>,
    /// The watch cache of objects, when there is a cluster to watch.
    pub objects: Option<objects::WatchCache>,
    /// The external metrics server unserved external metrics go to.
    pub forwarder: Option<Arc<forward::Forwarder>>,
    /// The client `PrometheusMetric` objects are watched with, when asked to.
    pub prometheus_metrics: Option<kube::Client>,
}

/// Builds access control (reading the authentication ConfigMap) and the self-metrics.
pub async fn prepare(cfg: &Config) -> Result<Prepared, RunError> {
    let metrics = Arc::new(Metrics::new());
    let stop = CancellationToken::new();
    let clients = clients(cfg).map_err(RunError::Config)?;
    let forwarder = match &cfg.external_upstream {
        Some(u) => {
            let client = Client::new(u.clone())
                .map_err(|e| RunError::Config(format!("external_upstream: {e}")))?;
            let name = client.base_url().to_owned();
            tracing::info!(upstream = %name, "Forwarding external metrics without a rule here.");
            Some(Arc::new(forward::Forwarder::new(client, name)))
        }
        None => None,
    };
    let access = access(&cfg.adapter, metrics.registry(), &stop).await?;
    let lister = (!cfg.adapter.lister_kubeconfig.is_empty())
        .then(|| std::path::PathBuf::from(&cfg.adapter.lister_kubeconfig));
    let kube = objects::client(lister.as_deref())
        .await
        .map_err(|e| RunError::Config(format!("--lister-kubeconfig: {e}")))?;
    let prometheus_metrics = match (&kube, cfg.adapter.watch_prometheus_metrics) {
        (Some(kube), true) => Some(kube.clone()),
        (None, true) => {
            return Err(RunError::Config(
                "watch_prometheus_metrics needs a cluster: give --lister-kubeconfig or run in a pod"
                    .into(),
            ));
        }
        (_, false) => None,
    };
    let objects = match kube {
        Some(kube) => {
            let object_metrics = objects::ObjectsMetrics::new();
            if let Err(e) = object_metrics.register(metrics.registry()) {
                tracing::warn!(error = %e, "Cannot register the object cache metrics.");
            }
            let mut extra: Vec<rules::resources::GroupResource> = cfg
                .rules
                .iter()
                .flat_map(|r| r.resources.override_resources())
                .map(|info| info.group_resource.clone())
                .collect();
            if cfg.rules.resource.is_some() {
                // metrics.k8s.io lists nodes, with their labels, as it lists pods.
                extra.push(rules::resources::GroupResource::new("", "nodes"));
            }
            extra.sort();
            extra.dedup();
            let cache = objects::WatchCache::start(kube, &extra, object_metrics, stop.clone())
                .await
                .map_err(|e| RunError::Client(format!("object cache: {e}")))?;
            tracing::info!(watched = ?cache.watched(), "Watching objects to resolve selectors.");
            Some(cache)
        }
        None => {
            tracing::info!(
                "No cluster to watch (no --lister-kubeconfig, not in a pod): series labels stand in for object labels."
            );
            None
        }
    };
    Ok(Prepared {
        metrics,
        access,
        stop,
        clients,
        objects,
        forwarder,
        prometheus_metrics,
    })
}

/// One HTTP client per backend; an error names the backend.
fn clients(cfg: &Config) -> Result<Vec<(String, Client)>, String> {
    cfg.backends
        .iter()
        .map(|b| {
            Client::new(b.client.clone())
                .map(|c| (b.name.clone(), c))
                .map_err(|e| format!("prometheus client of backend `{}`: {e}", b.name))
        })
        .collect()
}

/// Serves until `shutdown` resolves, relisting in the background; with a `reloader`, the rules
/// are reloaded on SIGHUP and when a config file changes.
pub async fn run(
    cfg: Config,
    prepared: Prepared,
    listener: TcpListener,
    certs: Arc<common::tls::CertStore>,
    reloader: Option<Reloader>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let Prepared {
        metrics,
        access,
        stop,
        clients,
        objects,
        forwarder,
        prometheus_metrics,
    } = prepared;
    let client_certs = match access {
        server::Access::Open => {
            tracing::warn!(
                "--insecure-dev: every request is served without authentication or authorization. Never use this in a cluster."
            );
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(INSECURE_WARNING_EVERY);
                every.tick().await;
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = every.tick() => tracing::warn!("--insecure-dev: still serving without authentication or authorization."),
                    }
                }
            });
            common::tls::ClientCerts::None
        }
        server::Access::Delegated { .. } => common::tls::ClientCerts::Request,
    };
    let tls = common::tls::server_config_for(Arc::clone(&certs), client_certs)
        .map_err(|e| RunError::Config(format!("TLS: {e}")))?;
    if !cfg.adapter.tls_cert_file.is_empty() {
        let reloads = metrics.cert_reloads.clone();
        Arc::clone(&certs).watch_files(
            cfg.adapter.tls_cert_file.clone().into(),
            cfg.adapter.tls_private_key_file.clone().into(),
            cfg.adapter.cert_reload_interval.0,
            stop.clone(),
            move |result| {
                let label = if result.is_ok() { "ok" } else { "error" };
                reloads.with_label_values(&[label]).inc();
            },
        );
    }
    let urls: Vec<(String, String)> = clients
        .iter()
        .map(|(name, c)| (name.clone(), c.base_url().to_owned()))
        .collect();
    let mut provider = Provider::with_backends(
        clients,
        Arc::new(cfg.rules.clone()),
        Arc::clone(&metrics),
        cfg.max_age,
    )
    .with_status_info(&urls, cfg.relist_interval)
    .with_query_limits(
        cfg.adapter.max_concurrent_queries,
        cfg.adapter.max_queued_queries,
    );
    let mut ready_check: Option<server::ReadyCheck> = None;
    if let Some(cache) = objects {
        let synced = cache.clone();
        ready_check = Some(Arc::new(move || synced.synced()));
        provider = provider.with_objects(Arc::new(cache));
    }
    let provider = Arc::new(provider);
    let state = Arc::new(State {
        provider: Arc::clone(&provider),
        metrics,
        ready: AtomicBool::new(true),
        ready_check,
        access,
        forwarder: forwarder.clone(),
    });
    let relist = tokio::spawn(relist_loop(
        Arc::clone(&provider),
        forwarder,
        cfg.relist_interval,
        stop.clone(),
    ));
    if let Some(kube) = prometheus_metrics {
        tracing::info!(
            "Watching PrometheusMetric objects; each is served as a named query in its namespace."
        );
        tokio::spawn(prometheus_metric::run(
            kube,
            Arc::clone(&provider),
            stop.clone(),
        ));
    }
    let named = tokio::spawn(named_loop(
        Arc::clone(&provider),
        cfg.adapter.query_concurrency,
        stop.clone(),
    ));
    if let Some(reloader) = reloader {
        tokio::spawn(reload_loop(
            Arc::clone(&provider),
            Arc::clone(&state.metrics),
            cfg.clone(),
            reloader,
            stop.clone(),
        ));
    }
    let handler = move |req, conn| server::handle(Arc::clone(&state), req, conn);
    let serving = tokio::spawn(common::http::serve_tls(
        listener,
        tls,
        handler,
        stop.clone(),
        cfg.adapter.shutdown_grace.0,
    ));
    shutdown.await;
    tracing::info!("Shutting down.");
    stop.cancel();
    let _ = relist.await;
    let _ = named.await;
    let _ = serving.await;
    Ok(())
}

/// How often the named query loop looks for due queries at the least (a reload or a
/// finished run can make one due sooner than it slept for).
const NAMED_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Runs each named query when it is due, at most `concurrency` at once, until `stop`.
/// Requests never wait for this: they read the cache.
async fn named_loop<P: prom::PromApi + 'static>(
    provider: Arc<Provider<P>>,
    concurrency: usize,
    stop: CancellationToken,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut running = tokio::task::JoinSet::new();
    loop {
        let now = std::time::Instant::now();
        for slot in provider.named().take_due(now) {
            let (provider, permits) = (Arc::clone(&provider), Arc::clone(&permits));
            running.spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else {
                    return;
                };
                provider.refresh_named(&slot).await;
            });
        }
        while running.try_join_next().is_some() {}
        let wake = provider
            .named()
            .next_due()
            .map_or(now + NAMED_POLL, |due| due.min(now + NAMED_POLL));
        tokio::select! {
            () = stop.cancelled() => {
                running.abort_all();
                return;
            }
            () = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

/// A file's identity for change detection: modification time, length, inode.
fn file_stamp(path: &std::path::Path) -> Option<(std::time::SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

/// Reloads the rules on SIGHUP or when a source file changes. A config that doesn't load
/// keeps the running rules; the error (with file, line and column) is logged and counted.
async fn reload_loop<P: prom::PromApi>(
    provider: Arc<Provider<P>>,
    metrics: Arc<Metrics>,
    running: Config,
    reloader: Reloader,
    stop: CancellationToken,
) {
    let sources = running.sources.clone();
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "Cannot listen for SIGHUP; reloading on file changes only.");
            None
        }
    };
    let stamps = |sources: &[std::path::PathBuf]| -> Vec<_> {
        sources.iter().map(|p| file_stamp(p)).collect()
    };
    let mut seen = stamps(&sources);
    let mut sources = sources;
    let mut poll = tokio::time::interval(CONFIG_POLL_EVERY);
    loop {
        let why = tokio::select! {
            () = stop.cancelled() => return,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
            _ = poll.tick() => {
                let now = stamps(&sources);
                if now == seen {
                    continue;
                }
                seen = now;
                "file changed"
            }
        };
        // New rules must name backends this process has: they live until restart.
        let loaded = reloader().and_then(|cfg| {
            cfg.rules
                .check_backends(&provider.backend_names())
                .map(|()| cfg)
                .map_err(|e| e.to_string())
        });
        match loaded {
            Ok(cfg) => {
                tracing::info!(
                    trigger = why,
                    rules = cfg.rules.custom.len(),
                    external_rules = cfg.rules.external.len(),
                    resource_rules = cfg.rules.resource.is_some(),
                    "Reloaded the config; discovering with the new rules."
                );
                if cfg.backends != running.backends
                    || cfg.external_upstream != running.external_upstream
                {
                    // Their clients, connection pools and in-flight queries live as long as
                    // the process (rules naming a new one were refused above).
                    tracing::warn!(
                        "Backends and the external upstream change only on restart; keeping the running ones."
                    );
                }
                sources = cfg.sources.clone();
                seen = stamps(&sources);
                provider.replace_rules(cfg.rules);
                metrics.config_reloads.with_label_values(&["ok"]).inc();
                metrics.config_last_reload_ok.set(1.0);
                provider.relist().await;
            }
            Err(e) => {
                tracing::error!(trigger = why, error = %e, "Config reload failed; keeping the running rules.");
                metrics.config_reloads.with_label_values(&["error"]).inc();
                metrics.config_last_reload_ok.set(0.0);
            }
        }
    }
}

/// Relists now and then every `interval` until `stop`, re-reading the upstream's list too.
async fn relist_loop<P: prom::PromApi>(
    provider: Arc<Provider<P>>,
    forwarder: Option<Arc<forward::Forwarder>>,
    interval: std::time::Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let outcome = provider.relist().await;
        if let Some(f) = &forwarder {
            let _ = f.refresh(&provider.resource_list(true)).await;
        }
        if first || outcome.failed > 0 {
            tracing::info!(
                queries = outcome.queries,
                failed = outcome.failed,
                custom = outcome.custom,
                external = outcome.external,
                "Discovery ran."
            );
        }
        first = false;
    }
}

/// The serving certificate: the given PEM pair (re-read on change while serving), or a
/// self-signed one (kept in `cert_dir` when set, so restarts keep the same certificate).
pub fn serving_cert(
    adapter: &config::AdapterConfig,
) -> Result<Arc<common::tls::CertStore>, common::tls::TlsError> {
    let cert = if adapter.tls_cert_file.is_empty() {
        let dir = (!adapter.cert_dir.is_empty()).then(|| std::path::Path::new(&adapter.cert_dir));
        let (cert, pem) = common::tls::self_signed(&adapter.self_signed_hosts, dir)?;
        tracing::info!(
            hosts = ?adapter.self_signed_hosts,
            cert_dir = %adapter.cert_dir,
            "Serving with a self-signed certificate (no --tls-cert-file given)."
        );
        tracing::debug!(certificate = %pem, "Self-signed certificate.");
        cert
    } else {
        common::tls::load_pem(
            std::path::Path::new(&adapter.tls_cert_file),
            std::path::Path::new(&adapter.tls_private_key_file),
        )?
    };
    common::tls::CertStore::new(cert).map(Arc::new)
}

/// `prom-adapter status` and `explain`: GETs `path_and_query` of a running adapter; a
/// refusal or error comes back as its `Status` message.
pub async fn ask_adapter(remote: &cli::Remote, path_and_query: &str) -> Result<Vec<u8>, String> {
    let token = remote.token_file.clone().or_else(|| {
        let sa = std::path::Path::new(cli::SERVICE_ACCOUNT_TOKEN);
        (remote.client_certificate.is_none() && sa.exists()).then(|| sa.to_path_buf())
    });
    let client = Client::new(prom::http::ClientConfig {
        url: remote.url.clone(),
        bearer_token_file: token,
        ca_file: remote.certificate_authority.clone(),
        client_cert_file: remote.client_certificate.clone(),
        client_key_file: remote.client_key.clone(),
        insecure_skip_verify: remote.insecure_skip_tls_verify,
        ..prom::http::ClientConfig::default()
    })
    .map_err(|e| format!("cannot set up a client for {}: {e}", remote.url))?;
    let (code, body) = client
        .get_raw(path_and_query)
        .await
        .map_err(|e| format!("cannot reach the adapter at {}: {e}", remote.url))?;
    if code == 200 {
        return Ok(body.to_vec());
    }
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    Err(format!(
        "the adapter answered {code} {}: {}",
        status["reason"].as_str().unwrap_or("?"),
        status["message"].as_str().map_or_else(
            || String::from_utf8_lossy(&body).into_owned(),
            str::to_owned
        )
    ))
}

/// `prom-adapter render`: the PromQL a request would run, after one discovery pass.
pub async fn render(cfg: Config, cmd: &cli::Command) -> Result<String, String> {
    let cli::Command::Render {
        metric,
        resource,
        namespace,
        name,
        selector,
        metric_selector,
        external,
    } = cmd
    else {
        return Err("not a render command".into());
    };
    let provider = Provider::with_backends(
        clients(&cfg)?,
        Arc::new(cfg.rules),
        Arc::new(Metrics::new()),
        cfg.max_age,
    );
    let outcome = provider.relist().await;
    if outcome.failed > 0 {
        eprintln!(
            "prom-adapter: warning: {} of {} series queries failed; using what the rules name",
            outcome.failed, outcome.queries
        );
    }
    let rendered = if *external {
        provider
            .render_external(&api::route::ExternalRequest {
                namespace: namespace.clone(),
                metric: metric.clone(),
                label_selector: selector.clone(),
            })
            .await
    } else {
        let gr = rules::resources::GroupResource::parse(resource);
        let namespaced = rules::resources::for_request(&gr).is_none_or(|i| i.namespaced);
        provider
            .render_custom(&api::route::CustomRequest {
                version: api::types::CustomVersion::V1beta2,
                namespace: namespaced.then(|| namespace.clone()),
                resource: resource.clone(),
                name: name
                    .clone()
                    .map_or(api::route::ObjectName::All, api::route::ObjectName::Named),
                metric: metric.clone(),
                label_selector: selector.clone(),
                metric_label_selector: metric_selector.clone(),
            })
            .await
    };
    rendered.map_err(|e| e.to_string())
}
