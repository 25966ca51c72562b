//! The adapter harness' measurements, each with its baseline taken in the same run:
//!
//! - [`discovery`]: relist time and RSS over a population, against the same `/api/v1/series`
//!   calls sent straight to Prometheus; a probe asks for known metrics all along and counts
//!   every answer that isn't 200.
//! - [`overhead`]: sequential requests through the adapter, alternating with the PromQL it
//!   runs sent straight to Prometheus; the difference of their percentiles is the overhead.
//! - [`throughput`]: `wrk` through TLS at the cached answer of a named query, at `/healthz`
//!   of the same server (the floor of its TLS and HTTP stack) and at a PromQL-backed metric.
//! - [`soak`]: HPA-shaped traffic for many minutes, Prometheus restarted twice, RSS sampled.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::pages::{METRIC_PREFIX, Population, QUEUES};
use super::stats::{median, percentile, slope};
use super::systems::{Adapter, Cluster, Prometheus, query_path, series_path};
use crate::http::sum_samples;
use crate::procfs::{open_fds, rss_bytes};

/// The rules the adapter is measured with: one custom rule over every pod gauge, one external
/// rule over the queues, and one named query.
pub const RULES: &str = r#"rules:
- seriesQuery: '{__name__=~"bench_load_m.*",namespace!="",pod!=""}'
  resources:
    overrides:
      namespace: {resource: "namespace"}
      pod: {resource: "pod"}
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
externalRules:
- seriesQuery: '{__name__="bench_queue_depth",queue!=""}'
  resources:
    overrides:
      namespace: {resource: "namespace"}
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (queue)'
externalQueries:
- name: bench_named
  query: sum(bench_queue_depth)
  maxAge: 2m
  refresh: 15s
"#;
/// The series queries of [`RULES`], as discovery sends them.
pub const SERIES_QUERIES: [&str; 2] = [
    r#"{__name__=~"bench_load_m.*",namespace!="",pod!=""}"#,
    r#"{__name__="bench_queue_depth",queue!=""}"#,
];
/// `--metrics-max-age` of every adapter started here.
pub const MAX_AGE: Duration = Duration::from_secs(600);

/// An HPA's request: what the HPA controller asks for each of its metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HpaMetric {
    /// A `Pods` metric: `pods/*/<metric>?labelSelector=app=<app>`.
    Pods {
        /// Namespace.
        namespace: String,
        /// The metric.
        metric: String,
        /// The app label.
        app: String,
    },
    /// An `External` metric with a selector.
    External {
        /// Namespace.
        namespace: String,
        /// The queue label.
        queue: String,
    },
    /// The named query (a cached answer).
    Named,
}

impl HpaMetric {
    /// HPA `h` of a mixed fleet: six in ten ask for a pods metric, two for an external metric,
    /// two for the named query.
    pub fn nth(p: &Population, h: usize) -> HpaMetric {
        match h % 10 {
            0..=5 => HpaMetric::Pods {
                namespace: format!("ns{}", h % p.namespaces.max(1)),
                metric: format!("{METRIC_PREFIX}{}", (h / 10) % p.metrics.max(1)),
                app: format!("app{}", (h / 7) % p.apps.max(1)),
            },
            6 | 7 => HpaMetric::External {
                namespace: "ns0".into(),
                queue: format!("q{}", h % QUEUES),
            },
            _ => HpaMetric::Named,
        }
    }

    /// The request path.
    pub fn path(&self) -> String {
        match self {
            HpaMetric::Pods {
                namespace,
                metric,
                app,
            } => format!(
                "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{namespace}/pods/*/{metric}?labelSelector=app%3D{app}"
            ),
            HpaMetric::External { namespace, queue } => format!(
                "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/bench_queue_depth?labelSelector=queue%3D{queue}"
            ),
            HpaMetric::Named => {
                "/apis/external.metrics.k8s.io/v1beta1/namespaces/ns0/bench_named".into()
            }
        }
    }

    /// The `/explain` path that tells which PromQL the request runs.
    pub fn explain_path(&self) -> String {
        match self {
            HpaMetric::Pods {
                namespace,
                metric,
                app,
            } => format!(
                "/explain?metric={metric}&namespace={namespace}&resource=pods&selector=app%3D{app}"
            ),
            HpaMetric::External { namespace, queue } => format!(
                "/explain?metric=bench_queue_depth&namespace={namespace}&selector=queue%3D{queue}"
            ),
            HpaMetric::Named => "/explain?metric=bench_named&namespace=ns0".into(),
        }
    }
}

