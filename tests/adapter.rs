//! `prom-adapter` end to end: an in-process exporter, scraped by a real Prometheus, read by
//! the adapter through prometheus-adapter rules (`tests/data/adapter/rules.yaml`), and the
//! Kubernetes metrics APIs read back with `kubectl get --raw` (and, where a status code, a
//! header or a chosen `Accept` matters, raw HTTPS through `openssl s_client`).
//!
//! Most tests share one exporter + Prometheus + adapter stack (built by the first test that
//! needs it, kept in a static and reaped by a [`Leash`] when the test binary exits); the fault
//! test stops and restarts Prometheus, so it has its own. Nothing sleeps for readiness:
//! everything is awaited with `eventually`.
//!
//! The values the exporter serves (see [`exported_series`]): request counters
//! `http_requests_total{namespace,pod,method}` for web-0..2 in `default` and api-0 in `other`,
//! growing at fixed rates; gauges `queue_depth{queue="orders"} 42`, `{queue="payments"} 7`,
//! `namespace_load{namespace="default"} 0.5`, and for pod web-0 `app_cpu_cores 24.233138021`,
//! `app_memory_kilobytes 2000` and `app_broken_ratio NaN`.
//!
//! The rate rule uses `[2m]`, and over a series younger than two minutes `rate()` is still
//! ramping up; so the exporter's counters start 150 s in the past and that history is
//! backfilled into Prometheus' TSDB before it starts: every rate is then the nominal one. A
//! rate the adapter answered is compared with what Prometheus answers for the same PromQL
//! (printed by `prom-adapter render`) over the two seconds around the item's timestamp (which
//! has second precision), and with the exporter's nominal rate. Gauges are compared exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use pipeline_tests::exporter::{ExportedSeries, counter, gauge};
use pipeline_tests::exposition;
use pipeline_tests::http::url_encode;
use pipeline_tests::promadapter::{
    Leash, canonical_quantity, fixture, is_canonical_quantity, parse_rfc3339_seconds,
    quantity_value, run_cli,
};
use pipeline_tests::util::tests_dir;
use pipeline_tests::{Adapter, Exporter, PATIENCE, Prometheus, eventually, promtool_check_metrics};
use serde_json::{Value, json};

const CUSTOM: &str = "/apis/custom.metrics.k8s.io";
const CUSTOM_V2: &str = "/apis/custom.metrics.k8s.io/v1beta2";
const CUSTOM_V1: &str = "/apis/custom.metrics.k8s.io/v1beta1";
const EXTERNAL: &str = "/apis/external.metrics.k8s.io";
const EXTERNAL_V1: &str = "/apis/external.metrics.k8s.io/v1beta1";

/// The metric the rate rule makes of `http_requests_total`.
const RATE: &str = "http_requests_per_second";

/// How far in the past the exporter's counters start (and are backfilled from): more than
/// the rate rule's `[2m]`, so every rate is complete from the start.
const HISTORY: Duration = Duration::from_secs(150);

/// The `Accept` header kube-controller-manager sends when it speaks protobuf.
const ACCEPT_PROTOBUF: &str = "application/vnd.kubernetes.protobuf, */*";

/// Custom-metrics resources the rules must produce from the exporter's series, with their
/// scope. (A template rule may map more labels; those are not checked.)
const CUSTOM_RESOURCES: &[(&str, bool)] = &[
    ("pods/http_requests_per_second", true),
    ("namespaces/http_requests_per_second", false),
    ("pods/app_cpu_cores", true),
    ("pods/app_memory_kilobytes", true),
    ("pods/app_broken_ratio", true),
    ("namespaces/namespace_load", false),
];

/// The external metrics the rules must produce: exactly these.
const EXTERNAL_METRICS: &[&str] = &["queue_depth"];

/// The series the exporter serves.
fn exported_series() -> Vec<ExportedSeries> {
    let pod = |ns: &'static str, pod: &'static str, method: &'static str| {
        [("namespace", ns), ("pod", pod), ("method", method)]
    };
    let web0 = [("namespace", "default"), ("pod", "web-0")];
    vec![
        counter("http_requests_total", &pod("default", "web-0", "GET"), 1.0),
        counter("http_requests_total", &pod("default", "web-0", "POST"), 0.5),
        counter("http_requests_total", &pod("default", "web-1", "GET"), 2.0),
        counter("http_requests_total", &pod("default", "web-2", "GET"), 3.0),
        counter("http_requests_total", &pod("other", "api-0", "GET"), 4.0),
        gauge(
            "queue_depth",
            &[("namespace", "default"), ("queue", "orders")],
            42.0,
        ),
        gauge(
            "queue_depth",
            &[("namespace", "default"), ("queue", "payments")],
            7.0,
        ),
        gauge("namespace_load", &[("namespace", "default")], 0.5),
        gauge("app_cpu_cores", &web0, 24.233138021),
        gauge("app_memory_kilobytes", &web0, 2000.0),
        gauge("app_broken_ratio", &web0, f64::NAN),
    ]
}

/// The nominal `http_requests_per_second` of each pod of `namespace` (only the `method`
/// series when given): the sum of its counters' rates.
fn nominal_rates(namespace: &str, method: Option<&str>) -> BTreeMap<String, f64> {
    let mut rates = BTreeMap::new();
    for series in exported_series() {
        let pipeline_tests::exporter::Kind::Counter { per_second } = series.kind else {
            continue;
        };
        let label = |k: &str| series.labels.get(k).map(String::as_str);
        if label("namespace") == Some(namespace)
            && method.is_none_or(|m| label("method") == Some(m))
        {
            *rates
                .entry(label("pod").unwrap_or_default().to_owned())
                .or_insert(0.0) += per_second;
        }
    }
    rates
}

/// The rules every test adapter runs with.
fn rules() -> PathBuf {
    fixture("rules.yaml")
}

/// An exporter, a Prometheus scraping it, and an adapter reading that Prometheus.
struct Stack {
    // Field order is drop order: the adapter first, the exporter last.
    adapter: Adapter,
    prom: Prometheus,
    _exporter: Exporter,
}

