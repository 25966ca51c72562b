//! Command-line flags. statsd_exporter's whole flag set is accepted, so an existing
//! DaemonSet manifest keeps working: each flag either does what it does there or, where it
//! has no meaning here, is accepted and logged once as ignored. Flags override the file.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use common::telemetry::LogFormat;
use common::units::ByteSize;
use toml::Spanned;

use crate::config::{BridgeConfig, OriginMode, parse_addr};

/// StatsD/DogStatsD in, Prometheus exposition out: a node agent for Kubernetes autoscaling.
///
/// Receives StatsD and DogStatsD lines over UDP, TCP and unix datagram sockets, aggregates
/// them into counters, gauges, histograms or summaries, and serves them on an HTTP metrics
/// page for Prometheus to scrape. Settings come from the `[bridge]` table of a config file
/// (see pipeline.toml); flags override the file. Boolean flags also take a `--no-` form.
#[derive(Debug, Parser)]
#[command(name = "statsd-bridge", version, max_term_width = 100)]
pub struct Cli {
    /// What to do; without a subcommand the bridge runs.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Config file (`pipeline.toml`). Without it the built-in defaults apply, which are the
    /// values in the shipped pipeline.toml.
    #[arg(long, short = 'c', value_name = "FILE", env = "STATSD_BRIDGE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Once every socket is bound, write `{"udp": [...], "tcp": [...], "unixgram": [...],
    /// "web": "..."}` with the actual addresses to this file (atomically). For port 0 in
    /// tests and scripts.
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,

    /// UDP address to receive StatsD on (repeatable); `""` disables UDP.
    /// [bridge.listen_udp]
    #[arg(long = "statsd.listen-udp", value_name = "ADDR")]
    pub listen_udp: Option<Vec<String>>,

    /// TCP address to receive newline-delimited StatsD on (repeatable); `""` disables TCP.
    /// [bridge.listen_tcp]
    #[arg(long = "statsd.listen-tcp", value_name = "ADDR")]
    pub listen_tcp: Option<Vec<String>>,

    /// Unix datagram socket path to receive StatsD on (repeatable); `""` disables it.
    /// [bridge.listen_unixgram]
    #[arg(long = "statsd.listen-unixgram", value_name = "PATH")]
    pub listen_unixgram: Option<Vec<String>>,

    /// File mode of the unix socket, in octal. [bridge.unixsocket_mode]
    #[arg(long = "statsd.unixsocket-mode", value_name = "MODE")]
    pub unixsocket_mode: Option<String>,

