#!/usr/bin/env bash
# Runs the pipeline demo on this machine: statsd-bridge (origin detection from a static table
# of 127.0.0.11-14), a real Prometheus scraping it, prom-adapter with certificates made for the
# run, and a traffic generator sending DogStatsD from four fake pods, each from its own
# 127.0.0.x address, with a load that changes every 45 s. Every 5 s it prints the per-pod
# values the HPA reads from the adapter (over HTTPS, with the aggregator's client certificate)
# and the replica count the HPA would choose, until Ctrl-C; then it stops every process it
# started and removes its temporary files.
#
# Installs what it needs when missing (Debian's prometheus, kubernetes-client and curl; through
# sudo when not root), then builds the release binaries. Extra arguments go to the demo:
#   bash scripts/run.sh --duration 60 --refresh 2 --phase 30 --no-clear
#
# Just the bridge, with the repository's pipeline.toml, is the second way to run:
#   cargo build --release -p statsd-bridge && target/release/statsd-bridge --config pipeline.toml
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

ensure_programs prometheus=prometheus kubectl=kubernetes-client curl=curl

step "cargo build --release (statsd-bridge, prom-adapter, demo)"
cargo build --release --locked -p statsd-bridge -p prom-adapter -p pipeline-tests --bins

PIPELINE_BIN_DIR="$(target_dir "$ROOT")/release"
export PIPELINE_BIN_DIR
step "Running the demo (Ctrl-C stops it)"
exec "$PIPELINE_BIN_DIR/demo" "$@"
