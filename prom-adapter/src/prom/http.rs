//! [`Client`]: the [`PromApi`] over HTTP(S), with hyper-util's pooled client and rustls (ring).
//!
//! - The base URL's path prefix is kept (`http://h/prometheus` → `http://h/prometheus/api/v1/query`);
//!   credentials in its userinfo become basic auth and are never sent in the URL or logged.
//! - `GET` puts the parameters in the query string; `POST` sends them form-encoded, which avoids
//!   `414 URI Too Long` with long pod regexes.
//! - Every query carries a positive `timeout` parameter (prometheus-adapter sends a negative one,
//!   its PR #710), and the client gives up a little after it: [`PromError::Timeout`]. A backend
//!   that times out first answers `503 timeout`, which is more precise.
//! - The bearer token and basic-auth password files are re-read when they change (mtime, size or
//!   inode), so rotated credentials work without a restart; a failed re-read keeps the last good
//!   value and logs a warning.
//! - Bodies are read up to `max_response_bytes` ([`PromError::TooLarge`] beyond it).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_rustls::{ConfigBuilderExt, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{Labels, PromApi, PromError, QueryResult, wire};

/// The query timeout when none is configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The answer size limit when none is configured: 256 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 256 << 20;
/// The most of a non-2xx body read (only its start is kept anyway).
const MAX_ERROR_BODY_READ: usize = 64 << 10;

const QUERY_PATH: &str = "/api/v1/query";
const SERIES_PATH: &str = "/api/v1/series";

/// How to reach the backend. `Debug` hides URL credentials and header values.
#[derive(Clone, PartialEq)]
pub struct ClientConfig {
    /// Base URL; a path prefix like `http://h/prometheus` is kept: endpoints are appended.
    /// Userinfo (`http://u:p@host`) is taken as basic auth.
    pub url: String,
    /// `GET` or `POST` (form-encoded body).
    pub verb: Verb,
    /// Query timeout, sent as the `timeout` parameter; the client waits a little longer.
    pub timeout: Duration,
    /// Sent on every request, e.g. `X-Scope-OrgID`.
    pub headers: Vec<(String, String)>,
    /// Added to every request's parameters, e.g. Thanos' `partial_response`.
    pub query_params: Vec<(String, String)>,
    /// Read for `Authorization: Bearer …`; re-read when it changes, so rotated tokens work.
    pub bearer_token_file: Option<PathBuf>,
    /// Basic auth; also taken from URL userinfo.
    pub basic_auth: Option<BasicAuth>,
    /// PEM CA bundle to verify the server with; the system roots when unset.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain for mTLS (with `client_key_file`).
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key for mTLS (with `client_cert_file`).
    pub client_key_file: Option<PathBuf>,
    /// The largest answer body accepted.
    pub max_response_bytes: usize,
    /// Accept any server certificate. Only `prom-adapter status`/`explain` set it, for the
    /// adapter's own self-signed certificate on localhost.
    pub insecure_skip_verify: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            url: "http://localhost:9090".to_owned(),
            verb: Verb::Get,
            timeout: DEFAULT_TIMEOUT,
            headers: Vec::new(),
            query_params: Vec::new(),
            bearer_token_file: None,
            basic_auth: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            insecure_skip_verify: false,
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("ClientConfig")
            .field("url", &redact_userinfo(&self.url))
            .field("verb", &self.verb)
            .field("timeout", &self.timeout)
            .field("headers", &header_names)
            .field("query_params", &self.query_params)
            .field("bearer_token_file", &self.bearer_token_file)
            .field("basic_auth", &self.basic_auth)
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .finish()
    }
}

