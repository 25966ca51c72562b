//! A real VictoriaMetrics (single-node, Debian package `victoria-metrics`) as a child process
//! scraping the given targets, and its Prometheus-compatible query API.
//!
//! It is started with `-search.latencyOffset=0s` (by default it hides samples younger than
//! 30 s from queries) and `-search.disableCache` (no response cache: a test may ask about a
//! moment whose samples were still arriving the first time), on an ephemeral loopback port
//! with its own data directory, which [`VictoriaMetrics::stop`] and
//! [`VictoriaMetrics::restart`] keep.
//!
//! What differs from Prometheus, as far as the tests see it:
//! - A NaN sample value is dropped at ingestion (only staleness markers, written when a
//!   scrape fails, are stored), and no query answer ever holds a NaN sample: a NaN series is
//!   absent, not NaN. `+Inf` and `-Inf` are stored and answered.
//! - `rate()` divides the increase since the last sample *before* the window by the time
//!   between those samples, without extrapolating; over a series younger than the window it
//!   is the slope from its first sample. So compare with what VictoriaMetrics answers, not
//!   with Prometheus.
//! - An instant query without `time` is evaluated at the current second (`now` rounded
//!   down), so the timestamp of its samples is a whole second.
//! - Samples are buffered in memory before queries see them (a new series can take several
//!   seconds to become visible to queries and to `/api/v1/series`);
//!   [`VictoriaMetrics::force_flush`] makes them visible at once. `/api/v1/series` ignores a
//!   `start` finer than a day.
//! - Scrapes add `job` and `instance` and the `up` series as Prometheus does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::Value;
use tempfile::TempDir;

use crate::http::{self, url_encode};
use crate::process::ChildGuard;
use crate::prom::{
    Sample, count_targets_up, instant_query, instant_query_at, instant_query_map, respawn,
    spawn_on_free_port, terminate, wait_http_ready,
};
use crate::util::{PATIENCE, eventually, require_program};

/// The install hint for `victoria-metrics`.
pub const VICTORIA_METRICS_HINT: &str = "apt-get install victoria-metrics";

/// A running VictoriaMetrics scraping the given targets every second, killed when dropped.
pub struct VictoriaMetrics {
    child: ChildGuard,
    addr: SocketAddr,
    job: String,
    program: PathBuf,
    dir: TempDir,
}

impl VictoriaMetrics {
    /// Starts VictoriaMetrics with one scrape job named `job` (`honor_labels: true`,
    /// `honor_timestamps: true`, `/metrics`, 1 s interval and timeout) over `targets`, and
    /// waits until `/health` answers `OK`.
    ///
    /// # Panics
    /// When `victoria-metrics` is not installed, or it does not start.
    pub fn start_job(job: &str, targets: &[SocketAddr]) -> VictoriaMetrics {
        let program = require_program("victoria-metrics", VICTORIA_METRICS_HINT);
        let dir = tempfile::Builder::new()
            .prefix("victoria-metrics-")
            .tempdir()
            .expect("creating a temp dir for victoria-metrics");
        std::fs::write(config_path(dir.path()), scrape_config(job, targets))
            .expect("writing scrape.yml");
        let (child, addr) = spawn_on_free_port("victoria-metrics", |addr| {
            spawn_ready(&program, dir.path(), addr)
        });
        VictoriaMetrics {
            child,
            addr,
            job: job.to_owned(),
            program,
            dir,
        }
    }

    /// The name of the scrape job.
    pub fn job(&self) -> &str {
        &self.job
    }

    /// The address of its HTTP server (queries, `/health`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL of the Prometheus-compatible API, `http://127.0.0.1:PORT` (the API is at
    /// `/api/v1/...` under it).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The directory holding `scrape.yml` and the data (`data/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process guard (pid, logs).
    pub fn process(&self) -> &ChildGuard {
        &self.child
    }

    /// Whether the process is running (it has not exited or been stopped).
    pub fn is_running(&self) -> bool {
        matches!(self.child.try_status(), Ok(None))
    }

    /// Stops VictoriaMetrics with SIGTERM and waits for it to exit (it flushes its data
    /// first); its port and data directory are kept for [`VictoriaMetrics::restart`].
    ///
    /// # Panics
    /// When it is not running, or still running 30 s (scaled) after SIGTERM.
    pub fn stop(&mut self) {
        terminate(&self.child, "victoria-metrics");
    }

    /// Starts VictoriaMetrics again on the same port with the same config and data directory
    /// (after [`VictoriaMetrics::stop`]), and waits until `/health` answers `OK`.
    ///
    /// # Panics
    /// When it is still running, or it does not become ready (e.g. another process took the
    /// port meanwhile).
    pub fn restart(&mut self) {
        respawn(&mut self.child, "victoria-metrics", self.addr, |addr| {
            spawn_ready(&self.program, self.dir.path(), addr)
        });
    }

    /// Runs an instant query (evaluated now) and returns its vector result.
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

