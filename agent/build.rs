//! Compiles `orb8-ebpf` for the BPF target with the pinned nightly (aya-build + bpf-linker), so a
//! plain `cargo build` of the agent embeds a freshly built eBPF object. Nothing prebuilt is used.

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf/orb8-ebpf");
    println!("cargo:rerun-if-changed={root}/src");
    println!("cargo:rerun-if-changed={root}/Cargo.toml");
    println!("cargo:rerun-if-changed={root}/rust-toolchain.toml");
    println!("cargo:rerun-if-changed=../ebpf/orb8-common/src");
    let toolchain = ebpf_toolchain(root)?;
    let package = aya_build::Package {
        name: "orb8-ebpf",
        root_dir: root,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&toolchain))
}

/// The pinned nightly (whose LLVM major matches bpf-linker's), from the eBPF crate's
/// `rust-toolchain.toml`: the one place it is written (`scripts/setup.sh` reads it too).
fn ebpf_toolchain(root: &str) -> anyhow::Result<String> {
    let path = format!("{root}/rust-toolchain.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| {
            let value = l
                .trim()
                .strip_prefix("channel")?
                .trim_start()
                .strip_prefix('=')?;
            let value = value.trim().strip_prefix('"')?;
            value.split_once('"').map(|(v, _)| v.to_string())
        })
        .filter(|v| !v.is_empty())
        .with_context(|| format!("{path} has no `channel = \"...\"` line"))
}
