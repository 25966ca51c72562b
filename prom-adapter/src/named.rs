//! The named queries' cache: each query's last value, when it runs next, and what a request
//! gets from it. Sans-IO: the caller runs the due queries and passes the clock in, so an HPA
//! request never waits on the backend.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::api::ApiError;
use crate::api::types::{ExternalMetricValue, rfc3339};
use crate::prom::{Labels, QueryResult};
use crate::quantity;
use crate::rules::named::NamedQuery;
use crate::selector::Selector;
use crate::status::{QueryState, QueryStatus, ValueStatus};

/// How far a refresh may move from its period, either way, so queries configured together
/// don't hit the backend together forever.
const JITTER: f64 = 0.1;
/// The first run of each query is spread over at most this long after start or reload.
const FIRST_SPREAD: Duration = Duration::from_secs(1);

/// One series of a query's answer, ready to serve.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The series' labels; `None` for a scalar answer.
    pub labels: Option<Labels>,
    /// The value as a canonical Quantity.
    pub value: Quantity,
}

/// A query's last good answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    /// Its series.
    pub items: Vec<Item>,
    /// Evaluation time of the answer (unix seconds): its age is counted from here.
    pub sample_time: f64,
}

/// Turns a backend answer into a value; an answer that can't be served is an error.
pub fn value_from(result: QueryResult) -> Result<Value, String> {
    let convert = |raw: &str, labels: Option<&Labels>| {
        quantity::from_prometheus(raw)
            .map(|c| c.quantity)
            .map_err(|e| match labels {
                Some(l) => format!("{e} for {}", describe_labels(l)),
                None => e.to_string(),
            })
    };
    match result {
        QueryResult::Vector(samples) => {
            let Some(sample_time) = samples.iter().map(|s| s.timestamp).reduce(f64::max) else {
                return Err("the query returned no data".into());
            };
            let items = samples
                .into_iter()
                .map(|s| {
                    convert(&s.value, Some(&s.labels)).map(|value| Item {
                        labels: Some(s.labels),
                        value,
                    })
                })
                .collect::<Result<_, _>>()?;
            Ok(Value { items, sample_time })
        }
        QueryResult::Scalar { timestamp, value } => Ok(Value {
            items: vec![Item {
                labels: None,
                value: convert(&value, None)?,
            }],
            sample_time: timestamp,
        }),
        other => Err(format!(
            "the query must return a vector or a scalar, it returned a {}",
            other.result_type()
        )),
    }
}

/// `{a="1", b="2"}`, for messages.
fn describe_labels(labels: &Labels) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

#[derive(Debug, Clone)]
struct State {
    value: Option<Value>,
    last_error: Option<String>,
    last_attempt: Option<f64>,
    last_update: Option<f64>,
    last_duration: Option<Duration>,
    due: Instant,
    running: bool,
    refreshes: u64,
    failures: u64,
}

/// One query and what it last answered.
#[derive(Debug)]
pub struct Slot {
    /// The query.
    pub query: NamedQuery,
    state: Mutex<State>,
}

/// A fraction in [0, 1) that depends only on the query and how often it ran: reproducible in
/// tests, different between queries.
fn spread(query: &NamedQuery, round: u64) -> f64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    query.name.hash(&mut h);
    query.namespace.hash(&mut h);
    round.hash(&mut h);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

