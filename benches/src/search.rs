//! The lossless-rate search of `load_harness` and its Markdown table, and the memory mode.
//!
//! For one system and one traffic shape: start the system fresh, send every series once
//! (warm-up, not measured), then bursts at a target rate: double from the start rate
//! (quadruple with `--quick`) until a burst loses at least the threshold (0.1%), then
//! bisect between the last lossless and the first lossy rate. Loss of a burst = lines sent − increase of the system's accepted
//! count, read before the burst and after the count has stopped rising (bounded wait). A
//! rate the sender itself can't reach (it achieves < 95% of the target) ends the search:
//! the system kept up with everything one sending thread produced.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::loadgen::{self, LoadSpec, LoadSummary};
use crate::procfs;
use crate::sut::{Binaries, BridgeExtra, Running, SystemKind};
use crate::traffic::{Mix, Traffic};

/// Loss at or above this fraction fails a burst.
pub const LOSS_THRESHOLD: f64 = 0.001;
/// A burst whose sender achieved less than this fraction of the target is sender-limited.
const SENDER_LIMITED: f64 = 0.95;
/// Longest wait for a count to settle (after a burst of the full search, the warm-up and
/// memory mode's steps).
const MAX_SETTLE_WAIT: Duration = Duration::from_secs(12);
/// Wait after a burst before the CPU figures are read.
const CPU_TAIL: Duration = Duration::from_millis(200);
/// Source ports per sending thread: enough to spread over a few `SO_REUSEPORT` sockets.
pub const SOURCES: usize = 8;
/// Datagrams per `sendmmsg`.
const BATCH: usize = 64;

/// A traffic shape: datagram packing and number of distinct series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Lines per datagram.
    pub lines_per_packet: usize,
    /// Distinct series.
    pub series: u64,
}

impl Shape {
    /// The four default shapes: 1 and 20 lines per datagram, 1,000 and 100,000 series.
    pub const DEFAULT: [Shape; 4] = [
        Shape {
            lines_per_packet: 1,
            series: 1_000,
        },
        Shape {
            lines_per_packet: 20,
            series: 1_000,
        },
        Shape {
            lines_per_packet: 1,
            series: 100_000,
        },
        Shape {
            lines_per_packet: 20,
            series: 100_000,
        },
    ];

    /// `1x1k`: lines per datagram `x` series (`k` and `M` suffixes allowed).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (lpp, series) = s
            .split_once('x')
            .ok_or_else(|| format!("shape {s:?}: want LINESxSERIES, e.g. 20x100k"))?;
        let lines_per_packet: usize = lpp
            .parse()
            .map_err(|_| format!("shape {s:?}: bad lines per packet"))?;
        let series = parse_count(series).ok_or_else(|| format!("shape {s:?}: bad series"))?;
        if !(1..=1000).contains(&lines_per_packet) || series == 0 {
            return Err(format!("shape {s:?}: out of range"));
        }
        Ok(Self {
            lines_per_packet,
            series,
        })
    }

    /// `1 line/pkt, 1k series`.
    pub fn label(&self) -> String {
        format!(
            "{} line{}/pkt, {} series",
            self.lines_per_packet,
            if self.lines_per_packet == 1 { "" } else { "s" },
            short_count(self.series)
        )
    }
}

/// `1000`, `1k`, `100k`, `1M`, `1.5M`.
pub fn parse_count(s: &str) -> Option<u64> {
    let (num, mult) = match s.chars().last()? {
        'k' | 'K' => (s.get(..s.len() - 1)?, 1e3),
        'm' | 'M' => (s.get(..s.len() - 1)?, 1e6),
        _ => (s, 1.0),
    };
    let v: f64 = num.parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| (v * mult).round() as u64)
}

