# syntax=docker/dockerfile:1
# prepuller's container image: `docker build -t REGISTRY/prepuller:VERSION .`
# Without Docker, `make image` assembles the same image (same paths, entrypoint, user, labels)
# from the locally built binary into an OCI layout; `make test` checks that the two agree.

ARG RUST_VERSION=1.89

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin prepuller \
 && install -D -m 0755 target/release/prepuller /out/prepuller

# Distroless cc: glibc, libgcc and CA certificates, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
LABEL org.opencontainers.image.title="prepuller" \
      org.opencontainers.image.description="Pre-pulls a declared list of images on every Kubernetes node through CRI, and reports per-node readiness" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/prepuller /usr/local/bin/prepuller
# Root, on purpose: the CRI socket it talks to is root-owned (see the README's security notes).
# The DaemonSet still drops every capability and keeps the root filesystem read-only.
USER 0:0
EXPOSE 8080/tcp
ENTRYPOINT ["/usr/local/bin/prepuller"]
CMD ["agent", "--config", "/etc/prepuller/config"]
