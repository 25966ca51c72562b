//! [`FakeProm`]: an in-memory [`PromApi`] for provider and discovery tests.
//!
//! ```
//! use prom_adapter::prom::fake::{FakeProm, labels, sample};
//! use prom_adapter::prom::{PromApi, QueryResult};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let prom = FakeProm::new();
//! prom.set_vector("sum(up)", vec![sample(&[], 1.0, "3")]);
//! prom.set_all_series(vec![labels(&[("__name__", "up"), ("pod", "a")])]);
//! assert_eq!(
//!     prom.query("sum(up)", None).await,
//!     Ok(QueryResult::Vector(vec![sample(&[], 1.0, "3")]))
//! );
//! assert_eq!(prom.series(&["up".to_owned()], std::time::UNIX_EPOCH, std::time::UNIX_EPOCH).await.unwrap().len(), 1);
//! assert_eq!(prom.queries(), vec!["sum(up)".to_owned()]);
//! # });
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use super::{Labels, PromApi, PromError, QueryResult, Sample};

/// An in-memory backend. Clones share state, so a test can keep one clone and hand another to
/// the code under test (an `Arc<FakeProm>` works as well).
///
/// - Queries: the result set for the exact PromQL string, else an empty vector (what Prometheus
///   answers when no series match).
/// - Series: per matcher, the list set for that exact matcher string; else the fixed list
///   ([`FakeProm::set_all_series`]) filtered by the matcher's metric name when it has one
///   (`up{…}`, `{__name__="up"}`, `{__name__=~"up|down"}`), else all of it. Results of several
///   matchers are unioned without duplicates, like the real endpoint.
/// - Errors: a global error wins over everything; then per-query / per-matcher errors.
/// - Every call is recorded, also the failed ones.
#[derive(Debug, Clone, Default)]
pub struct FakeProm {
    state: Arc<Mutex<State>>,
}

/// One recorded `series` call.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesCall {
    /// The `match[]` selectors, in order.
    pub matchers: Vec<String>,
    /// Window start.
    pub start: SystemTime,
    /// Window end.
    pub end: SystemTime,
}

/// One recorded `query` call.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryCall {
    /// The PromQL sent.
    pub promql: String,
    /// The evaluation time asked for (`None`: the backend's now).
    pub time: Option<SystemTime>,
}

#[derive(Debug, Default)]
struct State {
    series_by_matcher: HashMap<String, Vec<Labels>>,
    all_series: Vec<Labels>,
    results: HashMap<String, QueryResult>,
    query_errors: HashMap<String, PromError>,
    series_errors: HashMap<String, PromError>,
    global_error: Option<PromError>,
    query_calls: Vec<QueryCall>,
    series_calls: Vec<SeriesCall>,
}

impl FakeProm {
    /// An empty backend: no series, every query answers an empty vector.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the state from the others.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The answer to a `series` call whose `match[]` is exactly `matcher`.
    pub fn set_series(&self, matcher: impl Into<String>, series: Vec<Labels>) {
        self.state()
            .series_by_matcher
            .insert(matcher.into(), series);
    }

    /// The fixed series list used for matchers without an exact [`FakeProm::set_series`] entry.
    pub fn set_all_series(&self, series: Vec<Labels>) {
        self.state().all_series = series;
    }

    /// The answer to the exact PromQL string `promql`.
    pub fn set_result(&self, promql: impl Into<String>, result: QueryResult) {
        let promql = promql.into();
        let mut state = self.state();
        state.query_errors.remove(&promql);
        state.results.insert(promql, result);
    }

    /// Shorthand for [`FakeProm::set_result`] with a vector.
    pub fn set_vector(&self, promql: impl Into<String>, samples: Vec<Sample>) {
        self.set_result(promql, QueryResult::Vector(samples));
    }

