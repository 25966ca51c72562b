//! The series store: parsed lines in, a consistent snapshot out.
//!
//! Series are keyed by sanitized name plus sorted labels, in a sharded concurrent map
//! (`dashmap`), so listener threads update different series in parallel and a scrape locks
//! one shard at a time. Everything that could make a scrape fail (type conflicts, names that
//! collide with another family's `_sum`/`_count`/`_bucket`, reserved label names) is resolved
//! here, at ingest, and reported as a [`Rejection`] or in the [`Outcome`] counts.
//!
//! Time is passed in (`now`), never read, so tests drive TTLs and windows directly.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::panic
)]

pub mod native;
pub mod summary;

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use crate::mapping::NativeSpec;
use crate::origin::OriginLabels;
use crate::protocol::{Event, MetricType, Sample, ServiceCheck, Tag, Tags};
use native::{NativeHistogram, NativeOptions, NativeSnapshot};
use summary::Sketch;
pub use summary::SummaryOptions;

/// What `ms`, `h` and `d` lines become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ObserverType {
    /// Cumulative buckets (the bridge's default: aggregatable across pods).
    #[default]
    Histogram,
    /// Client-side quantiles (statsd_exporter's default).
    Summary,
}

/// How a gauge value with a leading sign is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignedGauge {
    /// `+5`/`-5` add to the gauge (statsd_exporter, Etsy StatsD).
    #[default]
    Delta,
    /// `-5` sets the gauge to -5 (the Datadog Agent).
    Absolute,
}

/// Prometheus' default histogram buckets, in seconds.
pub const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// What observers become.
    pub observer: ObserverType,
    /// Histogram bucket upper bounds, sorted, without `+Inf`.
    pub buckets: Arc<[f64]>,
    /// Native histograms (off unless the factor is above 1).
    pub native: NativeSpec,
    /// Summary settings.
    pub summary: Arc<SummaryOptions>,
    /// Window over which a set counts distinct members.
    pub set_window: Duration,
    /// Distinct members a set remembers per window.
    pub set_max_members: usize,
    /// How signed gauge values are read.
    pub signed_gauge: SignedGauge,
    /// Series beyond this count are rejected.
    pub max_series: usize,
    /// Series not updated for this long are dropped; zero keeps them forever.
    pub ttl: Duration,
    /// Family name for DogStatsD events (a counter).
    pub event_family: String,
    /// Family name for DogStatsD service checks (a gauge).
    pub service_check_family: String,
    /// Refuse names that would clash once written as OpenMetrics (`x` and `x_total`
    /// counters are one family there).
    pub openmetrics: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            observer: ObserverType::Histogram,
            buckets: Arc::from(DEFAULT_BUCKETS.as_slice()),
            native: NativeSpec::default(),
            summary: Arc::new(SummaryOptions::default()),
            set_window: Duration::from_secs(60),
            set_max_members: 100_000,
            signed_gauge: SignedGauge::Delta,
            max_series: 1_000_000,
            ttl: Duration::ZERO,
            event_family: "statsd_events_total".to_owned(),
            service_check_family: "statsd_service_check_status".to_owned(),
            openmetrics: false,
        }
    }
}

/// What a sample becomes: the mapping's answer (or the defaults when no rule matched).
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The metric name to use instead of the line's (already templated, not yet sanitized).
    pub name: Option<&'a str>,
    /// Labels the rule adds.
    pub labels: &'a [(String, String)],
    /// Tags from the line win over the rule's labels.
    pub honor_labels: bool,
    /// What observers become.
    pub observer: ObserverType,
    /// Histogram buckets.
    pub buckets: &'a Arc<[f64]>,
    /// Native histograms next to the classic buckets, when on.
    pub native: Option<NativeOptions>,
    /// Summary settings.
    pub summary: &'a Arc<SummaryOptions>,
    /// Idle time after which the series goes; zero keeps it.
    pub ttl: Duration,
    /// `# HELP` text for a new family.
    pub help: Option<&'a str>,
    /// Values are multiplied by this.
    pub scale: Option<f64>,
}

/// The exposition type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A counter.
    Counter,
    /// A gauge.
    Gauge,
    /// A set, exposed as a gauge of distinct members.
    Set,
    /// A classic histogram.
    Histogram,
    /// A summary.
    Summary,
    /// A name the bridge uses for itself; user lines can't take it.
    Reserved,
}

impl Kind {
    /// The family kind a StatsD type becomes, observers as `observer` says.
    pub fn of(t: MetricType, observer: ObserverType) -> Self {
        match t {
            MetricType::Counter => Kind::Counter,
            MetricType::Gauge => Kind::Gauge,
            MetricType::Set => Kind::Set,
            MetricType::Timer | MetricType::Histogram | MetricType::Distribution => {
                match observer {
                    ObserverType::Histogram => Kind::Histogram,
                    ObserverType::Summary => Kind::Summary,
                }
            }
        }
    }

