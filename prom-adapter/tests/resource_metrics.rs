//! `metrics.k8s.io` through the pure router ([`server::respond`]): discovery with and without
//! resource rules, the pod and node documents as metrics-server writes them, and every
//! failure as a `Status` with its code. The backend and the cluster are the in-memory fakes.

mod router;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prom_adapter::objects::{FakeObjects, ObjectRef};
use prom_adapter::prom::fake::{FakeProm, sample};
use prom_adapter::provider::Provider;
use prom_adapter::rules::from_yaml;
use prom_adapter::rules::resources::GroupResource;
use prom_adapter::server::State;
use prom_adapter::telemetry::Metrics;
use router::get;
use serde_json::{Value, json};

const RULES: &str = r#"
rules: []
resourceRules:
  cpu:
    containerQuery: 'sum by (<<.GroupBy>>) (irate(container_cpu_usage_seconds_total{<<.LabelMatchers>>,container!="",pod!=""}[4m]))'
    nodeQuery: 'sum by (<<.GroupBy>>) (irate(node_cpu_usage_seconds_total{<<.LabelMatchers>>}[4m]))'
    resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}, node: {resource: node}}}
    containerLabel: container
  memory:
    containerQuery: 'sum by (<<.GroupBy>>) (container_memory_working_set_bytes{<<.LabelMatchers>>,container!="",pod!=""})'
    nodeQuery: 'sum by (<<.GroupBy>>) (node_memory_working_set_bytes{<<.LabelMatchers>>})'
    resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}, node: {resource: node}}}
    containerLabel: container
  window: 5m
"#;

const BASE: &str = "/apis/metrics.k8s.io/v1beta1";

fn state(rules: &str) -> (State<FakeProm>, FakeProm) {
    let set = from_yaml(rules, Path::new("rules.yaml")).unwrap().0;
    let prom = FakeProm::new();
    let objects = FakeObjects::new();
    objects.set(
        &GroupResource::new("", "pods"),
        [
            ObjectRef::new("web-0", Some("default"), [("app", "web")]),
            ObjectRef::new("idle-0", Some("default"), [("app", "idle")]),
        ],
    );
    objects.set(
        &GroupResource::new("", "nodes"),
        [ObjectRef::new("node-a", None, [("zone", "a")])],
    );
    let metrics = Arc::new(Metrics::new());
    let provider = Provider::new(
        prom.clone(),
        Arc::new(set),
        Arc::clone(&metrics),
        Duration::from_secs(60),
    )
    .with_objects(Arc::new(objects));
    let state = router::open_state(provider, metrics);
    (state, prom)
}

fn samples(prom: &FakeProm) {
    let c = |v: &str| {
        sample(
            &[("pod", "web-0"), ("container", "web")],
            1_743_501_600.0,
            v,
        )
    };
    prom.set_vector(
        r#"sum by (pod,container) (irate(container_cpu_usage_seconds_total{namespace="default",container!="",pod!=""}[4m]))"#,
        vec![c("0.25")],
    );
    prom.set_vector(
        r#"sum by (pod,container) (container_memory_working_set_bytes{namespace="default",container!="",pod!=""})"#,
        vec![c("104857600")],
    );
    prom.set_vector(
        r#"sum by (pod,container) (irate(container_cpu_usage_seconds_total{namespace="default",pod="web-0",container!="",pod!=""}[4m]))"#,
        vec![c("0.001234567")],
    );
    prom.set_vector(
        r#"sum by (pod,container) (container_memory_working_set_bytes{namespace="default",pod="web-0",container!="",pod!=""})"#,
        vec![c("52432896")],
    );
    let n = |v: &str| sample(&[("node", "node-a")], 1_743_501_600.0, v);
    prom.set_vector(
        r#"sum by (node) (irate(node_cpu_usage_seconds_total{node="node-a"}[4m]))"#,
        vec![n("1.5")],
    );
    prom.set_vector(
        r#"sum by (node) (node_memory_working_set_bytes{node="node-a"})"#,
        vec![n("2147483648")],
    );
}

/// The `creationTimestamp` is the time of the answer: checked for shape, then dropped.
fn without_creation(mut v: Value) -> Value {
    let mut strip = |item: &mut Value| {
        let meta = item["metadata"].as_object_mut().unwrap();
        let created = meta.remove("creationTimestamp").unwrap();
        let created = created.as_str().unwrap();
        assert!(
            created.len() == 20 && created.ends_with('Z'),
            "creationTimestamp {created}"
        );
    };
    match v.get_mut("items").and_then(Value::as_array_mut) {
        Some(items) => items.iter_mut().for_each(&mut strip),
        None => strip(&mut v),
    }
    v
}

