//! A fake kube-apiserver over plain HTTP/1.1 on an ephemeral loopback port: the three
//! endpoints an aggregated API server's delegated authentication and authorization use, and
//! (opt-in, [`FakeKubeApi::start_with_objects`]) the pods and namespaces a watch cache lists
//! and watches.
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
//! # Objects
//!
//! With objects served, the fake is what kube-rs' `watcher` (metadata only, as the adapter's
//! watch cache runs it) needs, in the real shapes:
//! - discovery: `GET /api` (`APIVersions`, `v1`), `GET /api/v1` (an `APIResourceList` with
//!   `pods` and `namespaces`, verbs including `list` and `watch`, and their subresources),
//!   `GET /apis` (an empty `APIGroupList`);
//! - lists: `GET /api/v1/pods`, `/api/v1/namespaces/{ns}/pods`, `/api/v1/namespaces` answer a
//!   `PodList`/`NamespaceList`, or a `PartialObjectMetadataList` (`meta.k8s.io/v1`) when the
//!   `Accept` header asks for `as=PartialObjectMetadataList`; `metadata.resourceVersion` is
//!   the fake's current version; `limit` pages the answer with a `continue` token and
//!   `remainingItemCount`;
//! - watches: the same paths with `watch=true` (or `1`) answer `200` with a chunked body of
//!   newline-delimited events (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` when
//!   `allowWatchBookmarks=true`), first every change after `resourceVersion` (or, without
//!   one or with `0`, an `ADDED` for every object), then each change as the test makes it.
//!   A watch stays open until `timeoutSeconds` (capped by [`FakeKubeApi::set_watch_limit`];
//!   it ends with a `BOOKMARK` when bookmarks were asked for, as kube-apiserver does),
//!   [`FakeKubeApi::end_watches`], or the fake goes down.
//!
//! The test changes objects while clients watch ([`FakeKubeApi::set_pod`],
//! [`FakeKubeApi::delete_pod`], [`FakeKubeApi::set_namespace`], …; every change takes the next
//! resourceVersion, shared by all resources as etcd's is), sends bookmarks
//! ([`FakeKubeApi::bookmark`]) and holds lists back ([`FakeKubeApi::hold_lists`]) to keep a
//! cache from syncing. `fieldSelector=spec.nodeName=<node>` on pods is supported (a node
//! agent's watch); other field selectors and `labelSelector` are not (400). Whole pods, with
//! IPs and container IDs, come from [`FakeKubeApi::put_pod`] and [`PodFixture`].
//!
//! Nodes (`/api/v1/nodes`, cluster-scoped, in `/api/v1` discovery) are served only after
//! [`FakeKubeApi::serve_nodes`], so a cache that would watch them doesn't change for the tests
//! that never ask; [`FakeKubeApi::set_node`] and [`FakeKubeApi::delete_node`] change them.
//!
//! Every request is recorded ([`FakeKubeApi::requests`]) with its headers and parsed JSON
//! body, so tests can assert what the adapter sent (a watch when it starts, everything else
//! when answered). [`FakeKubeApi::set_down`] closes the listener and every open connection
//! (clients get "connection refused") until it is set up again on the same port.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
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

    /// A query parameter, percent-decoded (see [`query_params`]).
    pub fn param(&self, name: &str) -> Option<String> {
        query_params(&self.query).remove(name)
    }

    /// Whether it asked to watch (`watch=true` or `watch=1`).
    pub fn is_watch(&self) -> bool {
        self.param("watch").is_some_and(|w| w == "true" || w == "1")
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

/// The path of the pods of every namespace.
pub const PODS: &str = "/api/v1/pods";

/// The path of the namespaces.
pub const NAMESPACES: &str = "/api/v1/namespaces";

/// The path of the nodes.
pub const NODES: &str = "/api/v1/nodes";
/// The collection path of `PrometheusMetric` objects over every namespace.
pub const PROMETHEUS_METRICS: &str = "/apis/prom-adapter.io/v1alpha1/prometheusmetrics";
/// The collection path of HorizontalPodAutoscalers over every namespace.
pub const HPAS: &str = "/apis/autoscaling/v2/horizontalpodautoscalers";

/// The `Accept` media type of a metadata-only list (kube-rs' `list_metadata`).
pub const ACCEPT_METADATA_LIST: &str =
    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";

/// How long a watch lasts at most when the test does not say (kube-apiserver's
/// `--min-request-timeout` is 1800 s; kube-rs asks for 290 s).
const DEFAULT_WATCH_LIMIT: Duration = Duration::from_secs(1800);

/// The resourceVersion before the first change.
const FIRST_RESOURCE_VERSION: u64 = 1000;

/// A resource the fake serves objects of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    /// `pods` (namespaced).
    Pods,
    /// `namespaces` (cluster-scoped).
    Namespaces,
    /// `nodes` (cluster-scoped; served after [`FakeKubeApi::serve_nodes`]).
    Nodes,
    /// `prometheusmetrics.prom-adapter.io` (namespaced; with a status subresource).
    PrometheusMetrics,
    /// `horizontalpodautoscalers.autoscaling` (namespaced).
    HorizontalPodAutoscalers,
}

impl Resource {
    /// Its `kind`.
    pub fn kind(self) -> &'static str {
        match self {
            Resource::Pods => "Pod",
            Resource::Namespaces => "Namespace",
            Resource::Nodes => "Node",
            Resource::PrometheusMetrics => "PrometheusMetric",
            Resource::HorizontalPodAutoscalers => "HorizontalPodAutoscaler",
        }
    }

    /// Its `apiVersion`.
    pub fn api_version(self) -> &'static str {
        match self {
            Resource::Pods | Resource::Namespaces | Resource::Nodes => "v1",
            Resource::PrometheusMetrics => "prom-adapter.io/v1alpha1",
            Resource::HorizontalPodAutoscalers => "autoscaling/v2",
        }
    }

    /// Whether its objects live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Resource::Namespaces | Resource::Nodes)
    }

    /// The path of its collection over every namespace.
    pub fn path(self) -> &'static str {
        match self {
            Resource::Pods => PODS,
            Resource::Namespaces => NAMESPACES,
            Resource::Nodes => NODES,
            Resource::PrometheusMetrics => PROMETHEUS_METRICS,
            Resource::HorizontalPodAutoscalers => HPAS,
        }
    }

    /// Its collection's last path segment.
    fn plural(self) -> &'static str {
        self.path().rsplit('/').next().unwrap_or_default()
    }
}