/// `1k`, `100k`, `1M`, or the number.
pub fn short_count(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// How hard and how long to search.
#[derive(Debug, Clone)]
pub struct SearchConfig {
    /// First target rate, lines per second.
    pub start_rate: f64,
    /// Length of one burst.
    pub step: Duration,
    /// Factor between the rates of the first phase (2: doubling).
    pub growth: f64,
    /// Steps up at most (doublings with a growth of 2).
    pub max_doublings: u32,
    /// Halvings at most when the start rate already loses.
    pub max_halvings: u32,
    /// Bisection steps after the bracket is found.
    pub bisect_steps: u32,
    /// The StatsD types sent.
    pub mix: Mix,
    /// Sending threads.
    pub senders: usize,
    /// Source ports per sending thread.
    pub sources: usize,
    /// Longest wait for the count to settle after a burst.
    pub max_settle: Duration,
}

impl SearchConfig {
    /// About 2 minutes for drain, bridge and collectd over the four shapes: rates grow by 4
    /// (100k, 400k, 1.6M, 6.4M) before three bisection steps.
    pub fn quick(mix: Mix) -> Self {
        Self {
            start_rate: 100_000.0,
            step: Duration::from_millis(1200),
            growth: 4.0,
            max_doublings: 4,
            max_halvings: 3,
            bisect_steps: 3,
            mix,
            senders: 1,
            sources: SOURCES,
            max_settle: Duration::from_secs(6),
        }
    }

    /// About 6 to 10 minutes for drain, bridge and collectd over the four shapes.
    pub fn full(mix: Mix) -> Self {
        Self {
            start_rate: 100_000.0,
            step: Duration::from_millis(2500),
            growth: 2.0,
            max_doublings: 7,
            max_halvings: 4,
            bisect_steps: 4,
            mix,
            senders: 1,
            sources: SOURCES,
            max_settle: MAX_SETTLE_WAIT,
        }
    }
}

/// One burst.
#[derive(Debug, Clone, Default)]
pub struct StepResult {
    /// Target, lines per second.
    pub target: f64,
    /// What the sender achieved, lines per second.
    pub achieved: f64,
    /// Lines sent.
    pub sent: u64,
    /// Increase of the accepted count.
    pub counted: u64,
    /// `(sent - counted) / sent`, at least 0.
    pub loss: f64,
    /// Increase of the kernel's drop counter of the receiving socket.
    pub kernel_drops: Option<u64>,
    /// CPU seconds the system used during the burst and 200 ms after it.
    pub cpu_s: Option<f64>,
    /// Send calls that failed.
    pub send_errors: u64,
    /// CPU seconds other processes of the machine used meanwhile (neither the system nor
    /// the harness): a busy machine makes the numbers unreliable.
    pub other_cpu_s: Option<f64>,
    /// Wall seconds of the burst and 200 ms after it: the window of the CPU figures.
    pub window_s: f64,
    /// The count was still rising when the settle wait ran out: the system accepts lines
    /// later than it reads them (a queue behind the socket), or its page lags.
    pub still_rising: bool,
}

impl StepResult {
    fn passed(&self) -> bool {
        self.sent > 0 && self.loss < LOSS_THRESHOLD
    }
    fn sender_limited(&self) -> bool {
        self.achieved < SENDER_LIMITED * self.target
    }
}

/// The outcome of one system on one shape.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// The system.
    pub system: SystemKind,
    /// The shape.
    pub shape: Shape,
    /// The traffic label (`dogstatsd/counter`, `plain/counter`).
    pub traffic: String,
    /// Why it didn't run (not installed, failed to start, ...).
    pub skipped: Option<String>,
    /// The highest lossless burst.
    pub best: Option<StepResult>,
    /// The lowest lossy burst.
    pub first_fail: Option<StepResult>,
    /// Every burst, in order.
    pub steps: Vec<StepResult>,
    /// The search stopped because the sender couldn't go faster.
    pub sender_limited: bool,
    /// The search stopped on its time budget.
    pub time_capped: bool,
    /// VmRSS and VmHWM after the search, bytes.
    pub rss: Option<(u64, u64)>,
    /// CPU seconds over the whole run (warm-up included).
    pub cpu_total_s: Option<f64>,
    /// Time and size of one full metrics page read after the search.
    pub scrape: Option<(Duration, usize)>,
    /// Kernel drops over the whole run (warm-up included).
    pub kernel_drops_total: Option<u64>,
    /// The system's SO_RCVBUF or other remarks.
    pub notes: Vec<String>,
}

impl RunResult {
    /// No burst lost lines (sender-limited, out of doublings or of time): the best rate is a
    /// lower bound.
    pub fn open_ended(&self) -> bool {
        self.best.is_some() && self.first_fail.is_none()
    }

    fn skipped(system: SystemKind, shape: Shape, traffic: String, why: String) -> Self {
        Self {
            system,
            shape,
            traffic,
            skipped: Some(why),
            best: None,
            first_fail: None,
            steps: Vec::new(),
            sender_limited: false,
            time_capped: false,
            rss: None,
            cpu_total_s: None,
            scrape: None,
            kernel_drops_total: None,
            notes: Vec::new(),
        }
    }
}