    /// statsd_exporter mapping file (YAML), read unchanged. [bridge.mapping_file]
    #[arg(
        long = "mapping-config",
        visible_alias = "statsd.mapping-config",
        value_name = "FILE",
        global = true
    )]
    pub mapping_config: Option<PathBuf>,

    /// Receive buffer per socket in bytes (SO_RCVBUF); 0 keeps the OS default.
    /// [bridge.read_buffer]
    #[arg(long = "statsd.read-buffer", value_name = "BYTES")]
    pub read_buffer: Option<ByteSize>,

    /// Mapping results cached per listener thread; 0 disables the cache.
    /// [bridge.mapping_cache_size]
    #[arg(long = "statsd.cache-size", value_name = "N")]
    pub cache_size: Option<usize>,

    /// Mapping cache type: lru or random (statsd_exporter); the cache here is always an LRU.
    #[arg(long = "statsd.cache-type", value_name = "TYPE")]
    pub cache_type: Option<String>,

    /// Event queue size (statsd_exporter tuning); accepted and ignored: lines go straight
    /// into the store, there is no event queue.
    #[arg(long = "statsd.event-queue-size", value_name = "N")]
    pub event_queue_size: Option<u64>,

    /// Event flush threshold (statsd_exporter tuning); accepted and ignored.
    #[arg(long = "statsd.event-flush-threshold", value_name = "N")]
    pub event_flush_threshold: Option<u64>,

    /// Event flush interval (statsd_exporter tuning); accepted and ignored.
    #[arg(long = "statsd.event-flush-interval", value_name = "DURATION")]
    pub event_flush_interval: Option<String>,

    /// UDP packet queue size (statsd_exporter tuning); accepted and ignored: datagrams are
    /// parsed as they are read, with no queue to overflow.
    #[arg(long = "statsd.udp-packet-queue-size", value_name = "N")]
    pub udp_packet_queue_size: Option<u64>,

    /// Read DogStatsD `|#k:v` tags. [bridge.parse_dogstatsd_tags]
    #[arg(long = "statsd.parse-dogstatsd-tags", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub parse_dogstatsd_tags: Option<bool>,
    /// Don't read DogStatsD tags.
    #[arg(long = "no-statsd.parse-dogstatsd-tags")]
    pub no_parse_dogstatsd_tags: bool,

    /// Read InfluxDB `name,k=v` tags. [bridge.parse_influxdb_tags]
    #[arg(long = "statsd.parse-influxdb-tags", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub parse_influxdb_tags: Option<bool>,
    /// Don't read InfluxDB tags.
    #[arg(long = "no-statsd.parse-influxdb-tags")]
    pub no_parse_influxdb_tags: bool,

    /// Read Librato `name#k=v` tags. [bridge.parse_librato_tags]
    #[arg(long = "statsd.parse-librato-tags", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub parse_librato_tags: Option<bool>,
    /// Don't read Librato tags.
    #[arg(long = "no-statsd.parse-librato-tags")]
    pub no_parse_librato_tags: bool,

    /// Read SignalFx `name[k=v]` tags. [bridge.parse_signalfx_tags]
    #[arg(long = "statsd.parse-signalfx-tags", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub parse_signalfx_tags: Option<bool>,
    /// Don't read SignalFx tags.
    #[arg(long = "no-statsd.parse-signalfx-tags")]
    pub no_parse_signalfx_tags: bool,

    /// Forward received lines to this StatsD server (`host:port`, UDP). [bridge.relay_address]
    #[arg(long = "statsd.relay.address", value_name = "ADDR")]
    pub relay_address: Option<String>,

    /// Largest relay packet in bytes. [bridge.relay_packet_length]
    #[arg(long = "statsd.relay.packet-length", value_name = "BYTES")]
    pub relay_packet_length: Option<usize>,

    /// Address of the HTTP server for the metrics page and health checks. [bridge.web_listen]
    #[arg(long = "web.listen-address", value_name = "ADDR")]
    pub web_listen: Option<String>,

    /// Path of the metrics page. [bridge.telemetry_path]
    #[arg(long = "web.telemetry-path", value_name = "PATH")]
    pub telemetry_path: Option<String>,

    /// Enable `POST`/`PUT /-/reload` and `/-/quit`. [bridge.enable_lifecycle]
    #[arg(long = "web.enable-lifecycle", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub enable_lifecycle: Option<bool>,
    /// Disable the lifecycle endpoints.
    #[arg(long = "no-web.enable-lifecycle")]
    pub no_enable_lifecycle: bool,

    /// Serve OpenMetrics to scrapers that ask for it (renames counters to `_total` in
    /// Prometheus). [bridge.openmetrics]
    #[arg(long = "web.enable-openmetrics", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub enable_openmetrics: Option<bool>,
    /// Serve only the 0.0.4 text format.
    #[arg(long = "no-web.enable-openmetrics")]
    pub no_enable_openmetrics: bool,

    /// Where origin labels (the sender pod's `namespace`, `pod`, chosen pod labels) come
    /// from: auto (kubernetes when running in a pod, else off), kubernetes (watch this
    /// node's pods), static (the config's address table) or off. [bridge.origin.mode]
    #[arg(long = "origin.mode", value_name = "MODE", value_enum)]
    pub origin_mode: Option<OriginMode>,

    /// The node whose pods give origin labels; default: the `NODE_NAME` environment
    /// variable. [bridge.origin.node_name]
    #[arg(long = "origin.node-name", value_name = "NODE")]
    pub origin_node_name: Option<String>,

    /// kubeconfig file for the pod watch; default: the in-cluster service account.
    /// [bridge.origin.kubeconfig]
    #[arg(long = "origin.kubeconfig", value_name = "FILE")]
    pub origin_kubeconfig: Option<String>,

    /// Where a unix socket sender's `<pid>/cgroup` is read (the host's /proc; needs
    /// `hostPID: true`). [bridge.origin.proc_root]
    #[arg(long = "origin.proc-root", value_name = "DIR")]
    pub origin_proc_root: Option<String>,

    /// The cgroup tree, where `|c:in-<inode>` fields are resolved. [bridge.origin.cgroup_root]
    #[arg(long = "origin.cgroup-root", value_name = "DIR")]
    pub origin_cgroup_root: Option<String>,

    /// A pod label key to copy onto the sender's series (repeatable; replaces the file's
    /// list; `""` for none). [bridge.origin.pod_labels]
    #[arg(long = "origin.pod-label", value_name = "KEY")]
    pub origin_pod_labels: Option<Vec<String>>,

    /// How long listeners wait for the first pod list, e.g. `30s`. [bridge.origin.sync_timeout]
    #[arg(long = "origin.sync-timeout", value_name = "DURATION")]
    pub origin_sync_timeout: Option<common::units::Duration>,

    /// How long a deleted pod's series stay, e.g. `5m`. [bridge.origin.pod_ttl]
    #[arg(long = "origin.pod-ttl", value_name = "DURATION")]
    pub origin_pod_ttl: Option<common::units::Duration>,

    /// Log level: debug, info, warn or error. `RUST_LOG` overrides it. [bridge.log_level]
    #[arg(long = "log.level", value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Log format: text (alias logfmt) or json. [bridge.log_format]
    #[arg(long = "log.format", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Validate the config (file and flags) and exit: 0 if valid, 64 with the error if not.
    /// The `check-config` subcommand does the same.
    #[arg(long = "check-config", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub check_config: Option<bool>,
    /// Run normally (the default).
    #[arg(long = "no-check-config")]
    pub no_check_config: bool,

    /// Write the glob rules' prefix tree as Graphviz dot to this file at start (statsd_exporter's
    /// mapping FSM dump); `""` writes nothing.
    #[arg(long = "debug.dump-fsm", value_name = "FILE")]
    pub dump_fsm: Option<String>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a config file and exit: 0 if valid; 64 and the file, line, column and field
    /// of the first error if not.
    CheckConfig {
        /// The file to check; defaults to `--config`, else `pipeline.toml`.
        file: Option<PathBuf>,
    },
    /// Show what the mapping rules make of StatsD lines: the rule that matched (number and
    /// match), the metric name, labels, type and observer, or why the line is dropped or
    /// rejected. Reads the lines given, or standard input when there are none. Uses
    /// `--mapping-config` or the config's mapping rules.
    Explain {
        /// StatsD lines, e.g. 'app.requests.200:1|c'.
        lines: Vec<String>,
    },
}