/// One open watch: where its events go.
struct Watcher {
    id: u64,
    namespace: Option<String>,
    /// `fieldSelector=spec.nodeName=…`: only this node's pods.
    node: Option<String>,
    meta_only: bool,
    bookmarks: bool,
    tx: Sender<String>,
}

/// The objects of one resource, by (namespace, name) (`""` for cluster-scoped ones), with
/// every change since the start (for watches resuming from a resourceVersion).
#[derive(Default)]
struct Collection {
    objects: BTreeMap<(String, String), Value>,
    log: Vec<(u64, &'static str, Value)>,
    watchers: Vec<Watcher>,
}

struct Objects {
    served: bool,
    /// Nodes in discovery, lists and watches ([`FakeKubeApi::serve_nodes`]).
    nodes_served: bool,
    /// The last resourceVersion handed out.
    rv: u64,
    collections: BTreeMap<Resource, Collection>,
    hold_lists: bool,
    /// Lists waiting now because of `hold_lists`.
    held: usize,
    watch_limit: Duration,
    next_watcher: u64,
}

impl Objects {
    fn new() -> Objects {
        Objects {
            served: false,
            nodes_served: false,
            rv: FIRST_RESOURCE_VERSION,
            collections: [Resource::Pods, Resource::Namespaces, Resource::Nodes]
                .into_iter()
                .map(|r| (r, Collection::default()))
                .collect(),
            hold_lists: false,
            held: 0,
            watch_limit: DEFAULT_WATCH_LIMIT,
            next_watcher: 0,
        }
    }

    fn collection(&mut self, resource: Resource) -> &mut Collection {
        self.collections.entry(resource).or_default()
    }

    /// Stores `object` as it is (its `resourceVersion` set) and tells the watchers.
    fn put(&mut self, resource: Resource, namespace: &str, name: &str, mut object: Value) -> u64 {
        let key = (namespace.to_owned(), name.to_owned());
        let rv = self.rv + 1;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let previous = self
            .collection(resource)
            .objects
            .insert(key, object.clone());
        let event = if previous.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.announce(resource, rv, event, object);
        rv
    }

    /// Takes `rv` as the current version, logs the change and sends it to the watchers.
    fn announce(&mut self, resource: Resource, rv: u64, event: &'static str, object: Value) {
        self.rv = rv;
        let collection = self.collection(resource);
        collection.log.push((rv, event, object.clone()));
        collection
            .watchers
            .retain(|w| !w.wants(&object) || w.tx.send(w.line(event, &object)).is_ok());
    }

    /// Creates or changes (`Some(labels)`) or deletes (`None`) an object and tells the
    /// watchers; returns the change's resourceVersion, `None` when deleting what isn't there.
    fn change(
        &mut self,
        resource: Resource,
        namespace: &str,
        name: &str,
        labels: Option<&[(&str, &str)]>,
    ) -> Option<u64> {
        let namespace = if resource.namespaced() { namespace } else { "" };
        let key = (namespace.to_owned(), name.to_owned());
        let rv = self.rv + 1;
        let collection = self.collection(resource);
        let Some(labels) = labels else {
            let mut object = collection.objects.remove(&key)?;
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            self.announce(resource, rv, "DELETED", object);
            return Some(rv);
        };
        let mut labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        if resource == Resource::Namespaces {
            labels.insert("kubernetes.io/metadata.name".to_owned(), name.to_owned());
        }
        let object = match collection.objects.get(&key) {
            Some(previous) => {
                let mut object = previous.clone();
                object["metadata"]["labels"] = json!(labels);
                object
            }
            None => new_object(resource, namespace, name, &labels, rv),
        };
        Some(self.put(resource, namespace, name, object))
    }
}

impl Watcher {
    fn wants(&self, object: &Value) -> bool {
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
            && on_node(object, self.node.as_deref())
    }

    fn line(&self, event: &str, object: &Value) -> String {
        let object = if self.meta_only {
            partial(object)
        } else {
            object.clone()
        };
        let mut line = json!({"type": event, "object": object}).to_string();
        line.push('\n');
        line
    }
}

/// A pod as origin detection sees it: where it runs, its addresses and containers.
#[derive(Debug, Clone, Default)]
pub struct PodFixture {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`; empty: derived from the namespace and name.
    pub uid: String,
    /// `spec.nodeName`.
    pub node: String,
    /// `status.podIP` (and `podIPs`); `None` while the sandbox has none.
    pub ip: Option<String>,
    /// `status.hostIP`.
    pub host_ip: Option<String>,
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// `metadata.labels`.
    pub labels: Vec<(String, String)>,
    /// `status.containerStatuses[].containerID`, as kubelet writes them
    /// (`containerd://<64 hex>`).
    pub container_ids: Vec<String>,
    /// `status.phase`; empty: `Running`.
    pub phase: String,
}

impl PodFixture {
    /// A running pod of `namespace/name` on `node` at `ip`.
    pub fn new(namespace: &str, name: &str, node: &str, ip: &str) -> PodFixture {
        PodFixture {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            node: node.to_owned(),
            ip: Some(ip.to_owned()),
            ..PodFixture::default()
        }
    }

    /// The uid the pod gets (`uid`, or one derived from its name).
    pub fn uid(&self) -> String {
        if !self.uid.is_empty() {
            return self.uid.clone();
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in format!("{}/{}", self.namespace, self.name).bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            h >> 32,
            (h >> 16) & 0xffff,
            h & 0xfff,
            (h >> 4) & 0xfff,
            h & 0xffff_ffff_ffff
        )
    }

    /// The pod as kube-apiserver returns it.
    pub fn to_json(&self) -> Value {
        let labels: BTreeMap<&str, &str> = self
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let statuses: Vec<Value> = self
            .container_ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                json!({
                    "name": format!("c{i}"), "containerID": id, "image": "registry.k8s.io/pause:3.10",
                    "imageID": "", "ready": true, "restartCount": 0, "started": true,
                    "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}},
                })
            })
            .collect();
        let containers: Vec<Value> = (0..self.container_ids.len().max(1))
            .map(|i| json!({"name": format!("c{i}"), "image": "registry.k8s.io/pause:3.10"}))
            .collect();
        let mut status = json!({
            "phase": if self.phase.is_empty() { "Running" } else { &self.phase },
            "containerStatuses": statuses,
        });
        if let Some(ip) = &self.ip {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        if let Some(ip) = &self.host_ip {
            status["hostIP"] = json!(ip);
            status["hostIPs"] = json!([{"ip": ip}]);
        }
        json!({
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": self.name, "namespace": self.namespace, "uid": self.uid(),
                "creationTimestamp": "2025-01-01T00:00:00Z", "labels": labels,
            },
            "spec": {
                "containers": containers, "restartPolicy": "Always",
                "nodeName": self.node, "hostNetwork": self.host_network,
            },
            "status": status,
        })
    }
}

