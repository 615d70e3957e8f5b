# syntax=docker/dockerfile:1
# Multi-stage build: base → deps (dependencies only, cached apart from the
# sources) → builder (the same `cargo build --release` scripts/start runs) →
# runner (slim, non-root, with a HEALTHCHECK that needs no curl).

FROM rust:1.95-bookworm AS base
WORKDIR /app

FROM base AS deps
COPY Cargo.toml Cargo.lock ./
# Stub targets so only the dependencies compile in this layer.
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > benches/ingest.rs && echo 'fn main() {}' > benches/worker.rs \
 && cargo build --release --locked \
 && rm -rf src benches

FROM deps AS builder
COPY src src
COPY sql sql
COPY benches benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim AS runner
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app
COPY --from=builder /app/target/release/webhook-ingestor /usr/local/bin/webhook-ingestor
USER app
ENV HOST=0.0.0.0 PORT=3000
EXPOSE 3000
# Docker's default seccomp profile may refuse io_uring; the gateway then runs
# on epoll and says so in its start-up log.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 CMD ["webhook-ingestor", "healthcheck"]
ENTRYPOINT ["webhook-ingestor"]
CMD ["serve", "--role", "all"]
