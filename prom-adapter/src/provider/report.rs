//! `/status` and `/explain`: what the provider knows about its rules, queries, backends and
//! last answers, and one request taken apart step by step.

use std::sync::PoisonError;

use super::{Provider, bad_selector};
use crate::api::ApiError;
use crate::api::route::{CustomRequest, ExternalRequest, ObjectName};
use crate::api::types::{self, CustomVersion, rfc3339};
use crate::prom::{PromApi, wire};
use crate::rules::named::QuerySource;
use crate::rules::resources::GroupResource;
use crate::rules::{Rule, RuleKind};
use crate::selector::Selector;
use crate::status::{
    BackendStatus, DiscoveryStatus, ExplainRequest, ExplainedError, Explanation, MetricStatus,
    Report, RuleStatus,
};
use crate::telemetry::now_unix;

/// Seconds since an RFC 3339 timestamp the adapter wrote (`2026-12-07T16:00:00Z`).
fn age_of(rfc: &str, now: f64) -> Option<f64> {
    let (date, time) = rfc.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':').map(str::parse::<i64>);
    let (h, min, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let unix = days * 86_400 + h * 3600 + min * 60 + s;
    Some((now - unix as f64).max(0.0))
}

fn explained(e: &ApiError) -> ExplainedError {
    ExplainedError {
        code: e.code(),
        reason: e.reason().to_owned(),
        message: e.to_string(),
    }
}

fn rule_source(rule: &Rule) -> String {
    QuerySource::Config(rule.origin.clone()).describe()
}

impl<P: PromApi> Provider<P> {
    fn backend_label(&self, name: Option<&str>) -> String {
        name.map_or_else(|| self.first_name().to_owned(), str::to_owned)
    }

