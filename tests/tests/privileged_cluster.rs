//! Privileged end-to-end: the `kubectl-orb8` binary in cluster mode (no --local, no --agent)
//! against a fake cluster on loopback ([`orb8_testkit::fake_cluster`]): a fake API server, and a
//! fake kubelet that runs the agent pods kubectl-orb8 creates as real `orb8-agent` processes in
//! the network namespace playing the node. Workload pods are the topology's pod namespaces.
//! Real probes, real traffic, exact counts, and every agent pod deleted at the end.
//!
//! Over 600 lines: each test is one cluster-mode scenario on the same fake-cluster set-up;
//! splitting them across files would only repeat that set-up.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use orb8_testkit::api_request::ApiRequest;
use orb8_testkit::fake_cluster::FakeCluster;
use orb8_testkit::*;
use serde_json::Value;

const NODE: &str = "node-1";
const AGENT_NS: &str = "orb8-system";

/// A cluster whose node is `topo.node` and whose namespace `a` holds the topology's pods
/// (`pod-0`, `pod-1`, ... labelled `app=pod-N`), running on node-1.
fn cluster_of(topo: &Topology) -> FakeCluster {
    let cluster = FakeCluster::start(NODE, &topo.node);
    cluster.add_namespace("a");
    for (i, pod) in topo.pods.iter().enumerate() {
        let name = format!("pod-{i}");
        cluster.add_pod("a", &name, &[("app", &name)], NODE, &pod.ip4, &pod.ns.name);
    }
    cluster
}

/// `kubectl-orb8` running against the fake cluster; killed if the test fails first.
struct Orb8(Option<Child>);

impl Orb8 {
    fn start(cluster: &FakeCluster, args: &[&str]) -> Orb8 {
        let child = Command::new(workspace_bin("kubectl-orb8"))
            .arg("--kubeconfig")
            .arg(&cluster.kubeconfig)
            .args(args)
            .env_remove("KUBECONFIG")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning kubectl-orb8");
        Orb8(Some(child))
    }

    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("running")
    }

    fn finish(mut self, cluster: &FakeCluster) -> Output {
        let child = self.0.take().expect("running");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        rx.recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "kubectl-orb8 did not exit within 60 s; requests: {:#?}",
                    lines(cluster)
                )
            })
            .expect("waiting for kubectl-orb8")
    }
}

