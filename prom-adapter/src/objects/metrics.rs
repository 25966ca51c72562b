//! Self-metrics of the object cache, labelled by the watched group-resource (a closed set:
//! pods, namespaces and what the rules map to).

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// The series the watcher tasks update. Clones share them; register them once with
/// [`ObjectsMetrics::register`].
#[derive(Debug, Clone)]
pub struct ObjectsMetrics {
    /// `prom_adapter_objects_cached{resource}`: objects in the cache.
    pub cached: IntGaugeVec,
    /// `prom_adapter_object_watch_restarts_total{resource}`: watch or list failures after
    /// which the watcher retried (a 410 Gone, then a relist, counts once).
    pub watch_restarts: IntCounterVec,
    /// `prom_adapter_object_last_sync_timestamp_seconds{resource}`: when the last full list
    /// completed, in seconds since the Unix epoch.
    pub last_sync: GaugeVec,
}

const LABELS: &[&str] = &["resource"];

fn invalid<T>(e: prometheus::Error) -> T {
    unreachable!("constant metric options are valid: {e}")
}

impl ObjectsMetrics {
    /// Fresh metrics with no series; each watched resource adds its own at zero.
    pub fn new() -> Self {
        Self {
            cached: IntGaugeVec::new(
                Opts::new(
                    "prom_adapter_objects_cached",
                    "Kubernetes objects in the watch cache, by group-resource.",
                ),
                LABELS,
            )
            .unwrap_or_else(invalid),
            watch_restarts: IntCounterVec::new(
                Opts::new(
                    "prom_adapter_object_watch_restarts_total",
                    "Watch or list failures of the object cache after which it retried, by \
                     group-resource.",
                ),
                LABELS,
            )
            .unwrap_or_else(invalid),
            last_sync: GaugeVec::new(
                Opts::new(
                    "prom_adapter_object_last_sync_timestamp_seconds",
                    "When the object cache last completed a full list, by group-resource.",
                ),
                LABELS,
            )
            .unwrap_or_else(invalid),
        }
    }

    /// Registers the three metrics in `registry`. Fails if they are registered there already.
    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.cached.clone()))?;
        registry.register(Box::new(self.watch_restarts.clone()))?;
        registry.register(Box::new(self.last_sync.clone()))?;
        Ok(())
    }

    /// Creates `resource`'s series at zero, so they exist before the first event.
    pub(crate) fn init(&self, resource: &str) {
        self.cached.with_label_values(&[resource]);
        self.watch_restarts.with_label_values(&[resource]);
        self.last_sync.with_label_values(&[resource]);
    }
}

impl Default for ObjectsMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_once_with_series_per_resource() {
        let registry = Registry::new();
        let metrics = ObjectsMetrics::new();
        metrics.register(&registry).unwrap();
        assert!(metrics.register(&registry).is_err());
        metrics.init("pods");
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| format!("{} {}", f.name(), f.get_metric().len()))
            .collect();
        assert_eq!(
            names,
            [
                "prom_adapter_object_last_sync_timestamp_seconds 1",
                "prom_adapter_object_watch_restarts_total 1",
                "prom_adapter_objects_cached 1",
            ]
        );
    }
}
