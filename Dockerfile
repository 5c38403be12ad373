# syntax=docker/dockerfile:1
# The `mystira-users` binary in a small runtime image (deploy/compose.yaml runs every service of
# the system from it). Not built on the CI machine, which has no Docker daemon: see
# docs/service.md, "Deployment".
#
#   docker build -t mystira-users .
#   docker run --rm -e DATABASE_URL=postgres://... -e COSMOS_ENDPOINT=... -e COSMOS_KEY=... \
#     -e MYSTIRA_JWKS_URL=https://TENANT/.well-known/jwks.json -e MYSTIRA_JWT_ISSUER=https://TENANT/ \
#     -e MYSTIRA_JWT_AUDIENCE=https://API -p 8080:8080 mystira-users serve
#
# `serve` listens on every interface of the container, so it starts only in production (the
# identity provider's keys configured, as above) or when told that development mode on a network
# is meant: `mystira-users serve --allow-dev-on-network` (deploy/compose.yaml does). With neither
# it refuses to start and says so (docs/security.md).

# --- build: the release binary, from the committed Cargo.lock ------------------------------------
# the toolchain the tests run on (the workspace needs 1.94 or newer)
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
# aws-lc-sys (rustls's crypto provider) compiles C; cmake is its fallback build on some targets
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates
# the caches keep the registry and the build between image builds; the binary is copied out of
# the cached target directory in the same step, since the cache is not part of the image
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p mystira-users \
 && cp target/release/mystira-users /usr/local/bin/mystira-users

# --- runtime ------------------------------------------------------------------------------------
# No PostgreSQL client library: sqlx speaks the protocol itself. No PostgreSQL server either, so
# the self-started private cluster is not available here: give DATABASE_URL (or --database-url).
FROM debian:bookworm-slim AS runtime
# ca-certificates: the roots for a real Azure Cosmos DB account's TLS
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/mystira-users mystira \
 && mkdir -p /var/lib/mystira-users/keys \
 && chown -R mystira:mystira /var/lib/mystira-users
COPY --from=build /usr/local/bin/mystira-users /usr/local/bin/mystira-users
# the bundled sample, for `migrate` with no source and `cosmos import --export-dir examples/sample`
COPY examples/sample /app/examples/sample
WORKDIR /app
USER mystira:mystira
# serve listens on every interface of the container (its default, 127.0.0.1, is unreachable
# from outside it); development mode refuses a non-loopback address without
# --allow-dev-on-network
ENV MYSTIRA_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["mystira-users"]
CMD ["serve"]
