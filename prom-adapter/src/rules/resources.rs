//! Which Kubernetes resource a series label names, and back.
//!
//! prometheus-adapter asks the cluster's RESTMapper; this version runs without a cluster, so
//! it knows the built-in kinds from a table and accepts any other group-resource an override
//! names (its kind and version then guessed the way `kubectl` would print them).

use std::collections::BTreeMap;
use std::fmt;

use super::template::{Data, Template, Value};

/// A group-qualified resource as Kubernetes prints it: `pods`, `deployments.apps`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupResource {
    /// API group; empty for the core group.
    pub group: String,
    /// Plural resource name.
    pub resource: String,
}

impl GroupResource {
    /// Parses `pods` or `deployments.apps` (everything after the first dot is the group).
    pub fn parse(s: &str) -> Self {
        match s.split_once('.') {
            Some((resource, group)) => Self::new(group, resource),
            None => Self::new("", s),
        }
    }

    /// A group-resource from its parts.
    pub fn new(group: &str, resource: &str) -> Self {
        Self {
            group: group.to_owned(),
            resource: resource.to_owned(),
        }
    }

    /// The core group's `namespaces`.
    pub fn namespaces() -> Self {
        Self::new("", "namespaces")
    }
}

impl fmt::Display for GroupResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

/// What the API needs to know about a resource to describe one of its objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceInfo {
    /// The group-resource.
    pub group_resource: GroupResource,
    /// Singular name, as `resources.template`'s `<<.Resource>>` spells it.
    pub singular: String,
    /// The object kind (`describedObject.kind`).
    pub kind: String,
    /// `describedObject.apiVersion`: `v1` for the core group, `group/version` otherwise.
    pub api_version: String,
    /// Whether objects live in a namespace; the same for every metric of the resource.
    pub namespaced: bool,
}

/// (group, plural, singular, kind, version, namespaced) of the kinds metrics are usually
/// about.
const KNOWN: &[(&str, &str, &str, &str, &str, bool)] = &[
    ("", "pods", "pod", "Pod", "v1", true),
    ("", "namespaces", "namespace", "Namespace", "v1", false),
    ("", "nodes", "node", "Node", "v1", false),
    ("", "services", "service", "Service", "v1", true),
    ("", "endpoints", "endpoints", "Endpoints", "v1", true),
    (
        "",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        "PersistentVolumeClaim",
        "v1",
        true,
    ),
    (
        "",
        "persistentvolumes",
        "persistentvolume",
        "PersistentVolume",
        "v1",
        false,
    ),
    (
        "",
        "replicationcontrollers",
        "replicationcontroller",
        "ReplicationController",
        "v1",
        true,
    ),
    ("", "configmaps", "configmap", "ConfigMap", "v1", true),
    (
        "apps",
        "deployments",
        "deployment",
        "Deployment",
        "v1",
        true,
    ),
    (
        "apps",
        "statefulsets",
        "statefulset",
        "StatefulSet",
        "v1",
        true,
    ),
    ("apps", "daemonsets", "daemonset", "DaemonSet", "v1", true),
    (
        "apps",
        "replicasets",
        "replicaset",
        "ReplicaSet",
        "v1",
        true,
    ),
    ("batch", "jobs", "job", "Job", "v1", true),
    ("batch", "cronjobs", "cronjob", "CronJob", "v1", true),
    (
        "networking.k8s.io",
        "ingresses",
        "ingress",
        "Ingress",
        "v1",
        true,
    ),
    (
        "autoscaling",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        "HorizontalPodAutoscaler",
        "v2",
        true,
    ),
    (
        "policy",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        "PodDisruptionBudget",
        "v1",
        true,
    ),
];

fn info_of(entry: &(&str, &str, &str, &str, &str, bool)) -> ResourceInfo {
    let (group, plural, singular, kind, version, namespaced) = *entry;
    ResourceInfo {
        group_resource: GroupResource::new(group, plural),
        singular: singular.to_owned(),
        kind: kind.to_owned(),
        api_version: api_version(group, version),
        namespaced,
    }
}

fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

/// Looks a resource up by plural or singular name (case-insensitive, as the RESTMapper
/// does) within `group`.
pub fn lookup(group: &str, resource: &str) -> Option<ResourceInfo> {
    let resource = resource.to_ascii_lowercase();
    KNOWN
        .iter()
        .find(|(g, plural, singular, ..)| {
            *g == group && (*plural == resource || *singular == resource)
        })
        .map(info_of)
}