/// Basic-auth credentials: a password or a password file (re-read when it changes), not both.
#[derive(Clone, PartialEq, Default)]
pub struct BasicAuth {
    /// User name.
    pub username: String,
    /// File holding the password (surrounding whitespace trimmed).
    pub password_file: Option<PathBuf>,
    /// The password itself.
    pub password: Option<String>,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .field("password_file", &self.password_file)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The HTTP method used for queries and series lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verb {
    /// Parameters in the query string.
    #[default]
    Get,
    /// Parameters in an `application/x-www-form-urlencoded` body.
    Post,
}

impl Verb {
    /// `"GET"` or `"POST"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A verb other than `GET` or `POST`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown http verb {0:?}: expected GET or POST")]
pub struct ParseVerbError(pub String);

impl FromStr for Verb {
    type Err = ParseVerbError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("get") {
            Ok(Verb::Get)
        } else if s.eq_ignore_ascii_case("post") {
            Ok(Verb::Post)
        } else {
            Err(ParseVerbError(s.to_owned()))
        }
    }
}

/// Why [`Client::new`] refused a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    /// The base URL is not usable (credentials in it are redacted here).
    #[error("invalid prometheus url {url:?}: {reason}")]
    Url {
        /// The URL, userinfo redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A zero timeout.
    #[error("the prometheus query timeout must be positive")]
    Timeout,
    /// A configured file could not be read.
    #[error("cannot read {what} {}", path.display())]
    ReadFile {
        /// Which file: `prometheus ca file`, `prometheus bearer token file`, …
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A file was read but its content is not usable.
    #[error("invalid {what} {}: {reason}", path.display())]
    BadFile {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What is wrong with it (never the content).
        reason: String,
    },
    /// The TLS settings don't fit together.
    #[error("invalid prometheus tls settings: {reason}")]
    Tls {
        /// What is wrong.
        reason: String,
    },
    /// An `https` URL without `ca_file`, and no system CA certificates.
    #[error("no system ca certificates found for an https prometheus url; set the ca file")]
    NoSystemRoots {
        /// The loader's error.
        #[source]
        source: io::Error,
    },
    /// A configured header is not valid HTTP (its value is never shown).
    #[error("invalid prometheus header {name:?}: {reason}")]
    Header {
        /// The header name as configured.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Credentials configured in more than one way.
    #[error("conflicting prometheus credentials: {reason}")]
    Auth {
        /// Which settings conflict.
        reason: &'static str,
    },
}

/// The HTTP implementation of [`PromApi`]. Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// `scheme://host[:port][/prefix]`, no userinfo, no trailing slash.
    base: String,
    verb: Verb,
    /// The `timeout` parameter, e.g. `30s` or `300ms`.
    timeout_param: String,
    /// How long the client waits for a whole answer.
    deadline: Duration,
    headers: HeaderMap,
    query_params: Vec<(String, String)>,
    auth: Auth,
    max_response_bytes: usize,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.inner.base)
            .field("verb", &self.inner.verb)
            .field("timeout", &self.inner.timeout_param)
            .field("max_response_bytes", &self.inner.max_response_bytes)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Checks the configuration, reads the CA/cert/key and credential files, and sets up the
    /// connection pool. Connects lazily.
    pub fn new(cfg: ClientConfig) -> Result<Client, ClientBuildError> {
        let base = BaseUrl::parse(&cfg.url)?;
        if cfg.timeout.is_zero() {
            return Err(ClientBuildError::Timeout);
        }
        let headers = build_headers(&cfg.headers)?;
        let auth = Auth::build(&cfg, base.userinfo)?;
        let tls = tls_config(&cfg, base.https)?;

        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        connector.set_nodelay(true);
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(connector);
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https);

        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base: base.base,
                verb: cfg.verb,
                timeout_param: timeout_param(cfg.timeout),
                deadline: client_deadline(cfg.timeout),
                headers,
                query_params: cfg.query_params,
                auth,
                max_response_bytes: cfg.max_response_bytes,
            }),
        })
    }

    /// `scheme://host[:port][/prefix]` the endpoints are appended to (no credentials).
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// Sends one request and returns the status and the (bounded) body, within the deadline.
    async fn call(
        &self,
        path: &'static str,
        params: &[(&str, &str)],
    ) -> Result<(u16, Bytes), PromError> {
        let inner = &*self.inner;
        let started = Instant::now();
        let result = match tokio::time::timeout(inner.deadline, self.exchange(path, params)).await {
            Ok(r) => r,
            Err(_) => Err(PromError::Timeout {
                after: inner.deadline,
            }),
        };
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let verb = inner.verb.as_str();
        match &result {
            Ok((status, body)) => tracing::debug!(
                endpoint = path,
                verb,
                elapsed_ms,
                status,
                bytes = body.len(),
                "Queried Prometheus."
            ),
            Err(error) => tracing::debug!(
                endpoint = path,
                verb,
                elapsed_ms,
                %error,
                "Prometheus request failed."
            ),
        }
        result
    }

    async fn exchange(
        &self,
        path: &'static str,
        params: &[(&str, &str)],
    ) -> Result<(u16, Bytes), PromError> {
        let req = self.request(path, params)?;
        self.send(req).await
    }

    /// `GET` of `path_and_query` under the base URL, with this client's headers and
    /// credentials and within its deadline: the status and the (bounded) body, whatever the
    /// status. Forwarding to another API server uses it.
    pub async fn get_raw(&self, path_and_query: &str) -> Result<(u16, Bytes), PromError> {
        let inner = &*self.inner;
        let uri = Uri::try_from(format!("{}{path_and_query}", inner.base)).map_err(|e| {
            PromError::Unreachable {
                reason: format!("cannot build the request url: {e}"),
            }
        })?;
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = uri;
        self.decorate(req.headers_mut());
        match tokio::time::timeout(inner.deadline, self.send(req)).await {
            Ok(r) => r,
            Err(_) => Err(PromError::Timeout {
                after: inner.deadline,
            }),
        }
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<(u16, Bytes), PromError> {
        let inner = &*self.inner;
        let resp = inner.http.request(req).await.map_err(|e| unreachable(&e))?;
        let status = resp.status();
        let declared = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = resp.into_body();
        if status.is_success() {
            let limit = inner.max_response_bytes;
            if declared.is_some_and(|n| n > limit as u64) {
                return Err(PromError::TooLarge { limit });
            }
            let body = read_body(body, limit, declared).await?;
            Ok((status.as_u16(), body.ok_or(PromError::TooLarge { limit })?))
        } else {
            // Only the start of an error body matters; don't fail on a long proxy page.
            let limit = inner.max_response_bytes.min(MAX_ERROR_BODY_READ);
            let body = read_body(body, limit, declared)
                .await?
                .unwrap_or_else(Bytes::new);
            Ok((status.as_u16(), body))
        }
    }

    fn request(
        &self,
        path: &'static str,
        params: &[(&str, &str)],
    ) -> Result<Request<Full<Bytes>>, PromError> {
        let inner = &*self.inner;
        let encoded = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .extend_pairs(
                inner
                    .query_params
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .finish();
        let (method, uri, body) = match inner.verb {
            Verb::Get => (
                Method::GET,
                format!("{}{path}?{encoded}", inner.base),
                Bytes::new(),
            ),
            Verb::Post => (
                Method::POST,
                format!("{}{path}", inner.base),
                Bytes::from(encoded),
            ),
        };
        let uri = Uri::try_from(uri).map_err(|e| PromError::Unreachable {
            reason: format!("cannot build the request url: {e}"),
        })?;
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        let headers = req.headers_mut();
        if inner.verb == Verb::Post {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
        }
        self.decorate(headers);
        Ok(req)
    }

    /// The headers every request carries: `Accept`, `User-Agent`, the configured ones and
    /// the credentials.
    fn decorate(&self, headers: &mut HeaderMap) {
        let inner = &*self.inner;
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("prom-adapter/", env!("CARGO_PKG_VERSION"))),
        );
        for (name, value) in &inner.headers {
            headers.append(name, value.clone());
        }
        if let Some(value) = inner.auth.header_value() {
            headers.insert(header::AUTHORIZATION, value);
        }
    }
}

