//! Privileged end-to-end tests of syscall tracing: a real agent's kernel programs on
//! `raw_syscalls` (or, for an allow-list where the kernel allows it, fentry/fexit), targets that the tests create (a cgroup v2 group, a PID namespace, a lone
//! process) running `orb8-syscall-load`, which makes an exact number of syscalls on cue, and
//! an identical process outside the target that must not be counted. Exact counts are asserted.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use orb8_proto::{self as pb, syscall_trace_event::Kind};
use orb8_testkit::*;
use serde_json::Value;

mod loopback_agent;
use loopback_agent::{Client, agent};

const TOKEN: &str = "test-token-0123456789abcdef";

fn request(
    target: pb::syscall_target::Kind,
    syscalls: &[&str],
    stream: bool,
) -> pb::TraceSyscallsRequest {
    pb::TraceSyscallsRequest {
        target: Some(pb::SyscallTarget { kind: Some(target) }),
        syscalls: syscalls.iter().map(|s| s.to_string()).collect(),
        stream,
    }
}

/// Opens a trace and returns its stream and `started` message.
async fn trace(
    client: &mut Client,
    req: pb::TraceSyscallsRequest,
) -> (
    tonic::Streaming<pb::SyscallTraceEvent>,
    pb::SyscallTraceStarted,
) {
    let mut stream = client
        .trace_syscalls(req)
        .await
        .expect("TraceSyscalls")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("first message")
        .expect("a message");
    let Some(Kind::Started(s)) = first.kind else {
        panic!("the trace began with {first:?}");
    };
    (stream, s)
}

