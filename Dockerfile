# syntax=docker/dockerfile:1
# oomlab's node agent image (deploy/kubernetes/daemonset.yaml runs `oomlab serve` from it).
# Multi-stage: the builder has the eBPF toolchain (nightly rust-src, LLVM 22, bpf-linker), the
# runtime image only the binary, which embeds its eBPF object.
#
#   docker build -t ghcr.io/oomlab/oomlab:0.1.0 .

FROM rust:1.95-bookworm AS build
ENV DEBIAN_FRONTEND=noninteractive
# LLVM 22 for bpf-linker (Debian 12's point releases carry it); see shared ENVIRONMENT notes.
# protoc: containerd-client generates its gRPC bindings at build time.
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
RUN rustup toolchain install nightly --profile minimal --component rust-src \
 && LLVM_PREFIX=/usr/lib/llvm-22 PATH=/usr/lib/llvm-22/bin:$PATH \
    cargo install bpf-linker --version 0.13.0 --no-default-features --features llvm-22
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p stress-user --bin oomlab \
 && install -D -m 0755 target/release/oomlab /out/oomlab

# glibc, nothing else: the binary is self-contained apart from libc.
FROM debian:bookworm-slim
COPY --from=build /out/oomlab /usr/local/bin/oomlab
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/oomlab"]
CMD ["serve", "--listen=0.0.0.0:9464", "--allow-remote"]
