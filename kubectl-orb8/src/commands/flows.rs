//! `kubectl orb8 flows`: wait while the agents collect, then print their merged flow table,
//! grouped by peer (`group`) unless `--by connection` asks for the flows themselves. With
//! `--by connection -o wide`, each agent's TCP trace runs during the collection, and the TCP
//! rows get the state, RTT, retransmits and resets of their sockets (`tcpconn`).

use std::io::Write;
use std::time::SystemTime;

use anyhow::Context as _;
use orb8_proto::QueryFlowsRequest;
use tokio::time::{Duration, Instant};

use crate::cli::{FlowsArgs, FlowsBy};
use crate::flow::{filter_to_wire, sort_to_wire};
use crate::group::group_owned;
use crate::interrupt::{Interrupt, Interrupted};
use crate::merge::{TableReader, merge_read_tables};
use crate::progress::{Progress, countdown_message, warn};
use crate::render::{self, OutputFormat};
use crate::session::Session;
use crate::tcp::TcpRecord;
use crate::tcpconn::TcpConnTable;

/// Opens a TCP trace on every agent that has one and folds its events into a table until the
/// returned tasks are stopped. An agent without TCP tracing leaves its rows' columns empty.
async fn start_tcp(
    session: &Session,
) -> (
    std::sync::Arc<std::sync::Mutex<TcpConnTable>>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    use futures::StreamExt as _;
    let table = std::sync::Arc::new(std::sync::Mutex::new(TcpConnTable::default()));
    let addrs = session
        .directory
        .as_ref()
        .map(|d| crate::drops::selected_addrs(&d.snapshot()).unwrap_or_default())
        .unwrap_or_default();
    let request = orb8_proto::TraceTcpRequest {
        addrs: addrs
            .iter()
            .map(|a| orb8_flowspec::ip_to_bytes(*a))
            .collect(),
        states: false,
    };
    let mut tasks = Vec::new();
    for (name, agent) in session.names.iter().zip(&session.agents) {
        let mut stream = match agent.trace_tcp(request.clone()).await {
            Ok(s) => s,
            Err(e) => {
                warn(&format!("{name}: no TCP connection columns: {e}"));
                continue;
            }
        };
        let (node, table) = (name.clone(), table.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(ev)) = stream.next().await {
                if let Some(orb8_proto::tcp_trace_event::Kind::Tcp(e)) = ev.kind {
                    let r = TcpRecord::from_proto(&node, e);
                    table.lock().expect("tcp table lock").add(&r);
                }
            }
        }));
    }
    (table, tasks)
}

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

/// Runs `flows`: collect, query every agent, merge, name (cluster mode: each flow once per
/// pod end), group (unless `--by connection`), print.
pub async fn run(
    session: &Session,
    args: &FlowsArgs,
    format: OutputFormat,
    interrupt: &Interrupt,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let tcp = if format == OutputFormat::Wide && args.by == FlowsBy::Connection {
        Some(start_tcp(session).await)
    } else {
        None
    };
    collect(session, args.duration, interrupt).await;
    // The traces end (and the agents unload their TCP probes) when their streams go.
    let tcp_table = tcp.map(|(table, tasks)| {
        tasks.iter().for_each(|t| t.abort());
        std::mem::take(&mut *table.lock().expect("tcp table lock"))
    });

    let filter = args.filter.spec();
    let limit = args.limit.and_then(|l| usize::try_from(l).ok());
    // The agents may cut the table only when their rows are the rows printed: not when names
    // drop flows (cluster mode), flows fold into groups, or --direction (the observed end's,
    // which the client decides) leaves some out.
    let agents_limit =
        args.by == FlowsBy::Connection && session.directory.is_none() && filter.direction.is_none();
    let request = QueryFlowsRequest {
        filter: Some(filter_to_wire(&filter)),
        limit: if agents_limit {
            args.limit.unwrap_or(0)
        } else {
            0
        },
        sort: sort_to_wire(args.sort) as i32,
        page_size: 0,
    };
    let interrupts_so_far = interrupt.count();
    let progress = Progress::spinner("querying flows");
    // Each agent's table is read page by page (ListFlows), its pages turned into records as
    // they come: a large table is never held as one wire message.
    let queries = futures::future::join_all(session.names.iter().zip(&session.agents).map(
        |(name, agent)| {
            let request = request.clone();
            let mut table = TableReader::new(name, filter.clone());
            async move {
                let mut evictions = 0;
                agent
                    .flow_pages(request, |page| {
                        evictions = page.flow_map_evictions;
                        table.add(page.flows);
                    })
                    .await
                    .map(|()| (table, evictions))
            }
        },
    ));
    let answers = tokio::select! {
        answers = queries => answers,
        () = interrupt.wait_for(interrupts_so_far + 1) => return Err(Interrupted.into()),
    };
    progress.finish();
    session.timing.first_answer_all(&session.names);

    let mut tables = Vec::with_capacity(answers.len());
    for (name, answer) in session.names.iter().zip(answers) {
        let (table, evictions) = answer.context("querying flows")?;
        if evictions > 0 {
            warn(&format!(
                "{name}: {evictions} flows were evicted from the full kernel table; their counts are missing"
            ));
        }
        tables.push(table);
    }
    let mut flows = merge_read_tables(tables, args.sort, None);
    if let Some(d) = &session.directory {
        flows = d.snapshot().apply(flows);
    }
    let now = SystemTime::now();
    match args.by {
        FlowsBy::Connection => {
            flows.truncate(limit.filter(|l| *l > 0).unwrap_or(usize::MAX));
            if flows.is_empty() && matches!(format, OutputFormat::Table | OutputFormat::Wide) {
                let _ = writeln!(std::io::stderr(), "No flows found.");
            }
            render::write_flows_with_tcp(out, format, &flows, now, tcp_table.as_ref())?;
        }
        FlowsBy::Peer => {
            let groups = group_owned(flows, args.sort, limit);
            if groups.is_empty() && matches!(format, OutputFormat::Table | OutputFormat::Wide) {
                let _ = writeln!(std::io::stderr(), "No flows found.");
            }
            render::write_groups(out, format, &groups, now)?;
        }
    }
    Ok(())
}
