//! The baseline receiver: a bare UDP socket with the bridge's receive buffer that only reads
//! datagrams with `recvmmsg` and counts their lines. Whatever rate it keeps up with is the
//! most any receiver on this machine can take with one thread; the bridge's rate is compared
//! with it.
//!
//! The count is written to `--count-file` every 100 ms (atomically, as
//! `lines packets bytes\n`), so a runner reads it without any protocol; the bound address
//! goes to `--ready-file` as `{"udp":["127.0.0.1:PORT"]}` once bound.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};
use std::io::IoSliceMut;

/// How often the count file is rewritten (and the stop flag and deadline looked at).
const TICK: Duration = Duration::from_millis(100);
/// Datagrams per `recvmmsg` call.
const BATCH: usize = 64;
/// Largest datagram read, as the bridge.
const MAX_DATAGRAM: usize = 65_535;

/// Flags of the `drain` binary.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "drain",
    about = "Baseline UDP receiver: counts StatsD lines, nothing else"
)]
pub struct DrainArgs {
    /// Address to receive on (loopback; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// SO_RCVBUF to request, in bytes (the bridge's default `read_buffer` is 8 MiB).
    #[arg(long, default_value_t = 8 << 20)]
    pub read_buffer: usize,
    /// Rewrite `lines packets bytes` here every 100 ms.
    #[arg(long)]
    pub count_file: Option<PathBuf>,
    /// Write `{"udp":["ADDR"],"rcvbuf":N}` here once bound.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 3600.0)]
    pub duration: f64,
}

/// What the drain received.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DrainSummary {
    /// The bound address.
    pub listen: String,
    /// SO_RCVBUF as the kernel reports it (twice the usable size on Linux).
    pub rcvbuf: usize,
    /// Non-empty `\n`-separated lines.
    pub lines: u64,
    /// Datagrams.
    pub packets: u64,
    /// Payload bytes.
    pub bytes: u64,
    /// Seconds run.
    pub elapsed_s: f64,
}

/// Counts the non-empty `\n`-separated lines of a datagram, as the bridge's
/// `statsd_bridge_lines_total` does.
pub fn count_lines(data: &[u8]) -> u64 {
    data.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count() as u64
}

/// Binds a UDP socket with SO_RCVBUF set before the bind, as the bridge does.
pub fn bind(addr: SocketAddr, read_buffer: usize) -> anyhow::Result<(UdpSocket, usize)> {
    if !addr.ip().is_loopback() {
        bail!("the drain listens on loopback only, not {addr}");
    }
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if read_buffer > 0 {
        socket
            .set_recv_buffer_size(read_buffer)
            .context("set SO_RCVBUF")?;
    }
    let granted = socket.recv_buffer_size().unwrap_or(0);
    socket
        .bind(&addr.into())
        .with_context(|| format!("bind {addr}"))?;
    Ok((socket.into(), granted))
}

/// Writes `body` to `path` atomically (a temporary file renamed over it).
pub fn write_atomic(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)
}

/// Receives and counts until the duration is up or `stop` is set.
pub fn run(args: &DrainArgs, stop: Option<&AtomicBool>) -> anyhow::Result<DrainSummary> {
    let (socket, rcvbuf) = bind(args.listen, args.read_buffer)?;
    socket.set_read_timeout(Some(TICK))?;
    let local = socket.local_addr()?;
    let mut s = DrainSummary {
        listen: local.to_string(),
        rcvbuf,
        ..DrainSummary::default()
    };
    if let Some(path) = &args.ready_file {
        let body = serde_json::json!({ "udp": [local.to_string()], "rcvbuf": rcvbuf });
        write_atomic(path, body.to_string().as_bytes()).context("write the ready file")?;
    }
    let fd = socket.as_raw_fd();
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; MAX_DATAGRAM]).collect();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.duration.clamp(0.0, 86_400.0));
    let mut next_write = start;
    let mut sizes: Vec<usize> = Vec::with_capacity(BATCH);
    loop {
        let now = Instant::now();
        if now >= next_write {
            if let Some(path) = &args.count_file {
                let body = format!("{} {} {}\n", s.lines, s.packets, s.bytes);
                write_atomic(path, body.as_bytes()).context("write the count file")?;
            }
            next_write = now + TICK;
            if now >= deadline || stop.is_some_and(|f| f.load(Ordering::Relaxed)) {
                break;
            }
        }
        sizes.clear();
        {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
                bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
            // Blocks (up to the read timeout) for the first datagram only.
            match recvmmsg(
                fd,
                &mut headers,
                iovs.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(results) => sizes.extend(results.map(|r| r.bytes)),
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(e) => bail!("recvmmsg: {e}"),
            }
        }
        for (buf, &n) in bufs.iter().zip(&sizes) {
            let data = buf.get(..n).unwrap_or(buf);
            s.lines += count_lines(data);
            s.packets += 1;
            s.bytes += n as u64;
        }
    }
    s.elapsed_s = start.elapsed().as_secs_f64();
    Ok(s)
}

/// Reads a count file: `(lines, packets, bytes)`.
pub fn read_count_file(path: &Path) -> anyhow::Result<(u64, u64, u64)> {
    let text = std::fs::read_to_string(path)?;
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(l)), Some(Ok(p)), Some(Ok(b))) => Ok((l, p, b)),
        _ => bail!("bad count file {}: {text:?}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_non_empty_lines() {
        assert_eq!(count_lines(b""), 0);
        assert_eq!(count_lines(b"a:1|c"), 1);
        assert_eq!(count_lines(b"a:1|c\n"), 1);
        assert_eq!(count_lines(b"a:1|c\n\nb:2|c\n"), 2);
        assert_eq!(count_lines(b"\n\n"), 0);
    }

    #[test]
    fn drains_and_writes_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        let ready = dir.path().join("ready");
        let args = DrainArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            read_buffer: 1 << 20,
            count_file: Some(count.clone()),
            ready_file: Some(ready.clone()),
            duration: 0.6,
        };
        let t = std::thread::spawn(move || run(&args, None).unwrap());
        let t0 = Instant::now();
        while !ready.exists() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
        let addr: SocketAddr = v["udp"][0].as_str().unwrap().parse().unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..10 {
            tx.send_to(b"a:1|c\nb:1|c\n", addr).unwrap();
        }
        let s = t.join().unwrap();
        assert_eq!((s.lines, s.packets), (20, 10));
        assert_eq!(read_count_file(&count).unwrap(), (20, 10, 120));
    }
}
