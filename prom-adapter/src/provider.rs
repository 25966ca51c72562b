//! Rules + a [`PromApi`] → API answers: discovery, custom and external metric values, and
//! (in `resource`) pod and node usage for `metrics.k8s.io`.
//!
//! Handlers stay thin: they parse a [`Route`](crate::api::route::Route) and call one method
//! here; tests drive these methods with the fake backend.

mod report;
mod resource;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::api::ApiError;
use crate::api::route::{CustomRequest, ExternalRequest, ObjectName};
use crate::api::types::{ApiResource, ExternalMetricValue, MetricValue, ObjectReference, rfc3339};
use crate::discovery::{CustomEntry, ExternalEntry, Registry, RuleFindings};
use crate::named;
use crate::objects::{ObjectResolver, ObjectsError};
use crate::prom::{Labels, PromApi, PromError, QueryResult, Sample};
use crate::quantity::{self, ValueError};
use crate::rules::named::NamedQuery;
use crate::rules::query::{self, Objects, QueryError, RenderedQuery, quote};
use crate::rules::resources::GroupResource;
use crate::rules::{EmptyPolicy, NonFinitePolicy, Rule, RuleSet};
use crate::selector::Selector;
use crate::telemetry::{Metrics, now_unix};

/// On-demand relists (for a metric not listed yet) run at most this often, so requests for
/// a metric that doesn't exist can't turn into a relist each.
const ON_DEMAND_GAP: Duration = Duration::from_secs(5);
/// How long a request waits for a relist already running, and for its own on-demand one:
/// the aggregator gives up on slow answers, and a 404 now beats a timeout later.
const ON_DEMAND_BUDGET: Duration = Duration::from_secs(3);

/// How a relist went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelistOutcome {
    /// Distinct series queries asked.
    pub queries: usize,
    /// Of which failed (their rules keep their last findings).
    pub failed: usize,
    /// Custom metrics listed afterwards.
    pub custom: usize,
    /// External metrics listed afterwards.
    pub external: usize,
}

/// The adapter's core, generic over the backend type.
pub struct Provider<P> {
    backends: Vec<Backend<P>>,
    catalog: RwLock<Arc<Catalog>>,
    metrics: Arc<Metrics>,
    max_age: Duration,
    last_relist: tokio::sync::Mutex<Option<Instant>>,
    objects: Option<Arc<dyn ObjectResolver>>,
    on_demand_gap: Duration,
    /// The named queries of the config and of `PrometheusMetric` objects, with their values.
    named: named::Cache,
    /// The `PrometheusMetric` objects' queries (the config's are in the catalog's rules).
    object_queries: std::sync::Mutex<Vec<NamedQuery>>,
    /// The last answer of each metric requested, for `/status`.
    served: std::sync::Mutex<BTreeMap<ServedKey, Served>>,
    relist_interval: Duration,
}

/// One named backend. Its queries in flight are its own: identical PromQL sent to two
/// backends is two different questions.
struct Backend<P> {
    name: String,
    /// For `/status`: where it is, without credentials.
    url: String,
    api: P,
    inflight: std::sync::Mutex<HashMap<String, InflightQuery>>,
    health: std::sync::Mutex<Health>,
    admission: Admission,
}

/// A backend's recent calls, for `/status`.
#[derive(Debug, Default)]
struct Health {
    up: Option<bool>,
    last_call: Option<f64>,
    latency: Option<Duration>,
    last_error: Option<(f64, String)>,
    calls: u64,
    errors: u64,
}

/// API (`custom`, `external`), namespace (`-` for root-scoped), resource (`-` for external)
/// and metric.
type ServedKey = (&'static str, String, String, String);

/// The last answer for one metric.
#[derive(Debug, Clone)]
struct Served {
    at: f64,
    items: usize,
    value: Option<String>,
    sample_time: Option<String>,
    error: Option<String>,
}

/// At most this many metrics are remembered for `/status`; later ones are not (the list
/// is bounded by what discovery finds, but requests can name anything).
const MAX_SERVED: usize = 4096;

/// What one rule's discovery last did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleDiscovery {
    /// When its series query last answered (unix seconds).
    pub last_ok: Option<f64>,
    /// Its last error, while it keeps failing.
    pub last_error: Option<String>,
}

/// The name of the backend built from the single-backend settings (`prometheus_url`).
pub const DEFAULT_BACKEND: &str = "default";

/// The rules and what discovery found with them, swapped together so a registry entry's rule
/// index always points into the rules it was found with (a reload replaces both).
#[derive(Debug)]
pub struct Catalog {
    /// The rules.
    pub rules: Arc<RuleSet>,
    /// The metrics discovered with them.
    pub registry: Arc<Registry>,
    /// Per rule, in [`RuleSet::iter`] order: how its discovery went.
    pub discovery: Arc<Vec<RuleDiscovery>>,
}

/// Distinct series queries by backend (`None`: the first), with the rules each serves.
type SeriesQueries = Vec<((Option<String>, String), Vec<usize>)>;

/// A query in flight: later identical requests wait for its answer instead of asking again.
type InflightQuery = tokio::sync::watch::Receiver<Option<Result<QueryResult, PromError>>>;

fn backend_error(backend: &str, e: &PromError) -> ApiError {
    let message = format!("unable to fetch metrics from Prometheus backend `{backend}`: {e}");
    match e {
        PromError::Overloaded { .. } => ApiError::Overloaded(message),
        _ => ApiError::Unavailable(message),
    }
}

/// Queries one backend may run at once by default.
pub const DEFAULT_MAX_CONCURRENT_QUERIES: usize = 32;
/// Queries that may wait for a turn by default; more are refused at once (503, `Retry-After`).
pub const DEFAULT_MAX_QUEUED_QUERIES: usize = 256;

/// A backend's admission: at most `permits` calls at once and `max_queued` waiting.
#[derive(Debug)]
struct Admission {
    permits: tokio::sync::Semaphore,
    running: usize,
    queued: std::sync::atomic::AtomicUsize,
    max_queued: usize,
}

impl Admission {
    fn new(running: usize, max_queued: usize) -> Admission {
        Admission {
            permits: tokio::sync::Semaphore::new(running.max(1)),
            running: running.max(1),
            queued: std::sync::atomic::AtomicUsize::new(0),
            max_queued,
        }
    }

    /// A turn now, after a wait in the bounded queue, or a refusal when that queue is full.
    /// `waiting` shows the queue's length.
    async fn admit(
        &self,
        waiting: &prometheus::IntGauge,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, PromError> {
        use std::sync::atomic::Ordering;
        let refused = || PromError::Overloaded {
            running: self.running,
            queued: self.max_queued,
        };
        if let Ok(permit) = self.permits.try_acquire() {
            return Ok(permit);
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(refused());
        }
        /// Leaves the queue however the wait ends, cancellation included.
        struct Leave<'a>(&'a std::sync::atomic::AtomicUsize, &'a prometheus::IntGauge);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                self.1.dec();
            }
        }
        waiting.inc();
        let _leave = Leave(&self.queued, waiting);
        self.permits.acquire().await.map_err(|_| refused())
    }
}

fn bad_selector(param: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(format!("invalid {param}: {e}"))
}

fn query_error(e: QueryError) -> ApiError {
    match e {
        QueryError::Selector(e) => bad_selector("selector", e),
        QueryError::NoLabelFor(r) => ApiError::NotFound(format!(
            "the rule serving this metric has no label for resource {r}"
        )),
        QueryError::Template(e) => ApiError::Internal(format!("metricsQuery: {e}")),
    }
}

impl<P: PromApi> Provider<P> {
    /// A provider with one backend, named [`DEFAULT_BACKEND`], serving what the rules name
    /// statically until the first relist.
    pub fn new(prom: P, rules: Arc<RuleSet>, metrics: Arc<Metrics>, max_age: Duration) -> Self {
        Self::with_backends(
            vec![(DEFAULT_BACKEND.to_owned(), prom)],
            rules,
            metrics,
            max_age,
        )
    }

