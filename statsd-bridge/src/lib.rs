//! statsd-bridge: StatsD/DogStatsD in, Prometheus exposition out.
//!
//! # Layout
//! - [`protocol`]: the line grammar (sans-IO, nom).
//! - [`aggregate`]: the series store (sans-IO; time is passed in).
//! - [`expose`]: text exposition of a store snapshot.
//! - [`ingest`]: datagram → parser → store, with the self-metrics counted.
//! - [`telemetry`]: the `statsd_bridge_*` self-metrics.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod aggregate;
pub mod expose;
pub mod ingest;
pub mod protocol;
pub mod telemetry;
