//! `PrometheusMetric` objects (`prom-adapter.io/v1alpha1`, the CRD in `deploy/`): a named
//! query written as a Kubernetes object, served as an external metric in its namespace, its
//! value, freshness and errors written back to its status, as the Datadog Cluster Agent does
//! with DatadogMetric. Which HPAs read it (`autoscalerReferences`) comes from a watch of the
//! HorizontalPodAutoscalers.
//!
//! The pure part turns objects into [`NamedQuery`]s and query states into statuses; [`run`]
//! is the IO edge (two kube-rs watchers and a status writer).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::api::types::rfc3339;
use crate::prom::PromApi;
use crate::provider::Provider;
use crate::rules::named::{self, NamedQuery, NamedQuerySpec, QuerySource};
use crate::status::{QueryState, QueryStatus};
use crate::telemetry::now_unix;

/// The API group of `PrometheusMetric`.
pub const GROUP: &str = "prom-adapter.io";
/// Its version.
pub const VERSION: &str = "v1alpha1";
/// Its kind.
pub const KIND: &str = "PrometheusMetric";
/// Its resource (plural).
pub const PLURAL: &str = "prometheusmetrics";

/// How often statuses are compared with what was last written.
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// A status whose only change is the value's update time is rewritten this often.
const STATUS_REFRESH: Duration = Duration::from_secs(30);

/// `spec` of a `PrometheusMetric`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    /// The PromQL.
    pub query: String,
    /// How old the value may be (default 2m).
    #[serde(default)]
    pub max_age: Option<common::units::Duration>,
    /// How often it runs (default 15s).
    #[serde(default)]
    pub refresh: Option<common::units::Duration>,
    /// The backend (default: the first).
    #[serde(default)]
    pub backend: Option<String>,
}

/// The API resource for kube-rs.
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, KIND), PLURAL)
}

/// `(namespace, name)` of an object.
type Key = (String, String);

fn key_of(o: &DynamicObject) -> Option<Key> {
    Some((o.metadata.namespace.clone()?, o.metadata.name.clone()?))
}

/// An object's query, or why it can't be served (written to its status).
pub fn to_query(
    namespace: &str,
    name: &str,
    spec: &Value,
    backends: &[&str],
) -> Result<NamedQuery, String> {
    let spec: Spec = serde_json::from_value(spec.clone()).map_err(|e| format!("spec: {e}"))?;
    if let Some(b) = &spec.backend
        && !backends.contains(&b.as_str())
    {
        return Err(format!(
            "spec.backend: unknown backend `{b}` (configured: {})",
            backends.join(", ")
        ));
    }
    named::compile(
        NamedQuerySpec {
            name: name.to_owned(),
            query: spec.query,
            max_age: spec.max_age,
            refresh: spec.refresh,
            namespace: Some(namespace.to_owned()),
            backend: spec.backend,
        },
        QuerySource::Object {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        },
    )
    .map_err(|e| {
        let field = match e.field {
            "maxAge" => "spec.maxAge",
            "refresh" => "spec.refresh",
            "query" => "spec.query",
            "name" => "metadata.name",
            other => other,
        };
        format!("{field}: {}", e.message)
    })
}

/// The HPAs (`hpa:namespace/name`) with an External metric named `name` in `namespace`:
/// they read this object's value.
pub fn references(hpas: &BTreeMap<Key, Value>, namespace: &str, name: &str) -> Vec<String> {
    hpas.iter()
        .filter(|((ns, _), _)| ns == namespace)
        .filter(|(_, hpa)| {
            hpa["spec"]["metrics"].as_array().is_some_and(|metrics| {
                metrics
                    .iter()
                    .any(|m| m["type"] == "External" && m["external"]["metric"]["name"] == name)
            })
        })
        .map(|((ns, hpa), _)| format!("hpa:{ns}/{hpa}"))
        .collect()
}

