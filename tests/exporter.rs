//! A small in-process exposition server: a `/metrics` page whose values the test controls.
//!
//! Gauges keep the value the test gives them ([`Exporter::set_gauge`] changes it). Counters
//! grow by a fixed amount per second of wall time since their origin (the exporter's start,
//! or earlier with [`Exporter::start_with_history`]), and each counter sample carries its own
//! timestamp (the millisecond its value was computed for), so the series Prometheus stores is
//! exactly linear in time: no scrape jitter gets into the values the tests compare.
//!
//! A `rate(x[2m])` over a series younger than two minutes still ramps up (Prometheus
//! extrapolates over the range), so [`Exporter::counter_history`] writes the counters' past
//! as OpenMetrics for `promtool tsdb create-blocks-from openmetrics`: with that history
//! backfilled, `rate()` is the nominal rate from the first scrape on.
//!
//! The server is a `std` [`TcpListener`] on an ephemeral loopback port with one thread per
//! connection; it answers `GET /metrics` in the text format 0.0.4 and closes the connection.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// How a series' value comes about.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// A gauge with a fixed value (`NaN` and infinities allowed).
    Gauge(f64),
    /// A counter at `per_second × seconds since its origin`, stamped with the millisecond it
    /// was computed for.
    Counter {
        /// Growth per second of wall time.
        per_second: f64,
    },
}

/// One series on the page.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedSeries {
    /// The metric name.
    pub name: String,
    /// Labels by name.
    pub labels: BTreeMap<String, String>,
    /// Gauge or counter.
    pub kind: Kind,
}

/// A gauge `name{labels} value`.
pub fn gauge(name: &str, labels: &[(&str, &str)], value: f64) -> ExportedSeries {
    ExportedSeries {
        name: name.to_owned(),
        labels: label_map(labels),
        kind: Kind::Gauge(value),
    }
}

/// A counter `name{labels}` growing by `per_second` every second.
pub fn counter(name: &str, labels: &[(&str, &str)], per_second: f64) -> ExportedSeries {
    ExportedSeries {
        name: name.to_owned(),
        labels: label_map(labels),
        kind: Kind::Counter { per_second },
    }
}

