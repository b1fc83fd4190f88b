//! Privileged end-to-end GPU telemetry with the real agent on this GPU-less machine:
//! - without NVML the agent says "no NVIDIA driver on this node" in `status` and `gpu`, and
//!   the same agent still counts flows exactly;
//! - with recorded GPU samples and a fake kubelet (a real pod-resources v1 server on a unix
//!   socket), `kubectl orb8 gpu` shows the kubelet's allocations joined to the GPUs, and the
//!   GPU processes (real processes in cgroups laid out as a container runtime does) placed in
//!   their pods by the agent's cgroup resolver.

use std::process::{Child, Command, Stdio};

use orb8_testkit::pod_resources::{self, GHOST, GPU0, GPU1, GPU2, MIG0, gpu_fixture};
use orb8_testkit::*;
use serde_json::{Value, json};

mod serve_agent;
use serve_agent::ServeAgent;

const TOKEN: &str = "0123456789abcdef-gpu";
const NO_DRIVER: &str = "no NVIDIA driver on this node";

fn client(agent: &ServeAgent, args: &[&str]) -> Child {
    Command::new(workspace_bin("kubectl-orb8"))
        .args([
            "--agent",
            &format!("unix:{}", agent.socket),
            "--token",
            TOKEN,
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kubectl-orb8")
}

fn json_of(agent: &ServeAgent, args: &[&str]) -> Value {
    let out = client_stdout(client(agent, args));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("JSON {out:?}: {e}"))
}

/// Whether this machine has NVML, in which case the agent rightly does not say "no driver".
fn has_nvml() -> bool {
    Command::new("ldconfig")
        .arg("-p")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("libnvidia-ml.so"))
        .unwrap_or(false)
}

#[test]
fn privileged_gpu_without_driver_says_so_and_flows_still_count() {
    require_root();
    if has_nvml() {
        preconditions::skipped(
            "privileged_gpu_without_driver_says_so_and_flows_still_count",
            "this machine has libnvidia-ml.so (run the ignored NVML test instead)",
        );
        return;
    }
    let topo = Topology::new(2);
    let (a, b) = (&topo.pods[0], &topo.pods[1]);
    let agent = ServeAgent::start(&topo.node, "gpu-less", TOKEN);

    let status = json_of(&agent, &["status", "-o", "json"]);
    let gpu = &status[0]["gpu"];
    assert_eq!(gpu["source"], "");
    assert_eq!(gpu["gpus"], 0);
    assert!(
        gpu["summary"].as_str().unwrap().starts_with(NO_DRIVER),
        "{gpu}"
    );
    let text = client_stdout(client(&agent, &["status"]));
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("GPU gpu-less: {NO_DRIVER}"))),
        "{text}"
    );

    let report = json_of(&agent, &["gpu", "-o", "json"]);
    assert_eq!(report["gpus"], json!([]));
    assert_eq!(report["pods"], json!([]));
    let node = &report["nodes"][0];
    assert_eq!(
        (node["node"].as_str(), node["gpus"].as_u64()),
        (Some("gpu-less"), Some(0))
    );
    assert!(
        node["unavailable"].as_str().unwrap().starts_with(NO_DRIVER),
        "{node}"
    );
    assert_eq!(
        node["pod_resources_error"],
        format!(
            "no kubelet pod-resources socket at {}",
            orb8_proto::POD_RESOURCES_SOCKET
        )
    );
    let text = client_stdout(client(&agent, &["gpu"]));
    assert!(
        text.starts_with(&format!("node gpu-less: {NO_DRIVER}")),
        "{text}"
    );

    // The same agent still counts flows exactly.
    wait_attached(&topo.node, &a.host_if);
    let flows = client(
        &agent,
        &[
            "flows",
            "--by",
            "connection",
            "-o",
            "json",
            "--duration",
            "3s",
            "--port",
            "5100",
        ],
    );
    let rx = udp_receiver(&b.ns, &format!("{}:5100", b.ip4), 25);
    udp_send(
        &a.ns,
        &format!("{}:40100", a.ip4),
        &format!("{}:5100", b.ip4),
        25,
        100,
    );
    assert_eq!(rx.join().unwrap(), 25);
    let flows: Vec<Value> = serde_json::from_str(&client_stdout(flows)).expect("flows JSON");
    let ours: Vec<&Value> = flows
        .iter()
        .filter(|f| f["interface"] == a.host_if.as_str() && f["interface_direction"] == "ingress")
        .collect();
    assert_eq!(ours.len(), 1, "{flows:#?}");
    assert_eq!(counts(ours[0]), (25, 25 * (100 + 28)));
}

const UID_TRAIN: &str = "7e57a11e-0000-4000-8000-00000000a000";
const UID_A: &str = "7e57a11e-0000-4000-8000-00000000a001";
const UID_NB: &str = "7e57a11e-0000-4000-8000-00000000a002";

fn cid(n: u8) -> String {
    format!("{:064x}", 0xc0ffee00u64 + u64::from(n))
}

fn row(pod: &Value) -> Value {
    json!([
        pod["namespace"],
        pod["pod"],
        pod["container"],
        pod["gpu"],
        pod["gpu_uuid"],
        pod["kind"],
        pod["device_id"],
        pod["mig_uuid"],
        pod["replica"],
        pod["memory_used_bytes"],
        pod["pids"]
    ])
}

