//! The real processes of the adapter harness: Prometheus (Debian's `prometheus`) scraping
//! the page server, and the release `prom-adapter` in front of it. Both are children killed
//! when dropped (and, through `setpriv`, when the harness dies).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

use pipeline_tests::kubeapi::FakeKubeApi;

use super::client::{Client, Reply};
use super::pages::Population;
use crate::sut::{free_tcp_port, log_tail, spawn_logged};

/// Timeout of one request to either process.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How Prometheus is installed.
pub const PROMETHEUS_INSTALL: &str = "apt-get install -y prometheus";

/// A Prometheus server on a fixed loopback port with its own data directory, so a restart
/// comes back at the same address with the same series.
pub struct Prometheus {
    bin: PathBuf,
    child: Option<Child>,
    dir: TempDir,
    port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `shards` pages of `pages` every `interval`, and waits until
    /// it is ready.
    pub fn start(
        bin: &Path,
        pages: SocketAddr,
        shards: usize,
        interval: Duration,
    ) -> anyhow::Result<Prometheus> {
        let dir = tempfile::Builder::new().prefix("bench-prom-").tempdir()?;
        std::fs::write(
            dir.path().join("prometheus.yml"),
            scrape_config(pages, shards, interval),
        )?;
        let mut p = Prometheus {
            bin: bin.to_owned(),
            child: None,
            dir,
            port: free_tcp_port()?,
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg(format!(
            "--config.file={}",
            self.dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            self.dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
        .arg("--log.level=warn");
        self.child = Some(spawn_logged(cmd, self.dir.path())?);
        let start = Instant::now();
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!(
                    "prometheus exited ({status}) at start:\n{}",
                    log_tail(self.dir.path())
                );
            }
            let ready = Client::plain(self.addr(), Duration::from_secs(2))
                .and_then(|mut c| c.get("/-/ready"))
                .is_ok_and(|r| r.status == 200);
            if ready {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(180) {
                bail!(
                    "prometheus not ready in 180 s:\n{}",
                    log_tail(self.dir.path())
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops it with SIGTERM (SIGKILL after 60 s), keeping its data.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Stops and starts it again on the same port and data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A client on a new connection to it.
    pub fn client(&self) -> anyhow::Result<Client> {
        Client::plain(self.addr(), REQUEST_TIMEOUT)
    }

    /// The number `promql` evaluates to (a one-sample vector or a scalar), or `None` for an
    /// empty result.
    pub fn value(&self, promql: &str) -> anyhow::Result<Option<f64>> {
        let reply = self.client()?.get(&query_path(promql))?;
        let v: serde_json::Value = serde_json::from_slice(&reply.body)
            .with_context(|| format!("prometheus answered {}", reply.text()))?;
        let result = &v["data"]["result"];
        let sample = match v["data"]["resultType"].as_str() {
            Some("scalar") => result,
            _ => &result[0]["value"],
        };
        Ok(sample[1].as_str().and_then(|s| s.parse().ok()))
    }

    /// Waits until `count({__name__=~"bench_.*"})` is `expected`.
    pub fn wait_ingested(&self, expected: usize, within: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            let n = self.value("count({__name__=~\"bench_.*\"})")?;
            if n == Some(expected as f64) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > within {
                bail!("prometheus holds {n:?} bench series, not {expected}, after {within:?}");
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// `/api/v1/query?query=<promql>`.
pub fn query_path(promql: &str) -> String {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("query", promql)
        .finish();
    format!("/api/v1/query?{q}")
}

/// `/api/v1/series` for `selector` over the last `max_age`, as discovery asks it.
pub fn series_path(selector: &str, max_age: Duration) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("match[]", selector)
        .append_pair("start", &format!("{:.3}", now - max_age.as_secs_f64()))
        .append_pair("end", &format!("{now:.3}"))
        .finish();
    format!("/api/v1/series?{q}")
}

fn scrape_config(pages: SocketAddr, shards: usize, interval: Duration) -> String {
    let secs = interval.as_secs().max(1);
    let mut yml = format!(
        "global:\n  scrape_interval: {secs}s\n  scrape_timeout: {}s\n  evaluation_interval: 1m\nscrape_configs:\n",
        (secs * 9 / 10).max(1)
    );
    for k in 0..shards {
        let _ = write!(
            yml,
            "- job_name: bench-{k}\n  honor_labels: true\n  metrics_path: /metrics/{k}\n  static_configs:\n  - targets: ['{pages}']\n"
        );
    }
    yml
}

/// The population's pods and namespaces on a fake kube-apiserver (the tests' [`FakeKubeApi`]),
/// so the adapter's watch cache answers a `*` request's selector as it does in a cluster.
pub struct Cluster {
    _fake: FakeKubeApi,
    _dir: TempDir,
    kubeconfig: PathBuf,
}

impl Cluster {
    /// Every pod of `population` (label `app`), in its namespace.
    pub fn start(population: &Population) -> anyhow::Result<Cluster> {
        let fake = FakeKubeApi::start_with_objects();
        for ns in 0..population.namespaces {
            let namespace = format!("ns{ns}");
            for i in 0..population.pods_per_namespace() {
                let app = format!("app{}", i % population.apps.max(1));
                fake.set_pod(&namespace, &population.pod(ns, i), &[("app", &app)]);
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("bench-cluster-")
            .tempdir()?;
        let kubeconfig = fake.write_kubeconfig(dir.path())?;
        Ok(Cluster {
            _fake: fake,
            _dir: dir,
            kubeconfig,
        })
    }

    /// The adapter flag that points its watch cache here.
    pub fn flags(&self) -> [String; 2] {
        [
            "--lister-kubeconfig".into(),
            self.kubeconfig.to_string_lossy().into_owned(),
        ]
    }
}

/// The release `prom-adapter`, serving HTTPS on a loopback port with `--insecure-dev` (no
/// cluster to authenticate against). Without a [`Cluster`] to watch, a `*` request's selector
/// is matched on series labels.
pub struct Adapter {
    child: Child,
    dir: TempDir,
    addr: SocketAddr,
}

impl Drop for Adapter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Adapter {
    /// Starts `bin` with the rules YAML `rules`, against `prometheus_url`, and `extra` flags,
    /// and waits for its ready file.
    pub fn start(
        bin: &Path,
        rules: &str,
        prometheus_url: &str,
        extra: &[&str],
    ) -> anyhow::Result<Adapter> {
        let dir = tempfile::Builder::new()
            .prefix("bench-adapter-")
            .tempdir()?;
        let config = dir.path().join("rules.yaml");
        std::fs::write(&config, rules)?;
        let ready = dir.path().join("ready.json");
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(&config)
            .args(["--prometheus-url", prometheus_url])
            .args(["--secure-port", "0", "--bind-address", "127.0.0.1"])
            .arg("--cert-dir")
            .arg(dir.path().join("certs"))
            .arg("--ready-file")
            .arg(&ready)
            .arg("--insecure-dev")
            .args(extra);
        let mut child = spawn_logged(cmd, dir.path())?;
        let start = Instant::now();
        let addr = loop {
            if let Ok(text) = std::fs::read_to_string(&ready)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(addr) = v["secure"].as_str().and_then(|s| s.parse().ok())
            {
                break addr;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "prom-adapter exited ({status}) at start:\n{}",
                    log_tail(dir.path())
                );
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("prom-adapter not ready in 60 s:\n{}", log_tail(dir.path()));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Ok(Adapter { child, dir, addr })
    }

    /// Its HTTPS address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        log_tail(self.dir.path())
    }

    /// A client on a new connection to it.
    pub fn client(&self) -> anyhow::Result<Client> {
        Client::tls(self.addr, REQUEST_TIMEOUT)
    }

    /// Its `/metrics` page.
    pub fn metrics(&self) -> anyhow::Result<String> {
        let r: Reply = self.client()?.get("/metrics")?;
        if r.status != 200 {
            bail!("/metrics answered {}: {}", r.status, r.text());
        }
        Ok(r.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_job_per_shard() {
        let yml = scrape_config("127.0.0.1:9".parse().unwrap(), 2, Duration::from_secs(30));
        assert!(
            yml.contains("scrape_interval: 30s\n  scrape_timeout: 27s"),
            "{yml}"
        );
        assert!(
            yml.contains("- job_name: bench-1\n  honor_labels: true\n  metrics_path: /metrics/1")
        );
        assert_eq!(yml.matches("job_name").count(), 2);
    }

    #[test]
    fn paths_are_encoded() {
        assert_eq!(
            query_path("sum(x{a=\"b\"})"),
            "/api/v1/query?query=sum%28x%7Ba%3D%22b%22%7D%29"
        );
        assert!(
            series_path("{a!=\"\"}", Duration::from_secs(600))
                .starts_with("/api/v1/series?match%5B%5D=%7Ba%21%3D%22%22%7D&start=")
        );
    }
}