    /// Makes the exact PromQL string `promql` fail (until [`FakeProm::set_result`] for it).
    pub fn set_query_error(&self, promql: impl Into<String>, error: PromError) {
        self.state().query_errors.insert(promql.into(), error);
    }

    /// Makes every `series` call that includes the exact matcher string fail.
    pub fn set_series_error(&self, matcher: impl Into<String>, error: PromError) {
        self.state().series_errors.insert(matcher.into(), error);
    }

    /// Makes every call fail with `error` (`None`: back to normal answers).
    pub fn set_error(&self, error: Option<PromError>) {
        self.state().global_error = error;
    }

    /// Removes all per-query and per-matcher errors and the global one.
    pub fn clear_errors(&self) {
        let mut state = self.state();
        state.global_error = None;
        state.query_errors.clear();
        state.series_errors.clear();
    }

    /// The PromQL of every `query` call so far, in order.
    pub fn queries(&self) -> Vec<String> {
        self.state()
            .query_calls
            .iter()
            .map(|c| c.promql.clone())
            .collect()
    }

    /// Every `query` call so far, with its evaluation time.
    pub fn query_calls(&self) -> Vec<QueryCall> {
        self.state().query_calls.clone()
    }

    /// Every `series` call so far.
    pub fn series_calls(&self) -> Vec<SeriesCall> {
        self.state().series_calls.clone()
    }

    /// Forgets the recorded calls (results and errors stay).
    pub fn clear_calls(&self) {
        let mut state = self.state();
        state.query_calls.clear();
        state.series_calls.clear();
    }

    fn answer_series(
        &self,
        matchers: &[String],
        start: SystemTime,
        end: SystemTime,
    ) -> Result<Vec<Labels>, PromError> {
        let mut state = self.state();
        state.series_calls.push(SeriesCall {
            matchers: matchers.to_vec(),
            start,
            end,
        });
        if let Some(e) = &state.global_error {
            return Err(e.clone());
        }
        if let Some(e) = matchers.iter().find_map(|m| state.series_errors.get(m)) {
            return Err(e.clone());
        }
        let mut out: Vec<Labels> = Vec::new();
        for matcher in matchers {
            let found: Vec<&Labels> = match state.series_by_matcher.get(matcher) {
                Some(list) => list.iter().collect(),
                None => {
                    let filter = NameFilter::parse(matcher);
                    state
                        .all_series
                        .iter()
                        .filter(|l| filter.matches(l))
                        .collect()
                }
            };
            for labels in found {
                if !out.contains(labels) {
                    out.push(labels.clone());
                }
            }
        }
        Ok(out)
    }

    fn answer_query(
        &self,
        promql: &str,
        time: Option<SystemTime>,
    ) -> Result<QueryResult, PromError> {
        let mut state = self.state();
        state.query_calls.push(QueryCall {
            promql: promql.to_owned(),
            time,
        });
        if let Some(e) = &state.global_error {
            return Err(e.clone());
        }
        if let Some(e) = state.query_errors.get(promql) {
            return Err(e.clone());
        }
        Ok(state
            .results
            .get(promql)
            .cloned()
            .unwrap_or(QueryResult::Vector(Vec::new())))
    }
}

impl PromApi for FakeProm {
    fn series(
        &self,
        matchers: &[String],
        start: SystemTime,
        end: SystemTime,
    ) -> impl Future<Output = Result<Vec<Labels>, PromError>> + Send {
        std::future::ready(self.answer_series(matchers, start, end))
    }

    fn query(
        &self,
        promql: &str,
        time: Option<SystemTime>,
    ) -> impl Future<Output = Result<QueryResult, PromError>> + Send {
        std::future::ready(self.answer_query(promql, time))
    }
}

/// A label set from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A vector sample from label pairs, a timestamp and a value string.
pub fn sample(pairs: &[(&str, &str)], timestamp: f64, value: &str) -> Sample {
    Sample {
        labels: labels(pairs),
        timestamp,
        value: value.to_owned(),
    }
}