/// A pod or namespace as kube-apiserver returns it (the fields a metadata-only client
/// ignores included, so a full list is realistically heavier).
fn new_object(
    resource: Resource,
    namespace: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    rv: u64,
) -> Value {
    let mut metadata = json!({
        "name": name,
        "uid": format!("00000000-0000-4000-8000-{rv:012}"),
        "resourceVersion": rv.to_string(),
        "creationTimestamp": "2025-01-01T00:00:00Z",
        "labels": labels,
        "managedFields": [{
            "manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
            "time": "2025-01-01T00:00:00Z", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:labels": {}}},
        }],
    });
    match resource {
        Resource::Pods => {
            metadata["namespace"] = json!(namespace);
            json!({
                "kind": "Pod",
                "apiVersion": "v1",
                "metadata": metadata,
                "spec": {
                    "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
                    "restartPolicy": "Always",
                    "nodeName": "node-1",
                },
                "status": {"phase": "Running", "podIP": "10.0.0.10"},
            })
        }
        Resource::Namespaces => json!({
            "kind": "Namespace",
            "apiVersion": "v1",
            "metadata": metadata,
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }),
        Resource::Nodes => json!({
            "kind": "Node",
            "apiVersion": "v1",
            "metadata": metadata,
            "spec": {"podCIDR": "10.244.0.0/24"},
            "status": {
                "capacity": {"cpu": "4", "memory": "16318916Ki", "pods": "110"},
                "allocatable": {"cpu": "4", "memory": "16216516Ki", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}],
                "addresses": [{"type": "Hostname", "address": name}],
            },
        }),
        Resource::PrometheusMetrics | Resource::HorizontalPodAutoscalers => {
            metadata["namespace"] = json!(namespace);
            json!({
                "kind": resource.kind(),
                "apiVersion": resource.api_version(),
                "metadata": metadata,
                "spec": {},
            })
        }
    }
}

/// `object` as a metadata-only request gets it.
fn partial(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object["metadata"].clone(),
    })
}

/// What an object request is about: a resource, in one namespace or all.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    resource: Resource,
    namespace: Option<String>,
}

