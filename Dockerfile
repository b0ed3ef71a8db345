# Multi-stage build: compile with the Rust toolchain, run on a slim base as a non-root user.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY bench ./bench
COPY vendor ./vendor
RUN cargo build --release --locked --bin ingest-bridge

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/ingest-bridge --create-home ingest
COPY --from=build /src/target/release/ingest-bridge /usr/local/bin/ingest-bridge
COPY config /etc/ingest-bridge
USER ingest
WORKDIR /var/lib/ingest-bridge
ENV INGEST_BRIDGE_CONFIG=/etc/ingest-bridge/ingest-bridge.toml
EXPOSE 2121 2222 50000-50100 9100
# SIGTERM drains: running uploads finish (server.drain_timeout) before the process exits 0.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:9100/healthz || exit 1
ENTRYPOINT ["ingest-bridge"]
CMD ["serve"]
