//! Canonical Kubernetes Quantity strings from Prometheus sample values.
