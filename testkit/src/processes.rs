//! Processes the privileged tests start and read: `orb8-agent watch -o json` (its JSON lines
//! and summary), `orb8-syscall-load`, processes in pod-like cgroups, and the TCX programs an
//! agent attached.

use std::{
    io::{BufRead, BufReader},
    process::{Child, ChildStdout, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::cgroup::TestCgroup;
use crate::netns::NetNs;
use crate::preconditions::workspace_bin;

/// An `orb8-agent watch -o json` process inside a namespace, its JSON lines read on a thread.
pub struct WatchAgent {
    child: Child,
    lines: mpsc::Receiver<Value>,
    /// Every line read so far.
    pub seen: Vec<Value>,
}

impl WatchAgent {
    /// Starts the agent in `ns` with extra arguments and waits for its `ready` line.
    pub fn start(ns: &NetNs, extra: &[&str]) -> WatchAgent {
        WatchAgent::start_binary(&workspace_bin("orb8-agent"), ns, extra)
    }

    /// Like [`WatchAgent::start`], with another agent binary (the one from the image).
    pub fn start_binary(bin: &std::path::Path, ns: &NetNs, extra: &[&str]) -> WatchAgent {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name])
            .arg(bin)
            .args(["watch", "-o", "json", "--rescan-ms", "100"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawning orb8-agent");
        let stdout = child.stdout.take().expect("stdout");
        let lines = spawn_line_reader(stdout);
        let mut a = WatchAgent {
            child,
            lines,
            seen: Vec::new(),
        };
        a.wait_for(Duration::from_secs(20), |v| v["event"] == "ready");
        a
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a line satisfying `pred`, returning it; panics after `timeout`.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + timeout;
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "no matching agent line within {timeout:?}; saw: {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Sends SIGINT and returns the summary line.
    pub fn stop(mut self) -> Value {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let summary = self.wait_for(Duration::from_secs(20), |v| v["event"] == "summary");
        let status = self.child.wait().expect("waiting for agent");
        assert!(status.success(), "agent exited with {status}");
        summary
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WatchAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_line_reader(stdout: ChildStdout) -> mpsc::Receiver<Value> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Value>(&line) {
                Ok(v) => {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
                Err(_) => eprintln!("agent printed a non-JSON line: {line}"),
            }
        }
    });
    rx
}

/// The flows of a summary line matching interface, direction, protocol and both ends.
pub fn find_flows<'a>(
    summary: &'a Value,
    iface: &str,
    direction: &str,
    protocol: &str,
    src: &str,
    dst: &str,
) -> Vec<&'a Value> {
    summary["flows"]
        .as_array()
        .expect("flows array")
        .iter()
        .filter(|f| {
            f["interface"] == iface
                && f["direction"] == direction
                && f["protocol"] == protocol
                && f["src"] == src
                && f["dst"] == dst
        })
        .collect()
}

/// Exactly one flow matching, with its (packets, bytes, tcp_flags).
pub fn one_flow(
    summary: &Value,
    iface: &str,
    direction: &str,
    protocol: &str,
    src: &str,
    dst: &str,
) -> (u64, u64, String) {
    let found = find_flows(summary, iface, direction, protocol, src, dst);
    assert_eq!(
        found.len(),
        1,
        "expected one {protocol} flow {src} -> {dst} {direction} on {iface}, found {found:#?} in {:#}",
        summary["flows"]
    );
    let f = found[0];
    (
        f["packets"].as_u64().expect("packets"),
        f["bytes"].as_u64().expect("bytes"),
        f["tcp_flags"].as_str().expect("tcp_flags").to_string(),
    )
}

/// The packets and bytes of a flow object as `kubectl-orb8 -o json` prints it.
pub fn counts(f: &Value) -> (u64, u64) {
    (
        f["packets"].as_u64().expect("packets"),
        f["bytes"].as_u64().expect("bytes"),
    )
}

