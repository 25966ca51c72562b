//! A fake kube-apiserver: the three endpoints an aggregated API server's delegated
//! authentication and authorization use, over plain HTTP/1.1 on an ephemeral loopback port.
//!
//! - `POST /apis/authentication.k8s.io/v1/tokenreviews`: answers from a token → user table
//!   the test sets ([`FakeKubeApi::set_token`]).
//! - `POST /apis/authorization.k8s.io/v1/subjectaccessreviews`: answers from a policy the test
//!   sets ([`FakeKubeApi::set_policy`], a closure over the review's spec).
//! - `GET /api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication`: the
//!   ConfigMap the test sets ([`FakeKubeApi::set_auth_config`]), 404 while there is none.
//!
//! Answers have the real JSON shapes of `authentication.k8s.io/v1`, `authorization.k8s.io/v1`
//! and `v1`: reviews come back `201 Created` with the request's `apiVersion`, `kind` and
//! `spec` echoed and a `status` added; a TokenReview that fails has `status: {user: {},
//! error}` (the real API omits `authenticated: false`); a SubjectAccessReview `status:
//! {allowed, denied?, reason?}`. A SubjectAccessReview the real API would reject (not exactly
//! one of `resourceAttributes`/`nonResourceAttributes`, or neither user nor groups) gets a
//! 422 `Invalid` Status; a request without the kubeconfig's bearer token
//! ([`KUBECONFIG_TOKEN`]) a 401; any other path a 404 `NotFound` Status.
//!
//! Every request is recorded ([`FakeKubeApi::requests`]) with its headers and parsed JSON
//! body, so tests can assert what the adapter sent. [`FakeKubeApi::set_down`] closes the
//! listener and every open connection (clients get "connection refused") until it is set up
//! again on the same port.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use crate::kubectl::{KubeconfigUser, ServerTrust, kubeconfig};
use crate::util::scaled;

/// The bearer token of the kubeconfig [`FakeKubeApi::kubeconfig`] writes; the fake answers
/// 401 to any request without it.
pub const KUBECONFIG_TOKEN: &str = "prom-adapter-service-account-token";

/// The path of TokenReview creation.
pub const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// The path of SubjectAccessReview creation.
pub const ACCESS_REVIEWS: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";

/// The path of the authentication ConfigMap.
pub const AUTH_CONFIGMAP: &str =
    "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication";

/// A user as a TokenReview answers it (`status.user`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UserInfo {
    /// `username`.
    pub username: String,
    /// `uid` (left out when empty).
    pub uid: String,
    /// `groups`.
    pub groups: Vec<String>,
    /// `extra`.
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// A user with `groups`, no uid, no extra.
    pub fn new(username: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            username: username.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..UserInfo::default()
        }
    }

    fn to_json(&self) -> Value {
        let mut user = json!({"username": self.username, "groups": self.groups});
        if !self.uid.is_empty() {
            user["uid"] = json!(self.uid);
        }
        if !self.extra.is_empty() {
            user["extra"] = json!(self.extra);
        }
        user
    }
}

/// `spec.resourceAttributes` of a SubjectAccessReview (absent fields read as `""`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceAttributes {
    /// `namespace`.
    #[serde(default, deserialize_with = "null_default")]
    pub namespace: String,
    /// `verb`.
    #[serde(default, deserialize_with = "null_default")]
    pub verb: String,
    /// `group`.
    #[serde(default, deserialize_with = "null_default")]
    pub group: String,
    /// `version`.
    #[serde(default, deserialize_with = "null_default")]
    pub version: String,
    /// `resource`.
    #[serde(default, deserialize_with = "null_default")]
    pub resource: String,
    /// `subresource`.
    #[serde(default, deserialize_with = "null_default")]
    pub subresource: String,
    /// `name`.
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
}

/// `spec.nonResourceAttributes` of a SubjectAccessReview.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct NonResourceAttributes {
    /// `path`.
    #[serde(default, deserialize_with = "null_default")]
    pub path: String,
    /// `verb`.
    #[serde(default, deserialize_with = "null_default")]
    pub verb: String,
}

