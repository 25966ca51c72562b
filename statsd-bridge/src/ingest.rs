//! Datagram in, store updated, self-metrics counted: the glue between the parser and the
//! store that every listener calls.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::aggregate::{Outcome, Rejection, Scratch, SeriesHandle, Store, StoreConfig};
use crate::mapping::{
    CacheUse, DefaultsSpec, Mapper, MapperHandle, MatchMetricType, MatchType, Resolver,
};
use crate::origin::{self, Origin, Sender};
use crate::protocol::{self, Line, MetricType, ParseError, ParseOptions};
use crate::relay::Relay;
use crate::telemetry::{Telemetry, Transport};

/// What one line did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LineResult {
    /// Applied to the store.
    Accepted {
        /// Counts for the self-metrics.
        outcome: Outcome,
        /// The StatsD type, or `None` for events and service checks.
        kind: Option<MetricType>,
        /// The line's sample rate was invalid and read as 1.
        rate_invalid: bool,
    },
    /// The event or service check was applied.
    AcceptedEvent(Outcome),
    /// The service check was applied.
    AcceptedServiceCheck(Outcome),
    /// The parser rejected it.
    Rejected(ParseError),
    /// The store refused it.
    Dropped(Rejection),
}

/// Per-thread state of a listener: key buffers and the mapping resolver with its cache.
#[derive(Debug)]
pub struct Worker {
    /// Series-key buffers.
    pub scratch: Scratch,
    /// Mapping lookups.
    pub resolver: Resolver,
    /// Mapping cache hits since the counters were last taken.
    pub cache_hits: u64,
    /// Mapping cache misses since the counters were last taken.
    pub cache_misses: u64,
    /// Values applied by StatsD type since the counters were last taken: added to the
    /// shared counters once per datagram, not per line.
    samples: [u64; 6],
    /// Origin lookups with their caches, when origin detection is on.
    pub origin: Option<origin::Cursor>,
    name: String,
    known: KnownSeries,
}

/// The series each recent distinct line went to, by what its key depends on (name, tags,
/// type, `|c:`, the sender's labels), so a repeated line skips mapping, sanitizing, key
/// building and the store's map: most lines repeat a series. Dropped whenever the mapping rules or the pod index
/// change. A line answered from here counts the mapping lookup it skipped as the mapping
/// cache would have answered it.
#[derive(Debug, Default)]
struct KnownSeries {
    enabled: bool,
    /// The rules', the pod index's and the store's: the handles are into that store.
    generation: (u64, u64, u64),
    lines: HashMap<Box<[u8]>, Known, foldhash::fast::RandomState>,
    probe: Vec<u8>,
    /// Lines not remembered because the map was full, since it was last emptied.
    turned_away: usize,
    /// Bytes the map holds (its keys, and what a handle keeps alive).
    bytes: usize,
}

#[derive(Debug)]
struct Known {
    series: SeriesHandle,
    scale: Option<f64>,
    /// The line's name went through the mapping rules (there are some).
    mapped: bool,
    tags_skipped: u32,
    labels_renamed: u32,
}

/// Distinct lines a worker remembers, and the bytes they may take. Past either, new lines
/// are not remembered (with more series than this, remembering each would cost more than it
/// saves), until enough have been turned away that the working set has likely moved on:
/// then it starts over. Lines longer than [`KNOWN_LINE_MAX`] are never remembered, so a
/// sender with huge tags can't make the map large.
const KNOWN_MAX: usize = 16_384;
const KNOWN_BYTES_MAX: usize = 4 << 20;
const KNOWN_LINE_MAX: usize = 512;
const KNOWN_TURNED_AWAY_MAX: usize = 4 * KNOWN_MAX;

impl KnownSeries {
    /// Fills `probe` with what a line's key depends on.
    fn probe(&mut self, s: &protocol::Sample<'_>, origin: Option<&origin::OriginLabels>) {
        let p = &mut self.probe;
        p.clear();
        for part in [s.name, s.name_suffix, s.tags.name_side, s.tags.dogstatsd] {
            p.extend_from_slice(part.as_bytes());
            p.push(0xff);
        }
        p.push(s.kind as u8);
        if let Some(c) = s.container_id {
            p.extend_from_slice(c.as_bytes());
        }
        p.push(0xff);
        // The labels' address: stable while the generation below is.
        let at = origin.map_or(0, |o| Arc::as_ptr(o).cast::<u8>() as usize);
        p.extend_from_slice(&at.to_le_bytes());
    }
}

