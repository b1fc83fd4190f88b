//! `kubectl orb8 trace syscall --agent ADDR` against a fake agent that plays a canned trace
//! (started, `getppid` = 1, `openat` = ENOENT, target exited) and a canned summary: the client
//! sends the flags as a TraceSyscalls request, asks GetSyscallSummary for the trace it was
//! told, and renders the counts exactly, as a table, as JSON and as a stream of lines.

use std::process::{Command, Output, Stdio};

use orb8_proto::{SyscallTarget, TraceSyscallsRequest, syscall_target};
use orb8_testkit::fake_agent::{FakeAgent, Running, SYSCALL_TRACE_ID, serve_tcp};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_kubectl-orb8");

/// Runs `kubectl-orb8 --agent ADDR trace syscall --cgroup /sys/fs/cgroup/app EXTRA...`.
fn trace(agent: &Running, extra: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(["--agent", &agent.addr, "trace", "syscall"])
        .args(["--cgroup", "/sys/fs/cgroup/app"])
        .args(extra)
        .env_remove("ORB8_TOKEN")
        .env_remove("ORB8_AGENT_BINARY")
        .stdin(Stdio::null())
        .output()
        .expect("kubectl-orb8 runs");
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The request the fake agent received and the summaries it was asked for.
fn requests(agent: &Running) -> (Vec<TraceSyscallsRequest>, Vec<u64>) {
    (
        agent.calls.traces.lock().expect("lock").clone(),
        agent.calls.summaries.lock().expect("lock").clone(),
    )
}

fn cgroup_request(stream: bool) -> TraceSyscallsRequest {
    TraceSyscallsRequest {
        target: Some(SyscallTarget {
            kind: Some(syscall_target::Kind::CgroupPath(
                "/sys/fs/cgroup/app".into(),
            )),
        }),
        syscalls: Vec::new(),
        stream,
    }
}

#[test]
fn the_summary_table_shows_the_agents_counts() {
    let agent = serve_tcp(FakeAgent::new("node-a"));
    let out = trace(&agent, &[]);
    // Two calls of 1500 ns each: 50 % of the time each, 1 µs per call (rounded down as strace
    // does), ties ordered by name; one failed openat, ENOENT.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "% time     seconds  usecs/call     calls    errors syscall\n\
         ------ ----------- ----------- --------- --------- ----------------\n\
         \x2050.00    0.000002           1         1           getppid\n\
         \x2050.00    0.000002           1         1         1 openat\n\
         ------ ----------- ----------- --------- --------- ----------------\n\
         100.00    0.000003           1         2         1 total\n\
         \n\
         errors by errno:\n\
         \x20 openat           ENOENT 1\n"
    );
    // What was traced and why the trace ended, as the agent said it.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "tracing cgroup /sys/fs/cgroup/app (id 9) on node-a (cgroup filter; raw tracepoints)"
        ),
        "{err}"
    );
    assert!(err.contains("process 7 exited"), "{err}");
    assert_eq!(
        requests(&agent),
        (vec![cgroup_request(false)], vec![SYSCALL_TRACE_ID])
    );
}

#[test]
fn the_json_summary_has_every_count() {
    let agent = serve_tcp(FakeAgent::new("node-a"));
    let out = trace(&agent, &["-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let bucket = json!([{"low_ns": 1024, "high_ns": 2048, "count": 1}]);
    assert_eq!(
        v,
        json!({
            "node": "node-a",
            "arch": "x86_64",
            "target": "cgroup /sys/fs/cgroup/app (id 9)",
            "filter": "cgroup",
            "probes": "raw_tracepoint",
            "duration_seconds": 2.0,
            "target_exited": true,
            "syscalls": [
                {"syscall": "getppid", "nr": 110, "percent_time": 50.0, "seconds": 1.5e-6,
                 "total_ns": 1500, "usecs_per_call": 1, "calls": 1, "errors": 0,
                 "errnos": {}, "histogram": bucket},
                {"syscall": "openat", "nr": 257, "percent_time": 50.0, "seconds": 1.5e-6,
                 "total_ns": 1500, "usecs_per_call": 1, "calls": 1, "errors": 1,
                 "errnos": {"ENOENT": 1}, "histogram": bucket},
            ],
            "calls": 2,
            "errors": 1,
            "lost": {},
        })
    );
}

#[test]
fn streaming_prints_each_syscall_as_it_returned() {
    let agent = serve_tcp(FakeAgent::new("node-a"));
    let out = trace(&agent, &["--stream"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "22:13:20.000Z 7/7 app getppid = 1 <0.000002>\n\
         22:13:20.000Z 7/7 app openat = -1 ENOENT <0.000002>\n"
    );
    assert_eq!(
        requests(&agent),
        (vec![cgroup_request(true)], vec![SYSCALL_TRACE_ID])
    );
}
