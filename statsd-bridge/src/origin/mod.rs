//! Origin detection: which pod sent a datagram, as labels added to its series.
//!
//! In a DaemonSet, Prometheus scrapes the bridge, so nothing in the scrape says which pod
//! sent a line; the HPA's Pods metrics need exactly that. The sender is known from the
//! socket: a UDP/TCP source IP (→ the pod with that IP), a unix socket peer's PID (→ its
//! cgroup → container ID → pod), or the line's DogStatsD `|c:` field (→ container → pod).
//!
//! - [`index`]: the node's pods, by IP, container ID and UID (pure).
//! - [`cgroup`]: container IDs from cgroup paths and `|c:` values (pure).
//! - [`table`]: the static address → labels table (pure).
//! - [`host`]: reads `/proc/<pid>/cgroup` and the cgroup tree.
//! - [`kube`]: the kube-rs watch of this node's pods that feeds the index.

pub mod cgroup;
pub mod host;
pub mod index;
pub mod kube;
pub mod table;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use cgroup::{CgroupOwner, ContainerRef};
use host::Host;
use index::PodIndex;
use table::StaticTable;

/// The labels a sender's series get, e.g. `namespace`, `pod`, `app`.
pub type OriginLabels = Arc<[(String, String)]>;

/// Who sent a datagram, as the socket tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sender {
    /// Nothing known (a unix socket without credentials, tests).
    Unknown,
    /// A UDP or TCP source address.
    Ip(IpAddr),
    /// A unix socket peer's process ID (`SCM_CREDENTIALS`).
    Pid(i32),
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The sender's labels.
    Hit(OriginLabels),
    /// Nothing known of the sender.
    Miss,
    /// The node's own address: a host-network pod, which can't be told apart by IP.
    HostNetwork,
}

impl Lookup {
    fn labels(&self) -> Option<OriginLabels> {
        match self {
            Self::Hit(l) => Some(Arc::clone(l)),
            Self::Miss | Self::HostNetwork => None,
        }
    }

    /// The `outcome` label value.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Hit(_) => Outcome::Hit,
            Self::Miss => Outcome::Miss,
            Self::HostNetwork => Outcome::HostNetwork,
        }
    }
}

/// How a lookup went, for the self-metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Labels found.
    Hit,
    /// Nothing found.
    Miss,
    /// The node's address.
    HostNetwork,
}

impl Outcome {
    /// Every outcome, in `index` order.
    pub const ALL: [Outcome; 3] = [Self::Hit, Self::Miss, Self::HostNetwork];

    /// The `outcome` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::HostNetwork => "host_network",
        }
    }
}

/// What a lookup started from, for the self-metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A UDP/TCP source IP.
    Ip,
    /// A unix socket peer's PID.
    Uds,
    /// A line's `|c:` field.
    ContainerId,
}

impl Source {
    /// Every source, in `index` order.
    pub const ALL: [Source; 3] = [Self::Ip, Self::Uds, Self::ContainerId];

    /// The `source` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::Uds => "uds",
            Self::ContainerId => "container_id",
        }
    }
}

/// Lookups by (source, outcome), counted per thread and flushed into the self-metrics.
pub type LookupCounts = [[u64; 3]; 3];

/// The label names origin detection writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelNames {
    namespace: String,
    pod: String,
    /// (pod label key, label name it becomes).
    pod_labels: Vec<(String, String)>,
}

impl LabelNames {
    /// Names as configured; pod label keys are sanitized into label names
    /// (`app.kubernetes.io/name` → `app_kubernetes_io_name`).
    pub fn new(namespace: &str, pod: &str, pod_labels: &[String]) -> Self {
        Self {
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
            pod_labels: pod_labels
                .iter()
                .map(|k| (k.clone(), common::prom::sanitize_name(k).into_owned()))
                .collect(),
        }
    }

    /// The pod label keys a [`index::PodRecord`] keeps.
    pub fn pod_label_keys(&self) -> impl Iterator<Item = &str> {
        self.pod_labels.iter().map(|(k, _)| k.as_str())
    }