/// The sum of the values, as the HPA sums an External metric's items (`""` when none).
fn current_value(q: &QueryStatus) -> String {
    match q.values.as_slice() {
        [] => String::new(),
        [one] => one.value.clone(),
        many => {
            let milli: i64 = many
                .iter()
                .filter_map(|v| crate::quantity::milli_value(&v.value).ok())
                .fold(0, i64::saturating_add);
            crate::quantity::from_f64(milli as f64 / 1000.0)
                .map(|c| c.quantity.0)
                .unwrap_or_default()
        }
    }
}

/// One condition, keeping its `lastTransitionTime` from `previous` while its status holds.
fn condition(
    previous: &Value,
    kind: &str,
    on: bool,
    reason: &str,
    message: &str,
    now: &str,
) -> Value {
    let status = if on { "True" } else { "False" };
    let before = previous["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind));
    let transition = match before {
        Some(c) if c["status"] == status => c["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    json!({
        "type": kind,
        "status": status,
        "lastUpdateTime": now,
        "lastTransitionTime": transition,
        "reason": reason,
        "message": message,
    })
}

/// The status an object should have: its value, its conditions (Active, Valid, Updated,
/// Error) and the HPAs reading it. `previous` is its status now.
pub fn desired_status(
    previous: &Value,
    query: Result<&QueryStatus, &str>,
    references: &[String],
    now: &str,
) -> Value {
    let active = condition(
        previous,
        "Active",
        !references.is_empty(),
        if references.is_empty() {
            "Unreferenced"
        } else {
            "Referenced"
        },
        "",
        now,
    );
    let q = match query {
        Ok(q) => q,
        Err(invalid) => {
            return json!({
                "currentValue": "",
                "autoscalerReferences": references.join(","),
                "conditions": [
                    active,
                    condition(previous, "Valid", false, "InvalidSpec", invalid, now),
                    condition(previous, "Updated", false, "InvalidSpec", "", now),
                    condition(previous, "Error", true, "InvalidSpec", invalid, now),
                ],
            });
        }
    };
    let error = q.last_error.as_deref().unwrap_or_default();
    let (valid, valid_reason, valid_message) = match q.state {
        QueryState::Valid => (true, "Fresh", String::new()),
        QueryState::Stale => (
            false,
            "Stale",
            format!(
                "the value is {:.0}s old, older than maxAge {}s",
                q.age_seconds.unwrap_or_default(),
                q.max_age_seconds
            ),
        ),
        QueryState::Error => (false, "NoValue", "the query has not answered yet".into()),
        QueryState::Pending => (false, "Pending", "the query has not run yet".into()),
    };
    let updated = q.refreshes > 0 && q.last_error.is_none();
    let mut status = json!({
        "currentValue": current_value(q),
        "autoscalerReferences": references.join(","),
        "conditions": [
            active,
            condition(previous, "Valid", valid, valid_reason, &valid_message, now),
            condition(previous, "Updated", updated, if updated { "Refreshed" } else { "RefreshFailed" }, "", now),
            condition(previous, "Error", !error.is_empty(), if error.is_empty() { "" } else { "QueryFailed" }, error, now),
        ],
    });
    if let Some(t) = &q.last_update {
        status["lastUpdateTime"] = json!(t);
    }
    status
}

/// Whether two statuses differ in more than their timestamps.
fn differs(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("lastUpdateTime");
        }
        if let Some(cs) = v["conditions"].as_array_mut() {
            for c in cs {
                if let Some(o) = c.as_object_mut() {
                    o.remove("lastUpdateTime");
                    o.remove("lastTransitionTime");
                }
            }
        }
        v
    };
    strip(a) != strip(b)
}

/// What the watchers have seen.
#[derive(Default)]
struct Seen {
    metrics: BTreeMap<Key, DynamicObject>,
    hpas: BTreeMap<Key, Value>,
}

