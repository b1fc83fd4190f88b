//! Privileged end-to-end: cluster mode as a user bound exactly as `manifests/clusterrole.yaml`
//! says (`orb8-user` cluster-wide, `orb8-agent-manager` in `orb8-system`), against the fake
//! cluster enforcing those rules ([`FakeCluster::enforce_rbac`]): every command runs without a
//! forbidden request or a warning; a rule taken away shows up as the warning it causes; finished
//! agent pods of gone sessions are removed by the next command (and nothing else is); `-A`
//! leaves a NotReady node out up front and names it.

use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use orb8_testkit::api_request::ApiRequest;
use orb8_testkit::fake_cluster::{FakeCluster, PolicyRule, Rbac, cluster_roles};
use orb8_testkit::*;
use serde_json::Value;

const NODE: &str = "node-1";
const AGENT_NS: &str = "orb8-system";
const MANIFEST: &str = include_str!("../../manifests/clusterrole.yaml");

/// The manifest's bindings for the kubeconfig's user, after `edit` changed `orb8-user`'s rules.
fn documented_rbac(edit: impl FnOnce(&mut Vec<PolicyRule>)) -> Rbac {
    let mut roles = cluster_roles(MANIFEST).expect("manifests/clusterrole.yaml parses");
    let user = roles.get_mut("orb8-user").expect("ClusterRole orb8-user");
    edit(user);
    Rbac::new("tester")
        .bind_cluster(&roles["orb8-user"])
        .bind_namespace(AGENT_NS, &roles["orb8-agent-manager"])
}

/// A cluster enforcing the documented RBAC, whose namespace `a` holds the topology's pods.
fn cluster_of(topo: &Topology) -> FakeCluster {
    let cluster = FakeCluster::start(NODE, &topo.node);
    cluster.add_namespace("a");
    for (i, pod) in topo.pods.iter().enumerate() {
        let name = format!("pod-{i}");
        cluster.add_pod("a", &name, &[("app", &name)], NODE, &pod.ip4, &pod.ns.name);
    }
    cluster.enforce_rbac(Some(documented_rbac(|_| {})));
    cluster
}

fn lines(cluster: &FakeCluster) -> String {
    cluster
        .requests()
        .iter()
        .map(ApiRequest::line)
        .collect::<Vec<_>>()
        .join("\n")
}

fn start(cluster: &FakeCluster, args: &[&str]) -> Child {
    Command::new(workspace_bin("kubectl-orb8"))
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
        .expect("spawning kubectl-orb8")
}

/// Runs kubectl-orb8 to its end (60 s at most, else the test fails with the request log).
fn run(cluster: &FakeCluster, args: &[&str]) -> (Output, String) {
    let mut child = start(cluster, args);
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    thread::spawn(move || {
        let read = |r: Option<Box<dyn std::io::Read + Send>>| {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        };
        let err = thread::spawn(move || read(stderr.map(|s| Box::new(s) as _)));
        let out = read(stdout.map(|s| Box::new(s) as _));
        let status = child.wait();
        let _ = tx.send((status, out, err.join().unwrap_or_default()));
    });
    let (status, stdout, stderr) = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            // SAFETY: killing our own child, which has not been reaped (wait did not return).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!(
                "kubectl-orb8 {args:?} did not exit within 60 s; requests:\n{}",
                lines(cluster)
            )
        });
    let text = String::from_utf8_lossy(&stderr).into_owned();
    let out = Output {
        status: status.expect("waiting for kubectl-orb8"),
        stdout,
        stderr,
    };
    eprintln!("kubectl-orb8 {args:?} said: {text}");
    (out, text)
}

fn forbidden(cluster: &FakeCluster) -> Vec<String> {
    cluster
        .requests()
        .iter()
        .filter(|r| r.code == 403)
        .map(ApiRequest::line)
        .collect()
}