impl Worker {
    /// A worker resolving names with `handle`'s rules.
    pub fn new(handle: Arc<MapperHandle>, cache_size: usize) -> Self {
        Self {
            scratch: Scratch::default(),
            resolver: Resolver::new(handle, cache_size),
            cache_hits: 0,
            cache_misses: 0,
            samples: [0; 6],
            origin: None,
            name: String::new(),
            known: KnownSeries {
                enabled: true,
                ..KnownSeries::default()
            },
        }
    }

    /// Adds origin detection: each datagram's sender (and each line's `|c:` field) becomes
    /// labels.
    pub fn with_origin(mut self, origin: &Arc<Origin>) -> Self {
        if origin.is_enabled() {
            self.scratch.set_origin_wins(origin.origin_wins());
            self.origin = Some(origin.cursor());
        }
        self
    }

    /// Sets the labels of the datagram's sender for the lines that follow.
    pub fn set_sender(&mut self, sender: Sender, now: Instant) {
        if let Some(cursor) = &mut self.origin {
            let labels = cursor.sender(sender, now);
            self.scratch.replace_origin(labels);
        }
    }

    /// A worker with no mapping rules: every line gets the store config's defaults.
    pub fn unmapped(cfg: &StoreConfig) -> Self {
        let mapper = Mapper::without_rules(&defaults_of(cfg));
        Self::new(Arc::new(MapperHandle::new(mapper)), 0)
    }
}

/// The mapping defaults equal to a store config (what unmapped lines get without a file).
pub fn defaults_of(cfg: &StoreConfig) -> DefaultsSpec {
    DefaultsSpec {
        observer_type: cfg.observer,
        match_type: MatchType::Glob,
        glob_disable_ordering: false,
        ttl: cfg.ttl,
        buckets: cfg.buckets.to_vec(),
        summary: (*cfg.summary).clone(),
        native: cfg.native,
    }
}

/// Parses one line, maps its name and applies it to the store. Pure apart from the store.
pub fn ingest_line(
    store: &Store,
    line: &[u8],
    opts: &ParseOptions,
    worker: &mut Worker,
    now: Instant,
) -> LineResult {
    match protocol::parse_line(line, opts) {
        Err(e) => LineResult::Rejected(e),
        Ok(Line::Metric(s)) if worker.known.enabled => ingest_repeated(store, &s, worker, now),
        Ok(Line::Metric(s)) => ingest_metric(store, &s, worker, now).0,
        Ok(Line::Event(e)) => match store.ingest_event(&e, &mut worker.scratch, now) {
            Ok(outcome) => LineResult::AcceptedEvent(outcome),
            Err(r) => LineResult::Dropped(r),
        },
        Ok(Line::ServiceCheck(sc)) => {
            match store.ingest_service_check(&sc, &mut worker.scratch, now) {
                Ok(outcome) => LineResult::AcceptedServiceCheck(outcome),
                Err(r) => LineResult::Dropped(r),
            }
        }
    }
}

