//! The HTTPS edge: one pure router ([`respond`]) that tests call directly, and the hyper
//! handler around it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use common::http::Body;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use common::http::ConnInfo;

use crate::api::route::{self, ResourceKind, Route};
use crate::api::{ApiError, CUSTOM_GROUP, EXTERNAL_GROUP, RESOURCE_GROUP};
use crate::api::{resource, types};
use crate::auth::kube_api::{KubeAuth, KubeAuthApi};
use crate::auth::{self, Attributes, Authenticator, Authorizer, Decision, UserInfo};
use crate::forward::{Forwarder, Relayed};
use crate::prom::PromApi;
use crate::provider::Provider;
use crate::telemetry::Metrics;

/// A readiness condition checked on every `/readyz`.
pub type ReadyCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// Who may ask what.
pub enum Access<K> {
    /// `--insecure-dev`: everyone, everything.
    Open,
    /// kube-apiserver's delegated authentication and authorization.
    Delegated {
        /// Front proxy, client certificates, TokenReview.
        authn: Arc<Authenticator<K>>,
        /// SubjectAccessReview.
        authz: Arc<Authorizer<K>>,
        /// Paths served without credentials.
        always_allow: Vec<String>,
    },
}

/// What the handlers share.
pub struct State<P, K = KubeAuth> {
    /// The core.
    pub provider: Arc<Provider<P>>,
    /// Self-metrics.
    pub metrics: Arc<Metrics>,
    /// Serving: config loaded, certificate in place, listener bound.
    pub ready: AtomicBool,
    /// A further readiness condition: the object cache's first sync.
    pub ready_check: Option<ReadyCheck>,
    /// Authentication and authorization.
    pub access: Access<K>,
    /// Where external metrics without a rule here are forwarded, if anywhere.
    pub forwarder: Option<Arc<Forwarder>>,
}

/// An answer before it becomes an HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
    /// The `group` label of the request metrics (a closed set).
    pub group: &'static str,
    /// `Retry-After` seconds, for refusals that pass by themselves.
    pub retry_after: Option<u32>,
}

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

fn json(body: Result<Vec<u8>, serde_json::Error>, group: &'static str) -> Answer {
    match body {
        Ok(body) => Answer {
            status: StatusCode::OK,
            content_type: JSON,
            body,
            group,
            retry_after: None,
        },
        Err(e) => error(
            &ApiError::Internal(format!("encoding the answer: {e}")),
            group,
        ),
    }
}

fn error(e: &ApiError, group: &'static str) -> Answer {
    Answer {
        status: StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        content_type: JSON,
        body: e.status_body(),
        group,
        retry_after: e.retry_after(),
    }
}

fn text(status: StatusCode, body: &str, group: &'static str) -> Answer {
    Answer {
        status,
        content_type: TEXT,
        body: body.as_bytes().to_vec(),
        group,
        retry_after: None,
    }
}

/// The minimal OpenAPI v2 document: kube-apiserver downloads it from every aggregated
/// server and must be able to parse it (404 is also accepted; a valid empty spec avoids the
/// aggregator's error-and-requeue logs on servers that disagree).
const OPENAPI_V2: &str =
    r#"{"swagger":"2.0","info":{"title":"prom-adapter","version":"v1"},"paths":{}}"#;
/// The OpenAPI v3 root: no group-version documents.
const OPENAPI_V3: &str = r#"{"paths":{}}"#;

