//! `load_harness`: the whole-binary load test. For each system (the `drain` baseline, the
//! release statsd-bridge, collectd if installed, statsd_exporter if on PATH) and each traffic
//! shape (1 and 20 lines per datagram; 1,000 and 100,000 series), it finds the highest rate
//! with less than 0.1% loss, and prints a Markdown table: the rate, the loss there and at
//! the first lossy step, the ratio to the drain's rate, RSS, CPU, the time of a full
//! `/metrics` read, and the kernel's UDP drop counter of the receiving socket.
//!
//! Run (build the bridge first; the harness doesn't):
//!
//! ```text
//! cargo build --release -p statsd-bridge
//! cargo run --release -p pipeline-benches --bin load_harness -- --quick      # ~2 min
//! cargo run --release -p pipeline-benches --bin load_harness -- --out load.md # ~6-10 min
//! cargo run --release -p pipeline-benches --bin load_harness -- --memory      # 1M series
//! ```
//!
//! Flags: `--shapes 1x1k,20x100k` picks shapes, `--systems drain,bridge` picks systems,
//! `--bridge-bin PATH` another bridge binary, `--mix mixed` counters, gauges, timers,
//! histograms and sets (collectd still gets plain counters), `--out FILE` writes the table.
//! collectd needs `apt-get install -y collectd-core libmicrohttpd12 libprotobuf-c1`; it
//! reads no tags, so it gets plain StatsD lines of the same shape.
//!
//! Everything runs on loopback; every system is started fresh for each shape and killed
//! after it; every wait and loop is bounded, and the whole run keeps to a time budget
//! (`--budget`, 150 s quick, 600 s full).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use pipeline_benches::drain::{self, DrainArgs};
use pipeline_benches::search::{self, MemoryConfig, SearchConfig, Shape, parse_count};
use pipeline_benches::sut::{Binaries, COLLECTD_INSTALL, SystemKind};
use pipeline_benches::traffic::Mix;

/// Whole-binary load test of statsd-bridge against a bare receiver and other servers.
#[derive(Debug, Parser)]
#[command(name = "load_harness")]
struct Args {
    /// Short bursts and fewer steps: about 2-3 minutes.
    #[arg(long)]
    quick: bool,
    /// Write the Markdown table (or the memory report) to this file too.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The statsd-bridge binary [default: target/release/statsd-bridge of the workspace].
    #[arg(long)]
    bridge_bin: Option<PathBuf>,
    /// Shapes as LINESxSERIES, comma-separated [default: 1x1k,20x1k,1x100k,20x100k].
    #[arg(long, value_delimiter = ',', value_parser = Shape::parse)]
    shapes: Option<Vec<Shape>>,
    /// Systems, comma-separated [default: drain,bridge,collectd,statsd_exporter].
    #[arg(long, value_delimiter = ',')]
    systems: Option<Vec<SystemKind>>,
    /// StatsD types: counter or mixed.
    #[arg(long, default_value_t = Mix::Counter)]
    mix: Mix,
    /// Seconds per burst [default: 1.2 quick, 2.5 full].
    #[arg(long)]
    step_secs: Option<f64>,
    /// First target rate, lines per second.
    #[arg(long, default_value = "100k", value_parser = count)]
    start_rate: u64,
    /// Sending threads (the machine has 2 cores: more senders take CPU from the system
    /// under test).
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// Source ports per sending thread (they spread over SO_REUSEPORT sockets).
    #[arg(long, default_value_t = search::SOURCES)]
    sources: usize,
    /// Time budget of the whole run in seconds [default: 150 quick, 600 full].
    #[arg(long)]
    budget: Option<f64>,
    /// Memory mode: create --memory-series series in the bridge, report RSS, and time three
    /// full scrapes while ingestion goes on.
    #[arg(long)]
    memory: bool,
    /// Series created in memory mode.
    #[arg(long, default_value = "1M", value_parser = count)]
    memory_series: u64,
    /// Rate at which memory mode creates the series (20 lines per datagram).
    #[arg(long, default_value = "200k", value_parser = count)]
    memory_rate: u64,
    /// Rate of the ingestion kept up during memory mode's scrapes.
    #[arg(long, default_value = "50k", value_parser = count)]
    memory_background_rate: u64,
}

fn count(s: &str) -> Result<u64, String> {
    parse_count(s).ok_or_else(|| format!("bad number {s:?}"))
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    // The baseline runs as this same binary, so it is always as fresh as the harness.
    let mut argv = std::env::args_os();
    if argv.nth(1).is_some_and(|a| a == "__drain") {
        let args = DrainArgs::parse_from(
            std::iter::once(std::ffi::OsString::from("drain")).chain(std::env::args_os().skip(2)),
        );
        let summary = drain::run(&args, None)?;
        println!("{}", serde_json::to_string(&summary)?);
        return Ok(());
    }

    let a = Args::parse();
    let bridge = a
        .bridge_bin
        .clone()
        .unwrap_or_else(|| workspace_root().join("target/release/statsd-bridge"));
    let harness = std::env::current_exe().context("find the harness binary")?;
    let bins = Binaries::find(harness, bridge);
    if let Ok(meta) = std::fs::metadata(&bins.bridge)
        && let Ok(modified) = meta.modified()
        && let Ok(age) = modified.elapsed()
    {
        eprintln!(
            "statsd-bridge binary {} built {:.0} min ago",
            bins.bridge.display(),
            age.as_secs_f64() / 60.0
        );
    }

    if a.memory {
        let cfg = MemoryConfig {
            series: a.memory_series.max(1),
            create_rate: a.memory_rate.max(1) as f64,
            background_rate: a.memory_background_rate.max(1) as f64,
            scrapes: 3,
        };
        let res = search::memory_mode(&bins, &cfg)?;
        let report = res.report(cfg.series);
        print!("{report}");
        if let Some(out) = &a.out {
            std::fs::write(out, &report).with_context(|| format!("write {}", out.display()))?;
        }
        return Ok(());
    }

    let mut cfg = if a.quick {
        SearchConfig::quick(a.mix)
    } else {
        SearchConfig::full(a.mix)
    };
    if let Some(s) = a.step_secs {
        cfg.step = Duration::from_secs_f64(s.clamp(0.2, 30.0));
    }
    cfg.start_rate = a.start_rate.max(1000) as f64;
    cfg.senders = a.senders.clamp(1, 16);
    cfg.sources = a.sources.clamp(1, 64);
    let budget = Duration::from_secs_f64(
        a.budget
            .unwrap_or(if a.quick { 150.0 } else { 600.0 })
            .clamp(10.0, 3600.0),
    );
    let shapes = a.shapes.clone().unwrap_or_else(|| Shape::DEFAULT.to_vec());
    let systems = a
        .systems
        .clone()
        .unwrap_or_else(|| SystemKind::ALL.to_vec());
    if systems.contains(&SystemKind::Collectd) && bins.collectd.is_none() {
        eprintln!("collectd is not installed; to measure it: {COLLECTD_INSTALL}");
    }
    let started = Instant::now();
    let results = search::run_all(&systems, &shapes, &bins, &cfg, budget);
    let mut report = search::header(&bins, &cfg, a.quick);
    report.push('\n');
    report.push_str(&search::table(&results));
    let _ = std::fmt::Write::write_fmt(
        &mut report,
        format_args!(
            "\nTotal run time {:.0} s.\n",
            started.elapsed().as_secs_f64()
        ),
    );
    print!("{report}");
    if let Some(out) = &a.out {
        std::fs::write(out, &report).with_context(|| format!("write {}", out.display()))?;
    }
    Ok(())
}