/// A population in Prometheus, with its page server.
pub struct Stage {
    /// The series.
    pub population: Population,
    /// The page server, kept alive.
    pub _pages: super::pages::PageServer,
    /// Prometheus.
    pub prometheus: Prometheus,
    /// How long until every series was queryable.
    pub ingest: Duration,
}

impl Stage {
    /// Serves `population`, starts Prometheus on it and waits until it holds every series.
    pub fn start(
        prometheus_bin: &Path,
        population: Population,
        scrape_interval: Duration,
    ) -> anyhow::Result<Stage> {
        let pages = super::pages::PageServer::start(population)?;
        let prometheus = Prometheus::start(
            prometheus_bin,
            pages.addr(),
            population.shards(),
            scrape_interval,
        )?;
        let ingest = prometheus
            .wait_ingested(
                population.total_series(),
                scrape_interval * 3 + Duration::from_secs(120),
            )
            .context("waiting for Prometheus to scrape every page")?;
        Ok(Stage {
            population,
            _pages: pages,
            prometheus,
            ingest,
        })
    }
}

/// The adapter over the stage's Prometheus with [`RULES`], relisting every `relist`,
/// looking back [`MAX_AGE`], watching `cluster`'s pods when there is one, and `extra` flags.
fn start_adapter(
    stage: &Stage,
    adapter_bin: &Path,
    relist: &str,
    cluster: Option<&Cluster>,
    extra: &[&str],
) -> anyhow::Result<Adapter> {
    let watch = cluster.map(Cluster::flags);
    let mut args = vec![
        "--metrics-relist-interval",
        relist,
        "--metrics-max-age",
        "10m",
    ];
    args.extend(watch.iter().flatten().map(String::as_str));
    args.extend_from_slice(extra);
    Adapter::start(adapter_bin, RULES, &stage.prometheus.url(), &args)
}

/// What one discovery measurement found.
#[derive(Debug, Clone)]
pub struct DiscoveryResult {
    /// Series in Prometheus.
    pub series: usize,
    /// Until Prometheus held them all.
    pub ingest: Duration,
    /// The same series calls sent straight to Prometheus (both queries, median of 3).
    pub direct: Duration,
    /// Bytes those answers held.
    pub direct_bytes: usize,
    /// Relists that completed while measuring.
    pub relists: u64,
    /// Their mean duration, by the adapter's own histogram.
    pub relist_mean: Duration,
    /// Custom metrics listed.
    pub listed: usize,
    /// Adapter RSS at the end.
    pub rss: u64,
    /// Its peak (VmHWM).
    pub rss_peak: u64,
    /// Probe requests for known metrics and discovery documents.
    pub probes: u64,
    /// Probe answers other than 200, and the first of them.
    pub probe_failures: u64,
    /// The first failure.
    pub first_failure: Option<String>,
}