/// A bool flag with its `--no-` twin: the twin wins.
fn flag(value: Option<bool>, negated: bool) -> Option<bool> {
    if negated { Some(false) } else { value }
}

fn addrs(flag_name: &str, list: &[String]) -> Result<Vec<String>, String> {
    let list: Vec<String> = list.iter().filter(|a| !a.is_empty()).cloned().collect();
    for a in &list {
        parse_addr(a).map_err(|e| format!("flag --{flag_name}: {e}"))?;
    }
    Ok(list)
}

impl Cli {
    /// True when asked to validate and exit.
    pub fn check_only(&self) -> bool {
        flag(self.check_config, self.no_check_config).unwrap_or(false)
    }

    /// Applies flag overrides to the settings; errors name the flag. Returns the flags that
    /// were accepted but have no effect here, to be logged once.
    pub fn apply(&self, b: &mut BridgeConfig) -> Result<Vec<&'static str>, String> {
        let sp = |v| Spanned::new(0..0, v);
        if let Some(a) = &self.listen_udp {
            b.listen_udp = sp(addrs("statsd.listen-udp", a)?);
        }
        if let Some(a) = &self.listen_tcp {
            b.listen_tcp = sp(addrs("statsd.listen-tcp", a)?);
        }
        if let Some(paths) = &self.listen_unixgram {
            b.listen_unixgram = sp(paths.iter().filter(|p| !p.is_empty()).cloned().collect());
        }
        if let Some(m) = &self.unixsocket_mode {
            b.unixsocket_mode = Spanned::new(0..0, m.clone());
        }
        if let Some(path) = &self.mapping_config {
            b.mapping_file = Spanned::new(0..0, path.display().to_string());
            b.mapping = Vec::new();
        }
        if let Some(n) = self.cache_size {
            b.mapping_cache_size = n;
        }
        if let Some(t) = &self.cache_type
            && t != "lru"
            && t != "random"
        {
            return Err(format!(
                "flag --statsd.cache-type: `{t}` is not lru or random"
            ));
        }
        if let Some(size) = self.read_buffer {
            b.read_buffer = size;
        }
        let tag_flags = [
            (
                &mut b.parse_dogstatsd_tags,
                self.parse_dogstatsd_tags,
                self.no_parse_dogstatsd_tags,
            ),
            (
                &mut b.parse_influxdb_tags,
                self.parse_influxdb_tags,
                self.no_parse_influxdb_tags,
            ),
            (
                &mut b.parse_librato_tags,
                self.parse_librato_tags,
                self.no_parse_librato_tags,
            ),
            (
                &mut b.parse_signalfx_tags,
                self.parse_signalfx_tags,
                self.no_parse_signalfx_tags,
            ),
            (
                &mut b.enable_lifecycle,
                self.enable_lifecycle,
                self.no_enable_lifecycle,
            ),
            (
                &mut b.openmetrics,
                self.enable_openmetrics,
                self.no_enable_openmetrics,
            ),
        ];
        for (field, value, negated) in tag_flags {
            if let Some(v) = flag(value, negated) {
                *field = v;
            }
        }
        if let Some(a) = &self.relay_address {
            b.relay_address = Spanned::new(0..0, a.clone());
        }
        if let Some(m) = self.origin_mode {
            b.origin.mode = Spanned::new(0..0, m);
        }
        if let Some(n) = &self.origin_node_name {
            b.origin.node_name.clone_from(n);
        }
        if let Some(k) = &self.origin_kubeconfig {
            b.origin.kubeconfig.clone_from(k);
        }
        if let Some(p) = &self.origin_proc_root {
            b.origin.proc_root.clone_from(p);
        }
        if let Some(p) = &self.origin_cgroup_root {
            b.origin.cgroup_root.clone_from(p);
        }
        if let Some(keys) = &self.origin_pod_labels {
            b.origin.pod_labels = Spanned::new(
                0..0,
                keys.iter().filter(|k| !k.is_empty()).cloned().collect(),
            );
        }
        if let Some(t) = self.origin_sync_timeout {
            b.origin.sync_timeout = t;
        }
        if let Some(t) = self.origin_pod_ttl {
            b.origin.pod_ttl = t;
        }
        if let Some(n) = self.relay_packet_length {
            b.relay_packet_length = Spanned::new(0..0, n);
        }
        if let Some(a) = &self.web_listen {
            parse_addr(a).map_err(|e| format!("flag --web.listen-address: {e}"))?;
            b.web_listen = Spanned::new(0..0, a.clone());
        }
        if let Some(p) = &self.telemetry_path {
            b.telemetry_path = Spanned::new(0..0, p.clone());
        }
        if let Some(l) = &self.log_level {
            common::telemetry::directives_for_level(l, &[])
                .map_err(|e| format!("flag --log.level: {e}"))?;
            b.log_level = Spanned::new(0..0, l.clone());
        }
        if let Some(f) = self.log_format {
            b.log_format = f;
        }
        let ignored = [
            (
                self.cache_type.as_deref() == Some("random"),
                "--statsd.cache-type=random (an LRU is used)",
            ),
            (self.event_queue_size.is_some(), "--statsd.event-queue-size"),
            (
                self.event_flush_threshold.is_some(),
                "--statsd.event-flush-threshold",
            ),
            (
                self.event_flush_interval.is_some(),
                "--statsd.event-flush-interval",
            ),
            (
                self.udp_packet_queue_size.is_some(),
                "--statsd.udp-packet-queue-size",
            ),
        ];
        Ok(ignored
            .iter()
            .filter(|(set, _)| *set)
            .map(|(_, name)| *name)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every flag statsd_exporter 0.28 has.
    const STATSD_EXPORTER_FLAGS: &[&str] = &[
        "--statsd.listen-udp",
        "--statsd.listen-tcp",
        "--statsd.listen-unixgram",
        "--statsd.unixsocket-mode",
        "--statsd.mapping-config",
        "--statsd.read-buffer",
        "--statsd.cache-size",
        "--statsd.cache-type",
        "--statsd.event-queue-size",
        "--statsd.event-flush-threshold",
        "--statsd.event-flush-interval",
        "--statsd.udp-packet-queue-size",
        "--statsd.parse-dogstatsd-tags",
        "--statsd.parse-influxdb-tags",
        "--statsd.parse-librato-tags",
        "--statsd.parse-signalfx-tags",
        "--statsd.relay.address",
        "--statsd.relay.packet-length",
        "--web.listen-address",
        "--web.telemetry-path",
        "--web.enable-lifecycle",
        "--log.level",
        "--log.format",
        "--check-config",
        "--debug.dump-fsm",
    ];

    #[test]
    fn cli_is_well_formed_and_documents_every_flag() {
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        for flag in
            STATSD_EXPORTER_FLAGS
                .iter()
                .chain(&["--config", "--ready-file", "check-config"])
        {
            assert!(help.contains(flag), "{flag} missing from --help");
        }
    }

    #[test]
    fn origin_flags_override_the_file() {
        let cli = Cli::try_parse_from([
            "statsd-bridge",
            "--origin.mode=static",
            "--origin.node-name=node-a",
            "--origin.kubeconfig=/k",
            "--origin.proc-root=/host/proc",
            "--origin.cgroup-root=/host/cgroup",
            "--origin.pod-label=app",
            "--origin.pod-label=app.kubernetes.io/name",
            "--origin.sync-timeout=5s",
            "--origin.pod-ttl=1m",
        ])
        .unwrap();
        let mut b = BridgeConfig::default();
        cli.apply(&mut b).unwrap();
        let o = &b.origin;
        assert_eq!(*o.mode.get_ref(), OriginMode::Static);
        assert_eq!(
            (o.node_name.as_str(), o.kubeconfig.as_str()),
            ("node-a", "/k")
        );
        assert_eq!(
            (o.proc_root.as_str(), o.cgroup_root.as_str()),
            ("/host/proc", "/host/cgroup")
        );
        assert_eq!(o.pod_labels.get_ref(), &["app", "app.kubernetes.io/name"]);
        assert_eq!(o.sync_timeout.0, std::time::Duration::from_secs(5));
        assert_eq!(o.pod_ttl.0, std::time::Duration::from_secs(60));
        assert!(Cli::try_parse_from(["statsd-bridge", "--origin.mode=dns"]).is_err());
    }

    #[test]
    fn a_statsd_exporter_manifest_parses() {
        let cli = Cli::try_parse_from([
            "statsd-bridge",
            "--statsd.listen-udp=:9125",
            "--statsd.listen-tcp=:9125",
            "--statsd.listen-unixgram=/tmp/x.sock",
            "--statsd.unixsocket-mode=722",
            "--statsd.read-buffer=1048576",
            "--statsd.cache-size=1000",
            "--statsd.cache-type=lru",
            "--statsd.event-queue-size=10000",
            "--statsd.event-flush-threshold=1000",
            "--statsd.event-flush-interval=200ms",
            "--statsd.udp-packet-queue-size=10000",
            "--no-statsd.parse-influxdb-tags",
            "--statsd.parse-librato-tags=false",
            "--statsd.parse-signalfx-tags",
            "--statsd.relay.address=127.0.0.1:9999",
            "--statsd.relay.packet-length=1400",
            "--web.listen-address=:9102",
            "--web.telemetry-path=/metrics",
            "--web.enable-lifecycle",
            "--log.level=debug",
            "--log.format=logfmt",
            "--debug.dump-fsm=",
        ])
        .unwrap();
        let mut b = BridgeConfig::default();
        let ignored = cli.apply(&mut b).unwrap();
        assert_eq!(b.listen_udp.get_ref(), &[":9125"]);
        assert_eq!(b.listen_unixgram.get_ref(), &["/tmp/x.sock"]);
        assert_eq!(b.read_buffer.0, 1_048_576);
        assert!(!b.parse_influxdb_tags && !b.parse_librato_tags && b.parse_signalfx_tags);
        assert!(b.enable_lifecycle);
        assert_eq!(b.log_format, LogFormat::Text);
        assert_eq!(ignored.len(), 4);
        assert_eq!(b.mapping_cache_size, 1000);
    }

    #[test]
    fn empty_address_disables_a_listener_and_bad_values_name_the_flag() {
        let mut b = BridgeConfig::default();
        let cli = Cli::try_parse_from(["statsd-bridge", "--statsd.listen-tcp", ""]).unwrap();
        cli.apply(&mut b).unwrap();
        assert!(b.listen_tcp.get_ref().is_empty());
        let cli = Cli::try_parse_from(["statsd-bridge", "--web.listen-address", "nope"]).unwrap();
        assert!(
            cli.apply(&mut b)
                .unwrap_err()
                .starts_with("flag --web.listen-address:")
        );
        let cli =
            Cli::try_parse_from(["statsd-bridge", "--statsd.mapping-config", "m.yml"]).unwrap();
        cli.apply(&mut b).unwrap();
        assert_eq!(b.mapping_file.get_ref(), "m.yml");
        let cli = Cli::try_parse_from(["statsd-bridge", "--statsd.cache-type", "fifo"]).unwrap();
        assert!(
            cli.apply(&mut b)
                .unwrap_err()
                .starts_with("flag --statsd.cache-type")
        );
    }

    #[test]
    fn unknown_flags_are_errors() {
        assert!(Cli::try_parse_from(["statsd-bridge", "--statsd.no-such-flag"]).is_err());
    }
}
