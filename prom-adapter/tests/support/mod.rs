//! Shared by the process-level fault tests: a stub Prometheus whose behaviour each test
//! controls, and the `prom-adapter` binary started against it with an HTTPS client that
//! trusts its self-signed certificate.
// Each test file compiles its own copy of this module and uses a part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

/// How long a poll or a request may take before the test gives up: a guard against hangs,
/// never a performance figure.
pub const GUARD: Duration = Duration::from_secs(60);

/// What the stub does with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer normally.
    None,
    /// Hold the request until [`Stub::release`], then answer normally.
    Hold,
    /// Sleep, then answer normally.
    Sleep(Duration),
    /// Close the connection without answering.
    Close,
    /// Answer `{"status":"error","errorType":…,"error":…}` with this HTTP status.
    Error {
        /// HTTP status (422, 503…).
        status: u16,
        /// `errorType`.
        error_type: String,
        /// `error`.
        error: String,
    },
}

impl Fault {
    /// An API error body.
    pub fn error(status: u16, error_type: &str, error: &str) -> Fault {
        Fault::Error {
            status,
            error_type: error_type.to_owned(),
            error: error.to_owned(),
        }
    }
}

/// One request the stub received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `/api/v1/query`, `/api/v1/series`, …
    pub path: String,
    /// Parameters from the query string or the form body.
    pub params: Vec<(String, String)>,
}

impl Seen {
    /// Every value of one parameter.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.params
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The single value of one parameter.
    pub fn param(&self, name: &str) -> Option<String> {
        let all = self.all(name);
        assert!(all.len() <= 1, "{name} sent {} times: {self:?}", all.len());
        all.into_iter().next()
    }
}

#[derive(Debug, Default)]
struct State {
    /// `/api/v1/series` answers by `match[]`; an unknown selector finds nothing.
    series: HashMap<String, Vec<Value>>,
    /// Series faults by `match[]`.
    series_faults: HashMap<String, Fault>,
    /// The fault of every series call without its own.
    series_fault: Option<Fault>,
    /// The vector every `/api/v1/query` answers.
    vector: Vec<Value>,
    /// The fault of every query.
    query_fault: Option<Fault>,
    /// Every request, in arrival order.
    seen: Vec<Seen>,
    /// Requests answered (success or error body) by path.
    answered: HashMap<String, usize>,
    /// Requests whose connection was closed unanswered, by path.
    closed: HashMap<String, usize>,
    /// Requests that have entered a hold, by path.
    held: HashMap<String, usize>,
}

/// An in-process Prometheus on 127.0.0.1:0 speaking `/api/v1/series` and `/api/v1/query`.
pub struct Stub {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    release: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The series endpoint.
pub const SERIES: &str = "/api/v1/series";
/// The instant query endpoint.
pub const QUERY: &str = "/api/v1/query";

impl Stub {
    /// Starts the stub answering every query with `vector` and no series.
    pub async fn start() -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let (release, _) = watch::channel(false);
        let release = Arc::new(release);
        let task = {
            let (state, release) = (Arc::clone(&state), Arc::clone(&release));
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (state, release) = (Arc::clone(&state), Arc::clone(&release));
                    tokio::spawn(connection(stream, state, release));
                }
            })
        };
        Stub {
            addr,
            state,
            release,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// What `/api/v1/series?match[]=selector` answers.
    pub fn set_series(&self, selector: &str, series: Vec<Value>) {
        self.with(|s| s.series.insert(selector.to_owned(), series));
    }

    /// The fault of series calls for one `match[]` (`Fault::None` clears it).
    pub fn set_series_fault(&self, selector: &str, fault: Fault) {
        self.arm(&fault);
        self.with(|s| s.series_faults.insert(selector.to_owned(), fault));
    }

    /// The fault of every series call without its own.
    pub fn set_all_series_fault(&self, fault: Fault) {
        self.arm(&fault);
        self.with(|s| s.series_fault = Some(fault));
    }

    /// The vector every query answers.
    pub fn set_vector(&self, vector: Vec<Value>) {
        self.with(|s| s.vector = vector);
    }

    /// The fault of every query (`Fault::None` clears it).
    pub fn set_query_fault(&self, fault: Fault) {
        self.arm(&fault);
        self.with(|s| s.query_fault = Some(fault));
    }

    /// A new hold waits for a new release.
    fn arm(&self, fault: &Fault) {
        if *fault == Fault::Hold {
            self.release.send_replace(false);
        }
    }

    /// Lets every held request (and later ones) through.
    pub fn release(&self) {
        self.release.send_replace(true);
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.with(|s| s.seen.clone())
    }

    /// The requests to one endpoint.
    pub fn seen_at(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|r| r.path == path).collect()
    }

    /// The query strings received, in order.
    pub fn queries(&self) -> Vec<String> {
        self.seen_at(QUERY)
            .iter()
            .filter_map(|r| r.param("query"))
            .collect()
    }

    /// How often each query string was received.
    pub fn query_counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for q in self.queries() {
            *counts.entry(q).or_default() += 1;
        }
        counts
    }

    /// How many series calls named `selector` as a `match[]`.
    pub fn series_calls(&self, selector: &str) -> usize {
        self.seen_at(SERIES)
            .iter()
            .filter(|r| r.all("match[]").iter().any(|m| m == selector))
            .count()
    }

    /// Requests to `path` answered (a success or an error body).
    pub fn answered(&self, path: &str) -> usize {
        self.with(|s| s.answered.get(path).copied().unwrap_or(0))
    }

    /// Requests to `path` whose connection was closed unanswered.
    pub fn closed(&self, path: &str) -> usize {
        self.with(|s| s.closed.get(path).copied().unwrap_or(0))
    }

    /// Requests to `path` that entered a hold.
    pub fn held(&self, path: &str) -> usize {
        self.with(|s| s.held.get(path).copied().unwrap_or(0))
    }
}

