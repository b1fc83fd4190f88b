//! `kubectl orb8 trace drops`: packets the kernel dropped, with its reason by name, from every
//! agent. Each agent aggregates drops in the kernel and sends one event per new (namespace,
//! interface, reason, 5-tuple); this prints one line per such event, or with `--summary` the
//! counts by (pod, reason, peer) when the trace ends. In cluster mode the kernel watches only the
//! selected pods' addresses; `--ip` adds addresses (and is the filter without a cluster).
//! Losses (a full kernel ring, a slow client) are said on stderr as they happen and at the end.

use std::io::Write as _;
use std::net::IpAddr;

use anyhow::Context as _;
use futures::StreamExt as _;
use orb8_flowspec::ip_to_bytes;
use orb8_proto::{DropSummary, TraceDropsRequest, drop_trace_event};

use crate::cli::TraceDropsArgs;
use crate::commands::trace::{LossLines, report_gap};
use crate::drops::{DropLine, DropRecord, selected_addrs, summarise, summary_table, text_line};
use crate::enrich::Directory;
use crate::interrupt::Interrupt;
use crate::merge::{Merged, merge_traces};
use crate::output::LiveOutput;
use crate::progress::warn;
use crate::render::{LineFormat, OutputFormat, record, serialise, value_record};
use crate::session::Session;
use crate::timing::Step;

