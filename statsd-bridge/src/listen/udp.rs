//! UDP datagrams, one OS thread per socket.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::ingest::Ingester;
use crate::telemetry::Transport;

/// The largest UDP payload; DogStatsD clients send up to 64 KiB over loopback.
const MAX_DATAGRAM: usize = 65_535;
/// How often a blocked read wakes up to look at the stop flag.
const POLL: Duration = Duration::from_millis(100);

/// Binds a UDP socket with the requested receive buffer (0 keeps the OS default).
pub fn bind(addr: SocketAddr, read_buffer: usize) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if read_buffer > 0 {
        if let Err(e) = socket.set_recv_buffer_size(read_buffer) {
            tracing::warn!(%addr, error = %e, "Cannot set the UDP receive buffer size.");
        }
        let granted = socket.recv_buffer_size().unwrap_or(0);
        // Linux reports twice the usable size; below the request means rmem_max capped it.
        if granted < read_buffer {
            tracing::warn!(%addr, requested = read_buffer, granted, "The kernel capped the UDP receive buffer; raise net.core.rmem_max.");
        }
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Reads and ingests datagrams until `stop` is set, then drains the socket and returns.
pub fn spawn(
    socket: UdpSocket,
    ingester: Arc<Ingester>,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    socket.set_read_timeout(Some(POLL))?;
    let name = format!(
        "udp-{}",
        socket
            .local_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string())
    );
    std::thread::Builder::new().name(name).spawn(move || {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut worker = ingester.worker();
        while !stop.load(Ordering::Relaxed) {
            match socket.recv(&mut buf) {
                Ok(n) => {
                    ingester.datagram(buf.get(..n).unwrap_or(&[]), Transport::Udp, &mut worker)
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "UDP receive failed.");
                    std::thread::sleep(POLL);
                }
            }
        }
        // Whatever the kernel accepted before the stop is ingested, not lost.
        let mut drained = 0u64;
        let deadline = std::time::Instant::now() + super::DRAIN_BUDGET;
        if socket.set_nonblocking(true).is_ok() {
            while std::time::Instant::now() < deadline
                && let Ok(n) = socket.recv(&mut buf)
            {
                ingester.datagram(buf.get(..n).unwrap_or(&[]), Transport::Udp, &mut worker);
                drained += 1;
            }
        }
        tracing::debug!(drained, "UDP listener stopped.");
    })
}