fn object_target(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let (resource, namespace) = match segments.as_slice() {
        ["", "api", "v1", "pods"] => (Resource::Pods, None),
        ["", "api", "v1", "namespaces"] => (Resource::Namespaces, None),
        ["", "api", "v1", "nodes"] => (Resource::Nodes, None),
        ["", "api", "v1", "namespaces", ns, "pods"] if !ns.is_empty() => {
            (Resource::Pods, Some((*ns).to_owned()))
        }
        ["", "apis", group, version, rest @ ..] => {
            let resource = [
                Resource::PrometheusMetrics,
                Resource::HorizontalPodAutoscalers,
            ]
            .into_iter()
            .find(|r| r.api_version() == format!("{group}/{version}"))?;
            match rest {
                [plural] if *plural == resource.plural() => (resource, None),
                ["namespaces", ns, plural] if !ns.is_empty() && *plural == resource.plural() => {
                    (resource, Some((*ns).to_owned()))
                }
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(Target {
        resource,
        namespace,
    })
}

/// The query's parameters, percent-decoded (`+` as a space); the first of a repeated name.
pub fn query_params(query: &str) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        params
            .entry(percent_decode(k))
            .or_insert_with(|| percent_decode(v));
    }
    params
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high * 16 + low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
    /// The objects, with a condvar for held lists.
    objects: Mutex<Objects>,
    objects_changed: Condvar,
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
            objects: Mutex::new(Objects::new()),
            objects_changed: Condvar::new(),
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

/// Objects: what a watch cache lists and watches (see the module docs).
impl FakeKubeApi {
    /// [`FakeKubeApi::start`] with pods and namespaces served ([`FakeKubeApi::serve_objects`]),
    /// none of them there yet.
    ///
    /// # Panics
    /// As [`FakeKubeApi::start`].
    pub fn start_with_objects() -> FakeKubeApi {
        let fake = FakeKubeApi::start();
        fake.serve_objects(true);
        fake
    }

    /// Serves discovery, lists and watches of pods and namespaces from now on (`true`), or
    /// answers them 404 like any unknown path (`false`, the default of
    /// [`FakeKubeApi::start`]).
    pub fn serve_objects(&self, on: bool) {
        self.objects().served = on;
    }

    fn objects(&self) -> MutexGuard<'_, Objects> {
        lock(&self.state.objects)
    }

    /// Creates the pod `namespace/name` with `labels`, or replaces the labels of the one
    /// there (watchers get `ADDED` or `MODIFIED`). The namespace is created first when it
    /// doesn't exist. Returns the change's resourceVersion.
    pub fn set_pod(&self, namespace: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
        let mut objects = self.objects();
        let key = (String::new(), namespace.to_owned());
        if !objects
            .collection(Resource::Namespaces)
            .objects
            .contains_key(&key)
        {
            objects.change(Resource::Namespaces, "", namespace, Some(&[]));
        }
        objects
            .change(Resource::Pods, namespace, name, Some(labels))
            .unwrap_or_default()
    }

    /// Creates or replaces a whole pod (status, IPs, containers) as kubelet would report
    /// it; watchers get `ADDED` or `MODIFIED`. The namespace is created first when it doesn't
    /// exist. Returns the change's resourceVersion.
    pub fn put_pod(&self, pod: &PodFixture) -> u64 {
        let mut objects = self.objects();
        let key = (String::new(), pod.namespace.clone());
        if !objects
            .collection(Resource::Namespaces)
            .objects
            .contains_key(&key)
        {
            objects.change(Resource::Namespaces, "", &pod.namespace, Some(&[]));
        }
        objects.put(Resource::Pods, &pod.namespace, &pod.name, pod.to_json())
    }

    /// Deletes the pod `namespace/name` (watchers get `DELETED`); returns the change's
    /// resourceVersion, `None` when there is no such pod.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> Option<u64> {
        self.objects().change(Resource::Pods, namespace, name, None)
    }

    /// Creates the namespace `name` with `labels` (and `kubernetes.io/metadata.name`, which
    /// kube-apiserver adds), or replaces its labels. Returns the change's resourceVersion.
    pub fn set_namespace(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.objects()
            .change(Resource::Namespaces, "", name, Some(labels))
            .unwrap_or_default()
    }

    /// Deletes the namespace `name` (not its pods); `None` when there is no such namespace.
    pub fn delete_namespace(&self, name: &str) -> Option<u64> {
        self.objects().change(Resource::Namespaces, "", name, None)
    }

    /// Serves nodes from now on (`true`): in `/api/v1` discovery, lists and watches of
    /// `/api/v1/nodes`; else (the default) that path is a 404 like any unknown one.
    pub fn serve_nodes(&self, on: bool) {
        self.objects().nodes_served = on;
    }

    /// Creates the node `name` with `labels`, or replaces its labels (watchers get `ADDED` or
    /// `MODIFIED`). Returns the change's resourceVersion.
    pub fn set_node(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.objects()
            .change(Resource::Nodes, "", name, Some(labels))
            .unwrap_or_default()
    }

    /// Creates or replaces an object of `resource` (`PrometheusMetric`, HPA) from its
    /// `spec` (and `status`, if given); watchers get `ADDED` or `MODIFIED`. Returns the
    /// change's resourceVersion.
    pub fn put_object(&self, resource: Resource, namespace: &str, name: &str, body: Value) -> u64 {
        let mut objects = self.objects();
        let uid = format!("00000000-0000-4000-8000-{:012}", objects.rv + 1);
        let mut object = json!({
            "kind": resource.kind(),
            "apiVersion": resource.api_version(),
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": uid,
                "generation": 1,
                "creationTimestamp": "2025-01-01T00:00:00Z",
            },
        });
        if let Some(old) = objects
            .collection(resource)
            .objects
            .get(&(namespace.to_owned(), name.to_owned()))
        {
            object["metadata"] = old["metadata"].clone();
            object["status"] = old["status"].clone();
        }
        for key in ["spec", "status"] {
            if !body[key].is_null() {
                object[key] = body[key].clone();
            }
        }
        objects.put(resource, namespace, name, object)
    }

    /// Deletes an object of `resource`; `None` when it isn't there.
    pub fn delete_object(&self, resource: Resource, namespace: &str, name: &str) -> Option<u64> {
        let mut objects = self.objects();
        let mut object = objects
            .collection(resource)
            .objects
            .remove(&(namespace.to_owned(), name.to_owned()))?;
        let rv = objects.rv + 1;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        objects.announce(resource, rv, "DELETED", object);
        Some(rv)
    }

    /// An object as stored now.
    pub fn object(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        self.objects()
            .collection(resource)
            .objects
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Deletes the node `name`; `None` when there is no such node.
    pub fn delete_node(&self, name: &str) -> Option<u64> {
        self.objects().change(Resource::Nodes, "", name, None)
    }

    /// The names of the pods of `namespace`, sorted.
    pub fn pods(&self, namespace: &str) -> Vec<String> {
        self.objects()
            .collection(Resource::Pods)
            .objects
            .keys()
            .filter(|(ns, _)| ns == namespace)
            .map(|(_, name)| name.clone())
            .collect()
    }

    /// The last resourceVersion handed out.
    pub fn resource_version(&self) -> u64 {
        self.objects().rv
    }

    /// Sends a `BOOKMARK` at the current resourceVersion to every open watch that allows
    /// bookmarks; returns that version.
    pub fn bookmark(&self) -> u64 {
        let mut objects = self.objects();
        let rv = objects.rv;
        for (resource, collection) in &mut objects.collections {
            let resource = *resource;
            collection.watchers.retain(|w| {
                !w.bookmarks || w.tx.send(bookmark_line(resource, w.meta_only, rv)).is_ok()
            });
        }
        rv
    }

    /// Ends every open watch normally (the chunked body ends), as kube-apiserver does at a
    /// watch's timeout.
    pub fn end_watches(&self) {
        for collection in self.objects().collections.values_mut() {
            collection.watchers.clear();
        }
    }

    /// The watches of `resource` open now.
    pub fn open_watches(&self, resource: Resource) -> usize {
        self.objects().collection(resource).watchers.len()
    }

    /// Holds every list request (`true`) until released (`false`): a cache that lists then
    /// never completes its first list. Watches are not held.
    pub fn hold_lists(&self, hold: bool) {
        self.objects().hold_lists = hold;
        self.state.objects_changed.notify_all();
    }

    /// How many list requests are being held now.
    pub fn held_lists(&self) -> usize {
        self.objects().held
    }

    /// Ends a watch after `limit` even if it asked for a longer `timeoutSeconds` (default 30
    /// minutes).
    pub fn set_watch_limit(&self, limit: Duration) {
        self.objects().watch_limit = limit;
    }

    /// The list requests (not watches) of `resource` answered so far, over every namespace
    /// and in one.
    pub fn lists_of(&self, resource: Resource) -> Vec<Recorded> {
        self.object_requests(resource, false)
    }

    /// The watch requests of `resource` so far (recorded when they start).
    pub fn watches_of(&self, resource: Resource) -> Vec<Recorded> {
        self.object_requests(resource, true)
    }

    fn object_requests(&self, resource: Resource, watch: bool) -> Vec<Recorded> {
        lock(&self.state.requests)
            .iter()
            .filter(|r| {
                r.is_watch() == watch
                    && object_target(&r.path).is_some_and(|t| t.resource == resource)
            })
            .cloned()
            .collect()
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
            let connection = if close { "close" } else { "keep-alive" };
            match respond(&request, state) {
                Reply::Json(status, body) => {
                    request.status = status;
                    lock(&state.requests).push(request);
                    let body = body.to_string();
                    let response = format!(
                        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: {connection}\r\n\r\n{body}",
                        reason_phrase(status),
                        body.len(),
                    );
                    if !send(&mut writer, response.as_bytes()) || close {
                        break;
                    }
                }
                Reply::Watch(watch) => {
                    request.status = 200;
                    lock(&state.requests).push(request);
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                         Transfer-Encoding: chunked\r\nConnection: {connection}\r\n\r\n"
                    );
                    let reusable = send(&mut writer, head.as_bytes())
                        && stream_watch(&mut writer, &watch, state);
                    forget_watch(&mut lock(&state.objects), &watch);
                    if !reusable || close {
                        break;
                    }
                }
            }
        }
    }
    if let Some(stream) = lock(&state.connections).remove(&id) {
        let _ = stream.shutdown(Shutdown::Both);
    }
}

