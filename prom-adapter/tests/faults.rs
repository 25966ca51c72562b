//! The `prom-adapter` binary against a stub Prometheus that misbehaves on cue: queries held
//! until released, connections closed mid-request, answers slower than the timeout, error
//! bodies, one rule's series query failing while the others answer.
//!
//! No timing thresholds: every wait is a poll with a generous guard against hangs, and a
//! timeout is checked as behaviour (the adapter answered while the stub still held the query).

mod support;

use hyper::StatusCode;
use serde_json::Value;
use support::{Adapter, Api, Fault, QUERY, SERIES, Stub, prom_duration, sample, series};

const A_SERIES: &str = r#"{__name__=~"^a_.*",namespace!="",pod!=""}"#;
const B_SERIES: &str = r#"{__name__=~"^b_.*",namespace!="",pod!=""}"#;
const EXT_SERIES: &str = r#"{__name__="queue_depth",queue!=""}"#;

const RULES: &str = r#"rules:
- seriesQuery: '{__name__=~"^a_.*",namespace!="",pod!=""}'
  resources:
    overrides:
      namespace: {resource: "namespace"}
      pod: {resource: "pod"}
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
- seriesQuery: '{__name__=~"^b_.*",namespace!="",pod!=""}'
  resources:
    overrides:
      namespace: {resource: "namespace"}
      pod: {resource: "pod"}
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
externalRules:
- seriesQuery: '{__name__="queue_depth",queue!=""}'
  resources:
    overrides:
      namespace: {resource: "namespace"}
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (queue)'
"#;

const CUSTOM: &str = "custom.metrics.k8s.io/v1beta2";
const A_PODS: &str = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/a_metric";
const B_PODS: &str = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/b_metric";
const QUEUE: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/queue_depth";

const COALESCED: &str = r#"prom_adapter_prometheus_queries_coalesced_total{backend="default"}"#;
const PARTIAL: &str = r#"prom_adapter_discovery_runs_total{result="partial"}"#;

/// A stub with series for both custom rules and the external one; every query answers two
/// pods.
async fn prometheus() -> Stub {
    let prom = Stub::start().await;
    for (selector, name) in [(A_SERIES, "a_metric"), (B_SERIES, "b_metric")] {
        prom.set_series(
            selector,
            ["web-0", "web-1"]
                .iter()
                .map(|pod| series(name, &[("namespace", "default"), ("pod", pod)]))
                .collect(),
        );
    }
    prom.set_series(
        EXT_SERIES,
        vec![series(
            "queue_depth",
            &[("namespace", "default"), ("queue", "orders")],
        )],
    );
    prom.set_vector(vec![
        sample(&[("pod", "web-0")], 1_700_000_000.0, "1"),
        sample(&[("pod", "web-1")], 1_700_000_000.0, "2"),
    ]);
    prom
}

/// Waits until the custom discovery document lists `name`.
async fn wait_listed(adapter: &Adapter, name: &str) {
    let api = adapter.api();
    adapter
        .eventually(&format!("{name} listed"), move || async move {
            api.listed(CUSTOM).await.iter().any(|n| n == name)
        })
        .await;
}

/// Checks a 503 `Status` body and returns its message.
fn unavailable(status: StatusCode, body: &Value) -> String {
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["status"], "Failure", "{body}");
    assert_eq!(body["reason"], "ServiceUnavailable", "{body}");
    assert_eq!(body["code"], 503, "{body}");
    body["message"].as_str().unwrap().to_owned()
}

