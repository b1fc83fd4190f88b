//! The `kubectl orb8` client: reaches orb8 agents (directly with `--agent`, or one started on
//! this host with `--local`), merges what they report and prints it.
//!
//! `main.rs` only calls [`main`]; everything else is here, one module per concern. Pure logic
//! ([`flow`], [`group`], [`enrich`], [`merge`], [`render`]) takes data and returns data;
//! [`transport`], [`local`], [`k8s`] and [`session`] do the I/O with agents.
//!
//! The modules form a stack; each imports only modules below it (`tests/module_stack.rs`
//! checks): [`defaults`], [`image`], [`interrupt`], [`progress`], [`timing`] and [`output`] (the
//! live printers' stdout; both on `progress`) and the
//! model [`flow`] (on `orb8-flowspec`) at the bottom, the grouped view [`group`] on the model;
//! [`drops`] and [`tcp`] (the models of `trace drops` and `trace tcp`) on the model and
//! [`enrich`], [`tcpconn`] (TCP records joined to flow rows) on `tcp`;
//! [`enrich`], [`merge`], [`render`] and [`transport`] on them; [`local`] and [`k8s`] (which
//! implements transport's pod connector) above; [`tui`] (the model and view of `top`) on the
//! model; then [`cli`] (the
//! parsed flags, turned into the plain options the layers below take), [`session`] and
//! [`commands`]; this root, which runs a command line, on top.

#![warn(missing_docs)]

pub mod cli;
pub mod commands;
pub mod defaults;
pub mod drops;
pub mod enrich;
pub mod flow;
pub mod gpu;
pub mod group;
pub mod image;
pub mod interrupt;
pub mod k8s;
pub mod local;
pub mod merge;
pub mod output;
pub mod progress;
pub mod render;
pub mod session;
pub mod tcp;
pub mod tcpconn;
pub mod timing;
pub mod transport;
pub mod tui;

use std::io::{self, BufWriter, Write};
use std::process::ExitCode;

use clap::Parser as _;
use clap::error::ErrorKind;

use crate::cli::{Cli, Command, TraceCommand};
use crate::interrupt::{Interrupt, Interrupted};
use crate::session::Session;

/// Exit code after Ctrl-C interrupted a command before it could print anything.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Parses the command line, runs the command and turns the outcome into an exit code:
/// 0 on success (and on a closed stdout pipe), 1 with one `orb8: ` line on stderr on error.
pub fn main() -> ExitCode {
    let args = cli::hoist_repeatable_globals(std::env::args_os().collect());
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => return clap_exit(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return report(anyhow::Error::from(e).context("starting the async runtime")),
    };
    let result = runtime.block_on(run(cli));
    // Don't wait for blocking tasks (stdin/stdout readers of a child) at exit.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(e),
    }
}

/// Runs a parsed command line against its agents, stopping a local agent on every path.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Completion(args) = &cli.command {
        let mut out = io::stdout().lock();
        out.write_all(&commands::completion::script(args.shell))?;
        out.flush()?;
        return Ok(());
    }
    let interrupt = Interrupt::install();
    if let Command::Cleanup(args) = &cli.command {
        let (client, _) = k8s::client::connect(&cli.global.cluster.access()).await?;
        let mut out = BufWriter::new(io::stdout().lock());
        tokio::select! {
            r = commands::cleanup::run(&client, cli.global.cluster.session.as_deref(), args.dry_run, cli.global.output, &mut out) => r?,
            () = interrupt.wait() => return Err(Interrupted.into()),
        }
        out.flush()?;
        return Ok(());
    }
    let mut global = cli.global.clone();
    let mut traced_pod = None;
    if let Command::Trace(TraceCommand::Syscall(args)) = &cli.command {
        commands::syscall::check(args, &cli.global)?;
        if let Some(pod) = &args.pod {
            // The agent goes only to the pod's node.
            let (client, namespace) = k8s::client::connect(&cli.global.cluster.access()).await?;
            let t = tokio::select! {
                t = k8s::podtarget::lookup(&client, &namespace, pod, args.container.as_deref()) => t?,
                () = interrupt.wait() => return Err(Interrupted.into()),
            };
            if let Some(note) = &t.note {
                progress::warn(note);
            }
            global.cluster.nodes = vec![t.node.clone()];
            global.cluster.selector = None;
            global.cluster.all_namespaces = false;
            traced_pod = Some(t);
        }
    }
    if let Command::Top(_) = &cli.command {
        commands::top::check()?;
    }
    if let Command::Trace(TraceCommand::Dns(args)) = &cli.command {
        commands::dns::prepare(args, &mut global)?;
    }
    let mut gpu_filter = gpu::PodFilter::default();
    if let Command::Gpu(args) = &cli.command {
        gpu_filter = gpu_selection(args, &cli.global, &mut global, &interrupt).await?;
    }
    let require_agents = !matches!(cli.command, Command::Version);
    let deadline = agent_deadline(&cli);
    let session = Session::open(&global, require_agents, deadline, &interrupt).await?;
    let pod = traced_pod.as_ref().map(|t| &t.target);
    let result = run_command(&cli, &session, pod, &gpu_filter, &interrupt).await;
    session.close().await;
    result
}

