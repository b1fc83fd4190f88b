//! The GPU model: what each node's agent answered to `GetGpus`, joined into one report —
//! GPUs (with their MIG instances), pods and the devices the kubelet gave them, nodes without
//! GPUs, and every disagreement between the kubelet's allocations and the processes actually
//! on the GPUs. Pure: data in, data out; names for pod UIDs come from the caller.
//!
//! Two independent sources meet here: the kubelet says which container was *given* a device
//! (pod-resources, by namespace/name), the GPU driver and the process's cgroup say which
//! container *uses* it (by pod UID and container ID). Where they differ, the report says so.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use orb8_proto::{GetGpusResponse, GpuDeviceKind};
use serde::Serialize;

/// A pod as the API server names it, for a pod UID found in a cgroup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodName {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Container names by container ID (without the runtime prefix).
    pub containers: HashMap<String, String>,
}

/// Pod names by UID (cluster mode), or none (local and direct mode: UIDs are shown).
pub type PodNames = HashMap<String, PodName>;

/// The pod column of a GPU process that runs in no pod (a host process).
pub const NO_POD: &str = "(no pod)";

/// Which pods' rows to keep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFilter {
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only this pod (in `namespace`).
    pub pod: Option<String>,
}

impl PodFilter {
    fn keeps(&self, namespace: &str, pod: &str) -> bool {
        if pod == NO_POD {
            return self.pod.is_none() && self.namespace.is_none();
        }
        self.namespace.as_deref().is_none_or(|n| n == namespace)
            && self.pod.as_deref().is_none_or(|p| p == pod)
    }
}

/// One GPU, or one MIG instance of it (`mig` set).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GpuRow {
    /// Node (the agent's display name).
    pub node: String,
    /// NVML index of the GPU.
    pub index: u32,
    /// `GPU-<uuid>`, or `MIG-<uuid>` for a MIG instance.
    pub uuid: String,
    /// The model, or the MIG profile.
    pub model: String,
    /// For a MIG instance: its parent GPU's UUID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mig_of: Option<String>,
    /// GPU utilization, percent.
    pub utilization_percent: Option<u32>,
    /// Memory utilization, percent.
    pub memory_utilization_percent: Option<u32>,
    /// Memory used, bytes.
    pub memory_used_bytes: u64,
    /// Memory, bytes.
    pub memory_total_bytes: u64,
    /// Power draw, milliwatts.
    pub power_draw_milliwatts: Option<u32>,
    /// Power limit, milliwatts.
    pub power_limit_milliwatts: Option<u32>,
    /// Temperature, °C.
    pub temperature_celsius: Option<u32>,
    /// SM clock, MHz.
    pub sm_clock_mhz: Option<u32>,
    /// Memory clock, MHz.
    pub memory_clock_mhz: Option<u32>,
    /// Volatile uncorrected ECC errors.
    pub ecc_uncorrected: Option<u64>,
    /// Last XID error.
    pub last_xid: Option<u64>,
    /// Pods allocated it or running on it (`namespace/name`, or `uid:<uid>` without names).
    pub pods: Vec<String>,
}

/// One container's use of one device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodRow {
    /// Node.
    pub node: String,
    /// Namespace (empty when only the UID is known).
    pub namespace: String,
    /// Pod name, or `uid:<uid>` when no name is known.
    pub pod: String,
    /// Container name (empty when unknown).
    pub container: String,
    /// The GPU's index, when the device is on a GPU of the node.
    pub gpu: Option<u32>,
    /// The GPU's UUID (empty when the device names none).
    pub gpu_uuid: String,
    /// `whole`, `mig`, `shared` or `none` (a process on a GPU without an allocation).
    pub kind: &'static str,
    /// The device as the kubelet named it (empty for `none`).
    pub device_id: String,
    /// The MIG instance's UUID and profile.
    pub mig_uuid: String,
    /// The MIG profile (`1g.10gb`), for `mig`.
    pub mig_profile: String,
    /// The replica number, for `shared`.
    pub replica: Option<u32>,
    /// GPU memory its processes on that device use, bytes.
    pub memory_used_bytes: u64,
    /// Sum of its processes' SM utilization, where the driver gives it.
    pub sm_util_percent: Option<u32>,
    /// Its processes on that device (host PIDs).
    pub pids: Vec<u32>,
}