impl Client {
    /// `/api/v1/series`, its 2xx answer decoded by `decode`.
    async fn series_decoded(
        &self,
        matchers: &[String],
        start: SystemTime,
        end: SystemTime,
        decode: fn(u16, &[u8]) -> Result<Vec<Labels>, PromError>,
    ) -> Result<Vec<Labels>, PromError> {
        let start = unix_seconds(start);
        let end = unix_seconds(end);
        let mut params: Vec<(&str, &str)> =
            matchers.iter().map(|m| ("match[]", m.as_str())).collect();
        params.push(("start", &start));
        params.push(("end", &end));
        let (status, body) = self.call(SERIES_PATH, &params).await?;
        if (200..300).contains(&status) {
            decode(status, &body)
        } else {
            Err(wire::decode_error(status, &body))
        }
    }
}

impl PromApi for Client {
    async fn series(
        &self,
        matchers: &[String],
        start: SystemTime,
        end: SystemTime,
    ) -> Result<Vec<Labels>, PromError> {
        self.series_decoded(matchers, start, end, wire::decode_series)
            .await
    }

    async fn series_shapes(
        &self,
        matchers: &[String],
        start: SystemTime,
        end: SystemTime,
    ) -> Result<Vec<Labels>, PromError> {
        self.series_decoded(matchers, start, end, wire::decode_series_shapes)
            .await
    }

