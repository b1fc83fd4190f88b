//! Sizes on disk: the binaries of this build (`kubectl-orb8`, `orb8-agent`) and the eBPF objects
//! the agent embeds (what the agent's build script left in its `OUT_DIR`), with the baseline's
//! files beside them when given.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::{
    Ctx,
    report::{Row, Section},
    stats::Sample,
};

/// The binaries measured, in `Ctx::bin_dir`.
const BINARIES: [&str; 2] = ["kubectl-orb8", "orb8-agent"];

/// The Linux targets releases are built for (`cargo xtask image|dist`).
const SHIP_TRIPLES: [&str; 2] = ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"];

/// The eBPF objects the agent embeds: (file name in its `OUT_DIR`, the bytes this build embeds).
fn embedded() -> [(&'static str, &'static [u8]); 4] {
    use orb8_agent::ebpf::*;
    [
        ("orb8", OBJECT),
        ("orb8-syscalls", SYSCALLS_OBJECT),
        ("orb8-drops", DROPS_OBJECT),
        ("orb8-tcp", TCP_OBJECT),
    ]
}

/// The agent's build-script output directory (`BIN_DIR/build/orb8-agent-*/out`) whose flow
/// object is byte for byte the one this build embeds (several such directories can exist).
fn objects_dir(bin_dir: &Path) -> anyhow::Result<PathBuf> {
    let build = bin_dir.join("build");
    let entries =
        std::fs::read_dir(&build).with_context(|| format!("listing {}", build.display()))?;
    for e in entries {
        let out = e?.path().join("out");
        let named = out
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("orb8-agent-"));
        if named && std::fs::read(out.join("orb8")).is_ok_and(|b| b == orb8_agent::ebpf::OBJECT) {
            return Ok(out);
        }
    }
    bail!(
        "no {}/orb8-agent-*/out holds the eBPF object this build embeds",
        build.display()
    )
}

fn size_row(name: String, file: &Path) -> anyhow::Result<Row> {
    let bytes = std::fs::metadata(file)
        .with_context(|| format!("stat {}", file.display()))?
        .len() as f64;
    Ok(Row {
        name,
        values: vec![
            Sample(vec![bytes / 1024.0 / 1024.0]),
            Sample(vec![bytes / 1024.0]),
        ],
        command: format!("stat -c %s {}", file.display()),
    })
}

/// Sizes of the release binaries and of the eBPF objects the agent embeds.
pub fn sizes(ctx: &Ctx) -> anyhow::Result<Section> {
    let mut rows = Vec::new();
    for b in BINARIES {
        rows.push(size_row(b.into(), &ctx.bin(b))?);
    }
    let dir = objects_dir(&ctx.bin_dir)?;
    for (name, bytes) in embedded() {
        let file = dir.join(name);
        let on_disk = std::fs::metadata(&file)
            .with_context(|| format!("stat {}", file.display()))?
            .len();
        if on_disk != bytes.len() as u64 {
            bail!(
                "{} has {on_disk} bytes but the agent embeds {} for it: a stale build directory",
                file.display(),
                bytes.len()
            );
        }
        rows.push(size_row(format!("eBPF object `{name}`"), &file)?);
    }
    // What releases ship, when `cargo xtask image|dist` built it in this target directory.
    let target = ctx.bin_dir.parent().context("the target directory")?;
    for (name, profile) in [("kubectl-orb8", "ship-client"), ("orb8-agent", "ship")] {
        for triple in SHIP_TRIPLES {
            let file = target.join(triple).join(profile).join(name);
            if file.is_file() {
                rows.push(size_row(format!("{name} ({profile}, {triple})"), &file)?);
            }
        }
    }
    let baseline = BINARIES
        .map(|b| (b, b.to_string()))
        .into_iter()
        .chain(embedded().map(|(o, _)| (o, format!("eBPF object `{o}`"))));
    for (file, row) in baseline {
        if let Some(path) = ctx.baseline_file(file) {
            rows.push(size_row(format!("{row} (baseline)"), &path)?);
        }
    }
    Ok(Section {
        title: "Sizes".into(),
        method: format!(
            "Bytes on disk of this build's binaries ({} profile, not stripped) and of the eBPF \
             objects the agent embeds, read from the agent build script's output directory \
             (each checked to be as long as the object the agent embeds). What releases ship \
             is built with the `ship` (agent) and `ship-client` profiles (fat LTO, stripped) by \
             `cargo xtask image|dist`; those rows appear only where such a build is in the \
             target directory, as last built (not rebuilt here).",
            ctx.profile
        ),
        columns: vec!["MiB".into(), "KiB".into()],
        base: None,
        rows,
        notes: vec!["Aims: set by the release-path issue.".into()],
    })
}