impl Drop for Orb8 {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn lines(cluster: &FakeCluster) -> Vec<String> {
    cluster.requests().iter().map(ApiRequest::line).collect()
}

/// Index of the first request matching `pred`, panicking with the whole log when none does.
fn position(reqs: &[ApiRequest], what: &str, pred: impl Fn(&ApiRequest) -> bool) -> usize {
    reqs.iter().position(pred).unwrap_or_else(|| {
        panic!(
            "no request {what}; saw:\n{}",
            reqs.iter()
                .map(ApiRequest::line)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

/// The agent pods kubectl-orb8 created (name, port from its args), each with its lifecycle
/// requests in order: create pinned to node-1, watch, port-forward, delete; and afterwards
/// nothing left: no pod, no process, each agent stopped cleanly by SIGTERM.
fn assert_agents_came_and_went(cluster: &FakeCluster) -> Vec<String> {
    let reqs = cluster.requests();
    let log = reqs
        .iter()
        .map(ApiRequest::line)
        .collect::<Vec<_>>()
        .join("\n");
    let creates: Vec<&ApiRequest> = reqs
        .iter()
        .filter(|r| r.method == "POST" && r.path == format!("/api/v1/namespaces/{AGENT_NS}/pods"))
        .collect();
    assert_eq!(creates.len(), 1, "one node, one agent pod:\n{log}");
    let mut names = Vec::new();
    for create in creates {
        let body = create.body.as_ref().expect("pod body");
        assert_eq!(create.code, 201, "{log}");
        assert_eq!(body["spec"]["nodeName"], NODE);
        assert_eq!(body["spec"]["hostNetwork"], true);
        let name = body["metadata"]["name"].as_str().expect("name").to_string();
        let args: Vec<&str> = body["spec"]["containers"][0]["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let port = args
            .iter()
            .find_map(|a| a.strip_prefix("127.0.0.1:"))
            .expect("--listen 127.0.0.1:PORT");
        let pod_path = format!("/api/v1/namespaces/{AGENT_NS}/pods/{name}");
        let i_create = position(&reqs, "creating the pod", |r| std::ptr::eq(r, create));
        let i_watch = position(&reqs, "watching the pod", |r| {
            r.method == "GET"
                && r.path == format!("/api/v1/namespaces/{AGENT_NS}/pods")
                && r.param("watch") == Some("true")
                && r.param("fieldSelector") == Some(&format!("metadata.name={name}"))
        });
        let i_forward = position(&reqs, "port-forwarding to the pod", |r| {
            r.path == format!("{pod_path}/portforward") && r.param("ports") == Some(port)
        });
        let i_delete = position(&reqs, "deleting the pod", |r| {
            r.method == "DELETE" && r.path == pod_path
        });
        assert!(
            i_create < i_watch && i_watch < i_forward && i_forward < i_delete,
            "create, watch, port-forward, delete in order:\n{log}"
        );
        assert_eq!(reqs[i_delete].code, 200, "{log}");
        names.push(name);
    }
    assert!(
        cluster.pods(AGENT_NS).is_empty(),
        "agent pods left: {:#?}",
        cluster.pods(AGENT_NS)
    );
    for c in cluster.containers() {
        assert_eq!(
            c.exit,
            Some(0),
            "agent {} should stop cleanly on SIGTERM; log: {:#?}",
            c.pod,
            c.log
        );
        assert!(
            !std::path::Path::new(&format!("/proc/{}", c.pid)).exists(),
            "agent process {} still exists",
            c.pid
        );
        assert_eq!(c.env.get("NODE_NAME").map(String::as_str), Some(NODE));
        assert!(c.env.get("ORB8_AGENT_TOKEN").is_some_and(|t| t.len() >= 16));
    }
    names
}

#[test]
fn privileged_cluster_flows_json_has_exact_counts_and_deletes_its_agent() {
    require_root();
    let topo = Topology::new(2);
    let (a, b) = (&topo.pods[0], &topo.pods[1]);
    let cluster = cluster_of(&topo);
    let orb8 = Orb8::start(
        &cluster,
        &[
            "flows",
            "-n",
            "a",
            "--by",
            "connection",
            "-o",
            "json",
            "--duration",
            "3s",
        ],
    );
    wait_attached(&topo.node, &a.host_if);
    let rx = udp_receiver(&b.ns, &format!("{}:5000", b.ip4), 20);
    udp_send(
        &a.ns,
        &format!("{}:40000", a.ip4),
        &format!("{}:5000", b.ip4),
        20,
        100,
    );
    assert_eq!(rx.join().unwrap(), 20);

    let out = orb8.finish(&cluster);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kubectl-orb8 failed ({}): {stderr}\nrequests:\n{}",
        out.status,
        lines(&cluster).join("\n")
    );
    let flows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let udp: Vec<&Value> = flows
        .iter()
        .filter(|f| {
            f["interface"] == a.host_if.as_str()
                && f["interface_direction"] == "ingress"
                && f["protocol"] == "udp"
                && f["src"] == a.ip4.as_str()
                && f["dst"] == b.ip4.as_str()
        })
        .collect();
    assert_eq!(udp.len(), 1, "one UDP flow A -> B on A's veth: {flows:#?}");
    assert_eq!(counts(udp[0]), (20, 20 * (100 + 28)));
    assert_eq!(udp[0]["node"], NODE);
    // Seen at A's veth: A sent it.
    assert_eq!(
        (udp[0]["pod"].as_str(), udp[0]["direction"].as_str()),
        (Some("a/pod-0"), Some("egress"))
    );
    // Both ends are named from the API server's pods.
    assert_eq!(udp[0]["src_name"], "a/pod-0");
    assert_eq!(udp[0]["dst_name"], "a/pod-1");
    assert_eq!(
        (&udp[0]["pod"], &udp[0]["peer"]),
        (&Value::from("a/pod-0"), &Value::from("a/pod-1"))
    );
    // -n a keeps only flows with a pod of a at one end: nothing unnamed on both ends.
    for f in &flows {
        let named = |k: &str| f[k].as_str().is_some_and(|n| n.starts_with("a/"));
        assert!(
            named("src_name") || named("dst_name"),
            "a flow of no selected pod: {f:#}"
        );
    }
    assert_eq!(
        (udp[0]["src_port"].as_u64(), udp[0]["dst_port"].as_u64()),
        (Some(40000), Some(5000))
    );

    let reqs = cluster.requests();
    eprintln!(
        "requests kubectl-orb8 made:\n{}",
        lines(&cluster).join("\n")
    );
    let i_list = position(&reqs, "listing pods in a", |r| {
        r.method == "GET" && r.path == "/api/v1/namespaces/a/pods" && r.param("watch").is_none()
    });
    let i_ns = position(&reqs, "checking the agent namespace", |r| {
        r.method == "GET" && r.path == format!("/api/v1/namespaces/{AGENT_NS}")
    });
    let i_ns_create = position(&reqs, "creating the agent namespace", |r| {
        r.method == "POST" && r.path == "/api/v1/namespaces"
    });
    assert_eq!(reqs[i_ns].code, 404);
    assert_eq!(reqs[i_ns_create].code, 201);
    let body = reqs[i_ns_create].body.as_ref().expect("namespace body");
    assert_eq!(
        body["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    let i_pod = position(&reqs, "creating an agent pod", |r| {
        r.method == "POST" && r.path.ends_with("/pods")
    });
    assert!(i_list < i_ns && i_ns < i_ns_create && i_ns_create < i_pod);
    assert!(cluster.has_namespace(AGENT_NS));
    let names = assert_agents_came_and_went(&cluster);
    // kubectl-orb8 waited for the pod to be gone: its last look found nothing.
    let last_get = reqs
        .iter()
        .rfind(|r| r.method == "GET" && r.path.ends_with(&names[0]))
        .expect("a GET after the delete");
    assert_eq!(last_get.code, 404, "{}", lines(&cluster).join("\n"));
    assert_eq!(cluster.open_forwards(), 0);
}

#[test]
fn privileged_cluster_trace_all_namespaces_streams_through_the_port_forward() {
    require_root();
    let topo = Topology::new(2);
    let (a, b) = (&topo.pods[0], &topo.pods[1]);
    let cluster = cluster_of(&topo);
    let mut orb8 = Orb8::start(
        &cluster,
        &[
            "trace",
            "network",
            "-A",
            "-o",
            "json",
            "--duration",
            "8s",
            "--protocol",
            "udp",
        ],
    );
    let stdout = orb8.child().stdout.take().expect("stdout");
    let (tx, lines_rx) = mpsc::channel::<String>();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    // The stream opens once the agent pod runs and answers: send distinct warm-up datagrams
    // (port 4999) until the trace shows one, then the flow we look for.
    let mut seen: Vec<Value> = Vec::new();
    let end = Instant::now() + Duration::from_secs(40);
    let mut sport = 41000u16;
    while !seen.iter().any(|l| l["dst_port"] == 4999) {
        assert!(
            Instant::now() < end,
            "the trace never showed a flow; requests:\n{}",
            lines(&cluster).join("\n")
        );
        udp_send(
            &a.ns,
            &format!("{}:{sport}", a.ip4),
            &format!("{}:4999", b.ip4),
            1,
            8,
        );
        sport += 1;
        while let Ok(l) = lines_rx.recv_timeout(Duration::from_millis(100)) {
            seen.push(serde_json::from_str(&l).expect("NDJSON line"));
        }
    }
    let rx = udp_receiver(&b.ns, &format!("{}:5001", b.ip4), 5);
    udp_send(
        &a.ns,
        &format!("{}:40100", a.ip4),
        &format!("{}:5001", b.ip4),
        5,
        64,
    );
    assert_eq!(rx.join().unwrap(), 5);

    let out = orb8.finish(&cluster);
    reader.join().unwrap();
    while let Ok(l) = lines_rx.try_recv() {
        seen.push(serde_json::from_str(&l).expect("NDJSON line"));
    }
    assert!(
        out.status.success(),
        "kubectl-orb8 trace failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let ours: Vec<&Value> = seen
        .iter()
        .filter(|l| l["event"] == "new_flow" && l["dst_port"] == 5001)
        .collect();
    let mut got: Vec<(String, String)> = ours
        .iter()
        .map(|l| {
            (
                l["interface"].as_str().unwrap().to_string(),
                l["interface_direction"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        (a.host_if.clone(), "ingress".to_string()),
        (b.host_if.clone(), "egress".to_string()),
    ];
    want.sort();
    assert_eq!(got, want, "{seen:#?}");
    for l in &ours {
        assert_eq!(l["node"], NODE);
        assert_eq!(l["src"], a.ip4.as_str());
        assert_eq!(
            (&l["src_name"], &l["dst_name"]),
            (&Value::from("a/pod-0"), &Value::from("a/pod-1"))
        );
        assert_eq!(counts(l), (1, 64 + 28));
    }

    let reqs = cluster.requests();
    position(&reqs, "listing nodes (-A: every node)", |r| {
        r.method == "GET" && r.path == "/api/v1/nodes"
    });
    assert!(
        !reqs
            .iter()
            .any(|r| r.path.ends_with("/pods") && r.path.starts_with("/api/v1/namespaces/a")),
        "-A with no selector lists nodes, not pods"
    );
    assert_agents_came_and_went(&cluster);
}

#[test]
fn privileged_cluster_image_pull_backoff_fails_in_one_line_and_deletes_the_pod() {
    require_root();
    let topo = Topology::new(2);
    let cluster = cluster_of(&topo);
    let image = "example.test/orb8/orb8-agent:does-not-exist";
    cluster.refuse_image(image);
    let out = Orb8::start(
        &cluster,
        &[
            "flows",
            "-n",
            "a",
            "--image",
            image,
            "-o",
            "json",
            "--duration",
            "3s",
        ],
    )
    .finish(&cluster);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("kubectl-orb8 said: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(image) && stderr.contains("ImagePullBackOff"),
        "names the image and the reason: {stderr}"
    );
    let reqs = cluster.requests();
    let log = lines(&cluster).join("\n");
    let create = position(&reqs, "creating the agent pod", |r| {
        r.method == "POST" && r.path == format!("/api/v1/namespaces/{AGENT_NS}/pods")
    });
    let name = reqs[create].body.as_ref().unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let delete = position(&reqs, "deleting the agent pod", |r| {
        r.method == "DELETE" && r.path.ends_with(&format!("/pods/{name}"))
    });
    assert!(create < delete, "{log}");
    assert!(
        !reqs.iter().any(|r| r.path.ends_with("/portforward")),
        "no port-forward to a pod that never ran:\n{log}"
    );
    assert!(cluster.pods(AGENT_NS).is_empty());
    assert!(cluster.containers().is_empty(), "nothing ran");
}

#[test]
fn privileged_cluster_selector_matching_nothing_creates_nothing() {
    require_root();
    let topo = Topology::new(2);
    let cluster = cluster_of(&topo);
    let out = Orb8::start(
        &cluster,
        &["flows", "-n", "a", "-l", "app=none", "--duration", "3s"],
    )
    .finish(&cluster);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("kubectl-orb8 said: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("no running or pending pods in namespace \"a\" matching app=none"),
        "{stderr}"
    );
    let reqs = cluster.requests();
    let log = lines(&cluster).join("\n");
    let list = position(&reqs, "listing pods by label", |r| {
        r.path == "/api/v1/namespaces/a/pods" && r.param("labelSelector") == Some("app=none")
    });
    assert_eq!(reqs[list].code, 200);
    assert!(
        reqs.iter().all(|r| r.method == "GET"),
        "nothing created or deleted:\n{log}"
    );
    assert!(!cluster.has_namespace(AGENT_NS));
}

#[test]
fn privileged_cluster_ctrl_c_while_the_agent_pod_starts_deletes_it() {
    require_root();
    let topo = Topology::new(2);
    let cluster = cluster_of(&topo);
    let image = "example.test/orb8/orb8-agent:slow";
    cluster.stall_image(image);
    let mut orb8 = Orb8::start(
        &cluster,
        &["flows", "-n", "a", "--image", image, "--duration", "3s"],
    );
    // Ctrl-C once the client watches its pod and the kubelet reports the pod starting.
    let end = Instant::now() + Duration::from_secs(20);
    let creating = |pod: &Value| {
        pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ContainerCreating"
    };
    while !(cluster.requests().iter().any(|r| r.is_watch())
        && cluster.pods(AGENT_NS).iter().any(creating))
    {
        assert!(
            Instant::now() < end,
            "no watch of a ContainerCreating agent pod within 20 s: {:#?}\npods: {:#?}",
            lines(&cluster),
            cluster.pods(AGENT_NS)
        );
        thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(orb8.child().id() as i32, libc::SIGINT) };
    let out = orb8.finish(&cluster);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let reqs = cluster.requests();
    position(&reqs, "deleting the starting pod", |r| r.method == "DELETE");
    assert!(cluster.pods(AGENT_NS).is_empty(), "{:#?}", lines(&cluster));
}

#[test]
fn privileged_cluster_cleanup_deletes_what_a_killed_client_left() {
    require_root();
    let topo = Topology::new(2);
    let cluster = cluster_of(&topo);
    let mut orb8 = Orb8::start(&cluster, &["trace", "network", "-n", "a", "-o", "json"]);
    wait_attached(&topo.node, &topo.pods[0].host_if);
    let _ = orb8.child().kill();
    let _ = orb8.child().wait();
    let left = cluster.pods(AGENT_NS);
    assert_eq!(left.len(), 1, "a killed client leaves its agent pod");
    let name = left[0]["metadata"]["name"].as_str().unwrap().to_string();
    assert!(cluster.containers().iter().all(|c| c.exit.is_none()));

    let out = Orb8::start(&cluster, &["cleanup", "-o", "json"]).finish(&cluster);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cleanup failed: {stderr}");
    let listed: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        listed,
        serde_json::json!([{
            "namespace": AGENT_NS, "pod": name, "node": NODE,
            "session": left[0]["metadata"]["labels"]["orb8.dev/session"],
            "phase": "Running", "action": "deleted",
        }])
    );
    let reqs = cluster.requests();
    position(
        &reqs,
        "listing agent pods by label in every namespace",
        |r| {
            r.path == "/api/v1/pods"
                && r.param("labelSelector")
                    == Some(
                        "app.kubernetes.io/managed-by=kubectl-orb8,app.kubernetes.io/name=orb8-agent",
                    )
        },
    );
    assert!(cluster.pods(AGENT_NS).is_empty());
    let containers = cluster.containers();
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0].exit, Some(0), "{:#?}", containers[0].log);
}

#[test]
fn privileged_trace_syscall_pod_traces_its_container_cgroup_on_its_node() {
    require_root();
    let topo = Topology::new(1);
    let cluster = cluster_of(&topo);
    // The pod's container, laid out as containerd with the systemd driver lays it out.
    let uid = "3f2a1b4c-5d6e-4f70-8a9b-0c1d2e3f4a5b";
    let id = "ab".repeat(32);
    let cg = TestCgroup::nested(&format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id}.scope",
        uid.replace('-', "_")
    ));
    cluster.set_containers("a", "pod-0", uid, &[("app", &format!("containerd://{id}"))]);
    let load = SyscallLoad::start(false, Some(&cg), 300, 3, 2);
    // The same calls outside the pod must not count.
    let outsider = SyscallLoad::start(false, None, 300, 3, 2);

    let mut orb8 = Orb8::start(
        &cluster,
        &[
            "-n",
            "a",
            "trace",
            "syscall",
            "pod-0",
            "-o",
            "json",
            "--duration",
            "30s",
        ],
    );
    let mut stderr = BufReader::new(orb8.child().stderr.take().unwrap());
    let mut err = String::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!(
                "kubectl-orb8 stopped before tracing: {err}\nrequests: {:#?}",
                lines(&cluster)
            );
        }
        err.push_str(&line);
        if line.starts_with("orb8: tracing ") {
            break;
        }
    }
    outsider.go_and_wait();
    load.go_and_wait();
    // The container's cgroup goes away with its last process: the trace ends by itself.
    drop(cg);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    err.push_str(&rest);
    let out = orb8.finish(&cluster);
    assert!(out.status.success(), "kubectl-orb8 failed: {err}");
    assert!(err.contains("every container of the pod is gone"), "{err}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert_eq!(v["filter"], "cgroup");
    let row = |name: &str| -> Value {
        v["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["syscall"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {v:#}"))
    };
    assert_eq!(row("getppid")["calls"], 300);
    assert_eq!(row("openat")["errnos"]["ENOENT"], 3);
    assert_eq!(row("close")["errnos"]["EBADF"], 2);
    // One agent, on the pod's node, created, used and deleted.
    let reqs = cluster.requests();
    let creates: Vec<&ApiRequest> = reqs
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/pods"))
        .collect();
    assert_eq!(creates.len(), 1, "{:#?}", lines(&cluster));
    assert!(
        reqs.iter().any(|r| r.method == "DELETE"),
        "{:#?}",
        lines(&cluster)
    );
}

#[test]
fn privileged_trace_syscall_of_a_missing_pod_says_so_and_creates_nothing() {
    require_root();
    let topo = Topology::new(1);
    let cluster = cluster_of(&topo);
    let out = Orb8::start(
        &cluster,
        &["-n", "a", "trace", "syscall", "nope", "--duration", "2s"],
    )
    .finish(&cluster);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "orb8: pod a/nope not found"
    );
    assert!(
        cluster.requests().iter().all(|r| r.method == "GET"),
        "{:#?}",
        lines(&cluster)
    );
}