/// A node's GPU source, or why it has none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeRow {
    /// Node.
    pub node: String,
    /// Where the numbers come from (empty: none).
    pub source: String,
    /// GPUs on it.
    pub gpus: usize,
    /// Why there are no GPU numbers, when there are none.
    pub unavailable: String,
    /// Why the kubelet's allocations could not be read, when they could not.
    pub pod_resources_error: String,
}

/// Everything `kubectl orb8 gpu` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GpuReport {
    /// Every node asked, with its source.
    pub nodes: Vec<NodeRow>,
    /// GPUs and their MIG instances.
    pub gpus: Vec<GpuRow>,
    /// Pods' devices and use.
    pub pods: Vec<PodRow>,
    /// Where the kubelet and the GPUs disagree, one sentence each.
    pub disagreements: Vec<String>,
}

fn kind_name(kind: i32) -> &'static str {
    match GpuDeviceKind::try_from(kind) {
        Ok(GpuDeviceKind::Whole) => "whole",
        Ok(GpuDeviceKind::Mig) => "mig",
        Ok(GpuDeviceKind::Shared) => "shared",
        _ => "unknown",
    }
}

fn pod_label(namespace: &str, pod: &str) -> String {
    if namespace.is_empty() {
        pod.to_string()
    } else {
        format!("{namespace}/{pod}")
    }
}

/// Joins the agents' answers (`node` display name, answer) into one report.
pub fn report(
    answers: &[(String, GetGpusResponse)],
    names: &PodNames,
    filter: &PodFilter,
) -> GpuReport {
    let mut out = GpuReport::default();
    for (node, resp) in answers {
        out.nodes.push(NodeRow {
            node: node.clone(),
            source: resp.source.clone(),
            gpus: resp.gpus.len(),
            unavailable: resp.unavailable.clone(),
            pod_resources_error: resp.pod_resources_error.clone(),
        });
        join_node(node, resp, names, filter, &mut out);
    }
    out
}