    async fn query(
        &self,
        promql: &str,
        time: Option<SystemTime>,
    ) -> Result<QueryResult, PromError> {
        let time = time.map(unix_seconds);
        let mut params: Vec<(&str, &str)> = vec![("query", promql)];
        if let Some(time) = &time {
            params.push(("time", time));
        }
        params.push(("timeout", &self.inner.timeout_param));
        let (status, body) = self.call(QUERY_PATH, &params).await?;
        if (200..300).contains(&status) {
            wire::decode_query(status, &body)
        } else {
            Err(wire::decode_error(status, &body))
        }
    }
}

/// Reads the body up to `limit` bytes; `None` when it is longer.
async fn read_body(
    mut body: hyper::body::Incoming,
    limit: usize,
    declared: Option<u64>,
) -> Result<Option<Bytes>, PromError> {
    let hint = declared
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0)
        .min(limit)
        .min(16 << 20);
    let mut buf = BytesMut::with_capacity(hint);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| unreachable(&e))?;
        if let Ok(data) = frame.into_data() {
            if buf.len().saturating_add(data.len()) > limit {
                return Ok(None);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Some(buf.freeze()))
}

fn unreachable(e: &(dyn std::error::Error + 'static)) -> PromError {
    let mut reason = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !reason.ends_with(&s_text) {
            reason.push_str(": ");
            reason.push_str(&s_text);
        }
        source = s.source();
    }
    PromError::Unreachable { reason }
}

/// Unix seconds with millisecond precision, the format Prometheus accepts for `time`,
/// `start` and `end`: `1700000000` or `1700000000.123`.
pub fn unix_seconds(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    match d.subsec_millis() {
        0 => d.as_secs().to_string(),
        ms => format!("{}.{ms:03}", d.as_secs()),
    }
}

/// The `timeout` parameter: whole seconds as `30s`, else milliseconds (`300ms`, at least `1ms`).
/// Always positive: prometheus-adapter's negative value (PR #710) is what this avoids.
pub fn timeout_param(timeout: Duration) -> String {
    if timeout.subsec_nanos() == 0 {
        format!("{}s", timeout.as_secs())
    } else {
        let ms = timeout.as_nanos().div_ceil(1_000_000).max(1);
        format!("{ms}ms")
    }
}

/// The client-side deadline: the query timeout plus a tenth of it (between 100 ms and 5 s),
/// so a backend's own `503 timeout` answer normally arrives first.
pub fn client_deadline(timeout: Duration) -> Duration {
    let margin = (timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(5));
    timeout.saturating_add(margin)
}

/// The parsed base URL.
struct BaseUrl {
    base: String,
    https: bool,
    userinfo: Option<(String, String)>,
}

impl BaseUrl {
    fn parse(url: &str) -> Result<BaseUrl, ClientBuildError> {
        let err = |reason: &str| ClientBuildError::Url {
            url: redact_userinfo(url),
            reason: reason.to_owned(),
        };
        let uri: Uri = url
            .trim()
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| ClientBuildError::Url {
                url: redact_userinfo(url),
                reason: e.to_string().to_lowercase(),
            })?;
        let https = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => true,
            Some(s) if s.eq_ignore_ascii_case("http") => false,
            _ => return Err(err("it must start with http:// or https://")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| err("it has no host"))?
            .as_str();
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((info, host)) => {
                let (user, pass) = info.split_once(':').unwrap_or((info, ""));
                let user = percent_decode(user)
                    .ok_or_else(|| err("its user name is not valid percent-encoded utf-8"))?;
                let pass = percent_decode(pass)
                    .ok_or_else(|| err("its password is not valid percent-encoded utf-8"))?;
                (Some((user, pass)), host)
            }
            None => (None, authority),
        };
        if host_port.is_empty() {
            return Err(err("it has no host"));
        }
        if uri.query().is_some() {
            return Err(err("query parameters are not supported in it"));
        }
        let prefix = uri.path().trim_end_matches('/');
        let scheme = if https { "https" } else { "http" };
        Ok(BaseUrl {
            base: format!("{scheme}://{host_port}{prefix}"),
            https,
            userinfo,
        })
    }
}

