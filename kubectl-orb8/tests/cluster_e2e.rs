//! The cluster suite: what an on-call engineer runs, against a whole cluster, checked by
//! exact facts. It runs against the cluster `ORB8_E2E_KUBECONFIG` names (kind, k3d, ...;
//! `ORB8_E2E_IMAGE` is then an agent image its nodes can pull), and otherwise, as root,
//! against the project's own fake cluster (`orb8_testkit::fake_cluster`: a fake API server and
//! a fake kubelet that runs the real agent and busybox workloads in network namespaces and
//! cgroups of their own), which is how CI runs it. Not root and no cluster: each test says
//! `SKIPPED` on stderr and does nothing.
//!
//! Each test is isolated: its own random id, its own namespaces (labelled `orb8-e2e=<id>`,
//! removed by a guard even when the test fails), its own agent sessions (`--session`), and it
//! counts only its own sessions' agent pods. Workloads are busybox (`ORB8_E2E_WORKLOAD_IMAGE`,
//! default `busybox:1.36`) started as `busybox sh -c SCRIPT`, so the same pods run on a real
//! node and in the fake kubelet (which runs the host's busybox). Linux only (the fake cluster
//! and the process handling are).

#![cfg(target_os = "linux")]

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher as _, Hasher as _};
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use orb8_testkit::NetNs;
use orb8_testkit::fake_cluster::FakeCluster;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::runtime::Runtime;

/// The project's own cluster, for runs without `ORB8_E2E_KUBECONFIG`. Field order is drop
/// order: the cluster (its pods) goes before the namespace playing its node.
struct Fake {
    _cluster: FakeCluster,
    _node: NetNs,
}

/// One test's view of the cluster. Dropping it deletes the test's namespaces and whatever
/// agent pods its sessions left, and waits until they are gone.
struct E2e {
    id: String,
    kubeconfig: PathBuf,
    image: String,
    workload_image: String,
    /// Namespaces this test created.
    namespaces: Vec<String>,
    /// Agent sessions this test started.
    sessions: Vec<String>,
    client: Client,
    rt: Runtime,
    _fake: Option<Fake>,
}

/// How long a real cluster may take to pull busybox and start a pod (or an agent).
const POD_START: Duration = Duration::from_secs(180);

/// Writes past the test harness's capture, so a skip is seen.
fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

impl E2e {
    /// The cluster to test against, or `None` (after saying so) when there is none.
    fn new(test: &str) -> Option<E2e> {
        let id = format!("{:08x}", RandomState::new().build_hasher().finish() as u32);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test runtime");
        let (kubeconfig, image, fake) = match std::env::var_os("ORB8_E2E_KUBECONFIG") {
            Some(path) => {
                let image = std::env::var("ORB8_E2E_IMAGE").unwrap_or_else(|_| {
                    panic!("ORB8_E2E_KUBECONFIG is set: set ORB8_E2E_IMAGE to an agent image its nodes can pull")
                });
                (PathBuf::from(path), image, None)
            }
            None => {
                // SAFETY: geteuid has no preconditions.
                if unsafe { libc::geteuid() } != 0 {
                    say(&format!(
                        "SKIPPED cluster test {test}: needs root for the project's fake cluster, or ORB8_E2E_KUBECONFIG + ORB8_E2E_IMAGE for a real one"
                    ));
                    return None;
                }
                let node = NetNs::new("e2enode");
                let cluster = FakeCluster::start("node-1", &node);
                let kubeconfig = cluster.kubeconfig.clone();
                (
                    kubeconfig,
                    "orb8-agent:e2e".to_string(),
                    Some(Fake {
                        _cluster: cluster,
                        _node: node,
                    }),
                )
            }
        };
        let client = rt.block_on(async {
            let kc = Kubeconfig::read_from(&kubeconfig)
                .unwrap_or_else(|e| panic!("reading {}: {e}", kubeconfig.display()));
            let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .expect("a usable kubeconfig");
            Client::try_from(config).expect("a kube client")
        });
        say(&format!(
            "cluster test {test}: id {id}, {}",
            if fake.is_some() {
                "the project's fake cluster".to_string()
            } else {
                format!("cluster of {}", kubeconfig.display())
            }
        ));
        Some(E2e {
            id,
            kubeconfig,
            image,
            workload_image: std::env::var("ORB8_E2E_WORKLOAD_IMAGE")
                .unwrap_or_else(|_| "busybox:1.36".into()),
            namespaces: Vec::new(),
            sessions: Vec::new(),
            client,
            rt,
            _fake: fake,
        })
    }

