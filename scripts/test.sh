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

step() { printf '\n==> %s\n' "$*"; }

# Runs a command as root: directly when we are root, else through sudo when it exists.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        if [ -t 0 ]; then sudo "$@"; else sudo -n "$@"; fi
    else
        echo "error: need root (or sudo) to run: $*" >&2
        return 1
    fi
}

# --- System packages -------------------------------------------------------------------------
apt_packages=()
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    apt_packages+=(prometheus)
fi
if ! command -v victoria-metrics >/dev/null 2>&1; then
    apt_packages+=(victoria-metrics)
fi
if ! command -v python3 >/dev/null 2>&1; then
    apt_packages+=(python3 python3-venv)
fi
# kubectl reads the adapter's API in the end-to-end tests (`kubectl get --raw`); Debian
# ships it as kubernetes-client.
if ! command -v kubectl >/dev/null 2>&1; then
    apt_packages+=(kubernetes-client)
fi
# openssl and curl speak raw HTTPS in the adapter tests (headers kubectl won't send).
if ! command -v openssl >/dev/null 2>&1; then
    apt_packages+=(openssl)
fi
if ! command -v curl >/dev/null 2>&1; then
    apt_packages+=(curl)
fi
if [ "${#apt_packages[@]}" -gt 0 ]; then
    step "Installing Debian packages: ${apt_packages[*]}"
    as_root apt-get update -q
    # The prometheus package may try to start its service; without an init system (or with a
    # policy-rc.d that forbids it) that is refused, which is fine: the tests start their own.
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "${apt_packages[@]}"; then
        echo "warning: apt-get install reported an error; checking the programs anyway" >&2
    fi
    for program in prometheus promtool victoria-metrics python3 kubectl openssl curl; do
        if ! command -v "$program" >/dev/null 2>&1; then
            echo "error: $program is still missing after apt-get install" >&2
            exit 1
        fi
    done
else
    step "Packages: prometheus, promtool, victoria-metrics, kubectl, openssl, curl already installed"
fi

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
    || ! "$VENV/bin/python" -c 'import datadog, prometheus_client' >/dev/null 2>&1; then
    step "Installing Python test dependencies into .venv"
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
        "$VENV/bin/python" -m pip install -q -r "$REQUIREMENTS"
    echo "$want_stamp" >"$STAMP"
else
    step "Python test dependencies: up to date in .venv"
fi

# --- Rust ------------------------------------------------------------------------------------
export PIPELINE_PYTHON="$VENV/bin/python"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
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
