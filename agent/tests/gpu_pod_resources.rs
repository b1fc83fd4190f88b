//! The GPU join end to end inside the agent, without a GPU: the recorded-sample source plays
//! the fixture's three GPUs (a whole one, a time-sliced one, one in MIG mode), a real tonic
//! server implementing the kubelet's pod-resources v1 answers on a unix socket with the
//! fixture's allocations, and the processes named in the samples are real children of this
//! test, placed by the agent's cgroup resolver through `/proc`.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use orb8_agent::gpu::{GpuConfig, Gpus, recorded::RecordedSource};
use orb8_proto::{GetGpusResponse, GpuAllocation, GpuDeviceKind, GpuProcess};
use orb8_testkit::pod_resources::{
    self, FakeKubelet, GHOST, GPU0, GPU1, GPU2, MIG0, MIG1, gpu_fixture, gpu_readings_json,
};

const GIB: u64 = 1 << 30;

/// Children that hold a pid for the test's length, killed on drop.
struct Sleepers(Vec<Child>);

impl Sleepers {
    fn start(n: usize) -> Sleepers {
        Sleepers(
            (0..n)
                .map(|_| {
                    Command::new("sleep")
                        .arg("60")
                        .spawn()
                        .expect("spawn sleep")
                })
                .collect(),
        )
    }
    fn pids(&self) -> [u32; 4] {
        [0, 1, 2, 3].map(|i| self.0[i].id())
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn samples_file(name: &str, text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("orb8-gpu-{name}-{}.json", std::process::id()));
    std::fs::write(&p, text).expect("write samples");
    p
}

fn own_cgroup() -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("own cgroup");
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| {
            if p == "/" {
                String::new()
            } else {
                p.to_string()
            }
        })
        .unwrap_or_default()
}

async fn get(kubelet: FakeKubelet, name: &str) -> (GetGpusResponse, [u32; 4], Vec<&'static str>) {
    let serving = pod_resources::serve(name, kubelet);
    let sleepers = Sleepers::start(4);
    let pids = sleepers.pids();
    let file = samples_file(name, &gpu_readings_json(pids));
    let gpus = Gpus::detect(&GpuConfig {
        recorded: Some(file.clone()),
        dcgm_exporter: None,
        pod_resources_socket: serving.socket.clone(),
    })
    .expect("recorded source");
    let resp = gpus.get("node-a", Duration::from_secs(2)).await;
    std::fs::remove_file(&file).expect("remove samples");
    (resp, pids, serving.calls())
}

#[allow(clippy::too_many_arguments, reason = "one row of the expected table")]
fn alloc(
    ns: &str,
    pod: &str,
    container: &str,
    resource: &str,
    id: &str,
    kind: GpuDeviceKind,
    gpu: (&str, u32),
    mig: &str,
    replica: u32,
    problem: &str,
) -> GpuAllocation {
    GpuAllocation {
        namespace: ns.into(),
        pod: pod.into(),
        container: container.into(),
        resource_name: resource.into(),
        device_id: id.into(),
        kind: kind as i32,
        gpu_uuid: gpu.0.into(),
        gpu_index: gpu.1,
        mig_uuid: mig.into(),
        replica,
        problem: problem.into(),
    }
}