/// The traffic a system gets for a shape: DogStatsD with tags, or plain StatsD for collectd
/// (counters only there: its page is counted by summing counters).
pub fn traffic_for(system: SystemKind, shape: Shape, mix: Mix) -> Traffic {
    Traffic {
        series: shape.series,
        mix: if system.reads_tags() {
            mix
        } else {
            Mix::Counter
        },
        plain: !system.reads_tags(),
    }
}

/// Sends one burst from `senders` threads of this process and returns what was sent.
pub fn send(
    spec: LoadSpec,
    senders: usize,
    stop: Option<Arc<AtomicBool>>,
) -> anyhow::Result<LoadSummary> {
    let handle = std::thread::Builder::new()
        .name("loadgen".into())
        .spawn(move || loadgen::run_parallel(&spec, senders, stop.as_deref()))?;
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("the load generator panicked"))?
}

/// Waits until the accepted count of `sut` reaches `before + sent` or stops rising for the
/// system's settle time (at most [`MAX_SETTLE_WAIT`]), and returns it.
fn settled_count(sut: &Running, before: u64, sent: u64) -> anyhow::Result<u64> {
    Ok(settle(sut, before, sent, MAX_SETTLE_WAIT)?.0)
}

/// [`settled_count`], and whether the count was still rising when the wait ran out.
fn settle(
    sut: &Running,
    before: u64,
    sent: u64,
    max_wait: Duration,
) -> anyhow::Result<(u64, bool)> {
    let start = Instant::now();
    let mut last = sut.accepted()?;
    let mut changed = Instant::now();
    loop {
        if last.saturating_sub(before) >= sent || changed.elapsed() >= sut.kind.settle() {
            return Ok((last, false));
        }
        if start.elapsed() >= max_wait {
            return Ok((last, true));
        }
        std::thread::sleep(sut.kind.poll());
        let now = sut.accepted()?;
        if now != last {
            last = now;
            changed = Instant::now();
        }
    }
}

/// The search context of one run.
struct Runner<'a> {
    sut: &'a mut Running,
    traffic: Traffic,
    shape: Shape,
    cfg: &'a SearchConfig,
    next_index: u64,
    label: String,
}

impl Runner<'_> {
    /// One burst at `rate`.
    fn step(&mut self, rate: f64) -> anyhow::Result<StepResult> {
        if !self.sut.alive() {
            bail!("{} died:\n{}", self.sut.kind, self.sut.log_tail());
        }
        let pid = self.sut.pid();
        let port = self.sut.udp.port();
        let before = self.sut.accepted()?;
        let drops0 = procfs::udp_drops(port);
        let cpu0 = procfs::cpu_seconds(pid);
        let me = std::process::id();
        let other0 = procfs::other_processes_cpu(&[pid, me]);
        let t0 = Instant::now();
        let sent = send(self.spec(rate, self.cfg.step, None), self.cfg.senders, None)?;
        self.next_index = sent.next_index;
        // CPU is read before the settle wait, whose scrapes would add to it: a system that
        // kept up has emptied its socket by then.
        std::thread::sleep(CPU_TAIL);
        let cpu_s = procfs::cpu_seconds(pid).zip(cpu0).map(|(a, b)| a - b);
        let other_cpu_s = Some(procfs::cpu_between(
            &other0,
            &procfs::other_processes_cpu(&[pid, me]),
        ));
        let window_s = t0.elapsed().as_secs_f64();
        let (after, still_rising) = settle(self.sut, before, sent.lines_sent, self.cfg.max_settle)?;
        let counted = after.saturating_sub(before);
        let r = StepResult {
            target: rate,
            achieved: sent.achieved_rate,
            sent: sent.lines_sent,
            counted,
            loss: if sent.lines_sent > 0 {
                sent.lines_sent.saturating_sub(counted) as f64 / sent.lines_sent as f64
            } else {
                1.0
            },
            kernel_drops: procfs::udp_drops(port)
                .zip(drops0)
                .map(|(a, b)| a.saturating_sub(b)),
            cpu_s,
            send_errors: sent.send_errors,
            other_cpu_s,
            window_s,
            still_rising,
        };
        eprintln!(
            "  [{}] target {:>9.0}/s sent {:>9.0}/s: {} sent, {} counted, loss {:.3}%, kernel drops {}, other load {:.2} cores{}",
            self.label,
            r.target,
            r.achieved,
            r.sent,
            r.counted,
            r.loss * 100.0,
            r.kernel_drops.map_or("?".into(), |d| if d > 0 {
                format!("{d} (≤ {} lines)", d * self.shape.lines_per_packet as u64)
            } else {
                d.to_string()
            }),
            r.other_cpu_s.unwrap_or(0.0) / r.window_s.max(0.001),
            if r.send_errors > 0 {
                format!(", {} send errors", r.send_errors)
            } else {
                String::new()
            } + if r.still_rising {
                ", count still rising"
            } else {
                ""
            }
        );
        Ok(r)
    }

    fn spec(&self, rate: f64, duration: Duration, max_lines: Option<u64>) -> LoadSpec {
        LoadSpec {
            target: self.sut.udp,
            rate,
            duration,
            lines_per_packet: self.shape.lines_per_packet,
            traffic: self.traffic,
            batch: BATCH,
            start_index: self.next_index,
            max_lines,
            sources: self.cfg.sources,
        }
    }

    /// Sends every series once at the start rate and waits for the count to settle; true
    /// when it was still rising at the end of the wait.
    fn warm_up(&mut self) -> anyhow::Result<bool> {
        let lines = self.shape.series;
        let secs = (lines as f64 / self.cfg.start_rate).clamp(0.05, 30.0) + 1.0;
        let before = self.sut.accepted()?;
        let spec = self.spec(
            self.cfg.start_rate,
            Duration::from_secs_f64(secs),
            Some(lines),
        );
        let sent = send(spec, 1, None)?;
        self.next_index = sent.next_index;
        let (after, rising) = settle(self.sut, before, sent.lines_sent, self.cfg.max_settle)?;
        eprintln!(
            "  [{}] warm-up: {} series sent once, {} counted{}",
            self.label,
            sent.lines_sent,
            after.saturating_sub(before),
            if rising { ", count still rising" } else { "" }
        );
        Ok(rising)
    }
}

