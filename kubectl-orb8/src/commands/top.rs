//! `kubectl orb8 top`: a full-screen live view of who talks to whom.
//!
//! Three sources feed one [`TopState`]: a background task that queries every agent's flow table
//! once per `--interval` (rates are the growth between two tables), the merged event stream
//! (new flows per second, losses, lost agents), and the keyboard. Each change redraws. The
//! terminal is restored on every way out: `q`, Ctrl-C (a key in raw mode), SIGINT/SIGTERM, an
//! error (the guard's drop) and a panic (ratatui's hook); the agents are then torn down by the
//! session as for every other command. `y` on a drilled-in pod runs this same binary's
//! `trace syscall` for five seconds as a child process and shows its summary.

use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::Context as _;
use crossterm::event::{
    Event as TermEvent, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers,
};
use futures::StreamExt as _;
use orb8_proto::{QueryFlowsRequest, StreamEventsRequest, event};
use tokio::sync::{mpsc, oneshot};

use crate::cli::{GlobalArgs, TopArgs};
use crate::flow::{FlowRecord, filter_to_wire};
use crate::interrupt::Interrupt;
use crate::merge::{Merged, merge_events, merge_flow_tables};
use crate::session::Session;
use crate::tui::state::talkers::Owner;
use crate::tui::state::{Action, Key, SyscallPane, TopState};
use crate::tui::view;

/// How long the `y` key's syscall summary traces.
pub const SYSCALL_SUMMARY_FOR: &str = "5s";

/// Refuses to start agents for a `top` that could not draw: stdout must be a terminal.
pub fn check() -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() {
        anyhow::bail!(
            "top needs a terminal; for pipes and files use `flows` or `trace network -o json`"
        );
    }
    Ok(())
}

/// What the title line says the view covers.
pub fn scope(global: &GlobalArgs) -> String {
    if global.local {
        return "local".into();
    }
    if !global.agents.is_empty() {
        return format!("{} agent(s)", global.agents.len());
    }
    let c = &global.cluster;
    if c.all_namespaces {
        "all namespaces".into()
    } else if let Some(sel) = &c.selector {
        format!("-l {sel}")
    } else {
        format!(
            "-n {}",
            c.namespace.as_deref().unwrap_or("(current namespace)")
        )
    }
}

/// The command line of the child that traces `owner`'s syscalls, or why there is none.
pub fn syscall_command(global: &GlobalArgs, owner: &Owner) -> Result<Vec<String>, String> {
    let mut args: Vec<String> = Vec::new();
    let mut trace = vec!["trace".into(), "syscall".into()];
    match owner {
        Owner::Pod { namespace, name } => {
            let c = &global.cluster;
            if let Some(k) = &c.kubeconfig {
                args.extend(["--kubeconfig".into(), k.display().to_string()]);
            }
            if let Some(ctx) = &c.context {
                args.extend(["--context".into(), ctx.clone()]);
            }
            args.extend(["--agent-namespace".into(), c.agent_namespace.clone()]);
            if let Some(i) = &c.image {
                args.extend(["--image".into(), i.clone()]);
            }
            if let Some(p) = &c.image_pull_policy {
                args.extend(["--image-pull-policy".into(), p.clone()]);
            }
            if c.privileged {
                args.push("--privileged".into());
            }
            args.extend(["-n".into(), namespace.clone()]);
            trace.push(name.clone());
        }
        Owner::Process { pid } => {
            if global.local {
                args.push("--local".into());
                for a in &global.local_args {
                    args.extend(["--local-arg".into(), a.clone()]);
                }
            } else if let [agent] = &global.agents[..] {
                args.extend(["--agent".into(), agent.to_string()]);
            } else {
                return Err("a process's syscalls are traced with --local or one --agent".into());
            }
            trace.extend(["--pid".into(), pid.to_string()]);
        }
        Owner::None => return Err("no pod or process is known for this end".into()),
    }
    args.extend(trace);
    args.extend(["--duration".into(), SYSCALL_SUMMARY_FOR.into()]);
    Ok(args)
}

