//! Sockets: the only module that touches the network for StatsD input.
//!
//! Each socket gets a dedicated OS thread that reads and ingests inline: no queue sits
//! between the kernel buffer and the store, so a line counted as received is already in the
//! store, and on shutdown the thread drains what the kernel still holds before it exits.

use std::time::Duration;

/// How long a listener keeps draining after the stop: what the kernel held at the stop is
/// read within it, and a client that keeps sending can't hold shutdown open.
pub const DRAIN_BUDGET: Duration = Duration::from_secs(1);

pub mod tcp;
pub mod udp;
pub mod unixgram;