/// The `spec` of a SubjectAccessReview, read.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessReview {
    /// `user`.
    #[serde(default, deserialize_with = "null_default")]
    pub user: String,
    /// `groups`.
    #[serde(default, deserialize_with = "null_default")]
    pub groups: Vec<String>,
    /// `uid`.
    #[serde(default, deserialize_with = "null_default")]
    pub uid: String,
    /// `extra`.
    #[serde(default, deserialize_with = "null_default")]
    pub extra: BTreeMap<String, Vec<String>>,
    /// `resourceAttributes`.
    #[serde(default)]
    pub resource_attributes: Option<ResourceAttributes>,
    /// `nonResourceAttributes`.
    #[serde(default)]
    pub non_resource_attributes: Option<NonResourceAttributes>,
}

/// A field that may be absent or `null`: its default then.
fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// What the policy says about one SubjectAccessReview (its `status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// `allowed`.
    pub allowed: bool,
    /// `denied` (an explicit deny; left out when false).
    pub denied: bool,
    /// `reason` (left out when empty).
    pub reason: String,
}

impl Decision {
    /// `allowed: true`.
    pub fn allow(reason: &str) -> Decision {
        Decision {
            allowed: true,
            denied: false,
            reason: reason.to_owned(),
        }
    }

    /// `allowed: false, denied: true`: an explicit deny.
    pub fn deny(reason: &str) -> Decision {
        Decision {
            allowed: false,
            denied: true,
            reason: reason.to_owned(),
        }
    }

    /// `allowed: false` without `denied`: no authorizer had an opinion (what RBAC answers
    /// when no rule matches).
    pub fn no_opinion(reason: &str) -> Decision {
        Decision {
            allowed: false,
            denied: false,
            reason: reason.to_owned(),
        }
    }
}

/// The authorization policy: a decision for each SubjectAccessReview spec.
pub type Policy = Arc<dyn Fn(&AccessReview) -> Decision + Send + Sync>;

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The method.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query (after `?`; empty when none).
    pub query: String,
    /// Header names (lowercased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON (`None` when empty or not JSON).
    pub body: Option<Value>,
    /// When it arrived.
    pub at: Instant,
    /// The status code the fake answered.
    pub status: u16,
}

impl Recorded {
    /// The first value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body's `spec` (`Null` when none).
    pub fn spec(&self) -> &Value {
        self.body.as_ref().map_or(&Value::Null, |b| &b["spec"])
    }
}

/// The data of the `extension-apiserver-authentication` ConfigMap as kube-apiserver writes
/// it: the CA bundles as PEM, the header names and allowed names as JSON string arrays.
/// `None` leaves a key out.
pub fn auth_config_data(
    client_ca_pem: Option<&str>,
    requestheader_ca_pem: Option<&str>,
    allowed_names: &[&str],
) -> BTreeMap<String, String> {
    let mut data = BTreeMap::new();
    if let Some(pem) = client_ca_pem {
        data.insert("client-ca-file".to_owned(), pem.to_owned());
    }
    if let Some(pem) = requestheader_ca_pem {
        data.insert("requestheader-client-ca-file".to_owned(), pem.to_owned());
        let list = |items: &[&str]| json!(items).to_string();
        data.insert(
            "requestheader-allowed-names".to_owned(),
            list(allowed_names),
        );
        data.insert(
            "requestheader-username-headers".to_owned(),
            list(&["X-Remote-User"]),
        );
        data.insert(
            "requestheader-group-headers".to_owned(),
            list(&["X-Remote-Group"]),
        );
        data.insert(
            "requestheader-extra-headers-prefix".to_owned(),
            list(&["X-Remote-Extra-"]),
        );
    }
    data
}

