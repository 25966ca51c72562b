//! Criterion benches of the bridge's hot functions, one group per pipeline stage.
//!
//! Run: `cargo bench -p pipeline-benches --bench bridge`. Each group reports lines (or
//! series) per second; compare them with `parse/baseline_split`, which only splits lines
//! and finds the `|` fields, the floor any parser pays.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pipeline_benches::typical::typical_lines;
use statsd_bridge::aggregate::native::{NativeHistogram, NativeOptions};
use statsd_bridge::aggregate::{Store, StoreConfig};
use statsd_bridge::expose::{Format, encode_bytes, encode_text};
use statsd_bridge::ingest::{Worker, ingest_line};
use statsd_bridge::mapping::NativeSpec;
use statsd_bridge::mapping::{Mapper, MapperHandle, MatchMetricType, Resolver, yaml};
use statsd_bridge::origin::{self, Origin, Sender, index::PodRecord};
use statsd_bridge::protocol::{ParseOptions, lines, parse_line};

/// The system allocator, counting the heap bytes freed (less any allocated) while
/// [`COUNTING`] is on, for the memory figures: what dropping a store frees is what it held.
/// Off, it costs a relaxed load per call, so the timings are the system allocator's.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static FREED: AtomicIsize = AtomicIsize::new(0);

fn count_freed(bytes: isize) {
    if COUNTING.load(Ordering::Relaxed) {
        FREED.fetch_add(bytes, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is
// added.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count_freed(-(layout.size() as isize));
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count_freed(-(layout.size() as isize));
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count_freed(layout.size() as isize);
        // SAFETY: `ptr` came from this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with this layout.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count_freed(layout.size() as isize - new_size as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The heap bytes `store` holds (as requested; malloc's own per-block overhead is not
/// counted): what dropping it frees.
fn heap_of(store: Store) -> isize {
    FREED.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    drop(store);
    COUNTING.store(false, Ordering::Relaxed);
    FREED.load(Ordering::Relaxed)
}

fn parse(c: &mut Criterion) {
    let input = typical_lines();
    let opts = ParseOptions::default();
    let bytes: usize = input.iter().map(String::len).sum();
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(input.len() as u64));
    g.bench_function("baseline_split", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for l in &input {
                n += black_box(l.as_bytes()).split(|c| *c == b'|').count();
            }
            n
        })
    });
    g.bench_function("parse_line", |b| {
        b.iter(|| {
            for l in &input {
                let _ = black_box(parse_line(black_box(l.as_bytes()), &opts));
            }
        })
    });
    g.finish();
    let mut g = c.benchmark_group("parse_bytes");
    g.throughput(Throughput::Bytes(bytes as u64));
    let datagram = input.join("\n");
    g.bench_function("datagram", |b| {
        b.iter(|| {
            for l in lines(black_box(datagram.as_bytes())) {
                let _ = black_box(parse_line(l, &opts));
            }
        })
    });
    g.finish();
}

