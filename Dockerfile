# syntax=docker/dockerfile:1
#
# warp-auth-api: build with the Rust toolchain on Debian bookworm, run on debian:bookworm-slim
# (same glibc 2.36 in both stages).
#
#   docker build -t warp-auth-api .
#   docker run -p 8000:8000 -e JWT_SECRET="$(openssl rand -base64 48)" -v warp-auth-data:/data warp-auth-api

# ---- build ----------------------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS builder
WORKDIR /build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# 1. Dependencies only, in their own layer: rebuilt only when the manifest (or the benchmark,
#    which the manifest names) changes. The crate's own sources are stubs here.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir -p src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --lib --bin warp-auth-api \
 && rm -rf src

# 2. The real crate: everything the context holds (see .dockerignore), so files compiled in with
#    include_str! (migrations/, schema.sql, assets/, openapi.json) are all there. The sources are
#    touched so cargo never takes the stub build's output for them as up to date.
COPY . .
RUN find src -type f -exec touch {} + \
 && cargo build --release --locked --bin warp-auth-api \
 && install -D -m 0755 target/release/warp-auth-api /out/warp-auth-api

# ---- run ------------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data \
 && chown 10001:10001 /data \
 && chmod 0750 /data

COPY --from=builder /out/warp-auth-api /usr/local/bin/warp-auth-api

# Listen on every interface of the container; keep the SQLite database (and its -wal/-shm files)
# on the volume.
ENV HOST=0.0.0.0 \
    PORT=8000 \
    DATABASE_URL=sqlite:////data/app.db

USER 10001:10001
EXPOSE 8000
VOLUME /data

# The binary asks its own GET /health/ready (the database answers) on loopback, no curl needed.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["warp-auth-api", "healthcheck"]

# Exec form: the server is PID 1 and gets SIGTERM itself; it finishes in-flight requests and exits 0.
ENTRYPOINT ["warp-auth-api"]
CMD ["serve"]