    /// The namespace label's name.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The pod label's name.
    pub fn pod(&self) -> &str {
        &self.pod
    }

    fn labels_of(&self, pod: &index::PodRecord) -> OriginLabels {
        let mut labels = vec![
            (self.namespace.clone(), pod.namespace.clone()),
            (self.pod.clone(), pod.name.clone()),
        ];
        for (key, name) in &self.pod_labels {
            if let Some((_, v)) = pod.labels.iter().find(|(k, _)| k == key) {
                labels.push((name.clone(), v.clone()));
            }
        }
        labels.into()
    }
}

/// Where the senders' labels come from.
#[derive(Debug, Clone)]
pub enum Mode {
    /// No origin labels.
    Off,
    /// The config's address table.
    Static(StaticTable),
    /// A watch of this node's pods.
    Kubernetes {
        /// The node whose pods are watched.
        node: String,
        /// A kubeconfig file; `None`: the in-cluster config.
        kubeconfig: Option<PathBuf>,
    },
}

/// Origin detection's settings, resolved from `[bridge.origin]` and the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where labels come from.
    pub mode: Mode,
    /// Label names.
    pub names: LabelNames,
    /// How long a deleted pod's series stay.
    pub pod_ttl: Duration,
    /// The sender's labels win over a line's tags of the same name.
    pub origin_wins: bool,
    /// Where `<pid>/cgroup` files are read.
    pub proc_root: PathBuf,
    /// The cgroup tree, for `|c:in-<inode>`.
    pub cgroup_root: PathBuf,
    /// How long listeners wait for the first pod list.
    pub sync_timeout: Duration,
}

impl Settings {
    /// Origin detection off.
    pub fn off() -> Self {
        Self {
            mode: Mode::Off,
            names: LabelNames::new("namespace", "pod", &[]),
            pod_ttl: Duration::from_secs(300),
            origin_wins: false,
            proc_root: PathBuf::from("/proc"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            sync_timeout: Duration::from_secs(30),
        }
    }
}

/// The pod index and its state, shared by the watcher and every listener.
#[derive(Debug)]
pub struct Pods {
    index: RwLock<PodIndex>,
    generation: AtomicU64,
    synced: AtomicBool,
}

impl Pods {
    /// Changes the index; listeners' caches see a change that matters to lookups at their
    /// next datagram (and keep their caches otherwise).
    pub fn update<R>(&self, change: impl FnOnce(&mut PodIndex) -> R) -> R {
        let mut index = self
            .index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let r = change(&mut index);
        self.generation.store(index.version(), Ordering::Release);
        r
    }

    fn read<R>(&self, f: impl FnOnce(&PodIndex) -> R) -> R {
        let index = self
            .index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&index)
    }

