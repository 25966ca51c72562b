//! `prom-adapter` with several backends and with an external metrics upstream, end to end.
//!
//! - Several backends: a real Prometheus and a real VictoriaMetrics, each scraping its own
//!   in-process exporter with metrics the other doesn't have, one adapter with
//!   `[[adapter.backends]]` and rules on each. `kubectl get --raw` reads both; with
//!   VictoriaMetrics stopped its metrics answer 503 while Prometheus' are still served and
//!   discovery still lists both; restarted, its metrics come back.
//! - Forwarding: a second adapter serves external metrics the first has no rule for; the
//!   first relays requests for them (same path and query), merges its discovery list (its own
//!   rule wins a name both serve), passes the upstream's error `Status` (a 503 naming the
//!   upstream's backend) through as it is, and answers 503 naming the upstream once it is
//!   gone.
//!
//! Each test owns its processes (nothing is shared), so they are dropped with the test.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use pipeline_tests::exporter::gauge;
use pipeline_tests::metrics_api::{CUSTOM_V2, EXTERNAL_V1, expect_status, resource_names};
use pipeline_tests::victoria::VictoriaMetrics;
use pipeline_tests::{Adapter, Exporter, PATIENCE, Prometheus, eventually};
use serde_json::Value;

const PROM_POD: &str =
    "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/web-0/prom_load";
const VM_POD: &str = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/web-0/vm_load";
const PROM_QUEUE: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/prom_queue?labelSelector=queue%3Dorders";
const VM_QUEUE: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/vm_queue?labelSelector=queue%3Dorders";

/// Rules on two backends: the ones without `backend` go to the first (`prom`).
const TWO_BACKENDS: &str = r#"version = 1
[adapter]
[[adapter.backends]]
name = "prom"
url = "PROM_URL"
[[adapter.backends]]
name = "vm"
url = "VM_URL"
verb = "POST"

[[adapter.rules]]
series_query = '{__name__="prom_load",namespace!="",pod!=""}'
resources = { overrides = { namespace = { resource = "namespace" }, pod = { resource = "pod" } } }
metrics_query = 'max(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'

[[adapter.rules]]
series_query = '{__name__="vm_load",namespace!="",pod!=""}'
resources = { overrides = { namespace = { resource = "namespace" }, pod = { resource = "pod" } } }
metrics_query = 'max(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
backend = "vm"

[[adapter.external_rules]]
series_query = '{__name__="prom_queue",queue!=""}'
metrics_query = 'sum(<<.Series>>{<<.LabelMatchers>>}) by (queue)'

[[adapter.external_rules]]
series_query = '{__name__="vm_queue",queue!=""}'
metrics_query = 'sum(<<.Series>>{<<.LabelMatchers>>}) by (queue)'
backend = "vm"
"#;

/// The value of the one item of a metric value list.
fn single_value(list: &Value) -> Result<String> {
    let items = list["items"]
        .as_array()
        .with_context(|| format!("no items in {list}"))?;
    ensure!(items.len() == 1, "expected one item, got {list}");
    items[0]["value"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no value in {list}"))
}

/// Waits until `path` answers one item with `value`.
fn wait_value(adapter: &Adapter, path: &str, value: &str) {
    eventually(&format!("GET {path} to answer {value}"), PATIENCE, || {
        let got = single_value(&adapter.get_json(path)?)?;
        ensure!(got == value, "GET {path}: {got}, expected {value}");
        Ok(())
    });
}

/// Every name the custom (v1beta2) and external discovery documents list.
fn listed(adapter: &Adapter) -> Result<BTreeSet<String>> {
    let mut names = resource_names(&adapter.get_json(CUSTOM_V2)?)?;
    names.extend(resource_names(&adapter.get_json(EXTERNAL_V1)?)?);
    Ok(names)
}

/// The value of one self-metric series (`name{labels}`), if the page has it.
fn self_metric(adapter: &Adapter, series: &str) -> Result<Option<f64>> {
    let page = adapter.request("GET", "/metrics", &[])?;
    ensure!(page.status == 200, "/metrics answered {}", page.status);
    let text = String::from_utf8_lossy(&page.body).into_owned();
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok()))
}

