//! The cluster suite's harness: which cluster (a real one, or the project's fake cluster),
//! one test's namespaces, pods and agent sessions, removed again by a guard, and helpers to
//! read a running `kubectl-orb8`.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher as _, Hasher as _};
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use orb8_testkit::NetNs;
use orb8_testkit::fake_cluster::{FakeCluster, Rbac, cluster_roles};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::runtime::Runtime;

/// The project's own cluster, for runs without `ORB8_E2E_KUBECONFIG`. Field order is drop
/// order: the cluster (its pods) goes before the namespace playing its node.
pub(crate) struct Fake {
    cluster: FakeCluster,
    _node: NetNs,
}

/// One test's view of the cluster. Dropping it deletes the test's namespaces and whatever
/// agent pods its sessions left, and waits until they are gone.
pub(crate) struct E2e {
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
pub(crate) const POD_START: Duration = Duration::from_secs(180);

/// Where agent pods run (the client's default).
pub(crate) const AGENT_NAMESPACE: &str = "orb8-system";

/// How long after it finished a gone session's agent pod is left alone
/// (`kubectl_orb8::k8s::reap::FINISHED_GRACE`).
const REAP_GRACE: Duration = kubectl_orb8::k8s::reap::FINISHED_GRACE;

/// The documented RBAC.
const CLUSTER_ROLES: &str = include_str!("../../../manifests/clusterrole.yaml");

/// Writes past the test harness's capture, so a skip is seen.
pub(crate) fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

impl E2e {
    /// The cluster to test against, or `None` (after saying so) when there is none.
    pub(crate) fn new(test: &str) -> Option<E2e> {
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
                        cluster,
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
    pub(crate) fn namespace(&mut self, suffix: &str) -> String {
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
    pub(crate) fn pod(&self, namespace: &str, name: &str, script: &str) -> String {
        self.pod_on(namespace, name, script, None)
    }

    /// [`Self::pod`] on node `node` (where the scheduler puts it when `None`).
    pub(crate) fn pod_on(
        &self,
        namespace: &str,
        name: &str,
        script: &str,
        node: Option<&str>,
    ) -> String {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"orb8-e2e": self.id}},
            "spec": {
                "containers": [{"name": "main", "image": self.workload_image,
                    "command": ["busybox", "sh", "-c", script]}],
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
            }
        }))
        .expect("pod object");
        if let (Some(spec), Some(node)) = (pod.spec.as_mut(), node) {
            spec.node_name = Some(node.to_string());
        }
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

    /// The node pod `namespace/name` runs on.
    pub(crate) fn node_of(&self, namespace: &str, name: &str) -> String {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let p = self
            .rt
            .block_on(pods.get(name))
            .unwrap_or_else(|e| panic!("reading pod {namespace}/{name}: {e}"));
        p.spec
            .and_then(|s| s.node_name)
            .unwrap_or_else(|| panic!("pod {namespace}/{name} has no node"))
    }

    /// The phases of `session`'s agent pods.
    fn session_phases(&self, session: &str) -> Vec<(String, Option<SystemTime>)> {
        let api: Api<Pod> = Api::all(self.client.clone());
        let lp = ListParams::default().labels(&format!("orb8.dev/session={session}"));
        let list = self
            .rt
            .block_on(api.list(&lp))
            .unwrap_or_else(|e| panic!("listing agent pods of session {session}: {e}"));
        list.items
            .iter()
            .map(|p| {
                let status = p.status.clone().unwrap_or_default();
                let finished = status
                    .container_statuses
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.clone())
                    .map(|t| SystemTime::from(t.0))
                    .max();
                (status.phase.unwrap_or_default(), finished)
            })
            .collect()
    }

    /// Brings the agent pods of `session`, whose client was killed, to where the next command
    /// removes them: finished, longer ago than the grace period (`k8s::reap`). On a real cluster
    /// that is waiting: for the agents' idle timeout (`--timeout` + 30 s) and the grace period.
    /// The fake cluster stops the agents (SIGTERM, as their idle watchdog would end them) and
    /// dates their end that long ago.
    pub(crate) fn finish_agents(&self, session: &str, idle_timeout: Duration) {
        let finished = |phases: &[(String, Option<SystemTime>)]| {
            phases
                .iter()
                .all(|(p, _)| p == "Succeeded" || p == "Failed")
        };
        if let Some(fake) = &self._fake {
            fake.cluster
                .report_finished_ago(REAP_GRACE + Duration::from_secs(60));
            let pods = self.session_pods(session);
            for c in fake.cluster.containers() {
                let own = pods
                    .iter()
                    .any(|p| c.pod == format!("{AGENT_NAMESPACE}/{p}"));
                if own && c.exit.is_none() {
                    // SAFETY: signalling an agent process the fake kubelet started.
                    unsafe { libc::kill(c.pid as i32, libc::SIGTERM) };
                }
            }
        }
        let end = Instant::now() + idle_timeout + POD_START;
        let phases = loop {
            let phases = self.session_phases(session);
            if finished(&phases) {
                break phases;
            }
            assert!(
                Instant::now() < end,
                "agent pods of {session} still running: {phases:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        if let Some(fake) = &self._fake {
            fake.cluster.report_finished_ago(Duration::ZERO);
        } else {
            let last = phases.iter().filter_map(|(_, t)| *t).max();
            let until = last.unwrap_or_else(SystemTime::now) + REAP_GRACE + Duration::from_secs(2);
            if let Ok(left) = until.duration_since(SystemTime::now()) {
                say(&format!(
                    "waiting {left:?} for the reap grace period of session {session}"
                ));
                std::thread::sleep(left);
            }
        }
    }

    /// Runs `f` as a user bound exactly as `manifests/clusterrole.yaml` says (`orb8-user`
    /// cluster-wide, `orb8-agent-manager` in the agent namespace): the fake cluster enforces
    /// those rules on every request while `f` runs. `None` on a real cluster, which would need
    /// the roles applied and a token of such a user.
    pub(crate) fn as_documented_user<T>(&self, f: impl FnOnce() -> T) -> Option<T> {
        let fake = self._fake.as_ref()?;
        let roles = cluster_roles(CLUSTER_ROLES).expect("manifests/clusterrole.yaml parses");
        let rbac = Rbac::new("tester")
            .bind_cluster(&roles["orb8-user"])
            .bind_namespace(AGENT_NAMESPACE, &roles["orb8-agent-manager"]);
        fake.cluster.enforce_rbac(Some(rbac));
        struct Lift<'a>(&'a FakeCluster);
        impl Drop for Lift<'_> {
            fn drop(&mut self) {
                self.0.enforce_rbac(None);
            }
        }
        let _lift = Lift(&fake.cluster);
        Some(f())
    }

    /// A new agent session id for one command of this test.
    pub(crate) fn session(&mut self, tag: &str) -> String {
        let s = format!("e2e{}{tag}", self.id);
        self.sessions.push(s.clone());
        s
    }

    /// `kubectl-orb8` against this cluster, its agents labelled with `session`.
    pub(crate) fn orb8(&self, session: &str, args: &[&str]) -> Command {
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
    pub(crate) fn orb8_ok(&self, session: &str, args: &[&str]) -> String {
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
    pub(crate) fn session_pods(&self, session: &str) -> Vec<String> {
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
    pub(crate) fn poke(&self, namespace: &str, pod: &str, port: u16) {
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
pub(crate) struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    pub(crate) fn of(child: &mut Child) -> Lines {
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

    pub(crate) fn wait_for(&mut self, what: &str, within: Duration, pred: impl Fn(&str) -> bool) {
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

    pub(crate) fn rest(mut self) -> String {
        self.seen.extend(self.rx.iter());
        self.seen.join("\n")
    }
}

/// Reads the first stdout line of a child, waiting at most `within`.
pub(crate) fn first_line(child: &mut Child, within: Duration) -> String {
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

pub(crate) fn sigint(child: &Child) {
    // SAFETY: signalling a child this test started and has not reaped.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(rc, 0, "SIGINT: {}", std::io::Error::last_os_error());
}
