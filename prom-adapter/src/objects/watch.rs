//! [`WatchCache`]: one kube-rs watcher per resource feeding an [`ObjectMap`], resolved through
//! the API's discovery documents; and the [`client`] it watches with.
//!
//! Each watcher lists (metadata only, 500 objects a page) and then watches from the list's
//! resourceVersion with bookmarks. kube's watcher resumes a watch that ended from the last
//! resourceVersion or bookmark it saw, and on a 410 Gone ERROR event (the version was
//! compacted away) lists again from scratch; a watch *start* answered 410 it would retry
//! from the same version forever, so that case restarts the watcher here. The objects of a relist are gathered aside and swapped in at
//! its end, so answers stay whole while it runs. Errors back off with kube's default
//! (0.8 s doubling to 30 s, jittered) and are counted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::core::gvk::GroupVersion;
use kube::discovery::{ApiCapabilities, ApiGroup, Scope, verbs};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use prometheus::IntGauge;
use tokio_util::sync::CancellationToken;

use super::store::ObjectMap;
use super::{ObjectRef, ObjectResolver, ObjectsError, ObjectsMetrics, normalise};
use crate::kube_client::{self, ClientError, flatten};
use crate::rules::resources::GroupResource;
use crate::selector::Selector;
use crate::telemetry::now_unix;

/// How long one discovery request may take.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// The first wait before relisting when a watch start is answered 410 Gone; it doubles
/// with each such answer in a row, up to [`GONE_RELIST_DELAY_MAX`].
const GONE_RELIST_DELAY: Duration = Duration::from_millis(500);
/// See [`GONE_RELIST_DELAY`].
const GONE_RELIST_DELAY_MAX: Duration = Duration::from_secs(16);
/// How long connecting to kube-apiserver may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest kube-apiserver may stay silent on a connection. Longer than a watch (kube
/// asks for 290 s, then reconnects), so it only catches a list or a watch that hangs.
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Why the cache (or the client it watches with) could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// No client: a kubeconfig or the in-cluster configuration could not be used.
    #[error(transparent)]
    Config(#[from] ClientError),
    /// A discovery document the cache needs could not be read: `/api/v1` (pods and
    /// namespaces are always watched) or `/apis`.
    #[error("kube-apiserver discovery ({document}): {reason}")]
    Discovery {
        /// The document's path.
        document: String,
        /// The error chain, flattened.
        reason: String,
    },
}

/// A client for the cluster whose objects are watched (prometheus-adapter's
/// `--lister-kubeconfig`): from `kubeconfig` when given; else the in-cluster configuration
/// when running in a pod (`KUBERNETES_SERVICE_HOST` is set); else `Ok(None)`.
///
/// Connecting may take 5 s; a connection may stay silent for 300 s (a watch lasts 290 s).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Option<kube::Client>, StartError> {
    match kube_client::config(kubeconfig).await? {
        Some(config) => client_from(config).map(Some),
        None => Ok(None),
    }
}

/// A client from a ready-made configuration, with the timeouts [`client`] sets.
pub fn client_from(config: kube::Config) -> Result<kube::Client, StartError> {
    Ok(kube_client::build(
        config,
        CONNECT_TIMEOUT,
        READ_TIMEOUT,
        None,
    )?)
}

/// Runs `call` for at most [`DISCOVERY_TIMEOUT`].
async fn bounded<T>(call: impl Future<Output = Result<T, kube::Error>>) -> Result<T, String> {
    match tokio::time::timeout(DISCOVERY_TIMEOUT, call).await {
        Ok(result) => result.map_err(|e| flatten(&e)),
        Err(_elapsed) => Err(format!("no answer within {DISCOVERY_TIMEOUT:?}")),
    }
}

/// A resource found in discovery, ready to watch.
struct Target {
    /// As asked for.
    wanted: GroupResource,
    /// As served: the plural discovery names.
    resource: GroupResource,
    api: ApiResource,
    namespaced: bool,
}

