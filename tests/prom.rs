//! A real Prometheus server as a child process, its query API, and `promtool`; the query,
//! start, readiness and stop helpers serve any Prometheus-compatible server (VictoriaMetrics
//! too).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tempfile::TempDir;

use crate::exposition::render_key;
use crate::http::{self, HttpResponse, url_encode};
use crate::process::ChildGuard;
use crate::util::{PATIENCE, eventually, free_tcp_port, parse_value, require_program, scaled};

/// The install hint for `prometheus` and `promtool`.
pub const PROMETHEUS_HINT: &str = "apt-get install prometheus";

/// One element of an instant-vector query result.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// All labels, `__name__` included when the result keeps it.
    pub labels: BTreeMap<String, String>,
    /// The value (`NaN`, `+Inf` and `-Inf` included).
    pub value: f64,
}

impl Sample {
    /// The series as `name{k="v",…}` without `__name__` in the braces and without the target
    /// labels `job` and `instance`, which Prometheus adds.
    pub fn key(&self) -> String {
        let name = self.labels.get("__name__").cloned().unwrap_or_default();
        let labels: BTreeMap<String, String> = self
            .labels
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "__name__" | "job" | "instance"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        render_key(&name, &labels)
    }
}

/// A running Prometheus scraping the given targets every second, killed when dropped.
pub struct Prometheus {
    child: ChildGuard,
    addr: SocketAddr,
    job: String,
    program: PathBuf,
    dir: TempDir,
    /// Extra flags (feature flags), kept for restarts.
    flags: Vec<String>,
}

impl Prometheus {
    /// Starts Prometheus with one job, `bridge` (`honor_labels: true`, `/metrics`, 1 s scrape
    /// interval), over `targets`, and waits until `/-/ready` answers 200.
    ///
    /// # Panics
    /// When `prometheus` is not installed, or it does not start.
    pub fn start(targets: &[SocketAddr]) -> Prometheus {
        Self::start_job("bridge", targets)
    }

    /// Starts Prometheus with one scrape job named `job` (`honor_labels: true`, `/metrics`,
    /// 1 s scrape interval) over `targets`, and waits until `/-/ready` answers 200.
    ///
    /// # Panics
    /// When `prometheus` is not installed, or it does not start.
    pub fn start_job(job: &str, targets: &[SocketAddr]) -> Prometheus {
        Self::launch(job, targets, None, &[])
    }

    /// [`Prometheus::start_job`] with feature flags (`--enable-feature=…`), e.g.
    /// `native-histograms`, which makes Prometheus ask for the protobuf format.
    pub fn start_job_with_features(
        job: &str,
        targets: &[SocketAddr],
        features: &[&str],
    ) -> Prometheus {
        let flags: Vec<String> = features
            .iter()
            .map(|f| format!("--enable-feature={f}"))
            .collect();
        Self::launch(job, targets, None, &flags)
    }

    /// [`Prometheus::start_job`] over a TSDB that first gets `openmetrics` (samples with
    /// timestamps, ending in `# EOF`) backfilled with `promtool tsdb create-blocks-from
    /// openmetrics`, so queries see that history as if it had been scraped.
    ///
    /// # Panics
    /// When `prometheus` or `promtool` is not installed, the backfill fails, or Prometheus
    /// does not start.
    pub fn start_job_backfilled(
        job: &str,
        targets: &[SocketAddr],
        openmetrics: &str,
    ) -> Prometheus {
        Self::launch(job, targets, Some(openmetrics), &[])
    }

