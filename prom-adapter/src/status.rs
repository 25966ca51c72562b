//! `GET /status` and `prom-adapter status`: the answer to "why is my HPA not scaling", one
//! JSON report the server builds and the CLI prints as tables. Pure: types and rendering.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The adapter's version.
    pub version: String,
    /// When the report was made (RFC 3339).
    pub generated: String,
    /// The relist loop.
    pub discovery: DiscoveryStatus,
    /// Each backend's health.
    pub backends: Vec<BackendStatus>,
    /// Each rule, with what discovery found for it.
    pub rules: Vec<RuleStatus>,
    /// Each named query.
    pub queries: Vec<QueryStatus>,
    /// Each metric requested since start: its last answer.
    pub metrics: Vec<MetricStatus>,
}

/// Discovery as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryStatus {
    /// The relist period.
    pub relist_interval_seconds: f64,
    /// The last relist's end.
    pub last_relist: Option<String>,
    /// Seconds since then.
    pub last_relist_age_seconds: Option<f64>,
    /// The last relist in which every series query answered.
    pub last_success: Option<String>,
    /// Custom metrics listed.
    pub custom_metrics: usize,
    /// External metrics listed (named queries included).
    pub external_metrics: usize,
}

/// One backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendStatus {
    /// Its name.
    pub name: String,
    /// Its URL, without credentials.
    pub url: String,
    /// Whether its last call reached its API; `None` before the first call.
    pub up: Option<bool>,
    /// The last call's end.
    pub last_call: Option<String>,
    /// The last call's latency.
    pub last_latency_seconds: Option<f64>,
    /// The last failed call's error.
    pub last_error: Option<String>,
    /// When it failed.
    pub last_error_time: Option<String>,
    /// Calls made.
    pub calls: u64,
    /// Of which failed.
    pub errors: u64,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleStatus {
    /// `custom`, `external` or `resource`.
    pub kind: String,
    /// `file:line:col (field)`.
    pub source: String,
    /// Its discovery selector (the resource rules' CPU container query).
    pub series_query: String,
    /// The backend it uses.
    pub backend: String,
    /// Metrics it serves now.
    pub metrics: usize,
    /// The last discovery that answered for it.
    pub last_discovery: Option<String>,
    /// The last discovery's error, while it keeps failing.
    pub last_error: Option<String>,
}

/// A named query's state, as the Datadog Cluster Agent reports a DatadogMetric's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryState {
    /// Not run yet.
    Pending,
    /// A value younger than `maxAge`: served.
    Valid,
    /// A value older than `maxAge`: refused with 503 `Stale`.
    Stale,
    /// Never answered; the last run failed.
    Error,
}

impl QueryState {
    /// The word printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Valid => "Valid",
            Self::Stale => "Stale",
            Self::Error => "Error",
        }
    }
}

/// One series of a named query's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValueStatus {
    /// Its labels (none for a scalar).
    pub labels: BTreeMap<String, String>,
    /// The Quantity served.
    pub value: String,
}

/// One named query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryStatus {
    /// The external metric's name.
    pub name: String,
    /// The namespace it is served to, if only one.
    pub namespace: Option<String>,
    /// Where it was written.
    pub source: String,
    /// The PromQL.
    pub query: String,
    /// The backend it runs on.
    pub backend: String,
    /// Its `maxAge`.
    pub max_age_seconds: f64,
    /// Its refresh period.
    pub refresh_seconds: f64,
    /// Valid, Stale, Error or Pending.
    pub state: QueryState,
    /// The last good value's series.
    pub values: Vec<ValueStatus>,
    /// The last good value's evaluation time.
    pub sample_time: Option<String>,
    /// Its age now.
    pub age_seconds: Option<f64>,
    /// When a run last succeeded.
    pub last_update: Option<String>,
    /// When a run last ended.
    pub last_attempt: Option<String>,
    /// How long it took.
    pub last_duration_seconds: Option<f64>,
    /// The last run's error, while it keeps failing.
    pub last_error: Option<String>,
    /// Runs so far.
    pub refreshes: u64,
    /// Of which failed.
    pub failures: u64,
}

