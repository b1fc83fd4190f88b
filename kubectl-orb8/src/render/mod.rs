//! Output: tables for people (`table`, `wide`), JSON and YAML for programs. Each function
//! takes plain data and writes or returns text; nothing here talks to agents.

pub mod dns;
pub mod gpu;
pub mod json;
pub mod syscalls;
pub mod table;
pub mod view;
pub mod yaml;

use std::io::{self, Write};
use std::time::SystemTime;

use crate::flow::FlowRecord;
use crate::group::FlowGroup;

pub use view::{
    AgentLostLine, AgentStatus, AgentVersion, ClientVersion, DropView, FlowGroupView, FlowView,
    GapLine, GpuStatusView, InterfaceView, NewFlowLine, OutputFormat, StatusView, VersionView,
    stage_name, uptime_text,
};

/// How one record of a live trace is written: a text line, an NDJSON line or a YAML document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    /// A line of text (`-o table`, `-o wide`).
    Text,
    /// One JSON object per line.
    Json,
    /// One YAML document per record.
    Yaml,
}

impl From<OutputFormat> for LineFormat {
    fn from(f: OutputFormat) -> Self {
        match f {
            OutputFormat::Table | OutputFormat::Wide => LineFormat::Text,
            OutputFormat::Json => LineFormat::Json,
            OutputFormat::Yaml => LineFormat::Yaml,
        }
    }
}

/// One live record as printed: `line` (rendered by [`serialise`] or as text) with its newline,
/// or a YAML document with its `---` separator.
pub fn record(format: LineFormat, line: &str) -> String {
    match format {
        LineFormat::Yaml => format!("---\n{line}"),
        _ => format!("{}\n", line.trim_end_matches('\n')),
    }
}

/// A value as one live record: an NDJSON line or a YAML document.
pub fn value_record<T: serde::Serialize>(format: LineFormat, value: &T) -> io::Result<String> {
    Ok(record(format, &serialise(format, value)?))
}

/// A live record as JSON (one line) or YAML (one document).
pub fn serialise<T: serde::Serialize>(format: LineFormat, value: &T) -> io::Result<String> {
    match format {
        LineFormat::Yaml => yaml::to_string(value),
        _ => json::to_line(value),
    }
}

/// Writes a flow table in `format`; `now` is what ages in tables are measured from.
pub fn write_flows(
    out: &mut dyn Write,
    format: OutputFormat,
    flows: &[FlowRecord],
    now: SystemTime,
) -> io::Result<()> {
    write_flows_with_tcp(out, format, flows, now, None)
}

/// [`write_flows`], the wide table with TCP connection columns from `tcp` when given.
pub fn write_flows_with_tcp(
    out: &mut dyn Write,
    format: OutputFormat,
    flows: &[FlowRecord],
    now: SystemTime,
    tcp: Option<&crate::tcpconn::TcpConnTable>,
) -> io::Result<()> {
    match format {
        OutputFormat::Table | OutputFormat::Wide => {
            let wide = format == OutputFormat::Wide;
            if flows.is_empty() {
                return Ok(());
            }
            writeln!(
                out,
                "{}",
                table::flows_with_tcp(flows, wide, now, None, tcp)
            )
        }
        OutputFormat::Json => json::write_array(out, flows.iter().map(FlowView::from)),
        OutputFormat::Yaml => out.write_all(yaml::flows(flows)?.as_bytes()),
    }
}

/// Writes the grouped flow view in `format`; `now` is what ages in tables are measured from.
pub fn write_groups(
    out: &mut dyn Write,
    format: OutputFormat,
    groups: &[FlowGroup],
    now: SystemTime,
) -> io::Result<()> {
    match format {
        OutputFormat::Table | OutputFormat::Wide => {
            if groups.is_empty() {
                return Ok(());
            }
            let wide = format == OutputFormat::Wide;
            writeln!(out, "{}", table::groups(groups, wide, now, None))
        }
        OutputFormat::Json => json::write_array(out, groups.iter().map(FlowGroupView::from)),
        OutputFormat::Yaml => {
            let views: Vec<FlowGroupView> = groups.iter().map(FlowGroupView::from).collect();
            out.write_all(yaml::to_string(&views)?.as_bytes())
        }
    }
}

/// Writes agents' statuses in `format`.
pub fn write_statuses(
    out: &mut dyn Write,
    format: OutputFormat,
    agents: &[AgentStatus],
) -> io::Result<()> {
    let views: Vec<StatusView> = agents.iter().map(StatusView::from).collect();
    match format {
        OutputFormat::Table | OutputFormat::Wide => {
            let wide = format == OutputFormat::Wide;
            writeln!(out, "{}", table::statuses(&views, wide, None))?;
            for line in gpu_lines(&views) {
                writeln!(out, "{line}")?;
            }
            Ok(())
        }
        OutputFormat::Json => writeln!(out, "{}", json::to_string(&views)?),
        OutputFormat::Yaml => out.write_all(yaml::to_string(&views)?.as_bytes()),
    }
}

/// The GPU line of each agent that reports one: `GPU node-a: 2 GPUs (NVML, driver 550.54.15)`
/// or `GPU node-b: no NVIDIA driver on this node`.
pub fn gpu_lines(agents: &[StatusView]) -> Vec<String> {
    agents
        .iter()
        .filter_map(|a| {
            a.gpu
                .as_ref()
                .map(|g| format!("GPU {}: {}", a.node, g.summary))
        })
        .collect()
}

/// Writes versions in `format`.
pub fn write_versions(
    out: &mut dyn Write,
    format: OutputFormat,
    view: &VersionView,
) -> io::Result<()> {
    match format {
        OutputFormat::Table | OutputFormat::Wide => {
            writeln!(
                out,
                "Client Version: {} (protocol {})",
                view.client.version, view.client.protocol
            )?;
            writeln!(out, "Agent Image: {}", view.client.agent_image)?;
            for a in &view.agents {
                writeln!(
                    out,
                    "Agent Version: {} (protocol {}) on {} at {}",
                    a.version, a.protocol, a.node, a.address
                )?;
            }
            Ok(())
        }
        OutputFormat::Json => writeln!(out, "{}", json::to_string(view)?),
        OutputFormat::Yaml => out.write_all(yaml::to_string(view)?.as_bytes()),
    }
}