/// The info for a resource an override names: the known kind, or for custom resources
/// (`{group: cheese.io, resource: brand}`) a guessed plural, kind and `v1` version.
pub fn resolve(group: &str, resource: &str) -> ResourceInfo {
    if let Some(info) = lookup(group, resource) {
        return info;
    }
    let lower = resource.to_ascii_lowercase();
    let (plural, singular) = match lower.strip_suffix('s') {
        Some(stem) if !stem.is_empty() => (lower.clone(), stem.to_owned()),
        _ => (format!("{lower}s"), lower.clone()),
    };
    let mut kind = singular.clone();
    if let Some(first) = kind.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    ResourceInfo {
        group_resource: GroupResource::new(group, &plural),
        singular,
        kind,
        api_version: api_version(group, "v1"),
        namespaced: true,
    }
}

/// The info for a group-resource from a request path (`deployments.apps`), if known.
pub fn for_request(gr: &GroupResource) -> Option<ResourceInfo> {
    lookup(&gr.group, &gr.resource)
}

/// How one rule maps series labels to resources (`resources:` in a rule).
#[derive(Debug, Clone)]
pub struct ResourceMapper {
    overrides: BTreeMap<String, ResourceInfo>,
    template: Option<LabelTemplate>,
}

/// A compiled `resources.template`: the label each known resource has under it.
#[derive(Debug, Clone)]
struct LabelTemplate {
    template: Template,
    labels: BTreeMap<String, ResourceInfo>,
}

/// Why a `resources` section can't be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// The template doesn't parse or render.
    #[error("resources.template: {0}")]
    Template(String),
    /// The template has no `<<.Resource>>`, so it can't tell resources apart.
    #[error("resources.template must contain <<.Resource>>")]
    NoResourceField,
    /// An override's resource is empty.
    #[error("resources.overrides.{0}: resource is empty")]
    EmptyOverride(String),
}

impl ResourceMapper {
    /// Builds the mapper from overrides (label → (group, resource)) and an optional
    /// template such as `kube_<<.Group>>_<<.Resource>>`.
    pub fn new(
        overrides: &BTreeMap<String, (String, String)>,
        template: Option<&str>,
    ) -> Result<Self, ResourceError> {
        let mut map = BTreeMap::new();
        for (label, (group, resource)) in overrides {
            if resource.trim().is_empty() {
                return Err(ResourceError::EmptyOverride(label.clone()));
            }
            map.insert(label.clone(), resolve(group, resource));
        }
        let template = template
            .map(|src| {
                let template =
                    Template::parse(src).map_err(|e| ResourceError::Template(e.to_string()))?;
                if !template.fields().contains("Resource") {
                    return Err(ResourceError::NoResourceField);
                }
                // Rendering every known resource, rather than matching a regex made of the
                // template, tells `kube_networking_k8s_io_ingress` apart where a lazy
                // `(?P<group>.+?)` would cut the group at its first `_`.
                let mut labels = BTreeMap::new();
                for entry in KNOWN {
                    let info = info_of(entry);
                    let label = render(&template, &template_group(&info), &info.singular)?;
                    labels.entry(label).or_insert(info);
                }
                Ok(LabelTemplate { template, labels })
            })
            .transpose()?;
        Ok(Self {
            overrides: map,
            template,
        })
    }

    /// The resource a series label stands for, if any.
    pub fn resource_for_label(&self, label: &str) -> Option<ResourceInfo> {
        if let Some(info) = self.overrides.get(label) {
            return Some(info.clone());
        }
        self.template.as_ref()?.labels.get(label).cloned()
    }

    /// The series label that holds names of `gr`'s objects, if this rule has one.
    pub fn label_for(&self, gr: &GroupResource) -> Option<String> {
        if let Some((label, _)) = self
            .overrides
            .iter()
            .find(|(_, info)| info.group_resource == *gr)
        {
            return Some(label.clone());
        }
        let t = self.template.as_ref()?;
        let info = lookup(&gr.group, &gr.resource)?;
        render(&t.template, &template_group(&info), &info.singular).ok()
    }

    /// The resources `overrides` maps to.
    pub fn override_resources(&self) -> impl Iterator<Item = &ResourceInfo> {
        self.overrides.values()
    }

    /// The labels `overrides` names.
    pub fn override_labels(&self) -> impl Iterator<Item = &str> {
        self.overrides.keys().map(String::as_str)
    }

    /// The label that holds namespace names (the one mapped to `namespaces`).
    pub fn namespace_label(&self) -> Option<String> {
        self.label_for(&GroupResource::namespaces())
    }

    /// Every resource the rule's labels can stand for, by label, for a series' label names.
    pub fn resources_of<'a>(
        &self,
        labels: impl Iterator<Item = &'a str>,
    ) -> Vec<(String, ResourceInfo)> {
        labels
            .filter_map(|l| self.resource_for_label(l).map(|info| (l.to_owned(), info)))
            .collect()
    }
}

