//! Overhead of syscall tracing, run as root: `cargo bench -p orb8-agent --bench syscalls`.
//!
//! A `getppid` loop (1M calls, best of 5) timed bare, with the tracer counting this very
//! process (summary mode), and with the tracer attached but tracing another process (the cost
//! every untraced process pays). Prints ns per call; nothing is asserted.

use std::{sync::Arc, time::Instant};

use orb8_agent::{
    cgroups::{Resolved, Target},
    syscalls::{ExitWatch, SyscallTracer},
};

const CALLS: u32 = 1_000_000;

fn ns_per_call() -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..CALLS {
                // SAFETY: getppid has no arguments.
                unsafe { libc::syscall(libc::SYS_getppid) };
            }
            t.elapsed().as_nanos() as f64 / CALLS as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn process(pid: u32) -> Target {
    Target {
        resolved: Resolved::Process { pid },
        note: None,
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the syscall benchmark loads eBPF programs: run it as root");
        std::process::exit(1);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let me = std::process::id();
    let bare = ns_per_call();
    let tracer = Arc::new(SyscallTracer::default());
    let handle = tracer
        .start(&process(me), Vec::new(), false, ExitWatch::Pid(me))
        .expect("starting a trace of this process");
    let traced = ns_per_call();
    let counted = tracer
        .summary(handle.id)
        .and_then(|s| s.totals.stats.values().map(|x| x.calls).max())
        .unwrap_or(0);
    drop(handle);
    let handle = tracer
        .start(&process(1), Vec::new(), false, ExitWatch::Pid(1))
        .expect("starting a trace of PID 1");
    let other = ns_per_call();
    drop(handle);
    println!("getppid bare:                  {bare:7.1} ns/call");
    println!(
        "getppid traced (summary):      {traced:7.1} ns/call  ({:.2}x; {counted} calls counted)",
        traced / bare
    );
    println!(
        "getppid untraced, probes on:   {other:7.1} ns/call  ({:.2}x)",
        other / bare
    );
}