#[track_caller]
fn assert_status(got: (u16, Value), code: u16, reason: &str, message: &str) {
    let (status, body) = got;
    assert_eq!(status, code, "{body}");
    assert_eq!(
        body,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code})
    );
}

#[tokio::test]
async fn without_resource_rules_the_group_does_not_exist() {
    let (state, _) = state("rules: []\n");
    let (code, apis) = get(&state, "/apis").await;
    assert_eq!(code, 200);
    let groups: Vec<&str> = apis["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(groups, ["custom.metrics.k8s.io", "external.metrics.k8s.io"]);
    for path in [
        "/apis/metrics.k8s.io",
        BASE,
        "/apis/metrics.k8s.io/v1beta1/nodes",
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/web-0",
    ] {
        assert_status(
            get(&state, path).await,
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    }
}

#[tokio::test]
async fn discovery_lists_the_group_and_its_two_resources() {
    let (state, _) = state(RULES);
    let (_, apis) = get(&state, "/apis").await;
    assert_eq!(apis["groups"][2]["name"], "metrics.k8s.io");
    let (code, group) = get(&state, "/apis/metrics.k8s.io").await;
    assert_eq!(code, 200);
    assert_eq!(
        group["preferredVersion"],
        json!({"groupVersion": "metrics.k8s.io/v1beta1", "version": "v1beta1"})
    );
    let (code, list) = get(&state, BASE).await;
    assert_eq!(code, 200);
    let names: Vec<(&str, bool, &str)> = list["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap(),
                r["namespaced"].as_bool().unwrap(),
                r["kind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("nodes", false, "NodeMetrics"),
            ("pods", true, "PodMetrics")
        ]
    );
}

#[tokio::test]
async fn pods_and_nodes_as_metrics_server_writes_them() {
    let (state, prom) = state(RULES);
    samples(&prom);
    let (code, list) = get(&state, &format!("{BASE}/namespaces/default/pods")).await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(
        without_creation(list),
        json!({"kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {},
               "items": [{"metadata": {"name": "web-0", "namespace": "default",
                                       "labels": {"app": "web"}},
                          "timestamp": "2025-04-01T10:00:00Z", "window": "5m0s",
                          "containers": [{"name": "web",
                                          "usage": {"cpu": "250m", "memory": "100Mi"}}]}]})
    );
    let (code, one) = get(&state, &format!("{BASE}/namespaces/default/pods/web-0")).await;
    assert_eq!(code, 200, "{one}");
    assert_eq!(
        without_creation(one),
        json!({"kind": "PodMetrics", "apiVersion": "metrics.k8s.io/v1beta1",
               "metadata": {"name": "web-0", "namespace": "default", "labels": {"app": "web"}},
               "timestamp": "2025-04-01T10:00:00Z", "window": "5m0s",
               "containers": [{"name": "web",
                               "usage": {"cpu": "1234567n", "memory": "51204Ki"}}]})
    );
    let (code, node) = get(&state, &format!("{BASE}/nodes/node-a")).await;
    assert_eq!(code, 200, "{node}");
    assert_eq!(
        without_creation(node),
        json!({"kind": "NodeMetrics", "apiVersion": "metrics.k8s.io/v1beta1",
               "metadata": {"name": "node-a", "labels": {"zone": "a"}},
               "timestamp": "2025-04-01T10:00:00Z", "window": "5m0s",
               "usage": {"cpu": "1500m", "memory": "2Gi"}})
    );
    // A selector matching nothing: an empty list, as metrics-server answers.
    let (code, empty) = get(
        &state,
        &format!("{BASE}/namespaces/default/pods?labelSelector=app%3Dnone"),
    )
    .await;
    assert_eq!((code, &empty["items"]), (200, &json!([])));
}

#[tokio::test]
async fn failures_are_statuses_with_their_codes() {
    let (state, prom) = state(RULES);
    samples(&prom);
    assert_status(
        get(&state, &format!("{BASE}/namespaces/default/pods/idle-0")).await,
        404,
        "NotFound",
        r#"podmetrics.metrics.k8s.io "default/idle-0" not found"#,
    );
    assert_status(
        get(&state, &format!("{BASE}/namespaces/default/pods/gone-0")).await,
        404,
        "NotFound",
        r#"pods "gone-0" not found"#,
    );
    let (code, body) = get(
        &state,
        &format!("{BASE}/namespaces/default/pods?labelSelector=app+in+%28"),
    )
    .await;
    assert_eq!((code, body["reason"].as_str()), (400, Some("BadRequest")));
    let (code, body) = get(&state, &format!("{BASE}/pods?watch=true")).await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (405, Some("MethodNotAllowed"))
    );
    let (code, _) = get(&state, &format!("{BASE}/namespaces/default/services")).await;
    assert_eq!(code, 404);
}
