//! The series population the adapter is measured on, rendered as exposition pages that a
//! real Prometheus scrapes: `metrics` gauges, each on every pod, pods spread over
//! `namespaces` and grouped into `apps` (the HPA's label selector), and a few queue depths
//! for external metrics. Pages are split into shards of at most [`SHARD_SERIES`] series, one
//! scrape job each, so no single scrape is huge.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::Context;

/// Most series on one page.
pub const SHARD_SERIES: usize = 100_000;
/// Queue-depth series (`bench_queue_depth{queue="q<i>"}`), on shard 0.
pub const QUEUES: usize = 20;
/// The custom metrics' series name prefix: `bench_load_m<i>`.
pub const METRIC_PREFIX: &str = "bench_load_m";

/// How many series of which shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Population {
    /// Pod series in all (rounded down to a multiple of `metrics × namespaces`).
    pub series: usize,
    /// Distinct metric names.
    pub metrics: usize,
    /// Namespaces `ns0…`.
    pub namespaces: usize,
    /// Apps per namespace: pod `i` belongs to `app<i % apps>`.
    pub apps: usize,
}

impl Population {
    /// `series` pod series over 20 metrics, 10 namespaces and 20 apps.
    pub fn new(series: usize) -> Population {
        Population {
            series,
            metrics: 20,
            namespaces: 10,
            apps: 20,
        }
    }

    /// Pods per namespace.
    pub fn pods_per_namespace(&self) -> usize {
        self.series / self.metrics.max(1) / self.namespaces.max(1)
    }

    /// Pod series actually generated.
    pub fn pod_series(&self) -> usize {
        self.pods_per_namespace() * self.metrics * self.namespaces
    }

    /// Every series scraped: pod series and the queues.
    pub fn total_series(&self) -> usize {
        self.pod_series() + QUEUES
    }

    /// Pages the series are split over.
    pub fn shards(&self) -> usize {
        self.pod_series().div_ceil(SHARD_SERIES).max(1)
    }

    /// The pod name of pod `i` in namespace `ns`.
    pub fn pod(&self, ns: usize, i: usize) -> String {
        format!("app{}-{ns}-{i}", i % self.apps.max(1))
    }

    /// The text page of shard `k`: series `k × SHARD_SERIES …` in (metric, namespace, pod)
    /// order, values fixed per pod.
    pub fn render_shard(&self, k: usize) -> String {
        let pods = self.pods_per_namespace();
        let per_metric = pods * self.namespaces;
        let first = k * SHARD_SERIES;
        let last = ((k + 1) * SHARD_SERIES).min(self.pod_series());
        let mut page = String::with_capacity((last.saturating_sub(first)) * 72 + 4096);
        let mut typed = usize::MAX;
        for s in first..last {
            let metric = s / per_metric.max(1);
            let ns = (s % per_metric.max(1)) / pods.max(1);
            let i = s % pods.max(1);
            if metric != typed {
                let _ = writeln!(page, "# TYPE {METRIC_PREFIX}{metric} gauge");
                typed = metric;
            }
            let _ = writeln!(
                page,
                "{METRIC_PREFIX}{metric}{{namespace=\"ns{ns}\",pod=\"{}\",app=\"app{}\"}} {}",
                self.pod(ns, i),
                i % self.apps.max(1),
                (i % 97) + 1
            );
        }
        if k == 0 {
            page.push_str("# TYPE bench_queue_depth gauge\n");
            for q in 0..QUEUES {
                let _ = writeln!(
                    page,
                    "bench_queue_depth{{namespace=\"ns0\",queue=\"q{q}\"}} {}",
                    q * 10
                );
            }
        }
        page
    }
}

/// Serves the shards at `/metrics/<k>` on a loopback port until the process ends.
pub struct PageServer {
    addr: SocketAddr,
}

impl PageServer {
    /// Renders every shard and starts serving them.
    pub fn start(population: Population) -> anyhow::Result<PageServer> {
        let pages: Arc<Vec<Vec<u8>>> = Arc::new(
            (0..population.shards())
                .map(|k| population.render_shard(k).into_bytes())
                .collect(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").context("bind the page server")?;
        let addr = listener.local_addr()?;
        thread::Builder::new()
            .name("pages".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let pages = Arc::clone(&pages);
                    let _ = thread::Builder::new()
                        .name("page".into())
                        .spawn(move || serve(stream, &pages));
                }
            })
            .context("start the page server")?;
        Ok(PageServer { addr })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Answers requests on one connection (keep-alive) until the peer closes it.
fn serve(stream: TcpStream, pages: &[Vec<u8>]) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(300)));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line.trim().is_empty() {
                break;
            }
        }
        let page = path
            .strip_prefix("/metrics/")
            .and_then(|k| k.parse::<usize>().ok())
            .and_then(|k| pages.get(k));
        let written = match page {
            Some(body) => write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .and_then(|()| out.write_all(body)),
            None => out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
        };
        if written.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_hold_every_series_once() {
        let p = Population::new(250_000);
        assert_eq!(p.pods_per_namespace(), 1250);
        assert_eq!(p.pod_series(), 250_000);
        assert_eq!(p.shards(), 3);
        let mut seen = std::collections::HashSet::new();
        let mut samples = 0;
        for k in 0..p.shards() {
            for line in p.render_shard(k).lines().filter(|l| !l.starts_with('#')) {
                samples += 1;
                let (series, _) = line.rsplit_once(' ').unwrap();
                assert!(seen.insert(series.to_owned()), "{series} twice");
            }
        }
        assert_eq!(samples, p.total_series());
        assert!(
            seen.contains("bench_load_m19{namespace=\"ns9\",pod=\"app9-9-1249\",app=\"app9\"}")
        );
        assert!(seen.contains("bench_queue_depth{namespace=\"ns0\",queue=\"q19\"}"));
    }
}
