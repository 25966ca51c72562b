//! The node's pods, indexed by what a sender shows of itself: its IP, its container ID, its
//! pod UID. Pure: the watcher in [`super::kube`] feeds it, time is passed in.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{LabelNames, Lookup, OriginLabels};

/// What the index needs of a pod (from a `v1.Pod`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodRecord {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `status.podIPs` (or `status.podIP`).
    pub ips: Vec<IpAddr>,
    /// `status.hostIP(s)`.
    pub host_ips: Vec<IpAddr>,
    /// `spec.hostNetwork`: its IP is the node's, shared by every host-network pod.
    pub host_network: bool,
    /// Bare container IDs of every container, init and ephemeral ones included.
    pub containers: Vec<String>,
    /// `metadata.labels`, only the keys the config copies.
    pub labels: Vec<(String, String)>,
    /// Phase `Succeeded` or `Failed`: its IP may already be another pod's.
    pub finished: bool,
    /// `metadata.creationTimestamp` in Unix seconds: of two live pods with one IP (a
    /// moment in a rollout), the newer has it.
    pub created: i64,
}

#[derive(Debug)]
struct Entry {
    record: PodRecord,
    labels: OriginLabels,
}

/// The pods of one node and where their series go when they are deleted.
#[derive(Debug)]
pub struct PodIndex {
    names: LabelNames,
    pod_ttl: Duration,
    pods: HashMap<String, Entry>,
    by_ip: HashMap<IpAddr, String>,
    by_container: HashMap<String, String>,
    host_ips: HashSet<IpAddr>,
    /// (namespace, name) of deleted pods → when their series go.
    expiring: BTreeMap<(String, String), Instant>,
    /// Bumped whenever a lookup's answer may have changed (not for the expiry schedule, nor
    /// for a pod update that changes nothing kept here, such as its readiness).
    version: u64,
}

impl PodIndex {
    /// An empty index naming labels as `names` says.
    pub fn new(names: LabelNames, pod_ttl: Duration) -> Self {
        Self {
            names,
            pod_ttl,
            pods: HashMap::new(),
            by_ip: HashMap::new(),
            by_container: HashMap::new(),
            host_ips: HashSet::new(),
            expiring: BTreeMap::new(),
            version: 0,
        }
    }

    /// Changes when a lookup's answer may have changed.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Pods indexed.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// Whether no pod is indexed.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// Deleted pods whose series haven't expired yet.
    pub fn expiring(&self) -> usize {
        self.expiring.len()
    }

    /// Adds or replaces a pod.
    pub fn upsert(&mut self, record: PodRecord) {
        // A pod back under the same name (a StatefulSet's) keeps its series.
        self.expiring
            .remove(&(record.namespace.clone(), record.name.clone()));
        // Most pod updates are status changes this index doesn't keep.
        if self
            .pods
            .get(&record.uid)
            .is_some_and(|e| e.record == record)
        {
            return;
        }
        let labels = self.names.labels_of(&record);
        self.pods
            .insert(record.uid.clone(), Entry { record, labels });
        self.rebuild();
    }

    /// Removes a pod; its series expire `pod_ttl` after `now`.
    pub fn remove(&mut self, uid: &str, now: Instant) {
        if let Some(gone) = self.pods.remove(uid) {
            self.schedule_expiry(gone.record, now);
            self.rebuild();
        }
    }

    /// Replaces every pod with a fresh list; pods missing from it count as deleted.
    pub fn replace_all(&mut self, records: Vec<PodRecord>, now: Instant) {
        let mut fresh: HashMap<String, Entry> = HashMap::with_capacity(records.len());
        for record in records {
            self.expiring
                .remove(&(record.namespace.clone(), record.name.clone()));
            let labels = self.names.labels_of(&record);
            fresh.insert(record.uid.clone(), Entry { record, labels });
        }
        let old = std::mem::replace(&mut self.pods, fresh);
        for (uid, gone) in old {
            if !self.pods.contains_key(&uid) {
                self.schedule_expiry(gone.record, now);
            }
        }
        self.rebuild();
    }

    fn schedule_expiry(&mut self, record: PodRecord, now: Instant) {
        let same_name_lives = self
            .pods
            .values()
            .any(|e| e.record.namespace == record.namespace && e.record.name == record.name);
        if !same_name_lives {
            self.expiring
                .insert((record.namespace, record.name), now + self.pod_ttl);
        }
    }

    /// The deleted pods whose series are due to go, as `(namespace, name)`, removed from
    /// the schedule.
    pub fn take_expired(&mut self, now: Instant) -> Vec<(String, String)> {
        let due: Vec<(String, String)> = self
            .expiring
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &due {
            self.expiring.remove(k);
        }
        due
    }