/// What the fake answers one request with.
enum Reply {
    /// A JSON body with a `Content-Length`.
    Json(u16, Value),
    /// A watch: events streamed as chunks.
    Watch(WatchStream),
}

/// An open watch, as its connection streams it.
struct WatchStream {
    id: u64,
    resource: Resource,
    meta_only: bool,
    bookmarks: bool,
    rx: Receiver<String>,
    deadline: Instant,
}

fn respond(request: &Recorded, state: &State) -> Reply {
    let served = lock(&state.objects).served;
    if served
        && request.method == "GET"
        && request.is_watch()
        && authorized(request)
        && let Some(target) = served_target(&request.path, state)
    {
        return match start_watch(request, state, &target) {
            Ok(watch) => Reply::Watch(watch),
            Err((code, body)) => Reply::Json(code, body),
        };
    }
    let (code, body) = answer(request, state);
    Reply::Json(code, body)
}

fn authorized(request: &Recorded) -> bool {
    let expected = format!("Bearer {KUBECONFIG_TOKEN}");
    request.header("authorization") == Some(expected.as_str())
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        422 => "Unprocessable Entity",
        503 => "Service Unavailable",
        _ => "Other",
    }
}

/// Writes `bytes` and flushes; whether that worked.
fn send(writer: &mut TcpStream, bytes: &[u8]) -> bool {
    writer
        .write_all(bytes)
        .and_then(|()| writer.flush())
        .is_ok()
}

fn chunk(line: &str) -> String {
    format!("{:x}\r\n{line}\r\n", line.len())
}

/// Streams `watch` until it ends; returns whether the connection can carry another request.
fn stream_watch(writer: &mut TcpStream, watch: &WatchStream, state: &State) -> bool {
    let gone = || state.stop.load(Ordering::SeqCst) || state.down.load(Ordering::SeqCst);
    loop {
        if gone() {
            return false;
        }
        let left = watch.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // The watch's time is up: stop its events, send what is queued, a bookmark if it
            // allows them (kube-apiserver sends one as a watch times out), and the last chunk.
            let rv = {
                let mut objects = lock(&state.objects);
                forget_watch(&mut objects, watch);
                objects.rv
            };
            let mut tail: String = watch.rx.try_iter().map(|line| chunk(&line)).collect();
            if watch.bookmarks {
                tail.push_str(&chunk(&bookmark_line(watch.resource, watch.meta_only, rv)));
            }
            tail.push_str("0\r\n\r\n");
            return send(writer, tail.as_bytes());
        }
        match watch.rx.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok(line) => {
                if !send(writer, chunk(&line).as_bytes()) {
                    return false;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            // Ended by the test.
            Err(RecvTimeoutError::Disconnected) => return send(writer, b"0\r\n\r\n"),
        }
    }
}

fn forget_watch(objects: &mut Objects, watch: &WatchStream) {
    objects
        .collection(watch.resource)
        .watchers
        .retain(|w| w.id != watch.id);
}

fn bookmark_line(resource: Resource, meta_only: bool, rv: u64) -> String {
    let (kind, api_version) = if meta_only {
        ("PartialObjectMetadata", "meta.k8s.io/v1")
    } else {
        (resource.kind(), "v1")
    };
    let object = json!({
        "kind": kind,
        "apiVersion": api_version,
        "metadata": {"resourceVersion": rv.to_string()},
    });
    let mut line = json!({"type": "BOOKMARK", "object": object}).to_string();
    line.push('\n');
    line
}

/// The node a `fieldSelector=spec.nodeName=<node>` on pods asks for (what a node agent
/// such as the bridge sends); a 400 for a label selector or any other field selector (the
/// fake would ignore it).
fn node_selector(request: &Recorded, target: &Target) -> Result<Option<String>, (u16, Value)> {
    if request
        .param("labelSelector")
        .is_some_and(|v| !v.is_empty())
    {
        return Err(status(
            400,
            "BadRequest",
            "the fake does not support labelSelector",
        ));
    }
    let Some(fields) = request.param("fieldSelector").filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let node = fields
        .strip_prefix("spec.nodeName==")
        .or_else(|| fields.strip_prefix("spec.nodeName="))
        .filter(|n| target.resource == Resource::Pods && !n.contains(','));
    match node {
        Some(n) => Ok(Some(n.to_owned())),
        None => Err(status(
            400,
            "BadRequest",
            &format!(
                "the fake supports only fieldSelector=spec.nodeName=<node> on pods, not {fields:?}"
            ),
        )),
    }
}

/// Whether a pod runs on `node` (any object when `node` is `None`).
fn on_node(object: &Value, node: Option<&str>) -> bool {
    node.is_none_or(|n| object["spec"]["nodeName"].as_str() == Some(n))
}

fn start_watch(
    request: &Recorded,
    state: &State,
    target: &Target,
) -> Result<WatchStream, (u16, Value)> {
    let node = node_selector(request, target)?;
    let meta_only = request
        .header("accept")
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"));
    let bookmarks = request.param("allowWatchBookmarks").as_deref() == Some("true");
    let from =
        match request.param("resourceVersion").as_deref() {
            None | Some("" | "0") => None,
            Some(v) => Some(v.parse::<u64>().map_err(|_| {
                status(400, "BadRequest", &format!("invalid resourceVersion {v:?}"))
            })?),
        };
    let timeout = match request.param("timeoutSeconds") {
        None => None,
        Some(t) => Some(Duration::from_secs(t.parse().map_err(|_| {
            status(400, "BadRequest", &format!("invalid timeoutSeconds {t:?}"))
        })?)),
    };
    let mut objects = lock(&state.objects);
    let limit = objects.watch_limit;
    let id = objects.next_watcher;
    objects.next_watcher += 1;
    let (tx, rx) = mpsc::channel();
    let watcher = Watcher {
        id,
        namespace: target.namespace.clone(),
        node,
        meta_only,
        bookmarks,
        tx,
    };
    let collection = objects.collection(target.resource);
    match from {
        // From "any" version: the current objects first, as synthetic ADDED events.
        None => {
            for object in collection.objects.values() {
                if watcher.wants(object) {
                    let _ = watcher.tx.send(watcher.line("ADDED", object));
                }
            }
        }
        Some(from) => {
            for (rv, event, object) in &collection.log {
                if *rv > from && watcher.wants(object) {
                    let _ = watcher.tx.send(watcher.line(event, object));
                }
            }
        }
    }
    collection.watchers.push(watcher);
    Ok(WatchStream {
        id,
        resource: target.resource,
        meta_only,
        bookmarks,
        rx,
        deadline: Instant::now() + timeout.map_or(limit, |t| t.min(limit)),
    })
}

