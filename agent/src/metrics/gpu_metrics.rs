//! GPU metric families from one `GetGpus` answer (the same join `kubectl orb8 gpu` shows):
//! per GPU, labelled `gpu` (index), `uuid`, and the `namespace`/`pod` the kubelet gave it or
//! a share of it to, one series per such pod (a time-sliced or MIG-partitioned GPU has one per
//! pod, each with the whole GPU's value; a GPU no pod holds has empty `namespace` and `pod`);
//! per GPU process, its memory and the pod its cgroup names. A value the source does not give
//! is absent, never zero. A node without a GPU source says so with `orb8_gpu_up 0` and
//! `orb8_gpus 0`.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `gpu_up` | gauge | `source`: 1 when this scrape read the GPUs |
//! | `gpus` | gauge | `source` |
//! | `gpu_info` | gauge (1) | `gpu`, `uuid`, `model`, `driver`, `mig` |
//! | `gpu_utilization_ratio`, `gpu_memory_utilization_ratio` | gauge | `gpu`, `uuid`, `namespace`, `pod` |
//! | `gpu_memory_used_bytes`, `gpu_memory_total_bytes` | gauge | same |
//! | `gpu_power_watts`, `gpu_power_limit_watts`, `gpu_temperature_celsius` | gauge | same |
//! | `gpu_sm_clock_hertz`, `gpu_memory_clock_hertz` | gauge | same |
//! | `gpu_ecc_errors_total` | counter | `gpu`, `uuid`, `type` (`corrected`, `uncorrected`) |
//! | `gpu_last_xid` | gauge | `gpu`, `uuid` |
//! | `gpu_mig_memory_used_bytes`, `gpu_mig_memory_total_bytes` | gauge | `gpu`, `uuid`, `mig_uuid`, `profile`, `namespace`, `pod` |
//! | `gpu_process_memory_bytes` | gauge | `gpu`, `uuid`, `mig_uuid`, `pid`, `comm`, `namespace`, `pod` |
//! | `gpu_process_sm_utilization_ratio` | gauge | same, where the driver gives it |
//! | `gpu_allocations_unmatched` | gauge | allocations naming no GPU of this node |
//! | `gpu_pod_resources_up` | gauge | 1 when the kubelet's pod-resources API answered |
//!
//! Imports only [`super::family`] and [`super::pods`] (plain data).

use std::collections::{BTreeSet, HashMap};

use orb8_proto as pb;

use super::family::{Family, Sample, Value};
use super::pods::PodId;