/// The metric-name part of a series selector, as far as the fake understands it.
enum NameFilter {
    Any,
    Eq(String),
    Regex(regex::Regex),
}

impl NameFilter {
    fn parse(selector: &str) -> NameFilter {
        let s = selector.trim();
        let ident_len = s
            .char_indices()
            .find(|&(i, c)| {
                !(c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
            })
            .map_or(s.len(), |(i, _)| i);
        if let Some(name) = s.get(..ident_len).filter(|n| !n.is_empty()) {
            return NameFilter::Eq(name.to_owned());
        }
        let Some(pos) = s.find("__name__") else {
            return NameFilter::Any;
        };
        let rest = s.get(pos + "__name__".len()..).unwrap_or("").trim_start();
        let (is_regex, rest) = if let Some(r) = rest.strip_prefix("=~") {
            (true, r)
        } else if let Some(r) = rest.strip_prefix('=') {
            (false, r)
        } else {
            // `!=` / `!~`: not worth modelling.
            return NameFilter::Any;
        };
        let Some(value) = quoted(rest.trim_start()) else {
            return NameFilter::Any;
        };
        if !is_regex {
            return NameFilter::Eq(value);
        }
        regex::Regex::new(&format!("^(?:{value})$")).map_or(NameFilter::Any, NameFilter::Regex)
    }

    fn matches(&self, labels: &Labels) -> bool {
        let name = labels.get("__name__").map_or("", String::as_str);
        match self {
            NameFilter::Any => true,
            NameFilter::Eq(want) => name == want,
            NameFilter::Regex(re) => re.is_match(name),
        }
    }
}

/// The content of a leading `"…"` or `'…'` string with `\\`, `\"` and `\'` unescaped.
fn quoted(s: &str) -> Option<String> {
    let mut chars = s.chars();
    let quote = chars.next().filter(|&c| c == '"' || c == '\'')?;
    let mut out = String::new();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            c if c == quote => return Some(out),
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn names(series: &[Labels]) -> Vec<&str> {
        series
            .iter()
            .map(|l| l.get("__name__").map_or("", String::as_str))
            .collect()
    }

    #[test]
    fn queries_answer_set_results_else_empty_vector_and_are_recorded() {
        let prom = FakeProm::new();
        prom.set_vector("sum(up)", vec![sample(&[("a", "b")], 10.0, "1.5")]);
        let t = UNIX_EPOCH + Duration::from_secs(10);
        block_on(async {
            assert_eq!(
                prom.query("sum(up)", Some(t)).await,
                Ok(QueryResult::Vector(vec![sample(
                    &[("a", "b")],
                    10.0,
                    "1.5"
                )]))
            );
            assert_eq!(
                prom.query("other", None).await,
                Ok(QueryResult::Vector(vec![]))
            );
        });
        assert_eq!(prom.queries(), vec!["sum(up)", "other"]);
        assert_eq!(
            prom.query_calls(),
            vec![
                QueryCall {
                    promql: "sum(up)".into(),
                    time: Some(t)
                },
                QueryCall {
                    promql: "other".into(),
                    time: None
                },
            ]
        );
        prom.clear_calls();
        assert!(prom.queries().is_empty());
    }

    #[test]
    fn errors_global_then_per_query_and_changeable_between_calls() {
        let prom = FakeProm::new();
        let shared = Arc::new(prom.clone());
        let down = PromError::Unreachable {
            reason: "connection refused".into(),
        };
        let bad = PromError::Api {
            status: 400,
            error_type: "bad_data".into(),
            error: "parse error".into(),
        };
        prom.set_query_error("bad(", bad.clone());
        block_on(async {
            assert_eq!(shared.query("bad(", None).await, Err(bad.clone()));
            assert_eq!(
                shared.query("ok", None).await,
                Ok(QueryResult::Vector(vec![]))
            );
            prom.set_error(Some(down.clone()));
            assert_eq!(shared.query("ok", None).await, Err(down.clone()));
            assert_eq!(
                shared.series(&["up".into()], UNIX_EPOCH, UNIX_EPOCH).await,
                Err(down.clone())
            );
            prom.set_error(None);
            assert_eq!(
                shared.query("ok", None).await,
                Ok(QueryResult::Vector(vec![]))
            );
            prom.set_result("bad(", QueryResult::Vector(vec![]));
            assert_eq!(
                shared.query("bad(", None).await,
                Ok(QueryResult::Vector(vec![]))
            );
        });
        assert_eq!(shared.queries().len(), 5);
        assert_eq!(shared.series_calls().len(), 1);
    }

    #[test]
    fn series_exact_matcher_first_else_fixed_list_filtered_by_name() {
        let prom = FakeProm::new();
        prom.set_all_series(vec![
            labels(&[("__name__", "up"), ("pod", "a")]),
            labels(&[
                ("__name__", "container_cpu_usage_seconds_total"),
                ("pod", "a"),
            ]),
            labels(&[
                ("__name__", "container_memory_working_set_bytes"),
                ("pod", "b"),
            ]),
            labels(&[("__name__", "http_requests_total"), ("pod", "c")]),
        ]);
        prom.set_series(
            r#"{__name__=~"^container_.*",container!="POD"}"#,
            vec![labels(&[("__name__", "exact")])],
        );
        let run = |m: &[&str]| {
            let m: Vec<String> = m.iter().map(|s| (*s).to_owned()).collect();
            let start = UNIX_EPOCH + Duration::from_secs(1);
            let end = UNIX_EPOCH + Duration::from_secs(2);
            block_on(prom.series(&m, start, end)).unwrap()
        };
        assert_eq!(
            names(&run(&[r#"{__name__=~"^container_.*",container!="POD"}"#])),
            ["exact"]
        );
        assert_eq!(
            names(&run(&[r#"{__name__=~"container_.*",pod!=""}"#])),
            [
                "container_cpu_usage_seconds_total",
                "container_memory_working_set_bytes"
            ]
        );
        assert_eq!(names(&run(&[r#"up{pod!=""}"#])), ["up"]);
        assert_eq!(names(&run(&[r#"{ __name__ = "up" }"#])), ["up"]);
        assert_eq!(
            names(&run(&["up", "up", "http_requests_total"])),
            ["up", "http_requests_total"]
        );
        assert_eq!(run(&[r#"{pod!=""}"#]).len(), 4);
        assert_eq!(run(&[r#"{__name__!="up"}"#]).len(), 4);
        assert!(run(&["nothing_here"]).is_empty());
        let calls = prom.series_calls();
        assert_eq!(calls.len(), 8);
        assert_eq!(calls[4].matchers, ["up", "up", "http_requests_total"]);
        assert_eq!(calls[0].start, UNIX_EPOCH + Duration::from_secs(1));
        assert_eq!(calls[0].end, UNIX_EPOCH + Duration::from_secs(2));
    }

    #[test]
    fn series_errors_per_matcher() {
        let prom = FakeProm::new();
        let e = PromError::Timeout {
            after: Duration::from_secs(1),
        };
        prom.set_series_error("up", e.clone());
        assert_eq!(
            block_on(prom.series(&["x".into(), "up".into()], UNIX_EPOCH, UNIX_EPOCH)),
            Err(e)
        );
        prom.clear_errors();
        assert_eq!(
            block_on(prom.series(&["up".into()], UNIX_EPOCH, UNIX_EPOCH)),
            Ok(vec![])
        );
    }

    #[test]
    fn quoted_strings() {
        assert_eq!(quoted(r#""a\\.b\"c" rest"#), Some(r#"a\.b"c"#.to_owned()));
        assert_eq!(quoted("'x'"), Some("x".to_owned()));
        assert_eq!(quoted(r#""open"#), None);
        assert_eq!(quoted("x"), None);
    }
}
