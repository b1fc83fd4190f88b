//! Generates the `orb8.agent.v1` code at build time with protox (a pure-Rust protobuf compiler),
//! so building orb8 needs no `protoc` on any platform.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(
        [
            "orb8/agent/v1/agent.proto",
            // The kubelet's pod-resources API (package `v1`): the agent is its client, the
            // test kit serves it.
            "k8s/podresources/v1/api.proto",
        ],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        // Rare and large next to the rest of a flow: boxed, so events stay small.
        .boxed(".orb8.agent.v1.Flow.netns_owner")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