    /// The `# TYPE` word.
    pub fn type_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge | Self::Set => "gauge",
            Self::Histogram => "histogram",
            Self::Summary => "summary",
            Self::Reserved => "untyped",
        }
    }
}

/// Why a line changed nothing in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Rejection {
    /// The family exists with another type; the first type seen wins.
    #[error("metric already exists with another type")]
    TypeConflict,
    /// The name collides with another family's `_sum`/`_count`/`_bucket` series.
    #[error("metric name collides with another family's series")]
    NameCollision,
    /// The name is one of the bridge's own metrics.
    #[error("metric name is reserved for the bridge's own metrics")]
    ReservedName,
    /// `max_series` is reached; existing series still update.
    #[error("series limit reached")]
    SeriesLimit,
    /// A mapping rule's name template gave an empty name.
    #[error("mapping produced an empty metric name")]
    EmptyName,
    /// A mapping rule with `action: drop` matched.
    #[error("dropped by a mapping rule")]
    MappingDrop,
}

impl Rejection {
    /// Every rejection, for pre-registering counters.
    pub const ALL: [Rejection; 6] = [
        Self::TypeConflict,
        Self::NameCollision,
        Self::ReservedName,
        Self::SeriesLimit,
        Self::EmptyName,
        Self::MappingDrop,
    ];

    /// The `reason` label of `statsd_bridge_samples_dropped_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::TypeConflict => "type_conflict",
            Self::NameCollision => "name_collision",
            Self::ReservedName => "reserved_name",
            Self::SeriesLimit => "series_limit",
            Self::EmptyName => "empty_metric_name",
            Self::MappingDrop => "mapping_drop",
        }
    }
}

/// What an accepted line did, for the self-metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Values applied (several for packed lines).
    pub samples: u32,
    /// Tags dropped for having no value or an empty key.
    pub tags_skipped: u32,
    /// Labels renamed because their name is reserved (`le`, `quantile`, `__…`).
    pub labels_renamed: u32,
    /// True when the line created a new series.
    pub new_series: bool,
}

#[derive(Debug)]
struct HistogramCell {
    native: Option<NativeHistogram>,
    bounds: Arc<[f64]>,
    /// Per bucket, not cumulative; one extra slot for `+Inf`.
    counts: Box<[f64]>,
    sum: f64,
    count: f64,
}

#[derive(Debug)]
struct SummaryCell {
    opts: Arc<SummaryOptions>,
    sketch: Sketch,
    sum: f64,
    count: f64,
}

#[derive(Debug)]
struct SetCell {
    window_start: Instant,
    members: HashSet<u64>,
}

#[derive(Debug)]
enum Cell {
    Counter(f64),
    Gauge(f64),
    Set(Box<SetCell>),
    Histogram(Box<HistogramCell>),
    Summary(Box<SummaryCell>),
}

#[derive(Debug)]
struct Series {
    cell: Cell,
    /// Seconds since the store's epoch.
    last_seen: u32,
    /// Idle seconds after which the series goes; 0 keeps it.
    ttl: u32,
    /// Set, under the lock, as the series leaves the map: a [`SeriesHandle`] kept by a
    /// worker must then not write into it.
    removed: bool,
}

/// A series behind its own lock, shared by the map and the handles workers keep, so a
/// repeated line updates it without hashing its key or locking a shard.
type Slot = Arc<std::sync::Mutex<Series>>;

fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, Series> {
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A series a line went to, for [`Store::ingest_known`]. It may outlive the series; it
/// then writes nothing.
#[derive(Debug, Clone)]
pub struct SeriesHandle(Slot);

impl SeriesHandle {
    /// Heap bytes a handle keeps alive once its series is gone (the value itself is freed).
    pub const KEPT_BYTES: usize =
        2 * std::mem::size_of::<usize>() + std::mem::size_of::<std::sync::Mutex<Series>>();
}

/// One update, already converted (rate applied, ms in seconds).
#[derive(Debug, Clone, Copy)]
enum Update<'a> {
    Add(f64),
    Set(f64),
    Observe { value: f64, weight: f64 },
    Member(&'a str),
}

/// Reusable buffers so building a series key allocates nothing per line.
#[derive(Debug, Default)]
pub struct Scratch {
    text: String,
    labels: Vec<(Range<usize>, Range<usize>)>,
    key: Vec<u8>,
    name_end: usize,
    /// The sender's labels (origin detection), added to every key built until replaced.
    origin: Option<OriginLabels>,
    /// The sender's labels win over the line's tags of the same name.
    origin_wins: bool,
}

impl Scratch {
    /// Sets the sender's labels for the keys built next; returns the previous ones.
    pub fn replace_origin(&mut self, labels: Option<OriginLabels>) -> Option<OriginLabels> {
        std::mem::replace(&mut self.origin, labels)
    }

    /// Whether the sender's labels win over a line's tags of the same name (else tags win).
    pub fn set_origin_wins(&mut self, wins: bool) {
        self.origin_wins = wins;
    }

    fn push_origin(&mut self, kind: Kind, outcome: &mut Outcome) {
        if let Some(labels) = self.origin.take() {
            for (k, v) in labels.iter() {
                self.push_label_as(k, v, kind, outcome, true);
            }
            self.origin = Some(labels);
        }
    }
}

/// Metadata of a family.
#[derive(Debug, Clone)]
pub struct Family {
    /// Its type.
    pub kind: Kind,
    /// Its `# HELP` text.
    pub help: Arc<str>,
    /// Live series; a family whose last series expires is forgotten.
    series: Arc<AtomicUsize>,
}

/// Every sample and family name a family writes, which no other family may write.
fn emitted_names(name: &str, kind: Kind, openmetrics: bool) -> Vec<String> {
    let with = |suffix: &str| format!("{name}{suffix}");
    match kind {
        Kind::Counter if openmetrics => {
            let family = name.strip_suffix("_total").unwrap_or(name);
            vec![family.to_owned(), format!("{family}_total")]
        }
        Kind::Histogram => vec![
            name.to_owned(),
            with("_bucket"),
            with("_sum"),
            with("_count"),
        ],
        Kind::Summary => vec![name.to_owned(), with("_sum"), with("_count")],
        _ => vec![name.to_owned()],
    }
}

/// The owner of reserved names in the name registry.
const RESERVED_OWNER: &str = "";

/// The series store.
#[derive(Debug)]
pub struct Store {
    cfg: StoreConfig,
    epoch: Instant,
    series: DashMap<Arc<[u8]>, Slot, SeriesHasher>,
    families: Arc<DashMap<Box<str>, Family, SeriesHasher>>,
    /// New families are rare; one lock over the name registry (every written name → the
    /// family that writes it) keeps the collision checks atomic.
    names: std::sync::Mutex<std::collections::HashMap<Box<str>, Box<str>>>,
    len: AtomicUsize,
    /// Set once any series has a TTL, so the sweep costs nothing otherwise.
    any_ttl: std::sync::atomic::AtomicBool,
    id: u64,
}

/// Ids of stores made so far, so a worker's handles are never used with another store.
static STORES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Randomly seeded per process, and several times faster than SipHash on short keys.
type SeriesHasher = foldhash::fast::RandomState;

const HELP_AUTO: &str = "Metric autogenerated by statsd-bridge.";
const KEY_NAME_END: u8 = 0x00;
const KEY_KV: u8 = 0xFE;
const KEY_LABEL_END: u8 = 0xFF;

impl Store {
    /// An empty store; `reserved` are names (the bridge's own metrics) user lines can't use.
    pub fn new<'r>(cfg: StoreConfig, reserved: impl IntoIterator<Item = &'r str>) -> Self {
        let families = DashMap::with_hasher(SeriesHasher::default());
        let mut names = std::collections::HashMap::new();
        for name in reserved {
            families.insert(
                Box::from(name),
                Family {
                    kind: Kind::Reserved,
                    help: Arc::from(""),
                    series: Arc::new(AtomicUsize::new(0)),
                },
            );
            names.insert(Box::from(name), Box::from(RESERVED_OWNER));
        }
        Self {
            cfg,
            epoch: Instant::now(),
            series: DashMap::with_hasher(SeriesHasher::default()),
            families: Arc::new(families),
            names: std::sync::Mutex::new(names),
            len: AtomicUsize::new(0),
            any_ttl: std::sync::atomic::AtomicBool::new(false),
            id: STORES.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Unique among the stores of the process (never 0).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The settings in force.
    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// Live series.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// True when no series is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn seconds(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.epoch).as_secs()).unwrap_or(u32::MAX)
    }

    /// The target of lines no mapping rule matched: the store's own defaults.
    pub fn default_target(&self) -> Target<'_> {
        Target {
            name: None,
            labels: &[],
            honor_labels: false,
            observer: self.cfg.observer,
            buckets: &self.cfg.buckets,
            native: self.cfg.native.options(),
            summary: &self.cfg.summary,
            ttl: self.cfg.ttl,
            help: None,
            scale: None,
        }
    }

    /// Applies a metric line with the store's defaults.
    pub fn ingest_sample(
        &self,
        s: &Sample<'_>,
        scratch: &mut Scratch,
        now: Instant,
    ) -> Result<Outcome, Rejection> {
        self.ingest_sample_to(s, &self.default_target(), scratch, now)
    }

    /// Applies a metric line as `target` says (name, labels, observer, …).
    pub fn ingest_sample_to(
        &self,
        s: &Sample<'_>,
        target: &Target<'_>,
        scratch: &mut Scratch,
        now: Instant,
    ) -> Result<Outcome, Rejection> {
        self.ingest_sample_handle(s, target, scratch, now)
            .map(|(outcome, _)| outcome)
    }

    /// [`Store::ingest_sample_to`], also returning the series the line went to.
    pub fn ingest_sample_handle(
        &self,
        s: &Sample<'_>,
        target: &Target<'_>,
        scratch: &mut Scratch,
        now: Instant,
    ) -> Result<(Outcome, SeriesHandle), Rejection> {
        let kind = Kind::of(s.kind, target.observer);
        let mut outcome = scratch.build(
            Name {
                raw: s.name,
                suffix: s.name_suffix,
                mapped: target.name,
            },
            &s.tags,
            &[],
            target,
            kind,
        )?;
        let (samples, new_series, slot) = if s.kind == MetricType::Set {
            let member = std::iter::once(Update::Member(s.set_member()));
            self.apply(scratch, kind, target, member, now)?
        } else {
            self.apply(scratch, kind, target, self.updates(s, target.scale), now)?
        };
        outcome.samples = samples;
        outcome.new_series = new_series;
        Ok((outcome, SeriesHandle(slot)))
    }

    /// Applies a metric line to `series`, which an earlier line with the same name, tags
    /// and sender went to; `None` when that series is gone, and the line must take the full
    /// path.
    pub fn ingest_known(
        &self,
        s: &Sample<'_>,
        series: &SeriesHandle,
        scale: Option<f64>,
        now: Instant,
    ) -> Option<Result<u32, Rejection>> {
        let mut series = lock(&series.0);
        if series.removed {
            return None;
        }
        series.last_seen = self.seconds(now);
        Some(if s.kind == MetricType::Set {
            let member = std::iter::once(Update::Member(s.set_member()));
            self.update(&mut series.cell, member, now)
        } else {
            self.update(&mut series.cell, self.updates(s, scale), now)
        })
    }

    /// A line's values as updates: the sample rate applied, timers in seconds, scaled.
    fn updates<'s>(
        &self,
        s: &'s Sample<'_>,
        scale: Option<f64>,
    ) -> impl Iterator<Item = Update<'static>> + 's {
        let weight = 1.0 / s.rate;
        let scale = scale.unwrap_or(1.0);
        let signed_is_delta = self.cfg.signed_gauge == SignedGauge::Delta;
        let kind = s.kind;
        s.values().map(move |v| {
            let value = v.value * scale;
            match kind {
                MetricType::Counter => Update::Add(value * weight),
                MetricType::Gauge if v.signed && signed_is_delta => Update::Add(value),
                MetricType::Gauge => Update::Set(value),
                MetricType::Timer => Update::Observe {
                    value: value / 1000.0,
                    weight,
                },
                MetricType::Histogram | MetricType::Distribution => {
                    Update::Observe { value, weight }
                }
                MetricType::Set => Update::Member(""),
            }
        })
    }

    /// Counts an event in the events family, by alert type and tags.
    pub fn ingest_event(
        &self,
        e: &Event<'_>,
        scratch: &mut Scratch,
        now: Instant,
    ) -> Result<Outcome, Rejection> {
        let family = self.cfg.event_family.clone();
        let extra = [("alert_type", e.alert_type.as_str())];
        let target = self.default_target();
        let name = Name {
            raw: &family,
            suffix: "",
            mapped: None,
        };
        let mut outcome = scratch.build(name, &e.tags, &extra, &target, Kind::Counter)?;
        let update = std::iter::once(Update::Add(1.0));
        (outcome.samples, outcome.new_series, _) =
            self.apply(scratch, Kind::Counter, &target, update, now)?;
        Ok(outcome)
    }

    /// Records a service check's status in the service-check family.
    pub fn ingest_service_check(
        &self,
        sc: &ServiceCheck<'_>,
        scratch: &mut Scratch,
        now: Instant,
    ) -> Result<Outcome, Rejection> {
        let family = self.cfg.service_check_family.clone();
        let extra = [("check", sc.name)];
        let target = self.default_target();
        let name = Name {
            raw: &family,
            suffix: "",
            mapped: None,
        };
        let mut outcome = scratch.build(name, &sc.tags, &extra, &target, Kind::Gauge)?;
        let update = std::iter::once(Update::Set(f64::from(sc.status)));
        (outcome.samples, outcome.new_series, _) =
            self.apply(scratch, Kind::Gauge, &target, update, now)?;
        Ok(outcome)
    }

    /// Updates the series in `slot`, found in the map (so not removed), and hands it back.
    fn update_existing<'u>(
        &self,
        slot: Slot,
        seen: u32,
        updates: impl Iterator<Item = Update<'u>>,
        now: Instant,
    ) -> Result<(u32, bool, Slot), Rejection> {
        let mut series = lock(&slot);
        series.last_seen = seen;
        let n = self.update(&mut series.cell, updates, now)?;
        drop(series);
        Ok((n, false, slot))
    }

    fn apply<'u>(
        &self,
        scratch: &Scratch,
        kind: Kind,
        target: &Target<'_>,
        updates: impl Iterator<Item = Update<'u>>,
        now: Instant,
    ) -> Result<(u32, bool, Slot), Rejection> {
        let seen = self.seconds(now);
        // A slot in the map is never `removed`: it leaves the map as it is marked.
        // The shard guard (`entry`, `e`) is held through the update, so no removal comes
        // between finding the slot and writing into it.
        if let Some(entry) = self.series.get(scratch.key.as_slice()) {
            return self.update_existing(Arc::clone(entry.value()), seen, updates, now);
        }
        // The cap comes first so a storm of new names can't grow the family registry either.
        if self.len() >= self.cfg.max_series {
            return Err(Rejection::SeriesLimit);
        }
        let family = self.check_family(scratch.name(), kind, target.help)?;
        match self.series.entry(Arc::from(scratch.key.as_slice())) {
            Entry::Occupied(e) => self.update_existing(Arc::clone(e.get()), seen, updates, now),
            Entry::Vacant(e) => {
                let mut cell = self.new_cell(kind, target, now);
                let n = self.update(&mut cell, updates, now)?;
                let ttl = u32::try_from(target.ttl.as_secs()).unwrap_or(u32::MAX);
                let ttl = if target.ttl.is_zero() { 0 } else { ttl.max(1) };
                if ttl > 0 {
                    self.any_ttl.store(true, Ordering::Relaxed);
                }
                let slot = Arc::new(std::sync::Mutex::new(Series {
                    cell,
                    last_seen: seen,
                    ttl,
                    removed: false,
                }));
                e.insert(Arc::clone(&slot));
                self.len.fetch_add(1, Ordering::Relaxed);
                family.fetch_add(1, Ordering::Relaxed);
                Ok((n, true, slot))
            }
        }
    }

    fn new_cell(&self, kind: Kind, target: &Target<'_>, now: Instant) -> Cell {
        match kind {
            Kind::Counter | Kind::Reserved => Cell::Counter(0.0),
            Kind::Gauge => Cell::Gauge(0.0),
            Kind::Set => Cell::Set(Box::new(SetCell {
                window_start: now,
                members: HashSet::new(),
            })),
            Kind::Histogram => Cell::Histogram(Box::new(HistogramCell {
                native: target.native.as_ref().map(NativeHistogram::new),
                bounds: Arc::clone(target.buckets),
                counts: vec![0.0; target.buckets.len() + 1].into_boxed_slice(),
                sum: 0.0,
                count: 0.0,
            })),
            Kind::Summary => Cell::Summary(Box::new(SummaryCell {
                opts: Arc::clone(target.summary),
                sketch: Sketch::new(now),
                sum: 0.0,
                count: 0.0,
            })),
        }
    }

    fn update<'u>(
        &self,
        cell: &mut Cell,
        updates: impl Iterator<Item = Update<'u>>,
        now: Instant,
    ) -> Result<u32, Rejection> {
        let mut n = 0;
        for update in updates {
            match (&mut *cell, update) {
                (Cell::Counter(c), Update::Add(v)) | (Cell::Gauge(c), Update::Add(v)) => *c += v,
                (Cell::Gauge(g), Update::Set(v)) => *g = v,
                (Cell::Histogram(h), Update::Observe { value, weight }) => {
                    let i = h.bounds.partition_point(|b| *b < value);
                    if let Some(c) = h.counts.get_mut(i) {
                        *c += weight;
                    } else if let Some(inf) = h.counts.last_mut() {
                        *inf += weight; // NaN lands past every bound.
                    }
                    if let Some(native) = &mut h.native {
                        native.observe(value, weight);
                    }
                    h.sum += value * weight;
                    h.count += weight;
                }
                (Cell::Summary(s), Update::Observe { value, weight }) => {
                    s.sketch.observe(value, weight, now, &s.opts);
                    s.sum += value * weight;
                    s.count += weight;
                }
                (Cell::Set(set), Update::Member(m)) => {
                    if now.saturating_duration_since(set.window_start) >= self.cfg.set_window {
                        set.members.clear();
                        set.window_start = now;
                    }
                    if set.members.len() < self.cfg.set_max_members {
                        let mut h = std::hash::DefaultHasher::new();
                        m.hash(&mut h);
                        set.members.insert(h.finish());
                    }
                }
                _ => return Err(Rejection::TypeConflict),
            }
            n += 1;
        }
        Ok(n)
    }

    /// Makes sure `name` may hold a family of `kind`, registering it if new; returns the
    /// family's live-series counter.
    fn check_family(
        &self,
        name: &str,
        kind: Kind,
        help: Option<&str>,
    ) -> Result<Arc<AtomicUsize>, Rejection> {
        let existing = |f: &Family| match f.kind {
            k if k == kind => Ok(Arc::clone(&f.series)),
            Kind::Reserved => Err(Rejection::ReservedName),
            _ => Err(Rejection::TypeConflict),
        };
        if let Some(f) = self.families.get(name) {
            return existing(&f);
        }
        let mut names = self
            .names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(f) = self.families.get(name) {
            return existing(&f);
        }
        let emitted = emitted_names(name, kind, self.cfg.openmetrics);
        if emitted.iter().any(|n| n.is_empty() || n == "_total") {
            return Err(Rejection::EmptyName);
        }
        for n in &emitted {
            if let Some(owner) = names.get(n.as_str()) {
                return Err(if owner.as_ref() == RESERVED_OWNER {
                    Rejection::ReservedName
                } else {
                    Rejection::NameCollision
                });
            }
        }
        let help = if let Some(help) = help {
            help
        } else if name == self.cfg.event_family {
            "DogStatsD events received, by alert type and tags."
        } else if name == self.cfg.service_check_family {
            "Last status of each DogStatsD service check: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."
        } else {
            HELP_AUTO
        };
        for n in emitted {
            names.insert(n.into_boxed_str(), Box::from(name));
        }
        let series = Arc::new(AtomicUsize::new(0));
        let family = Family {
            kind,
            help: Arc::from(help),
            series: Arc::clone(&series),
        };
        self.families.insert(Box::from(name), family);
        Ok(series)
    }

    /// Families registered (the bridge's reserved names included).
    pub fn family_count(&self) -> usize {
        self.families.len()
    }

    /// Drops series idle for longer than their TTL, and families left without series;
    /// returns how many series went.
    pub fn expire(&self, now: Instant) -> usize {
        if !self.any_ttl.load(Ordering::Relaxed) {
            return 0;
        }
        let seconds = self.seconds(now);
        self.remove_where(|_, s| s.ttl != 0 && seconds.saturating_sub(s.last_seen) > s.ttl)
    }

    /// Drops every series whose labels `doomed` picks (origin detection: the series of
    /// pods deleted a while ago), and families left without series; returns how many went.
    pub fn remove_labelled(&self, mut doomed: impl FnMut(KeyLabels<'_>) -> bool) -> usize {
        self.remove_where(|key, _| doomed(KeyLabels::of(key)))
    }

    fn remove_where(&self, mut doomed: impl FnMut(&[u8], &Series) -> bool) -> usize {
        let mut removed = 0;
        let mut emptied: Vec<Box<str>> = Vec::new();
        self.series.retain(|key, slot| {
            let mut s = lock(slot);
            // Decided and marked under the series' lock: a line through a handle lands
            // before (and keeps a TTL'd series alive) or sees it gone and makes it again.
            let keep = !doomed(key, &s);
            if !keep {
                s.removed = true;
                // Freed now, not when the last worker drops its handle.
                s.cell = Cell::Counter(0.0);
                removed += 1;
                let name = family_name(key);
                if let Some(f) = self.families.get(name)
                    && f.series.fetch_sub(1, Ordering::Relaxed) == 1
                {
                    emptied.push(Box::from(name));
                }
            }
            keep
        });
        self.len.fetch_sub(removed, Ordering::Relaxed);
        if !emptied.is_empty() {
            let mut names = self
                .names
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for name in emptied {
                let gone = self.families.remove_if(name.as_ref(), |_, f| {
                    f.kind != Kind::Reserved && f.series.load(Ordering::Relaxed) == 0
                });
                if let Some((_, f)) = gone {
                    for n in emitted_names(&name, f.kind, self.cfg.openmetrics) {
                        names.remove(n.as_str());
                    }
                }
            }
        }
        removed
    }

    /// A consistent-per-series copy of every series, sorted by family then labels.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let mut series = Vec::with_capacity(self.len());
        // Shared locks, one shard at a time: ingestion into other shards goes on.
        for entry in self.series.iter() {
            let key = Arc::clone(entry.key());
            let live = lock(entry.value());
            let value = match &live.cell {
                Cell::Counter(v) => Value::Counter(*v),
                Cell::Gauge(v) => Value::Gauge(*v),
                Cell::Set(set) => {
                    let live =
                        now.saturating_duration_since(set.window_start) < self.cfg.set_window;
                    Value::Gauge(if live { set.members.len() as f64 } else { 0.0 })
                }
                Cell::Histogram(h) => {
                    let mut acc = 0.0;
                    let cumulative = h
                        .counts
                        .iter()
                        .map(|c| {
                            acc += c;
                            acc
                        })
                        .collect();
                    Value::Histogram {
                        bounds: Arc::clone(&h.bounds),
                        cumulative,
                        sum: h.sum,
                        count: h.count,
                        native: h.native.as_ref().map(|n| Box::new(n.snapshot())),
                    }
                }
                Cell::Summary(s) => Value::Summary {
                    quantiles: s.sketch.quantiles(now, &s.opts),
                    sum: s.sum,
                    count: s.count,
                },
            };
            series.push(SeriesSnapshot { key, value });
        }
        series.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        Snapshot {
            series,
            families: Arc::clone(&self.families),
        }
    }
}