/// The (pod, value) pairs of a `MetricValueList`.
fn pod_values(body: &Value) -> Vec<(String, String)> {
    assert_eq!(body["kind"], "MetricValueList", "{body}");
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["describedObject"]["name"].as_str().unwrap().to_owned(),
                i["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn two_pods() -> Vec<(String, String)> {
    vec![("web-0".into(), "1".into()), ("web-1".into(), "2".into())]
}

async fn serves_a(api: &Api) {
    let (status, body) = api.get_json(A_PODS).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(pod_values(&body), two_pods());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identical_concurrent_requests_share_one_prometheus_query() {
    let prom = prometheus().await;
    let adapter = Adapter::start(RULES, &prom.url(), &[]).await;
    let api = adapter.api();
    wait_listed(&adapter, "pods/a_metric").await;
    assert_eq!(api.self_metric(COALESCED).await, 0.0);

    prom.set_query_fault(Fault::Hold);
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let api = api.clone();
        requests.spawn(async move { api.get(A_PODS).await });
    }
    // `/metrics` answers while the 20 requests hang on the held query.
    adapter
        .eventually("19 requests joined the one in flight", move || async move {
            api.self_metric(COALESCED).await >= 19.0
        })
        .await;
    let held = &prom;
    adapter
        .eventually("the leader's query reached the stub", move || async move {
            held.held(QUERY) == 1
        })
        .await;
    assert_eq!(prom.answered(QUERY), 0);
    prom.release();

    let mut bodies = Vec::new();
    while let Some(answer) = requests.join_next().await {
        let (status, body) = answer.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        bodies.push(body);
    }
    assert_eq!(bodies.len(), 20);
    assert!(bodies.iter().all(|b| *b == bodies[0]), "{bodies:#?}");
    let body: Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(pod_values(&body), two_pods());
    assert_eq!(
        prom.queries().len(),
        1,
        "the stub was asked {:?}",
        prom.query_counts()
    );
    assert_eq!(api.self_metric(COALESCED).await, 19.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_dying_mid_query_is_a_503_and_the_adapter_keeps_serving() {
    let prom = prometheus().await;
    let adapter = Adapter::start(RULES, &prom.url(), &[]).await;
    let api = adapter.api();
    wait_listed(&adapter, "pods/a_metric").await;

    prom.set_query_fault(Fault::Close);
    let (status, body) = api.get_json(A_PODS).await;
    let message = unavailable(status, &body);
    assert!(
        message.contains("unable to fetch metrics from Prometheus")
            && message.contains("unreachable"),
        "{message}"
    );
    // The stub got the query and hung up on it: not a refused connection.
    assert!(prom.closed(QUERY) >= 1, "{:?}", prom.seen());
    assert_eq!(prom.answered(QUERY), 0);
    let errors = r#"prom_adapter_prometheus_errors_total{backend="default",endpoint="query",kind="unreachable"}"#;
    assert!(api.self_metric(errors).await >= 1.0);

    // Prometheus is back: the failure was not cached and the adapter still serves.
    prom.set_query_fault(Fault::None);
    serves_a(api).await;
    assert_eq!(prom.answered(QUERY), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_prometheus_is_a_503_naming_the_timeout_before_the_stub_answers() {
    let prom = prometheus().await;
    let adapter = Adapter::start(RULES, &prom.url(), &["--prometheus-timeout", "1s"]).await;
    let api = adapter.api();
    wait_listed(&adapter, "pods/a_metric").await;

    // Never released: only the adapter's own timeout ends the request.
    prom.set_query_fault(Fault::Hold);
    let (status, body) = api.get_json(A_PODS).await;
    assert!(prom.held(QUERY) >= 1, "{:?}", prom.seen());
    assert_eq!(
        prom.answered(QUERY),
        0,
        "the answer came while the stub still held the query"
    );
    let message = unavailable(status, &body);
    assert!(message.contains("did not answer within"), "{message}");
    let errors = r#"prom_adapter_prometheus_errors_total{backend="default",endpoint="query",kind="timeout"}"#;
    assert!(api.self_metric(errors).await >= 1.0);

    let queries = prom.seen_at(QUERY);
    let timeout = queries[0]
        .param("timeout")
        .unwrap_or_else(|| panic!("no timeout parameter: {:?}", queries[0]));
    let timeout = prom_duration(&timeout)
        .unwrap_or_else(|| panic!("timeout={timeout:?} is not a Prometheus duration"));
    assert_eq!(timeout, std::time::Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_error_bodies_become_503_with_their_message() {
    let prom = prometheus().await;
    let adapter = Adapter::start(RULES, &prom.url(), &[]).await;
    let api = adapter.api();
    wait_listed(&adapter, "pods/a_metric").await;

    let execution = "query processing would load too many samples into memory in query execution";
    prom.set_query_fault(Fault::error(422, "execution", execution));
    for path in [A_PODS, QUEUE] {
        let (status, body) = api.get_json(path).await;
        let message = unavailable(status, &body);
        assert!(message.contains(execution), "{path}: {message}");
    }
    let unavailable_text = "TSDB not ready";
    prom.set_query_fault(Fault::error(503, "unavailable", unavailable_text));
    let (status, body) = api.get_json(B_PODS).await;
    let message = unavailable(status, &body);
    assert!(message.contains(unavailable_text), "{message}");
    // Each request asked the stub: errors are not cached either.
    assert_eq!(prom.answered(QUERY), 3);

    prom.set_query_fault(Fault::None);
    let (status, body) = api.get_json(QUEUE).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["kind"], "ExternalMetricValueList", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_series_query_keeps_the_other_rules_and_the_last_good_findings() {
    let prom = prometheus().await;
    prom.set_series_fault(
        A_SERIES,
        Fault::error(503, "unavailable", "rule a's shard is down"),
    );
    let adapter = Adapter::start(RULES, &prom.url(), &["--metrics-relist-interval", "1s"]).await;
    let api = adapter.api();

    // Rule B's metrics are listed and served although rule A's series query fails.
    wait_listed(&adapter, "pods/b_metric").await;
    let listed = api.listed(CUSTOM).await;
    assert_eq!(listed, ["namespaces/b_metric", "pods/b_metric"]);
    let (status, body) = api.get_json(B_PODS).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(pod_values(&body), two_pods());
    assert!(api.self_metric(PARTIAL).await >= 1.0);
    assert!(prom.series_calls(A_SERIES) >= 1);

    // Rule A answers again: a relist of both lists its metrics.
    prom.set_series_fault(A_SERIES, Fault::None);
    wait_listed(&adapter, "pods/a_metric").await;
    serves_a(api).await;

    // Rule A fails again, this time by a connection closed mid-request: its last good
    // findings stay listed and served.
    prom.set_series_fault(A_SERIES, Fault::Close);
    let before = api.self_metric(PARTIAL).await;
    adapter
        .eventually("a relist with rule A failing", move || async move {
            api.self_metric(PARTIAL).await > before
        })
        .await;
    assert!(prom.closed(SERIES) >= 1, "{:?}", prom.seen_at(SERIES));
    assert_eq!(
        api.listed(CUSTOM).await,
        [
            "namespaces/a_metric",
            "namespaces/b_metric",
            "pods/a_metric",
            "pods/b_metric"
        ]
    );
    serves_a(api).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_prometheus_sheds_load_past_the_queue_with_retry_after() {
    let prom = prometheus().await;
    let adapter = Adapter::start(
        RULES,
        &prom.url(),
        &["--max-concurrent-queries", "1", "--max-queued-queries", "2"],
    )
    .await;
    let api = adapter.api();
    wait_listed(&adapter, "pods/a_metric").await;
    wait_listed(&adapter, "pods/b_metric").await;

    // Three different queries (nothing to coalesce): one runs and is held, two wait.
    prom.set_query_fault(Fault::Hold);
    let mut requests = tokio::task::JoinSet::new();
    for path in [A_PODS, B_PODS, QUEUE] {
        let api = api.clone();
        requests.spawn(async move { api.get(path).await });
    }
    let waiting = r#"prom_adapter_prometheus_queries_waiting{backend="default"}"#;
    let held = &prom;
    adapter
        .eventually("one query held and two waiting", move || async move {
            held.held(QUERY) == 1 && api.self_metric(waiting).await == 2.0
        })
        .await;

    // A fourth is refused at once, without reaching Prometheus, and says when to retry.
    let named = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/web-0/a_metric";
    let (status, retry_after, body) = api.get_retry_after(named).await;
    let message = unavailable(status, &body);
    assert_eq!(retry_after.as_deref(), Some("1"), "{body}");
    assert_eq!(body["details"]["retryAfterSeconds"], 1, "{body}");
    assert!(
        message.contains("1 queries to this backend are running and 2 waiting"),
        "{message}"
    );
    let refused = r#"prom_adapter_prometheus_queries_refused_total{backend="default"}"#;
    assert_eq!(api.self_metric(refused).await, 1.0);
    assert_eq!(
        prom.seen_at(QUERY).len(),
        1,
        "only the running query reached the stub"
    );

    // The held one answers; the waiting ones run in turn and answer too.
    prom.release();
    while let Some(answer) = requests.join_next().await {
        let (status, body) = answer.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(prom.answered(QUERY), 3);
    assert_eq!(api.self_metric(waiting).await, 0.0);
    // A refusal is not the backend's failure.
    let up = r#"prom_adapter_backend_up{backend="default"}"#;
    assert_eq!(api.self_metric(up).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_are_refused_over_http1_and_http2() {
    let prom = prometheus().await;
    let adapter = Adapter::start(RULES, &prom.url(), &[]).await;
    let api = adapter.api();
    // Larger than hyper's HTTP/2 default (16 KiB), within the 64 KiB both versions allow.
    let small = "x".repeat(30 * 1024);
    let huge = "x".repeat(100 * 1024);
    for http2 in [false, true] {
        let ok = api
            .get_with_header("/healthz", ("x-padding", &small), http2)
            .await;
        assert_eq!(ok, Ok(StatusCode::OK), "http2={http2}");
        // HTTP/1: 431 from the 64 KiB head limit; HTTP/2: the 64 KiB header list limit
        // refuses it (a 431 or a reset stream, as h2 decides). Either way it is not served.
        let refused = api
            .get_with_header("/healthz", ("x-padding", &huge), http2)
            .await;
        assert!(
            matches!(
                refused,
                Ok(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE) | Err(_)
            ),
            "http2={http2}: {refused:?}"
        );
    }
    // And the adapter still serves.
    serves_a(api).await;
}
