//! A small HTTP/1.1 server loop over hyper 1.x.
//!
//! Accept errors (e.g. out of file descriptors) back off instead of ending the loop, and
//! shutdown lets in-flight requests finish within a bound.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The response body every handler here returns: the whole page in memory.
pub type Body = Full<Bytes>;

/// A plain-text response with the given status.
pub fn text(status: hyper::StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Accept-error back-off: 5 ms doubling to 1 s, reset by a success.
#[derive(Debug, Clone, Copy)]
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(5))
    }
}

/// The next connection, or `None` once `stop` is cancelled. Accept errors (out of file
/// descriptors, say) are logged and retried after a back-off instead of ending the loop.
pub async fn accept(
    listener: &TcpListener,
    stop: &CancellationToken,
    backoff: &mut Backoff,
    what: &'static str,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return None,
            r = listener.accept() => r,
        };
        match accepted {
            Ok(pair) => {
                *backoff = Backoff::default();
                return Some(pair);
            }
            Err(e) => {
                tracing::warn!(what, error = %e, backoff_ms = backoff.0.as_millis() as u64, "Accept failed; backing off.");
                tokio::time::sleep(backoff.0).await;
                backoff.0 = (backoff.0 * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Serves `handler` on `listener` until `stop` is cancelled, then waits up to `drain` for
/// open connections to finish.
pub async fn serve<H, F>(
    listener: TcpListener,
    handler: H,
    stop: CancellationToken,
    drain: Duration,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut backoff = Backoff::default();
    while let Some((stream, peer)) = accept(&listener, &stop, &mut backoff, "HTTP").await {
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |req| {
            let fut = handler(req);
            async move { Ok::<_, Infallible>(fut.await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .max_buf_size(64 * 1024)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error.");
            }
        });
    }
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            drain_ms = drain.as_millis() as u64,
            "HTTP connections still open after the drain period; closing them."
        );
    }
}