fn join_node(
    node: &str,
    resp: &GetGpusResponse,
    names: &PodNames,
    filter: &PodFilter,
    out: &mut GpuReport,
) {
    let mig_profile: HashMap<&str, &str> = resp
        .gpus
        .iter()
        .flat_map(|g| {
            g.mig_devices
                .iter()
                .map(|m| (m.uuid.as_str(), m.name.as_str()))
        })
        .collect();
    let first_pod_row = out.pods.len();
    let mut exclusive: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for a in &resp.allocations {
        let who = format!(
            "{} container {}",
            pod_label(&a.namespace, &a.pod),
            a.container
        );
        if !a.problem.is_empty() {
            out.disagreements.push(format!(
                "{node}: {who} was allocated {} ({}): {}",
                a.device_id, a.resource_name, a.problem
            ));
        }
        if a.kind != GpuDeviceKind::Shared as i32 {
            exclusive.entry(&a.device_id).or_default().push(who);
        }
        out.pods.push(PodRow {
            node: node.to_string(),
            namespace: a.namespace.clone(),
            pod: a.pod.clone(),
            container: a.container.clone(),
            gpu: (!a.gpu_uuid.is_empty()).then_some(a.gpu_index),
            gpu_uuid: a.gpu_uuid.clone(),
            kind: kind_name(a.kind),
            device_id: a.device_id.clone(),
            mig_uuid: a.mig_uuid.clone(),
            mig_profile: mig_profile
                .get(a.mig_uuid.as_str())
                .map(|s| s.to_string())
                .unwrap_or_default(),
            replica: (a.kind == GpuDeviceKind::Shared as i32).then_some(a.replica),
            memory_used_bytes: 0,
            sm_util_percent: None,
            pids: Vec::new(),
        });
    }
    for (id, holders) in exclusive.iter().filter(|(_, h)| h.len() > 1) {
        out.disagreements.push(format!(
            "{node}: {id} is not shared but was allocated to {} containers: {}",
            holders.len(),
            holders.join(", ")
        ));
    }
    let mut gpu_pods: HashMap<&str, BTreeSet<String>> = HashMap::new();
    for g in &resp.gpus {
        for p in &g.processes {
            let name = names.get(&p.pod_uid);
            let (namespace, pod, container) = match name {
                Some(n) => (
                    n.namespace.clone(),
                    n.name.clone(),
                    n.containers
                        .get(&p.container_id)
                        .cloned()
                        .unwrap_or_default(),
                ),
                None if p.pod_uid.is_empty() => (String::new(), String::new(), String::new()),
                None => (String::new(), format!("uid:{}", p.pod_uid), String::new()),
            };
            let what = format!("process {} ({})", p.pid, p.comm);
            let on = if p.mig_uuid.is_empty() {
                format!("GPU {} ({})", g.index, g.uuid)
            } else {
                format!("GPU {} MIG instance {}", g.index, p.mig_uuid)
            };
            if pod.is_empty() {
                let holders: Vec<String> = out.pods[first_pod_row..]
                    .iter()
                    .filter(|r| r.gpu_uuid == g.uuid && matches!(r.kind, "whole" | "mig"))
                    .filter(|r| p.mig_uuid.is_empty() || r.mig_uuid == p.mig_uuid)
                    .map(|r| pod_label(&r.namespace, &r.pod))
                    .collect();
                if !holders.is_empty() {
                    out.disagreements.push(format!(
                        "{node}: {what}, in no pod, uses {on}, allocated to {}",
                        holders.join(", ")
                    ));
                }
            }
            let pod = if pod.is_empty() {
                NO_POD.to_string()
            } else {
                gpu_pods
                    .entry(g.uuid.as_str())
                    .or_default()
                    .insert(pod_label(&namespace, &pod));
                pod
            };
            let row = out.pods[first_pod_row..].iter_mut().find(|r| {
                r.namespace == namespace
                    && r.pod == pod
                    && (container.is_empty() || r.container == container)
                    && r.gpu_uuid == g.uuid
                    && (r.mig_uuid.is_empty() || r.mig_uuid == p.mig_uuid)
            });
            let row = match row {
                Some(r) => r,
                None => {
                    if name.is_some() {
                        out.disagreements.push(format!(
                            "{node}: {what} of {}{} uses {on}, but the kubelet allocated it no device there",
                            pod_label(&namespace, &pod),
                            if container.is_empty() {
                                String::new()
                            } else {
                                format!(" container {container}")
                            }
                        ));
                    }
                    out.pods.push(PodRow {
                        node: node.to_string(),
                        namespace: namespace.clone(),
                        pod: pod.clone(),
                        container: container.clone(),
                        gpu: Some(g.index),
                        gpu_uuid: g.uuid.clone(),
                        kind: "none",
                        device_id: String::new(),
                        mig_uuid: p.mig_uuid.clone(),
                        mig_profile: mig_profile
                            .get(p.mig_uuid.as_str())
                            .map(|s| s.to_string())
                            .unwrap_or_default(),
                        replica: None,
                        memory_used_bytes: 0,
                        sm_util_percent: None,
                        pids: Vec::new(),
                    });
                    out.pods.last_mut().expect("just pushed")
                }
            };
            row.memory_used_bytes += p.memory_used_bytes;
            if let Some(u) = p.sm_util_percent {
                row.sm_util_percent = Some(row.sm_util_percent.unwrap_or(0) + u);
            }
            row.pids.push(p.pid);
        }
    }
    for g in &resp.gpus {
        let allocated = |mig: Option<&str>| -> BTreeSet<String> {
            out.pods[first_pod_row..]
                .iter()
                .filter(|r| r.gpu_uuid == g.uuid && r.kind != "none")
                .filter(|r| mig.is_none_or(|m| r.mig_uuid == m))
                .map(|r| pod_label(&r.namespace, &r.pod))
                .collect()
        };
        let mut pods = allocated(None);
        pods.extend(gpu_pods.get(g.uuid.as_str()).into_iter().flatten().cloned());
        let row = GpuRow {
            node: node.to_string(),
            index: g.index,
            uuid: g.uuid.clone(),
            model: g.name.clone(),
            mig_of: None,
            utilization_percent: g.utilization_gpu_percent,
            memory_utilization_percent: g.utilization_memory_percent,
            memory_used_bytes: g.memory_used_bytes,
            memory_total_bytes: g.memory_total_bytes,
            power_draw_milliwatts: g.power_draw_milliwatts,
            power_limit_milliwatts: g.power_limit_milliwatts,
            temperature_celsius: g.temperature_celsius,
            sm_clock_mhz: g.sm_clock_mhz,
            memory_clock_mhz: g.memory_clock_mhz,
            ecc_uncorrected: g.ecc_uncorrected,
            last_xid: g.last_xid,
            pods: pods.into_iter().collect(),
        };
        let migs: Vec<GpuRow> = g
            .mig_devices
            .iter()
            .map(|m| GpuRow {
                uuid: m.uuid.clone(),
                model: format!("MIG {}", m.name),
                mig_of: Some(g.uuid.clone()),
                utilization_percent: None,
                memory_utilization_percent: None,
                memory_used_bytes: m.memory_used_bytes,
                memory_total_bytes: m.memory_total_bytes,
                power_draw_milliwatts: None,
                power_limit_milliwatts: None,
                temperature_celsius: None,
                sm_clock_mhz: None,
                memory_clock_mhz: None,
                ecc_uncorrected: None,
                last_xid: None,
                pods: allocated(Some(&m.uuid)).into_iter().collect(),
                ..row.clone()
            })
            .collect();
        out.gpus.push(row);
        out.gpus.extend(migs);
    }
    // Filter last: disagreements about other pods still count.
    let mut i = first_pod_row;
    while i < out.pods.len() {
        if filter.keeps(&out.pods[i].namespace, &out.pods[i].pod) {
            i += 1;
        } else {
            out.pods.remove(i);
        }
    }
}

