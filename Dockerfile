# syntax=docker/dockerfile:1
# The Warden node image: the release `warden` binary (which also serves as the OCI hook the
# Helm chart copies to the host) and the starter rules, on a small Debian base.
#
#   docker build -t warden:0.1.0 .
#
# Stage 1 builds from this repository exactly as a developer machine does: `cargo xtask
# setup` adds rust-src to the eBPF toolchain and builds bpf-linker against that toolchain's
# libLLVM (xtask/src/setup.rs), then the
# release build embeds the eBPF object.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
# The eBPF crate builds with a nightly whose LLVM is 22 (xtask/src/setup.rs checks it).
ARG EBPF_NIGHTLY=nightly-2026-05-19
RUN rustup toolchain install "${EBPF_NIGHTLY}" --profile minimal --component rust-src \
 && rustup toolchain link nightly "$(rustup run "${EBPF_NIGHTLY}" rustc --print sysroot)"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=warden-target \
    cargo xtask setup \
 && cargo build --release --locked -p agent-user \
 && install -D -m 0755 target/release/warden /out/warden

# Stage 2: what runs on the node. Debian slim, because the chart's init container uses
# /bin/sh and install(1) to put the hook on the host; nothing else is added.
FROM debian:bookworm-slim
COPY --from=build /out/warden /usr/local/bin/warden
COPY rules/starter /etc/warden/rules
COPY deploy/warden.yaml /etc/warden/warden.yaml
ENTRYPOINT ["/usr/local/bin/warden"]
CMD ["daemon", "--config", "/etc/warden/warden.yaml"]