/// Discovery, and lists of pods and namespaces; `None` for any other path.
/// [`object_target`], unless it names nodes and they are not served.
fn served_target(path: &str, state: &State) -> Option<Target> {
    let nodes = lock(&state.objects).nodes_served;
    object_target(path).filter(|t| nodes || t.resource != Resource::Nodes)
}

/// `PATCH …/namespaces/{ns}/prometheusmetrics/{name}/status` with a JSON merge patch: the
/// status subresource, which changes `status` only (as kube-apiserver's does).
fn patch_status(request: &Recorded, state: &State) -> Option<(u16, Value)> {
    let segments: Vec<&str> = request.path.trim_end_matches('/').split('/').collect();
    let resource = Resource::PrometheusMetrics;
    let [
        "",
        "apis",
        group,
        version,
        "namespaces",
        ns,
        plural,
        name,
        "status",
    ] = segments.as_slice()
    else {
        return None;
    };
    if format!("{group}/{version}") != resource.api_version() || *plural != resource.plural() {
        return None;
    }
    if request.method != "PATCH" {
        return Some(status(
            405,
            "MethodNotAllowed",
            &format!("{} is not supported on {}", request.method, request.path),
        ));
    }
    if !request
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/merge-patch+json"))
    {
        return Some(status(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json",
        ));
    }
    let Some(patch) = &request.body else {
        return Some(status(400, "BadRequest", "the request body is not JSON"));
    };
    let mut objects = lock(&state.objects);
    let key = ((*ns).to_owned(), (*name).to_owned());
    let Some(mut object) = objects.collection(resource).objects.get(&key).cloned() else {
        return Some(status(
            404,
            "NotFound",
            &format!("prometheusmetrics.prom-adapter.io \"{name}\" not found"),
        ));
    };
    merge_patch(&mut object["status"], &patch["status"]);
    objects.put(resource, ns, name, object.clone());
    let stored = objects.collection(resource).objects.get(&key).cloned();
    Some((200, stored.unwrap_or(object)))
}

/// RFC 7386 JSON merge patch: `null` deletes, objects merge, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (k, v) in fields {
        if v.is_null() {
            if let Some(t) = target.as_object_mut() {
                t.remove(k);
            }
        } else {
            merge_patch(&mut target[k.as_str()], v);
        }
    }
}

fn objects_answer(request: &Recorded, state: &State) -> Option<(u16, Value)> {
    if let Some(answer) = patch_status(request, state) {
        return Some(answer);
    }
    let nodes = lock(&state.objects).nodes_served;
    let document = discovery_document(&request.path, nodes);
    let target = served_target(&request.path, state);
    if document.is_none() && target.is_none() {
        return None;
    }
    if request.method != "GET" {
        return Some(status(
            405,
            "MethodNotAllowed",
            &format!("{} is not supported on {}", request.method, request.path),
        ));
    }
    Some(match (document, target) {
        (Some(document), _) => (200, document),
        (None, Some(target)) => list(request, state, &target),
        (None, None) => unreachable!("checked above"),
    })
}

fn discovery_document(path: &str, nodes: bool) -> Option<Value> {
    let resource = |name: &str, singular: &str, namespaced: bool, kind: &str, verbs: &[&str]| {
        let mut r = json!({
            "name": name,
            "singularName": singular,
            "namespaced": namespaced,
            "kind": kind,
            "verbs": verbs,
        });
        if !name.contains('/') {
            r["storageVersionHash"] = json!(format!("{kind}Hash="));
        }
        r
    };
    let all = [
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ];
    let status_verbs = ["get", "patch", "update"];
    Some(match path {
        "/api" => json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": "10.0.0.1:6443"}
            ],
        }),
        "/api/v1" => {
            let mut namespaces = resource("namespaces", "namespace", false, "Namespace", &all);
            namespaces["shortNames"] = json!(["ns"]);
            let mut pods = resource("pods", "pod", true, "Pod", &all);
            pods["shortNames"] = json!(["po"]);
            pods["categories"] = json!(["all"]);
            let mut resources = vec![
                namespaces,
                resource("namespaces/status", "", false, "Namespace", &status_verbs),
            ];
            if nodes {
                resources.push(resource("nodes", "node", false, "Node", &all));
                resources.push(resource("nodes/status", "", false, "Node", &status_verbs));
            }
            resources.extend([
                pods,
                resource("pods/log", "", true, "Pod", &["get"]),
                resource("pods/status", "", true, "Pod", &status_verbs),
            ]);
            json!({
                "kind": "APIResourceList",
                "groupVersion": "v1",
                "resources": resources,
            })
        }
        "/apis" => json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
        _ => return None,
    })
}

