//! The Kubernetes metrics APIs as the `prom-adapter` end-to-end tests (`adapter`, `adapter_vm`,
//! `adapter_auth`) read them: the API paths, the exporter series the rules fixture
//! (`tests/data/adapter/rules.yaml`) is written for, wire-shape checks of the answers
//! (`APIResourceList`, `MetricValueList`, `ExternalMetricValueList`, `metav1.Status`),
//! `prom-adapter render`, Quantity readings of what a Prometheus API answers, and the
//! scaffolding of fixtures kept in statics.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::exporter::{ExportedSeries, Kind, counter, gauge};
use crate::http::HttpResponse;
use crate::prom::Sample;
use crate::promadapter::{
    Adapter, canonical_quantity, fixture, is_canonical_quantity, parse_rfc3339_seconds, run_cli,
};
use crate::util::{PATIENCE, eventually, tests_dir};

/// The custom-metrics API group.
pub const CUSTOM: &str = "/apis/custom.metrics.k8s.io";
/// Custom metrics, `v1beta2`.
pub const CUSTOM_V2: &str = "/apis/custom.metrics.k8s.io/v1beta2";
/// Custom metrics, `v1beta1`.
pub const CUSTOM_V1: &str = "/apis/custom.metrics.k8s.io/v1beta1";
/// The external-metrics API group.
pub const EXTERNAL: &str = "/apis/external.metrics.k8s.io";
/// External metrics, `v1beta1`.
pub const EXTERNAL_V1: &str = "/apis/external.metrics.k8s.io/v1beta1";

/// The metric the rate rule makes of `http_requests_total`.
pub const RATE: &str = "http_requests_per_second";

/// The external metrics the rules must produce from [`exported_series`]: exactly these.
pub const EXTERNAL_METRICS: &[&str] = &["queue_depth"];

/// The gauge `namespace_load` of namespace default (v1beta2), which reads `"500m"`.
pub const NAMESPACE_LOAD: &str =
    "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/metrics/namespace_load";
/// The external `queue_depth` of queue orders, which reads `"42"`.
pub const QUEUE_ORDERS: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/queue_depth?labelSelector=queue%3Dorders";

// ------------------------------------------------------------------------------------------
// The exporter's series and the rules

