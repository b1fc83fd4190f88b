//! `cargo xtask`: orb8's project tasks. See `cargo xtask --help`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use xtask::{cross, dist, elf, krew, oci};

#[cfg(all(feature = "bench", target_os = "linux"))]
mod bench;

/// orb8's project tasks: the agent image, the client's release archives, the krew manifest.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Build the static agent for linux/amd64 and linux/arm64 (profile ship) and write the
    /// multi-arch OCI image layout tar (default target/image/orb8-agent.oci.tar).
    Image {
        /// Use this agent binary for ARCH (amd64, arm64) instead of building it, e.g.
        /// --agent amd64=target/x86_64-unknown-linux-musl/ship/orb8-agent. Repeat per arch.
        #[arg(long = "agent", value_name = "ARCH=PATH")]
        agents: Vec<String>,
        /// Where to write the tar.
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
        /// Image name (default: the client's default image of this version).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// The org.opencontainers.image.revision label (default: $GITHUB_SHA, else git HEAD).
        #[arg(long, value_name = "REV")]
        revision: Option<String>,
    },
    /// Check an image tar: OCI layout, index of amd64 + arm64, entrypoint the agent, layers
    /// holding exactly the static agent binary; optionally extract the binaries.
    ImageCheck {
        /// The tar (default target/image/orb8-agent.oci.tar).
        path: Option<PathBuf>,
        /// Write each platform's agent to DIR/orb8-agent-ARCH.
        #[arg(long, value_name = "DIR")]
        extract: Option<PathBuf>,
    },
    /// Build the client for the platforms this host can link (profile ship-client), archive
    /// them into target/dist with SHA256SUMS, and render target/dist/krew.yaml.
    Dist {
        /// A platform to build, as OS/ARCH or OS/ARCH=RUST_TARGET (repeatable; default
        /// linux/amd64, linux/arm64, windows/amd64).
        #[arg(long = "platform", value_name = "OS/ARCH[=TARGET]")]
        platforms: Vec<String>,
        /// Where the archives go.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Render the krew manifest from krew.yaml and the archives in a dist folder, validate it
    /// and write DIR/krew.yaml; or validate an existing manifest with --check.
    Krew {
        /// Folder holding the archives (default target/dist).
        #[arg(long, value_name = "DIR")]
        dist: Option<PathBuf>,
        /// Release tag (default v<workspace version>).
        #[arg(long, value_name = "TAG")]
        version: Option<String>,
        /// Require an archive for every release platform (the release workflow).
        #[arg(long)]
        all: bool,
        /// Only validate this rendered manifest.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["dist", "version"])]
        check: Option<PathBuf>,
    },
    /// Run the benchmarks (root) and write BENCHMARKS.md: `bench [--quick] [--only
    /// SCENARIO,..] [--baseline DIR]`.
    Bench {
        /// Passed to the bench runner.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Image {
            agents,
            out,
            name,
            revision,
        } => image(&agents, out, name, revision),
        Task::ImageCheck { path, extract } => image_check(path, extract.as_deref()),
        Task::Dist { platforms, out } => dist_task(&platforms, out),
        Task::Krew {
            dist,
            version,
            all,
            check,
        } => match check {
            Some(file) => krew_check(&file, all),
            None => krew_task(dist, version, all).map(|_| ()),
        },
        Task::Bench { args } => bench_task(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(all(feature = "bench", target_os = "linux"))]
fn bench_task(args: &[String]) -> anyhow::Result<()> {
    bench::main(args)
}

#[cfg(not(all(feature = "bench", target_os = "linux")))]
fn bench_task(_args: &[String]) -> anyhow::Result<()> {
    bail!(
        "this xtask has no benchmarks: they run on Linux, with xtask's default feature `bench` \
         (not --no-default-features)"
    )
}

fn default_image_path() -> PathBuf {
    xtask::target_dir().join("image").join("orb8-agent.oci.tar")
}

fn git_revision() -> String {
    if let Some(sha) = std::env::var("GITHUB_SHA").ok().filter(|s| !s.is_empty()) {
        return sha;
    }
    std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(xtask::workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn image(
    agents: &[String],
    out: Option<PathBuf>,
    name: Option<String>,
    revision: Option<String>,
) -> anyhow::Result<()> {
    let mut given: BTreeMap<String, PathBuf> = BTreeMap::new();
    for a in agents {
        let (arch, path) = a
            .split_once('=')
            .with_context(|| format!("--agent {a}: use ARCH=PATH"))?;
        given.insert(arch.to_string(), PathBuf::from(path));
    }
    let paths: Vec<PathBuf> = if given.is_empty() {
        let triples: Vec<&str> = cross::AGENT.iter().map(|p| p.triple).collect();
        cross::cargo_build("orb8-agent", "orb8-agent", "ship", &triples)?
    } else {
        oci::PLATFORMS
            .iter()
            .map(|arch| {
                given
                    .get(*arch)
                    .cloned()
                    .with_context(|| format!("no --agent {arch}=PATH"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let mut binaries = Vec::new();
    for (arch, path) in oci::PLATFORMS.iter().zip(&paths) {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        elf::check_static(arch, &bytes).with_context(|| format!("{}", path.display()))?;
        binaries.push((*arch, bytes));
    }
    let name = match name {
        Some(n) => n,
        None => xtask::agent_image()?,
    };
    let meta = oci::ImageMeta {
        name,
        labels: BTreeMap::from([
            ("org.opencontainers.image.title".into(), "orb8-agent".into()),
            (
                "org.opencontainers.image.description".into(),
                "orb8's node agent: eBPF flow and syscall probes served over gRPC".into(),
            ),
            (
                "org.opencontainers.image.source".into(),
                env!("CARGO_PKG_REPOSITORY").into(),
            ),
            (
                "org.opencontainers.image.version".into(),
                env!("CARGO_PKG_VERSION").into(),
            ),
            (
                "org.opencontainers.image.revision".into(),
                revision.unwrap_or_else(git_revision),
            ),
            (
                "org.opencontainers.image.licenses".into(),
                env!("CARGO_PKG_LICENSE").into(),
            ),
        ]),
    };
    let refs: Vec<(&str, &[u8])> = binaries.iter().map(|(a, b)| (*a, b.as_slice())).collect();
    let built = oci::build(&refs, &meta)?;
    let out = out.unwrap_or_else(default_image_path);
    let dir = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    std::fs::write(&out, &built.tar).with_context(|| format!("writing {}", out.display()))?;
    // The binaries again, where the Dockerfile copies them from (same content, for Docker).
    for (arch, bytes) in &binaries {
        let d = dir.join(format!("linux-{arch}"));
        std::fs::create_dir_all(&d)?;
        write_executable(&d.join("orb8-agent"), bytes)?;
    }
    let inspected = oci::inspect(&built.tar)?;
    oci::check_agent_image(&inspected)?;
    println!(
        "{}: {} ({} bytes), index {}",
        inspected.name,
        out.display(),
        built.tar.len(),
        built.index_digest
    );
    for (p, (_, bytes)) in inspected.platforms.iter().zip(&binaries) {
        println!(
            "  linux/{}: agent {} bytes, compressed layer {} bytes",
            p.arch,
            bytes.len(),
            p.compressed_bytes
        );
    }
    Ok(())
}

fn write_executable(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

fn image_check(path: Option<PathBuf>, extract: Option<&Path>) -> anyhow::Result<()> {
    let path = path.unwrap_or_else(default_image_path);
    let inspected = oci::inspect_file(&path)?;
    let binaries = oci::check_agent_image(&inspected)?;
    for (arch, bytes) in &binaries {
        elf::check_static(arch, bytes)?;
    }
    println!(
        "{}: OCI layout ok, index {} lists {}; entrypoint {}; each layer holds only the static \
         agent",
        path.display(),
        inspected.index_digest,
        inspected
            .platforms
            .iter()
            .map(|p| format!("{}/{}", p.os, p.arch))
            .collect::<Vec<_>>()
            .join(" + "),
        oci::AGENT_PATH
    );
    for (p, (arch, bytes)) in inspected.platforms.iter().zip(&binaries) {
        println!(
            "  linux/{arch}: agent {} bytes, compressed layer {} bytes; labels {:?}",
            bytes.len(),
            p.compressed_bytes,
            p.labels
        );
    }
    if let Some(dir) = extract {
        std::fs::create_dir_all(dir)?;
        for (arch, bytes) in &binaries {
            write_executable(&dir.join(format!("orb8-agent-{arch}")), bytes)?;
        }
    }
    Ok(())
}

fn dist_task(platforms: &[String], out: Option<PathBuf>) -> anyhow::Result<()> {
    let wanted: Vec<String> = if platforms.is_empty() {
        cross::CLIENT_HERE.iter().map(|s| s.to_string()).collect()
    } else {
        platforms.to_vec()
    };
    let mut chosen = Vec::new();
    for w in &wanted {
        let (name, triple) = match w.split_once('=') {
            Some((n, t)) => (n, Some(t)),
            None => (w.as_str(), None),
        };
        let p = cross::client_platform(name)?;
        chosen.push((p, triple.unwrap_or(p.triple).to_string()));
    }
    let triples: Vec<&str> = chosen.iter().map(|(_, t)| t.as_str()).collect();
    let binaries = cross::cargo_build("kubectl-orb8", "kubectl-orb8", "ship-client", &triples)?;
    let out = out.unwrap_or_else(|| xtask::target_dir().join("dist"));
    std::fs::create_dir_all(&out)?;
    let license = std::fs::read(xtask::workspace_root().join("LICENSE")).context("LICENSE")?;
    let tag = xtask::release_tag();
    for ((p, _), bin) in chosen.iter().zip(&binaries) {
        let bytes = std::fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
        let name = dist::archive_name(&tag, p.os, p.arch);
        let archive = dist::archive(&bytes, &format!("kubectl-orb8{}", p.exe_suffix()), &license)?;
        std::fs::write(out.join(&name), &archive)?;
        println!(
            "{}: kubectl-orb8 {} bytes, {name} {} bytes",
            p.name(),
            bytes.len(),
            archive.len()
        );
    }
    let rendered = krew_task(Some(out), Some(tag), false)?;
    if !rendered.missing.is_empty() {
        println!(
            "not built here (the release workflow builds them on their own runners): {}",
            rendered.missing.join(", ")
        );
    }
    Ok(())
}

fn krew_task(
    dist: Option<PathBuf>,
    version: Option<String>,
    all: bool,
) -> anyhow::Result<krew::Rendered> {
    let dist = dist.unwrap_or_else(|| xtask::target_dir().join("dist"));
    let version = version.unwrap_or_else(xtask::release_tag);
    let template_path = xtask::workspace_root().join("krew.yaml");
    let template = std::fs::read_to_string(&template_path)
        .with_context(|| format!("reading {}", template_path.display()))?;
    let rendered = krew::render(&template, &version, &dist, all)?;
    if rendered.plugin.spec.platforms.is_empty() {
        bail!("no archives for any platform in {}", dist.display());
    }
    krew::validate(&rendered.plugin, "orb8", all)?;
    let mut names: Vec<String> = std::fs::read_dir(&dist)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("kubectl-orb8_") && n.ends_with(".tar.gz"))
        .collect();
    names.sort();
    std::fs::write(dist.join("SHA256SUMS"), dist::sha256sums(&dist, &names)?)?;
    let path = dist.join("krew.yaml");
    std::fs::write(&path, krew::to_yaml(&rendered.plugin)?)?;
    println!(
        "{}: valid krew manifest for {} ({})",
        path.display(),
        version,
        rendered
            .plugin
            .spec
            .platforms
            .iter()
            .filter_map(|p| p.os_arch().map(|(o, a)| format!("{o}/{a}")))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(rendered)
}

fn krew_check(file: &Path, all: bool) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let plugin = krew::parse(&text)?;
    krew::validate(&plugin, "orb8", all)?;
    println!("{}: valid krew manifest", file.display());
    Ok(())
}
