//! `kubectl orb8 trace tcp`: TCP connections as every agent's kernel sees them change state:
//! connects and accepts with their handshake time, closes with how they ended, resets and
//! retransmits (`--states`: every state change), one line each, client first. In cluster mode
//! the kernel watches only the selected pods' addresses; `--ip` adds addresses. Losses are said
//! on stderr as they happen.

use std::io::Write as _;

use futures::StreamExt as _;
use orb8_flowspec::ip_to_bytes;
use orb8_proto::{TraceTcpRequest, tcp_trace_event};

use crate::cli::TraceTcpArgs;
use crate::commands::drops::{watched, watched_text};
use crate::commands::trace::{LossLines, report_gap};
use crate::interrupt::Interrupt;
use crate::merge::{Merged, merge_traces};
use crate::output::LiveOutput;
use crate::progress::warn;
use crate::render::{LineFormat, OutputFormat, record, serialise};
use crate::session::Session;
use crate::tcp::{TcpLine, TcpRecord, text_line};
use crate::timing::Step;

/// Runs the trace until `--duration`, Ctrl-C or every agent is gone.
pub async fn run(
    session: &Session,
    args: &TraceTcpArgs,
    format: OutputFormat,
    interrupt: &Interrupt,
    out: &LiveOutput,
) -> anyhow::Result<()> {
    let snapshot = session.directory.as_ref().map(|d| d.snapshot());
    let addrs = watched(&args.ips, snapshot.as_ref())?;
    let request = TraceTcpRequest {
        addrs: addrs.iter().map(|a| ip_to_bytes(*a)).collect(),
        states: args.states,
    };
    let streams: Vec<_> = session
        .open_traces("TraceTcp", "TCP trace", |a| a.trace_tcp(request.clone()))
        .await?
        .into_iter()
        .map(|t| (t.node, t.stream))
        .collect();
    let _ = writeln!(
        std::io::stderr(),
        "orb8: tracing TCP on {} agent{} ({})",
        streams.len(),
        if streams.len() == 1 { "" } else { "s" },
        watched_text(&addrs)
    );
    let agents = streams.len();
    let mut merged = merge_traces(streams);
    let stop = interrupt.wait_or_after(args.duration);
    tokio::pin!(stop);
    let lines = LineFormat::from(format);
    let mut lost_agents = 0;
    let mut losses = LossLines::new("TCP events");
    loop {
        let item = tokio::select! {
            item = merged.next() => item,
            () = losses.tick() => continue,
            () = &mut stop => break,
        };
        match item {
            Some(Merged::Event { node, event }) => {
                session.timing.mark(&node, Step::FirstAnswer);
                let Some(tcp_trace_event::Kind::Tcp(e)) = event.kind else {
                    continue;
                };
                let mut r = TcpRecord::from_proto(&node, e);
                if let Some(dir) = &session.directory {
                    let dir = dir.snapshot();
                    r.name_ends(&dir);
                    if !r.concerns_selection(&dir) {
                        continue;
                    }
                }
                let line = match lines {
                    LineFormat::Text => text_line(event.time_unix_nanos, &r),
                    _ => serialise(lines, &TcpLine::new(event.seq, event.time_unix_nanos, &r))?,
                };
                out.print(record(lines, &line))?;
            }
            Some(Merged::Gap { node, lost, cause }) => {
                session.timing.mark(&node, Step::FirstAnswer);
                report_gap(out, lines, &mut losses, &node, lost, &cause)?;
            }
            Some(Merged::AgentLost { node, error }) => {
                lost_agents += 1;
                warn(&format!("lost agent {node}: {error}"));
            }
            None => break,
        }
    }
    if lost_agents == agents {
        anyhow::bail!(
            "every agent's TCP trace ended ({agents} agent{})",
            if agents == 1 { "" } else { "s" }
        );
    }
    Ok(())
}
