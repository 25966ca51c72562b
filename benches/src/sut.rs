//! The systems under test: each is started fresh as a child process in its own temporary
//! directory, bound to loopback ports the harness reads back, and asked how many lines it
//! has accepted so far:
//!
//! | system | started as | lines accepted |
//! | --- | --- | --- |
//! | drain | this binary with `__drain` | its count file |
//! | statsd-bridge | `--config` (temp) `--ready-file` | `statsd_bridge_lines_total{transport="udp"}` |
//! | collectd | `collectd -f -C` (statsd + write_prometheus) | sum of `collectd_statsd_derive_total{statsd="bench.*"}` |
//! | statsd_exporter | flags only | `statsd_exporter_lines_total` |
//!
//! A [`Running`] kills and reaps its process when dropped; started through `setpriv
//! --pdeathsig KILL`, it also dies if the harness is killed before it can clean up.

use std::fmt;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::drain::read_count_file;
use crate::http;

/// How long a system may take to bind its sockets.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Timeout of one metrics page read.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where collectd is installed by Debian's `collectd-core`.
pub const COLLECTD_BIN: &str = "/usr/sbin/collectd";
/// How to install collectd and the libraries its two plugins need.
pub const COLLECTD_INSTALL: &str =
    "apt-get install -y collectd-core libmicrohttpd12 libprotobuf-c1";

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SystemKind {
    /// The bare `recvmmsg` receiver (the baseline).
    Drain,
    /// statsd-bridge, the release binary.
    Bridge,
    /// collectd with the statsd and write_prometheus plugins (plain StatsD only).
    Collectd,
    /// Prometheus' statsd_exporter, when installed.
    StatsdExporter,
}

impl SystemKind {
    /// Every system, in table order.
    pub const ALL: [SystemKind; 4] = [
        SystemKind::Drain,
        SystemKind::Bridge,
        SystemKind::Collectd,
        SystemKind::StatsdExporter,
    ];

    /// The name used in flags and tables.
    pub fn name(self) -> &'static str {
        match self {
            SystemKind::Drain => "drain",
            SystemKind::Bridge => "statsd-bridge",
            SystemKind::Collectd => "collectd",
            SystemKind::StatsdExporter => "statsd_exporter",
        }
    }

    /// Whether it reads DogStatsD tags (collectd doesn't: it gets plain StatsD).
    pub fn reads_tags(self) -> bool {
        !matches!(self, SystemKind::Collectd)
    }

    /// How long the accepted count must stay unchanged before it is taken as final.
    pub fn settle(self) -> Duration {
        match self {
            SystemKind::Drain | SystemKind::Bridge => Duration::from_millis(300),
            // collectd's statsd plugin publishes once per Interval (1 s): two of them.
            SystemKind::Collectd => Duration::from_millis(2100),
            SystemKind::StatsdExporter => Duration::from_millis(600),
        }
    }

    /// How often the count is polled while waiting for it to settle.
    pub fn poll(self) -> Duration {
        match self {
            SystemKind::Drain => Duration::from_millis(50),
            SystemKind::Bridge | SystemKind::StatsdExporter => Duration::from_millis(100),
            SystemKind::Collectd => Duration::from_millis(250),
        }
    }
}

impl fmt::Display for SystemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SystemKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "drain" | "baseline" => Ok(Self::Drain),
            "bridge" | "statsd-bridge" => Ok(Self::Bridge),
            "collectd" => Ok(Self::Collectd),
            "statsd_exporter" | "statsd-exporter" => Ok(Self::StatsdExporter),
            other => Err(format!(
                "unknown system {other:?}: drain, bridge, collectd or statsd_exporter"
            )),
        }
    }
}

/// Where the binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// This harness, started with `__drain` for the baseline.
    pub harness: PathBuf,
    /// The statsd-bridge binary.
    pub bridge: PathBuf,
    /// collectd, if installed.
    pub collectd: Option<PathBuf>,
    /// statsd_exporter, if on PATH.
    pub statsd_exporter: Option<PathBuf>,
}

impl Binaries {
    /// Finds collectd and statsd_exporter; the other two are given.
    pub fn find(harness: PathBuf, bridge: PathBuf) -> Self {
        let collectd = Some(PathBuf::from(COLLECTD_BIN)).filter(|p| p.is_file());
        let statsd_exporter = ["statsd_exporter", "prometheus-statsd-exporter"]
            .iter()
            .find_map(|name| which(name));
        Self {
            harness,
            bridge,
            collectd,
            statsd_exporter,
        }
    }

    /// Why a system can't run here, or `None` when it can.
    pub fn missing(&self, kind: SystemKind) -> Option<String> {
        match kind {
            SystemKind::Drain => None,
            SystemKind::Bridge => (!self.bridge.is_file()).then(|| {
                format!(
                    "not built ({}: cargo build --release -p statsd-bridge)",
                    self.bridge.display()
                )
            }),
            SystemKind::Collectd => self
                .collectd
                .is_none()
                .then(|| format!("not installed ({COLLECTD_INSTALL})")),
            SystemKind::StatsdExporter => self
                .statsd_exporter
                .is_none()
                .then(|| "not installed (no statsd_exporter on PATH)".to_owned()),
        }
    }
}

