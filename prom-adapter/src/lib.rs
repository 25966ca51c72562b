//! prom-adapter: serves `custom.metrics.k8s.io` and `external.metrics.k8s.io` from PromQL.

pub mod prom;
pub mod quantity;
pub mod rules;
pub mod selector;
