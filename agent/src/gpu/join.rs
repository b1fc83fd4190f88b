//! Joining what the kubelet allocated to what the GPU source sees, and GPU processes to their
//! containers: pure functions over plain data.
//!
//! Device IDs as NVIDIA's device plugin (and DRA driver, through CDI names) hands them to the
//! kubelet:
//!
//! | ID | means |
//! |---|---|
//! | `GPU-<uuid>` | a whole GPU |
//! | `GPU-<uuid>::<n>` | replica `n` of a time-sliced (or MPS-shared) GPU |
//! | `MIG-<uuid>` | a MIG instance (R470+ naming) |
//! | `MIG-GPU-<uuid>/<gi>/<ci>` | a MIG instance (older naming: parent GPU, GPU and compute instance) |
//! | `<index>` | a whole GPU by index (`DEVICE_ID_STRATEGY=index`) |
//!
//! A shared MIG instance is `MIG-<uuid>::<n>`. An ID that names nothing the source sees is kept,
//! with the reason, so that disagreements are shown rather than hidden.

use orb8_proto as pb;
use orb8_proto::podresources as kubelet;

use super::model::{GpuReading, GpuSample};

/// What a device ID names, before it is looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceRef {
    /// A GPU by UUID.
    Gpu(String),
    /// A GPU by index.
    Index(u32),
    /// A MIG instance by its own UUID.
    Mig(String),
    /// A MIG instance by parent GPU UUID, GPU instance and compute instance.
    MigOf {
        /// Parent GPU's UUID (`GPU-...`).
        gpu: String,
        /// GPU instance id.
        gi: u32,
        /// Compute instance id.
        ci: u32,
    },
    /// Something else.
    Unknown,
}

/// Reads a device ID: what it names and, for a shared device, its replica number.
pub fn parse_device_id(id: &str) -> (DeviceRef, Option<u32>) {
    let (base, replica) = match id.rsplit_once("::") {
        Some((b, r)) => match r.parse::<u32>() {
            Ok(n) => (b, Some(n)),
            Err(_) => (id, None),
        },
        None => (id, None),
    };
    let r = if let Some(rest) = base.strip_prefix("MIG-") {
        if rest.starts_with("GPU-") {
            let mut parts = rest.split('/');
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(gpu), Some(gi), Some(ci), None) => match (gi.parse(), ci.parse()) {
                    (Ok(gi), Ok(ci)) => DeviceRef::MigOf {
                        gpu: gpu.to_string(),
                        gi,
                        ci,
                    },
                    _ => DeviceRef::Unknown,
                },
                _ => DeviceRef::Unknown,
            }
        } else {
            DeviceRef::Mig(base.to_string())
        }
    } else if base.starts_with("GPU-") {
        DeviceRef::Gpu(base.to_string())
    } else if !base.is_empty() && base.bytes().all(|b| b.is_ascii_digit()) {
        base.parse().map_or(DeviceRef::Unknown, DeviceRef::Index)
    } else {
        DeviceRef::Unknown
    };
    (r, replica)
}

/// Whether a kubelet resource is an NVIDIA GPU resource (`nvidia.com/gpu`,
/// `nvidia.com/mig-1g.10gb`, `nvidia.com/gpu.shared`).
pub fn is_gpu_resource(name: &str) -> bool {
    name.starts_with("nvidia.com/")
}

/// One allocated device, straight from the kubelet's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocated {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
    /// Resource name, or `dra:<claim namespace>/<claim name>` for a DRA claim.
    pub resource_name: String,
    /// The device ID.
    pub device_id: String,
}

