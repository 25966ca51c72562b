//! The `[bridge]` table of `pipeline.toml`. Every field's doc comment is its reference.

use std::net::SocketAddr;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::config::ConfigError;
use common::telemetry::LogFormat;
use common::units::{ByteSize, Duration};
use serde::Deserialize;
use toml::Spanned;

use crate::aggregate::{DEFAULT_BUCKETS, ObserverType, SignedGauge, StoreConfig, SummaryOptions};
use crate::mapping::yaml::{self, Rule as MappingRule};
use crate::mapping::{DefaultsSpec, Mapper, MappingError, MappingSpec, MatchType, NativeSpec};
use crate::origin::{
    self,
    table::{Cidr, StaticTable},
};
use crate::protocol::ParseOptions;

/// The whole file as the bridge reads it: its own table, the adapter's table ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    version: Spanned<u32>,
    #[serde(default)]
    bridge: BridgeConfig,
    /// Read and validated by prom-adapter.
    #[serde(default)]
    #[allow(dead_code)]
    adapter: Option<toml::Table>,
}

/// Settings of statsd-bridge (`[bridge]` in `pipeline.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    /// UDP addresses to receive StatsD on; `[]` for none. `":8125"` means all interfaces.
    pub listen_udp: Spanned<Vec<String>>,
    /// TCP addresses to receive newline-delimited StatsD on; `[]` for none.
    pub listen_tcp: Spanned<Vec<String>>,
    /// Unix datagram socket paths (DogStatsD's `dsd.socket`); `[]` for none. The file is
    /// created at start (a stale socket file is replaced) and removed on exit.
    pub listen_unixgram: Spanned<Vec<String>>,
    /// File mode of the unix socket files, in octal as statsd_exporter takes it (`"755"`;
    /// `"722"` lets clients of other users write, as the Datadog Agent does).
    pub unixsocket_mode: Spanned<String>,
    /// Longest line accepted, in bytes; longer TCP lines are dropped and counted.
    pub max_line_length: Spanned<ByteSize>,
    /// Open TCP connections at most; more are closed at once and counted.
    pub max_tcp_connections: Spanned<usize>,
    /// Tags per line at most; a line with more is rejected (`too_many_tags`).
    pub max_tags: Spanned<usize>,
    /// Bytes per tag at most; a line with a longer tag is rejected (`tag_too_long`).
    pub max_tag_length: Spanned<usize>,
    /// statsd_exporter mapping file (YAML), read unchanged; `""` for none. Reloaded on SIGHUP,
    /// `/-/reload` and when the file changes; a bad new file keeps the old rules.
    pub mapping_file: Spanned<String>,
    /// Mapping rules written here instead of in a YAML file, with statsd_exporter's field
    /// names (`match`, `name`, `labels`, `match_type`, `action`, `observer_type`, …).
    pub mapping: Vec<Spanned<MappingRule>>,
    /// Defaults of `[[bridge.mapping]]` rules besides the bridge's own `observer_type`,
    /// `histogram_buckets`, `summary_*` and `ttl`.
    pub mapping_defaults: MappingDefaults,
    /// Mapping results cached per listener thread (an LRU); `0` disables the cache.
    pub mapping_cache_size: usize,
    /// Forward every received line to this StatsD server (`host:port`, UDP); `""` for none.
    pub relay_address: Spanned<String>,
    /// Largest relay packet, in bytes; longer lines are not relayed.
    pub relay_packet_length: Spanned<usize>,
    /// Address of the HTTP server (`/metrics`, `/healthz`, `/readyz`).
    pub web_listen: Spanned<String>,
    /// Path of the metrics page.
    pub telemetry_path: Spanned<String>,
    /// Serve OpenMetrics 1.0 to scrapers that ask for it. Off by default: OpenMetrics
    /// counters end in `_total`, so switching it on renames every counter in Prometheus.
    pub openmetrics: bool,
    /// Enable `POST`/`PUT /-/reload` and `/-/quit` (statsd_exporter's `--web.enable-lifecycle`).
    pub enable_lifecycle: bool,
    /// Sockets (and reader threads) per UDP address, sharing the port with `SO_REUSEPORT`;
    /// `0` means one per CPU, up to 4.
    pub udp_workers: usize,
    /// Kernel receive buffer per socket (`SO_RCVBUF`); `0` keeps the OS default. The kernel
    /// caps it at `net.core.rmem_max`; the size granted is logged.
    pub read_buffer: ByteSize,
    /// What `ms`, `h` and `d` lines become: `"histogram"` or `"summary"` (statsd_exporter's
    /// default).
    pub observer_type: ObserverType,
    /// Histogram bucket upper bounds (seconds for timers), strictly increasing.
    pub histogram_buckets: Spanned<Vec<f64>>,
    /// Native histograms next to the classic buckets (served in the protobuf format, which
    /// Prometheus asks for with `--enable-feature=native-histograms`): above 1 turns them on,
    /// the widest growth from one bucket to the next (1.1 → schema 3). statsd_exporter's
    /// `native_histogram_bucket_factor`; a mapping file's `histogram_options` override it.
    pub native_histogram_bucket_factor: Spanned<f64>,
    /// Populated native buckets per series at most (0: 160); past it the resolution halves.
    pub native_histogram_max_buckets: u32,
    /// Observations this close to zero count in the zero bucket; default 2^-128.
    pub native_histogram_zero_threshold: Option<f64>,
    /// Summary quantiles, each in (0, 1).
    pub summary_quantiles: Spanned<Vec<f64>>,
    /// How long an observation counts towards summary quantiles.
    pub summary_max_age: Duration,
    /// Buffers the summary window rotates through.
    pub summary_age_buckets: Spanned<u32>,
    /// Samples a summary buffer holds before it is compacted.
    pub summary_buf_cap: Spanned<usize>,
    /// Window over which a set (`|s`) counts distinct members.
    pub set_window: Spanned<Duration>,
    /// Distinct members a set remembers per window; more are not counted.
    pub set_max_members: usize,
    /// How `g:+5|g` / `g:-5|g` are read: `"delta"` (statsd_exporter) or `"absolute"` (the
    /// Datadog Agent).
    pub signed_gauge: SignedGauge,
    /// Series idle for this long are dropped; `"0s"` keeps them forever.
    pub ttl: Duration,
    /// At most this many series; lines that would create more are dropped and counted.
    pub max_series: Spanned<usize>,
    /// Read DogStatsD `|#k:v` tags.
    pub parse_dogstatsd_tags: bool,
    /// Read InfluxDB `name,k=v:1|c` tags.
    pub parse_influxdb_tags: bool,
    /// Read Librato `name#k=v:1|c` tags.
    pub parse_librato_tags: bool,
    /// Read SignalFx `name[k=v]:1|c` tags.
    pub parse_signalfx_tags: bool,
    /// Family of DogStatsD events (a counter by `alert_type` and tags).
    pub event_metric: Spanned<String>,
    /// Family of DogStatsD service checks (a gauge of the status by `check` and tags).
    pub service_check_metric: Spanned<String>,
    /// On SIGTERM, how long `/metrics` keeps serving after the listeners stop, so a last
    /// scrape collects what was received.
    pub shutdown_grace: Duration,
    /// Log level: `debug`, `info`, `warn` or `error`. `RUST_LOG` overrides it.
    pub log_level: Spanned<String>,
    /// Log format: `"text"` or `"json"`.
    pub log_format: LogFormat,
    /// Origin detection: which pod sent a line, as labels (`[bridge.origin]`).
    pub origin: OriginSection,
}

