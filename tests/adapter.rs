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
use std::time::{Duration, SystemTime};

use anyhow::{Result, ensure};
use pipeline_tests::exposition;
use pipeline_tests::http::url_encode;
use pipeline_tests::metrics_api::{
    CUSTOM, CUSTOM_V1, CUSTOM_V2, EXTERNAL, EXTERNAL_V1, Item, NAMESPACE_LOAD, QUEUE_ORDERS, RATE,
    answered_quantity, check_discovery, check_external_list, check_metric_list,
    check_namespace_load, check_web0_quantity, check_while_down, discovery_snapshot, expect_json,
    expect_status, exported_series, gauges_answered, item_names, log_dir, nominal_rates, render,
    render_pods, rules, shared_fixture, string_map, try_status, wait_discovered, wait_for_clock,
};
use pipeline_tests::promadapter::{Leash, fixture, quantity_value, run_cli};
use pipeline_tests::util::tests_dir;
use pipeline_tests::{Adapter, Exporter, PATIENCE, Prometheus, eventually, promtool_check_metrics};
use serde_json::{Value, json};

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
        expect_json(&self.adapter, path)
    }

    /// Waits until discovery lists every resource of [`CUSTOM_RESOURCES`] (v1beta2) and the
    /// external metrics, and returns the two `APIResourceList`s.
    fn wait_discovered(&self) -> (Value, Value) {
        wait_discovered(&self.adapter, CUSTOM_RESOURCES)
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
    let shared = shared_fixture(&SHARED, "the shared adapter stack", || {
        let stack = Stack::start("adapter-e2e");
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
    });
    let stack = &shared.stack;
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| test(stack))) {
        eprintln!("{}", stack.adapter.log_tail(80));
        eprintln!("{}", stack.prom.process().log_tail(20));
        resume_unwind(panic);
    }
}

// ------------------------------------------------------------------------------------------
// Reading answers (the wire-shape checks are in `pipeline_tests::metrics_api`)

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
    answered_quantity("Prometheus", promql, prom.query(promql), label, name)
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

        let custom_v1 = s.json(CUSTOM_V1);
        check_discovery(&custom_v2, &custom_v1, &external, CUSTOM_RESOURCES);
    });
}

// ------------------------------------------------------------------------------------------
// Custom metrics

#[test]
fn api_pods_rate_matches_prometheus_in_both_versions() {
    with_shared(|s| {
        s.wait_discovered();
        let promql = render_pods(&s.prom.url(), RATE, "default", &[]);
        let default_rates = nominal_rates(&exported_series(), "default", None);
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
        let promql = render_pods(&s.prom.url(), RATE, "default", &["--selector", "pod=web-1"]);
        check_against_prometheus(&s.prom, &promql, "pod", &items, &default_rates);

        let path = format!("{CUSTOM_V2}/namespaces/other/pods/*/{RATE}");
        let list = s.json(&path);
        let items = check_metric_list(&list, "v1beta2", RATE, "Pod", Some("other"), &Value::Null);
        assert_eq!(
            item_names(&items),
            BTreeSet::from(["api-0"]),
            "GET {path}: expected only the pod of namespace other; got {list}"
        );
        let promql = render_pods(&s.prom.url(), RATE, "other", &[]);
        check_against_prometheus(
            &s.prom,
            &promql,
            "pod",
            &items,
            &nominal_rates(&exported_series(), "other", None),
        );
    });
}

#[test]
fn api_metric_label_selector_filters_series_and_is_echoed() {
    with_shared(|s| {
        s.wait_discovered();
        let promql = render_pods(
            &s.prom.url(),
            RATE,
            "default",
            &["--metric-selector", "method=GET"],
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
                &nominal_rates(&exported_series(), "default", Some("GET")),
            );
        }
    });
}

#[test]
fn api_named_pod_gets_one_item_and_a_pod_without_series_gets_404() {
    with_shared(|s| {
        s.wait_discovered();
        let promql = render_pods(&s.prom.url(), RATE, "default", &["--name", "web-1"]);
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
                &nominal_rates(&exported_series(), "default", None),
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
        check_namespace_load(&s.adapter);
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
            let promql = render_pods(&s.prom.url(), metric, "default", &["--name", "web-0"]);
            let from_prometheus = prometheus_quantity(&s.prom, &promql, "pod", "web-0");
            assert_eq!(
                from_prometheus, want,
                "Prometheus' answer to {promql}, through the test's Quantity conversion"
            );
            check_web0_quantity(&s.adapter, metric, want);
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
            let by_queue = check_external_list(&list, &path, "queue_depth", "queue");
            (path, list, by_queue)
        };
        let (path, list, got) = read(Some("queue=orders"));
        assert_eq!(
            got,
            string_map(&[("orders", "42")]),
            "GET {path}: expected one item, orders = \"42\"; got {list}"
        );
        let (path, list, got) = read(Some("queue in (orders,payments)"));
        assert_eq!(
            got,
            string_map(&[("orders", "42"), ("payments", "7")]),
            "GET {path}: expected two items, orders = \"42\" and payments = \"7\"; got {list}"
        );
        let (path, list, got) = read(None);
        assert_eq!(
            got,
            string_map(&[("orders", "42"), ("payments", "7")]),
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

#[test]
fn fault_prometheus_down_gives_503_keeps_discovery_and_recovers() {
    let mut stack = Stack::start("adapter-e2e-fault");
    stack.wait_discovered();
    eventually("the adapter to answer from Prometheus", PATIENCE, || {
        gauges_answered(&stack.adapter)
    });
    let before = discovery_snapshot(&stack.adapter, |_| true).expect("reading discovery");

    let prom_port = stack.prom.addr().port().to_string();
    stack.prom.stop();
    check_while_down(
        &stack.adapter,
        "Prometheus",
        &prom_port,
        &[NAMESPACE_LOAD, QUEUE_ORDERS],
        &before,
        || discovery_snapshot(&stack.adapter, |_| true),
    );

    stack.prom.restart();
    eventually(
        "the adapter to answer 200 again after Prometheus restarted",
        PATIENCE,
        || gauges_answered(&stack.adapter),
    );
    assert_eq!(
        discovery_snapshot(&stack.adapter, |_| true).expect("reading discovery"),
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
            assert_eq!(render(&s.prom.url(), &args), want, "render {args:?}");
        }
    });
}