/// Every GPU device in a `List` answer, one per (container, device): device-plugin
/// allocations, and DRA claims whose CDI device names are NVIDIA's (`nvidia.com/gpu=<id>`).
pub fn allocated(list: &kubelet::ListPodResourcesResponse) -> Vec<Allocated> {
    let mut out = Vec::new();
    for pod in &list.pod_resources {
        for c in &pod.containers {
            let at = |resource_name: String, device_id: String| Allocated {
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
                container: c.name.clone(),
                resource_name,
                device_id,
            };
            for d in c
                .devices
                .iter()
                .filter(|d| is_gpu_resource(&d.resource_name))
            {
                for id in &d.device_ids {
                    out.push(at(d.resource_name.clone(), id.clone()));
                }
            }
            for dr in &c.dynamic_resources {
                for cr in &dr.claim_resources {
                    for cdi in &cr.cdi_devices {
                        if let Some((kind, id)) = cdi.name.split_once('=')
                            && is_gpu_resource(kind)
                        {
                            out.push(at(
                                format!("dra:{}/{}", dr.claim_namespace, dr.claim_name),
                                id.to_string(),
                            ));
                        }
                    }
                }
            }
        }
    }
    out
}

/// The GPU device IDs of a `GetAllocatableResources` answer.
pub fn allocatable(resp: &kubelet::AllocatableResourcesResponse) -> Vec<String> {
    resp.devices
        .iter()
        .filter(|d| is_gpu_resource(&d.resource_name))
        .flat_map(|d| d.device_ids.iter().cloned())
        .collect()
}

/// Looks one allocation up in a reading.
pub fn resolve(a: &Allocated, reading: &GpuReading) -> pb::GpuAllocation {
    let (r, replica) = parse_device_id(&a.device_id);
    let mut out = pb::GpuAllocation {
        namespace: a.namespace.clone(),
        pod: a.pod.clone(),
        container: a.container.clone(),
        resource_name: a.resource_name.clone(),
        device_id: a.device_id.clone(),
        replica: replica.unwrap_or(0),
        ..Default::default()
    };
    let whole = |g: &GpuSample, out: &mut pb::GpuAllocation| {
        out.gpu_uuid = g.uuid.clone();
        out.gpu_index = g.index;
    };
    let found = match &r {
        DeviceRef::Gpu(uuid) => reading.gpus.iter().find(|g| &g.uuid == uuid).map(|g| {
            whole(g, &mut out);
        }),
        DeviceRef::Index(i) => reading.gpus.iter().find(|g| g.index == *i).map(|g| {
            whole(g, &mut out);
        }),
        DeviceRef::Mig(uuid) => reading.gpus.iter().find_map(|g| {
            g.mig_devices.iter().find(|m| &m.uuid == uuid).map(|m| {
                whole(g, &mut out);
                out.mig_uuid = m.uuid.clone();
            })
        }),
        DeviceRef::MigOf { gpu, gi, ci } => {
            reading.gpus.iter().find(|g| &g.uuid == gpu).and_then(|g| {
                g.mig_devices
                    .iter()
                    .find(|m| m.gpu_instance_id == *gi && m.compute_instance_id == *ci)
                    .map(|m| {
                        whole(g, &mut out);
                        out.mig_uuid = m.uuid.clone();
                    })
            })
        }
        DeviceRef::Unknown => None,
    };
    let kind = match (&r, replica) {
        (DeviceRef::Mig(_) | DeviceRef::MigOf { .. }, _) => pb::GpuDeviceKind::Mig,
        (DeviceRef::Unknown, _) => pb::GpuDeviceKind::Unspecified,
        (_, Some(_)) => pb::GpuDeviceKind::Shared,
        (_, None) => pb::GpuDeviceKind::Whole,
    };
    out.kind = kind as i32;
    if found.is_none() {
        out.problem = match r {
            DeviceRef::Unknown => "not a GPU device ID orb8 knows".to_string(),
            DeviceRef::Mig(_) | DeviceRef::MigOf { .. } => {
                "no MIG instance of this node's GPUs has this ID".to_string()
            }
            DeviceRef::Gpu(_) | DeviceRef::Index(_) => "no GPU of this node has this ID".into(),
        };
    }
    out
}