    fn launch(
        job: &str,
        targets: &[SocketAddr],
        backfill: Option<&str>,
        flags: &[String],
    ) -> Prometheus {
        let program = require_program("prometheus", PROMETHEUS_HINT);
        let dir = tempfile::Builder::new()
            .prefix("prometheus-")
            .tempdir()
            .expect("creating a temp dir for prometheus");
        std::fs::write(config_path(dir.path()), scrape_config_for(job, targets))
            .expect("writing prometheus.yml");
        if let Some(openmetrics) = backfill {
            let input = dir.path().join("backfill.om");
            std::fs::write(&input, openmetrics).expect("writing the backfill input");
            let promtool = require_program("promtool", PROMETHEUS_HINT);
            let output = Command::new(promtool)
                .args(["tsdb", "create-blocks-from", "openmetrics"])
                .arg(&input)
                .arg(dir.path().join("data"))
                .stdin(Stdio::null())
                .output()
                .expect("running promtool tsdb create-blocks-from openmetrics");
            assert!(
                output.status.success(),
                "promtool tsdb create-blocks-from openmetrics failed with {}: {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let (child, addr) = spawn_on_free_port("prometheus", |addr| {
            spawn_ready(&program, dir.path(), addr, flags)
        });
        Prometheus {
            child,
            addr,
            job: job.to_owned(),
            program,
            dir,
            flags: flags.to_vec(),
        }
    }

    /// The name of the scrape job.
    pub fn job(&self) -> &str {
        &self.job
    }

    /// The base URL of the HTTP API, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The directory holding `prometheus.yml` and the TSDB (`data/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops Prometheus with SIGTERM and waits for it to exit; its port and data directory
    /// are kept for [`Prometheus::restart`].
    ///
    /// # Panics
    /// When it is not running, or still running 30 s (scaled) after SIGTERM.
    pub fn stop(&mut self) {
        terminate(&self.child, "prometheus");
    }

    /// Starts Prometheus again on the same port with the same config and data directory
    /// (after [`Prometheus::stop`]), and waits until `/-/ready` answers 200.
    ///
    /// # Panics
    /// When it is still running, or it does not become ready (e.g. another process took the
    /// port meanwhile).
    pub fn restart(&mut self) {
        respawn(&mut self.child, "prometheus", self.addr, |addr| {
            spawn_ready(&self.program, self.dir.path(), addr, &self.flags)
        });
    }

    /// The address of Prometheus' web server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process guard (pid, logs).
    pub fn process(&self) -> &ChildGuard {
        &self.child
    }

    /// Runs an instant query and returns its vector result.
    pub fn query(&self, promql: &str) -> Result<Vec<Sample>> {
        instant_query(self.addr, promql)
    }

    /// Runs an instant query evaluated at `time` (Unix seconds) and returns its vector result.
    pub fn query_at(&self, promql: &str, time: f64) -> Result<Vec<Sample>> {
        instant_query_at(self.addr, promql, time)
    }

    /// Runs an instant query and returns its samples keyed by [`Sample::key`].
    pub fn query_map(&self, promql: &str) -> Result<BTreeMap<String, f64>> {
        instant_query_map(self.addr, promql)
    }

    /// How many targets of the scrape job (`bridge` after [`Prometheus::start`]) are up
    /// (`up{job="<job>"} == 1`).
    pub fn targets_up(&self) -> Result<usize> {
        count_targets_up(self.addr, &self.job)
    }

    /// Waits until `n` targets of the scrape job are up.
    pub fn wait_targets_up(&self, n: usize) {
        eventually(
            &format!("{n} {} target(s) up in Prometheus", self.job),
            PATIENCE,
            || {
                self.child.ensure_running()?;
                let up = self.targets_up()?;
                anyhow::ensure!(up == n, "{up} of {n} targets up");
                Ok(())
            },
        )
    }
}

/// Runs an instant query on the Prometheus-compatible HTTP API at `addr` (Prometheus,
/// VictoriaMetrics) and returns its vector result.
pub fn instant_query(addr: SocketAddr, promql: &str) -> Result<Vec<Sample>> {
    query_path(
        addr,
        promql,
        &format!("/api/v1/query?query={}", url_encode(promql)),
    )
}

/// [`instant_query`] evaluated at `time` (Unix seconds).
pub fn instant_query_at(addr: SocketAddr, promql: &str, time: f64) -> Result<Vec<Sample>> {
    let path = format!("/api/v1/query?query={}&time={time:.3}", url_encode(promql));
    query_path(addr, promql, &path).with_context(|| format!("evaluated at {time:.3}"))
}

fn query_path(addr: SocketAddr, promql: &str, path: &str) -> Result<Vec<Sample>> {
    let response = http::get(addr, path)?;
    let body = response.text()?;
    anyhow::ensure!(
        response.status == 200,
        "query {promql:?}: HTTP {}: {body}",
        response.status
    );
    parse_vector(&body).with_context(|| format!("query {promql:?}"))
}