/// Whether the flags ask for agents in a cluster (neither `--local` nor `--agent`).
fn cluster_mode(global: &cli::GlobalArgs) -> bool {
    !global.local && global.agents.is_empty()
}

/// `gpu`: agent pods mount the kubelet's socket; a POD sends the agent to its node only; the
/// pods whose rows are shown (the POD, the namespace unless -A, everything without a cluster
/// unless -n).
async fn gpu_selection(
    args: &cli::GpuArgs,
    flags: &cli::GlobalArgs,
    global: &mut cli::GlobalArgs,
    interrupt: &Interrupt,
) -> anyhow::Result<gpu::PodFilter> {
    global.cluster.gpu = true;
    if !cluster_mode(flags) {
        if args.pod.is_some() {
            anyhow::bail!(
                "a POD is looked up in cluster mode (drop --local and --agent); without a \
                 cluster, -n NAMESPACE keeps one namespace's pods"
            );
        }
        return Ok(gpu::PodFilter {
            namespace: flags.cluster.namespace.clone(),
            pod: None,
        });
    }
    let access = flags.cluster.access();
    let (client, namespace) = tokio::select! {
        r = k8s::client::connect(&access) => r?,
        () = interrupt.wait() => return Err(Interrupted.into()),
    };
    let Some(pod) = &args.pod else {
        return Ok(gpu::PodFilter {
            namespace: (!flags.cluster.all_namespaces).then_some(namespace),
            pod: None,
        });
    };
    let t = tokio::select! {
        t = k8s::podtarget::lookup(&client, &namespace, pod, None) => t?,
        () = interrupt.wait() => return Err(Interrupted.into()),
    };
    global.cluster.nodes = vec![t.node.clone()];
    global.cluster.selector = None;
    global.cluster.all_namespaces = false;
    Ok(gpu::PodFilter {
        namespace: Some(namespace),
        pod: Some(pod.clone()),
    })
}

/// Names for the pod UIDs of GPU processes: the pods on the agents' nodes (cluster mode); none
/// otherwise, or (said in one line) when they cannot be listed.
async fn gpu_pod_names(global: &cli::GlobalArgs, session: &Session) -> gpu::PodNames {
    if !cluster_mode(global) {
        return gpu::PodNames::new();
    }
    let nodes: Vec<String> = session.agents.iter().map(|a| a.node()).collect();
    let listed = match k8s::client::connect(&global.cluster.access()).await {
        Ok((client, _)) => k8s::podnames::on_nodes(&client, &nodes).await,
        Err(e) => Err(error_line(&e)),
    };
    listed.unwrap_or_else(|e| {
        progress::warn(&format!("GPU processes are shown by pod UID: {e}"));
        gpu::PodNames::new()
    })
}

async fn run_command(
    cli: &Cli,
    session: &Session,
    pod: Option<&orb8_proto::PodTarget>,
    gpu_filter: &gpu::PodFilter,
    interrupt: &Interrupt,
) -> anyhow::Result<()> {
    if let Command::Top(args) = &cli.command {
        // The view owns the terminal: stdout is not locked for it.
        return commands::top::run(session, args, &cli.global, interrupt).await;
    }
    let format = cli.global.output;
    if let Command::Trace(trace) = &cli.command {
        // Live printers: stdout belongs to the output's writer thread.
        let out = output::LiveOutput::stdout();
        let result = match trace {
            TraceCommand::Network(args) => {
                commands::trace::network(session, args, format, interrupt, &out).await
            }
            TraceCommand::Syscall(args) => {
                commands::syscall::run(session, args, pod, format, interrupt, &out).await
            }
            TraceCommand::Drops(args) => {
                commands::drops::run(session, args, format, interrupt, &out).await
            }
            TraceCommand::Tcp(args) => {
                commands::tcp::run(session, args, format, interrupt, &out).await
            }
            TraceCommand::Dns(args) => {
                commands::dns::run(session, args, format, interrupt, &out).await
            }
        };
        return finish_live(out, result).await;
    }
    if let Command::Gpu(args) = &cli.command {
        let names = tokio::select! {
            n = gpu_pod_names(&cli.global, session) => n,
            () = interrupt.wait() => return Err(Interrupted.into()),
        };
        // With --watch a live printer too.
        let out = output::LiveOutput::stdout();
        let result =
            commands::gpu::run(session, args, &names, gpu_filter, format, interrupt, &out).await;
        return finish_live(out, result).await;
    }
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    match &cli.command {
        Command::Status => {
            tokio::select! {
                r = commands::status::run(session, format, &mut out) => r?,
                () = interrupt.wait() => return Err(Interrupted.into()),
            }
        }
        Command::Flows(args) => {
            commands::flows::run(session, args, format, interrupt, &mut out).await?;
        }
        Command::Version => {
            let image = image::agent_image(cli.global.cluster.image.as_deref());
            commands::version::run(session, &image, format, &mut out)?;
        }
        Command::Top(_) => anyhow::bail!("top draws on the terminal"),
        Command::Trace(_) | Command::Gpu(_) => {
            anyhow::bail!("traces and gpu print through their live output")
        }
        Command::Cleanup(_) | Command::Completion(_) => {
            anyhow::bail!("this command does not use agents")
        }
    }
    out.flush()?;
    Ok(())
}

