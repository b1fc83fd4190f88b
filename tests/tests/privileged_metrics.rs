//! Privileged: the always-on agent's `/metrics`, scraped over real HTTP from a real
//! `orb8-agent serve --metrics-listen` while test namespaces send a known number of packets.
//! The exposition is read with an independent Prometheus text-format parser
//! (`prometheus-parse`), and the Grafana dashboard's queries are checked against it.
//!
//! Two "pods" (network namespaces behind host veths, each with a process in a cgroup laid out
//! as containerd does, and an OCI `config.json` naming the pod as containerd writes it) send
//! and receive UDP; IPv6 is off in every namespace so no neighbour discovery adds packets.

use std::{
    collections::{BTreeSet, HashMap},
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use orb8_testkit::*;
use prometheus_parse::{Sample, Scrape, Value};

const UDP4_OVERHEAD: u64 = 20 + 8;

/// A process living in a pod namespace, in a containerd-style cgroup, with its OCI config.
struct FakePod {
    child: Child,
    _cgroup: TestCgroup,
}

impl FakePod {
    fn start(ns: &NetNs, uid: &str, container_id: &str) -> FakePod {
        let cgroup = TestCgroup::nested(&format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{container_id}.scope",
            uid.replace('-', "_")
        ));
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "sleep", "120"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning sleep");
        cgroup.add(child.id());
        FakePod {
            child,
            _cgroup: cgroup,
        }
    }
}

impl Drop for FakePod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory laid out like containerd's task directory, removed on drop.
struct RuntimeDir(PathBuf);

impl RuntimeDir {
    fn new() -> RuntimeDir {
        let p = std::env::temp_dir().join(unique("o8rt"));
        std::fs::create_dir_all(&p).expect("creating runtime dir");
        RuntimeDir(p)
    }

    fn sandbox(&self, id: &str, namespace: &str, name: &str) {
        let dir = self.0.join(id);
        std::fs::create_dir_all(&dir).expect("creating bundle dir");
        let config = serde_json::json!({
            "ociVersion": "1.1.0",
            "annotations": {
                "io.kubernetes.cri.container-type": "sandbox",
                "io.kubernetes.cri.sandbox-name": name,
                "io.kubernetes.cri.sandbox-namespace": namespace,
            }
        });
        std::fs::write(dir.join("config.json"), config.to_string()).expect("writing config.json");
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `orb8-agent serve` with the metrics listener, in the node namespace.
struct MetricsAgent {
    child: Child,
    metrics: String,
    ready: serde_json::Value,
}

impl MetricsAgent {
    fn start(node: &NetNs, runtime: &RuntimeDir, pod_cap: usize) -> MetricsAgent {
        MetricsAgent::start_with(node, runtime, pod_cap, &[])
    }

    /// [`MetricsAgent::start`] with more `serve` arguments.
    fn start_with(
        node: &NetNs,
        runtime: &RuntimeDir,
        pod_cap: usize,
        extra: &[String],
    ) -> MetricsAgent {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &node.name])
            .arg(workspace_bin("orb8-agent"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--idle-timeout",
                "0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--metrics-pod-cap",
                &pod_cap.to_string(),
                "--rescan-ms",
                "100",
                "--pod-metadata-dir",
            ])
            .arg(&runtime.0)
            .args(extra)
            .env("ORB8_AGENT_TOKEN", "metrics-test-token-0123456789")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning orb8-agent serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("reading the ready line");
        let ready: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
        let metrics = ready["metrics"]
            .as_str()
            .unwrap_or_else(|| panic!("no metrics address in {ready}"))
            .to_string();
        MetricsAgent {
            child,
            metrics,
            ready,
        }
    }
}

impl Drop for MetricsAgent {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < end {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 GET from inside `ns`: status code, content type, body.
fn get(ns: &NetNs, addr: &str, path: &str) -> (u16, String, String) {
    let (addr, path) = (addr.to_string(), path.to_string());
    let h = spawn_in(ns, move |ready| {
        ready.send(()).expect("ready");
        let mut s = std::net::TcpStream::connect(&addr)
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("reading the response");
        raw
    });
    let raw = h.join().expect("HTTP thread");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line of {head:?}"));
    let kind = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(String::from)
        })
        .unwrap_or_default();
    (status, kind, body.to_string())
}

