//! `adapter_harness`: prom-adapter measured against a real Prometheus holding generated
//! series, each figure beside its baseline from the same run:
//!
//! - discovery over each `--series` population: relist time against the same
//!   `/api/v1/series` calls sent straight to Prometheus, RSS, and a probe that counts every
//!   answer other than 200 for known metrics while relists run (1 s apart);
//! - request overhead: p50/p99 of HPA-shaped requests minus the same PromQL sent straight,
//!   the pods watched on a fake kube-apiserver (`Cluster`) and, once more, without one;
//! - throughput of cached answers (a named query) with `wrk` through TLS, beside `/healthz`
//!   of the same server;
//! - with `--soak-minutes N`: HPA traffic (`--hpas` every `--period`), Prometheus restarted
//!   at one and two thirds, RSS and open fds sampled.
//!
//! ```text
//! apt-get install -y prometheus wrk
//! cargo build --release -p prom-adapter
//! cargo run --release -p pipeline-benches --bin adapter_harness -- --out adapter.md          # ~6 min
//! cargo run --release -p pipeline-benches --bin adapter_harness -- --soak-minutes 30 --only-soak
//! ```

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use pipeline_benches::adapter::measure::{
    self, DiscoveryResult, HpaMetric, OverheadResult, SoakResult, Stage, WRK_INSTALL, WrkResult,
};
use pipeline_benches::adapter::pages::Population;
use pipeline_benches::adapter::stats::{mb, median, ms, percentile};
use pipeline_benches::adapter::systems::{Cluster, PROMETHEUS_INSTALL};
use pipeline_benches::search::parse_count;
use pipeline_benches::sut::which;

