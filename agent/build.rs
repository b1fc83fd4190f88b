//! Compiles `orb8-ebpf` for the BPF target with the pinned nightly (aya-build + bpf-linker), so a
//! plain `cargo build` of the agent embeds a freshly built eBPF object. Nothing prebuilt is used.

/// The nightly whose LLVM major matches bpf-linker's (`scripts/setup.sh` installs both).
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf/orb8-ebpf");
    println!("cargo:rerun-if-changed={root}/src");
    println!("cargo:rerun-if-changed={root}/Cargo.toml");
    println!("cargo:rerun-if-changed=../ebpf/orb8-common/src");
    let package = aya_build::Package {
        name: "orb8-ebpf",
        root_dir: root,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(EBPF_TOOLCHAIN))
}
