//! Paced UDP load: DogStatsD (or plain StatsD) lines packed `lines_per_packet` to a datagram,
//! sent with `sendmmsg` in batches, at a target rate in lines per second.
//!
//! Pacing: the packets due by now are sent in batches of at most [`LoadSpec::batch`]; when
//! none is due the sender sleeps for a slice (at most [`PACE_SLICE`]), so traffic arrives in
//! bursts no longer than about one slice. A target above what one thread can send is simply
//! not reached: compare [`LoadSummary::achieved_rate`] with the target.
//!
//! Only loopback targets are accepted.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
use serde::Serialize;
use std::io::IoSlice;

use crate::traffic::Traffic;

/// The longest sleep between batches.
pub const PACE_SLICE: Duration = Duration::from_micros(200);

/// What to send, where, how fast and for how long.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Where to send (must be a loopback address).
    pub target: SocketAddr,
    /// Lines per second.
    pub rate: f64,
    /// How long to send at most.
    pub duration: Duration,
    /// Lines per datagram (1 to 1000).
    pub lines_per_packet: usize,
    /// The lines.
    pub traffic: Traffic,
    /// Datagrams per `sendmmsg` call (1 to 1024).
    pub batch: usize,
    /// Index of the first line: a later run can go on where an earlier one stopped.
    pub start_index: u64,
    /// Stop after this many lines (`None`: only the duration bounds the run).
    pub max_lines: Option<u64>,
    /// Sending sockets (source ports), used in turn one `sendmmsg` batch each: like many
    /// clients, they spread over a receiver's `SO_REUSEPORT` sockets, which the kernel picks
    /// by a hash of the source address.
    pub sources: usize,
}

/// What was sent.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadSummary {
    /// Lines in datagrams the kernel accepted.
    pub lines_sent: u64,
    /// Datagrams the kernel accepted.
    pub packets_sent: u64,
    /// Payload bytes the kernel accepted.
    pub bytes_sent: u64,
    /// Seconds from the first send to the end.
    pub elapsed_s: f64,
    /// The target, in lines per second.
    pub target_rate: f64,
    /// `lines_sent / elapsed_s`.
    pub achieved_rate: f64,
    /// `sendmmsg` calls that failed (or sent fewer datagrams than given).
    pub send_errors: u64,
    /// Lines in datagrams that were not sent because of those errors.
    pub lines_failed: u64,
    /// `sendmmsg` calls.
    pub send_calls: u64,
    /// Index of the line after the last one sent or tried: `start_index` of a next run.
    pub next_index: u64,
}