fn list(request: &Recorded, state: &State, target: &Target) -> (u16, Value) {
    let node = match node_selector(request, target) {
        Ok(node) => node,
        Err(bad) => return bad,
    };
    let meta_only = request
        .header("accept")
        .is_some_and(|a| a.contains("as=PartialObjectMetadataList"));
    let limit = match request.param("limit") {
        None => usize::MAX,
        Some(l) => match l.parse::<usize>() {
            Ok(0) => usize::MAX,
            Ok(n) => n,
            Err(_) => return status(400, "BadRequest", &format!("invalid limit {l:?}")),
        },
    };
    let from_token = match request.param("continue").filter(|c| !c.is_empty()) {
        None => None,
        Some(token) => match parse_continue(&token) {
            Some(parsed) => Some(parsed),
            None => {
                return status(
                    400,
                    "BadRequest",
                    &format!("invalid continue token {token:?}"),
                );
            }
        },
    };
    let mut objects = lock(&state.objects);
    if objects.hold_lists {
        objects.held += 1;
        let gone = || state.stop.load(Ordering::SeqCst) || state.down.load(Ordering::SeqCst);
        while objects.hold_lists && !gone() {
            objects = state
                .objects_changed
                .wait_timeout(objects, Duration::from_millis(100))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        objects.held -= 1;
        if gone() {
            return status(503, "ServiceUnavailable", "the fake is going away");
        }
    }
    let current = objects.rv;
    let (offset, rv) = from_token.unwrap_or((0, current));
    let collection = objects.collection(target.resource);
    let selected: Vec<&Value> = collection
        .objects
        .iter()
        .filter(|((ns, _), _)| target.namespace.as_deref().is_none_or(|t| t == ns))
        .map(|(_, object)| object)
        .filter(|object| on_node(object, node.as_deref()))
        .collect();
    let total = selected.len();
    let items: Vec<Value> = selected
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|o| if meta_only { partial(o) } else { o.clone() })
        .collect();
    let next = offset + items.len();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if next < total {
        metadata["continue"] = json!(format!("{rv}:{next}"));
        metadata["remainingItemCount"] = json!(total - next);
    }
    let (kind, api_version) = if meta_only {
        ("PartialObjectMetadataList".to_owned(), "meta.k8s.io/v1")
    } else {
        (
            format!("{}List", target.resource.kind()),
            target.resource.api_version(),
        )
    };
    (
        200,
        json!({"kind": kind, "apiVersion": api_version, "metadata": metadata, "items": items}),
    )
}

