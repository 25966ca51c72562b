//! The HTTP edge: routes requests to the metrics page, health and readiness.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use common::http::{Body, text};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::expose::{TEXT_CONTENT_TYPE, encode_text};
use crate::ingest::Ingester;

/// What the handlers share.
#[derive(Debug)]
pub struct State {
    /// The store and self-metrics.
    pub ingester: Arc<Ingester>,
    /// False until the listeners are bound, and again from the start of shutdown.
    pub ready: AtomicBool,
    /// Path of the metrics page.
    pub telemetry_path: String,
}

/// Renders the whole metrics page: the store's series, then the self-metrics.
pub fn render_metrics(ingester: &Ingester) -> String {
    let started = Instant::now();
    let t = &ingester.telemetry;
    let snapshot = ingester.store.snapshot(started);
    let mut out = String::with_capacity(snapshot.series.len() * 64 + 8192);
    encode_text(&snapshot, &mut out);
    t.series
        .set(i64::try_from(ingester.store.len()).unwrap_or(i64::MAX));
    t.scrape_duration.observe(started.elapsed().as_secs_f64());
    t.encode(&mut out);
    out
}

/// Routes one request.
pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served\n",
        );
    }
    match req.uri().path() {
        p if p == state.telemetry_path => {
            let ingester = Arc::clone(&state.ingester);
            match tokio::task::spawn_blocking(move || render_metrics(&ingester)).await {
                Ok(page) => {
                    let mut resp = text(StatusCode::OK, Bytes::from(page));
                    resp.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_CONTENT_TYPE));
                    resp
                }
                Err(e) => {
                    tracing::error!(error = %e, "Rendering the metrics page failed.");
                    text(StatusCode::INTERNAL_SERVER_ERROR, "rendering failed\n")
                }
            }
        }
        "/healthz" | "/-/healthy" => text(StatusCode::OK, "ok\n"),
        "/readyz" | "/-/ready" => {
            if state.ready.load(Ordering::Relaxed) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/" => {
            let page = format!(
                "<html><head><title>statsd-bridge</title></head><body><h1>statsd-bridge</h1>\
                 <p><a href=\"{0}\">{0}</a> · <a href=\"/healthz\">/healthz</a> · \
                 <a href=\"/readyz\">/readyz</a></p></body></html>\n",
                state.telemetry_path
            );
            let mut resp = text(StatusCode::OK, page);
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