/// Applies one watcher event to `map`; true when it changed what is served.
fn apply<T>(
    map: &mut BTreeMap<Key, T>,
    pending: &mut Option<BTreeMap<Key, T>>,
    event: Event<DynamicObject>,
    convert: impl Fn(DynamicObject) -> T,
) -> bool {
    match event {
        Event::Init => {
            *pending = Some(BTreeMap::new());
            false
        }
        Event::InitApply(o) => {
            if let (Some(k), Some(p)) = (key_of(&o), pending.as_mut()) {
                p.insert(k, convert(o));
            }
            false
        }
        Event::InitDone => {
            if let Some(p) = pending.take() {
                *map = p;
            }
            true
        }
        Event::Apply(o) => key_of(&o).is_some_and(|k| {
            map.insert(k, convert(o));
            true
        }),
        Event::Delete(o) => key_of(&o).is_some_and(|k| map.remove(&k).is_some()),
    }
}

/// Watches `PrometheusMetric` objects and HPAs with `client`, serves the objects' queries
/// through `provider`, and writes their statuses, until `stop`.
pub async fn run<P: PromApi>(
    client: kube::Client,
    provider: Arc<Provider<P>>,
    stop: CancellationToken,
) {
    let metrics_api: Api<DynamicObject> = Api::all_with(client.clone(), &api_resource());
    let hpa_resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("autoscaling", "v2", "HorizontalPodAutoscaler"),
        "horizontalpodautoscalers",
    );
    let hpa_api: Api<DynamicObject> = Api::all_with(client.clone(), &hpa_resource);
    let mut metric_events =
        Box::pin(watcher::watcher(metrics_api, watcher::Config::default()).default_backoff());
    let mut hpa_events =
        Box::pin(watcher::watcher(hpa_api, watcher::Config::default()).default_backoff());
    let mut seen = Seen::default();
    let (mut metrics_pending, mut hpas_pending) = (None, None);
    let mut written: BTreeMap<Key, Written> = BTreeMap::new();
    let mut invalid: BTreeMap<Key, String> = BTreeMap::new();
    let mut tick = tokio::time::interval(STATUS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let changed = tokio::select! {
            () = stop.cancelled() => return,
            Some(event) = crate::objects::next(&mut metric_events) => match event {
                Ok(e) => apply(&mut seen.metrics, &mut metrics_pending, e, |o| o),
                Err(e) => {
                    provider.metrics().prometheus_metric_watch_errors.inc();
                    tracing::warn!(error = %e, "PrometheusMetric watch failed; retrying.");
                    false
                }
            },
            Some(event) = crate::objects::next(&mut hpa_events) => match event {
                Ok(e) => {
                    apply(&mut seen.hpas, &mut hpas_pending, e, |o| serde_json::to_value(o).unwrap_or_default());
                    false
                }
                Err(e) => {
                    provider.metrics().prometheus_metric_watch_errors.inc();
                    tracing::debug!(error = %e, "HorizontalPodAutoscaler watch failed; retrying.");
                    false
                }
            },
            _ = tick.tick() => {
                write_statuses(&client, &provider, &seen, &invalid, &mut written).await;
                false
            }
        };
        if changed {
            // Our own status writes come back as changes too: log an error only when new.
            let backends = provider.backend_names();
            let mut queries = Vec::new();
            let mut now_invalid = BTreeMap::new();
            for ((ns, name), o) in &seen.metrics {
                let spec = o.data.get("spec").cloned().unwrap_or_default();
                match to_query(ns, name, &spec, &backends) {
                    Ok(q) => queries.push(q),
                    Err(e) => {
                        let key = (ns.clone(), name.clone());
                        if invalid.get(&key) != Some(&e) {
                            tracing::warn!(namespace = %ns, name = %name, error = %e, "PrometheusMetric is invalid; not served.");
                        }
                        now_invalid.insert(key, e);
                    }
                }
            }
            invalid = now_invalid;
            written.retain(|k, _| seen.metrics.contains_key(k));
            provider
                .metrics()
                .prometheus_metric_objects
                .set(seen.metrics.len() as f64);
            provider.replace_object_queries(queries);
        }
    }
}