/// A metric line through [`KnownSeries`]: the series key of an identical earlier line when
/// there is one, else the full path, remembered.
fn ingest_repeated(
    store: &Store,
    s: &protocol::Sample<'_>,
    worker: &mut Worker,
    now: Instant,
) -> LineResult {
    let generations = (
        worker.resolver.generation(),
        worker.origin.as_ref().map_or(0, origin::Cursor::generation),
        store.id(),
    );
    let known = &mut worker.known;
    if generations != known.generation || known.turned_away > KNOWN_TURNED_AWAY_MAX {
        known.lines.clear();
        known.generation = generations;
        known.turned_away = 0;
        known.bytes = 0;
    }
    known.probe(s, worker.scratch.origin());
    if let Some(hit) = known.lines.get(known.probe.as_slice())
        && let Some(applied) = store.ingest_known(s, &hit.series, hit.scale, now)
    {
        if hit.mapped && worker.resolver.has_cache() {
            worker.cache_hits += 1;
        } else if hit.mapped {
            worker.cache_misses += 1;
        }
        let (tags_skipped, labels_renamed) = (hit.tags_skipped, hit.labels_renamed);
        // Counted as on the full path (the cursor answers from its cache).
        if let (Some(c), Some(cursor)) = (s.container_id, &mut worker.origin) {
            cursor.container(c);
        }
        return match applied {
            Ok(samples) => LineResult::Accepted {
                outcome: Outcome {
                    samples,
                    tags_skipped,
                    labels_renamed,
                    new_series: false,
                },
                kind: Some(s.kind),
                rate_invalid: s.rate_invalid,
            },
            Err(r) => LineResult::Dropped(r),
        };
    }
    let (result, target) = ingest_metric(store, s, worker, now);
    let known = &mut worker.known;
    let size = known.probe.len() + SeriesHandle::KEPT_BYTES;
    if known.probe.len() + worker.scratch.key().len() > KNOWN_LINE_MAX {
        // Not remembered, and not a sign the working set moved.
    } else if known.lines.len() >= KNOWN_MAX || known.bytes + size > KNOWN_BYTES_MAX {
        known.turned_away += 1;
    } else if let (
        LineResult::Accepted { outcome, .. },
        Some(Taken {
            scale,
            mapped,
            series: Some(series),
        }),
    ) = (result, target)
    {
        known.bytes += size;
        known.lines.insert(
            known.probe.as_slice().into(),
            Known {
                series,
                scale,
                mapped,
                tags_skipped: outcome.tags_skipped,
                labels_renamed: outcome.labels_renamed,
            },
        );
    }
    result
}

/// What [`KnownSeries`] remembers of a line that took the full way.
struct Taken {
    scale: Option<f64>,
    /// A mapping lookup was counted.
    mapped: bool,
    series: Option<SeriesHandle>,
}

/// A metric line the full way: mapping, the sender's labels, the key, the store.
fn ingest_metric(
    store: &Store,
    s: &protocol::Sample<'_>,
    worker: &mut Worker,
    now: Instant,
) -> (LineResult, Option<Taken>) {
    // Rules match the name as sent, tags removed (a mid-name SignalFx section too).
    let name = if s.name_suffix.is_empty() {
        s.name
    } else {
        worker.name.clear();
        worker.name.push_str(s.name);
        worker.name.push_str(s.name_suffix);
        worker.name.as_str()
    };
    let (resolution, cache) = worker.resolver.resolve(name, MatchMetricType::of(s.kind));
    match cache {
        CacheUse::Hit => worker.cache_hits += 1,
        CacheUse::Miss => worker.cache_misses += 1,
        CacheUse::NoRules => {}
    }
    let Some(target) = resolution.target() else {
        return (LineResult::Dropped(Rejection::MappingDrop), None);
    };
    let scratch = &mut worker.scratch;
    // A known `|c:` container names the sender better than the socket does.
    let by_container = match (s.container_id, &mut worker.origin) {
        (Some(c), Some(cursor)) => cursor.container(c),
        _ => None,
    };
    let datagram_origin = by_container.map(|l| scratch.replace_origin(Some(l)));
    let result = store.ingest_sample_handle(s, &target, scratch, now);
    if let Some(previous) = datagram_origin {
        scratch.replace_origin(previous);
    }
    let (result, series) = match result {
        Ok((outcome, series)) => (
            LineResult::Accepted {
                outcome,
                kind: Some(s.kind),
                rate_invalid: s.rate_invalid,
            },
            Some(series),
        ),
        Err(r) => (LineResult::Dropped(r), None),
    };
    let taken = Taken {
        scale: target.scale,
        mapped: cache != CacheUse::NoRules,
        series,
    };
    (result, Some(taken))
}

/// Shared by every listener: the store, parse options and self-metrics.
#[derive(Debug)]
pub struct Ingester {
    /// The series store.
    pub store: Arc<Store>,
    /// Which tag styles are read.
    pub opts: ParseOptions,
    /// Self-metrics.
    pub telemetry: Arc<Telemetry>,
    /// Where received lines are forwarded, if anywhere.
    pub relay: Option<Relay>,
    /// The mapping rules in force.
    pub mapper: Arc<MapperHandle>,
    /// Mapping cache entries per listener thread.
    pub cache_size: usize,
    /// Origin detection.
    pub origin: Arc<Origin>,
    log_limit: RateLimit,
}