impl Stack {
    /// Starts the three: the exporter with [`HISTORY`] of counters, Prometheus over that
    /// history backfilled; waits until Prometheus has scraped every exported series twice
    /// (so the gauges are there too), then until the adapter is listening.
    fn start(job: &str) -> Stack {
        let exporter = Exporter::start_with_history(exported_series(), HISTORY);
        let instance = exporter.addr().to_string();
        let history =
            exporter.counter_history(&[("job", job), ("instance", &instance)], SystemTime::now());
        let prom = Prometheus::start_job_backfilled(job, &[exporter.addr()], &history);
        prom.wait_targets_up(1);
        let mut want: BTreeMap<String, usize> = BTreeMap::new();
        for series in exported_series() {
            *want.entry(series.name).or_default() += 1;
        }
        eventually(
            "two samples of every exported series in Prometheus",
            PATIENCE,
            || {
                // One query per name: count_over_time drops the name, and series of different
                // names share label sets.
                for (name, n) in &want {
                    let counts = prom.query(&format!("count_over_time({name}[1m])"))?;
                    let ready = counts.iter().filter(|s| s.value >= 2.0).count();
                    ensure!(
                        ready == *n,
                        "{ready} of {n} {name} series have two samples: {counts:?}"
                    );
                }
                Ok(())
            },
        );
        let adapter = Adapter::start(&rules(), &prom.url(), &[]);
        Stack {
            adapter,
            prom,
            _exporter: exporter,
        }
    }

    /// `kubectl get --raw <path>` as JSON.
    ///
    /// # Panics
    /// When kubectl fails or prints no JSON (the message has its output).
    fn json(&self, path: &str) -> Value {
        self.adapter
            .get_json(path)
            .unwrap_or_else(|e| panic!("GET {path}: expected a JSON answer, got: {e:#}"))
    }

    /// Waits until discovery lists every resource of [`CUSTOM_RESOURCES`] (v1beta2) and
    /// [`EXTERNAL_METRICS`], and returns the two `APIResourceList`s.
    fn wait_discovered(&self) -> (Value, Value) {
        eventually("discovery to list the rules' metrics", PATIENCE, || {
            let custom = self.adapter.get_json(CUSTOM_V2)?;
            let names = resource_names(&custom)?;
            let missing: Vec<&str> = CUSTOM_RESOURCES
                .iter()
                .map(|(n, _)| *n)
                .filter(|n| !names.contains(*n))
                .collect();
            ensure!(
                missing.is_empty(),
                "{CUSTOM_V2} lacks {missing:?}; it lists {names:?}"
            );
            let external = self.adapter.get_json(EXTERNAL_V1)?;
            let names = resource_names(&external)?;
            ensure!(
                EXTERNAL_METRICS.iter().all(|m| names.contains(*m)),
                "{EXTERNAL_V1} lacks {EXTERNAL_METRICS:?}; it lists {names:?}"
            );
            Ok((custom, external))
        })
    }
}

/// The shared stack, with the leash that reaps it when the test binary exits.
struct Shared {
    stack: Stack,
    _leash: Leash,
}

/// The shared stack, or why it failed to start (the first test to try printed the logs).
static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();

/// Runs `test` against the shared stack (started on first use); when it fails, prints the
/// tails of the adapter's and Prometheus' logs (the static is never dropped, so their guards
/// can't).
fn with_shared(test: impl FnOnce(&Stack)) {
    let shared = SHARED.get_or_init(|| {
        catch_unwind(|| {
            let stack = Stack::start("adapter-e2e");
            let log_dir = |p: PathBuf| p.parent().map(PathBuf::from).unwrap_or(p);
            let dirs = [
                stack.prom.dir().to_path_buf(),
                log_dir(stack.prom.process().stderr_path()),
                stack.adapter.dir().to_path_buf(),
                log_dir(stack.adapter.process().stderr_path()),
                stack.adapter.kubectl().dir().to_path_buf(),
            ];
            let dirs: Vec<&std::path::Path> = dirs.iter().map(PathBuf::as_path).collect();
            let pids = [stack.prom.process().pid(), stack.adapter.process().pid()];
            let leash = Leash::new(&pids, &dirs).expect("leashing the shared stack");
            Shared {
                stack,
                _leash: leash,
            }
        })
        .map_err(|panic| panic_message(panic.as_ref()))
    });
    let stack = match shared {
        Ok(shared) => &shared.stack,
        Err(message) => panic!(
            "the shared adapter stack did not start (the first test that tried printed the \
             logs): {message}"
        ),
    };
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| test(stack))) {
        eprintln!("{}", stack.adapter.log_tail(80));
        eprintln!("{}", stack.prom.process().log_tail(20));
        resume_unwind(panic);
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(no message)".to_owned())
}

// ------------------------------------------------------------------------------------------
// Reading answers

/// The keys of a JSON object (empty for anything else).
fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

/// Panics unless `v` is an object with exactly `expected` keys.
fn assert_keys(v: &Value, expected: &[&str], what: &str) {
    let want: BTreeSet<&str> = expected.iter().copied().collect();
    assert_eq!(
        keys(v),
        want,
        "{what}: expected exactly the keys {want:?}, got {v}"
    );
}

/// The `name`s of an `APIResourceList`'s resources.
fn resource_names(list: &Value) -> Result<BTreeSet<String>> {
    let resources = list["resources"]
        .as_array()
        .with_context(|| format!("no `resources` array in {list}"))?;
    resources
        .iter()
        .map(|r| {
            r["name"]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("resource without a name: {r}"))
        })
        .collect()
}

/// Checks an `APIResourceList` for `group_version`: its envelope, every entry's fields
/// (`singularName: ""`, `kind`, `verbs: ["get"]`), one scope per parent resource, and that
/// each of `expected` (name, namespaced) is listed with that scope.
fn check_resource_list(list: &Value, group_version: &str, kind: &str, expected: &[(&str, bool)]) {
    let what = format!("GET /apis/{group_version}");
    assert_eq!(
        (&list["kind"], &list["apiVersion"], &list["groupVersion"]),
        (
            &json!("APIResourceList"),
            &json!("v1"),
            &json!(group_version)
        ),
        "{what}: expected kind APIResourceList, apiVersion v1, groupVersion {group_version}; \
         got {list}"
    );
    let resources = list["resources"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: expected a `resources` array, got {list}"));
    assert!(
        !resources.is_empty(),
        "{what}: an empty resource list breaks every kubectl call; got {list}"
    );
    let mut scopes: BTreeMap<String, BTreeSet<bool>> = BTreeMap::new();
    let mut listed: BTreeMap<String, bool> = BTreeMap::new();
    for r in resources {
        let name = r["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: resource without a name: {r}"));
        let namespaced = r["namespaced"]
            .as_bool()
            .unwrap_or_else(|| panic!("{what}: {name}: expected a boolean `namespaced`: {r}"));
        assert_eq!(
            (&r["singularName"], &r["kind"], &r["verbs"]),
            (&json!(""), &json!(kind), &json!(["get"])),
            "{what}: {name}: expected singularName \"\", kind {kind}, verbs [\"get\"]; got {r}"
        );
        let parent = name.split('/').next().unwrap_or(name).to_owned();
        scopes.entry(parent).or_default().insert(namespaced);
        assert!(
            listed.insert(name.to_owned(), namespaced).is_none(),
            "{what}: {name} is listed twice: {list}"
        );
    }
    let mixed: Vec<_> = scopes.iter().filter(|(_, s)| s.len() > 1).collect();
    assert!(
        mixed.is_empty(),
        "{what}: every entry under one parent resource must have the same `namespaced` \
         (kube-apiserver rejects mixed scopes); mixed: {mixed:?}"
    );
    for (name, namespaced) in expected {
        assert_eq!(
            listed.get(*name),
            Some(namespaced),
            "{what}: expected {name} with namespaced {namespaced}; listed: {listed:?}"
        );
    }
}

