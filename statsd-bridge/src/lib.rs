//! statsd-bridge: StatsD/DogStatsD in, Prometheus exposition out.
//!
//! # Layout
//! - [`protocol`]: the line grammar (sans-IO, nom).
//! - [`aggregate`]: the series store (sans-IO; time is passed in).
//! - [`expose`]: text exposition of a store snapshot.
//! - [`mapping`]: statsd_exporter's mapping rules (glob tree, regex, templates), sans-IO.
//! - [`ingest`]: datagram → parser → store, with the self-metrics counted.
//! - [`telemetry`]: the `statsd_bridge_*` self-metrics.
//! - [`explain`]: the `explain` subcommand.
//! - [`config`], [`cli`]: the `[bridge]` table and the flags that override it.
//! - [`framing`]: TCP stream → bounded lines (sans-IO).
//! - [`origin`]: which pod sent a datagram (pod watch, cgroups, static table) as labels.
//! - [`listen`]: sockets (the only module that touches StatsD input IO): UDP, TCP, unixgram.
//! - [`relay`]: forwards received lines to another StatsD server, never blocking.
//! - [`http`]: the metrics page, `/healthz`, `/readyz`.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod aggregate;
pub mod cli;
pub mod config;
pub mod explain;
pub mod expose;
pub mod framing;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod ingest;
pub mod listen;
pub mod mapping;
pub mod origin;
pub mod protocol;
pub mod relay;
pub mod telemetry;

use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::aggregate::Store;
use crate::config::Config;
use crate::ingest::Ingester;
use crate::listen::unixgram::BoundUnixgram;
use crate::mapping::{Mapper, MapperHandle};
use crate::origin::Origin;
use crate::relay::Relay;
use crate::telemetry::Telemetry;