#[cfg(test)]
/// The GPU report the unit tests share (here and in `render::gpu`).
pub mod fixture {
    use super::*;
    use orb8_proto::{Gpu, GpuAllocation, GpuProcess, MigDevice};

    /// GPU 0 (whole).
    pub const G0: &str = "GPU-0";
    /// GPU 1 (time-sliced).
    pub const G1: &str = "GPU-1";
    /// GPU 2 (MIG mode).
    pub const G2: &str = "GPU-2";
    /// GPU 2's MIG instance.
    pub const M0: &str = "MIG-0";
    /// A gibibyte.
    pub const GIB: u64 = 1 << 30;

    fn alloc(
        ns: &str,
        pod: &str,
        c: &str,
        id: &str,
        kind: GpuDeviceKind,
        gpu: (&str, u32),
    ) -> GpuAllocation {
        GpuAllocation {
            namespace: ns.into(),
            pod: pod.into(),
            container: c.into(),
            resource_name: "nvidia.com/gpu".into(),
            device_id: id.into(),
            kind: kind as i32,
            gpu_uuid: gpu.0.into(),
            gpu_index: gpu.1,
            ..Default::default()
        }
    }

    fn proc_(
        pid: u32,
        comm: &str,
        uid: &str,
        cid: &str,
        gib: u64,
        sm: Option<u32>,
        mig: &str,
    ) -> GpuProcess {
        GpuProcess {
            pid,
            comm: comm.into(),
            memory_used_bytes: gib * GIB,
            sm_util_percent: sm,
            kind: "compute".into(),
            mig_uuid: mig.into(),
            pod_uid: uid.into(),
            container_id: cid.into(),
            ..Default::default()
        }
    }