/// Where origin labels come from (`[bridge.origin] mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OriginMode {
    /// `kubernetes` when running in a pod (`KUBERNETES_SERVICE_HOST` is set), else `off`.
    Auto,
    /// Watch this node's pods; label series by the sender's pod.
    Kubernetes,
    /// Label series by the `[[bridge.origin.static]]` table of source addresses.
    Static,
    /// No origin labels.
    Off,
}

/// Which label wins when a line's tag and the sender's origin label have the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precedence {
    /// The line's tag (what the application said about itself).
    Tags,
    /// The origin label (what the node knows of the sender).
    Origin,
}

/// `[bridge.origin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OriginSection {
    /// `auto`, `kubernetes`, `static` or `off`.
    pub mode: Spanned<OriginMode>,
    /// Series of a deleted pod are removed this long after the pod is gone.
    pub pod_ttl: Duration,
    /// The node whose pods are watched; `""`: the `NODE_NAME` environment variable (set it
    /// from the downward API's `spec.nodeName`).
    pub node_name: String,
    /// A kubeconfig file for the pod watch; `""`: the in-cluster service account.
    pub kubeconfig: String,
    /// Name of the label holding the sender pod's namespace.
    pub namespace_label: Spanned<String>,
    /// Name of the label holding the sender pod's name.
    pub pod_label: Spanned<String>,
    /// Pod label keys copied onto its series (`app`, `app.kubernetes.io/name`, …); the label
    /// name is the key sanitized (`app_kubernetes_io_name`).
    pub pod_labels: Spanned<Vec<String>>,
    /// `tags` (a line's own tag wins over an origin label of the same name) or `origin`.
    pub precedence: Precedence,
    /// Where `<pid>/cgroup` of a unix socket sender is read; the bridge needs the host's PID
    /// namespace (`hostPID: true`) to see its peers there.
    pub proc_root: String,
    /// The cgroup tree, where `|c:in-<inode>` fields are resolved.
    pub cgroup_root: String,
    /// Listeners wait this long for the first pod list before they read (so early lines
    /// aren't left without labels); after it they read anyway.
    pub sync_timeout: Duration,
    /// `mode = "static"`: source address or CIDR → labels; the longest prefix wins.
    #[serde(rename = "static")]
    pub static_table: Vec<Spanned<StaticEntry>>,
}

/// One `[[bridge.origin.static]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticEntry {
    /// An address (`10.1.2.3`) or a CIDR block (`10.1.0.0/16`), IPv4 or IPv6.
    pub source: String,
    /// The labels its senders' series get.
    pub labels: std::collections::BTreeMap<String, String>,
}