impl Ingester {
    /// Builds an ingester.
    pub fn new(
        store: Arc<Store>,
        opts: ParseOptions,
        telemetry: Arc<Telemetry>,
        relay: Option<Relay>,
        mapper: Arc<MapperHandle>,
        cache_size: usize,
    ) -> Self {
        Self {
            store,
            opts,
            telemetry,
            relay,
            mapper,
            cache_size,
            origin: Arc::new(Origin::off()),
            log_limit: RateLimit::new(1_000),
        }
    }

    /// Adds origin detection to every worker made from now on.
    pub fn with_origin(mut self, origin: Arc<Origin>) -> Self {
        self.origin = origin;
        self
    }

    /// A worker for one listener thread.
    pub fn worker(&self) -> Worker {
        Worker::new(Arc::clone(&self.mapper), self.cache_size).with_origin(&self.origin)
    }

    /// A worker for one TCP connection: without the known-series map, since there can be a
    /// thousand connections and each would hold its own.
    pub fn connection_worker(&self) -> Worker {
        let mut worker = self.worker();
        worker.known.enabled = false;
        worker
    }

    /// Applies every line of a datagram (or a TCP chunk of whole lines) from an unknown
    /// sender.
    pub fn datagram(&self, bytes: &[u8], transport: Transport, worker: &mut Worker) {
        self.datagram_from(bytes, transport, Sender::Unknown, worker);
    }

    /// Applies every line of a datagram from `sender`.
    pub fn datagram_from(
        &self,
        bytes: &[u8],
        transport: Transport,
        sender: Sender,
        worker: &mut Worker,
    ) {
        let counters = self.telemetry.transport(transport);
        counters.packets.inc();
        counters.bytes.inc_by(bytes.len() as u64);
        let now = Instant::now();
        worker.set_sender(sender, now);
        let mut lines = 0;
        for line in protocol::lines(bytes) {
            self.apply_line(line, transport, worker, now);
            lines += 1;
        }
        // Counted once applied, as in `line`.
        counters.lines.inc_by(lines);
        self.flush_counts(worker);
    }

    /// Logs a rejected or dropped line, at most once a second.
    fn log_refused(
        &self,
        line: &[u8],
        transport: Transport,
        reason: &'static str,
        error: &dyn std::fmt::Display,
    ) {
        self.log_limit.run(|suppressed| {
            tracing::warn!(
                transport = transport.as_str(),
                reason,
                error = %error,
                line = %String::from_utf8_lossy(line.get(..200).unwrap_or(line)),
                suppressed,
                "Refused a line."
            );
        });
    }

    /// Moves a worker's local counts into the self-metrics.
    pub fn flush_counts(&self, worker: &mut Worker) {
        if let Some(cursor) = &mut worker.origin {
            self.telemetry.origin_lookups(&cursor.take_counts());
        }
        if worker.cache_hits > 0 {
            self.telemetry
                .mapping_cache_hits
                .inc_by(std::mem::take(&mut worker.cache_hits));
        }
        if worker.cache_misses > 0 {
            self.telemetry
                .mapping_cache_misses
                .inc_by(std::mem::take(&mut worker.cache_misses));
        }
        self.telemetry.add_samples(&mut worker.samples);
    }

    /// Applies one line (without its line ending).
    pub fn line(&self, line: &[u8], transport: Transport, worker: &mut Worker, now: Instant) {
        self.apply_line(line, transport, worker, now);
        // Counted once applied: a page whose counters were read before its series were
        // snapshotted then always holds every line those counters report.
        self.telemetry.transport(transport).lines.inc();
    }

    fn apply_line(&self, line: &[u8], transport: Transport, worker: &mut Worker, now: Instant) {
        let t = &self.telemetry;
        if let Some(relay) = &self.relay {
            relay.line(line);
        }
        let outcome = match ingest_line(&self.store, line, &self.opts, worker, now) {
            LineResult::Accepted {
                outcome,
                kind,
                rate_invalid,
            } => {
                if let Some(kind) = kind
                    && let Some(n) = worker.samples.get_mut(Telemetry::type_index(kind))
                {
                    *n += u64::from(outcome.samples);
                }
                if rate_invalid {
                    t.sample_rate_invalid.inc();
                }
                outcome
            }
            LineResult::AcceptedEvent(outcome) => {
                t.events.inc();
                outcome
            }
            LineResult::AcceptedServiceCheck(outcome) => {
                t.service_checks.inc();
                outcome
            }
            LineResult::Rejected(e) => {
                t.line_rejected(e);
                self.log_refused(line, transport, e.reason(), &e);
                return;
            }
            LineResult::Dropped(r) => {
                t.sample_dropped(r);
                self.log_refused(line, transport, r.reason(), &r);
                return;
            }
        };
        if outcome.tags_skipped > 0 {
            t.tags_skipped.inc_by(u64::from(outcome.tags_skipped));
        }
        if outcome.labels_renamed > 0 {
            t.labels_renamed.inc_by(u64::from(outcome.labels_renamed));
        }
        if outcome.new_series {
            t.series_created.inc();
        }
    }
}

