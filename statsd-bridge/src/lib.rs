//! statsd-bridge