/// Finds each wanted resource in the discovery documents of its group's preferred version.
/// A group or resource the cluster doesn't serve (or serves without list and watch) is
/// logged and left out; so is a group whose document can't be read (an aggregated API
/// that is down). Failing to read `/api` or `/apis` is an error.
async fn discover(
    client: &kube::Client,
    wanted: &BTreeSet<GroupResource>,
) -> Result<Vec<Target>, StartError> {
    let mut by_group: BTreeMap<&str, Vec<&GroupResource>> = BTreeMap::new();
    for gr in wanted {
        by_group.entry(gr.group.as_str()).or_default().push(gr);
    }
    let mut groups: Vec<(&str, ApiGroup)> = Vec::new();
    if by_group.contains_key(ApiGroup::CORE_GROUP) {
        let group = bounded(kube::discovery::group(client, ApiGroup::CORE_GROUP))
            .await
            .map_err(|reason| StartError::Discovery {
                document: "/api".into(),
                reason,
            })?;
        groups.push((ApiGroup::CORE_GROUP, group));
    }
    if by_group.keys().any(|g| !g.is_empty()) {
        let served =
            bounded(client.list_api_groups())
                .await
                .map_err(|reason| StartError::Discovery {
                    document: "/apis".into(),
                    reason,
                })?;
        for &name in by_group.keys().filter(|g| !g.is_empty()) {
            let version = served.groups.iter().find(|g| g.name == name).and_then(|g| {
                g.preferred_version
                    .as_ref()
                    .or(g.versions.first())
                    .map(|v| v.version.clone())
            });
            let Some(version) = version else {
                tracing::warn!(
                    group = name,
                    "The cluster does not serve this API group; not watching its resources."
                );
                continue;
            };
            let gv = GroupVersion {
                group: name.to_owned(),
                version,
            };
            match bounded(kube::discovery::pinned_group(client, &gv)).await {
                Ok(group) => groups.push((name, group)),
                Err(reason) => {
                    tracing::warn!(
                        group = name,
                        version = %gv.version,
                        error = %reason,
                        "Cannot read the API group's discovery document; not watching its resources."
                    );
                }
            }
        }
    }
    let mut targets = Vec::new();
    for (name, group) in groups {
        let Some(resources) = by_group.get(name) else {
            continue;
        };
        let served = group.recommended_resources();
        for &gr in resources {
            match find(&served, gr) {
                Some((api, caps)) => targets.push(Target {
                    wanted: gr.clone(),
                    resource: GroupResource::new(&gr.group, &api.plural),
                    namespaced: caps.scope == Scope::Namespaced,
                    api: api.clone(),
                }),
                None => tracing::warn!(
                    resource = %gr,
                    "The cluster does not serve this resource with list and watch; not watching it."
                ),
            }
        }
    }
    Ok(targets)
}

/// The served resource `gr` names, by plural or (for a singular) by kind, if it can be
/// listed and watched.
fn find<'a>(
    served: &'a [(ApiResource, ApiCapabilities)],
    gr: &GroupResource,
) -> Option<&'a (ApiResource, ApiCapabilities)> {
    served
        .iter()
        .find(|(api, _)| api.plural.eq_ignore_ascii_case(&gr.resource))
        .or_else(|| {
            served
                .iter()
                .find(|(api, _)| api.kind.eq_ignore_ascii_case(&gr.resource))
        })
        .filter(|(_, caps)| {
            caps.supports_operation(verbs::LIST) && caps.supports_operation(verbs::WATCH)
        })
}

/// One watched resource: its objects, and whether they have been listed once.
struct Shard {
    resource: GroupResource,
    state: RwLock<ShardState>,
}

struct ShardState {
    synced: bool,
    objects: ObjectMap,
}

impl Shard {
    fn read(&self) -> RwLockReadGuard<'_, ShardState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the state and publishes the object count before anyone can read the change,
    /// so the gauge never lags an answer. Returns the count.
    fn update(&self, cached: &IntGauge, change: impl FnOnce(&mut ShardState)) -> usize {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        change(&mut state);
        let len = state.objects.len();
        cached.set(i64::try_from(len).unwrap_or(i64::MAX));
        len
    }
}