/// Runs the search for `system` on `shape` within `budget`.
pub fn run_one(
    system: SystemKind,
    shape: Shape,
    bins: &Binaries,
    cfg: &SearchConfig,
    budget: Duration,
) -> RunResult {
    let traffic = traffic_for(system, shape, cfg.mix);
    let label = format!("{} {}", system, shape.label());
    if let Some(why) = bins.missing(system) {
        return RunResult::skipped(system, shape, traffic.label(), why);
    }
    if system == SystemKind::Collectd && cfg.mix != Mix::Counter {
        // Counted by summing counters: only the counter mix is measured there.
        eprintln!("  [{label}] collectd gets plain counters only");
    }
    let mut sut = match Running::start(system, bins, &BridgeExtra::default()) {
        Ok(s) => s,
        Err(e) => {
            return RunResult::skipped(system, shape, traffic.label(), format!("failed: {e:#}"));
        }
    };
    let mut res = RunResult::skipped(system, shape, traffic.label(), String::new());
    res.skipped = None;
    if let Err(e) = search(&mut sut, shape, traffic, cfg, budget, &label, &mut res) {
        res.notes.push(format!("error: {e:#}"));
        eprintln!("  [{label}] error: {e:#}");
    }
    res
}

fn search(
    sut: &mut Running,
    shape: Shape,
    traffic: Traffic,
    cfg: &SearchConfig,
    budget: Duration,
    label: &str,
    res: &mut RunResult,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let pid = sut.pid();
    let port = sut.udp.port();
    let cpu0 = procfs::cpu_seconds(pid);
    let drops0 = procfs::udp_drops(port);
    let mut r = Runner {
        sut,
        traffic,
        shape,
        cfg,
        next_index: 0,
        label: label.to_owned(),
    };
    let warm_rising = r.warm_up()?;
    // Each step costs the burst plus the settle wait.
    let step_cost = cfg.step + r.sut.kind.settle() + Duration::from_millis(200);
    let out_of_time = |res: &mut RunResult| {
        let over = started.elapsed() + step_cost > budget;
        if over {
            res.time_capped = true;
        }
        over
    };

    let mut lo: Option<StepResult> = None;
    let mut hi: Option<StepResult> = None;
    // A count still rising when the settle wait ran out means a backlog: later bursts would
    // be counted with its lines, so the search stops there.
    let mut backlog = warm_rising;
    let mut rate = cfg.start_rate;
    for _ in 0..cfg.max_doublings {
        if backlog || out_of_time(res) {
            break;
        }
        let s = r.step(rate)?;
        res.steps.push(s.clone());
        backlog = s.still_rising;
        if s.passed() {
            let limited = s.sender_limited();
            lo = Some(s);
            if limited {
                res.sender_limited = true;
                break;
            }
            rate *= cfg.growth.max(1.1);
        } else {
            hi = Some(s);
            break;
        }
    }
    if lo.is_none() {
        // The start rate already loses: halve until a burst is lossless.
        for _ in 0..cfg.max_halvings {
            if backlog || out_of_time(res) {
                break;
            }
            // Half the rate, or less when the burst showed the system took much less.
            let took = hi
                .as_ref()
                .map_or(rate, |h| h.achieved * (1.0 - h.loss) * 0.9);
            rate = (rate / 2.0).min(took).max(rate / 8.0);
            let s = r.step(rate)?;
            res.steps.push(s.clone());
            backlog = s.still_rising;
            if s.passed() {
                lo = Some(s);
                break;
            }
            hi = Some(s);
        }
    }
    if !res.sender_limited {
        for _ in 0..cfg.bisect_steps {
            let (Some(l), Some(h)) = (&lo, &hi) else {
                break;
            };
            if backlog || h.target / l.target < 1.04 || out_of_time(res) {
                break;
            }
            let mid = (l.target + h.target) / 2.0;
            let s = r.step(mid)?;
            res.steps.push(s.clone());
            backlog = s.still_rising;
            if s.passed() {
                let limited = s.sender_limited();
                lo = Some(s);
                if limited {
                    res.sender_limited = true;
                    break;
                }
            } else {
                hi = Some(s);
            }
        }
    }
    if backlog {
        res.notes.push(format!(
            "backlog: accepted count still rising {} s after {}; search stopped",
            cfg.max_settle.as_secs(),
            if warm_rising {
                "sending every series once"
            } else {
                "a burst"
            }
        ));
    }
    let other: f64 = res.steps.iter().filter_map(|s| s.other_cpu_s).sum();
    let window: f64 = res.steps.iter().map(|s| s.window_s).sum();
    if window > 0.0 && other / window > 0.15 {
        res.notes.push(format!(
            "other processes busy: {:.1} of the cores",
            other / window
        ));
    }
    res.best = lo;
    res.first_fail = hi;
    res.rss = procfs::rss_bytes(pid);
    res.cpu_total_s = procfs::cpu_seconds(pid).zip(cpu0).map(|(a, b)| a - b);
    res.kernel_drops_total = procfs::udp_drops(port)
        .zip(drops0)
        .map(|(a, b)| a.saturating_sub(b));
    if let Some(page) = r.sut.scrape()? {
        res.scrape = Some((page.elapsed, page.body.len()));
    }
    if !r.sut.alive() {
        res.notes.push("exited during the run".into());
    }
    Ok(())
}

