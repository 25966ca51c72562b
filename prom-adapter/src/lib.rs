//! prom-adapter: serves `custom.metrics.k8s.io` and `external.metrics.k8s.io` from PromQL.
//!
//! Not built yet; this crate holds the place in the workspace (see the open
//! "prom-adapter v1" issue).