/// `scheme://user:pass@host` → `scheme://<redacted>@host`.
fn redact_userinfo(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let rest = url.get(after_scheme..).unwrap_or("");
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = rest.get(..authority_end).unwrap_or("");
    match authority.rfind('@') {
        Some(at) => format!(
            "{}<redacted>{}",
            url.get(..after_scheme).unwrap_or(""),
            rest.get(at..).unwrap_or("")
        ),
        None => url.to_owned(),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn build_headers(headers: &[(String, String)]) -> Result<HeaderMap, ClientBuildError> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let bad = |reason| ClientBuildError::Header {
            name: name.clone(),
            reason,
        };
        let header_name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| bad("not a valid header name"))?;
        let mut header_value = HeaderValue::from_str(value.trim())
            .map_err(|_| bad("its value has characters not allowed in a header"))?;
        if header_name == header::AUTHORIZATION || header_name == header::PROXY_AUTHORIZATION {
            header_value.set_sensitive(true);
        }
        map.append(header_name, header_value);
    }
    Ok(map)
}

/// Credentials added to every request.
enum Auth {
    None,
    Bearer(SecretFile),
    Basic { username: String, password: Secret },
}

enum Secret {
    Fixed(String),
    File(SecretFile),
}

impl Auth {
    fn build(
        cfg: &ClientConfig,
        userinfo: Option<(String, String)>,
    ) -> Result<Auth, ClientBuildError> {
        let conflict = |reason| Err(ClientBuildError::Auth { reason });
        match (&cfg.bearer_token_file, &cfg.basic_auth, userinfo) {
            (Some(_), Some(_), _) => conflict("bearer_token_file and basic_auth are both set"),
            (Some(_), None, Some(_)) => {
                conflict("bearer_token_file is set and the url has credentials")
            }
            (None, Some(_), Some(_)) => conflict("basic_auth is set and the url has credentials"),
            (Some(path), None, None) => Ok(Auth::Bearer(SecretFile::load(
                path,
                "prometheus bearer token file",
                |token| HeaderValue::from_str(&format!("Bearer {token}")).is_ok(),
            )?)),
            (None, Some(basic), None) => {
                let password = match (&basic.password_file, &basic.password) {
                    (Some(_), Some(_)) => {
                        return conflict("basic_auth has both password and password_file");
                    }
                    (Some(path), None) => Secret::File(SecretFile::load(
                        path,
                        "prometheus basic auth password file",
                        |_| true,
                    )?),
                    (None, Some(p)) => Secret::Fixed(p.clone()),
                    (None, None) => Secret::Fixed(String::new()),
                };
                Ok(Auth::Basic {
                    username: basic.username.clone(),
                    password,
                })
            }
            (None, None, Some((username, password))) => Ok(Auth::Basic {
                username,
                password: Secret::Fixed(password),
            }),
            (None, None, None) => Ok(Auth::None),
        }
    }

    fn header_value(&self) -> Option<HeaderValue> {
        let text = match self {
            Auth::None => return None,
            Auth::Bearer(file) => format!("Bearer {}", file.current()),
            Auth::Basic { username, password } => {
                let password = match password {
                    Secret::Fixed(p) => p.clone(),
                    Secret::File(file) => file.current(),
                };
                format!(
                    "Basic {}",
                    base64(format!("{username}:{password}").as_bytes())
                )
            }
        };
        // Validated when loaded; a value that still fails is left out rather than sent broken.
        let mut value = HeaderValue::from_str(&text).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

/// A credential file, re-read when its mtime, size or inode changes.
struct SecretFile {
    path: PathBuf,
    what: &'static str,
    valid: fn(&str) -> bool,
    cache: Mutex<Cached>,
}

struct Cached {
    stamp: Stamp,
    value: String,
    /// Whether the current failure to re-read was already logged.
    warned: bool,
}

#[derive(PartialEq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    ino: (u64, u64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt as _;
        Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            #[cfg(unix)]
            ino: (meta.dev(), meta.ino()),
        }
    }
}

