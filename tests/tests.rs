//! End-to-end tests: real binaries, a real Prometheus, the real Datadog client.
//!
//! Run them with `scripts/test.sh`, which installs the peers and builds the binaries first.

mod adapter;
mod adapter_auth;
mod adapter_backends;
mod adapter_named;
mod adapter_objects;
mod adapter_resource;
mod adapter_vm;
mod bridge;
mod listeners;
mod manifests;
mod mapping;
mod native_histograms;
mod origin;
mod pipeline;
