//! Named queries through the pure router ([`server::respond`]) with the in-memory backend:
//! served from the cache (a request never queries the backend), listed in discovery, stale
//! past maxAge, shadowing an external rule, scoped to a namespace; `/status` and `/explain`.

mod router;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prom_adapter::prom::PromError;
use prom_adapter::prom::fake::{FakeProm, labels, sample};
use prom_adapter::provider::Provider;
use prom_adapter::rules::from_yaml;
use prom_adapter::server::State;
use prom_adapter::status::{QueryState, Report};
use prom_adapter::telemetry::Metrics;
use router::get;

const RULES: &str = r#"
externalRules:
- seriesQuery: '{__name__="queue_depth"}'
  resources:
    overrides: {namespace: {resource: "namespace"}}
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>})'
externalQueries:
- name: queue_depth
  query: 'sum by (queue) (jobs_waiting)'
  maxAge: 1m
  refresh: 10s
- name: orders_per_second
  query: 'sum(rate(orders_total[1m]))'
  namespace: shop
"#;

const EXTERNAL: &str = "/apis/external.metrics.k8s.io/v1beta1";

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn state(prom: &FakeProm) -> State<FakeProm> {
    let set = from_yaml(RULES, Path::new("rules.yaml")).unwrap().0;
    let metrics = Arc::new(Metrics::new());
    let provider = Provider::new(
        prom.clone(),
        Arc::new(set),
        Arc::clone(&metrics),
        Duration::from_secs(60),
    )
    .with_status_info(
        &[("default".into(), "http://prometheus:9090".into())],
        Duration::from_secs(30),
    );
    router::open_state(provider, metrics)
}

/// Runs every named query once, as the background loop does when they are due.
async fn refresh_all(state: &State<FakeProm>) {
    for slot in state.provider.named().slots() {
        state.provider.refresh_named(&slot).await;
    }
}

fn queues(prom: &FakeProm, at: f64) {
    prom.set_vector(
        "sum by (queue) (jobs_waiting)",
        vec![
            sample(&[("queue", "mail")], at, "12"),
            sample(&[("queue", "pdf")], at, "0.5"),
        ],
    );
}

#[tokio::test]
async fn requests_are_answered_from_the_cache_never_from_the_backend() {
    let prom = FakeProm::new();
    let s = state(&prom);
    let (code, body) = get(&s, &format!("{EXTERNAL}/namespaces/default/queue_depth")).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("no value yet"),
        "{body}"
    );

    queues(&prom, now());
    refresh_all(&s).await;
    prom.clear_calls();
    let (code, body) = get(&s, &format!("{EXTERNAL}/namespaces/default/queue_depth")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["kind"], "ExternalMetricValueList");
    let values: Vec<(&str, &str)> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["metricLabels"]["queue"].as_str().unwrap(),
                i["value"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(values, [("mail", "12"), ("pdf", "500m")]);
    let (code, body) = get(
        &s,
        &format!("{EXTERNAL}/namespaces/default/queue_depth?labelSelector=queue%3Dpdf"),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    assert!(
        prom.query_calls().is_empty(),
        "requests must not query: {:?}",
        prom.query_calls()
    );
}

#[tokio::test]
async fn an_old_value_is_stale_not_served_and_never_zero() {
    let prom = FakeProm::new();
    let s = state(&prom);
    // The backend answers with a sample evaluated 2 minutes ago: older than maxAge (1m).
    queues(&prom, now() - 120.0);
    refresh_all(&s).await;
    let (code, body) = get(&s, &format!("{EXTERNAL}/namespaces/default/queue_depth")).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["reason"], "Stale");
    assert!(
        body["message"].as_str().unwrap().starts_with("stale: "),
        "{body}"
    );

    // Fresh again; then the backend fails: the last value stays served (it is young).
    queues(&prom, now());
    refresh_all(&s).await;
    prom.set_error(Some(PromError::Unreachable {
        reason: "connection refused".into(),
    }));
    refresh_all(&s).await;
    let (code, _) = get(&s, &format!("{EXTERNAL}/namespaces/default/queue_depth")).await;
    assert_eq!(code, 200);
    let report = s.provider.report();
    let q = report
        .queries
        .iter()
        .find(|q| q.name == "queue_depth")
        .unwrap();
    assert_eq!(q.state, QueryState::Valid);
    assert!(
        q.last_error
            .as_deref()
            .unwrap()
            .contains("connection refused")
    );
    assert_eq!((q.refreshes, q.failures), (3, 1));
}

