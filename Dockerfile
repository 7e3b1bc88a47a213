# The intercept image: the init container of an ECS task (`intercept apply`), or the
# daemon's binary. See docs/deploy-ecs.md.
#
# The build steps are the commands of the README's "Deploying" section: `cargo xtask setup`, then
# `cargo build --release -p intercept --bin intercept`.

# Builder: stable Rust (userspace) + what `cargo xtask setup` adds: the nightly toolchain
# with rust-src (the eBPF programs are built with -Z build-std=core) and bpf-linker, built
# against nightly's own LLVM into target/tools.
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo xtask setup
RUN cargo build --release -p intercept --bin intercept

# Runtime: the binary (the eBPF object is embedded in it) and the tools the iptables and
# nftables backends run.
FROM debian:bookworm-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables nftables ipset \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /src/target/release/intercept /usr/local/bin/intercept
ENTRYPOINT ["/usr/local/bin/intercept"]
CMD ["--help"]