/// The name parts of a line: as sent, and as a mapping rule rewrote it.
#[derive(Debug, Clone, Copy)]
struct Name<'a> {
    raw: &'a str,
    suffix: &'a str,
    mapped: Option<&'a str>,
}

impl Scratch {
    /// Fills `key` with the encoded series key and returns tag counts.
    fn build(
        &mut self,
        name: Name<'_>,
        tags: &Tags<'_>,
        extra: &[(&str, &str)],
        target: &Target<'_>,
        kind: Kind,
    ) -> Result<Outcome, Rejection> {
        let mut outcome = Outcome::default();
        self.text.clear();
        self.labels.clear();
        match name.mapped {
            Some(mapped) => common::prom::sanitize_name_into(mapped, &mut self.text),
            None => {
                common::prom::sanitize_name_into(name.raw, &mut self.text);
                self.text.extend(name.suffix.chars().map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' {
                        c
                    } else {
                        '_'
                    }
                }));
            }
        }
        if self.text.is_empty() {
            return Err(Rejection::EmptyName);
        }
        self.name_end = self.text.len();
        // The later of two equal keys wins: rule labels override tags unless honor_labels;
        // the sender's labels come first (tags win) or last (origin wins).
        if !self.origin_wins {
            self.push_origin(kind, &mut outcome);
        }
        if target.honor_labels {
            self.push_rule_labels(target, kind, &mut outcome);
            self.push_tags(tags, kind, &mut outcome);
        } else {
            self.push_tags(tags, kind, &mut outcome);
            self.push_rule_labels(target, kind, &mut outcome);
        }
        if self.origin_wins {
            self.push_origin(kind, &mut outcome);
        }
        for (k, v) in extra {
            self.push_label(k, v, kind, &mut outcome);
        }
        let text = self.text.as_str();
        let slice = |r: &Range<usize>| text.get(r.clone()).unwrap_or("");
        // Stable sort, then keep the last of equal keys.
        self.labels.sort_by(|a, b| slice(&a.0).cmp(slice(&b.0)));
        let mut i = 0;
        while i + 1 < self.labels.len() {
            let same = match (self.labels.get(i), self.labels.get(i + 1)) {
                (Some(a), Some(b)) => slice(&a.0) == slice(&b.0),
                _ => false,
            };
            if same {
                self.labels.remove(i);
            } else {
                i += 1;
            }
        }
        // An empty value is an absent label in Prometheus; a rule can remove a tag that way.
        self.labels.retain(|(_, v)| !v.is_empty());
        self.key.clear();
        self.key
            .extend_from_slice(text.get(..self.name_end).unwrap_or("").as_bytes());
        self.key.push(KEY_NAME_END);
        for (k, v) in &self.labels {
            self.key.extend_from_slice(slice(k).as_bytes());
            self.key.push(KEY_KV);
            self.key.extend_from_slice(slice(v).as_bytes());
            self.key.push(KEY_LABEL_END);
        }
        Ok(outcome)
    }

    fn push_tags(&mut self, tags: &Tags<'_>, kind: Kind, outcome: &mut Outcome) {
        for t in tags.iter() {
            match t {
                Tag::Pair(k, v) => self.push_label(k, v, kind, outcome),
                Tag::Skipped => outcome.tags_skipped += 1,
            }
        }
    }

    fn push_rule_labels(&mut self, target: &Target<'_>, kind: Kind, outcome: &mut Outcome) {
        for (k, v) in target.labels {
            self.push_label(k, v, kind, outcome);
        }
    }

    fn push_label(&mut self, k: &str, v: &str, kind: Kind, outcome: &mut Outcome) {
        self.push_label_as(k, v, kind, outcome, false);
    }

    /// `clean`: `k` is already a valid label name (origin labels are checked at start), so
    /// it is copied, not sanitized.
    fn push_label_as(&mut self, k: &str, v: &str, kind: Kind, outcome: &mut Outcome, clean: bool) {
        let k_start = self.text.len();
        if clean {
            self.text.push_str(k);
        } else {
            common::prom::sanitize_name_into(k, &mut self.text);
        }
        let renamed = {
            let key = self.text.get(k_start..).unwrap_or("");
            key.starts_with("__")
                || (kind == Kind::Histogram && key == "le")
                || (kind == Kind::Summary && key == "quantile")
        };
        if renamed {
            self.text.insert_str(k_start, "exported_");
            outcome.labels_renamed += 1;
        }
        let k_end = self.text.len();
        self.text.push_str(v);
        self.labels.push((k_start..k_end, k_end..self.text.len()));
    }

    fn name(&self) -> &str {
        self.text.get(..self.name_end).unwrap_or("")
    }

    /// The encoded key of the series built last.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The sender's labels now in use (to tell cached keys of different senders apart).
    pub fn origin(&self) -> Option<&OriginLabels> {
        self.origin.as_ref()
    }
}

