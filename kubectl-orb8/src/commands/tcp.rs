//! `kubectl orb8 trace tcp`: TCP connections as every agent's kernel sees them change state:
//! connects and accepts with their handshake time, closes with how they ended, resets and
//! retransmits (`--states`: every state change), one line each, client first. In cluster mode
//! the kernel watches only the selected pods' addresses; `--ip` adds addresses. Losses are said
//! on stderr as they happen.

use std::io::Write as _;

use futures::StreamExt as _;
use orb8_flowspec::ip_to_bytes;
use orb8_proto::{TcpTraceEvent, TraceTcpRequest, tcp_trace_event};
use tonic::Status;

use crate::cli::TraceTcpArgs;
use crate::commands::drops::watched;
use crate::interrupt::Interrupt;
use crate::merge::{GapCause, SeqTracker, status_text};
use crate::output::LiveOutput;
use crate::progress::warn;
use crate::render::{GapLine, LineFormat, OutputFormat, record, value_record};
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
    let opened =
        futures::future::join_all(session.agents.iter().map(|a| a.trace_tcp(request.clone())))
            .await;
    let mut streams = Vec::new();
    for ((name, agent), stream) in session.names.iter().zip(&session.agents).zip(opened) {
        let mut stream = stream?;
        match stream.next().await {
            Some(Ok(TcpTraceEvent {
                kind: Some(tcp_trace_event::Kind::Started(_)),
                ..
            })) => {}
            Some(Ok(other)) => anyhow::bail!("agent {name} began the TCP trace with {other:?}"),
            Some(Err(status)) => {
                return Err(crate::transport::AgentError::from_status(
                    &agent.addr,
                    "TraceTcp",
                    &status,
                )
                .into());
            }
            None => anyhow::bail!("agent {name} ended the TCP trace before it started"),
        }
        let node = name.clone();
        streams.push(
            stream
                .map(move |item| (node.clone(), item))
                .chain(futures::stream::once(futures::future::ready((
                    name.clone(),
                    Err(Status::cancelled("the agent ended the stream")),
                ))))
                .boxed(),
        );
    }
    let _ = writeln!(
        std::io::stderr(),
        "orb8: tracing TCP on {} agent{} ({})",
        streams.len(),
        if streams.len() == 1 { "" } else { "s" },
        if addrs.is_empty() {
            "every address".to_string()
        } else {
            let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            format!("from or to {}", shown.join(", "))
        }
    );
    let agents = streams.len();
    let mut merged = futures::stream::select_all(streams);
    let mut seqs: std::collections::HashMap<String, SeqTracker> = Default::default();
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let until_deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until_deadline);
    let mut lost_agents = std::collections::BTreeSet::new();
    let lines = LineFormat::from(format);
    let text = lines == LineFormat::Text;
    loop {
        let item = tokio::select! {
            item = merged.next() => item,
            () = &mut until_deadline => break,
            () = interrupt.wait() => break,
        };
        let Some((node, item)) = item else { break };
        let ev = match item {
            Ok(ev) => ev,
            Err(status) => {
                if lost_agents.insert(node.clone()) {
                    warn(&format!("lost agent {node}: {}", status_text(&status)));
                }
                if lost_agents.len() == agents {
                    break;
                }
                continue;
            }
        };
        session.timing.mark(&node, Step::FirstAnswer);
        let tracker = seqs.entry(node.clone()).or_insert_with(|| {
            // The `started` message (seq 1) was read above.
            let mut t = SeqTracker::default();
            t.observe(1);
            t
        });
        if let Some((expected, lost)) = tracker.observe(ev.seq) {
            warn(&format!(
                "{node}: {lost} TCP events missing (sequence jumped from {expected} to {})",
                ev.seq
            ));
            if !text {
                let cause = GapCause::SeqJump {
                    expected,
                    got: ev.seq,
                };
                out.print(value_record(lines, &GapLine::new(&node, lost, &cause))?)?;
            }
        }
        match ev.kind {
            Some(tcp_trace_event::Kind::Tcp(e)) => {
                let mut r = TcpRecord::from_proto(&node, e);
                if let Some(dir) = &session.directory {
                    let dir = dir.snapshot();
                    r.name_ends(&dir);
                    if !r.concerns_selection(&dir) {
                        continue;
                    }
                }
                out.print(if text {
                    record(lines, &text_line(ev.time_unix_nanos, &r))
                } else {
                    value_record(lines, &TcpLine::new(ev.seq, ev.time_unix_nanos, &r))?
                })?;
            }
            Some(tcp_trace_event::Kind::Gap(g)) => {
                let cause = GapCause::Reported {
                    stage: g.stage(),
                    reason: g.reason.clone(),
                };
                warn(&format!(
                    "{node}: {} TCP events lost ({} stage, {})",
                    g.lost,
                    cause.stage_name(),
                    g.reason
                ));
                if !text {
                    out.print(value_record(lines, &GapLine::new(&node, g.lost, &cause))?)?;
                }
            }
            _ => {}
        }
    }
    if lost_agents.len() == agents {
        anyhow::bail!(
            "every agent's TCP trace ended ({agents} agent{})",
            if agents == 1 { "" } else { "s" }
        );
    }
    Ok(())
}
