//! Kubernetes label selectors: parsing, matching, and PromQL label matchers.
