//! statsd-bridge: StatsD/DogStatsD in, Prometheus exposition out.
//!
//! # Layout
//! - [`protocol`]: the line grammar (sans-IO, nom).
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod protocol;
