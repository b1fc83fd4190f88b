//! `kubectl orb8 trace network`: new flows from every agent, printed as they arrive.

use std::io::Write;

use futures::StreamExt as _;
use orb8_proto::{Event, StreamEventsRequest, event};

use orb8_flowspec::FlowFilterSpec;

use crate::cli::TraceNetworkArgs;
use crate::flow::{FlowRecord, direction_name, filter_to_wire, rfc3339_nanos, time_of_day};
use crate::interrupt::Interrupt;
use crate::k8s::directory::LiveDirectory;
use crate::merge::{GapCause, Merged, merge_events};
use crate::progress::warn;
use crate::render::{AgentLostLine, FlowView, GapLine, NewFlowLine, OutputFormat, json, yaml};
use crate::session::Session;

/// How one event is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineFormat {
    Text,
    Json,
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

/// One new flow as a line of text:
/// `22:13:20.123Z node-a eth0 egress udp 10.0.0.1:40000 -> 10.0.0.2:53 75 B`.
pub fn text_line(time_nanos: i64, flow: &FlowRecord) -> String {
    let mut line = format!(
        "{} {} {} {} {} {} -> {} {} B",
        time_of_day(time_nanos),
        flow.node,
        flow.interface,
        direction_name(flow.direction),
        flow.protocol_text(),
        flow.src_endpoint(),
        flow.dst_endpoint(),
        flow.bytes,
    );
    let flags = flow.tcp_flag_letters();
    if !flags.is_empty() {
        line.push_str(&format!(" [{flags}]"));
    }
    if flow.fragment {
        line.push_str(" (fragment)");
    }
    line
}

fn gap_text(node: &str, lost: u64, cause: &GapCause) -> String {
    match cause {
        GapCause::Reported { reason, .. } => format!(
            "{node}: {lost} events lost ({} stage, {reason})",
            cause.stage_name()
        ),
        GapCause::SeqJump { expected, got } => {
            format!("{node}: {lost} events missing (sequence jumped from {expected} to {got})")
        }
    }
}

fn write_record(out: &mut dyn Write, format: LineFormat, line: &str) -> std::io::Result<()> {
    match format {
        LineFormat::Yaml => write!(out, "---\n{line}")?,
        _ => writeln!(out, "{line}")?,
    }
    out.flush()
}

fn serialise<T: serde::Serialize>(format: LineFormat, value: &T) -> std::io::Result<String> {
    match format {
        LineFormat::Yaml => yaml::to_string(value),
        _ => json::to_line(value),
    }
}

/// Writes one event (a new flow passing `filter`); other kinds go to stderr.
fn write_event(
    out: &mut dyn Write,
    format: LineFormat,
    filter: &FlowFilterSpec,
    names: Option<&LiveDirectory>,
    node: &str,
    event: Event,
) -> std::io::Result<()> {
    match event.kind {
        Some(event::Kind::NewFlow(flow)) => {
            let flow = FlowRecord::from_proto(node, flow);
            if !filter.matches(&flow.key()) {
                return Ok(());
            }
            // Cluster mode: name both ends; flows of no selected pod are left out.
            let flow = match names {
                Some(d) => match d.apply(vec![flow]).pop() {
                    Some(f) => f,
                    None => return Ok(()),
                },
                None => flow,
            };
            let line = match format {
                LineFormat::Text => text_line(event.time_unix_nanos, &flow),
                _ => serialise(
                    format,
                    &NewFlowLine {
                        event: "new_flow",
                        time: rfc3339_nanos(event.time_unix_nanos),
                        seq: event.seq,
                        flow: FlowView::from(&flow),
                    },
                )?,
            };
            write_record(out, format, &line)
        }
        Some(event::Kind::Interface(change)) => {
            let name = change.interface.map(|i| i.name).unwrap_or_default();
            let what = if !change.error.is_empty() {
                format!("cannot attach to {name}: {}", change.error)
            } else if change.attached {
                format!("watching {name}")
            } else {
                format!("stopped watching {name}")
            };
            let _ = writeln!(std::io::stderr(), "orb8: {node}: {what}");
            Ok(())
        }
        Some(event::Kind::Gap(_)) | None => Ok(()),
    }
}

/// Runs `trace network` until `--duration`, Ctrl-C, or every agent is gone (an error).
pub async fn network(
    session: &Session,
    args: &TraceNetworkArgs,
    format: OutputFormat,
    interrupt: &Interrupt,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let format = LineFormat::from(format);
    let filter = args.filter.spec();
    let request = StreamEventsRequest {
        filter: Some(filter_to_wire(&filter)),
    };
    let opened = futures::future::join_all(
        session
            .agents
            .iter()
            .map(|a| a.stream_events(request.clone())),
    )
    .await;
    let mut streams = Vec::with_capacity(opened.len());
    for (name, stream) in session.names.iter().zip(opened) {
        streams.push((name.clone(), stream?));
    }
    let agents = streams.len();
    let mut merged = merge_events(streams);
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let until_deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until_deadline);

    let mut lost_agents = 0;
    loop {
        let item = tokio::select! {
            item = merged.next() => item,
            () = &mut until_deadline => break,
            () = interrupt.wait() => break,
        };
        match item {
            Some(Merged::Event { node, event }) => {
                write_event(
                    out,
                    format,
                    &filter,
                    session.directory.as_ref(),
                    &node,
                    event,
                )?;
            }
            Some(Merged::Gap { node, lost, cause }) => {
                warn(&gap_text(&node, lost, &cause));
                if format != LineFormat::Text {
                    let line = serialise(format, &GapLine::new(&node, lost, &cause))?;
                    write_record(out, format, &line)?;
                }
            }
            Some(Merged::AgentLost { node, mut error }) => {
                lost_agents += 1;
                if let Some(last) = session.local_stderr_line() {
                    error = format!("{error} (agent said: {last})");
                }
                warn(&format!("lost agent {node}: {error}"));
                if format != LineFormat::Text {
                    let line = serialise(
                        format,
                        &AgentLostLine {
                            event: "agent_lost",
                            node: &node,
                            error: &error,
                        },
                    )?;
                    write_record(out, format, &line)?;
                }
            }
            None => break,
        }
    }
    if lost_agents == agents {
        anyhow::bail!(
            "every agent's event stream ended ({agents} agent{})",
            if agents == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lines_show_the_flow() {
        let flow = FlowRecord::test_flow();
        assert_eq!(
            text_line(1_700_000_000_123_456_789, &flow),
            "22:13:20.123Z node-a eth0 egress udp 10.0.0.1:40000 -> 10.0.0.2:53 150 B"
        );
        let mut tcp = FlowRecord::test_flow();
        tcp.protocol = orb8_flowspec::Protocol::TCP;
        tcp.tcp_flags = 0x02;
        assert!(text_line(0, &tcp).ends_with("150 B [S]"));
    }

    #[test]
    fn gaps_in_words() {
        let seq = GapCause::SeqJump {
            expected: 3,
            got: 5,
        };
        assert_eq!(
            gap_text("a", 2, &seq),
            "a: 2 events missing (sequence jumped from 3 to 5)"
        );
        let reported = GapCause::Reported {
            stage: orb8_proto::DropStage::Kernel,
            reason: "ringbuf_full".into(),
        };
        assert_eq!(
            gap_text("a", 7, &reported),
            "a: 7 events lost (kernel stage, ringbuf_full)"
        );
    }
}
