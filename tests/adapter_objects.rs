//! `prom-adapter` with a watch cache (`--lister-kubeconfig`) end to end: the adapter watches
//! the pods and namespaces of a fake kube-apiserver ([`FakeKubeApi::start_with_objects`],
//! plain HTTP, kube-rs metadata-only lists and watches) and resolves `labelSelector` on
//! `pods/*`, and named pods, from that cache, against a real Prometheus scraping an
//! in-process exporter.
//!
//! What is proved: Prometheus is asked by namespace only (no `pod=~` regex), whatever the
//! selector and however many pods match; the answer keeps only the selected pods that exist
//! (a pod with a series outside the selector is never returned, the series of a pod the
//! cluster doesn't have is dropped); the cache follows pods added, relabelled and deleted
//! while the adapter runs, and resumes its watch from a bookmark; a named pod that doesn't
//! exist is a 404 without a query; until the first list completes, requests that need the
//! cache are 503 and `/readyz` is not ready.
//!
//! What Prometheus receives is seen directly: each adapter reads Prometheus through a
//! recording proxy ([`PromProxy`]), so every PromQL a request caused is asserted, not just
//! what `prom-adapter render` prints (which is checked to be the same).
//!
//! One exporter + Prometheus is shared by the tests (kept in a static, reaped by a
//! [`Leash`]); each test has its own fake kube-apiserver, proxy and adapter, since tests
//! change the cluster. The exporter serves `http_requests_total` counters (history
//! backfilled, so rates are nominal from the start) for web-0..3, api-0 and gone-0 in
//! `default`, and a gauge `app_connections` = i+1 for the 1,000 pods `big-0000`..`big-0999`
//! of namespace `big`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::catch_unwind;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use pipeline_tests::exporter::{ExportedSeries, counter, gauge};
use pipeline_tests::http::{self, url_encode};
use pipeline_tests::kubeapi::{FakeKubeApi, Resource, query_params};
use pipeline_tests::metrics_api::{render_pods, rules};
use pipeline_tests::promadapter::{Leash, quantity_value};
use pipeline_tests::{Adapter, Exporter, PATIENCE, Prometheus, eventually};
use serde_json::Value;
use tempfile::TempDir;

const CUSTOM_V2: &str = "/apis/custom.metrics.k8s.io/v1beta2";

/// The metric the rate rule makes of `http_requests_total`.
const RATE: &str = "http_requests_per_second";

/// The gauge of the 1,000 pods of namespace `big` (the template rule serves it as is).
const CONNECTIONS: &str = "app_connections";

/// How many pods namespace `big` has.
const BIG: usize = 1000;

/// How far in the past the counters start (more than the rate rule's `[2m]`).
const HISTORY: Duration = Duration::from_secs(150);

/// The per-second rate of each pod's `http_requests_total` in namespace `default`. gone-0
/// has series but is never in the cluster; web-3 is added to it by one test.
const RATES: &[(&str, f64)] = &[
    ("web-0", 1.0),
    ("web-1", 2.0),
    ("web-2", 3.0),
    ("web-3", 5.0),
    ("api-0", 4.0),
    ("gone-0", 6.0),
];

fn big_pod(i: usize) -> String {
    format!("big-{i:04}")
}

fn exported_series() -> Vec<ExportedSeries> {
    let mut series: Vec<ExportedSeries> = RATES
        .iter()
        .map(|(pod, rate)| {
            counter(
                "http_requests_total",
                &[("namespace", "default"), ("pod", pod), ("method", "GET")],
                *rate,
            )
        })
        .collect();
    for i in 0..BIG {
        let pod = big_pod(i);
        series.push(gauge(
            CONNECTIONS,
            &[("namespace", "big"), ("pod", &pod)],
            (i + 1) as f64,
        ));
    }
    series
}