    /// Everything `/status` shows, as of now.
    pub fn report(&self) -> Report {
        let now = now_unix();
        let catalog = self.catalog();
        let gauge = |g: &prometheus::Gauge| Some(g.get()).filter(|t| *t > 0.0);
        let last_relist = gauge(&self.metrics.last_relist);
        let discovery = DiscoveryStatus {
            relist_interval_seconds: self.relist_interval.as_secs_f64(),
            last_relist: last_relist.map(rfc3339),
            last_relist_age_seconds: last_relist.map(|t| (now - t).max(0.0)),
            last_success: gauge(&self.metrics.last_relist_success).map(rfc3339),
            custom_metrics: self.resource_list(false).len(),
            external_metrics: self.resource_list(true).len(),
        };
        let backends = self
            .backends
            .iter()
            .map(|b| {
                let h = b.health.lock().unwrap_or_else(PoisonError::into_inner);
                BackendStatus {
                    name: b.name.clone(),
                    url: b.url.clone(),
                    up: h.up,
                    last_call: h.last_call.map(rfc3339),
                    last_latency_seconds: h.latency.map(|d| d.as_secs_f64()),
                    last_error: h.last_error.as_ref().map(|(_, e)| e.clone()),
                    last_error_time: h.last_error.as_ref().map(|(t, _)| rfc3339(*t)),
                    calls: h.calls,
                    errors: h.errors,
                }
            })
            .collect();
        let counts = catalog.registry.metrics_per_rule(&catalog.rules);
        let mut rules: Vec<RuleStatus> = catalog
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let d = catalog.discovery.get(i).cloned().unwrap_or_default();
                RuleStatus {
                    kind: match rule.kind {
                        RuleKind::Custom => "custom",
                        RuleKind::External => "external",
                    }
                    .into(),
                    source: rule_source(rule),
                    series_query: rule.series_query.clone(),
                    backend: self.backend_label(rule.backend.as_deref()),
                    metrics: counts.get(i).copied().unwrap_or_default(),
                    last_discovery: d.last_ok.map(rfc3339),
                    last_error: d.last_error,
                }
            })
            .collect();
        if let Some(r) = &catalog.rules.resource {
            rules.push(RuleStatus {
                kind: "resource".into(),
                source: QuerySource::Config(r.origin.clone()).describe(),
                series_query: "-".into(),
                backend: self.backend_label(r.backend.as_deref()),
                metrics: 2,
                last_discovery: None,
                last_error: None,
            });
        }
        let queries = self
            .named
            .slots()
            .iter()
            .map(|slot| slot.status(&self.backend_label(slot.query.backend.as_deref()), now))
            .collect();
        let metrics = self
            .served
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|((api, namespace, resource, metric), s)| MetricStatus {
                api: (*api).to_owned(),
                namespace: namespace.clone(),
                resource: resource.clone(),
                metric: metric.clone(),
                last_request: rfc3339(s.at),
                items: s.items,
                value: s.value.clone(),
                age_seconds: s.sample_time.as_deref().and_then(|t| age_of(t, now)),
                sample_time: s.sample_time.clone(),
                last_error: s.error.clone(),
            })
            .collect();
        Report {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            generated: rfc3339(now),
            discovery,
            backends,
            rules,
            queries,
            metrics,
        }
    }

    /// One request taken apart: what serves it, the PromQL, the backend's answer now, and
    /// what the API answers. An unknown metric is a 404.
    pub async fn explain(&self, req: &ExplainRequest) -> Result<Explanation, ApiError> {
        let mut out = Explanation {
            api: String::new(),
            metric: req.metric.clone(),
            namespace: req.namespace.clone(),
            resource: None,
            object: None,
            selector: req.selector.clone(),
            served_by: String::new(),
            backend: String::new(),
            promql: String::new(),
            backend_answer: None,
            backend_error: None,
            answer: None,
            answer_error: None,
            notes: Vec::new(),
        };
        let external = ExternalRequest {
            namespace: req.namespace.clone(),
            metric: req.metric.clone(),
            label_selector: req.selector.clone(),
        };
        let backend_name;
        if let (None, Some(slot)) = (&req.resource, self.named.find(&req.metric, &req.namespace)) {
            let q = &slot.query;
            out.api = "named".into();
            out.served_by = format!("named query {} ({})", q.name, q.source.describe());
            out.promql = q.query.clone();
            out.notes.push(format!(
                "answers come from a cache refreshed every {}s; a value older than {}s is refused (503 Stale), never served as 0",
                q.refresh.as_secs_f64(),
                q.max_age.as_secs_f64()
            ));
            backend_name = q.backend.clone();
            Self::answer_into(&mut out, self.external(&external).await, |items| {
                types::external_metric_value_list(items)
            });
        } else if req.resource.is_none() && self.catalog().registry.external(&req.metric).is_some()
        {
            let catalog = self.catalog();
            let entry = catalog
                .registry
                .external(&req.metric)
                .cloned()
                .ok_or_else(|| ApiError::metric_not_found(&req.metric, "external metrics"))?;
            let rule = Self::external_rule(&catalog.rules, &entry)?;
            out.api = "external".into();
            out.served_by = format!("external rule {}", rule_source(rule));
            out.promql = self.render_external(&external).await?;
            backend_name = rule.backend.clone();
            Self::answer_into(&mut out, self.external(&external).await, |items| {
                types::external_metric_value_list(items)
            });
        } else {
            let resource = match &req.resource {
                Some(r) => r.clone(),
                None => self.only_resource_of(&req.metric).await?,
            };
            let custom = CustomRequest {
                version: CustomVersion::V1beta2,
                namespace: Some(req.namespace.clone()),
                resource: resource.clone(),
                name: req.name.clone().map_or(ObjectName::All, ObjectName::Named),
                metric: req.metric.clone(),
                label_selector: req.selector.clone(),
                metric_label_selector: req.metric_selector.clone(),
            };
            let gr = GroupResource::parse(&resource);
            let (catalog, entry) = self.custom_entry(&gr, &req.metric).await?;
            let rule = catalog
                .rules
                .custom
                .get(entry.rule)
                .ok_or_else(|| ApiError::Internal("rule index out of range".into()))?;
            out.api = "custom".into();
            out.resource = Some(gr.to_string());
            out.object = Some(req.name.clone().unwrap_or_else(|| "*".into()));
            out.served_by = format!(
                "custom rule {} (series {})",
                rule_source(rule),
                entry.series
            );
            let metric_selector = Selector::parse(&req.metric_selector)
                .map_err(|e| bad_selector("metricLabelSelector", e))?;
            out.promql = Self::plan_custom(&catalog.rules, &custom, &entry, &metric_selector)?
                .1
                .promql;
            backend_name = rule.backend.clone();
            Self::answer_into(&mut out, self.custom(&custom).await, |items| {
                types::metric_value_list(CustomVersion::V1beta2, items)
            });
        }
        out.backend = backend_name
            .clone()
            .unwrap_or_else(|| self.first_name().to_owned());
        match self.backend(backend_name.as_deref()) {
            Ok(b) => match self.run_query(b, &out.promql).await {
                Ok(data) => out.backend_answer = Some(wire::data_json(&data)),
                Err(e) => out.backend_error = Some(e.to_string()),
            },
            Err(e) => out.backend_error = Some(e.to_string()),
        }
        Ok(out)
    }

    fn answer_into<T>(
        out: &mut Explanation,
        answer: Result<Vec<T>, ApiError>,
        encode: impl Fn(&[T]) -> Result<Vec<u8>, serde_json::Error>,
    ) {
        match answer {
            Ok(items) => {
                out.answer = encode(&items)
                    .ok()
                    .and_then(|body| serde_json::from_slice(&body).ok());
            }
            Err(e) => out.answer_error = Some(explained(&e)),
        }
    }

    /// The one resource a custom metric is served for; several are a 400 naming them.
    async fn only_resource_of(&self, metric: &str) -> Result<String, ApiError> {
        let mut found = self.registry().resources_of(metric);
        if found.is_empty() {
            self.relist_on_demand().await;
            found = self.registry().resources_of(metric);
        }
        match found.as_slice() {
            [] => Err(ApiError::NotFound(format!(
                "no rule or named query serves a metric named {metric}"
            ))),
            [one] => Ok(one.to_string()),
            many => Err(ApiError::BadRequest(format!(
                "{metric} is served for {}: name one with resource",
                many.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_of_the_timestamps_the_adapter_writes() {
        let t = 1_765_123_200.0; // 2025-12-07T16:00:00Z
        assert_eq!(rfc3339(t), "2025-12-07T16:00:00Z");
        assert_eq!(age_of("2025-12-07T16:00:00Z", t + 12.0), Some(12.0));
        assert_eq!(age_of("2000-02-29T00:00:00Z", 951_782_400.0), Some(0.0));
        assert_eq!(age_of("garbage", t), None);
    }
}
