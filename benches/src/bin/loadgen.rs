//! `loadgen`: sends DogStatsD (or plain StatsD) lines over UDP to a loopback target at a
//! target rate, with `sendmmsg`, and prints a JSON summary on stdout.
//!
//! ```text
//! loadgen --target 127.0.0.1:8125 --rate 200000 --duration 5 --lines-per-packet 20 \
//!         --series 1000 --mix counter
//! ```

use std::time::Duration;

use clap::Parser;
use pipeline_benches::loadgen::{self, LoadSpec};
use pipeline_benches::search::{loopback_addr, parse_count};
use pipeline_benches::traffic::{Mix, Traffic};

/// Paced StatsD/DogStatsD UDP load generator (loopback targets only).
#[derive(Debug, Parser)]
#[command(name = "loadgen")]
struct Args {
    /// Where to send: a loopback address.
    #[arg(long, value_parser = loopback_addr)]
    target: std::net::SocketAddr,
    /// Lines per second (`k` and `M` suffixes allowed).
    #[arg(long, default_value = "100k", value_parser = count)]
    rate: u64,
    /// Seconds to send (at most 3600).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Lines per datagram.
    #[arg(long, default_value_t = 1)]
    lines_per_packet: usize,
    /// Distinct series (`k` and `M` suffixes allowed).
    #[arg(long, default_value = "1000", value_parser = count)]
    series: u64,
    /// counter, or mixed (counters, gauges, timers, histograms, sets).
    #[arg(long, default_value_t = Mix::Counter)]
    mix: Mix,
    /// Plain StatsD without tags: the series number goes into the name.
    #[arg(long)]
    plain: bool,
    /// Datagrams per sendmmsg call.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Sending threads, each at its share of the rate.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Source ports per thread, used in turn (they spread over SO_REUSEPORT sockets).
    #[arg(long, default_value_t = 8)]
    sources: usize,
    /// Stop after this many lines.
    #[arg(long, value_parser = count)]
    max_lines: Option<u64>,
}

fn count(s: &str) -> Result<u64, String> {
    parse_count(s).ok_or_else(|| format!("bad number {s:?}"))
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let spec = LoadSpec {
        target: a.target,
        rate: a.rate.max(1) as f64,
        duration: Duration::from_secs_f64(a.duration.clamp(0.0, 3600.0)),
        lines_per_packet: a.lines_per_packet,
        traffic: Traffic {
            series: a.series.max(1),
            mix: a.mix,
            plain: a.plain,
        },
        batch: a.batch,
        start_index: 0,
        max_lines: a.max_lines,
        sources: a.sources,
    };
    let summary = loadgen::run_parallel(&spec, a.threads, None)?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