/// The sum of every series of `metric` whose labels start with `labels_prefix` (e.g.
/// `backend="vm"`), 0 when there is none.
fn self_metric_sum(adapter: &Adapter, metric: &str, labels_prefix: &str) -> Result<f64> {
    let page = adapter.request("GET", "/metrics", &[])?;
    ensure!(page.status == 200, "/metrics answered {}", page.status);
    let text = String::from_utf8_lossy(&page.body).into_owned();
    let prefix = format!("{metric}{{{labels_prefix}");
    Ok(text
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum())
}

/// An answer without its evaluation times, which differ between two reads.
fn without_timestamps(mut answer: serde_json::Value) -> serde_json::Value {
    if let Some(items) = answer["items"].as_array_mut() {
        for item in items {
            if let Some(item) = item.as_object_mut() {
                item.remove("timestamp");
            }
        }
    }
    answer
}

#[test]
fn two_backends_serve_their_own_metrics_and_fail_alone() {
    let pod = [("namespace", "default"), ("pod", "web-0")];
    let queue = [("queue", "orders")];
    let prom_exporter = Exporter::start(vec![
        gauge("prom_load", &pod, 3.0),
        gauge("prom_queue", &queue, 5.0),
    ]);
    let vm_exporter = Exporter::start(vec![
        gauge("vm_load", &pod, 7.0),
        gauge("vm_queue", &queue, 11.0),
    ]);
    let prom = Prometheus::start_job("adapter-backends-prom", &[prom_exporter.addr()]);
    let mut vm = VictoriaMetrics::start_job("adapter-backends-vm", &[vm_exporter.addr()]);
    prom.wait_targets_up(1);
    vm.wait_targets_up(1);
    eventually("both backends to hold their series", PATIENCE, || {
        ensure!(prom.query("prom_load")?.len() == 1, "no prom_load yet");
        vm.force_flush()?;
        ensure!(vm.query("vm_load")?.len() == 1, "no vm_load yet");
        Ok(())
    });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.toml");
    std::fs::write(
        &config,
        TWO_BACKENDS
            .replace("PROM_URL", &prom.url())
            .replace("VM_URL", &vm.url()),
    )
    .unwrap();
    let adapter = Adapter::start_with_backends(&config, &[]);

    let all: BTreeSet<String> = [
        "namespaces/prom_load",
        "namespaces/vm_load",
        "pods/prom_load",
        "pods/vm_load",
        "prom_queue",
        "vm_queue",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    eventually("discovery to list both backends' metrics", PATIENCE, || {
        let names = listed(&adapter)?;
        ensure!(names == all, "listed {names:?}");
        Ok(())
    });
    wait_value(&adapter, PROM_POD, "3");
    wait_value(&adapter, VM_POD, "7");
    wait_value(&adapter, PROM_QUEUE, "5");
    wait_value(&adapter, VM_QUEUE, "11");
    for backend in ["prom", "vm"] {
        let series = format!("prom_adapter_backend_up{{backend=\"{backend}\"}}");
        assert_eq!(
            self_metric(&adapter, &series).unwrap(),
            Some(1.0),
            "{series}"
        );
    }

    vm.stop();
    for path in [VM_POD, VM_QUEUE] {
        let status = eventually(
            &format!("GET {path} to answer 503 while VictoriaMetrics is down"),
            PATIENCE,
            || {
                let response = adapter.request("GET", path, &[])?;
                let body: Value = serde_json::from_slice(&response.body)?;
                ensure!(response.status == 503, "{}: {body}", response.status);
                Ok(body)
            },
        );
        assert_eq!(status["reason"], "ServiceUnavailable", "{status}");
        let message = status["message"].as_str().unwrap_or_default();
        assert!(message.contains("backend `vm`"), "{status}");
    }
    expect_status(&adapter, VM_POD, 503, "ServiceUnavailable");
    // Prometheus' metrics don't care, and discovery (relisting every second) keeps both.
    wait_value(&adapter, PROM_POD, "3");
    wait_value(&adapter, PROM_QUEUE, "5");
    eventually("the vm backend to count as down", PATIENCE, || {
        let up = self_metric(&adapter, "prom_adapter_backend_up{backend=\"vm\"}")?;
        ensure!(up == Some(0.0), "up is {up:?}");
        Ok(())
    });
    assert_eq!(
        self_metric(&adapter, "prom_adapter_backend_up{backend=\"prom\"}").unwrap(),
        Some(1.0)
    );
    // Whichever call failed first (a series or a query call; refused or timed out), it is
    // the stopped backend's.
    let errors = self_metric_sum(
        &adapter,
        "prom_adapter_prometheus_errors_total",
        "backend=\"vm\"",
    )
    .unwrap();
    assert!(errors >= 1.0, "{errors}");
    assert_eq!(listed(&adapter).unwrap(), all);

    vm.restart();
    wait_value(&adapter, VM_POD, "7");
    wait_value(&adapter, VM_QUEUE, "11");
    eventually("the vm backend to count as up again", PATIENCE, || {
        let up = self_metric(&adapter, "prom_adapter_backend_up{backend=\"vm\"}")?;
        ensure!(up == Some(1.0), "up is {up:?}");
        Ok(())
    });
    assert_eq!(listed(&adapter).unwrap(), all);
}

/// The upstream: a plain adapter on a backend of its own name, `keda-prom`, with external
/// rules the front adapter lacks (`keda_queue`; `keda_broken`, whose metricsQuery Prometheus
/// can't parse, so the upstream answers its own 503 naming its backend) and one the front
/// serves too (`shared_queue`, ten times the front's value, so whose answer it is shows).
const UPSTREAM: &str = r#"version = 1
[adapter]
[[adapter.backends]]
name = "keda-prom"
url = "PROM_URL"
[[adapter.external_rules]]
series_query = '{__name__="keda_queue",queue!=""}'
metrics_query = 'sum(<<.Series>>{<<.LabelMatchers>>}) by (queue)'
[[adapter.external_rules]]
series_query = '{__name__="keda_broken",queue!=""}'
metrics_query = 'sum(<<.Series>>{<<.LabelMatchers>>}) by (queue) +'
[[adapter.external_rules]]
series_query = '{__name__="shared_queue",queue!=""}'
metrics_query = '10 * sum(<<.Series>>{<<.LabelMatchers>>}) by (queue)'
"#;

/// The front adapter: its own external rules, and the upstream for the rest.
const FRONT: &str = r#"version = 1
[adapter]
prometheus_url = "PROM_URL"
[[adapter.external_rules]]
series_query = '{__name__="front_queue",queue!=""}'
metrics_query = 'sum(<<.Series>>{<<.LabelMatchers>>}) by (queue)'
[[adapter.external_rules]]
series_query = '{__name__="shared_queue",queue!=""}'
metrics_query = 'sum(<<.Series>>{<<.LabelMatchers>>}) by (queue)'
[adapter.external_upstream]
url = "UPSTREAM_URL"
ca_file = "UPSTREAM_CA"
timeout = "10s"
"#;

const THEIRS: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/keda_queue?labelSelector=queue%3Dorders";
const BROKEN: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/keda_broken?labelSelector=queue%3Dorders";
const SHARED: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/shared_queue?labelSelector=queue%3Dorders";
const OURS: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/front_queue?labelSelector=queue%3Dorders";
const NOBODY: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/nobody_has_it";

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn external_metrics_are_forwarded_to_another_adapter() {
    let queue = [("queue", "orders")];
    let exporter = Exporter::start(vec![
        gauge("front_queue", &queue, 5.0),
        gauge("keda_queue", &queue, 9.0),
        gauge("keda_broken", &queue, 2.0),
        gauge("shared_queue", &queue, 4.0),
    ]);
    let prom = Prometheus::start_job("adapter-forwarding", &[exporter.addr()]);
    prom.wait_targets_up(1);
    eventually("Prometheus to hold every series", PATIENCE, || {
        for series in ["keda_queue", "keda_broken", "front_queue", "shared_queue"] {
            ensure!(prom.query(series)?.len() == 1, "no {series} yet");
        }
        Ok(())
    });
    let dir = tempfile::tempdir().unwrap();
    let upstream_config = write(
        dir.path(),
        "upstream.toml",
        &UPSTREAM.replace("PROM_URL", &prom.url()),
    );
    let upstream = Adapter::start_with_backends(&upstream_config, &[]);
    // Its self-signed certificate, kept in its --cert-dir, is the CA the front trusts.
    let ca = upstream.dir().join("certs").join("apiserver.crt");
    let front_config = write(
        dir.path(),
        "pipeline.toml",
        &FRONT
            .replace("PROM_URL", &prom.url())
            .replace("UPSTREAM_URL", &format!("https://{}", upstream.addr()))
            .replace("UPSTREAM_CA", &ca.to_string_lossy()),
    );
    let front = Adapter::start_with_backends(&front_config, &[]);

    eventually(
        "the front's discovery to merge the upstream's",
        PATIENCE,
        || {
            let list = front.get_json(EXTERNAL_V1)?;
            let names = resource_names(&list)?;
            let want: BTreeSet<String> =
                ["front_queue", "keda_broken", "keda_queue", "shared_queue"]
                    .map(String::from)
                    .into();
            ensure!(names == want, "listed {names:?}");
            // The clash is listed once.
            let shared = list["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["name"] == "shared_queue")
                .count();
            ensure!(shared == 1, "shared_queue listed {shared} times: {list}");
            Ok(())
        },
    );
    wait_value(&front, OURS, "5");
    wait_value(&front, THEIRS, "9");
    let relayed = front.get_json(THEIRS).unwrap();
    assert_eq!(
        without_timestamps(relayed.clone()),
        without_timestamps(upstream.get_json(THEIRS).unwrap())
    );
    assert_eq!(relayed["items"][0]["metricName"], "keda_queue");

    // A name both serve: ours wins (4), though the upstream lists it and answers 40.
    wait_value(&upstream, SHARED, "40");
    wait_value(&front, SHARED, "4");

    // The upstream's own error Status comes back as it is: a 503 naming the upstream's
    // backend (`keda-prom`, which the front doesn't have), not one the front makes up.
    let direct = expect_status(&upstream, BROKEN, 503, "ServiceUnavailable");
    let direct_message = direct["message"].as_str().unwrap_or_default().to_owned();
    assert!(
        direct_message.contains("backend `keda-prom`"),
        "the upstream's own answer: {direct}"
    );
    let status = expect_status(&front, BROKEN, 503, "ServiceUnavailable");
    assert_eq!(status, direct, "the front must relay the upstream's Status");
    // A metric nobody has: 404 (both adapters would word it the same).
    expect_status(&front, NOBODY, 404, "NotFound");

    let upstream_url = format!("https://{}", upstream.addr());
    drop(upstream);
    for path in [THEIRS, BROKEN] {
        let status = expect_status(&front, path, 503, "ServiceUnavailable");
        let message = status["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(&format!("external metrics upstream {upstream_url}")),
            "GET {path}: {status}"
        );
        assert_ne!(message, direct_message, "{status}");
    }
    // Ours don't need the upstream.
    wait_value(&front, OURS, "5");
    wait_value(&front, SHARED, "4");
}