/// Where a process lives, as the agent's cgroup resolver reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessPlace {
    /// `/proc/PID/comm`.
    pub comm: String,
    /// Its cgroup path (v2 first, else a v1 hierarchy's).
    pub cgroup: String,
    /// Pod UID, when the cgroup names a pod.
    pub pod_uid: String,
    /// Container ID, when the cgroup names a container.
    pub container_id: String,
}

/// The wire form of a reading, every process placed by `place`.
pub fn gpus(reading: &GpuReading, place: &dyn Fn(u32) -> ProcessPlace) -> Vec<pb::Gpu> {
    reading
        .gpus
        .iter()
        .map(|g| pb::Gpu {
            index: g.index,
            uuid: g.uuid.clone(),
            name: g.name.clone(),
            pci_bus_id: g.pci_bus_id.clone(),
            utilization_gpu_percent: g.utilization_gpu_percent,
            utilization_memory_percent: g.utilization_memory_percent,
            memory_used_bytes: g.memory_used_bytes,
            memory_total_bytes: g.memory_total_bytes,
            power_draw_milliwatts: g.power_draw_milliwatts,
            power_limit_milliwatts: g.power_limit_milliwatts,
            temperature_celsius: g.temperature_celsius,
            sm_clock_mhz: g.sm_clock_mhz,
            memory_clock_mhz: g.memory_clock_mhz,
            ecc_corrected: g.ecc_corrected,
            ecc_uncorrected: g.ecc_uncorrected,
            last_xid: g.last_xid,
            mig_enabled: g.mig_enabled,
            mig_devices: g
                .mig_devices
                .iter()
                .map(|m| pb::MigDevice {
                    index: m.index,
                    uuid: m.uuid.clone(),
                    name: m.name.clone(),
                    gpu_instance_id: m.gpu_instance_id,
                    compute_instance_id: m.compute_instance_id,
                    memory_used_bytes: m.memory_used_bytes,
                    memory_total_bytes: m.memory_total_bytes,
                })
                .collect(),
            processes: g
                .processes
                .iter()
                .map(|p| {
                    let at = place(p.pid);
                    pb::GpuProcess {
                        pid: p.pid,
                        comm: at.comm,
                        memory_used_bytes: p.memory_used_bytes,
                        sm_util_percent: p.sm_util_percent,
                        mem_util_percent: p.mem_util_percent,
                        kind: p.kind.clone(),
                        mig_uuid: p.mig_uuid.clone().unwrap_or_default(),
                        cgroup: at.cgroup,
                        pod_uid: at.pod_uid,
                        container_id: at.container_id,
                    }
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::model::MigSample;

    const G0: &str = "GPU-8f2c1d90-3e5a-4b17-9c2e-5da9abb51763";
    const G1: &str = "GPU-11111111-2222-3333-4444-555555555555";
    const M0: &str = "MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";

    #[test]
    fn device_ids_of_every_naming() {
        assert_eq!(parse_device_id(G0), (DeviceRef::Gpu(G0.into()), None));
        assert_eq!(
            parse_device_id(&format!("{G0}::3")),
            (DeviceRef::Gpu(G0.into()), Some(3))
        );
        assert_eq!(parse_device_id(M0), (DeviceRef::Mig(M0.into()), None));
        assert_eq!(
            parse_device_id(&format!("{M0}::1")),
            (DeviceRef::Mig(M0.into()), Some(1))
        );
        assert_eq!(
            parse_device_id(&format!("MIG-{G0}/7/0")),
            (
                DeviceRef::MigOf {
                    gpu: G0.into(),
                    gi: 7,
                    ci: 0
                },
                None
            )
        );
        assert_eq!(parse_device_id("1"), (DeviceRef::Index(1), None));
        assert_eq!(parse_device_id("1::0"), (DeviceRef::Index(1), Some(0)));
        assert_eq!(parse_device_id("gpu-a"), (DeviceRef::Unknown, None));
        assert_eq!(
            parse_device_id(&format!("MIG-{G0}/x/0")),
            (DeviceRef::Unknown, None)
        );
        assert_eq!(parse_device_id(""), (DeviceRef::Unknown, None));
    }

    fn reading() -> GpuReading {
        GpuReading {
            driver_version: "550.54.15".into(),
            gpus: vec![
                GpuSample {
                    index: 0,
                    uuid: G0.into(),
                    ..Default::default()
                },
                GpuSample {
                    index: 1,
                    uuid: G1.into(),
                    mig_enabled: true,
                    mig_devices: vec![MigSample {
                        index: 0,
                        uuid: M0.into(),
                        gpu_instance_id: 7,
                        compute_instance_id: 0,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
        }
    }

    fn alloc(id: &str) -> Allocated {
        Allocated {
            namespace: "ml".into(),
            pod: "p".into(),
            container: "c".into(),
            resource_name: "nvidia.com/gpu".into(),
            device_id: id.into(),
        }
    }

    #[test]
    fn allocations_resolve_to_gpus_and_mig_instances() {
        let r = reading();
        let a = resolve(&alloc(&format!("{G0}::2")), &r);
        assert_eq!(
            (a.kind, a.gpu_uuid.as_str(), a.gpu_index, a.replica),
            (pb::GpuDeviceKind::Shared as i32, G0, 0, 2)
        );
        assert_eq!(a.problem, "");
        let a = resolve(&alloc(&format!("MIG-{G1}/7/0")), &r);
        assert_eq!(
            (a.kind, a.gpu_uuid.as_str(), a.mig_uuid.as_str()),
            (pb::GpuDeviceKind::Mig as i32, G1, M0)
        );
        let a = resolve(&alloc("1"), &r);
        assert_eq!((a.gpu_uuid.as_str(), a.gpu_index), (G1, 1));
        let a = resolve(&alloc("GPU-00000000-0000-0000-0000-000000000000"), &r);
        assert_eq!(a.gpu_uuid, "");
        assert_eq!(a.problem, "no GPU of this node has this ID");
        let a = resolve(&alloc(&format!("MIG-{G1}/8/0")), &r);
        assert_eq!(a.problem, "no MIG instance of this node's GPUs has this ID");
    }

    #[test]
    fn only_nvidia_resources_and_cdi_names_count() {
        let list = kubelet::ListPodResourcesResponse {
            pod_resources: vec![kubelet::PodResources {
                name: "p".into(),
                namespace: "ml".into(),
                containers: vec![kubelet::ContainerResources {
                    name: "c".into(),
                    devices: vec![
                        kubelet::ContainerDevices {
                            resource_name: "nvidia.com/gpu".into(),
                            device_ids: vec![G0.into(), G1.into()],
                            topology: None,
                        },
                        kubelet::ContainerDevices {
                            resource_name: "example.com/fpga".into(),
                            device_ids: vec!["f0".into()],
                            topology: None,
                        },
                    ],
                    dynamic_resources: vec![kubelet::DynamicResource {
                        class_name: String::new(),
                        claim_name: "claim".into(),
                        claim_namespace: "ml".into(),
                        claim_resources: vec![kubelet::ClaimResource {
                            cdi_devices: vec![
                                kubelet::CdiDevice {
                                    name: "nvidia.com/gpu=1".into(),
                                },
                                kubelet::CdiDevice {
                                    name: "example.com/nic=0".into(),
                                },
                            ],
                        }],
                    }],
                    ..Default::default()
                }],
            }],
        };
        let got: Vec<(String, String)> = allocated(&list)
            .into_iter()
            .map(|a| (a.resource_name, a.device_id))
            .collect();
        assert_eq!(
            got,
            vec![
                ("nvidia.com/gpu".to_string(), G0.to_string()),
                ("nvidia.com/gpu".to_string(), G1.to_string()),
                ("dra:ml/claim".to_string(), "1".to_string()),
            ]
        );
    }
}
