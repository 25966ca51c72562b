//! `objects::WatchCache` against an in-process fake kube-apiserver.
//!
//! The fake (hyper 1, plain HTTP on 127.0.0.1:0) serves what the cache asks for, in the real
//! JSON shapes: the discovery documents `/api`, `/api/v1`, `/apis`, `/apis/apps/v1`; lists
//! (`PodList`, or `PartialObjectMetadataList` when the request asks for metadata only,
//! paginated with `limit`/`continue`); and watches (`?watch=true&resourceVersion=N`:
//! newline-delimited watch events in a chunked body kept open). Tests add, change and delete
//! objects while watching, send bookmarks, end watches, change objects without telling the
//! watchers and then answer with `410 Gone` to force a relist, and hold lists back.
//!
//! Every wait polls against a deadline; nothing sleeps for correctness.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::Full;
use http_body_util::combinators::BoxBody;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prom_adapter::kube_client::ClientError;
use prom_adapter::objects::{
    ObjectResolver, ObjectsError, ObjectsMetrics, StartError, WatchCache, client, client_from,
};
use prom_adapter::rules::resources::GroupResource;
use prom_adapter::selector::Selector;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// The fake kube-apiserver.

/// A served resource: its collection path and objects.
struct Collection {
    kind: &'static str,
    api_version: &'static str,
    namespaced: bool,
    /// By (namespace, name); `""` namespace for cluster-scoped objects.
    objects: BTreeMap<(String, String), Value>,
    /// Events since the start, for watches resuming from a resourceVersion.
    log: Vec<(u64, &'static str, Value)>,
    watchers: Vec<Watcher>,
}

struct Watcher {
    meta_only: bool,
    tx: mpsc::UnboundedSender<Bytes>,
}

/// A request the fake saw.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    params: BTreeMap<String, String>,
    accept: String,
}

impl Seen {
    fn is_watch(&self) -> bool {
        self.params.get("watch").is_some_and(|w| w == "true")
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

struct ApiState {
    /// The last resourceVersion handed out (shared by every collection, as etcd's is).
    rv: u64,
    /// Watches from a resourceVersion below this are answered with 410 Gone.
    floor: u64,
    collections: BTreeMap<&'static str, Collection>,
    seen: Vec<Seen>,
    /// `Some(status)`: every discovery request fails with it.
    discovery_error: Option<u16>,
    /// Answer a watch from before `floor` with an HTTP 410 instead of an ERROR event.
    gone_as_http: bool,
}

#[derive(Clone)]
struct FakeApi {
    state: Arc<Mutex<ApiState>>,
    lists_open: Arc<tokio::sync::watch::Sender<bool>>,
    addr: SocketAddr,
}

const PODS: &str = "/api/v1/pods";
const NAMESPACES: &str = "/api/v1/namespaces";
const DEPLOYMENTS: &str = "/apis/apps/v1/deployments";
const BRANDS: &str = "/apis/cheese.io/v1beta2/brands";

fn collection(kind: &'static str, api_version: &'static str, namespaced: bool) -> Collection {
    Collection {
        kind,
        api_version,
        namespaced,
        objects: BTreeMap::new(),
        log: Vec::new(),
        watchers: Vec::new(),
    }
}

type Body = BoxBody<Bytes, Infallible>;

/// A response body fed by a channel: a watch kept open until the sender is dropped.
struct ChannelBody(mpsc::UnboundedReceiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

fn json_response(status: u16, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
}

fn verbs() -> Value {
    json!([
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch"
    ])
}

fn api_resource(name: &str, singular: &str, namespaced: bool, kind: &str, verbs: Value) -> Value {
    json!({
        "name": name, "singularName": singular, "namespaced": namespaced, "kind": kind,
        "verbs": verbs, "storageVersionHash": "abcdefgh"
    })
}

/// The discovery documents: core v1 serves pods, namespaces, services and bindings (create
/// only); apps/v1 serves deployments but not statefulsets. No other group.
fn discovery(path: &str) -> Option<Value> {
    Some(match path {
        "/api" => json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "10.0.0.1:6443"}]
        }),
        "/api/v1" => json!({
            "kind": "APIResourceList", "groupVersion": "v1",
            "resources": [
                api_resource("bindings", "binding", true, "Binding", json!(["create"])),
                api_resource("namespaces", "namespace", false, "Namespace", verbs()),
                api_resource("namespaces/status", "", false, "Namespace", json!(["get", "patch", "update"])),
                api_resource("pods", "pod", true, "Pod", verbs()),
                api_resource("pods/log", "", true, "Pod", json!(["get"])),
                api_resource("pods/status", "", true, "Pod", json!(["get", "patch", "update"])),
                api_resource("services", "service", true, "Service", verbs()),
            ]
        }),
        "/apis" => json!({
            "kind": "APIGroupList", "apiVersion": "v1",
            "groups": [{
                "name": "apps",
                "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
                "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}
            }, {
                "name": "cheese.io",
                "versions": [
                    {"groupVersion": "cheese.io/v1beta2", "version": "v1beta2"},
                    {"groupVersion": "cheese.io/v1alpha1", "version": "v1alpha1"}
                ],
                "preferredVersion": {"groupVersion": "cheese.io/v1beta2", "version": "v1beta2"}
            }]
        }),
        "/apis/apps/v1" => json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "apps/v1",
            "resources": [
                api_resource("deployments", "deployment", true, "Deployment", verbs()),
                api_resource("deployments/scale", "", true, "Scale", json!(["get", "patch", "update"])),
            ]
        }),
        "/apis/cheese.io/v1beta2" => json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "cheese.io/v1beta2",
            "resources": [api_resource("brands", "brand", false, "Brand", verbs())]
        }),
        _ => return None,
    })
}