    /// A new namespace `orb8-e2e-<id>-<suffix>`, removed when the test ends.
    fn namespace(&mut self, suffix: &str) -> String {
        let name = format!("orb8-e2e-{}-{suffix}", self.id);
        let body: Namespace = serde_json::from_value(
            json!({"metadata": {"name": name, "labels": {"orb8-e2e": self.id}}}),
        )
        .expect("namespace object");
        self.namespaces.push(name.clone());
        let api: Api<Namespace> = Api::all(self.client.clone());
        self.rt
            .block_on(api.create(&PostParams::default(), &body))
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        name
    }

    /// Starts pod `name` in `namespace` running `busybox sh -c script`, waits until it runs,
    /// and returns its address.
    fn pod(&self, namespace: &str, name: &str, script: &str) -> String {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"orb8-e2e": self.id}},
            "spec": {
                "containers": [{"name": "main", "image": self.workload_image,
                    "command": ["busybox", "sh", "-c", script]}],
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
            }
        }))
        .expect("pod object");
        self.rt.block_on(async {
            pods.create(&PostParams::default(), &pod)
                .await
                .unwrap_or_else(|e| panic!("creating pod {namespace}/{name}: {e}"));
            let end = Instant::now() + POD_START;
            loop {
                let p = pods
                    .get(name)
                    .await
                    .unwrap_or_else(|e| panic!("reading pod {namespace}/{name}: {e}"));
                let status = p.status.unwrap_or_default();
                match (status.phase.as_deref(), status.pod_ip) {
                    (Some("Running"), Some(ip)) => return ip,
                    (Some(phase @ ("Succeeded" | "Failed")), _) => {
                        panic!("pod {namespace}/{name} ended ({phase}) before the test used it")
                    }
                    _ => {}
                }
                assert!(
                    Instant::now() < end,
                    "pod {namespace}/{name} not running after {POD_START:?}: {:?}",
                    status.container_statuses
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }

    /// A new agent session id for one command of this test.
    fn session(&mut self, tag: &str) -> String {
        let s = format!("e2e{}{tag}", self.id);
        self.sessions.push(s.clone());
        s
    }

    /// `kubectl-orb8` against this cluster, its agents labelled with `session`.
    fn orb8(&self, session: &str, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kubectl-orb8"));
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args([
                "--image",
                &self.image,
                "--image-pull-policy",
                "IfNotPresent",
                "--session",
                session,
            ])
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Runs `kubectl-orb8`, panicking with its stderr unless it succeeds; returns stdout.
    fn orb8_ok(&self, session: &str, args: &[&str]) -> String {
        let out = self
            .orb8(session, args)
            .output()
            .expect("running kubectl-orb8");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "kubectl-orb8 {args:?} failed ({}): {stderr}",
            out.status
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// The agent pods of `session`, in every namespace.
    fn session_pods(&self, session: &str) -> Vec<String> {
        let api: Api<Pod> = Api::all(self.client.clone());
        let lp = ListParams::default().labels(&format!("orb8.dev/session={session}"));
        let list = self
            .rt
            .block_on(api.list(&lp))
            .unwrap_or_else(|e| panic!("listing agent pods of session {session}: {e}"));
        let mut names: Vec<String> = list
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        names.sort();
        names
    }

    /// Opens a connection to `port` of a pod through the API server's port-forward (as
    /// `kubectl port-forward` does), waits for the pod's listener to greet it with `ready`
    /// (so the connection really reached it), then closes it.
    fn poke(&self, namespace: &str, pod: &str, port: u16) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        self.rt.block_on(async {
            let mut pf = pods
                .portforward(pod, &[port])
                .await
                .unwrap_or_else(|e| panic!("port-forward to {namespace}/{pod}:{port}: {e}"));
            let mut stream = pf.take_stream(port).expect("the forwarded port's stream");
            let mut greeting = Vec::new();
            let mut buf = [0u8; 64];
            while !greeting.ends_with(b"ready\n") {
                let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
                    .await
                    .unwrap_or_else(|_| panic!("{namespace}/{pod}:{port} did not greet"))
                    .unwrap_or_else(|e| panic!("reading from {namespace}/{pod}:{port}: {e}"));
                assert!(
                    n > 0,
                    "{namespace}/{pod}:{port} closed without greeting: {:?}",
                    String::from_utf8_lossy(&greeting)
                );
                greeting.extend_from_slice(&buf[..n]);
            }
            let _ = stream.shutdown().await;
            drop(stream);
            pf.abort();
        });
    }
}

impl Drop for E2e {
    fn drop(&mut self) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let pods: Api<Pod> = Api::all(self.client.clone());
        let mut problems = Vec::new();
        self.rt.block_on(async {
            for s in &self.sessions {
                let lp = ListParams::default().labels(&format!("orb8.dev/session={s}"));
                for p in pods.list(&lp).await.map(|l| l.items).unwrap_or_default() {
                    let (Some(ns), Some(name)) = (p.metadata.namespace, p.metadata.name) else {
                        continue;
                    };
                    let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
                    if let Err(e) = api.delete(&name, &DeleteParams::default()).await {
                        problems.push(format!("deleting agent pod {ns}/{name}: {e}"));
                    }
                }
            }
            for ns in &self.namespaces {
                match namespaces.delete(ns, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => problems.push(format!("deleting namespace {ns}: {e}")),
                }
            }
            let end = Instant::now() + POD_START;
            for ns in &self.namespaces {
                while namespaces.get_opt(ns).await.ok().flatten().is_some() {
                    if Instant::now() > end {
                        problems.push(format!("namespace {ns} still there after {POD_START:?}"));
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        if !problems.is_empty() && !std::thread::panicking() {
            panic!("cluster test clean-up: {}", problems.join("; "));
        }
    }
}

/// Collects a child's stderr lines on a thread; `wait_for` returns once a line matches.
struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn of(child: &mut Child) -> Lines {
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    fn wait_for(&mut self, what: &str, within: Duration, pred: impl Fn(&str) -> bool) {
        let end = Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    let hit = pred(&line);
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no {what} within {within:?}; stderr so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn rest(mut self) -> String {
        self.seen.extend(self.rx.iter());
        self.seen.join("\n")
    }
}

/// Reads the first stdout line of a child, waiting at most `within`.
fn first_line(child: &mut Child, within: Duration) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(within)
        .unwrap_or_else(|_| panic!("no output line within {within:?}"));
    assert!(!line.is_empty(), "the command ended without output");
    line
}

fn sigint(child: &Child) {
    // SAFETY: signalling a child this test started and has not reaped.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(rc, 0, "SIGINT: {}", std::io::Error::last_os_error());
}

/// A busybox script that sleeps until the pod is deleted.
const IDLE: &str = "exec busybox sleep 3600";

#[test]
fn e2e_flows_name_both_ends_and_n_keeps_only_that_namespace() {
    let Some(mut e) = E2e::new("flows") else {
        return;
    };
    let (a, b, c) = (e.namespace("a"), e.namespace("b"), e.namespace("c"));
    let server = e.pod(&a, "server", IDLE);
    e.pod(&b, "client", &format!("exec busybox ping -i 0.2 {server}"));
    // A negative control: two pods of a namespace that is not selected talk the same way.
    let quiet = e.pod(&c, "quiet", IDLE);
    let chatter = e.pod(&c, "chatter", &format!("exec busybox ping -i 0.2 {quiet}"));
    let session = e.session("f");
    let out = e.orb8_ok(
        &session,
        &["-n", &a, "flows", "-o", "json", "--duration", "4s"],
    );
    let flows: Vec<Value> = serde_json::from_str(&out).expect("JSON flows");
    let (client, server_name) = (format!("{b}/client"), format!("{a}/server"));
    let named = |src: &str, dst: &str| {
        flows.iter().any(|f| {
            f["protocol"] == "icmp"
                && f["src_name"] == src
                && f["dst_name"] == dst
                && f["packets"].as_u64() > Some(0)
        })
    };
    assert!(
        named(&client, &server_name) && named(&server_name, &client),
        "no ICMP flows {client} <-> {server_name} named in {flows:#?}"
    );
    let in_a = |name: &Value| {
        name.as_str()
            .is_some_and(|n| n.starts_with(&format!("{a}/")))
    };
    for f in &flows {
        assert!(
            in_a(&f["src_name"]) || in_a(&f["dst_name"]),
            "-n {a} printed a flow with no pod of {a} at either end: {f:#}"
        );
        for end in ["src", "dst"] {
            assert!(
                f[end] != quiet.as_str() && f[end] != chatter.as_str(),
                "-n {a} printed the unselected namespace's traffic: {f:#}"
            );
        }
    }
    assert_eq!(
        e.session_pods(&session),
        Vec::<String>::new(),
        "agent pods left behind"
    );
}

#[test]
fn e2e_trace_syscall_pod_counts_exactly_the_calls_it_made() {
    let Some(mut e) = E2e::new("trace-syscall") else {
        return;
    };
    let t = e.namespace("t");
    // Waits for one connection on 7000 (greeting it), and when it closes makes exactly 37
    // kill(2) calls (ash's builtin `kill` is one syscall each), then idles.
    e.pod(
        &t,
        "target",
        "echo ready | busybox nc -l -p 7000 >/dev/null; i=0; \
         while [ $i -lt 37 ]; do kill -0 $$; i=$((i+1)); done; exec busybox sleep 3600",
    );
    let session = e.session("s");
    let mut child = e
        .orb8(
            &session,
            &[
                "-n",
                &t,
                "trace",
                "syscall",
                "target",
                "--syscall",
                "kill",
                "--duration",
                "8s",
                "-o",
                "json",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kubectl-orb8");
    let mut stderr = Lines::of(&mut child);
    stderr.wait_for("'orb8: tracing' line", POD_START, |l| {
        l.starts_with("orb8: tracing")
    });
    e.poke(&t, "target", 7000);
    let out = child.wait_with_output().expect("waiting for the trace");
    let stderr = stderr.rest();
    assert!(out.status.success(), "trace syscall failed: {stderr}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "JSON summary: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let rows = summary["syscalls"].as_array().expect("syscalls rows");
    let kill: Vec<&Value> = rows.iter().filter(|r| r["syscall"] == "kill").collect();
    assert_eq!(kill.len(), 1, "one kill row in {summary:#}");
    assert_eq!(kill[0]["calls"], 37, "{summary:#}");
    assert_eq!(kill[0]["errors"], 0, "{summary:#}");
    assert_eq!(
        rows.len(),
        1,
        "--syscall kill counted other syscalls: {summary:#}"
    );
    assert_eq!(e.session_pods(&session), Vec::<String>::new());
}

/// A pod that keeps opening new TCP connections to `server` port 7001 (nothing listens: each
/// attempt is a new flow, answered with a reset).
fn caller_script(server: &str) -> String {
    format!("while :; do busybox nc -w 1 {server} 7001 </dev/null; busybox sleep 0.3; done")
}

#[test]
fn e2e_ctrl_c_mid_stream_deletes_the_agents() {
    let Some(mut e) = E2e::new("ctrl-c") else {
        return;
    };
    let n = e.namespace("i");
    let server = e.pod(&n, "server", IDLE);
    e.pod(&n, "caller", &caller_script(&server));
    let session = e.session("i");
    let mut child = e
        .orb8(&session, &["-n", &n, "trace", "network", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kubectl-orb8");
    let stderr = Lines::of(&mut child);
    let line = first_line(&mut child, POD_START);
    let flow: Value = serde_json::from_str(&line).expect("a JSON flow line");
    let ends = [flow["src_name"].clone(), flow["dst_name"].clone()];
    assert!(
        ends.contains(&json!(format!("{n}/caller")))
            && ends.contains(&json!(format!("{n}/server"))),
        "the first flow does not name both pods: {flow:#}"
    );
    assert!(
        !e.session_pods(&session).is_empty(),
        "no agent pod while streaming"
    );
    sigint(&child);
    let status = child.wait().expect("waiting for kubectl-orb8");
    assert!(
        status.success() || status.code() == Some(130),
        "{status}: {}",
        stderr.rest()
    );
    assert_eq!(
        e.session_pods(&session),
        Vec::<String>::new(),
        "Ctrl-C left agent pods"
    );
}

/// Starts `trace network -n NS` in `session`, waits for its first line, and SIGKILLs it;
/// returns the agent pods it left.
fn killed_client(e: &E2e, namespace: &str, session: &str) -> Vec<String> {
    let mut child = e
        .orb8(
            session,
            &["-n", namespace, "trace", "network", "-o", "json"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning kubectl-orb8");
    first_line(&mut child, POD_START);
    child.kill().expect("SIGKILL");
    child.wait().expect("reaping the killed client");
    let left = e.session_pods(session);
    assert!(
        !left.is_empty(),
        "the killed client's agent pods stay behind"
    );
    left
}

#[test]
fn e2e_killed_client_leaves_pods_that_cleanup_removes() {
    let Some(mut e) = E2e::new("killed") else {
        return;
    };
    let n = e.namespace("k");
    let server = e.pod(&n, "server", IDLE);
    e.pod(&n, "caller", &caller_script(&server));
    let (first, second) = (e.session("k1"), e.session("k2"));
    let left = killed_client(&e, &n, &first);
    let other = killed_client(&e, &n, &second);
    let listed = e.orb8_ok(&first, &["cleanup", "--dry-run", "-o", "json"]);
    let items: Vec<Value> = serde_json::from_str(&listed).expect("JSON list");
    let names: Vec<&str> = items.iter().filter_map(|i| i["pod"].as_str()).collect();
    assert_eq!(
        names, left,
        "cleanup --session lists exactly the session's pods"
    );
    assert!(
        items.iter().all(|i| i["action"] == "would delete"),
        "{items:#?}"
    );
    assert_eq!(e.session_pods(&first), left, "--dry-run deleted something");
    e.orb8_ok(&first, &["cleanup"]);
    assert_eq!(
        e.session_pods(&first),
        Vec::<String>::new(),
        "cleanup left agent pods"
    );
    assert_eq!(
        e.session_pods(&second),
        other,
        "cleanup --session deleted another session's pods"
    );
    e.orb8_ok(&second, &["cleanup"]);
    assert_eq!(e.session_pods(&second), Vec::<String>::new());
}