impl Default for OriginSection {
    fn default() -> Self {
        let s = |v: &str| Spanned::new(0..0, v.to_owned());
        Self {
            mode: Spanned::new(0..0, OriginMode::Auto),
            pod_ttl: Duration(std::time::Duration::from_secs(300)),
            node_name: String::new(),
            kubeconfig: String::new(),
            namespace_label: s("namespace"),
            pod_label: s("pod"),
            pod_labels: Spanned::new(0..0, Vec::new()),
            precedence: Precedence::Tags,
            proc_root: "/proc".to_owned(),
            cgroup_root: "/sys/fs/cgroup".to_owned(),
            sync_timeout: Duration(std::time::Duration::from_secs(30)),
            static_table: Vec::new(),
        }
    }
}

impl Default for BridgeConfig {
    fn default() -> Self {
        let s = |v: &str| Spanned::new(0..0, v.to_owned());
        Self {
            listen_udp: Spanned::new(0..0, vec!["0.0.0.0:8125".to_owned()]),
            listen_tcp: Spanned::new(0..0, vec!["0.0.0.0:8125".to_owned()]),
            listen_unixgram: Spanned::new(0..0, Vec::new()),
            unixsocket_mode: s("755"),
            max_line_length: Spanned::new(0..0, ByteSize(64 * 1024)),
            max_tcp_connections: Spanned::new(0..0, 1024),
            max_tags: Spanned::new(0..0, 100),
            max_tag_length: Spanned::new(0..0, 1024),
            mapping_file: s(""),
            mapping: Vec::new(),
            mapping_defaults: MappingDefaults::default(),
            mapping_cache_size: 1000,
            relay_address: s(""),
            relay_packet_length: Spanned::new(0..0, 1400),
            openmetrics: false,
            enable_lifecycle: false,
            web_listen: s("0.0.0.0:9102"),
            telemetry_path: s("/metrics"),
            udp_workers: 0,
            read_buffer: ByteSize(8 << 20),
            observer_type: ObserverType::Histogram,
            histogram_buckets: Spanned::new(0..0, DEFAULT_BUCKETS.to_vec()),
            native_histogram_bucket_factor: Spanned::new(0..0, 0.0),
            native_histogram_max_buckets: 0,
            native_histogram_zero_threshold: None,
            summary_quantiles: Spanned::new(0..0, vec![0.5, 0.9, 0.99]),
            summary_max_age: Duration(std::time::Duration::from_secs(600)),
            summary_age_buckets: Spanned::new(0..0, 5),
            summary_buf_cap: Spanned::new(0..0, 500),
            set_window: Spanned::new(0..0, Duration(std::time::Duration::from_secs(60))),
            set_max_members: 100_000,
            signed_gauge: SignedGauge::Delta,
            ttl: Duration(std::time::Duration::ZERO),
            max_series: Spanned::new(0..0, 1_000_000),
            parse_dogstatsd_tags: true,
            parse_influxdb_tags: true,
            parse_librato_tags: true,
            parse_signalfx_tags: true,
            event_metric: s("statsd_events_total"),
            service_check_metric: s("statsd_service_check_status"),
            shutdown_grace: Duration(std::time::Duration::from_secs(5)),
            log_level: s("info"),
            log_format: LogFormat::Text,
            origin: OriginSection::default(),
        }
    }
}

/// `[bridge.mapping_defaults]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MappingDefaults {
    /// `glob` (the default) or `regex`, for rules without `match_type`.
    pub match_type: Option<MatchType>,
    /// The first glob match found wins instead of the lowest rule index.
    pub glob_disable_ordering: bool,
}

/// The config after validation, ready to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The settings as written (and overridden by flags).
    pub bridge: BridgeConfig,
    /// UDP addresses, parsed.
    pub udp: Vec<SocketAddr>,
    /// TCP addresses, parsed.
    pub tcp: Vec<SocketAddr>,
    /// Unix datagram socket paths.
    pub unixgram: Vec<PathBuf>,
    /// Unix socket file mode.
    pub unix_mode: u32,
    /// Relay target, resolved.
    pub relay: Option<SocketAddr>,
    /// The file the config came from, for reloads; `None` for defaults and flags only.
    pub path: Option<PathBuf>,
    /// The mapping rules (from `mapping_file`, `[[bridge.mapping]]`, or none), validated.
    pub mapping: MappingSpec,
    /// Accepted mapping settings that change nothing, to log at start.
    pub mapping_warnings: Vec<String>,
    /// A mapping file given by flag, which wins over the config file on reload too.
    pub mapping_override: Option<String>,
    /// HTTP address, parsed.
    pub web: SocketAddr,
    /// The static origin table, parsed.
    pub origin_table: StaticTable,
}

