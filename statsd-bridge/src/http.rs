//! The HTTP edge: the metrics page (text or OpenMetrics, gzip when asked), health,
//! readiness, and statsd_exporter's lifecycle endpoints.
//!
//! The page is streamed: a blocking task encodes it in chunks that hyper sends as they come,
//! so a scrape of a million series (52 MB of text) never holds the whole page, nor a gzipped
//! copy of it, and a slow scraper holds back the encoder rather than piling up chunks.

use std::io::Write as _;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use common::http::{Body, streamed, text};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, VARY};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;

use crate::expose::{Format, encode_chunked, encode_families_openmetrics};
use crate::ingest::Ingester;

/// Re-reads the config; `Ok` carries a summary for the response.
pub type ReloadFn = dyn Fn() -> Result<String, String> + Send + Sync;

/// What the handlers share.
pub struct State {
    /// The store and self-metrics.
    pub ingester: Arc<Ingester>,
    /// False until the listeners are bound, and again from the start of shutdown.
    pub ready: AtomicBool,
    /// Path of the metrics page.
    pub telemetry_path: String,
    /// Serve OpenMetrics to scrapers that ask for it.
    pub openmetrics: bool,
    /// Serve `/-/reload` and `/-/quit`.
    pub lifecycle: bool,
    /// What `/-/reload` runs.
    pub reload: Box<ReloadFn>,
    /// Cancelled by `/-/quit`.
    pub quit: CancellationToken,
    /// Local ports of the UDP sockets, for the kernel drop count.
    pub udp_ports: Vec<u16>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("telemetry_path", &self.telemetry_path)
            .finish_non_exhaustive()
    }
}

/// Bytes of page per chunk sent.
const CHUNK: usize = 256 * 1024;
/// Chunks waiting for the scraper before the encoder waits too.
const CHUNKS_QUEUED: usize = 4;

/// Renders the whole metrics page, the store's series then the self-metrics, handing it to
/// `sink` in chunks of about `chunk` bytes (the last one shorter, maybe empty); `Break` when
/// the sink stopped taking them.
pub fn render_metrics(
    ingester: &Ingester,
    format: Format,
    udp_ports: &[u16],
    chunk: usize,
    sink: &mut impl FnMut(&mut Vec<u8>) -> ControlFlow<()>,
) -> ControlFlow<()> {
    let started = Instant::now();
    let t = &ingester.telemetry;
    if !udp_ports.is_empty() {
        let drops = crate::listen::udp::kernel_drops(udp_ports);
        t.udp_kernel_drops
            .inc_by(drops.saturating_sub(t.udp_kernel_drops.get()));
    }
    t.series
        .set(i64::try_from(ingester.store.len()).unwrap_or(i64::MAX));
    // Self-metrics first, series second: lines are counted after they are applied, so the
    // series on the page include every line the page's counters report.
    let families = t.registry.gather();
    let snapshot = ingester.store.snapshot(started);
    let mut out = Vec::with_capacity(chunk.min(snapshot.series.len() * 64 + 8192));
    encode_chunked(&snapshot, format, chunk, &mut out, &mut *sink)?;
    drop(snapshot);
    t.scrape_duration.observe(started.elapsed().as_secs_f64());
    match format {
        Format::Text => {
            let mut text = String::new();
            crate::telemetry::Telemetry::encode_text(&families, &mut text);
            out.extend_from_slice(text.as_bytes());
        }
        Format::OpenMetrics => {
            encode_families_openmetrics(&families, &mut out);
            out.extend_from_slice(b"# EOF\n");
        }
        Format::Protobuf => crate::expose::protobuf::encode_families_protobuf(&families, &mut out),
    }
    sink(&mut out)
}

/// Protobuf when the scraper lists it in `Accept` (Prometheus does with native histograms
/// on; it keeps counter names and carries native histograms); OpenMetrics when enabled and
/// listed; else text 0.0.4 whatever `Accept` says (Prometheus asks for OpenMetrics first;
/// answering it would rename counters).
fn negotiate(headers: &HeaderMap, openmetrics: bool) -> Format {
    let accepts = || {
        headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
    };
    let wants_protobuf = accepts().flat_map(|v| v.split(',')).any(|media| {
        let params: Vec<String> = media
            .split(';')
            .map(|p| p.trim().replace(' ', ""))
            .collect();
        let has = |p: &str| params.iter().any(|x| x == p);
        params
            .first()
            .is_some_and(|t| t == "application/vnd.google.protobuf")
            && has("proto=io.prometheus.client.MetricFamily")
            && has("encoding=delimited")
            && !has("q=0")
    });
    let wants_om = accepts().any(|v| v.contains("application/openmetrics-text"));
    if wants_protobuf {
        Format::Protobuf
    } else if openmetrics && wants_om {
        Format::OpenMetrics
    } else {
        Format::Text
    }
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',').any(|enc| {
                let mut parts = enc.split(';');
                let name = parts.next().unwrap_or("").trim();
                let q_zero = parts.any(|p| p.trim().replace(' ', "") == "q=0");
                (name == "gzip" || name == "*") && !q_zero
            })
        })
}

type Chunks = tokio::sync::mpsc::Sender<std::io::Result<Bytes>>;