/// `<<.Group>>` as prometheus-adapter fills it: dots and dashes become `_`.
fn template_group(info: &ResourceInfo) -> String {
    info.group_resource.group.replace(['.', '-'], "_")
}

fn render(template: &Template, group: &str, resource: &str) -> Result<String, ResourceError> {
    let mut data = Data::new();
    data.insert("Group", Value::Str(group.to_owned()));
    data.insert("Resource", Value::Str(resource.to_owned()));
    template
        .render(&data)
        .map_err(|e| ResourceError::Template(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overrides(pairs: &[(&str, &str, &str)]) -> BTreeMap<String, (String, String)> {
        pairs
            .iter()
            .map(|(l, g, r)| ((*l).to_owned(), ((*g).to_owned(), (*r).to_owned())))
            .collect()
    }

    #[test]
    fn group_resource_prints_as_kubernetes_does() {
        assert_eq!(GroupResource::parse("pods").to_string(), "pods");
        let gr = GroupResource::parse("ingresses.networking.k8s.io");
        assert_eq!(gr, GroupResource::new("networking.k8s.io", "ingresses"));
        assert_eq!(gr.to_string(), "ingresses.networking.k8s.io");
    }

    #[test]
    fn overrides_normalise_singular_to_plural() {
        let m = ResourceMapper::new(
            &overrides(&[("namespace", "", "namespace"), ("pod", "", "pod")]),
            None,
        )
        .unwrap();
        let pod = m.resource_for_label("pod").unwrap();
        assert_eq!(pod.group_resource.to_string(), "pods");
        assert_eq!((pod.kind.as_str(), pod.api_version.as_str()), ("Pod", "v1"));
        assert_eq!(m.namespace_label().as_deref(), Some("namespace"));
        assert_eq!(
            m.label_for(&GroupResource::parse("pods")).as_deref(),
            Some("pod")
        );
        assert!(m.resource_for_label("container").is_none());
    }

    #[test]
    fn custom_resource_override_is_guessed() {
        let m = ResourceMapper::new(&overrides(&[("brand", "cheese.io", "brand")]), None).unwrap();
        let info = m.resource_for_label("brand").unwrap();
        assert_eq!(info.group_resource.to_string(), "brands.cheese.io");
        assert_eq!(info.kind, "Brand");
        assert_eq!(info.api_version, "cheese.io/v1");
    }

    #[test]
    fn template_recognises_resource_labels() {
        let m = ResourceMapper::new(&BTreeMap::new(), Some("<<.Resource>>")).unwrap();
        let dep = m.resource_for_label("deployment").unwrap();
        assert_eq!(dep.group_resource.to_string(), "deployments.apps");
        assert_eq!(dep.api_version, "apps/v1");
        assert_eq!(
            m.resource_for_label("namespace").unwrap().group_resource,
            GroupResource::namespaces()
        );
        assert!(m.resource_for_label("verb").is_none());
        assert_eq!(
            m.label_for(&GroupResource::parse("pods")).as_deref(),
            Some("pod")
        );
    }

    #[test]
    fn template_with_group_prefix() {
        let m =
            ResourceMapper::new(&BTreeMap::new(), Some("kube_<<.Group>>_<<.Resource>>")).unwrap();
        let info = m.resource_for_label("kube_apps_deployment").unwrap();
        assert_eq!(info.group_resource.to_string(), "deployments.apps");
        let ing = m
            .resource_for_label("kube_networking_k8s_io_ingress")
            .unwrap();
        assert_eq!(
            ing.group_resource.to_string(),
            "ingresses.networking.k8s.io"
        );
        assert_eq!(
            m.label_for(&GroupResource::parse("deployments.apps"))
                .as_deref(),
            Some("kube_apps_deployment")
        );
        assert_eq!(
            m.label_for(&GroupResource::parse("pods")).as_deref(),
            Some("kube__pod")
        );
    }

    #[test]
    fn template_without_resource_is_an_error() {
        let e = ResourceMapper::new(&BTreeMap::new(), Some("<<.Group>>")).unwrap_err();
        assert_eq!(e, ResourceError::NoResourceField);
    }

    #[test]
    fn scopes_are_fixed_per_resource() {
        assert!(!lookup("", "namespaces").unwrap().namespaced);
        assert!(!lookup("", "node").unwrap().namespaced);
        assert!(lookup("apps", "Deployment").unwrap().namespaced);
        assert!(lookup("", "deployments").is_none());
    }
}