/// Runs every system on every shape within `total_budget` and returns the results in
/// table order (shape by shape).
pub fn run_all(
    systems: &[SystemKind],
    shapes: &[Shape],
    bins: &Binaries,
    cfg: &SearchConfig,
    total_budget: Duration,
) -> Vec<RunResult> {
    let start = Instant::now();
    let runs: Vec<(Shape, SystemKind)> = shapes
        .iter()
        .flat_map(|&sh| systems.iter().map(move |&sy| (sh, sy)))
        .collect();
    let mut out = Vec::with_capacity(runs.len());
    for (i, &(shape, system)) in runs.iter().enumerate() {
        let left = total_budget.saturating_sub(start.elapsed());
        // The runs that can run share what is left, in proportion to what a burst costs
        // them (collectd's count settles slowly).
        let weight = |kind: SystemKind| (cfg.step + kind.settle()).as_secs_f64();
        let remaining: f64 = runs
            .iter()
            .skip(i)
            .filter(|(_, s)| bins.missing(*s).is_none())
            .map(|(_, s)| weight(*s))
            .sum();
        let share = if remaining > 0.0 {
            left.mul_f64((weight(system) / remaining).min(1.0))
        } else {
            left
        };
        // A share too small for a whole search gets what a whole search needs, as long as
        // the total lasts: most runs end well before their share.
        let whole = Duration::from_secs_f64(
            f64::from(cfg.max_doublings + cfg.bisect_steps) * (weight(system) + 0.5) + 3.0,
        );
        let budget = share.max(whole).min(left);
        eprintln!(
            "{} on {} (budget {:.0} s)",
            system,
            shape.label(),
            budget.as_secs_f64()
        );
        out.push(run_one(system, shape, bins, cfg, budget));
    }
    out
}

