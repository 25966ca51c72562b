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
use crate::util::{PATIENCE, bin, eventually, scaled, send_udp};

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
        Self::launch(Some(config_toml), extra_args)
    }

    /// Runs `statsd-bridge --ready-file <dir>/ready.json <args…>` with no config file (flags
    /// and built-in defaults only) and waits until the ready file appears. The flags must
    /// move every listener to ephemeral loopback ports: the defaults are `0.0.0.0:8125` and
    /// `0.0.0.0:9102`.
    ///
    /// # Panics
    /// As [`Bridge::start`].
    pub fn start_with_flags(args: &[&str]) -> Bridge {
        Self::launch(None, args)
    }

    fn launch(config_toml: Option<&str>, extra_args: &[&str]) -> Bridge {
        let dir = tempfile::Builder::new()
            .prefix("statsd-bridge-")
            .tempdir()
            .expect("creating a temp dir for the bridge");
        let config_path = dir.path().join("pipeline.toml");
        let ready_path = dir.path().join("ready.json");
        let mut cmd = Command::new(bin("statsd-bridge"));
        if let Some(config_toml) = config_toml {
            std::fs::write(&config_path, config_toml).expect("writing the bridge config");
            cmd.arg("--config").arg(&config_path);
        }
        cmd.arg("--ready-file")
            .arg(&ready_path)
            .args(extra_args)
            .env_remove("STATSD_BRIDGE_CONFIG")
            .env("RUST_BACKTRACE", "1")
            .current_dir(dir.path());
        let described = match config_toml {
            Some(c) => format!("config was:\n{c}"),
            None => format!("flags were: {extra_args:?}"),
        };
        let child = ChildGuard::spawn("statsd-bridge", cmd).expect("starting statsd-bridge");
        let ready = eventually("statsd-bridge to write its ready file", PATIENCE, || {
            if let Err(e) = child.ensure_running() {
                panic!("{e:#}\n{described}");
            }
            read_ready(&ready_path)
        });
        assert!(
            !(ready.udp.is_empty() && ready.tcp.is_empty() && ready.unixgram.is_empty()),
            "the ready file lists no StatsD listener: {ready:?}"
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
    ///
    /// # Panics
    /// When the bridge has no UDP listener.
    pub fn udp_addr(&self) -> SocketAddr {
        *self
            .ready
            .udp
            .first()
            .unwrap_or_else(|| panic!("the bridge has no UDP listener: {:?}", self.ready))
    }

    /// The first TCP listener's address.
    ///
    /// # Panics
    /// When the bridge has no TCP listener (set `listen_tcp = ["127.0.0.1:0"]`).
    pub fn tcp_addr(&self) -> SocketAddr {
        *self
            .ready
            .tcp
            .first()
            .unwrap_or_else(|| panic!("the bridge has no TCP listener: {:?}", self.ready))
    }

    /// The first unix datagram socket's path.
    ///
    /// # Panics
    /// When the bridge has no unixgram listener.
    pub fn unixgram_path(&self) -> &Path {
        self.ready
            .unixgram
            .first()
            .unwrap_or_else(|| panic!("the bridge has no unixgram listener: {:?}", self.ready))
    }

    /// The bridge's process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The bridge's resident set size (`VmRSS` in `/proc/<pid>/status`), in bytes.
    pub fn rss_bytes(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .with_context(|| format!("no VmRSS line in {path}"))?;
        let mut fields = line.split_whitespace().skip(1);
        let kib: u64 = fields
            .next()
            .context("VmRSS without a value")?
            .parse()
            .with_context(|| format!("bad VmRSS line {line:?}"))?;
        anyhow::ensure!(fields.next() == Some("kB"), "VmRSS not in kB: {line:?}");
        Ok(kib * 1024)
    }

    /// Everything the bridge wrote to stderr so far (its log).
    pub fn stderr_text(&self) -> String {
        let bytes = std::fs::read(self.child.stderr_path()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The web server's address.
    pub fn web_addr(&self) -> SocketAddr {
        self.ready.web
    }

    /// The config file the bridge was started with (after [`Bridge::start_with_flags`]: a path
    /// in its temp dir that does not exist).
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

    /// `GET path` on the bridge's web server with extra request headers.
    ///
    /// # Panics
    /// When the bridge has exited.
    pub fn get_with_headers(&self, path: &str, headers: &[(&str, &str)]) -> Result<HttpResponse> {
        if let Err(e) = self.child.ensure_running() {
            panic!("{e:#}");
        }
        http::get_with_headers(self.web_addr(), path, headers)
    }

    /// `POST path` (empty body) on the bridge's web server.
    ///
    /// # Panics
    /// When the bridge has exited.
    pub fn post(&self, path: &str) -> Result<HttpResponse> {
        if let Err(e) = self.child.ensure_running() {
            panic!("{e:#}");
        }
        http::post(self.web_addr(), path)
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

    /// Opens a TCP connection to the first TCP listener, writes `bytes`, and closes it.
    pub fn send_tcp(&self, bytes: &[u8]) -> Result<()> {
        use std::io::Write as _;
        let addr = self.tcp_addr();
        let mut stream = std::net::TcpStream::connect_timeout(&addr, http::TIMEOUT)
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_write_timeout(Some(http::TIMEOUT))?;
        stream
            .write_all(bytes)
            .with_context(|| format!("writing to {addr}"))?;
        stream
            .shutdown(std::net::Shutdown::Write)
            .with_context(|| format!("closing the write side to {addr}"))?;
        Ok(())
    }

    /// Sends each line as its own UDP datagram.
    pub fn send_lines(&self, lines: &[&str]) -> Result<()> {
        let payloads: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        self.send(&payloads)
    }

    /// The value of `key` (`name{sorted labels}`) on `/metrics`, `None` if absent.
    pub fn value(&self, key: &str) -> Result<Option<f64>> {
        Ok(self.metrics_map()?.get(key).copied())
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

    /// Waits until `check` passes on the `/metrics` map and returns that map.
    ///
    /// # Panics
    /// When `check` still fails after [`PATIENCE`] (scaled), with its last error, or when the
    /// bridge exits.
    pub fn wait_metrics(
        &self,
        what: &str,
        mut check: impl FnMut(&BTreeMap<String, f64>) -> Result<()>,
    ) -> BTreeMap<String, f64> {
        eventually(what, PATIENCE, || {
            let map = self.metrics_map()?;
            check(&map)?;
            Ok(map)
        })
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

/// What a one-shot `statsd-bridge` run (`check-config`, `explain`, `--check-config`) did.
#[derive(Debug)]
pub struct CliRun {
    /// The arguments it was given, for messages.
    pub args: Vec<String>,
    /// How it exited.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl CliRun {
    /// The exit code (`None` when a signal ended it).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl std::fmt::Display for CliRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "statsd-bridge {:?} exited with {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.args, self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `statsd-bridge <args…>` in `cwd` to completion (a subcommand or `--check-config`,
/// not the server), with `stdin` as its standard input (closed at once when `None`), and
/// returns what it printed.
///
/// # Panics
/// When it can't be started, or it is still running after 30 s (scaled by
/// `PIPELINE_TEST_PATIENCE`); it is killed then.
pub fn run_cli(args: &[&str], cwd: &Path, stdin: Option<&str>) -> CliRun {
    use std::io::{Read, Write};
    use std::process::Stdio;

    let mut child = Command::new(bin("statsd-bridge"))
        .args(args)
        .current_dir(cwd)
        .env_remove("STATSD_BRIDGE_CONFIG")
        .env("RUST_BACKTRACE", "1")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting statsd-bridge {args:?}: {e}"));
    let writer = match (stdin, child.stdin.take()) {
        (Some(text), Some(mut pipe)) => {
            let text = text.to_owned();
            Some(std::thread::spawn(move || pipe.write_all(text.as_bytes())))
        }
        _ => None,
    };
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    let limit = scaled(Duration::from_secs(30));
    let start = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < limit => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("statsd-bridge {args:?} still running after {limit:?}; killed it");
            }
            Err(e) => panic!("waiting for statsd-bridge {args:?}: {e}"),
        }
    };
    if let Some(writer) = writer {
        // A child that exits without reading all of stdin breaks the pipe; that is its
        // business, and its output tells the story.
        let _ = writer.join();
    }
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    CliRun {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        status,
        stdout: text(out_reader.join().unwrap_or_default()),
        stderr: text(err_reader.join().unwrap_or_default()),
    }
}

fn read_ready(path: &Path) -> Result<Ready> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the ready file {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing the ready file: {text:?}"))
}