/// Waits (up to 10 s) for the `target_exited` message, collecting the syscalls before it.
async fn until_exit(stream: &mut tonic::Streaming<pb::SyscallTraceEvent>) -> Vec<pb::SyscallEvent> {
    let mut calls = Vec::new();
    let wait = async {
        while let Some(ev) = stream.message().await.expect("stream") {
            match ev.kind {
                Some(Kind::Syscall(e)) => calls.push(e),
                Some(Kind::TargetExited(_)) => return,
                Some(Kind::Gap(g)) => panic!("events lost: {g:?}"),
                _ => {}
            }
        }
        panic!("the stream ended before target_exited");
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("target_exited within 10 s");
    calls
}

/// Calls, errors and errnos by syscall name.
fn by_name(s: &pb::SyscallSummary) -> BTreeMap<String, (u64, u64, BTreeMap<String, u64>)> {
    s.syscalls
        .iter()
        .map(|x| {
            let hist: u64 = x.histogram.iter().sum();
            assert_eq!(hist, x.calls, "{}: the histogram holds every call", x.name);
            (
                x.name.clone(),
                (
                    x.calls,
                    x.errors,
                    x.errnos.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                ),
            )
        })
        .collect()
}

fn no_losses(s: &pb::SyscallSummary) {
    for d in &s.drops {
        assert_eq!(d.count, 0, "lost: {d:?}");
    }
}

fn errnos(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_cgroup_summary_counts_exactly_and_ignores_other_processes() {
    let (agent, mut client) = agent(TOKEN).await;
    let cg = TestCgroup::new();
    let inside = SyscallLoad::start(false, Some(&cg), 1000, 7, 5);
    // The same calls (and more) outside the cgroup must not be counted.
    let outside = SyscallLoad::start(false, None, 1333, 11, 13);
    let (stream, started) = trace(
        &mut client,
        request(
            pb::syscall_target::Kind::CgroupPath(cg.path.display().to_string()),
            &[],
            false,
        ),
    )
    .await;
    assert_eq!(started.filter, pb::SyscallFilterKind::Cgroup as i32);
    assert_eq!(started.cgroup_ids, vec![cg.id()]);
    assert!(started.note.is_empty());
    let (_, programs) = agent.probe_info();
    assert!(programs.contains(&"orb8_sys_enter") && programs.contains(&"orb8_sys_exit"));
    let t = std::thread::spawn(move || outside.go_and_wait());
    inside.go_and_wait();
    t.join().unwrap();
    let summary = client
        .get_syscall_summary(pb::GetSyscallSummaryRequest {
            trace_id: started.trace_id,
        })
        .await
        .expect("summary")
        .into_inner();
    let got = by_name(&summary);
    assert_eq!(got["getppid"], (1000, 0, errnos(&[])), "{got:#?}");
    assert_eq!(got["openat"], (7, 7, errnos(&[("ENOENT", 7)])), "{got:#?}");
    assert_eq!(got["close"], (5, 5, errnos(&[("EBADF", 5)])), "{got:#?}");
    assert_eq!(got["exit_group"].0, 1, "{got:#?}");
    no_losses(&summary);
    drop(stream);
    // The last trace gone, the programs are unloaded.
    for _ in 0..100 {
        if !agent.probe_info().1.contains(&"orb8_sys_enter") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "the syscall programs are still loaded: {:?}",
        agent.probe_info().1
    );
}

/// Whether this kernel loads fentry/fexit (`BPF_PROG_TYPE_TRACING`) programs, asked by aya's
/// own feature probe, not by the agent: some kernels refuse them with EPERM.
fn kernel_loads_fentry() -> Result<(), String> {
    match aya::sys::is_program_supported(aya::programs::ProgramType::Tracing) {
        Ok(true) => Ok(()),
        Ok(false) => Err("this kernel does not know tracing programs".into()),
        Err(e) => {
            let mut why = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                why = format!("{why}: {c}");
                cause = c.source();
            }
            Err(format!("this kernel refuses tracing programs: {why}"))
        }
    }
}

/// Traces `getppid,close` of a process in a cgroup making 200 getppid and 4 failing close
/// calls (and 3 openat, which must not be counted) beside an outsider making the same calls;
/// checks the exact counts and returns the `started` message.
async fn allow_list_counts_exactly(client: &mut Client) -> pb::SyscallTraceStarted {
    let cg = TestCgroup::new();
    let load = SyscallLoad::start(false, Some(&cg), 200, 3, 4);
    let outside = SyscallLoad::start(false, None, 211, 5, 7);
    let (mut stream, started) = trace(
        client,
        request(
            pb::syscall_target::Kind::Pid(load.pid),
            &["getppid", "close"],
            false,
        ),
    )
    .await;
    assert_eq!(started.filter, pb::SyscallFilterKind::Cgroup as i32);
    let t = std::thread::spawn(move || outside.go_and_wait());
    load.go_and_wait();
    t.join().unwrap();
    until_exit(&mut stream).await;
    let summary = client
        .get_syscall_summary(pb::GetSyscallSummaryRequest {
            trace_id: started.trace_id,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(summary.target_exited);
    let got = by_name(&summary);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        vec!["close", "getppid"],
        "{got:#?}"
    );
    assert_eq!(got["getppid"], (200, 0, errnos(&[])));
    assert_eq!(got["close"], (4, 4, errnos(&[("EBADF", 4)])));
    no_losses(&summary);
    started
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_allow_list_falls_back_to_raw_tracepoints_where_fentry_is_refused() {
    let (_agent, mut client) = agent(TOKEN).await;
    if kernel_loads_fentry().is_ok() {
        preconditions::skipped(
            "privileged_allow_list_falls_back_to_raw_tracepoints_where_fentry_is_refused",
            "this kernel loads fentry programs, so the fallback is not taken (the fentry test runs)",
        );
        return;
    }
    let started = allow_list_counts_exactly(&mut client).await;
    assert_eq!(started.probes, "raw_tracepoint", "{started:?}");
    assert!(started.fentry_functions.is_empty(), "{started:?}");
    // close (3) has the lowest number: its slot is loaded first and refused.
    let close =
        orb8_agent::syscalls::kernel_functions(orb8_syscalls::Arch::current().unwrap(), "close");
    assert!(
        started
            .probes_note
            .starts_with(&format!("the kernel refused fexit on {}: ", close[0])),
        "{started:?}"
    );
    assert!(
        started.probes_note.contains("Operation not permitted"),
        "{started:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_allow_list_on_fentry_counts_exactly() {
    if let Err(why) = kernel_loads_fentry() {
        preconditions::skipped("privileged_allow_list_on_fentry_counts_exactly", &why);
        return;
    }
    let (agent, mut client) = agent(TOKEN).await;
    let started = allow_list_counts_exactly(&mut client).await;
    assert_eq!(started.probes, "fentry", "{started:?}");
    assert!(started.probes_note.is_empty(), "{started:?}");
    assert_eq!(started.fentry_functions.len(), 2, "{started:?}");
    assert!(
        started.fentry_functions[0].ends_with("_sys_close")
            && started.fentry_functions[1].ends_with("_sys_getppid"),
        "{started:?}"
    );
    // Stream mode on the same path: one event per call, nothing from the outsider.
    let cg = TestCgroup::new();
    let load = SyscallLoad::start(false, Some(&cg), 50, 2, 3);
    let outside = SyscallLoad::start(false, None, 61, 5, 7);
    let pid = load.pid;
    let (mut stream, started) = trace(
        &mut client,
        request(
            pb::syscall_target::Kind::Pid(pid),
            &["getppid", "openat", "close"],
            true,
        ),
    )
    .await;
    assert_eq!(started.probes, "fentry", "{started:?}");
    let (_, programs) = agent.probe_info();
    assert!(
        programs.contains(&"orb8_sys_fentry_2") && !programs.contains(&"orb8_sys_enter"),
        "{programs:?}"
    );
    let t = std::thread::spawn(move || outside.go_and_wait());
    load.go_and_wait();
    t.join().unwrap();
    let calls = until_exit(&mut stream).await;
    assert!(calls.iter().all(|e| e.pid == pid), "only the target");
    let n = |name: &str| calls.iter().filter(|e| e.name == name).count();
    assert_eq!((n("getppid"), n("openat"), n("close")), (50, 2, 3));
    assert_eq!(calls.len(), 55);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_stream_sends_one_event_per_syscall() {
    let (_agent, mut client) = agent(TOKEN).await;
    let cg = TestCgroup::new();
    let load = SyscallLoad::start(false, Some(&cg), 300, 6, 9);
    let pid = load.pid;
    let (mut stream, _) = trace(
        &mut client,
        request(
            pb::syscall_target::Kind::Pid(pid),
            &["getppid", "openat", "close"],
            true,
        ),
    )
    .await;
    load.go_and_wait();
    let calls = until_exit(&mut stream).await;
    let count = |name: &str, errno: &str, ret: i64| {
        calls
            .iter()
            .filter(|e| {
                e.name == name && e.errno == errno && e.ret == ret && e.pid == pid && e.tid == pid
            })
            .count()
    };
    assert_eq!(calls.len(), 315, "{:?}", &calls[..calls.len().min(5)]);
    // Its parent is this test process.
    assert_eq!(count("getppid", "", std::process::id() as i64), 300);
    assert_eq!(count("openat", "ENOENT", -2), 6);
    assert_eq!(count("close", "EBADF", -9), 9);
    assert!(
        calls.iter().all(|e| e.comm == "orb8-syscall-lo"),
        "comm is the task name"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_pid_namespace_fallback_without_a_cgroup() {
    let (_agent, mut client) = agent(TOKEN).await;
    // In the root cgroup (no group of its own) but in a new PID namespace: the cgroup v1 case.
    let load = SyscallLoad::start(true, None, 400, 2, 3);
    let outside = SyscallLoad::start(false, None, 77, 5, 5);
    let (mut stream, started) = trace(
        &mut client,
        request(pb::syscall_target::Kind::Pid(load.pid), &[], false),
    )
    .await;
    assert_eq!(
        started.filter,
        pb::SyscallFilterKind::Pidns as i32,
        "{started:?}"
    );
    assert!(started.note.contains("PID namespace"), "{}", started.note);
    let t = std::thread::spawn(move || outside.go_and_wait());
    load.go_and_wait();
    t.join().unwrap();
    until_exit(&mut stream).await;
    let summary = client
        .get_syscall_summary(pb::GetSyscallSummaryRequest {
            trace_id: started.trace_id,
        })
        .await
        .unwrap()
        .into_inner();
    let got = by_name(&summary);
    assert_eq!(got["getppid"], (400, 0, errnos(&[])), "{got:#?}");
    assert_eq!(got["openat"], (2, 2, errnos(&[("ENOENT", 2)])));
    assert_eq!(got["close"], (3, 3, errnos(&[("EBADF", 3)])));
    no_losses(&summary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_process_fallback_traces_the_process_alone() {
    let (_agent, mut client) = agent(TOKEN).await;
    let load = SyscallLoad::start(false, None, 250, 1, 2);
    let outside = SyscallLoad::start(false, None, 99, 4, 4);
    let (mut stream, started) = trace(
        &mut client,
        request(pb::syscall_target::Kind::Pid(load.pid), &[], false),
    )
    .await;
    assert_eq!(
        started.filter,
        pb::SyscallFilterKind::Process as i32,
        "{started:?}"
    );
    assert!(
        started.note.contains("that process only"),
        "{}",
        started.note
    );
    let t = std::thread::spawn(move || outside.go_and_wait());
    load.go_and_wait();
    t.join().unwrap();
    until_exit(&mut stream).await;
    let summary = client
        .get_syscall_summary(pb::GetSyscallSummaryRequest {
            trace_id: started.trace_id,
        })
        .await
        .unwrap()
        .into_inner();
    let got = by_name(&summary);
    assert_eq!(got["getppid"], (250, 0, errnos(&[])), "{got:#?}");
    assert_eq!(got["openat"], (1, 1, errnos(&[("ENOENT", 1)])));
    assert_eq!(got["close"], (2, 2, errnos(&[("EBADF", 2)])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_unknown_syscalls_and_targets_are_refused() {
    let (_agent, mut client) = agent(TOKEN).await;
    let err = client
        .trace_syscalls(request(pb::syscall_target::Kind::Pid(1), &["opnat"], false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("did you mean openat"),
        "{}",
        err.message()
    );
    let err = client
        .trace_syscalls(request(
            pb::syscall_target::Kind::Pid(u32::MAX - 1),
            &[],
            false,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
}

/// Runs `kubectl-orb8 --local trace syscall --pid PID ARGS`, sends the go byte once the trace
/// has started, and returns its stdout and stderr.
fn cli(load: SyscallLoad, args: &[&str]) -> (String, String) {
    let pid = load.pid.to_string();
    let mut child = Command::new(workspace_bin("kubectl-orb8"))
        .args([
            "--local",
            "trace",
            "syscall",
            "--pid",
            &pid,
            "--duration",
            "20s",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kubectl-orb8");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut err = String::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("kubectl-orb8 stopped before tracing: {err}");
        }
        err.push_str(&line);
        if line.starts_with("orb8: tracing ") {
            break;
        }
    }
    load.go_and_wait();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    err.push_str(&rest);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kubectl-orb8 failed: {err}");
    (String::from_utf8(out.stdout).unwrap(), err)
}

#[test]
fn privileged_cli_summary_json_counts_exactly() {
    require_root();
    let cg = TestCgroup::new();
    let load = SyscallLoad::start(false, Some(&cg), 500, 4, 6);
    let pid = load.pid;
    let (out, err) = cli(load, &["-o", "json"]);
    assert!(
        err.contains(&format!("process {pid} exited: the trace ends here")),
        "{err}"
    );
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["filter"], "cgroup");
    // Without an allow-list every syscall is traced: raw tracepoints, with no note.
    assert_eq!(v["probes"], "raw_tracepoint");
    assert!(v.get("probes_note").is_none(), "{out}");
    assert_eq!(v["target_exited"], true);
    let row = |name: &str| -> Value {
        v["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["syscall"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    assert_eq!(row("getppid")["calls"], 500);
    assert_eq!(row("getppid")["errors"], 0);
    assert_eq!(row("openat")["calls"], 4);
    assert_eq!(row("openat")["errnos"]["ENOENT"], 4);
    assert_eq!(row("close")["calls"], 6);
    assert_eq!(row("close")["errnos"]["EBADF"], 6);
    let hist: u64 = row("getppid")["histogram"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert_eq!(hist, 500);
}

#[test]
fn privileged_cli_table_and_stream() {
    require_root();
    let cg = TestCgroup::new();
    let (out, err) = cli(
        SyscallLoad::start(false, Some(&cg), 20, 2, 1),
        &["--syscall", "openat,close"],
    );
    let header = err
        .lines()
        .find(|l| l.starts_with("orb8: tracing "))
        .unwrap();
    let hooked = match kernel_loads_fentry() {
        Ok(()) => "; fentry/fexit on ",
        Err(_) => "; raw tracepoints, not fentry: the kernel refused fexit on ",
    };
    assert!(header.contains(hooked), "{header}");
    assert!(
        out.starts_with("% time     seconds  usecs/call     calls    errors syscall\n"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.ends_with(" 2         2 openat")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.ends_with(" 1         1 close")),
        "{out}"
    );
    assert!(!out.contains("getppid"), "{out}");
    let (out, _) = cli(
        SyscallLoad::start(false, Some(&cg), 30, 2, 1),
        &[
            "--stream",
            "-o",
            "json",
            "--syscall",
            "getppid,openat,close",
        ],
    );
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 33, "{out}");
    let n = |name: &str, errno: Option<&str>| {
        lines
            .iter()
            .filter(|l| l["syscall"] == name && l["errno"].as_str() == errno)
            .count()
    };
    assert_eq!(n("getppid", None), 30);
    assert_eq!(n("openat", Some("ENOENT")), 2);
    assert_eq!(n("close", Some("EBADF")), 1);
}