fn nominal(pod: &str) -> f64 {
    RATES
        .iter()
        .find(|(p, _)| *p == pod)
        .map(|(_, r)| *r)
        .unwrap_or_else(|| panic!("no nominal rate for {pod}"))
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

// ------------------------------------------------------------------------------------------
// The shared exporter and Prometheus

struct Backend {
    prom: Prometheus,
    _exporter: Exporter,
    _leash: Leash,
}

static BACKEND: OnceLock<Result<Backend, String>> = OnceLock::new();

/// The shared exporter + Prometheus, started on first use: waits until every exported series
/// has two samples.
fn backend() -> &'static Backend {
    let backend = BACKEND.get_or_init(|| {
        catch_unwind(|| {
            let job = "adapter-objects";
            let exporter = Exporter::start_with_history(exported_series(), HISTORY);
            let instance = exporter.addr().to_string();
            let history = exporter
                .counter_history(&[("job", job), ("instance", &instance)], SystemTime::now());
            let prom = Prometheus::start_job_backfilled(job, &[exporter.addr()], &history);
            prom.wait_targets_up(1);
            let mut want: BTreeMap<String, usize> = BTreeMap::new();
            for series in exported_series() {
                *want.entry(series.name).or_default() += 1;
            }
            eventually("two samples of every exported series", PATIENCE, || {
                for (name, n) in &want {
                    let counts = prom.query(&format!("count_over_time({name}[1m]) >= 2"))?;
                    ensure!(counts.len() == *n, "{} of {n} {name} series", counts.len());
                }
                Ok(())
            });
            let log_dir = prom
                .process()
                .stderr_path()
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            let leash = Leash::new(&[prom.process().pid()], &[prom.dir(), &log_dir])
                .expect("leashing the shared Prometheus");
            Backend {
                prom,
                _exporter: exporter,
                _leash: leash,
            }
        })
        .map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default()
        })
    });
    match backend {
        Ok(backend) => backend,
        Err(message) => panic!("the shared exporter and Prometheus did not start: {message}"),
    }
}

// ------------------------------------------------------------------------------------------
// A recording proxy in front of Prometheus

/// One request the adapter sent to Prometheus.
#[derive(Debug, Clone)]
struct Proxied {
    /// `/api/v1/query`, `/api/v1/series`, …
    path: String,
    /// The `query` parameter (query string or form body), for queries.
    promql: Option<String>,
}

/// An HTTP proxy on 127.0.0.1 forwarding every request to Prometheus and recording it;
/// stopped when dropped.
struct PromProxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Proxied>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PromProxy {
    fn start(upstream: SocketAddr) -> PromProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_seen, thread_stop) = (Arc::clone(&seen), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            for stream in listener.incoming() {
                if thread_stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let seen = Arc::clone(&thread_seen);
                thread::spawn(move || {
                    if let Err(e) = forward(stream, upstream, &seen) {
                        eprintln!("prometheus proxy: {e:#}");
                    }
                });
            }
        });
        PromProxy {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every PromQL sent to `/api/v1/query` so far.
    fn queries(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|p| p.path.ends_with("/api/v1/query"))
            .filter_map(|p| p.promql.clone())
            .collect()
    }
}

impl Drop for PromProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request from `stream`, records it, sends it to `upstream` and writes the answer
/// back (`Connection: close`).
fn forward(stream: TcpStream, upstream: SocketAddr, seen: &Mutex<Vec<Proxied>>) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line)? == 0 {
        return Ok(());
    }
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        bail!("bad request line {request_line:?}");
    };
    let mut content_type = None;
    let mut length = 0;
    loop {
        let mut line = String::new();
        ensure!(reader.read_line(&mut line)? > 0, "request head cut short");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-type" => content_type = Some(v.trim().to_owned()),
                "content-length" => length = v.trim().parse().context("content-length")?,
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut params = query_params(query);
    if content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
    {
        params.extend(query_params(&String::from_utf8_lossy(&body)));
    }
    seen.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Proxied {
            path: path.to_owned(),
            promql: params.remove("query"),
        });
    let headers: Vec<(&str, &str)> = content_type
        .as_deref()
        .map(|c| vec![("Content-Type", c)])
        .unwrap_or_default();
    let answer = http::request(upstream, method, target, &headers, &body)?;
    let mut writer = stream;
    write!(
        writer,
        "HTTP/1.1 {} Proxied\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: \
         close\r\n\r\n",
        answer.status,
        answer.header("content-type").unwrap_or("application/json"),
        answer.body.len()
    )?;
    writer.write_all(&answer.body)?;
    writer.flush()?;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// One adapter with a watch cache