/// One item of a `MetricValueList`, read.
#[derive(Debug)]
struct Item {
    name: String,
    value: String,
    timestamp: i64,
}

/// Checks the envelope and every item of a custom-metrics `MetricValueList` answer in
/// `version` (`v1beta1` or `v1beta2`): exact keys, `metadata: {}`, the described object
/// (`kind`, `namespace` when given, `apiVersion: "v1"`), the metric name and selector echo,
/// a positive window, a recent second-precision UTC timestamp, and a canonical quantity.
fn check_metric_list(
    list: &Value,
    version: &str,
    metric: &str,
    object_kind: &str,
    namespace: Option<&str>,
    selector: &Value,
) -> Vec<Item> {
    let what = format!("{version} {metric} list");
    assert_keys(list, &["kind", "apiVersion", "metadata", "items"], &what);
    assert_eq!(
        (&list["kind"], &list["apiVersion"], &list["metadata"]),
        (
            &json!("MetricValueList"),
            &json!(format!("custom.metrics.k8s.io/{version}")),
            &json!({})
        ),
        "{what}: expected kind MetricValueList, apiVersion custom.metrics.k8s.io/{version}, \
         metadata {{}}; got {list}"
    );
    let items = list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: expected an `items` array, got {list}"));
    let now = unix_now();
    items
        .iter()
        .map(|item| {
            let (item_keys, window_key): (&[&str], &str) = if version == "v1beta1" {
                (
                    &[
                        "describedObject",
                        "metricName",
                        "timestamp",
                        "window",
                        "value",
                        "selector",
                    ],
                    "window",
                )
            } else {
                (
                    &[
                        "describedObject",
                        "metric",
                        "timestamp",
                        "windowSeconds",
                        "value",
                    ],
                    "windowSeconds",
                )
            };
            assert_keys(item, item_keys, &format!("{what}: item"));
            if version == "v1beta1" {
                assert_eq!(
                    (&item["metricName"], &item["selector"]),
                    (&json!(metric), selector),
                    "{what}: expected metricName {metric} and selector {selector}; got {item}"
                );
            } else {
                assert_keys(
                    &item["metric"],
                    &["name", "selector"],
                    &format!("{what}: metric"),
                );
                assert_eq!(
                    &item["metric"],
                    &json!({"name": metric, "selector": selector}),
                    "{what}: expected metric {{name: {metric}, selector: {selector}}}; got {item}"
                );
            }
            let described = &item["describedObject"];
            let name = described["name"]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: describedObject without a name: {item}"))
                .to_owned();
            let mut want = json!({"kind": object_kind, "name": name, "apiVersion": "v1"});
            if let Some(ns) = namespace {
                want["namespace"] = json!(ns);
            }
            assert_eq!(
                described, &want,
                "{what}: expected describedObject {want} (apiVersion \"v1\", not \"/v1\"); got \
                 {item}"
            );
            assert!(
                item[window_key].as_u64().is_some_and(|w| w > 0),
                "{what}: expected a positive integer {window_key}; got {item}"
            );
            let ts_text = item["timestamp"].as_str().unwrap_or_default();
            let timestamp = parse_rfc3339_seconds(ts_text)
                .unwrap_or_else(|e| panic!("{what}: {e:#}; item {item}"));
            assert!(
                (timestamp as f64 - now).abs() < 300.0,
                "{what}: expected a timestamp near now ({now:.0}), got {ts_text} in {item}"
            );
            let value = item["value"]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: expected a string value; got {item}"))
                .to_owned();
            assert!(
                is_canonical_quantity(&value),
                "{what}: expected a canonical Quantity string, got {value:?} in {item}"
            );
            Item {
                name,
                value,
                timestamp,
            }
        })
        .collect()
}