#[tokio::test]
async fn kubelet_allocations_join_the_gpus_exactly() {
    let (resp, pids, calls) = get(gpu_fixture(), "join").await;
    assert_eq!(calls, vec!["List", "GetAllocatableResources"]);
    assert_eq!(resp.node, "node-a");
    assert!(resp.source.starts_with("recorded "), "{}", resp.source);
    assert_eq!(
        (resp.unavailable.as_str(), resp.pod_resources_error.as_str()),
        ("", "")
    );
    assert_eq!(resp.driver_version, "550.54.15");
    use GpuDeviceKind::{Mig, Shared, Whole};
    let gpu = "nvidia.com/gpu";
    assert_eq!(
        resp.allocations,
        vec![
            alloc(
                "ml",
                "train-0",
                "trainer",
                gpu,
                GPU0,
                Whole,
                (GPU0, 0),
                "",
                0,
                ""
            ),
            alloc(
                "ml",
                "infer-a",
                "server",
                gpu,
                &format!("{GPU1}::0"),
                Shared,
                (GPU1, 1),
                "",
                0,
                ""
            ),
            alloc(
                "ml",
                "infer-b",
                "server",
                gpu,
                &format!("{GPU1}::1"),
                Shared,
                (GPU1, 1),
                "",
                1,
                ""
            ),
            alloc(
                "ml",
                "notebook",
                "jupyter",
                "nvidia.com/mig-1g.10gb",
                MIG0,
                Mig,
                (GPU2, 2),
                MIG0,
                0,
                ""
            ),
            alloc(
                "ops",
                "ghost",
                "x",
                gpu,
                GHOST,
                Whole,
                ("", 0),
                "",
                0,
                "no GPU of this node has this ID"
            ),
        ]
    );
    assert_eq!(
        resp.allocatable_device_ids,
        vec![
            GPU0.to_string(),
            format!("{GPU1}::0"),
            format!("{GPU1}::1"),
            format!("{GPU1}::2"),
            MIG0.to_string(),
            MIG1.to_string()
        ]
    );
    let g: Vec<(u32, &str, usize, usize)> = resp
        .gpus
        .iter()
        .map(|g| {
            (
                g.index,
                g.uuid.as_str(),
                g.mig_devices.len(),
                g.processes.len(),
            )
        })
        .collect();
    assert_eq!(g, vec![(0, GPU0, 0, 1), (1, GPU1, 0, 2), (2, GPU2, 2, 1)]);
    let g0 = &resp.gpus[0];
    assert_eq!(
        (
            g0.utilization_gpu_percent,
            g0.memory_used_bytes,
            g0.memory_total_bytes,
            g0.power_draw_milliwatts,
            g0.power_limit_milliwatts,
            g0.temperature_celsius
        ),
        (
            Some(87),
            20 * GIB,
            80 * GIB,
            Some(251_000),
            Some(400_000),
            Some(61)
        )
    );
    let cgroup = own_cgroup();
    assert_eq!(
        g0.processes[0],
        GpuProcess {
            pid: pids[0],
            comm: "sleep".into(),
            memory_used_bytes: 19 * GIB,
            sm_util_percent: Some(85),
            mem_util_percent: Some(40),
            kind: "compute".into(),
            mig_uuid: String::new(),
            cgroup: cgroup.clone(),
            pod_uid: String::new(),
            container_id: String::new(),
        }
    );
    let on_mig = &resp.gpus[2].processes[0];
    assert_eq!((on_mig.pid, on_mig.mig_uuid.as_str()), (pids[2], MIG0));
}

#[tokio::test]
async fn a_kubelet_without_allocatable_resources_still_gives_allocations() {
    let mut kubelet = gpu_fixture();
    kubelet.allocatable = None;
    let (resp, _, calls) = get(kubelet, "old").await;
    assert_eq!(calls, vec!["List", "GetAllocatableResources"]);
    assert_eq!(resp.allocations.len(), 5);
    assert!(resp.allocatable_device_ids.is_empty());
    assert_eq!(
        resp.pod_resources_error,
        "kubelet pod-resources GetAllocatableResources: GetAllocatableResources (Unimplemented)"
    );
}

#[tokio::test]
async fn no_kubelet_socket_and_no_gpu_source_are_said_not_failed() {
    let socket = std::env::temp_dir().join(format!("orb8-no-kubelet-{}.sock", std::process::id()));
    let gpus = Gpus::none("no NVIDIA driver on this node (test)".into(), &socket);
    assert_eq!(
        gpus.status().summary,
        "no NVIDIA driver on this node (test)"
    );
    assert_eq!(gpus.status().source, "");
    let resp = gpus.get("node-b", Duration::from_secs(1)).await;
    assert_eq!(resp.unavailable, "no NVIDIA driver on this node (test)");
    assert!(resp.gpus.is_empty() && resp.allocations.is_empty());
    assert_eq!(
        resp.pod_resources_error,
        format!("no kubelet pod-resources socket at {}", socket.display())
    );
    let file = samples_file("status", &gpu_readings_json([1, 2, 3, 4]));
    let source = RecordedSource::open(&file).expect("recorded");
    std::fs::remove_file(&file).expect("remove samples");
    let gpus = Gpus::with_source(Arc::new(source), &socket);
    let st = gpus.status();
    assert_eq!((st.source.as_str(), st.gpus), ("recorded", 3));
    assert_eq!(
        st.summary,
        format!("3 GPUs (recorded {}, driver 550.54.15)", file.display())
    );
}
