//! Real-cluster end-to-end tests, run when `ORB8_E2E_KUBECONFIG` names a cluster (kind, k3d,
//! ...) and `ORB8_E2E_IMAGE` an agent image its nodes can pull (see README, "Cluster tests").
//! Without them each test says so on stderr and passes without doing anything.
//!
//! The tests create their own namespaces (labelled `orb8-e2e`) with small workload pods
//! (`ORB8_E2E_WORKLOAD_IMAGE`, default busybox) and delete them at the end.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};

struct Cluster {
    kubeconfig: String,
    image: String,
    client: Client,
    id: String,
}

fn cluster() -> Option<Cluster> {
    let (Ok(kubeconfig), Ok(image)) = (
        std::env::var("ORB8_E2E_KUBECONFIG"),
        std::env::var("ORB8_E2E_IMAGE"),
    ) else {
        // Written to stderr directly, past the test harness's capture, so the skip is seen.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED real-cluster test: set ORB8_E2E_KUBECONFIG and ORB8_E2E_IMAGE to run it"
        );
        return None;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rt.block_on(async {
        let kc = Kubeconfig::read_from(&kubeconfig).expect("reading ORB8_E2E_KUBECONFIG");
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig");
        Client::try_from(config).expect("client")
    });
    let id = format!(
        "{:x}",
        std::process::id() ^ (Instant::now().elapsed().subsec_nanos())
    );
    Some(Cluster {
        kubeconfig,
        image,
        client,
        id,
    })
}

impl Cluster {
    fn orb8(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kubectl-orb8"));
        c.args([
            "--kubeconfig",
            &self.kubeconfig,
            "--image",
            &self.image,
            "--image-pull-policy",
            "IfNotPresent",
        ]);
        c.args(args);
        c
    }

    /// A namespace with one pod that keeps making TCP connections to the API server's service.
    async fn workload(&self, suffix: &str) -> (String, String) {
        let ns = format!("orb8-e2e-{}-{suffix}", self.id);
        let nss: Api<Namespace> = Api::all(self.client.clone());
        let body: Namespace = serde_json::from_value(
            json!({"metadata": {"name": ns, "labels": {"orb8-e2e": self.id}}}),
        )
        .unwrap();
        nss.create(&PostParams::default(), &body)
            .await
            .expect("creating namespace");
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let image =
            std::env::var("ORB8_E2E_WORKLOAD_IMAGE").unwrap_or_else(|_| "busybox:1.36".into());
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "talker", "labels": {"orb8-e2e": self.id}},
            "spec": {"containers": [{"name": "c", "image": image, "command": ["sh", "-c",
                "while true; do wget -q -T 1 -O /dev/null https://kubernetes.default.svc 2>/dev/null; sleep 0.5; done"]}],
                "terminationGracePeriodSeconds": 1}
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("creating workload pod");
        let end = Instant::now() + Duration::from_secs(180);
        loop {
            let p = pods.get("talker").await.expect("reading workload pod");
            let status = p.status.unwrap_or_default();
            if status.phase.as_deref() == Some("Running")
                && let Some(ip) = status.pod_ip
            {
                return (ns, ip);
            }
            assert!(Instant::now() < end, "workload pod in {ns} never ran");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn agent_pods(&self) -> Vec<Pod> {
        let api: Api<Pod> = Api::all(self.client.clone());
        api.list(&ListParams::default().labels("app.kubernetes.io/managed-by=kubectl-orb8"))
            .await
            .expect("listing agent pods")
            .items
    }

    async fn remove_workloads(&self) {
        let nss: Api<Namespace> = Api::all(self.client.clone());
        let list = nss
            .list(&ListParams::default().labels(&format!("orb8-e2e={}", self.id)))
            .await
            .unwrap();
        for ns in list.items {
            let _ = nss
                .delete(
                    &ns.metadata.name.unwrap_or_default(),
                    &DeleteParams::default(),
                )
                .await;
        }
    }
}

fn wait_first_line(child: &mut Child) -> String {
    use std::io::BufRead as _;
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = std::io::BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line).expect("reading trace output");
    assert!(!line.is_empty(), "trace ended without output");
    line
}

#[tokio::test(flavor = "multi_thread")]
async fn e2e_flows_from_two_namespaces_then_nothing_left() {
    let Some(c) = cluster() else { return };
    let (ns_a, ip_a) = c.workload("a").await;
    let (ns_b, ip_b) = c.workload("b").await;
    let out = c
        .orb8(&[
            "-A",
            "-l",
            &format!("orb8-e2e={}", c.id),
            "flows",
            "-o",
            "json",
            "--duration",
            "15s",
        ])
        .output()
        .expect("running kubectl-orb8");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    let flows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON flows");
    for (ns, ip) in [(&ns_a, &ip_a), (&ns_b, &ip_b)] {
        assert!(
            flows.iter().any(|f| f["src"] == ip.as_str()
                && f["protocol"] == "tcp"
                && f["packets"].as_u64() > Some(0)),
            "no TCP flow from {ns}'s pod {ip} in {flows:#?}"
        );
    }
    assert!(c.agent_pods().await.is_empty(), "agent pods left behind");
    c.remove_workloads().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn e2e_ctrl_c_mid_stream_deletes_the_agents() {
    let Some(c) = cluster() else { return };
    c.workload("c").await;
    let mut child = c
        .orb8(&[
            "-A",
            "-l",
            &format!("orb8-e2e={}", c.id),
            "trace",
            "network",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning kubectl-orb8");
    wait_first_line(&mut child);
    assert!(!c.agent_pods().await.is_empty());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().expect("waiting");
    assert!(status.success() || status.code() == Some(130), "{status}");
    assert!(c.agent_pods().await.is_empty(), "Ctrl-C left agent pods");
    c.remove_workloads().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn e2e_killed_client_agents_end_and_cleanup_removes_them() {
    let Some(c) = cluster() else { return };
    c.workload("d").await;
    let mut child = c
        .orb8(&[
            "-A",
            "-l",
            &format!("orb8-e2e={}", c.id),
            "trace",
            "network",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning kubectl-orb8");
    wait_first_line(&mut child);
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    // The agent's idle watchdog (60 s without a client) ends the container.
    let end = Instant::now() + Duration::from_secs(150);
    loop {
        let pods = c.agent_pods().await;
        assert!(
            !pods.is_empty(),
            "the pods stay (as Completed) until cleanup"
        );
        let ended = pods.iter().all(|p| {
            matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded") | Some("Failed")
            )
        });
        if ended {
            break;
        }
        assert!(
            Instant::now() < end,
            "agents still running 150 s after their client died"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let listed = c
        .orb8(&["cleanup", "--dry-run", "-o", "json"])
        .output()
        .expect("cleanup --dry-run");
    let items: Vec<Value> = serde_json::from_slice(&listed.stdout).expect("JSON list");
    assert!(!items.is_empty() && items.iter().all(|i| i["action"] == "would delete"));
    let cleaned = c.orb8(&["cleanup"]).output().expect("cleanup");
    assert!(
        cleaned.status.success(),
        "{}",
        String::from_utf8_lossy(&cleaned.stderr)
    );
    assert!(c.agent_pods().await.is_empty(), "cleanup left agent pods");
    c.remove_workloads().await;
}