    /// Two nodes: one with three GPUs, allocations and processes, one without a driver.
    pub fn answers() -> Vec<(String, GetGpusResponse)> {
        use GpuDeviceKind::{Mig, Shared, Whole};
        let mut notebook = alloc("ml", "notebook", "jupyter", M0, Mig, (G2, 2));
        notebook.mig_uuid = M0.into();
        notebook.resource_name = "nvidia.com/mig-1g.10gb".into();
        let mut shared = alloc("ml", "infer-a", "server", "GPU-1::0", Shared, (G1, 1));
        shared.replica = 0;
        let mut ghost = alloc("ops", "ghost", "x", "GPU-ghost", Whole, ("", 0));
        ghost.problem = "no GPU of this node has this ID".into();
        let a = GetGpusResponse {
            node: "node-a".into(),
            source: "NVML".into(),
            gpus: vec![
                Gpu {
                    index: 0,
                    uuid: G0.into(),
                    name: "A100".into(),
                    utilization_gpu_percent: Some(87),
                    memory_used_bytes: 20 * GIB,
                    memory_total_bytes: 80 * GIB,
                    power_draw_milliwatts: Some(251_400),
                    power_limit_milliwatts: Some(400_000),
                    temperature_celsius: Some(61),
                    processes: vec![
                        proc_(10, "train", "u-train", "c-train", 19, Some(85), ""),
                        proc_(14, "Xorg", "", "", 1, None, ""),
                    ],
                    ..Default::default()
                },
                Gpu {
                    index: 1,
                    uuid: G1.into(),
                    name: "L4".into(),
                    memory_total_bytes: 24 * GIB,
                    processes: vec![
                        proc_(11, "serve", "u-a", "c-a", 4, Some(25), ""),
                        proc_(12, "python", "u-rogue", "c-r", 2, None, ""),
                    ],
                    ..Default::default()
                },
                Gpu {
                    index: 2,
                    uuid: G2.into(),
                    name: "H100".into(),
                    mig_enabled: true,
                    mig_devices: vec![MigDevice {
                        uuid: M0.into(),
                        name: "1g.10gb".into(),
                        memory_used_bytes: 5 * GIB,
                        memory_total_bytes: 10 * GIB,
                        ..Default::default()
                    }],
                    processes: vec![proc_(13, "jupyter", "u-nb", "c-nb", 5, None, M0)],
                    ..Default::default()
                },
            ],
            allocations: vec![
                alloc("ml", "train-0", "trainer", G0, Whole, (G0, 0)),
                shared,
                notebook,
                ghost,
                alloc("ops", "dup", "y", G0, Whole, (G0, 0)),
            ],
            ..Default::default()
        };
        let b = GetGpusResponse {
            node: "node-b".into(),
            unavailable: "no NVIDIA driver on this node".into(),
            pod_resources_error: "no kubelet pod-resources socket at /x".into(),
            ..Default::default()
        };
        vec![("node-a".into(), a), ("node-b".into(), b)]
    }

