//! The bridge's own metrics, `statsd_bridge_*`, on the same `/metrics` page.
//!
//! Label values come only from closed vocabularies (`Transport::as_str`,
//! `ParseError::reason`, `Rejection::reason`, `MetricType::as_str`), never from user data,
//! and every handle is resolved once at start so the hot path only bumps atomics.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::aggregate::Rejection;
use crate::origin::{LookupCounts, Outcome, Source};
use crate::protocol::{MetricType, ParseError};

/// Where a datagram or line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP datagrams.
    Udp,
    /// Newline-delimited TCP streams.
    Tcp,
    /// Unix datagram sockets.
    Unixgram,
}

impl Transport {
    /// The `transport` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Unixgram => "unixgram",
        }
    }

    const ALL: [Transport; 3] = [Self::Udp, Self::Tcp, Self::Unixgram];

    fn index(self) -> usize {
        self as usize
    }
}

const TYPES: [MetricType; 6] = [
    MetricType::Counter,
    MetricType::Gauge,
    MetricType::Timer,
    MetricType::Histogram,
    MetricType::Distribution,
    MetricType::Set,
];

/// Resolved counter handles for one transport.
#[derive(Debug, Clone)]
pub struct TransportCounters {
    /// Datagrams (or TCP reads) received.
    pub packets: IntCounter,
    /// Bytes received.
    pub bytes: IntCounter,
    /// Lines received (before parsing).
    pub lines: IntCounter,
}

/// Every self-metric handle.
#[derive(Debug, Clone)]
pub struct Telemetry {
    /// The registry rendered after the user's series.
    pub registry: Registry,
    transports: Vec<TransportCounters>,
    rejected: Vec<IntCounter>,
    dropped: Vec<IntCounter>,
    samples: Vec<IntCounter>,
    /// Events accepted.
    pub events: IntCounter,
    /// Service checks accepted.
    pub service_checks: IntCounter,
    /// Lines whose sample rate was unparsable or outside (0, 1] and was read as 1.
    pub sample_rate_invalid: IntCounter,
    /// Tags without a value or with an empty key, dropped.
    pub tags_skipped: IntCounter,
    /// Labels renamed to `exported_…` because the name is reserved.
    pub labels_renamed: IntCounter,
    /// Live series.
    pub series: IntGauge,
    /// Series created.
    pub series_created: IntCounter,
    /// Series removed by the TTL.
    pub series_expired: IntCounter,
    /// Time to build and encode a scrape.
    pub scrape_duration: Histogram,
    lines_too_long: Vec<IntCounter>,
    /// TCP connections accepted.
    pub tcp_connections: IntCounter,
    /// TCP connections open now.
    pub tcp_connections_open: IntGauge,
    /// TCP connections closed at once because the limit was reached.
    pub tcp_connections_rejected: IntCounter,
    /// TCP connections that ended with a read error.
    pub tcp_connection_errors: IntCounter,
    /// Lines relayed.
    pub relay_lines: IntCounter,
    /// Lines not relayed: queue full or send failed.
    pub relay_lines_dropped: IntCounter,
    /// Lines too long for one relay packet.
    pub relay_lines_too_long: IntCounter,
    /// Relay packets sent.
    pub relay_packets: IntCounter,
    /// Relay sends that failed.
    pub relay_errors: IntCounter,
    /// Config reloads that applied.
    pub reloads_ok: IntCounter,
    /// Config reloads that failed (the old config stays).
    pub reloads_failed: IntCounter,
    /// 1 when the last reload applied, 0 when it failed.
    pub last_reload_successful: IntGauge,
    /// Mapping rules loaded.
    pub mappings_loaded: IntGauge,
    /// Mapping lookups answered from the cache.
    pub mapping_cache_hits: IntCounter,
    /// Mapping lookups computed.
    pub mapping_cache_misses: IntCounter,
    /// Datagrams the kernel dropped on the UDP sockets (receive buffer full).
    pub udp_kernel_drops: IntCounter,
    /// Origin lookups, by source then outcome (see [`crate::origin::Source`]).
    origin_lookups: Vec<Vec<IntCounter>>,
    /// Pods in the origin index.
    pub origin_pods: IntGauge,
    /// Restarts of the pod watch (errors, expired resource versions).
    pub origin_watch_restarts: IntCounter,
    /// Series removed because their pod was deleted `pod_ttl` ago.
    pub origin_series_expired: IntCounter,
}

