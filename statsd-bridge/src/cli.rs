//! Command-line flags. statsd_exporter's flag names are accepted for the same settings so
//! an existing DaemonSet manifest keeps working.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use common::telemetry::LogFormat;
use toml::Spanned;

use crate::config::{BridgeConfig, parse_addr};

/// StatsD/DogStatsD in, Prometheus exposition out: a node agent for Kubernetes autoscaling.
///
/// Receives StatsD and DogStatsD lines over UDP, aggregates them into counters, gauges,
/// histograms or summaries, and serves them on an HTTP metrics page for Prometheus to scrape.
/// Settings come from the `[bridge]` table of a config file (see pipeline.toml); flags
/// override the file.
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

    /// UDP address to receive StatsD on (repeatable); `""` disables UDP. Overrides
    /// `bridge.listen_udp`.
    #[arg(long = "statsd.listen-udp", value_name = "ADDR")]
    pub listen_udp: Option<Vec<String>>,

    /// Address of the HTTP server for the metrics page and health checks. Overrides
    /// `bridge.web_listen`.
    #[arg(long = "web.listen-address", value_name = "ADDR")]
    pub web_listen: Option<String>,

    /// Path of the metrics page. Overrides `bridge.telemetry_path`.
    #[arg(long = "web.telemetry-path", value_name = "PATH")]
    pub telemetry_path: Option<String>,

    /// Log level: debug, info, warn or error. `RUST_LOG` overrides it. Overrides
    /// `bridge.log_level`.
    #[arg(long = "log.level", value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Log format: text (alias logfmt) or json. Overrides `bridge.log_format`.
    #[arg(long = "log.format", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Once every socket is bound, write `{"udp": [...], "web": "..."}` with the actual
    /// addresses to this file (atomically). Useful with port 0 in tests and scripts.
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,

    /// Validate the config (file and flags) and exit: 0 if valid, 64 with the error if not.
    /// Same as the `check-config` subcommand; statsd_exporter's spelling.
    #[arg(long = "check-config")]
    pub check_config: bool,
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
}

impl Cli {
    /// Applies flag overrides to the settings; errors name the flag.
    pub fn apply(&self, b: &mut BridgeConfig) -> Result<(), String> {
        let flag_err = |flag: &str, e: String| format!("flag --{flag}: {e}");
        if let Some(addrs) = &self.listen_udp {
            let addrs: Vec<String> = addrs.iter().filter(|a| !a.is_empty()).cloned().collect();
            for a in &addrs {
                parse_addr(a).map_err(|e| flag_err("statsd.listen-udp", e))?;
            }
            b.listen_udp = Spanned::new(0..0, addrs);
        }
        if let Some(a) = &self.web_listen {
            parse_addr(a).map_err(|e| flag_err("web.listen-address", e))?;
            b.web_listen = Spanned::new(0..0, a.clone());
        }
        if let Some(p) = &self.telemetry_path {
            b.telemetry_path = Spanned::new(0..0, p.clone());
        }
        if let Some(l) = &self.log_level {
            common::telemetry::directives_for_level(l, &[])
                .map_err(|e| flag_err("log.level", e))?;
            b.log_level = Spanned::new(0..0, l.clone());
        }
        if let Some(f) = self.log_format {
            b.log_format = f;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed_and_documents_every_flag() {
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        for flag in [
            "--config",
            "--statsd.listen-udp",
            "--web.listen-address",
            "--web.telemetry-path",
            "--log.level",
            "--log.format",
            "--ready-file",
            "--check-config",
            "check-config",
        ] {
            assert!(help.contains(flag), "{flag} missing from --help");
        }
    }

    #[test]
    fn statsd_exporter_style_flags_override_the_file() {
        let cli = Cli::try_parse_from([
            "statsd-bridge",
            "--statsd.listen-udp=:9125",
            "--web.listen-address=:9102",
            "--log.level=debug",
            "--log.format=logfmt",
        ])
        .unwrap();
        let mut b = BridgeConfig::default();
        cli.apply(&mut b).unwrap();
        assert_eq!(b.listen_udp.get_ref(), &[":9125"]);
        assert_eq!(b.log_format, LogFormat::Text);
        let cli = Cli::try_parse_from(["statsd-bridge", "--statsd.listen-udp", ""]).unwrap();
        cli.apply(&mut b).unwrap();
        assert!(b.listen_udp.get_ref().is_empty());
        let cli = Cli::try_parse_from(["statsd-bridge", "--web.listen-address", "nope"]).unwrap();
        assert!(
            cli.apply(&mut b)
                .unwrap_err()
                .starts_with("flag --web.listen-address:")
        );
    }

    #[test]
    fn unknown_flags_are_errors() {
        assert!(Cli::try_parse_from(["statsd-bridge", "--statsd.no-such-flag"]).is_err());
    }
}