/// The last answer for one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricStatus {
    /// `custom` or `external`.
    pub api: String,
    /// The request's namespace (`-` for root-scoped resources).
    pub namespace: String,
    /// The resource (`pods`, `namespaces`, …); `-` for external metrics.
    pub resource: String,
    /// The metric.
    pub metric: String,
    /// The last request's time.
    pub last_request: String,
    /// Items in its answer.
    pub items: usize,
    /// The first item's value.
    pub value: Option<String>,
    /// The first item's sample time.
    pub sample_time: Option<String>,
    /// Its age when the report was made.
    pub age_seconds: Option<f64>,
    /// The last request's error, if it failed.
    pub last_error: Option<String>,
}

/// What `GET /explain` is asked about (its query parameters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExplainRequest {
    /// `metric`: required.
    pub metric: String,
    /// `namespace` (default `default`).
    pub namespace: String,
    /// `selector`: the `labelSelector` of the request.
    pub selector: String,
    /// `resource`: a custom metric's resource; absent: a named query or external metric if
    /// one has the name, else the one resource serving it.
    pub resource: Option<String>,
    /// `name`: one object (custom metrics); absent: `*`.
    pub name: Option<String>,
    /// `metricSelector`: the custom metric's `metricLabelSelector`.
    pub metric_selector: String,
}

impl ExplainRequest {
    /// Reads the query string; `None` without a metric.
    pub fn from_query(query: Option<&str>) -> Option<ExplainRequest> {
        let mut req = ExplainRequest {
            namespace: "default".into(),
            ..ExplainRequest::default()
        };
        for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let v = v.into_owned();
            match &*k {
                "metric" => req.metric = v,
                "namespace" if !v.is_empty() => req.namespace = v,
                "selector" => req.selector = v,
                "resource" if !v.is_empty() => req.resource = Some(v),
                "name" if !v.is_empty() => req.name = Some(v),
                "metricSelector" => req.metric_selector = v,
                _ => {}
            }
        }
        (!req.metric.is_empty()).then_some(req)
    }

    /// The query string that asks for this.
    pub fn to_query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("metric", &self.metric);
        q.append_pair("namespace", &self.namespace);
        if !self.selector.is_empty() {
            q.append_pair("selector", &self.selector);
        }
        if let Some(r) = &self.resource {
            q.append_pair("resource", r);
        }
        if let Some(n) = &self.name {
            q.append_pair("name", n);
        }
        if !self.metric_selector.is_empty() {
            q.append_pair("metricSelector", &self.metric_selector);
        }
        q.finish()
    }
}

/// `prom-adapter explain`: what one request runs and gets, step by step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// `custom`, `external` or `named` (an external metric served from the cache).
    pub api: String,
    /// The metric.
    pub metric: String,
    /// The request's namespace.
    pub namespace: String,
    /// Custom metrics: the resource and the object (`*` for all).
    pub resource: Option<String>,
    /// Custom metrics: the object's name, or `*`.
    pub object: Option<String>,
    /// The `labelSelector`.
    pub selector: String,
    /// The rule or named query serving it, and where it is written.
    pub served_by: String,
    /// The backend asked.
    pub backend: String,
    /// The PromQL run.
    pub promql: String,
    /// The backend's answer (`data` of `/api/v1/query`), asked now.
    pub backend_answer: Option<serde_json::Value>,
    /// Or why there is none.
    pub backend_error: Option<String>,
    /// The API's answer to the request (a value list), as the HPA gets it.
    pub answer: Option<serde_json::Value>,
    /// Or the `Status` error it gets.
    pub answer_error: Option<ExplainedError>,
    /// What else matters (named queries: cache and freshness).
    pub notes: Vec<String>,
}