/// [`instant_query`], its samples keyed by [`Sample::key`]; an error when two samples differ
/// only in `job`/`instance`.
pub fn instant_query_map(addr: SocketAddr, promql: &str) -> Result<BTreeMap<String, f64>> {
    let mut map = BTreeMap::new();
    for s in instant_query(addr, promql)? {
        let key = s.key();
        if map.insert(key.clone(), s.value).is_some() {
            bail!("query {promql:?} returned {key} twice (differing only in job/instance)");
        }
    }
    Ok(map)
}

/// How many targets of the scrape job `job` are up (`up{job="<job>"} == 1`), asked of the
/// Prometheus-compatible HTTP API at `addr`.
pub fn count_targets_up(addr: SocketAddr, job: &str) -> Result<usize> {
    let samples = instant_query(addr, &format!("up{{job=\"{job}\"}}"))?;
    Ok(samples.iter().filter(|s| s.value == 1.0).count())
}

/// Starts a server (`name` in messages) on a free loopback port with `spawn`, which must
/// return once it is ready. The port is free when picked, but another process could take it
/// before the server binds, in which case the server exits and this retries with another
/// port (three attempts in all).
///
/// # Panics
/// When the third attempt fails too.
pub fn spawn_on_free_port(
    name: &str,
    mut spawn: impl FnMut(SocketAddr) -> Result<ChildGuard>,
) -> (ChildGuard, SocketAddr) {
    for attempt in 1..=3 {
        let port = free_tcp_port().expect("finding a free port");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        match spawn(addr) {
            Ok(child) => return (child, addr),
            Err(e) if attempt < 3 => eprintln!("{name} did not start, retrying: {e:#}"),
            Err(e) => panic!("{name} did not start: {e:#}"),
        }
    }
    unreachable!("the loop returns or panics")
}