/// Takes the page's chunks from the encoder, gzips them when asked, and sends them to hyper.
/// Dropped before [`PageSink::finish`] (the encoder panicked, or gzip failed), it sends an
/// error, so hyper breaks the transfer instead of ending a short page as if it were whole.
struct PageSink {
    tx: Chunks,
    gzip: Option<flate2::write::GzEncoder<Vec<u8>>>,
    finished: bool,
}

impl PageSink {
    fn new(tx: Chunks, compress: bool) -> Self {
        Self {
            tx,
            gzip: compress
                .then(|| flate2::write::GzEncoder::new(fresh_chunk(), flate2::Compression::fast())),
            finished: false,
        }
    }

    /// Takes what `out` holds; `Break` once the scraper has gone.
    fn take(&mut self, out: &mut Vec<u8>) -> ControlFlow<()> {
        let ready = match &mut self.gzip {
            None => std::mem::replace(out, fresh_chunk()),
            Some(z) => {
                if let Err(e) = z.write_all(out) {
                    tracing::error!(error = %e, "Compressing the metrics page failed.");
                    return ControlFlow::Break(());
                }
                out.clear();
                if z.get_ref().len() < CHUNK {
                    return ControlFlow::Continue(());
                }
                std::mem::replace(z.get_mut(), fresh_chunk())
            }
        };
        self.send(ready)
    }

    fn send(&self, bytes: Vec<u8>) -> ControlFlow<()> {
        if bytes.is_empty() {
            return ControlFlow::Continue(());
        }
        match self.tx.blocking_send(Ok(Bytes::from(bytes))) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    }

    /// Sends gzip's trailer.
    fn finish(mut self) {
        match self
            .gzip
            .take()
            .map(flate2::write::GzEncoder::finish)
            .transpose()
        {
            Ok(rest) => {
                self.finished = true;
                let _ = self.send(rest.unwrap_or_default());
            }
            Err(e) => tracing::error!(error = %e, "Compressing the metrics page failed."),
        }
    }
}

impl Drop for PageSink {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self
                .tx
                .blocking_send(Err(std::io::Error::other("the metrics page was cut short")));
        }
    }
}

/// A chunk's buffer: room for a chunk and the series that crosses its end.
fn fresh_chunk() -> Vec<u8> {
    Vec::with_capacity(CHUNK + CHUNK / 4)
}

async fn metrics(state: &State, headers: &HeaderMap) -> Response<Body> {
    let format = negotiate(headers, state.openmetrics);
    let compress = accepts_gzip(headers);
    let ingester = Arc::clone(&state.ingester);
    let ports = state.udp_ports.clone();
    let (tx, body) = streamed(CHUNKS_QUEUED);
    tokio::task::spawn_blocking(move || {
        let mut sink = PageSink::new(tx, compress);
        let sent = render_metrics(&ingester, format, &ports, CHUNK, &mut |out| sink.take(out));
        if sent.is_continue() {
            sink.finish();
        }
    });
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    h.insert(VARY, HeaderValue::from_static("Accept, Accept-Encoding"));
    if compress {
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    resp
}

/// Routes one request.
pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let method = req.method();
    if (path == "/-/reload" || path == "/-/quit") && !state.lifecycle {
        return text(
            StatusCode::NOT_FOUND,
            "not found (lifecycle endpoints are disabled)\n",
        );
    }
    if path == "/-/reload" || path == "/-/quit" {
        if method != Method::POST && method != Method::PUT {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use POST or PUT\n");
        }
        if path == "/-/quit" {
            tracing::info!("Quit requested over HTTP.");
            state.quit.cancel();
            return text(StatusCode::OK, "Requesting termination... Goodbye!\n");
        }
        return match (state.reload)() {
            Ok(summary) => text(StatusCode::OK, format!("{summary}\n")),
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("failed to reload config: {e}\n"),
            ),
        };
    }
    if method != Method::GET && method != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served\n",
        );
    }
    match path {
        p if p == state.telemetry_path => metrics(&state, req.headers()).await,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn text_unless_openmetrics_is_enabled_and_asked_for() {
        let prom = headers(&[(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )]);
        assert_eq!(negotiate(&prom, false), Format::Text);
        assert_eq!(negotiate(&prom, true), Format::OpenMetrics);
        assert_eq!(
            negotiate(&headers(&[("accept", "text/plain")]), true),
            Format::Text
        );
        assert_eq!(negotiate(&HeaderMap::new(), true), Format::Text);
        // Prometheus with --enable-feature=native-histograms.
        let native = headers(&[(
            "accept",
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
        )]);
        assert_eq!(negotiate(&native, false), Format::Protobuf);
        assert_eq!(negotiate(&native, true), Format::Protobuf);
        let text_proto = headers(&[(
            "accept",
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text",
        )]);
        assert_eq!(negotiate(&text_proto, false), Format::Text);
    }

    #[test]
    fn gzip_negotiation() {
        assert!(accepts_gzip(&headers(&[("accept-encoding", "gzip")])));
        assert!(accepts_gzip(&headers(&[(
            "accept-encoding",
            "deflate, gzip;q=0.8"
        )])));
        assert!(!accepts_gzip(&headers(&[("accept-encoding", "gzip;q=0")])));
        assert!(!accepts_gzip(&headers(&[("accept-encoding", "identity")])));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