/// A `Status` error in an explanation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExplainedError {
    /// HTTP code.
    pub code: u16,
    /// `metav1.StatusReason`.
    pub reason: String,
    /// The message.
    pub message: String,
}

/// An explanation as `prom-adapter explain` prints it.
pub fn render_explanation(e: &Explanation) -> String {
    let mut out = String::new();
    let object = match (&e.resource, &e.object) {
        (Some(r), Some(o)) => format!(" for {r}/{o}"),
        _ => String::new(),
    };
    let selector = if e.selector.is_empty() {
        String::new()
    } else {
        format!(", selector {}", e.selector)
    };
    let _ = writeln!(
        out,
        "metric:    {} ({} metric{object} in namespace {}{selector})",
        e.metric, e.api, e.namespace
    );
    let _ = writeln!(out, "served by: {}", e.served_by);
    let _ = writeln!(out, "backend:   {}", e.backend);
    let _ = writeln!(out, "promql:    {}", e.promql);
    for note in &e.notes {
        let _ = writeln!(out, "note:      {note}");
    }
    out.push_str(
        "
Backend answer (asked now):
",
    );
    match (&e.backend_answer, &e.backend_error) {
        (Some(data), _) => {
            let kind = data["resultType"].as_str().unwrap_or("?");
            match data["result"].as_array() {
                Some(series) if kind == "vector" => {
                    let _ = writeln!(out, "  vector, {} series", series.len());
                    for s in series {
                        let labels = s["metric"]
                            .as_object()
                            .map(|m| {
                                m.iter()
                                    .map(|(k, v)| format!("{k}={}", v))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            })
                            .unwrap_or_default();
                        let _ = writeln!(
                            out,
                            "  {{{labels}}} => {} @ {}",
                            s["value"][1].as_str().unwrap_or("?"),
                            s["value"][0]
                                .as_f64()
                                .map_or_else(|| "?".into(), crate::api::types::rfc3339)
                        );
                    }
                }
                _ => {
                    let _ = writeln!(out, "  {kind}: {}", data["result"]);
                }
            }
        }
        (None, Some(err)) => {
            let _ = writeln!(out, "  error: {err}");
        }
        (None, None) => out.push_str(
            "  (none)
",
        ),
    }
    out.push_str(
        "
API answer (what the HPA gets):
",
    );
    match (&e.answer, &e.answer_error) {
        (Some(list), _) => {
            let items = list["items"].as_array().cloned().unwrap_or_default();
            let _ = writeln!(
                out,
                "  {}, {} items",
                list["kind"].as_str().unwrap_or("?"),
                items.len()
            );
            for item in items {
                let who = match item["describedObject"]["name"].as_str() {
                    Some(name) => format!(
                        "{}/{name}",
                        item["describedObject"]["kind"].as_str().unwrap_or("?")
                    ),
                    None => item["metricLabels"].to_string(),
                };
                let _ = writeln!(
                    out,
                    "  {who} => {} @ {}",
                    item["value"].as_str().unwrap_or("?"),
                    item["timestamp"].as_str().unwrap_or("?")
                );
            }
        }
        (None, Some(err)) => {
            let _ = writeln!(out, "  {} {}: {}", err.code, err.reason, err.message);
        }
        (None, None) => out.push_str(
            "  (none)
",
        ),
    }
    out
}

/// `12s`, `3m04s`, `2h05m`: short ages for tables.
pub fn short_duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".into();
    }
    if seconds < 10.0 {
        let s = format!("{seconds:.1}");
        return format!("{}s", s.trim_end_matches(".0"));
    }
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn opt_age(age: Option<f64>) -> String {
    age.map_or_else(|| "-".into(), short_duration)
}

fn opt(s: Option<&str>) -> &str {
    s.unwrap_or("-")
}