/// Answers one request. `method`, `path` and `query` are all it reads.
pub async fn respond<P: PromApi, K>(
    state: &State<P, K>,
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Answer {
    let group = group_of(path);
    if method != Method::GET && method != Method::HEAD {
        return error(&ApiError::MethodNotAllowed, group);
    }
    match path {
        "/healthz" | "/livez" => return text(StatusCode::OK, "ok", group),
        "/readyz" => {
            let checked = state.ready_check.as_ref().is_none_or(|check| check());
            return if state.ready.load(Ordering::Relaxed) && checked {
                text(StatusCode::OK, "ok", group)
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready", group)
            };
        }
        "/metrics" => {
            return Answer {
                status: StatusCode::OK,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: state.metrics.render(),
                group,
                retry_after: None,
            };
        }
        "/status" => return json(serde_json::to_vec(&state.provider.report()), group),
        "/explain" => {
            let Some(req) = crate::status::ExplainRequest::from_query(query) else {
                return error(
                    &ApiError::BadRequest(
                        "explain needs ?metric=NAME (and namespace, selector, resource, name, metricSelector)"
                            .into(),
                    ),
                    group,
                );
            };
            return match state.provider.explain(&req).await {
                Ok(e) => json(serde_json::to_vec(&e), group),
                Err(e) => error(&e, group),
            };
        }
        "/openapi/v2" => return json(Ok(OPENAPI_V2.as_bytes().to_vec()), group),
        "/openapi/v3" => return json(Ok(OPENAPI_V3.as_bytes().to_vec()), group),
        _ => {}
    }
    let route = match route::parse(path, query) {
        Ok(r) => r,
        Err(e) => return error(&e, group),
    };
    let provider = &state.provider;
    let resource_metrics = provider.serves_resource_metrics();
    let not_found =
        || ApiError::NotFound("the server could not find the requested resource".into());
    match route {
        Route::Apis => json(types::api_group_list(resource_metrics), group),
        Route::Group(name) => match types::api_group(&name, resource_metrics) {
            Some(body) => json(body, group),
            None => error(&not_found(), group),
        },
        Route::ResourceList {
            group: RESOURCE_GROUP,
            ..
        }
        | Route::Resource(_)
            if !resource_metrics =>
        {
            error(&not_found(), group)
        }
        Route::ResourceList {
            group: RESOURCE_GROUP,
            ..
        } => json(resource::resource_list(), group),
        Route::Resource(req) => {
            let one = req.name.is_some();
            let body =
                match req.kind {
                    ResourceKind::Pods => provider.pod_metrics(&req).await.map(|items| match items
                        .first()
                    {
                        Some(item) if one => resource::pod_metrics(item),
                        _ => resource::pod_metrics_list(&items),
                    }),
                    ResourceKind::Nodes => {
                        provider
                            .node_metrics(&req)
                            .await
                            .map(|items| match items.first() {
                                Some(item) if one => resource::node_metrics(item),
                                _ => resource::node_metrics_list(&items),
                            })
                    }
                };
            match body {
                Ok(body) => json(body, group),
                Err(e) => error(&e, group),
            }
        }
        Route::ResourceList { group: g, version } => {
            let external = g == EXTERNAL_GROUP;
            let mut resources = provider.resource_list(external);
            if let Some(f) = state.forwarder.as_ref().filter(|_| external) {
                resources = f.merged(resources);
            }
            let gv = format!(
                "{}/{version}",
                if external {
                    EXTERNAL_GROUP
                } else {
                    CUSTOM_GROUP
                }
            );
            json(types::api_resource_list(&gv, &resources), group)
        }
        Route::Custom(req) => match provider.custom(&req).await {
            Ok(items) => json(types::metric_value_list(req.version, &items), group),
            Err(e) => error(&e, group),
        },
        Route::External(req) => {
            let target = match query {
                Some(q) => format!("{path}?{q}"),
                None => path.to_owned(),
            };
            let Some(f) = state.forwarder.as_deref() else {
                return match provider.external(&req).await {
                    Ok(items) => json(types::external_metric_value_list(&items), group),
                    Err(e) => error(&e, group),
                };
            };
            // A metric the upstream lists and no rule here serves goes there at once, without
            // the on-demand relist an unknown metric gets.
            if !provider.serves_external(&req.metric)
                && f.listed().iter().any(|r| r.name == req.metric)
            {
                return relayed(f.forward(&target).await, group);
            }
            match provider.external(&req).await {
                Ok(items) => json(types::external_metric_value_list(&items), group),
                Err(ApiError::NotFound(_)) if !provider.serves_external(&req.metric) => {
                    relayed(f.forward(&target).await, group)
                }
                Err(e) => error(&e, group),
            }
        }
    }
}

fn relayed(r: Relayed, group: &'static str) -> Answer {
    Answer {
        status: StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY),
        content_type: JSON,
        body: r.body,
        group,
        retry_after: None,
    }
}

