//! Syscall tracing overhead: a loop of one syscall timed bare, under orb8's tracer, under the
//! empty-program floor of the raw_syscalls approach, and under the tools people use instead
//! (bpftrace counting, bpftrace with per-call latency, strace -c). Traced: the tracer targets
//! the loop; untraced: it targets another (sleeping) process while the loop runs. Variants are
//! interleaved round by round.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::{Ebpf, programs::RawTracePoint};
use orb8_testkit::TestCgroup;

use super::{
    Ctx,
    report::{Row, Section},
    stats::Sample,
    tools::{ReadyOn, Running},
    workload::Kind,
};

/// Who observes the loop.
#[derive(Clone, Debug)]
enum Tracer {
    Bare,
    /// Empty programs on both raw_syscalls tracepoints: the cost of the approach itself.
    Floor,
    Orb8 {
        /// Another agent binary (the baseline build), or this tree's.
        agent: Option<PathBuf>,
        cgroup: bool,
    },
    BpftraceCount,
    BpftraceLatency,
    Strace,
}

impl Tracer {
    fn name(&self) -> String {
        match self {
            Tracer::Bare => "bare".into(),
            Tracer::Floor => "floor: empty raw_syscalls programs".into(),
            Tracer::Orb8 { agent, cgroup } => format!(
                "orb8 trace syscall --{}{}",
                if *cgroup { "cgroup" } else { "pid" },
                if agent.is_some() { " (baseline)" } else { "" }
            ),
            Tracer::BpftraceCount => "bpftrace, count per syscall".into(),
            Tracer::BpftraceLatency => "bpftrace, latency histogram".into(),
            Tracer::Strace => "strace -c".into(),
        }
    }

    fn is_strace(&self) -> bool {
        matches!(self, Tracer::Strace)
    }
}

/// Something attached for one run; detached when dropped.
#[allow(dead_code, reason = "held only to keep the tracer running")]
enum Attached {
    Nothing,
    Process(Running),
    Programs(Ebpf),
}

fn bpftrace_script(t: &Tracer, pid: u32) -> String {
    match t {
        Tracer::BpftraceCount => {
            format!("tracepoint:raw_syscalls:sys_enter /pid == {pid}/ {{ @[args->id] = count(); }}")
        }
        _ => format!(
            "tracepoint:raw_syscalls:sys_enter /pid == {pid}/ {{ @s[tid] = nsecs; }} \
             tracepoint:raw_syscalls:sys_exit /pid == {pid} && @s[tid]/ \
             {{ @ns[args->id] = hist(nsecs - @s[tid]); delete(@s[tid]); }}"
        ),
    }
}

/// The command line a variant runs, as the report shows it (`PID`/`CGROUP` as placeholders).
fn command_line(ctx: &Ctx, t: &Tracer, kind: Kind, calls: u64) -> String {
    let lp = format!("xtask bench loop {} {calls}", kind.as_str());
    let tracer = match t {
        Tracer::Bare => return lp,
        Tracer::Floor => {
            "orb8_bench_sys_enter/exit (orb8-syscalls object) attached by xtask".into()
        }
        Tracer::Orb8 { agent, cgroup } => format!(
            "{}kubectl-orb8 --local trace syscall {}",
            agent
                .as_ref()
                .map(|a| format!("ORB8_AGENT_BINARY={} ", a.display()))
                .unwrap_or_default(),
            if *cgroup {
                "--cgroup CGROUP"
            } else {
                "--pid PID"
            }
        ),
        Tracer::BpftraceCount | Tracer::BpftraceLatency => {
            format!(
                "bpftrace -e '{}'",
                bpftrace_script(t, 0).replace("== 0", "== PID")
            )
        }
        Tracer::Strace => "strace -c -p PID".into(),
    };
    let _ = ctx;
    format!("{tracer} & {lp}")
}

