//! Sockets: the only module that touches the network for StatsD input.
//!
//! Each socket gets a dedicated OS thread that reads and ingests inline: no queue sits
//! between the kernel buffer and the store, so a line counted as received is already in the
//! store, and on shutdown the thread drains what the kernel still holds before it exits.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::ingest::Ingester;
use crate::telemetry::Transport;

/// How long a listener keeps draining after the stop: what the kernel held at the stop is
/// read within it, and a client that keeps sending can't hold shutdown open.
pub const DRAIN_BUDGET: Duration = Duration::from_secs(1);

pub mod tcp;
pub mod udp;
pub mod unixgram;

/// The largest datagram read; DogStatsD clients send up to 64 KiB over loopback and UDS.
const MAX_DATAGRAM: usize = 65_535;

/// How often a blocked read wakes up to look at the stop flag.
const POLL: Duration = Duration::from_millis(100);

/// A datagram socket the read loop can drive (UDP or unix).
trait DatagramSocket {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn set_nonblocking(&self, on: bool) -> io::Result<()>;
}

impl DatagramSocket for std::net::UdpSocket {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        std::net::UdpSocket::recv(self, buf)
    }
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        std::net::UdpSocket::set_nonblocking(self, on)
    }
}

impl DatagramSocket for std::os::unix::net::UnixDatagram {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        std::os::unix::net::UnixDatagram::recv(self, buf)
    }
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        std::os::unix::net::UnixDatagram::set_nonblocking(self, on)
    }
}

/// Reads and ingests datagrams until `stop`, then drains what the kernel holds (within
/// [`DRAIN_BUDGET`]). The socket must have a read timeout of about [`POLL`].
fn datagram_loop(
    socket: &impl DatagramSocket,
    transport: Transport,
    ingester: &Ingester,
    stop: &Arc<AtomicBool>,
) -> u64 {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut worker = ingester.worker();
    while !stop.load(Ordering::Relaxed) {
        match socket.recv(&mut buf) {
            Ok(n) => ingester.datagram(buf.get(..n).unwrap_or(&[]), transport, &mut worker),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                tracing::warn!(transport = transport.as_str(), error = %e, "Receive failed.");
                std::thread::sleep(POLL);
            }
        }
    }
    // Whatever the kernel accepted before the stop is ingested, not lost.
    let mut drained = 0;
    let deadline = Instant::now() + DRAIN_BUDGET;
    if socket.set_nonblocking(true).is_ok() {
        while Instant::now() < deadline
            && let Ok(n) = socket.recv(&mut buf)
        {
            ingester.datagram(buf.get(..n).unwrap_or(&[]), transport, &mut worker);
            drained += 1;
        }
    }
    drained
}
