#!/usr/bin/env bash
# CI's release step (.ci/run): everything a tag's release publishes, built and checked from this
# checkout with the tooling scripts/setup.sh installs. The privileged test
# tests/tests/privileged_image.rs then runs the image's amd64 agent on this kernel (`watch` in
# network namespaces it creates) in the test step, which comes after this one.
set -euo pipefail
cd "$(dirname "$0")/.."

t=$SECONDS
part() { echo "::: release: $1 ($((SECONDS - t)) s so far)"; }

part "agent image: static musl agents for amd64 + arm64, OCI layout"
cargo xtask image
cargo xtask image-check --extract target/image/check
target/image/check/orb8-agent-amd64 --version
qemu-aarch64-static target/image/check/orb8-agent-arm64 --version

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

part "client for macOS (checked: linking needs Apple's SDK, the release workflow builds it on macOS)"
cargo check --locked -p kubectl-orb8 --target aarch64-apple-darwin

part "sizes"
ls -l target/image/orb8-agent.oci.tar target/image/check/orb8-agent-* \
  target/*/ship-client/kubectl-orb8 target/*/ship-client/kubectl-orb8.exe target/dist/*.tar.gz
part "done"
