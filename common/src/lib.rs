//! Pieces shared by `statsd-bridge` and `prom-adapter`.
//!
//! # Layout
//! - [`config`]: strict TOML loading whose errors point at `file:line:col` and name the field.
//! - [`files`]: atomic file writes (ready files, certificates).
//! - [`units`]: durations (`"30s"`) and byte sizes (`"8MiB"`) as config values.
//! - [`prom`]: Prometheus metric/label name sanitizing and exposition escaping.
//! - [`telemetry`]: `tracing` subscriber setup (text or JSON, `RUST_LOG`-style filter).
//! - [`http`]: a small hyper 1.x server loop with graceful shutdown.
//! - [`kube_client`]: kube-rs clients from a kubeconfig or the in-cluster config (both binaries
//!   watch the kube-apiserver: the adapter its objects, the bridge its node's pods).
//! - [`tls`]: serving certificates (PEM or self-signed) and the rustls server config.
//! - [`shutdown`]: one future that resolves on SIGTERM or SIGINT.
//! - [`malloc`]: glibc's mmap threshold fixed, so large buffers return their memory when freed.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

pub mod config;
pub mod files;
pub mod http;
pub mod kube_client;
pub mod malloc;
pub mod prom;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod units;
