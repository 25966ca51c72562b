//! `prom-adapter` end to end against VictoriaMetrics instead of Prometheus: the same
//! in-process exporter and rules (`tests/data/adapter/rules.yaml`) as `tests/adapter.rs`,
//! scraped by a real VictoriaMetrics (see [`pipeline_tests::victoria`]), the adapter pointed
//! at its Prometheus-compatible API, and the answers read with `kubectl get --raw` (raw HTTPS
//! where a status code matters).
//!
//! All tests share one exporter + VictoriaMetrics + adapter (started by the first test that
//! needs it, kept in a static and reaped by [`Leash`]es when the test binary exits). The
//! fault test stops and restarts that VictoriaMetrics, so it takes the stack exclusively (a
//! write lock; the others hold read locks) and leaves it running again.
//!
//! What differs from the Prometheus tests, and why:
//! - Rates are compared with what VictoriaMetrics itself answers for the PromQL that
//!   `prom-adapter render` prints, evaluated at the item's timestamp (its `rate()` is not
//!   Prometheus' one: it takes the increase since the sample before the window and does not
//!   extrapolate). The exporter's counters are exactly linear in their sample timestamps, so
//!   that is also the nominal rate, from the second sample on: no history is backfilled.
//! - VictoriaMetrics drops NaN samples at ingestion and never answers a NaN, so
//!   `app_broken_ratio` (NaN) is not a 503 here but absent: a 404 (still never a silent zero).
//!   The non-finite path (503) is checked with `app_overflow_ratio` (+Inf), a series only
//!   this exporter serves.
//! - Its `/api/v1/series` ignores a `start` finer than a day, so the metrics-max-age window
//!   is not tested here.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::{Path, PathBuf};
use std::sync::{OnceLock, PoisonError, RwLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use pipeline_tests::exporter::{ExportedSeries, Kind, counter, gauge};
use pipeline_tests::http::url_encode;
use pipeline_tests::promadapter::{
    Leash, canonical_quantity, fixture, is_canonical_quantity, parse_rfc3339_seconds,
    quantity_value, run_cli,
};
use pipeline_tests::util::tests_dir;
use pipeline_tests::victoria::VictoriaMetrics;
use pipeline_tests::{Adapter, Exporter, PATIENCE, eventually};
use serde_json::{Value, json};

const CUSTOM: &str = "/apis/custom.metrics.k8s.io";
const CUSTOM_V2: &str = "/apis/custom.metrics.k8s.io/v1beta2";
const CUSTOM_V1: &str = "/apis/custom.metrics.k8s.io/v1beta1";
const EXTERNAL_V1: &str = "/apis/external.metrics.k8s.io/v1beta1";

/// The metric the rate rule makes of `http_requests_total`.
const RATE: &str = "http_requests_per_second";

/// The scrape job of the shared VictoriaMetrics.
const JOB: &str = "adapter-vm-e2e";

/// Custom-metrics resources the rules must produce, with their scope: those of the
/// Prometheus tests (`tests/adapter.rs`) but `pods/app_broken_ratio`, whose only sample is
/// NaN (VictoriaMetrics drops it), and with `pods/app_overflow_ratio` (+Inf) instead.
const CUSTOM_RESOURCES: &[(&str, bool)] = &[
    ("pods/http_requests_per_second", true),
    ("namespaces/http_requests_per_second", false),
    ("pods/app_cpu_cores", true),
    ("pods/app_memory_kilobytes", true),
    ("pods/app_overflow_ratio", true),
    ("namespaces/namespace_load", false),
];

/// The external metrics the rules must produce: exactly these.
const EXTERNAL_METRICS: &[&str] = &["queue_depth"];

/// The series the exporter serves: those of `tests/adapter.rs`, plus `app_overflow_ratio`
/// (+Inf) for web-0.
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
        gauge("app_overflow_ratio", &web0, f64::INFINITY),
    ]
}

/// The nominal `http_requests_per_second` of each pod of `namespace`: the sum of its
/// counters' rates.
fn nominal_rates(namespace: &str) -> BTreeMap<String, f64> {
    let mut rates = BTreeMap::new();
    for series in exported_series() {
        let Kind::Counter { per_second } = series.kind else {
            continue;
        };
        let label = |k: &str| series.labels.get(k).map(String::as_str);
        if label("namespace") == Some(namespace) {
            *rates
                .entry(label("pod").unwrap_or_default().to_owned())
                .or_insert(0.0) += per_second;
        }
    }
    rates
}

