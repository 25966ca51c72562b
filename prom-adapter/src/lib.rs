//! prom-adapter: serves `custom.metrics.k8s.io` and `external.metrics.k8s.io` from PromQL,
//! for the HorizontalPodAutoscaler, reading prometheus-adapter's rules unchanged.
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
pub mod cli;
pub mod config;
pub mod discovery;
pub mod prom;
pub mod provider;
pub mod quantity;
pub mod rules;
pub mod selector;
pub mod server;
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
}

/// Serves until `shutdown` resolves, relisting in the background.
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let client =
        Client::new(cfg.prometheus.clone()).map_err(|e| RunError::Client(e.to_string()))?;
    let metrics = Arc::new(Metrics::new());
    let provider = Arc::new(Provider::new(
        client,
        Arc::new(cfg.rules.clone()),
        Arc::clone(&metrics),
        cfg.max_age,
    ));
    let state = Arc::new(State {
        provider: Arc::clone(&provider),
        metrics,
        ready: AtomicBool::new(true),
    });
    let stop = CancellationToken::new();
    let relist = tokio::spawn(relist_loop(
        Arc::clone(&provider),
        cfg.relist_interval,
        stop.clone(),
    ));
    let handler = move |req, _conn| server::handle(Arc::clone(&state), req);
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
    let _ = serving.await;
    Ok(())
}

/// Relists now and then every `interval` until `stop`.
async fn relist_loop<P: prom::PromApi>(
    provider: Arc<Provider<P>>,
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

/// The serving TLS config: the given PEM pair, or a self-signed one (kept in `cert_dir`
/// when set, so restarts keep the same certificate).
pub fn serving_tls(
    adapter: &config::AdapterConfig,
) -> Result<Arc<rustls::ServerConfig>, common::tls::TlsError> {
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
    common::tls::server_config(cert)
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
    let client = Client::new(cfg.prometheus.clone()).map_err(|e| e.to_string())?;
    let provider = Provider::new(
        client,
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
