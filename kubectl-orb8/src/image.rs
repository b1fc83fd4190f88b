//! The agent image this client starts when `--image` is not given: the one place its name is
//! written. The release workflow pushes the image under exactly this name (it reads it from
//! `kubectl orb8 version -o json`), so a released client always finds its agent.
//!
//! Imports nothing: every layer may read it.

/// The registry repository orb8's agent images are published to.
pub const REPOSITORY: &str = "ghcr.io/orb8/orb8-agent";

/// The published agent image for this client's version: `REPOSITORY:v<version>`.
pub fn default_image() -> String {
    format!("{REPOSITORY}:v{}", env!("CARGO_PKG_VERSION"))
}

/// The image agent pods run: `flag` (`--image`) when given, else [`default_image`].
pub fn agent_image(flag: Option<&str>) -> String {
    flag.map_or_else(default_image, str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_tagged_with_this_clients_version() {
        assert_eq!(
            default_image(),
            format!("ghcr.io/orb8/orb8-agent:v{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(agent_image(None), default_image());
        assert_eq!(agent_image(Some("orb8-agent:dev")), "orb8-agent:dev");
    }
}