fn mb(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / (1 << 20) as f64)
}

fn rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else if r >= 1e4 {
        format!("{:.0}k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

/// The Markdown table of the results.
pub fn table(results: &[RunResult]) -> String {
    let mut t = String::new();
    t.push_str(
        "| shape | system | traffic | max lossless lines/s | loss there | first lossy step | vs drain | RSS MB (peak) | CPU s (µs/line) | /metrics scrape | kernel drops | notes |\n",
    );
    t.push_str("|---|---|---|--:|--:|---|--:|--:|--:|--:|--:|---|\n");
    for r in results {
        let baseline = results
            .iter()
            .find(|b| b.shape == r.shape && b.system == SystemKind::Drain)
            .and_then(|b| b.best.as_ref().map(|best| (best.achieved, b.open_ended())));
        if let Some(why) = &r.skipped {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | | | | | | | | |",
                r.shape.label(),
                r.system,
                r.traffic,
                why
            );
            continue;
        }
        let best = r.best.as_ref().map_or("none lossless".to_owned(), |b| {
            format!(
                "{}{}",
                if r.open_ended() { "≥ " } else { "" },
                rate(b.achieved)
            )
        });
        let loss_there = r
            .best
            .as_ref()
            .map_or(String::new(), |b| format!("{:.3}%", b.loss * 100.0));
        let first_fail = r.first_fail.as_ref().map_or("—".to_owned(), |f| {
            format!("{}: {:.2}% lost", rate(f.achieved), f.loss * 100.0)
        });
        let ratio = match (r.system, &r.best, baseline) {
            (SystemKind::Drain, Some(_), _) => "1.00".to_owned(),
            (_, Some(b), Some((base, base_open))) if base > 0.0 => {
                let x = b.achieved / base;
                match (r.open_ended(), base_open) {
                    (false, false) => format!("{x:.2}"),
                    (true, false) => format!("≥ {x:.2}"),
                    (false, true) => format!("≤ {x:.2}"),
                    (true, true) => "n/a (both ≥)".to_owned(),
                }
            }
            _ => String::new(),
        };
        let rss = r.rss.map_or(String::new(), |(rss, hwm)| {
            format!("{} ({})", mb(rss), mb(hwm))
        });
        let cpu_per_line = r.best.as_ref().and_then(|b| {
            b.cpu_s
                .filter(|_| b.counted > 0)
                .map(|c| c * 1e6 / b.counted as f64)
        });
        let cpu = match (r.cpu_total_s, cpu_per_line) {
            (Some(total), Some(per)) => format!("{total:.1} ({per:.2})"),
            (Some(total), None) => format!("{total:.1}"),
            _ => String::new(),
        };
        let scrape = r.scrape.map_or("—".to_owned(), |(d, bytes)| {
            format!("{:.1} ms ({} KB)", d.as_secs_f64() * 1e3, bytes / 1024)
        });
        let drops = r
            .kernel_drops_total
            .map_or(String::new(), |d| d.to_string());
        let mut notes = r.notes.clone();
        if r.sender_limited {
            notes.push("sender-limited".into());
        }
        if r.time_capped {
            notes.push("time cap".into());
        }
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.shape.label(),
            r.system,
            r.traffic,
            best,
            loss_there,
            first_fail,
            ratio,
            rss,
            cpu,
            scrape,
            drops,
            notes.join("; ").replace('|', "/").replace('\n', " ")
        );
    }
    t
}

/// Options of the memory mode.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// Distinct series to create.
    pub series: u64,
    /// Rate at which they are created, lines per second.
    pub create_rate: f64,
    /// Rate of the ingestion kept up during the scrapes.
    pub background_rate: f64,
    /// Full scrapes to time.
    pub scrapes: u32,
}

/// What the memory mode found.
#[derive(Debug, Clone)]
pub struct MemoryResult {
    /// Series the bridge reported (`statsd_bridge_series`).
    pub series: u64,
    /// Lines sent while creating them, and lines counted.
    pub create_sent: u64,
    /// Lines the bridge counted while they were created.
    pub create_counted: u64,
    /// VmRSS before any traffic and after the series exist, bytes.
    pub rss_before: u64,
    /// VmRSS after the series exist.
    pub rss_after: u64,
    /// VmRSS after the scrapes and peak VmHWM.
    pub rss_end: (u64, u64),
    /// Each scrape: time and bytes.
    pub scrapes: Vec<(Duration, usize)>,
    /// What the background sender achieved during the scrapes.
    pub background: Option<LoadSummary>,
    /// Lines the bridge counted during the scrapes.
    pub background_counted: u64,
}

