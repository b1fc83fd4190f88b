# The agent image for cluster mode. Build the agent first (this keeps the image build free of
# toolchains and network access):
#   cargo build --release -p orb8-agent
#   docker build -t orb8-agent:dev .
FROM debian:bookworm-slim
COPY target/release/orb8-agent /usr/local/bin/orb8-agent
ENTRYPOINT ["/usr/local/bin/orb8-agent"]