impl Slot {
    fn new(query: NamedQuery, now: Instant) -> Slot {
        let first = FIRST_SPREAD
            .min(query.refresh / 10)
            .mul_f64(spread(&query, 0));
        Slot {
            state: Mutex::new(State {
                value: None,
                last_error: None,
                last_attempt: None,
                last_update: None,
                last_duration: None,
                due: now + first,
                running: false,
                refreshes: 0,
                failures: 0,
            }),
            query,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Files the outcome of a run that started at `started` and schedules the next one.
    /// A failure keeps the last value: it is served until it is `max_age` old. True when
    /// the query went from working to failing or back (worth a log line).
    pub fn record(
        &self,
        outcome: Result<Value, String>,
        started: Instant,
        now: Instant,
        now_unix: f64,
    ) -> bool {
        let mut s = self.state();
        let was_failing = s.last_error.is_some();
        let changed = outcome.is_err() != was_failing;
        s.running = false;
        s.refreshes += 1;
        s.last_attempt = Some(now_unix);
        s.last_duration = Some(now.saturating_duration_since(started));
        let jitter = 1.0 + JITTER * (2.0 * spread(&self.query, s.refreshes) - 1.0);
        s.due = started + self.query.refresh.mul_f64(jitter);
        match outcome {
            Ok(v) => {
                s.value = Some(v);
                s.last_error = None;
                s.last_update = Some(now_unix);
            }
            Err(e) => {
                s.failures += 1;
                s.last_error = Some(e);
            }
        }
        changed
    }

    /// The value's age at `now_unix`, if there is a value.
    fn age(s: &State, now_unix: f64) -> Option<f64> {
        s.value
            .as_ref()
            .map(|v| (now_unix - v.sample_time).max(0.0))
    }

    fn freshness(&self, s: &State, now_unix: f64) -> QueryState {
        match Self::age(s, now_unix) {
            Some(age) if age <= self.query.max_age.as_secs_f64() => QueryState::Valid,
            Some(_) => QueryState::Stale,
            None if s.last_error.is_some() => QueryState::Error,
            None => QueryState::Pending,
        }
    }

    /// What a request for this metric gets: the cached items matching `selector`, or a 503
    /// saying why there is nothing to serve. Never an old value, never a made-up 0.
    pub fn answer(
        &self,
        selector: &Selector,
        now_unix: f64,
    ) -> Result<Vec<ExternalMetricValue>, ApiError> {
        let s = self.state();
        let q = &self.query;
        let last_error = || {
            s.last_error
                .as_ref()
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        };
        let value = match (self.freshness(&s, now_unix), &s.value) {
            (QueryState::Valid, Some(v)) => v,
            (QueryState::Stale, _) => {
                return Err(ApiError::Stale(format!(
                    "the value of named query {} is {:.0}s old, older than its maxAge of {}s{}",
                    q.name,
                    Self::age(&s, now_unix).unwrap_or_default(),
                    q.max_age.as_secs_f64(),
                    last_error()
                )));
            }
            _ => {
                return Err(ApiError::Unavailable(format!(
                    "named query {} has no value yet{}",
                    q.name,
                    last_error()
                )));
            }
        };
        let empty = Labels::new();
        let items: Vec<ExternalMetricValue> = value
            .items
            .iter()
            .filter(|item| {
                let labels = item.labels.as_ref().unwrap_or(&empty);
                selector.matches(|k| labels.get(k).map(String::as_str))
            })
            .map(|item| ExternalMetricValue {
                metric_name: q.name.clone(),
                metric_labels: item.labels.clone(),
                timestamp: rfc3339(value.sample_time),
                window_seconds: None,
                value: item.value.clone(),
            })
            .collect();
        if items.is_empty() {
            return Err(ApiError::Unavailable(format!(
                "no series of named query {} matches the selector",
                q.name
            )));
        }
        Ok(items)
    }

    /// The query's state for `/status` and `PrometheusMetric` objects.
    pub fn status(&self, backend: &str, now_unix: f64) -> QueryStatus {
        let s = self.state();
        let q = &self.query;
        QueryStatus {
            name: q.name.clone(),
            namespace: q.namespace.clone(),
            source: q.source.describe(),
            query: q.query.clone(),
            backend: backend.to_owned(),
            max_age_seconds: q.max_age.as_secs_f64(),
            refresh_seconds: q.refresh.as_secs_f64(),
            state: self.freshness(&s, now_unix),
            values: s
                .value
                .iter()
                .flat_map(|v| &v.items)
                .map(|i| ValueStatus {
                    labels: i.labels.clone().unwrap_or_default(),
                    value: i.value.0.clone(),
                })
                .collect(),
            sample_time: s.value.as_ref().map(|v| rfc3339(v.sample_time)),
            age_seconds: Self::age(&s, now_unix),
            last_update: s.last_update.map(rfc3339),
            last_attempt: s.last_attempt.map(rfc3339),
            last_duration_seconds: s.last_duration.map(|d| d.as_secs_f64()),
            last_error: s.last_error.clone(),
            refreshes: s.refreshes,
            failures: s.failures,
        }
    }
}

/// Every named query, in config order (namespaced objects after).
#[derive(Debug, Default)]
pub struct Cache {
    slots: RwLock<Vec<Arc<Slot>>>,
}

impl Cache {
    /// A cache whose queries all run within the first second.
    pub fn new(queries: &[NamedQuery], now: Instant) -> Cache {
        let cache = Cache::default();
        cache.replace(queries, now);
        cache
    }

    /// Swaps in a new list (a reload, or `PrometheusMetric` objects changing); a query
    /// asking the same question as before keeps its value and schedule.
    pub fn replace(&self, queries: &[NamedQuery], now: Instant) {
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        let next = queries
            .iter()
            .map(|q| {
                match slots.iter().find(|s| s.query.same_question(q)) {
                    // Same question, maybe another place: keep what it knows.
                    Some(old) if old.query == *q => Arc::clone(old),
                    Some(old) => Arc::new(Slot {
                        query: q.clone(),
                        state: Mutex::new(old.state().clone()),
                    }),
                    None => Arc::new(Slot::new(q.clone(), now)),
                }
            })
            .collect();
        *slots = next;
    }

    /// Every slot.
    pub fn slots(&self) -> Vec<Arc<Slot>> {
        self.slots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The query an HPA in `namespace` gets for `metric`: one scoped to that namespace
    /// before one served everywhere.
    pub fn find(&self, metric: &str, namespace: &str) -> Option<Arc<Slot>> {
        let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
        let serving = || slots.iter().filter(|s| s.query.serves(metric, namespace));
        serving()
            .find(|s| s.query.namespace.is_some())
            .or_else(|| serving().next())
            .cloned()
    }

    /// Whether some query is served under `metric` (to any namespace).
    pub fn serves_name(&self, metric: &str) -> bool {
        self.slots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|s| s.query.name == metric)
    }

    /// The names served, each once, sorted (for discovery).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .slots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|s| s.query.name.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The queries due at `now`, marked running so they aren't handed out twice.
    pub fn take_due(&self, now: Instant) -> Vec<Arc<Slot>> {
        self.slots()
            .into_iter()
            .filter(|slot| {
                let mut s = slot.state();
                let due = !s.running && s.due <= now;
                if due {
                    s.running = true;
                }
                due
            })
            .collect()
    }

    /// When the next query not running now is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.slots()
            .iter()
            .filter_map(|slot| {
                let s = slot.state();
                (!s.running).then_some(s.due)
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prom::Sample;
    use crate::rules::named::{NamedQuerySpec, QuerySource, compile};

    fn query(name: &str, max_age_s: u64, refresh_s: u64) -> NamedQuery {
        compile(
            NamedQuerySpec {
                name: name.into(),
                query: format!("sum({name})"),
                max_age: Some(common::units::Duration(Duration::from_secs(max_age_s))),
                refresh: Some(common::units::Duration(Duration::from_secs(refresh_s))),
                namespace: None,
                backend: None,
            },
            QuerySource::Object {
                namespace: "default".into(),
                name: name.into(),
            },
        )
        .unwrap()
    }

    fn vector(at: f64, values: &[(&str, &str)]) -> QueryResult {
        QueryResult::Vector(
            values
                .iter()
                .map(|(queue, v)| Sample {
                    labels: Labels::from([("queue".to_owned(), (*queue).to_owned())]),
                    timestamp: at,
                    value: (*v).to_owned(),
                })
                .collect(),
        )
    }

    const T0: f64 = 1_800_000_000.0;

    #[test]
    fn values_become_quantities_and_bad_answers_are_errors() {
        let v = value_from(vector(T0, &[("a", "1.5"), ("b", "3")])).unwrap();
        assert_eq!(v.sample_time, T0);
        let values: Vec<&str> = v.items.iter().map(|i| i.value.0.as_str()).collect();
        assert_eq!(values, ["1500m", "3"]);
        let scalar = value_from(QueryResult::Scalar {
            timestamp: T0,
            value: "42".into(),
        })
        .unwrap();
        assert_eq!(scalar.items[0].labels, None);
        for (bad, needle) in [
            (vector(T0, &[]), "no data"),
            (vector(T0, &[("a", "NaN")]), "queue=\"a\""),
            (QueryResult::Matrix(vec![]), "returned a matrix"),
        ] {
            let e = value_from(bad).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn a_value_is_served_until_max_age_then_stale_never_zero() {
        let start = Instant::now();
        let cache = Cache::new(&[query("queue_depth", 60, 15)], start);
        let slot = cache.find("queue_depth", "default").unwrap();
        let all = Selector::parse("").unwrap();
        let e = slot.answer(&all, T0).unwrap_err();
        assert_eq!(e.code(), 503);
        assert!(e.to_string().contains("no value yet"), "{e}");

        slot.record(
            value_from(vector(T0, &[("a", "7")])),
            start,
            start,
            T0 + 0.1,
        );
        let items = slot.answer(&all, T0 + 60.0).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].value.0, "7");
        assert_eq!(items[0].timestamp, rfc3339(T0));

        // The backend fails: the value is still served while young enough, then refused.
        slot.record(Err("prometheus down".into()), start, start, T0 + 20.0);
        assert!(slot.answer(&all, T0 + 59.0).is_ok());
        let e = slot.answer(&all, T0 + 61.0).unwrap_err();
        assert_eq!(e.code(), 503);
        assert_eq!(e.reason(), "Stale");
        let msg = e.to_string();
        assert!(
            msg.contains("61s old") && msg.contains("prometheus down"),
            "{msg}"
        );
        let status = slot.status("default", T0 + 61.0);
        assert_eq!(status.state, QueryState::Stale);
        assert_eq!(status.failures, 1);
        assert_eq!(status.values.len(), 1);
    }

    #[test]
    fn selectors_filter_the_cached_series() {
        let start = Instant::now();
        let cache = Cache::new(&[query("q", 60, 15)], start);
        let slot = cache.find("q", "x").unwrap();
        slot.record(
            value_from(vector(T0, &[("a", "1"), ("b", "2")])),
            start,
            start,
            T0,
        );
        let b = slot
            .answer(&Selector::parse("queue=b").unwrap(), T0)
            .unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].value.0, "2");
        let none = slot
            .answer(&Selector::parse("queue=c").unwrap(), T0)
            .unwrap_err();
        assert_eq!(none.code(), 503);
    }

    #[test]
    fn schedules_are_jittered_and_running_queries_are_not_handed_out_twice() {
        let start = Instant::now();
        let cache = Cache::new(&[query("a", 60, 10), query("b", 60, 10)], start);
        assert!(cache.next_due().unwrap() <= start + FIRST_SPREAD);
        let due = cache.take_due(start + FIRST_SPREAD);
        assert_eq!(due.len(), 2);
        assert!(cache.take_due(start + FIRST_SPREAD).is_empty());
        assert_eq!(cache.next_due(), None);
        let mut nexts = Vec::new();
        for slot in &due {
            slot.record(Err("x".into()), start, start, T0);
            nexts.push(slot.state().due - start);
        }
        for next in &nexts {
            assert!(
                *next >= Duration::from_secs(9) && *next <= Duration::from_secs(11),
                "{next:?}"
            );
        }
        assert_ne!(
            nexts[0], nexts[1],
            "queries refreshing together drift apart"
        );
    }

    #[test]
    fn a_reload_keeps_values_of_unchanged_questions() {
        let start = Instant::now();
        let cache = Cache::new(&[query("a", 60, 10), query("b", 60, 10)], start);
        for slot in cache.take_due(start + FIRST_SPREAD) {
            slot.record(value_from(vector(T0, &[("x", "5")])), start, start, T0);
        }
        let mut changed = query("b", 60, 10);
        changed.query = "sum(other)".into();
        cache.replace(&[query("a", 60, 10), changed, query("c", 60, 10)], start);
        let all = Selector::parse("").unwrap();
        assert!(cache.find("a", "n").unwrap().answer(&all, T0).is_ok());
        assert!(cache.find("b", "n").unwrap().answer(&all, T0).is_err());
        assert!(cache.find("c", "n").unwrap().answer(&all, T0).is_err());
        assert_eq!(cache.names(), ["a", "b", "c"]);
    }

    #[test]
    fn a_namespace_scoped_query_wins_in_its_namespace() {
        let start = Instant::now();
        let mut scoped = query("q", 60, 10);
        scoped.namespace = Some("prod".into());
        scoped.query = "sum(prod)".into();
        let cache = Cache::new(&[query("q", 60, 10), scoped], start);
        assert_eq!(cache.find("q", "prod").unwrap().query.query, "sum(prod)");
        assert_eq!(cache.find("q", "dev").unwrap().query.query, "sum(q)");
        assert!(cache.find("other", "dev").is_none());
        assert_eq!(cache.names(), ["q"]);
        assert!(cache.serves_name("q") && !cache.serves_name("other"));
    }
}