/// A fake cluster, a proxy to the shared Prometheus, and an adapter watching the cluster.
struct Setup {
    // Field order is drop order: the adapter first.
    adapter: Adapter,
    proxy: PromProxy,
    fake: FakeKubeApi,
    _dir: TempDir,
}

/// The pods every test's cluster has (namespace `default`, plus one in `kube-system`).
fn seed(fake: &FakeKubeApi) {
    fake.set_namespace("kube-system", &[]);
    fake.set_namespace("default", &[]);
    fake.set_pod("default", "web-0", &[("app", "web"), ("tier", "front")]);
    fake.set_pod("default", "web-1", &[("app", "web"), ("tier", "back")]);
    fake.set_pod(
        "default",
        "web-2",
        &[("app", "web"), ("tier", "front"), ("canary", "true")],
    );
    fake.set_pod("default", "api-0", &[("app", "api")]);
    fake.set_pod("kube-system", "coredns-0", &[("k8s-app", "kube-dns")]);
}

impl Setup {
    /// Starts an adapter with `--lister-kubeconfig` pointing at `fake` (already seeded), reading
    /// the shared Prometheus through a new proxy. Returns once it is listening (not
    /// necessarily synced: see [`Setup::wait_ready`]).
    fn start(fake: FakeKubeApi) -> Setup {
        let prom = &backend().prom;
        let dir = tempfile::Builder::new()
            .prefix("adapter-objects-")
            .tempdir()
            .expect("a temp dir for the kubeconfig");
        let kubeconfig = fake
            .write_kubeconfig(dir.path())
            .expect("writing the kubeconfig");
        let proxy = PromProxy::start(prom.addr());
        let adapter = Adapter::start(
            &rules(),
            &proxy.url(),
            &["--lister-kubeconfig", &kubeconfig.to_string_lossy()],
        );
        Setup {
            adapter,
            proxy,
            fake,
            _dir: dir,
        }
    }

    /// Waits until `/readyz` answers 200 (the cache has listed everything once).
    fn wait_ready(&self) {
        eventually("the adapter to be ready", PATIENCE, || {
            let (code, body) = self.status_of("/readyz")?;
            ensure!(code == 200, "/readyz answered {code} {body}");
            Ok(())
        });
    }

    /// The status code and body of a GET over TLS.
    fn status_of(&self, path: &str) -> Result<(u16, String)> {
        let r = self.adapter.request("GET", path, &[])?;
        Ok((r.status, String::from_utf8_lossy(&r.body).into_owned()))
    }

    /// GET `path` (through kubectl) as a `MetricValueList`: item names to (value, timestamp).
    fn items(&self, path: &str) -> Result<BTreeMap<String, Item>> {
        let list = self.adapter.get_json(path)?;
        items(&list).with_context(|| format!("GET {path}"))
    }

    /// Waits until GET `path` answers exactly the items `names`; returns them.
    fn wait_items(&self, path: &str, names: &BTreeSet<String>) -> BTreeMap<String, Item> {
        eventually(&format!("GET {path} to answer {names:?}"), PATIENCE, || {
            let items = self.items(path)?;
            let got: BTreeSet<String> = items.keys().cloned().collect();
            ensure!(&got == names, "answered {got:?}");
            Ok(items)
        })
    }

