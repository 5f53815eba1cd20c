# syntax=docker/dockerfile:1
#
# Stagecoach operator image: one static binary (musl) on distroless/static, non-root.
#
#   docker build -t stagecoach:dev \
#     --build-arg VERSION="$(cargo pkgid -p stagecoach-operator | cut -d'#' -f2)" .
#
# VERSION labels the image (org.opencontainers.image.version); when given, the build fails
# unless `stagecoach --version` of the binary just built says the same version.
#
# Stages:
#   chef     Rust toolchain, the musl target and musl-gcc, cargo-chef (dependency caching)
#   planner  computes a "recipe" (the manifests and Cargo.lock only) from the full source tree
#   builder  compiles the dependencies from the recipe (a layer that stays cached until
#            Cargo.toml/Cargo.lock change), then the operator itself, statically linked
#   runtime  distroless static image (CA certificates, tzdata, no libc, no shell), non-root,
#            nothing else but the binary
#
# musl's own malloc is slow, but the operator's global allocator is mimalloc (see
# docs/architecture.md, "Memory"), which the static build keeps.
#
# Image size: about 22 MB. No container engine runs on the development machines, so the
# image itself is not built there; `cargo xtask image --release` builds its binary with the
# flags below: 20.0 MiB, static-pie, stripped (2026-11-29), on distroless/static-debian12
# (about 2 MiB). `cargo xtask test` builds the same target and flags in the dev profile,
# checks the binary is static and says the workspace's version, and lints this file with
# hadolint and the project's rules (xtask/src/image.rs).

ARG RUST_VERSION=1.95
ARG CARGO_CHEF_VERSION=0.1.77

FROM rust:${RUST_VERSION}-bookworm AS chef
ARG CARGO_CHEF_VERSION
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
# jemalloc's settings, compiled into it: the same as .cargo/config.toml's (which says
# why); `cargo xtask image` checks that they agree.
ENV JEMALLOC_SYS_WITH_MALLOC_CONF="background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:1"
# musl-tools: musl-gcc, which compiles the C parts (ring, jemalloc) for the musl target.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools=1.2.3-1 \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "$(uname -m)-unknown-linux-musl" \
 && cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only: rebuilt when a manifest or Cargo.lock changes, cached otherwise.
RUN cargo chef cook --release --target "$(uname -m)-unknown-linux-musl" \
      -p stagecoach-operator --recipe-path recipe.json
COPY . .
ARG VERSION=""
# musl targets link statically (crt-static) by default; the build fails if anything is
# still linked dynamically or the version is not the one asked for.
RUN target="$(uname -m)-unknown-linux-musl" \
 && cargo build --release --locked --target "${target}" -p stagecoach-operator --bin stagecoach \
 && install -D -m 0755 "target/${target}/release/stagecoach" /out/stagecoach \
 && if readelf --dynamic /out/stagecoach | grep -q '(NEEDED)'; then \
      echo "stagecoach is linked dynamically" >&2; exit 1; \
    fi \
 && built="$(/out/stagecoach --version)" \
 && echo "built ${built}, $(du -h /out/stagecoach | cut -f1)" \
 && if [ -n "${VERSION}" ] && [ "${built}" != "stagecoach ${VERSION}" ]; then \
      echo "VERSION=${VERSION}, but the binary says: ${built}" >&2; exit 1; \
    fi

# static-debian12: CA certificates, tzdata and /etc/passwd; no libc, no shell, no package
# manager. The :nonroot tag runs as 65532 by default.
FROM gcr.io/distroless/static-debian12:nonroot AS runtime
ARG VERSION=""
LABEL org.opencontainers.image.title="stagecoach" \
      org.opencontainers.image.description="Kubernetes operator that carries releases through dev, QA, demo and prod" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/stagecoach-dev/stagecoach" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder --chown=0:0 --chmod=0755 /out/stagecoach /stagecoach
# Numeric so that Kubernetes' runAsNonRoot check can verify it without /etc/passwd.
USER 65532:65532
# 8080: admin (/livez, /readyz, /metrics); 8081: OFREP flag evaluation.
EXPOSE 8080 8081
ENTRYPOINT ["/stagecoach"]
CMD ["run", "--log-format", "json"]