/// Serves one connection; a `Fault::Close` drops it with the request unanswered.
async fn connection(
    stream: TcpStream,
    state: Arc<Mutex<State>>,
    release: Arc<watch::Sender<bool>>,
) {
    let kill = Arc::new(Notify::new());
    let service = {
        let kill = Arc::clone(&kill);
        hyper::service::service_fn(move |req| {
            answer(
                req,
                Arc::clone(&state),
                release.subscribe(),
                Arc::clone(&kill),
            )
        })
    };
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = conn => {}
        // Dropping the connection closes the socket: the client sees it end mid-request.
        () = kill.notified() => {}
    }
}

fn json_response(status: u16, body: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn answer(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    mut release: watch::Receiver<bool>,
    kill: Arc<Notify>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let raw: &[u8] = if parts.method == hyper::Method::POST {
        &body
    } else {
        parts.uri.query().unwrap_or("").as_bytes()
    };
    let seen = Seen {
        path: parts.uri.path().to_owned(),
        params: form_urlencoded::parse(raw).into_owned().collect(),
    };
    let path = seen.path.clone();
    let (fault, success) = {
        let mut s = state.lock().unwrap();
        s.seen.push(seen.clone());
        match path.as_str() {
            SERIES => {
                let matches = seen.all("match[]");
                let fault = matches
                    .iter()
                    .find_map(|m| s.series_faults.get(m).filter(|f| **f != Fault::None))
                    .or(s.series_fault.as_ref())
                    .cloned();
                let data: Vec<Value> = matches
                    .iter()
                    .flat_map(|m| s.series.get(m).cloned().unwrap_or_default())
                    .collect();
                (fault, json!({"status": "success", "data": data}))
            }
            QUERY => (
                s.query_fault.clone(),
                json!({"status": "success",
                       "data": {"resultType": "vector", "result": s.vector.clone()}}),
            ),
            _ => {
                drop(s);
                return Ok(json_response(
                    404,
                    &json!({"status": "error", "errorType": "not_found", "error": "no such path"}),
                ));
            }
        }
    };
    let count = |field: fn(&mut State) -> &mut HashMap<String, usize>| {
        *field(&mut state.lock().unwrap())
            .entry(path.clone())
            .or_default() += 1;
    };
    let reply = match fault.unwrap_or(Fault::None) {
        Fault::None => json_response(200, &success),
        Fault::Hold => {
            count(|s| &mut s.held);
            let _ = release.wait_for(|released| *released).await;
            json_response(200, &success)
        }
        Fault::Sleep(d) => {
            tokio::time::sleep(d).await;
            json_response(200, &success)
        }
        Fault::Close => {
            count(|s| &mut s.closed);
            kill.notify_one();
            return std::future::pending().await;
        }
        Fault::Error {
            status,
            error_type,
            error,
        } => json_response(
            status,
            &json!({"status": "error", "errorType": error_type, "error": error}),
        ),
    };
    count(|s| &mut s.answered);
    Ok(reply)
}

/// A series as `/api/v1/series` lists it.
pub fn series(name: &str, labels: &[(&str, &str)]) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("__name__".into(), name.into());
    for (k, v) in labels {
        m.insert((*k).into(), (*v).into());
    }
    Value::Object(m)
}

/// A vector sample.
pub fn sample(labels: &[(&str, &str)], ts: f64, value: &str) -> Value {
    let metric: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
        .collect();
    json!({"metric": metric, "value": [ts, value]})
}

type Https = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// An HTTPS/1.1 client for the adapter, trusting only its self-signed certificate.
#[derive(Clone)]
pub struct Api {
    client: Https,
    base: String,
    cert: PathBuf,
}