/// Lets one log line through per period and counts the ones it held back.
#[derive(Debug)]
struct RateLimit {
    period_ms: u64,
    start: Instant,
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    fn new(period_ms: u64) -> Self {
        Self {
            period_ms,
            start: Instant::now(),
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    fn run(&self, log: impl FnOnce(u64)) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + self.period_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            log(self.suppressed.swap(0, Ordering::Relaxed));
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{StoreConfig, Value};
    use crate::mapping::yaml;

    fn values(store: &Store) -> Vec<(String, f64)> {
        store
            .snapshot(Instant::now())
            .series
            .iter()
            .map(|s| {
                let labels: Vec<String> = s.labels().map(|(k, v)| format!("{k}={v}")).collect();
                let v = match &s.value {
                    Value::Counter(v) | Value::Gauge(v) => *v,
                    Value::Histogram { count, .. } | Value::Summary { count, .. } => *count,
                };
                (format!("{}{{{}}}", s.name(), labels.join(",")), v)
            })
            .collect()
    }

    #[test]
    fn repeated_lines_take_the_known_series_and_count_the_same() {
        let (spec, _) = yaml::parse(
            "mappings:\n- match: app.*.hits\n  name: hits\n  labels: {app: $1}\n",
            std::path::Path::new("m.yml"),
        )
        .unwrap();
        let handle = Arc::new(MapperHandle::new(Mapper::compile(&spec).unwrap()));
        let store = Store::new(StoreConfig::default(), []);
        let mut worker = Worker::new(Arc::clone(&handle), 100);
        let now = Instant::now();
        let opts = ParseOptions::default();
        for line in [
            "app.web.hits:1|c|#k:v",
            "app.web.hits:2|c|#k:v",
            "app.web.hits:3|c|#k:v,x",
            "t:5|ms|@0.5",
        ] {
            for _ in 0..2 {
                assert!(matches!(
                    ingest_line(&store, line.as_bytes(), &opts, &mut worker, now),
                    LineResult::Accepted { .. }
                ));
            }
        }
        assert_eq!(
            values(&store),
            [
                ("hits{app=web,k=v}".to_owned(), 12.0),
                ("t{}".to_owned(), 4.0)
            ]
        );
        // 8 lines of 2 names: the first of each name misses, every other line hits.
        assert_eq!(worker.cache_hits + worker.cache_misses, 8);
        assert_eq!(worker.cache_misses, 2, "one miss per distinct name");
        // The tag without a value is skipped on every line, cached or not.
        let r = ingest_line(&store, b"app.web.hits:3|c|#k:v,x", &opts, &mut worker, now);
        assert!(matches!(r, LineResult::Accepted { outcome, .. } if outcome.tags_skipped == 1));

        // New rules: the known keys go with the old ones.
        let (spec, _) = yaml::parse(
            "mappings:\n- match: app.*.hits\n  name: requests\n",
            std::path::Path::new("m.yml"),
        )
        .unwrap();
        handle.replace(Mapper::compile(&spec).unwrap());
        ingest_line(&store, b"app.web.hits:1|c|#k:v", &opts, &mut worker, now);
        assert!(values(&store).contains(&("requests{k=v}".to_owned(), 1.0)));

        // A series removed from the store (a TTL, a deleted pod) is made again.
        store.remove_labelled(|_| true);
        ingest_line(&store, b"app.web.hits:1|c|#k:v", &opts, &mut worker, now);
        assert_eq!(values(&store), [("requests{k=v}".to_owned(), 1.0)]);

        // The same worker with another store: that store gets the line, not the first.
        let other = Store::new(StoreConfig::default(), []);
        ingest_line(&other, b"app.web.hits:1|c|#k:v", &opts, &mut worker, now);
        assert_eq!(values(&other), [("requests{k=v}".to_owned(), 1.0)]);
        assert_eq!(values(&store), [("requests{k=v}".to_owned(), 1.0)]);
    }

    #[test]
    fn past_the_bound_lines_are_not_remembered_then_it_starts_over() {
        let store = Store::new(StoreConfig::default(), []);
        let mut worker = Worker::unmapped(store.config());
        let now = Instant::now();
        let opts = ParseOptions::default();
        let line = |i: usize| format!("x:1|c|#series:{i}");
        for i in 0..KNOWN_MAX + 10 {
            ingest_line(&store, line(i).as_bytes(), &opts, &mut worker, now);
        }
        assert_eq!(
            (worker.known.lines.len(), worker.known.turned_away),
            (KNOWN_MAX, 10)
        );
        // Remembered lines still hit; the others still count.
        for i in [0, KNOWN_MAX + 5] {
            ingest_line(&store, line(i).as_bytes(), &opts, &mut worker, now);
        }
        assert_eq!(worker.known.turned_away, 11);
        assert_eq!(store.len(), KNOWN_MAX + 10);
        let value = |i: usize| {
            let key = format!("series={i}");
            values(&store)
                .into_iter()
                .find(|(k, _)| k.contains(&format!("{key}}}")))
                .map(|(_, v)| v)
        };
        assert_eq!(
            (value(0), value(KNOWN_MAX + 5), value(7)),
            (Some(2.0), Some(2.0), Some(1.0))
        );
        for i in 0..KNOWN_TURNED_AWAY_MAX {
            ingest_line(
                &store,
                line(KNOWN_MAX + 100 + i).as_bytes(),
                &opts,
                &mut worker,
                now,
            );
        }
        ingest_line(&store, line(1).as_bytes(), &opts, &mut worker, now);
        // Started over once enough were turned away: only the lines since are remembered.
        assert!(
            worker.known.lines.len() <= 12,
            "{}",
            worker.known.lines.len()
        );
        assert_eq!(worker.known.turned_away, 0);
    }

    #[test]
    fn long_lines_are_not_remembered_and_tcp_workers_remember_nothing() {
        let store = Store::new(StoreConfig::default(), []);
        let mut worker = Worker::unmapped(store.config());
        let now = Instant::now();
        let long = format!("x:1|c|#tag:{}", "v".repeat(KNOWN_LINE_MAX));
        for _ in 0..3 {
            ingest_line(
                &store,
                long.as_bytes(),
                &ParseOptions::default(),
                &mut worker,
                now,
            );
        }
        assert_eq!((worker.known.lines.len(), worker.known.turned_away), (0, 0));
        assert_eq!(
            values(&store),
            [(format!("x{{tag={}}}", "v".repeat(KNOWN_LINE_MAX)), 3.0)]
        );
        ingest_line(&store, b"y:1|c", &ParseOptions::default(), &mut worker, now);
        assert_eq!(worker.known.lines.len(), 1);
        assert!(worker.known.bytes > 0);
    }

    #[test]
    fn a_known_line_from_another_sender_is_another_series() {
        let table = origin::table::StaticTable::new(vec![
            (
                origin::table::Cidr::parse("10.0.0.1").unwrap(),
                Arc::from(vec![("pod".to_owned(), "a".to_owned())]),
            ),
            (
                origin::table::Cidr::parse("10.0.0.2").unwrap(),
                Arc::from(vec![("pod".to_owned(), "b".to_owned())]),
            ),
        ]);
        let origin = Arc::new(Origin::new(&origin::Settings {
            mode: origin::Mode::Static(table),
            ..origin::Settings::off()
        }));
        let store = Store::new(StoreConfig::default(), []);
        let mut worker = Worker::unmapped(store.config()).with_origin(&origin);
        let now = Instant::now();
        for (ip, n) in [
            ("10.0.0.1", 1),
            ("10.0.0.2", 2),
            ("10.0.0.1", 3),
            ("10.0.0.9", 4),
        ] {
            worker.set_sender(Sender::Ip(ip.parse().unwrap()), now);
            for _ in 0..n {
                ingest_line(&store, b"x:1|c", &ParseOptions::default(), &mut worker, now);
            }
        }
        assert_eq!(
            values(&store),
            [
                ("x{}".to_owned(), 4.0),
                ("x{pod=a}".to_owned(), 4.0),
                ("x{pod=b}".to_owned(), 2.0)
            ]
        );
    }
}
