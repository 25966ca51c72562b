//! Sockets: the only module that touches the network for StatsD input.
//!
//! Each socket gets a dedicated OS thread that reads and ingests inline: no queue sits
//! between the kernel buffer and the store, so a line counted as received is already in the
//! store, and on shutdown the thread drains what the kernel still holds before it exits.

pub mod tcp;
pub mod udp;
pub mod unixgram;