/// Why the bridge could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A socket could not be bound.
    #[error("cannot bind {what} on {addr}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address or path.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The self-metrics could not be registered (a bug).
    #[error("cannot register self-metrics")]
    Telemetry(#[source] prometheus::Error),
    /// A listener or relay thread could not start.
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
    /// The mapping rules don't compile (validated before, so only on a race with the file).
    #[error("cannot compile the mapping rules")]
    Mapping(#[source] mapping::MappingError),
    /// Origin detection could not reach the kube-apiserver's configuration.
    #[error("origin detection: {0}")]
    Origin(#[source] common::kube_client::ClientError),
}

fn bind_err(what: &'static str, addr: impl ToString) -> impl FnOnce(std::io::Error) -> RunError {
    let addr = addr.to_string();
    move |source| RunError::Bind { what, addr, source }
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    v.retain(|a| seen.insert(a.clone()));
    v
}

/// Sockets bound before [`run`], so config errors and port clashes surface first.
#[derive(Debug)]
pub struct Listeners {
    /// UDP sockets.
    pub udp: Vec<UdpSocket>,
    /// TCP listeners.
    pub tcp: Vec<std::net::TcpListener>,
    /// Unix datagram sockets (their files are removed when dropped).
    pub unixgram: Vec<BoundUnixgram>,
    /// The HTTP listener.
    pub web: std::net::TcpListener,
}

impl Listeners {
    /// Binds every socket the config names.
    pub fn bind(cfg: &Config) -> Result<Self, RunError> {
        let read_buffer = usize::try_from(cfg.bridge.read_buffer.0).unwrap_or(usize::MAX);
        let workers = cfg.udp_workers();
        let mut udp = Vec::new();
        for &addr in &cfg.udp {
            let first =
                listen::udp::bind(addr, read_buffer, workers > 1).map_err(bind_err("UDP", addr))?;
            // With port 0 the kernel picked one; the other workers join that port.
            let bound = first.local_addr().map_err(bind_err("UDP", addr))?;
            udp.push(first);
            for _ in 1..workers {
                udp.push(
                    listen::udp::bind(bound, read_buffer, true).map_err(bind_err("UDP", bound))?,
                );
            }
        }
        let tcp = cfg
            .tcp
            .iter()
            .map(|&addr| std::net::TcpListener::bind(addr).map_err(bind_err("TCP", addr)))
            .collect::<Result<_, _>>()?;
        let unixgram = cfg
            .unixgram
            .iter()
            .map(|path| {
                listen::unixgram::bind(path, cfg.unix_mode, read_buffer)
                    .map_err(bind_err("unixgram", path.display()))
            })
            .collect::<Result<_, _>>()?;
        let web = std::net::TcpListener::bind(cfg.web).map_err(bind_err("HTTP", cfg.web))?;
        Ok(Self {
            udp,
            tcp,
            unixgram,
            web,
        })
    }

    /// The bound addresses as JSON, for `--ready-file`.
    pub fn describe(&self) -> serde_json::Value {
        let addrs = |it: &mut dyn Iterator<Item = std::io::Result<SocketAddr>>| -> Vec<String> {
            it.filter_map(Result::ok).map(|a| a.to_string()).collect()
        };
        serde_json::json!({
            "udp": dedup(addrs(&mut self.udp.iter().map(UdpSocket::local_addr))),
            "tcp": addrs(&mut self.tcp.iter().map(std::net::TcpListener::local_addr)),
            "unixgram": self.unixgram.iter().map(|u| u.path().display().to_string()).collect::<Vec<_>>(),
            "web": self.web.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        })
    }
}

/// The reload hook: re-reads the config file (or, without one, the mapping file) and swaps
/// in the new mapping rules. A bad new file keeps the old rules. Listener and store settings
/// take effect on restart.
fn reloader(
    cfg: &Config,
    telemetry: Arc<Telemetry>,
    mapper: Arc<MapperHandle>,
) -> Box<http::ReloadFn> {
    let running = cfg.clone();
    Box::new(move || {
        let loaded = match &running.path {
            Some(path) => Config::load(path).and_then(|mut c| {
                if let Some(file) = &running.mapping_override {
                    c.bridge.mapping_file = toml::Spanned::new(0..0, file.clone());
                    c.bridge.mapping = Vec::new();
                    (c.mapping, c.mapping_warnings) = Config::mapping_spec(&c.bridge, "", path)?;
                }
                Ok(c)
            }),
            None => Config::mapping_spec(&running.bridge, "", std::path::Path::new("<flags>")).map(
                |(mapping, mapping_warnings)| Config {
                    mapping,
                    mapping_warnings,
                    ..running.clone()
                },
            ),
        };
        let compiled = loaded.map_err(|e| e.to_string()).and_then(|c| {
            Mapper::compile(&c.mapping)
                .map_err(|e| e.to_string())
                .map(|m| (m, c))
        });
        match compiled {
            Ok((m, c)) => {
                let rules = m.len();
                mapper.replace(m);
                telemetry
                    .mappings_loaded
                    .set(i64::try_from(rules).unwrap_or(i64::MAX));
                telemetry.reloads_ok.inc();
                telemetry.last_reload_successful.set(1);
                for warning in &c.mapping_warnings {
                    tracing::warn!(warning = %warning, "Mapping setting has no effect.");
                }
                tracing::info!(rules, "Reloaded the mapping rules.");
                Ok(format!(
                    "reloaded {rules} mapping rules; listener and store settings apply on restart"
                ))
            }
            Err(e) => {
                telemetry.reloads_failed.inc();
                telemetry.last_reload_successful.set(0);
                tracing::error!(error = %e, "Reload failed; keeping the running rules.");
                Err(e)
            }
        }
    })
}

/// The files whose change triggers a reload, with their last seen modification time.
fn watched_files(cfg: &Config) -> Vec<(std::path::PathBuf, Option<std::time::SystemTime>)> {
    let mut files: Vec<std::path::PathBuf> = cfg.path.iter().cloned().collect();
    if !cfg.bridge.mapping_file.get_ref().is_empty() {
        files.push(cfg.bridge.mapping_file.get_ref().into());
    }
    files
        .into_iter()
        .map(|p| {
            let t = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
            (p, t)
        })
        .collect()
}

/// Removes the series of pods deleted `pod_ttl` ago; returns how many went. The sweeper
/// runs it every second (public for the churn test, `tests/churn_heap.rs`).
pub fn expire_deleted_pods(store: &Store, origin: &Origin, now: std::time::Instant) -> usize {
    let gone = origin.take_expired(now);
    if gone.is_empty() {
        return 0;
    }
    let names = origin.names();
    let (ns_label, pod_label) = (names.namespace().as_bytes(), names.pod().as_bytes());
    let gone: std::collections::HashSet<(Vec<u8>, Vec<u8>)> = gone
        .into_iter()
        .map(|(ns, pod)| (ns.into_bytes(), pod.into_bytes()))
        .collect();
    let removed = store.remove_labelled(|labels| {
        let (mut ns, mut pod) = (None, None);
        for (k, v) in labels {
            if k == ns_label {
                ns = Some(v);
            } else if k == pod_label {
                pod = Some(v);
            }
        }
        matches!((ns, pod), (Some(ns), Some(pod)) if gone.contains(&(ns.to_vec(), pod.to_vec())))
    });
    tracing::debug!(
        pods = gone.len(),
        series = removed,
        "Removed the series of deleted pods."
    );
    removed
}

/// Runs the bridge until `shutdown` resolves (or `/-/quit`), then stops the listeners,
/// drains what they hold into the store, keeps serving the metrics page for
/// `shutdown_grace`, and returns.
pub async fn run(
    cfg: Config,
    origin_settings: origin::Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let bound = listeners.describe();
    let mut udp_ports: Vec<u16> = listeners
        .udp
        .iter()
        .filter_map(|s| s.local_addr().ok())
        .map(|a| a.port())
        .collect();
    udp_ports.dedup();
    let telemetry = Arc::new(Telemetry::new().map_err(RunError::Telemetry)?);
    let reserved = telemetry.reserved_names();
    let store = Arc::new(Store::new(cfg.store(), reserved.iter().map(String::as_str)));
    let mut threads = Vec::new();
    let relay = match cfg.relay {
        Some(target) => {
            let len = *cfg.bridge.relay_packet_length.get_ref();
            let (relay, handle) =
                Relay::start(target, len, Arc::clone(&telemetry)).map_err(RunError::Thread)?;
            tracing::info!(%target, packet_length = len, "Relaying received lines.");
            threads.push(handle);
            Some(relay)
        }
        None => None,
    };
    let mapper = Mapper::compile(&cfg.mapping).map_err(RunError::Mapping)?;
    telemetry
        .mappings_loaded
        .set(i64::try_from(mapper.len()).unwrap_or(i64::MAX));
    for warning in &cfg.mapping_warnings {
        tracing::warn!(warning = %warning, "Mapping setting has no effect.");
    }
    let mapper = Arc::new(MapperHandle::new(mapper));
    let origin = Arc::new(Origin::new(&origin_settings));
    let ingester = Arc::new(
        Ingester::new(
            Arc::clone(&store),
            cfg.parse_options(),
            Arc::clone(&telemetry),
            relay.clone(),
            Arc::clone(&mapper),
            cfg.bridge.mapping_cache_size,
        )
        .with_origin(Arc::clone(&origin)),
    );
    let origin_stop = CancellationToken::new();
    let mut origin_task = None;
    match &origin_settings.mode {
        origin::Mode::Off => tracing::info!("Origin detection is off."),
        origin::Mode::Static(table) => {
            tracing::info!(
                entries = table.len(),
                "Origin labels from the static table."
            );
        }
        origin::Mode::Kubernetes { node, kubeconfig } => {
            let client = origin::kube::client(kubeconfig.as_deref())
                .await
                .map_err(RunError::Origin)?;
            tracing::info!(%node, "Watching this node's pods for origin labels.");
            origin_task = Some(tokio::spawn(origin::kube::watch_pods(
                client,
                node.clone(),
                Arc::clone(&origin),
                Arc::clone(&telemetry),
                origin_stop.clone(),
            )));
        }
    }

    let quit = CancellationToken::new();
    let state = Arc::new(http::State {
        ingester: Arc::clone(&ingester),
        ready: AtomicBool::new(false),
        telemetry_path: cfg.bridge.telemetry_path.get_ref().clone(),
        openmetrics: cfg.bridge.openmetrics,
        lifecycle: cfg.bridge.enable_lifecycle,
        reload: reloader(&cfg, Arc::clone(&telemetry), Arc::clone(&mapper)),
        quit: quit.clone(),
        udp_ports,
    });
    listeners
        .web
        .set_nonblocking(true)
        .map_err(bind_err("HTTP", cfg.web))?;
    let web =
        tokio::net::TcpListener::from_std(listeners.web).map_err(bind_err("HTTP", cfg.web))?;
    let http_stop = CancellationToken::new();
    let handler_state = Arc::clone(&state);
    let http_task = tokio::spawn(common::http::serve(
        web,
        move |req| http::handle(Arc::clone(&handler_state), req),
        http_stop.clone(),
        Duration::from_secs(5),
    ));

    // Lines read before the pod list arrived would get no pod labels: the kernel holds
    // them until then (or until sync_timeout).
    let mut stopping = false;
    if !origin.ready() {
        let deadline = tokio::time::Instant::now() + origin_settings.sync_timeout;
        let synced = async {
            while !origin.ready() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            () = &mut shutdown => stopping = true,
            r = tokio::time::timeout_at(deadline, synced) => if r.is_err() {
                tracing::warn!(timeout = ?origin_settings.sync_timeout, "The pod list has not arrived; reading without origin labels until it does.");
            }
        }
    }
    let stop_listeners = Arc::new(AtomicBool::new(false));
    let mut listener_threads = Vec::new();
    for socket in listeners.udp {
        let t = listen::udp::spawn(socket, Arc::clone(&ingester), Arc::clone(&stop_listeners))
            .map_err(RunError::Thread)?;
        listener_threads.push(t);
    }
    for bound in listeners.unixgram {
        let t = listen::unixgram::spawn(bound, Arc::clone(&ingester), Arc::clone(&stop_listeners))
            .map_err(RunError::Thread)?;
        listener_threads.push(t);
    }
    let tcp_stop = CancellationToken::new();
    let tcp_tracker = TaskTracker::new();
    let limits = listen::tcp::TcpLimits {
        max_line: usize::try_from(cfg.bridge.max_line_length.get_ref().0).unwrap_or(usize::MAX),
        max_connections: *cfg.bridge.max_tcp_connections.get_ref(),
    };
    for l in listeners.tcp {
        let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        l.set_nonblocking(true).map_err(bind_err("TCP", &addr))?;
        let l = tokio::net::TcpListener::from_std(l).map_err(bind_err("TCP", &addr))?;
        tcp_tracker.spawn(listen::tcp::serve(
            l,
            Arc::clone(&ingester),
            limits,
            tcp_stop.clone(),
            tcp_tracker.clone(),
        ));
    }

    state.ready.store(true, Ordering::Relaxed);

    let mut background = Vec::new();
    // Always: rule TTLs need the sweep even without a global ttl (it costs nothing until a
    // series with a TTL exists).
    {
        let store = Arc::clone(&store);
        let telemetry = Arc::clone(&telemetry);
        let origin = Arc::clone(&origin);
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let now = std::time::Instant::now();
                let n = store.expire(now);
                telemetry.series_expired.inc_by(n as u64);
                let gone = expire_deleted_pods(&store, &origin, now);
                telemetry.origin_series_expired.inc_by(gone as u64);
            }
        }));
    }
    let mut watched = watched_files(&cfg);
    if !watched.is_empty() {
        let state = Arc::clone(&state);
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                let mut changed = false;
                for (path, seen) in &mut watched {
                    let now = std::fs::metadata(&*path).and_then(|m| m.modified()).ok();
                    if now != *seen {
                        *seen = now;
                        changed = true;
                    }
                }
                if changed {
                    tracing::info!("A config or mapping file changed; reloading.");
                    let _ = (state.reload)();
                }
            }
        }));
    }
    if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        let state = Arc::clone(&state);
        background.push(tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("Received SIGHUP; reloading.");
                let _ = (state.reload)();
            }
        }));
    }

    tracing::info!(listeners = %bound, "statsd-bridge is ready.");
    if !stopping {
        tokio::select! {
            () = &mut shutdown => {}
            () = quit.cancelled() => {}
        }
    }

    state.ready.store(false, Ordering::Relaxed);
    stop_listeners.store(true, Ordering::Relaxed);
    tcp_stop.cancel();
    tcp_tracker.close();
    tcp_tracker.wait().await;
    let joined = tokio::task::spawn_blocking(move || {
        for t in listener_threads {
            if t.join().is_err() {
                tracing::error!("A listener thread panicked.");
            }
        }
    })
    .await;
    if joined.is_err() {
        tracing::error!("Waiting for the listeners failed.");
    }
    if let Some(relay) = &relay {
        relay.flush();
    }
    for task in background {
        task.abort();
    }
    origin_stop.cancel();
    if let Some(task) = origin_task {
        task.abort();
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
    drop(threads);
    tracing::info!("statsd-bridge stopped.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::StoreConfig;
    use crate::origin::index::PodRecord;
    use crate::protocol::ParseOptions;

    #[test]
    fn deleted_pods_lose_exactly_their_series_after_the_ttl() {
        let settings = origin::Settings {
            mode: origin::Mode::Kubernetes {
                node: "n".to_owned(),
                kubeconfig: None,
            },
            names: origin::LabelNames::new("k8s_namespace", "k8s_pod", &[]),
            pod_ttl: Duration::from_secs(60),
            ..origin::Settings::off()
        };
        let origin = Arc::new(Origin::new(&settings));
        let store = Store::new(StoreConfig::default(), []);
        let mut worker = ingest::Worker::unmapped(store.config()).with_origin(&origin);
        let t0 = std::time::Instant::now();
        let pods = origin.pods().unwrap();
        for (uid, name, ip) in [("u1", "a", "10.0.0.1"), ("u2", "b", "10.0.0.2")] {
            pods.update(|i| {
                i.upsert(PodRecord {
                    uid: uid.to_owned(),
                    namespace: "ns".to_owned(),
                    name: name.to_owned(),
                    ips: vec![ip.parse().unwrap()],
                    ..PodRecord::default()
                })
            });
            worker.set_sender(origin::Sender::Ip(ip.parse().unwrap()), t0);
            for line in ["x:1|c", "y:1|g|#k:v"] {
                ingest::ingest_line(
                    &store,
                    line.as_bytes(),
                    &ParseOptions::default(),
                    &mut worker,
                    t0,
                );
            }
        }
        // A series that names pod `a` in another namespace by its own tags stays.
        worker.set_sender(origin::Sender::Unknown, t0);
        ingest::ingest_line(
            &store,
            b"x:1|c|#k8s_namespace:other,k8s_pod:a",
            &ParseOptions::default(),
            &mut worker,
            t0,
        );
        assert_eq!(store.len(), 5);
        pods.update(|i| i.remove("u1", t0));
        assert_eq!(
            expire_deleted_pods(&store, &origin, t0 + Duration::from_secs(59)),
            0
        );
        assert_eq!(
            expire_deleted_pods(&store, &origin, t0 + Duration::from_secs(60)),
            2
        );
        assert_eq!(store.len(), 3);
        let left: Vec<String> = store
            .snapshot(t0)
            .series
            .iter()
            .map(|s| {
                s.labels()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        assert!(
            left.iter()
                .all(|l| !l.contains("k8s_pod=a") || l.contains("k8s_namespace=other")),
            "{left:?}"
        );
        // Done once: a second sweep finds nothing to do.
        assert_eq!(
            expire_deleted_pods(&store, &origin, t0 + Duration::from_secs(120)),
            0
        );
    }
}
