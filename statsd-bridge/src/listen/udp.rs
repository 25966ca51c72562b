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
pub fn bind(addr: SocketAddr, read_buffer: usize, reuse_port: bool) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Several sockets on one port, each read by its own thread: the kernel spreads senders
    // over them by their address, so ingestion uses every core.
    socket.set_reuse_port(reuse_port)?;
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

/// Datagrams the kernel dropped on the UDP sockets bound to `ports` (receive buffer full),
/// summed from the `drops` column of `/proc/net/udp` and `/proc/net/udp6`. Zero where the
/// files can't be read.
pub fn kernel_drops(ports: &[u16]) -> u64 {
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|text| drops_for_ports(&text, ports))
        .sum()
}

/// The sum of the last column over the lines whose local port is one of `ports`.
fn drops_for_ports(table: &str, ports: &[u16]) -> u64 {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1)?;
            let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            let drops = line.split_whitespace().last()?.parse::<u64>().ok()?;
            ports.contains(&port).then_some(drops)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_read_for_our_ports_only() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 0100007F:1FBD 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 12345 2 0000000000000000 17
  124: 0100007F:1FBD 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 12346 2 0000000000000000 3
  125: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 12347 2 0000000000000000 99
";
        assert_eq!(drops_for_ports(table, &[8125]), 20);
        assert_eq!(drops_for_ports(table, &[1]), 0);
        assert_eq!(drops_for_ports("garbage\nmore garbage", &[8125]), 0);
    }
}