fn attach(
    ctx: &Ctx,
    t: &Tracer,
    pid: u32,
    cgroup: Option<&TestCgroup>,
) -> anyhow::Result<Attached> {
    let ready = Duration::from_secs(120);
    Ok(match t {
        Tracer::Bare => Attached::Nothing,
        Tracer::Floor => {
            let mut ebpf = Ebpf::load(orb8_agent::ebpf::SYSCALLS_OBJECT)
                .context("loading the syscall object")?;
            for (name, tp) in [
                ("orb8_bench_sys_exit", "sys_exit"),
                ("orb8_bench_sys_enter", "sys_enter"),
            ] {
                let p: &mut RawTracePoint = ebpf
                    .program_mut(name)
                    .with_context(|| format!("no program {name}"))?
                    .try_into()?;
                p.load().with_context(|| format!("loading {name}"))?;
                p.attach(tp).with_context(|| format!("attaching {name}"))?;
            }
            Attached::Programs(ebpf)
        }
        Tracer::Orb8 {
            agent,
            cgroup: by_cgroup,
        } => {
            let mut c = Command::new(ctx.bin("kubectl-orb8"));
            c.args(["--local", "trace", "syscall"]);
            if *by_cgroup {
                let cg = cgroup.context("cgroup variant without a cgroup")?;
                c.arg("--cgroup").arg(&cg.path);
            } else {
                c.args(["--pid", &pid.to_string()]);
            }
            if let Some(a) = agent {
                c.env("ORB8_AGENT_BINARY", a);
            }
            Attached::Process(Running::start(c, ReadyOn::Stderr("orb8: tracing"), ready)?)
        }
        Tracer::BpftraceCount | Tracer::BpftraceLatency => {
            let mut c = Command::new("bpftrace");
            c.args(["-e", &bpftrace_script(t, pid)]);
            Attached::Process(Running::start(c, ReadyOn::Stdout("Attaching"), ready)?)
        }
        Tracer::Strace => {
            let mut c = Command::new("strace");
            c.args(["-c", "-p", &pid.to_string()]);
            Attached::Process(Running::start(
                c,
                ReadyOn::Stderr("strace: Process"),
                ready,
            )?)
        }
    })
}

