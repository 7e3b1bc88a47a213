# The intercept image: the init container of an ECS task (`intercept apply`), or the
# daemon's binary. See docs/deploy-ecs.md.
#
# With a registry: `docker build -t intercept .` builds the static (musl) binary from source in
# the builder stage, for the builder's architecture, as `cargo xtask dist` does (`cargo xtask
# setup`, then `cargo build --release --target <arch>-unknown-linux-musl` linked with rust-lld).
# Without one: `cargo xtask image [--arch amd64|arm64]` builds the static binary on the host,
# puts it in the build context as `prebuilt/intercept` (with the licence files), and builds on
# a Debian base of that architecture made from Debian packages (`--build-arg BASE=…
# --build-arg BUILDER=…`), so nothing is pulled.

# The runtime base, and the image the builder stage runs in.
ARG BASE=debian:bookworm-slim
ARG BUILDER=rust:1.95-bookworm

# Builder: stable Rust (userspace) + what `cargo xtask setup` adds: the musl targets, the
# nightly toolchain with rust-src (the eBPF programs are built with -Z build-std=core) and
# bpf-linker, built against nightly's own LLVM into target/tools. A prebuilt binary in the
# context is taken as it is.
FROM ${BUILDER} AS builder
WORKDIR /src
COPY . .
RUN if [ -x prebuilt/intercept ]; then \
        cp prebuilt/intercept /intercept; \
    else \
        target="$(uname -m)-unknown-linux-musl" \
        && cargo xtask setup \
        && CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld \
           CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld \
           cargo build --release --target "$target" -p intercept --bin intercept \
        && cp "target/$target/release/intercept" /intercept; \
    fi

# Runtime: the static binary (the eBPF object is embedded in it) and the tools the iptables and
# nftables backends run (installed unless the base has them).
FROM ${BASE}
RUN if command -v iptables-nft-restore && command -v iptables-legacy-restore && command -v nft \
        && command -v ipset; then :; \
    else \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables nftables ipset \
        && rm -rf /var/lib/apt/lists/*; \
    fi
COPY --from=builder /intercept /usr/local/bin/intercept
# The licences: the agent's (Apache-2.0) and its eBPF programs' (MIT or GPL-2.0).
COPY --from=builder /src/LICENSE /usr/share/doc/intercept/LICENSE
COPY --from=builder /src/ebpf/LICENSE-MIT /usr/share/doc/intercept/LICENSE-ebpf-MIT
COPY --from=builder /src/ebpf/LICENSE-GPL2 /usr/share/doc/intercept/LICENSE-ebpf-GPL2
ENTRYPOINT ["/usr/local/bin/intercept"]
CMD ["--help"]
