# syntax=docker/dockerfile:1
#
# Stagecoach operator image.
#
#   docker build -t stagecoach:dev .
#
# Stages:
#   chef     Rust toolchain + cargo-chef (dependency-caching helper)
#   planner  computes a "recipe" (the manifests and Cargo.lock only) from the full source tree
#   builder  compiles the dependencies from the recipe (a layer that stays cached until
#            Cargo.toml/Cargo.lock change), then the operator itself
#   runtime  distroless glibc image, non-root, nothing but the binary

ARG RUST_VERSION=1.95
ARG CARGO_CHEF_VERSION=0.1.77

FROM rust:${RUST_VERSION}-bookworm AS chef
ARG CARGO_CHEF_VERSION
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only: rebuilt when a manifest or Cargo.lock changes, cached otherwise.
RUN cargo chef cook --release -p stagecoach-operator --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked -p stagecoach-operator --bin stagecoach \
 && install -D -m 0755 target/release/stagecoach /out/stagecoach

# cc-debian12 carries glibc, libgcc and CA certificates, no shell and no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="stagecoach" \
      org.opencontainers.image.description="Kubernetes operator that carries releases through dev, QA, demo and prod" \
      org.opencontainers.image.source="https://github.com/stagecoach-dev/stagecoach" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder --chown=0:0 --chmod=0755 /out/stagecoach /stagecoach
# Numeric so that Kubernetes' runAsNonRoot check can verify it without /etc/passwd.
USER 65532:65532
# 8080: admin (/livez, /readyz, /metrics); 8081: OFREP flag evaluation.
EXPOSE 8080 8081
ENTRYPOINT ["/stagecoach"]
CMD ["run", "--log-format", "json"]
