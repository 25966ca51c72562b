//! Kubernetes objects the rules resolve to, from a watch cache.
//!
//! prometheus-adapter LISTs the described objects on kube-apiserver for every request and
//! sends Prometheus a `pod=~"a|b|c…"` regex of their names, which breaks with hundreds of
//! pods. Here a [`WatchCache`] keeps, per watched resource, the name, namespace and labels
//! of every object (kube-rs `watcher`, metadata-only requests), and the provider filters
//! answers in process through the [`ObjectResolver`] trait. [`FakeObjects`] answers the
//! same trait from memory for provider tests.
//!
//! - `store`: the per-resource object map and its queries (pure).
//! - `watch`: discovery, one watcher task per resource, and the [`client`] to watch with.
//! - `fake`: [`FakeObjects`].
//! - `metrics`: [`ObjectsMetrics`].

mod fake;
mod metrics;
mod store;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::rules::resources::GroupResource;
use crate::selector::Selector;

pub use fake::FakeObjects;
pub use metrics::ObjectsMetrics;
pub(crate) use watch::next;
pub use watch::{StartError, WatchCache, client, client_from};

/// What the cache keeps of one object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectRef {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`; `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
}

impl ObjectRef {
    /// An object named `name` in `namespace` (`None`: cluster-scoped) with `labels`.
    pub fn new<'a>(
        name: &str,
        namespace: Option<&str>,
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            namespace: namespace.map(str::to_owned),
            labels: labels
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }
}

/// Why the objects of a resource can't be answered from the cache.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectsError {
    /// The resource is watched but its first full list has not completed: answer 503.
    #[error("the {resource} cache has not completed its first list yet")]
    NotSynced {
        /// The group-resource, as Kubernetes prints it (`deployments.apps`).
        resource: String,
    },
    /// The resource is not watched (not asked for, or not served by the cluster): the caller
    /// falls back to asking without the cache.
    #[error("{resource} is not watched")]
    NotWatched {
        /// The group-resource, as Kubernetes prints it.
        resource: String,
    },
}

/// What the provider asks about objects. Implemented by [`WatchCache`] and [`FakeObjects`].
///
/// Namespaces: for a namespaced resource, `Some(ns)` means the objects in `ns` and `None`
/// the objects of every namespace. For a cluster-scoped resource (`nodes`, `namespaces`)
/// the namespace is ignored.
pub trait ObjectResolver: Send + Sync + 'static {
    /// Names of `resource`'s objects in `namespace` whose labels match `selector`. Names
    /// from different namespaces (with `None`) are merged.
    fn select(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Result<BTreeSet<String>, ObjectsError>;

    /// Whether the object `name` exists (in `namespace`; with `None`, in any namespace).
    fn exists(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<bool, ObjectsError>;

    /// The objects [`ObjectResolver::select`] names, with their namespaces and labels
    /// (resource metrics echo the labels), by namespace then name. A resolver that keeps no
    /// labels answers as if it didn't watch the resource.
    fn objects(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Result<Vec<ObjectRef>, ObjectsError> {
        let _ = (namespace, selector);
        Err(ObjectsError::NotWatched {
            resource: resource.to_string(),
        })
    }

    /// The object `name` in `namespace` (for a cluster-scoped resource the namespace is
    /// ignored), if it exists. Same default as [`ObjectResolver::objects`].
    fn get(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<ObjectRef>, ObjectsError> {
        let _ = (namespace, name);
        Err(ObjectsError::NotWatched {
            resource: resource.to_string(),
        })
    }
}

/// Shared ownership: a test keeps one `Arc` to a [`FakeObjects`] and hands another out.
impl<T: ObjectResolver> ObjectResolver for Arc<T> {
    fn select(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Result<BTreeSet<String>, ObjectsError> {
        T::select(self, resource, namespace, selector)
    }

    fn exists(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<bool, ObjectsError> {
        T::exists(self, resource, namespace, name)
    }

    fn objects(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Result<Vec<ObjectRef>, ObjectsError> {
        T::objects(self, resource, namespace, selector)
    }

    fn get(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<ObjectRef>, ObjectsError> {
        T::get(self, resource, namespace, name)
    }
}

/// The key a request's group-resource is stored under: as given when it is known that way,
/// else the known kind's plural (`pod` → `pods`), else as given.
pub(crate) fn normalise(resource: &GroupResource) -> GroupResource {
    crate::rules::resources::lookup(&resource.group, &resource.resource)
        .map_or_else(|| resource.clone(), |info| info.group_resource)
}
