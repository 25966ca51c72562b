//! The Prometheus HTTP API: the [`PromApi`] trait the provider uses, an HTTP client, a fake.