/// The addresses the kernel is asked to watch: `--ip`, plus in cluster mode the selected pods'.
pub fn watched(ips: &[IpAddr], dir: Option<&Directory>) -> anyhow::Result<Vec<IpAddr>> {
    let mut addrs = ips.to_vec();
    if let Some(d) = dir {
        match selected_addrs(d) {
            Some(v) if v.is_empty() && addrs.is_empty() => anyhow::bail!(
                "none of the selected pods has an address yet: no drops to watch (give --ip, or \
                 -A for every drop)"
            ),
            Some(v) => addrs.extend(v),
            None => {}
        }
    }
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

/// The losses an agent's summary reports, in one line, or `None` when nothing was lost.
pub fn losses_line(s: &DropSummary) -> Option<String> {
    let mut parts = Vec::new();
    for (name, stage) in [
        ("ringbuf_full", "kernel"),
        ("insert_failed", "kernel"),
        ("read_failed", "kernel"),
    ] {
        let n = s.counters.get(name).copied().unwrap_or(0);
        if n > 0 {
            parts.push(format!("{n} {name} ({stage} stage)"));
        }
    }
    if s.lost_agent > 0 {
        parts.push(format!("{} queue_overflow (agent stage)", s.lost_agent));
    }
    if s.lost_client > 0 {
        parts.push(format!("{} slow_client (client stage)", s.lost_client));
    }
    (!parts.is_empty()).then(|| format!("{}: drop trace losses: {}", s.node, parts.join(", ")))
}

/// What a trace watches, for its first line: `every address` or `from or to 10.0.0.1, ...`.
pub fn watched_text(addrs: &[IpAddr]) -> String {
    if addrs.is_empty() {
        "every address".to_string()
    } else {
        let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        format!("from or to {}", shown.join(", "))
    }
}

/// Runs the trace until `--duration`, Ctrl-C or every agent is gone; then, with `--summary`,
/// prints the counts.
pub async fn run(
    session: &Session,
    args: &TraceDropsArgs,
    format: OutputFormat,
    interrupt: &Interrupt,
    out: &LiveOutput,
) -> anyhow::Result<()> {
    let snapshot = session.directory.as_ref().map(|d| d.snapshot());
    let addrs = watched(&args.ips, snapshot.as_ref())?;
    let request = TraceDropsRequest {
        addrs: addrs.iter().map(|a| ip_to_bytes(*a)).collect(),
    };
    let opened = session
        .open_traces("TraceDrops", "drop trace", |a| {
            a.trace_drops(request.clone())
        })
        .await?;
    let mut traces = Vec::with_capacity(opened.len());
    let mut streams = Vec::with_capacity(opened.len());
    for t in opened {
        traces.push((t.node.clone(), t.agent, t.started.trace_id));
        streams.push((t.node, t.stream));
    }
    let _ = writeln!(
        std::io::stderr(),
        "orb8: tracing drops on {} agent{} ({}){}",
        traces.len(),
        if traces.len() == 1 { "" } else { "s" },
        watched_text(&addrs),
        if args.summary {
            "; Ctrl-C prints the summary"
        } else {
            ""
        }
    );
    let agents = streams.len();
    let mut merged = merge_traces(streams);
    let stop = interrupt.wait_or_after(args.duration);
    tokio::pin!(stop);
    let lines = LineFormat::from(format);
    let mut lost_agents = std::collections::BTreeSet::new();
    let mut losses = LossLines::new("drop events");
    loop {
        let item = tokio::select! {
            item = merged.next() => item,
            () = losses.tick() => continue,
            () = &mut stop => break,
        };
        match item {
            Some(Merged::Event { node, event }) => {
                session.timing.mark(&node, Step::FirstAnswer);
                let Some(drop_trace_event::Kind::Drop(d)) = event.kind else {
                    continue;
                };
                if args.summary {
                    continue;
                }
                let mut r = DropRecord::from_proto(&node, d);
                if let Some(dir) = &session.directory {
                    let dir = dir.snapshot();
                    r.name_ends(&dir);
                    if !r.concerns_selection(&dir) {
                        continue;
                    }
                }
                let line = match lines {
                    LineFormat::Text => text_line(event.time_unix_nanos, &r),
                    _ => serialise(lines, &DropLine::new(event.seq, event.time_unix_nanos, &r))?,
                };
                out.print(record(lines, &line))?;
            }
            Some(Merged::Gap { node, lost, cause }) => {
                session.timing.mark(&node, Step::FirstAnswer);
                report_gap(out, lines, &mut losses, &node, lost, &cause)?;
            }
            Some(Merged::AgentLost { node, error }) => {
                warn(&format!("lost agent {node}: {error}"));
                lost_agents.insert(node);
            }
            None => break,
        }
    }
    if lost_agents.len() == agents {
        anyhow::bail!(
            "every agent's drop trace ended ({agents} agent{})",
            if agents == 1 { "" } else { "s" }
        );
    }
    let mut records = Vec::new();
    for (node, agent, id) in &traces {
        if lost_agents.contains(node) {
            continue;
        }
        let s = agent
            .drop_summary(*id)
            .await
            .with_context(|| format!("reading the drop summary of {node}"))?;
        if let Some(line) = losses_line(&s) {
            warn(&line);
        }
        if args.summary {
            records.extend(s.drops.into_iter().map(|d| DropRecord::from_proto(node, d)));
        }
    }
    if !args.summary {
        return Ok(());
    }
    if let Some(dir) = &snapshot {
        for r in &mut records {
            r.name_ends(dir);
        }
        records.retain(|r| r.concerns_selection(dir));
    }
    let rows = summarise(&records, snapshot.as_ref());
    match lines {
        LineFormat::Text => out.print_summary(summary_table(&rows))?,
        _ => {
            for r in &rows {
                out.print_summary(value_record(lines, r)?)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_are_said_by_stage() {
        let mut s = DropSummary {
            node: "n1".into(),
            ..Default::default()
        };
        assert_eq!(losses_line(&s), None);
        s.counters.insert("ringbuf_full".into(), 3);
        s.counters.insert("accounted".into(), 10);
        s.lost_client = 2;
        assert_eq!(
            losses_line(&s).unwrap(),
            "n1: drop trace losses: 3 ringbuf_full (kernel stage), 2 slow_client (client stage)"
        );
    }

    #[test]
    fn cluster_mode_watches_selected_pods_and_given_addresses() {
        let ip: IpAddr = "10.9.9.9".parse().unwrap();
        assert_eq!(watched(&[ip, ip], None).unwrap(), vec![ip]);
        let none_selected = Directory {
            selected: Some(Default::default()),
            ..Default::default()
        };
        assert!(
            watched(&[], Some(&none_selected))
                .unwrap_err()
                .to_string()
                .starts_with("none of the selected pods has an address yet")
        );
        assert_eq!(watched(&[ip], Some(&none_selected)).unwrap(), vec![ip]);
        assert!(
            watched(&[], Some(&Directory::default()))
                .unwrap()
                .is_empty()
        );
    }
}
