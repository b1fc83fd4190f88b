//! orb8's project tasks (`cargo xtask ...`, the Rust convention for them): the agent image
//! without a container daemon ([`oci`], [`elf`]), the client's release archives ([`dist`]), the
//! krew manifest ([`krew`]), and the cross builds they start ([`cross`]). `main.rs` is the
//! command line over these modules; the tests check what they make.

pub mod cross;
pub mod dist;
pub mod elf;
pub mod krew;
pub mod oci;

use std::path::PathBuf;

/// The workspace root (this crate's parent folder).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Cargo's target folder: `$CARGO_TARGET_DIR`, else `target/` in the workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// orb8's version (the workspace's), as a release tag: `v0.1.0`.
pub fn release_tag() -> String {
    format!("v{}", env!("CARGO_PKG_VERSION"))
}

/// The agent image repository the client starts by default, read from the one constant that
/// defines it (`kubectl-orb8/src/image.rs`), so the image built here is the image the client
/// of the same commit asks for.
pub fn agent_repository() -> anyhow::Result<String> {
    const SOURCE: &str = include_str!("../../kubectl-orb8/src/image.rs");
    const PREFIX: &str = "pub const REPOSITORY: &str = \"";
    SOURCE
        .lines()
        .find_map(|l| l.trim().strip_prefix(PREFIX)?.strip_suffix("\";"))
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("kubectl-orb8/src/image.rs defines no REPOSITORY"))
}

/// The default agent image of this version: `REPOSITORY:vVERSION`.
pub fn agent_image() -> anyhow::Result<String> {
    Ok(format!("{}:{}", agent_repository()?, release_tag()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_image_name_is_the_clients_default() {
        assert_eq!(
            super::agent_image().expect("constant"),
            format!("ghcr.io/orb8/orb8-agent:v{}", env!("CARGO_PKG_VERSION"))
        );
    }
}