/// Runs the child and turns its outcome into the pane's content.
async fn syscall_summary(args: Vec<String>, token: Option<String>) -> SyscallPane {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return SyscallPane::Failed(format!("finding this program: {e}")),
    };
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(&args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(t) = token {
        cmd.env("ORB8_AGENT_TOKEN", t);
    }
    match cmd.output().await {
        Ok(out) if out.status.success() => SyscallPane::Done(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect(),
        ),
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let line = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("trace syscall failed")
                .to_string();
            SyscallPane::Failed(line)
        }
        Err(e) => SyscallPane::Failed(format!("starting trace syscall: {e}")),
    }
}

fn key_of(k: KeyEvent) -> Option<Key> {
    if k.kind != KeyEventKind::Press {
        return None;
    }
    Some(match k.code {
        KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Key::CtrlC,
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        _ => return None,
    })
}

/// One refresh: every agent's table (merged, filtered) or why a query failed.
struct Refresh {
    tables: Vec<(String, Vec<orb8_proto::Flow>)>,
    failed: Vec<(String, String)>,
    elapsed: Duration,
}

/// Queries every agent once per `interval` until the receiver goes away.
fn spawn_refresher(
    session: &Session,
    request: QueryFlowsRequest,
    interval: Duration,
) -> (mpsc::Receiver<Refresh>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(2);
    let agents: Vec<(String, crate::transport::Agent)> = session
        .names
        .iter()
        .cloned()
        .zip(session.agents.iter().cloned())
        .collect();
    let task = tokio::spawn(async move {
        let mut last = tokio::time::Instant::now();
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let answers = futures::future::join_all(
                agents.iter().map(|(_, a)| a.query_flows(request.clone())),
            )
            .await;
            let now = tokio::time::Instant::now();
            let mut refresh = Refresh {
                tables: Vec::new(),
                failed: Vec::new(),
                elapsed: now - last,
            };
            last = now;
            for ((name, _), answer) in agents.iter().zip(answers) {
                match answer {
                    Ok(a) => refresh.tables.push((name.clone(), a.flows)),
                    Err(e) => refresh.failed.push((name.clone(), e.to_string())),
                }
            }
            if tx.send(refresh).await.is_err() {
                return;
            }
        }
    });
    (rx, task)
}

