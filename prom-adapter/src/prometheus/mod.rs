//! The Prometheus HTTP API client.