/// The first executable file called `name` in a directory of `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Extra settings for a bridge start.
#[derive(Debug, Clone, Default)]
pub struct BridgeExtra {
    /// Lines appended to the `[bridge]` table of the config.
    pub config_lines: String,
}

/// A started system.
pub struct Running {
    /// Which system.
    pub kind: SystemKind,
    child: Child,
    dir: TempDir,
    /// Where it receives StatsD.
    pub udp: SocketAddr,
    /// Its metrics page, if it has one.
    pub web: Option<SocketAddr>,
    count_file: Option<PathBuf>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// Starts `kind` fresh.
    pub fn start(kind: SystemKind, bins: &Binaries, extra: &BridgeExtra) -> anyhow::Result<Self> {
        if let Some(why) = bins.missing(kind) {
            bail!("{kind}: {why}");
        }
        match kind {
            SystemKind::Drain => Self::start_drain(&bins.harness),
            SystemKind::Bridge => Self::start_bridge(&bins.bridge, extra),
            SystemKind::Collectd => {
                Self::start_collectd(bins.collectd.as_deref().unwrap_or(Path::new(COLLECTD_BIN)))
            }
            SystemKind::StatsdExporter => Self::start_statsd_exporter(
                bins.statsd_exporter
                    .as_deref()
                    .unwrap_or(Path::new("statsd_exporter")),
            ),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The end of its log (stdout and stderr), for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(self.dir.path())
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Lines accepted so far.
    pub fn accepted(&self) -> anyhow::Result<u64> {
        match self.kind {
            SystemKind::Drain => {
                let path = self.count_file.as_deref().context("no count file")?;
                Ok(read_count_file(path)?.0)
            }
            SystemKind::Bridge => {
                self.page_sum("statsd_bridge_lines_total", &["transport=\"udp\""])
            }
            SystemKind::Collectd => {
                self.page_sum("collectd_statsd_derive_total", &["statsd=\"bench."])
            }
            SystemKind::StatsdExporter => self.page_sum("statsd_exporter_lines_total", &[]),
        }
    }

    /// One full `GET` of the metrics page (`None` for the drain, which has none).
    pub fn scrape(&self) -> anyhow::Result<Option<http::Response>> {
        let Some(web) = self.web else {
            return Ok(None);
        };
        let r = http::get(web, "/metrics", SCRAPE_TIMEOUT)?;
        if r.status != 200 {
            bail!("{}: /metrics answered {}", self.kind, r.status);
        }
        Ok(Some(r))
    }

    fn page_sum(&self, name: &str, filters: &[&str]) -> anyhow::Result<u64> {
        let r = self.scrape()?.context("no metrics page")?;
        let page = String::from_utf8_lossy(&r.body);
        // No sample yet (collectd before the first line) means nothing accepted.
        Ok(http::sum_samples(&page, name, filters).unwrap_or(0.0) as u64)
    }

    fn start_drain(harness: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("bench-drain-").tempdir()?;
        let ready = dir.path().join("ready.json");
        let count = dir.path().join("count");
        let mut cmd = Command::new(harness);
        cmd.arg("__drain")
            .arg("--listen=127.0.0.1:0")
            .arg(format!("--ready-file={}", ready.display()))
            .arg(format!("--count-file={}", count.display()))
            // Bounded even if the harness dies without killing it.
            .arg("--duration=1800");
        let child = spawn_logged(cmd, dir.path())?;
        let mut r = Self {
            kind: SystemKind::Drain,
            child,
            dir,
            udp: "127.0.0.1:0".parse()?,
            web: None,
            count_file: Some(count.clone()),
        };
        let v = r.wait_ready_file(&ready)?;
        r.udp = first_addr(&v["udp"]).context("no udp address in the drain's ready file")?;
        r.wait_until(|r| r.count_file.as_deref().is_some_and(Path::exists))?;
        Ok(r)
    }

    fn start_bridge(bin: &Path, extra: &BridgeExtra) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("bench-bridge-").tempdir()?;
        let config = dir.path().join("bridge.toml");
        let ready = dir.path().join("ready.json");
        std::fs::write(
            &config,
            format!(
                "version = 1\n[bridge]\nlisten_udp = [\"127.0.0.1:0\"]\nlisten_tcp = []\n\
                 web_listen = \"127.0.0.1:0\"\nread_buffer = \"8MiB\"\n{}",
                extra.config_lines
            ),
        )?;
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(&config)
            .arg("--ready-file")
            .arg(&ready);
        let child = spawn_logged(cmd, dir.path())?;
        let mut r = Self {
            kind: SystemKind::Bridge,
            child,
            dir,
            udp: "127.0.0.1:0".parse()?,
            web: None,
            count_file: None,
        };
        let v = r.wait_ready_file(&ready)?;
        r.udp = first_addr(&v["udp"]).context("no udp address in the bridge's ready file")?;
        r.web = Some(
            v["web"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .context("no web address in the bridge's ready file")?,
        );
        r.wait_until(|r| r.accepted().is_ok())?;
        Ok(r)
    }

    fn start_collectd(bin: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bench-collectd-")
            .tempdir()?;
        let udp_port = free_udp_port()?;
        let web_port = free_tcp_port()?;
        let conf = dir.path().join("collectd.conf");
        let d = dir.path().display();
        std::fs::write(
            &conf,
            format!(
                "Hostname \"bench\"\nFQDNLookup false\nInterval 1\nBaseDir \"{d}\"\n\
                 PIDFile \"{d}/collectd.pid\"\nPluginDir \"/usr/lib/collectd\"\n\
                 TypesDB \"/usr/share/collectd/types.db\"\nAutoLoadPlugin false\n\
                 LoadPlugin statsd\nLoadPlugin write_prometheus\n\
                 <Plugin statsd>\n  Host \"127.0.0.1\"\n  Port \"{udp_port}\"\n</Plugin>\n\
                 <Plugin write_prometheus>\n  Host \"127.0.0.1\"\n  Port \"{web_port}\"\n</Plugin>\n"
            ),
        )?;
        let mut cmd = Command::new(bin);
        cmd.arg("-f").arg("-C").arg(&conf);
        let child = spawn_logged(cmd, dir.path())?;
        Self::started_on_ports(SystemKind::Collectd, child, dir, udp_port, web_port)
    }

    /// A system started on known loopback ports, once its page answers and its UDP socket
    /// shows up in `/proc/net/udp`.
    fn started_on_ports(
        kind: SystemKind,
        child: Child,
        dir: TempDir,
        udp_port: u16,
        web_port: u16,
    ) -> anyhow::Result<Self> {
        let mut r = Self {
            kind,
            child,
            dir,
            udp: SocketAddr::from(([127, 0, 0, 1], udp_port)),
            web: Some(SocketAddr::from(([127, 0, 0, 1], web_port))),
            count_file: None,
        };
        r.wait_until(|r| r.accepted().is_ok() && crate::procfs::udp_drops(udp_port).is_some())?;
        Ok(r)
    }

    fn start_statsd_exporter(bin: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bench-exporter-")
            .tempdir()?;
        let udp_port = free_udp_port()?;
        let web_port = free_tcp_port()?;
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--statsd.listen-udp=127.0.0.1:{udp_port}"))
            .arg("--statsd.listen-tcp=")
            .arg(format!("--web.listen-address=127.0.0.1:{web_port}"))
            .arg(format!("--statsd.read-buffer={}", 8 << 20));
        let child = spawn_logged(cmd, dir.path())?;
        Self::started_on_ports(SystemKind::StatsdExporter, child, dir, udp_port, web_port)
    }

    /// Waits for the ready file and returns its JSON.
    fn wait_ready_file(&mut self, path: &Path) -> anyhow::Result<serde_json::Value> {
        self.wait_until(|_| path.exists())?;
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text).with_context(|| format!("ready file {text:?}"))
    }

    /// Polls `ok` until it holds, the process exits, or [`START_TIMEOUT`].
    fn wait_until(&mut self, mut ok: impl FnMut(&Self) -> bool) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if ok(self) {
                return Ok(());
            }
            if !self.alive() {
                bail!("{} exited at start:\n{}", self.kind, self.log_tail());
            }
            if start.elapsed() > START_TIMEOUT {
                bail!(
                    "{} not ready after {START_TIMEOUT:?}:\n{}",
                    self.kind,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// util-linux's `setpriv`, which sets the parent-death signal and then execs the program in
/// the same process (same pid), so a system under test dies with the harness even when the
/// harness is killed and can't clean up.
const SETPRIV: &str = "/usr/bin/setpriv";

/// Starts `cmd` with stdout and stderr going to `dir/log`, killed when the harness dies
/// (through [`SETPRIV`], when it is there).
pub(crate) fn spawn_logged(cmd: Command, dir: &Path) -> anyhow::Result<Child> {
    let mut cmd = if Path::new(SETPRIV).is_file() {
        let mut wrapped = Command::new(SETPRIV);
        wrapped
            .args(["--pdeathsig", "KILL", "--"])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        wrapped
    } else {
        cmd
    };
    let log = std::fs::File::create(dir.join("log"))?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .current_dir(dir);
    cmd.spawn()
        .with_context(|| format!("start {:?}", cmd.get_program()))
}

/// The last 2 KiB of `dir/log`.
pub(crate) fn log_tail(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    let cut = text.len().saturating_sub(2048);
    let cut = (cut..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text.get(cut..).unwrap_or_default().to_owned()
}

fn first_addr(v: &serde_json::Value) -> Option<SocketAddr> {
    v.as_array()?.first()?.as_str()?.parse().ok()
}

/// A UDP port free on 127.0.0.1 right now.
pub fn free_udp_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