fn wait_for(what: &str, cluster: &FakeCluster, cond: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            Instant::now() < end,
            "{what}: not within 30 s; pods {:#?}\nrequests:\n{}",
            cluster.pods(AGENT_NS),
            lines(cluster)
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn pod_names(cluster: &FakeCluster) -> Vec<String> {
    let mut names: Vec<String> = cluster
        .pods(AGENT_NS)
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn privileged_cluster_rbac_the_documented_roles_are_enough_for_every_command() {
    require_root();
    let topo = Topology::new(2);
    let cluster = cluster_of(&topo);
    let uid = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";
    let id = "cd".repeat(32);
    let _cg = TestCgroup::nested(&format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id}.scope",
        uid.replace('-', "_")
    ));
    cluster.set_containers("a", "pod-0", uid, &[("app", &format!("containerd://{id}"))]);
    let commands: [&[&str]; 9] = [
        &["flows", "-n", "a", "--duration", "2s"],
        &["flows", "-A", "-o", "json", "--duration", "2s"],
        &[
            "trace",
            "network",
            "-n",
            "a",
            "-l",
            "app=pod-1",
            "--duration",
            "2s",
        ],
        &["-n", "a", "trace", "syscall", "pod-0", "--duration", "2s"],
        &["-n", "a", "status"],
        &["-n", "a", "gpu"],
        &["-n", "a", "gpu", "pod-0", "-o", "json"],
        &["cleanup", "--dry-run"],
        &["cleanup"],
    ];
    for args in commands {
        let (out, stderr) = run(&cluster, args);
        assert!(out.status.success(), "{args:?} failed: {stderr}");
        assert!(
            !stderr.contains("warning") && !stderr.contains("forbidden"),
            "{args:?} warned: {stderr}"
        );
        assert_eq!(
            forbidden(&cluster),
            Vec::<String>::new(),
            "{args:?}: requests the documented RBAC does not allow"
        );
    }
    let reqs = cluster.requests();
    for (what, method, path) in [
        ("created the agent namespace", "POST", "/api/v1/namespaces"),
        ("listed services", "GET", "/api/v1/services"),
        ("listed nodes", "GET", "/api/v1/nodes"),
        (
            "read the traced pod",
            "GET",
            "/api/v1/namespaces/a/pods/pod-0",
        ),
        ("listed agent pods everywhere", "GET", "/api/v1/pods"),
        (
            "looked for always-on agents (none: ephemeral pods)",
            "GET",
            "/apis/discovery.k8s.io/v1/namespaces/orb8-system/endpointslices",
        ),
    ] {
        assert!(
            reqs.iter()
                .any(|r| r.method == method && r.path == path && r.code < 300),
            "no command {what}:\n{}",
            lines(&cluster)
        );
    }
    assert!(
        reqs.iter()
            .any(|r| r.path.ends_with("/portforward") && r.code == 101),
        "no port-forward went through:\n{}",
        lines(&cluster)
    );
    assert!(cluster.pods(AGENT_NS).is_empty());
}

