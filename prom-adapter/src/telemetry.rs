//! Self-metrics on `/metrics`, with a closed label vocabulary (never user data as a label).

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Now as Unix seconds, for timestamp gauges and answers made up without a sample.
pub fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Every self-metric the adapter exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by API group (`custom`, `external`, `resource`, `discovery`, `other`) and
    /// status code.
    pub requests: IntCounterVec,
    /// Request latency by API group.
    pub request_seconds: HistogramVec,
    /// Backend call latency by backend name and endpoint (`query`, `series`).
    pub backend_seconds: HistogramVec,
    /// Requests answered by joining an identical query already in flight, by backend.
    pub coalesced: IntCounterVec,
    /// Backend calls refused because that backend's query queue was full, by backend.
    pub backend_refused: IntCounterVec,
    /// Backend calls waiting for a turn now, by backend.
    pub backend_waiting: IntGaugeVec,
    /// Named query runs by result (`ok`, `error`).
    pub named_refreshes: IntCounterVec,
    /// Named query answers by outcome (`ok`, `stale`, `error`).
    pub named_answers: IntCounterVec,
    /// `PrometheusMetric` objects seen.
    pub prometheus_metric_objects: Gauge,
    /// Their status writes by result (`ok`, `error`).
    pub prometheus_metric_status_writes: IntCounterVec,
    /// Errors of the `PrometheusMetric` and HPA watches.
    pub prometheus_metric_watch_errors: IntCounter,
    /// Failed backend calls by backend, endpoint and error kind.
    pub backend_errors: IntCounterVec,
    /// 1 when the backend's last call reached its API (an answer, or a PromQL error), else 0.
    /// Backend names come from the config, a closed set once started.
    pub backend_up: IntGaugeVec,
    /// Metrics listed, by API (`custom`, `external`).
    pub discovered: IntGaugeVec,
    /// Relists by result (`ok`, `partial`, `failed`).
    pub relists: IntCounterVec,
    /// How long a discovery run took, by result: series calls, decoding and the swap.
    pub relist_seconds: HistogramVec,
    /// Unix time of the last relist that reached the backend for every rule.
    pub last_relist_success: Gauge,
    /// Unix time of the last relist attempt.
    pub last_relist: Gauge,
    /// Values clamped to what the HPA's int64 milli-units hold.
    pub clamped: IntCounter,
    /// NaN/±Inf samples by what the rule did with them (`error`, `zero`, `skip`).
    pub non_finite: IntCounterVec,
    /// Answers with no sample, by API (`custom`, `external`, `resource`).
    pub empty: IntCounterVec,
    /// Serving certificate reloads by result (`ok`, `error`).
    pub cert_reloads: IntCounterVec,
    /// Config reloads by result (`ok`, `error`).
    pub config_reloads: IntCounterVec,
    /// 1 when the last config reload worked (or none was tried), 0 when the running rules are
    /// older than the file.
    pub config_last_reload_ok: Gauge,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("constant metric {name} is valid: {e}"));
    let _ = registry.register(Box::new(c.clone()));
    c
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let buckets = vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|e| unreachable!("constant metric {name} is valid: {e}"));
    let _ = registry.register(Box::new(h.clone()));
    h
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::new(name, help)
        .unwrap_or_else(|e| unreachable!("constant metric {name} is valid: {e}"));
    let _ = registry.register(Box::new(g.clone()));
    g
}