#[tokio::test]
async fn discovery_lists_named_queries_once_and_they_shadow_external_rules() {
    let prom = FakeProm::new();
    prom.set_all_series(vec![labels(&[("__name__", "queue_depth")])]);
    let s = state(&prom);
    s.provider.relist().await;
    let (code, body) = get(&s, EXTERNAL).await;
    assert_eq!(code, 200);
    let names: Vec<&str> = body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["orders_per_second", "queue_depth"]);
    // The rule's query is never run for the shadowed name.
    queues(&prom, now());
    refresh_all(&s).await;
    prom.clear_calls();
    let (code, _) = get(&s, &format!("{EXTERNAL}/namespaces/default/queue_depth")).await;
    assert_eq!(code, 200);
    assert!(prom.query_calls().is_empty());
}

#[tokio::test]
async fn a_namespace_scoped_query_is_served_only_there() {
    let prom = FakeProm::new();
    prom.set_vector(
        "sum(rate(orders_total[1m]))",
        vec![sample(&[], now(), "3.25")],
    );
    let s = state(&prom);
    refresh_all(&s).await;
    let (code, body) = get(&s, &format!("{EXTERNAL}/namespaces/shop/orders_per_second")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["items"][0]["value"], "3250m");
    let (code, body) = get(
        &s,
        &format!("{EXTERNAL}/namespaces/other/orders_per_second"),
    )
    .await;
    assert_eq!(code, 404, "{body}");
}

#[tokio::test]
async fn status_reports_queries_rules_backends_and_last_answers() {
    let prom = FakeProm::new();
    prom.set_all_series(vec![labels(&[("__name__", "queue_depth")])]);
    let s = state(&prom);
    s.provider.relist().await;
    queues(&prom, now());
    prom.set_vector("sum(rate(orders_total[1m]))", vec![sample(&[], now(), "0")]);
    refresh_all(&s).await;
    let _ = get(&s, &format!("{EXTERNAL}/namespaces/default/queue_depth")).await;
    let _ = get(&s, &format!("{EXTERNAL}/namespaces/shop/orders_per_second")).await;
    let (code, body) = get(&s, "/status").await;
    assert_eq!(code, 200, "{body}");
    let report: Report = serde_json::from_value(body).unwrap();
    assert_eq!(report.discovery.relist_interval_seconds, 30.0);
    assert!(report.discovery.last_relist.is_some());
    assert_eq!(report.discovery.external_metrics, 2);
    let backend = &report.backends[0];
    assert_eq!(backend.url, "http://prometheus:9090");
    assert_eq!(backend.up, Some(true));
    assert!(backend.calls >= 3 && backend.last_latency_seconds.is_some());
    assert_eq!(report.rules.len(), 1);
    assert_eq!(report.rules[0].kind, "external");
    assert!(
        report.rules[0].source.starts_with("rules.yaml:3:"),
        "{:?}",
        report.rules[0]
    );
    assert!(report.rules[0].last_discovery.is_some());
    let q = &report.queries[0];
    assert_eq!(
        (q.name.as_str(), q.state),
        ("queue_depth", QueryState::Valid)
    );
    assert_eq!(q.values.len(), 2);
    assert!(q.source.contains("externalQueries[0]"), "{}", q.source);
    let _ = get(
        &s,
        &format!("{EXTERNAL}/namespaces/other/orders_per_second"),
    )
    .await;
    let served: Vec<(String, String, Option<String>, bool)> = s
        .provider
        .report()
        .metrics
        .into_iter()
        .map(|m| (m.namespace, m.metric, m.value, m.last_error.is_some()))
        .collect();
    let row = |ns: &str, metric: &str, value: Option<&str>, failed: bool| {
        (
            ns.to_owned(),
            metric.to_owned(),
            value.map(str::to_owned),
            failed,
        )
    };
    // One row per namespace: the failure in `other` doesn't hide the answer in `shop`.
    assert_eq!(
        served,
        [
            row("default", "queue_depth", Some("12"), false),
            row("other", "orders_per_second", None, true),
            row("shop", "orders_per_second", Some("0"), false),
        ]
    );
    let text = prom_adapter::status::render(&report, "https://adapter");
    assert!(
        text.contains("queue_depth") && text.contains("Valid"),
        "{text}"
    );
}

#[tokio::test]
async fn explain_shows_the_query_the_backend_answer_and_the_api_answer() {
    let prom = FakeProm::new();
    let s = state(&prom);
    queues(&prom, now());
    refresh_all(&s).await;
    let (code, body) = get(&s, "/explain?metric=queue_depth&namespace=default").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["api"], "named");
    assert_eq!(body["promql"], "sum by (queue) (jobs_waiting)");
    assert_eq!(body["backendAnswer"]["resultType"], "vector");
    assert_eq!(body["backendAnswer"]["result"][0]["value"][1], "12");
    assert_eq!(body["answer"]["items"][1]["value"], "500m");
    let (code, body) = get(&s, "/explain?metric=nothing").await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = get(&s, "/explain").await;
    assert_eq!(code, 400, "{body}");
}
