# syntax=docker/dockerfile:1
# Images of the pipeline's two binaries. There is no published image; build them here:
#   docker build --target statsd-bridge -t statsd-bridge:0.1.0 .
#   docker build --target prom-adapter  -t prom-adapter:0.1.0 .
# Both images hold both binaries (the same layers; only the entrypoint differs), run as
# the non-root user 65532 and need no writable root filesystem. deploy/ and compose/
# refer to them by these names.

# --- Build ----------------------------------------------------------------------------------
# The toolchain rust-toolchain.toml pins (rustup in the image installs it if it differs).
FROM rust:1.95.0-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p statsd-bridge -p prom-adapter --bins \
    && mkdir -p /out \
    && cp target/release/statsd-bridge target/release/prom-adapter /out/

# --- Runtime --------------------------------------------------------------------------------
# Debian slim (the builder's glibc): CA certificates for an HTTPS Prometheus, and coreutils
# for the bridge DaemonSet's init container (`chown` of the socket directory).
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 65532 nonroot \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin nonroot
COPY --from=builder /out/statsd-bridge /out/prom-adapter /usr/local/bin/
# The built-in defaults, for reference (both binaries run without a file).
COPY pipeline.toml /etc/statsd-pipeline/pipeline.toml
USER 65532:65532

FROM runtime AS prom-adapter
# HTTPS: custom.metrics.k8s.io and external.metrics.k8s.io.
EXPOSE 6443
ENTRYPOINT ["/usr/local/bin/prom-adapter"]

# Last, so a plain `docker build .` gives the bridge.
FROM runtime AS statsd-bridge
# StatsD/DogStatsD on UDP and TCP 8125; /metrics, /healthz and /readyz on 9102.
EXPOSE 8125/udp 8125/tcp 9102
ENTRYPOINT ["/usr/local/bin/statsd-bridge"]
