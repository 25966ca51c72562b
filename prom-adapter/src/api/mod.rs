//! Only this module knows the Kubernetes JSON shapes: request paths in, bodies out.
//!
//! # Layout
//! - [`route`]: request path and query → [`route::Route`].
//! - [`types`]: value lists, discovery documents and timestamps, pinned by golden tests.
//! - [`resource`]: `metrics.k8s.io` pod and node metrics, as metrics-server writes them.
//! - [`ApiError`]: every failure as a `metav1.Status` with the matching HTTP code.

pub mod resource;
pub mod route;
pub mod types;

use serde::Serialize;

/// The custom metrics API group.
pub const CUSTOM_GROUP: &str = "custom.metrics.k8s.io";
/// The external metrics API group.
pub const EXTERNAL_GROUP: &str = "external.metrics.k8s.io";
/// The resource metrics API group (metrics-server's).
pub const RESOURCE_GROUP: &str = "metrics.k8s.io";

/// A request that fails, classified as Kubernetes clients expect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// Unknown metric, object or path (404).
    #[error("{0}")]
    NotFound(String),
    /// Malformed selector or path (400).
    #[error("{0}")]
    BadRequest(String),
    /// No valid credentials (401).
    #[error("Unauthorized")]
    Unauthorized,
    /// Authenticated but not allowed (403); the message says who may not do what, and why.
    #[error("{0}")]
    Forbidden(String),
    /// Anything but GET (405).
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// The backend is down, erroring, or has no usable value (503).
    #[error("{0}")]
    Unavailable(String),
    /// A named query's value is older than its `maxAge` (503, reason `Stale`): the HPA
    /// holds still rather than act on an old number.
    #[error("stale: {0}")]
    Stale(String),
    /// The request's headers are larger than the server accepts (431).
    #[error("{0}")]
    HeadersTooLarge(String),
    /// Too many backend queries at once (503 with `Retry-After`): load is shed here rather
    /// than queued without bound.
    #[error("{0}")]
    Overloaded(String),
    /// A bug or a rule that cannot work (500).
    #[error("Internal error occurred: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            Self::NotFound(_) => 404,
            Self::BadRequest(_) => 400,
            Self::Unauthorized => 401,
            Self::Forbidden(_) => 403,
            Self::MethodNotAllowed => 405,
            Self::HeadersTooLarge(_) => 431,
            Self::Unavailable(_) | Self::Stale(_) | Self::Overloaded(_) => 503,
            Self::Internal(_) => 500,
        }
    }

    /// The `metav1.StatusReason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "NotFound",
            Self::BadRequest(_) => "BadRequest",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden(_) => "Forbidden",
            Self::MethodNotAllowed => "MethodNotAllowed",
            Self::HeadersTooLarge(_) => "RequestHeaderFieldsTooLarge",
            Self::Unavailable(_) => "ServiceUnavailable",
            Self::Stale(_) => "Stale",
            Self::Overloaded(_) => "ServiceUnavailable",
            Self::Internal(_) => "InternalError",
        }
    }

    /// CMA's wording for a metric the rules don't serve: "the server could not find the
    /// metric X for Y".
    pub fn metric_not_found(metric: &str, what: &str) -> Self {
        Self::NotFound(format!(
            "the server could not find the metric {metric} for {what}"
        ))
    }

    /// apimachinery's `NewNotFound`: `<resource> "<name>" not found`, e.g.
    /// `podmetrics.metrics.k8s.io "default/web-0" not found`.
    pub fn object_not_found(resource: &str, name: &str) -> Self {
        Self::NotFound(format!("{resource} \"{name}\" not found"))
    }

    /// Seconds a client should wait before asking again (`Retry-After`, and the Status'
    /// `details.retryAfterSeconds`), for errors that pass by themselves.
    pub fn retry_after(&self) -> Option<u32> {
        matches!(self, Self::Overloaded(_)).then_some(1)
    }

    /// The `metav1.Status` body.
    pub fn status_body(&self) -> Vec<u8> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Status<'a> {
            kind: &'static str,
            api_version: &'static str,
            metadata: types::ListMeta,
            status: &'static str,
            message: &'a str,
            reason: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            details: Option<Details>,
            code: u16,
        }
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Details {
            retry_after_seconds: u32,
        }
        let message = self.to_string();
        serde_json::to_vec(&Status {
            kind: "Status",
            api_version: "v1",
            metadata: types::ListMeta {},
            status: "Failure",
            message: &message,
            reason: self.reason(),
            details: self.retry_after().map(|s| Details {
                retry_after_seconds: s,
            }),
            code: self.code(),
        })
        .unwrap_or_else(|_| {
            b"{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\"}".to_vec()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_bodies_golden() {
        let body: serde_json::Value = serde_json::from_slice(
            &ApiError::metric_not_found("http_requests", "pods").status_body(),
        )
        .unwrap();
        assert_eq!(
            body,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "the server could not find the metric http_requests for pods",
                   "reason": "NotFound", "code": 404})
        );
        for (e, code, reason) in [
            (ApiError::BadRequest("x".into()), 400, "BadRequest"),
            (ApiError::Unauthorized, 401, "Unauthorized"),
            (ApiError::Forbidden("x".into()), 403, "Forbidden"),
            (ApiError::MethodNotAllowed, 405, "MethodNotAllowed"),
            (
                ApiError::HeadersTooLarge("x".into()),
                431,
                "RequestHeaderFieldsTooLarge",
            ),
            (ApiError::Unavailable("x".into()), 503, "ServiceUnavailable"),
            (ApiError::Stale("x".into()), 503, "Stale"),
            (ApiError::Overloaded("x".into()), 503, "ServiceUnavailable"),
            (ApiError::Internal("x".into()), 500, "InternalError"),
        ] {
            let body: serde_json::Value = serde_json::from_slice(&e.status_body()).unwrap();
            assert_eq!(body["code"], code);
            assert_eq!(body["reason"], reason);
            assert_eq!(e.code(), code);
        }
        let body: serde_json::Value =
            serde_json::from_slice(&ApiError::Overloaded("busy".into()).status_body()).unwrap();
        assert_eq!(body["details"]["retryAfterSeconds"], 1);
    }
}