/// The names, namespaces and labels of the objects of pods, namespaces and the resources
/// the rules map to, kept current by watches. Clones share the cache; the watches run
/// until the `stop` token given to [`WatchCache::start`] is cancelled.
#[derive(Clone)]
pub struct WatchCache {
    shards: Arc<HashMap<GroupResource, Arc<Shard>>>,
    /// Resources asked for by another name than discovery's plural (a custom resource's
    /// singular), to the served name.
    aliases: Arc<HashMap<GroupResource, GroupResource>>,
}

impl fmt::Debug for WatchCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchCache")
            .field("resources", &self.watched())
            .field("synced", &self.synced())
            .finish()
    }
}

impl WatchCache {
    /// Resolves pods, namespaces and `extra` (the group-resources the rules map to, e.g.
    /// `deployments.apps`, `services`, `nodes`) through discovery and starts a watch for
    /// each one served; a resource the cluster doesn't serve is logged and not watched.
    /// Returns once the watches are started, before they have listed anything: see
    /// [`WatchCache::synced`].
    ///
    /// Fails only when `/api` and `/api/v1`, or (with a non-core resource in `extra`)
    /// `/apis`, can't be read. The client's identity needs `list` and `watch` on every
    /// resource watched (metadata-only requests need the same verbs).
    pub async fn start(
        client: kube::Client,
        extra: &[GroupResource],
        metrics: ObjectsMetrics,
        stop: CancellationToken,
    ) -> Result<WatchCache, StartError> {
        let mut wanted =
            BTreeSet::from([GroupResource::new("", "pods"), GroupResource::namespaces()]);
        wanted.extend(extra.iter().map(normalise));
        let targets = discover(&client, &wanted).await?;
        let mut shards = HashMap::new();
        let mut aliases = HashMap::new();
        for target in targets {
            if target.wanted != target.resource {
                aliases.insert(target.wanted.clone(), target.resource.clone());
            }
            if shards.contains_key(&target.resource) {
                continue;
            }
            let shard = Arc::new(Shard {
                resource: target.resource.clone(),
                state: RwLock::new(ShardState {
                    synced: false,
                    objects: ObjectMap::new(target.namespaced),
                }),
            });
            let api =
                Api::<PartialObjectMeta<DynamicObject>>::all_with(client.clone(), &target.api);
            tracing::debug!(
                resource = %target.resource,
                api_version = %target.api.api_version,
                namespaced = target.namespaced,
                "Watching."
            );
            tokio::spawn(watch(
                Arc::clone(&shard),
                api,
                target.namespaced,
                metrics.clone(),
                stop.clone(),
            ));
            shards.insert(target.resource, shard);
        }
        Ok(WatchCache {
            shards: Arc::new(shards),
            aliases: Arc::new(aliases),
        })
    }

    /// Whether every watched resource has completed its first list.
    pub fn synced(&self) -> bool {
        self.shards.values().all(|shard| shard.read().synced)
    }

    /// The watched group-resources, sorted.
    pub fn watched(&self) -> Vec<GroupResource> {
        let mut watched: Vec<GroupResource> = self.shards.keys().cloned().collect();
        watched.sort();
        watched
    }

    fn answer<T>(
        &self,
        resource: &GroupResource,
        f: impl FnOnce(&ObjectMap) -> T,
    ) -> Result<T, ObjectsError> {
        let mut key = normalise(resource);
        if let Some(served) = self.aliases.get(&key) {
            key = served.clone();
        }
        let Some(shard) = self.shards.get(&key) else {
            return Err(ObjectsError::NotWatched {
                resource: key.to_string(),
            });
        };
        let state = shard.read();
        if !state.synced {
            return Err(ObjectsError::NotSynced {
                resource: key.to_string(),
            });
        }
        Ok(f(&state.objects))
    }
}