impl Config {
    /// Parses and validates `pipeline.toml` text.
    pub fn from_toml(src: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: PipelineFile = common::config::from_toml(src, path)?;
        let path_buf = path.to_path_buf();
        if *file.version.get_ref() != 1 {
            return Err(ConfigError::at(
                path,
                src,
                file.version.span(),
                Some("version"),
                format!(
                    "unsupported version {} (this build reads version 1)",
                    file.version.get_ref()
                ),
            ));
        }
        let mut cfg = Self::validate(file.bridge, src, path)?;
        cfg.path = Some(path_buf);
        Ok(cfg)
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let src = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::whole_file(path, format!("cannot read file: {e}")))?;
        Self::from_toml(&src, path)
    }

    /// Validates settings that came from anywhere (file, defaults, flags); `src` and `path`
    /// place errors (an empty `src` gives file-level errors).
    pub fn validate(bridge: BridgeConfig, src: &str, path: &Path) -> Result<Self, ConfigError> {
        let err = |span: std::ops::Range<usize>, field: &str, msg: String| {
            if src.is_empty() || span.is_empty() {
                ConfigError {
                    path: path.to_path_buf(),
                    position: None,
                    field: Some(field.to_owned()),
                    message: msg,
                }
            } else {
                ConfigError::at(path, src, span, Some(field), msg)
            }
        };
        let udp = bridge
            .listen_udp
            .get_ref()
            .iter()
            .map(|a| parse_addr(a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(bridge.listen_udp.span(), "bridge.listen_udp", e))?;
        let tcp = bridge
            .listen_tcp
            .get_ref()
            .iter()
            .map(|a| parse_addr(a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(bridge.listen_tcp.span(), "bridge.listen_tcp", e))?;
        let unixgram: Vec<PathBuf> = bridge
            .listen_unixgram
            .get_ref()
            .iter()
            .map(PathBuf::from)
            .collect();
        if unixgram.iter().any(|p| p.as_os_str().is_empty()) {
            return Err(err(
                bridge.listen_unixgram.span(),
                "bridge.listen_unixgram",
                "empty path".to_owned(),
            ));
        }
        let unix_mode = u32::from_str_radix(bridge.unixsocket_mode.get_ref(), 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| {
                err(
                    bridge.unixsocket_mode.span(),
                    "bridge.unixsocket_mode",
                    format!(
                        "`{}` is not an octal file mode like \"755\"",
                        bridge.unixsocket_mode.get_ref()
                    ),
                )
            })?;
        let relay = match bridge.relay_address.get_ref().as_str() {
            "" => None,
            a => Some(
                a.to_socket_addrs()
                    .ok()
                    .and_then(|mut addrs| addrs.next())
                    .ok_or_else(|| {
                        err(
                            bridge.relay_address.span(),
                            "bridge.relay_address",
                            format!("`{a}` is not a reachable host:port"),
                        )
                    })?,
            ),
        };
        let web = parse_addr(bridge.web_listen.get_ref())
            .map_err(|e| err(bridge.web_listen.span(), "bridge.web_listen", e))?;
        if !bridge.telemetry_path.get_ref().starts_with('/') {
            return Err(err(
                bridge.telemetry_path.span(),
                "bridge.telemetry_path",
                "must start with `/`".to_owned(),
            ));
        }
        let buckets = bridge.histogram_buckets.get_ref();
        if buckets.is_empty()
            || buckets.iter().any(|b| !b.is_finite())
            || buckets.windows(2).any(|w| matches!(w, [a, b] if a >= b))
        {
            return Err(err(
                bridge.histogram_buckets.span(),
                "bridge.histogram_buckets",
                "must be finite, strictly increasing and not empty".to_owned(),
            ));
        }
        let factor = *bridge.native_histogram_bucket_factor.get_ref();
        if !factor.is_finite() || factor < 0.0 {
            return Err(err(
                bridge.native_histogram_bucket_factor.span(),
                "bridge.native_histogram_bucket_factor",
                "must be 0 (off) or a finite number above 1".to_owned(),
            ));
        }
        if bridge
            .native_histogram_zero_threshold
            .is_some_and(|z| !z.is_finite() || z < 0.0)
        {
            return Err(err(
                0..0,
                "bridge.native_histogram_zero_threshold",
                "must be a finite number, 0 or more".to_owned(),
            ));
        }
        if bridge
            .summary_quantiles
            .get_ref()
            .iter()
            .any(|q| !(*q > 0.0 && *q < 1.0))
        {
            return Err(err(
                bridge.summary_quantiles.span(),
                "bridge.summary_quantiles",
                "each quantile must be in (0, 1)".to_owned(),
            ));
        }
        for (value, span, field) in [
            (
                *bridge.summary_age_buckets.get_ref() as usize,
                bridge.summary_age_buckets.span(),
                "bridge.summary_age_buckets",
            ),
            (
                *bridge.summary_buf_cap.get_ref(),
                bridge.summary_buf_cap.span(),
                "bridge.summary_buf_cap",
            ),
            (
                *bridge.max_series.get_ref(),
                bridge.max_series.span(),
                "bridge.max_series",
            ),
        ] {
            if value == 0 {
                return Err(err(span, field, "must be at least 1".to_owned()));
            }
        }
        if bridge.set_window.get_ref().0.is_zero() {
            return Err(err(
                bridge.set_window.span(),
                "bridge.set_window",
                "must be above 0s".to_owned(),
            ));
        }
        for (name, field) in [
            (&bridge.event_metric, "bridge.event_metric"),
            (&bridge.service_check_metric, "bridge.service_check_metric"),
        ] {
            if !common::prom::is_valid_name(name.get_ref()) {
                return Err(err(
                    name.span(),
                    field,
                    format!("`{}` is not a valid Prometheus metric name", name.get_ref()),
                ));
            }
        }
        common::telemetry::directives_for_level(bridge.log_level.get_ref(), &[])
            .map_err(|e| err(bridge.log_level.span(), "bridge.log_level", e))?;
        let origin_table = validate_origin(&bridge.origin, &err)?;
        let (mapping, mapping_warnings) = Self::mapping_spec(&bridge, src, path)?;
        Ok(Self {
            origin_table,
            bridge,
            udp,
            tcp,
            unixgram,
            unix_mode,
            relay,
            web,
            path: None,
            mapping,
            mapping_warnings,
            mapping_override: None,
        })
    }

    /// Reads the mapping rules the settings name and checks they compile.
    pub fn mapping_spec(
        bridge: &BridgeConfig,
        src: &str,
        path: &Path,
    ) -> Result<(MappingSpec, Vec<String>), ConfigError> {
        let file = bridge.mapping_file.get_ref();
        if !file.is_empty() && !bridge.mapping.is_empty() {
            return Err(ConfigError::whole_file(
                path,
                "set either bridge.mapping_file or [[bridge.mapping]] rules, not both",
            ));
        }
        let (spec, warnings) = if !file.is_empty() {
            let mapping_path = Path::new(file);
            let yaml = std::fs::read_to_string(mapping_path).map_err(|e| {
                ConfigError::whole_file(mapping_path, format!("cannot read mapping file: {e}"))
            })?;
            yaml::parse(&yaml, mapping_path).map_err(|e| mapping_error(mapping_path, e))?
        } else {
            let base = crate::ingest::defaults_of(&store_config(bridge));
            let defaults = DefaultsSpec {
                match_type: bridge
                    .mapping_defaults
                    .match_type
                    .unwrap_or(MatchType::Glob),
                glob_disable_ordering: bridge.mapping_defaults.glob_disable_ordering,
                ..base
            };
            let mut rules = Vec::new();
            let warnings = Vec::new();
            for rule in &bridge.mapping {
                let (line, col) = common::config::line_col(src, rule.span().start);
                let position = format!("{}:{line}:{col}", path.display());
                rules.push(yaml::rule_spec(rule.get_ref().clone(), position));
            }
            (MappingSpec { defaults, rules }, warnings)
        };
        Mapper::compile(&spec).map_err(|e| mapping_error(path, e))?;
        Ok((spec, warnings))
    }

    /// Origin detection's settings, with `auto` resolved and the node name taken from
    /// `env` (`NODE_NAME`) when the file has none.
    pub fn origin(&self, env: impl Fn(&str) -> Option<String>) -> Result<origin::Settings, String> {
        let o = &self.bridge.origin;
        let in_cluster = env("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty());
        let mode = match *o.mode.get_ref() {
            OriginMode::Auto if in_cluster => OriginMode::Kubernetes,
            OriginMode::Auto => OriginMode::Off,
            m => m,
        };
        let mode = match mode {
            OriginMode::Off | OriginMode::Auto => origin::Mode::Off,
            OriginMode::Static => origin::Mode::Static(self.origin_table.clone()),
            OriginMode::Kubernetes => {
                let node = Some(o.node_name.clone())
                    .filter(|n| !n.is_empty())
                    .or_else(|| env("NODE_NAME").filter(|n| !n.is_empty()))
                    .ok_or_else(|| {
                        let why = if *o.mode.get_ref() == OriginMode::Auto {
                            "bridge.origin.mode is auto and this is a pod"
                        } else {
                            "bridge.origin.mode is kubernetes"
                        };
                        format!(
                            "{why}, but the node is unknown: set NODE_NAME from the downward API \
                             (fieldRef spec.nodeName), or bridge.origin.node_name, or set \
                             bridge.origin.mode = \"off\""
                        )
                    })?;
                origin::Mode::Kubernetes {
                    node,
                    kubeconfig: Some(PathBuf::from(&o.kubeconfig))
                        .filter(|p| !p.as_os_str().is_empty()),
                }
            }
        };
        Ok(origin::Settings {
            mode,
            names: origin::LabelNames::new(
                o.namespace_label.get_ref(),
                o.pod_label.get_ref(),
                o.pod_labels.get_ref(),
            ),
            pod_ttl: o.pod_ttl.0,
            origin_wins: o.precedence == Precedence::Origin,
            proc_root: PathBuf::from(&o.proc_root),
            cgroup_root: PathBuf::from(&o.cgroup_root),
            sync_timeout: o.sync_timeout.0,
        })
    }

    /// Store settings.
    pub fn store(&self) -> StoreConfig {
        store_config(&self.bridge)
    }

    /// UDP reader threads per address.
    pub fn udp_workers(&self) -> usize {
        match self.bridge.udp_workers {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .clamp(1, 4),
            n => n,
        }
    }

    /// Parser settings.
    pub fn parse_options(&self) -> ParseOptions {
        let b = &self.bridge;
        ParseOptions {
            dogstatsd_tags: b.parse_dogstatsd_tags,
            influxdb_tags: b.parse_influxdb_tags,
            librato_tags: b.parse_librato_tags,
            signalfx_tags: b.parse_signalfx_tags,
            max_tags: *b.max_tags.get_ref(),
            max_tag_length: *b.max_tag_length.get_ref(),
        }
    }
}

/// Checks `[bridge.origin]` and parses its static table.
fn validate_origin(
    o: &OriginSection,
    err: &impl Fn(std::ops::Range<usize>, &str, String) -> ConfigError,
) -> Result<StaticTable, ConfigError> {
    for (name, field) in [
        (&o.namespace_label, "bridge.origin.namespace_label"),
        (&o.pod_label, "bridge.origin.pod_label"),
    ] {
        if !is_label_name(name.get_ref()) {
            return Err(err(
                name.span(),
                field,
                format!("`{}` is not a valid Prometheus label name", name.get_ref()),
            ));
        }
    }
    if o.namespace_label.get_ref() == o.pod_label.get_ref() {
        return Err(err(
            o.pod_label.span(),
            "bridge.origin.pod_label",
            "must differ from bridge.origin.namespace_label".to_owned(),
        ));
    }
    if let Some(bad) = o.pod_labels.get_ref().iter().find(|k| k.is_empty()) {
        return Err(err(
            o.pod_labels.span(),
            "bridge.origin.pod_labels",
            format!("`{bad}`: empty pod label key"),
        ));
    }
    // Each becomes a label name: two keys (or a key and the pod or namespace label) that
    // sanitize to one name would overwrite each other, and a pod label named `pod` would
    // credit a pod's series to another pod.
    let mut names = vec![
        o.namespace_label.get_ref().clone(),
        o.pod_label.get_ref().clone(),
    ];
    for key in o.pod_labels.get_ref() {
        let name = common::prom::sanitize_name(key).into_owned();
        if names.contains(&name) {
            return Err(err(
                o.pod_labels.span(),
                "bridge.origin.pod_labels",
                format!(
                    "`{key}` becomes the label `{name}`, which another origin label already has"
                ),
            ));
        }
        names.push(name);
    }
    let mut entries = Vec::new();
    for (i, entry) in o.static_table.iter().enumerate() {
        let field = format!("bridge.origin.static[{i}]");
        let e = entry.get_ref();
        let cidr =
            Cidr::parse(&e.source).map_err(|m| err(entry.span(), &format!("{field}.source"), m))?;
        if e.labels.is_empty() {
            return Err(err(
                entry.span(),
                &format!("{field}.labels"),
                "no labels".to_owned(),
            ));
        }
        if let Some((k, _)) = e.labels.iter().find(|(k, _)| !is_label_name(k)) {
            return Err(err(
                entry.span(),
                &format!("{field}.labels"),
                format!("`{k}` is not a valid Prometheus label name"),
            ));
        }
        let labels: Vec<(String, String)> = e.labels.clone().into_iter().collect();
        entries.push((cidr, labels.into()));
    }
    if *o.mode.get_ref() == OriginMode::Static && entries.is_empty() {
        return Err(err(
            o.mode.span(),
            "bridge.origin.static",
            "mode = \"static\" needs at least one [[bridge.origin.static]] entry".to_owned(),
        ));
    }
    Ok(StaticTable::new(entries))
}

/// A label name Prometheus accepts that isn't reserved (`__*`).
fn is_label_name(s: &str) -> bool {
    common::prom::is_valid_name(s) && !s.contains(':') && !s.starts_with("__")
}

/// A mapping error as a config error (the position already names the file when known).
fn mapping_error(path: &Path, e: MappingError) -> ConfigError {
    match e.position {
        Some(position) => ConfigError {
            path: PathBuf::from(position),
            position: None,
            field: None,
            message: e.message,
        },
        None => ConfigError::whole_file(path, e.message),
    }
}

fn store_config(b: &BridgeConfig) -> StoreConfig {
    StoreConfig {
        observer: b.observer_type,
        buckets: Arc::from(b.histogram_buckets.get_ref().as_slice()),
        native: NativeSpec {
            factor: Some(*b.native_histogram_bucket_factor.get_ref()),
            max_buckets: Some(b.native_histogram_max_buckets),
            zero_threshold: b.native_histogram_zero_threshold,
        },
        summary: Arc::new(SummaryOptions {
            quantiles: b.summary_quantiles.get_ref().clone(),
            max_age: b.summary_max_age.0,
            age_buckets: *b.summary_age_buckets.get_ref(),
            buf_cap: *b.summary_buf_cap.get_ref(),
        }),
        set_window: b.set_window.get_ref().0,
        set_max_members: b.set_max_members,
        signed_gauge: b.signed_gauge,
        max_series: *b.max_series.get_ref(),
        ttl: b.ttl.0,
        event_family: b.event_metric.get_ref().clone(),
        service_check_family: b.service_check_metric.get_ref().clone(),
        openmetrics: b.openmetrics,
    }
}

/// Parses `host:port`, `[v6]:port` or statsd_exporter's `:port` (all interfaces).
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_owned()
    };
    full.parse()
        .map_err(|_| format!("`{s}` is not an address like 0.0.0.0:8125 or :8125"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(src: &str) -> Result<Config, String> {
        Config::from_toml(src, Path::new("pipeline.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn shipped_pipeline_toml_is_valid_and_matches_the_defaults() {
        let src = include_str!("../../pipeline.toml");
        let cfg = load(src).unwrap();
        let defaults = Config::validate(BridgeConfig::default(), "", Path::new("")).unwrap();
        assert_eq!(cfg.udp, defaults.udp);
        assert_eq!(cfg.web, defaults.web);
        assert_eq!(cfg.store().buckets, defaults.store().buckets);
        assert_eq!(
            cfg.bridge.max_series.get_ref(),
            defaults.bridge.max_series.get_ref()
        );
    }

    #[test]
    fn config_cases() {
        let cases: &[(&str, &str, Result<(), &str>)] = &[
            ("minimal", "version = 1\n", Ok(())),
            ("empty bridge table", "version = 1\n[bridge]\n", Ok(())),
            (
                "adapter table ignored",
                "version = 1\n[adapter]\nlisten = \"x\"\n",
                Ok(()),
            ),
            (
                "statsd_exporter address",
                "version = 1\n[bridge]\nweb_listen = \":9102\"\n",
                Ok(()),
            ),
            (
                "no listeners",
                "version = 1\n[bridge]\nlisten_udp = []\n",
                Ok(()),
            ),
            (
                "unknown key",
                "version = 1\n[bridge]\nlisten_udpp = []\n",
                Err("pipeline.toml:3:1: field `bridge.listen_udpp`: unknown field `listen_udpp`"),
            ),
            (
                "unknown table",
                "version = 1\n[bridgee]\n",
                Err("pipeline.toml:2:"),
            ),
            (
                "missing version",
                "[bridge]\n",
                Err("missing field `version`"),
            ),
            (
                "wrong version",
                "version = 2\n",
                Err("pipeline.toml:1:11: field `version`: unsupported version 2"),
            ),
            (
                "bad address",
                "version = 1\n[bridge]\nlisten_udp = [\"nowhere\"]\n",
                Err("pipeline.toml:3:14: field `bridge.listen_udp`: `nowhere` is not an address"),
            ),
            (
                "bad duration",
                "version = 1\n[bridge]\nttl = \"5 parsecs\"\n",
                Err("pipeline.toml:3:7: field `bridge.ttl`: unknown unit"),
            ),
            (
                "unsorted buckets",
                "version = 1\n[bridge]\nhistogram_buckets = [1, 0.5]\n",
                Err(
                    "pipeline.toml:3:21: field `bridge.histogram_buckets`: must be finite, strictly increasing",
                ),
            ),
            (
                "bad quantile",
                "version = 1\n[bridge]\nsummary_quantiles = [0.5, 1.0]\n",
                Err("field `bridge.summary_quantiles`: each quantile must be in (0, 1)"),
            ),
            (
                "bad observer",
                "version = 1\n[bridge]\nobserver_type = \"timer\"\n",
                Err("pipeline.toml:3:17: field `bridge.observer_type`: unknown variant `timer`"),
            ),
            (
                "zero series",
                "version = 1\n[bridge]\nmax_series = 0\n",
                Err("field `bridge.max_series`: must be at least 1"),
            ),
            (
                "bad family name",
                "version = 1\n[bridge]\nevent_metric = \"my events\"\n",
                Err(
                    "field `bridge.event_metric`: `my events` is not a valid Prometheus metric name",
                ),
            ),
            (
                "bad log level",
                "version = 1\n[bridge]\nlog_level = \"loud\"\n",
                Err("field `bridge.log_level`: unknown log level"),
            ),
            (
                "bad path",
                "version = 1\n[bridge]\ntelemetry_path = \"metrics\"\n",
                Err("must start with `/`"),
            ),
        ];
        for (name, src, want) in cases {
            let got = load(src);
            match (want, &got) {
                (Ok(()), Ok(_)) => {}
                (Err(sub), Err(e)) if e.contains(sub) => {}
                _ => panic!("{name}: want {want:?}, got {:?}", got.map(|_| ())),
            }
        }
    }

    #[test]
    fn origin_table_cases() {
        let o = |body: &str| format!("version = 1\n[bridge.origin]\n{body}\n");
        let cases: Vec<(&str, String, Result<(), &str>)> = vec![
            ("defaults", o(""), Ok(())),
            (
                "negative native factor",
                "version = 1\n[bridge]\nnative_histogram_bucket_factor = -1.5\n".to_owned(),
                Err("pipeline.toml:3:34: field `bridge.native_histogram_bucket_factor`: must be 0 (off) or a finite number above 1"),
            ),
            (
                "native on",
                "version = 1\n[bridge]\nnative_histogram_bucket_factor = 1.1\nnative_histogram_max_buckets = 50\n".to_owned(),
                Ok(()),
            ),
            ("off", o("mode = \"off\""), Ok(())),
            (
                "bad mode",
                o("mode = \"dns\""),
                Err("pipeline.toml:3:8: field `bridge.origin.mode`: unknown variant `dns`"),
            ),
            (
                "static without entries",
                o("mode = \"static\""),
                Err("pipeline.toml:3:8: field `bridge.origin.static`: mode = \"static\" needs at least one"),
            ),
            (
                "a pod label named pod",
                o("pod_labels = [\"app\", \"pod\"]"),
                Err("pipeline.toml:3:14: field `bridge.origin.pod_labels`: `pod` becomes the label `pod`"),
            ),
            (
                "two keys, one label",
                o("pod_labels = [\"app.kubernetes.io/name\", \"app_kubernetes_io_name\"]"),
                Err("`app_kubernetes_io_name` becomes the label `app_kubernetes_io_name`, which another"),
            ),
            (
                "static entry",
                o(
                    "mode = \"static\"\n[[bridge.origin.static]]\nsource = \"10.0.0.0/8\"\nlabels = { pod = \"p\" }",
                ),
                Ok(()),
            ),
            (
                "bad CIDR",
                o("[[bridge.origin.static]]\nsource = \"10.0.0.0/40\"\nlabels = { pod = \"p\" }"),
                Err(
                    "pipeline.toml:3:1: field `bridge.origin.static[0].source`: `10.0.0.0/40`: the prefix length must be 0 to 32",
                ),
            ),
            (
                "bad static label",
                o("[[bridge.origin.static]]\nsource = \"::1\"\nlabels = { \"a-b\" = \"p\" }"),
                Err(
                    "field `bridge.origin.static[0].labels`: `a-b` is not a valid Prometheus label name",
                ),
            ),
            (
                "no labels",
                o("[[bridge.origin.static]]\nsource = \"::1\"\nlabels = {}"),
                Err("field `bridge.origin.static[0].labels`: no labels"),
            ),
            (
                "bad label name",
                o("pod_label = \"k8s.pod\""),
                Err(
                    "pipeline.toml:3:13: field `bridge.origin.pod_label`: `k8s.pod` is not a valid",
                ),
            ),
            (
                "reserved label name",
                o("namespace_label = \"__ns\""),
                Err("field `bridge.origin.namespace_label`"),
            ),
            (
                "same names",
                o("pod_label = \"namespace\""),
                Err("must differ"),
            ),
            (
                "empty pod label key",
                o("pod_labels = [\"app\", \"\"]"),
                Err("empty pod label key"),
            ),
            (
                "bad precedence",
                o("precedence = \"both\""),
                Err("field `bridge.origin.precedence`"),
            ),
            (
                "unknown key",
                o("node = \"x\""),
                Err("field `bridge.origin.node`: unknown field"),
            ),
        ];
        for (name, src, want) in cases {
            let got = load(&src);
            match (want, &got) {
                (Ok(()), Ok(_)) => {}
                (Err(sub), Err(e)) if e.contains(sub) => {}
                _ => panic!("{name}: want {want:?}, got {:?}", got.map(|_| ())),
            }
        }
    }

    #[test]
    fn origin_mode_is_resolved_from_the_environment() {
        let cfg = load("version = 1\n").unwrap();
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        // auto outside a pod: off.
        assert!(matches!(
            cfg.origin(env(&[])).unwrap().mode,
            origin::Mode::Off
        ));
        // auto in a pod: the node from NODE_NAME.
        let in_pod = cfg
            .origin(env(&[
                ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
                ("NODE_NAME", "node-a"),
            ]))
            .unwrap();
        assert!(
            matches!(&in_pod.mode, origin::Mode::Kubernetes { node, kubeconfig: None } if node == "node-a"),
            "{:?}",
            in_pod.mode
        );
        // In a pod without NODE_NAME: a clear error, not a bridge without labels.
        let err = cfg
            .origin(env(&[("KUBERNETES_SERVICE_HOST", "10.96.0.1")]))
            .unwrap_err();
        assert!(err.contains("NODE_NAME") && err.contains("auto"), "{err}");
        // The file's node name wins over the environment.
        let named = load("version = 1\n[bridge.origin]\nmode = \"kubernetes\"\nnode_name = \"n1\"\nkubeconfig = \"/k\"\nprecedence = \"origin\"\n").unwrap();
        let s = named.origin(env(&[("NODE_NAME", "n2")])).unwrap();
        assert!(
            matches!(&s.mode, origin::Mode::Kubernetes { node, kubeconfig: Some(k) } if node == "n1" && k.as_os_str() == "/k")
        );
        assert!(s.origin_wins);
    }
}
