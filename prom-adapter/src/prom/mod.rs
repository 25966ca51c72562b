//! The Prometheus HTTP API: the [`PromApi`] trait the provider uses, an HTTP client, a fake.
//!
//! - [`wire`]: sans-IO decoding of `/api/v1/query` and `/api/v1/series` answers and error bodies.
//! - [`http`]: [`http::Client`], the hyper + rustls implementation of [`PromApi`].
//! - [`fake`]: [`fake::FakeProm`], an in-memory implementation for provider and discovery tests.
//!
//! Works with anything that speaks the Prometheus query API: Prometheus, VictoriaMetrics, Thanos
//! Query, Mimir and Cortex (with `X-Scope-OrgID` set through [`http::ClientConfig::headers`]).
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::panic
)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub mod fake;
pub mod http;
pub mod wire;

/// One series' labels, `__name__` included when the backend sent it.
pub type Labels = std::collections::BTreeMap<String, String>;

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series' labels (`__name__` is absent after most functions and aggregations).
    pub labels: Labels,
    /// Evaluation time in unix seconds, as Prometheus sends it (millisecond precision).
    pub timestamp: f64,
    /// The value as the decimal string sent (`"1.5"`, `"NaN"`, `"+Inf"`, `"1e+21"`).
    pub value: String,
}

/// The `data` of an `/api/v1/query` answer.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryResult {
    /// `resultType: vector`.
    Vector(Vec<Sample>),
    /// `resultType: scalar`.
    Scalar {
        /// Evaluation time in unix seconds.
        timestamp: f64,
        /// The value as sent.
        value: String,
    },
    /// `resultType: matrix`: callers don't support it; the label sets are kept for the error message.
    Matrix(Vec<Labels>),
    /// `resultType: string`.
    String {
        /// Evaluation time in unix seconds.
        timestamp: f64,
        /// The string as sent.
        value: String,
    },
}

impl QueryResult {
    /// `"vector"`, `"scalar"`, `"matrix"` or `"string"`, as in the API's `resultType`.
    pub fn result_type(&self) -> &'static str {
        match self {
            QueryResult::Vector(_) => "vector",
            QueryResult::Scalar { .. } => "scalar",
            QueryResult::Matrix(_) => "matrix",
            QueryResult::String { .. } => "string",
        }
    }
}

/// Why a call to the backend failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PromError {
    /// Could not connect / TLS failure / connection reset: the backend is down.
    #[error("prometheus is unreachable: {reason}")]
    Unreachable {
        /// The transport error chain, lowercase.
        reason: String,
    },
    /// No answer within the timeout.
    #[error("prometheus timed out: did not answer within {after:?}")]
    Timeout {
        /// How long the client waited.
        after: Duration,
    },
    /// The API answered with `{"status":"error","errorType":..,"error":..}` (Prometheus: 400
    /// bad_data, 422 execution, 503 unavailable/timeout…).
    #[error("prometheus answered {status} {error_type}: {error}")]
    Api {
        /// HTTP status code.
        status: u16,
        /// The API's `errorType` (`bad_data`, `execution`, `timeout`, `canceled`, `internal`,
        /// `unavailable`, `not_found`).
        error_type: String,
        /// The API's `error` message.
        error: String,
    },
    /// Any other non-2xx answer (proxy pages, 404 for a wrong path prefix, 401/403 from an auth
    /// proxy); body truncated to 512 bytes.
    #[error("prometheus answered http {status}: {body}")]
    Http {
        /// HTTP status code.
        status: u16,
        /// The start of the body, lossily decoded as UTF-8.
        body: String,
    },
    /// A 2xx answer that isn't the API's JSON.
    #[error("undecodable answer from prometheus: {reason}")]
    Decode {
        /// What was wrong with it.
        reason: String,
    },
    /// The answer was larger than the configured limit.
    #[error("prometheus answer exceeds {limit} bytes")]
    TooLarge {
        /// The configured `max_response_bytes`.
        limit: usize,
    },
    /// Not sent: this backend already has `running` queries in flight and `queued` waiting
    /// for a turn, the most allowed. A slow backend must not pile up unbounded work here.
    #[error(
        "not sent: {running} queries to this backend are running and {queued} waiting, the most allowed; retry shortly"
    )]
    Overloaded {
        /// The concurrency limit.
        running: usize,
        /// The queue limit.
        queued: usize,
    },
}