fn label_map(labels: &[(&str, &str)]) -> BTreeMap<String, String> {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

struct State {
    series: Mutex<Vec<ExportedSeries>>,
    /// Where counters are 0, in Unix milliseconds.
    origin_ms: u128,
    stop: AtomicBool,
    scrapes: AtomicU64,
}

impl State {
    fn lock_series(&self) -> MutexGuard<'_, Vec<ExportedSeries>> {
        self.series.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running exposition server; stopped (and its thread joined) when dropped.
pub struct Exporter {
    addr: SocketAddr,
    state: Arc<State>,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    /// Starts serving `series` on `127.0.0.1:<ephemeral>`; counters start at 0 now.
    ///
    /// # Panics
    /// When the listener can't be bound.
    pub fn start(series: Vec<ExportedSeries>) -> Exporter {
        Self::start_with_history(series, Duration::ZERO)
    }

    /// Starts serving `series` on `127.0.0.1:<ephemeral>` with counters that started at 0
    /// `history` ago (see [`Exporter::counter_history`]).
    ///
    /// # Panics
    /// When the listener can't be bound.
    pub fn start_with_history(series: Vec<ExportedSeries>, history: Duration) -> Exporter {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the exporter");
        let addr = listener.local_addr().expect("the exporter's address");
        let state = Arc::new(State {
            series: Mutex::new(series),
            origin_ms: unix_ms(SystemTime::now()).saturating_sub(history.as_millis()),
            stop: AtomicBool::new(false),
            scrapes: AtomicU64::new(0),
        });
        let thread_state = Arc::clone(&state);
        let thread = thread::Builder::new()
            .name(format!("exporter-{}", addr.port()))
            .spawn(move || accept_loop(&listener, &thread_state))
            .expect("starting the exporter thread");
        Exporter {
            addr,
            state,
            thread: Some(thread),
        }
    }

    /// The address to scrape (`/metrics`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many `/metrics` pages were served so far.
    pub fn scrapes(&self) -> u64 {
        self.state.scrapes.load(Ordering::SeqCst)
    }

    /// Sets the gauge `name{labels}` to `value`, adding it if the page doesn't have it.
    pub fn set_gauge(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        let wanted = gauge(name, labels, value);
        let mut series = self.state.lock_series();
        match series
            .iter_mut()
            .find(|s| s.name == wanted.name && s.labels == wanted.labels)
        {
            Some(existing) => existing.kind = Kind::Gauge(value),
            None => series.push(wanted),
        }
    }

    /// The page as it would be served now.
    pub fn page(&self) -> String {
        render_page(&self.state, SystemTime::now())
    }

    /// The counters' past in OpenMetrics (for `promtool tsdb create-blocks-from openmetrics`):
    /// one sample a second from their origin until before `until`, with the values the page
    /// would have shown then, and `extra_labels` added (the `job` and `instance` labels
    /// Prometheus attaches when it scrapes, so the history continues the scraped series).
    pub fn counter_history(&self, extra_labels: &[(&str, &str)], until: SystemTime) -> String {
        let until_ms = unix_ms(until);
        let origin_ms = self.state.origin_ms;
        let mut out = String::new();
        for s in self.state.lock_series().iter() {
            let Kind::Counter { per_second } = s.kind else {
                continue;
            };
            let mut labels = s.labels.clone();
            for (k, v) in extra_labels {
                labels.insert((*k).to_owned(), (*v).to_owned());
            }
            let series = series_text(&s.name, &labels);
            let mut ts_ms = origin_ms + 1000;
            while ts_ms < until_ms {
                let value = counter_value(per_second, origin_ms, ts_ms);
                let _ = writeln!(
                    out,
                    "{series} {} {}.{:03}",
                    format_value(value),
                    ts_ms / 1000,
                    ts_ms % 1000
                );
                ts_ms += 1000;
            }
        }
        out.push_str("# EOF\n");
        out
    }
}

fn unix_ms(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

/// A counter's value at `ts_ms`: an exact function of the timestamp written beside it.
fn counter_value(per_second: f64, origin_ms: u128, ts_ms: u128) -> f64 {
    per_second * (ts_ms.saturating_sub(origin_ms) as f64) / 1000.0
}

/// `name{k="v",…}` (just `name` without labels), values escaped.
fn series_text(name: &str, labels: &BTreeMap<String, String>) -> String {
    let mut out = name.to_owned();
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape(v));
        }
        out.push('}');
    }
    out
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, state: &Arc<State>) {
    for stream in listener.incoming() {
        if state.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else {
            // A failed accept (e.g. a reset before accept) is the client's problem.
            continue;
        };
        let state = Arc::clone(state);
        let _ = thread::Builder::new()
            .name("exporter-conn".to_owned())
            .spawn(move || {
                let _ = serve(stream, &state);
            });
    }
}

fn serve(mut stream: TcpStream, state: &State) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).context("reading the request")?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        anyhow::ensure!(head.len() <= 64 * 1024, "request head too large");
    }
    let text = String::from_utf8_lossy(&head);
    let request_line = text.lines().next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default();
    let (status, content_type, body) = if method == "GET" && path == "/metrics" {
        state.scrapes.fetch_add(1, Ordering::SeqCst);
        (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render_page(state, SystemTime::now()),
        )
    } else {
        (
            "404 Not Found",
            "text/plain; charset=utf-8",
            format!("no such page: {method} {target}\n"),
        )
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: \
         close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(response.as_bytes())
        .context("writing the response")?;
    let _ = stream.flush();
    Ok(())
}

