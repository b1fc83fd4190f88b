# The agent image for people with Docker: the same content as `cargo xtask image` writes
# without a daemon (target/image/orb8-agent.oci.tar): only the static agent binary at
# /usr/local/bin/orb8-agent, entrypoint the agent, the same labels. Build the binaries first
# (this keeps the image build free of toolchains and network access):
#   cargo xtask image
#   docker buildx build --platform linux/amd64,linux/arm64 -t orb8-agent:dev .
# (or plain `docker build -t orb8-agent:dev .` for this machine's architecture).
FROM scratch
ARG TARGETARCH
ARG VERSION=0.1.0
ARG REVISION=unknown
COPY target/image/linux-${TARGETARCH}/orb8-agent /usr/local/bin/orb8-agent
LABEL org.opencontainers.image.title="orb8-agent" \
      org.opencontainers.image.description="orb8's node agent: eBPF flow and syscall probes served over gRPC" \
      org.opencontainers.image.source="https://github.com/orb8/orb8" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/usr/local/bin/orb8-agent"]
