//! The measured loops, run as a child process (`xtask bench loop KIND CALLS`) so a tracer can
//! be pointed at its PID or cgroup before it starts: it waits for one byte on stdin, makes
//! CALLS syscalls, and prints wall-clock and on-CPU nanoseconds per call.

use std::{io::Read as _, time::Instant};

use anyhow::{Context as _, bail};

/// The syscall a loop makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `getppid()`: the cheapest syscall, so the tracer's cost shows most.
    Getppid,
    /// `write(fd, buf, 4096)` to /dev/null.
    Write4k,
}

impl Kind {
    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Getppid => "getppid",
            Kind::Write4k => "write4k",
        }
    }

    fn parse(s: &str) -> anyhow::Result<Kind> {
        match s {
            "getppid" => Ok(Kind::Getppid),
            "write4k" => Ok(Kind::Write4k),
            _ => bail!("unknown loop {s:?} (getppid, write4k)"),
        }
    }
}

fn thread_cpu_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// `xtask bench loop KIND CALLS`.
pub fn main(args: &[String]) -> anyhow::Result<()> {
    let [kind, calls] = args else {
        bail!("usage: xtask bench loop getppid|write4k CALLS");
    };
    let kind = Kind::parse(kind)?;
    let calls: u64 = calls.parse().context("CALLS")?;
    let devnull = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .context("opening /dev/null")?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&devnull);
    let buf = [0u8; 4096];
    let mut go = [0u8; 1];
    std::io::stdin()
        .read_exact(&mut go)
        .context("waiting for go")?;
    let (t0, c0) = (Instant::now(), thread_cpu_ns());
    for _ in 0..calls {
        match kind {
            // SAFETY: getppid has no arguments.
            Kind::Getppid => unsafe {
                libc::syscall(libc::SYS_getppid);
            },
            // SAFETY: `buf` is readable for its length; `fd` is open.
            Kind::Write4k => unsafe {
                libc::write(fd, buf.as_ptr().cast(), buf.len());
            },
        }
    }
    let (wall, cpu) = (t0.elapsed().as_nanos(), thread_cpu_ns() - c0);
    println!(
        "{} {}",
        wall as f64 / calls as f64,
        cpu as f64 / calls as f64
    );
    Ok(())
}