impl PromError {
    /// A closed vocabulary for metric labels: `unreachable`, `timeout`, `bad_data`, `execution`,
    /// `unavailable`, `http`, `decode`, `too_large`, `overloaded`, and `api` for other API
    /// error types.
    ///
    /// An API error of type `timeout` (the backend's own query timeout) is `timeout` too.
    pub fn kind(&self) -> &'static str {
        match self {
            PromError::Unreachable { .. } => "unreachable",
            PromError::Timeout { .. } => "timeout",
            PromError::Api { error_type, .. } => match error_type.as_str() {
                "bad_data" => "bad_data",
                "execution" => "execution",
                "unavailable" => "unavailable",
                "timeout" => "timeout",
                _ => "api",
            },
            PromError::Http { .. } => "http",
            PromError::Decode { .. } => "decode",
            PromError::TooLarge { .. } => "too_large",
            PromError::Overloaded { .. } => "overloaded",
        }
    }
}

/// What the adapter needs from a Prometheus-compatible backend. Implemented by the HTTP client
/// and by the fake.
pub trait PromApi: Send + Sync + 'static {
    /// `/api/v1/series` with every matcher as a `match[]`, over [start, end].
    fn series(
        &self,
        matchers: &[String],
        start: SystemTime,
        end: SystemTime,
    ) -> impl Future<Output = Result<Vec<Labels>, PromError>> + Send;

    /// [`PromApi::series`] folded into shapes, as [`wire::decode_series_shapes`] does: all
    /// that discovery needs. The HTTP client folds while decoding.
    fn series_shapes(
        &self,
        matchers: &[String],
        start: SystemTime,
        end: SystemTime,
    ) -> impl Future<Output = Result<Vec<Labels>, PromError>> + Send {
        let series = self.series(matchers, start, end);
        async move { series.await.map(wire::shapes_of) }
    }

    /// `/api/v1/query`; `time: None` lets the backend evaluate at its own now (the sample
    /// timestamps are then the evaluation time).
    fn query(
        &self,
        promql: &str,
        time: Option<SystemTime>,
    ) -> impl Future<Output = Result<QueryResult, PromError>> + Send;
}

/// Shared ownership: a test can keep one `Arc` to a [`fake::FakeProm`] and hand another out.
impl<T: PromApi> PromApi for Arc<T> {
    fn series(
        &self,
        matchers: &[String],
        start: SystemTime,
        end: SystemTime,
    ) -> impl Future<Output = Result<Vec<Labels>, PromError>> + Send {
        T::series(self, matchers, start, end)
    }

    fn series_shapes(
        &self,
        matchers: &[String],
        start: SystemTime,
        end: SystemTime,
    ) -> impl Future<Output = Result<Vec<Labels>, PromError>> + Send {
        T::series_shapes(self, matchers, start, end)
    }

    fn query(
        &self,
        promql: &str,
        time: Option<SystemTime>,
    ) -> impl Future<Output = Result<QueryResult, PromError>> + Send {
        T::query(self, promql, time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_maps_api_error_types_to_a_closed_vocabulary() {
        let api = |t: &str| PromError::Api {
            status: 400,
            error_type: t.to_owned(),
            error: "x".to_owned(),
        };
        assert_eq!(api("bad_data").kind(), "bad_data");
        assert_eq!(api("execution").kind(), "execution");
        assert_eq!(api("unavailable").kind(), "unavailable");
        assert_eq!(api("timeout").kind(), "timeout");
        assert_eq!(api("internal").kind(), "api");
        assert_eq!(api("something new").kind(), "api");
        let others = [
            (PromError::Unreachable { reason: "x".into() }, "unreachable"),
            (
                PromError::Timeout {
                    after: Duration::from_secs(1),
                },
                "timeout",
            ),
            (
                PromError::Http {
                    status: 404,
                    body: String::new(),
                },
                "http",
            ),
            (PromError::Decode { reason: "x".into() }, "decode"),
            (PromError::TooLarge { limit: 1 }, "too_large"),
        ];
        for (e, kind) in others {
            assert_eq!(e.kind(), kind, "{e}");
        }
    }

    #[test]
    fn display_is_lowercase_without_trailing_period() {
        let e = PromError::Api {
            status: 422,
            error_type: "execution".into(),
            error: "query processing would load too many samples into memory".into(),
        };
        assert_eq!(
            e.to_string(),
            "prometheus answered 422 execution: query processing would load too many samples into memory"
        );
        assert_eq!(
            PromError::Timeout {
                after: Duration::from_millis(300)
            }
            .to_string(),
            "prometheus timed out: did not answer within 300ms"
        );
    }
}