    /// A provider over named backends; a rule without `backend` uses the first.
    pub fn with_backends(
        backends: Vec<(String, P)>,
        rules: Arc<RuleSet>,
        metrics: Arc<Metrics>,
        max_age: Duration,
    ) -> Self {
        let registry = Arc::new(Registry::from_rules(&rules));
        let backends = backends
            .into_iter()
            .map(|(name, api)| Backend {
                name,
                url: String::new(),
                api,
                inflight: std::sync::Mutex::new(HashMap::new()),
                health: std::sync::Mutex::new(Health::default()),
                admission: Admission::new(
                    DEFAULT_MAX_CONCURRENT_QUERIES,
                    DEFAULT_MAX_QUEUED_QUERIES,
                ),
            })
            .collect();
        let named = named::Cache::new(&rules.queries, Instant::now());
        let discovery = Arc::new(vec![RuleDiscovery::default(); rules.iter().count()]);
        let provider = Self {
            backends,
            catalog: RwLock::new(Arc::new(Catalog {
                rules,
                registry,
                discovery,
            })),
            metrics,
            max_age,
            last_relist: tokio::sync::Mutex::new(None),
            objects: None,
            on_demand_gap: ON_DEMAND_GAP,
            named,
            object_queries: std::sync::Mutex::new(Vec::new()),
            served: std::sync::Mutex::new(BTreeMap::new()),
            relist_interval: Duration::from_secs(60),
        };
        provider.publish_counts();
        provider
    }

    /// Bounds each backend's queries: `running` at once, `queued` waiting; beyond that a
    /// request is refused at once (503 with `Retry-After`).
    pub fn with_query_limits(mut self, running: usize, queued: usize) -> Self {
        for b in &mut self.backends {
            b.admission = Admission::new(running, queued);
        }
        self
    }

    /// Names each backend's URL (by backend name) and the relist period, for `/status`.
    pub fn with_status_info(mut self, urls: &[(String, String)], relist: Duration) -> Self {
        for b in &mut self.backends {
            if let Some((_, url)) = urls.iter().find(|(n, _)| *n == b.name) {
                b.url.clone_from(url);
            }
        }
        self.relist_interval = relist;
        self
    }

    /// The backend a rule names, or the first one.
    fn backend(&self, name: Option<&str>) -> Result<&Backend<P>, ApiError> {
        let found = match name {
            None => self.backends.first(),
            Some(n) => self.backends.iter().find(|b| b.name == n),
        };
        found.ok_or_else(|| {
            ApiError::Unavailable(format!(
                "the rule's backend `{}` is not configured (backends change only on restart)",
                name.unwrap_or(DEFAULT_BACKEND)
            ))
        })
    }

    /// The names of the backends, in configured order.
    pub fn backend_names(&self) -> Vec<&str> {
        self.backends.iter().map(|b| b.name.as_str()).collect()
    }

    /// Resolves objects through `objects` (the watch cache) instead of series labels.
    pub fn with_objects(mut self, objects: Arc<dyn ObjectResolver>) -> Self {
        self.objects = Some(objects);
        self
    }

