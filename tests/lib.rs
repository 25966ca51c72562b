//! Shared helpers for the end-to-end tests.
//!
//! The tests drive real processes: the workspace's binaries (built beforehand with
//! `cargo build --release --bins`), Prometheus and `promtool` (Debian package `prometheus`),
//! and the Datadog Python client from `.venv` (`scripts/test.sh` installs all of them).
//! Every port is ephemeral, so tests run in parallel; readiness and delivery are awaited with
//! [`util::eventually`], never with fixed sleeps.
//!
//! # Layout
//! - [`util`]: paths (workspace, binaries, programs, Python), [`util::eventually`], UDP sends.
//! - [`check`]: checks on `name{labels} → value` maps ([`check::expect_all`],
//!   [`check::compare`], …).
//! - [`process`]: [`process::ChildGuard`], a child killed on drop whose log tail is printed
//!   when a test fails.
//! - [`http`]: a minimal HTTP/1.1 client.
//! - [`statsd`]: [`statsd::Bridge`], the `statsd-bridge` binary under test.
//! - [`dogstatsd`]: [`dogstatsd::DogStatsd`], the real Datadog Python client.
//! - [`prom`]: [`prom::Prometheus`], a real Prometheus server, and `promtool check metrics`.
//! - [`exposition`]: a strict reader of the text exposition format.
//! - [`vectors`]: the data-driven cases in `tests/data/`.
//! - [`exporter`]: [`exporter::Exporter`], an in-process `/metrics` page with gauges the test
//!   sets and counters growing at a fixed rate.
//! - [`promadapter`]: [`promadapter::Adapter`], the `prom-adapter` binary under test, its
//!   subcommands, `Quantity` and timestamp readers, and [`promadapter::Leash`] for fixtures
//!   kept in statics.
//! - [`kubectl`]: [`kubectl::Kubectl`] with a throwaway kubeconfig (a token or a client
//!   certificate), raw HTTPS requests through `openssl s_client` and `curl`, and a runner for
//!   one-shot programs.
//! - [`kubeapi`]: [`kubeapi::FakeKubeApi`], a fake kube-apiserver answering TokenReviews,
//!   SubjectAccessReviews and the `extension-apiserver-authentication` ConfigMap, and (opt-in)
//!   discovery, lists and watches of pods and namespaces; it records every request.
//! - [`pki`]: [`pki::Pki`], the CAs and certificates of the auth tests (made with `rcgen`).
//! - [`metrics_api`]: the adapter tests' metrics-API paths, series, answer checks and `render`.
//! - [`victoria`]: [`victoria::VictoriaMetrics`], a real VictoriaMetrics scraping the exporter,
//!   its Prometheus-compatible query API, stopped and restarted on the same port and data.

pub mod check;
pub mod dogstatsd;
pub mod exporter;
pub mod exposition;
pub mod hpa;
pub mod http;
pub mod kubeapi;
pub mod kubectl;
pub mod metrics_api;
pub mod pki;
pub mod process;
pub mod prom;
pub mod promadapter;
pub mod statsd;
pub mod util;
pub mod vectors;
pub mod victoria;

pub use dogstatsd::DogStatsd;
pub use exporter::Exporter;
pub use kubectl::Kubectl;
pub use prom::{Prometheus, Sample, promtool_check_metrics};
pub use promadapter::Adapter;
pub use statsd::Bridge;
pub use util::{PATIENCE, bin, eventually, python, require_program, workspace_root};
