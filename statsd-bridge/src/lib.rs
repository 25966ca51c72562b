//! statsd-bridge: StatsD/DogStatsD in, Prometheus exposition out.
//!
//! # Layout
//! - [`protocol`]: the line grammar (sans-IO, nom).
//! - [`aggregate`]: the series store (sans-IO; time is passed in).
//! - [`expose`]: text exposition of a store snapshot.
//! - [`ingest`]: datagram → parser → store, with the self-metrics counted.
//! - [`telemetry`]: the `statsd_bridge_*` self-metrics.
//! - [`config`], [`cli`]: the `[bridge]` table and the flags that override it.
//! - [`listen`]: sockets (the only module that touches StatsD input IO).
//! - [`http`]: the metrics page, `/healthz`, `/readyz`.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod aggregate;
pub mod cli;
pub mod config;
pub mod expose;
pub mod http;
pub mod ingest;
pub mod listen;
pub mod protocol;
pub mod telemetry;

use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::aggregate::Store;
use crate::config::Config;
use crate::ingest::Ingester;
use crate::telemetry::Telemetry;

/// Why the bridge could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A socket could not be bound.
    #[error("cannot bind {what} on {addr}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The self-metrics could not be registered (a bug).
    #[error("cannot register self-metrics")]
    Telemetry(#[source] prometheus::Error),
    /// A listener thread could not start.
    #[error("cannot start a listener thread")]
    Thread(#[source] std::io::Error),
}

/// Sockets bound before [`run`], so config errors and port clashes surface first.
#[derive(Debug)]
pub struct Listeners {
    /// UDP sockets.
    pub udp: Vec<UdpSocket>,
    /// The HTTP listener.
    pub web: std::net::TcpListener,
}

impl Listeners {
    /// Binds every socket the config names.
    pub fn bind(cfg: &Config) -> Result<Self, RunError> {
        let read_buffer = usize::try_from(cfg.bridge.read_buffer.0).unwrap_or(usize::MAX);
        let udp = cfg
            .udp
            .iter()
            .map(|&addr| {
                listen::udp::bind(addr, read_buffer).map_err(|source| RunError::Bind {
                    what: "UDP",
                    addr,
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        let web = std::net::TcpListener::bind(cfg.web).map_err(|source| RunError::Bind {
            what: "HTTP",
            addr: cfg.web,
            source,
        })?;
        Ok(Self { udp, web })
    }

    /// The bound addresses as JSON, for `--ready-file`.
    pub fn describe(&self) -> serde_json::Value {
        let udp: Vec<String> = self
            .udp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .map(|a| a.to_string())
            .collect();
        let web = self
            .web
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        serde_json::json!({ "udp": udp, "web": web })
    }
}

/// Runs the bridge until `shutdown` resolves, then stops the listeners, drains what they
/// hold into the store, keeps serving the metrics page for `shutdown_grace`, and returns.
pub async fn run(
    cfg: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let telemetry = Arc::new(Telemetry::new().map_err(RunError::Telemetry)?);
    let reserved = telemetry.reserved_names();
    let store = Arc::new(Store::new(cfg.store(), reserved.iter().map(String::as_str)));
    let ingester = Arc::new(Ingester::new(
        Arc::clone(&store),
        cfg.parse_options(),
        Arc::clone(&telemetry),
    ));

    let stop_listeners = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for socket in listeners.udp {
        let t = listen::udp::spawn(socket, Arc::clone(&ingester), Arc::clone(&stop_listeners))
            .map_err(RunError::Thread)?;
        threads.push(t);
    }

    let state = Arc::new(http::State {
        ingester: Arc::clone(&ingester),
        ready: AtomicBool::new(true),
        telemetry_path: cfg.bridge.telemetry_path.get_ref().clone(),
    });
    let web_addr = cfg.web;
    listeners
        .web
        .set_nonblocking(true)
        .map_err(|source| RunError::Bind {
            what: "HTTP",
            addr: web_addr,
            source,
        })?;
    let web =
        tokio::net::TcpListener::from_std(listeners.web).map_err(|source| RunError::Bind {
            what: "HTTP",
            addr: web_addr,
            source,
        })?;
    let http_stop = CancellationToken::new();
    let handler_state = Arc::clone(&state);
    let http_task = tokio::spawn(common::http::serve(
        web,
        move |req| http::handle(Arc::clone(&handler_state), req),
        http_stop.clone(),
        Duration::from_secs(5),
    ));

    let sweeper = (!cfg.bridge.ttl.0.is_zero()).then(|| {
        let store = Arc::clone(&store);
        let telemetry = Arc::clone(&telemetry);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let n = store.expire(std::time::Instant::now());
                telemetry.series_expired.inc_by(n as u64);
            }
        })
    });

    tracing::info!(udp = ?cfg.udp, web = %cfg.web, "statsd-bridge is ready.");
    shutdown.await;

    state.ready.store(false, Ordering::Relaxed);
    stop_listeners.store(true, Ordering::Relaxed);
    let joined = tokio::task::spawn_blocking(move || {
        for t in threads {
            if t.join().is_err() {
                tracing::error!("A listener thread panicked.");
            }
        }
    })
    .await;
    if joined.is_err() {
        tracing::error!("Waiting for the listeners failed.");
    }
    if let Some(s) = sweeper {
        s.abort();
    }
    let grace = cfg.bridge.shutdown_grace.0;
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        series = store.len(),
        "Listeners drained; serving the last scrapes."
    );
    tokio::time::sleep(grace).await;
    http_stop.cancel();
    if http_task.await.is_err() {
        tracing::error!("The HTTP server task failed.");
    }
    tracing::info!("statsd-bridge stopped.");
    Ok(())
}