    /// The PromQL the adapter sent to Prometheus while `f` ran.
    fn queries_during<T>(&self, f: impl FnOnce() -> T) -> (T, Vec<String>) {
        let before = self.proxy.queries().len();
        let out = f();
        let queries = self.proxy.queries().split_off(before);
        (out, queries)
    }
}

/// `.../namespaces/<ns>/pods/*/<metric>` with `labelSelector` when given.
fn pods_path(namespace: &str, metric: &str, selector: Option<&str>) -> String {
    let mut path = format!("{CUSTOM_V2}/namespaces/{namespace}/pods/*/{metric}");
    if let Some(selector) = selector {
        path.push_str(&format!("?labelSelector={}", url_encode(selector)));
    }
    path
}

fn named_path(namespace: &str, pod: &str, metric: &str) -> String {
    format!("{CUSTOM_V2}/namespaces/{namespace}/pods/{pod}/{metric}")
}

/// One item of a `MetricValueList`.
#[derive(Debug, Clone)]
struct Item {
    value: String,
    timestamp: String,
}

fn items(list: &Value) -> Result<BTreeMap<String, Item>> {
    ensure!(
        list["kind"] == "MetricValueList",
        "expected a MetricValueList, got {list}"
    );
    let mut out = BTreeMap::new();
    for item in list["items"].as_array().context("no items")? {
        ensure!(
            item["describedObject"]["kind"] == "Pod",
            "not a Pod: {item}"
        );
        let name = item["describedObject"]["name"]
            .as_str()
            .context("no describedObject.name")?;
        let parsed = Item {
            value: item["value"].as_str().context("no value")?.to_owned(),
            timestamp: item["timestamp"]
                .as_str()
                .context("no timestamp")?
                .to_owned(),
        };
        ensure!(
            out.insert(name.to_owned(), parsed).is_none(),
            "{name} twice in {list}"
        );
    }
    Ok(out)
}

/// A failed request's status code and `metav1.Status` (its `reason` and `code` checked).
fn expect_status(setup: &Setup, path: &str, code: u16, reason: &str) -> Result<Value> {
    let (got, body) = setup.status_of(path)?;
    ensure!(got == code, "GET {path}: expected {code}, got {got} {body}");
    let status: Value =
        serde_json::from_str(&body).with_context(|| format!("GET {path}: not a Status: {body}"))?;
    ensure!(
        status["kind"] == "Status" && status["reason"] == reason && status["code"] == code,
        "GET {path}: expected a Status with reason {reason} and code {code}, got {status}"
    );
    Ok(status)
}

/// `prom-adapter render` for a pods request: the PromQL it prints (one line).
fn render(metric: &str, namespace: &str, extra: &[&str]) -> String {
    render_pods(&backend().prom.url(), metric, namespace, extra)
}