impl Api {
    /// GETs `path` with one extra header over HTTP/1.1 or (`http2`) HTTP/2 only: the status,
    /// or the transport error when the server refused the request without one.
    pub async fn get_with_header(
        &self,
        path: &str,
        header: (&str, &str),
        http2: bool,
    ) -> Result<StatusCode, String> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(Self::tls(&self.cert))
            .https_only();
        let https = if http2 {
            https.enable_http2().build()
        } else {
            https.enable_http1().build()
        };
        let client: Https = Client::builder(TokioExecutor::new())
            .http2_only(http2)
            .build(https);
        let req = Request::get(format!("{}{path}", self.base))
            .header(header.0, header.1)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let call = async {
            match client.request(req).await {
                Ok(resp) => Ok(resp.status()),
                Err(e) => Err(format!("{e:?}")),
            }
        };
        tokio::time::timeout(GUARD, call)
            .await
            .unwrap_or_else(|_| panic!("GET {path}: no answer"))
    }

    fn tls(cert: &Path) -> rustls::ClientConfig {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(cert).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        // hyper-rustls sets ALPN from the enabled versions.
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
    }

    fn new(addr: &str, cert: &Path) -> Api {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(cert).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Api {
            client: Client::builder(TokioExecutor::new()).build(https),
            base: format!("https://{addr}"),
            cert: cert.to_path_buf(),
        }
    }

    /// GETs `path`: the status and the body.
    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        let uri: hyper::Uri = format!("{}{path}", self.base).parse().unwrap();
        let call = async {
            let resp = self.client.get(uri).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        };
        tokio::time::timeout(GUARD, call)
            .await
            .unwrap_or_else(|_| panic!("GET {path}: no answer"))
    }

    /// GETs `path`: the status, the `Retry-After` header and the body parsed as JSON.
    pub async fn get_retry_after(&self, path: &str) -> (StatusCode, Option<String>, Value) {
        let uri: hyper::Uri = format!("{}{path}", self.base).parse().unwrap();
        let call = async {
            let resp = self.client.get(uri).await.unwrap();
            let status = resp.status();
            let retry = resp
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .map(|v| v.to_str().unwrap().to_owned());
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, retry, serde_json::from_slice(&body).unwrap())
        };
        tokio::time::timeout(GUARD, call)
            .await
            .unwrap_or_else(|_| panic!("GET {path}: no answer"))
    }

    /// GETs `path` and parses the body as JSON.
    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let (status, body) = self.get(path).await;
        let v = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path}: {status} body is not JSON ({e}): {body}"));
        (status, v)
    }

    /// One sample of the adapter's `/metrics`, e.g.
    /// `prom_adapter_discovery_runs_total{result="partial"}`; 0 when absent.
    pub async fn self_metric(&self, series: &str) -> f64 {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// The resource names a discovery document lists (`pods/a_metric`, …).
    pub async fn listed(&self, group_version: &str) -> Vec<String> {
        let (status, doc) = self.get_json(&format!("/apis/{group_version}")).await;
        assert_eq!(status, StatusCode::OK, "{doc}");
        let mut names: Vec<String> = doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    }
}

/// The running binary; killed on drop.
pub struct Adapter {
    child: Child,
    dir: tempfile::TempDir,
    api: Api,
}

impl Drop for Adapter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Adapter {
    /// Starts `prom-adapter` with `rules` against `prometheus_url`, plus `extra` flags, and
    /// waits for its ready file.
    pub async fn start(rules: &str, prometheus_url: &str, extra: &[&str]) -> Adapter {
        let dir = tempfile::tempdir().unwrap();
        let rules_file = dir.path().join("rules.yaml");
        std::fs::write(&rules_file, rules).unwrap();
        let ready = dir.path().join("ready.json");
        let certs = dir.path().join("certs");
        let log = std::fs::File::create(dir.path().join("adapter.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_prom-adapter"))
            .arg("--config")
            .arg(&rules_file)
            .args(["--insecure-dev", "--secure-port", "0"])
            .args(["--bind-address", "127.0.0.1"])
            .arg("--ready-file")
            .arg(&ready)
            .arg("--cert-dir")
            .arg(&certs)
            .args(["--prometheus-url", prometheus_url, "--v", "4"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut child = child;
        let deadline = Instant::now() + GUARD;
        let text = loop {
            if let Ok(t) = std::fs::read_to_string(&ready) {
                break t;
            }
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(dir.path().join("adapter.log"));
                panic!("prom-adapter exited before it was ready: {status}\n{log:?}");
            }
            assert!(Instant::now() < deadline, "no ready file");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let ready: Value = serde_json::from_str(&text).unwrap();
        let addr = ready["secure"].as_str().unwrap().to_owned();
        let api = Api::new(&addr, &certs.join("apiserver.crt"));
        Adapter { child, dir, api }
    }

    /// A client for it.
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// Its log so far (stderr), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("adapter.log")).unwrap_or_default()
    }

    /// The last `n` log lines.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The temp dir.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// Polls `check` until it holds; panics with `what` and the log tail after [`GUARD`].
    pub async fn eventually<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + GUARD;
        loop {
            if check().await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never: {what}\n--- adapter log ---\n{}",
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// A Prometheus duration (`1s`, `300ms`, `1m30s`, `2h`).
pub fn prom_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86_400),
            _ => return None,
        };
        total += unit * u32::try_from(n).ok()?;
        rest = &rest[unit_len..];
    }
    Some(total)
}
