//! Small server loops over hyper 1.x: [`serve`] (plain HTTP/1.1) and [`serve_tls`] (TLS, with
//! HTTP/1.1 or HTTP/2 chosen by ALPN).
//!
//! Both share one accept loop: accept errors (e.g. out of file descriptors) back off instead of
//! ending the loop, each connection runs in its own task, and shutdown lets in-flight requests
//! finish within a bound, then closes whatever is still open.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls_pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long a client may take to send a request's headers (HTTP/1).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The HTTP/1 read buffer, and so the largest request head accepted.
const MAX_BUF_SIZE: usize = 64 * 1024;
/// The largest HTTP/2 header list accepted, as large as an HTTP/1 head may be. hyper's
/// default (16 KiB) would refuse over HTTP/2 what HTTP/1 accepts: a front proxy's
/// `X-Remote-Group` headers for a user in a few hundred groups.
const H2_MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;
/// How long a client may take to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent HTTP/2 streams per connection (hyper's default is 200, and not promised stable).
const H2_MAX_CONCURRENT_STREAMS: u32 = 250;
/// HTTP/2 PING interval on an idle connection, and how long to wait for the answer.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);

/// The response body every handler here returns: [`full`] bytes in memory, or a [`streamed`]
/// page written while it is sent.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// A body of `bytes`, sent with a `Content-Length`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A body sent in chunks (`Transfer-Encoding: chunked` over HTTP/1.1) as the producer writes
/// them, so a large page is never whole in memory. At most `depth` chunks wait; an `Err` the
/// producer sends aborts the response, so the client sees a broken transfer rather than a
/// short page. Sends fail once the client has gone.
pub fn streamed(depth: usize) -> (tokio::sync::mpsc::Sender<std::io::Result<Bytes>>, Body) {
    let (tx, rx) = tokio::sync::mpsc::channel(depth.max(1));
    (tx, Streamed(rx).boxed())
}

struct Streamed(tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>);

impl hyper::body::Body for Streamed {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| c.map(Frame::data)))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A plain-text response with the given status.
pub fn text(status: hyper::StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body));
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
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF_SIZE);
    let connection = move |stream: TcpStream, peer: SocketAddr, watcher: Watcher| {
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |req| {
            let fut = handler(req);
            async move { Ok::<_, Infallible>(fut.await) }
        });
        let conn = watcher.watch(http1.serve_connection(TokioIo::new(stream), service));
        async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error.");
            }
        }
    };
    serve_connections(listener, stop, drain, "HTTP", connection).await;
}

/// What a [`serve_tls`] handler knows about the connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The negotiated ALPN protocol (`b"h2"` or `b"http/1.1"`), if the client offered ALPN.
    pub alpn: Option<Vec<u8>>,
    /// The client's certificate chain, end-entity first, as presented: the handshake checked
    /// only that the client holds the end-entity certificate's key, not whom it chains to, so
    /// verify it (e.g. with [`crate::tls::ClientCa::verify`]) before trusting it. Empty when the
    /// client sent none, and always unless the server config requests client certificates
    /// ([`crate::tls::server_config_for`] with [`crate::tls::ClientCerts::Request`]).
    pub client_certs: Vec<CertificateDer<'static>>,
}

/// Serves `handler` over TLS on `listener` until `stop` is cancelled, then waits up to `drain`
/// for open connections to finish.
///
/// The protocol follows ALPN: HTTP/2 when the client negotiated `h2`, HTTP/1.1 otherwise (also
/// when the client offered no ALPN at all). A handshake that fails or takes longer than 10 s
/// only drops that connection. Certificates come from `tls`, so a
/// [`crate::tls::CertStore`] behind it can swap them while this runs.
pub async fn serve_tls<H, F>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    handler: H,
    stop: CancellationToken,
    drain: Duration,
) where
    H: Fn(Request<Incoming>, Arc<ConnInfo>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF_SIZE);
    // Rapid reset (CVE-2023-44487) needs nothing here: hyper's maintainers found hyper not
    // affected (hyperium/hyper#3339), since h2 already bounds reset-but-unaccepted streams
    // (`max_pending_accept_reset_streams`, 20 by default); hyper also bounds locally errored
    // resets by default (`max_local_error_reset_streams`, 1024; RUSTSEC-2024-0003). Both stay
    // at their defaults.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST_SIZE)
        .keep_alive_interval(H2_KEEP_ALIVE)
        .keep_alive_timeout(H2_KEEP_ALIVE);
    let http1 = Arc::new(builder.clone().http1_only());
    let http2 = Arc::new(builder.http2_only());
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let conn_stop = stop.clone();

    let connection = move |stream: TcpStream, peer: SocketAddr, watcher: Watcher| {
        let handler = handler.clone();
        let acceptor = acceptor.clone();
        let (http1, http2) = (Arc::clone(&http1), Arc::clone(&http2));
        let stop = conn_stop.clone();
        async move {
            // A handshake in progress is not a request in flight: shutdown abandons it.
            let handshake = tokio::select! {
                () = stop.cancelled() => return,
                r = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => r,
            };
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed.");
                    return;
                }
                Err(_elapsed) => {
                    tracing::debug!(%peer, "TLS handshake timed out.");
                    return;
                }
            };
            let (_, session) = stream.get_ref();
            let info = Arc::new(ConnInfo {
                peer,
                alpn: session.alpn_protocol().map(<[u8]>::to_vec),
                client_certs: session
                    .peer_certificates()
                    .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
                    .unwrap_or_default(),
            });
            let builder = if info.alpn.as_deref() == Some(b"h2") {
                http2
            } else {
                http1
            };
            let service = hyper::service::service_fn(move |req| {
                let fut = handler(req, Arc::clone(&info));
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "HTTPS connection ended with an error.");
            }
        }
    };
    serve_connections(listener, stop, drain, "HTTPS", connection).await;
}

/// The loop both servers share: accept until `stop` (backing off on errors), run each
/// connection in its own task with a graceful-shutdown [`Watcher`], then drain within `drain`
/// and close whatever is still open.
async fn serve_connections<C, Fut>(
    listener: TcpListener,
    stop: CancellationToken,
    drain: Duration,
    what: &'static str,
    mut connection: C,
) where
    C: FnMut(TcpStream, SocketAddr, Watcher) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut tasks = JoinSet::new();
    let mut backoff = Backoff::default();
    while let Some((stream, peer)) = accept(&listener, &stop, &mut backoff, what).await {
        // Reap finished connections so the set stays as small as the open connections.
        while let Some(done) = tasks.try_join_next() {
            log_task_end(done, what);
        }
        tasks.spawn(connection(stream, peer, graceful.watcher()));
    }
    // New clients are refused from here on instead of waiting in the backlog.
    drop(listener);

    let drained = tokio::time::timeout(drain, async {
        graceful.shutdown().await;
        while let Some(done) = tasks.join_next().await {
            log_task_end(done, what);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            what,
            drain_ms = drain.as_millis() as u64,
            "Connections still open after the drain period; closing them."
        );
        tasks.shutdown().await;
    }
}

fn log_task_end(done: Result<(), tokio::task::JoinError>, what: &'static str) {
    if let Err(e) = done
        && e.is_panic()
    {
        tracing::error!(what, error = %e, "Connection task panicked.");
    }
}