struct State {
    tokens: Mutex<BTreeMap<String, UserInfo>>,
    policy: Mutex<Policy>,
    configmap: Mutex<Option<BTreeMap<String, String>>>,
    configmap_version: AtomicU64,
    requests: Mutex<Vec<Recorded>>,
    /// Open connections by id, so going down can close them.
    connections: Mutex<BTreeMap<u64, TcpStream>>,
    next_connection: AtomicU64,
    down: AtomicBool,
    stop: AtomicBool,
    /// Whether the listener is bound, with a condvar for changes of it and of `down`/`stop`.
    listening: Mutex<bool>,
    changed: Condvar,
    bind_error: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running fake kube-apiserver; stopped when dropped.
pub struct FakeKubeApi {
    addr: SocketAddr,
    state: Arc<State>,
    thread: Option<JoinHandle<()>>,
}

impl FakeKubeApi {
    /// Starts the fake on `127.0.0.1:<ephemeral>` with no tokens, no ConfigMap and a policy
    /// that allows nothing (`no_opinion`, reason "the fake has no policy").
    ///
    /// # Panics
    /// When the listener can't be bound.
    pub fn start() -> FakeKubeApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fake kube-apiserver");
        let addr = listener.local_addr().expect("the fake's address");
        let policy: Policy =
            Arc::new(|_: &AccessReview| Decision::no_opinion("the fake has no policy"));
        let state = Arc::new(State {
            tokens: Mutex::new(BTreeMap::new()),
            policy: Mutex::new(policy),
            configmap: Mutex::new(None),
            configmap_version: AtomicU64::new(1),
            requests: Mutex::new(Vec::new()),
            connections: Mutex::new(BTreeMap::new()),
            next_connection: AtomicU64::new(0),
            down: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            listening: Mutex::new(true),
            changed: Condvar::new(),
            bind_error: Mutex::new(None),
        });
        let thread_state = Arc::clone(&state);
        let thread = thread::Builder::new()
            .name("fake-kubeapi".to_owned())
            .spawn(move || accept_loop(listener, addr, &thread_state))
            .expect("spawning the fake's accept thread");
        FakeKubeApi {
            addr,
            state,
            thread: Some(thread),
        }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for the fake: server `http://127.0.0.1:PORT`, bearer token
    /// [`KUBECONFIG_TOKEN`].
    pub fn kubeconfig(&self) -> String {
        kubeconfig(
            &self.url(),
            ServerTrust::PlainHttp,
            &KubeconfigUser::Token(KUBECONFIG_TOKEN.to_owned()),
        )
    }

    /// Writes [`FakeKubeApi::kubeconfig`] to `<dir>/kubeapi.kubeconfig` and returns the path.
    ///
    /// # Errors
    /// When it can't be written.
    pub fn write_kubeconfig(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join("kubeapi.kubeconfig");
        std::fs::write(&path, self.kubeconfig())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// TokenReviews of `token` answer `user` from now on.
    pub fn set_token(&self, token: &str, user: UserInfo) {
        lock(&self.state.tokens).insert(token.to_owned(), user);
    }

    /// SubjectAccessReviews are decided by `policy` from now on.
    pub fn set_policy(&self, policy: impl Fn(&AccessReview) -> Decision + Send + Sync + 'static) {
        *lock(&self.state.policy) = Arc::new(policy);
    }

    /// Serves the `extension-apiserver-authentication` ConfigMap with `data` (see
    /// [`auth_config_data`]); `None` makes it 404. Each change bumps its `resourceVersion`.
    pub fn set_auth_config(&self, data: Option<BTreeMap<String, String>>) {
        *lock(&self.state.configmap) = data;
        self.state.configmap_version.fetch_add(1, Ordering::SeqCst);
    }

    /// Every request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state.requests).clone()
    }

    /// The requests to `path` (no query) so far.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        lock(&self.state.requests)
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// The TokenReviews answered so far (`201`; not those refused as malformed or
    /// unauthorized, which [`FakeKubeApi::requests`] still has).
    pub fn token_reviews(&self) -> Vec<Recorded> {
        self.requests_to(TOKEN_REVIEWS)
            .into_iter()
            .filter(|r| r.status == 201)
            .collect()
    }

    /// The specs of the SubjectAccessReviews answered so far (`201`).
    pub fn access_reviews(&self) -> Vec<AccessReview> {
        self.requests_to(ACCESS_REVIEWS)
            .iter()
            .filter(|r| r.status == 201)
            .filter_map(|r| serde_json::from_value(r.spec().clone()).ok())
            .collect()
    }

