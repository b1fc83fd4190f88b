//! `kubectl orb8 trace syscall`: the syscalls of a process or cgroup, counted (or, with
//! `--stream`, sent one by one) by the agent's kernel programs; nothing about other processes
//! leaves the kernel.

use std::io::Write as _;

use anyhow::Context as _;
use futures::StreamExt as _;
use orb8_proto::{
    DropStage, PodTarget, SyscallFilterKind, SyscallSummary, SyscallTarget, SyscallTraceStarted,
    TraceSyscallsRequest, syscall_target, syscall_trace_event,
};

use crate::cli::{GlobalArgs, TraceSyscallArgs};
use crate::interrupt::Interrupt;
use crate::output::LiveOutput;
use crate::progress::warn;
use crate::render::syscalls::{self as view, SummaryView, SyscallLine};
use crate::render::{LineFormat, OutputFormat, json, record, value_record, yaml};
use crate::session::Session;

/// Said when a POD is given with --local or --agent.
pub const POD_NEEDS_CLUSTER: &str = "a POD is traced in cluster mode (drop --local and --agent); \
     on one host, trace --pid PID or --cgroup PATH";

/// Checks the flags before any agent is started: a target is named, the names are syscalls.
pub fn check(args: &TraceSyscallArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    if args.pod.is_some() && (global.local || !global.agents.is_empty()) {
        anyhow::bail!(POD_NEEDS_CLUSTER);
    }
    if !global.local && global.agents.is_empty() && (args.pid.is_some() || args.cgroup.is_some()) {
        anyhow::bail!(
            "--pid and --cgroup name a process or cgroup on one host: use them with --local or \
             --agent ADDR"
        );
    }
    if args.pid.is_none() && args.cgroup.is_none() && args.pod.is_none() {
        anyhow::bail!("trace syscall needs a target: --pid PID or --cgroup PATH (or a POD)");
    }
    if args.syscalls.iter().any(|s| s.trim().is_empty()) {
        anyhow::bail!("--syscall got an empty name");
    }
    orb8_syscalls::check_any_arch(&args.syscalls)?;
    Ok(())
}

/// The request these flags describe; `pod` is the POD argument as the cluster resolved it.
pub fn request(args: &TraceSyscallArgs, pod: Option<&PodTarget>) -> TraceSyscallsRequest {
    let kind = match (pod, &args.pid, &args.cgroup) {
        (Some(p), _, _) => syscall_target::Kind::Pod(p.clone()),
        (None, Some(pid), _) => syscall_target::Kind::Pid(*pid),
        (None, None, Some(path)) => syscall_target::Kind::CgroupPath(path.clone()),
        (None, None, None) => syscall_target::Kind::CgroupPath(String::new()),
    };
    TraceSyscallsRequest {
        target: Some(SyscallTarget { kind: Some(kind) }),
        syscalls: args.syscalls.iter().map(|s| s.trim().to_string()).collect(),
        stream: args.stream,
    }
}

fn filter_name(kind: i32) -> &'static str {
    match SyscallFilterKind::try_from(kind) {
        Ok(SyscallFilterKind::Cgroup) => "cgroup",
        Ok(SyscallFilterKind::Pidns) => "pidns",
        Ok(SyscallFilterKind::Process) => "process",
        _ => "unknown",
    }
}

/// How the agent's kernel programs hook syscalls, for the header line: fentry/fexit on named
/// kernel functions, or raw tracepoints and (for an allow-list) why not fentry.
pub fn probes_text(started: &SyscallTraceStarted) -> String {
    match started.probes.as_str() {
        "fentry" => format!("fentry/fexit on {}", started.fentry_functions.join(", ")),
        "raw_tracepoint" if started.probes_note.is_empty() => "raw tracepoints".to_string(),
        "raw_tracepoint" => format!("raw tracepoints, not fentry: {}", started.probes_note),
        "" => "probes not reported by the agent".to_string(),
        other => other.to_string(),
    }
}

