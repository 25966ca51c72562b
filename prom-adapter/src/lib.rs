//! prom-adapter: serves `custom.metrics.k8s.io` and `external.metrics.k8s.io` from PromQL.

pub mod prometheus;
pub mod quantity;
pub mod selector;
pub mod template;
