//! Pod churn leaves no memory behind, measured exactly: this binary's allocator counts the
//! heap bytes in use, so what the pod index, the store and a listener's worker keep after
//! thousands of pods came, sent and went can be compared with the level before any churn.
//! The process' RSS can't bound that honestly (the allocator keeps freed pages, and a
//! kilobyte per pod is lost in them), which is why `tests/origin.rs` checks only counts.
#![allow(unsafe_code)] // the counting allocator

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use statsd_bridge::aggregate::{Store, StoreConfig};
use statsd_bridge::ingest::{Ingester, defaults_of};
use statsd_bridge::mapping::{Mapper, MapperHandle};
use statsd_bridge::origin::index::PodRecord;
use statsd_bridge::origin::{self, Origin, Sender};
use statsd_bridge::protocol::ParseOptions;
use statsd_bridge::telemetry::{Telemetry, Transport};

/// Heap bytes in use (as requested; the allocator's own overhead is not counted).
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is
// added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with this layout.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Pods alive at once (a round's) and rounds: a leak grows with every pod churned
/// (20,000), what the hash tables keep of their peak size only with the pods alive at once.
const PODS: usize = 200;
const ROUNDS: usize = 100;

/// Pod names as long as Kubernetes allows (a DNS subdomain), so anything kept of a pod that
/// holds its name (its index entry and labels, its series' keys, its expiry entry) costs at
/// least this much per churned pod: 5 MB for all of them.
const NAME_LEN: usize = 253;

/// What may stay: the hash tables' capacity at their peak (0.22 MiB measured with the store's
/// 8 shards of a 2-core machine; the 256 of a 64-core one keep about 0.2 MiB more).
const KEPT_MAX: isize = 2 << 20;

#[test]
fn pod_churn_returns_the_heap_to_its_level_before_any_churn() {
    let pod_ttl = Duration::from_secs(60);
    let origin = Arc::new(Origin::new(&origin::Settings {
        mode: origin::Mode::Kubernetes {
            node: "n".to_owned(),
            kubeconfig: None,
        },
        names: origin::LabelNames::new("namespace", "pod", &["app".to_owned()]),
        pod_ttl,
        ..origin::Settings::off()
    }));
    let store = Arc::new(Store::new(StoreConfig::default(), []));
    let mapper = Arc::new(MapperHandle::new(Mapper::without_rules(&defaults_of(
        store.config(),
    ))));
    let ingester = Ingester::new(
        Arc::clone(&store),
        ParseOptions::default(),
        Arc::new(Telemetry::new().expect("self-metrics")),
        None,
        mapper,
        1000,
    )
    .with_origin(Arc::clone(&origin));
    let mut worker = ingester.worker();
    let pods = origin.pods().expect("Kubernetes mode");
    let payload = b"churn.requests:1|c|#route:/pay\nchurn.latency:12|ms|#route:/pay";
    // Series of no pod, so the families stay and the level is the bridge's at rest; the
    // same datagram after the churn lets the worker drop its caches of the last pods, as a
    // listener does at its next datagram.
    ingester.datagram_from(payload, Transport::Udp, Sender::Unknown, &mut worker);
    let series_at_rest = store.len();

    let before = LIVE.load(Ordering::Relaxed);
    let mut peak = 0;
    let mut swept = Vec::new();
    for round in 0..ROUNDS {
        let pod = |i: usize| {
            let ip = Ipv4Addr::new(10, round as u8, (i / 250) as u8, (i % 250 + 1) as u8);
            let mut name = format!("web-{round}-{i}-");
            name.extend(std::iter::repeat_n('x', NAME_LEN - name.len()));
            PodRecord {
                uid: format!("00000000-0000-4000-8000-{round:06}{i:06}"),
                namespace: "churn".to_owned(),
                name,
                ips: vec![IpAddr::V4(ip)],
                labels: vec![("app".to_owned(), "web".to_owned())],
                containers: vec![format!("{round:032x}{i:032x}")],
                ..PodRecord::default()
            }
        };
        for i in 0..PODS {
            pods.update(|index| index.upsert(pod(i)));
        }
        for i in 0..PODS {
            let from = Sender::Ip(pod(i).ips[0]);
            ingester.datagram_from(payload, Transport::Udp, from, &mut worker);
        }
        peak = peak.max(LIVE.load(Ordering::Relaxed));
        let deleted = Instant::now();
        for i in 0..PODS {
            pods.update(|index| index.remove(&pod(i).uid, deleted));
        }
        swept.push(statsd_bridge::expire_deleted_pods(
            &store,
            &origin,
            deleted + pod_ttl,
        ));
    }
    ingester.datagram_from(payload, Transport::Udp, Sender::Unknown, &mut worker);
    let after = LIVE.load(Ordering::Relaxed);
    eprintln!(
        "heap above its level before any churn: {} bytes at the peak, {} after {} pods",
        peak - before,
        after - before,
        PODS * ROUNDS
    );

    assert_eq!(swept, [2 * PODS; ROUNDS], "series swept per round");
    assert_eq!(store.len(), series_at_rest, "series left");
    assert!(pods.is_empty(), "pods left in the index");
    assert!(
        after - before <= KEPT_MAX,
        "after {} churned pods the heap is {} bytes above its level before any churn, \
         more than the {KEPT_MAX} the tables may keep",
        PODS * ROUNDS,
        after - before,
    );
}