/// The series the adapter tests' exporter serves: request counters
/// `http_requests_total{namespace,pod,method}` for web-0..2 in `default` and api-0 in `other`,
/// growing at fixed rates; gauges `queue_depth{queue="orders"} 42`, `{queue="payments"} 7`,
/// `namespace_load{namespace="default"} 0.5`, and for pod web-0 `app_cpu_cores 24.233138021`,
/// `app_memory_kilobytes 2000` and `app_broken_ratio NaN`.
pub fn exported_series() -> Vec<ExportedSeries> {
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
/// series when given): the sum of the rates of its counters among `series`.
pub fn nominal_rates(
    series: &[ExportedSeries],
    namespace: &str,
    method: Option<&str>,
) -> BTreeMap<String, f64> {
    let mut rates = BTreeMap::new();
    for series in series {
        let Kind::Counter { per_second } = series.kind else {
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
pub fn rules() -> PathBuf {
    fixture("rules.yaml")
}

/// `prom-adapter render --config rules.yaml --prometheus-url <prometheus_url> <args…>`: the
/// PromQL, which must be one line. (The adapter may ask the Prometheus API for the series
/// behind the metric, as discovery does.)
///
/// # Panics
/// When `render` fails or prints other than one line.
pub fn render(prometheus_url: &str, args: &[&str]) -> String {
    let rules = rules();
    let rules = rules.to_string_lossy();
    let mut all = vec![
        "render",
        "--config",
        &rules,
        "--prometheus-url",
        prometheus_url,
    ];
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

/// [`render`] of `metric` for the pods of `namespace`
/// (`--metric <metric> --resource pods --namespace <namespace>`), then `extra` arguments
/// (`--name`, `--selector`, …).
pub fn render_pods(prometheus_url: &str, metric: &str, namespace: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "--metric",
        metric,
        "--resource",
        "pods",
        "--namespace",
        namespace,
    ];
    args.extend_from_slice(extra);
    render(prometheus_url, &args)
}

/// What a Prometheus API (`source`, for messages) answered for `promql` (`answer`), as the
/// canonical Quantity string of the sample with `label` = `name` (for gauges, whose value does
/// not move).
///
/// # Panics
/// When the query failed, no sample has that label, or its value has no Quantity.
pub fn answered_quantity(
    source: &str,
    promql: &str,
    answer: Result<Vec<Sample>>,
    label: &str,
    name: &str,
) -> String {
    let samples = answer.unwrap_or_else(|e| panic!("asking {source}: {e:#}"));
    let sample = samples
        .iter()
        .find(|s| s.labels.get(label).map(String::as_str) == Some(name))
        .unwrap_or_else(|| panic!("{source} has no {label}={name:?} for {promql}: {samples:?}"));
    canonical_quantity(&format!("{}", sample.value))
        .unwrap_or_else(|e| panic!("{source} answered {promql} with {}: {e:#}", sample.value))
}

// ------------------------------------------------------------------------------------------
// Fixtures kept in statics, time

/// The fixture in `cell`, started with `start` by the first test that needs it. When `start`
/// panics, the panic's message is kept, and this and every later call panics saying `what`
/// did not start (the first test that tried printed the logs).
pub fn shared_fixture<T>(
    cell: &'static OnceLock<Result<T, String>>,
    what: &str,
    start: impl FnOnce() -> T,
) -> &'static T {
    let shared = cell.get_or_init(|| {
        catch_unwind(AssertUnwindSafe(start)).map_err(|panic| panic_message(panic.as_ref()))
    });
    match shared {
        Ok(shared) => shared,
        Err(message) => {
            panic!("{what} did not start (the first test that tried printed the logs): {message}")
        }
    }
}

/// The message of a caught panic.
pub fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// The directory of a log file (what a [`crate::promadapter::Leash`] must remove).
pub fn log_dir(log: PathBuf) -> PathBuf {
    log.parent().map(PathBuf::from).unwrap_or(log)
}

/// The wall clock in Unix seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Blocks until the wall clock reads at least `unix` (a point in time the test needs to be
/// past, not a readiness wait).
pub fn wait_for_clock(unix: f64) {
    loop {
        let now = unix_now();
        if now >= unix {
            return;
        }
        thread::sleep(Duration::from_secs_f64((unix - now).min(0.5)));
    }
}

/// Polls `f` for `window`: it must pass every time (the opposite of `eventually`).
///
/// # Panics
/// At the first check that fails, with `what` and its error.
pub fn consistently(what: &str, window: Duration, mut f: impl FnMut() -> Result<()>) {
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

// ------------------------------------------------------------------------------------------
// Reading answers

/// `kubectl get --raw <path>` through `adapter`'s kubectl, as JSON.
///
/// # Panics
/// When kubectl fails or prints no JSON (the message has its output).
pub fn expect_json(adapter: &Adapter, path: &str) -> Value {
    adapter
        .get_json(path)
        .unwrap_or_else(|e| panic!("GET {path}: expected a JSON answer, got: {e:#}"))
}

/// The keys of a JSON object (empty for anything else).
pub fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

/// Panics unless `v` is an object with exactly `expected` keys.
pub fn assert_keys(v: &Value, expected: &[&str], what: &str) {
    let want: BTreeSet<&str> = expected.iter().copied().collect();
    assert_eq!(
        keys(v),
        want,
        "{what}: expected exactly the keys {want:?}, got {v}"
    );
}

/// The `name`s of an `APIResourceList`'s resources.
pub fn resource_names(list: &Value) -> Result<BTreeSet<String>> {
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

/// Waits until `adapter`'s discovery lists every resource of `custom_resources` (v1beta2) and
/// [`EXTERNAL_METRICS`], and returns the two `APIResourceList`s.
pub fn wait_discovered(adapter: &Adapter, custom_resources: &[(&str, bool)]) -> (Value, Value) {
    eventually("discovery to list the rules' metrics", PATIENCE, || {
        let custom = adapter.get_json(CUSTOM_V2)?;
        let names = resource_names(&custom)?;
        let missing: Vec<&str> = custom_resources
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| !names.contains(*n))
            .collect();
        ensure!(
            missing.is_empty(),
            "{CUSTOM_V2} lacks {missing:?}; it lists {names:?}"
        );
        let external = adapter.get_json(EXTERNAL_V1)?;
        let names = resource_names(&external)?;
        ensure!(
            EXTERNAL_METRICS.iter().all(|m| names.contains(*m)),
            "{EXTERNAL_V1} lacks {EXTERNAL_METRICS:?}; it lists {names:?}"
        );
        Ok((custom, external))
    })
}

/// Checks an `APIResourceList` for `group_version`: its envelope, a non-empty list, every
/// entry's fields (`singularName: ""`, `kind`, `verbs: ["get"]`), one scope per parent
/// resource, and that each of `expected` (name, namespaced) is listed with that scope.
pub fn check_resource_list(
    list: &Value,
    group_version: &str,
    kind: &str,
    expected: &[(&str, bool)],
) {
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

/// Checks the discovery lists of the metrics APIs: both custom-metrics versions with
/// [`check_resource_list`] for `custom_resources` and listing the same metrics, the external
/// list for exactly [`EXTERNAL_METRICS`] (namespaced), and no series renamed by a rule
/// (`http_requests_total`) or external metric among the custom ones.
pub fn check_discovery(
    custom_v2: &Value,
    custom_v1: &Value,
    external: &Value,
    custom_resources: &[(&str, bool)],
) {
    check_resource_list(
        custom_v2,
        "custom.metrics.k8s.io/v1beta2",
        "MetricValueList",
        custom_resources,
    );
    check_resource_list(
        custom_v1,
        "custom.metrics.k8s.io/v1beta1",
        "MetricValueList",
        custom_resources,
    );
    let v2_names = resource_names(custom_v2).expect("checked above");
    let v1_names = resource_names(custom_v1).expect("checked above");
    assert_eq!(
        v2_names, v1_names,
        "expected v1beta1 and v1beta2 to list the same metrics"
    );
    let external_expected: Vec<(&str, bool)> =
        EXTERNAL_METRICS.iter().map(|m| (*m, true)).collect();
    check_resource_list(
        external,
        "external.metrics.k8s.io/v1beta1",
        "ExternalMetricValueList",
        &external_expected,
    );
    let external_names = resource_names(external).expect("checked above");
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
}

/// The custom v1beta2 and external discovery, one line (path, name, namespaced, kind) per
/// resource for which `keep` holds.
pub fn discovery_snapshot(
    adapter: &Adapter,
    keep: impl Fn(&Value) -> bool,
) -> Result<BTreeSet<String>> {
    let mut all = BTreeSet::new();
    for path in [CUSTOM_V2, EXTERNAL_V1] {
        let list = adapter.get_json(path)?;
        for r in list["resources"]
            .as_array()
            .with_context(|| format!("GET {path}: no resources: {list}"))?
            .iter()
            .filter(|r| keep(r))
        {
            all.insert(format!(
                "{path} {} namespaced={} kind={}",
                r["name"], r["namespaced"], r["kind"]
            ));
        }
    }
    Ok(all)
}

/// One item of a `MetricValueList`, read.
#[derive(Debug)]
pub struct Item {
    /// The described object's name.
    pub name: String,
    /// The value, a canonical Quantity string.
    pub value: String,
    /// The timestamp, Unix seconds.
    pub timestamp: i64,
}

/// Checks the envelope and every item of a custom-metrics `MetricValueList` answer in
/// `version` (`v1beta1` or `v1beta2`): exact keys, `metadata: {}`, the described object
/// (`kind`, `namespace` when given, `apiVersion: "v1"`), the metric name and `selector` echo
/// (`null` without a metric label selector), a positive window, a recent second-precision
/// UTC timestamp, and a canonical quantity.
pub fn check_metric_list(
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
pub fn item_names(items: &[Item]) -> BTreeSet<&str> {
    items.iter().map(|i| i.name.as_str()).collect()
}

/// Checks that `namespace_load` of namespace default reads `"500m"` in both custom-metrics
/// versions, one item describing the namespace; each answer passes [`check_metric_list`].
pub fn check_namespace_load(adapter: &Adapter) {
    for version in ["v1beta2", "v1beta1"] {
        let path = format!("{CUSTOM}/{version}/namespaces/default/metrics/namespace_load");
        let list = expect_json(adapter, &path);
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
}

/// Checks that `metric` of pod web-0 (namespace default) reads as the Quantity `want`: asked
/// by name in both custom-metrics versions, and for all pods (v1beta2) with web-0 the only
/// item; each answer passes [`check_metric_list`].
pub fn check_web0_quantity(adapter: &Adapter, metric: &str, want: &str) {
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
        let list = expect_json(adapter, &path);
        let items = check_metric_list(&list, version, metric, "Pod", Some("default"), &Value::Null);
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

/// Checks the envelope and every item of the `ExternalMetricValueList` answered to `GET path`
/// for `metric`, whose rule sums by `label`: exact envelope keys, `metadata: {}`, item keys
/// (and maybe a positive `window`), the metric name, a recent timestamp, and `metricLabels`
/// holding only `label`. Returns each item's value by its `label`, which must not repeat.
pub fn check_external_list(
    list: &Value,
    path: &str,
    metric: &str,
    label: &str,
) -> BTreeMap<String, String> {
    assert_keys(list, &["kind", "apiVersion", "metadata", "items"], path);
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
    let mut by_label = BTreeMap::new();
    for item in list["items"].as_array().into_iter().flatten() {
        let got = keys(item);
        let required = BTreeSet::from(["metricName", "metricLabels", "timestamp", "value"]);
        assert!(
            required.is_subset(&got) && got.iter().all(|k| required.contains(k) || *k == "window"),
            "GET {path}: expected item keys {required:?} (and maybe window); got {item}"
        );
        if let Some(window) = item.get("window") {
            assert!(
                window.as_u64().is_some_and(|w| w > 0),
                "GET {path}: expected a positive window; got {item}"
            );
        }
        assert_eq!(
            item["metricName"], metric,
            "GET {path}: expected metricName {metric}; got {item}"
        );
        let ts = item["timestamp"].as_str().unwrap_or_default();
        let ts = parse_rfc3339_seconds(ts).unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
        assert!(
            (ts as f64 - unix_now()).abs() < 300.0,
            "GET {path}: expected a timestamp near now; got {item}"
        );
        let key = item["metricLabels"][label]
            .as_str()
            .unwrap_or_else(|| panic!("GET {path}: expected a {label} label; got {item}"));
        assert_eq!(
            item["metricLabels"],
            json!({ label: key }),
            "GET {path}: expected metricLabels to be the sample's labels \
             (sum by ({label}) leaves only {label}); got {item}"
        );
        let value = item["value"].as_str().unwrap_or_default().to_owned();
        assert!(
            by_label.insert(key.to_owned(), value).is_none(),
            "GET {path}: {label} {key} twice in {list}"
        );
    }
    by_label
}

/// `pairs` as an owned map (to compare with [`check_external_list`]'s answer).
pub fn string_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// `Ok` when the adapter answers [`NAMESPACE_LOAD`] with `"500m"` and [`QUEUE_ORDERS`] with
/// `"42"` (it reads them from the Prometheus API); for `eventually`.
pub fn gauges_answered(adapter: &Adapter) -> Result<()> {
    let list = adapter.get_json(NAMESPACE_LOAD)?;
    ensure!(
        list["items"][0]["value"] == "500m",
        "GET {NAMESPACE_LOAD}: expected namespace_load \"500m\"; got {list}"
    );
    let list = adapter.get_json(QUEUE_ORDERS)?;
    ensure!(
        list["items"][0]["value"] == "42",
        "GET {QUEUE_ORDERS}: expected queue_depth \"42\"; got {list}"
    );
    Ok(())
}

/// Checks the adapter while the Prometheus API it reads (`source`, for messages, listening on
/// `port`) is down: for three relist intervals every relist fails and discovery (`snapshot`)
/// stays `before`; each of `paths` comes to answer a 503 Status whose message names
/// Prometheus or the port; and the adapter keeps running.
pub fn check_while_down(
    adapter: &Adapter,
    source: &str,
    port: &str,
    paths: &[&str],
    before: &BTreeSet<String>,
    snapshot: impl Fn() -> Result<BTreeSet<String>>,
) {
    consistently(
        &format!("discovery to stay as it was while {source} is down"),
        Duration::from_secs(3),
        || {
            let now = snapshot()?;
            ensure!(
                now == *before,
                "discovery changed while {source} is down:\nbefore: {before:#?}\nnow: {now:#?}"
            );
            Ok(())
        },
    );
    for path in paths {
        let status = eventually(
            &format!("GET {path} to answer 503 while {source} is down"),
            PATIENCE,
            || try_status(adapter, "GET", path, 503, "ServiceUnavailable"),
        );
        let message = status["message"].as_str().unwrap_or_default();
        assert!(
            message.to_lowercase().contains("prometheus") || message.contains(port),
            "GET {path}: expected the 503 message to say the query failed (name Prometheus, \
             the Prometheus API, or its address); got {status}"
        );
    }
    assert!(
        adapter.process().ensure_running().is_ok(),
        "the adapter must keep running while {source} is down"
    );
}

/// Checks that `response` (to `what`, for messages) is a `metav1.Status` failure served as
/// `application/json`: HTTP `code`, the Status keys (and maybe `details`), kind `Status`,
/// apiVersion `v1`, `metadata: {}`, status `Failure`, `reason`, `code`, and a message.
/// Returns the Status.
pub fn check_status(response: &HttpResponse, code: u16, reason: &str, what: &str) -> Result<Value> {
    let body = String::from_utf8_lossy(&response.body).into_owned();
    ensure!(
        response.status == code,
        "{what}: expected HTTP {code} ({reason}), got {} with {body}",
        response.status
    );
    let content_type = response.header("content-type").unwrap_or_default();
    ensure!(
        content_type.starts_with("application/json"),
        "{what}: expected Content-Type application/json for the {code} Status, got \
         {content_type:?} with {body}"
    );
    let status: Value = serde_json::from_str(&body)
        .with_context(|| format!("{what}: expected a Status JSON body, got {body:?}"))?;
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
        "{what}: expected a Status with keys {want_keys:?} (and maybe details), got {status}"
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
        "{what}: expected Status kind Status, apiVersion v1, metadata {{}}, status Failure, \
         reason {reason}, code {code}; got {status}"
    );
    ensure!(
        status["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: expected a message in the Status, got {status}"
    );
    Ok(status)
}

/// Checks that `method` (`GET`, or `POST` through `kubectl create --raw`) on `path` fails with
/// `code`/`reason`: kubectl reports `Error from server (<reason>)`, and the raw answer passes
/// [`check_status`]. Returns the Status; a `Result`, so it can be awaited with `eventually`.
pub fn try_status(
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
    check_status(&response, code, reason, &format!("{method} {path}"))
}

/// [`try_status`] for `GET path`, panicking when it fails.
pub fn expect_status(adapter: &Adapter, path: &str, code: u16, reason: &str) -> Value {
    try_status(adapter, "GET", path, code, reason).unwrap_or_else(|e| panic!("{e:#}"))
}