/// `object` as a metadata-only request gets it.
fn partial(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
        "metadata": object["metadata"].clone()
    })
}

fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

impl FakeApi {
    async fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut collections = BTreeMap::new();
        collections.insert(PODS, collection("Pod", "v1", true));
        collections.insert(NAMESPACES, collection("Namespace", "v1", false));
        collections.insert(DEPLOYMENTS, collection("Deployment", "apps/v1", true));
        collections.insert(BRANDS, collection("Brand", "cheese.io/v1beta2", false));
        let fake = FakeApi {
            state: Arc::new(Mutex::new(ApiState {
                rv: 1000,
                floor: 0,
                collections,
                seen: Vec::new(),
                discovery_error: None,
                gone_as_http: false,
            })),
            lists_open: Arc::new(tokio::sync::watch::channel(true).0),
            addr,
        };
        let server = fake.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let fake = server.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let fake = fake.clone();
                    async move { Ok::<_, Infallible>(fake.handle(req).await) }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        fake
    }

    fn state(&self) -> MutexGuard<'_, ApiState> {
        self.state.lock().unwrap()
    }

    fn kube_client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        client_from(config).unwrap()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let params: BTreeMap<String, String> =
            form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        let accept = req
            .headers()
            .get(hyper::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let seen = Seen {
            path: path.clone(),
            params,
            accept,
        };
        self.state().seen.push(seen.clone());
        if let Some(doc) = discovery(&path) {
            return match self.state().discovery_error {
                Some(code) => json_response(code, &status(code, "Forbidden", "discovery is off")),
                None => json_response(200, &doc),
            };
        }
        if !self.state().collections.contains_key(path.as_str()) {
            return json_response(
                404,
                &status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            );
        }
        let meta_only = seen.accept.contains("as=PartialObjectMetadata");
        if seen.is_watch() {
            self.watch(&path, &seen, meta_only)
        } else {
            let mut open = self.lists_open.subscribe();
            let _ = open.wait_for(|open| *open).await;
            self.list(&path, &seen, meta_only)
        }
    }

    fn list(&self, path: &str, seen: &Seen, meta_only: bool) -> Response<Body> {
        let state = self.state();
        let c = &state.collections[path];
        let (offset, rv) = match seen.param("continue") {
            Some(token) => {
                let (offset, rv) = token.split_once('-').unwrap();
                (offset.parse::<usize>().unwrap(), rv.parse::<u64>().unwrap())
            }
            None => (0, state.rv),
        };
        let limit = seen
            .param("limit")
            .map_or(usize::MAX, |l| l.parse().unwrap());
        let items: Vec<Value> = c
            .objects
            .values()
            .skip(offset)
            .take(limit)
            .map(|o| if meta_only { partial(o) } else { o.clone() })
            .collect();
        let next = offset + items.len();
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if next < c.objects.len() {
            metadata["continue"] = json!(format!("{next}-{rv}"));
            metadata["remainingItemCount"] = json!(c.objects.len() - next);
        }
        let (kind, api_version) = if meta_only {
            ("PartialObjectMetadataList".to_owned(), "meta.k8s.io/v1")
        } else {
            (format!("{}List", c.kind), c.api_version)
        };
        json_response(
            200,
            &json!({"kind": kind, "apiVersion": api_version, "metadata": metadata, "items": items}),
        )
    }

    fn watch(&self, path: &str, seen: &Seen, meta_only: bool) -> Response<Body> {
        let (tx, rx) = mpsc::unbounded_channel();
        let from: u64 = seen
            .param("resourceVersion")
            .unwrap_or("0")
            .parse()
            .unwrap();
        let mut state = self.state();
        if from < state.floor {
            let gone = status(
                410,
                "Expired",
                &format!("too old resource version: {from} ({})", state.floor),
            );
            if state.gone_as_http {
                return json_response(410, &gone);
            }
            let _ = tx.send(watch_line("ERROR", &gone));
            drop(tx);
        } else {
            let c = state.collections.get_mut(path).unwrap();
            for (rv, kind, object) in &c.log {
                if *rv > from {
                    let object = if meta_only {
                        partial(object)
                    } else {
                        object.clone()
                    };
                    let _ = tx.send(watch_line(kind, &object));
                }
            }
            c.watchers.push(Watcher { meta_only, tx });
        }
        let mut resp = Response::new(ChannelBody(rx).boxed());
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        resp
    }

    // --- What tests do with it.

    /// Creates or changes an object, telling the watchers (ADDED or MODIFIED).
    fn apply(&self, path: &'static str, ns: &str, name: &str, labels: &[(&str, &str)]) {
        self.change(path, ns, name, Some(labels), true);
    }

    /// Deletes an object, telling the watchers (DELETED).
    fn delete(&self, path: &'static str, ns: &str, name: &str) {
        self.change(path, ns, name, None, true);
    }

    /// Creates, changes (`Some`) or deletes (`None`) an object without telling anyone: a
    /// change in a window of history the watchers will never be shown.
    fn change_silently(
        &self,
        path: &'static str,
        ns: &str,
        name: &str,
        labels: Option<&[(&str, &str)]>,
    ) {
        self.change(path, ns, name, labels, false);
    }

    fn change(
        &self,
        path: &'static str,
        ns: &str,
        name: &str,
        labels: Option<&[(&str, &str)]>,
        tell: bool,
    ) {
        let mut state = self.state();
        state.rv += 1;
        let rv = state.rv;
        let c = state.collections.get_mut(path).unwrap();
        let ns = if c.namespaced { ns } else { "" };
        let key = (ns.to_owned(), name.to_owned());
        let (kind, object) = match labels {
            Some(labels) => {
                let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
                let mut metadata = json!({
                    "name": name, "uid": format!("uid-{name}-{rv}"),
                    "resourceVersion": rv.to_string(),
                    "creationTimestamp": "2024-05-01T10:00:00Z",
                    "labels": labels,
                    "managedFields": [{"manager": "kubectl", "operation": "Apply", "apiVersion": c.api_version}]
                });
                if c.namespaced {
                    metadata["namespace"] = json!(ns);
                }
                let object = json!({
                    "kind": c.kind, "apiVersion": c.api_version, "metadata": metadata,
                    "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
                    "status": {"phase": "Running"}
                });
                let kind = if c.objects.insert(key, object.clone()).is_some() {
                    "MODIFIED"
                } else {
                    "ADDED"
                };
                (kind, object)
            }
            None => {
                let mut object = c
                    .objects
                    .remove(&key)
                    .expect("deleting an object that exists");
                object["metadata"]["resourceVersion"] = json!(rv.to_string());
                ("DELETED", object)
            }
        };
        if tell {
            c.log.push((rv, kind, object.clone()));
            c.watchers.retain(|w| {
                let object = if w.meta_only {
                    partial(&object)
                } else {
                    object.clone()
                };
                w.tx.send(watch_line(kind, &object)).is_ok()
            });
        }
    }

    /// Sends a BOOKMARK at the current resourceVersion to the watchers of `path`; returns it.
    fn bookmark(&self, path: &'static str) -> u64 {
        let mut state = self.state();
        let rv = state.rv;
        let c = state.collections.get_mut(path).unwrap();
        let (kind, api_version) = (c.kind, c.api_version);
        c.watchers.retain(|w| {
            let (kind, api_version) = if w.meta_only {
                ("PartialObjectMetadata", "meta.k8s.io/v1")
            } else {
                (kind, api_version)
            };
            let object = json!({
                "kind": kind, "apiVersion": api_version,
                "metadata": {"resourceVersion": rv.to_string()}
            });
            w.tx.send(watch_line("BOOKMARK", &object)).is_ok()
        });
        rv
    }

    /// Ends every watch of `path` normally (as kube-apiserver does at `timeoutSeconds`).
    fn end_watches(&self, path: &'static str) {
        self.state()
            .collections
            .get_mut(path)
            .unwrap()
            .watchers
            .clear();
    }

    /// Compacts history: every watch of `path` gets a 410 Gone ERROR event and ends, and a
    /// watch from any resourceVersion before now is answered the same way.
    fn expire(&self, path: &'static str) {
        self.compact();
        let mut state = self.state();
        let floor = state.floor;
        let c = state.collections.get_mut(path).unwrap();
        let gone = status(
            410,
            "Expired",
            &format!("The resourceVersion for the provided watch is too old. ({floor})"),
        );
        for w in c.watchers.drain(..) {
            let _ = w.tx.send(watch_line("ERROR", &gone));
        }
    }

    /// Compacts history: a watch from any resourceVersion before now is answered 410 Gone.
    fn compact(&self) {
        let mut state = self.state();
        state.floor = state.rv;
    }

    /// Holds every list request until [`FakeApi::open_lists`].
    fn hold_lists(&self) {
        self.lists_open.send_replace(false);
    }

    fn open_lists(&self) {
        self.lists_open.send_replace(true);
    }

    fn seen(&self) -> Vec<Seen> {
        self.state().seen.clone()
    }

    fn lists(&self, path: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path == path && !s.is_watch())
            .collect()
    }

    fn watches(&self, path: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path == path && s.is_watch())
            .collect()
    }

    fn open_watches(&self, path: &str) -> usize {
        self.state().collections[path]
            .watchers
            .iter()
            .filter(|w| !w.tx.is_closed())
            .count()
    }
}