impl SecretFile {
    fn load(
        path: &Path,
        what: &'static str,
        valid: fn(&str) -> bool,
    ) -> Result<SecretFile, ClientBuildError> {
        let read_err = |source| ClientBuildError::ReadFile {
            what,
            path: path.to_owned(),
            source,
        };
        let (stamp, value) = read_secret(path).map_err(read_err)?;
        if !valid(&value) {
            return Err(ClientBuildError::BadFile {
                what,
                path: path.to_owned(),
                reason: "it has characters not allowed in an http header".to_owned(),
            });
        }
        Ok(SecretFile {
            path: path.to_owned(),
            what,
            valid,
            cache: Mutex::new(Cached {
                stamp,
                value,
                warned: false,
            }),
        })
    }

    /// The current content: re-read when the file changed; the last good one if that fails.
    fn current(&self) -> String {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = std::fs::metadata(&self.path)
            .map(|m| Stamp::of(&m) != cache.stamp)
            .unwrap_or(true);
        if changed {
            match read_secret(&self.path) {
                Ok((stamp, value)) if (self.valid)(&value) => {
                    if value != cache.value {
                        tracing::info!(
                            file = %self.path.display(),
                            what = self.what,
                            "Reloaded a changed credential file."
                        );
                    }
                    *cache = Cached {
                        stamp,
                        value,
                        warned: false,
                    };
                }
                result => {
                    if !cache.warned {
                        cache.warned = true;
                        let error = match result {
                            Err(e) => e.to_string(),
                            Ok(_) => "it has characters not allowed in an http header".to_owned(),
                        };
                        tracing::warn!(
                            file = %self.path.display(),
                            what = self.what,
                            %error,
                            "Cannot reload a credential file; keeping the previous value."
                        );
                    }
                }
            }
        }
        cache.value.clone()
    }
}

fn read_secret(path: &Path) -> io::Result<(Stamp, String)> {
    let stamp = Stamp::of(&std::fs::metadata(path)?);
    let text = std::fs::read_to_string(path)?;
    Ok((stamp, text.trim().to_owned()))
}

/// Standard base64 with padding (RFC 4648), for `Authorization: Basic`.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sym = |n: u32| {
        ALPHABET
            .get((n & 63) as usize)
            .map_or('=', |&b| char::from(b))
    };
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let [a, b, c] = match *chunk {
            [a, b, c] => [a, b, c],
            [a, b] => [a, b, 0],
            [a] => [a, 0, 0],
            _ => continue,
        };
        let n = (u32::from(a) << 16) | (u32::from(b) << 8) | u32::from(c);
        out.push(sym(n >> 18));
        out.push(sym(n >> 12));
        out.push(if chunk.len() > 1 { sym(n >> 6) } else { '=' });
        out.push(if chunk.len() > 2 { sym(n) } else { '=' });
    }
    out
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, ClientBuildError> {
    std::fs::read(path).map_err(|source| ClientBuildError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })
}

