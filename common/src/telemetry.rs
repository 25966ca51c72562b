//! `tracing` setup shared by both binaries.

use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable `key=value` lines (statsd_exporter calls this `logfmt`).
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" | "logfmt" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "unknown log format `{other}` (use text, logfmt or json)"
            )),
        }
    }
}

/// Installs the global subscriber, writing to stderr.
///
/// `RUST_LOG` wins over `default_directives` (e.g. `statsd_bridge=info,common=info`), so an
/// operator can turn up one module without a config change.
pub fn init(default_directives: &str, format: LogFormat) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.trim().is_empty() => {
            EnvFilter::try_new(&s).map_err(|e| format!("invalid RUST_LOG `{s}`: {e}"))?
        }
        _ => EnvFilter::try_new(default_directives)
            .map_err(|e| format!("invalid log filter `{default_directives}`: {e}"))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| format!("cannot install the log subscriber: {e}"))
}

/// Maps a statsd_exporter-style level (`debug`, `info`, `warn`, `error`) to filter directives
/// for the given crates.
pub fn directives_for_level(level: &str, crates: &[&str]) -> Result<String, String> {
    let level = match level {
        "trace" | "debug" | "info" | "warn" | "error" => level,
        "warning" => "warn",
        other => {
            return Err(format!(
                "unknown log level `{other}` (use debug, info, warn or error)"
            ));
        }
    };
    Ok(crates
        .iter()
        .map(|c| format!("{c}={level}"))
        .collect::<Vec<_>>()
        .join(",")
        + ",warn")
}
