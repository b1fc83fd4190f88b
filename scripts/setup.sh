#!/usr/bin/env bash
# Installs everything orb8 needs to build and test on a Debian/Ubuntu machine, as root.
# Idempotent: each step checks first, so a re-run takes seconds.
set -euo pipefail

NIGHTLY="$(grep -Po '^channel\s*=\s*"\K[^"]+' "$(dirname "${BASH_SOURCE[0]}")/../ebpf/orb8-ebpf/rust-toolchain.toml")" || { echo "orb8 setup: no channel in ebpf/orb8-ebpf/rust-toolchain.toml" >&2; exit 1; }  # LLVM 22, matching bpf-linker's llvm-22 feature
BPF_LINKER_VERSION="0.13.0"
# nftables: the drop tests' rules (NETFILTER_DROP) inside their own network namespaces.
APT_PACKAGES=(llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev iproute2 iputils-ping procps util-linux busybox tmux nftables)

log() { printf 'orb8 setup: %s\n' "$*" >&2; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] || { log "rustup/cargo not found: install rustup first"; exit 1; }
  export PATH="$HOME/.cargo/bin:$PATH"
fi

if ! rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1; then
  log "installing toolchain $NIGHTLY"
  rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src
elif ! rustup component list --toolchain "$NIGHTLY" --installed 2>/dev/null | grep -q '^rust-src'; then
  rustup component add rust-src --toolchain "$NIGHTLY"
fi

if ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  log "building bpf-linker $BPF_LINKER_VERSION against llvm-22 (about two minutes)"
  LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 LLVM_PREFIX=/usr/lib/llvm-22 \
    cargo install --locked bpf-linker --version "$BPF_LINKER_VERSION" \
    --no-default-features --features llvm-22 --force
fi
# --- Release tooling: `cargo xtask image|dist` and the CI release step (.ci/run). ---
# Static musl agents for amd64 and arm64 (rustc's self-contained musl; Debian's aarch64 gcc as
# the arm64 linker), qemu-user to run the arm64 agent, mingw-w64 to link the Windows client,
# zsh and fish to test completions; zig (below) for ring's C when checking the macOS client.
RELEASE_APT_PACKAGES=(musl-tools gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static
  gcc-mingw-w64-x86-64 python3-pip zsh fish)
RELEASE_TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl x86_64-pc-windows-gnu
  aarch64-apple-darwin x86_64-apple-darwin)
missing=()
for p in "${RELEASE_APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing release tooling: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
installed_targets="$(rustup target list --installed)"
missing=()
for t in "${RELEASE_TARGETS[@]}"; do
  grep -qx "$t" <<<"$installed_targets" || missing+=("$t")
done
if ((${#missing[@]})); then
  log "adding Rust targets: ${missing[*]}"
  rustup target add "${missing[@]}"
fi
# zig, from PyPI's ziglang wheel (Debian has none): its clang and the macOS libc headers it
# ships compile ring's C for `cargo check --target {aarch64,x86_64}-apple-darwin`
# (scripts/zig-cc-macos).
ZIG_VERSION="0.17.1"
ZIG_DIR="$HOME/.local/share/orb8/ziglang-$ZIG_VERSION"
if [ "$("$ZIG_DIR/ziglang/zig" version 2>/dev/null)" != "$ZIG_VERSION" ]; then
  log "installing zig $ZIG_VERSION (PyPI ziglang) into $ZIG_DIR"
  rm -rf "$ZIG_DIR"
  /usr/bin/python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    --target "$ZIG_DIR" "ziglang==$ZIG_VERSION"
fi
# --- end of release tooling ---
log "toolchain ready"
