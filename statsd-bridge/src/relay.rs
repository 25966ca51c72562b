//! Relay: forwards every received line to another StatsD server over UDP.
//!
//! Listeners hand lines to a bounded queue and never wait: when the queue is full or the
//! target fails, lines are dropped and counted (statsd_exporter's relay can stall ingestion
//! once its channel fills; this one can't).

use std::net::{SocketAddr, UdpSocket};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use crate::telemetry::Telemetry;

/// Lines waiting to be relayed, at most.
const QUEUE: usize = 10_000;
/// A partly filled packet waits at most this long.
const FLUSH: Duration = Duration::from_secs(1);

/// The listeners' side of the relay.
#[derive(Debug, Clone)]
pub struct Relay {
    tx: Sender<Box<[u8]>>,
    max_line: usize,
    telemetry: std::sync::Arc<Telemetry>,
}

impl Relay {
    /// Starts the relay thread sending to `target` in packets of at most `packet_len` bytes.
    pub fn start(
        target: SocketAddr,
        packet_len: usize,
        telemetry: std::sync::Arc<Telemetry>,
    ) -> std::io::Result<(Self, JoinHandle<()>)> {
        let bind: SocketAddr = if target.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let socket = UdpSocket::bind(bind)?;
        socket.connect(target)?;
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let t = std::sync::Arc::clone(&telemetry);
        let handle = std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || run(socket, rx, packet_len, &t))?;
        Ok((
            Self {
                tx,
                max_line: packet_len.saturating_sub(1),
                telemetry,
            },
            handle,
        ))
    }

    /// Sends what is queued now instead of at the next flush tick (used at shutdown).
    pub fn flush(&self) {
        let _ = self.tx.send_timeout(Box::from(&b""[..]), FLUSH);
    }

    /// Queues a line (without its newline); never blocks.
    pub fn line(&self, line: &[u8]) {
        if line.is_empty() {
            return;
        }
        if line.len() > self.max_line {
            self.telemetry.relay_lines_too_long.inc();
            return;
        }
        match self.tx.try_send(Box::from(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.telemetry.relay_lines_dropped.inc();
            }
        }
    }
}

fn run(socket: UdpSocket, rx: Receiver<Box<[u8]>>, packet_len: usize, t: &Telemetry) {
    let mut packet: Vec<u8> = Vec::with_capacity(packet_len);
    let mut lines_in_packet = 0u64;
    let mut deadline = Instant::now() + FLUSH;
    let send = |packet: &mut Vec<u8>, lines: &mut u64| {
        if packet.is_empty() {
            return;
        }
        match socket.send(packet) {
            Ok(_) => {
                t.relay_packets.inc();
                t.relay_lines.inc_by(*lines);
            }
            Err(e) => {
                t.relay_errors.inc();
                t.relay_lines_dropped.inc_by(*lines);
                tracing::debug!(error = %e, "Relay send failed.");
            }
        }
        packet.clear();
        *lines = 0;
    };
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.is_empty() => {
                send(&mut packet, &mut lines_in_packet);
                deadline = Instant::now() + FLUSH;
            }
            Ok(line) => {
                if packet.len() + line.len() + 1 > packet_len {
                    send(&mut packet, &mut lines_in_packet);
                    deadline = Instant::now() + FLUSH;
                }
                packet.extend_from_slice(&line);
                packet.push(b'\n');
                lines_in_packet += 1;
            }
            Err(RecvTimeoutError::Timeout) => {
                send(&mut packet, &mut lines_in_packet);
                deadline = Instant::now() + FLUSH;
            }
            Err(RecvTimeoutError::Disconnected) => {
                send(&mut packet, &mut lines_in_packet);
                return;
            }
        }
    }
}
