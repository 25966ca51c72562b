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

use anyhow::{Result, ensure};
use pipeline_tests::exporter::{ExportedSeries, Kind, gauge};
use pipeline_tests::http::url_encode;
use pipeline_tests::metrics_api::{
    CUSTOM, CUSTOM_V1, CUSTOM_V2, EXTERNAL_V1, Item, NAMESPACE_LOAD, QUEUE_ORDERS, RATE,
    answered_quantity, check_discovery, check_external_list, check_metric_list,
    check_namespace_load, check_web0_quantity, check_while_down, discovery_snapshot, expect_json,
    expect_status, gauges_answered, log_dir, nominal_rates, render, render_pods, rules,
    shared_fixture, string_map, wait_discovered, wait_for_clock,
};
use pipeline_tests::promadapter::{Leash, canonical_quantity, quantity_value};
use pipeline_tests::victoria::VictoriaMetrics;
use pipeline_tests::{Adapter, Exporter, PATIENCE, eventually};
use serde_json::Value;

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

/// The series the exporter serves: those of `tests/adapter.rs`
/// ([`pipeline_tests::metrics_api::exported_series`]), plus `app_overflow_ratio` (+Inf) for
/// web-0.
fn exported_series() -> Vec<ExportedSeries> {
    let mut series = pipeline_tests::metrics_api::exported_series();
    series.push(gauge(
        "app_overflow_ratio",
        &[("namespace", "default"), ("pod", "web-0")],
        f64::INFINITY,
    ));
    series
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
        expect_json(&self.adapter, path)
    }

    /// Waits until discovery lists every resource of [`CUSTOM_RESOURCES`] (v1beta2) and the
    /// external metrics, and returns the two `APIResourceList`s.
    fn wait_discovered(&self) -> (Value, Value) {
        wait_discovered(&self.adapter, CUSTOM_RESOURCES)
    }

    /// Leashes the running VictoriaMetrics and adapter processes and the directories the
    /// static never removes (a restarted VictoriaMetrics gets a new leash: new pid, new logs).
    fn leash(&self, vm_only: bool) -> Leash {
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
    shared_fixture(&SHARED, "the shared VictoriaMetrics stack", || {
        let stack = Stack::start();
        let leash = stack.leash(false);
        Shared {
            stack: RwLock::new(stack),
            leashes: std::sync::Mutex::new(vec![leash]),
        }
    })
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

// ------------------------------------------------------------------------------------------
// Reading answers (the wire-shape checks are in `pipeline_tests::metrics_api`)

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
    answered_quantity("VictoriaMetrics", promql, vm.query(promql), label, name)
}

// ------------------------------------------------------------------------------------------
// Discovery

#[test]
fn vm_discovery_lists_the_metrics_of_the_prometheus_tests() {
    with_shared(|s| {
        let (custom_v2, external) = s.wait_discovered();
        let custom_v1 = s.json(CUSTOM_V1);
        check_discovery(&custom_v2, &custom_v1, &external, CUSTOM_RESOURCES);
    });
}

// ------------------------------------------------------------------------------------------
// Custom metrics

#[test]
fn vm_pods_rate_matches_victoria_metrics_in_both_versions() {
    with_shared(|s| {
        s.wait_discovered();
        let url = s.vm.url();
        let all_default = render_pods(&url, RATE, "default", &[]);
        assert_eq!(
            all_default, r#"sum(rate(http_requests_total{namespace="default"}[2m])) by (pod)"#,
            "render against VictoriaMetrics"
        );
        let web1 = render_pods(&url, RATE, "default", &["--name", "web-1"]);
        let all_other = render_pods(&url, RATE, "other", &[]);
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
            let items =
                check_metric_list(&list, version, RATE, "Pod", Some(namespace), &Value::Null);
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
                nominal: nominal_rates(&exported_series(), namespace, None),
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
        check_namespace_load(&s.adapter);
        let promql = render(
            &s.vm.url(),
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
            let promql = render_pods(&s.vm.url(), metric, "default", &["--name", "web-0"]);
            assert_eq!(
                vm_quantity(&s.vm, &promql, "pod", "web-0"),
                want,
                "VictoriaMetrics' answer to {promql}, through the test's Quantity conversion"
            );
            check_web0_quantity(&s.adapter, metric, want);
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
            let by_queue = check_external_list(&list, &path, "queue_depth", "queue");
            (path, list, by_queue)
        };
        let (path, list, got) = read("queue=orders");
        assert_eq!(
            got,
            string_map(&[("orders", "42")]),
            "GET {path}: expected one item, orders = \"42\"; got {list}"
        );
        let promql = render(
            &s.vm.url(),
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
            string_map(&[("orders", "42"), ("payments", "7")]),
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
fn discovery_without_broken_ratio(adapter: &Adapter) -> Result<BTreeSet<String>> {
    discovery_snapshot(adapter, |r| {
        !r["name"]
            .as_str()
            .is_some_and(|n| n.ends_with("/app_broken_ratio"))
    })
}

#[test]
fn vm_down_gives_503_keeps_discovery_and_recovers() {
    with_shared_exclusively(|stack| {
        stack.wait_discovered();
        let rates = format!("{CUSTOM_V2}/namespaces/default/pods/*/{RATE}");
        let healthy = |stack: &Stack| -> Result<()> {
            gauges_answered(&stack.adapter)?;
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
        let before = discovery_without_broken_ratio(&stack.adapter).expect("reading discovery");

        let port = stack.vm.addr().port().to_string();
        stack.vm.stop();
        check_while_down(
            &stack.adapter,
            "VictoriaMetrics",
            &port,
            &[NAMESPACE_LOAD, QUEUE_ORDERS, &rates],
            &before,
            || discovery_without_broken_ratio(&stack.adapter),
        );

        stack.vm.restart();
        eventually(
            "the adapter to answer 200 again after VictoriaMetrics restarted",
            PATIENCE,
            || healthy(stack),
        );
        let promql = render_pods(&stack.vm.url(), RATE, "default", &[]);
        let list = stack.json(&rates);
        let items = check_metric_list(&list, "v1beta2", RATE, "Pod", Some("default"), &Value::Null);
        check_against_vm(
            &stack.vm,
            &[RateCheck {
                path: rates.clone(),
                promql,
                items,
                nominal: nominal_rates(&exported_series(), "default", None),
            }],
        );
        assert_eq!(
            discovery_without_broken_ratio(&stack.adapter).expect("reading discovery"),
            before,
            "discovery after VictoriaMetrics came back"
        );
    });
}