/// A series' value at snapshot time.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Counter total.
    Counter(f64),
    /// Gauge (and set) value.
    Gauge(f64),
    /// Histogram with cumulative bucket counts (last is `+Inf`).
    Histogram {
        /// Upper bounds without `+Inf`.
        bounds: Arc<[f64]>,
        /// Cumulative counts, one per bound plus `+Inf`.
        cumulative: Vec<f64>,
        /// Sum of observations.
        sum: f64,
        /// Count of observations (weighted).
        count: f64,
        /// The native histogram, when on (only the protobuf format carries it).
        native: Option<Box<NativeSnapshot>>,
    },
    /// Summary with its quantiles.
    Summary {
        /// (quantile, value) pairs.
        quantiles: Vec<(f64, f64)>,
        /// Sum of observations.
        sum: f64,
        /// Count of observations (weighted).
        count: f64,
    },
}

/// One series in a snapshot.
#[derive(Debug, Clone)]
pub struct SeriesSnapshot {
    key: Arc<[u8]>,
    /// Its value.
    pub value: Value,
}

/// The labels of an encoded series key, sorted by name, as raw bytes.
#[derive(Debug, Clone)]
pub struct KeyLabels<'a> {
    rest: std::slice::Split<'a, u8, fn(&u8) -> bool>,
}