/// prom-adapter against a real Prometheus: discovery, request overhead, throughput, soak.
#[derive(Debug, Parser)]
#[command(name = "adapter_harness")]
struct Args {
    /// Populations for the discovery measurement, comma-separated (k and M suffixes).
    #[arg(long, value_delimiter = ',', default_value = "100k,1M", value_parser = count)]
    series: Vec<u64>,
    /// Relists to time per population.
    #[arg(long, default_value_t = 5)]
    relists: u64,
    /// Requests of each kind for the overhead measurement (on the first population).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Seconds of each `wrk` run.
    #[arg(long, default_value_t = 10)]
    wrk_secs: u64,
    /// `wrk` connections (over 2 threads).
    #[arg(long, default_value_t = 32)]
    wrk_connections: usize,
    /// Run the soak for this many minutes after the rest (0: no soak).
    #[arg(long, default_value_t = 0.0)]
    soak_minutes: f64,
    /// Only the soak (on the first population).
    #[arg(long)]
    only_soak: bool,
    /// HPAs in the soak.
    #[arg(long, default_value_t = 500)]
    hpas: usize,
    /// Seconds between one HPA's requests (the HPA controller's sync period).
    #[arg(long, default_value_t = 15)]
    period: u64,
    /// The prom-adapter binary [default: target/release/prom-adapter of the workspace].
    #[arg(long)]
    adapter_bin: Option<PathBuf>,
    /// The Prometheus binary [default: prometheus on PATH].
    #[arg(long)]
    prometheus_bin: Option<PathBuf>,
    /// Write the report to this file too.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn count(s: &str) -> Result<u64, String> {
    parse_count(s).ok_or_else(|| format!("not a count: {s:?} (e.g. 100k, 1M)"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let adapter_bin = match &args.adapter_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the harness has no directory")?
            .join("prom-adapter"),
    };
    if !adapter_bin.is_file() {
        bail!(
            "{} is not built: cargo build --release -p prom-adapter",
            adapter_bin.display()
        );
    }
    let prometheus_bin = match &args.prometheus_bin {
        Some(p) => p.clone(),
        None => which("prometheus")
            .with_context(|| format!("no prometheus on PATH: {PROMETHEUS_INSTALL}"))?,
    };
    let runs_wrk = !args.only_soak;
    if runs_wrk && which("wrk").is_none() {
        bail!("no wrk on PATH: {WRK_INSTALL}");
    }
    let Some(&first) = args.series.first() else {
        bail!("--series names no population");
    };
    let mut report = Report::default();
    if !args.only_soak {
        for (i, &n) in args.series.iter().enumerate() {
            let population = Population::new(n as usize);
            let interval = if n > 200_000 { 60 } else { 30 };
            eprintln!(
                "[{:>4.0}s] {} series: starting Prometheus",
                started.elapsed().as_secs_f64(),
                population.total_series()
            );
            let stage = Stage::start(&prometheus_bin, population, Duration::from_secs(interval))?;
            eprintln!(
                "[{:>4.0}s] ingested in {:.1} s; discovery",
                started.elapsed().as_secs_f64(),
                stage.ingest.as_secs_f64()
            );
            let relists = if n > 200_000 {
                args.relists.min(3)
            } else {
                args.relists
            };
            report.discovery.push(measure::discovery(
                &stage,
                &adapter_bin,
                relists,
                Duration::from_secs(600),
            )?);
            if i == 0 {
                eprintln!(
                    "[{:>4.0}s] request overhead",
                    started.elapsed().as_secs_f64()
                );
                let cluster = Cluster::start(&population)?;
                let adapter = measure::quiet_adapter(&stage, &adapter_bin, Some(&cluster))?;
                for h in [0, 6] {
                    let metric = HpaMetric::nth(&population, h);
                    report.overhead.push(measure::overhead(
                        &stage,
                        &adapter,
                        &metric,
                        args.requests,
                        true,
                    )?);
                }
                {
                    let unwatched = measure::quiet_adapter(&stage, &adapter_bin, None)?;
                    report.overhead.push(measure::overhead(
                        &stage,
                        &unwatched,
                        &HpaMetric::nth(&population, 0),
                        args.requests,
                        false,
                    )?);
                }
                eprintln!("[{:>4.0}s] throughput", started.elapsed().as_secs_f64());
                let runs = [
                    (
                        "`/healthz` (baseline: TLS + HTTP floor)",
                        "/healthz".to_owned(),
                    ),
                    ("named query, cached", HpaMetric::Named.path()),
                    (
                        "external metric via PromQL",
                        HpaMetric::nth(&population, 6).path(),
                    ),
                ];
                for (what, path) in runs {
                    report.throughput.push(measure::throughput(
                        &adapter,
                        what,
                        &path,
                        args.wrk_secs,
                        args.wrk_connections,
                    )?);
                }
            }
        }
    }
    if args.soak_minutes > 0.0 {
        let population = Population::new(first as usize);
        let mut stage = Stage::start(&prometheus_bin, population, Duration::from_secs(30))?;
        eprintln!(
            "[{:>4.0}s] soak: {} min, {} HPAs every {} s",
            started.elapsed().as_secs_f64(),
            args.soak_minutes,
            args.hpas,
            args.period
        );
        report.soak = Some(measure::soak(
            &mut stage,
            &adapter_bin,
            args.soak_minutes,
            args.hpas,
            Duration::from_secs(args.period),
            |line| eprintln!("[{:>4.0}s] {line}", started.elapsed().as_secs_f64()),
        )?);
    }
    report.elapsed = started.elapsed();
    let text = report.render();
    print!("{text}");
    if let Some(out) = &args.out {
        std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

#[derive(Default)]
struct Report {
    discovery: Vec<DiscoveryResult>,
    overhead: Vec<OverheadResult>,
    throughput: Vec<WrkResult>,
    soak: Option<SoakResult>,
    elapsed: Duration,
}

impl Report {
    fn render(&self) -> String {
        let mut out = String::new();
        if !self.discovery.is_empty() {
            out.push_str("\n**Discovery** (relists 1 s apart; direct = the same two `/api/v1/series` calls sent straight to Prometheus, median of 3):\n\n");
            out.push_str("| series | relist (mean) | direct series calls | relist / direct | answer size | metrics listed | RSS | RSS peak | probe answers not 200 |\n|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
            for d in &self.discovery {
                let _ = writeln!(
                    out,
                    "| {} | {:.3} s ({} runs) | {:.3} s | {:.2} | {} MB | {} | {} MB | {} MB | {} of {} |",
                    d.series,
                    d.relist_mean.as_secs_f64(),
                    d.relists,
                    d.direct.as_secs_f64(),
                    d.relist_mean.as_secs_f64() / d.direct.as_secs_f64().max(1e-9),
                    mb(d.direct_bytes as u64),
                    d.listed,
                    mb(d.rss),
                    mb(d.rss_peak),
                    d.probe_failures,
                    d.probes
                );
            }
            for d in self.discovery.iter().filter(|d| d.first_failure.is_some()) {
                let _ = writeln!(
                    out,
                    "\nFirst failed probe at {} series: {}",
                    d.series,
                    d.first_failure.as_deref().unwrap_or_default()
                );
            }
        }
        if !self.overhead.is_empty() {
            out.push_str("\n**Request overhead** (sequential, keep-alive; adapter through TLS, Prometheus plain HTTP; overhead = adapter percentile − direct percentile):\n\n");
            out.push_str("| request | n | adapter p50 | adapter p99 | direct p50 | direct p99 | overhead p50 | overhead p99 |\n|---|--:|--:|--:|--:|--:|--:|--:|\n");
            for o in &self.overhead {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} ms | {} ms | {} ms | {} ms | {} ms | **{} ms** |",
                    o.what,
                    o.requests,
                    ms(percentile(&o.adapter, 0.5)),
                    ms(percentile(&o.adapter, 0.99)),
                    ms(percentile(&o.direct, 0.5)),
                    ms(percentile(&o.direct, 0.99)),
                    ms(o.overhead(0.5)),
                    ms(o.overhead(0.99)),
                );
            }
            for o in &self.overhead {
                let _ = writeln!(out, "\n`{}`: `{}`", o.what, o.promql);
            }
        }
        if !self.throughput.is_empty() {
            let base = self.throughput.first().map_or(0.0, |t| t.rate);
            out.push_str("\n**Throughput** (`wrk -t2 -c32`, HTTPS, one adapter; ratio to `/healthz` of the same server):\n\n");
            out.push_str("| path | requests/s | ratio | p99 | errors |\n|---|--:|--:|--:|--:|\n");
            for t in &self.throughput {
                let _ = writeln!(
                    out,
                    "| {} | {:.0} | {:.2} | {} | {} of {} |",
                    t.what,
                    t.rate,
                    t.rate / base.max(1e-9),
                    t.p99,
                    t.errors,
                    t.requests
                );
            }
        }
        if let Some(s) = &self.soak {
            render_soak(&mut out, s);
        }
        let _ = writeln!(out, "\n(run took {:.0} s)", self.elapsed.as_secs_f64());
        out
    }
}

fn render_soak(out: &mut String, s: &SoakResult) {
    let _ = writeln!(
        out,
        "\n**Soak**: {:.0} min, {} HPAs each asking every {} s ({:.1} requests/s; 6 in 10 a pods metric, 2 an external metric, 2 the named query); Prometheus restarted at {}:\n",
        s.minutes,
        s.hpas,
        s.period.as_secs(),
        s.hpas as f64 / s.period.as_secs_f64().max(1e-9),
        s.restarts
            .iter()
            .map(|(at, down)| format!("{:.1} min (down {:.1} s)", at / 60.0, down.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" and ")
    );
    let settled: Vec<&(f64, u64, usize)> = s.samples.iter().filter(|p| p.0 >= s.warmup).collect();
    let first = settled.first();
    let last = settled.last();
    let max = settled.iter().map(|p| p.1).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "| requests | 200 | 503 (Prometheus down) | other | p50 | p99 | RSS after {:.0} s | RSS at end | RSS max | growth | open fds start → end |\n|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        s.warmup
    );
    let _ = writeln!(
        out,
        "| {} | {} | {} | {} | {} ms | {} ms | {} MB | {} MB | {} MB | {} MB / 10 min | {} → {} |",
        s.requests,
        s.ok,
        s.unavailable,
        s.other,
        ms(median(&s.latencies)),
        ms(percentile(&s.latencies, 0.99)),
        first.map_or_else(|| "-".into(), |p| mb(p.1)),
        last.map_or_else(|| "-".into(), |p| mb(p.1)),
        mb(max),
        s.growth_mb_per_10min()
            .map_or_else(|| "-".into(), |g| format!("{g:+.2}")),
        first.map_or(0, |p| p.2),
        last.map_or(0, |p| p.2),
    );
    if let Some(o) = &s.first_other {
        let _ = writeln!(out, "\nFirst other answer: {o}");
    }
    out.push_str("\nRSS samples (minute: MB): ");
    let every = (s.samples.len() / 12).max(1);
    let picks: Vec<String> = s
        .samples
        .iter()
        .step_by(every)
        .map(|p| format!("{:.0}: {}", p.0 / 60.0, mb(p.1)))
        .collect();
    out.push_str(&picks.join(", "));
    out.push('\n');
}