/// The names of `items`, sorted.
fn item_names(items: &[Item]) -> BTreeSet<&str> {
    items.iter().map(|i| i.name.as_str()).collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Blocks until the wall clock reads at least `unix` (a point in time the test needs to be
/// past, not a readiness wait).
fn wait_for_clock(unix: f64) {
    loop {
        let now = unix_now();
        if now >= unix {
            return;
        }
        thread::sleep(Duration::from_secs_f64((unix - now).min(0.5)));
    }
}

/// Checks each item's value against what Prometheus answers for `promql` (the sample whose
/// `label` is the item's object name) over the seconds around the item's timestamp, every
/// 250 ms: the timestamp has second precision, so the adapter evaluated somewhere in there.
/// The value must lie within what Prometheus answered there (with the history backfilled
/// that is one value, give or take a late scrape), and within 2 % of `nominal`.
fn check_against_prometheus(
    prom: &Prometheus,
    promql: &str,
    label: &str,
    items: &[Item],
    nominal: &BTreeMap<String, f64>,
) {
    let latest = items.iter().map(|i| i.timestamp).max().unwrap_or_default();
    // Everything Prometheus stores up to ts+1 must be in before it is asked about ts+1.
    wait_for_clock(latest as f64 + 2.5);
    for item in items {
        let got = quantity_value(&item.value).unwrap_or_else(|e| panic!("{e:#}"));
        let mut answers = Vec::new();
        for step in -4..=4 {
            let t = item.timestamp as f64 + f64::from(step) * 0.25;
            let samples = prom
                .query_at(promql, t)
                .unwrap_or_else(|e| panic!("asking Prometheus: {e:#}"));
            let value = samples
                .iter()
                .find(|s| s.labels.get(label) == Some(&item.name))
                .map(|s| s.value);
            answers.push((t, value));
        }
        let values: Vec<f64> = answers.iter().filter_map(|(_, v)| *v).collect();
        assert!(
            !values.is_empty(),
            "{}: Prometheus has no sample with {label}={:?} for {promql} around {}: {answers:?}",
            item.name,
            item.name,
            item.timestamp
        );
        let low = values.iter().copied().fold(f64::INFINITY, f64::min);
        let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        // A Quantity holds nanos, rounded up.
        let tolerance = 2e-9 + 1e-9 * high.abs();
        assert!(
            got >= low - tolerance && got <= high + tolerance,
            "{}: the adapter answered {} (= {got}) at {}; Prometheus answers {promql} with \
             values in [{low}, {high}] around then: {answers:?}",
            item.name,
            item.value,
            item.timestamp
        );
        let want = nominal
            .get(&item.name)
            .unwrap_or_else(|| panic!("no nominal rate for {}: {nominal:?}", item.name));
        assert!(
            (got - want).abs() <= 0.02 * want,
            "{}: the adapter answered {} (= {got}); the exporter's counters grow by {want}/s",
            item.name,
            item.value
        );
    }
}

/// What Prometheus answers now for `promql`, as the canonical Quantity string of the sample
/// with `label` = `name` (for gauges, whose value does not move).
fn prometheus_quantity(prom: &Prometheus, promql: &str, label: &str, name: &str) -> String {
    let samples = prom
        .query(promql)
        .unwrap_or_else(|e| panic!("asking Prometheus: {e:#}"));
    let sample = samples
        .iter()
        .find(|s| s.labels.get(label).map(String::as_str) == Some(name))
        .unwrap_or_else(|| panic!("Prometheus has no {label}={name:?} for {promql}: {samples:?}"));
    canonical_quantity(&format!("{}", sample.value))
        .unwrap_or_else(|e| panic!("Prometheus answered {promql} with {}: {e:#}", sample.value))
}

/// `prom-adapter render --config rules.yaml --prometheus-url <prom> <args…>`: the PromQL,
/// which must be one line. (The adapter may ask Prometheus for the series behind the metric,
/// as discovery does.)
fn render(prom: &Prometheus, args: &[&str]) -> String {
    let rules = rules();
    let rules = rules.to_string_lossy();
    let url = prom.url();
    let mut all = vec!["render", "--config", &rules, "--prometheus-url", &url];
    all.extend_from_slice(args);
    let run = run_cli(&all, &tests_dir());
    assert!(
        run.success(),
        "expected `render` to exit 0 and print PromQL: {run}"
    );
    let lines: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected `render` to print the PromQL on one line: {run}"
    );
    lines[0].trim().to_owned()
}

/// Checks that GET `path` fails with `code`/`reason`: kubectl reports `Error from server
/// (<reason>)`, and the raw answer is a `metav1.Status` with that code, `application/json`.
/// Returns the Status.
fn expect_status(adapter: &Adapter, path: &str, code: u16, reason: &str) -> Value {
    try_status(adapter, "GET", path, code, reason).unwrap_or_else(|e| panic!("{e:#}"))
}

/// [`expect_status`] for `method` (`GET`, or `POST` through `kubectl create --raw`), as a
/// `Result` so it can be awaited with `eventually`.
fn try_status(
    adapter: &Adapter,
    method: &str,
    path: &str,
    code: u16,
    reason: &str,
) -> Result<Value> {
    let run = if method == "GET" {
        adapter.get_raw(path)?
    } else {
        adapter.kubectl().create_raw(path, "{}")?
    };
    let tag = format!("Error from server ({reason})");
    ensure!(
        !run.success() && run.stderr.contains(&tag),
        "{method} {path}: expected kubectl to fail with `{tag}`, got: {run}"
    );
    let response = adapter.request(method, path, &[])?;
    let body = String::from_utf8_lossy(&response.body).into_owned();
    ensure!(
        response.status == code,
        "{method} {path}: expected HTTP {code}, got {} with {body}",
        response.status
    );
    let content_type = response.header("content-type").unwrap_or_default();
    ensure!(
        content_type.starts_with("application/json"),
        "{method} {path}: expected Content-Type application/json, got {content_type:?}"
    );
    let status: Value = serde_json::from_str(&body)
        .with_context(|| format!("{method} {path}: expected a Status JSON body, got {body:?}"))?;
    let want_keys: BTreeSet<&str> = [
        "kind",
        "apiVersion",
        "metadata",
        "status",
        "message",
        "reason",
        "code",
    ]
    .into_iter()
    .collect();
    let got_keys = keys(&status);
    ensure!(
        want_keys.is_subset(&got_keys)
            && got_keys
                .iter()
                .all(|k| want_keys.contains(k) || *k == "details"),
        "{method} {path}: expected a Status with keys {want_keys:?} (and maybe details), got \
         {status}"
    );
    ensure!(
        (
            &status["kind"],
            &status["apiVersion"],
            &status["metadata"],
            &status["status"],
            &status["reason"],
            &status["code"]
        ) == (
            &json!("Status"),
            &json!("v1"),
            &json!({}),
            &json!("Failure"),
            &json!(reason),
            &json!(code)
        ),
        "{method} {path}: expected Status kind Status, apiVersion v1, metadata {{}}, status \
         Failure, reason {reason}, code {code}; got {status}"
    );
    ensure!(
        status["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{method} {path}: expected a message in the Status, got {status}"
    );
    Ok(status)
}

// ------------------------------------------------------------------------------------------
// Discovery

#[test]
fn api_discovery_lists_groups_versions_and_metrics() {
    with_shared(|s| {
        let (custom_v2, external) = s.wait_discovered();

        let apis = s.json("/apis");
        assert_eq!(
            (&apis["kind"], &apis["apiVersion"]),
            (&json!("APIGroupList"), &json!("v1")),
            "GET /apis: expected an APIGroupList; got {apis}"
        );
        let groups = apis["groups"]
            .as_array()
            .unwrap_or_else(|| panic!("GET /apis: expected a `groups` array; got {apis}"));
        let group = |name: &str| -> Value {
            groups
                .iter()
                .find(|g| g["name"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("GET /apis: expected group {name}; got {apis}"))
        };
        let expect_group = |g: &Value, name: &str, versions: &[&str], what: &str| {
            let listed: BTreeSet<(String, String)> = g["versions"]
                .as_array()
                .unwrap_or_else(|| panic!("{what}: expected `versions`; got {g}"))
                .iter()
                .map(|v| (v["groupVersion"].to_string(), v["version"].to_string()))
                .collect();
            let want: BTreeSet<(String, String)> = versions
                .iter()
                .map(|v| {
                    (
                        json!(format!("{name}/{v}")).to_string(),
                        json!(v).to_string(),
                    )
                })
                .collect();
            assert_eq!(
                listed, want,
                "{what}: expected versions {versions:?} of {name}; got {g}"
            );
            let preferred = versions[0];
            assert_eq!(
                &g["preferredVersion"],
                &json!({"groupVersion": format!("{name}/{preferred}"), "version": preferred}),
                "{what}: expected preferredVersion {preferred}; got {g}"
            );
        };
        expect_group(
            &group("custom.metrics.k8s.io"),
            "custom.metrics.k8s.io",
            &["v1beta2", "v1beta1"],
            "GET /apis",
        );
        expect_group(
            &group("external.metrics.k8s.io"),
            "external.metrics.k8s.io",
            &["v1beta1"],
            "GET /apis",
        );

        for (path, name, versions) in [
            (CUSTOM, "custom.metrics.k8s.io", &["v1beta2", "v1beta1"][..]),
            (EXTERNAL, "external.metrics.k8s.io", &["v1beta1"][..]),
        ] {
            let g = s.json(path);
            assert_eq!(
                (&g["kind"], &g["apiVersion"], &g["name"]),
                (&json!("APIGroup"), &json!("v1"), &json!(name)),
                "GET {path}: expected an APIGroup named {name}; got {g}"
            );
            expect_group(&g, name, versions, &format!("GET {path}"));
        }

        check_resource_list(
            &custom_v2,
            "custom.metrics.k8s.io/v1beta2",
            "MetricValueList",
            CUSTOM_RESOURCES,
        );
        let custom_v1 = s.json(CUSTOM_V1);
        check_resource_list(
            &custom_v1,
            "custom.metrics.k8s.io/v1beta1",
            "MetricValueList",
            CUSTOM_RESOURCES,
        );
        let v2_names = resource_names(&custom_v2).expect("checked above");
        let v1_names = resource_names(&custom_v1).expect("checked above");
        assert_eq!(
            v2_names, v1_names,
            "expected v1beta1 and v1beta2 to list the same metrics"
        );
        let external_expected: Vec<(&str, bool)> =
            EXTERNAL_METRICS.iter().map(|m| (*m, true)).collect();
        check_resource_list(
            &external,
            "external.metrics.k8s.io/v1beta1",
            "ExternalMetricValueList",
            &external_expected,
        );
        let external_names = resource_names(&external).expect("checked above");
        let want: BTreeSet<String> = EXTERNAL_METRICS.iter().map(|m| (*m).to_owned()).collect();
        assert_eq!(
            external_names, want,
            "expected exactly the external rules' metrics in {EXTERNAL_V1}"
        );
        // Renamed by the rule, not listed under the series name; external stays external.
        for bad in [
            "pods/http_requests_total",
            "pods/queue_depth",
            "queue_depth",
        ] {
            assert!(
                !v2_names.contains(bad),
                "{CUSTOM_V2} must not list {bad}: {v2_names:?}"
            );
        }
    });
}

// ------------------------------------------------------------------------------------------
// Custom metrics

#[test]
fn api_pods_rate_matches_prometheus_in_both_versions() {
    with_shared(|s| {
        s.wait_discovered();
        let promql = render(
            &s.prom,
            &[
                "--metric",
                RATE,
                "--resource",
                "pods",
                "--namespace",
                "default",
            ],
        );
        let default_rates = nominal_rates("default", None);
        for version in ["v1beta2", "v1beta1"] {
            let path = format!("{CUSTOM}/{version}/namespaces/default/pods/*/{RATE}");
            let list = s.json(&path);
            let items =
                check_metric_list(&list, version, RATE, "Pod", Some("default"), &Value::Null);
            assert_eq!(
                item_names(&items),
                BTreeSet::from(["web-0", "web-1", "web-2"]),
                "GET {path}: expected the pods of namespace default; got {list}"
            );
            check_against_prometheus(&s.prom, &promql, "pod", &items, &default_rates);
        }

        let path =
            format!("{CUSTOM_V2}/namespaces/default/pods/*/{RATE}?labelSelector=pod%3Dweb-1");
        let list = s.json(&path);
        let items = check_metric_list(&list, "v1beta2", RATE, "Pod", Some("default"), &Value::Null);
        assert_eq!(
            item_names(&items),
            BTreeSet::from(["web-1"]),
            "GET {path}: expected only web-1; got {list}"
        );
        let promql = render(
            &s.prom,
            &[
                "--metric",
                RATE,
                "--resource",
                "pods",
                "--namespace",
                "default",
                "--selector",
                "pod=web-1",
            ],
        );
        check_against_prometheus(&s.prom, &promql, "pod", &items, &default_rates);

        let path = format!("{CUSTOM_V2}/namespaces/other/pods/*/{RATE}");
        let list = s.json(&path);
        let items = check_metric_list(&list, "v1beta2", RATE, "Pod", Some("other"), &Value::Null);
        assert_eq!(
            item_names(&items),
            BTreeSet::from(["api-0"]),
            "GET {path}: expected only the pod of namespace other; got {list}"
        );
        let promql = render(
            &s.prom,
            &[
                "--metric",
                RATE,
                "--resource",
                "pods",
                "--namespace",
                "other",
            ],
        );
        check_against_prometheus(
            &s.prom,
            &promql,
            "pod",
            &items,
            &nominal_rates("other", None),
        );
    });
}

#[test]
fn api_metric_label_selector_filters_series_and_is_echoed() {
    with_shared(|s| {
        s.wait_discovered();
        let promql = render(
            &s.prom,
            &[
                "--metric",
                RATE,
                "--resource",
                "pods",
                "--namespace",
                "default",
                "--metric-selector",
                "method=GET",
            ],
        );
        assert!(
            promql.contains(r#"method="GET""#),
            "expected the metric selector in the PromQL as method=\"GET\"; got {promql}"
        );
        let echo = json!({"matchLabels": {"method": "GET"}});
        for version in ["v1beta2", "v1beta1"] {
            let path = format!(
                "{CUSTOM}/{version}/namespaces/default/pods/*/{RATE}?metricLabelSelector=method%3DGET"
            );
            let list = s.json(&path);
            let items = check_metric_list(&list, version, RATE, "Pod", Some("default"), &echo);
            assert_eq!(
                item_names(&items),
                BTreeSet::from(["web-0", "web-1", "web-2"]),
                "GET {path}: expected the pods of namespace default; got {list}"
            );
            check_against_prometheus(
                &s.prom,
                &promql,
                "pod",
                &items,
                &nominal_rates("default", Some("GET")),
            );
        }
    });
}

#[test]
fn api_named_pod_gets_one_item_and_a_pod_without_series_gets_404() {
    with_shared(|s| {
        s.wait_discovered();
        let promql = render(
            &s.prom,
            &[
                "--metric",
                RATE,
                "--resource",
                "pods",
                "--namespace",
                "default",
                "--name",
                "web-1",
            ],
        );
        for version in ["v1beta2", "v1beta1"] {
            let path = format!("{CUSTOM}/{version}/namespaces/default/pods/web-1/{RATE}");
            let list = s.json(&path);
            let items =
                check_metric_list(&list, version, RATE, "Pod", Some("default"), &Value::Null);
            assert_eq!(
                item_names(&items),
                BTreeSet::from(["web-1"]),
                "GET {path}: expected exactly one item, for web-1; got {list}"
            );
            assert_eq!(items.len(), 1, "GET {path}: expected one item; got {list}");
            check_against_prometheus(
                &s.prom,
                &promql,
                "pod",
                &items,
                &nominal_rates("default", None),
            );
        }

        // No series at all for this pod, and a pod that has series but not of this metric.
        for (pod, metric) in [("web-9", RATE), ("web-1", "app_cpu_cores")] {
            let path = format!("{CUSTOM_V2}/namespaces/default/pods/{pod}/{metric}");
            let status = expect_status(&s.adapter, &path, 404, "NotFound");
            let message = status["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(metric),
                "GET {path}: expected the 404 message to name {metric}; got {status}"
            );
        }
    });
}

#[test]
fn api_namespace_metric_describes_the_namespace() {
    with_shared(|s| {
        s.wait_discovered();
        for version in ["v1beta2", "v1beta1"] {
            let path = format!("{CUSTOM}/{version}/namespaces/default/metrics/namespace_load");
            let list = s.json(&path);
            let items = check_metric_list(
                &list,
                version,
                "namespace_load",
                "Namespace",
                None,
                &Value::Null,
            );
            assert_eq!(
                item_names(&items),
                BTreeSet::from(["default"]),
                "GET {path}: expected one item describing Namespace default; got {list}"
            );
            assert_eq!(
                items[0].value, "500m",
                "GET {path}: expected namespace_load 0.5 as \"500m\"; got {list}"
            );
        }
        let from_prometheus = prometheus_quantity(
            &s.prom,
            r#"sum(namespace_load{namespace="default"}) by (namespace)"#,
            "namespace",
            "default",
        );
        assert_eq!(
            from_prometheus, "500m",
            "the test's own Quantity conversion"
        );
    });
}

#[test]
fn api_quantities_are_canonical_end_to_end() {
    with_shared(|s| {
        s.wait_discovered();
        for (metric, want) in [
            ("app_cpu_cores", "24233138021n"),
            ("app_memory_kilobytes", "2k"),
        ] {
            let promql = render(
                &s.prom,
                &[
                    "--metric",
                    metric,
                    "--resource",
                    "pods",
                    "--namespace",
                    "default",
                    "--name",
                    "web-0",
                ],
            );
            let from_prometheus = prometheus_quantity(&s.prom, &promql, "pod", "web-0");
            assert_eq!(
                from_prometheus, want,
                "Prometheus' answer to {promql}, through the test's Quantity conversion"
            );
            for path in [
                format!("{CUSTOM_V2}/namespaces/default/pods/web-0/{metric}"),
                format!("{CUSTOM_V1}/namespaces/default/pods/web-0/{metric}"),
                format!("{CUSTOM_V2}/namespaces/default/pods/*/{metric}"),
            ] {
                let version = if path.starts_with(CUSTOM_V1) {
                    "v1beta1"
                } else {
                    "v1beta2"
                };
                let list = s.json(&path);
                let items =
                    check_metric_list(&list, version, metric, "Pod", Some("default"), &Value::Null);
                let values: Vec<(&str, &str)> = items
                    .iter()
                    .map(|i| (i.name.as_str(), i.value.as_str()))
                    .collect();
                assert_eq!(
                    values,
                    [("web-0", want)],
                    "GET {path}: expected web-0 = {want:?}; got {list}"
                );
            }
        }
    });
}

#[test]
fn api_nan_value_is_503_not_a_silent_zero() {
    with_shared(|s| {
        s.wait_discovered();
        let path = format!("{CUSTOM_V2}/namespaces/default/pods/web-0/app_broken_ratio");
        expect_status(&s.adapter, &path, 503, "ServiceUnavailable");
    });
}

// ------------------------------------------------------------------------------------------
// External metrics

#[test]
fn api_external_queue_depth_by_selector() {
    with_shared(|s| {
        s.wait_discovered();
        let read = |selector: Option<&str>| -> (String, Value, BTreeMap<String, String>) {
            let path = match selector {
                Some(sel) => format!(
                    "{EXTERNAL_V1}/namespaces/default/queue_depth?labelSelector={}",
                    url_encode(sel)
                ),
                None => format!("{EXTERNAL_V1}/namespaces/default/queue_depth"),
            };
            let list = s.json(&path);
            assert_keys(&list, &["kind", "apiVersion", "metadata", "items"], &path);
            assert_eq!(
                (&list["kind"], &list["apiVersion"], &list["metadata"]),
                (
                    &json!("ExternalMetricValueList"),
                    &json!("external.metrics.k8s.io/v1beta1"),
                    &json!({})
                ),
                "GET {path}: expected kind ExternalMetricValueList, apiVersion \
                 external.metrics.k8s.io/v1beta1, metadata {{}}; got {list}"
            );
            let mut by_queue = BTreeMap::new();
            for item in list["items"].as_array().into_iter().flatten() {
                let got = keys(item);
                let required = BTreeSet::from(["metricName", "metricLabels", "timestamp", "value"]);
                assert!(
                    required.is_subset(&got)
                        && got.iter().all(|k| required.contains(k) || *k == "window"),
                    "GET {path}: expected item keys {required:?} (and maybe window); got {item}"
                );
                if let Some(window) = item.get("window") {
                    assert!(
                        window.as_u64().is_some_and(|w| w > 0),
                        "GET {path}: expected a positive window; got {item}"
                    );
                }
                assert_eq!(
                    item["metricName"], "queue_depth",
                    "GET {path}: expected metricName queue_depth; got {item}"
                );
                let ts = item["timestamp"].as_str().unwrap_or_default();
                let ts = parse_rfc3339_seconds(ts).unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
                assert!(
                    (ts as f64 - unix_now()).abs() < 300.0,
                    "GET {path}: expected a timestamp near now; got {item}"
                );
                let queue = item["metricLabels"]["queue"]
                    .as_str()
                    .unwrap_or_else(|| panic!("GET {path}: expected a queue label; got {item}"));
                assert_eq!(
                    item["metricLabels"],
                    json!({"queue": queue}),
                    "GET {path}: expected metricLabels to be the sample's labels \
                     (sum by (queue) leaves only queue); got {item}"
                );
                let value = item["value"].as_str().unwrap_or_default().to_owned();
                assert!(
                    by_queue.insert(queue.to_owned(), value).is_none(),
                    "GET {path}: queue {queue} twice in {list}"
                );
            }
            (path, list, by_queue)
        };
        let want = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };

        let (path, list, got) = read(Some("queue=orders"));
        assert_eq!(
            got,
            want(&[("orders", "42")]),
            "GET {path}: expected one item, orders = \"42\"; got {list}"
        );
        let (path, list, got) = read(Some("queue in (orders,payments)"));
        assert_eq!(
            got,
            want(&[("orders", "42"), ("payments", "7")]),
            "GET {path}: expected two items, orders = \"42\" and payments = \"7\"; got {list}"
        );
        let (path, list, got) = read(None);
        assert_eq!(
            got,
            want(&[("orders", "42"), ("payments", "7")]),
            "GET {path}: expected every queue of namespace default; got {list}"
        );

        let path = format!(
            "{EXTERNAL_V1}/namespaces/default/queue_depth?labelSelector={}",
            url_encode("queue in (")
        );
        expect_status(&s.adapter, &path, 400, "BadRequest");
    });
}

// ------------------------------------------------------------------------------------------
// Errors, content negotiation, health

#[test]
fn api_errors_are_statuses_and_protobuf_accept_gets_json() {
    with_shared(|s| {
        s.wait_discovered();
        for path in [
            format!("{CUSTOM_V2}/namespaces/default/pods/*/no_such_metric"),
            format!("{CUSTOM_V1}/namespaces/default/pods/web-0/no_such_metric"),
            format!("{CUSTOM_V2}/namespaces/default/services/*/{RATE}"),
            format!("{EXTERNAL_V1}/namespaces/default/no_such_metric"),
        ] {
            expect_status(&s.adapter, &path, 404, "NotFound");
        }

        let path = format!("{CUSTOM_V2}/namespaces/default/pods/*/{RATE}");
        try_status(&s.adapter, "POST", &path, 405, "MethodNotAllowed")
            .unwrap_or_else(|e| panic!("{e:#}"));

        for (path, kind) in [
            (path.as_str(), "MetricValueList"),
            (CUSTOM_V2, "APIResourceList"),
            (EXTERNAL_V1, "APIResourceList"),
            ("/apis", "APIGroupList"),
        ] {
            let response = s
                .adapter
                .request("GET", path, &[("Accept", ACCEPT_PROTOBUF)])
                .unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
            let body = String::from_utf8_lossy(&response.body).into_owned();
            let content_type = response.header("content-type").unwrap_or_default();
            assert!(
                response.status == 200 && content_type.starts_with("application/json"),
                "GET {path} with Accept: {ACCEPT_PROTOBUF}: expected 200 application/json, got \
                 {} {content_type:?}: {body}",
                response.status
            );
            let json: Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("GET {path}: expected JSON, got {body:?}: {e}"));
            assert_eq!(
                json["kind"], kind,
                "GET {path}: expected a {kind}; got {json}"
            );
        }
    });
}

#[test]
fn api_health_endpoints_answer_ok() {
    with_shared(|s| {
        for path in ["/healthz", "/livez", "/readyz"] {
            let run = s
                .adapter
                .get_raw(path)
                .unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
            assert!(
                run.success() && run.stdout.trim() == "ok",
                "GET {path}: expected \"ok\" through kubectl; got {run}"
            );
            let response = s
                .adapter
                .request("GET", path, &[])
                .unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
            let body = String::from_utf8_lossy(&response.body).into_owned();
            assert!(
                response.status == 200 && body.trim() == "ok",
                "GET {path}: expected 200 \"ok\", got {} {body:?}",
                response.status
            );
        }
    });
}

#[test]
fn api_self_metrics_count_requests_by_group_and_code() {
    with_shared(|s| {
        s.wait_discovered();
        // A 200 and a 404 of this test's own, whatever else ran.
        s.json(&format!(
            "{CUSTOM_V2}/namespaces/default/metrics/namespace_load"
        ));
        expect_status(
            &s.adapter,
            &format!("{CUSTOM_V2}/namespaces/default/pods/*/no_such_metric"),
            404,
            "NotFound",
        );
        let text = eventually(
            "prom_adapter_ self-metrics with 200s and 404s",
            PATIENCE,
            || {
                let run = s.adapter.get_raw("/metrics")?;
                let text = run.ok_stdout()?.to_owned();
                let series = exposition::parse(&text)?;
                let ours: Vec<_> = series
                    .iter()
                    .filter(|x| x.name.starts_with("prom_adapter_"))
                    .collect();
                ensure!(
                    !ours.is_empty(),
                    "no prom_adapter_ series on /metrics:\n{text}"
                );
                let counted = |code: &str| {
                    ours.iter().any(|x| {
                        x.name.ends_with("_total")
                            && x.labels.get("code").map(String::as_str) == Some(code)
                            && x.value >= 1.0
                    })
                };
                ensure!(
                    counted("200") && counted("404"),
                    "expected prom_adapter_*_total request counters with code=\"200\" and \
                     code=\"404\":\n{text}"
                );
                ensure!(
                    ours.iter().any(|x| x.name.ends_with("_total")
                        && matches!(
                            x.labels.get("group").map(String::as_str),
                            Some("custom" | "custom.metrics.k8s.io")
                        )
                        && x.labels.get("code").map(String::as_str) == Some("200")),
                    "expected a request counter with group=\"custom\" (or the full group name) \
                     and code=\"200\":\n{text}"
                );
                let named = |part: &str, suffix: &str| {
                    ours.iter()
                        .any(|x| x.name.contains(part) && x.name.ends_with(suffix))
                };
                ensure!(
                    named("request", "_bucket"),
                    "expected a prom_adapter_ request latency histogram:\n{text}"
                );
                ensure!(
                    named("prometheus", "_bucket") || named("prometheus", "_count"),
                    "expected a prom_adapter_ Prometheus query latency histogram:\n{text}"
                );
                ensure!(
                    ours.iter()
                        .any(|x| x.name.contains("discovered") && x.value >= 1.0),
                    "expected a prom_adapter_ count of discovered metrics (a name with \
                     `discovered`) of at least 1:\n{text}"
                );
                Ok(text)
            },
        );
        let (code, output) = promtool_check_metrics(&text);
        assert!(
            code == 0 || code == 3,
            "promtool check metrics exited {code} on the adapter's /metrics:\n{output}\n{text}"
        );
    });
}

// ------------------------------------------------------------------------------------------
// Faults

/// Lists of (name, namespaced, kind) of the custom v1beta2 and external discovery.
fn discovery_snapshot(adapter: &Adapter) -> Result<BTreeSet<String>> {
    let mut all = BTreeSet::new();
    for path in [CUSTOM_V2, EXTERNAL_V1] {
        let list = adapter.get_json(path)?;
        for r in list["resources"]
            .as_array()
            .with_context(|| format!("GET {path}: no resources: {list}"))?
        {
            all.insert(format!(
                "{path} {} namespaced={} kind={}",
                r["name"], r["namespaced"], r["kind"]
            ));
        }
    }
    Ok(all)
}

/// Polls `f` for `window`: it must pass every time (the opposite of `eventually`).
fn consistently(what: &str, window: Duration, mut f: impl FnMut() -> Result<()>) {
    let start = Instant::now();
    let mut checks = 0u32;
    loop {
        checks += 1;
        if let Err(e) = f() {
            panic!(
                "{what}: check {checks} failed after {:.1?}: {e:#}",
                start.elapsed()
            );
        }
        if start.elapsed() >= window {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn fault_prometheus_down_gives_503_keeps_discovery_and_recovers() {
    let mut stack = Stack::start("adapter-e2e-fault");
    stack.wait_discovered();
    let custom = format!("{CUSTOM_V2}/namespaces/default/metrics/namespace_load");
    let external =
        format!("{EXTERNAL_V1}/namespaces/default/queue_depth?labelSelector=queue%3Dorders");
    let healthy = |stack: &Stack| -> Result<()> {
        let list = stack.adapter.get_json(&custom)?;
        ensure!(
            list["items"][0]["value"] == "500m",
            "GET {custom}: expected namespace_load \"500m\"; got {list}"
        );
        let list = stack.adapter.get_json(&external)?;
        ensure!(
            list["items"][0]["value"] == "42",
            "GET {external}: expected queue_depth \"42\"; got {list}"
        );
        Ok(())
    };
    eventually("the adapter to answer from Prometheus", PATIENCE, || {
        healthy(&stack)
    });
    let before = discovery_snapshot(&stack.adapter).expect("reading discovery");

    let prom_port = stack.prom.addr().port().to_string();
    stack.prom.stop();
    // Three relist intervals: every relist fails, and the last good list stays.
    consistently(
        "discovery to stay as it was while Prometheus is down",
        Duration::from_secs(3),
        || {
            let now = discovery_snapshot(&stack.adapter)?;
            ensure!(
                now == before,
                "discovery changed while Prometheus is down:\nbefore: {before:#?}\nnow: {now:#?}"
            );
            Ok(())
        },
    );
    for path in [&custom, &external] {
        let status = eventually(
            &format!("GET {path} to answer 503 while Prometheus is down"),
            PATIENCE,
            || try_status(&stack.adapter, "GET", path, 503, "ServiceUnavailable"),
        );
        let message = status["message"].as_str().unwrap_or_default();
        assert!(
            message.to_lowercase().contains("prometheus") || message.contains(&prom_port),
            "GET {path}: expected the 503 message to say the Prometheus query failed (name \
             Prometheus or its address); got {status}"
        );
    }
    assert!(
        stack.adapter.process().ensure_running().is_ok(),
        "the adapter must keep running while Prometheus is down"
    );

    stack.prom.restart();
    eventually(
        "the adapter to answer 200 again after Prometheus restarted",
        PATIENCE,
        || healthy(&stack),
    );
    assert_eq!(
        discovery_snapshot(&stack.adapter).expect("reading discovery"),
        before,
        "discovery after Prometheus came back"
    );
}

// ------------------------------------------------------------------------------------------
// Subcommands

#[test]
fn cli_check_config_accepts_the_rules_and_rejects_an_unknown_key() {
    let good = rules();
    let good = good.to_string_lossy();
    let run = run_cli(&["check-config", &good], &tests_dir());
    assert_eq!(
        run.code(),
        Some(0),
        "check-config on a good file: expected exit 0: {run}"
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l.trim() == format!("{good}: ok")),
        "check-config on a good file: expected a line `{good}: ok`: {run}"
    );

    let bad_path = fixture("unknown-key.yaml");
    let bad = bad_path.to_string_lossy();
    let text = std::fs::read_to_string(&bad_path).expect("reading the fixture");
    let line = text
        .lines()
        .position(|l| l.trim_start().starts_with("metricQuery:"))
        .map(|i| i + 1)
        .expect("the fixture has the misspelt key");
    let run = run_cli(&["check-config", &bad], &tests_dir());
    assert_eq!(
        run.code(),
        Some(64),
        "check-config on a file with an unknown key: expected exit 64: {run}"
    );
    let output = format!("{}{}", run.stdout, run.stderr);
    let place = format!("{bad}:{line}:");
    assert!(
        output.contains(&place) && output.contains("metricQuery"),
        "check-config: expected the error to name `{place}<col>` and the key `metricQuery`: \
         {run}"
    );
}

#[test]
fn cli_render_prints_the_promql_of_a_request() {
    with_shared(|s| {
        s.wait_discovered();
        let cases = [
            (
                [
                    "--metric",
                    RATE,
                    "--resource",
                    "pods",
                    "--namespace",
                    "default",
                ],
                r#"sum(rate(http_requests_total{namespace="default"}[2m])) by (pod)"#,
            ),
            (
                [
                    "--metric",
                    "app_cpu_cores",
                    "--resource",
                    "pods",
                    "--namespace",
                    "default",
                ],
                r#"sum(app_cpu_cores{namespace="default"}) by (pod)"#,
            ),
        ];
        for (args, want) in cases {
            assert_eq!(render(&s.prom, &args), want, "render {args:?}");
        }
    });
}
