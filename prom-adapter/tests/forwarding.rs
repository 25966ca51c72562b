//! External metrics forwarded to an upstream server, through the pure router
//! ([`server::respond`]): what a rule here serves is answered here, anything else is relayed
//! with the same path and query, the discovery lists are merged (ours wins), and the
//! upstream's errors come back as `Status`. The backend and the upstream are in-memory fakes.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use prom_adapter::forward::{DISCOVERY_PATH, Forwarder, Upstream, UpstreamAnswer};
use prom_adapter::prom::PromError;
use prom_adapter::prom::fake::{FakeProm, labels, sample};
use prom_adapter::provider::Provider;
use prom_adapter::rules::from_yaml;
use prom_adapter::server::{self, Access, State};
use prom_adapter::telemetry::Metrics;
use serde_json::Value;

const RULES: &str = r#"
externalRules:
- seriesQuery: '{__name__="queue_depth"}'
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>})'
"#;

const UPSTREAM_LIST: &str = r#"{"kind":"APIResourceList","apiVersion":"v1","groupVersion":"external.metrics.k8s.io/v1beta1","resources":[
 {"name":"s0-prometheus","singularName":"","namespaced":true,"kind":"ExternalMetricValueList","verbs":["get"]},
 {"name":"queue_depth","singularName":"","namespaced":true,"kind":"ExternalMetricValueList","verbs":["get"]}]}"#;

const THEIR_VALUE: &str = r#"{"kind":"ExternalMetricValueList","apiVersion":"external.metrics.k8s.io/v1beta1","metadata":{},"items":[{"metricName":"s0-prometheus","timestamp":"2026-11-23T10:00:00Z","value":"7"}]}"#;

const NOT_FOUND: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"no such metric","reason":"NotFound","code":404}"#;

/// An upstream answering by exact path and query; anything else is a refused connection.
#[derive(Clone, Default)]
struct FakeUpstream {
    answers: Arc<Mutex<Vec<(String, u16, String)>>>,
    asked: Arc<Mutex<Vec<String>>>,
}

impl FakeUpstream {
    fn answer(&self, path_and_query: &str, status: u16, body: &str) {
        self.answers
            .lock()
            .unwrap()
            .push((path_and_query.into(), status, body.into()));
    }

    fn down(&self) {
        self.answers.lock().unwrap().clear();
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Upstream for FakeUpstream {
    fn get<'a>(
        &'a self,
        path_and_query: &'a str,
    ) -> Pin<Box<dyn Future<Output = UpstreamAnswer> + Send + 'a>> {
        self.asked.lock().unwrap().push(path_and_query.to_owned());
        let found = self
            .answers
            .lock()
            .unwrap()
            .iter()
            .find(|(p, _, _)| p == path_and_query)
            .map(|(_, s, b)| (*s, Bytes::from(b.clone())));
        Box::pin(async move {
            found.ok_or(PromError::Unreachable {
                reason: "connection refused".into(),
            })
        })
    }
}

async fn setup() -> (State<FakeProm>, FakeProm, FakeUpstream) {
    let set = from_yaml(RULES, Path::new("rules.yaml")).unwrap().0;
    let prom = FakeProm::new();
    prom.set_all_series(vec![labels(&[("__name__", "queue_depth")])]);
    prom.set_vector("sum(queue_depth{})", vec![sample(&[], 1.0, "3")]);
    let metrics = Arc::new(Metrics::new());
    let provider = Arc::new(Provider::new(
        prom.clone(),
        Arc::new(set),
        Arc::clone(&metrics),
        Duration::from_secs(60),
    ));
    provider.relist().await;
    let upstream = FakeUpstream::default();
    upstream.answer(DISCOVERY_PATH, 200, UPSTREAM_LIST);
    let forwarder = Arc::new(Forwarder::new(upstream.clone(), "https://keda:6443"));
    forwarder
        .refresh(&provider.resource_list(true))
        .await
        .unwrap();
    let state = State {
        provider,
        metrics,
        ready: AtomicBool::new(true),
        ready_check: None,
        access: Access::Open,
        forwarder: Some(forwarder),
    };
    (state, prom, upstream)
}

async fn get(state: &State<FakeProm>, path: &str, query: Option<&str>) -> (u16, Value) {
    let answer = server::respond(state, &Method::GET, path, query).await;
    assert_eq!(answer.content_type, "application/json", "{path}");
    let body = serde_json::from_slice(&answer.body).unwrap();
    (answer.status.as_u16(), body)
}

const THEIRS: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/s0-prometheus";
const OURS: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/queue_depth";

#[tokio::test]
async fn discovery_lists_ours_then_theirs_once() {
    let (state, _, _) = setup().await;
    let (status, doc) = get(&state, DISCOVERY_PATH, None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = doc["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["queue_depth", "s0-prometheus"]);
}

#[tokio::test]
async fn ours_is_served_here_and_theirs_is_relayed_with_path_and_query() {
    let (state, prom, upstream) = setup().await;
    let (status, body) = get(&state, OURS, None).await;
    assert_eq!(
        (status, body["items"][0]["value"].as_str()),
        (200, Some("3"))
    );
    assert!(!upstream.asked().iter().any(|p| p.starts_with(OURS)));
    assert_eq!(prom.queries().len(), 1);

    let query = "labelSelector=scaledobject.keda.sh%2Fname%3Dweb";
    upstream.answer(&format!("{THEIRS}?{query}"), 200, THEIR_VALUE);
    let (status, body) = get(&state, THEIRS, Some(query)).await;
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::from_str::<Value>(THEIR_VALUE).unwrap());
    assert_eq!(
        upstream.asked().last().unwrap(),
        &format!("{THEIRS}?{query}")
    );
}

#[tokio::test]
async fn upstream_errors_pass_through_as_its_status_or_a_503() {
    let (state, _, upstream) = setup().await;
    let unknown = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/nobody_has_it";
    upstream.answer(unknown, 404, NOT_FOUND);
    let (status, body) = get(&state, unknown, None).await;
    assert_eq!(status, 404);
    assert_eq!(body, serde_json::from_str::<Value>(NOT_FOUND).unwrap());

    upstream.down();
    let (status, body) = get(&state, THEIRS, None).await;
    assert_eq!(status, 503);
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "ServiceUnavailable");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with("external metrics upstream https://keda:6443 is unavailable"),
        "{message}"
    );
    // Ours doesn't depend on the upstream.
    assert_eq!(get(&state, OURS, None).await.0, 200);
}
