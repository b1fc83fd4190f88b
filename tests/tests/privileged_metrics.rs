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

/// The value of `metric` with exactly these labels (0 when there is no such series).
fn get_value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> u64 {
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
    found.first().map(|s| value(s) as u64).unwrap_or(0)
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
