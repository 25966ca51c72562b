//! Newline-delimited StatsD over TCP, one task per connection, with a connection cap.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::framing::LineFramer;
use crate::ingest::Ingester;
use crate::origin::Sender;
use crate::telemetry::Transport;

/// Limits for TCP input.
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    /// Longest accepted line, in bytes.
    pub max_line: usize,
    /// Open connections at most; more are closed at once and counted.
    pub max_connections: usize,
}

/// Accepts connections until `stop`, then lets every connection drain what it has.
pub async fn serve(
    listener: TcpListener,
    ingester: Arc<Ingester>,
    limits: TcpLimits,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = common::http::Backoff::default();
    while let Some((stream, peer)) =
        common::http::accept(&listener, &stop, &mut backoff, "TCP").await
    {
        let t = &ingester.telemetry;
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            t.tcp_connections_rejected.inc();
            tracing::warn!(%peer, max = limits.max_connections, "Closed a TCP connection over the connection limit.");
            drop(stream);
            continue;
        };
        t.tcp_connections.inc();
        t.tcp_connections_open.inc();
        let ingester = Arc::clone(&ingester);
        let stop = stop.clone();
        let span = tracing::debug_span!("tcp", %peer);
        tracker.spawn(
            async move {
                connection(stream, peer, &ingester, limits, stop).await;
                ingester.telemetry.tcp_connections_open.dec();
                drop(permit);
            }
            .instrument(span),
        );
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    ingester: &Ingester,
    limits: TcpLimits,
    stop: CancellationToken,
) {
    let mut framer = LineFramer::new(limits.max_line);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut worker = ingester.connection_worker();
    let counters = ingester.telemetry.transport(Transport::Tcp);
    loop {
        let read = tokio::select! {
            () = stop.cancelled() => break,
            r = stream.read_buf(&mut buf) => r,
        };
        match read {
            Ok(0) => {
                take_lines(
                    &mut framer,
                    &mut buf,
                    ingester,
                    &mut worker,
                    Sender::Ip(peer.ip()),
                    true,
                );
                return;
            }
            Ok(n) => {
                counters.packets.inc();
                counters.bytes.inc_by(n as u64);
                take_lines(
                    &mut framer,
                    &mut buf,
                    ingester,
                    &mut worker,
                    Sender::Ip(peer.ip()),
                    false,
                );
                if buf.capacity() - buf.len() < 4096 {
                    buf.reserve(64 * 1024);
                }
            }
            Err(e) => {
                ingester.telemetry.tcp_connection_errors.inc();
                tracing::debug!(%peer, error = %e, "TCP read failed.");
                return;
            }
        }
    }
    // Stopping: what the kernel already holds for this connection is read, not lost.
    let deadline = Instant::now() + super::DRAIN_BUDGET;
    while Instant::now() < deadline
        && let Ok(n) = stream.try_read_buf(&mut buf)
    {
        if n == 0 {
            break;
        }
        counters.packets.inc();
        counters.bytes.inc_by(n as u64);
        take_lines(
            &mut framer,
            &mut buf,
            ingester,
            &mut worker,
            Sender::Ip(peer.ip()),
            false,
        );
    }
    take_lines(
        &mut framer,
        &mut buf,
        ingester,
        &mut worker,
        Sender::Ip(peer.ip()),
        true,
    );
}

fn take_lines(
    framer: &mut LineFramer,
    buf: &mut BytesMut,
    ingester: &Ingester,
    worker: &mut crate::ingest::Worker,
    sender: Sender,
    at_end: bool,
) {
    let now = Instant::now();
    // Per chunk, not per connection: a pod change reaches a long-lived connection.
    worker.set_sender(sender, now);
    loop {
        let next = framer.next_line(buf);
        let next = match next {
            Ok(None) if at_end => framer.finish(buf),
            other => other,
        };
        match next {
            Ok(Some(line)) => {
                if !line.is_empty() {
                    ingester.line(&line, Transport::Tcp, worker, now);
                }
            }
            Ok(None) => {
                ingester.flush_counts(worker);
                return;
            }
            Err(_) => ingester.telemetry.line_too_long(Transport::Tcp),
        }
    }
}