impl<'a> KeyLabels<'a> {
    fn of(key: &'a [u8]) -> Self {
        let start = key
            .iter()
            .position(|b| *b == KEY_NAME_END)
            .map_or(key.len(), |i| i + 1);
        let end: fn(&u8) -> bool = |b| *b == KEY_LABEL_END;
        Self {
            rest: key.get(start..).unwrap_or(&[]).split(end),
        }
    }
}

impl<'a> Iterator for KeyLabels<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let label = self.rest.next()?;
            if label.is_empty() {
                continue;
            }
            let Some(at) = label.iter().position(|b| *b == KEY_KV) else {
                continue;
            };
            if let (Some(k), Some(v)) = (label.get(..at), label.get(at + 1..)) {
                return Some((k, v));
            }
        }
    }
}

/// The family name at the start of an encoded series key.
fn family_name(key: &[u8]) -> &str {
    let end = key
        .iter()
        .position(|b| *b == KEY_NAME_END)
        .unwrap_or(key.len());
    key.get(..end)
        .and_then(|b| std::str::from_utf8(b).ok())
        .unwrap_or("")
}

impl SeriesSnapshot {
    /// The family name.
    pub fn name(&self) -> &str {
        family_name(&self.key)
    }

    /// Labels as raw bytes, sorted by name. The key was built from `str`s, so every slice is
    /// valid UTF-8; the encoder writes bytes and needn't check it again.
    pub fn label_bytes(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        KeyLabels::of(&self.key)
    }

    /// Labels, sorted by name.
    pub fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.label_bytes()
            .filter_map(|(k, v)| Some((std::str::from_utf8(k).ok()?, std::str::from_utf8(v).ok()?)))
    }
}

/// Every series, sorted, with family metadata.
#[derive(Debug)]
pub struct Snapshot {
    /// Series sorted by family name, then labels.
    pub series: Vec<SeriesSnapshot>,
    families: Arc<DashMap<Box<str>, Family, SeriesHasher>>,
}

impl Snapshot {
    /// Metadata of a family.
    pub fn family(&self, name: &str) -> Option<Family> {
        self.families.get(name).map(|f| f.clone())
    }
}

#[cfg(test)]
mod tests;