    /// The rules and registry served now.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog
            .read()
            .map(|c| Arc::clone(&c))
            .unwrap_or_else(|poisoned| Arc::clone(&poisoned.into_inner()))
    }

    /// The rules served.
    pub fn rules(&self) -> Arc<RuleSet> {
        Arc::clone(&self.catalog().rules)
    }

    /// The current registry.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.catalog().registry)
    }

    fn store(&self, catalog: Catalog) {
        let catalog = Arc::new(catalog);
        match self.catalog.write() {
            Ok(mut c) => *c = catalog,
            Err(poisoned) => *poisoned.into_inner() = catalog,
        }
        self.publish_counts();
    }

    /// Swaps in reloaded rules: served at once with what they name by themselves, and
    /// discovered in full by the next relist (which the caller starts).
    pub fn replace_rules(&self, rules: RuleSet) {
        let registry = Arc::new(Registry::from_rules(&rules));
        let discovery = Arc::new(vec![RuleDiscovery::default(); rules.iter().count()]);
        self.store(Catalog {
            rules: Arc::new(rules),
            registry,
            discovery,
        });
        self.sync_named();
    }

    /// Swaps in the `PrometheusMetric` objects' queries.
    pub fn replace_object_queries(&self, queries: Vec<NamedQuery>) {
        *self
            .object_queries
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = queries;
        self.sync_named();
    }

    /// The config's named queries, then the objects'.
    fn sync_named(&self) {
        let mut all = self.rules().queries.clone();
        all.extend(
            self.object_queries
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned(),
        );
        self.named.replace(&all, Instant::now());
        self.publish_counts();
    }

    /// The self-metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The named queries and their values.
    pub fn named(&self) -> &named::Cache {
        &self.named
    }

    fn publish_counts(&self) {
        let r = self.registry();
        self.metrics
            .discovered
            .with_label_values(&["custom"])
            .set(r.custom_len() as i64);
        self.metrics
            .discovered
            .with_label_values(&["external"])
            .set(self.resource_list(true).len() as i64);
    }

    async fn timed<T>(
        &self,
        backend: &str,
        endpoint: &'static str,
        call: impl Future<Output = Result<T, PromError>>,
    ) -> Result<T, PromError> {
        let found = self.backends.iter().find(|b| b.name == backend);
        let admitted = match found {
            Some(b) => {
                let waiting = self.metrics.backend_waiting.with_label_values(&[backend]);
                b.admission.admit(&waiting).await.map(Some)
            }
            None => Ok(None),
        };
        let _permit = match admitted {
            Ok(permit) => permit,
            Err(e) => {
                // Not the backend's failure: its health and error counts stay as they are.
                self.metrics
                    .backend_refused
                    .with_label_values(&[backend])
                    .inc();
                return Err(e);
            }
        };
        let started = Instant::now();
        let result = call.await;
        let took = started.elapsed();
        self.metrics
            .backend_seconds
            .with_label_values(&[backend, endpoint])
            .observe(took.as_secs_f64());
        let up = match &result {
            Ok(_) => true,
            Err(e) => {
                self.metrics
                    .backend_errors
                    .with_label_values(&[backend, endpoint, e.kind()])
                    .inc();
                // A PromQL error is an answer: the backend is there.
                matches!(e, PromError::Api { .. })
            }
        };
        if let Some(b) = found {
            let mut h = b.health.lock().unwrap_or_else(PoisonError::into_inner);
            let now = now_unix();
            h.calls += 1;
            h.last_call = Some(now);
            h.latency = Some(took);
            h.up = Some(up);
            if let Err(e) = &result {
                h.errors += 1;
                h.last_error = Some((now, e.to_string()));
            }
        }
        self.metrics
            .backend_up
            .with_label_values(&[backend])
            .set(i64::from(up));
        result
    }

    /// Runs every rule's series query and swaps in the new registry. A failing query keeps
    /// its rules' last findings; the others refresh.
    pub async fn relist(&self) -> RelistOutcome {
        let mut last = self.last_relist.lock().await;
        let outcome = self.relist_locked().await;
        *last = Some(Instant::now());
        outcome
    }

    async fn relist_locked(&self) -> RelistOutcome {
        let started = Instant::now();
        let end = SystemTime::now();
        let start = end.checked_sub(self.max_age).unwrap_or(UNIX_EPOCH);
        let catalog = self.catalog();
        let rules: Vec<&Rule> = catalog.rules.iter().collect();
        let mut findings: Vec<Option<RuleFindings>> = vec![None; rules.len()];
        let mut discovery = (*catalog.discovery).clone();
        discovery.resize(rules.len(), RuleDiscovery::default());
        let queries = self.series_queries(&rules);
        let mut failed = 0;
        for ((backend, selector), indexes) in &queries {
            let answer = match self.backend(backend.as_deref()) {
                Ok(b) => {
                    self.timed(
                        &b.name,
                        "series",
                        b.api
                            .series_shapes(std::slice::from_ref(selector), start, end),
                    )
                    .await
                }
                Err(e) => Err(PromError::Unreachable {
                    reason: e.to_string(),
                }),
            };
            match answer {
                Ok(series) => {
                    for &i in indexes {
                        if let (Some(rule), Some(slot)) = (rules.get(i), findings.get_mut(i)) {
                            *slot = Some(RuleFindings::from_series(rule, &series));
                        }
                        if let Some(d) = discovery.get_mut(i) {
                            d.last_ok = Some(now_unix());
                            d.last_error = None;
                        }
                    }
                }
                Err(e) => {
                    failed += 1;
                    for &i in indexes {
                        if let Some(d) = discovery.get_mut(i) {
                            d.last_error = Some(e.to_string());
                        }
                    }
                    tracing::warn!(backend = backend.as_deref().unwrap_or_else(|| self.first_name()), series_query = %selector, error = %e, "Discovery query failed; keeping this rule's last metrics.");
                }
            }
        }
        let next = catalog.registry.update(&catalog.rules, findings);
        let outcome = RelistOutcome {
            queries: queries.len(),
            failed,
            custom: next.custom_len(),
            external: next.external_len(),
        };
        // Rules reloaded while this ran: these findings belong to the old ones.
        if Arc::ptr_eq(&self.catalog().rules, &catalog.rules) {
            self.store(Catalog {
                rules: Arc::clone(&catalog.rules),
                registry: Arc::new(next),
                discovery: Arc::new(discovery),
            });
        }
        let result = match failed {
            0 => "ok",
            n if n == queries.len() && n > 0 => "failed",
            _ => "partial",
        };
        self.metrics.relists.with_label_values(&[result]).inc();
        self.metrics
            .relist_seconds
            .with_label_values(&[result])
            .observe(started.elapsed().as_secs_f64());
        self.metrics.last_relist.set(now_unix());
        if failed == 0 {
            self.metrics.last_relist_success.set(now_unix());
        }
        tracing::debug!(
            queries = outcome.queries,
            failed,
            custom = outcome.custom,
            external = outcome.external,
            "Discovery finished."
        );
        outcome
    }

    fn first_name(&self) -> &str {
        self.backends
            .first()
            .map_or(DEFAULT_BACKEND, |b| b.name.as_str())
    }

    /// Each distinct (backend, series query) once, with the indexes (into `rules`) of the
    /// rules it serves, in rule order: one backend down fails only its own queries.
    fn series_queries(&self, rules: &[&Rule]) -> SeriesQueries {
        let mut out = SeriesQueries::new();
        for (i, rule) in rules.iter().enumerate() {
            // A rule naming the first backend shares its queries with rules naming none.
            let backend = rule
                .backend
                .clone()
                .filter(|b| b.as_str() != self.first_name());
            let key = (backend, rule.series_query.clone());
            match out.iter_mut().find(|(k, _)| *k == key) {
                Some((_, indexes)) => indexes.push(i),
                None => out.push((key, vec![i])),
            }
        }
        out
    }

    /// One relist for a metric not listed yet, unless one ran very recently or while this
    /// request waited for the lock (concurrent misses share it).
    async fn relist_on_demand(&self) {
        let asked = Instant::now();
        let Ok(mut last) = tokio::time::timeout(ON_DEMAND_BUDGET, self.last_relist.lock()).await
        else {
            return;
        };
        if last.is_some_and(|t| t >= asked || asked.duration_since(t) < self.on_demand_gap) {
            return;
        }
        let remaining = ON_DEMAND_BUDGET.saturating_sub(asked.elapsed());
        if tokio::time::timeout(remaining, self.relist_locked())
            .await
            .is_err()
        {
            tracing::debug!("On-demand discovery ran out of time; answering with what is listed.");
        }
        *last = Some(Instant::now());
    }

    /// Whether a rule here serves the external metric (as listed now).
    pub fn serves_external(&self, metric: &str) -> bool {
        self.catalog().registry.external(metric).is_some() || self.named.serves_name(metric)
    }

    /// The resources listed for one group version.
    pub fn resource_list(&self, external: bool) -> Vec<ApiResource> {
        let catalog = self.catalog();
        let listed = |r: &Registry| {
            if external {
                r.external_resources()
            } else {
                r.custom_resources()
            }
        };
        let mut list = listed(&catalog.registry);
        if list.is_empty() {
            // Nothing discovered: what the rules name by themselves is better than nothing.
            list = listed(&Registry::from_rules(&catalog.rules));
        }
        if external {
            // A named query shadows an external rule's metric of the same name.
            let names = self.named.names();
            list.retain(|r| !names.contains(&r.name));
            list.extend(names.into_iter().map(|name| ApiResource {
                name,
                singular_name: String::new(),
                namespaced: true,
                kind: "ExternalMetricValueList".into(),
                verbs: vec!["get".into()],
            }));
            list.sort();
        }
        list
    }

    /// The catalog a metric was found in, and its entry there.
    async fn custom_entry(
        &self,
        gr: &GroupResource,
        metric: &str,
    ) -> Result<(Arc<Catalog>, CustomEntry), ApiError> {
        let catalog = self.catalog();
        if let Some(e) = catalog.registry.custom(gr, metric) {
            let e = e.clone();
            return Ok((catalog, e));
        }
        self.relist_on_demand().await;
        let catalog = self.catalog();
        let entry = catalog
            .registry
            .custom(gr, metric)
            .cloned()
            .ok_or_else(|| ApiError::metric_not_found(metric, &gr.to_string()))?;
        Ok((catalog, entry))
    }

    async fn external_entry(
        &self,
        metric: &str,
    ) -> Result<(Arc<Catalog>, ExternalEntry), ApiError> {
        let catalog = self.catalog();
        if let Some(e) = catalog.registry.external(metric) {
            let e = e.clone();
            return Ok((catalog, e));
        }
        self.relist_on_demand().await;
        let catalog = self.catalog();
        let entry = catalog
            .registry
            .external(metric)
            .cloned()
            .ok_or_else(|| ApiError::metric_not_found(metric, "external metrics"))?;
        Ok((catalog, entry))
    }

    fn plan_custom<'r>(
        rules: &'r RuleSet,
        req: &CustomRequest,
        entry: &CustomEntry,
        metric_selector: &Selector,
    ) -> Result<(&'r Rule, RenderedQuery), ApiError> {
        let rule = rules
            .custom
            .get(entry.rule)
            .ok_or_else(|| ApiError::Internal("rule index out of range".into()))?;
        let gr = &entry.info.group_resource;
        let namespace = req.namespace.as_deref().filter(|_| entry.info.namespaced);
        let objects = match &req.name {
            ObjectName::Named(n) => Objects::Named(n),
            ObjectName::All => Objects::All,
        };
        let q = query::custom(
            rule,
            &entry.series,
            gr,
            namespace,
            &objects,
            metric_selector,
        )
        .map_err(query_error)?;
        Ok((rule, q))
    }

    /// The PromQL a custom-metrics request runs (for `prom-adapter render`).
    pub async fn render_custom(&self, req: &CustomRequest) -> Result<String, ApiError> {
        let gr = GroupResource::parse(&req.resource);
        let metric_selector = Selector::parse(&req.metric_label_selector)
            .map_err(|e| bad_selector("metricLabelSelector", e))?;
        let (catalog, entry) = self.custom_entry(&gr, &req.metric).await?;
        Self::plan_custom(&catalog.rules, req, &entry, &metric_selector).map(|(_, q)| q.promql)
    }

    /// The PromQL an external-metrics request runs.
    pub async fn render_external(&self, req: &ExternalRequest) -> Result<String, ApiError> {
        let selector =
            Selector::parse(&req.label_selector).map_err(|e| bad_selector("labelSelector", e))?;
        let (catalog, entry) = self.external_entry(&req.metric).await?;
        let rule = Self::external_rule(&catalog.rules, &entry)?;
        query::external(rule, &entry.series, &req.namespace, &selector)
            .map(|q| q.promql)
            .map_err(query_error)
    }

    fn external_rule<'r>(rules: &'r RuleSet, entry: &ExternalEntry) -> Result<&'r Rule, ApiError> {
        rules
            .external
            .get(entry.rule)
            .ok_or_else(|| ApiError::Internal("rule index out of range".into()))
    }

    /// Runs `promql`, sharing one backend call among identical concurrent requests: every
    /// HPA of a workload, and every replica's sync, asks the same thing at the same time.
    async fn run_query(&self, backend: &Backend<P>, promql: &str) -> Result<QueryResult, ApiError> {
        // Counted once per request that waited, even if its leader is cancelled.
        let mut joined_before = false;
        loop {
            let joined = {
                let mut inflight = backend
                    .inflight
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                match inflight.get(promql) {
                    Some(rx) => Ok(rx.clone()),
                    None => {
                        let (tx, rx) = tokio::sync::watch::channel(None);
                        inflight.insert(promql.to_owned(), rx);
                        Err(tx)
                    }
                }
            };
            let mut rx = match joined {
                Ok(rx) => rx,
                Err(tx) => return self.lead_query(backend, promql, tx).await,
            };
            if !joined_before {
                self.metrics
                    .coalesced
                    .with_label_values(&[&backend.name])
                    .inc();
                joined_before = true;
            }
            // A leader whose request was dropped closes the channel without an answer: then
            // this request runs the query itself.
            if let Ok(answer) = rx.wait_for(Option::is_some).await
                && let Some(result) = answer.clone()
            {
                return result.map_err(|e| backend_error(&backend.name, &e));
            }
        }
    }

    async fn lead_query(
        &self,
        backend: &Backend<P>,
        promql: &str,
        tx: tokio::sync::watch::Sender<Option<Result<QueryResult, PromError>>>,
    ) -> Result<QueryResult, ApiError> {
        /// Clears the in-flight entry however the leader ends, cancellation included.
        struct Done<'a>(
            &'a std::sync::Mutex<HashMap<String, InflightQuery>>,
            &'a str,
        );
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(self.1);
            }
        }
        let _done = Done(&backend.inflight, promql);
        let result = self
            .timed(&backend.name, "query", backend.api.query(promql, None))
            .await;
        if let Err(e) = &result {
            tracing::warn!(backend = %backend.name, promql, error = %e, "Metrics query failed.");
        }
        tx.send_replace(Some(result.clone()));
        result.map_err(|e| backend_error(&backend.name, &e))
    }

    /// Names of the objects whose series match `selector`: without a cluster to ask, the
    /// series' own labels stand in for the objects' labels.
    async fn objects_matching(
        &self,
        backend: &Backend<P>,
        series: &str,
        object_label: &str,
        namespace: Option<(&str, &str)>,
        selector: &Selector,
    ) -> Result<BTreeSet<String>, ApiError> {
        let mut matchers = vec![format!("__name__={}", quote(series))];
        if let Some((label, ns)) = namespace {
            matchers.push(format!("{label}={}", quote(ns)));
        }
        matchers.extend(
            selector
                .to_prom_matchers()
                .map_err(|e| bad_selector("labelSelector", e))?,
        );
        let end = SystemTime::now();
        let start = end.checked_sub(self.max_age).unwrap_or(UNIX_EPOCH);
        let found = self
            .timed(
                &backend.name,
                "series",
                backend
                    .api
                    .series(&[format!("{{{}}}", matchers.join(","))], start, end),
            )
            .await
            .map_err(|e| backend_error(&backend.name, &e))?;
        Ok(found
            .into_iter()
            .filter_map(|mut l: Labels| l.remove(object_label))
            .collect())
    }

    /// The objects a request is about, from the watch cache: for `*`, the names matching the
    /// selector (the HPA averages every item it gets, so nothing outside the selector may be
    /// returned); for a named object, that name, or 404 when it doesn't exist. `None` when
    /// there is no cache or it doesn't watch the resource (then series labels stand in).
    fn objects_from_cache(
        &self,
        gr: &GroupResource,
        namespace: Option<&str>,
        name: &ObjectName,
        selector: &Selector,
    ) -> Result<Option<BTreeSet<String>>, ApiError> {
        let Some(objects) = &self.objects else {
            return Ok(None);
        };
        let answer = match name {
            ObjectName::All => objects.select(gr, namespace, selector),
            ObjectName::Named(n) => objects.exists(gr, namespace, n).map(|exists| {
                if exists {
                    BTreeSet::from([n.clone()])
                } else {
                    BTreeSet::new()
                }
            }),
        };
        match answer {
            Ok(names) if names.is_empty() => match name {
                ObjectName::Named(n) => Err(ApiError::NotFound(format!("{gr} \"{n}\" not found"))),
                ObjectName::All => Ok(Some(names)),
            },
            Ok(names) => Ok(Some(names)),
            Err(ObjectsError::NotWatched { .. }) => Ok(None),
            Err(e @ ObjectsError::NotSynced { .. }) => Err(ApiError::Unavailable(e.to_string())),
        }
    }

    /// A sample's value as a Quantity under the rule's policies; `None` means skip it.
    fn quantity_of(
        &self,
        rule: &Rule,
        value: &str,
        what: &str,
    ) -> Result<Option<Quantity>, ApiError> {
        match quantity::from_prometheus(value) {
            Ok(c) => {
                if c.clamped {
                    self.metrics.clamped.inc();
                    tracing::debug!(what, value, "Clamped a value to the HPA's range.");
                }
                Ok(Some(c.quantity))
            }
            Err(
                e @ (ValueError::NaN | ValueError::PositiveInfinity | ValueError::NegativeInfinity),
            ) => {
                let policy = rule.on_non_finite;
                let label = match policy {
                    NonFinitePolicy::Error => "error",
                    NonFinitePolicy::Zero => "zero",
                    NonFinitePolicy::Skip => "skip",
                };
                self.metrics.non_finite.with_label_values(&[label]).inc();
                match policy {
                    NonFinitePolicy::Error => Err(ApiError::Unavailable(format!(
                        "{what}: {e} (the rule's onNonFinite is error; set zero or skip to serve it)"
                    ))),
                    NonFinitePolicy::Zero => Ok(Some(Quantity("0".into()))),
                    NonFinitePolicy::Skip => Ok(None),
                }
            }
            Err(e) => Err(ApiError::Unavailable(format!("{what}: {e}"))),
        }
    }

    /// A custom-metrics request.
    pub async fn custom(&self, req: &CustomRequest) -> Result<Vec<MetricValue>, ApiError> {
        let answer = self.custom_uncounted(req).await;
        let first = answer.as_ref().ok().and_then(|items| items.first());
        self.remember(
            (
                "custom",
                req.namespace.clone().unwrap_or_else(|| "-".into()),
                req.resource.clone(),
                req.metric.clone(),
            ),
            answer.as_ref().map_or(0, Vec::len),
            first.map(|i| (i.value.0.clone(), i.timestamp.clone())),
            answer.as_ref().err(),
        );
        answer
    }

    /// An external-metrics request: a named query's cached value, or an external rule's
    /// query run now.
    pub async fn external(
        &self,
        req: &ExternalRequest,
    ) -> Result<Vec<ExternalMetricValue>, ApiError> {
        let answer = match self.named.find(&req.metric, &req.namespace) {
            Some(slot) => Selector::parse(&req.label_selector)
                .map_err(|e| bad_selector("labelSelector", e))
                .and_then(|selector| {
                    let answer = slot.answer(&selector, now_unix());
                    let outcome = match &answer {
                        Ok(_) => "ok",
                        Err(ApiError::Stale(_)) => "stale",
                        Err(_) => "error",
                    };
                    self.metrics
                        .named_answers
                        .with_label_values(&[outcome])
                        .inc();
                    answer
                }),
            None => self.external_rule_answer(req).await,
        };
        let first = answer.as_ref().ok().and_then(|items| items.first());
        self.remember(
            (
                "external",
                req.namespace.clone(),
                "-".into(),
                req.metric.clone(),
            ),
            answer.as_ref().map_or(0, Vec::len),
            first.map(|i| (i.value.0.clone(), i.timestamp.clone())),
            answer.as_ref().err(),
        );
        answer
    }

    /// Files a request's outcome for `/status`.
    fn remember(
        &self,
        key: ServedKey,
        items: usize,
        first: Option<(String, String)>,
        error: Option<&ApiError>,
    ) {
        let mut served = self.served.lock().unwrap_or_else(PoisonError::into_inner);
        if served.len() >= MAX_SERVED && !served.contains_key(&key) {
            return;
        }
        let (value, sample_time) = first.unzip();
        served.insert(
            key,
            Served {
                at: now_unix(),
                items,
                value,
                sample_time,
                error: error.map(ToString::to_string),
            },
        );
    }

    /// Runs the named query of `slot` on its backend and files the outcome; a change
    /// between working and failing is logged.
    pub async fn refresh_named(&self, slot: &named::Slot) {
        let started = Instant::now();
        let outcome = match self.backend(slot.query.backend.as_deref()) {
            Ok(b) => self
                .run_query(b, &slot.query.query)
                .await
                .map_err(|e| e.to_string())
                .and_then(named::value_from),
            Err(e) => Err(e.to_string()),
        };
        let result = if outcome.is_ok() { "ok" } else { "error" };
        self.metrics
            .named_refreshes
            .with_label_values(&[result])
            .inc();
        match (
            &outcome,
            slot.record(outcome.clone(), started, Instant::now(), now_unix()),
        ) {
            (Err(e), true) => {
                tracing::warn!(query = %slot.query.name, source = %slot.query.source.describe(), error = %e, "Named query failed; its last value is served until it is maxAge old.")
            }
            (Ok(_), true) => tracing::info!(query = %slot.query.name, "Named query answers again."),
            _ => {}
        }
    }

    /// A custom-metrics request, not filed for `/status`.
    async fn custom_uncounted(&self, req: &CustomRequest) -> Result<Vec<MetricValue>, ApiError> {
        let gr = GroupResource::parse(&req.resource);
        let metric_selector = Selector::parse(&req.metric_label_selector)
            .map_err(|e| bad_selector("metricLabelSelector", e))?;
        let object_selector =
            Selector::parse(&req.label_selector).map_err(|e| bad_selector("labelSelector", e))?;
        let (catalog, entry) = self.custom_entry(&gr, &req.metric).await?;
        let (rule, q) = Self::plan_custom(&catalog.rules, req, &entry, &metric_selector)?;
        let backend = self.backend(rule.backend.as_deref())?;
        let object_label = q.object_label.clone().unwrap_or_default();
        let namespace = req.namespace.as_deref().filter(|_| entry.info.namespaced);
        let cached = self.objects_from_cache(
            &entry.info.group_resource,
            namespace,
            &req.name,
            &object_selector,
        )?;
        let selected = match (&req.name, cached, object_selector.is_empty()) {
            (_, Some(names), _) => Some(names),
            (ObjectName::All, None, false) => {
                let ns_label = rule.resources.namespace_label();
                let ns = ns_label.as_deref().zip(namespace);
                Some(
                    self.objects_matching(
                        backend,
                        &entry.series,
                        &object_label,
                        ns,
                        &object_selector,
                    )
                    .await?,
                )
            }
            _ => None,
        };
        if selected.as_ref().is_some_and(BTreeSet::is_empty) {
            return Err(ApiError::NotFound(format!(
                "the server could not find the metric {} for {gr} with selector {}",
                req.metric, req.label_selector
            )));
        }
        let samples = match self.run_query(backend, &q.promql).await? {
            QueryResult::Vector(samples) => samples,
            other => {
                return Err(ApiError::Internal(format!(
                    "metricsQuery must return a vector, it returned a {}: {}",
                    other.result_type(),
                    q.promql
                )));
            }
        };
        let echo = if metric_selector.is_empty() {
            None
        } else {
            metric_selector.to_label_selector().ok()
        };
        let window = Some(rule.window.as_secs() as i64);
        let describe = |name: &str| ObjectReference {
            kind: entry.info.kind.clone(),
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
            api_version: entry.info.api_version.clone(),
        };
        let mut seen = BTreeSet::new();
        let mut items = Vec::with_capacity(samples.len());
        for Sample {
            labels,
            timestamp,
            value,
        } in &samples
        {
            let Some(object) = labels.get(&object_label) else {
                continue;
            };
            let wanted = match &req.name {
                ObjectName::Named(n) => object == n,
                ObjectName::All => selected.as_ref().is_none_or(|s| s.contains(object)),
            };
            if !wanted {
                continue;
            }
            if !seen.insert(object.clone()) {
                return Err(ApiError::Internal(format!(
                    "metricsQuery returned several samples for {gr} {object}; it must aggregate by {object_label}: {}",
                    q.promql
                )));
            }
            let what = format!("metric {} for {gr} {object}", req.metric);
            if let Some(value) = self.quantity_of(rule, value, &what)? {
                items.push(MetricValue {
                    described_object: describe(object),
                    metric: req.metric.clone(),
                    selector: echo.clone(),
                    timestamp: rfc3339(*timestamp),
                    window_seconds: window,
                    value,
                });
            }
        }
        if let ObjectName::Named(name) = &req.name
            && items.is_empty()
        {
            self.metrics.empty.with_label_values(&["custom"]).inc();
            match rule.on_empty {
                EmptyPolicy::Error => {
                    return Err(ApiError::NotFound(format!(
                        "the server could not find the metric {} for {gr} {name}",
                        req.metric
                    )));
                }
                EmptyPolicy::Zero => items.push(MetricValue {
                    described_object: describe(name),
                    metric: req.metric.clone(),
                    selector: echo,
                    timestamp: rfc3339(now_unix()),
                    window_seconds: window,
                    value: Quantity("0".into()),
                }),
            }
        }
        Ok(items)
    }

    /// An external rule's answer, the query run now.
    async fn external_rule_answer(
        &self,
        req: &ExternalRequest,
    ) -> Result<Vec<ExternalMetricValue>, ApiError> {
        let selector =
            Selector::parse(&req.label_selector).map_err(|e| bad_selector("labelSelector", e))?;
        let (catalog, entry) = self.external_entry(&req.metric).await?;
        let rule = Self::external_rule(&catalog.rules, &entry)?;
        let backend = self.backend(rule.backend.as_deref())?;
        let q =
            query::external(rule, &entry.series, &req.namespace, &selector).map_err(query_error)?;
        let window = Some(rule.window.as_secs() as i64);
        let what = format!("external metric {}", req.metric);
        let mut items = Vec::new();
        match self.run_query(backend, &q.promql).await? {
            QueryResult::Vector(samples) => {
                for s in samples {
                    if let Some(value) = self.quantity_of(rule, &s.value, &what)? {
                        items.push(ExternalMetricValue {
                            metric_name: req.metric.clone(),
                            metric_labels: Some(s.labels),
                            timestamp: rfc3339(s.timestamp),
                            window_seconds: window,
                            value,
                        });
                    }
                }
            }
            QueryResult::Scalar { timestamp, value } => {
                if let Some(value) = self.quantity_of(rule, &value, &what)? {
                    items.push(ExternalMetricValue {
                        metric_name: req.metric.clone(),
                        metric_labels: None,
                        timestamp: rfc3339(timestamp),
                        window_seconds: window,
                        value,
                    });
                }
            }
            other => {
                return Err(ApiError::Internal(format!(
                    "metricsQuery must return a vector or a scalar, it returned a {}: {}",
                    other.result_type(),
                    q.promql
                )));
            }
        }
        if items.is_empty() {
            self.metrics.empty.with_label_values(&["external"]).inc();
            match rule.on_empty {
                EmptyPolicy::Error => {
                    return Err(ApiError::Unavailable(format!(
                        "{what}: the query returned no data (the rule's onEmpty is error; set zero to serve 0): {}",
                        q.promql
                    )));
                }
                EmptyPolicy::Zero => items.push(ExternalMetricValue {
                    metric_name: req.metric.clone(),
                    metric_labels: None,
                    timestamp: rfc3339(now_unix()),
                    window_seconds: window,
                    value: Quantity("0".into()),
                }),
            }
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::api::types::CustomVersion;
    use crate::prom::fake::{FakeProm, labels, sample};
    use crate::rules::from_yaml;

    const RULES: &str = r#"
rules:
- seriesQuery: '{namespace!="",pod!=""}'
  resources:
    overrides:
      namespace: {resource: "namespace"}
      pod: {resource: "pod"}
  name: {matches: "^(.*)_total$", as: "${1}_per_second"}
  metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)'
- seriesQuery: '{namespace!="",pod!="",__name__=~"^gauge_.*"}'
  resources:
    overrides:
      namespace: {resource: "namespace"}
      pod: {resource: "pod"}
  metricsQuery: 'max(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
  onNonFinite: zero
  onEmpty: zero
externalRules:
- seriesQuery: '{__name__="queue_depth"}'
  resources:
    overrides: {namespace: {resource: "namespace"}}
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (queue)'
"#;

    fn setup() -> (Provider<FakeProm>, FakeProm, Arc<Metrics>) {
        let rules = from_yaml(RULES, Path::new("t.yaml")).unwrap().0;
        let prom = FakeProm::new();
        prom.set_all_series(vec![
            labels(&[
                ("__name__", "http_requests_total"),
                ("namespace", "default"),
                ("pod", "web-0"),
                ("app", "web"),
            ]),
            labels(&[
                ("__name__", "http_requests_total"),
                ("namespace", "default"),
                ("pod", "web-1"),
                ("app", "web"),
            ]),
            labels(&[
                ("__name__", "http_requests_total"),
                ("namespace", "default"),
                ("pod", "db-0"),
                ("app", "db"),
            ]),
            labels(&[
                ("__name__", "gauge_load"),
                ("namespace", "default"),
                ("pod", "web-0"),
            ]),
            labels(&[
                ("__name__", "queue_depth"),
                ("namespace", "default"),
                ("queue", "orders"),
            ]),
        ]);
        let metrics = Arc::new(Metrics::new());
        let p = Provider::new(
            prom.clone(),
            Arc::new(rules),
            Arc::clone(&metrics),
            Duration::from_secs(60),
        );
        (p, prom, metrics)
    }

    const PODS_Q: &str = r#"sum(rate(http_requests_total{namespace="default"}[2m])) by (pod)"#;

    fn pods_req(name: ObjectName, label_selector: &str) -> CustomRequest {
        CustomRequest {
            version: CustomVersion::V1beta2,
            namespace: Some("default".into()),
            resource: "pods".into(),
            name,
            metric: "http_requests_per_second".into(),
            label_selector: label_selector.into(),
            metric_label_selector: String::new(),
        }
    }

    fn three_pods(prom: &FakeProm) {
        prom.set_vector(
            PODS_Q,
            vec![
                sample(&[("pod", "web-0")], 1_743_501_600.0, "0.5"),
                sample(&[("pod", "web-1")], 1_743_501_600.0, "1500"),
                sample(&[("pod", "db-0")], 1_743_501_600.0, "24.233138021"),
            ],
        );
    }

    #[tokio::test]
    async fn pods_star_serves_every_pod_with_exact_values() {
        let (p, prom, _) = setup();
        p.relist().await;
        three_pods(&prom);
        let items = p.custom(&pods_req(ObjectName::All, "")).await.unwrap();
        let got: Vec<(&str, &str)> = items
            .iter()
            .map(|i| (i.described_object.name.as_str(), i.value.0.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("web-0", "500m"),
                ("web-1", "1500"),
                ("db-0", "24233138021n")
            ]
        );
        let first = &items[0];
        assert_eq!(first.described_object.kind, "Pod");
        assert_eq!(first.described_object.api_version, "v1");
        assert_eq!(first.described_object.namespace.as_deref(), Some("default"));
        assert_eq!(first.timestamp, "2025-04-01T10:00:00Z");
        assert_eq!(first.window_seconds, Some(60));
        assert_eq!(prom.queries(), vec![PODS_Q.to_owned()]);
    }

    #[tokio::test]
    async fn label_selector_filters_by_the_series_labels() {
        let (p, prom, _) = setup();
        p.relist().await;
        three_pods(&prom);
        prom.set_series(
            r#"{__name__="http_requests_total",namespace="default",app="web"}"#,
            vec![labels(&[("pod", "web-0")]), labels(&[("pod", "web-1")])],
        );
        let items = p
            .custom(&pods_req(ObjectName::All, "app=web"))
            .await
            .unwrap();
        let names: Vec<&str> = items
            .iter()
            .map(|i| i.described_object.name.as_str())
            .collect();
        assert_eq!(names, vec!["web-0", "web-1"]);
        let e = p
            .custom(&pods_req(ObjectName::All, "app in ("))
            .await
            .unwrap_err();
        assert_eq!(e.code(), 400, "{e}");
    }

    #[tokio::test]
    async fn named_pod_gets_exactly_one_item_or_404() {
        let (p, prom, _) = setup();
        p.relist().await;
        prom.set_vector(
            r#"sum(rate(http_requests_total{namespace="default",pod="web-1"}[2m])) by (pod)"#,
            vec![sample(&[("pod", "web-1")], 1.0, "2")],
        );
        let items = p
            .custom(&pods_req(ObjectName::Named("web-1".into()), ""))
            .await
            .unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].value.0, "2");
        let e = p
            .custom(&pods_req(ObjectName::Named("web-9".into()), ""))
            .await
            .unwrap_err();
        assert_eq!(e.code(), 404);
        assert_eq!(
            e.to_string(),
            "the server could not find the metric http_requests_per_second for pods web-9"
        );
    }

    #[tokio::test]
    async fn unknown_metric_relists_once_then_404s() {
        let (p, prom, _) = setup();
        p.relist().await;
        prom.clear_calls();
        let mut req = pods_req(ObjectName::All, "");
        req.metric = "nope".into();
        let e = p.custom(&req).await.unwrap_err();
        assert_eq!(e.code(), 404);
        assert_eq!(
            e.to_string(),
            "the server could not find the metric nope for pods"
        );
        // The relist right before counts as recent: no second one.
        assert!(prom.series_calls().is_empty());
    }

    #[tokio::test]
    async fn metric_appearing_later_is_found_on_demand() {
        let (p, prom, _) = setup();
        prom.set_all_series(vec![]);
        p.relist().await;
        let p = Provider {
            on_demand_gap: Duration::ZERO,
            ..p
        };
        prom.set_all_series(vec![labels(&[
            ("__name__", "http_requests_total"),
            ("namespace", "default"),
            ("pod", "web-0"),
        ])]);
        three_pods(&prom);
        let items = p.custom(&pods_req(ObjectName::All, "")).await.unwrap();
        assert_eq!(items.len(), 3);
    }

    #[tokio::test]
    async fn non_finite_is_503_by_default_and_zero_by_policy() {
        let (p, prom, metrics) = setup();
        p.relist().await;
        prom.set_vector(PODS_Q, vec![sample(&[("pod", "web-0")], 1.0, "NaN")]);
        let e = p.custom(&pods_req(ObjectName::All, "")).await.unwrap_err();
        assert_eq!(e.code(), 503);
        assert!(e.to_string().contains("NaN"), "{e}");
        let mut req = pods_req(ObjectName::All, "");
        req.metric = "gauge_load".into();
        prom.set_vector(
            r#"max(gauge_load{namespace="default"}) by (pod)"#,
            vec![sample(&[("pod", "web-0")], 1.0, "+Inf")],
        );
        let items = p.custom(&req).await.unwrap();
        assert_eq!(items[0].value.0, "0");
        assert_eq!(metrics.non_finite.with_label_values(&["error"]).get(), 1);
        assert_eq!(metrics.non_finite.with_label_values(&["zero"]).get(), 1);
        // onEmpty: zero serves a 0 for a named pod with no sample.
        req.name = ObjectName::Named("web-7".into());
        let items = p.custom(&req).await.unwrap();
        assert_eq!(
            (
                items[0].described_object.name.as_str(),
                items[0].value.0.as_str()
            ),
            ("web-7", "0")
        );
    }

    #[tokio::test]
    async fn huge_values_are_clamped_and_counted() {
        let (p, prom, metrics) = setup();
        p.relist().await;
        prom.set_vector(PODS_Q, vec![sample(&[("pod", "web-0")], 1.0, "1e300")]);
        let items = p.custom(&pods_req(ObjectName::All, "")).await.unwrap();
        assert_eq!(items[0].value.0, "9223372036854775");
        assert_eq!(metrics.clamped.get(), 1);
    }

    #[tokio::test]
    async fn duplicate_samples_for_an_object_are_an_error() {
        let (p, prom, _) = setup();
        p.relist().await;
        prom.set_vector(
            PODS_Q,
            vec![
                sample(&[("pod", "web-0"), ("code", "200")], 1.0, "1"),
                sample(&[("pod", "web-0"), ("code", "500")], 1.0, "1"),
            ],
        );
        let e = p.custom(&pods_req(ObjectName::All, "")).await.unwrap_err();
        assert_eq!(e.code(), 500);
        assert!(e.to_string().contains("must aggregate by pod"), "{e}");
    }

    #[tokio::test]
    async fn backend_down_is_503_and_discovery_keeps_its_list() {
        let (p, prom, metrics) = setup();
        p.relist().await;
        let before = p.resource_list(false);
        assert_eq!(before.len(), 4, "{before:?}");
        prom.set_error(Some(PromError::Unreachable {
            reason: "connection refused".into(),
        }));
        let outcome = p.relist().await;
        assert_eq!(outcome.failed, outcome.queries);
        assert_eq!(p.resource_list(false), before);
        let e = p.custom(&pods_req(ObjectName::All, "")).await.unwrap_err();
        assert_eq!(e.code(), 503);
        assert!(e.to_string().contains("connection refused"), "{e}");
        assert_eq!(metrics.relists.with_label_values(&["failed"]).get(), 1);
        let timed = |result: &str| {
            metrics
                .relist_seconds
                .with_label_values(&[result])
                .get_sample_count()
        };
        assert_eq!((timed("ok"), timed("failed")), (1, 1));
        assert!(
            metrics
                .backend_errors
                .with_label_values(&["default", "query", "unreachable"])
                .get()
                >= 1
        );
    }

    /// A backend that holds every query until the test opens the gate.
    #[derive(Clone)]
    struct GatedProm {
        inner: FakeProm,
        gate: Arc<tokio::sync::Semaphore>,
    }

    impl PromApi for GatedProm {
        fn series(
            &self,
            matchers: &[String],
            start: SystemTime,
            end: SystemTime,
        ) -> impl Future<Output = Result<Vec<Labels>, PromError>> + Send {
            self.inner.series(matchers, start, end)
        }

        fn query(
            &self,
            promql: &str,
            time: Option<SystemTime>,
        ) -> impl Future<Output = Result<QueryResult, PromError>> + Send {
            let (gate, inner, promql) = (
                Arc::clone(&self.gate),
                self.inner.clone(),
                promql.to_owned(),
            );
            async move {
                let _permit = gate.acquire().await;
                inner.query(&promql, time).await
            }
        }
    }

    /// A provider over `prom` whose queries wait for the returned gate.
    fn gated(
        prom: &FakeProm,
    ) -> (
        Arc<Provider<GatedProm>>,
        Arc<tokio::sync::Semaphore>,
        Arc<Metrics>,
    ) {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let metrics = Arc::new(Metrics::new());
        let rules = from_yaml(RULES, Path::new("t.yaml")).unwrap().0;
        let p = Arc::new(Provider::new(
            GatedProm {
                inner: prom.clone(),
                gate: Arc::clone(&gate),
            },
            Arc::new(rules),
            Arc::clone(&metrics),
            Duration::from_secs(60),
        ));
        (p, gate, metrics)
    }

    #[tokio::test]
    async fn identical_concurrent_queries_are_coalesced() {
        let (_, prom, _) = setup();
        three_pods(&prom);
        let (p, gate, metrics) = gated(&prom);
        p.relist().await;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let p = Arc::clone(&p);
            tasks.spawn(async move { p.custom(&pods_req(ObjectName::All, "")).await });
        }
        // Every follower has joined the leader's query before the backend answers.
        while metrics.coalesced.with_label_values(&["default"]).get() < 9 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(100);
        while let Some(result) = tasks.join_next().await {
            assert_eq!(result.unwrap().unwrap().len(), 3);
        }
        assert_eq!(prom.queries(), vec![PODS_Q.to_owned()]);
        // The entry is gone: the next request asks the backend again.
        p.custom(&pods_req(ObjectName::All, "")).await.unwrap();
        assert_eq!(prom.queries().len(), 2);
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_over_to_a_follower() {
        let (_, prom, _) = setup();
        three_pods(&prom);
        let (p, gate, metrics) = gated(&prom);
        p.relist().await;
        let leader = {
            let p = Arc::clone(&p);
            tokio::spawn(async move { p.custom(&pods_req(ObjectName::All, "")).await })
        };
        while p
            .backends
            .first()
            .unwrap()
            .inflight
            .lock()
            .unwrap()
            .is_empty()
        {
            tokio::task::yield_now().await;
        }
        let follower = {
            let p = Arc::clone(&p);
            tokio::spawn(async move { p.custom(&pods_req(ObjectName::All, "")).await })
        };
        while metrics.coalesced.with_label_values(&["default"]).get() < 1 {
            tokio::task::yield_now().await;
        }
        leader.abort();
        let _ = leader.await;
        gate.add_permits(100);
        assert_eq!(follower.await.unwrap().unwrap().len(), 3);
    }

    fn with_pods(objects: &crate::objects::FakeObjects) -> (Provider<FakeProm>, FakeProm) {
        let (_, prom, _) = setup();
        let rules = from_yaml(RULES, Path::new("t.yaml")).unwrap().0;
        let p = Provider::new(
            prom.clone(),
            Arc::new(rules),
            Arc::new(Metrics::new()),
            Duration::from_secs(60),
        )
        .with_objects(Arc::new(objects.clone()));
        let pods = GroupResource::parse("pods");
        objects.set(
            &pods,
            [
                crate::objects::ObjectRef::new("web-0", Some("default"), [("app", "web")]),
                crate::objects::ObjectRef::new(
                    "web-1",
                    Some("default"),
                    [("app", "web"), ("canary", "true")],
                ),
                crate::objects::ObjectRef::new("db-0", Some("default"), [("app", "db")]),
            ],
        );
        objects.set_synced(&pods, true);
        (p, prom)
    }

    #[tokio::test]
    async fn cache_selects_pods_and_never_returns_one_outside_the_selector() {
        let objects = crate::objects::FakeObjects::new();
        let (p, prom) = with_pods(&objects);
        p.relist().await;
        prom.set_vector(
            PODS_Q,
            vec![
                sample(&[("pod", "web-0")], 1.0, "1"),
                sample(&[("pod", "web-1")], 1.0, "2"),
                sample(&[("pod", "db-0")], 1.0, "3"),
                // A series of a pod that no longer exists.
                sample(&[("pod", "gone-0")], 1.0, "4"),
            ],
        );
        let names = |items: Vec<MetricValue>| -> Vec<String> {
            items.into_iter().map(|i| i.described_object.name).collect()
        };
        let all = p.custom(&pods_req(ObjectName::All, "")).await.unwrap();
        assert_eq!(names(all), vec!["web-0", "web-1", "db-0"]);
        let web = p
            .custom(&pods_req(ObjectName::All, "app=web,!canary"))
            .await
            .unwrap();
        assert_eq!(names(web), vec!["web-0"]);
        let set = p
            .custom(&pods_req(
                ObjectName::All,
                "app in (web,db),canary notin (true)",
            ))
            .await
            .unwrap();
        assert_eq!(names(set), vec!["web-0", "db-0"]);
        // The backend is asked by namespace only, whatever the selector.
        assert!(
            prom.queries().iter().all(|q| q == PODS_Q),
            "{:?}",
            prom.queries()
        );
        // No object matches: 404, as prometheus-adapter answers.
        let e = p
            .custom(&pods_req(ObjectName::All, "app=none"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), 404);
    }

    #[tokio::test]
    async fn cache_answers_404_for_a_missing_pod_and_503_before_sync() {
        let objects = crate::objects::FakeObjects::new();
        let (p, prom) = with_pods(&objects);
        p.relist().await;
        let e = p
            .custom(&pods_req(ObjectName::Named("gone-0".into()), ""))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), e.to_string().as_str()),
            (404, "pods \"gone-0\" not found")
        );
        assert!(
            prom.queries().is_empty(),
            "no query for an object that doesn't exist"
        );
        objects.set_synced(&GroupResource::parse("pods"), false);
        let e = p.custom(&pods_req(ObjectName::All, "")).await.unwrap_err();
        assert_eq!(e.code(), 503, "{e}");
        // A resource the cache doesn't watch falls back to the series' labels.
        objects.unwatch(&GroupResource::parse("pods"));
        three_pods(&prom);
        assert_eq!(
            p.custom(&pods_req(ObjectName::All, ""))
                .await
                .unwrap()
                .len(),
            3
        );
    }

    fn ext_req(selector: &str) -> ExternalRequest {
        ExternalRequest {
            namespace: "default".into(),
            metric: "queue_depth".into(),
            label_selector: selector.into(),
        }
    }

    #[tokio::test]
    async fn external_vector_scalar_and_empty() {
        let (p, prom, _) = setup();
        p.relist().await;
        let q = r#"sum(queue_depth{queue="orders",namespace="default"}) by (queue)"#;
        prom.set_vector(q, vec![sample(&[("queue", "orders")], 2.0, "42")]);
        let items = p.external(&ext_req("queue=orders")).await.unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].value.0, "42");
        assert_eq!(items[0].metric_labels, Some(labels(&[("queue", "orders")])));
        prom.set_result(
            q,
            QueryResult::Scalar {
                timestamp: 2.0,
                value: "7".into(),
            },
        );
        let items = p.external(&ext_req("queue=orders")).await.unwrap();
        assert_eq!(
            (items[0].metric_labels.clone(), items[0].value.0.as_str()),
            (None, "7")
        );
        prom.set_vector(q, vec![]);
        let e = p.external(&ext_req("queue=orders")).await.unwrap_err();
        assert_eq!(e.code(), 503);
        assert!(e.to_string().contains("no data"), "{e}");
        let e = p.external(&ext_req("queue notin")).await.unwrap_err();
        assert_eq!(e.code(), 400);
    }

    #[tokio::test]
    async fn static_list_before_discovery_and_when_nothing_found() {
        let (p, prom, _) = setup();
        // Before any relist: only what the rules name literally.
        let ext = p.resource_list(true);
        assert_eq!(ext.len(), 1);
        assert_eq!(ext[0].name, "queue_depth");
        prom.set_all_series(vec![]);
        p.relist().await;
        assert_eq!(p.resource_list(true).len(), 1);
    }

    /// Two backends: `a` holds a pod metric (rules without `backend`), `b` a queue metric
    /// (an external rule with `backend: b`) and the same pod series under another name.
    const TWO_BACKENDS: &str = r#"