fn stage_name(stage: i32) -> &'static str {
    match DropStage::try_from(stage) {
        Ok(DropStage::Kernel) => "kernel",
        Ok(DropStage::Agent) => "agent",
        Ok(DropStage::Client) => "client",
        _ => "unknown",
    }
}

/// One line on the losses of a trace, or `None` when nothing was lost.
pub fn losses_line(s: &SyscallSummary) -> Option<String> {
    let parts: Vec<String> = s
        .drops
        .iter()
        .filter(|d| d.count > 0)
        .map(|d| format!("{} {} ({} stage)", d.count, d.reason, stage_name(d.stage)))
        .collect();
    (!parts.is_empty()).then(|| format!("{}: syscall trace losses: {}", s.node, parts.join(", ")))
}

/// Runs the trace until `--duration`, Ctrl-C or the target's exit, then prints the summary
/// (or, with `--stream`, has printed each syscall as it came).
pub async fn run(
    session: &Session,
    args: &TraceSyscallArgs,
    pod: Option<&PodTarget>,
    format: OutputFormat,
    interrupt: &Interrupt,
    out: &LiveOutput,
) -> anyhow::Result<()> {
    let [agent] = &session.agents[..] else {
        anyhow::bail!(
            "trace syscall uses one agent (the target's node); got {}",
            session.agents.len()
        );
    };
    let node = session.names[0].as_str();
    if let Some(arch) = orb8_syscalls::Arch::from_name(&agent.status.arch) {
        orb8_syscalls::resolve(arch, &args.syscalls)?;
    }
    let request = request(args, pod);
    let Some(trace) = session
        .open_traces("TraceSyscalls", "trace", |a| {
            a.trace_syscalls(request.clone())
        })
        .await?
        .pop()
    else {
        anyhow::bail!("trace syscall got no agent");
    };
    let (started, mut stream) = (trace.started, trace.stream);
    if !started.note.is_empty() {
        warn(&started.note);
    }
    let _ = writeln!(
        std::io::stderr(),
        "orb8: tracing {} on {node} ({} filter{}; {}){}",
        started.description,
        filter_name(started.filter),
        if args.syscalls.is_empty() {
            String::new()
        } else {
            format!(", syscalls {}", args.syscalls.join(","))
        },
        probes_text(&started),
        if args.stream {
            ""
        } else {
            "; Ctrl-C prints the summary"
        }
    );
    let stop = interrupt.wait_or_after(args.duration);
    tokio::pin!(stop);
    let mut exited = None;
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            () = &mut stop => break,
        };
        let ev = match item {
            Some(Ok(ev)) => ev,
            Some(Err(status)) => anyhow::bail!(
                "agent {node}: the syscall trace ended: {}",
                crate::merge::status_text(&status)
            ),
            None => anyhow::bail!("agent {node} ended the syscall trace"),
        };
        match ev.kind {
            Some(syscall_trace_event::Kind::Syscall(e)) => {
                let lines = LineFormat::from(format);
                out.print(match lines {
                    LineFormat::Text => record(lines, &view::stream_line(ev.time_unix_nanos, &e)),
                    _ => value_record(lines, &SyscallLine::new(node, ev.time_unix_nanos, &e))?,
                })?;
            }
            Some(syscall_trace_event::Kind::Gap(g)) => warn(&format!(
                "{node}: {} syscall events lost ({} stage, {})",
                g.lost,
                stage_name(g.stage),
                g.reason
            )),
            Some(syscall_trace_event::Kind::TargetExited(t)) => {
                exited = Some(t.reason);
                break;
            }
            Some(syscall_trace_event::Kind::Started(_)) | None => {}
        }
    }
    let summary = agent
        .syscall_summary(started.trace_id)
        .await
        .context("reading the syscall summary")?;
    // The trace ends (and the agent unloads its programs) when the stream is dropped.
    drop(stream);
    if let Some(reason) = &exited {
        warn(&format!("{reason}: the trace ends here"));
    }
    if let Some(line) = losses_line(&summary) {
        warn(&line);
    }
    if args.stream {
        return Ok(());
    }
    let rows = view::rows(&summary.syscalls);
    match format {
        OutputFormat::Json | OutputFormat::Yaml => {
            let v = SummaryView {
                node,
                arch: &summary.arch,
                target: &started.description,
                filter: filter_name(started.filter),
                probes: &started.probes,
                probes_note: &started.probes_note,
                duration_seconds: summary.elapsed_ns as f64 / 1e9,
                target_exited: summary.target_exited,
                calls: rows.iter().map(|r| r.calls).sum(),
                errors: rows.iter().map(|r| r.errors).sum(),
                syscalls: rows,
                lost: view::losses(&summary),
            };
            let text = if format == OutputFormat::Json {
                json::to_string(&v)?
            } else {
                yaml::to_string(&v)?
            };
            out.print_summary(format!("{}\n", text.trim_end()))?;
        }
        OutputFormat::Table | OutputFormat::Wide => out.print_summary(view::strace_table(&rows))?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command, TraceCommand};
    use clap::Parser as _;

    fn parse(args: &[&str]) -> (TraceSyscallArgs, GlobalArgs) {
        let cli = Cli::try_parse_from(args).expect("parses");
        match cli.command {
            Command::Trace(TraceCommand::Syscall(a)) => (a, cli.global),
            other => panic!("expected trace syscall, got {other:?}"),
        }
    }

    #[test]
    fn flags_become_a_request() {
        let (a, g) = parse(&[
            "kubectl-orb8",
            "--local",
            "trace",
            "syscall",
            "--pid",
            "42",
            "--syscall",
            "openat,connect",
            "--syscall",
            "close",
            "--stream",
        ]);
        check(&a, &g).expect("valid");
        let r = request(&a, None);
        assert_eq!(r.syscalls, vec!["openat", "connect", "close"]);
        assert!(r.stream);
        assert_eq!(
            r.target.and_then(|t| t.kind),
            Some(syscall_target::Kind::Pid(42))
        );
    }

    #[test]
    fn the_header_says_how_syscalls_are_hooked_and_why_not_fentry() {
        let mut s = SyscallTraceStarted {
            probes: "fentry".into(),
            fentry_functions: vec!["__x64_sys_openat".into(), "__do_sys_getppid".into()],
            ..Default::default()
        };
        assert_eq!(
            probes_text(&s),
            "fentry/fexit on __x64_sys_openat, __do_sys_getppid"
        );
        s.probes = "raw_tracepoint".into();
        s.fentry_functions.clear();
        assert_eq!(probes_text(&s), "raw tracepoints");
        s.probes_note = "the kernel refused fexit on __x64_sys_openat: EPERM".into();
        assert_eq!(
            probes_text(&s),
            "raw tracepoints, not fentry: the kernel refused fexit on __x64_sys_openat: EPERM"
        );
    }

    #[test]
    fn pods_are_traced_in_cluster_mode() {
        let (a, g) = parse(&[
            "kubectl-orb8",
            "trace",
            "syscall",
            "checkout-7f9c",
            "-c",
            "app",
        ]);
        assert!(check(&a, &g).is_ok());
        let (a, g) = parse(&["kubectl-orb8", "--local", "trace", "syscall", "checkout"]);
        assert_eq!(check(&a, &g).unwrap_err().to_string(), POD_NEEDS_CLUSTER);
        assert!(
            Cli::try_parse_from(["kubectl-orb8", "trace", "syscall", "p", "--pid", "1"]).is_err()
        );
    }

    #[test]
    fn unknown_syscalls_are_one_line_with_close_matches() {
        let (a, g) = parse(&[
            "kubectl-orb8",
            "--local",
            "trace",
            "syscall",
            "--pid",
            "1",
            "--syscall",
            "opnat",
        ]);
        let err = check(&a, &g).unwrap_err().to_string();
        assert!(
            err.starts_with("unknown syscall 'opnat' (did you mean openat"),
            "{err}"
        );
        let (a, g) = parse(&["kubectl-orb8", "--local", "trace", "syscall"]);
        assert!(
            check(&a, &g)
                .unwrap_err()
                .to_string()
                .contains("needs a target")
        );
    }
}