#[test]
fn privileged_cluster_rbac_without_services_the_warning_names_the_missing_rule() {
    require_root();
    let topo = Topology::new(2);
    let cluster = cluster_of(&topo);
    cluster.enforce_rbac(Some(documented_rbac(|rules| {
        for r in rules.iter_mut() {
            r.resources.retain(|res| res != "services");
        }
    })));
    let (out, stderr) = run(&cluster, &["flows", "-n", "a", "--duration", "2s"]);
    assert!(out.status.success(), "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("orb8: warning"))
        .collect();
    assert_eq!(
        warnings,
        vec![
            "orb8: warning: listing services: forbidden (services is forbidden: User \"tester\" \
             cannot list resource \"services\" in API group \"\" at the cluster scope); see \
             manifests/clusterrole.yaml for the RBAC orb8 needs"
        ]
    );
    // Refused once: what cannot be listed is not watched (nor retried in a loop).
    assert_eq!(
        forbidden(&cluster),
        vec!["GET /api/v1/services -> 403".to_string()]
    );
}

#[test]
fn privileged_cluster_rbac_next_command_removes_finished_pods_of_gone_sessions_only() {
    require_root();
    let topo = Topology::new(2);
    let cluster = cluster_of(&topo);
    // A client killed while tracing, whose agent then exited (as it does after its idle
    // timeout): once just now, then once as if long ago (in this order: each command reaps).
    for (session, finished_ago) in [("fresh", 0), ("gone", 600)] {
        cluster.report_finished_ago(Duration::from_secs(finished_ago));
        let mut client = start(
            &cluster,
            &["--session", session, "trace", "network", "-n", "a"],
        );
        let pod = format!("{AGENT_NS}/orb8-agent-{session}-0");
        wait_for("the agent runs", &cluster, || {
            cluster
                .containers()
                .iter()
                .any(|c| c.pod == pod && c.exit.is_none())
        });
        wait_attached(&topo.node, &topo.pods[0].host_if);
        let _ = client.kill();
        let _ = client.wait();
        let agent = cluster
            .containers()
            .into_iter()
            .find(|c| c.pod == pod)
            .expect("the agent container");
        // SAFETY: signalling the agent process the fake kubelet started, still running.
        unsafe { libc::kill(agent.pid as i32, libc::SIGTERM) };
        wait_for("the agent pod completes", &cluster, || {
            cluster.pods(AGENT_NS).iter().any(|p| {
                p["metadata"]["name"] == pod[AGENT_NS.len() + 1..]
                    && p["status"]["phase"] == "Succeeded"
            })
        });
    }
    cluster.report_finished_ago(Duration::ZERO);
    // A pod of another session that still runs: its client may be alive.
    cluster.add_pod(
        AGENT_NS,
        "orb8-agent-live-0",
        &[
            ("app.kubernetes.io/name", "orb8-agent"),
            ("app.kubernetes.io/managed-by", "kubectl-orb8"),
            ("orb8.dev/session", "live"),
        ],
        NODE,
        "10.77.0.1",
        &topo.node.name,
    );
    assert_eq!(
        pod_names(&cluster),
        vec![
            "orb8-agent-fresh-0",
            "orb8-agent-gone-0",
            "orb8-agent-live-0"
        ]
    );

    let (out, stderr) = run(
        &cluster,
        &["--session", "next", "flows", "-n", "a", "--duration", "1s"],
    );
    assert!(out.status.success(), "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("orb8: warning"))
        .collect();
    assert_eq!(
        warnings,
        vec![
            "orb8: warning: removed 1 finished agent pod of gone session gone (finished over 2m ago)"
        ]
    );
    assert_eq!(
        pod_names(&cluster),
        vec!["orb8-agent-fresh-0", "orb8-agent-live-0"]
    );
    // Deleted: the gone session's pod, and the command's own at its end; nothing else.
    let mut deletes: Vec<String> = cluster
        .requests()
        .iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| r.path.clone())
        .collect();
    deletes.sort();
    assert_eq!(
        deletes,
        vec![
            format!("/api/v1/namespaces/{AGENT_NS}/pods/orb8-agent-gone-0"),
            format!("/api/v1/namespaces/{AGENT_NS}/pods/orb8-agent-next-0"),
        ],
        "{}",
        lines(&cluster)
    );
    assert_eq!(forbidden(&cluster), Vec::<String>::new());
}

#[test]
fn privileged_cluster_rbac_all_namespaces_skips_a_not_ready_node_up_front() {
    require_root();
    let topo = Topology::new(2);
    let cluster = cluster_of(&topo);
    // No kubelet answers for node-2: an agent pod there would stay Pending until --timeout.
    cluster.add_node("node-2", "False", false, &[]);
    let (out, stderr) = run(
        &cluster,
        &[
            "flows",
            "-A",
            "-o",
            "json",
            "--duration",
            "2s",
            "--timeout",
            "120s",
        ],
    );
    assert!(out.status.success(), "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("orb8: warning"))
        .collect();
    assert_eq!(
        warnings,
        vec!["orb8: warning: skipping node node-2: NotReady"]
    );
    let flows: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(flows.is_array(), "{flows}");
    let nodes: Vec<String> = cluster
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == format!("/api/v1/namespaces/{AGENT_NS}/pods"))
        .map(|r| {
            r.body.as_ref().unwrap()["spec"]["nodeName"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(nodes, vec![NODE], "{}", lines(&cluster));
}

/// An always-on agent as the DaemonSet runs it (`manifests/persistent`: gRPC on 127.0.0.1:47010
/// of the node, the token from its Secret), playing the DaemonSet's pod on the fake node.
struct AlwaysOnAgent(Child);

const ALWAYS_ON_POD: &str = "orb8-agent-x7k2p";
const ALWAYS_ON_TOKEN: &str = "orb8-always-on-token-0123456789";
/// `ALWAYS_ON_TOKEN` in base64, as a Secret's `data` holds it.
const ALWAYS_ON_TOKEN_B64: &str = "b3JiOC1hbHdheXMtb24tdG9rZW4tMDEyMzQ1Njc4OQ==";

impl AlwaysOnAgent {
    fn start(node: &NetNs) -> AlwaysOnAgent {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &node.name])
            .arg(workspace_bin("orb8-agent"))
            .args(["serve", "--listen=127.0.0.1:47010", "--idle-timeout=0"])
            .env("ORB8_AGENT_TOKEN", ALWAYS_ON_TOKEN)
            .env("NODE_NAME", NODE)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning orb8-agent serve");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("the ready line");
        assert!(line.contains("127.0.0.1:47010"), "{line}");
        AlwaysOnAgent(child)
    }
}

impl Drop for AlwaysOnAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What `manifests/persistent` puts in the cluster, as the API server serves it: the agent's
/// pod (its network namespace is the node's), the Service's EndpointSlice naming it on
/// `NODE`, and the token Secret.
fn install_always_on(cluster: &FakeCluster, topo: &Topology) {
    cluster.add_namespace(AGENT_NS);
    cluster.add_pod(
        AGENT_NS,
        ALWAYS_ON_POD,
        &[("app.kubernetes.io/name", "orb8-agent")],
        NODE,
        "10.0.0.10",
        &topo.node.name,
    );
    cluster.put_object(
        "endpointslices",
        serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "orb8-agent-abcde",
                "namespace": AGENT_NS,
                "labels": {"kubernetes.io/service-name": "orb8-agent"},
            },
            "addressType": "IPv4",
            "endpoints": [{
                "addresses": ["10.0.0.10"],
                "nodeName": NODE,
                "conditions": {"ready": true},
                "targetRef": {"kind": "Pod", "namespace": AGENT_NS, "name": ALWAYS_ON_POD},
            }],
            "ports": [{"name": "metrics", "port": 9810, "protocol": "TCP"}],
        }),
    );
    cluster.put_object(
        "secrets",
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "orb8-agent-token", "namespace": AGENT_NS},
            "type": "Opaque",
            "data": {"token": ALWAYS_ON_TOKEN_B64},
        }),
    );
}