/// Checks a query that resolves pods from the cache: it names the namespace, never a pod.
fn assert_namespace_only(promql: &str, namespace: &str) {
    assert!(
        promql.contains(&format!("namespace=\"{namespace}\"")) && !promql.contains("pod="),
        "expected a query by namespace {namespace} only, without a pod matcher: {promql}"
    );
    assert!(
        !promql.contains("pod=~"),
        "the query has a pod regex: {promql}"
    );
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Unix seconds of an RFC 3339 UTC timestamp with second precision.
fn unix_of(timestamp: &str) -> f64 {
    pipeline_tests::promadapter::parse_rfc3339_seconds(timestamp)
        .unwrap_or_else(|e| panic!("{e:#}")) as f64
}

/// Checks each rate against what Prometheus answers for `promql` (the sample of that pod)
/// over the seconds around the item's timestamp, and against the exporter's nominal rate.
fn check_rates(promql: &str, items: &BTreeMap<String, Item>) {
    let prom = &backend().prom;
    let latest = items
        .values()
        .map(|i| unix_of(&i.timestamp))
        .fold(0.0, f64::max);
    // Everything Prometheus stores up to latest+1 must be in before it is asked about it.
    while unix_now() < latest + 2.5 {
        thread::sleep(Duration::from_millis(200));
    }
    for (pod, item) in items {
        let got = quantity_value(&item.value).unwrap_or_else(|e| panic!("{e:#}"));
        let at = unix_of(&item.timestamp);
        let mut answers = Vec::new();
        for step in -4..=4 {
            let t = at + f64::from(step) * 0.25;
            let samples = prom
                .query_at(promql, t)
                .unwrap_or_else(|e| panic!("asking Prometheus: {e:#}"));
            if let Some(s) = samples.iter().find(|s| s.labels.get("pod") == Some(pod)) {
                answers.push(s.value);
            }
        }
        assert!(
            !answers.is_empty(),
            "{pod}: Prometheus has no sample for {promql} around {}",
            item.timestamp
        );
        let low = answers.iter().copied().fold(f64::INFINITY, f64::min);
        let high = answers.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let tolerance = 2e-9 + 1e-9 * high.abs();
        assert!(
            got >= low - tolerance && got <= high + tolerance,
            "{pod}: the adapter answered {} (= {got}); Prometheus answers {promql} with \
             [{low}, {high}] around {}",
            item.value,
            item.timestamp
        );
        check_nominal(pod, item);
    }
}

/// The rate is within 2 % of the exporter's.
fn check_nominal(pod: &str, item: &Item) {
    let got = quantity_value(&item.value).unwrap_or_else(|e| panic!("{e:#}"));
    let want = nominal(pod);
    assert!(
        (got - want).abs() <= 0.02 * want,
        "{pod}: the adapter answered {} (= {got}); its counter grows by {want}/s",
        item.value
    );
}

// ------------------------------------------------------------------------------------------
// Tests

/// (1) `labelSelector=app=web` answers web-0..2 only — never api-0 (outside the selector),
/// gone-0 or web-3 (series, but no such pod) — with Prometheus' values, from one query by
/// namespace; (2) set-based and existence selectors answer the right subsets.
#[test]
fn adapter_cache_selects_pods_by_label_and_asks_prometheus_by_namespace() {
    let fake = FakeKubeApi::start_with_objects();
    seed(&fake);
    let s = Setup::start(fake);
    s.wait_ready();

    let promql = render(RATE, "default", &["--selector", "app=web"]);
    assert_namespace_only(&promql, "default");
    assert_eq!(
        promql, r#"sum(rate(http_requests_total{namespace="default"}[2m])) by (pod)"#,
        "render"
    );

    let path = pods_path("default", RATE, Some("app=web"));
    let web = set(&["web-0", "web-1", "web-2"]);
    s.wait_items(&path, &web);
    let (items, sent) = s.queries_during(|| s.items(&path).unwrap_or_else(|e| panic!("{e:#}")));
    assert_eq!(
        items.keys().cloned().collect::<BTreeSet<_>>(),
        web,
        "GET {path}"
    );
    assert_eq!(
        sent,
        vec![promql.clone()],
        "GET {path}: expected exactly the rendered query to reach Prometheus"
    );
    check_rates(&promql, &items);

    // Every pod of the namespace that has a series: not gone-0 or web-3, which the cluster
    // doesn't have, nor coredns-0 of another namespace.
    s.wait_items(
        &pods_path("default", RATE, None),
        &set(&["web-0", "web-1", "web-2", "api-0"]),
    );

    let cases: &[(&str, &[&str])] = &[
        ("tier in (front)", &["web-0", "web-2"]),
        // notin also selects the pods without the label.
        ("tier notin (front)", &["web-1", "api-0"]),
        ("canary", &["web-2"]),
        ("!canary", &["web-0", "web-1", "api-0"]),
        ("app=web,!canary", &["web-0", "web-1"]),
        ("app!=web", &["api-0"]),
        ("app in (web,api),tier!=back", &["web-0", "web-2", "api-0"]),
    ];
    for (selector, want) in cases {
        let path = pods_path("default", RATE, Some(selector));
        let (items, sent) = s.queries_during(|| {
            s.items(&path)
                .unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
        });
        assert_eq!(
            items.keys().cloned().collect::<BTreeSet<_>>(),
            set(want),
            "labelSelector {selector:?}"
        );
        assert_eq!(sent, vec![promql.clone()], "labelSelector {selector:?}");
        for (pod, item) in &items {
            check_nominal(pod, item);
        }
    }

    // A selector no pod matches is a 404, and Prometheus is not asked.
    let path = pods_path("default", RATE, Some("app=nothing"));
    let (status, sent) = s.queries_during(|| expect_status(&s, &path, 404, "NotFound"));
    status.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(sent.is_empty(), "GET {path} queried Prometheus: {sent:?}");
}

/// (3) The cache follows the cluster: a pod added while the adapter runs (whose series was
/// there all along) appears, a relabelled one moves between selections, a deleted one
/// disappears though its series stays; and after a bookmark, a watch that ends resumes from
/// the bookmark without listing again.
#[test]
fn adapter_cache_follows_pods_added_relabelled_and_deleted() {
    let fake = FakeKubeApi::start_with_objects();
    seed(&fake);
    let s = Setup::start(fake);
    s.wait_ready();
    let web = pods_path("default", RATE, Some("app=web"));
    let front = pods_path("default", RATE, Some("tier=front"));
    s.wait_items(&web, &set(&["web-0", "web-1", "web-2"]));
    expect_status(&s, &named_path("default", "web-3", RATE), 404, "NotFound")
        .unwrap_or_else(|e| panic!("{e:#}"));

    s.fake
        .set_pod("default", "web-3", &[("app", "web"), ("tier", "front")]);
    let items = s.wait_items(&web, &set(&["web-0", "web-1", "web-2", "web-3"]));
    check_nominal("web-3", &items["web-3"]);
    let named = s
        .items(&named_path("default", "web-3", RATE))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(named.keys().collect::<Vec<_>>(), ["web-3"]);

    s.fake.delete_pod("default", "web-1").expect("web-1 exists");
    s.wait_items(&web, &set(&["web-0", "web-2", "web-3"]));
    s.wait_items(
        &pods_path("default", RATE, None),
        &set(&["web-0", "web-2", "web-3", "api-0"]),
    );
    expect_status(&s, &named_path("default", "web-1", RATE), 404, "NotFound")
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Prometheus still has web-1's series: the adapter dropped it, not the backend.
    let still = backend()
        .prom
        .query(r#"http_requests_total{namespace="default",pod="web-1"}"#)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(still.len(), 1, "web-1's series: {still:?}");

    // Relabelled (MODIFIED): web-0 leaves tier=front.
    s.wait_items(&front, &set(&["web-0", "web-2", "web-3"]));
    s.fake
        .set_pod("default", "web-0", &[("app", "web"), ("tier", "back")]);
    s.wait_items(&front, &set(&["web-2", "web-3"]));

    // A bookmark, then the watches end (as at their timeout): kube-rs resumes from the
    // bookmark's version, without a new list.
    eventually("the pods watch to be open", PATIENCE, || {
        ensure!(s.fake.open_watches(Resource::Pods) == 1);
        Ok(())
    });
    let lists = s.fake.lists_of(Resource::Pods).len();
    let watches = s.fake.watches_of(Resource::Pods).len();
    let bookmark = s.fake.bookmark();
    s.fake.end_watches();
    let resumed = eventually("the pods watch to resume", PATIENCE, || {
        let all = s.fake.watches_of(Resource::Pods);
        ensure!(all.len() > watches, "{} watches", all.len());
        ensure!(s.fake.open_watches(Resource::Pods) == 1, "not open");
        Ok(all[watches].clone())
    });
    assert_eq!(
        resumed.param("resourceVersion"),
        Some(bookmark.to_string()),
        "expected the watch to resume from the bookmark: {resumed:?}"
    );
    assert_eq!(
        s.fake.lists_of(Resource::Pods).len(),
        lists,
        "a watch that ended normally must not cause a relist"
    );
    // The resumed watch delivers.
    s.fake.delete_pod("default", "web-2").expect("web-2 exists");
    s.wait_items(&web, &set(&["web-0", "web-3"]));
}

/// (4) A named pod: one item when the cluster has it, 404 when it doesn't even though
/// Prometheus has its series (and Prometheus is not asked), 404 when it exists without a
/// series.
#[test]
fn adapter_cache_named_pod_must_exist() {
    let fake = FakeKubeApi::start_with_objects();
    seed(&fake);
    fake.set_pod("default", "idle-0", &[("app", "web")]);
    let s = Setup::start(fake);
    s.wait_ready();

    let path = named_path("default", "web-0", RATE);
    let promql = render(RATE, "default", &["--name", "web-0"]);
    let items = eventually(&format!("GET {path}"), PATIENCE, || s.items(&path));
    let (items_again, sent) =
        s.queries_during(|| s.items(&path).unwrap_or_else(|e| panic!("{e:#}")));
    assert_eq!(items.keys().collect::<Vec<_>>(), ["web-0"], "GET {path}");
    assert_eq!(items_again.len(), 1, "GET {path}");
    assert_eq!(sent, vec![promql.clone()], "GET {path}");
    check_rates(&promql, &items);

    let path = named_path("default", "gone-0", RATE);
    let gone_series = backend()
        .prom
        .query(r#"http_requests_total{namespace="default",pod="gone-0"}"#)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(gone_series.len(), 1, "gone-0 has a series: {gone_series:?}");
    let (status, sent) = s.queries_during(|| expect_status(&s, &path, 404, "NotFound"));
    let status = status.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains("gone-0")),
        "GET {path}: expected the message to name the pod: {status}"
    );
    assert!(sent.is_empty(), "GET {path} queried Prometheus: {sent:?}");
    // kubectl reports it as a NotFound.
    let run = s.adapter.get_raw(&path).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        !run.success() && run.stderr.contains("(NotFound)"),
        "kubectl: {run}"
    );

    // In the cluster and selected, but no series: a named 404, and absent from `*`.
    expect_status(&s, &named_path("default", "idle-0", RATE), 404, "NotFound")
        .unwrap_or_else(|e| panic!("{e:#}"));
    s.wait_items(
        &pods_path("default", RATE, Some("app=web")),
        &set(&["web-0", "web-1", "web-2"]),
    );
}

