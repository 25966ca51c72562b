//! Load harness for the whole binaries; the criterion benches of the hot functions live in
//! `benches/`.
//!
//! - [`adapter`]: the prom-adapter harness (discovery, request overhead, throughput, soak).
//! - [`traffic`]: the StatsD/DogStatsD lines the load generator sends.
//! - [`loadgen`]: paced UDP sender (`sendmmsg`), the `loadgen` binary and a library call.
//! - [`drain`]: the baseline receiver (`recvmmsg`, counts lines), the `drain` binary.
//! - [`http`], [`procfs`]: a tiny `GET` client and `/proc` readers (RSS, CPU, UDP drops).
//! - [`sut`]: starting and reading the systems under test (drain, statsd-bridge, collectd,
//!   statsd_exporter).
//! - [`typical`]: the typical DogStatsD lines of the criterion benches.
//! - [`search`]: the lossless-rate search and the Markdown table of `load_harness`.
//!
//! Everything sends to and listens on loopback only, and every loop is bounded in time.

#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod adapter;
pub mod drain;
pub mod http;
pub mod loadgen;
pub mod procfs;
pub mod search;
pub mod sut;
pub mod traffic;
pub mod typical;