/// Renders the page at `now`: one `# TYPE` line per family, then its samples.
fn render_page(state: &State, now: SystemTime) -> String {
    let series = state.lock_series().clone();
    let now_ms = unix_ms(now);
    let mut families: BTreeMap<&str, Vec<&ExportedSeries>> = BTreeMap::new();
    for s in &series {
        families.entry(s.name.as_str()).or_default().push(s);
    }
    let mut out = String::new();
    for (name, members) in families {
        let kind = match members.first().map(|s| s.kind) {
            Some(Kind::Counter { .. }) => "counter",
            _ => "gauge",
        };
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for s in members {
            out.push_str(&series_text(name, &s.labels));
            match s.kind {
                Kind::Gauge(v) => {
                    let _ = writeln!(out, " {}", format_value(v));
                }
                Kind::Counter { per_second } => {
                    let value = counter_value(per_second, state.origin_ms, now_ms);
                    let _ = writeln!(out, " {} {now_ms}", format_value(value));
                }
            }
        }
    }
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample value as the text format writes it (`NaN`, `+Inf`, `-Inf`, else Rust's shortest
/// round-trip form).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exposition;
    use crate::http;

    #[test]
    fn serves_gauges_and_stamped_counters() {
        let exporter = Exporter::start(vec![
            gauge("g", &[("b", "2"), ("a", "x\"y")], 24.233138021),
            gauge("g", &[("a", "z")], f64::NAN),
            counter("c_total", &[("pod", "web-0")], 2.0),
        ]);
        exporter.set_gauge("g", &[("a", "z")], 2000.0);
        exporter.set_gauge("h", &[], 0.5);
        let response = http::get(exporter.addr(), "/metrics").unwrap();
        assert_eq!(response.status, 200);
        let text = response.text().unwrap();
        assert!(text.contains("# TYPE c_total counter\n"), "{text}");
        assert!(text.contains("# TYPE g gauge\n"), "{text}");
        // The stamped counter line has a third field; the strict reader takes name, labels
        // and value, so check it by hand.
        let counter_line = text.lines().find(|l| l.starts_with("c_total")).unwrap();
        assert_eq!(counter_line.split(' ').count(), 3, "{counter_line}");
        let gauges: String = text
            .lines()
            .filter(|l| !l.starts_with("c_total"))
            .map(|l| format!("{l}\n"))
            .collect();
        let map = exposition::series_map(&gauges).unwrap();
        assert_eq!(map[r#"g{a="x\"y",b="2"}"#], 24.233138021);
        assert_eq!(map[r#"g{a="z"}"#], 2000.0);
        assert_eq!(map["h{}"], 0.5);
        assert_eq!(exporter.scrapes(), 1);
        assert_eq!(http::get(exporter.addr(), "/other").unwrap().status, 404);
    }

    #[test]
    fn history_continues_the_counters_up_to_now() {
        let exporter = Exporter::start_with_history(
            vec![
                counter("c_total", &[("pod", "web-0")], 2.0),
                gauge("g", &[], 1.0),
            ],
            Duration::from_secs(10),
        );
        let history = exporter.counter_history(&[("job", "j")], SystemTime::now());
        let lines: Vec<&str> = history.lines().collect();
        assert_eq!(lines.last(), Some(&"# EOF"), "{history}");
        assert!((9..=10).contains(&(lines.len() - 1)), "{history}");
        let origin_s = exporter.state.origin_ms as f64 / 1000.0;
        for (i, line) in lines[..lines.len() - 1].iter().enumerate() {
            let parts: Vec<&str> = line.split(' ').collect();
            assert_eq!(parts[0], r#"c_total{job="j",pod="web-0"}"#, "{line}");
            let value: f64 = parts[1].parse().unwrap();
            let ts: f64 = parts[2].parse().unwrap();
            assert!((value - 2.0 * (i + 1) as f64).abs() < 1e-9, "{line}");
            assert!((ts - origin_s - (i + 1) as f64).abs() < 1e-3, "{line}");
        }
    }

    #[test]
    fn formats_special_values() {
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(2000.0), "2000");
        assert_eq!(format_value(0.5), "0.5");
    }
}
