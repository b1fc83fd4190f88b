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

#[path = "cluster_e2e/harness.rs"]
mod harness;

use std::process::Stdio;

use serde_json::{Value, json};

use harness::{E2e, Lines, POD_START, first_line, sigint};

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