fn bad_file(what: &'static str, path: &Path, reason: impl fmt::Display) -> ClientBuildError {
    ClientBuildError::BadFile {
        what,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ClientBuildError> {
    let pem = read_file(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_file(what, path, e))?;
    if certs.is_empty() {
        return Err(bad_file(what, path, "no pem certificate in it"));
    }
    Ok(certs)
}

/// The rustls config: ring explicitly (never the process default), TLS 1.2+, the CA file or the
/// system roots (only loaded for https URLs), the client certificate when configured.
fn tls_config(cfg: &ClientConfig, https: bool) -> Result<rustls::ClientConfig, ClientBuildError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientBuildError::Tls {
            reason: e.to_string(),
        })?;
    let builder = match &cfg.ca_file {
        _ if cfg.insecure_skip_verify => {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(common::tls::AnyServerCert::new(
                    Arc::clone(&provider),
                )))
        }
        Some(path) => {
            const WHAT: &str = "prometheus ca file";
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(WHAT, path)? {
                roots.add(cert).map_err(|e| bad_file(WHAT, path, e))?;
            }
            builder.with_root_certificates(roots)
        }
        None if https => builder
            .with_native_roots()
            .map_err(|source| ClientBuildError::NoSystemRoots { source })?,
        None => builder.with_root_certificates(rustls::RootCertStore::empty()),
    };
    match (&cfg.client_cert_file, &cfg.client_key_file) {
        (Some(cert_path), Some(key_path)) => {
            const KEY: &str = "prometheus client key file";
            let certs = read_certs("prometheus client certificate file", cert_path)?;
            let key_pem = read_file(KEY, key_path)?;
            let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                bad_file(
                    KEY,
                    key_path,
                    format!("no usable pem private key in it: {e}"),
                )
            })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| ClientBuildError::Tls {
                    reason: format!("client certificate and key: {e}").to_lowercase(),
                })
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(_), None) => Err(ClientBuildError::Tls {
            reason: "client_cert_file is set without client_key_file".to_owned(),
        }),
        (None, Some(_)) => Err(ClientBuildError::Tls {
            reason: "client_key_file is set without client_cert_file".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verb_from_str_is_case_insensitive() {
        assert_eq!("GET".parse(), Ok(Verb::Get));
        assert_eq!("get".parse(), Ok(Verb::Get));
        assert_eq!("Post".parse(), Ok(Verb::Post));
        assert_eq!(
            "PUT".parse::<Verb>().unwrap_err().to_string(),
            "unknown http verb \"PUT\": expected GET or POST"
        );
        assert_eq!(Verb::Post.to_string(), "POST");
    }

    #[test]
    fn base_url_keeps_prefix_and_takes_userinfo() {
        /// URL, base, https, userinfo.
        type Case = (
            &'static str,
            &'static str,
            bool,
            Option<(&'static str, &'static str)>,
        );
        let cases: &[Case] = &[
            (
                "http://localhost:9090",
                "http://localhost:9090",
                false,
                None,
            ),
            (
                "http://localhost:9090/",
                "http://localhost:9090",
                false,
                None,
            ),
            (
                "https://thanos.example/prometheus/",
                "https://thanos.example/prometheus",
                true,
                None,
            ),
            (
                "HTTP://u:p%40ss@mimir:8080/prometheus",
                "http://mimir:8080/prometheus",
                false,
                Some(("u", "p@ss")),
            ),
            ("http://user@h", "http://h", false, Some(("user", ""))),
            ("http://[::1]:9090", "http://[::1]:9090", false, None),
        ];
        for &(url, base, https, userinfo) in cases {
            let got = BaseUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(got.base, base, "{url}");
            assert_eq!(got.https, https, "{url}");
            assert_eq!(
                got.userinfo,
                userinfo.map(|(u, p)| (u.to_owned(), p.to_owned())),
                "{url}"
            );
        }
    }

    #[test]
    fn bad_urls_are_refused_without_showing_passwords() {
        for (url, reason) in [
            ("localhost:9090", "must start with http:// or https://"),
            ("ftp://h", "must start with http:// or https://"),
            ("http://h/p?x=1", "query parameters"),
            ("http://u:s%ZZ@h", "password is not valid"),
            ("", "invalid"),
            ("http://u:secret@", ""),
        ] {
            let e = BaseUrl::parse(url)
                .err()
                .unwrap_or_else(|| panic!("{url} accepted"));
            let text = e.to_string();
            assert!(text.contains(reason), "{url}: {text}");
            assert!(!text.contains("secret"), "{text}");
            assert!(!text.contains("s%ZZ"), "{text}");
        }
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_userinfo("http://u:p@h:1/x@y"),
            "http://<redacted>@h:1/x@y"
        );
        assert_eq!(redact_userinfo("http://h/x@y"), "http://h/x@y");
        assert_eq!(redact_userinfo("u:p@h"), "<redacted>@h");
    }

    #[test]
    fn time_and_timeout_parameters() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(unix_seconds(t), "1700000000.123");
        assert_eq!(unix_seconds(UNIX_EPOCH + Duration::from_secs(5)), "5");
        assert_eq!(
            unix_seconds(UNIX_EPOCH + Duration::from_millis(5_007)),
            "5.007"
        );
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(5)), "0");
        assert_eq!(timeout_param(Duration::from_secs(30)), "30s");
        assert_eq!(timeout_param(Duration::from_millis(300)), "300ms");
        assert_eq!(timeout_param(Duration::from_millis(1500)), "1500ms");
        assert_eq!(timeout_param(Duration::from_micros(10)), "1ms");
        assert_eq!(
            client_deadline(Duration::from_secs(30)),
            Duration::from_secs(33)
        );
        assert_eq!(
            client_deadline(Duration::from_millis(300)),
            Duration::from_millis(400)
        );
        assert_eq!(
            client_deadline(Duration::from_secs(600)),
            Duration::from_secs(605)
        );
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("Aladdin:open sesame", "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn build_errors_name_the_file_or_header() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem").unwrap();
        let build = |cfg: ClientConfig| Client::new(cfg).unwrap_err().to_string();

        let e = build(ClientConfig {
            ca_file: Some(missing.clone()),
            ..Default::default()
        });
        assert_eq!(
            e,
            format!("cannot read prometheus ca file {}", missing.display())
        );
        let e = build(ClientConfig {
            ca_file: Some(junk.clone()),
            ..Default::default()
        });
        assert_eq!(
            e,
            format!(
                "invalid prometheus ca file {}: no pem certificate in it",
                junk.display()
            )
        );
        let e = build(ClientConfig {
            client_cert_file: Some(junk.clone()),
            client_key_file: Some(missing.clone()),
            ..Default::default()
        });
        assert!(e.contains("prometheus client certificate file"), "{e}");
        let e = build(ClientConfig {
            client_cert_file: Some(junk.clone()),
            ..Default::default()
        });
        assert!(e.contains("without client_key_file"), "{e}");
        let e = build(ClientConfig {
            bearer_token_file: Some(missing.clone()),
            ..Default::default()
        });
        assert_eq!(
            e,
            format!(
                "cannot read prometheus bearer token file {}",
                missing.display()
            )
        );
        let e = build(ClientConfig {
            headers: vec![("X Bad".into(), "v".into())],
            ..Default::default()
        });
        assert_eq!(
            e,
            "invalid prometheus header \"X Bad\": not a valid header name"
        );
        let e = build(ClientConfig {
            headers: vec![("X-Scope-OrgID".into(), "secret\nvalue".into())],
            ..Default::default()
        });
        assert!(e.contains("X-Scope-OrgID") && !e.contains("secret"), "{e}");
        let e = build(ClientConfig {
            url: "http://u:p@h".into(),
            basic_auth: Some(BasicAuth {
                username: "x".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(e.starts_with("conflicting prometheus credentials"), "{e}");
        let e = build(ClientConfig {
            timeout: Duration::ZERO,
            ..Default::default()
        });
        assert_eq!(e, "the prometheus query timeout must be positive");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let auth = BasicAuth {
            username: "me".into(),
            password: Some("hunter2".into()),
            password_file: None,
        };
        assert!(!format!("{auth:?}").contains("hunter2"));
        let cfg = ClientConfig {
            url: "http://me:hunter2@h/p".into(),
            headers: vec![("Authorization".into(), "Bearer hunter2".into())],
            basic_auth: None,
            ..Default::default()
        };
        let text = format!("{cfg:?}");
        assert!(
            !text.contains("hunter2") && text.contains("Authorization"),
            "{text}"
        );
        let client = Client::new(ClientConfig {
            headers: Vec::new(),
            ..cfg
        })
        .unwrap();
        let text = format!("{client:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(client.base_url(), "http://h/p");
    }

    #[test]
    fn secret_file_is_reread_when_it_changes_and_kept_when_it_vanishes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "one\n").unwrap();
        let file = SecretFile::load(&path, "test file", |_| true).unwrap();
        assert_eq!(file.current(), "one");
        std::fs::write(&path, "second").unwrap();
        let later = SystemTime::now() + Duration::from_secs(10);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(file.current(), "second");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(file.current(), "second");
    }
}