fn pod_creations(cluster: &FakeCluster) -> usize {
    cluster
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/pods"))
        .count()
}

#[test]
fn privileged_cluster_rbac_always_on_agents_are_used_and_nothing_is_created() {
    require_root();
    let topo = Topology::new(2);
    let cluster = cluster_of(&topo);

    // Nothing installed: --mode persistent refuses, clearly, and creates nothing.
    let (out, stderr) = run(&cluster, &["--mode", "persistent", "-n", "a", "status"]);
    assert!(!out.status.success());
    assert!(stderr.contains("no always-on agent"), "{stderr}");
    assert_eq!(pod_creations(&cluster), 0, "{}", lines(&cluster));

    let _agent = AlwaysOnAgent::start(&topo.node);
    install_always_on(&cluster, &topo);
    for mode in ["auto", "persistent"] {
        let (out, stderr) = run(
            &cluster,
            &["--mode", mode, "-n", "a", "status", "-o", "json"],
        );
        assert!(out.status.success(), "{mode}: {stderr}");
        assert!(
            !stderr.contains("warning") && !stderr.contains("forbidden"),
            "{mode} warned: {stderr}"
        );
        let status: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        assert_eq!(status[0]["node"], NODE, "{status}");
        assert_eq!(status[0]["mode"], "persistent", "{status}");
        assert_eq!(
            status[0]["address"],
            format!("pod/{AGENT_NS}/{ALWAYS_ON_POD}:47010")
        );
        let (out, stderr) = run(
            &cluster,
            &[
                "--mode",
                mode,
                "flows",
                "-n",
                "a",
                "-o",
                "json",
                "--duration",
                "1s",
            ],
        );
        assert!(out.status.success(), "{mode}: {stderr}");
    }
    assert_eq!(
        pod_creations(&cluster),
        0,
        "no agent pod is created while always-on agents serve:\n{}",
        lines(&cluster)
    );
    assert_eq!(forbidden(&cluster), Vec::<String>::new());
    let reqs = cluster.requests();
    let forwarded = format!("/api/v1/namespaces/{AGENT_NS}/pods/{ALWAYS_ON_POD}/portforward");
    assert!(
        reqs.iter().any(|r| r.path == forwarded && r.code == 101),
        "no port-forward to the always-on agent:\n{}",
        lines(&cluster)
    );
    assert!(
        reqs.iter().any(|r| r.path
            == format!("/api/v1/namespaces/{AGENT_NS}/secrets/orb8-agent-token")
            && r.code == 200),
        "the token was not read:\n{}",
        lines(&cluster)
    );
    // --mode ephemeral still starts (and deletes) its own pod on the same node.
    let (out, stderr) = run(
        &cluster,
        &["--mode", "ephemeral", "-n", "a", "status", "-o", "json"],
    );
    assert!(out.status.success(), "{stderr}");
    let status: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(status[0]["mode"], "ephemeral", "{status}");
    assert_eq!(pod_creations(&cluster), 1);
    assert_eq!(
        pod_names(&cluster),
        vec![ALWAYS_ON_POD.to_string()],
        "only the always-on pod is left"
    );
}