/// Discovery over the stage's population: `relists` runs with the relist interval at 1 s.
pub fn discovery(
    stage: &Stage,
    adapter_bin: &Path,
    relists: u64,
    within: Duration,
) -> anyhow::Result<DiscoveryResult> {
    let prom = &stage.prometheus;
    let mut direct = Vec::new();
    let mut direct_bytes = 0;
    for _ in 0..3 {
        let mut c = prom.client()?;
        let start = Instant::now();
        direct_bytes = 0;
        for q in SERIES_QUERIES {
            let r = c.get(&series_path(q, MAX_AGE))?;
            if r.status != 200 {
                bail!("direct /api/v1/series answered {}: {}", r.status, r.text());
            }
            direct_bytes += r.body.len();
        }
        direct.push(start.elapsed());
    }
    let adapter = start_adapter(
        stage,
        adapter_bin,
        "1s",
        None,
        &["--prometheus-timeout", "120s"],
    )?;
    let runs = |page: &str| sum_samples(page, "prom_adapter_discovery_runs_total", &[]);
    // Until the first relist is in: the adapter starts serving before discovery finishes.
    let start = Instant::now();
    let first_runs = loop {
        if let Some(n) = runs(&adapter.metrics()?).filter(|n| *n >= 1.0) {
            break n;
        }
        if start.elapsed() > within {
            bail!("no discovery run in {within:?}:\n{}", adapter.log_tail());
        }
        thread::sleep(Duration::from_millis(100));
    };
    let stop = Arc::new(AtomicBool::new(false));
    let probe = spawn_probe(&adapter, stage.population, Arc::clone(&stop))?;
    let before = adapter.metrics()?;
    let ok = |page: &str, part: &str| {
        sum_samples(
            page,
            &format!("prom_adapter_discovery_duration_seconds_{part}"),
            &["result=\"ok\""],
        )
        .unwrap_or(0.0)
    };
    let mut page;
    loop {
        thread::sleep(Duration::from_millis(250));
        page = adapter.metrics()?;
        let done = runs(&page).unwrap_or(0.0) - first_runs;
        if done >= relists as f64 || start.elapsed() > within {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (probes, failures, first_failure) = probe
        .join()
        .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?;
    let count = ok(&page, "count") - ok(&before, "count");
    let sum = ok(&page, "sum") - ok(&before, "sum");
    let (rss, rss_peak) = rss_bytes(adapter.pid()).unwrap_or((0, 0));
    let listed = sum_samples(
        &page,
        "prom_adapter_discovered_metrics",
        &["api=\"custom\""],
    )
    .unwrap_or(0.0) as usize;
    if count < 1.0 {
        bail!(
            "no successful relist while measuring:\n{}",
            adapter.log_tail()
        );
    }
    Ok(DiscoveryResult {
        series: stage.population.total_series(),
        ingest: stage.ingest,
        direct: median(&direct).unwrap_or_default(),
        direct_bytes,
        relists: count as u64,
        relist_mean: Duration::from_secs_f64(sum / count),
        listed,
        rss,
        rss_peak,
        probes,
        probe_failures: failures,
        first_failure,
    })
}

/// Asks for known metrics (each custom metric in turn, the external one, the discovery
/// document) until `stop`; returns (requests, answers other than 200, the first of those).
#[allow(clippy::type_complexity)]
fn spawn_probe(
    adapter: &Adapter,
    population: Population,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<thread::JoinHandle<(u64, u64, Option<String>)>> {
    let mut client = adapter.client()?;
    Ok(thread::spawn(move || {
        let (mut n, mut failures, mut first) = (0u64, 0u64, None);
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let kind = i % 4;
            let (path, expect) = match kind {
                0 => (
                    "/apis/custom.metrics.k8s.io/v1beta2".to_owned(),
                    format!(
                        "pods/{METRIC_PREFIX}{}",
                        population.metrics.saturating_sub(1)
                    ),
                ),
                1 => (
                    HpaMetric::External {
                        namespace: "ns0".into(),
                        queue: "q1".into(),
                    }
                    .path(),
                    "\"value\"".to_owned(),
                ),
                _ => {
                    let ns = i % population.namespaces.max(1);
                    let pod = population.pod(ns, i % population.pods_per_namespace().max(1));
                    let metric = i % population.metrics.max(1);
                    (
                        format!(
                            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/ns{ns}/pods/{pod}/{METRIC_PREFIX}{metric}"
                        ),
                        format!("\"name\":\"{pod}\""),
                    )
                }
            };
            i += 1;
            n += 1;
            match client.get(&path) {
                Ok(r) if r.status == 200 && r.text().contains(&expect) => {}
                Ok(r) => {
                    failures += 1;
                    first.get_or_insert_with(|| format!("{path}: {} {}", r.status, r.text()));
                }
                Err(e) => {
                    failures += 1;
                    first.get_or_insert_with(|| format!("{path}: {e:#}"));
                }
            }
            thread::sleep(Duration::from_millis(5));
        }
        (n, failures, first)
    }))
}

/// Latency of one kind of request through the adapter and of its PromQL sent straight.
#[derive(Debug, Clone)]
pub struct OverheadResult {
    /// What was asked.
    pub what: String,
    /// The PromQL the adapter ran.
    pub promql: String,
    /// Requests of each.
    pub requests: usize,
    /// Through the adapter (TLS, keep-alive).
    pub adapter: Vec<Duration>,
    /// Straight to Prometheus (plain HTTP, keep-alive).
    pub direct: Vec<Duration>,
}

impl OverheadResult {
    /// The adapter's `q` percentile minus Prometheus' own.
    pub fn overhead(&self, q: f64) -> Option<Duration> {
        let a = percentile(&self.adapter, q)?;
        let d = percentile(&self.direct, q)?;
        Some(a.saturating_sub(d))
    }
}

/// An adapter for the request measurements: discovery every 5 minutes, so none runs while
/// measuring after the first; it waits for `cluster`'s watch cache when there is one.
pub fn quiet_adapter(
    stage: &Stage,
    adapter_bin: &Path,
    cluster: Option<&Cluster>,
) -> anyhow::Result<Adapter> {
    let adapter = start_adapter(stage, adapter_bin, "5m", cluster, &[])?;
    wait_ready(&adapter)?;
    let probe = HpaMetric::nth(&stage.population, 0).path();
    let start = Instant::now();
    let mut c = adapter.client()?;
    loop {
        let named = c.get(&HpaMetric::Named.path())?;
        if c.get(&probe)?.status == 200 && named.status == 200 {
            return Ok(adapter);
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!(
                "the adapter doesn't serve {probe} after 120 s:\n{}",
                adapter.log_tail()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Until the adapter's `/readyz` answers 200 (its watch cache has listed everything).
fn wait_ready(adapter: &Adapter) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut c = adapter.client()?;
    while c.get("/readyz")?.status != 200 {
        if start.elapsed() > Duration::from_secs(120) {
            bail!(
                "the adapter isn't ready after 120 s:\n{}",
                adapter.log_tail()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// `requests` of `metric` through the adapter, each followed by its PromQL straight to
/// Prometheus, after 50 of each to warm up. An adapter without a watch cache (`watched`
/// false) first asks Prometheus which pods match a pods request's selector: then the
/// straight baseline sends that series call too, and counts both.
pub fn overhead(
    stage: &Stage,
    adapter: &Adapter,
    metric: &HpaMetric,
    requests: usize,
    watched: bool,
) -> anyhow::Result<OverheadResult> {
    let mut via = adapter.client()?;
    let mut straight = stage.prometheus.client()?;
    let explained = via.get(&metric.explain_path())?;
    let v: serde_json::Value = serde_json::from_slice(&explained.body)
        .with_context(|| format!("explain answered {}", explained.text()))?;
    let promql = v["promql"]
        .as_str()
        .context("no promql in the explanation")?
        .to_owned();
    let direct_path = query_path(&promql);
    let lookup = match metric {
        HpaMetric::Pods {
            namespace,
            metric,
            app,
        } if !watched => Some(series_path(
            &format!(r#"{{__name__="{metric}",namespace="{namespace}",app="{app}"}}"#),
            MAX_AGE,
        )),
        _ => None,
    };
    let path = metric.path();
    let (mut a, mut d) = (Vec::with_capacity(requests), Vec::with_capacity(requests));
    for i in 0..requests + 50 {
        let r = via.get(&path)?;
        if r.status != 200 {
            bail!("{path} answered {}: {}", r.status, r.text());
        }
        let mut direct = Duration::ZERO;
        for p in lookup.iter().chain([&direct_path]) {
            let s = straight.get(p)?;
            if s.status != 200 {
                bail!("{p} answered {}: {}", s.status, s.text());
            }
            direct += s.elapsed;
        }
        if i >= 50 {
            a.push(r.elapsed);
            d.push(direct);
        }
    }
    Ok(OverheadResult {
        what: match metric {
            HpaMetric::Pods { .. } => format!(
                "custom: pods/* with labelSelector ({} pods), {}",
                stage.population.pods_per_namespace() / stage.population.apps.max(1),
                if watched {
                    "watch cache"
                } else {
                    "no cluster (direct: series call + query)"
                }
            ),
            HpaMetric::External { .. } => "external: one queue".into(),
            HpaMetric::Named => "named query (cached)".into(),
        },
        promql,
        requests,
        adapter: a,
        direct: d,
    })
}

/// One `wrk` run.
#[derive(Debug, Clone)]
pub struct WrkResult {
    /// What was asked.
    pub what: String,
    /// Requests per second.
    pub rate: f64,
    /// Requests in all.
    pub requests: u64,
    /// Answers that weren't 2xx/3xx, and socket errors.
    pub errors: u64,
    /// wrk's latency percentiles line for p99, as printed.
    pub p99: String,
}

/// Where `wrk` is expected; `apt-get install -y wrk`.
pub const WRK_INSTALL: &str = "apt-get install -y wrk";

/// `wrk` for `secs` with `connections` over 2 threads at `path` of the adapter.
pub fn throughput(
    adapter: &Adapter,
    what: &str,
    path: &str,
    secs: u64,
    connections: usize,
) -> anyhow::Result<WrkResult> {
    let url = format!("https://{}{path}", adapter.addr());
    let out = Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), &format!("-d{secs}s")])
        .arg("--latency")
        .arg(&url)
        .output()
        .with_context(|| format!("running wrk ({WRK_INSTALL})"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(what, &text)
}

/// Reads wrk's report.
pub fn parse_wrk(what: &str, text: &str) -> anyhow::Result<WrkResult> {
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let rate: f64 = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's report:\n{text}"))?;
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let non_2xx: u64 = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let socket: u64 = field("Socket errors:")
        .map(|v| {
            v.split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Ok(WrkResult {
        what: what.to_owned(),
        rate,
        requests,
        errors: non_2xx + socket,
        p99: field("99%").unwrap_or("-").to_owned(),
    })
}

/// The soak's record.
#[derive(Debug, Clone, Default)]
pub struct SoakResult {
    /// Minutes run.
    pub minutes: f64,
    /// HPAs simulated and their period.
    pub hpas: usize,
    /// Seconds between one HPA's requests.
    pub period: Duration,
    /// Requests sent, 200s, 503s, other answers or errors.
    pub requests: u64,
    /// 200 answers.
    pub ok: u64,
    /// 503 answers (Prometheus down).
    pub unavailable: u64,
    /// Anything else.
    pub other: u64,
    /// The first "other" answer.
    pub first_other: Option<String>,
    /// Latencies of the 200s.
    pub latencies: Vec<Duration>,
    /// (seconds since the start, RSS bytes, open fds) every sample.
    pub samples: Vec<(f64, u64, usize)>,
    /// When Prometheus was restarted, seconds since the start, and how long it was down.
    pub restarts: Vec<(f64, Duration)>,
    /// Seconds skipped at the start before RSS counts as settled.
    pub warmup: f64,
}

impl SoakResult {
    /// RSS growth in MB per 10 minutes after the warm-up, by least squares.
    pub fn growth_mb_per_10min(&self) -> Option<f64> {
        let pts: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|s| s.0 >= self.warmup)
            .map(|s| (s.0, s.1 as f64 / 1e6))
            .collect();
        slope(&pts).map(|s| s * 600.0)
    }
}

/// Steady HPA traffic for `minutes`: `hpas` HPAs, each asking every `period` (spread evenly
/// over the period, over 4 connections), Prometheus restarted at one and two thirds. The
/// adapter watches the population's pods on a [`Cluster`], as it would in one.
pub fn soak(
    stage: &mut Stage,
    adapter_bin: &Path,
    minutes: f64,
    hpas: usize,
    period: Duration,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<SoakResult> {
    let cluster = Cluster::start(&stage.population)?;
    let adapter = start_adapter(stage, adapter_bin, "30s", Some(&cluster), &[])?;
    wait_ready(&adapter)?;
    let total = Duration::from_secs_f64(minutes * 60.0);
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new([
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    ]);
    let start = Instant::now();
    let threads = 4;
    let mut handles = Vec::new();
    for t in 0..threads {
        let paths: Vec<(usize, String)> = (t..hpas)
            .step_by(threads)
            .map(|h| (h, HpaMetric::nth(&stage.population, h).path()))
            .collect();
        let mut client = adapter.client()?;
        let stop = Arc::clone(&stop);
        let counters = Arc::clone(&counters);
        handles.push(thread::spawn(move || {
            let mut latencies = Vec::new();
            let mut first_other = None;
            let slot = period.as_secs_f64() / hpas.max(1) as f64;
            'rounds: for round in 0u32.. {
                for (h, path) in &paths {
                    let due = start + period * round + Duration::from_secs_f64(slot * *h as f64);
                    while Instant::now() < due {
                        if stop.load(Ordering::Relaxed) {
                            break 'rounds;
                        }
                        thread::sleep((due - Instant::now()).min(Duration::from_millis(200)));
                    }
                    if stop.load(Ordering::Relaxed) {
                        break 'rounds;
                    }
                    let [requests, ok, unavailable, other] = &*counters;
                    requests.fetch_add(1, Ordering::Relaxed);
                    match client.get(path) {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            latencies.push(r.elapsed);
                        }
                        Ok(r) if r.status == 503 => {
                            unavailable.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            other.fetch_add(1, Ordering::Relaxed);
                            first_other.get_or_insert_with(|| {
                                format!("{path}: {} {}", r.status, r.text())
                            });
                        }
                        Err(e) => {
                            other.fetch_add(1, Ordering::Relaxed);
                            first_other.get_or_insert_with(|| format!("{path}: {e:#}"));
                        }
                    }
                }
            }
            (latencies, first_other)
        }));
    }
    let mut result = SoakResult {
        minutes,
        hpas,
        period,
        warmup: 120f64.min(total.as_secs_f64() / 5.0),
        ..SoakResult::default()
    };
    let restarts = [total / 3, total * 2 / 3];
    let mut next_restart = 0;
    let mut next_sample = Duration::ZERO;
    let sample_every = Duration::from_secs(30)
        .min(total / 10)
        .max(Duration::from_secs(1));
    while start.elapsed() < total {
        let now = start.elapsed();
        if now >= next_sample {
            let (rss, _) = rss_bytes(adapter.pid()).unwrap_or((0, 0));
            let fds = open_fds(adapter.pid()).unwrap_or(0);
            result.samples.push((now.as_secs_f64(), rss, fds));
            progress(&format!(
                "soak {:>5.1} min: RSS {:.1} MB, {fds} fds, {} requests, {} 503",
                now.as_secs_f64() / 60.0,
                rss as f64 / 1e6,
                counters[0].load(Ordering::Relaxed),
                counters[2].load(Ordering::Relaxed)
            ));
            next_sample += sample_every;
        }
        if let Some(at) = restarts.get(next_restart)
            && now >= *at
        {
            let t = Instant::now();
            stage.prometheus.restart()?;
            result.restarts.push((now.as_secs_f64(), t.elapsed()));
            progress(&format!(
                "soak: Prometheus restarted at {:.1} min, down {:.1} s",
                now.as_secs_f64() / 60.0,
                t.elapsed().as_secs_f64()
            ));
            next_restart += 1;
        }
        thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let (lat, first) = h
            .join()
            .map_err(|_| anyhow::anyhow!("a soak thread panicked"))?;
        result.latencies.extend(lat);
        if result.first_other.is_none() {
            result.first_other = first;
        }
    }
    let (rss, _) = rss_bytes(adapter.pid()).unwrap_or((0, 0));
    let fds = open_fds(adapter.pid()).unwrap_or(0);
    result
        .samples
        .push((start.elapsed().as_secs_f64(), rss, fds));
    result.requests = counters[0].load(Ordering::Relaxed);
    result.ok = counters[1].load(Ordering::Relaxed);
    result.unavailable = counters[2].load(Ordering::Relaxed);
    result.other = counters[3].load(Ordering::Relaxed);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_reports() {
        let text = "Running 10s test @ https://127.0.0.1:1/x\n  2 threads and 32 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     3.10ms    1.20ms  30.00ms   90.00%\n  Latency Distribution\n     50%    2.90ms\n     75%    3.50ms\n     90%    4.20ms\n     99%    7.80ms\n  103000 requests in 10.00s, 60.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec:  10300.12\nTransfer/sec:      6.00MB\n";
        let r = parse_wrk("x", text).unwrap();
        assert!((r.rate - 10300.12).abs() < 1e-6);
        assert_eq!(r.requests, 103_000);
        assert_eq!(r.errors, 7);
        assert_eq!(r.p99, "7.80ms");
        assert!(parse_wrk("x", "garbage").is_err());
    }

    #[test]
    fn hpa_fleet_mixes_the_three_kinds() {
        let p = Population::new(100_000);
        let kinds: Vec<HpaMetric> = (0..500).map(|h| HpaMetric::nth(&p, h)).collect();
        let pods = kinds
            .iter()
            .filter(|k| matches!(k, HpaMetric::Pods { .. }))
            .count();
        let named = kinds.iter().filter(|k| **k == HpaMetric::Named).count();
        assert_eq!((pods, named), (300, 100));
        assert_eq!(
            HpaMetric::nth(&p, 11).path(),
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/ns1/pods/*/bench_load_m1?labelSelector=app%3Dapp1"
        );
    }
}