    /// The SubjectAccessReviews about `user` so far.
    pub fn access_reviews_of(&self, user: &str) -> Vec<AccessReview> {
        self.access_reviews()
            .into_iter()
            .filter(|r| r.user == user)
            .collect()
    }

    /// Down: closes the listener (connections are refused) and every open connection.
    /// Up: listens on the same port again. Returns once the change is in effect.
    ///
    /// # Errors
    /// When the port can't be bound again, or the change does not take effect in time.
    pub fn set_down(&self, down: bool) -> Result<()> {
        let state = &self.state;
        state.down.store(down, Ordering::SeqCst);
        if down {
            for (_, stream) in lock(&state.connections).iter() {
                let _ = stream.shutdown(Shutdown::Both);
            }
            // Wake the blocking accept so the thread sees the flag and drops the listener.
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        }
        state.changed.notify_all();
        let deadline = Instant::now() + scaled(Duration::from_secs(10));
        let mut listening = lock(&state.listening);
        while *listening == down {
            if let Some(e) = lock(&state.bind_error).take() {
                bail!(
                    "the fake kube-apiserver could not listen on {} again: {e}",
                    self.addr
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            ensure!(
                !left.is_zero(),
                "the fake kube-apiserver did not go {} in time",
                if down { "down" } else { "up" }
            );
            listening = state
                .changed
                .wait_timeout(listening, left.min(Duration::from_millis(50)))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        Ok(())
    }
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.state.changed.notify_all();
        for (_, stream) in lock(&self.state.connections).iter() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(first: TcpListener, addr: SocketAddr, state: &Arc<State>) {
    let mut listener = Some(first);
    loop {
        if state.stop.load(Ordering::SeqCst) {
            return;
        }
        if let Some(bound) = listener.take() {
            set_listening(state, true);
            for stream in bound.incoming() {
                if state.stop.load(Ordering::SeqCst) || state.down.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else {
                    continue;
                };
                let state = Arc::clone(state);
                let _ = thread::Builder::new()
                    .name("fake-kubeapi-conn".to_owned())
                    .spawn(move || serve_connection(stream, &state));
            }
            drop(bound);
            set_listening(state, false);
            continue;
        }
        // Down: wait until up (or stopped), then bind the same port again.
        let mut guard = lock(&state.listening);
        while state.down.load(Ordering::SeqCst) && !state.stop.load(Ordering::SeqCst) {
            guard = state
                .changed
                .wait_timeout(guard, Duration::from_millis(100))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        drop(guard);
        if state.stop.load(Ordering::SeqCst) {
            return;
        }
        let mut last_error = String::new();
        for _ in 0..50 {
            match TcpListener::bind(addr) {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(e) => {
                    last_error = e.to_string();
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
        if listener.is_none() {
            *lock(&state.bind_error) = Some(last_error);
            state.changed.notify_all();
            return;
        }
    }
}

fn set_listening(state: &State, value: bool) {
    *lock(&state.listening) = value;
    state.changed.notify_all();
}

fn serve_connection(stream: TcpStream, state: &Arc<State>) {
    let id = state.next_connection.fetch_add(1, Ordering::SeqCst);
    let Ok(registered) = stream.try_clone() else {
        return;
    };
    lock(&state.connections).insert(id, registered);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    if let Ok(reader) = stream.try_clone() {
        let mut reader = BufReader::new(reader);
        let mut writer = stream;
        while let Ok(Some(mut request)) = read_request(&mut reader) {
            if state.down.load(Ordering::SeqCst) || state.stop.load(Ordering::SeqCst) {
                break;
            }
            let close = request
                .header("connection")
                .is_some_and(|c| c.eq_ignore_ascii_case("close"));
            let (status, body) = answer(&request, state);
            request.status = status;
            lock(&state.requests).push(request);
            let reason = match status {
                200 => "OK",
                201 => "Created",
                400 => "Bad Request",
                401 => "Unauthorized",
                404 => "Not Found",
                405 => "Method Not Allowed",
                422 => "Unprocessable Entity",
                _ => "Other",
            };
            let body = body.to_string();
            let response = format!(
                "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: \
                 {}\r\nConnection: {}\r\n\r\n{body}",
                body.len(),
                if close { "close" } else { "keep-alive" }
            );
            if writer.write_all(response.as_bytes()).is_err() || close {
                break;
            }
            let _ = writer.flush();
        }
    }
    if let Some(stream) = lock(&state.connections).remove(&id) {
        let _ = stream.shutdown(Shutdown::Both);
    }
}

/// Reads one request; `None` at a clean end of the stream.
fn read_request(reader: &mut impl BufRead) -> Result<Option<Recorded>> {
    let mut request_line = String::new();
    if reader.read_line(&mut request_line)? == 0 {
        return Ok(None);
    }
    let request_line = request_line.trim_end();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        bail!("bad request line {request_line:?}");
    };
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        ensure!(reader.read_line(&mut line)? > 0, "request head cut short");
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (k, v) = line
            .split_once(':')
            .with_context(|| format!("bad header line {line:?}"))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked")) {
        loop {
            let mut size_line = String::new();
            ensure!(
                reader.read_line(&mut size_line)? > 0,
                "chunked body cut short"
            );
            let size_hex = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_hex, 16)
                .with_context(|| format!("bad chunk size {size_line:?}"))?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                // The CRLF after the last chunk (no trailers expected) is what we just read.
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(len) = header("content-length") {
        let len: usize = len
            .parse()
            .with_context(|| format!("bad content-length {len:?}"))?;
        body = vec![0; len];
        reader.read_exact(&mut body)?;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Some(Recorded {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        body: serde_json::from_slice(&body).ok(),
        headers,
        at: Instant::now(),
        status: 0,
    }))
}

/// A `metav1.Status` failure.
fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }),
    )
}

fn answer(request: &Recorded, state: &State) -> (u16, Value) {
    let expected = format!("Bearer {KUBECONFIG_TOKEN}");
    if request.header("authorization") != Some(expected.as_str()) {
        return status(401, "Unauthorized", "Unauthorized");
    }
    let known = [TOKEN_REVIEWS, ACCESS_REVIEWS, AUTH_CONFIGMAP];
    match (request.method.as_str(), request.path.as_str()) {
        ("POST", TOKEN_REVIEWS) => token_review(request, state),
        ("POST", ACCESS_REVIEWS) => access_review(request, state),
        ("GET", AUTH_CONFIGMAP) => configmap(state),
        (method, path) if known.contains(&path) => status(
            405,
            "MethodNotAllowed",
            &format!("{method} is not supported on {path}"),
        ),
        _ => status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}

/// Checks the envelope of a review and returns its `spec`.
fn review_spec<'a>(
    request: &'a Recorded,
    api_version: &str,
    kind: &str,
) -> Result<&'a Value, (u16, Value)> {
    let Some(body) = &request.body else {
        return Err(status(400, "BadRequest", "the request body is not JSON"));
    };
    if body["apiVersion"] != api_version || body["kind"] != kind {
        return Err(status(
            400,
            "BadRequest",
            &format!(
                "expected apiVersion {api_version} and kind {kind}, got {} and {}",
                body["apiVersion"], body["kind"]
            ),
        ));
    }
    match &body["spec"] {
        spec @ Value::Object(_) => Ok(spec),
        _ => Err(status(400, "BadRequest", "the review has no spec")),
    }
}

fn token_review(request: &Recorded, state: &State) -> (u16, Value) {
    const API_VERSION: &str = "authentication.k8s.io/v1";
    let spec = match review_spec(request, API_VERSION, "TokenReview") {
        Ok(spec) => spec,
        Err(answer) => return answer,
    };
    let token = spec["token"].as_str().unwrap_or_default();
    let user = lock(&state.tokens).get(token).cloned();
    let status = match user {
        Some(user) => {
            let mut status = json!({"authenticated": true, "user": user.to_json()});
            if let Some(audiences) = spec["audiences"].as_array().filter(|a| !a.is_empty()) {
                status["audiences"] = json!(audiences);
            }
            status
        }
        None => json!({"user": {}, "error": "invalid bearer token"}),
    };
    (
        201,
        json!({
            "kind": "TokenReview",
            "apiVersion": API_VERSION,
            "metadata": {"creationTimestamp": null},
            "spec": spec,
            "status": status,
        }),
    )
}

fn access_review(request: &Recorded, state: &State) -> (u16, Value) {
    const API_VERSION: &str = "authorization.k8s.io/v1";
    let spec = match review_spec(request, API_VERSION, "SubjectAccessReview") {
        Ok(spec) => spec,
        Err(answer) => return answer,
    };
    let review: AccessReview = match serde_json::from_value(spec.clone()) {
        Ok(r) => r,
        Err(e) => return status(400, "BadRequest", &format!("bad spec: {e}")),
    };
    let invalid = |field: &str, message: &str| {
        status(
            422,
            "Invalid",
            &format!(
                "SubjectAccessReview.authorization.k8s.io \"\" is invalid: {field}: Invalid \
                 value: {message}"
            ),
        )
    };
    if review.resource_attributes.is_some() == review.non_resource_attributes.is_some() {
        return invalid(
            "spec.resourceAttributes",
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        );
    }
    if review.user.is_empty() && review.groups.is_empty() {
        return invalid(
            "spec.user",
            "\"\": at least one of user or group must be specified",
        );
    }
    let policy = Arc::clone(&lock(&state.policy));
    let decision = policy(&review);
    let mut status = json!({"allowed": decision.allowed});
    if decision.denied {
        status["denied"] = json!(true);
    }
    if !decision.reason.is_empty() {
        status["reason"] = json!(decision.reason);
    }
    (
        201,
        json!({
            "kind": "SubjectAccessReview",
            "apiVersion": API_VERSION,
            "metadata": {"creationTimestamp": null},
            "spec": spec,
            "status": status,
        }),
    )
}

fn configmap(state: &State) -> (u16, Value) {
    let Some(data) = lock(&state.configmap).clone() else {
        let (code, mut body) = status(
            404,
            "NotFound",
            "configmaps \"extension-apiserver-authentication\" not found",
        );
        body["details"] =
            json!({"name": "extension-apiserver-authentication", "kind": "configmaps"});
        return (code, body);
    };
    let version = state.configmap_version.load(Ordering::SeqCst);
    (
        200,
        json!({
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": {
                "name": "extension-apiserver-authentication",
                "namespace": "kube-system",
                "uid": "6f1d3c2a-0b7e-4c55-9a61-0d5f3c9b7e21",
                "resourceVersion": version.to_string(),
                "creationTimestamp": "2025-01-01T00:00:00Z",
            },
            "data": data,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http;
    use std::io::Read;

    fn post(fake: &FakeKubeApi, path: &str, body: &Value, token: &str) -> (u16, Value) {
        let auth = format!("Bearer {token}");
        let response = http::request(
            fake.addr(),
            "POST",
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
        .unwrap();
        (
            response.status,
            serde_json::from_slice(&response.body).unwrap(),
        )
    }

    #[test]
    fn reviews_tokens_and_access_and_records_them() {
        let fake = FakeKubeApi::start();
        let mut carol = UserInfo::new("carol", &["team"]);
        carol.uid = "u-1".to_owned();
        fake.set_token("t1", carol);
        fake.set_policy(|r| {
            if r.user == "carol" {
                Decision::allow("")
            } else {
                Decision::deny("nope")
            }
        });

        let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": "t1"}});
        let (code, body) = post(&fake, TOKEN_REVIEWS, &review, KUBECONFIG_TOKEN);
        assert_eq!(code, 201, "{body}");
        assert_eq!(body["spec"], json!({"token": "t1"}));
        assert_eq!(
            body["status"],
            json!({"authenticated": true, "user": {"username": "carol", "uid": "u-1",
                "groups": ["team"]}})
        );
        let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": "nope"}});
        let (_, body) = post(&fake, TOKEN_REVIEWS, &review, KUBECONFIG_TOKEN);
        assert_eq!(
            body["status"],
            json!({"user": {}, "error": "invalid bearer token"})
        );

        let sar = |user: &str| {
            json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {"user": user, "groups": ["g"], "resourceAttributes": {"verb": "get",
                "resource": "pods", "namespace": "default"}}})
        };
        let (code, body) = post(&fake, ACCESS_REVIEWS, &sar("carol"), KUBECONFIG_TOKEN);
        assert_eq!(code, 201, "{body}");
        assert_eq!(body["status"], json!({"allowed": true}));
        assert_eq!(body["spec"]["user"], "carol");
        let (_, body) = post(&fake, ACCESS_REVIEWS, &sar("eve"), KUBECONFIG_TOKEN);
        assert_eq!(
            body["status"],
            json!({"allowed": false, "denied": true, "reason": "nope"})
        );
        let bad = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": "carol"}});
        assert_eq!(post(&fake, ACCESS_REVIEWS, &bad, KUBECONFIG_TOKEN).0, 422);
        assert_eq!(post(&fake, ACCESS_REVIEWS, &sar("carol"), "wrong").0, 401);

        // The 422 and the 401 are recorded but not counted as reviews.
        let reviews = fake.access_reviews_of("carol");
        assert_eq!(reviews.len(), 1, "{reviews:?}");
        assert_eq!(fake.access_reviews().len(), 2);
        assert_eq!(
            reviews[0].resource_attributes,
            Some(ResourceAttributes {
                namespace: "default".to_owned(),
                verb: "get".to_owned(),
                resource: "pods".to_owned(),
                ..ResourceAttributes::default()
            })
        );
        assert_eq!(fake.token_reviews().len(), 2);
        assert_eq!(fake.requests().len(), 6);
    }

    #[test]
    fn serves_the_configmap_and_404_for_the_rest() {
        let fake = FakeKubeApi::start();
        let auth = format!("Bearer {KUBECONFIG_TOKEN}");
        let get = |path: &str| {
            let r = http::get_with_headers(fake.addr(), path, &[("Authorization", &auth)]).unwrap();
            (r.status, serde_json::from_slice::<Value>(&r.body).unwrap())
        };
        let (code, body) = get(AUTH_CONFIGMAP);
        assert_eq!((code, &body["reason"]), (404, &json!("NotFound")), "{body}");
        fake.set_auth_config(Some(auth_config_data(Some("CA"), Some("FP"), &["fp"])));
        let (code, body) = get(AUTH_CONFIGMAP);
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["data"]["requestheader-allowed-names"], r#"["fp"]"#);
        assert_eq!(
            body["data"]["requestheader-username-headers"],
            r#"["X-Remote-User"]"#
        );
        assert_eq!(body["data"]["client-ca-file"], "CA");
        assert_eq!(get("/api/v1/pods").0, 404);
        assert!(
            fake.kubeconfig()
                .contains(&format!("server: \"{}\"", fake.url()))
        );
    }

    #[test]
    fn goes_down_and_up_on_the_same_port() {
        let fake = FakeKubeApi::start();
        let auth = format!("Bearer {KUBECONFIG_TOKEN}");
        let get = || http::get_with_headers(fake.addr(), "/x", &[("Authorization", &auth)]);
        assert_eq!(get().unwrap().status, 404);
        // A kept-alive connection is closed too.
        let mut open = TcpStream::connect(fake.addr()).unwrap();
        open.write_all(format!("GET /x HTTP/1.1\r\nAuthorization: {auth}\r\n\r\n").as_bytes())
            .unwrap();
        let mut first = [0u8; 12];
        open.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"HTTP/1.1 404");
        fake.set_down(true).unwrap();
        assert!(get().is_err(), "a request succeeded while down");
        let mut rest = Vec::new();
        open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = open.read_to_end(&mut rest);
        let _ = open.write_all(b"GET /x HTTP/1.1\r\n\r\n");
        let mut more = [0u8; 1];
        assert!(matches!(open.read(&mut more), Ok(0) | Err(_)));
        fake.set_down(false).unwrap();
        assert_eq!(get().unwrap().status, 404);
    }
}