/// (5) 1,000 pods in one namespace, a selector matching 500: the adapter answers those 500
/// with their exact values, and Prometheus gets one short query by namespace. The cache
/// listed them in pages of 500 (metadata only) and watches from the list's version.
#[test]
fn adapter_cache_thousand_pods_one_short_query() {
    let fake = FakeKubeApi::start_with_objects();
    seed(&fake);
    fake.set_namespace("big", &[("team", "load")]);
    for i in 0..BIG {
        let shard = if i % 2 == 0 { "even" } else { "odd" };
        fake.set_pod("big", &big_pod(i), &[("app", "big"), ("shard", shard)]);
    }
    let listed_at = fake.resource_version();
    let s = Setup::start(fake);
    s.wait_ready();

    // What kube-rs asked the fake for: metadata-only pages of 500, then a watch from the
    // list's version with bookmarks.
    let lists = s.fake.lists_of(Resource::Pods);
    assert!(lists.len() >= 3, "expected 3 pages of pods: {lists:?}");
    for (i, list) in lists.iter().take(3).enumerate() {
        assert!(
            list.header("accept")
                .is_some_and(|a| a.contains("as=PartialObjectMetadataList")),
            "page {i} is not a metadata-only list: {list:?}"
        );
        assert_eq!(list.param("limit").as_deref(), Some("500"), "page {i}");
        assert_eq!(
            list.param("continue").is_some(),
            i > 0,
            "page {i}: {list:?}"
        );
    }
    let watch = s.fake.watches_of(Resource::Pods);
    let watch = watch.first().expect("a pods watch");
    assert_eq!(
        (
            watch.param("resourceVersion"),
            watch.param("allowWatchBookmarks")
        ),
        (Some(listed_at.to_string()), Some("true".to_owned())),
        "{watch:?}"
    );

    let selector = "app=big,shard=even";
    let path = pods_path("big", CONNECTIONS, Some(selector));
    let want: BTreeSet<String> = (0..BIG).step_by(2).map(big_pod).collect();
    let promql = render(CONNECTIONS, "big", &["--selector", selector]);
    s.wait_items(&path, &want);
    let (items, sent) = s.queries_during(|| s.items(&path).unwrap_or_else(|e| panic!("{e:#}")));
    assert_eq!(items.len(), BIG / 2, "GET {path}");
    for (i, name) in (0..BIG).map(|i| (i, big_pod(i))) {
        match items.get(&name) {
            Some(item) => {
                assert!(i % 2 == 0, "{name} is odd but was answered");
                let value = quantity_value(&item.value).unwrap_or_else(|e| panic!("{e:#}"));
                assert_eq!(value, (i + 1) as f64, "{name}: {}", item.value);
            }
            None => assert!(i % 2 == 1, "{name} is even but missing"),
        }
    }
    assert_eq!(sent, vec![promql.clone()], "GET {path}");
    assert_namespace_only(&promql, "big");
    assert_eq!(promql, r#"sum(app_connections{namespace="big"}) by (pod)"#);
    assert!(promql.len() < 200, "{} bytes: {promql}", promql.len());

    // The cache's own gauge: every pod of the cluster.
    let metrics = s
        .adapter
        .get_raw("/metrics")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let line = format!(
        "prom_adapter_objects_cached{{resource=\"pods\"}} {}",
        BIG + 5
    );
    assert!(
        metrics.stdout.lines().any(|l| l == line),
        "expected {line:?} in /metrics: {}",
        metrics
            .stdout
            .lines()
            .filter(|l| l.starts_with("prom_adapter_objects"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// (6) Until the first list completes, a request that needs the cache is a 503 (without
/// asking Prometheus) and `/readyz` is not ready while `/livez` is; once the list is let
/// through, both recover.
#[test]
fn adapter_cache_not_synced_is_503_until_the_first_list() {
    let fake = FakeKubeApi::start_with_objects();
    seed(&fake);
    fake.hold_lists(true);
    let s = Setup::start(fake);
    eventually("the adapter's first list to be held", PATIENCE, || {
        ensure!(s.fake.held_lists() > 0, "no list held yet");
        Ok(())
    });

    let (code, body) = s.status_of("/readyz").unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(code, 503, "/readyz before the first list: {body}");
    let (code, body) = s.status_of("/livez").unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(code, 200, "/livez before the first list: {body}");
    let star = pods_path("default", RATE, Some("app=web"));
    let status = eventually(&format!("GET {star} to be 503"), PATIENCE, || {
        expect_status(&s, &star, 503, "ServiceUnavailable")
    });
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains("first list")),
        "expected the 503 to say why: {status}"
    );
    expect_status(
        &s,
        &named_path("default", "web-0", RATE),
        503,
        "ServiceUnavailable",
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    expect_status(
        &s,
        &pods_path("default", RATE, None),
        503,
        "ServiceUnavailable",
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        s.proxy.queries().is_empty(),
        "Prometheus was queried before the cache synced: {:?}",
        s.proxy.queries()
    );
    let (code, _) = s.status_of("/readyz").unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(code, 503, "/readyz while the list is still held");

    s.fake.hold_lists(false);
    s.wait_ready();
    s.wait_items(&star, &set(&["web-0", "web-1", "web-2"]));
}
