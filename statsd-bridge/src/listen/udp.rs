//! UDP datagrams, one OS thread per socket.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};

use crate::ingest::Ingester;
use crate::telemetry::Transport;

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
    socket.set_read_timeout(Some(super::POLL))?;
    let name = format!(
        "udp-{}",
        socket
            .local_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string())
    );
    std::thread::Builder::new().name(name).spawn(move || {
        let drained = super::datagram_loop(&socket, Transport::Udp, &ingester, &stop);
        tracing::debug!(drained, "UDP listener stopped.");
    })
}