rules:
- seriesQuery: '{__name__="a_total",namespace!="",pod!=""}'
  resources:
    overrides: {namespace: {resource: "namespace"}, pod: {resource: "pod"}}
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
- seriesQuery: '{__name__="b_total",namespace!="",pod!=""}'
  resources:
    overrides: {namespace: {resource: "namespace"}, pod: {resource: "pod"}}
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
  backend: b
externalRules:
- seriesQuery: '{__name__="b_queue"}'
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>})'
  backend: b
"#;

    fn two_backends() -> (Provider<FakeProm>, FakeProm, FakeProm, Arc<Metrics>) {
        let rules = from_yaml(TWO_BACKENDS, Path::new("t.yaml")).unwrap().0;
        let (a, b) = (FakeProm::new(), FakeProm::new());
        let pod = |name: &str| labels(&[("__name__", name), ("namespace", "ns"), ("pod", "p0")]);
        a.set_all_series(vec![pod("a_total")]);
        b.set_all_series(vec![pod("b_total"), labels(&[("__name__", "b_queue")])]);
        let metrics = Arc::new(Metrics::new());
        let p = Provider::with_backends(
            vec![("a".into(), a.clone()), ("b".into(), b.clone())],
            Arc::new(rules),
            Arc::clone(&metrics),
            Duration::from_secs(60),
        );
        (p, a, b, metrics)
    }

    fn named(metric: &str) -> CustomRequest {
        CustomRequest {
            version: CustomVersion::V1beta2,
            namespace: Some("ns".into()),
            resource: "pods".into(),
            name: ObjectName::Named("p0".into()),
            metric: metric.into(),
            label_selector: String::new(),
            metric_label_selector: String::new(),
        }
    }

    const A_Q: &str = r#"sum(a_total{namespace="ns",pod="p0"}) by (pod)"#;
    const B_Q: &str = r#"sum(b_total{namespace="ns",pod="p0"}) by (pod)"#;
    const QUEUE_Q: &str = "sum(b_queue{})";

    #[tokio::test]
    async fn rules_are_routed_to_their_backends() {
        let (p, a, b, _) = two_backends();
        assert_eq!(p.backend_names(), vec!["a", "b"]);
        let outcome = p.relist().await;
        assert_eq!((outcome.queries, outcome.failed), (3, 0));
        // Each backend was asked only for its own rules' series.
        let asked = |f: &FakeProm| -> Vec<String> {
            f.series_calls()
                .into_iter()
                .flat_map(|c| c.matchers)
                .collect()
        };
        assert_eq!(
            asked(&a),
            vec![r#"{__name__="a_total",namespace!="",pod!=""}"#]
        );
        assert_eq!(
            asked(&b),
            vec![
                r#"{__name__="b_total",namespace!="",pod!=""}"#,
                r#"{__name__="b_queue"}"#
            ]
        );
        a.set_vector(A_Q, vec![sample(&[("pod", "p0")], 1.0, "1")]);
        b.set_vector(B_Q, vec![sample(&[("pod", "p0")], 1.0, "2")]);
        b.set_vector(QUEUE_Q, vec![sample(&[], 1.0, "3")]);
        let value = |items: Vec<MetricValue>| items[0].value.0.clone();
        assert_eq!(value(p.custom(&named("a_total")).await.unwrap()), "1");
        assert_eq!(value(p.custom(&named("b_total")).await.unwrap()), "2");
        let ext = p
            .external(&ExternalRequest {
                namespace: "ns".into(),
                metric: "b_queue".into(),
                label_selector: String::new(),
            })
            .await
            .unwrap();
        assert_eq!(ext[0].value.0, "3");
        assert_eq!(a.queries(), vec![A_Q.to_owned()]);
        assert_eq!(b.queries(), vec![B_Q.to_owned(), QUEUE_Q.to_owned()]);
    }

    #[tokio::test]
    async fn one_backend_down_fails_only_its_own_metrics() {
        let (p, a, b, metrics) = two_backends();
        p.relist().await;
        a.set_vector(A_Q, vec![sample(&[("pod", "p0")], 1.0, "1")]);
        b.set_error(Some(PromError::Unreachable {
            reason: "connection refused".into(),
        }));
        a.set_all_series(vec![
            labels(&[("__name__", "a_total"), ("namespace", "ns"), ("pod", "p0")]),
            labels(&[("__name__", "a_total"), ("namespace", "ns"), ("pod", "p1")]),
        ]);
        let outcome = p.relist().await;
        assert_eq!((outcome.queries, outcome.failed), (3, 2));
        // b's rules keep their last findings: every metric is still listed.
        let mut listed: Vec<String> = p
            .resource_list(false)
            .into_iter()
            .chain(p.resource_list(true))
            .map(|r| r.name)
            .collect();
        listed.sort();
        assert_eq!(
            listed,
            vec![
                "b_queue",
                "namespaces/a_total",
                "namespaces/b_total",
                "pods/a_total",
                "pods/b_total"
            ]
        );
        assert_eq!(p.custom(&named("a_total")).await.unwrap().len(), 1);
        let e = p.custom(&named("b_total")).await.unwrap_err();
        assert_eq!(e.code(), 503);
        assert!(e.to_string().contains("backend `b`"), "{e}");
        let up = |name: &str| metrics.backend_up.with_label_values(&[name]).get();
        assert_eq!((up("a"), up("b")), (1, 0));
        let errors = metrics
            .backend_errors
            .with_label_values(&["b", "query", "unreachable"])
            .get();
        assert_eq!(errors, 1);
        // Back: b answers again.
        b.set_error(None);
        b.set_vector(B_Q, vec![sample(&[("pod", "p0")], 1.0, "2")]);
        assert_eq!(p.custom(&named("b_total")).await.unwrap()[0].value.0, "2");
        assert_eq!(up("b"), 1);
    }

    #[tokio::test]
    async fn identical_queries_are_coalesced_per_backend_only() {
        // Two metrics whose queries are the same PromQL, one per backend.
        let yaml = r#"
rules:
- seriesQuery: '{__name__="x_total",namespace!="",pod!=""}'
  resources:
    overrides: {namespace: {resource: "namespace"}, pod: {resource: "pod"}}
  name: {as: "on_a"}
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
- seriesQuery: '{__name__="x_total",namespace!="",pod!=""}'
  resources:
    overrides: {namespace: {resource: "namespace"}, pod: {resource: "pod"}}
  name: {as: "on_b"}
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
  backend: b
"#;
        let rules = from_yaml(yaml, Path::new("t.yaml")).unwrap().0;
        let q = r#"sum(x_total{namespace="ns",pod="p0"}) by (pod)"#;
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let backend = || {
            let inner = FakeProm::new();
            inner.set_all_series(vec![labels(&[
                ("__name__", "x_total"),
                ("namespace", "ns"),
                ("pod", "p0"),
            ])]);
            inner.set_vector(q, vec![sample(&[("pod", "p0")], 1.0, "1")]);
            GatedProm {
                inner,
                gate: Arc::clone(&gate),
            }
        };
        let (a, b) = (backend(), backend());
        let metrics = Arc::new(Metrics::new());
        let p = Arc::new(Provider::with_backends(
            vec![("a".into(), a.clone()), ("b".into(), b.clone())],
            Arc::new(rules),
            Arc::clone(&metrics),
            Duration::from_secs(60),
        ));
        p.relist().await;
        let mut tasks = Vec::new();
        for metric in ["on_a", "on_a", "on_b", "on_b"] {
            let p = Arc::clone(&p);
            tasks.push(tokio::spawn(async move { p.custom(&named(metric)).await }));
        }
        let joined = |name: &str| metrics.coalesced.with_label_values(&[name]).get();
        while joined("a") < 1 || joined("b") < 1 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(2);
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap()[0].value.0, "1");
        }
        // One call per backend, each shared by its two requests.
        assert_eq!(a.inner.queries(), vec![q.to_owned()]);
        assert_eq!(b.inner.queries(), vec![q.to_owned()]);
        assert_eq!((joined("a"), joined("b")), (1, 1));
    }
}