    /// Pods in the index.
    pub fn len(&self) -> usize {
        self.read(PodIndex::len)
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks the first full list as applied.
    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    /// Whether the first full list has been applied.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
enum Labeller {
    Off,
    Static(StaticTable),
    Pods(Box<Pods>),
}

/// Origin detection as every listener uses it.
#[derive(Debug)]
pub struct Origin {
    labeller: Labeller,
    names: LabelNames,
    origin_wins: bool,
    host: Host,
}

impl Origin {
    /// Origin detection as `settings` say; in Kubernetes mode the index starts empty and
    /// unsynced until [`kube::watch_pods`] fills it.
    pub fn new(settings: &Settings) -> Self {
        let labeller = match &settings.mode {
            Mode::Off => Labeller::Off,
            Mode::Static(table) => Labeller::Static(table.clone()),
            Mode::Kubernetes { .. } => Labeller::Pods(Box::new(Pods {
                index: RwLock::new(PodIndex::new(settings.names.clone(), settings.pod_ttl)),
                generation: AtomicU64::new(0),
                synced: AtomicBool::new(false),
            })),
        };
        Self {
            labeller,
            names: settings.names.clone(),
            origin_wins: settings.origin_wins,
            host: Host::new(settings.proc_root.clone(), settings.cgroup_root.clone()),
        }
    }

    /// No origin detection.
    pub fn off() -> Self {
        Self::new(&Settings::off())
    }

    /// Whether any labels can come from here.
    pub fn is_enabled(&self) -> bool {
        !matches!(self.labeller, Labeller::Off)
    }

    /// The pod index, in Kubernetes mode.
    pub fn pods(&self) -> Option<&Pods> {
        match &self.labeller {
            Labeller::Pods(p) => Some(p),
            _ => None,
        }
    }

    /// Whether the labels are ready to use (always, but in Kubernetes mode before the first
    /// pod list).
    pub fn ready(&self) -> bool {
        self.pods().is_none_or(Pods::synced)
    }

    /// The label names.
    pub fn names(&self) -> &LabelNames {
        &self.names
    }

    /// Whether origin labels win over a line's tags.
    pub fn origin_wins(&self) -> bool {
        self.origin_wins
    }

    /// Deleted pods whose series are due to go, as `(namespace, pod)`.
    pub fn take_expired(&self, now: Instant) -> Vec<(String, String)> {
        self.pods()
            .map(|p| p.update(|index| index.take_expired(now)))
            .unwrap_or_default()
    }

    fn generation(&self) -> u64 {
        self.pods()
            .map_or(0, |p| p.generation.load(Ordering::Acquire))
    }

    fn lookup_ip(&self, ip: IpAddr) -> Lookup {
        match &self.labeller {
            Labeller::Off => Lookup::Miss,
            Labeller::Static(table) => table
                .lookup(ip)
                .map_or(Lookup::Miss, |l| Lookup::Hit(Arc::clone(l))),
            Labeller::Pods(pods) => pods.read(|index| index.lookup_ip(ip)),
        }
    }

    fn lookup_owner(&self, owner: &CgroupOwner) -> Lookup {
        let Some(pods) = self.pods() else {
            return Lookup::Miss;
        };
        pods.read(|index| {
            let by_container = owner
                .container_id
                .as_deref()
                .map_or(Lookup::Miss, |id| index.lookup_container(id));
            match (by_container, owner.pod_uid.as_deref()) {
                // The container may not be in the pod's status yet; its pod is.
                (Lookup::Miss, Some(uid)) => index.lookup_uid(uid),
                (found, _) => found,
            }
        })
    }

    /// A per-thread view with its caches.
    pub fn cursor(self: &Arc<Self>) -> Cursor {
        Cursor {
            origin: Arc::clone(self),
            generation: u64::MAX,
            ips: HashMap::new(),
            containers: HashMap::new(),
            pids: HashMap::new(),
            counts: LookupCounts::default(),
        }
    }
}

/// A listener thread's view of [`Origin`]: lookups are cached until the pod index changes,
/// so the common case (the same few senders, no pod change) costs a hash lookup per
/// datagram and no lock.
#[derive(Debug)]
pub struct Cursor {
    origin: Arc<Origin>,
    generation: u64,
    ips: HashMap<IpAddr, Lookup>,
    containers: HashMap<Box<str>, Lookup>,
    pids: HashMap<i32, (CgroupOwner, Instant)>,
    counts: LookupCounts,
}

/// Entries a cursor cache holds before it starts over.
const CACHE_MAX: usize = 4096;

/// How long a PID's cgroup is trusted: PIDs are reused, and a container's first packets may
/// come before its cgroup settles.
const PID_TTL: Duration = Duration::from_secs(5);

impl Cursor {
    fn refresh(&mut self) {
        let generation = self.origin.generation();
        if generation != self.generation {
            self.generation = generation;
            self.ips.clear();
            self.containers.clear();
        }
    }

    fn count(&mut self, source: Source, outcome: Outcome) {
        if let Some(n) = self
            .counts
            .get_mut(source as usize)
            .and_then(|row| row.get_mut(outcome as usize))
        {
            *n += 1;
        }
    }

    /// The labels of a datagram's sender.
    pub fn sender(&mut self, sender: Sender, now: Instant) -> Option<OriginLabels> {
        if !self.origin.is_enabled() {
            return None;
        }
        self.refresh();
        let (source, found) = match sender {
            Sender::Unknown => return None,
            Sender::Ip(ip) => {
                let found = match self.ips.get(&ip) {
                    Some(l) => l.clone(),
                    None => {
                        let l = self.origin.lookup_ip(ip);
                        if self.ips.len() >= CACHE_MAX {
                            self.ips.clear();
                        }
                        self.ips.insert(ip, l.clone());
                        l
                    }
                };
                (Source::Ip, found)
            }
            Sender::Pid(pid) => (Source::Uds, self.pid(pid, now)),
        };
        self.count(source, found.outcome());
        found.labels()
    }

    fn pid(&mut self, pid: i32, now: Instant) -> Lookup {
        if self.origin.pods().is_none() {
            return Lookup::Miss;
        }
        let cached = self
            .pids
            .get(&pid)
            .filter(|(_, at)| now.saturating_duration_since(*at) < PID_TTL)
            .map(|(o, _)| o.clone());
        let owner = match cached {
            Some(o) => o,
            None => {
                let o = self.origin.host.owner_of_pid(pid).unwrap_or_default();
                if self.pids.len() >= CACHE_MAX {
                    self.pids.clear();
                }
                self.pids.insert(pid, (o.clone(), now));
                o
            }
        };
        self.origin.lookup_owner(&owner)
    }

    /// The labels of the container a line's `|c:` field names; `None` when it names none we
    /// know (the datagram's sender then stands).
    pub fn container(&mut self, field: &str) -> Option<OriginLabels> {
        self.origin.pods()?;
        self.refresh();
        let found = match self.containers.get(field) {
            Some(l) => l.clone(),
            None => {
                let l = match ContainerRef::parse(field) {
                    Some(ContainerRef::Id(id)) => self.origin.lookup_owner(&CgroupOwner {
                        container_id: Some(cgroup::bare_container_id(id)),
                        pod_uid: None,
                    }),
                    Some(ContainerRef::Inode(inode)) => self
                        .origin
                        .host
                        .owner_of_inode(inode)
                        .map_or(Lookup::Miss, |o| self.origin.lookup_owner(&o)),
                    None => Lookup::Miss,
                };
                if self.containers.len() >= CACHE_MAX {
                    self.containers.clear();
                }
                self.containers.insert(field.into(), l.clone());
                l
            }
        };
        self.count(Source::ContainerId, found.outcome());
        found.labels()
    }

    /// The pod index generation the cursor's answers are from (as of its last lookup).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The lookups counted since the last call.
    pub fn take_counts(&mut self) -> LookupCounts {
        std::mem::take(&mut self.counts)
    }
}

#[cfg(test)]
mod tests {
    use super::index::PodRecord;
    use super::*;
    use crate::aggregate::{Store, StoreConfig};
    use crate::ingest::{Worker, ingest_line};
    use crate::protocol::ParseOptions;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn settings(mode: Mode, origin_wins: bool) -> Settings {
        Settings {
            mode,
            names: LabelNames::new("namespace", "pod", &["app".to_owned()]),
            origin_wins,
            ..Settings::off()
        }
    }

    fn kube() -> Mode {
        Mode::Kubernetes {
            node: "n".to_owned(),
            kubeconfig: None,
        }
    }

    fn pod(uid: &str, name: &str, ip: &str) -> PodRecord {
        PodRecord {
            uid: uid.to_owned(),
            namespace: "shop".to_owned(),
            name: name.to_owned(),
            ips: vec![ip.parse().unwrap()],
            labels: vec![("app".to_owned(), "web".to_owned())],
            containers: vec![ID.to_owned()],
            ..PodRecord::default()
        }
    }

    /// Ingests `lines` as one datagram from `sender` and returns the series keys, rendered
    /// `name{k=v,…}`.
    fn ingest(origin: &Arc<Origin>, sender: Sender, lines: &[&str]) -> Vec<String> {
        let store = Store::new(StoreConfig::default(), []);
        let mut worker = Worker::unmapped(store.config()).with_origin(origin);
        let now = Instant::now();
        worker.set_sender(sender, now);
        for line in lines {
            ingest_line(
                &store,
                line.as_bytes(),
                &ParseOptions::default(),
                &mut worker,
                now,
            );
        }
        store
            .snapshot(now)
            .series
            .iter()
            .map(|s| {
                let labels: Vec<String> = s.labels().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{}{{{}}}", s.name(), labels.join(","))
            })
            .collect()
    }

    #[test]
    fn a_senders_pod_labels_every_line_of_its_datagram() {
        let origin = Arc::new(Origin::new(&settings(kube(), false)));
        let pods = origin.pods().unwrap();
        pods.update(|i| i.upsert(pod("u1", "web-1", "10.1.0.11")));
        let from = Sender::Ip("10.1.0.11".parse().unwrap());
        assert_eq!(
            ingest(&origin, from, &["a:1|c|#route:/x", "b:2|g", "_e{1,1}:t|x"]),
            [
                "a{app=web,namespace=shop,pod=web-1,route=/x}",
                "b{app=web,namespace=shop,pod=web-1}",
                "statsd_events_total{alert_type=info,app=web,namespace=shop,pod=web-1}",
            ]
        );
        // Unknown senders and unknown sockets get nothing.
        let nobody = Sender::Ip("10.1.0.99".parse().unwrap());
        assert_eq!(ingest(&origin, nobody, &["a:1|c"]), ["a{}"]);
        assert_eq!(ingest(&origin, Sender::Unknown, &["a:1|c"]), ["a{}"]);
    }

    #[test]
    fn tags_win_by_default_and_origin_wins_when_asked() {
        let table = StaticTable::new(vec![(
            table::Cidr::parse("10.0.0.0/8").unwrap(),
            Arc::from(vec![("pod".to_owned(), "from-table".to_owned())]),
        )]);
        let from = Sender::Ip("10.9.9.9".parse().unwrap());
        let tags_win = Arc::new(Origin::new(&settings(Mode::Static(table.clone()), false)));
        assert_eq!(
            ingest(&tags_win, from, &["a:1|c|#pod:mine"]),
            ["a{pod=mine}"]
        );
        let origin_wins = Arc::new(Origin::new(&settings(Mode::Static(table), true)));
        assert_eq!(
            ingest(&origin_wins, from, &["a:1|c|#pod:mine"]),
            ["a{pod=from-table}"]
        );
    }

    #[test]
    fn a_known_container_field_names_the_line_and_only_it() {
        let origin = Arc::new(Origin::new(&settings(kube(), false)));
        origin.pods().unwrap().update(|i| {
            i.upsert(pod("u1", "web-1", "10.1.0.11"));
            i.upsert(PodRecord {
                containers: vec!["f".repeat(64)],
                ..pod("u2", "worker-0", "10.1.0.12")
            });
        });
        let from = Sender::Ip("10.1.0.12".parse().unwrap());
        let keys = ingest(
            &origin,
            from,
            &[
                &format!("a:1|c|c:ci-{ID}"),
                "b:1|c",
                "c:1|c|c:ci-unknown",
                &format!("d:1|c|c:containerd://{}", ID.to_ascii_uppercase()),
            ],
        );
        assert_eq!(
            keys,
            [
                "a{app=web,namespace=shop,pod=web-1}",
                "b{app=web,namespace=shop,pod=worker-0}",
                "c{app=web,namespace=shop,pod=worker-0}",
                "d{app=web,namespace=shop,pod=web-1}",
            ]
        );
    }

    /// `|c:in-<inode>` (DogStatsD 1.4, cgroup v2) names the sender's cgroup directory by its
    /// inode: the walk of the cgroup tree finds its container, or its pod when the container
    /// isn't in the pod's status yet; anything else leaves the datagram's sender standing.
    #[test]
    fn a_cgroup_inode_field_names_the_container_or_its_pod() {
        use std::os::unix::fs::MetadataExt;
        const UID: &str = "3c1f6f5e-8a5e-4f1b-9e0d-2b7c5a9e4d21";
        let root = tempfile::tempdir().unwrap();
        let pod_dir = root.path().join(format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            UID.replace('-', "_")
        ));
        let known = pod_dir.join(format!("cri-containerd-{ID}.scope"));
        let not_in_status = pod_dir.join(format!("cri-containerd-{}.scope", "e".repeat(64)));
        let not_a_pod = root.path().join("system.slice/containerd.service");
        for dir in [&known, &not_in_status, &not_a_pod] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let inode = |dir: &std::path::Path| std::fs::metadata(dir).unwrap().ino();
        let origin = Arc::new(Origin::new(&Settings {
            cgroup_root: root.path().to_owned(),
            ..settings(kube(), false)
        }));
        origin.pods().unwrap().update(|i| {
            i.upsert(pod(UID, "web-1", "10.1.0.11"));
            i.upsert(PodRecord {
                containers: vec!["f".repeat(64)],
                ..pod("u2", "worker-0", "10.1.0.12")
            });
        });
        let cases = [
            (format!("a:1|c|c:in-{}", inode(&known)), "web-1"),
            (format!("b:1|c|c:in-{}", inode(&not_in_status)), "web-1"),
            (format!("c:1|c|c:in-{}", inode(&pod_dir)), "web-1"),
            (format!("d:1|c|c:in-{}", inode(&not_a_pod)), "worker-0"),
            (format!("e:1|c|c:in-{}", u64::MAX), "worker-0"),
            ("f:1|c|c:in-x".to_owned(), "worker-0"),
        ];
        let lines: Vec<&str> = cases.iter().map(|(l, _)| l.as_str()).collect();
        let want: Vec<String> = cases
            .iter()
            .map(|(l, pod)| format!("{}{{app=web,namespace=shop,pod={pod}}}", &l[..1]))
            .collect();
        let from = Sender::Ip("10.1.0.12".parse().unwrap());
        assert_eq!(ingest(&origin, from, &lines), want);
    }

    #[test]
    fn cursors_see_index_changes_and_count_lookups() {
        let origin = Arc::new(Origin::new(&settings(kube(), false)));
        let pods = origin.pods().unwrap();
        let mut cursor = origin.cursor();
        let from = Sender::Ip("10.1.0.11".parse().unwrap());
        let now = Instant::now();
        assert_eq!(cursor.sender(from, now), None);
        pods.update(|i| i.upsert(pod("u1", "web-1", "10.1.0.11")));
        assert!(
            cursor.sender(from, now).is_some(),
            "the cache must follow the index"
        );
        pods.update(|i| i.remove("u1", now));
        assert_eq!(cursor.sender(from, now), None);
        let counts = cursor.take_counts();
        assert_eq!(counts[Source::Ip as usize][Outcome::Hit as usize], 1);
        assert_eq!(counts[Source::Ip as usize][Outcome::Miss as usize], 2);
        assert_eq!(cursor.take_counts(), LookupCounts::default());
        assert!(!origin.ready(), "not ready before the first list");
        pods.mark_synced();
        assert!(origin.ready());
    }

    #[test]
    fn off_costs_nothing_and_labels_nothing() {
        let origin = Arc::new(Origin::off());
        assert!(!origin.is_enabled() && origin.ready());
        let mut cursor = origin.cursor();
        assert_eq!(
            cursor.sender(Sender::Ip("10.0.0.1".parse().unwrap()), Instant::now()),
            None
        );
        assert_eq!(cursor.take_counts(), LookupCounts::default());
        assert!(origin.take_expired(Instant::now()).is_empty());
    }
}