impl Telemetry {
    /// Registers every metric, process metrics included.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter_vec =
            |name: &str, help: &str, label: &str| -> Result<IntCounterVec, prometheus::Error> {
                let v = IntCounterVec::new(Opts::new(name, help), &[label])?;
                registry.register(Box::new(v.clone()))?;
                Ok(v)
            };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let packets = counter_vec(
            "statsd_bridge_packets_total",
            "Datagrams received (TCP: reads), by transport.",
            "transport",
        )?;
        let bytes = counter_vec(
            "statsd_bridge_bytes_total",
            "Bytes received, by transport.",
            "transport",
        )?;
        let lines = counter_vec(
            "statsd_bridge_lines_total",
            "Non-empty lines received, by transport.",
            "transport",
        )?;
        let transports = Transport::ALL
            .iter()
            .map(|t| TransportCounters {
                packets: packets.with_label_values(&[t.as_str()]),
                bytes: bytes.with_label_values(&[t.as_str()]),
                lines: lines.with_label_values(&[t.as_str()]),
            })
            .collect();
        let rejected_vec = counter_vec(
            "statsd_bridge_lines_rejected_total",
            "Lines rejected by the parser, by reason; the other lines of the packet still count.",
            "reason",
        )?;
        let rejected = ParseError::ALL
            .iter()
            .map(|r| rejected_vec.with_label_values(&[r.reason()]))
            .collect();
        let dropped_vec = counter_vec(
            "statsd_bridge_samples_dropped_total",
            "Parsed lines the store refused, by reason (type_conflict: the first type seen for a name wins).",
            "reason",
        )?;
        let dropped = Rejection::ALL
            .iter()
            .map(|r| dropped_vec.with_label_values(&[r.reason()]))
            .collect();
        let samples_vec = counter_vec(
            "statsd_bridge_samples_total",
            "Values applied to the store, by StatsD type (a packed line counts each value).",
            "type",
        )?;
        let samples = TYPES
            .iter()
            .map(|t| samples_vec.with_label_values(&[t.as_str()]))
            .collect();
        let events = samples_vec.with_label_values(&["event"]);
        let service_checks = samples_vec.with_label_values(&["service_check"]);
        let sample_rate_invalid = counter(
            "statsd_bridge_sample_rate_invalid_total",
            "Lines whose sample rate was unparsable or outside (0, 1] and was read as 1.",
        )?;
        let tags_skipped = counter(
            "statsd_bridge_tags_skipped_total",
            "Tags dropped because they had no value or an empty key.",
        )?;
        let labels_renamed = counter(
            "statsd_bridge_labels_renamed_total",
            "Labels renamed to exported_<name> because the name is reserved (le, quantile, __*).",
        )?;
        let series = IntGauge::new("statsd_bridge_series", "Series currently held.")?;
        registry.register(Box::new(series.clone()))?;
        let series_created = counter("statsd_bridge_series_created_total", "Series created.")?;
        let series_expired = counter(
            "statsd_bridge_series_expired_total",
            "Series removed after the TTL.",
        )?;
        let scrape_duration = Histogram::with_opts(
            HistogramOpts::new(
                "statsd_bridge_scrape_duration_seconds",
                "Time to snapshot and encode the metrics page.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        registry.register(Box::new(scrape_duration.clone()))?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "statsd_bridge_build_info",
                "Build information; the value is 1.",
            ),
            &["version"],
        )?;
        registry.register(Box::new(build_info.clone()))?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let too_long_vec = counter_vec(
            "statsd_bridge_lines_too_long_total",
            "Lines dropped for exceeding max_line_length, by transport.",
            "transport",
        )?;
        let lines_too_long = Transport::ALL
            .iter()
            .map(|t| too_long_vec.with_label_values(&[t.as_str()]))
            .collect();
        let tcp_connections = counter(
            "statsd_bridge_tcp_connections_total",
            "TCP connections accepted.",
        )?;
        let tcp_connections_open = IntGauge::new(
            "statsd_bridge_tcp_connections_open",
            "TCP connections open now.",
        )?;
        registry.register(Box::new(tcp_connections_open.clone()))?;
        let tcp_connections_rejected = counter(
            "statsd_bridge_tcp_connections_rejected_total",
            "TCP connections closed at once because max_tcp_connections was reached.",
        )?;
        let tcp_connection_errors = counter(
            "statsd_bridge_tcp_connection_errors_total",
            "TCP connections that ended with a read error.",
        )?;
        let relay_vec = counter_vec(
            "statsd_bridge_relay_lines_total",
            "Lines handed to the relay, by outcome.",
            "outcome",
        )?;
        let relay_lines = relay_vec.with_label_values(&["relayed"]);
        let relay_lines_dropped = relay_vec.with_label_values(&["dropped"]);
        let relay_lines_too_long = relay_vec.with_label_values(&["too_long"]);
        let relay_packets = counter("statsd_bridge_relay_packets_total", "Relay packets sent.")?;
        let relay_errors = counter(
            "statsd_bridge_relay_errors_total",
            "Relay packet sends that failed.",
        )?;
        let reload_vec = counter_vec(
            "statsd_bridge_config_reloads_total",
            "Config reloads (SIGHUP or /-/reload), by outcome; a failed reload keeps the old config.",
            "outcome",
        )?;
        let reloads_ok = reload_vec.with_label_values(&["success"]);
        let reloads_failed = reload_vec.with_label_values(&["failure"]);
        let last_reload_successful = IntGauge::new(
            "statsd_bridge_config_last_reload_successful",
            "1 when the last config or mapping reload applied, 0 when it failed.",
        )?;
        registry.register(Box::new(last_reload_successful.clone()))?;
        last_reload_successful.set(1);
        let mappings_loaded = IntGauge::new("statsd_bridge_mappings", "Mapping rules loaded.")?;
        registry.register(Box::new(mappings_loaded.clone()))?;
        let mapping_cache_hits = counter(
            "statsd_bridge_mapping_cache_hits_total",
            "Mapping lookups answered from a listener's cache.",
        )?;
        let mapping_cache_misses = counter(
            "statsd_bridge_mapping_cache_misses_total",
            "Mapping lookups computed from the rules.",
        )?;
        let udp_kernel_drops = counter(
            "statsd_bridge_udp_receive_buffer_drops_total",
            "Datagrams the kernel dropped because a UDP socket's receive buffer was full (from /proc/net/udp); raise read_buffer and net.core.rmem_max, or udp_workers.",
        )?;
        let lookups = IntCounterVec::new(
            Opts::new(
                "statsd_bridge_origin_lookups_total",
                "Origin lookups: per datagram by source IP or unix socket peer, per line by |c: container ID; by outcome (hit, miss, host_network).",
            ),
            &["source", "outcome"],
        )?;
        registry.register(Box::new(lookups.clone()))?;
        let origin_lookups = Source::ALL
            .iter()
            .map(|s| {
                Outcome::ALL
                    .iter()
                    .map(|o| lookups.with_label_values(&[s.as_str(), o.as_str()]))
                    .collect()
            })
            .collect();
        let origin_pods = IntGauge::new(
            "statsd_bridge_origin_pods",
            "Pods of this node in the origin index.",
        )?;
        registry.register(Box::new(origin_pods.clone()))?;
        let origin_watch_restarts = counter(
            "statsd_bridge_origin_watch_restarts_total",
            "Restarts of the watch of this node's pods (errors and expired watches).",
        )?;
        let origin_series_expired = counter(
            "statsd_bridge_origin_series_expired_total",
            "Series removed because their pod was deleted pod_ttl ago.",
        )?;
        Ok(Self {
            registry,
            transports,
            rejected,
            dropped,
            samples,
            events,
            service_checks,
            sample_rate_invalid,
            tags_skipped,
            labels_renamed,
            series,
            series_created,
            series_expired,
            scrape_duration,
            lines_too_long,
            tcp_connections,
            tcp_connections_open,
            tcp_connections_rejected,
            tcp_connection_errors,
            relay_lines,
            relay_lines_dropped,
            relay_lines_too_long,
            relay_packets,
            relay_errors,
            reloads_ok,
            reloads_failed,
            last_reload_successful,
            mappings_loaded,
            mapping_cache_hits,
            mapping_cache_misses,
            udp_kernel_drops,
            origin_lookups,
            origin_pods,
            origin_watch_restarts,
            origin_series_expired,
        })
    }

    /// Adds a listener thread's origin lookup counts.
    pub fn origin_lookups(&self, counts: &LookupCounts) {
        for (row, counters) in counts.iter().zip(&self.origin_lookups) {
            for (n, c) in row.iter().zip(counters) {
                if *n > 0 {
                    c.inc_by(*n);
                }
            }
        }
    }

    /// Counts a line dropped for its length.
    pub fn line_too_long(&self, t: Transport) {
        if let Some(c) = self.lines_too_long.get(t.index()) {
            c.inc();
        }
    }

    /// Counters of one transport.
    pub fn transport(&self, t: Transport) -> &TransportCounters {
        // Built from Transport::ALL in index order, so the index is always present.
        #[allow(clippy::indexing_slicing)]
        &self.transports[t.index()]
    }

    /// Counts a rejected line.
    pub fn line_rejected(&self, e: ParseError) {
        if let Some(c) = ParseError::ALL
            .iter()
            .position(|r| *r == e)
            .and_then(|i| self.rejected.get(i))
        {
            c.inc();
        }
    }

    /// Counts a line the store refused.
    pub fn sample_dropped(&self, r: Rejection) {
        if let Some(c) = Rejection::ALL
            .iter()
            .position(|x| *x == r)
            .and_then(|i| self.dropped.get(i))
        {
            c.inc();
        }
    }

    /// Where `t` is in the arrays of per-type counts ([`Telemetry::add_samples`]).
    pub fn type_index(t: MetricType) -> usize {
        match t {
            MetricType::Counter => 0,
            MetricType::Gauge => 1,
            MetricType::Timer => 2,
            MetricType::Histogram => 3,
            MetricType::Distribution => 4,
            MetricType::Set => 5,
        }
    }

    /// Adds per-type counts of applied values (by [`Telemetry::type_index`]) and zeroes them.
    pub fn add_samples(&self, counts: &mut [u64; TYPES.len()]) {
        for (c, n) in self.samples.iter().zip(counts.iter_mut()) {
            if *n > 0 {
                c.inc_by(std::mem::take(n));
            }
        }
    }

    /// Every family name this registry exposes, with the series names they write, so user
    /// lines can't take them.
    pub fn reserved_names(&self) -> Vec<String> {
        self.registry
            .gather()
            .iter()
            .flat_map(|f| {
                let n = f.name();
                // The OpenMetrics family name of a counter too (`x` for `x_total`).
                let om = n.strip_suffix("_total").unwrap_or(n);
                [
                    n.to_owned(),
                    format!("{n}_sum"),
                    format!("{n}_count"),
                    format!("{n}_bucket"),
                    om.to_owned(),
                ]
            })
            .collect()
    }

    /// Appends gathered self-metrics in text format.
    pub fn encode_text(families: &[prometheus::proto::MetricFamily], out: &mut String) {
        if let Err(e) = prometheus::TextEncoder::new().encode_utf8(families, out) {
            tracing::warn!(error = %e, "Cannot encode the self-metrics.");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::aggregate::{Store, StoreConfig};
    use crate::ingest::{Ingester, defaults_of};
    use crate::mapping::{Mapper, MapperHandle};
    use crate::protocol::ParseOptions;

    #[test]
    fn a_datagram_counts_its_lines_and_samples_by_type() {
        for t in TYPES {
            assert_eq!(TYPES.get(Telemetry::type_index(t)), Some(&t));
        }
        let store = Arc::new(Store::new(StoreConfig::default(), []));
        let mapper = Mapper::without_rules(&defaults_of(store.config()));
        let telemetry = Arc::new(Telemetry::new().unwrap());
        let ingester = Ingester::new(
            store,
            ParseOptions::default(),
            Arc::clone(&telemetry),
            None,
            Arc::new(MapperHandle::new(mapper)),
            10,
        );
        let mut worker = ingester.worker();
        for _ in 0..2 {
            ingester.datagram(b"a:1|c\nb:1:2|h\nbad\ns:x|s", Transport::Udp, &mut worker);
        }
        let samples: Vec<u64> = telemetry.samples.iter().map(IntCounter::get).collect();
        assert_eq!(samples, [2, 0, 0, 4, 0, 2]);
        assert_eq!(telemetry.transport(Transport::Udp).lines.get(), 8);
    }
}