    /// `/api/v1/series` with one `match[]`: the label sets of the matching series (no time
    /// range: VictoriaMetrics then answers for the last day).
    pub fn series(&self, matcher: &str) -> Result<Vec<BTreeMap<String, String>>> {
        let path = format!("/api/v1/series?match[]={}", url_encode(matcher));
        let response = http::get(self.addr, &path)?;
        let body = response.text()?;
        anyhow::ensure!(
            response.status == 200,
            "series {matcher:?}: HTTP {}: {body}",
            response.status
        );
        parse_series(&body).with_context(|| format!("series {matcher:?}"))
    }

    /// Makes everything ingested so far visible to queries and `/api/v1/series` now
    /// (`/internal/force_flush`), instead of within a few seconds.
    pub fn force_flush(&self) -> Result<()> {
        let response = http::get(self.addr, "/internal/force_flush")?;
        anyhow::ensure!(
            response.status == 200,
            "/internal/force_flush answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
        Ok(())
    }

    /// How many targets of the scrape job are up (`up{job="<job>"} == 1`).
    pub fn targets_up(&self) -> Result<usize> {
        count_targets_up(self.addr, &self.job)
    }

    /// Waits until `n` targets of the scrape job are up.
    ///
    /// # Panics
    /// When VictoriaMetrics exits, or the targets are not up in time.
    pub fn wait_targets_up(&self, n: usize) {
        eventually(
            &format!("{n} {} target(s) up in VictoriaMetrics", self.job),
            PATIENCE,
            || {
                self.child.ensure_running()?;
                self.force_flush()?;
                let up = self.targets_up()?;
                anyhow::ensure!(up == n, "{up} of {n} targets up");
                Ok(())
            },
        )
    }
}

/// The scrape config (Prometheus format, only what VictoriaMetrics reads: no
/// `evaluation_interval`, so it parses strictly): 1 s interval and timeout, one job named
/// `job` with `honor_labels` and `honor_timestamps` over `targets`.
pub fn scrape_config(job: &str, targets: &[SocketAddr]) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: \
         '{job}'\n    honor_labels: true\n    honor_timestamps: true\n    metrics_path: /metrics\n    \
         static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    )
}

fn config_path(dir: &Path) -> PathBuf {
    dir.join("scrape.yml")
}

/// Starts VictoriaMetrics in `dir` (config `scrape.yml`, data `data/`) listening on `addr`,
/// and waits until `/health` answers `OK`; an error if it exits or is not ready in time.
fn spawn_ready(program: &Path, dir: &Path, addr: SocketAddr) -> Result<ChildGuard> {
    let mut cmd = Command::new(program);
    cmd.arg(format!("-httpListenAddr={addr}"))
        .arg(format!("-storageDataPath={}", dir.join("data").display()))
        .arg(format!("-promscrape.config={}", config_path(dir).display()))
        .arg("-search.latencyOffset=0s")
        .arg("-search.disableCache")
        .arg("-loggerLevel=WARN")
        .current_dir(dir);
    let child = ChildGuard::spawn("victoria-metrics", cmd).context("starting victoria-metrics")?;
    wait_http_ready(&child, addr, "/health", |r| {
        r.text().is_ok_and(|t| t.trim() == "OK")
    })?;
    Ok(child)
}

/// Parses a `/api/v1/series` JSON answer: the label sets, `__name__` included.
pub fn parse_series(body: &str) -> Result<Vec<BTreeMap<String, String>>> {
    let json: Value = serde_json::from_str(body).context("series answer is not JSON")?;
    anyhow::ensure!(json["status"] == "success", "series failed: {body}");
    json["data"]
        .as_array()
        .context("series data is not an array")?
        .iter()
        .map(|set| {
            let set = set.as_object().context("a series is not an object")?;
            set.iter()
                .map(|(k, v)| {
                    let v = v.as_str().context("a label value is not a string")?;
                    Ok((k.clone(), v.to_owned()))
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_series_answers() {
        let body = r#"{"status":"success","data":[
            {"__name__":"up","job":"j","instance":"a:1"},{"__name__":"x"}]}"#;
        let series = parse_series(body).unwrap();
        assert_eq!(series.len(), 2);
        assert_eq!(series[0]["job"], "j");
        assert_eq!(series[1]["__name__"], "x");
        assert!(parse_series(r#"{"status":"error","error":"bad"}"#).is_err());
    }

    #[test]
    fn scrape_config_has_one_job_and_no_evaluation_interval() {
        let addr: SocketAddr = ([127, 0, 0, 1], 9).into();
        let config = scrape_config("vm", &[addr]);
        assert!(config.contains("job_name: 'vm'"), "{config}");
        assert!(config.contains("targets: ['127.0.0.1:9']"), "{config}");
        assert!(config.contains("honor_labels: true"), "{config}");
        assert!(!config.contains("evaluation_interval"), "{config}");
    }
}
