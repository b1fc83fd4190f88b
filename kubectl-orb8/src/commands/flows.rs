//! `kubectl orb8 flows`: wait while the agents collect, then print their merged flow table.

use std::io::Write;
use std::time::SystemTime;

use anyhow::Context as _;
use orb8_proto::QueryFlowsRequest;
use tokio::time::{Duration, Instant};

use crate::cli::FlowsArgs;
use crate::flow::{filter_to_wire, sort_to_wire};
use crate::interrupt::{Interrupt, Interrupted};
use crate::merge::merge_flow_tables;
use crate::progress::{Progress, countdown_message, warn};
use crate::render::{self, OutputFormat};
use crate::session::Session;

/// Waits `duration` (or until Ctrl-C) with a countdown on stderr.
async fn collect(session: &Session, duration: Duration, interrupt: &Interrupt) {
    if duration.is_zero() {
        return;
    }
    let what = format!(
        "collecting flows from {} agent{}",
        session.agents.len(),
        if session.agents.len() == 1 { "" } else { "s" }
    );
    let progress = Progress::spinner(countdown_message(&what, duration));
    let deadline = Instant::now() + duration;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let next = deadline.min(now + Duration::from_millis(250));
        tokio::select! {
            () = tokio::time::sleep_until(next) => {
                progress.set_message(countdown_message(&what, deadline.saturating_duration_since(Instant::now())));
            }
            () = interrupt.wait() => break,
        }
    }
    progress.finish();
}

/// Runs `flows`: collect, query every agent, merge, print.
pub async fn run(
    session: &Session,
    args: &FlowsArgs,
    format: OutputFormat,
    interrupt: &Interrupt,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    collect(session, args.duration, interrupt).await;

    let filter = args.filter.spec();
    let request = QueryFlowsRequest {
        filter: Some(filter_to_wire(&filter)),
        limit: args.limit.unwrap_or(0),
        sort: sort_to_wire(args.sort) as i32,
    };
    let interrupts_so_far = interrupt.count();
    let progress = Progress::spinner("querying flows");
    let queries = futures::future::join_all(
        session
            .agents
            .iter()
            .map(|a| a.query_flows(request.clone())),
    );
    let answers = tokio::select! {
        answers = queries => answers,
        () = interrupt.wait_for(interrupts_so_far + 1) => return Err(Interrupted.into()),
    };
    progress.finish();

    let mut tables = Vec::with_capacity(answers.len());
    for (name, answer) in session.names.iter().zip(answers) {
        let answer = answer.context("querying flows")?;
        if answer.flow_map_evictions > 0 {
            warn(&format!(
                "{name}: {} flows were evicted from the full kernel table; their counts are missing",
                answer.flow_map_evictions
            ));
        }
        tables.push((name.clone(), answer.flows));
    }
    let limit = args.limit.and_then(|l| usize::try_from(l).ok());
    let flows = match &session.directory {
        // Naming can drop flows (those of unselected pods), so the limit comes after it.
        Some(d) => {
            let mut named = d
                .snapshot()
                .apply(merge_flow_tables(tables, &filter, args.sort, None));
            named.truncate(limit.unwrap_or(usize::MAX));
            named
        }
        None => merge_flow_tables(tables, &filter, args.sort, limit),
    };
    if flows.is_empty() && matches!(format, OutputFormat::Table | OutputFormat::Wide) {
        let _ = writeln!(std::io::stderr(), "No flows found.");
    }
    render::write_flows(out, format, &flows, SystemTime::now())?;
    Ok(())
}
