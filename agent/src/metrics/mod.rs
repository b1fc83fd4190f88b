//! The always-on agent's Prometheus metrics: what `/metrics` serves (see [`http`]).
//!
//! Every scrape reads the kernel counters and flow table once ([`Agent::snapshot`]), updates
//! the per-pod byte counters ([`pods`]), and encodes an [`Exposition`] in the Prometheus text
//! format with `prometheus-client`. The families, all prefixed `orb8_`:
//!
//! | name | type | labels | source |
//! |---|---|---|---|
//! | `packets_total`, `bytes_total` | counter | `direction` | kernel, per hook, every attached interface |
//! | `flows_active` | gauge | | flows in the kernel table |
//! | `flows_created_total`, `flows_evicted_total` | counter | | kernel |
//! | `events_dropped_total` | counter | `stage`, `reason` | every loss counter, as `GetStatus` lists them |
//! | `packets_unparsed_total` | counter | `reason` | kernel |
//! | `pods_tracked` | gauge | | pods behind this node's attached veths |
//! | `pod_bytes_total` | counter | `namespace`, `pod`, `direction` | flow table, at most `cap` pods, the rest in `_other` |
//! | `pods_over_cap` | gauge | | pods whose bytes are in the `_other` series |
//! | `build_info` | gauge (1) | `version`, `kernel` | |
//! | `gpu_*` | gauge, counter | `gpu`, `uuid`, `namespace`, `pod`, ... | the GPU source and the kubelet, as `GetGpus` ([`gpu_metrics`]) |
//!
//! Module stack: [`family`] and [`pods`] import no sibling, [`podnames`] and [`gpu_metrics`]
//! import only those; this module imports them all; [`http`] imports this one.

pub mod family;
pub mod gpu_metrics;
pub mod http;
pub mod podnames;
pub mod pods;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use orb8_common::counter;
use orb8_proto as pb;
use prometheus_client::metrics::MetricType;

use crate::{gpu::Gpus, runtime::Agent, service::status};
use family::{Family, Sample, Value};
use pods::{OTHER, PodId, PodTraffic};

/// `Content-Type` of what [`Metrics::render`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Everything one scrape reports, as plain data.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exposition {
    /// Packets by the hook's direction, `[ingress, egress]`.
    pub packets: [u64; 2],
    /// IP-layer bytes by the hook's direction.
    pub bytes: [u64; 2],
    /// Flows in the kernel table.
    pub flows_active: u64,
    /// Flows inserted into the table.
    pub flows_created: u64,
    /// Flows evicted from the full table.
    pub flows_evicted: u64,
    /// `(stage, reason, count)` of every loss counter.
    pub dropped: Vec<(String, String, u64)>,
    /// `(reason, count)` of packets not accounted to a flow.
    pub unparsed: Vec<(String, u64)>,
    /// Pods behind this node's attached veths.
    pub pods_tracked: u64,
    /// `(pod, [ingress, egress])`, the pod's directions, the `_other` series included.
    pub pod_bytes: Vec<(PodId, [u64; 2])>,
    /// Pods folded into the `_other` series.
    pub pods_over_cap: u64,
    /// The agent's version.
    pub version: String,
    /// The kernel release.
    pub kernel: String,
    /// This scrape's GPU reading joined with the kubelet's allocations; `None` on a node
    /// without a GPU source.
    pub gpu: Option<pb::GetGpusResponse>,
    /// The GPU source's kind (`nvml`, `dcgm-exporter`, `recorded`; empty without one).
    pub gpu_source: String,
    /// The pod of each GPU process, by PID, where its container names one.
    pub gpu_process_pods: HashMap<u32, PodId>,
}

const DIRECTIONS: [&str; 2] = ["ingress", "egress"];

fn by_direction(v: [u64; 2]) -> Vec<Sample> {
    DIRECTIONS
        .iter()
        .zip(v)
        .map(|(d, n)| (vec![("direction", d.to_string())], Value::Int(n)))
        .collect()
}

