//! A test double for the kubelet's pod-resources API (v1): a real tonic server implementing
//! `v1.PodResourcesLister` on a unix socket, answering with fixed allocations; and the GPU
//! fixture the GPU tests share ([`gpu_fixture`], [`gpu_readings_json`]): whole GPUs, a MIG
//! instance, time-sliced shares, an ID no GPU has, and a non-GPU device.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use orb8_proto::podresources::pod_resources_lister_server::{
    PodResourcesLister, PodResourcesListerServer,
};
use orb8_proto::podresources::{
    AllocatableResourcesRequest, AllocatableResourcesResponse, ContainerDevices,
    ContainerResources, GetPodResourcesRequest, GetPodResourcesResponse, ListPodResourcesRequest,
    ListPodResourcesResponse, PodResources,
};
use tonic::{Request, Response, Status};

/// What the fake kubelet answers.
#[derive(Clone, Debug, Default)]
pub struct FakeKubelet {
    /// The `List` answer.
    pub list: ListPodResourcesResponse,
    /// The `GetAllocatableResources` answer; `None`: `Unimplemented`, as older kubelets answer.
    pub allocatable: Option<AllocatableResourcesResponse>,
}

#[derive(Clone)]
struct Service(Arc<FakeKubelet>, Arc<Mutex<Vec<&'static str>>>);

impl Service {
    fn record(&self, rpc: &'static str) {
        if let Ok(mut c) = self.1.lock() {
            c.push(rpc);
        }
    }
}

#[tonic::async_trait]
impl PodResourcesLister for Service {
    async fn list(
        &self,
        _: Request<ListPodResourcesRequest>,
    ) -> Result<Response<ListPodResourcesResponse>, Status> {
        self.record("List");
        Ok(Response::new(self.0.list.clone()))
    }

    async fn get_allocatable_resources(
        &self,
        _: Request<AllocatableResourcesRequest>,
    ) -> Result<Response<AllocatableResourcesResponse>, Status> {
        self.record("GetAllocatableResources");
        self.0
            .allocatable
            .clone()
            .map(Response::new)
            .ok_or_else(|| Status::unimplemented("GetAllocatableResources"))
    }

    async fn get(
        &self,
        req: Request<GetPodResourcesRequest>,
    ) -> Result<Response<GetPodResourcesResponse>, Status> {
        self.record("Get");
        let r = req.get_ref();
        self.0
            .list
            .pod_resources
            .iter()
            .find(|p| p.name == r.pod_name && p.namespace == r.pod_namespace)
            .map(|p| {
                Response::new(GetPodResourcesResponse {
                    pod_resources: Some(p.clone()),
                })
            })
            .ok_or_else(|| Status::not_found("no such pod"))
    }
}

/// A fake kubelet being served; dropping it stops the server and removes the socket.
pub struct Serving {
    /// The socket.
    pub socket: PathBuf,
    calls: Arc<Mutex<Vec<&'static str>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Serving {
    /// The RPCs called so far, in order.
    pub fn calls(&self) -> Vec<&'static str> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
        if let Some(dir) = self.socket.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Serves `kubelet` on `kubelet.sock` in a fresh directory under the temp dir (named with
/// `name`, the process id and a counter, so parallel tests never share one).
pub fn serve(name: &str, kubelet: FakeKubelet) -> Serving {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("orb8-kubelet-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("socket directory");
    let socket = dir.join("kubelet.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind kubelet socket");
    listener.set_nonblocking(true).expect("nonblocking");
    let calls: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let service = Service(Arc::new(kubelet), calls.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test runtime");
        rt.block_on(async move {
            let l = tokio::net::UnixListener::from_std(listener).expect("tokio listener");
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(l);
            let router = tonic::transport::Server::builder()
                .add_service(PodResourcesListerServer::new(service));
            tokio::select! {
                r = router.serve_with_incoming(incoming) => r.expect("fake kubelet serves"),
                _ = stopped => {}
            }
        });
    });
    Serving {
        socket,
        calls,
        stop: Some(stop),
        thread: Some(thread),
    }
}

/// GPU 0: a whole GPU.
pub const GPU0: &str = "GPU-0a0a0a0a-0000-4000-8000-000000000000";
/// GPU 1: time-sliced (shares `::0`, `::1`, `::2`).
pub const GPU1: &str = "GPU-1b1b1b1b-1111-4111-8111-111111111111";
/// GPU 2: in MIG mode with two instances.
pub const GPU2: &str = "GPU-2c2c2c2c-2222-4222-8222-222222222222";
/// GPU 2's first MIG instance (GPU instance 7, compute instance 0).
pub const MIG0: &str = "MIG-3d3d3d3d-3333-4333-8333-333333333333";
/// GPU 2's second MIG instance (GPU instance 8, compute instance 0).
pub const MIG1: &str = "MIG-4e4e4e4e-4444-4444-8444-444444444444";
/// An ID the kubelet allocated that no GPU of the node has.
pub const GHOST: &str = "GPU-ffffffff-ffff-4fff-8fff-ffffffffffff";

fn container(name: &str, resource: &str, ids: &[&str]) -> ContainerResources {
    ContainerResources {
        name: name.into(),
        devices: vec![ContainerDevices {
            resource_name: resource.into(),
            device_ids: ids.iter().map(|s| s.to_string()).collect(),
            topology: None,
        }],
        ..Default::default()
    }
}

fn pod(namespace: &str, name: &str, containers: Vec<ContainerResources>) -> PodResources {
    PodResources {
        name: name.into(),
        namespace: namespace.into(),
        containers,
    }
}

/// The kubelet of the GPU fixture: `ml/train-0` has GPU 0 whole; `ml/infer-a` and
/// `ml/infer-b` have shares 0 and 1 of GPU 1; `ml/notebook` has MIG instance 0 of GPU 2;
/// `ops/ghost` has an ID no GPU has; `ops/fpga` has a non-GPU device; `ops/web` has nothing.
pub fn gpu_fixture() -> FakeKubelet {
    let shared = |n| format!("{GPU1}::{n}");
    FakeKubelet {
        list: ListPodResourcesResponse {
            pod_resources: vec![
                pod(
                    "ml",
                    "train-0",
                    vec![
                        container("trainer", "nvidia.com/gpu", &[GPU0]),
                        ContainerResources {
                            name: "sidecar".into(),
                            ..Default::default()
                        },
                    ],
                ),
                pod(
                    "ml",
                    "infer-a",
                    vec![container("server", "nvidia.com/gpu", &[&shared(0)])],
                ),
                pod(
                    "ml",
                    "infer-b",
                    vec![container("server", "nvidia.com/gpu", &[&shared(1)])],
                ),
                pod(
                    "ml",
                    "notebook",
                    vec![container("jupyter", "nvidia.com/mig-1g.10gb", &[MIG0])],
                ),
                pod(
                    "ops",
                    "ghost",
                    vec![container("x", "nvidia.com/gpu", &[GHOST])],
                ),
                pod(
                    "ops",
                    "fpga",
                    vec![container("f", "example.com/fpga", &["fpga-0"])],
                ),
                pod("ops", "web", vec![ContainerResources::default()]),
            ],
        },
        allocatable: Some(AllocatableResourcesResponse {
            devices: vec![
                ContainerDevices {
                    resource_name: "nvidia.com/gpu".into(),
                    device_ids: vec![GPU0.into(), shared(0), shared(1), shared(2)],
                    topology: None,
                },
                ContainerDevices {
                    resource_name: "nvidia.com/mig-1g.10gb".into(),
                    device_ids: vec![MIG0.into(), MIG1.into()],
                    topology: None,
                },
                ContainerDevices {
                    resource_name: "example.com/fpga".into(),
                    device_ids: vec!["fpga-0".into()],
                    topology: None,
                },
            ],
            ..Default::default()
        }),
    }
}

/// A recorded GPU reading (orb8-agent's `--gpu-samples` format) of the fixture's three GPUs,
/// with processes `pids` = (on GPU 0, on GPU 1, on GPU 2's MIG instance 0, on GPU 1 again).
pub fn gpu_readings_json(pids: [u32; 4]) -> String {
    let [p0, p1, p2, p3] = pids;
    let gib = 1u64 << 30;
    serde_json::json!({
        "driver_version": "550.54.15",
        "gpus": [
            {
                "index": 0, "uuid": GPU0, "name": "NVIDIA A100-SXM4-80GB",
                "pci_bus_id": "00000000:07:00.0",
                "utilization_gpu_percent": 87, "utilization_memory_percent": 41,
                "memory_used_bytes": 20 * gib, "memory_total_bytes": 80 * gib,
                "power_draw_milliwatts": 251_000, "power_limit_milliwatts": 400_000,
                "temperature_celsius": 61, "sm_clock_mhz": 1410, "memory_clock_mhz": 1593,
                "ecc_corrected": 0, "ecc_uncorrected": 0,
                "processes": [
                    {"pid": p0, "memory_used_bytes": 19 * gib, "sm_util_percent": 85,
                     "mem_util_percent": 40}
                ]
            },
            {
                "index": 1, "uuid": GPU1, "name": "NVIDIA L4",
                "utilization_gpu_percent": 30, "utilization_memory_percent": 10,
                "memory_used_bytes": 6 * gib, "memory_total_bytes": 24 * gib,
                "power_draw_milliwatts": 40_000, "power_limit_milliwatts": 72_000,
                "temperature_celsius": 50,
                "processes": [
                    {"pid": p1, "memory_used_bytes": 4 * gib, "sm_util_percent": 25},
                    {"pid": p3, "memory_used_bytes": 2 * gib}
                ]
            },
            {
                "index": 2, "uuid": GPU2, "name": "NVIDIA H100 80GB HBM3",
                "memory_used_bytes": 5 * gib, "memory_total_bytes": 80 * gib,
                "power_draw_milliwatts": 120_000, "power_limit_milliwatts": 700_000,
                "mig_enabled": true,
                "mig_devices": [
                    {"index": 0, "uuid": MIG0, "name": "1g.10gb", "gpu_instance_id": 7,
                     "compute_instance_id": 0, "memory_used_bytes": 5 * gib,
                     "memory_total_bytes": 10 * gib},
                    {"index": 1, "uuid": MIG1, "name": "1g.10gb", "gpu_instance_id": 8,
                     "compute_instance_id": 0, "memory_total_bytes": 10 * gib}
                ],
                "processes": [
                    {"pid": p2, "memory_used_bytes": 5 * gib, "mig_uuid": MIG0}
                ]
            }
        ]
    })
    .to_string()
}