/// One run: (wall ns/call, on-CPU ns/call).
fn run_once(
    ctx: &Ctx,
    t: &Tracer,
    kind: Kind,
    calls: u64,
    traced: bool,
) -> anyhow::Result<(f64, f64)> {
    let mut lp = Command::new(&ctx.xtask)
        .args(["bench", "loop", kind.as_str(), &calls.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("spawning the loop")?;
    // The untraced case traces a sleeping process instead of the loop.
    let sleeper = (!traced)
        .then(|| {
            let mut c = Command::new("sleep");
            c.arg("600");
            Running::start(c, ReadyOn::Spawned, Duration::ZERO)
        })
        .transpose()?;
    let target = sleeper.as_ref().map_or(lp.id(), Running::pid);
    let cgroup = matches!(t, Tracer::Orb8 { cgroup: true, .. }).then(TestCgroup::new);
    if let Some(cg) = &cgroup {
        cg.add(target);
    }
    let attached = attach(ctx, t, target, cgroup.as_ref());
    let result = attached.and_then(|attached| {
        lp.stdin.take().expect("stdin").write_all(b"g")?;
        let mut line = String::new();
        BufReader::new(lp.stdout.take().expect("stdout")).read_line(&mut line)?;
        let st = lp.wait()?;
        drop(attached);
        if !st.success() {
            bail!("the loop failed: {st}");
        }
        let mut it = line.split_whitespace().map(str::parse::<f64>);
        match (it.next(), it.next()) {
            (Some(Ok(w)), Some(Ok(c))) => Ok((w, c)),
            _ => bail!("the loop said {line:?}"),
        }
    });
    let _ = lp.kill();
    let _ = lp.wait();
    drop(sleeper);
    drop(cgroup);
    result
}

fn scenario(
    ctx: &Ctx,
    title: &str,
    kind: Kind,
    traced: bool,
    notes: Vec<String>,
) -> anyhow::Result<Section> {
    let mut tracers = vec![
        Tracer::Bare,
        Tracer::Floor,
        Tracer::Orb8 {
            agent: None,
            cgroup: false,
        },
        Tracer::Orb8 {
            agent: None,
            cgroup: true,
        },
    ];
    if let Some(a) = ctx.baseline_agent() {
        tracers.push(Tracer::Orb8 {
            agent: Some(a.clone()),
            cgroup: false,
        });
        tracers.push(Tracer::Orb8 {
            agent: Some(a),
            cgroup: true,
        });
    }
    tracers.extend([
        Tracer::BpftraceCount,
        Tracer::BpftraceLatency,
        Tracer::Strace,
    ]);
    let full = match kind {
        Kind::Getppid => 2_000_000,
        Kind::Write4k => 1_000_000,
    };
    // strace slows only its target, so only a traced loop needs fewer calls.
    let calls = |t: &Tracer| {
        ctx.scale(if traced && t.is_strace() {
            full / 100
        } else {
            full
        })
    };
    let mut samples = vec![(Sample::default(), Sample::default()); tracers.len()];
    for round in 0..ctx.rounds {
        for (t, s) in tracers.iter().zip(samples.iter_mut()) {
            eprintln!("bench: {title}: round {} {}", round + 1, t.name());
            let (w, c) = run_once(ctx, t, kind, calls(t), traced)
                .with_context(|| format!("{title}: {}", t.name()))?;
            s.0.push(w);
            s.1.push(c);
        }
    }
    Ok(Section {
        title: title.into(),
        method: format!(
            "`{}` calls in a child process, timed by the child itself: wall clock and its own \
             on-CPU time (CLOCK_THREAD_CPUTIME_ID), per call; {} rounds, variants interleaved \
             within each round. {} \
             On-CPU time is what the eBPF variants add (their programs run in the caller's \
             context) and is steadier under load; strace's cost is mostly waiting for the \
             tracer, so only its wall clock counts.",
            kind.as_str(),
            ctx.rounds,
            if traced {
                "The tracer targets the loop; strace runs make 1/100 of the calls (it is that slow)."
            } else {
                "The tracer targets a sleeping process, not the loop: this is what every other process on the node pays."
            },
        ),
        columns: vec!["wall ns/call".into(), "on-CPU ns/call".into()],
        base: Some(0),
        rows: tracers
            .iter()
            .zip(samples)
            .map(|(t, (w, c))| Row {
                name: t.name(),
                values: vec![w, c],
                command: command_line(ctx, t, kind, calls(t)),
            })
            .collect(),
        notes,
    })
}

/// The traced getppid loop.
pub fn getppid_traced(ctx: &Ctx) -> anyhow::Result<Section> {
    scenario(
        ctx,
        "getppid loop, process being traced",
        Kind::Getppid,
        true,
        vec![
            "Aim (issue 11): <= 2.0x on raw tracepoints and below bpftrace's count-only overhead."
                .into(),
        ],
    )
}

/// The traced 4 KiB write loop.
pub fn write_traced(ctx: &Ctx) -> anyhow::Result<Section> {
    scenario(
        ctx,
        "4 KiB write loop (to /dev/null), process being traced",
        Kind::Write4k,
        true,
        vec!["Aim: <= 1.7x, below bpftrace count.".into()],
    )
}

/// The getppid loop of a process that is not traced while a trace runs.
pub fn getppid_untraced(ctx: &Ctx) -> anyhow::Result<Section> {
    scenario(
        ctx,
        "getppid loop, a process NOT traced while a trace runs",
        Kind::Getppid,
        false,
        vec!["Aim: <= 1.75x on raw tracepoints.".into()],
    )
}