impl MemoryResult {
    /// `1M series: RSS X MB, scrape Y s (bytes Z)` plus details.
    pub fn report(&self, wanted: u64) -> String {
        let mut s = String::new();
        let mean = if self.scrapes.is_empty() {
            0.0
        } else {
            self.scrapes
                .iter()
                .map(|(d, _)| d.as_secs_f64())
                .sum::<f64>()
                / self.scrapes.len() as f64
        };
        let bytes = self.scrapes.last().map_or(0, |&(_, b)| b);
        let _ = writeln!(
            s,
            "{} series: RSS {} MB, scrape {:.2} s (bytes {})",
            short_count(wanted),
            mb(self.rss_after),
            mean,
            bytes
        );
        let _ = writeln!(
            s,
            "  statsd_bridge_series {}; lines sent {} counted {}; RSS before traffic {} MB, after the scrapes {} MB (peak {} MB)",
            self.series,
            self.create_sent,
            self.create_counted,
            mb(self.rss_before),
            mb(self.rss_end.0),
            mb(self.rss_end.1)
        );
        let each: Vec<String> = self
            .scrapes
            .iter()
            .map(|(d, b)| format!("{:.2} s / {} MB", d.as_secs_f64(), mb(*b as u64)))
            .collect();
        let _ = writeln!(s, "  scrapes: {}", each.join(", "));
        if let Some(bg) = &self.background {
            let _ = writeln!(
                s,
                "  ingestion during the scrapes: {:.0} lines/s sent ({} lines), {} counted ({:.3}% lost)",
                bg.achieved_rate,
                bg.lines_sent,
                self.background_counted,
                if bg.lines_sent > 0 {
                    bg.lines_sent.saturating_sub(self.background_counted) as f64 * 100.0
                        / bg.lines_sent as f64
                } else {
                    0.0
                }
            );
        }
        s
    }
}

fn bridge_gauge(sut: &Running, name: &str) -> anyhow::Result<u64> {
    let page = sut.scrape()?.context("no metrics page")?;
    let text = String::from_utf8_lossy(&page.body);
    Ok(crate::http::sum_samples(&text, name, &[]).unwrap_or(0.0) as u64)
}