type Labels = Vec<(&'static str, String)>;

/// The GPU families of one scrape: `reading` is `None` on a node without a GPU source;
/// `source` is the source's kind; `process_pods` names the pod of a GPU process by PID.
pub fn families(
    reading: Option<&pb::GetGpusResponse>,
    source: &str,
    process_pods: &HashMap<u32, PodId>,
) -> Vec<Family> {
    let empty = pb::GetGpusResponse::default();
    let r = reading.unwrap_or(&empty);
    let up = reading.is_some() && r.unavailable.is_empty();
    let src = || vec![("source", source.to_string())];

    // The pods holding each GPU (whole, a share or a MIG instance of it), and each MIG instance.
    let mut holders: HashMap<&str, BTreeSet<(String, String)>> = HashMap::new();
    let mut mig_holders: HashMap<&str, BTreeSet<(String, String)>> = HashMap::new();
    for a in &r.allocations {
        if a.gpu_uuid.is_empty() {
            continue;
        }
        let pod = (a.namespace.clone(), a.pod.clone());
        holders.entry(&a.gpu_uuid).or_default().insert(pod.clone());
        if !a.mig_uuid.is_empty() {
            mig_holders.entry(&a.mig_uuid).or_default().insert(pod);
        }
    }
    let no_pod = BTreeSet::from([(String::new(), String::new())]);
    let gpu_labels =
        |g: &pb::Gpu| -> Labels { vec![("gpu", g.index.to_string()), ("uuid", g.uuid.clone())] };
    let per_pod = |g: &pb::Gpu, v: Option<Value>| -> Vec<Sample> {
        let Some(v) = v else { return Vec::new() };
        holders
            .get(g.uuid.as_str())
            .unwrap_or(&no_pod)
            .iter()
            .map(|(ns, pod)| {
                let mut l = gpu_labels(g);
                l.push(("namespace", ns.clone()));
                l.push(("pod", pod.clone()));
                (l, v)
            })
            .collect()
    };
    let each = |f: &dyn Fn(&pb::Gpu) -> Option<Value>| -> Vec<Sample> {
        r.gpus.iter().flat_map(|g| per_pod(g, f(g))).collect()
    };
    let percent = |p: Option<u32>| p.map(|p| Value::Float(f64::from(p) / 100.0));
    let milli = |p: Option<u32>| p.map(|p| Value::Float(f64::from(p) / 1000.0));
    let mhz = |p: Option<u32>| p.map(|p| Value::Int(u64::from(p) * 1_000_000));

    let mig_pod = |uuid: &str| -> (String, String) {
        mig_holders
            .get(uuid)
            .and_then(|s| s.iter().next().cloned())
            .unwrap_or_default()
    };
    let mut mig_used = Vec::new();
    let mut mig_total = Vec::new();
    let mut proc_mem = Vec::new();
    let mut proc_sm = Vec::new();
    for g in &r.gpus {
        for m in &g.mig_devices {
            let (ns, pod) = mig_pod(&m.uuid);
            let mut l = gpu_labels(g);
            l.extend([
                ("mig_uuid", m.uuid.clone()),
                ("profile", m.name.clone()),
                ("namespace", ns),
                ("pod", pod),
            ]);
            mig_used.push((l.clone(), Value::Int(m.memory_used_bytes)));
            mig_total.push((l, Value::Int(m.memory_total_bytes)));
        }
        for p in &g.processes {
            let pod = process_pods.get(&p.pid);
            let mut l = gpu_labels(g);
            l.extend([
                ("mig_uuid", p.mig_uuid.clone()),
                ("pid", p.pid.to_string()),
                ("comm", p.comm.clone()),
                (
                    "namespace",
                    pod.map(|x| x.namespace.clone()).unwrap_or_default(),
                ),
                ("pod", pod.map(|x| x.pod.clone()).unwrap_or_default()),
            ]);
            if let Some(sm) = percent(p.sm_util_percent) {
                proc_sm.push((l.clone(), sm));
            }
            proc_mem.push((l, Value::Int(p.memory_used_bytes)));
        }
    }
    let ecc = r
        .gpus
        .iter()
        .flat_map(|g| {
            [
                ("corrected", g.ecc_corrected),
                ("uncorrected", g.ecc_uncorrected),
            ]
            .into_iter()
            .filter_map(move |(kind, n)| {
                let mut l = gpu_labels(g);
                l.push(("type", kind.to_string()));
                n.map(|n| (l, Value::Int(n)))
            })
        })
        .collect();
    let unmatched = r
        .allocations
        .iter()
        .filter(|a| !a.problem.is_empty())
        .count() as u64;

    vec![
        Family::gauge(
            "orb8_gpu_up",
            "1 when this scrape read the node's GPUs from its source; 0 on a node without a GPU source or when reading failed.",
            vec![(src(), Value::Int(u64::from(up)))],
        ),
        Family::gauge(
            "orb8_gpus",
            "GPUs this scrape read (0 on a node without GPUs).",
            vec![(src(), Value::Int(r.gpus.len() as u64))],
        ),
        Family::gauge(
            "orb8_gpu_info",
            "Always 1; the GPU's model, the driver version and whether MIG is on.",
            r.gpus
                .iter()
                .map(|g| {
                    let mut l = gpu_labels(g);
                    l.extend([
                        ("model", g.name.clone()),
                        ("driver", r.driver_version.clone()),
                        ("mig", g.mig_enabled.to_string()),
                    ]);
                    (l, Value::Int(1))
                })
                .collect(),
        ),
        Family::gauge(
            "orb8_gpu_utilization_ratio",
            "Fraction of the sample period the GPU was busy, per pod holding the GPU or a share of it.",
            each(&|g| percent(g.utilization_gpu_percent)),
        ),
        Family::gauge(
            "orb8_gpu_memory_utilization_ratio",
            "Fraction of the sample period the GPU's memory was read or written, per pod holding the GPU or a share of it.",
            each(&|g| percent(g.utilization_memory_percent)),
        ),
        Family::gauge(
            "orb8_gpu_memory_used_bytes",
            "GPU memory in use, per pod holding the GPU or a share of it.",
            each(&|g| Some(Value::Int(g.memory_used_bytes))),
        ),
        Family::gauge(
            "orb8_gpu_memory_total_bytes",
            "GPU memory in all, per pod holding the GPU or a share of it.",
            each(&|g| Some(Value::Int(g.memory_total_bytes))),
        ),
        Family::gauge(
            "orb8_gpu_power_watts",
            "Power draw, per pod holding the GPU or a share of it.",
            each(&|g| milli(g.power_draw_milliwatts)),
        ),
        Family::gauge(
            "orb8_gpu_power_limit_watts",
            "Power limit, per pod holding the GPU or a share of it.",
            each(&|g| milli(g.power_limit_milliwatts)),
        ),
        Family::gauge(
            "orb8_gpu_temperature_celsius",
            "GPU temperature, per pod holding the GPU or a share of it.",
            each(&|g| g.temperature_celsius.map(|t| Value::Int(u64::from(t)))),
        ),
        Family::gauge(
            "orb8_gpu_sm_clock_hertz",
            "SM clock, per pod holding the GPU or a share of it.",
            each(&|g| mhz(g.sm_clock_mhz)),
        ),
        Family::gauge(
            "orb8_gpu_memory_clock_hertz",
            "Memory clock, per pod holding the GPU or a share of it.",
            each(&|g| mhz(g.memory_clock_mhz)),
        ),
        Family::counter(
            "orb8_gpu_ecc_errors",
            "Volatile ECC errors since the driver loaded, where the GPU has ECC.",
            ecc,
        ),
        Family::gauge(
            "orb8_gpu_last_xid",
            "The last XID error the driver reported, where the source knows it.",
            r.gpus
                .iter()
                .filter_map(|g| g.last_xid.map(|x| (gpu_labels(g), Value::Int(x))))
                .collect(),
        ),
        Family::gauge(
            "orb8_gpu_mig_memory_used_bytes",
            "Memory in use on a MIG instance, with the pod the kubelet gave it to.",
            mig_used,
        ),
        Family::gauge(
            "orb8_gpu_mig_memory_total_bytes",
            "Memory of a MIG instance, with the pod the kubelet gave it to.",
            mig_total,
        ),
        Family::gauge(
            "orb8_gpu_process_memory_bytes",
            "GPU memory a process holds, with the pod its cgroup names.",
            proc_mem,
        ),
        Family::gauge(
            "orb8_gpu_process_sm_utilization_ratio",
            "Fraction of the sample window a process kept the SMs busy, where the driver gives it.",
            proc_sm,
        ),
        Family::gauge(
            "orb8_gpu_allocations_unmatched",
            "GPU devices the kubelet allocated that name no GPU or MIG instance this node's source sees (`kubectl orb8 gpu` lists them).",
            vec![(Vec::new(), Value::Int(unmatched))],
        ),
        Family::gauge(
            "orb8_gpu_pod_resources_up",
            "1 when the kubelet's pod-resources API answered this scrape.",
            vec![(
                Vec::new(),
                Value::Int(u64::from(
                    reading.is_some() && r.pod_resources_error.is_empty(),
                )),
            )],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::family::encode;
    use super::*;

    const G0: &str = "GPU-00000000-0000-0000-0000-000000000000";
    const G1: &str = "GPU-11111111-1111-1111-1111-111111111111";
    const M0: &str = "MIG-22222222-2222-2222-2222-222222222222";

    fn alloc(ns: &str, pod: &str, gpu: &str, mig: &str, problem: &str) -> pb::GpuAllocation {
        pb::GpuAllocation {
            namespace: ns.into(),
            pod: pod.into(),
            container: "c".into(),
            gpu_uuid: gpu.into(),
            mig_uuid: mig.into(),
            problem: problem.into(),
            ..Default::default()
        }
    }

    fn reading() -> pb::GetGpusResponse {
        pb::GetGpusResponse {
            driver_version: "550.54.15".into(),
            gpus: vec![
                pb::Gpu {
                    index: 0,
                    uuid: G0.into(),
                    name: "NVIDIA L4".into(),
                    utilization_gpu_percent: Some(30),
                    memory_used_bytes: 6 << 30,
                    memory_total_bytes: 24 << 30,
                    power_draw_milliwatts: Some(40_500),
                    sm_clock_mhz: Some(1410),
                    ecc_corrected: Some(3),
                    processes: vec![
                        pb::GpuProcess {
                            pid: 10,
                            comm: "python".into(),
                            memory_used_bytes: 4 << 30,
                            sm_util_percent: Some(25),
                            ..Default::default()
                        },
                        pb::GpuProcess {
                            pid: 11,
                            comm: "x".into(),
                            memory_used_bytes: 1 << 30,
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                },
                pb::Gpu {
                    index: 1,
                    uuid: G1.into(),
                    name: "NVIDIA H100".into(),
                    mig_enabled: true,
                    mig_devices: vec![pb::MigDevice {
                        uuid: M0.into(),
                        name: "1g.10gb".into(),
                        memory_used_bytes: 5 << 30,
                        memory_total_bytes: 10 << 30,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
            allocations: vec![
                alloc("ml", "infer-a", G0, "", ""),
                alloc("ml", "infer-b", G0, "", ""),
                // Two containers of one pod on the same GPU are one series.
                alloc("ml", "infer-b", G0, "", ""),
                alloc("ml", "notebook", G1, M0, ""),
                alloc("ops", "ghost", "", "", "no GPU of this node"),
            ],
            ..Default::default()
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn gpus_are_labelled_with_every_pod_holding_them_and_absent_values_stay_absent() {
        let pods = HashMap::from([(
            10,
            PodId {
                namespace: "ml".into(),
                pod: "infer-a".into(),
            },
        )]);
        let text = encode(families(Some(&reading()), "recorded", &pods));
        let got = lines(&text);
        let g0 = |pod: &str| format!("gpu=\"0\",uuid=\"{G0}\",namespace=\"ml\",pod=\"{pod}\"");
        let g1 = format!("gpu=\"1\",uuid=\"{G1}\",namespace=\"ml\",pod=\"notebook\"");
        for want in [
            "orb8_gpu_up{source=\"recorded\"} 1".to_string(),
            "orb8_gpus{source=\"recorded\"} 2".to_string(),
            format!(
                "orb8_gpu_info{{gpu=\"1\",uuid=\"{G1}\",model=\"NVIDIA H100\",driver=\"550.54.15\",mig=\"true\"}} 1"
            ),
            format!("orb8_gpu_utilization_ratio{{{}}} 0.3", g0("infer-a")),
            format!("orb8_gpu_utilization_ratio{{{}}} 0.3", g0("infer-b")),
            format!("orb8_gpu_memory_used_bytes{{{}}} 6442450944", g0("infer-b")),
            format!("orb8_gpu_memory_total_bytes{{{g1}}} 0"),
            format!("orb8_gpu_power_watts{{{}}} 40.5", g0("infer-a")),
            format!("orb8_gpu_sm_clock_hertz{{{}}} 1410000000", g0("infer-a")),
            format!("orb8_gpu_ecc_errors_total{{gpu=\"0\",uuid=\"{G0}\",type=\"corrected\"}} 3"),
            format!(
                "orb8_gpu_mig_memory_used_bytes{{gpu=\"1\",uuid=\"{G1}\",mig_uuid=\"{M0}\",profile=\"1g.10gb\",namespace=\"ml\",pod=\"notebook\"}} 5368709120"
            ),
            format!(
                "orb8_gpu_process_memory_bytes{{gpu=\"0\",uuid=\"{G0}\",mig_uuid=\"\",pid=\"10\",comm=\"python\",namespace=\"ml\",pod=\"infer-a\"}} 4294967296"
            ),
            format!(
                "orb8_gpu_process_memory_bytes{{gpu=\"0\",uuid=\"{G0}\",mig_uuid=\"\",pid=\"11\",comm=\"x\",namespace=\"\",pod=\"\"}} 1073741824"
            ),
            format!(
                "orb8_gpu_process_sm_utilization_ratio{{gpu=\"0\",uuid=\"{G0}\",mig_uuid=\"\",pid=\"10\",comm=\"python\",namespace=\"ml\",pod=\"infer-a\"}} 0.25"
            ),
            "orb8_gpu_allocations_unmatched 1".to_string(),
            "orb8_gpu_pod_resources_up 1".to_string(),
        ] {
            assert!(got.contains(&want.as_str()), "{want}\nnot in\n{text}");
        }
        // One series per (GPU, pod): GPU 0 has two pods, GPU 1 one.
        let count = |prefix: &str| got.iter().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(count("orb8_gpu_memory_used_bytes{"), 3);
        // What the source did not give is absent, not zero.
        assert_eq!(count("orb8_gpu_utilization_ratio{"), 2);
        assert_eq!(count("orb8_gpu_temperature_celsius"), 0);
        assert_eq!(count("orb8_gpu_ecc_errors_total"), 1);
        assert_eq!(count("orb8_gpu_process_sm_utilization_ratio"), 1);
    }

    #[test]
    fn a_node_without_a_gpu_source_says_so_and_an_unheld_gpu_has_no_pod() {
        let text = encode(families(None, "", &HashMap::new()));
        assert_eq!(
            lines(&text),
            vec![
                "orb8_gpu_up{source=\"\"} 0",
                "orb8_gpus{source=\"\"} 0",
                "orb8_gpu_allocations_unmatched 0",
                "orb8_gpu_pod_resources_up 0",
                "# EOF",
            ]
            .into_iter()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
        );
        let mut r = reading();
        r.allocations.clear();
        let text = encode(families(Some(&r), "nvml", &HashMap::new()));
        assert!(
            text.contains(&format!(
                "orb8_gpu_utilization_ratio{{gpu=\"0\",uuid=\"{G0}\",namespace=\"\",pod=\"\"}} 0.3"
            )),
            "{text}"
        );
    }
}