/// The last status write of one object.
enum Written {
    /// This status, at this time.
    Done(Value, Instant),
    /// A write that failed at this time: the next try waits [`STATUS_REFRESH`].
    Failed(Instant),
}

/// Patches the status of every object whose desired status differs from the last one
/// written (or is [`STATUS_REFRESH`] old); a failed write is retried after that long.
async fn write_statuses<P: PromApi>(
    client: &kube::Client,
    provider: &Provider<P>,
    seen: &Seen,
    invalid: &BTreeMap<Key, String>,
    written: &mut BTreeMap<Key, Written>,
) {
    let now = now_unix();
    let stamp = rfc3339(now);
    let statuses: BTreeMap<Key, QueryStatus> = provider
        .named()
        .slots()
        .iter()
        .filter_map(|slot| match &slot.query.source {
            QuerySource::Object { namespace, name } => {
                Some(((namespace.clone(), name.clone()), slot.status("", now)))
            }
            QuerySource::Config(_) => None,
        })
        .collect();
    for (key, object) in &seen.metrics {
        let previous = object.data.get("status").cloned().unwrap_or_default();
        let refs = references(&seen.hpas, &key.0, &key.1);
        let query = match (statuses.get(key), invalid.get(key)) {
            (_, Some(e)) => Err(e.as_str()),
            (Some(q), None) => Ok(q),
            // Not served yet (the list is being swapped in): nothing to say.
            (None, None) => continue,
        };
        let desired = desired_status(&previous, query, &refs, &stamp);
        let due = match written.get(key) {
            Some(Written::Done(last, at)) => {
                differs(last, &desired) || at.elapsed() >= STATUS_REFRESH
            }
            Some(Written::Failed(at)) => at.elapsed() >= STATUS_REFRESH,
            // First sight since start: write our view once.
            None => true,
        };
        if !due {
            continue;
        }
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &key.0, &api_resource());
        let patch = Patch::Merge(json!({ "status": desired }));
        let result = api
            .patch_status(&key.1, &PatchParams::default(), &patch)
            .await;
        let label = if result.is_ok() { "ok" } else { "error" };
        provider
            .metrics()
            .prometheus_metric_status_writes
            .with_label_values(&[label])
            .inc();
        match result {
            Ok(_) => {
                written.insert(key.clone(), Written::Done(desired, Instant::now()));
            }
            Err(e) => {
                tracing::warn!(namespace = %key.0, name = %key.1, error = %e, retry_in = ?STATUS_REFRESH, "Cannot write a PrometheusMetric's status.");
                written.insert(key.clone(), Written::Failed(Instant::now()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::ValueStatus;

    fn status(state: QueryState, values: &[&str], error: Option<&str>) -> QueryStatus {
        QueryStatus {
            name: "queue".into(),
            namespace: Some("default".into()),
            source: "PrometheusMetric default/queue".into(),
            query: "sum(jobs)".into(),
            backend: "default".into(),
            max_age_seconds: 120.0,
            refresh_seconds: 15.0,
            state,
            values: values
                .iter()
                .map(|v| ValueStatus {
                    labels: BTreeMap::new(),
                    value: (*v).into(),
                })
                .collect(),
            sample_time: None,
            age_seconds: Some(150.0),
            last_update: Some("2026-12-07T16:00:00Z".into()),
            last_attempt: None,
            last_duration_seconds: None,
            last_error: error.map(str::to_owned),
            refreshes: 3,
            failures: u64::from(error.is_some()),
        }
    }

    fn cond<'a>(s: &'a Value, kind: &str) -> &'a Value {
        s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == kind)
            .unwrap()
    }

    #[test]
    fn objects_become_queries_served_in_their_namespace() {
        let q = to_query(
            "shop",
            "queue-depth",
            &json!({"query": "sum(jobs)", "maxAge": "1m", "refresh": "5s"}),
            &["default"],
        )
        .unwrap();
        assert_eq!(q.namespace.as_deref(), Some("shop"));
        assert_eq!(q.max_age, Duration::from_secs(60));
        assert!(q.serves("queue-depth", "shop") && !q.serves("queue-depth", "other"));
        for (spec, needle) in [
            (
                json!({"query": "x", "maxAge": "1s", "refresh": "5s"}),
                "spec.maxAge",
            ),
            (json!({"query": ""}), "spec.query"),
            (
                json!({"query": "x", "backend": "vm"}),
                "unknown backend `vm`",
            ),
            (json!({"query": "x", "typo": 1}), "unknown field `typo`"),
            (json!({}), "missing field `query`"),
        ] {
            let e = to_query("shop", "q", &spec, &["default"]).unwrap_err();
            assert!(e.contains(needle), "{e} lacks {needle}");
        }
    }

    #[test]
    fn references_are_the_hpas_reading_the_metric_in_its_namespace() {
        let hpa = |metric: &str| {
            json!({"spec": {"metrics": [
                {"type": "Pods", "pods": {"metric": {"name": metric}}},
                {"type": "External", "external": {"metric": {"name": metric}}}
            ]}})
        };
        let hpas = BTreeMap::from([
            (("shop".into(), "web".into()), hpa("queue-depth")),
            (("shop".into(), "api".into()), hpa("other")),
            (("dev".into(), "web".into()), hpa("queue-depth")),
        ]);
        assert_eq!(references(&hpas, "shop", "queue-depth"), ["hpa:shop/web"]);
        assert!(references(&hpas, "shop", "nothing").is_empty());
    }

    #[test]
    fn statuses_say_valid_stale_and_errors() {
        let now = "2026-12-07T16:01:00Z";
        let refs = vec!["hpa:default/web".to_owned()];
        let ok = desired_status(
            &Value::Null,
            Ok(&status(QueryState::Valid, &["42"], None)),
            &refs,
            now,
        );
        assert_eq!(ok["currentValue"], "42");
        assert_eq!(ok["autoscalerReferences"], "hpa:default/web");
        assert_eq!(ok["lastUpdateTime"], "2026-12-07T16:00:00Z");
        for (kind, want) in [
            ("Active", "True"),
            ("Valid", "True"),
            ("Updated", "True"),
            ("Error", "False"),
        ] {
            assert_eq!(cond(&ok, kind)["status"], want, "{kind}");
        }
        let stale = desired_status(
            &ok,
            Ok(&status(
                QueryState::Stale,
                &["42"],
                Some("connection refused"),
            )),
            &[],
            "2026-12-07T16:05:00Z",
        );
        assert_eq!(cond(&stale, "Valid")["status"], "False");
        assert_eq!(cond(&stale, "Valid")["reason"], "Stale");
        assert_eq!(cond(&stale, "Error")["message"], "connection refused");
        assert_eq!(cond(&stale, "Active")["status"], "False");
        // A condition that flipped gets a new transition time; one that held keeps its own.
        assert_eq!(
            cond(&stale, "Valid")["lastTransitionTime"],
            "2026-12-07T16:05:00Z"
        );
        let again = desired_status(
            &stale,
            Ok(&status(
                QueryState::Stale,
                &["42"],
                Some("connection refused"),
            )),
            &[],
            "2026-12-07T16:06:00Z",
        );
        assert_eq!(
            cond(&again, "Valid")["lastTransitionTime"],
            "2026-12-07T16:05:00Z"
        );
        assert!(!differs(&stale, &again));
        assert!(differs(&ok, &stale));
        let bad = desired_status(&Value::Null, Err("spec.query: must not be empty"), &[], now);
        assert_eq!(cond(&bad, "Error")["reason"], "InvalidSpec");
        assert_eq!(
            cond(&bad, "Valid")["message"],
            "spec.query: must not be empty"
        );
    }

    #[test]
    fn several_series_sum_as_the_hpa_sums_them() {
        let s = status(QueryState::Valid, &["1500m", "2", "500m"], None);
        assert_eq!(current_value(&s), "4");
    }
}