/// Sends according to `spec` until its duration, its `max_lines` or `stop` (checked between
/// batches), whichever comes first.
pub fn run(spec: &LoadSpec, stop: Option<&AtomicBool>) -> anyhow::Result<LoadSummary> {
    if !spec.target.ip().is_loopback() {
        bail!(
            "target {} is not a loopback address; the harness only sends to 127.0.0.0/8 or ::1",
            spec.target
        );
    }
    if !(spec.rate.is_finite() && spec.rate > 0.0) {
        bail!("rate must be a positive number of lines per second");
    }
    let lpp = spec.lines_per_packet.clamp(1, 1000);
    let batch = spec.batch.clamp(1, 1024);
    let bind: SocketAddr = if spec.target.is_ipv4() {
        "127.0.0.1:0".parse()?
    } else {
        "[::1]:0".parse()?
    };
    let sockets = (0..spec.sources.clamp(1, 64))
        .map(|_| {
            let socket = UdpSocket::bind(bind).context("bind a sending socket")?;
            socket
                .connect(spec.target)
                .with_context(|| format!("connect to {}", spec.target))?;
            Ok(socket)
        })
        .collect::<anyhow::Result<Vec<UdpSocket>>>()?;

    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(batch, None);
    let addrs: Vec<Option<SockaddrStorage>> = vec![None; batch];
    let mut buf: Vec<u8> = Vec::with_capacity(batch * lpp * 96);
    // (start, end, lines) of each datagram in `buf`.
    let mut packets: Vec<(usize, usize, u64)> = Vec::with_capacity(batch);

    let mut s = LoadSummary {
        target_rate: spec.rate,
        next_index: spec.start_index,
        ..LoadSummary::default()
    };
    let packet_rate = spec.rate / lpp as f64;
    let mut attempted_packets: u64 = 0;
    let mut attempted_lines: u64 = 0;
    let max_lines = spec.max_lines.unwrap_or(u64::MAX);
    let start = Instant::now();
    let deadline = start + spec.duration;
    loop {
        let now = Instant::now();
        if now >= deadline
            || attempted_lines >= max_lines
            || stop.is_some_and(|s| s.load(Ordering::Relaxed))
        {
            break;
        }
        let elapsed = now.duration_since(start).as_secs_f64();
        // The first datagram is due at once, then one every 1/packet_rate seconds.
        let due = (elapsed * packet_rate) as u64 + 1;
        let owed = due.saturating_sub(attempted_packets);
        if owed == 0 {
            let next_due = attempted_packets as f64 / packet_rate;
            let wait = Duration::from_secs_f64((next_due - elapsed).max(0.0)).min(PACE_SLICE);
            std::thread::sleep(wait.max(Duration::from_micros(20)));
            continue;
        }
        let n = owed.min(batch as u64) as usize;

        buf.clear();
        packets.clear();
        for _ in 0..n {
            let left = max_lines - attempted_lines;
            if left == 0 {
                break;
            }
            let lines = (lpp as u64).min(left);
            let begin = buf.len();
            for k in 0..lines {
                if k > 0 {
                    buf.push(b'\n');
                }
                spec.traffic.write_line(s.next_index, &mut buf);
                s.next_index += 1;
            }
            packets.push((begin, buf.len(), lines));
            attempted_lines += lines;
        }
        attempted_packets += packets.len() as u64;

        let iovs: Vec<[IoSlice<'_>; 1]> = packets
            .iter()
            .map(|&(a, b, _)| [IoSlice::new(buf.get(a..b).unwrap_or(&[]))])
            .collect();
        let fd = sockets
            .get(s.send_calls as usize % sockets.len())
            .map_or(-1, AsRawFd::as_raw_fd);
        s.send_calls += 1;
        let sent = match sendmmsg(fd, &mut headers, &iovs, &addrs, [], MsgFlags::empty()) {
            Ok(results) => results.map(|r| r.bytes).collect::<Vec<usize>>(),
            Err(_) => Vec::new(),
        };
        drop(iovs);
        if sent.len() < packets.len() {
            s.send_errors += 1;
        }
        for (i, &(a, b, lines)) in packets.iter().enumerate() {
            if i < sent.len() {
                s.packets_sent += 1;
                s.lines_sent += lines;
                s.bytes_sent += (b - a) as u64;
            } else {
                s.lines_failed += lines;
            }
        }
        if sent.len() < packets.len() {
            // A refused target (nothing bound yet) fails every call: don't spin on it.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    s.elapsed_s = start.elapsed().as_secs_f64();
    s.achieved_rate = if s.elapsed_s > 0.0 {
        s.lines_sent as f64 / s.elapsed_s
    } else {
        0.0
    };
    Ok(s)
}

/// Runs `senders` copies of `spec` in parallel threads, each at `1/senders` of the rate
/// and starting at a different line, and adds up what they sent. `next_index` is the
/// highest any of them reached.
pub fn run_parallel(
    spec: &LoadSpec,
    senders: usize,
    stop: Option<&AtomicBool>,
) -> anyhow::Result<LoadSummary> {
    let senders = senders.clamp(1, 16);
    if senders == 1 {
        return run(spec, stop);
    }
    let stride = (spec.traffic.series / senders as u64).max(1);
    let results: Vec<anyhow::Result<LoadSummary>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..senders)
            .map(|k| {
                let mut one = spec.clone();
                one.rate = spec.rate / senders as f64;
                one.start_index = spec.start_index + k as u64 * stride;
                one.max_lines = spec
                    .max_lines
                    .map(|m| m / senders as u64 + u64::from((k as u64) < m % senders as u64));
                scope.spawn(move || run(&one, stop))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a sender panicked")))
            })
            .collect()
    });
    let mut total = LoadSummary {
        target_rate: spec.rate,
        next_index: spec.start_index,
        ..LoadSummary::default()
    };
    for r in results {
        let r = r?;
        total.lines_sent += r.lines_sent;
        total.packets_sent += r.packets_sent;
        total.bytes_sent += r.bytes_sent;
        total.send_errors += r.send_errors;
        total.lines_failed += r.lines_failed;
        total.send_calls += r.send_calls;
        total.elapsed_s = total.elapsed_s.max(r.elapsed_s);
        total.next_index = total.next_index.max(r.next_index);
    }
    total.achieved_rate = if total.elapsed_s > 0.0 {
        total.lines_sent as f64 / total.elapsed_s
    } else {
        0.0
    };
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::Mix;

    #[test]
    fn refuses_non_loopback_targets() {
        let spec = LoadSpec {
            target: "192.0.2.1:8125".parse().unwrap(),
            rate: 10.0,
            duration: Duration::from_millis(10),
            lines_per_packet: 1,
            traffic: Traffic {
                series: 1,
                mix: Mix::Counter,
                plain: false,
            },
            batch: 64,
            start_index: 0,
            max_lines: None,
            sources: 1,
        };
        assert!(run(&spec, None).is_err());
    }

    #[test]
    fn sends_the_lines_it_counts_at_about_the_rate() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let spec = LoadSpec {
            target: rx.local_addr().unwrap(),
            rate: 2000.0,
            duration: Duration::from_millis(300),
            lines_per_packet: 20,
            traffic: Traffic {
                series: 7,
                mix: Mix::Counter,
                plain: true,
            },
            batch: 64,
            start_index: 0,
            max_lines: Some(500),
            sources: 3,
        };
        let s = run(&spec, None).unwrap();
        assert_eq!(s.send_errors, 0);
        assert!(s.lines_sent > 300 && s.lines_sent <= 620, "{s:?}");
        let mut got = 0u64;
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = rx.recv(&mut buf) {
            got += crate::drain::count_lines(&buf[..n]);
        }
        assert_eq!(got, s.lines_sent);
        assert_eq!(s.next_index, s.lines_sent);
    }

    #[test]
    fn parallel_senders_split_the_lines() {
        let (rx, _) = crate::drain::bind("127.0.0.1:0".parse().unwrap(), 4 << 20).unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let spec = LoadSpec {
            target: rx.local_addr().unwrap(),
            rate: 5000.0,
            duration: Duration::from_secs(2),
            lines_per_packet: 1,
            traffic: Traffic {
                series: 10,
                mix: Mix::Counter,
                plain: false,
            },
            batch: 8,
            start_index: 0,
            max_lines: Some(301),
            sources: 2,
        };
        let s = run_parallel(&spec, 3, None).unwrap();
        assert_eq!(s.lines_sent, 301);
        let mut got = 0u64;
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = rx.recv(&mut buf) {
            got += crate::drain::count_lines(&buf[..n]);
        }
        assert_eq!(got, 301);
    }
}