/// The rules every test adapter runs with (the Prometheus tests' own).
fn rules() -> PathBuf {
    fixture("rules.yaml")
}

/// An exporter, a VictoriaMetrics scraping it, and an adapter reading that VictoriaMetrics.
struct Stack {
    // Field order is drop order: the adapter first, the exporter last.
    adapter: Adapter,
    vm: VictoriaMetrics,
    exporter: Exporter,
}

impl Stack {
    /// Starts the three; waits until VictoriaMetrics answers every finite exported series
    /// with two samples (so every rate has a slope), then until the adapter is listening.
    fn start() -> Stack {
        let exporter = Exporter::start(exported_series());
        let vm = VictoriaMetrics::start_job(JOB, &[exporter.addr()]);
        vm.wait_targets_up(1);
        let mut want: BTreeMap<String, usize> = BTreeMap::new();
        for series in exported_series() {
            if matches!(series.kind, Kind::Gauge(v) if v.is_nan()) {
                // Never stored: nothing to wait for.
                continue;
            }
            *want.entry(series.name).or_default() += 1;
        }
        eventually(
            "two samples of every finite exported series in VictoriaMetrics",
            PATIENCE,
            || {
                vm.process().ensure_running()?;
                vm.force_flush()?;
                for (name, n) in &want {
                    let counts = vm.query(&format!("count_over_time({name}[1m])"))?;
                    let ready = counts.iter().filter(|s| s.value >= 2.0).count();
                    ensure!(
                        ready == *n,
                        "{ready} of {n} {name} series have two samples: {counts:?}"
                    );
                }
                Ok(())
            },
        );
        let adapter = Adapter::start(&rules(), &vm.url(), &[]);
        Stack {
            adapter,
            vm,
            exporter,
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

    /// Leashes the running VictoriaMetrics and adapter processes and the directories the
    /// static never removes (a restarted VictoriaMetrics gets a new leash: new pid, new logs).
    fn leash(&self, vm_only: bool) -> Leash {
        let log_dir = |p: PathBuf| p.parent().map(PathBuf::from).unwrap_or(p);
        let mut dirs = vec![log_dir(self.vm.process().stderr_path())];
        let mut pids = vec![self.vm.process().pid()];
        if !vm_only {
            dirs.extend([
                self.vm.dir().to_path_buf(),
                self.adapter.dir().to_path_buf(),
                log_dir(self.adapter.process().stderr_path()),
                self.adapter.kubectl().dir().to_path_buf(),
            ]);
            pids.push(self.adapter.process().pid());
        }
        let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
        Leash::new(&pids, &dirs).expect("leashing the shared stack")
    }
}

/// The shared stack, and the leashes that reap it when the test binary exits.
struct Shared {
    stack: RwLock<Stack>,
    leashes: std::sync::Mutex<Vec<Leash>>,
}

/// The shared stack, or why it failed to start (the first test to try printed the logs).
static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();

fn shared() -> &'static Shared {
    let shared = SHARED.get_or_init(|| {
        catch_unwind(|| {
            let stack = Stack::start();
            let leash = stack.leash(false);
            Shared {
                stack: RwLock::new(stack),
                leashes: std::sync::Mutex::new(vec![leash]),
            }
        })
        .map_err(|panic| panic_message(panic.as_ref()))
    });
    match shared {
        Ok(shared) => shared,
        Err(message) => panic!(
            "the shared VictoriaMetrics stack did not start (the first test that tried printed \
             the logs): {message}"
        ),
    }
}

/// Runs `test` against the shared stack (started on first use) alongside the other tests;
/// when it fails, prints the tails of the adapter's and VictoriaMetrics' logs (the static is
/// never dropped, so their guards can't).
fn with_shared(test: impl FnOnce(&Stack)) {
    let stack = shared()
        .stack
        .read()
        .unwrap_or_else(PoisonError::into_inner);
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| test(&stack))) {
        eprintln!("{}", stack.adapter.log_tail(80));
        eprintln!("{}", stack.vm.process().log_tail(20));
        resume_unwind(panic);
    }
}

