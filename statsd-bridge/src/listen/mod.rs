//! Sockets: the only module that touches the network for StatsD input.
//!
//! Each socket gets a dedicated OS thread that reads and ingests inline: no queue sits
//! between the kernel buffer and the store, so a line counted as received is already in the
//! store, and on shutdown the thread drains what the kernel still holds before it exits.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, RawFd};

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, UnixCredentials, recvmmsg,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::ingest::Ingester;
use crate::origin::Sender;
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

/// Datagrams per `recvmmsg` call.
const BATCH: usize = 32;

/// Receive buffers for one listener thread, filled `BATCH` datagrams at a time.
struct Batch {
    bufs: Vec<Vec<u8>>,
    sizes: Vec<(usize, Sender)>,
    headers: MultiHeaders<SockaddrStorage>,
}

impl Batch {
    /// Buffers; with `credentials`, room for each datagram's `SCM_CREDENTIALS` too.
    fn new(credentials: bool) -> Self {
        let cmsg = credentials.then(|| nix::cmsg_space!(UnixCredentials));
        Self {
            bufs: (0..BATCH).map(|_| vec![0u8; MAX_DATAGRAM]).collect(),
            sizes: Vec::with_capacity(BATCH),
            headers: MultiHeaders::preallocate(BATCH, cmsg),
        }
    }

    /// Receives up to `BATCH` datagrams with one system call; blocks (up to the socket's read
    /// timeout) for the first only.
    fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.sizes.clear();
        let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
            self.bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
        let results = recvmmsg(
            fd,
            &mut self.headers,
            iovs.iter_mut(),
            MsgFlags::MSG_WAITFORONE,
            None,
        )
        .map_err(io::Error::from)?;
        self.sizes.extend(results.map(|r| {
            let pid = r.cmsgs().ok().and_then(|mut cmsgs| {
                cmsgs.find_map(|c| match c {
                    ControlMessageOwned::ScmCredentials(creds) => Some(creds.pid()),
                    _ => None,
                })
            });
            let sender = match (pid, r.address.as_ref()) {
                (Some(pid), _) => Sender::Pid(pid),
                (None, Some(a)) => ip_of(a).map_or(Sender::Unknown, Sender::Ip),
                (None, None) => Sender::Unknown,
            };
            (r.bytes, sender)
        }));
        Ok(self.sizes.len())
    }

    fn datagrams(&self) -> impl Iterator<Item = (&[u8], Sender)> {
        self.bufs
            .iter()
            .zip(&self.sizes)
            .map(|(b, &(n, sender))| (b.get(..n).unwrap_or(&[]), sender))
    }
}

/// The IP of a UDP source address.
fn ip_of(addr: &SockaddrStorage) -> Option<std::net::IpAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(std::net::IpAddr::V4(v4.ip()));
    }
    addr.as_sockaddr_in6()
        .map(|v6| std::net::IpAddr::V6(v6.ip()))
}

/// A datagram socket the read loop can drive (UDP or unix).
trait DatagramSocket: AsRawFd {
    fn set_nonblocking(&self, on: bool) -> io::Result<()>;
    /// Whether datagrams carry the sender's credentials (`SO_PASSCRED`).
    fn credentials(&self) -> bool {
        false
    }
}

impl DatagramSocket for std::net::UdpSocket {
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        std::net::UdpSocket::set_nonblocking(self, on)
    }
}

impl DatagramSocket for std::os::unix::net::UnixDatagram {
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        std::os::unix::net::UnixDatagram::set_nonblocking(self, on)
    }

    fn credentials(&self) -> bool {
        nix::sys::socket::getsockopt(self, nix::sys::socket::sockopt::PassCred).unwrap_or(false)
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
    let mut batch = Batch::new(socket.credentials());
    let mut worker = ingester.worker();
    let fd = socket.as_raw_fd();
    while !stop.load(Ordering::Relaxed) {
        match batch.recv(fd) {
            Ok(_) => {
                for (d, sender) in batch.datagrams() {
                    ingester.datagram_from(d, transport, sender, &mut worker);
                }
            }
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
        while Instant::now() < deadline && batch.recv(fd).is_ok_and(|n| n > 0) {
            for (d, sender) in batch.datagrams() {
                ingester.datagram_from(d, transport, sender, &mut worker);
                drained += 1;
            }
        }
    }
    drained
}
