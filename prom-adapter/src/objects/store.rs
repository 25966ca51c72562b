//! One resource's objects, by namespace and name, and the two questions asked of them.
//! Pure: the watcher tasks and the fake both feed an [`ObjectMap`].
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::panic
)]

use std::collections::{BTreeMap, BTreeSet};

use super::ObjectRef;
use crate::selector::Selector;

/// An object's labels.
type Labels = BTreeMap<String, String>;

/// The objects of one resource: name and labels by namespace (`""` for cluster-scoped
/// resources), which is all a request needs. Each namespace name is stored once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ObjectMap {
    namespaced: bool,
    by_namespace: BTreeMap<String, BTreeMap<String, Labels>>,
    len: usize,
}

impl ObjectMap {
    /// An empty map for a namespaced (or cluster-scoped) resource.
    pub(crate) fn new(namespaced: bool) -> Self {
        Self {
            namespaced,
            by_namespace: BTreeMap::new(),
            len: 0,
        }
    }

    /// Whether objects live in namespaces.
    pub(crate) fn namespaced(&self) -> bool {
        self.namespaced
    }

    /// How many objects there are.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The namespace key of an object or a request: `""` when cluster-scoped.
    fn key<'a>(&self, namespace: Option<&'a str>) -> &'a str {
        if self.namespaced {
            namespace.unwrap_or("")
        } else {
            ""
        }
    }

    /// Adds `object`, or replaces the object of the same namespace and name.
    pub(crate) fn insert(&mut self, object: ObjectRef) {
        let key = self.key(object.namespace.as_deref());
        let names = match self.by_namespace.get_mut(key) {
            Some(names) => names,
            None => self.by_namespace.entry(key.to_owned()).or_default(),
        };
        if names.insert(object.name, object.labels).is_none() {
            self.len += 1;
        }
    }

    /// Removes the object; whether it was there.
    pub(crate) fn remove(&mut self, namespace: Option<&str>, name: &str) -> bool {
        let key = self.key(namespace);
        let Some(names) = self.by_namespace.get_mut(key) else {
            return false;
        };
        let removed = names.remove(name).is_some();
        if names.is_empty() {
            self.by_namespace.remove(key);
        }
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// The namespaces a request covers: one, or (with `None`) all.
    fn namespaces<'a>(
        &'a self,
        namespace: Option<&str>,
    ) -> Box<dyn Iterator<Item = &'a BTreeMap<String, Labels>> + 'a> {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => Box::new(self.by_namespace.get(ns).into_iter()),
            _ => Box::new(self.by_namespace.values()),
        }
    }

    /// Names of the objects in `namespace` (`None`: all) whose labels match `selector`.
    pub(crate) fn select(&self, namespace: Option<&str>, selector: &Selector) -> BTreeSet<String> {
        self.namespaces(namespace)
            .flat_map(|names| names.iter())
            .filter(|(_, labels)| selector.matches(|key| labels.get(key).map(String::as_str)))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Whether `name` exists in `namespace` (`None`: in any).
    pub(crate) fn exists(&self, namespace: Option<&str>, name: &str) -> bool {
        self.namespaces(namespace)
            .any(|names| names.contains_key(name))
    }

    /// The objects in `namespace` (`None`: all) whose labels match `selector`, with their
    /// namespaces and labels, by namespace then name.
    pub(crate) fn select_objects(
        &self,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Vec<ObjectRef> {
        let wanted = match (self.namespaced, namespace) {
            (true, Some(ns)) => Some(ns),
            _ => None,
        };
        self.by_namespace
            .iter()
            .filter(|(ns, _)| wanted.is_none_or(|w| w == ns.as_str()))
            .flat_map(|(ns, names)| {
                names
                    .iter()
                    .filter(|(_, labels)| {
                        selector.matches(|key| labels.get(key).map(String::as_str))
                    })
                    .map(move |(name, labels)| ObjectRef {
                        name: name.clone(),
                        namespace: self.namespaced.then(|| ns.clone()),
                        labels: labels.clone(),
                    })
            })
            .collect()
    }

    /// The object `name` in `namespace` (ignored when cluster-scoped).
    pub(crate) fn get(&self, namespace: Option<&str>, name: &str) -> Option<ObjectRef> {
        let key = self.key(namespace);
        let labels = self.by_namespace.get(key)?.get(name)?;
        Some(ObjectRef {
            name: name.to_owned(),
            namespace: self.namespaced.then(|| key.to_owned()),
            labels: labels.clone(),
        })
    }

    /// Every object, by namespace then name.
    #[cfg(test)]
    pub(crate) fn objects(&self) -> Vec<ObjectRef> {
        self.by_namespace
            .iter()
            .flat_map(|(ns, names)| {
                names.iter().map(move |(name, labels)| ObjectRef {
                    name: name.clone(),
                    namespace: self.namespaced.then(|| ns.clone()),
                    labels: labels.clone(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, labels: &[(&str, &str)]) -> ObjectRef {
        ObjectRef::new(name, Some(ns), labels.iter().copied())
    }

    fn pods() -> ObjectMap {
        let mut map = ObjectMap::new(true);
        map.insert(pod("a", "web-1", &[("app", "web"), ("tier", "front")]));
        map.insert(pod("a", "web-2", &[("app", "web")]));
        map.insert(pod("a", "db-1", &[("app", "db"), ("tier", "back")]));
        map.insert(pod("b", "web-1", &[("app", "web"), ("tier", "front")]));
        map
    }

    #[track_caller]
    fn check(map: &ObjectMap, namespace: Option<&str>, selector: &str, expected: &[&str]) {
        let selector = Selector::parse(selector).unwrap();
        let got = map.select(namespace, &selector);
        let got: Vec<&str> = got.iter().map(String::as_str).collect();
        assert_eq!(got, expected, "{selector}");
    }

    #[test]
    fn select_by_namespace_and_selector() {
        let map = pods();
        check(&map, Some("a"), "", &["db-1", "web-1", "web-2"]);
        check(&map, Some("a"), "app=web", &["web-1", "web-2"]);
        check(&map, Some("a"), "app in (db,cache)", &["db-1"]);
        check(&map, Some("a"), "tier notin (front)", &["db-1", "web-2"]);
        check(&map, Some("a"), "tier", &["db-1", "web-1"]);
        check(&map, Some("a"), "!tier", &["web-2"]);
        check(&map, Some("b"), "app=web", &["web-1"]);
        check(&map, Some("c"), "", &[]);
        check(&map, None, "app=web", &["web-1", "web-2"]);
    }

    #[test]
    fn insert_replaces_and_remove_counts() {
        let mut map = pods();
        assert_eq!(map.len(), 4);
        map.insert(pod("a", "web-2", &[("app", "api")]));
        assert_eq!(map.len(), 4);
        check(&map, Some("a"), "app=web", &["web-1"]);
        assert!(map.remove(Some("b"), "web-1"));
        assert!(!map.remove(Some("b"), "web-1"));
        assert!(!map.remove(Some("zzz"), "web-1"));
        assert_eq!(map.len(), 3);
        assert!(!map.exists(Some("b"), "web-1"));
        assert!(map.exists(Some("a"), "web-1"));
        assert!(map.exists(None, "db-1"));
        // An emptied namespace leaves nothing behind.
        assert_eq!(map.by_namespace.len(), 1);
        assert_eq!(map.objects().len(), 3);
    }

    #[test]
    fn objects_come_with_namespace_and_labels() {
        let map = pods();
        let web = Selector::parse("app=web").unwrap();
        assert_eq!(
            map.select_objects(None, &web),
            vec![
                pod("a", "web-1", &[("app", "web"), ("tier", "front")]),
                pod("a", "web-2", &[("app", "web")]),
                pod("b", "web-1", &[("app", "web"), ("tier", "front")]),
            ]
        );
        assert_eq!(
            map.select_objects(Some("b"), &Selector::default()),
            vec![pod("b", "web-1", &[("app", "web"), ("tier", "front")])]
        );
        assert_eq!(
            map.get(Some("a"), "db-1"),
            Some(pod("a", "db-1", &[("app", "db"), ("tier", "back")]))
        );
        assert_eq!(map.get(Some("b"), "db-1"), None);
        assert_eq!(map.get(None, "db-1"), None);
        let mut nodes = ObjectMap::new(false);
        nodes.insert(ObjectRef::new("n1", None, [("zone", "x")]));
        assert_eq!(
            nodes.get(Some("ignored"), "n1"),
            Some(ObjectRef::new("n1", None, [("zone", "x")]))
        );
        assert_eq!(
            nodes
                .select_objects(Some("ignored"), &Selector::default())
                .len(),
            1
        );
    }

    #[test]
    fn cluster_scoped_ignores_the_namespace() {
        let mut nodes = ObjectMap::new(false);
        nodes.insert(ObjectRef::new("n1", None, [("zone", "x")]));
        nodes.insert(ObjectRef::new("n2", Some("stray"), [("zone", "y")]));
        check(&nodes, None, "zone=x", &["n1"]);
        check(&nodes, Some("default"), "", &["n1", "n2"]);
        assert!(nodes.exists(Some("default"), "n2"));
        assert!(nodes.remove(None, "n2"));
        assert_eq!(
            nodes.objects(),
            vec![ObjectRef::new("n1", None, [("zone", "x")])]
        );
    }
}