fn scrape(ns: &NetNs, agent: &MetricsAgent) -> Scrape {
    let (status, kind, body) = get(ns, &agent.metrics, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("a Prometheus text exposition")
}

fn value(s: &Sample) -> f64 {
    match &s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{} is {other:?}", s.metric),
    }
}

/// The value of `metric` with exactly these labels, if there is such a series.
fn sample(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| {
            let have: HashMap<&str, &str> = s
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            have.len() == labels.len() && labels.iter().all(|(k, v)| have.get(k) == Some(v))
        })
        .collect();
    assert!(found.len() <= 1, "{metric}{labels:?} twice");
    found.first().map(|s| value(s))
}

/// The value of `metric` with exactly these labels (0 when there is no such series).
fn get_value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> u64 {
    sample(scrape, metric, labels)
        .map(|v| v as u64)
        .unwrap_or(0)
}

fn delta(before: &Scrape, after: &Scrape, metric: &str, labels: &[(&str, &str)]) -> u64 {
    get_value(after, metric, labels) - get_value(before, metric, labels)
}

fn disable_ipv6(ns: &NetNs) {
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
}

/// The metric names the agent must export (the list).
const EXPORTED: [&str; 11] = [
    "orb8_packets_total",
    "orb8_bytes_total",
    "orb8_flows_active",
    "orb8_flows_created_total",
    "orb8_flows_evicted_total",
    "orb8_events_dropped_total",
    "orb8_packets_unparsed_total",
    "orb8_pods_tracked",
    "orb8_pod_bytes_total",
    "orb8_pods_over_cap",
    "orb8_build_info",
];