impl Exposition {
    fn families(&self) -> Vec<Family> {
        let one = |n: u64| vec![(Vec::new(), Value::Int(n))];
        let counter = MetricType::Counter;
        let gauge = MetricType::Gauge;
        vec![
            Family {
                name: "orb8_packets",
                help: "Packets accounted to a flow, by the direction of the hook that saw them, summed over every attached interface.",
                kind: counter,
                samples: by_direction(self.packets),
            },
            Family {
                name: "orb8_bytes",
                help: "IP-layer bytes accounted to a flow, by the direction of the hook that saw them, summed over every attached interface.",
                kind: counter,
                samples: by_direction(self.bytes),
            },
            Family {
                name: "orb8_flows_active",
                help: "Flows in the kernel flow table.",
                kind: gauge,
                samples: one(self.flows_active),
            },
            Family {
                name: "orb8_flows_created",
                help: "Flows inserted into the kernel flow table.",
                kind: counter,
                samples: one(self.flows_created),
            },
            Family {
                name: "orb8_flows_evicted",
                help: "Flows the kernel evicted from the full flow table.",
                kind: counter,
                samples: one(self.flows_evicted),
            },
            Family {
                name: "orb8_events_dropped",
                help: "Events lost, by where (kernel, agent, client) and why.",
                kind: counter,
                samples: self
                    .dropped
                    .iter()
                    .map(|(s, r, n)| {
                        (
                            vec![("stage", s.clone()), ("reason", r.clone())],
                            Value::Int(*n),
                        )
                    })
                    .collect(),
            },
            Family {
                name: "orb8_packets_unparsed",
                help: "Packets the probe saw but did not account to a flow, by reason.",
                kind: counter,
                samples: self
                    .unparsed
                    .iter()
                    .map(|(r, n)| (vec![("reason", r.clone())], Value::Int(*n)))
                    .collect(),
            },
            Family {
                name: "orb8_pods_tracked",
                help: "Pods of this node whose network namespace the agent found behind an attached veth.",
                kind: gauge,
                samples: one(self.pods_tracked),
            },
            Family {
                name: "orb8_pod_bytes",
                help: "IP-layer bytes by pod of this node and the pod's direction (egress = sent by the pod); pods beyond the cap are summed in namespace=\"_other\",pod=\"_other\".",
                kind: counter,
                samples: self
                    .pod_bytes
                    .iter()
                    .flat_map(|(p, b)| {
                        DIRECTIONS.iter().zip(b).map(|(d, n)| {
                            (
                                vec![
                                    ("namespace", p.namespace.clone()),
                                    ("pod", p.pod.clone()),
                                    ("direction", d.to_string()),
                                ],
                                Value::Int(*n),
                            )
                        })
                    })
                    .collect(),
            },
            Family {
                name: "orb8_pods_over_cap",
                help: "Pods whose bytes are counted in the _other series of orb8_pod_bytes_total because the per-pod cap was reached.",
                kind: gauge,
                samples: one(self.pods_over_cap),
            },
            Family {
                name: "orb8_build_info",
                help: "Always 1; the agent's version and the node's kernel release.",
                kind: gauge,
                samples: vec![(
                    vec![
                        ("version", self.version.clone()),
                        ("kernel", self.kernel.clone()),
                    ],
                    Value::Int(1),
                )],
            },
        ]
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn encode(&self) -> String {
        let mut families = self.families();
        families.extend(gpu_metrics::families(
            self.gpu.as_ref(),
            &self.gpu_source,
            &self.gpu_process_pods,
        ));
        family::encode(families)
    }
}

/// The metrics of a running agent.
pub struct Metrics {
    agent: Arc<Agent>,
    slow_client: Arc<AtomicU64>,
    pod_dirs: Vec<PathBuf>,
    pods: Mutex<PodTraffic>,
    names: Mutex<HashMap<String, PodId>>,
    gpus: Arc<Gpus>,
}

impl Metrics {
    /// Metrics of `agent`; `slow_client` is the service's slow-client loss count, `pod_dirs`
    /// where the runtime's container files are ([`podnames`]), `pod_cap` the most pods with
    /// their own `orb8_pod_bytes_total` series, `gpus` the node's GPU source (the one
    /// `GetGpus` answers from).
    pub fn new(
        agent: Arc<Agent>,
        slow_client: Arc<AtomicU64>,
        pod_dirs: Vec<PathBuf>,
        pod_cap: usize,
        gpus: Arc<Gpus>,
    ) -> Self {
        Metrics {
            agent,
            slow_client,
            pod_dirs,
            pods: Mutex::new(PodTraffic::new(pod_cap)),
            names: Mutex::default(),
            gpus,
        }
    }

    /// Reads the GPUs and the kubelet's allocations for one scrape (`None` on a node without
    /// a GPU source). Blocking reads run off the async threads.
    pub async fn read_gpus(&self) -> Option<pb::GetGpusResponse> {
        if self.gpus.status().source.is_empty() {
            return None;
        }
        Some(self.gpus.get("", crate::defaults::GPU_SAMPLE_WINDOW).await)
    }

    /// The pod of every GPU process whose cgroup names a container: from the runtime's files
    /// (as for flows), else by pod UID.
    fn gpu_process_pods(&self, reading: &pb::GetGpusResponse) -> HashMap<u32, PodId> {
        reading
            .gpus
            .iter()
            .flat_map(|g| &g.processes)
            .filter(|p| !p.pod_uid.is_empty())
            .map(|p| {
                let pod = Some(p.container_id.as_str())
                    .filter(|c| !c.is_empty())
                    .and_then(|c| podnames::lookup(&self.pod_dirs, c))
                    .unwrap_or_else(|| podnames::by_uid(&p.pod_uid));
                (p.pid, pod)
            })
            .collect()
    }

