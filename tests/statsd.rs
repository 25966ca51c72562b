//! The `statsd-bridge` binary as a child process, and ways to send it StatsD traffic.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;
use tempfile::TempDir;

use crate::exposition;
use crate::http::{self, HttpResponse};
use crate::process::ChildGuard;
use crate::util::{PATIENCE, bin, eventually, send_udp};

/// What the bridge writes to its `--ready-file` once every listener is bound.
#[derive(Debug, Clone, Deserialize)]
pub struct Ready {
    /// Bound UDP listener addresses, in config order.
    pub udp: Vec<SocketAddr>,
    /// Bound TCP listener addresses, in config order.
    #[serde(default)]
    pub tcp: Vec<SocketAddr>,
    /// Unix datagram socket paths, in config order.
    #[serde(default)]
    pub unixgram: Vec<PathBuf>,
    /// Bound address of the HTTP server (`/metrics`).
    pub web: SocketAddr,
}

/// A running `statsd-bridge` process, killed when dropped.
pub struct Bridge {
    child: ChildGuard,
    ready: Ready,
    config_path: PathBuf,
    _dir: TempDir,
}

impl Bridge {
    /// A minimal config: one UDP listener and the web server on ephemeral loopback ports,
    /// histograms as the observer.
    pub fn default_config() -> String {
        Self::config_with_observer("histogram")
    }

    /// [`Bridge::default_config`] with `observer_type` set to `histogram` or `summary`.
    pub fn config_with_observer(observer: &str) -> String {
        format!(
            "version = 1\n\n[bridge]\nlisten_udp = [\"127.0.0.1:0\"]\nlisten_tcp = [\"127.0.0.1:0\"]\n\
             web_listen = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\nobserver_type = \"{observer}\"\n"
        )
    }

    /// Writes `config_toml` to a temporary file, runs
    /// `statsd-bridge --config <file> --ready-file <dir>/ready.json <extra_args…>` and waits
    /// until the ready file appears.
    ///
    /// # Panics
    /// When the binary is missing, the bridge exits before it is ready, or it is not ready in
    /// time; the message carries the tail of its log.
    pub fn start(config_toml: &str, extra_args: &[&str]) -> Bridge {
        let dir = tempfile::Builder::new()
            .prefix("statsd-bridge-")
            .tempdir()
            .expect("creating a temp dir for the bridge");
        let config_path = dir.path().join("pipeline.toml");
        std::fs::write(&config_path, config_toml).expect("writing the bridge config");
        let ready_path = dir.path().join("ready.json");
        let mut cmd = Command::new(bin("statsd-bridge"));
        cmd.arg("--config")
            .arg(&config_path)
            .arg("--ready-file")
            .arg(&ready_path)
            .args(extra_args)
            .env("RUST_BACKTRACE", "1")
            .current_dir(dir.path());
        let child = ChildGuard::spawn("statsd-bridge", cmd).expect("starting statsd-bridge");
        let ready = eventually("statsd-bridge to write its ready file", PATIENCE, || {
            if let Err(e) = child.ensure_running() {
                panic!("{e:#}\nconfig was:\n{config_toml}");
            }
            read_ready(&ready_path)
        });
        assert!(
            !ready.udp.is_empty(),
            "the ready file lists no UDP listener: {ready:?}"
        );
        Bridge {
            child,
            ready,
            config_path,
            _dir: dir,
        }
    }

    /// The addresses the bridge bound.
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// The first UDP listener's address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.ready.udp[0]
    }

    /// The web server's address.
    pub fn web_addr(&self) -> SocketAddr {
        self.ready.web
    }

    /// The config file the bridge was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The process guard (pid, logs, signals).
    pub fn process(&self) -> &ChildGuard {
        &self.child
    }

    /// `GET path` on the bridge's web server.
    ///
    /// # Panics
    /// When the bridge has exited (so a waiting test fails at once with its log).
    pub fn get(&self, path: &str) -> Result<HttpResponse> {
        if let Err(e) = self.child.ensure_running() {
            panic!("{e:#}");
        }
        http::get(self.web_addr(), path)
    }

    /// The `/metrics` page as text (an error unless the status is 200).
    ///
    /// # Panics
    /// When the bridge has exited.
    pub fn metrics_text(&self) -> Result<String> {
        let response = self.get("/metrics")?;
        anyhow::ensure!(
            response.status == 200,
            "GET /metrics answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
        response.text()
    }

    /// The `/metrics` page as `name{sorted labels} → value` (see [`exposition::series_map`]).
    pub fn metrics_map(&self) -> Result<BTreeMap<String, f64>> {
        exposition::series_map(&self.metrics_text()?)
    }

    /// Sends each payload as one UDP datagram to the first UDP listener.
    pub fn send(&self, payloads: &[&[u8]]) -> Result<()> {
        send_udp(self.udp_addr(), payloads)
    }

    /// Sends each line as its own UDP datagram.
    pub fn send_lines(&self, lines: &[&str]) -> Result<()> {
        let payloads: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        self.send(&payloads)
    }

    /// Waits until `/metrics` holds `key` (`name{sorted labels}`) with a value equal to `want`.
    pub fn wait_for_value(&self, key: &str, want: f64) {
        eventually(
            &format!("{key} = {want} on the bridge's /metrics"),
            PATIENCE,
            || {
                let map = self.metrics_map()?;
                match map.get(key) {
                    Some(v) if crate::util::values_equal(*v, want) => Ok(()),
                    Some(v) => anyhow::bail!("{key} is {v}, want {want}"),
                    None => anyhow::bail!("{key} is missing"),
                }
            },
        )
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) -> Result<()> {
        self.child.signal("TERM")
    }

    /// Waits for the bridge to exit and returns its status.
    ///
    /// # Panics
    /// When it is still running after `timeout` (a hang), with its log tail.
    pub fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        match self.child.wait_timeout(timeout) {
            Ok(Some(status)) => status,
            // The guard prints the log tail as the panic unwinds.
            Ok(None) => panic!("statsd-bridge still running {timeout:?} after being asked to stop"),
            Err(e) => panic!("waiting for statsd-bridge: {e:#}"),
        }
    }

    /// The last `lines` lines of the bridge's stderr and stdout.
    pub fn log_tail(&self, lines: usize) -> String {
        self.child.log_tail(lines)
    }
}

fn read_ready(path: &Path) -> Result<Ready> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the ready file {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing the ready file: {text:?}"))
}