    /// The pod that sends from `ip`.
    pub fn lookup_ip(&self, ip: IpAddr) -> Lookup {
        let ip = ip.to_canonical();
        if let Some(entry) = self.by_ip.get(&ip).and_then(|uid| self.pods.get(uid)) {
            return Lookup::Hit(Arc::clone(&entry.labels));
        }
        if self.host_ips.contains(&ip) {
            return Lookup::HostNetwork;
        }
        Lookup::Miss
    }

    /// The pod running the container with this bare ID.
    pub fn lookup_container(&self, id: &str) -> Lookup {
        self.hit(self.by_container.get(id))
    }

    /// The pod with this UID.
    pub fn lookup_uid(&self, uid: &str) -> Lookup {
        self.hit(self.pods.contains_key(uid).then_some(uid))
    }

    fn hit(&self, uid: Option<&(impl AsRef<str> + ?Sized)>) -> Lookup {
        match uid.and_then(|u| self.pods.get(u.as_ref())) {
            Some(entry) => Lookup::Hit(Arc::clone(&entry.labels)),
            None => Lookup::Miss,
        }
    }

    /// Rebuilds the lookups from the pods: at most the ~110 pods of a node, and changes are
    /// rare next to lookups, so this is simpler than keeping each map right under every
    /// change (IP reuse, a pod moving to host network, a container restart).
    fn rebuild(&mut self) {
        self.version += 1;
        self.by_ip.clear();
        self.by_container.clear();
        self.host_ips.clear();
        let mut owners: HashMap<IpAddr, (bool, i64, &str)> = HashMap::new();
        for (uid, e) in &self.pods {
            let r = &e.record;
            self.host_ips
                .extend(r.host_ips.iter().map(|ip| ip.to_canonical()));
            for c in &r.containers {
                self.by_container.insert(c.clone(), uid.clone());
            }
            if r.host_network {
                self.host_ips
                    .extend(r.ips.iter().map(|ip| ip.to_canonical()));
                continue;
            }
            for ip in &r.ips {
                // A live pod beats a finished one; then the newer; then the UID, so the
                // answer doesn't depend on the map's order.
                let claim = (!r.finished, r.created, uid.as_str());
                let owner = owners.entry(ip.to_canonical()).or_insert(claim);
                if claim > *owner {
                    *owner = claim;
                }
            }
        }
        self.by_ip = owners
            .into_iter()
            .map(|(ip, (_, _, uid))| (ip, uid.to_owned()))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> LabelNames {
        LabelNames::new("namespace", "pod", &["app".to_owned()])
    }

    fn pod(uid: &str, name: &str, ip: &str) -> PodRecord {
        PodRecord {
            uid: uid.to_owned(),
            namespace: "shop".to_owned(),
            name: name.to_owned(),
            ips: vec![ip.parse().unwrap()],
            host_ips: vec!["10.0.0.1".parse().unwrap()],
            labels: vec![("app".to_owned(), "web".to_owned())],
            containers: vec![format!("c-{uid}")],
            created: 100,
            ..PodRecord::default()
        }
    }

    fn pod_of(l: Lookup) -> Option<String> {
        match l {
            Lookup::Hit(labels) => labels
                .iter()
                .find(|(k, _)| k == "pod")
                .map(|(_, v)| v.clone()),
            _ => None,
        }
    }

    #[test]
    fn lookups_by_ip_container_and_uid() {
        let mut index = PodIndex::new(names(), Duration::from_secs(60));
        index.upsert(pod("u1", "web-1", "10.1.0.11"));
        index.upsert(pod("u2", "web-2", "10.1.0.12"));
        assert_eq!(index.len(), 2);
        let Lookup::Hit(labels) = index.lookup_ip("10.1.0.11".parse().unwrap()) else {
            panic!("miss");
        };
        assert_eq!(
            labels.to_vec(),
            [("namespace", "shop"), ("pod", "web-1"), ("app", "web")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(
            pod_of(index.lookup_ip("::ffff:10.1.0.12".parse().unwrap())).as_deref(),
            Some("web-2")
        );
        assert_eq!(
            pod_of(index.lookup_container("c-u2")).as_deref(),
            Some("web-2")
        );
        assert_eq!(pod_of(index.lookup_uid("u1")).as_deref(), Some("web-1"));
        assert_eq!(index.lookup_ip("10.1.0.99".parse().unwrap()), Lookup::Miss);
        assert_eq!(
            index.lookup_ip("10.0.0.1".parse().unwrap()),
            Lookup::HostNetwork
        );
        assert_eq!(index.lookup_container("nope"), Lookup::Miss);
    }

    #[test]
    fn only_changes_that_matter_to_lookups_move_the_version() {
        let mut index = PodIndex::new(names(), Duration::from_secs(60));
        let t0 = Instant::now();
        index.upsert(pod("u1", "web-1", "10.1.0.11"));
        let v = index.version();
        index.upsert(pod("u1", "web-1", "10.1.0.11")); // a readiness change, say
        assert_eq!(index.version(), v);
        index.remove("u1", t0);
        assert!(index.version() > v);
        let v = index.version();
        assert!(index.take_expired(t0 + Duration::from_secs(60)).len() == 1);
        assert_eq!(index.version(), v, "the expiry schedule is not looked up");
    }

    #[test]
    fn host_network_pods_get_no_labels() {
        let mut index = PodIndex::new(names(), Duration::from_secs(60));
        let mut agent = pod("u9", "agent", "10.0.0.1");
        agent.host_network = true;
        index.upsert(agent);
        assert_eq!(
            index.lookup_ip("10.0.0.1".parse().unwrap()),
            Lookup::HostNetwork
        );
        // Its containers are still known: over UDS, or with |c:, it can be told apart.
        assert_eq!(
            pod_of(index.lookup_container("c-u9")).as_deref(),
            Some("agent")
        );
    }

    #[test]
    fn an_ip_moves_with_its_pod_and_reuse_goes_to_the_live_newer_pod() {
        let mut index = PodIndex::new(names(), Duration::from_secs(60));
        let now = Instant::now();
        index.upsert(pod("u1", "web-1", "10.1.0.11"));
        // The IP changes (a sandbox restart).
        index.upsert(pod("u1", "web-1", "10.1.0.21"));
        assert_eq!(index.lookup_ip("10.1.0.11".parse().unwrap()), Lookup::Miss);
        assert_eq!(
            pod_of(index.lookup_ip("10.1.0.21".parse().unwrap())).as_deref(),
            Some("web-1")
        );
        // A finished pod keeps its IP in its status, which a new pod already uses.
        let mut done = pod("u0", "job-0", "10.1.0.30");
        done.finished = true;
        done.created = 500;
        index.upsert(done);
        index.upsert(pod("u3", "web-3", "10.1.0.30"));
        assert_eq!(
            pod_of(index.lookup_ip("10.1.0.30".parse().unwrap())).as_deref(),
            Some("web-3")
        );
        // Two live pods: the newer wins, whichever came first.
        let mut newer = pod("u4", "web-4", "10.1.0.30");
        newer.created = 200;
        index.upsert(newer);
        assert_eq!(
            pod_of(index.lookup_ip("10.1.0.30".parse().unwrap())).as_deref(),
            Some("web-4")
        );
        // Deleting the newer gives the IP back to the other.
        index.remove("u4", now);
        assert_eq!(
            pod_of(index.lookup_ip("10.1.0.30".parse().unwrap())).as_deref(),
            Some("web-3")
        );
    }

    #[test]
    fn deleted_pods_expire_after_the_ttl_unless_they_come_back() {
        let ttl = Duration::from_secs(300);
        let mut index = PodIndex::new(names(), ttl);
        let t0 = Instant::now();
        index.upsert(pod("u1", "web-1", "10.1.0.11"));
        index.upsert(pod("u2", "db-0", "10.1.0.12"));
        index.remove("u1", t0);
        index.remove("u2", t0);
        index.remove("never-seen", t0);
        assert_eq!(index.lookup_ip("10.1.0.11".parse().unwrap()), Lookup::Miss);
        assert_eq!(index.expiring(), 2);
        // db-0 is a StatefulSet pod: back under its name, with a new UID.
        index.upsert(pod("u2b", "db-0", "10.1.0.13"));
        assert!(index.take_expired(t0 + ttl / 2).is_empty());
        assert_eq!(
            index.take_expired(t0 + ttl),
            vec![("shop".to_owned(), "web-1".to_owned())]
        );
        assert_eq!(index.expiring(), 0);
    }

    #[test]
    fn a_relist_deletes_what_it_no_longer_has() {
        let mut index = PodIndex::new(names(), Duration::from_secs(1));
        let t0 = Instant::now();
        index.upsert(pod("u1", "web-1", "10.1.0.11"));
        index.upsert(pod("u2", "web-2", "10.1.0.12"));
        index.replace_all(
            vec![
                pod("u2", "web-2", "10.1.0.12"),
                pod("u3", "web-3", "10.1.0.13"),
            ],
            t0,
        );
        assert_eq!(index.len(), 2);
        assert_eq!(index.lookup_ip("10.1.0.11".parse().unwrap()), Lookup::Miss);
        assert_eq!(
            pod_of(index.lookup_ip("10.1.0.13".parse().unwrap())).as_deref(),
            Some("web-3")
        );
        assert_eq!(index.take_expired(t0 + Duration::from_secs(1)).len(), 1);
    }
}
