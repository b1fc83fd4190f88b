//! `kubectl orb8 gpu`: asks every agent for its GPUs at once, names the pods behind GPU
//! processes (cluster mode), joins everything into one report and prints it; with `--watch`,
//! again every `--interval` until Ctrl-C.

use std::io::Write;
use std::time::Duration;

use orb8_proto::GetGpusResponse;

use crate::cli::GpuArgs;
use crate::gpu::{self, PodFilter, PodNames};
use crate::interrupt::Interrupt;
use crate::output::LiveOutput;
use crate::render::{self, OutputFormat};
use crate::session::Session;

/// One round: every agent's answer, by display name. An agent that cannot answer (an older
/// one without GetGpus, one that went away) is listed with the reason instead of failing the
/// others.
pub async fn ask(session: &Session, window: Duration) -> Vec<(String, GetGpusResponse)> {
    let answers =
        futures::future::join_all(session.agents.iter().map(|a| a.get_gpus(window))).await;
    session
        .names
        .iter()
        .zip(answers)
        .map(|(name, r)| {
            let resp = r.unwrap_or_else(|e| GetGpusResponse {
                node: name.clone(),
                unavailable: format!("GetGpus failed: {e}"),
                ..Default::default()
            });
            (name.clone(), resp)
        })
        .collect()
}

/// Runs the command: one report, or one per `--interval` with `--watch` until Ctrl-C.
/// `names` turns pod UIDs into names (empty without a cluster); `filter` keeps the selected
/// pods' rows.
pub async fn run(
    session: &Session,
    args: &GpuArgs,
    names: &PodNames,
    filter: &PodFilter,
    format: OutputFormat,
    interrupt: &Interrupt,
    out: &LiveOutput,
) -> anyhow::Result<()> {
    loop {
        let answers = tokio::select! {
            a = ask(session, args.interval) => a,
            () = interrupt.wait() => return Ok(()),
        };
        let report = gpu::report(&answers, names, filter);
        let mut text = Vec::new();
        if args.watch && matches!(format, OutputFormat::Table | OutputFormat::Wide) {
            writeln!(
                text,
                "# {}",
                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            )?;
        }
        render::gpu::write(&mut text, format, &report, args.watch)?;
        let text = String::from_utf8(text)?;
        if !args.watch {
            out.print_summary(text)?;
            return Ok(());
        }
        // Each report is one record: a slow stdout leaves whole reports out, counted.
        out.print(text)?;
        tokio::select! {
            () = tokio::time::sleep(args.interval) => {}
            () = interrupt.wait() => return Ok(()),
        }
    }
}
