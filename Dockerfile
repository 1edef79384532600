# oomtrace container image: one static binary on an empty base.
#
# Build it with `cargo xtask image` (xtask/src/image.rs): for amd64 and arm64
# it builds the static musl agent (cross compiling the other architecture with
# Debian's gcc; the eBPF object inside is built for the same architecture),
# checks it, builds one image per architecture from this file with podman
# (`--platform linux/<arch> --build-arg BINARY=oomtrace`), tagged
# `<tag>-<arch>`, and the manifest list `<tag>`
# (default ghcr.io/oomtrace/oomtrace:0.1.0). Then publish with
#   podman manifest push --all ghcr.io/oomtrace/oomtrace:0.1.0 docker://ghcr.io/oomtrace/oomtrace:0.1.0
#
# No builder stage: base images come from container registries, which the
# build machines cannot reach (only the package registries). The binary is
# built on the host, statically linked, and copied in, so the image build
# needs no network at all. By hand, for this machine's architecture:
#
#   rustup target add x86_64-unknown-linux-musl
#   cargo build --release --target x86_64-unknown-linux-musl --package oomtrace
#   podman build --network none --pull=never -t oomtrace:0.1.0 .
#
# Nothing else is needed inside: the eBPF object is embedded in the binary,
# and with --kube the API server's CA comes from the service account mount.
FROM scratch
ARG BINARY=target/x86_64-unknown-linux-musl/release/oomtrace
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="oomtrace" \
      org.opencontainers.image.description="eBPF OOM-kill tracer for Kubernetes nodes" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
COPY ${BINARY} /oomtrace
# uid 0 without capabilities beyond the ones the pod grants (BPF, PERFMON,
# SYSLOG): see deploy/daemonset.yaml for why root is needed.
USER 0
ENTRYPOINT ["/oomtrace"]
