//! `cleanup`: agent pods that outlived their session (a killed client), found by label and
//! deleted (`--dry-run` only lists them).

use std::io::Write;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};

use crate::k8s::lifecycle::{self, Leftover};
use crate::render::OutputFormat;

/// Lists leftover agent pods in every namespace (only `session`'s, when given) and, unless
/// `dry_run`, deletes them.
pub async fn run(
    client: &Client,
    session: Option<&str>,
    dry_run: bool,
    format: OutputFormat,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let leftovers = lifecycle::list_leftovers(client, session)
        .await
        .map_err(|e| anyhow::anyhow!(lifecycle::api_error("listing agent pods", &e)))?;
    let mut failed = Vec::new();
    if !dry_run {
        for l in &leftovers {
            let api: Api<Pod> = Api::namespaced(client.clone(), &l.namespace);
            if let Err(e) = lifecycle::delete_pod(&api, &l.name, Duration::from_secs(10)).await {
                failed.push(format!("{}/{}: {e}", l.namespace, l.name));
            }
        }
    }
    render(&leftovers, dry_run, format, out)?;
    if !failed.is_empty() {
        anyhow::bail!("could not delete {}", failed.join("; "));
    }
    Ok(())
}

fn render(
    leftovers: &[Leftover],
    dry_run: bool,
    format: OutputFormat,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let action = if dry_run { "would delete" } else { "deleted" };
    match format {
        OutputFormat::Json | OutputFormat::Yaml => {
            let items: Vec<serde_json::Value> = leftovers
                .iter()
                .map(|l| {
                    serde_json::json!({"namespace": l.namespace, "pod": l.name, "node": l.node,
                        "session": l.session, "phase": l.phase, "action": action})
                })
                .collect();
            if format == OutputFormat::Json {
                serde_json::to_writer_pretty(&mut *out, &items)?;
                writeln!(out)?;
            } else {
                out.write_all(serde_norway::to_string(&items)?.as_bytes())?;
            }
        }
        OutputFormat::Table | OutputFormat::Wide => {
            if leftovers.is_empty() {
                writeln!(out, "no orb8 agent pods found")?;
            }
            for l in leftovers {
                writeln!(
                    out,
                    "{action} {}/{} (node {}, session {}, {})",
                    l.namespace, l.name, l.node, l.session, l.phase
                )?;
            }
        }
    }
    Ok(())
}
