//! Privileged end-to-end: new-flow events the kernel drops because the agent's ring buffer is
//! full reach the user. An agent with a one-page ring buffer watches a pod's veth while the pod
//! opens thousands of flows at once; `trace network` must warn about every dropped event
//! (`kernel stage, ringbuf_full`), and what it printed plus what it reported lost must add up
//! to exactly the flows the kernel table holds.

use std::{
    io::BufRead as _,
    net::UdpSocket,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use orb8_testkit::*;
use serde_json::Value;

mod serve_agent;
use serve_agent::ServeAgent;

const TOKEN: &str = "e2e-token-kloss0123456789abcdef";

fn status(agent: &ServeAgent) -> Value {
    let out = Command::new(workspace_bin("kubectl-orb8"))
        .args(["--agent", &format!("unix:{}", agent.socket)])
        .args(["--token", TOKEN, "status", "-o", "json"])
        .output()
        .expect("kubectl-orb8 status");
    assert!(out.status.success(), "status failed: {out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    match v {
        Value::Array(mut a) => a.remove(0),
        v => v,
    }
}

#[test]
fn privileged_trace_network_reports_kernel_ring_losses() {
    require_root();
    let topo = Topology::new(1);
    let pod = &topo.pods[0];
    let agent = ServeAgent::start_with(&topo.node, "node-k", TOKEN, &["--ringbuf-size", "4096"]);
    wait_attached(&topo.node, &pod.host_if);
    let mut child = Command::new(workspace_bin("kubectl-orb8"))
        .args(["--agent", &format!("unix:{}", agent.socket)])
        .args(["--token", TOKEN, "trace", "network", "-o", "json"])
        .args(["--duration", "8s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kubectl-orb8");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel::<Value>();
    let mut kinds = std::collections::BTreeMap::<String, u64>::new();
    let reader = thread::spawn(move || {
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(serde_json::from_str(&l).expect("NDJSON line"));
        }
    });
    // The trace is streaming once it prints a flow: send one and wait for it.
    let src = pod.ip4.clone();
    let first = pod
        .ns
        .run_in(move || UdpSocket::bind(format!("{src}:0")).expect("bind"));
    let mut printed = 0u64;
    let end = Instant::now() + Duration::from_secs(20);
    while printed == 0 {
        assert!(
            Instant::now() < end,
            "the trace never printed the first flow"
        );
        let _ = first.send_to(b"first", ("10.77.1.1", 9));
        if let Ok(v) = rx.recv_timeout(Duration::from_millis(200)) {
            *kinds.entry(v["event"].to_string()).or_default() += 1;
            printed += 1;
        }
    }
    // A burst of new flows: far more events than a one-page ring holds.
    let src = pod.ip4.clone();
    pod.ns.run_in(move || {
        let s = UdpSocket::bind(format!("{src}:0")).expect("bind");
        for port in 10000..14000u16 {
            let _ = s.send_to(b"x", ("10.77.1.1", port));
        }
    });
    let st = child.wait().expect("waiting for kubectl-orb8");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(st.success(), "trace failed: {stderr}");
    reader.join().expect("reader");
    for v in rx.try_iter() {
        *kinds.entry(v["event"].to_string()).or_default() += 1;
        printed += 1;
    }
    let mut lost_kernel = 0u64;
    let mut lost_other = 0u64;
    for l in stderr.lines().filter(|l| l.contains(" events lost (")) {
        let n: u64 = l
            .split(" events lost (")
            .next()
            .and_then(|h| h.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unreadable loss line {l:?}"));
        if l.contains("(kernel stage, ringbuf_full)") {
            lost_kernel += n;
        } else {
            lost_other += n;
        }
    }
    let s = status(&agent);
    let ring_full = s["drops"]
        .as_array()
        .expect("drops")
        .iter()
        .find(|d| d["reason"] == "ringbuf_full")
        .and_then(|d| d["count"].as_u64())
        .expect("ringbuf_full counter");
    assert!(
        lost_kernel > 0,
        "a one-page ring must overflow (ringbuf_full {ring_full}, printed {printed}): {stderr}"
    );
    assert_eq!(
        lost_kernel, ring_full,
        "every kernel drop reaches the user: {stderr}"
    );
    assert_eq!(
        kinds.get("\"new_flow\"").copied().unwrap_or(0)
            + kinds.get("\"active_flow\"").copied().unwrap_or(0)
            + lost_kernel
            + lost_other,
        s["active_flows"].as_u64().expect("active_flows"),
        "each flow in the table was printed ({kinds:?}) or reported lost: {stderr}"
    );
}