impl ObjectResolver for WatchCache {
    fn select(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Result<BTreeSet<String>, ObjectsError> {
        self.answer(resource, |objects| objects.select(namespace, selector))
    }

    fn exists(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<bool, ObjectsError> {
        self.answer(resource, |objects| objects.exists(namespace, name))
    }

    fn objects(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Result<Vec<ObjectRef>, ObjectsError> {
        self.answer(resource, |objects| {
            objects.select_objects(namespace, selector)
        })
    }

    fn get(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<ObjectRef>, ObjectsError> {
        self.answer(resource, |objects| objects.get(namespace, name))
    }
}

/// What the cache keeps of a watched object.
fn object_ref(object: PartialObjectMeta<DynamicObject>) -> ObjectRef {
    let meta = object.metadata;
    ObjectRef {
        name: meta.name.unwrap_or_default(),
        namespace: meta.namespace,
        labels: meta.labels.unwrap_or_default(),
    }
}

/// The next item of `stream`. (`futures::StreamExt::next`, which prom-adapter doesn't
/// depend on.)
pub(crate) async fn next<S: WatchStreamExt + Unpin>(stream: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

/// Feeds `shard` from a watcher until `stop`.
async fn watch(
    shard: Arc<Shard>,
    api: Api<PartialObjectMeta<DynamicObject>>,
    namespaced: bool,
    metrics: ObjectsMetrics,
    stop: CancellationToken,
) {
    let label = shard.resource.to_string();
    metrics.init(&label);
    let cached = metrics.cached.with_label_values(&[&label]);
    let restarts = metrics.watch_restarts.with_label_values(&[&label]);
    let last_sync = metrics.last_sync.with_label_values(&[&label]);
    let start =
        || Box::pin(watcher::watcher(api.clone(), watcher::Config::default()).default_backoff());
    let mut events = start();
    // Watch starts answered 410 Gone in a row (see below).
    let mut gone_starts: u32 = 0;
    // The objects of a list in progress, swapped in when it completes.
    let mut listing: Option<ObjectMap> = None;
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = next(&mut events) => event,
        };
        let Some(event) = event else {
            // kube's watcher retries forever; this is not expected.
            tracing::error!(resource = %label, "The watch ended; the cache of this resource is no longer updated.");
            return;
        };
        match event {
            Ok(Event::Init) => listing = Some(ObjectMap::new(namespaced)),
            Ok(Event::InitApply(object)) => {
                let object = object_ref(object);
                match &mut listing {
                    Some(objects) => objects.insert(object),
                    // Not expected: InitApply comes between Init and InitDone.
                    None => {
                        shard.update(&cached, |state| state.objects.insert(object));
                    }
                }
            }
            Ok(Event::InitDone) => {
                let mut first = false;
                let len = shard.update(&cached, |state| {
                    if let Some(objects) = listing.take() {
                        state.objects = objects;
                    }
                    first = !state.synced;
                    state.synced = true;
                    last_sync.set(now_unix());
                });
                if first {
                    tracing::info!(resource = %label, objects = len, "Object cache synced.");
                } else {
                    tracing::debug!(resource = %label, objects = len, "Object cache relisted.");
                }
            }
            Ok(Event::Apply(object)) => {
                gone_starts = 0;
                let object = object_ref(object);
                shard.update(&cached, |state| state.objects.insert(object));
            }
            Ok(Event::Delete(object)) => {
                gone_starts = 0;
                let object = object_ref(object);
                shard.update(&cached, |state| {
                    state
                        .objects
                        .remove(object.namespace.as_deref(), &object.name);
                });
            }
            Err(watcher::Error::WatchStartFailed(kube::Error::Api(status)))
                if status.code == 410 =>
            {
                // kube's watcher retries a watch whose start failed from the same
                // resourceVersion, which can't work once it is gone (client-go relists):
                // start over with a fresh list, after a growing delay in case the server
                // keeps answering so.
                restarts.inc();
                let delay = GONE_RELIST_DELAY
                    .saturating_mul(1 << gone_starts.min(5))
                    .min(GONE_RELIST_DELAY_MAX);
                gone_starts = gone_starts.saturating_add(1);
                tracing::debug!(
                    resource = %label,
                    error = %status.message,
                    ?delay,
                    "Watch start answered 410 Gone; listing again."
                );
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                events = start();
            }
            Err(e) => {
                restarts.inc();
                match &e {
                    watcher::Error::WatchError(status) if status.code == 410 => tracing::debug!(
                        resource = %label,
                        error = %e,
                        "Watch expired; listing again."
                    ),
                    _ => tracing::warn!(
                        resource = %label,
                        error = %flatten(&e),
                        "Watching failed; retrying with backoff."
                    ),
                }
            }
        }
    }
}
