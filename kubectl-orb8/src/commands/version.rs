//! `kubectl orb8 version`: this client's version and protocol, the agent image it starts in a
//! cluster, and each reachable agent's version.

use std::io::Write;

use orb8_proto::PROTOCOL_VERSION;

use crate::render::{self, AgentVersion, ClientVersion, OutputFormat, VersionView};
use crate::session::Session;

/// The version view for this client (which starts `image` in a cluster) and the session's
/// agents (already version-checked).
pub fn view(session: &Session, image: &str) -> VersionView {
    VersionView {
        client: ClientVersion {
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: PROTOCOL_VERSION,
            agent_image: image.to_string(),
        },
        agents: session
            .agents
            .iter()
            .zip(&session.names)
            .map(|(a, name)| AgentVersion {
                node: name.clone(),
                address: a.addr.to_string(),
                version: a.status.agent_version.clone(),
                protocol: a.status.protocol_version,
            })
            .collect(),
    }
}

/// Prints the versions.
pub fn run(
    session: &Session,
    image: &str,
    format: OutputFormat,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    render::write_versions(out, format, &view(session, image))?;
    Ok(())
}