impl Metrics {
    /// Registers every metric (and the process collector) in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let _ = registry.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        let discovered = IntGaugeVec::new(
            Opts::new(
                "prom_adapter_discovered_metrics",
                "Metrics listed by the discovery documents, by API.",
            ),
            &["api"],
        )
        .unwrap_or_else(|e| unreachable!("constant metric is valid: {e}"));
        let _ = registry.register(Box::new(discovered.clone()));
        let clamped = IntCounter::new(
            "prom_adapter_values_clamped_total",
            "Values clamped to the range the HPA's int64 milli-units hold.",
        )
        .unwrap_or_else(|e| unreachable!("constant metric is valid: {e}"));
        let _ = registry.register(Box::new(clamped.clone()));
        let backend_up = IntGaugeVec::new(
            Opts::new(
                "prom_adapter_backend_up",
                "1 if the backend's last call reached its API (an answer or a PromQL error), else 0.",
            ),
            &["backend"],
        )
        .unwrap_or_else(|e| unreachable!("constant metric is valid: {e}"));
        let _ = registry.register(Box::new(backend_up.clone()));
        let backend_waiting = IntGaugeVec::new(
            Opts::new(
                "prom_adapter_prometheus_queries_waiting",
                "Backend queries waiting for a turn (max_concurrent_queries are running), by backend.",
            ),
            &["backend"],
        )
        .unwrap_or_else(|e| unreachable!("constant metric is valid: {e}"));
        let _ = registry.register(Box::new(backend_waiting.clone()));
        Self {
            backend_up,
            backend_waiting,
            backend_refused: counter(
                &registry,
                "prom_adapter_prometheus_queries_refused_total",
                "Backend queries not sent because the backend already had its most queries running and waiting (answered 503 with Retry-After), by backend.",
                &["backend"],
            ),
            named_refreshes: counter(
                &registry,
                "prom_adapter_named_query_refreshes_total",
                "Background runs of named queries, by result.",
                &["result"],
            ),
            prometheus_metric_objects: gauge(
                &registry,
                "prom_adapter_prometheus_metric_objects",
                "PrometheusMetric objects seen by the watch (valid or not).",
            ),
            prometheus_metric_status_writes: counter(
                &registry,
                "prom_adapter_prometheus_metric_status_writes_total",
                "Status subresource writes of PrometheusMetric objects, by result.",
                &["result"],
            ),
            prometheus_metric_watch_errors: {
                let c = IntCounter::new(
                    "prom_adapter_prometheus_metric_watch_errors_total",
                    "Errors of the PrometheusMetric and HorizontalPodAutoscaler watches (each is retried with back-off).",
                )
                .unwrap_or_else(|e| unreachable!("constant metric is valid: {e}"));
                let _ = registry.register(Box::new(c.clone()));
                c
            },
            named_answers: counter(
                &registry,
                "prom_adapter_named_query_answers_total",
                "Requests answered from the named query cache, by outcome (stale: older than maxAge, refused).",
                &["outcome"],
            ),
            coalesced: counter(
                &registry,
                "prom_adapter_prometheus_queries_coalesced_total",
                "Requests that waited for an identical query already in flight instead of sending their own, by backend.",
                &["backend"],
            ),
            requests: counter(
                &registry,
                "prom_adapter_requests_total",
                "API requests by group and HTTP status code.",
                &["group", "code"],
            ),
            request_seconds: histogram(
                &registry,
                "prom_adapter_request_duration_seconds",
                "API request latency by group.",
                &["group"],
            ),
            backend_seconds: histogram(
                &registry,
                "prom_adapter_prometheus_request_duration_seconds",
                "Latency of calls to the Prometheus API, by backend and endpoint.",
                &["backend", "endpoint"],
            ),
            backend_errors: counter(
                &registry,
                "prom_adapter_prometheus_errors_total",
                "Failed calls to the Prometheus API, by backend, endpoint and kind.",
                &["backend", "endpoint", "kind"],
            ),
            relists: counter(
                &registry,
                "prom_adapter_discovery_runs_total",
                "Discovery runs by result: ok, partial (some rules failed) or failed.",
                &["result"],
            ),
            relist_seconds: histogram(
                &registry,
                "prom_adapter_discovery_duration_seconds",
                "Duration of discovery runs (series calls, decoding, the swap of the metric list), by result.",
                &["result"],
            ),
            last_relist_success: gauge(
                &registry,
                "prom_adapter_discovery_last_success_timestamp_seconds",
                "Unix time of the last discovery run in which every rule's series query answered.",
            ),
            last_relist: gauge(
                &registry,
                "prom_adapter_discovery_last_run_timestamp_seconds",
                "Unix time of the last discovery run.",
            ),
            non_finite: counter(
                &registry,
                "prom_adapter_non_finite_values_total",
                "NaN or infinite samples, by what the rule's onNonFinite policy did.",
                &["policy"],
            ),
            empty: counter(
                &registry,
                "prom_adapter_empty_results_total",
                "Requests whose query returned no sample for the object, by API.",
                &["api"],
            ),
            cert_reloads: counter(
                &registry,
                "prom_adapter_serving_cert_reloads_total",
                "Reloads of the serving certificate files by result; on error the old pair stays.",
                &["result"],
            ),
            config_reloads: counter(
                &registry,
                "prom_adapter_config_reloads_total",
                "Config reloads (SIGHUP or a changed file) by result; on error the old rules stay.",
                &["result"],
            ),
            config_last_reload_ok: {
                let g = gauge(
                    &registry,
                    "prom_adapter_config_last_reload_successful",
                    "1 if the last config reload succeeded (or none was tried), else 0.",
                );
                g.set(1.0);
                g
            },
            discovered,
            clamped,
            registry,
        }
    }

    /// The registry, for metrics defined elsewhere (authentication).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The exposition page.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "Cannot encode self-metrics.");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
