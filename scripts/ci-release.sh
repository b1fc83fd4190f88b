#!/usr/bin/env bash
# The release artifacts, built and checked from this checkout with the tooling scripts/setup.sh
# installs: `bash scripts/ci-release.sh [image] [dist] [clients]` (no argument: all three).
# - image: the agent image (static musl agents for amd64 + arm64, OCI layout), its layout
#   check, both agents' --version (arm64 under qemu-user). CI's release step runs this part;
#   tests/tests/privileged_image.rs then runs the image's amd64 agent on this kernel.
# - dist: client archives (linux/amd64, linux/arm64, windows/amd64), the krew manifest and its
#   check, checksums, the clients' version (arm64 under qemu-user) and completions. About
#   1,400 s of CPU (three fat-LTO client builds): more than CI's time budget allows next to the
#   tests, so CI leaves it to the tag's release workflow.
# - clients: `cargo check` of the client for the krew platforms other than this host's
#   (linux/arm64, windows/amd64, darwin/amd64, darwin/arm64) in one cargo run, a few minutes
#   where `dist`'s builds take twenty: the code compiles for each. For macOS, ring's C is
#   compiled by zig against the macOS headers zig ships (scripts/zig-cc-macos); linking needs
#   Apple's SDK, so the release workflow builds those on macOS. (windows/arm64, MSVC, only
#   there too.)
set -euo pipefail
cd "$(dirname "$0")/.."

parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(image dist clients)
t=$SECONDS
part() { echo "::: release: $1 ($((SECONDS - t)) s so far)"; }

for p in "${parts[@]}"; do
  case "$p" in
    image)
      part "agent image: static musl agents for amd64 + arm64, OCI layout"
      cargo xtask image
      cargo xtask image-check --extract target/image/check
      target/image/check/orb8-agent-amd64 --version
      qemu-aarch64-static target/image/check/orb8-agent-arm64 --version
      ls -l target/image/orb8-agent.oci.tar target/image/check/orb8-agent-*
      ;;
    dist)
      part "client archives (linux/amd64, linux/arm64, windows/amd64) and the krew manifest"
      cargo xtask dist
      cargo xtask krew --check target/dist/krew.yaml
      (cd target/dist && sha256sum -c SHA256SUMS)
      target/x86_64-unknown-linux-musl/ship-client/kubectl-orb8 version
      qemu-aarch64-static target/aarch64-unknown-linux-musl/ship-client/kubectl-orb8 version
      for shell in bash zsh fish powershell; do
        target/x86_64-unknown-linux-musl/ship-client/kubectl-orb8 completion "$shell" >/dev/null
        echo "completion $shell: ok"
      done
      ls -l target/*/ship-client/kubectl-orb8 target/*/ship-client/kubectl-orb8.exe target/dist/*.tar.gz
      ;;
    clients)
      part "client checked for linux/arm64, windows/amd64, darwin/amd64, darwin/arm64"
      CC_aarch64_apple_darwin="$PWD/scripts/zig-cc-macos" \
        CC_x86_64_apple_darwin="$PWD/scripts/zig-cc-macos" \
        cargo check --locked -p kubectl-orb8 --target aarch64-unknown-linux-musl \
        --target x86_64-pc-windows-gnu --target x86_64-apple-darwin --target aarch64-apple-darwin
      ;;
    *)
      echo "ci-release.sh: unknown part '$p' (image, dist, clients)" >&2
      exit 2
      ;;
  esac
done
part "done"