/// Ends a live printer's output after its command, whatever the command's outcome: what was
/// queued is printed or counted (a blocked stdout is not waited for), then the command's error,
/// else the output's (a closed pipe), is the result.
async fn finish_live(out: output::LiveOutput, result: anyhow::Result<()>) -> anyhow::Result<()> {
    let finished = out.finish().await;
    result?;
    finished?;
    Ok(())
}

/// How long cluster agents may live for this command: its collection time plus start-up and a
/// margin, or an hour for commands that run until Ctrl-C. The agents' idle watchdog ends them
/// sooner when the client goes away.
pub fn agent_deadline(cli: &Cli) -> std::time::Duration {
    use std::time::Duration;
    let margin = cli.global.cluster.timeout + Duration::from_secs(120);
    match &cli.command {
        Command::Flows(a) => a.duration + margin,
        Command::Trace(TraceCommand::Network(a)) => {
            a.duration.map_or(Duration::from_secs(3600), |d| d + margin)
        }
        Command::Trace(TraceCommand::Drops(a)) => {
            a.duration.map_or(Duration::from_secs(3600), |d| d + margin)
        }
        Command::Trace(TraceCommand::Tcp(a)) => {
            a.duration.map_or(Duration::from_secs(3600), |d| d + margin)
        }
        Command::Trace(TraceCommand::Dns(a)) => {
            a.duration.map_or(Duration::from_secs(3600), |d| d + margin)
        }
        Command::Top(_) => Duration::from_secs(3600),
        Command::Gpu(a) if a.watch => Duration::from_secs(3600),
        _ => margin,
    }
}

/// Whether an error is a write to a closed pipe (`kubectl orb8 flows | head`).
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// The one line printed for an error (without the `orb8: ` prefix).
pub fn error_line(err: &anyhow::Error) -> String {
    format!("{err:#}").replace(['\n', '\r'], " ")
}

fn report(err: anyhow::Error) -> ExitCode {
    if is_broken_pipe(&err) {
        return ExitCode::SUCCESS;
    }
    let _ = writeln!(io::stderr(), "orb8: {}", error_line(&err));
    if err.is::<Interrupted>() {
        ExitCode::from(EXIT_INTERRUPTED)
    } else {
        ExitCode::FAILURE
    }
}

/// The one line printed for a command-line error: clap's first line without its `error: `.
pub fn clap_error_line(rendered: &str) -> String {
    let first = rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("bad command line");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    format!("{first} (see 'kubectl orb8 --help')")
}

fn clap_exit(e: &clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::FAILURE
        }
        _ => {
            let line = clap_error_line(&e.render().to_string());
            let _ = writeln!(io::stderr(), "orb8: {line}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_pipes_are_recognised_through_context() {
        let err = anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe))
            .context("writing flows");
        assert!(is_broken_pipe(&err));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }

    #[test]
    fn errors_are_one_line() {
        let err = anyhow::anyhow!("a\nb").context("outer");
        assert_eq!(error_line(&err), "outer: a b");
    }

    #[test]
    fn clap_errors_become_one_line() {
        let rendered = "error: invalid value '10x' for '--duration <DURATION>': bad duration\n\nFor more information, try '--help'.\n";
        assert_eq!(
            clap_error_line(rendered),
            "invalid value '10x' for '--duration <DURATION>': bad duration (see 'kubectl orb8 --help')"
        );
    }
}