/// The group label of a path, for the request metrics.
fn group_of(path: &str) -> &'static str {
    match path {
        p if p.starts_with("/apis/custom.metrics.k8s.io/") => "custom",
        p if p.starts_with("/apis/external.metrics.k8s.io/") => "external",
        p if p.starts_with("/apis/metrics.k8s.io/") => "resource",
        p if p.starts_with("/apis") => "discovery",
        _ => "other",
    }
}

/// Authenticates and authorizes a request; `None` lets it through, `Some` is the refusal.
pub async fn check_access<K: KubeAuthApi>(
    access: &Access<K>,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &hyper::HeaderMap,
    conn: &ConnInfo,
) -> Option<ApiError> {
    let Access::Delegated {
        authn,
        authz,
        always_allow,
    } = access
    else {
        return None;
    };
    if auth::always_allowed(path, always_allow) {
        return None;
    }
    let refusal = |decision: Decision, user: Option<(&UserInfo, &Attributes)>| match decision {
        Decision::Allow => None,
        Decision::Unauthenticated(why) => {
            tracing::debug!(peer = %conn.peer, path, reason = %why, "Unauthenticated request.");
            Some(ApiError::Unauthorized)
        }
        Decision::Deny(reason) => Some(ApiError::Forbidden(match user {
            Some((user, attrs)) => auth::forbidden_message(user, attrs, &reason),
            None => reason,
        })),
        Decision::Unavailable(why) => Some(ApiError::Unavailable(format!(
            "cannot check the request's credentials with the kube-apiserver: {why}"
        ))),
    };
    let user = match authn.authenticate(headers, conn).await {
        Ok(user) => user,
        Err(decision) => return refusal(decision, None),
    };
    let attrs = auth::attributes(method.as_str(), path, query);
    let decision = authz.authorize(&user, &attrs).await;
    refusal(decision, Some((&user, &attrs)))
}

/// The most header bytes (names and values) a request may carry: hyper's HTTP/1 buffer
/// limit is not a strict bound on the head, so it is checked here for both versions.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// A refusal when `headers` are larger than [`MAX_HEADER_BYTES`].
fn check_header_size(headers: &hyper::HeaderMap) -> Option<ApiError> {
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    (bytes > MAX_HEADER_BYTES).then(|| {
        ApiError::HeadersTooLarge(format!(
            "the request's headers are {bytes} bytes; at most {MAX_HEADER_BYTES} are accepted"
        ))
    })
}

/// The hyper handler: access checks, then [`respond`], timed and counted.
pub async fn handle<P: PromApi, K: KubeAuthApi>(
    state: Arc<State<P, K>>,
    req: Request<Incoming>,
    conn: Arc<ConnInfo>,
) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let refused = match check_header_size(req.headers()) {
        Some(too_large) => Some(too_large),
        None => {
            check_access(
                &state.access,
                &method,
                &path,
                query.as_deref(),
                req.headers(),
                &conn,
            )
            .await
        }
    };
    let answer = match refused {
        Some(e) => error(&e, group_of(&path)),
        None => respond(&state, &method, &path, query.as_deref()).await,
    };
    let code = answer.status.as_u16();
    state
        .metrics
        .requests
        .with_label_values(&[answer.group, code.to_string().as_str()])
        .inc();
    state
        .metrics
        .request_seconds
        .with_label_values(&[answer.group])
        .observe(started.elapsed().as_secs_f64());
    if answer.status.is_server_error() {
        tracing::warn!(%method, path, code, "Request failed.");
    } else {
        tracing::debug!(%method, path, code, "Request served.");
    }
    let body = if method == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(answer.body)
    };
    let mut resp = Response::new(common::http::full(body));
    *resp.status_mut() = answer.status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(answer.content_type));
    if let Some(seconds) = answer.retry_after {
        resp.headers_mut()
            .insert(hyper::header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    resp
}