/// Aligned columns, two spaces apart, indented; cells are cut at `MAX_CELL` characters.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    const MAX_CELL: usize = 72;
    let cut = |c: &str| -> String {
        let one_line = c.replace('\n', " ");
        if one_line.chars().count() > MAX_CELL {
            let mut s: String = one_line.chars().take(MAX_CELL - 1).collect();
            s.push('…');
            s
        } else {
            one_line
        }
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| cut(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::from("  ");
        for (c, w) in cells.zip(&widths) {
            let _ = write!(l, "{c:<w$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for r in &rows {
        line(&mut r.iter().map(String::as_str));
    }
}

/// The report as the tables `prom-adapter status` prints.
pub fn render(r: &Report, url: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "prom-adapter {} at {url}, {}", r.version, r.generated);
    let d = &r.discovery;
    let _ = writeln!(
        out,
        "\nDiscovery: every {}, last relist {} ago, last complete {}; {} custom and {} external metrics listed",
        short_duration(d.relist_interval_seconds),
        opt_age(d.last_relist_age_seconds),
        opt(d.last_success.as_deref()),
        d.custom_metrics,
        d.external_metrics
    );
    out.push_str("\nBackends\n");
    let rows: Vec<Vec<String>> = r
        .backends
        .iter()
        .map(|b| {
            vec![
                b.name.clone(),
                b.url.clone(),
                match b.up {
                    Some(true) => "up".into(),
                    Some(false) => "DOWN".into(),
                    None => "unknown".into(),
                },
                b.last_latency_seconds
                    .map_or_else(|| "-".into(), |s| format!("{:.1}ms", s * 1000.0)),
                format!("{}/{}", b.errors, b.calls),
                opt(b.last_error.as_deref()).to_owned(),
            ]
        })
        .collect();
    table(
        &mut out,
        &["NAME", "URL", "STATE", "LATENCY", "ERRORS", "LAST ERROR"],
        &rows,
    );
    out.push_str("\nRules\n");
    let rows: Vec<Vec<String>> = r
        .rules
        .iter()
        .map(|rule| {
            vec![
                rule.kind.clone(),
                rule.source.clone(),
                rule.backend.clone(),
                rule.metrics.to_string(),
                opt(rule.last_discovery.as_deref()).to_owned(),
                opt(rule.last_error.as_deref()).to_owned(),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "KIND",
            "SOURCE",
            "BACKEND",
            "METRICS",
            "LAST DISCOVERY",
            "LAST ERROR",
        ],
        &rows,
    );
    out.push_str("\nNamed queries\n");
    let rows: Vec<Vec<String>> = r
        .queries
        .iter()
        .map(|q| {
            let value = match q.values.as_slice() {
                [] => "-".to_owned(),
                [one] => one.value.clone(),
                many => format!("{} series", many.len()),
            };
            vec![
                q.name.clone(),
                opt(q.namespace.as_deref()).to_owned(),
                q.state.as_str().to_owned(),
                value,
                opt_age(q.age_seconds),
                short_duration(q.max_age_seconds),
                short_duration(q.refresh_seconds),
                q.backend.clone(),
                opt(q.last_error.as_deref()).to_owned(),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "NAME",
            "NAMESPACE",
            "STATE",
            "VALUE",
            "AGE",
            "MAX AGE",
            "REFRESH",
            "BACKEND",
            "LAST ERROR",
        ],
        &rows,
    );
    out.push_str("\nMetrics served (last request of each)\n");
    let rows: Vec<Vec<String>> = r
        .metrics
        .iter()
        .map(|m| {
            vec![
                m.api.clone(),
                m.namespace.clone(),
                m.resource.clone(),
                m.metric.clone(),
                opt(m.value.as_deref()).to_owned(),
                m.items.to_string(),
                opt_age(m.age_seconds),
                opt(m.last_error.as_deref()).to_owned(),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "API",
            "NAMESPACE",
            "RESOURCE",
            "METRIC",
            "VALUE",
            "ITEMS",
            "SAMPLE AGE",
            "LAST ERROR",
        ],
        &rows,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            version: "0.1.0".into(),
            generated: "2026-12-07T16:00:00Z".into(),
            discovery: DiscoveryStatus {
                relist_interval_seconds: 60.0,
                last_relist: Some("2026-12-07T15:59:48Z".into()),
                last_relist_age_seconds: Some(12.0),
                last_success: Some("2026-12-07T15:59:48Z".into()),
                custom_metrics: 2,
                external_metrics: 1,
            },
            backends: vec![BackendStatus {
                name: "default".into(),
                url: "http://127.0.0.1:9090".into(),
                up: Some(false),
                last_call: None,
                last_latency_seconds: Some(0.0021),
                last_error: Some("connection refused".into()),
                last_error_time: None,
                calls: 10,
                errors: 2,
            }],
            rules: vec![],
            queries: vec![QueryStatus {
                name: "queue_depth".into(),
                namespace: None,
                source: "pipeline.toml:40:1 (adapter.queries[0])".into(),
                query: "sum(jobs)".into(),
                backend: "default".into(),
                max_age_seconds: 120.0,
                refresh_seconds: 15.0,
                state: QueryState::Stale,
                values: vec![ValueStatus {
                    labels: BTreeMap::new(),
                    value: "42".into(),
                }],
                sample_time: None,
                age_seconds: Some(190.0),
                last_update: None,
                last_attempt: None,
                last_duration_seconds: None,
                last_error: Some("connection refused".into()),
                refreshes: 12,
                failures: 5,
            }],
            metrics: vec![],
        }
    }

    #[test]
    fn the_report_round_trips_as_json() {
        let r = report();
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"maxAgeSeconds\":120.0"), "{json}");
        assert!(json.contains("\"state\":\"Stale\""), "{json}");
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), r);
    }

    #[test]
    fn tables_align_and_say_what_is_wrong() {
        let text = render(&report(), "https://127.0.0.1:6443");
        assert!(text.starts_with("prom-adapter 0.1.0 at https://127.0.0.1:6443"));
        assert!(text.contains("last relist 12s ago"), "{text}");
        let backend = text.lines().find(|l| l.contains("default  http")).unwrap();
        assert!(backend.contains("DOWN") && backend.contains("2.1ms") && backend.contains("2/10"));
        let header = text.lines().find(|l| l.contains("NAMESPACE")).unwrap();
        let row = text.lines().find(|l| l.contains("queue_depth")).unwrap();
        assert_eq!(header.find("STATE"), row.find("Stale"), "{text}");
        assert!(row.contains("3m10s") && row.contains("2m00s") && row.contains("15s"));
    }

    #[test]
    fn explain_requests_round_trip_through_the_query_string() {
        let req = ExplainRequest {
            metric: "requests_per_second".into(),
            namespace: "prod".into(),
            selector: "app in (web, api)".into(),
            resource: Some("pods".into()),
            name: None,
            metric_selector: "code=500".into(),
        };
        assert_eq!(ExplainRequest::from_query(Some(&req.to_query())), Some(req));
        let defaults = ExplainRequest::from_query(Some("metric=q")).unwrap();
        assert_eq!(defaults.namespace, "default");
        assert_eq!(defaults.resource, None);
        assert_eq!(ExplainRequest::from_query(Some("namespace=x")), None);
        assert_eq!(ExplainRequest::from_query(None), None);
    }

    #[test]
    fn short_durations() {
        for (s, want) in [
            (0.3, "0.3s"),
            (3.0, "3s"),
            (59.4, "59s"),
            (190.0, "3m10s"),
            (7500.0, "2h05m"),
            (-1.0, "-"),
            (f64::NAN, "-"),
        ] {
            assert_eq!(short_duration(s), want, "{s}");
        }
    }
}