#[test]
fn privileged_gpu_table_joins_kubelet_allocations_and_process_cgroups() {
    require_root();
    let node = NetNs::new("gpun");
    let kubelet = pod_resources::serve("e2e", gpu_fixture());
    let (c0, c1, c2) = (cid(0), cid(1), cid(2));
    let procs = [
        PodProcess::start(Some((UID_TRAIN, &c0))),
        PodProcess::start(Some((UID_A, &c1))),
        PodProcess::start(Some((UID_NB, &c2))),
        PodProcess::start(None),
    ];
    let pids = [0, 1, 2, 3].map(|i| procs[i].pid());
    let samples = std::env::temp_dir().join(format!("{}.json", unique("o8gpu")));
    std::fs::write(&samples, pod_resources::gpu_readings_json(pids)).expect("samples");
    let agent = ServeAgent::start_with(
        &node,
        "gpu-node",
        TOKEN,
        &[
            &format!("--gpu-samples={}", samples.display()),
            &format!("--pod-resources-socket={}", kubelet.socket.display()),
            "--interface=lo",
        ],
    );
    let status = json_of(&agent, &["status", "-o", "json"]);
    assert_eq!(status[0]["gpu"]["source"], "recorded");
    assert_eq!(status[0]["gpu"]["gpus"], 3);

    let report = json_of(&agent, &["gpu", "-o", "json"]);
    std::fs::remove_file(&samples).expect("remove samples");
    assert_eq!(kubelet.calls(), vec!["List", "GetAllocatableResources"]);
    let nodes = &report["nodes"][0];
    assert_eq!(
        (
            nodes["gpus"].as_u64(),
            nodes["unavailable"].as_str(),
            nodes["pod_resources_error"].as_str()
        ),
        (Some(3), Some(""), Some(""))
    );
    let gib = 1u64 << 30;
    let rows: Vec<Value> = report["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .map(row)
        .collect();
    assert_eq!(
        rows,
        vec![
            json!([
                "ml",
                "train-0",
                "trainer",
                0,
                GPU0,
                "whole",
                GPU0,
                "",
                null,
                0,
                []
            ]),
            json!([
                "ml",
                "infer-a",
                "server",
                1,
                GPU1,
                "shared",
                format!("{GPU1}::0"),
                "",
                0,
                0,
                []
            ]),
            json!([
                "ml",
                "infer-b",
                "server",
                1,
                GPU1,
                "shared",
                format!("{GPU1}::1"),
                "",
                1,
                0,
                []
            ]),
            json!([
                "ml",
                "notebook",
                "jupyter",
                2,
                GPU2,
                "mig",
                MIG0,
                MIG0,
                null,
                0,
                []
            ]),
            json!([
                "ops",
                "ghost",
                "x",
                null,
                "",
                "whole",
                GHOST,
                "",
                null,
                0,
                []
            ]),
            // Without a cluster the processes' pods are known by UID (from their cgroups).
            json!([
                "",
                format!("uid:{UID_TRAIN}"),
                "",
                0,
                GPU0,
                "none",
                "",
                "",
                null,
                19 * gib,
                [pids[0]]
            ]),
            json!([
                "",
                format!("uid:{UID_A}"),
                "",
                1,
                GPU1,
                "none",
                "",
                "",
                null,
                4 * gib,
                [pids[1]]
            ]),
            json!([
                "",
                "(no pod)",
                "",
                1,
                GPU1,
                "none",
                "",
                "",
                null,
                2 * gib,
                [pids[3]]
            ]),
            json!([
                "",
                format!("uid:{UID_NB}"),
                "",
                2,
                GPU2,
                "none",
                "",
                MIG0,
                null,
                5 * gib,
                [pids[2]]
            ]),
        ]
    );
    assert_eq!(
        report["disagreements"],
        json!([format!(
            "gpu-node: ops/ghost container x was allocated {GHOST} (nvidia.com/gpu): no GPU of this node has this ID"
        )])
    );
    let gpus: Vec<Value> = report["gpus"]
        .as_array()
        .expect("gpus")
        .iter()
        .map(|g| {
            json!([
                g["index"],
                g["uuid"],
                g["model"],
                g["utilization_percent"],
                g["power_draw_milliwatts"],
                g["pods"]
            ])
        })
        .collect();
    assert_eq!(
        gpus,
        vec![
            json!([
                0,
                GPU0,
                "NVIDIA A100-SXM4-80GB",
                87,
                251_000,
                ["ml/train-0", format!("uid:{UID_TRAIN}")]
            ]),
            json!([
                1,
                GPU1,
                "NVIDIA L4",
                30,
                40_000,
                ["ml/infer-a", "ml/infer-b", format!("uid:{UID_A}")]
            ]),
            json!([
                2,
                GPU2,
                "NVIDIA H100 80GB HBM3",
                null,
                120_000,
                ["ml/notebook", format!("uid:{UID_NB}")]
            ]),
            json!([2, MIG0, "MIG 1g.10gb", null, null, ["ml/notebook"]]),
            json!([
                2,
                "MIG-4e4e4e4e-4444-4444-8444-444444444444",
                "MIG 1g.10gb",
                null,
                null,
                []
            ]),
        ]
    );
    drop(procs);
}