/// A counter of a summary line.
pub fn counter(summary: &Value, name: &str) -> u64 {
    summary["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {summary}"))
}

/// Waits for a `kubectl-orb8` child with piped output; panics with its stderr unless it
/// succeeded; returns its stdout.
pub fn client_stdout(child: Child) -> String {
    let out = child.wait_with_output().expect("waiting for kubectl-orb8");
    assert!(
        out.status.success(),
        "kubectl-orb8 failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Names of the TCX programs attached to an interface of a namespace (both hooks).
pub fn tcx_programs(ns: &NetNs, iface: &str) -> Vec<String> {
    use aya::programs::{SchedClassifier, TcAttachType};
    let iface = iface.to_string();
    ns.run_in(move || {
        let mut names = Vec::new();
        for t in [TcAttachType::Ingress, TcAttachType::Egress] {
            let (_, progs) = SchedClassifier::query_tcx(&iface, t).expect("query tcx");
            names.extend(
                progs
                    .iter()
                    .filter_map(|p| p.name_as_str().map(String::from)),
            );
        }
        names
    })
}

/// Waits until orb8's programs are attached to `iface` in `ns` (an agent someone else started).
pub fn wait_attached(ns: &NetNs, iface: &str) {
    let end = Instant::now() + Duration::from_secs(30);
    while !tcx_programs(ns, iface)
        .iter()
        .any(|n| n == "orb8_tc_ingress")
    {
        assert!(Instant::now() < end, "orb8 never attached to {iface}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// A running `orb8-syscall-load`, waiting for its go byte.
pub struct SyscallLoad {
    child: Child,
    /// PID (host namespace) of the process that will make the calls.
    pub pid: u32,
}

impl SyscallLoad {
    /// Starts the helper: `getppid` GETPPID times, failing `openat` OPENAT times (ENOENT),
    /// `close(-1)` CLOSE times (EBADF); in a new PID namespace with `new_pidns`. `cgroup`, when
    /// given, receives the process before it makes any call.
    pub fn start(
        new_pidns: bool,
        cgroup: Option<&TestCgroup>,
        getppid: u64,
        openat: u64,
        close: u64,
    ) -> SyscallLoad {
        let bin = workspace_bin("orb8-syscall-load");
        let mut cmd = Command::new(bin);
        if new_pidns {
            cmd.arg("--new-pidns");
        }
        let mut child = cmd
            .args([getppid, openat, close].map(|n| n.to_string()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning orb8-syscall-load");
        if let Some(cg) = cgroup {
            cg.add(child.id());
        }
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("reading the ready line");
        let pid = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("orb8-syscall-load said {line:?}"));
        SyscallLoad { child, pid }
    }

    /// Tells it to make its calls and waits until it has exited.
    pub fn go_and_wait(mut self) {
        use std::io::Write as _;
        let mut stdin = self.child.stdin.take().expect("stdin");
        stdin.write_all(b"g").expect("sending go");
        drop(stdin);
        let status = self.child.wait().expect("waiting for orb8-syscall-load");
        assert!(status.success(), "orb8-syscall-load failed: {status}");
    }
}

impl Drop for SyscallLoad {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `sleep` process in a cgroup laid out as containerd's cgroupfs driver does
/// (`kubepods/besteffort/pod<uid>/<id>`), or in none; killed (and its cgroup removed) on drop.
pub struct PodProcess {
    child: Child,
    _cgroup: Option<TestCgroup>,
}

impl PodProcess {
    /// Starts one in container `id` of pod `uid` (`pod`), or outside any pod (`None`).
    pub fn start(pod: Option<(&str, &str)>) -> PodProcess {
        let child = Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawn sleep");
        let cgroup = pod.map(|(uid, id)| {
            let cg = TestCgroup::nested(&format!("kubepods/besteffort/pod{uid}/{id}"));
            cg.add(child.id());
            cg
        });
        PodProcess {
            child,
            _cgroup: cgroup,
        }
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