/// Restores the terminal when dropped (every way out of [`run`] but a panic, which ratatui's
/// hook covers).
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Runs `top` until `q`, Ctrl-C or a signal.
pub async fn run(
    session: &Session,
    args: &TopArgs,
    global: &GlobalArgs,
    interrupt: &Interrupt,
) -> anyhow::Result<()> {
    let filter = args.filter.spec();
    let wire_filter = filter_to_wire(&filter);
    let opened = futures::future::join_all(session.agents.iter().map(|a| {
        a.stream_events(StreamEventsRequest {
            filter: Some(wire_filter.clone()),
        })
    }))
    .await;
    let mut streams = Vec::with_capacity(opened.len());
    for (name, stream) in session.names.iter().zip(opened) {
        streams.push((
            name.clone(),
            stream.with_context(|| format!("agent {name}"))?,
        ));
    }
    let mut events = merge_events(streams);
    let mut events_done = false;
    let request = QueryFlowsRequest {
        filter: Some(wire_filter),
        limit: 0,
        sort: 0,
        page_size: 0,
    };
    let (mut refreshes, refresher) = spawn_refresher(session, request, args.interval);
    let mut state = TopState::new(scope(global), &session.names);

    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let _guard = TerminalGuard;
    let mut keys = EventStream::new();
    let mut summary: Option<oneshot::Receiver<SyscallPane>> = None;
    let mut summary_task: Option<tokio::task::JoinHandle<()>> = None;
    let result: anyhow::Result<()> = loop {
        terminal
            .draw(|f| view::render(f, &state))
            .context("drawing")?;
        let pending_summary = async {
            match summary.as_mut() {
                Some(rx) => rx.await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            key = keys.next() => match key {
                Some(Ok(TermEvent::Key(k))) => {
                    let Some(k) = key_of(k) else { continue };
                    match state.on_key(k) {
                        Action::Quit => break Ok(()),
                        Action::None => {}
                        Action::SyscallSummary(owner) => match syscall_command(global, &owner) {
                            Ok(cmd) => {
                                let (tx, rx) = oneshot::channel();
                                let token = global.token.clone();
                                summary = Some(rx);
                                summary_task = Some(tokio::spawn(async move {
                                    let _ = tx.send(syscall_summary(cmd, token).await);
                                }));
                            }
                            Err(why) => state.syscalls = Some(SyscallPane::Failed(why)),
                        },
                    }
                }
                // Resizes and anything else: redraw.
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(anyhow::Error::from(e).context("reading the keyboard")),
                None => break Ok(()),
            },
            refresh = refreshes.recv() => {
                let Some(r) = refresh else { break Err(anyhow::anyhow!("the flow queries stopped")) };
                for (name, why) in &r.failed {
                    state.agent_lost(name, why);
                }
                state.refresh_error = r.failed.first().map(|(n, e)| format!("{n}: {e}"));
                let merged = merge_flow_tables(r.tables, &filter, orb8_flowspec::SortKey::Bytes, None);
                let flows: Vec<FlowRecord> = match &session.directory {
                    Some(d) => d.apply(merged),
                    None => merged,
                };
                let error = state.refresh_error.take();
                state.refresh(flows, r.elapsed);
                state.refresh_error = error;
            }
            item = events.next(), if !events_done => match item {
                Some(Merged::Event { event, .. }) => {
                    if matches!(event.kind, Some(event::Kind::NewFlow(_))) {
                        state.new_flow();
                    }
                }
                Some(Merged::Gap { lost, cause, .. }) => state.lost(cause.stage_name(), cause.reason(), lost),
                Some(Merged::AgentLost { node, error }) => state.agent_lost(&node, &error),
                // Every stream ended: the lost agents are shown; the table keeps refreshing
                // what still answers.
                None => events_done = true,
            },
            pane = pending_summary => {
                summary = None;
                summary_task = None;
                state.syscalls = pane;
            }
            () = interrupt.wait() => break Ok(()),
        }
    };
    refresher.abort();
    if let Some(t) = summary_task {
        // Dropping the child kills it (and its own clean-up runs in it).
        t.abort();
    }
    drop(terminal);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn global(args: &[&str]) -> GlobalArgs {
        let mut argv = vec!["kubectl-orb8"];
        argv.extend_from_slice(args);
        argv.push("top");
        crate::cli::Cli::try_parse_from(argv).unwrap().global
    }

    #[test]
    fn the_syscall_child_targets_the_pod_in_its_cluster() {
        let g = global(&["--context", "prod", "-n", "shop", "--image", "r/agent:1"]);
        let owner = Owner::Pod {
            namespace: "pay".into(),
            name: "ledger-0".into(),
        };
        assert_eq!(
            syscall_command(&g, &owner).unwrap().join(" "),
            "--context prod --agent-namespace orb8-system --image r/agent:1 -n pay trace syscall \
             ledger-0 --duration 5s"
        );
        assert_eq!(scope(&g), "-n shop");
    }

    #[test]
    fn the_syscall_child_targets_a_local_process_by_pid() {
        let g = global(&["--local"]);
        assert_eq!(
            syscall_command(&g, &Owner::Process { pid: 42 })
                .unwrap()
                .join(" "),
            "--local trace syscall --pid 42 --duration 5s"
        );
        assert_eq!(scope(&g), "local");
        assert!(syscall_command(&g, &Owner::None).is_err());
        let two = global(&["--agent", "127.0.0.1:1", "--agent", "127.0.0.1:2"]);
        assert!(syscall_command(&two, &Owner::Process { pid: 1 }).is_err());
    }

    #[test]
    fn keys_map_and_ctrl_c_quits() {
        let k = |code, m| KeyEvent::new(code, m);
        assert_eq!(
            key_of(k(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Key::CtrlC)
        );
        assert_eq!(
            key_of(k(KeyCode::Char('q'), KeyModifiers::NONE)),
            Some(Key::Char('q'))
        );
        assert_eq!(key_of(k(KeyCode::F(1), KeyModifiers::NONE)), None);
    }
}