// ---------------------------------------------------------------------------------------
// Helpers.

/// Polls `f` until it returns `Some`, failing after [`DEADLINE`].
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn pods() -> GroupResource {
    GroupResource::parse("pods")
}

fn sel(s: &str) -> Selector {
    Selector::parse(s).unwrap()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// A started cache and what it was started with; cancels its watches when dropped.
struct Harness {
    api: FakeApi,
    cache: WatchCache,
    metrics: ObjectsMetrics,
    stop: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Harness {
    async fn start(api: FakeApi, extra: &[&str]) -> Harness {
        let extra: Vec<GroupResource> = extra.iter().map(|s| GroupResource::parse(s)).collect();
        let metrics = ObjectsMetrics::new();
        let stop = CancellationToken::new();
        let cache = WatchCache::start(api.kube_client(), &extra, metrics.clone(), stop.clone())
            .await
            .unwrap();
        Harness {
            api,
            cache,
            metrics,
            stop,
        }
    }

    async fn synced(api: FakeApi, extra: &[&str]) -> Harness {
        let h = Harness::start(api, extra).await;
        let cache = h.cache.clone();
        eventually("the first list", || cache.synced().then_some(())).await;
        h
    }

    /// Waits until `select` answers `expected`.
    async fn until_selects(&self, ns: Option<&str>, selector: &str, expected: &[&str]) {
        let expected = names(expected);
        let selector = sel(selector);
        let mut last = None;
        let deadline = Instant::now() + DEADLINE;
        loop {
            let got = self.cache.select(&pods(), ns, &selector);
            if got.as_ref() == Ok(&expected) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pods {ns:?} {selector}: want {expected:?}, last got {last:?}"
            );
            last = Some(got);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn cached(&self, resource: &str) -> i64 {
        self.metrics.cached.with_label_values(&[resource]).get()
    }

    fn restarts(&self, resource: &str) -> u64 {
        self.metrics
            .watch_restarts
            .with_label_values(&[resource])
            .get()
    }

    fn last_sync(&self, resource: &str) -> f64 {
        self.metrics.last_sync.with_label_values(&[resource]).get()
    }
}

fn seed(api: &FakeApi) {
    api.apply(NAMESPACES, "", "shop", &[("team", "a")]);
    api.apply(NAMESPACES, "", "kube-system", &[]);
    api.apply(PODS, "shop", "web-1", &[("app", "web"), ("tier", "front")]);
    api.apply(
        PODS,
        "shop",
        "web-2",
        &[("app", "web"), ("tier", "front"), ("canary", "true")],
    );
    api.apply(PODS, "shop", "db-1", &[("app", "db"), ("tier", "back")]);
    api.apply(PODS, "shop", "batch-1", &[("job", "nightly")]);
    api.apply(PODS, "kube-system", "coredns-1", &[("app", "coredns")]);
}

// ---------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn not_synced_until_the_first_list_completes() {
    let api = FakeApi::start().await;
    seed(&api);
    api.hold_lists();
    let h = Harness::start(api.clone(), &[]).await;
    eventually("the pod list request", || {
        (!api.lists(PODS).is_empty()).then_some(())
    })
    .await;
    assert!(!h.cache.synced());
    assert_eq!(
        h.cache.select(&pods(), Some("shop"), &sel("")),
        Err(ObjectsError::NotSynced {
            resource: "pods".into()
        })
    );
    assert_eq!(
        h.cache.exists(&GroupResource::namespaces(), None, "shop"),
        Err(ObjectsError::NotSynced {
            resource: "namespaces".into()
        })
    );
    assert_eq!(h.last_sync("pods"), 0.0);

    api.open_lists();
    let cache = h.cache.clone();
    eventually("the first list", || cache.synced().then_some(())).await;
    assert_eq!(
        h.cache.select(&pods(), Some("shop"), &sel("")),
        Ok(names(&["batch-1", "db-1", "web-1", "web-2"]))
    );
    assert_eq!(
        h.cache
            .exists(&GroupResource::namespaces(), Some("ignored"), "shop"),
        Ok(true)
    );
    assert_eq!(h.cached("pods"), 5);
    assert_eq!(h.cached("namespaces"), 2);
    assert!(h.last_sync("pods") > 1.7e9);
    assert_eq!(h.restarts("pods"), 0);
}

#[tokio::test]
async fn requests_are_metadata_only_paginated_and_bookmarked() {
    let api = FakeApi::start().await;
    seed(&api);
    let h = Harness::synced(api.clone(), &[]).await;
    eventually("the pod watch", || {
        (h.api.open_watches(PODS) == 1).then_some(())
    })
    .await;
    let list = &api.lists(PODS)[0];
    assert!(
        list.accept
            .contains("as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"),
        "{}",
        list.accept
    );
    assert_eq!(list.param("limit"), Some("500"));
    let watch = &api.watches(PODS)[0];
    assert!(
        watch
            .accept
            .contains("as=PartialObjectMetadata;g=meta.k8s.io;v=v1"),
        "{}",
        watch.accept
    );
    assert_eq!(watch.param("allowWatchBookmarks"), Some("true"));
    // The watch starts where the list left off.
    let listed_at = api.state().rv.to_string();
    assert_eq!(watch.param("resourceVersion"), Some(listed_at.as_str()));
    // Discovery read only the documents it needed: no /apis without a non-core resource.
    let docs: BTreeSet<String> = api
        .seen()
        .into_iter()
        .filter(|s| discovery(&s.path).is_some())
        .map(|s| s.path)
        .collect();
    assert_eq!(docs, BTreeSet::from(["/api".into(), "/api/v1".into()]));
}

#[tokio::test]
async fn selectors_match_pod_labels() {
    let api = FakeApi::start().await;
    seed(&api);
    let h = Harness::synced(api, &[]).await;
    let shop = Some("shop");
    let cases: &[(&str, &[&str])] = &[
        ("", &["batch-1", "db-1", "web-1", "web-2"]),
        ("app=web", &["web-1", "web-2"]),
        ("app!=web", &["batch-1", "db-1"]),
        ("app in (web,db)", &["db-1", "web-1", "web-2"]),
        ("app notin (web)", &["batch-1", "db-1"]),
        ("tier", &["db-1", "web-1", "web-2"]),
        ("!tier", &["batch-1"]),
        ("app=web,!canary", &["web-1"]),
        ("app in (web),tier notin (back),canary", &["web-2"]),
        ("app=nope", &[]),
    ];
    for (selector, expected) in cases {
        assert_eq!(
            h.cache.select(&pods(), shop, &sel(selector)),
            Ok(names(expected)),
            "{selector}"
        );
    }
    // All namespaces; a singular resource name; a namespace with no pods.
    assert_eq!(
        h.cache.select(
            &GroupResource::parse("pod"),
            None,
            &sel("app in (web,coredns)")
        ),
        Ok(names(&["coredns-1", "web-1", "web-2"]))
    );
    assert_eq!(
        h.cache.select(&pods(), Some("empty"), &sel("")),
        Ok(BTreeSet::new())
    );
    assert_eq!(h.cache.exists(&pods(), shop, "db-1"), Ok(true));
    assert_eq!(
        h.cache.exists(&pods(), Some("kube-system"), "db-1"),
        Ok(false)
    );
    assert_eq!(h.cache.exists(&pods(), None, "coredns-1"), Ok(true));
    assert_eq!(
        h.cache
            .select(&GroupResource::namespaces(), None, &sel("team=a")),
        Ok(names(&["shop"]))
    );
}

#[tokio::test]
async fn a_pod_added_changed_and_deleted_while_watching() {
    let api = FakeApi::start().await;
    seed(&api);
    let h = Harness::synced(api.clone(), &[]).await;
    eventually("the pod watch", || {
        (api.open_watches(PODS) == 1).then_some(())
    })
    .await;

    api.apply(PODS, "shop", "web-3", &[("app", "web")]);
    h.until_selects(Some("shop"), "app=web", &["web-1", "web-2", "web-3"])
        .await;
    assert_eq!(h.cached("pods"), 6);

    api.apply(PODS, "shop", "web-3", &[("app", "api")]);
    h.until_selects(Some("shop"), "app=web", &["web-1", "web-2"])
        .await;
    h.until_selects(Some("shop"), "app=api", &["web-3"]).await;
    assert_eq!(h.cached("pods"), 6);

    api.delete(PODS, "shop", "web-3");
    h.until_selects(Some("shop"), "app=api", &[]).await;
    assert_eq!(h.cache.exists(&pods(), Some("shop"), "web-3"), Ok(false));
    assert_eq!(h.cached("pods"), 5);
    // All through one list and one watch.
    assert_eq!(api.lists(PODS).len(), 1);
    assert_eq!(api.watches(PODS).len(), 1);
}

#[tokio::test]
async fn a_watch_resumes_from_the_last_bookmark() {
    let api = FakeApi::start().await;
    seed(&api);
    let h = Harness::synced(api.clone(), &[]).await;
    eventually("the pod watch", || {
        (api.open_watches(PODS) == 1).then_some(())
    })
    .await;
    // Other resources move the resourceVersion on; a bookmark tells the pod watch.
    api.apply(NAMESPACES, "", "other", &[]);
    api.apply(NAMESPACES, "", "more", &[]);
    let bookmark = api.bookmark(PODS).to_string();
    // kube-apiserver ends a watch at its timeout; the watch resumes from the bookmark,
    // without a relist.
    api.end_watches(PODS);
    let resumed = eventually("a second pod watch", || api.watches(PODS).get(1).cloned()).await;
    assert_eq!(resumed.param("resourceVersion"), Some(bookmark.as_str()));
    assert_eq!(api.lists(PODS).len(), 1);
    assert_eq!(h.restarts("pods"), 0);
    // The resumed watch delivers.
    api.apply(PODS, "shop", "late", &[("app", "web")]);
    h.until_selects(Some("shop"), "app=web", &["late", "web-1", "web-2"])
        .await;
}

#[tokio::test]
async fn gone_relists_and_the_cache_matches_the_server() {
    let api = FakeApi::start().await;
    seed(&api);
    let h = Harness::synced(api.clone(), &[]).await;
    eventually("the pod watch", || {
        (api.open_watches(PODS) == 1).then_some(())
    })
    .await;
    let synced_at = h.last_sync("pods");

    // Changes the watch never shows: compacted away.
    api.change_silently(PODS, "shop", "web-1", None);
    api.change_silently(
        PODS,
        "shop",
        "web-2",
        Some(&[("app", "web"), ("tier", "back")]),
    );
    api.change_silently(PODS, "shop", "ghost", Some(&[("app", "web")]));
    // Until told, the cache answers what it last saw.
    assert_eq!(
        h.cache.select(&pods(), Some("shop"), &sel("app=web")),
        Ok(names(&["web-1", "web-2"]))
    );
    api.expire(PODS);

    h.until_selects(Some("shop"), "tier=back", &["db-1", "web-2"])
        .await;
    h.until_selects(Some("shop"), "app=web", &["ghost", "web-2"])
        .await;
    assert_eq!(h.cache.exists(&pods(), Some("shop"), "web-1"), Ok(false));
    assert_eq!(api.lists(PODS).len(), 2, "one relist");
    assert_eq!(h.restarts("pods"), 1);
    assert_eq!(h.restarts("namespaces"), 0);
    assert_eq!(h.cached("pods"), 5);
    assert!(h.last_sync("pods") >= synced_at);
    assert!(h.cache.synced(), "a relist keeps answering");

    // The new watch, from the relist's resourceVersion, delivers.
    eventually("the new pod watch", || {
        (api.open_watches(PODS) == 1).then_some(())
    })
    .await;
    let rewatch = api.watches(PODS).last().cloned().unwrap();
    assert!(
        rewatch
            .param("resourceVersion")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= api.state().floor,
        "{rewatch:?}"
    );
    api.apply(PODS, "shop", "after", &[("app", "web")]);
    h.until_selects(Some("shop"), "app=web", &["after", "ghost", "web-2"])
        .await;
}

#[tokio::test]
async fn a_watch_start_answered_gone_relists() {
    let api = FakeApi::start().await;
    seed(&api);
    let h = Harness::synced(api.clone(), &[]).await;
    eventually("the pod watch", || {
        (api.open_watches(PODS) == 1).then_some(())
    })
    .await;
    api.change_silently(PODS, "shop", "web-1", None);
    api.change_silently(PODS, "shop", "ghost", Some(&[("app", "web")]));
    api.state().gone_as_http = true;
    api.compact();
    // The watch ends; resuming it from the last version seen is answered HTTP 410.
    api.end_watches(PODS);
    h.until_selects(Some("shop"), "app=web", &["ghost", "web-2"])
        .await;
    assert_eq!(api.lists(PODS).len(), 2, "one relist");
    assert_eq!(h.restarts("pods"), 1);
    eventually("the new pod watch", || {
        (api.open_watches(PODS) == 1).then_some(())
    })
    .await;
    assert_eq!(
        api.watches(PODS).len(),
        3,
        "watch, failed resume, watch after the relist"
    );
    api.apply(PODS, "shop", "after", &[("app", "web")]);
    h.until_selects(Some("shop"), "app=web", &["after", "ghost", "web-2"])
        .await;
}

#[tokio::test]
async fn a_thousand_pods_in_one_namespace() {
    let api = FakeApi::start().await;
    for i in 0..1000 {
        let app = if i % 2 == 0 { "web" } else { "worker" };
        let shard = format!("{}", i % 10);
        api.apply(
            PODS,
            "big",
            &format!("pod-{i:04}"),
            &[("app", app), ("shard", &shard)],
        );
    }
    let h = Harness::synced(api.clone(), &[]).await;
    assert_eq!(h.cached("pods"), 1000);
    // Two pages of 500.
    let lists = api.lists(PODS);
    assert_eq!(lists.len(), 2);
    assert_eq!(lists[1].param("continue"), Some("500-2000"));
    let web = h
        .cache
        .select(&pods(), Some("big"), &sel("app=web"))
        .unwrap();
    assert_eq!(web.len(), 500);
    assert!(web.contains("pod-0998") && !web.contains("pod-0999"));
    let some = h
        .cache
        .select(&pods(), Some("big"), &sel("app=worker,shard in (1,3)"))
        .unwrap();
    assert_eq!(some.len(), 200);
    assert_eq!(
        h.cache
            .select(
                &pods(),
                Some("big"),
                &sel("shard notin (0,1,2,3,4,5,6,7,8)")
            )
            .unwrap()
            .len(),
        100
    );
    assert_eq!(
        h.cache
            .select(&pods(), Some("big"), &sel(""))
            .unwrap()
            .len(),
        1000
    );
}

#[tokio::test]
async fn resources_the_cluster_does_not_serve_are_not_watched() {
    let api = FakeApi::start().await;
    seed(&api);
    api.apply(DEPLOYMENTS, "shop", "web", &[("app", "web")]);
    let h = Harness::synced(
        api.clone(),
        &[
            "deployments.apps",
            "statefulsets.apps",
            "widgets.example.com",
            "bindings",
            "nodes",
        ],
    )
    .await;
    assert_eq!(
        h.cache
            .watched()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["namespaces", "pods", "deployments.apps"]
    );
    let deployments = GroupResource::parse("deployments.apps");
    assert_eq!(
        h.cache.select(&deployments, Some("shop"), &sel("app=web")),
        Ok(names(&["web"]))
    );
    assert_eq!(h.cached("deployments.apps"), 1);
    for unwatched in [
        "statefulsets.apps",
        "widgets.example.com",
        "bindings",
        "nodes",
        "services",
    ] {
        assert_eq!(
            h.cache
                .select(&GroupResource::parse(unwatched), None, &sel("")),
            Err(ObjectsError::NotWatched {
                resource: unwatched.into()
            })
        );
    }
    // apps/v1 was read; no group the cluster doesn't list was asked for.
    let paths: BTreeSet<String> = api.seen().into_iter().map(|s| s.path).collect();
    assert!(paths.contains("/apis/apps/v1"));
    assert!(
        !paths.iter().any(|p| p.contains("example.com")),
        "{paths:?}"
    );
}

#[tokio::test]
async fn a_custom_resource_resolves_through_discovery() {
    let api = FakeApi::start().await;
    api.apply(BRANDS, "", "gouda", &[("origin", "nl")]);
    api.apply(BRANDS, "", "brie", &[("origin", "fr")]);
    // As a rule's override names it: singular, group-qualified.
    let h = Harness::synced(api.clone(), &["brand.cheese.io"]).await;
    assert!(
        h.cache
            .watched()
            .contains(&GroupResource::new("cheese.io", "brands"))
    );
    for name in ["brand.cheese.io", "brands.cheese.io"] {
        // Cluster-scoped (from discovery), so the namespace is ignored.
        assert_eq!(
            h.cache.select(
                &GroupResource::parse(name),
                Some("default"),
                &sel("origin=nl")
            ),
            Ok(names(&["gouda"])),
            "{name}"
        );
    }
    assert_eq!(h.cached("brands.cheese.io"), 2);
    // The preferred version was read, not the others.
    let paths: BTreeSet<String> = api.seen().into_iter().map(|s| s.path).collect();
    assert!(paths.contains("/apis/cheese.io/v1beta2"), "{paths:?}");
    assert!(!paths.contains("/apis/cheese.io/v1alpha1"), "{paths:?}");
}

#[tokio::test]
async fn unreadable_discovery_is_a_start_error() {
    let api = FakeApi::start().await;
    api.state().discovery_error = Some(403);
    let err = WatchCache::start(
        api.kube_client(),
        &[],
        ObjectsMetrics::new(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    let StartError::Discovery { document, reason } = &err else {
        panic!("{err}");
    };
    assert_eq!(document, "/api");
    assert!(reason.contains("discovery is off"), "{reason}");
}

#[tokio::test]
async fn stop_ends_the_watches() {
    let api = FakeApi::start().await;
    seed(&api);
    let h = Harness::synced(api.clone(), &[]).await;
    eventually("the watches", || {
        (api.open_watches(PODS) == 1 && api.open_watches(NAMESPACES) == 1).then_some(())
    })
    .await;
    h.stop.cancel();
    eventually("the watches to close", || {
        (api.open_watches(PODS) == 0 && api.open_watches(NAMESPACES) == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_kubeconfig_names_the_cluster() {
    let api = FakeApi::start().await;
    seed(&api);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: \
             http://{}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n\
             current-context: x\nusers:\n- name: u\n  user:\n    token: abc\n",
            api.addr
        ),
    )
    .unwrap();
    let kube = client(Some(&path))
        .await
        .unwrap()
        .expect("a kubeconfig gives a client");
    let stop = CancellationToken::new();
    let cache = WatchCache::start(kube, &[], ObjectsMetrics::new(), stop.clone())
        .await
        .unwrap();
    eventually("the first list", || cache.synced().then_some(())).await;
    assert_eq!(cache.exists(&pods(), Some("shop"), "web-1"), Ok(true));
    stop.cancel();

    let missing = dir.path().join("missing");
    let Err(err) = client(Some(&missing)).await else {
        panic!("a missing kubeconfig is an error");
    };
    assert!(
        matches!(&err, StartError::Config(ClientError::Kubeconfig { path, .. }) if *path == missing),
        "{err}"
    );
}
