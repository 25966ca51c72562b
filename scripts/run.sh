#!/usr/bin/env bash
# Runs the pipeline: builds the release binaries, then starts statsd-bridge with the
# repository's pipeline.toml. Extra arguments go to statsd-bridge.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

cargo build --release --locked --bins
exec "${CARGO_TARGET_DIR:-target}/release/statsd-bridge" --config pipeline.toml "$@"