/// Memory mode: create `series` counter series with three tags, then time full scrapes
/// while ingestion goes on.
pub fn memory_mode(bins: &Binaries, cfg: &MemoryConfig) -> anyhow::Result<MemoryResult> {
    if let Some(why) = bins.missing(SystemKind::Bridge) {
        bail!("statsd-bridge: {why}");
    }
    // Room above the series wanted, so the default cap (1M) doesn't refuse the last ones.
    let extra = BridgeExtra {
        config_lines: format!("max_series = {}\n", cfg.series + cfg.series / 10 + 1000),
    };
    let mut sut = Running::start(SystemKind::Bridge, bins, &extra)?;
    let pid = sut.pid();
    let rss_before = procfs::rss_bytes(pid).map_or(0, |r| r.0);
    let traffic = Traffic {
        series: cfg.series,
        mix: Mix::Counter,
        plain: false,
    };
    let mut created_sent = 0;
    let mut created_counted = 0;
    let mut series = 0;
    let mut rate = cfg.create_rate;
    // Up to three passes over every series, each at half the rate of the one before, until
    // the bridge holds them all.
    for pass in 0..3 {
        let before = sut.accepted()?;
        let spec = LoadSpec {
            target: sut.udp,
            rate,
            duration: Duration::from_secs_f64((cfg.series as f64 / rate) * 1.5 + 5.0),
            lines_per_packet: 20,
            traffic,
            batch: BATCH,
            start_index: 0,
            max_lines: Some(cfg.series),
            sources: SOURCES,
        };
        let sent = send(spec, 1, None)?;
        let after = settled_count(&sut, before, sent.lines_sent)?;
        created_sent += sent.lines_sent;
        created_counted += after.saturating_sub(before);
        series = bridge_gauge(&sut, "statsd_bridge_series")?;
        eprintln!(
            "  memory pass {}: {} lines at {:.0}/s, {} counted, statsd_bridge_series {}",
            pass + 1,
            sent.lines_sent,
            sent.achieved_rate,
            after.saturating_sub(before),
            series
        );
        if series >= cfg.series || !sut.alive() {
            break;
        }
        rate /= 2.0;
    }
    let rss_after = procfs::rss_bytes(pid).map_or(0, |r| r.0);

    let stop = Arc::new(AtomicBool::new(false));
    let before_bg = sut.accepted()?;
    let spec = LoadSpec {
        target: sut.udp,
        rate: cfg.background_rate,
        // Bounded: the scrapes stop it much earlier.
        duration: Duration::from_secs(300),
        lines_per_packet: 20,
        traffic,
        batch: BATCH,
        start_index: 0,
        max_lines: None,
        sources: SOURCES,
    };
    let stop2 = Arc::clone(&stop);
    let bg = std::thread::Builder::new()
        .name("loadgen-bg".into())
        .spawn(move || loadgen::run(&spec, Some(&stop2)))?;
    std::thread::sleep(Duration::from_millis(500));
    let mut scrapes = Vec::new();
    let mut scrape_err = None;
    for _ in 0..cfg.scrapes {
        match sut.scrape() {
            Ok(Some(page)) => scrapes.push((page.elapsed, page.body.len())),
            Ok(None) => {}
            Err(e) => {
                scrape_err = Some(e);
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let background = bg
        .join()
        .map_err(|_| anyhow::anyhow!("the background sender panicked"))??;
    if let Some(e) = scrape_err {
        return Err(e.context("scrape during ingestion"));
    }
    let after_bg = settled_count(&sut, before_bg, background.lines_sent)?;
    let rss_end = procfs::rss_bytes(pid).unwrap_or((0, 0));
    Ok(MemoryResult {
        series,
        create_sent: created_sent,
        create_counted: created_counted,
        rss_before,
        rss_after,
        rss_end,
        scrapes,
        background: Some(background),
        background_counted: after_bg.saturating_sub(before_bg),
    })
}

/// A header for the table: the machine, the binaries and the settings.
pub fn header(bins: &Binaries, cfg: &SearchConfig, quick: bool) -> String {
    let mut h = String::new();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        h,
        "Load harness ({}): {} cores, net.core.rmem_max {} (SO_RCVBUF 8 MiB requested is capped to it), bursts of {:.1} s, loss threshold {}%, start {} lines/s.",
        if quick { "quick" } else { "full" },
        cores,
        procfs::rmem_max().map_or("?".into(), |v| v.to_string()),
        cfg.step.as_secs_f64(),
        LOSS_THRESHOLD * 100.0,
        cfg.start_rate
    );
    let _ = writeln!(
        h,
        "statsd-bridge: {}. The sender is {} thread{} of the harness on the same machine (sendmmsg, 64 datagrams a call, from {} source ports in turn).",
        bins.bridge.display(),
        cfg.senders,
        if cfg.senders == 1 { "" } else { "s" },
        cfg.sources
    );
    let _ = writeln!(
        h,
        "collectd reads no tags: it gets plain StatsD of the same shape (name `bench.requests.s<i>` instead of the `series:<i>` tag); the others get DogStatsD lines with 3 tags."
    );
    h
}

/// Parses `addr` as a loopback socket address.
pub fn loopback_addr(s: &str) -> anyhow::Result<SocketAddr> {
    let a: SocketAddr = s.parse().with_context(|| format!("bad address {s:?}"))?;
    if !a.ip().is_loopback() {
        bail!("{a} is not a loopback address");
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_shapes_and_counts() {
        assert_eq!(
            Shape::parse("20x100k").unwrap(),
            Shape {
                lines_per_packet: 20,
                series: 100_000
            }
        );
        assert_eq!(parse_count("1M"), Some(1_000_000));
        assert_eq!(parse_count("1500"), Some(1500));
        assert!(Shape::parse("x").is_err());
        assert_eq!(Shape::DEFAULT[3].label(), "20 lines/pkt, 100k series");
        assert_eq!(short_count(1_000_000), "1M");
    }

    #[test]
    fn collectd_gets_plain_counters() {
        let t = traffic_for(SystemKind::Collectd, Shape::DEFAULT[0], Mix::Mixed);
        assert!(t.plain);
        assert_eq!(t.mix, Mix::Counter);
        let t = traffic_for(SystemKind::Bridge, Shape::DEFAULT[0], Mix::Mixed);
        assert!(!t.plain);
    }
}