/// Runs `test` with the shared stack to itself (no other test runs against it meanwhile);
/// afterwards VictoriaMetrics is running again (restarted if the test failed while it was
/// stopped) and leashed.
fn with_shared_exclusively(test: impl FnOnce(&mut Stack)) {
    let shared = shared();
    let mut stack = shared.stack.write().unwrap_or_else(PoisonError::into_inner);
    let pid = stack.vm.process().pid();
    let outcome = catch_unwind(AssertUnwindSafe(|| test(&mut stack)));
    if outcome.is_err() {
        eprintln!("{}", stack.adapter.log_tail(80));
        eprintln!("{}", stack.vm.process().log_tail(20));
        if !stack.vm.is_running() {
            // For the tests that run after this one; its own failure is what gets reported.
            let _ = catch_unwind(AssertUnwindSafe(|| stack.vm.restart()));
        }
    }
    if stack.vm.is_running() && stack.vm.process().pid() != pid {
        let leash = stack.leash(true);
        shared
            .leashes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(leash);
    }
    drop(stack);
    if let Err(panic) = outcome {
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
// Reading answers (as in tests/adapter.rs)

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
        "{what}: every entry under one parent resource must have the same `namespaced`; \
         mixed: {mixed:?}"
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
            let window_key = if version == "v1beta1" {
                assert_keys(
                    item,
                    &[
                        "describedObject",
                        "metricName",
                        "timestamp",
                        "window",
                        "value",
                        "selector",
                    ],
                    &format!("{what}: item"),
                );
                assert_eq!(
                    (&item["metricName"], &item["selector"]),
                    (&json!(metric), &Value::Null),
                    "{what}: expected metricName {metric} and selector null; got {item}"
                );
                "window"
            } else {
                assert_keys(
                    item,
                    &[
                        "describedObject",
                        "metric",
                        "timestamp",
                        "windowSeconds",
                        "value",
                    ],
                    &format!("{what}: item"),
                );
                assert_eq!(
                    &item["metric"],
                    &json!({"name": metric, "selector": null}),
                    "{what}: expected metric {{name: {metric}, selector: null}}; got {item}"
                );
                "windowSeconds"
            };
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
                "{what}: expected describedObject {want}; got {item}"
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

/// Rates the adapter answered for one request, to check against VictoriaMetrics.
struct RateCheck {
    /// The request, for messages.
    path: String,
    /// The PromQL `prom-adapter render` prints for it.
    promql: String,
    /// Its items (objects are pods).
    items: Vec<Item>,
    /// The exporter's rate of each pod.
    nominal: BTreeMap<String, f64>,
}

/// Checks each item's value against what VictoriaMetrics answers for the check's PromQL (the
/// sample whose `pod` is the item's object name) evaluated at the item's timestamp: equal up
/// to the Quantity's rounding up to nano. (The adapter asked without a time, which
/// VictoriaMetrics evaluates at the current whole second, the timestamp it answered with.)
/// Every value must also be the exporter's nominal rate: the counters are exactly linear, and
/// VictoriaMetrics' rate does not extrapolate.
fn check_against_vm(vm: &VictoriaMetrics, checks: &[RateCheck]) {
    let latest = checks
        .iter()
        .flat_map(|c| &c.items)
        .map(|i| i.timestamp)
        .max()
        .unwrap_or_default();
    // Every sample stamped up to the latest timestamp was scraped by a scrape that started
    // by then and ended (1 s timeout) a second later; flushed, VictoriaMetrics' answer about
    // that moment is final.
    wait_for_clock(latest as f64 + 1.5);
    vm.force_flush()
        .unwrap_or_else(|e| panic!("flushing VictoriaMetrics: {e:#}"));
    for check in checks {
        let RateCheck {
            path,
            promql,
            items,
            nominal,
        } = check;
        for item in items {
            let got = quantity_value(&item.value).unwrap_or_else(|e| panic!("{e:#}"));
            let time = item.timestamp as f64;
            let samples = vm
                .query_at(promql, time)
                .unwrap_or_else(|e| panic!("asking VictoriaMetrics: {e:#}"));
            let want = samples
                .iter()
                .find(|s| s.labels.get("pod") == Some(&item.name))
                .map(|s| s.value)
                .unwrap_or_else(|| {
                    panic!(
                        "GET {path}: {}: VictoriaMetrics has no sample with pod={:?} for \
                         {promql} at {time}: {samples:?}",
                        item.name, item.name
                    )
                });
            // A Quantity holds nanos, rounded up.
            let tolerance = 2e-9 + 1e-9 * want.abs();
            assert!(
                (got - want).abs() <= tolerance,
                "GET {path}: {}: the adapter answered {} (= {got}) at {time}; VictoriaMetrics \
                 answers {promql} with {want} ({:?} as a Quantity) then",
                item.name,
                item.value,
                canonical_quantity(&format!("{want}"))
            );
            let nominal = nominal
                .get(&item.name)
                .unwrap_or_else(|| panic!("no nominal rate for {}: {nominal:?}", item.name));
            assert!(
                (got - nominal).abs() <= 1e-6 * nominal,
                "GET {path}: {}: the adapter answered {} (= {got}); the exporter's counters \
                 grow by {nominal}/s",
                item.name,
                item.value
            );
        }
    }
}

/// What VictoriaMetrics answers now for `promql`, as the canonical Quantity string of the
/// sample with `label` = `name` (for gauges, whose value does not move).
fn vm_quantity(vm: &VictoriaMetrics, promql: &str, label: &str, name: &str) -> String {
    let samples = vm
        .query(promql)
        .unwrap_or_else(|e| panic!("asking VictoriaMetrics: {e:#}"));
    let sample = samples
        .iter()
        .find(|s| s.labels.get(label).map(String::as_str) == Some(name))
        .unwrap_or_else(|| {
            panic!("VictoriaMetrics has no {label}={name:?} for {promql}: {samples:?}")
        });
    canonical_quantity(&format!("{}", sample.value)).unwrap_or_else(|e| {
        panic!(
            "VictoriaMetrics answered {promql} with {}: {e:#}",
            sample.value
        )
    })
}

/// `prom-adapter render --config rules.yaml --prometheus-url <vm> <args…>`: the PromQL,
/// which must be one line.
fn render(vm: &VictoriaMetrics, args: &[&str]) -> String {
    let rules = rules();
    let rules = rules.to_string_lossy();
    let url = vm.url();
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
    try_status(adapter, path, code, reason).unwrap_or_else(|e| panic!("{e:#}"))
}

/// [`expect_status`] as a `Result`, so it can be awaited with `eventually`.
fn try_status(adapter: &Adapter, path: &str, code: u16, reason: &str) -> Result<Value> {
    let run = adapter.get_raw(path)?;
    let tag = format!("Error from server ({reason})");
    ensure!(
        !run.success() && run.stderr.contains(&tag),
        "GET {path}: expected kubectl to fail with `{tag}`, got: {run}"
    );
    let response = adapter.request("GET", path, &[])?;
    let body = String::from_utf8_lossy(&response.body).into_owned();
    ensure!(
        response.status == code,
        "GET {path}: expected HTTP {code}, got {} with {body}",
        response.status
    );
    let content_type = response.header("content-type").unwrap_or_default();
    ensure!(
        content_type.starts_with("application/json"),
        "GET {path}: expected Content-Type application/json, got {content_type:?}"
    );
    let status: Value = serde_json::from_str(&body)
        .with_context(|| format!("GET {path}: expected a Status JSON body, got {body:?}"))?;
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
        "GET {path}: expected Status kind Status, apiVersion v1, metadata {{}}, status Failure, \
         reason {reason}, code {code}; got {status}"
    );
    ensure!(
        status["message"].as_str().is_some_and(|m| !m.is_empty()),
        "GET {path}: expected a message in the Status, got {status}"
    );
    Ok(status)
}

// ------------------------------------------------------------------------------------------
// Discovery

#[test]
fn vm_discovery_lists_the_metrics_of_the_prometheus_tests() {
    with_shared(|s| {
        let (custom_v2, external) = s.wait_discovered();
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
fn vm_pods_rate_matches_victoria_metrics_in_both_versions() {
    with_shared(|s| {
        s.wait_discovered();
        let rate_promql = |namespace: &str, name: Option<&str>| {
            let mut args = vec![
                "--metric",
                RATE,
                "--resource",
                "pods",
                "--namespace",
                namespace,
            ];
            args.extend(name.map(|n| ["--name", n]).into_iter().flatten());
            render(&s.vm, &args)
        };
        let all_default = rate_promql("default", None);
        assert_eq!(
            all_default, r#"sum(rate(http_requests_total{namespace="default"}[2m])) by (pod)"#,
            "render against VictoriaMetrics"
        );
        let web1 = rate_promql("default", Some("web-1"));
        let all_other = rate_promql("other", None);
        // Read everything first, then wait once for VictoriaMetrics to have the moments the
        // answers were computed for.
        let mut checks = Vec::new();
        for (version, namespace, name, promql, want) in [
            (
                "v1beta2",
                "default",
                "*",
                &all_default,
                &["web-0", "web-1", "web-2"][..],
            ),
            (
                "v1beta1",
                "default",
                "*",
                &all_default,
                &["web-0", "web-1", "web-2"][..],
            ),
            ("v1beta2", "default", "web-1", &web1, &["web-1"][..]),
            ("v1beta1", "default", "web-1", &web1, &["web-1"][..]),
            ("v1beta2", "other", "*", &all_other, &["api-0"][..]),
        ] {
            let path = format!("{CUSTOM}/{version}/namespaces/{namespace}/pods/{name}/{RATE}");
            let list = s.json(&path);
            let items = check_metric_list(&list, version, RATE, "Pod", Some(namespace));
            let mut names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
            names.sort_unstable();
            assert_eq!(
                names, want,
                "GET {path}: expected one item for each of {want:?}; got {list}"
            );
            checks.push(RateCheck {
                path,
                promql: promql.clone(),
                items,
                nominal: nominal_rates(namespace),
            });
        }
        check_against_vm(&s.vm, &checks);

        let path = format!("{CUSTOM_V2}/namespaces/default/pods/web-9/{RATE}");
        let status = expect_status(&s.adapter, &path, 404, "NotFound");
        assert!(
            status["message"]
                .as_str()
                .unwrap_or_default()
                .contains(RATE),
            "GET {path}: expected the 404 message to name {RATE}; got {status}"
        );
    });
}

#[test]
fn vm_namespace_metric_describes_the_namespace() {
    with_shared(|s| {
        s.wait_discovered();
        for version in ["v1beta2", "v1beta1"] {
            let path = format!("{CUSTOM}/{version}/namespaces/default/metrics/namespace_load");
            let list = s.json(&path);
            let items = check_metric_list(&list, version, "namespace_load", "Namespace", None);
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
        let promql = render(
            &s.vm,
            &[
                "--metric",
                "namespace_load",
                "--resource",
                "namespaces",
                "--name",
                "default",
            ],
        );
        assert_eq!(
            vm_quantity(&s.vm, &promql, "namespace", "default"),
            "500m",
            "VictoriaMetrics' answer to {promql}, through the test's Quantity conversion"
        );
    });
}

#[test]
fn vm_quantities_are_canonical_end_to_end() {
    with_shared(|s| {
        s.wait_discovered();
        for (metric, want) in [
            ("app_cpu_cores", "24233138021n"),
            ("app_memory_kilobytes", "2k"),
        ] {
            let promql = render(
                &s.vm,
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
            assert_eq!(
                vm_quantity(&s.vm, &promql, "pod", "web-0"),
                want,
                "VictoriaMetrics' answer to {promql}, through the test's Quantity conversion"
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
                let items = check_metric_list(&list, version, metric, "Pod", Some("default"));
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
fn vm_non_finite_values_are_errors_never_a_silent_zero() {
    with_shared(|s| {
        s.wait_discovered();
        // +Inf is stored and answered: the adapter refuses it as it refuses NaN.
        let path = format!("{CUSTOM_V2}/namespaces/default/pods/web-0/app_overflow_ratio");
        let status = expect_status(&s.adapter, &path, 503, "ServiceUnavailable");
        let message = status["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("app_overflow_ratio") && message.to_lowercase().contains("inf"),
            "GET {path}: expected the 503 message to name the metric and the infinity; got \
             {status}"
        );
        // NaN never reaches a query answer (VictoriaMetrics drops it at ingestion), so there
        // is no value: a 404, where Prometheus gives a 503.
        let page = s.exporter.page();
        assert!(
            page.contains("app_broken_ratio{namespace=\"default\",pod=\"web-0\"} NaN"),
            "expected the exporter to serve app_broken_ratio NaN:\n{page}"
        );
        let answer =
            s.vm.query("app_broken_ratio")
                .unwrap_or_else(|e| panic!("asking VictoriaMetrics: {e:#}"));
        assert!(
            answer.is_empty(),
            "expected VictoriaMetrics to answer no app_broken_ratio sample (NaN); got {answer:?}"
        );
        let path = format!("{CUSTOM_V2}/namespaces/default/pods/web-0/app_broken_ratio");
        expect_status(&s.adapter, &path, 404, "NotFound");
    });
}

// ------------------------------------------------------------------------------------------
// External metrics

#[test]
fn vm_external_queue_depth_by_selector() {
    with_shared(|s| {
        s.wait_discovered();
        let read = |selector: &str| -> (String, Value, BTreeMap<String, String>) {
            let path = format!(
                "{EXTERNAL_V1}/namespaces/default/queue_depth?labelSelector={}",
                url_encode(selector)
            );
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
        let (path, list, got) = read("queue=orders");
        assert_eq!(
            got,
            want(&[("orders", "42")]),
            "GET {path}: expected one item, orders = \"42\"; got {list}"
        );
        let promql = render(
            &s.vm,
            &[
                "--external",
                "--metric",
                "queue_depth",
                "--namespace",
                "default",
                "--selector",
                "queue=orders",
            ],
        );
        assert_eq!(
            vm_quantity(&s.vm, &promql, "queue", "orders"),
            "42",
            "VictoriaMetrics' answer to {promql}, through the test's Quantity conversion"
        );
        let (path, list, got) = read("queue in (orders,payments)");
        assert_eq!(
            got,
            want(&[("orders", "42"), ("payments", "7")]),
            "GET {path}: expected two items, orders = \"42\" and payments = \"7\"; got {list}"
        );
    });
}

// ------------------------------------------------------------------------------------------
// Faults

/// The custom v1beta2 and external discovery, one line per resource, but `app_broken_ratio`:
/// its series exists in VictoriaMetrics only once a scrape of the exporter failed (the
/// staleness markers written then are its only samples), which a loaded machine may cause at
/// any moment.
fn discovery_snapshot(adapter: &Adapter) -> Result<BTreeSet<String>> {
    let mut all = BTreeSet::new();
    for path in [CUSTOM_V2, EXTERNAL_V1] {
        let list = adapter.get_json(path)?;
        for r in list["resources"]
            .as_array()
            .with_context(|| format!("GET {path}: no resources: {list}"))?
            .iter()
            .filter(|r| {
                !r["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("/app_broken_ratio"))
            })
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
fn vm_down_gives_503_keeps_discovery_and_recovers() {
    with_shared_exclusively(|stack| {
        stack.wait_discovered();
        let custom = format!("{CUSTOM_V2}/namespaces/default/metrics/namespace_load");
        let external =
            format!("{EXTERNAL_V1}/namespaces/default/queue_depth?labelSelector=queue%3Dorders");
        let rates = format!("{CUSTOM_V2}/namespaces/default/pods/*/{RATE}");
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
            let list = stack.adapter.get_json(&rates)?;
            let n = list["items"].as_array().map_or(0, Vec::len);
            ensure!(n == 3, "GET {rates}: expected 3 pods; got {list}");
            Ok(())
        };
        eventually(
            "the adapter to answer from VictoriaMetrics",
            PATIENCE,
            || healthy(stack),
        );
        let before = discovery_snapshot(&stack.adapter).expect("reading discovery");

        let port = stack.vm.addr().port().to_string();
        stack.vm.stop();
        // Three relist intervals: every relist fails, and the last good list stays.
        consistently(
            "discovery to stay as it was while VictoriaMetrics is down",
            Duration::from_secs(3),
            || {
                let now = discovery_snapshot(&stack.adapter)?;
                ensure!(
                    now == before,
                    "discovery changed while VictoriaMetrics is down:\nbefore: {before:#?}\nnow: \
                     {now:#?}"
                );
                Ok(())
            },
        );
        for path in [&custom, &external, &rates] {
            let status = eventually(
                &format!("GET {path} to answer 503 while VictoriaMetrics is down"),
                PATIENCE,
                || try_status(&stack.adapter, path, 503, "ServiceUnavailable"),
            );
            let message = status["message"].as_str().unwrap_or_default();
            assert!(
                message.to_lowercase().contains("prometheus") || message.contains(&port),
                "GET {path}: expected the 503 message to say the query failed (name the \
                 Prometheus API or its address); got {status}"
            );
        }
        assert!(
            stack.adapter.process().ensure_running().is_ok(),
            "the adapter must keep running while VictoriaMetrics is down"
        );

        stack.vm.restart();
        eventually(
            "the adapter to answer 200 again after VictoriaMetrics restarted",
            PATIENCE,
            || healthy(stack),
        );
        let promql = render(
            &stack.vm,
            &[
                "--metric",
                RATE,
                "--resource",
                "pods",
                "--namespace",
                "default",
            ],
        );
        let list = stack.json(&rates);
        let items = check_metric_list(&list, "v1beta2", RATE, "Pod", Some("default"));
        check_against_vm(
            &stack.vm,
            &[RateCheck {
                path: rates.clone(),
                promql,
                items,
                nominal: nominal_rates("default"),
            }],
        );
        assert_eq!(
            discovery_snapshot(&stack.adapter).expect("reading discovery"),
            before,
            "discovery after VictoriaMetrics came back"
        );
    });
}