    /// Names for the pod UIDs of [`answers`].
    pub fn names() -> PodNames {
        let n = |ns: &str, name: &str, cid: &str, c: &str| PodName {
            namespace: ns.into(),
            name: name.into(),
            containers: [(cid.to_string(), c.to_string())].into(),
        };
        [
            ("u-train", n("ml", "train-0", "c-train", "trainer")),
            ("u-a", n("ml", "infer-a", "c-a", "server")),
            ("u-rogue", n("ml", "rogue", "c-r", "main")),
            ("u-nb", n("ml", "notebook", "c-nb", "jupyter")),
        ]
        .into_iter()
        .map(|(u, p)| (u.to_string(), p))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::*;
    use super::*;

    #[test]
    fn allocations_and_processes_join_and_disagreements_are_said() {
        let r = report(&answers(), &names(), &PodFilter::default());
        assert_eq!(
            r.disagreements,
            vec![
                "node-a: ops/ghost container x was allocated GPU-ghost (nvidia.com/gpu): no GPU of this node has this ID",
                "node-a: GPU-0 is not shared but was allocated to 2 containers: ml/train-0 container trainer, ops/dup container y",
                "node-a: process 14 (Xorg), in no pod, uses GPU 0 (GPU-0), allocated to ml/train-0, ops/dup",
                "node-a: process 12 (python) of ml/rogue container main uses GPU 1 (GPU-1), but the kubelet allocated it no device there",
            ]
        );
        type Row<'a> = (
            &'a str,
            &'a str,
            &'a str,
            Option<u32>,
            &'a str,
            u64,
            Option<u32>,
            Vec<u32>,
        );
        let rows: Vec<Row> = r
            .pods
            .iter()
            .map(|p| {
                (
                    p.pod.as_str(),
                    p.container.as_str(),
                    p.kind,
                    p.gpu,
                    p.mig_profile.as_str(),
                    p.memory_used_bytes / GIB,
                    p.sm_util_percent,
                    p.pids.clone(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                (
                    "train-0",
                    "trainer",
                    "whole",
                    Some(0),
                    "",
                    19,
                    Some(85),
                    vec![10]
                ),
                (
                    "infer-a",
                    "server",
                    "shared",
                    Some(1),
                    "",
                    4,
                    Some(25),
                    vec![11]
                ),
                (
                    "notebook",
                    "jupyter",
                    "mig",
                    Some(2),
                    "1g.10gb",
                    5,
                    None,
                    vec![13]
                ),
                ("ghost", "x", "whole", None, "", 0, None, vec![]),
                ("dup", "y", "whole", Some(0), "", 0, None, vec![]),
                ("(no pod)", "", "none", Some(0), "", 1, None, vec![14]),
                ("rogue", "main", "none", Some(1), "", 2, None, vec![12]),
            ]
        );
        let gpus: Vec<(&str, Vec<String>)> = r
            .gpus
            .iter()
            .map(|g| (g.uuid.as_str(), g.pods.clone()))
            .collect();
        assert_eq!(
            gpus,
            vec![
                (G0, vec!["ml/train-0".to_string(), "ops/dup".to_string()]),
                (G1, vec!["ml/infer-a".to_string(), "ml/rogue".to_string()]),
                (G2, vec!["ml/notebook".to_string()]),
                (M0, vec!["ml/notebook".to_string()]),
            ]
        );
    }

    #[test]
    fn the_filter_keeps_one_namespace_or_pod_and_names_need_a_cluster() {
        let f = PodFilter {
            namespace: Some("ml".into()),
            pod: Some("infer-a".into()),
        };
        let r = report(&answers(), &names(), &f);
        let pods: Vec<&str> = r.pods.iter().map(|p| p.pod.as_str()).collect();
        assert_eq!(pods, vec!["infer-a"]);
        assert_eq!(
            r.disagreements.len(),
            4,
            "disagreements about other pods still count"
        );
        let r = report(&answers(), &PodNames::new(), &PodFilter::default());
        let unnamed: Vec<(&str, &str, &str)> = r
            .pods
            .iter()
            .filter(|p| p.kind == "none")
            .map(|p| (p.namespace.as_str(), p.pod.as_str(), p.container.as_str()))
            .collect();
        assert_eq!(
            unnamed,
            vec![
                ("", "uid:u-train", ""),
                ("", NO_POD, ""),
                ("", "uid:u-a", ""),
                ("", "uid:u-rogue", ""),
                ("", "uid:u-nb", "")
            ]
        );
        assert_eq!(
            r.disagreements.len(),
            3,
            "without names no process can be compared"
        );
    }
}
