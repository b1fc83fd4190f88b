//! `kubectl orb8 status`: one row per agent.

use std::io::Write;

use crate::render::{self, AgentStatus, OutputFormat};
use crate::session::Session;

/// Asks every agent for its status and prints them.
pub async fn run(
    session: &Session,
    format: OutputFormat,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let answers = futures::future::join_all(session.agents.iter().map(|a| a.get_status())).await;
    let mut statuses = Vec::with_capacity(answers.len());
    for ((agent, answer), mode) in session.agents.iter().zip(answers).zip(&session.modes) {
        statuses.push(AgentStatus {
            address: agent.addr.to_string(),
            mode: mode.to_string(),
            status: answer?,
        });
    }
    render::write_statuses(out, format, &statuses)?;
    Ok(())
}
