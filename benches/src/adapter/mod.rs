//! The prom-adapter harness: a population of series served to a real Prometheus, the release
//! adapter in front of it, and the measurements of `adapter_harness`.
//!
//! - [`pages`]: the series population and the page server Prometheus scrapes.
//! - [`systems`]: Prometheus and prom-adapter as child processes.
//! - [`client`]: a blocking keep-alive HTTP/1.1 client, plain or TLS.
//! - [`measure`]: discovery, request overhead, throughput (`wrk`) and the soak.
//! - [`stats`]: percentiles and slopes.

pub mod client;
pub mod measure;
pub mod pages;
pub mod stats;
pub mod systems;
