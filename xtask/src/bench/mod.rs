//! `cargo xtask bench`: orb8 measured side by side with the tools people use instead, written
//! to `BENCHMARKS.md`. Run as root (it loads eBPF programs and creates network namespaces).
//!
//! - `cargo xtask bench` builds the release binaries, re-runs itself from that build, runs every
//!   scenario several times with its variants interleaved, and writes `BENCHMARKS.md`.
//! - `--quick`: one round of each scenario with a tenth of the work, on the current build
//!   (what CI runs so the benchmarks cannot rot); writes `target/bench/BENCHMARKS-quick.md`.
//! - `--only tc,merge,...`: some scenarios only. `--baseline DIR`: also run the agent binary
//!   and eBPF objects (`orb8-agent`, `orb8`, `orb8-syscalls`) found in DIR, interleaved with
//!   this tree's, for before/after rows. `--out FILE`: where to write.
//!
//! Numbers are reported, never asserted.

mod aims;
mod client;
mod network;
mod report;
mod sizes;
mod stats;
mod syscalls;
mod throughput;
mod tools;
mod workload;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use report::Section;

/// Every scenario, in report order: (name for `--only`, function).
type Scenario = fn(&Ctx) -> anyhow::Result<Section>;
const SCENARIOS: [(&str, Scenario); 11] = [
    ("getppid", syscalls::getppid_traced),
    ("write", syscalls::write_traced),
    ("untraced", syscalls::getppid_untraced),
    ("tc", network::tc_cost),
    ("flows100k", network::flows_100k),
    ("udp-pps", throughput::udp_pps),
    ("tcp-throughput", throughput::tcp_throughput),
    ("new-flows", throughput::new_flows),
    ("sizes", sizes::sizes),
    ("first-output", client::first_output),
    ("merge", client::merge_throughput),
];

/// What every scenario needs to know.
pub struct Ctx {
    /// Short mode: one round, a tenth of the work.
    pub quick: bool,
    /// Rounds of interleaved runs.
    pub rounds: usize,
    /// Where the orb8 binaries are.
    pub bin_dir: PathBuf,
    /// `release` or `debug`.
    pub profile: &'static str,
    /// This program (it is also the measured loop).
    pub xtask: PathBuf,
    /// Baseline binaries and objects, for before/after rows.
    pub baseline: Option<PathBuf>,
}

impl Ctx {
    /// A binary of this tree's build.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// `full`, or a tenth of it in quick mode.
    pub fn scale(&self, full: u64) -> u64 {
        if self.quick { (full / 10).max(1) } else { full }
    }

    /// A file of the baseline directory, when it has it.
    pub fn baseline_file(&self, name: &str) -> Option<PathBuf> {
        self.baseline
            .as_ref()
            .map(|d| d.join(name))
            .filter(|p| p.is_file())
    }

    /// The baseline agent binary, when given.
    pub fn baseline_agent(&self) -> Option<PathBuf> {
        self.baseline_file("orb8-agent")
    }
}

struct Options {
    quick: bool,
    only: Option<Vec<String>>,
    baseline: Option<PathBuf>,
    out: Option<PathBuf>,
    rounds: Option<usize>,
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut o = Options {
        quick: false,
        only: None,
        baseline: None,
        out: None,
        rounds: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--quick" => o.quick = true,
            "--only" => o.only = Some(value()?.split(',').map(String::from).collect()),
            "--baseline" => o.baseline = Some(PathBuf::from(value()?)),
            "--out" => o.out = Some(PathBuf::from(value()?)),
            "--rounds" => o.rounds = Some(value()?.parse().context("--rounds")?),
            _ => bail!("unknown argument {a:?}"),
        }
    }
    if let Some(only) = &o.only {
        for name in only {
            if !SCENARIOS.iter().any(|(n, _)| n == name) {
                let all: Vec<&str> = SCENARIOS.iter().map(|(n, _)| *n).collect();
                bail!("unknown scenario {name:?} (one of {})", all.join(", "));
            }
        }
    }
    Ok(o)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is in the workspace")
        .to_path_buf()
}

