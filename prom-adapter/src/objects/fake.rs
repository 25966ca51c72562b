//! [`FakeObjects`]: an [`ObjectResolver`] answering from objects a test sets.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::store::ObjectMap;
use super::{ObjectRef, ObjectResolver, ObjectsError, normalise};
use crate::rules::resources::{self, GroupResource};
use crate::selector::Selector;

/// Objects for provider tests. Clones share state.
///
/// - A resource never mentioned is not watched ([`ObjectsError::NotWatched`]).
/// - [`FakeObjects::set`] makes it watched and synced with exactly those objects;
///   [`FakeObjects::set_synced`] with `false` makes it answer [`ObjectsError::NotSynced`].
/// - Scope comes from the table of known kinds (`nodes` and `namespaces` are cluster-scoped);
///   other resources are namespaced.
/// - Calls are counted ([`FakeObjects::calls`]).
#[derive(Debug, Clone, Default)]
pub struct FakeObjects {
    state: Arc<Mutex<FakeState>>,
}

#[derive(Debug, Default)]
struct FakeState {
    resources: HashMap<GroupResource, FakeResource>,
    calls: usize,
}

#[derive(Debug)]
struct FakeResource {
    synced: bool,
    objects: ObjectMap,
}

impl FakeResource {
    fn new(resource: &GroupResource) -> Self {
        let namespaced = resources::for_request(resource).is_none_or(|info| info.namespaced);
        Self {
            synced: true,
            objects: ObjectMap::new(namespaced),
        }
    }
}

impl FakeObjects {
    /// A fake that watches nothing.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        // A panicking test thread must not hide the state from the others.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn with<T>(&self, resource: &GroupResource, f: impl FnOnce(&mut FakeResource) -> T) -> T {
        let resource = normalise(resource);
        let mut state = self.state();
        let entry = state
            .resources
            .entry(resource)
            .or_insert_with_key(FakeResource::new);
        f(entry)
    }

    /// `resource` is watched and synced, and has exactly `objects`.
    pub fn set(&self, resource: &GroupResource, objects: impl IntoIterator<Item = ObjectRef>) {
        self.with(resource, |r| {
            r.synced = true;
            r.objects = ObjectMap::new(r.objects.namespaced());
            for object in objects {
                r.objects.insert(object);
            }
        });
    }

    /// Adds `object` to `resource` (watched from now on), or replaces it.
    pub fn insert(&self, resource: &GroupResource, object: ObjectRef) {
        self.with(resource, |r| r.objects.insert(object));
    }

    /// Removes an object of `resource`; whether it was there.
    pub fn remove(&self, resource: &GroupResource, namespace: Option<&str>, name: &str) -> bool {
        self.with(resource, |r| r.objects.remove(namespace, name))
    }

    /// Whether `resource` (watched from now on) has completed its first list.
    pub fn set_synced(&self, resource: &GroupResource, synced: bool) {
        self.with(resource, |r| r.synced = synced);
    }

    /// `resource` is no longer watched.
    pub fn unwatch(&self, resource: &GroupResource) {
        self.state().resources.remove(&normalise(resource));
    }

    /// How many `select` and `exists` calls were made.
    pub fn calls(&self) -> usize {
        self.state().calls
    }

    fn answer<T>(
        &self,
        resource: &GroupResource,
        f: impl FnOnce(&ObjectMap) -> T,
    ) -> Result<T, ObjectsError> {
        let key = normalise(resource);
        let mut state = self.state();
        state.calls += 1;
        match state.resources.get(&key) {
            None => Err(ObjectsError::NotWatched {
                resource: key.to_string(),
            }),
            Some(r) if !r.synced => Err(ObjectsError::NotSynced {
                resource: key.to_string(),
            }),
            Some(r) => Ok(f(&r.objects)),
        }
    }
}

impl ObjectResolver for FakeObjects {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_as_set() {
        let fake = FakeObjects::new();
        let pods = GroupResource::parse("pods");
        let everything = Selector::default();
        assert_eq!(
            fake.select(&pods, Some("a"), &everything),
            Err(ObjectsError::NotWatched {
                resource: "pods".into()
            })
        );
        fake.set(
            &pods,
            [
                ObjectRef::new("web-1", Some("a"), [("app", "web")]),
                ObjectRef::new("db-1", Some("a"), [("app", "db")]),
            ],
        );
        let web = Selector::parse("app=web").unwrap();
        assert_eq!(
            fake.select(&GroupResource::parse("pod"), Some("a"), &web),
            Ok(BTreeSet::from(["web-1".to_owned()]))
        );
        assert_eq!(fake.exists(&pods, Some("a"), "db-1"), Ok(true));
        assert!(fake.remove(&pods, Some("a"), "db-1"));
        assert_eq!(fake.exists(&pods, Some("a"), "db-1"), Ok(false));
        fake.set_synced(&pods, false);
        assert_eq!(
            fake.exists(&pods, None, "web-1"),
            Err(ObjectsError::NotSynced {
                resource: "pods".into()
            })
        );
        fake.unwatch(&pods);
        assert!(matches!(
            fake.exists(&pods, None, "web-1"),
            Err(ObjectsError::NotWatched { .. })
        ));
        assert_eq!(fake.calls(), 6);
    }

    #[test]
    fn known_cluster_scoped_kinds_ignore_the_namespace() {
        let fake = FakeObjects::new();
        let nodes = GroupResource::parse("nodes");
        fake.set(&nodes, [ObjectRef::new("n1", None, [])]);
        assert_eq!(fake.exists(&nodes, Some("default"), "n1"), Ok(true));
    }
}