#[test]
fn privileged_metrics_count_exact_packets_and_bytes_per_direction_and_pod() {
    require_root();
    let topo = Topology::new(2);
    let (a, b) = (&topo.pods[0], &topo.pods[1]);
    for ns in [&topo.node, &a.ns, &b.ns] {
        disable_ipv6(ns);
    }
    let runtime = RuntimeDir::new();
    let (uid_a, uid_b) = (
        "0a0a0a0a-1111-2222-3333-444444444444",
        "0b0b0b0b-1111-2222-3333-444444444444",
    );
    let (id_a, id_b) = ("a".repeat(64), "b".repeat(64));
    runtime.sandbox(&id_a, "shop", "web-0");
    runtime.sandbox(&id_b, "shop", "db-0");
    let _pod_a = FakePod::start(&a.ns, uid_a, &id_a);
    let _pod_b = FakePod::start(&b.ns, uid_b, &id_b);
    // One pod gets its own series; the other's bytes go to _other.
    let agent = MetricsAgent::start(&topo.node, &runtime, 1);
    assert!(
        agent.ready["listening"]
            .as_str()
            .is_some_and(|l| l.starts_with("127.0.0.1:")),
        "gRPC stays on loopback: {}",
        agent.ready
    );

    // Health, and nothing else served.
    let (status, _, body) = get(&topo.node, &agent.metrics, "/healthz");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ok"), "{body}");
    assert_eq!(get(&topo.node, &agent.metrics, "/flows").0, 404);

    // The agent finds both pods behind their veths (peer scan every second).
    let end = Instant::now() + Duration::from_secs(15);
    while get_value(&scrape(&topo.node, &agent), "orb8_pods_tracked", &[]) != 2 {
        assert!(Instant::now() < end, "the agent never tracked both pods");
        thread::sleep(Duration::from_millis(200));
    }
    // Pod A talks first (to the node's address, nobody listening): it takes the one slot.
    udp_send(&a.ns, &format!("{}:40001", a.ip4), "10.77.1.1:9", 1, 10);
    let end = Instant::now() + Duration::from_secs(10);
    while get_value(
        &scrape(&topo.node, &agent),
        "orb8_pod_bytes_total",
        &[
            ("namespace", "shop"),
            ("pod", "web-0"),
            ("direction", "egress"),
        ],
    ) == 0
    {
        assert!(Instant::now() < end, "pod A's first datagram never counted");
        thread::sleep(Duration::from_millis(100));
    }

    let before = scrape(&topo.node, &agent);
    const N: usize = 100;
    const SIZE: usize = 200;
    let rx = udp_receiver(&b.ns, &format!("{}:5000", b.ip4), N);
    udp_send(
        &a.ns,
        &format!("{}:40000", a.ip4),
        &format!("{}:5000", b.ip4),
        N,
        SIZE,
    );
    assert_eq!(rx.join().unwrap(), N, "every datagram delivered");
    let after = scrape(&topo.node, &agent);
    let bytes = (N as u64) * (SIZE as u64 + UDP4_OVERHEAD);

    // Node-wide: each datagram enters on A's veth and leaves on B's veth.
    let dir = |d| [("direction", d)];
    assert_eq!(
        delta(&before, &after, "orb8_packets_total", &dir("ingress")),
        N as u64
    );
    assert_eq!(
        delta(&before, &after, "orb8_packets_total", &dir("egress")),
        N as u64
    );
    assert_eq!(
        delta(&before, &after, "orb8_bytes_total", &dir("ingress")),
        bytes
    );
    assert_eq!(
        delta(&before, &after, "orb8_bytes_total", &dir("egress")),
        bytes
    );
    // One new flow per veth.
    assert_eq!(delta(&before, &after, "orb8_flows_created_total", &[]), 2);
    // Per pod, in the pod's direction: A sent everything, B (beyond the cap) received it.
    let web = |d| [("namespace", "shop"), ("pod", "web-0"), ("direction", d)];
    let other = |d| [("namespace", "_other"), ("pod", "_other"), ("direction", d)];
    assert_eq!(
        delta(&before, &after, "orb8_pod_bytes_total", &web("egress")),
        bytes
    );
    assert_eq!(
        delta(&before, &after, "orb8_pod_bytes_total", &web("ingress")),
        0
    );
    assert_eq!(
        delta(&before, &after, "orb8_pod_bytes_total", &other("ingress")),
        bytes
    );
    assert_eq!(
        delta(&before, &after, "orb8_pod_bytes_total", &other("egress")),
        0
    );
    assert_eq!(get_value(&after, "orb8_pods_over_cap", &[]), 1);
    assert_eq!(get_value(&after, "orb8_pods_tracked", &[]), 2);

    // No series beyond the cap: one pod of its own plus _other, two directions each.
    let pods: BTreeSet<(String, String)> = after
        .samples
        .iter()
        .filter(|s| s.metric == "orb8_pod_bytes_total")
        .map(|s| {
            (
                s.labels.get("namespace").unwrap_or_default().to_string(),
                s.labels.get("pod").unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        pods,
        BTreeSet::from([
            ("_other".to_string(), "_other".to_string()),
            ("shop".to_string(), "web-0".to_string())
        ])
    );

    // Nothing lost, and every loss counter is there with its stage.
    for (stage, reason) in [
        ("kernel", "ringbuf_full"),
        ("kernel", "flow_insert_failed"),
        ("agent", "queue_overflow"),
        ("client", "slow_client"),
    ] {
        let labels = [("stage", stage), ("reason", reason)];
        assert!(
            after
                .samples
                .iter()
                .any(|s| s.metric == "orb8_events_dropped_total"
                    && s.labels.get("stage") == Some(stage)
                    && s.labels.get("reason") == Some(reason)),
            "orb8_events_dropped_total{labels:?} missing"
        );
        assert_eq!(get_value(&after, "orb8_events_dropped_total", &labels), 0);
    }
    assert_eq!(
        get_value(
            &after,
            "orb8_packets_unparsed_total",
            &[("reason", "bad_l3")]
        ),
        0
    );

    // Every sample has HELP and TYPE (the parser leaves untyped samples Untyped), and the
    // issue's names are all there.
    for s in &after.samples {
        assert!(
            after.docs.contains_key(&s.metric),
            "no HELP for {}",
            s.metric
        );
        assert!(
            !matches!(s.value, Value::Untyped(_)),
            "no TYPE for {}",
            s.metric
        );
    }
    let names: BTreeSet<&str> = after.samples.iter().map(|s| s.metric.as_str()).collect();
    for m in EXPORTED {
        assert!(names.contains(m), "{m} not exported: {names:?}");
    }
    let build = after
        .samples
        .iter()
        .find(|s| s.metric == "orb8_build_info")
        .unwrap();
    assert_eq!(
        build.labels.get("kernel").map(str::to_string),
        Some(
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap()
                .trim()
                .to_string()
        )
    );

    // The Grafana dashboard asks only for metrics this scrape has.
    let dashboard = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/monitoring/grafana-dashboard.json");
    let queried = dashboard_metrics(&std::fs::read_to_string(&dashboard).unwrap());
    assert!(queried.len() >= 8, "the dashboard queries {queried:?}");
    for m in &queried {
        assert!(
            names.contains(m.as_str()),
            "the dashboard queries {m}, which no scrape has"
        );
    }
}

/// Metric names (`orb8_...`) in every `expr` of a Grafana dashboard JSON.
fn dashboard_metrics(json: &str) -> BTreeSet<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(e)) => {
                            out.push(e.clone())
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let v: serde_json::Value = serde_json::from_str(json).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    walk(&v, &mut exprs);
    assert!(!exprs.is_empty(), "the dashboard has no queries");
    exprs
        .iter()
        .flat_map(|e| {
            e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("orb8_"))
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn privileged_metrics_gpu_series_carry_the_kubelets_pods_and_the_processes_pods() {
    use orb8_testkit::pod_resources::{self, GHOST, GPU0, GPU1, GPU2, MIG0};
    require_root();
    let node = NetNs::new("o8gm");
    let runtime = RuntimeDir::new();
    let kubelet = pod_resources::serve("metrics", pod_resources::gpu_fixture());
    let uid_train = "7e57a11e-0000-4000-8000-00000000b000";
    let uid_a = "7e57a11e-0000-4000-8000-00000000b001";
    let (cid_train, cid_a) = (
        format!("{:064x}", 0xfeed_0000u64),
        format!("{:064x}", 0xfeed_0001u64),
    );
    // The training pod's container has containerd's files; infer-a's does not (named by UID).
    runtime.sandbox(&cid_train, "ml", "train-0");
    let procs = [
        PodProcess::start(Some((uid_train, &cid_train))),
        PodProcess::start(Some((uid_a, &cid_a))),
        PodProcess::start(None),
        PodProcess::start(None),
    ];
    let pids = [0, 1, 2, 3].map(|i| procs[i].pid());
    let samples = std::env::temp_dir().join(format!("{}.json", unique("o8gm")));
    std::fs::write(&samples, pod_resources::gpu_readings_json(pids)).expect("samples");
    let agent = MetricsAgent::start_with(
        &node,
        &runtime,
        8,
        &[
            format!("--gpu-samples={}", samples.display()),
            format!("--pod-resources-socket={}", kubelet.socket.display()),
            "--interface=lo".to_string(),
        ],
    );
    let scrape = scrape(&node, &agent);
    std::fs::remove_file(&samples).expect("remove samples");
    assert_eq!(kubelet.calls(), vec!["List", "GetAllocatableResources"]);

    let src = [("source", "recorded")];
    assert_eq!(sample(&scrape, "orb8_gpu_up", &src), Some(1.0));
    assert_eq!(sample(&scrape, "orb8_gpus", &src), Some(3.0));
    let held = |gpu: &'static str, uuid: &'static str, ns: &'static str, pod: &'static str| {
        [
            ("gpu", gpu),
            ("uuid", uuid),
            ("namespace", ns),
            ("pod", pod),
        ]
    };
    let gib = (1u64 << 30) as f64;
    // GPU 0 is train-0's; GPU 1 is shared by infer-a and infer-b (one series each, the whole
    // GPU's value); GPU 2's MIG instance is the notebook's.
    for (metric, labels, want) in [
        (
            "orb8_gpu_utilization_ratio",
            held("0", GPU0, "ml", "train-0"),
            0.87,
        ),
        (
            "orb8_gpu_utilization_ratio",
            held("1", GPU1, "ml", "infer-a"),
            0.3,
        ),
        (
            "orb8_gpu_utilization_ratio",
            held("1", GPU1, "ml", "infer-b"),
            0.3,
        ),
        (
            "orb8_gpu_memory_utilization_ratio",
            held("0", GPU0, "ml", "train-0"),
            0.41,
        ),
        (
            "orb8_gpu_memory_used_bytes",
            held("0", GPU0, "ml", "train-0"),
            20.0 * gib,
        ),
        (
            "orb8_gpu_memory_total_bytes",
            held("1", GPU1, "ml", "infer-b"),
            24.0 * gib,
        ),
        (
            "orb8_gpu_memory_used_bytes",
            held("2", GPU2, "ml", "notebook"),
            5.0 * gib,
        ),
        (
            "orb8_gpu_power_watts",
            held("0", GPU0, "ml", "train-0"),
            251.0,
        ),
        (
            "orb8_gpu_power_limit_watts",
            held("2", GPU2, "ml", "notebook"),
            700.0,
        ),
        (
            "orb8_gpu_temperature_celsius",
            held("1", GPU1, "ml", "infer-a"),
            50.0,
        ),
        (
            "orb8_gpu_sm_clock_hertz",
            held("0", GPU0, "ml", "train-0"),
            1.41e9,
        ),
    ] {
        assert_eq!(
            sample(&scrape, metric, &labels),
            Some(want),
            "{metric}{labels:?}"
        );
    }
    // What the source does not give is absent: GPU 2 reports no utilization.
    assert!(
        !scrape
            .samples
            .iter()
            .any(|s| s.metric == "orb8_gpu_utilization_ratio"
                && s.labels.get("uuid") == Some(GPU2)),
        "GPU 2 has no utilization in the sample"
    );
    assert_eq!(
        sample(
            &scrape,
            "orb8_gpu_mig_memory_used_bytes",
            &[
                ("gpu", "2"),
                ("uuid", GPU2),
                ("mig_uuid", MIG0),
                ("profile", "1g.10gb"),
                ("namespace", "ml"),
                ("pod", "notebook")
            ]
        ),
        Some(5.0 * gib)
    );
    // Processes: named from containerd's files, by pod UID without them, none outside a pod.
    let comm = "sleep";
    let proc_labels = |gpu: &'static str,
                       uuid: &'static str,
                       mig: &'static str,
                       pid: u32,
                       ns: &'static str,
                       pod: &str| {
        vec![
            ("gpu", gpu.to_string()),
            ("uuid", uuid.to_string()),
            ("mig_uuid", mig.to_string()),
            ("pid", pid.to_string()),
            ("comm", comm.to_string()),
            ("namespace", ns.to_string()),
            ("pod", pod.to_string()),
        ]
    };
    for (labels, want) in [
        (
            proc_labels("0", GPU0, "", pids[0], "ml", "train-0"),
            19.0 * gib,
        ),
        (proc_labels("1", GPU1, "", pids[1], "", uid_a), 4.0 * gib),
        (proc_labels("1", GPU1, "", pids[3], "", ""), 2.0 * gib),
        (proc_labels("2", GPU2, MIG0, pids[2], "", ""), 5.0 * gib),
    ] {
        let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            sample(&scrape, "orb8_gpu_process_memory_bytes", &l),
            Some(want),
            "{l:?}"
        );
    }
    assert_eq!(
        sample(
            &scrape,
            "orb8_gpu_process_sm_utilization_ratio",
            &proc_labels("0", GPU0, "", pids[0], "ml", "train-0")
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>()
        ),
        Some(0.85)
    );
    // The kubelet's allocation of a GPU this node does not have is counted, not hidden.
    assert_eq!(
        sample(&scrape, "orb8_gpu_allocations_unmatched", &[]),
        Some(1.0)
    );
    assert_eq!(sample(&scrape, "orb8_gpu_pod_resources_up", &[]), Some(1.0));
    assert!(
        !scrape
            .samples
            .iter()
            .any(|s| s.labels.values().any(|v| v == GHOST)),
        "the unmatched device names no series"
    );
}
