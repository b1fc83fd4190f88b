//! Time to first output of `kubectl orb8 -A trace network` in cluster mode, measured against
//! the fake cluster (a fake API server and kubelet on loopback running the real agent in a
//! node namespace): the client's part of a warm start (image present, no scheduling or pull
//! delay) including pod create, watch, port-forward and the agent attaching its probes. Run as
//! root, after a release build of the binaries it runs:
//! `cargo build --release --workspace && cargo bench -p orb8-tests --bench first_output`.
//! Prints numbers; asserts nothing.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orb8_testkit::fake_cluster::FakeCluster;
use orb8_testkit::*;

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("first_output benchmark: run as root (it loads eBPF programs)");
        std::process::exit(1);
    }
    let topo = Topology::new(1);
    let pod = &topo.pods[0];
    let cluster = FakeCluster::start("node-1", &topo.node);
    cluster.add_namespace("a");
    cluster.add_pod(
        "a",
        "pod-0",
        &[("app", "pod-0")],
        "node-1",
        &pod.ip4,
        &pod.ns.name,
    );
    // Traffic on the pod's veth all along, so the first new flow comes as soon as the
    // agent attaches.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        let src = pod.ip4.clone();
        spawn_in(&pod.ns, move |ready| {
            let s = std::net::UdpSocket::bind(format!("{src}:0")).unwrap();
            ready.send(()).unwrap();
            let mut port = 20000u16;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = s.send_to(b"x", ("10.77.1.1", port));
                port = if port == 60000 { 20000 } else { port + 1 };
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let kubeconfig = cluster.kubeconfig.display().to_string();
    let cluster_ms = first_output_ms(|| {
        let mut c = Command::new(workspace_bin("kubectl-orb8"));
        c.args([
            "--kubeconfig",
            &kubeconfig,
            "-A",
            "trace",
            "network",
            "-o",
            "json",
        ]);
        c
    });
    let local_ms = first_output_ms(|| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &topo.node.name])
            .arg(workspace_bin("kubectl-orb8"))
            .args(["--local", "trace", "network", "-o", "json"]);
        c
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = traffic.join();
    println!("time to first output, local mode: {local_ms} ms");
    println!("time to first output, cluster mode (fake cluster, warm node): {cluster_ms} ms");
}

/// Runs a fresh `command()` five times, each until its first line of output (then Ctrl-C,
/// which also removes its agent); the times in milliseconds.
fn first_output_ms(command: impl Fn() -> Command) -> String {
    let mut times = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        let mut child = command()
            .args(["--duration", "20s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning kubectl-orb8");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("first line");
        times.push(t0.elapsed());
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let _ = child.wait();
    }
    times
        .iter()
        .map(|t| format!("{:.0}", t.as_secs_f64() * 1000.0))
        .collect::<Vec<_>>()
        .join(" / ")
}