fn cargo_build(root: &Path, release: bool) -> anyhow::Result<()> {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root).args([
        "build",
        "-p",
        "orb8-agent",
        "-p",
        "kubectl-orb8",
        "-p",
        "xtask",
    ]);
    if release {
        c.arg("--release");
    }
    if !c.status().context("running cargo build")?.success() {
        bail!("cargo build failed");
    }
    Ok(())
}

/// `cargo xtask bench ...`.
pub fn main(args: &[String]) -> anyhow::Result<()> {
    if args.first().map(String::as_str) == Some("loop") {
        return workload::main(&args[1..]);
    }
    let opts = parse(args)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmarks load eBPF programs and create network namespaces: run as root");
    }
    let root = workspace_root();
    let exe = std::env::current_exe().context("finding this program")?;
    let release_dir = root.join("target/release");
    if !opts.quick && exe.parent() != Some(release_dir.as_path()) {
        // Measure release builds: build them, then run this same command from there.
        cargo_build(&root, true)?;
        let st = Command::new(release_dir.join("xtask"))
            .arg("bench")
            .args(args)
            .status()
            .context("running the release xtask")?;
        std::process::exit(st.code().unwrap_or(1));
    }
    if opts.quick {
        cargo_build(&root, exe.parent() == Some(release_dir.as_path()))?;
    }
    tools::ensure_installed()?;
    let _tracefs = tools::Tracefs::ensure()?;
    let bin_dir = exe.parent().context("exe dir")?.to_path_buf();
    let ctx = Ctx {
        quick: opts.quick,
        rounds: opts.rounds.unwrap_or(if opts.quick { 1 } else { 5 }),
        profile: if bin_dir.ends_with("release") {
            "release"
        } else {
            "debug"
        },
        bin_dir,
        xtask: exe,
        baseline: opts.baseline,
    };
    let load_before = load_average();
    let t = Instant::now();
    let mut sections = Vec::new();
    for (name, run) in SCENARIOS {
        if opts
            .only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|x| x == name))
        {
            continue;
        }
        let ts = Instant::now();
        let mut sec = run(&ctx)?;
        sec.notes.extend(aims::verdicts(name, &sec));
        eprintln!("::: bench {name} took {:.1} s", ts.elapsed().as_secs_f64());
        print!("{}", sec.markdown());
        sections.push(sec);
    }
    let text = document(&ctx, &sections, &load_before, t.elapsed().as_secs_f64());
    let out = opts.out.unwrap_or_else(|| {
        if ctx.quick {
            root.join("target/bench/BENCHMARKS-quick.md")
        } else {
            root.join("BENCHMARKS.md")
        }
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("bench: wrote {}", out.display());
    Ok(())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn first_line_of(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!(
        "{} CPUs ({cpu}), {mem} memory",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

fn document(ctx: &Ctx, sections: &[Section], load_before: &str, secs: f64) -> String {
    let commit = first_line_of("git", &["rev-parse", "--short", "HEAD"]);
    let mut s = format!(
        "# orb8 benchmarks\n\n\
         Generated by `{}` (as root) in {secs:.0} s. Every number below comes from that \
         command; each row also names the exact command it ran.\n\n\
         - Machine: {}\n- Kernel: {}\n- Commit: {commit}\n- Build: {}\n\
         - Load average before / after: {load_before} / {}\n{}\n\
         Method: each scenario runs its variants (bare, orb8, the tools people use instead) \
         in rounds, one run of every variant per round, so slow phases of the machine hit \
         every variant alike. Tables give `median (min–max)` over the rounds and the ratio of \
         medians to the bare run. **These numbers were taken on a shared 2-vCPU machine while \
         other builds ran**: compare the ratios and on-CPU columns rather than absolute \
         wall-clock values; regenerate on a quiet machine for publication.\n\n",
        if ctx.quick {
            "cargo xtask bench --quick"
        } else {
            "cargo xtask bench"
        },
        machine(),
        first_line_of("uname", &["-r"]),
        ctx.profile,
        load_average(),
        ctx.baseline.as_ref().map_or(String::new(), |d| format!(
            "- Rows marked (baseline) ran the `orb8-agent` and eBPF objects of another build, \
             from `{}`, interleaved with this tree's: the before/after of a change.\n",
            d.display()
        )),
    );
    for sec in sections {
        s.push_str(&sec.markdown());
    }
    s
}
