//! Release builds: `cargo build --profile ship|ship-client --target ...` for the platforms a
//! release carries, with the Rust target each maps to. The linkers for the cross targets are in
//! `.cargo/config.toml`; `scripts/setup.sh` installs them and the Rust targets.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, ensure};

/// A platform a release carries: OCI/krew names and the Rust target built for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `linux`, `darwin` or `windows`.
    pub os: &'static str,
    /// `amd64` or `arm64`.
    pub arch: &'static str,
    /// The Rust target triple.
    pub triple: &'static str,
}

impl Platform {
    /// `os/arch`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.os, self.arch)
    }

    /// The executable suffix on this platform.
    pub fn exe_suffix(&self) -> &'static str {
        if self.os == "windows" { ".exe" } else { "" }
    }
}

/// The agent's image platforms: static musl binaries.
pub const AGENT: [Platform; 2] = [
    Platform {
        os: "linux",
        arch: "amd64",
        triple: "x86_64-unknown-linux-musl",
    },
    Platform {
        os: "linux",
        arch: "arm64",
        triple: "aarch64-unknown-linux-musl",
    },
];

/// The client's krew platforms. Windows is built with the GNU toolchain from Linux (Debian's
/// mingw-w64) and with MSVC on Windows runners; `--target` overrides the triple.
pub const CLIENT: [Platform; 6] = [
    Platform {
        os: "linux",
        arch: "amd64",
        triple: "x86_64-unknown-linux-musl",
    },
    Platform {
        os: "linux",
        arch: "arm64",
        triple: "aarch64-unknown-linux-musl",
    },
    Platform {
        os: "darwin",
        arch: "amd64",
        triple: "x86_64-apple-darwin",
    },
    Platform {
        os: "darwin",
        arch: "arm64",
        triple: "aarch64-apple-darwin",
    },
    Platform {
        os: "windows",
        arch: "amd64",
        triple: "x86_64-pc-windows-gnu",
    },
    Platform {
        os: "windows",
        arch: "arm64",
        triple: "aarch64-pc-windows-msvc",
    },
];

/// The client platforms `cargo xtask dist` builds on a Debian amd64 host.
pub const CLIENT_HERE: [&str; 3] = ["linux/amd64", "linux/arm64", "windows/amd64"];

/// The client platform called `os/arch`.
pub fn client_platform(name: &str) -> anyhow::Result<Platform> {
    CLIENT
        .iter()
        .copied()
        .find(|p| p.name() == name)
        .with_context(|| {
            let all: Vec<String> = CLIENT.iter().map(Platform::name).collect();
            format!("no client platform {name} (known: {})", all.join(", "))
        })
}

/// Builds `bin` of `package` with `profile` for every triple in one cargo run (cargo schedules
/// the targets' crates together) and returns the executables, in the order of `triples`.
pub fn cargo_build(
    package: &str,
    bin: &str,
    profile: &str,
    triples: &[&str],
) -> anyhow::Result<Vec<PathBuf>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(crate::workspace_root()).args([
        "build",
        "--locked",
        "--package",
        package,
        "--bin",
        bin,
        "--profile",
        profile,
    ]);
    for t in triples {
        cmd.args(["--target", t]);
    }
    eprintln!(
        "xtask: cargo build -p {package} --profile {profile} --target {}",
        triples.join(" --target ")
    );
    let status = cmd.status().context("running cargo")?;
    ensure!(
        status.success(),
        "cargo build of {package} failed ({status})"
    );
    Ok(triples
        .iter()
        .map(|t| {
            let suffix = if t.contains("windows") { ".exe" } else { "" };
            crate::target_dir()
                .join(t)
                .join(profile)
                .join(format!("{bin}{suffix}"))
        })
        .collect())
}
