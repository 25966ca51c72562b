#!/usr/bin/env bash
# Runs the whole test suite: installs what the end-to-end tests need (Prometheus, promtool,
# VictoriaMetrics from Debian; the Datadog Python client in .venv), then checks formatting,
# lints, builds the binaries, runs every test and builds the docs.
#
# Idempotent and non-interactive: safe to rerun, works from any directory, with CI=true and
# no stdin. Environment:
#   PIPELINE_TEST_PATIENCE  multiplies the end-to-end tests' timeouts (e.g. 3 on a slow box)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

# --- System packages -------------------------------------------------------------------------
# kubectl reads the adapter's API in the end-to-end tests (`kubectl get --raw`); Debian ships it
# as kubernetes-client. openssl and curl speak raw HTTPS in the adapter tests (headers kubectl
# won't send).
ensure_programs prometheus=prometheus promtool=prometheus victoria-metrics=victoria-metrics \
    python3=python3,python3-venv kubectl=kubernetes-client openssl=openssl curl=curl

# --- Python venv -----------------------------------------------------------------------------
VENV="$ROOT/.venv"
REQUIREMENTS="$ROOT/tests/py/requirements.txt"
STAMP="$VENV/.requirements.sha256"
want_stamp="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
    step "Creating $VENV"
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV"; then
        # Debian ships venv/ensurepip separately.
        rm -rf "$VENV"
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            python3-venv
        python3 -m venv "$VENV"
    fi
fi
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$want_stamp" ] \
    || ! "$VENV/bin/python" -c 'import datadog, prometheus_client, kubernetes_validate' >/dev/null 2>&1; then
    step "Installing Python test dependencies into .venv"
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
        "$VENV/bin/python" -m pip install -q -r "$REQUIREMENTS"
    echo "$want_stamp" >"$STAMP"
else
    step "Python test dependencies: up to date in .venv"
fi

# --- Rust ------------------------------------------------------------------------------------
export PIPELINE_PYTHON="$VENV/bin/python"
TARGET_DIR="$(target_dir "$ROOT")"
export PIPELINE_BIN_DIR="$TARGET_DIR/release"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build --release (binaries for the end-to-end tests)"
cargo build --release --locked --bins

step "cargo test (unit, property and end-to-end tests)"
cargo test --workspace --release --locked

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "All checks passed"