/// Waits until `GET path` on `addr` answers 200 and `ready` holds for the answer, failing fast
/// (as an error) if `child` exits; an error with the last answer when it is not ready within
/// [`PATIENCE`] (scaled).
pub fn wait_http_ready(
    child: &ChildGuard,
    addr: SocketAddr,
    path: &str,
    ready: impl Fn(&HttpResponse) -> bool,
) -> Result<()> {
    let start = std::time::Instant::now();
    let limit = scaled(PATIENCE);
    loop {
        child.ensure_running()?;
        let last = match http::get(addr, path) {
            Ok(r) if r.status == 200 && ready(&r) => return Ok(()),
            Ok(r) => anyhow::anyhow!(
                "{path} answered {} {:?}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ),
            Err(e) => e,
        };
        if start.elapsed() >= limit {
            return Err(last.context(format!("not ready after {limit:?}")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops `child` (`name` in messages) with SIGTERM and waits for it to exit.
///
/// # Panics
/// When it is not running, or still running 30 s (scaled) after SIGTERM.
pub fn terminate(child: &ChildGuard, name: &str) {
    if let Err(e) = child.signal("TERM") {
        panic!("stopping {name}: {e:#}");
    }
    match child.wait_timeout(scaled(Duration::from_secs(30))) {
        Ok(Some(_)) => {}
        // The guard prints the log tail as the panic unwinds.
        Ok(None) => panic!("{name} still running 30 s after SIGTERM"),
        Err(e) => panic!("waiting for {name} to exit: {e:#}"),
    }
}

/// Starts a stopped server (`name` in messages) again on `addr` with `spawn`, which must
/// return once it is ready, and puts it in `child`.
///
/// # Panics
/// When `child` is still running, or the new process does not become ready.
pub fn respawn(
    child: &mut ChildGuard,
    name: &str,
    addr: SocketAddr,
    spawn: impl FnOnce(SocketAddr) -> Result<ChildGuard>,
) {
    match child.try_status() {
        Ok(Some(_)) => {}
        Ok(None) => panic!("restart: {name} is still running; stop it first"),
        Err(e) => panic!("restart: polling {name}: {e:#}"),
    }
    match spawn(addr) {
        Ok(new) => *child = new,
        Err(e) => panic!("{name} did not restart on {addr}: {e:#}"),
    }
}

/// The Prometheus config: 1 s scrape and evaluation intervals, one `bridge` job.
pub fn scrape_config(targets: &[SocketAddr]) -> String {
    scrape_config_for("bridge", targets)
}

/// The Prometheus config: 1 s scrape and evaluation intervals, one job named `job`.
pub fn scrape_config_for(job: &str, targets: &[SocketAddr]) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n  scrape_timeout: 1s\n\
         scrape_configs:\n  - job_name: '{job}'\n    honor_labels: true\n    metrics_path: \
         /metrics\n    static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    )
}

fn config_path(dir: &Path) -> PathBuf {
    dir.join("prometheus.yml")
}

/// Starts Prometheus in `dir` (config `prometheus.yml`, TSDB `data/`) listening on `addr`, and
/// waits until `/-/ready` answers 200; an error if it exits or is not ready in time.
fn spawn_ready(
    program: &Path,
    dir: &Path,
    addr: SocketAddr,
    flags: &[String],
) -> Result<ChildGuard> {
    let mut cmd = Command::new(program);
    cmd.args(flags);
    cmd.arg(format!("--config.file={}", config_path(dir).display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--log.level=warn")
        .current_dir(dir);
    let child = ChildGuard::spawn("prometheus", cmd).context("starting prometheus")?;
    wait_http_ready(&child, addr, "/-/ready", |_| true)?;
    Ok(child)
}

/// Parses a `/api/v1/query` JSON answer whose result is a vector (or a scalar).
pub fn parse_vector(body: &str) -> Result<Vec<Sample>> {
    let json: Value = serde_json::from_str(body).context("query answer is not JSON")?;
    anyhow::ensure!(json["status"] == "success", "query failed: {body}");
    let data = &json["data"];
    let result = &data["result"];
    match data["resultType"].as_str() {
        Some("vector") => result
            .as_array()
            .context("vector result is not an array")?
            .iter()
            .map(|item| {
                let labels = item["metric"]
                    .as_object()
                    .context("sample without `metric`")?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect();
                let value = sample_value(&item["value"])?;
                Ok(Sample { labels, value })
            })
            .collect(),
        Some("scalar") => Ok(vec![Sample {
            labels: BTreeMap::new(),
            value: sample_value(result)?,
        }]),
        other => bail!("unexpected result type {other:?}: {body}"),
    }
}

fn sample_value(pair: &Value) -> Result<f64> {
    let text = pair
        .get(1)
        .and_then(Value::as_str)
        .context("sample value is not [ts, \"v\"]")?;
    parse_value(text)
}

/// Pipes `text` into `promtool check metrics`; returns its exit code and combined output.
///
/// Exit code 0 is clean, 3 means lint findings only (e.g. a counter without `_total`, which
/// statsd_exporter-compatible output has by design), 1 means the exposition does not parse.
///
/// # Panics
/// When `promtool` is not installed.
pub fn promtool_check_metrics(text: &str) -> (i32, String) {
    let program = require_program("promtool", PROMETHEUS_HINT);
    let mut child = Command::new(program)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool");
    let mut stdin = child.stdin.take().expect("promtool stdin");
    let text = text.to_owned();
    // Write from a thread so a large page can't deadlock against promtool's output.
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let output = child.wait_with_output().expect("waiting for promtool");
    let _ = writer.join();
    let mut combined = String::from_utf8_lossy(&output.stdout).into_owned();
    combined.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), combined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vector_answers_with_special_values() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"__name__":"x","job":"bridge","instance":"a:1","env":"prod"},"value":[1.5,"NaN"]},
            {"metric":{"__name__":"y"},"value":[1.5,"+Inf"]},
            {"metric":{},"value":[1.5,"0.25"]}]}}"#;
        let v = parse_vector(body).unwrap();
        assert!(v[0].value.is_nan());
        assert_eq!(v[0].key(), "x{env=\"prod\"}");
        assert_eq!(v[1].value, f64::INFINITY);
        assert_eq!(v[2].key(), "{}");
        assert_eq!(v[2].value, 0.25);
    }
}