/// A continue token of [`list`]: `(offset, resourceVersion)`.
fn parse_continue(token: &str) -> Option<(usize, u64)> {
    let (rv, offset) = token.split_once(':')?;
    Some((offset.parse().ok()?, rv.parse().ok()?))
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
    if !authorized(request) {
        return status(401, "Unauthorized", "Unauthorized");
    }
    let served = lock(&state.objects).served;
    if served && let Some(answer) = objects_answer(request, state) {
        return answer;
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
    use crate::util::{PATIENCE, eventually};
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

    /// A GET of the fake with its token and `accept`, answered as JSON.
    fn get_objects(fake: &FakeKubeApi, path: &str, accept: &str) -> (u16, Value) {
        let auth = format!("Bearer {KUBECONFIG_TOKEN}");
        let r = http::get_with_headers(
            fake.addr(),
            path,
            &[("Authorization", &auth), ("Accept", accept)],
        )
        .unwrap();
        (r.status, serde_json::from_slice(&r.body).unwrap())
    }

    fn names(list: &Value) -> Vec<String> {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// A watch read chunk by chunk from a raw connection.
    struct WatchReader(BufReader<TcpStream>);

    impl WatchReader {
        fn open(fake: &FakeKubeApi, path_and_query: &str) -> WatchReader {
            let mut stream = TcpStream::connect(fake.addr()).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            write!(
                stream,
                "GET {path_and_query} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \
                 {KUBECONFIG_TOKEN}\r\nAccept: {ACCEPT_METADATA}\r\n\r\n"
            )
            .unwrap();
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
            assert!(
                head.to_ascii_lowercase()
                    .contains("transfer-encoding: chunked"),
                "{head}"
            );
            WatchReader(reader)
        }

        /// The next event, `None` at the end of the body.
        fn next(&mut self) -> Option<Value> {
            let mut size = String::new();
            self.0.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut data = vec![0; size + 2];
            self.0.read_exact(&mut data).unwrap();
            (size > 0).then(|| serde_json::from_slice(&data[..size]).unwrap())
        }

        /// `type` and `metadata.name` of the next event.
        fn next_event(&mut self) -> (String, String) {
            let event = self.next().expect("an event, not the end of the watch");
            (
                event["type"].as_str().unwrap().to_owned(),
                event["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        }
    }

    const ACCEPT_METADATA: &str =
        "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json";

    #[test]
    fn serves_discovery_and_lists_in_both_shapes_with_pages() {
        let fake = FakeKubeApi::start_with_objects();
        fake.set_pod("default", "web-0", &[("app", "web")]);
        fake.set_pod("default", "web-1", &[("app", "web"), ("tier", "back")]);
        fake.set_pod("other", "api-0", &[("app", "api")]);
        let json = "application/json";

        let (code, api) = get_objects(&fake, "/api", json);
        assert_eq!(
            (code, &api["kind"], &api["versions"]),
            (200, &json!("APIVersions"), &json!(["v1"]))
        );
        let (_, v1) = get_objects(&fake, "/api/v1", json);
        assert_eq!(v1["kind"], "APIResourceList");
        let pods = v1["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "pods")
            .unwrap();
        assert_eq!(
            (&pods["namespaced"], &pods["kind"]),
            (&json!(true), &json!("Pod"))
        );
        assert!(pods["verbs"].as_array().unwrap().contains(&json!("watch")));
        let (_, apis) = get_objects(&fake, "/apis", json);
        assert_eq!(
            (&apis["kind"], &apis["groups"]),
            (&json!("APIGroupList"), &json!([]))
        );

        let (code, full) = get_objects(&fake, PODS, json);
        assert_eq!(
            (code, &full["kind"], &full["apiVersion"]),
            (200, &json!("PodList"), &json!("v1"))
        );
        assert_eq!(names(&full), ["web-0", "web-1", "api-0"]);
        assert_eq!(full["items"][0]["spec"]["containers"][0]["name"], "app");
        let rv = fake.resource_version();
        // Creating a pod in a new namespace created the namespace first.
        assert_eq!(rv, FIRST_RESOURCE_VERSION + 5);
        assert_eq!(full["metadata"]["resourceVersion"], rv.to_string());

        let accept = format!("{ACCEPT_METADATA_LIST},application/json");
        let (_, meta) = get_objects(&fake, "/api/v1/namespaces/default/pods", &accept);
        assert_eq!(
            (&meta["kind"], &meta["apiVersion"]),
            (
                &json!("PartialObjectMetadataList"),
                &json!("meta.k8s.io/v1")
            )
        );
        assert_eq!(names(&meta), ["web-0", "web-1"]);
        assert_eq!(meta["items"][1]["kind"], "PartialObjectMetadata");
        assert_eq!(
            meta["items"][1]["metadata"]["labels"],
            json!({"app": "web", "tier": "back"})
        );
        assert!(meta["items"][1].get("spec").is_none());

        let (_, namespaces) = get_objects(&fake, NAMESPACES, json);
        assert_eq!(namespaces["kind"], "NamespaceList");
        assert_eq!(names(&namespaces), ["default", "other"]);
        assert_eq!(
            namespaces["items"][0]["metadata"]["labels"],
            json!({"kubernetes.io/metadata.name": "default"})
        );

        // Pages of two, the token percent-encoded as kube-rs sends it.
        let (_, first) = get_objects(&fake, &format!("{PODS}?&limit=2"), &accept);
        assert_eq!(first["items"].as_array().unwrap().len(), 2);
        assert_eq!(first["metadata"]["remainingItemCount"], 1);
        let token = first["metadata"]["continue"].as_str().unwrap();
        fake.set_pod("default", "web-2", &[]);
        let (_, second) = get_objects(
            &fake,
            &format!("{PODS}?&limit=2&continue={}", http::url_encode(token)),
            &accept,
        );
        // Later pages keep the first page's version (a watch from it replays what changed
        // since; unlike kube-apiserver, the pages are not one snapshot).
        assert_eq!(second["metadata"]["resourceVersion"], rv.to_string());
        assert!(second["metadata"].get("continue").is_none(), "{second}");
        assert_eq!(second["items"].as_array().unwrap().len(), 2);

        assert_eq!(
            get_objects(&fake, &format!("{PODS}?labelSelector=app%3Dweb"), json).0,
            400
        );
        let r = http::get(fake.addr(), PODS).unwrap();
        assert_eq!(r.status, 401);
        let lists = fake.lists_of(Resource::Pods);
        assert_eq!(lists.len(), 6, "{lists:?}");
        assert_eq!(lists[3].param("continue").as_deref(), Some(token));
        assert!(fake.watches_of(Resource::Pods).is_empty());
    }

    #[test]
    fn nodes_are_served_only_when_asked() {
        let fake = FakeKubeApi::start_with_objects();
        fake.set_node("node-a", &[("zone", "a")]);
        let json = "application/json";
        let has_nodes = |fake: &FakeKubeApi| {
            let (_, v1) = get_objects(fake, "/api/v1", json);
            v1["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["name"] == "nodes")
        };
        assert!(!has_nodes(&fake));
        assert_eq!(get_objects(&fake, NODES, json).0, 404);
        fake.serve_nodes(true);
        assert!(has_nodes(&fake));
        fake.set_node("node-b", &[]);
        let (code, list) = get_objects(&fake, NODES, json);
        assert_eq!((code, &list["kind"]), (200, &json!("NodeList")));
        assert_eq!(names(&list), ["node-a", "node-b"]);
        assert_eq!(list["items"][0]["metadata"]["labels"], json!({"zone": "a"}));
        assert!(list["items"][0]["metadata"].get("namespace").is_none());
        assert!(fake.delete_node("node-a").is_some());
        assert_eq!(names(&get_objects(&fake, NODES, json).1), ["node-b"]);
        // Every request to the path is recorded, the 404 before serve_nodes included.
        assert_eq!(fake.lists_of(Resource::Nodes).len(), 3);
    }

    #[test]
    fn watches_replay_then_stream_changes_and_bookmarks() {
        let fake = FakeKubeApi::start_with_objects();
        fake.set_pod("default", "web-0", &[("app", "web")]);
        let listed = fake.resource_version();
        // Changed after the list: replayed to a watch from the list's version.
        fake.set_pod("default", "web-1", &[("app", "web")]);
        let mut watch = WatchReader::open(
            &fake,
            &format!(
                "{PODS}?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion={listed}"
            ),
        );
        assert_eq!(watch.next_event(), ("ADDED".to_owned(), "web-1".to_owned()));
        eventually("the watch to be registered", PATIENCE, || {
            ensure!(fake.open_watches(Resource::Pods) == 1);
            Ok(())
        });
        fake.set_pod("default", "web-0", &[("app", "web"), ("canary", "true")]);
        let event = watch.next().unwrap();
        assert_eq!(event["type"], "MODIFIED");
        assert_eq!(event["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(event["object"]["metadata"]["labels"]["canary"], "true");
        fake.delete_pod("default", "web-1").unwrap();
        assert_eq!(
            watch.next_event(),
            ("DELETED".to_owned(), "web-1".to_owned())
        );
        // Namespaces are another resource: not on this watch.
        fake.set_namespace("quiet", &[]);
        let rv = fake.bookmark();
        let bookmark = watch.next().unwrap();
        assert_eq!(bookmark["type"], "BOOKMARK");
        assert_eq!(
            bookmark["object"]["metadata"]["resourceVersion"],
            rv.to_string()
        );
        fake.end_watches();
        assert!(watch.next().is_none(), "the watch should have ended");
        assert_eq!(fake.open_watches(Resource::Pods), 0);
        assert_eq!(fake.watches_of(Resource::Pods).len(), 1);

        // Without a version: every object as ADDED; then the time limit ends it with a
        // bookmark.
        fake.set_watch_limit(Duration::from_millis(300));
        let mut watch = WatchReader::open(
            &fake,
            "/api/v1/namespaces/default/pods?watch=1&allowWatchBookmarks=true",
        );
        assert_eq!(watch.next_event(), ("ADDED".to_owned(), "web-0".to_owned()));
        assert_eq!(watch.next_event().0, "BOOKMARK");
        assert!(watch.next().is_none());
    }

    #[test]
    fn holds_lists_until_released() {
        let fake = Arc::new(FakeKubeApi::start_with_objects());
        fake.set_pod("default", "web-0", &[]);
        fake.hold_lists(true);
        let lister = Arc::clone(&fake);
        let list = thread::spawn(move || get_objects(&lister, PODS, "application/json"));
        eventually("the list to be held", PATIENCE, || {
            ensure!(fake.held_lists() == 1, "{} held", fake.held_lists());
            Ok(())
        });
        // Discovery is not held.
        assert_eq!(get_objects(&fake, "/api/v1", "application/json").0, 200);
        assert!(!list.is_finished());
        fake.hold_lists(false);
        let (code, body) = list.join().unwrap();
        assert_eq!((code, names(&body)), (200, vec!["web-0".to_owned()]));
        assert_eq!(fake.held_lists(), 0);
    }

    #[test]
    fn decodes_query_parameters() {
        let params = query_params("&watch=true&continue=12%3A500&labelSelector=a+in+(b)&x");
        assert_eq!(params["watch"], "true");
        assert_eq!(params["continue"], "12:500");
        assert_eq!(params["labelSelector"], "a in (b)");
        assert_eq!(params["x"], "");
    }
}