    /// The pod behind each attached veth whose peer is a pod's container.
    fn pods_by_interface(&self) -> HashMap<u32, PodId> {
        let mut names = self.names.lock().expect("names lock");
        let mut out = HashMap::new();
        let mut live = std::collections::HashSet::new();
        for iface in self.agent.interfaces() {
            let Some(c) = self.agent.peer(iface.index).and_then(|p| p.container) else {
                continue;
            };
            live.insert(c.pod_uid.clone());
            let id = names
                .entry(c.pod_uid.clone())
                .or_insert_with(|| {
                    c.container_id
                        .as_deref()
                        .and_then(|id| podnames::lookup(&self.pod_dirs, id))
                        .unwrap_or_else(|| podnames::by_uid(&c.pod_uid))
                })
                .clone();
            out.insert(iface.index, id);
        }
        names.retain(|uid, _| live.contains(uid));
        out
    }

    /// Collects everything now, with `gpu` as [`Metrics::read_gpus`] returned it.
    pub fn collect(&self, gpu: Option<pb::GetGpusResponse>) -> Exposition {
        let snap = self.agent.snapshot();
        let c = &snap.counters;
        let by_iface = self.pods_by_interface();
        let mut pods = self.pods.lock().expect("pods lock");
        pods.update(&snap.flows, &by_iface);
        let mut pod_bytes: Vec<(PodId, [u64; 2])> =
            pods.series().map(|(p, b)| (p.clone(), *b)).collect();
        if pods.other() != [0, 0] || pods.over_cap() > 0 {
            pod_bytes.push((
                PodId {
                    namespace: OTHER.into(),
                    pod: OTHER.into(),
                },
                pods.other(),
            ));
        }
        let dropped =
            status::drop_counters(&self.agent, c, self.slow_client.load(Ordering::Relaxed))
                .into_iter()
                .map(|d| (stage_name(d.stage), d.reason, d.count))
                .collect();
        Exposition {
            packets: [
                c[counter::PACKETS_INGRESS as usize],
                c[counter::PACKETS_EGRESS as usize],
            ],
            bytes: [
                c[counter::BYTES_INGRESS as usize],
                c[counter::BYTES_EGRESS as usize],
            ],
            flows_active: snap.flows.len() as u64,
            flows_created: c[counter::FLOWS_CREATED as usize],
            flows_evicted: snap.flows_evicted,
            dropped,
            unparsed: status::not_parsed(c)
                .into_iter()
                .map(|(r, n)| (r.to_string(), n))
                .collect(),
            pods_tracked: pods.tracked() as u64,
            pod_bytes,
            pods_over_cap: pods.over_cap() as u64,
            version: env!("CARGO_PKG_VERSION").to_string(),
            kernel: status::kernel_release(),
            gpu_process_pods: gpu
                .as_ref()
                .map(|g| self.gpu_process_pods(g))
                .unwrap_or_default(),
            gpu_source: self.gpus.status().source,
            gpu,
        }
    }

    /// The health line: the agent answers only while its probes are loaded, so answering is
    /// healthy; the line says how many interfaces the probe is attached to.
    pub fn health(&self) -> String {
        format!(
            "ok: attached to {} interfaces\n",
            self.agent.interfaces().len()
        )
    }

    /// The text exposition of [`Metrics::collect`].
    pub fn render(&self, gpu: Option<pb::GetGpusResponse>) -> String {
        self.collect(gpu).encode()
    }
}

/// The `stage` label of a wire drop stage.
fn stage_name(stage: i32) -> String {
    match pb::DropStage::try_from(stage) {
        Ok(pb::DropStage::Kernel) => "kernel",
        Ok(pb::DropStage::Agent) => "agent",
        Ok(pb::DropStage::Client) => "client",
        _ => "unspecified",
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_help_and_type_and_counters_end_in_total() {
        let e = Exposition {
            packets: [3, 4],
            bytes: [300, 400],
            dropped: vec![("kernel".into(), "ringbuf_full".into(), 2)],
            unparsed: vec![("not_ip".into(), 1)],
            pod_bytes: vec![(
                PodId {
                    namespace: "shop".into(),
                    pod: "web \"1\"".into(),
                },
                [5, 6],
            )],
            version: "0.1.0".into(),
            kernel: "6.18".into(),
            ..Default::default()
        };
        let text = e.encode();
        for line in [
            "# TYPE orb8_packets_total counter",
            "orb8_packets_total{direction=\"ingress\"} 3",
            "orb8_bytes_total{direction=\"egress\"} 400",
            "# TYPE orb8_flows_active gauge",
            "orb8_events_dropped_total{stage=\"kernel\",reason=\"ringbuf_full\"} 2",
            "orb8_packets_unparsed_total{reason=\"not_ip\"} 1",
            "orb8_pod_bytes_total{namespace=\"shop\",pod=\"web \\\"1\\\"\",direction=\"egress\"} 6",
            "orb8_build_info{version=\"0.1.0\",kernel=\"6.18\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!((helps, types), (31, 31));
    }
}
