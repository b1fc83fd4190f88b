//! What the benchmarks compare against and how they drive processes: the Debian tools
//! (installed when missing), tracefs for bpftrace, and children that say when they are ready.

use std::{
    collections::VecDeque,
    io::{BufRead as _, BufReader, Read},
    path::Path,
    process::{Child, ChildStderr, ChildStdout, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Debian packages the comparisons need, with the binary each provides.
const PACKAGES: [(&str, &str); 4] = [
    ("bpftrace", "bpftrace"),
    ("strace", "strace"),
    ("tcpdump", "tcpdump"),
    ("iperf3", "iperf3"),
];

/// Whether `bin` is on PATH.
pub fn have(bin: &str) -> bool {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .any(|d| d.join(bin).is_file())
}

/// Installs the missing comparison tools with apt (nothing when all are there).
pub fn ensure_installed() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, bin)| !have(bin))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("bench: installing {}", missing.join(" "));
    let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
    let install = || {
        let mut c = Command::new("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing);
        c
    };
    // Installing first spares `apt-get update` when the package lists are fresh enough.
    let installed = ok(&mut install())
        || (ok(Command::new("apt-get").arg("update").stdout(Stdio::null())) && ok(&mut install()));
    if !installed {
        bail!("installing {} with apt-get failed", missing.join(" "));
    }
    Ok(())
}

/// tracefs, mounted for bpftrace's tracepoints while this lives (when it was not mounted).
pub struct Tracefs {
    mounted_here: bool,
}

impl Tracefs {
    /// Mounts tracefs at /sys/kernel/tracing unless it is there already.
    pub fn ensure() -> anyhow::Result<Tracefs> {
        if Path::new("/sys/kernel/tracing/events").is_dir() {
            return Ok(Tracefs {
                mounted_here: false,
            });
        }
        let st = Command::new("mount")
            .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
            .status()
            .context("running mount")?;
        if !st.success() {
            bail!("mounting tracefs at /sys/kernel/tracing failed (bpftrace needs it)");
        }
        Ok(Tracefs { mounted_here: true })
    }
}

impl Drop for Tracefs {
    fn drop(&mut self) {
        if self.mounted_here {
            let _ = Command::new("umount").arg("/sys/kernel/tracing").status();
        }
    }
}

/// Which of a child's outputs says it is ready.
#[derive(Clone, Copy, Debug)]
pub enum ReadyOn {
    /// A stdout line starting with the text.
    Stdout(&'static str),
    /// A stderr line starting with the text.
    Stderr(&'static str),
    /// Nothing: ready once spawned.
    Spawned,
}

/// A child process that is stopped (SIGINT, then SIGKILL) and reaped when dropped. Its
/// outputs are drained in the background so it never blocks on a full pipe.
pub struct Running {
    child: Child,
    /// What the command was, for messages.
    pub what: String,
    /// The last lines of its stderr and the thread reading them (when this drains stderr).
    stderr_tail: Option<(Tail, JoinHandle<()>)>,
    /// Stopped and reaped already (its PID may belong to another process now).
    stopped: bool,
}

/// A child's last stderr lines, as its reader thread keeps them.
type Tail = Arc<Mutex<VecDeque<String>>>;

/// How many of a child's last stderr lines [`Running::stop`] returns.
const STDERR_TAIL: usize = 16;

impl Running {
    /// Spawns `cmd` and waits (at most `timeout`) until it says it is ready.
    pub fn start(cmd: Command, ready: ReadyOn, timeout: Duration) -> anyhow::Result<Running> {
        Ok(Running::start_with_line(cmd, ready, timeout)?.0)
    }

    /// [`Running::start`], also returning the line that said it was ready.
    pub fn start_with_line(
        cmd: Command,
        ready: ReadyOn,
        timeout: Duration,
    ) -> anyhow::Result<(Running, String)> {
        let (mut child, what) = spawn_with_pipes(cmd)?;
        let (tx, rx) = mpsc::channel::<String>();
        let watch =
            |out: Box<dyn Read + Send>, prefix: Option<&'static str>, tail: Option<Tail>| {
                let tx = tx.clone();
                thread::spawn(move || {
                    for line in BufReader::new(out).lines() {
                        let Ok(line) = line else { break };
                        if prefix.is_some_and(|p| line.starts_with(p)) {
                            let _ = tx.send(line.clone());
                        }
                        if let Some(t) = &tail {
                            let mut t = t.lock().expect("stderr tail");
                            if t.len() == STDERR_TAIL {
                                t.pop_front();
                            }
                            t.push_back(line);
                        }
                    }
                })
            };
        let (on_out, on_err) = match ready {
            ReadyOn::Stdout(p) => (Some(p), None),
            ReadyOn::Stderr(p) => (None, Some(p)),
            ReadyOn::Spawned => (None, None),
        };
        watch(Box::new(child.stdout.take().expect("stdout")), on_out, None);
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let err_thread = watch(
            Box::new(child.stderr.take().expect("stderr")),
            on_err,
            Some(tail.clone()),
        );
        drop(tx);
        let running = Running {
            child,
            what,
            stderr_tail: Some((tail, err_thread)),
            stopped: false,
        };
        if matches!(ready, ReadyOn::Spawned) {
            return Ok((running, String::new()));
        }
        match rx.recv_timeout(timeout) {
            Ok(line) => Ok((running, line)),
            Err(_) => bail!(
                "{} did not say it was ready within {timeout:?}",
                running.what
            ),
        }
    }

    /// Spawns `cmd` with stdout and stderr piped and handed back, for a caller that reads them
    /// itself; stopped and reaped on drop like any [`Running`].
    pub fn spawn_piped(cmd: Command) -> anyhow::Result<(Running, ChildStdout, ChildStderr)> {
        let (mut child, what) = spawn_with_pipes(cmd)?;
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let running = Running {
            child,
            what,
            stderr_tail: None,
            stopped: false,
        };
        Ok((running, out, err))
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops and reaps the child as dropping it would, then returns the last lines it wrote on
    /// stderr (what tcpdump says on the way out: packets captured and dropped). Nothing for a
    /// child whose stderr the caller reads ([`Running::spawn_piped`]).
    pub fn stop(mut self) -> Vec<String> {
        self.halt();
        match self.stderr_tail.take() {
            Some((tail, reader)) => {
                // Its last lines, unless a process it left behind holds the pipe open.
                let end = Instant::now() + Duration::from_secs(2);
                while !reader.is_finished() && Instant::now() < end {
                    thread::sleep(Duration::from_millis(10));
                }
                let t = tail.lock().expect("stderr tail");
                t.iter().cloned().collect()
            }
            None => Vec::new(),
        }
    }

    /// SIGINT, up to 10 s to exit, then SIGKILL; reaped either way. Once.
    fn halt(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        // SAFETY: signalling our own child, not reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Peak and current resident memory of a process in KiB (`VmHWM`, `VmRSS`).
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Spawns `cmd` with no stdin and stdout and stderr piped; the child and how to name it.
fn spawn_with_pipes(mut cmd: Command) -> anyhow::Result<(std::process::Child, String)> {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {what}"))?;
    Ok((child, what))
}
