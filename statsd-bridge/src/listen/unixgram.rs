//! Unix datagram sockets (DogStatsD's `dsd.socket`), one OS thread per socket.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;

use socket2::{Domain, Socket, Type};

use crate::ingest::Ingester;
use crate::telemetry::Transport;

/// A bound unix datagram socket; removes its file when dropped.
#[derive(Debug)]
pub struct BoundUnixgram {
    socket: UnixDatagram,
    path: PathBuf,
}

impl BoundUnixgram {
    /// The socket file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BoundUnixgram {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => tracing::debug!(path = %self.path.display(), "Removed the unix socket file."),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "Cannot remove the unix socket file.")
            }
        }
    }
}

/// Binds `path` with file mode `mode`. A stale socket file left by a crash is replaced; any
/// other file at the path is an error, never deleted.
pub fn bind(path: &Path, mode: u32, read_buffer: usize) -> io::Result<BoundUnixgram> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket exists at the path",
            ));
        }
        if UnixDatagram::unbound()
            .and_then(|s| s.connect(path))
            .is_ok()
        {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process listens on the socket",
            ));
        }
        std::fs::remove_file(path)?;
        tracing::info!(path = %path.display(), "Replaced a stale unix socket file.");
    }
    let socket = Socket::new(Domain::UNIX, Type::DGRAM, None)?;
    if read_buffer > 0
        && let Err(e) = socket.set_recv_buffer_size(read_buffer)
    {
        tracing::warn!(path = %path.display(), error = %e, "Cannot set the unix socket receive buffer size.");
    }
    // Each datagram then carries the sender's PID, the start of origin detection over UDS.
    // Without it the sender is unknown, which costs labels, not data.
    if let Err(e) =
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::PassCred, &true)
    {
        tracing::warn!(path = %path.display(), error = %e, "Cannot enable SO_PASSCRED; unix socket senders get no origin labels.");
    }
    socket.bind(&socket2::SockAddr::unix(path)?)?;
    let bound = BoundUnixgram {
        socket: UnixDatagram::from(std::os::fd::OwnedFd::from(socket)),
        path: path.to_path_buf(),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(bound)
}

/// Reads and ingests datagrams until `stop`, drains the socket, and removes the file.
pub fn spawn(
    bound: BoundUnixgram,
    ingester: Arc<Ingester>,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    bound.socket.set_read_timeout(Some(super::POLL))?;
    std::thread::Builder::new()
        .name("unixgram".into())
        .spawn(move || {
            let drained =
                super::datagram_loop(&bound.socket, Transport::Unixgram, &ingester, &stop);
            tracing::debug!(drained, path = %bound.path.display(), "Unix socket listener stopped.");
            drop(bound);
        })
}