fn aggregate(c: &mut Criterion) {
    let input = typical_lines();
    let opts = ParseOptions::default();
    let mut g = c.benchmark_group("aggregate");
    g.throughput(Throughput::Elements(input.len() as u64));
    let store = Store::new(StoreConfig::default(), []);
    let mut worker = Worker::unmapped(store.config());
    let now = Instant::now();
    g.bench_function("ingest_existing_series", |b| {
        b.iter(|| {
            for l in &input {
                black_box(ingest_line(&store, l.as_bytes(), &opts, &mut worker, now));
            }
        })
    });
    // The same lines as one datagram from a pod of a node with 110 pods (the kubelet's
    // default maximum): one cached lookup per datagram, two or three labels more per key.
    // Compare with `ingest_existing_series`.
    let origin = Arc::new(Origin::new(&origin::Settings {
        mode: origin::Mode::Kubernetes {
            node: "n".to_owned(),
            kubeconfig: None,
        },
        names: origin::LabelNames::new("namespace", "pod", &["app".to_owned()]),
        ..origin::Settings::off()
    }));
    if let Some(pods) = origin.pods() {
        for i in 0..110u8 {
            pods.update(|index| {
                index.upsert(PodRecord {
                    uid: format!("uid-{i}"),
                    namespace: "shop".to_owned(),
                    name: format!("web-{i}"),
                    ips: vec![std::net::IpAddr::from([10, 1, 0, i])],
                    labels: vec![("app".to_owned(), "web".to_owned())],
                    ..PodRecord::default()
                })
            });
        }
    }
    let store = Store::new(StoreConfig::default(), []);
    let mut worker = Worker::unmapped(store.config()).with_origin(&origin);
    let sender = Sender::Ip(std::net::IpAddr::from([10, 1, 0, 42]));
    g.bench_function("ingest_existing_series_with_origin", |b| {
        b.iter(|| {
            worker.set_sender(sender, now);
            for l in &input {
                black_box(ingest_line(&store, l.as_bytes(), &opts, &mut worker, now));
            }
        })
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    for n in [10_000usize, 100_000] {
        let store = Store::new(StoreConfig::default(), []);
        let mut worker = Worker::unmapped(store.config());
        let now = Instant::now();
        let opts = ParseOptions::default();
        for i in 0..n {
            let line = format!(
                "enc.counter:1|c|#pod:pod-{},ns:ns-{},app:a{}",
                i,
                i % 50,
                i % 7
            );
            ingest_line(&store, line.as_bytes(), &opts, &mut worker, now);
        }
        g.throughput(Throughput::Elements(n as u64));
        g.sample_size(10);
        g.bench_with_input(BenchmarkId::new("scrape", n), &store, |b, store| {
            b.iter(|| {
                let mut out = String::new();
                encode_text(&store.snapshot(now), &mut out);
                out.len()
            })
        });
    }
    g.finish();
}

/// Timers into classic buckets only, and into classic plus native (factor 1.1): the cost of
/// native buckets per observation and per series (heap bytes, counted by the allocator), and
/// of the protobuf page against the text one.
fn native(c: &mut Criterion) {
    // 1 ms to 10 s, spread log-uniformly as latencies are.
    let lines: Vec<String> = (0..1000)
        .map(|i| {
            format!(
                "api.latency:{:.3}|ms|#route:/r{}",
                10f64.powf(f64::from(i % 400) / 100.0),
                i % 10
            )
        })
        .collect();
    let opts = ParseOptions::default();
    let now = Instant::now();
    // Buckets a timer series spread over four decades holds, printed with the memory figures.
    let mut h = NativeHistogram::new(&NativeOptions::from_factor(1.1, 0, None).expect("factor"));
    for i in 0..200 {
        h.observe(10f64.powf(f64::from(i) / 50.0) / 1000.0, 1.0);
    }
    let buckets = h.snapshot().positive.len();
    let mut g = c.benchmark_group("native");
    g.throughput(Throughput::Elements(lines.len() as u64));
    // Classic buckets only (`None`), or native ones beside them with this bucket factor.
    let store_with = |factor: Option<f64>| {
        Store::new(
            StoreConfig {
                native: NativeSpec {
                    factor,
                    ..NativeSpec::default()
                },
                ..StoreConfig::default()
            },
            [],
        )
    };
    for (name, factor) in [
        ("observe_classic", None),
        ("observe_classic_and_native", Some(1.1)),
    ] {
        let store = store_with(factor);
        let mut worker = Worker::unmapped(store.config());
        g.bench_function(name, |b| {
            b.iter(|| {
                for l in &lines {
                    black_box(ingest_line(&store, l.as_bytes(), &opts, &mut worker, now));
                }
            })
        });
    }
    g.finish();
    // 10,000 timer series of 200 observations each (1 ms to 10 s), served as text and as
    // protobuf; and the heap each series takes, classic only and with native buckets.
    let timers = |factor: Option<f64>, series: usize| {
        let store = store_with(factor);
        let mut worker = Worker::unmapped(store.config());
        for series in 0..series {
            for i in 0..200 {
                let line = format!(
                    "t{}:{:.3}|ms|#pod:p{series}",
                    series % 20,
                    10f64.powf(f64::from(i) / 50.0)
                );
                ingest_line(&store, line.as_bytes(), &opts, &mut worker, now);
            }
        }
        store
    };
    let per_series = |factor: Option<f64>| {
        let empty = heap_of(timers(factor, 0));
        (heap_of(timers(factor, 10_000)) - empty) as f64 / 10_000.0
    };
    let (classic, native) = (per_series(None), per_series(Some(1.1)));
    eprintln!(
        "native: heap per timer series (10,000 series, counted by the allocator): classic \
         only (11 bounds) {classic:.0} B, classic + native ({buckets} buckets) {native:.0} B, \
         native buckets {:.0} B",
        native - classic
    );
    let mut g = c.benchmark_group("native_encode");
    g.throughput(Throughput::Elements(10_000));
    let store = timers(Some(1.1), 10_000);
    let snapshot = store.snapshot(now);
    g.bench_function("text_10000", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(8 << 20);
            encode_bytes(&snapshot, Format::Text, &mut out);
            black_box(out.len())
        })
    });
    g.bench_function("protobuf_10000", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(8 << 20);
            encode_bytes(&snapshot, Format::Protobuf, &mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, parse, aggregate, encode, mapping, native);
criterion_main!(benches);

/// A mapping file of `n` graphite-style glob rules.
fn rules_yaml(n: usize) -> String {
    let mut out = String::from("defaults:\n  observer_type: histogram\nmappings:\n");
    for i in 0..n {
        out.push_str(&format!(
            "- match: svc{i}.*.*.requests.*\n  name: \"svc{i}_requests_total\"\n  labels:\n    env: \"$1\"\n    host: \"$2\"\n    code: \"$3\"\n"
        ));
    }
    out
}

fn mapping(c: &mut Criterion) {
    let mut g = c.benchmark_group("mapping");
    for n in [10usize, 100, 1000] {
        let (spec, _) = yaml::parse(&rules_yaml(n), Path::new("bench.yml")).expect("valid rules");
        let mapper = Mapper::compile(&spec).expect("rules compile");
        // Names that hit rules spread over the whole file, plus some that match nothing.
        let names: Vec<String> = (0..1000)
            .map(|i| match i % 10 {
                9 => format!("unmatched.{i}.x.requests.200"),
                _ => format!(
                    "svc{}.prod.web-{}.requests.{}",
                    (i * 7919) % n,
                    i % 13,
                    200 + i % 5
                ),
            })
            .collect();
        g.throughput(Throughput::Elements(names.len() as u64));
        g.bench_with_input(BenchmarkId::new("uncached", n), &names, |b, names| {
            b.iter(|| {
                for name in names {
                    black_box(mapper.resolve(black_box(name), MatchMetricType::Counter));
                }
            })
        });
        let handle = Arc::new(MapperHandle::new(
            Mapper::compile(&spec).expect("rules compile"),
        ));
        let mut resolver = Resolver::new(handle, 10_000);
        g.bench_with_input(BenchmarkId::new("cached", n), &names, |b, names| {
            b.iter(|| {
                for name in names {
                    black_box(resolver.resolve(black_box(name), MatchMetricType::Counter));
                }
            })
        });
    }
    g.finish();
}
