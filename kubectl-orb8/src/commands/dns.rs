//! `kubectl orb8 trace dns`: the DNS exchanges every agent pairs (query and response, or a
//! timeout), one line each, or with `--summary` counted per (client, name, response code) with
//! latency percentiles when the trace ends (--duration or Ctrl-C).
//!
//! In cluster mode both ends are named (`shop/checkout`, `svc:kube-system/kube-dns`), only
//! exchanges whose client is a selected pod are kept (every client when nodes were selected),
//! and an exchange reported by two agents (the client's node and the server's) is shown once.

use std::collections::{HashSet, VecDeque};
use std::time::SystemTime;

use futures::StreamExt as _;
use orb8_proto::{DnsExchange, dns_trace_event};

use crate::cli::{GlobalArgs, TraceDnsArgs};
use crate::enrich::Directory;
use crate::flow::system_time;
use crate::interrupt::Interrupt;
use crate::merge::{GapCause, Merged, merge_streams};
use crate::output::LiveOutput;
use crate::progress::warn;
use crate::render::dns::{DnsLine, DnsRecord, Summary, summary_table, text_line};
use crate::render::{GapLine, LineFormat, OutputFormat, json, serialise, value_record, yaml};
use crate::session::Session;
use crate::timing::Step;

/// Exchanges remembered to show one reported by two agents once.
const SEEN: usize = 4096;

/// Said when `--dns-port` cannot reach the agents.
pub const DNS_PORT_NEEDS_OWN_AGENTS: &str = "--dns-port is given to the agents orb8 starts \
     (--local, ephemeral pods); agents reached with --agent watch the ports they were started \
     with (53, and orb8-agent --dns-port)";

/// Checks the flags before any agent is started, and hands `--dns-port` to the agents this
/// command starts (the local one, ephemeral pods).
pub fn prepare(args: &TraceDnsArgs, global: &mut GlobalArgs) -> anyhow::Result<()> {
    if args.dns_ports.is_empty() {
        return Ok(());
    }
    if !global.agents.is_empty() {
        anyhow::bail!(DNS_PORT_NEEDS_OWN_AGENTS);
    }
    if args.dns_ports.iter().filter(|p| **p != 53).count() > MAX_EXTRA_PORTS {
        anyhow::bail!("--dns-port: at most {MAX_EXTRA_PORTS} ports besides 53");
    }
    global
        .local_args
        .extend(args.dns_ports.iter().map(|p| format!("--dns-port={p}")));
    global.cluster.dns_ports = args.dns_ports.clone();
    Ok(())
}

/// Ports an agent parses as DNS besides 53 (`orb8-agent --dns-port`).
const MAX_EXTRA_PORTS: usize = 7;

/// What identifies one exchange whichever agent reports it.
type ExchangeKey = (u32, Vec<u8>, u32, Vec<u8>, u32, u32, String, String, bool);

fn key(x: &DnsExchange) -> ExchangeKey {
    (
        x.protocol,
        x.client_addr.clone(),
        x.client_port,
        x.server_addr.clone(),
        x.server_port,
        x.id,
        x.name.clone(),
        x.qtype.clone(),
        x.timeout,
    )
}

/// Shows each exchange once: remembers the last [`SEEN`] exchanges.
#[derive(Debug, Default)]
pub struct Dedup {
    seen: HashSet<ExchangeKey>,
    order: VecDeque<ExchangeKey>,
}

impl Dedup {
    /// Whether `x` is new (and remembers it).
    pub fn first(&mut self, x: &DnsExchange) -> bool {
        let k = key(x);
        if !self.seen.insert(k.clone()) {
            return false;
        }
        self.order.push_back(k);
        if self.order.len() > SEEN
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }
}

/// Names the ends of an exchange from the cluster's directory; `None` when its client is not
/// a pod the command selected.
pub fn name(mut r: DnsRecord, dir: &Directory) -> Option<DnsRecord> {
    let at = system_time(r.exchange.query_unix_nanos).unwrap_or_else(SystemTime::now);
    let client = r.client().map(|ip| dir.name_of(ip, at));
    if let Some(sel) = &dir.selected {
        match &client {
            Some(crate::flow::Endpoint::Pod { namespace, name })
                if sel.contains(&(namespace.clone(), name.clone())) => {}
            _ => return None,
        }
    }
    r.client_name = client;
    r.server_name = r.server().map(|ip| dir.name_of(ip, at));
    Some(r)
}

/// Runs `trace dns` until `--duration`, Ctrl-C, or every agent is gone (an error).
pub async fn run(
    session: &Session,
    args: &TraceDnsArgs,
    format: OutputFormat,
    interrupt: &Interrupt,
    out: &LiveOutput,
) -> anyhow::Result<()> {
    let opened = futures::future::join_all(session.agents.iter().map(|a| a.trace_dns())).await;
    let mut streams = Vec::with_capacity(opened.len());
    for (name, stream) in session.names.iter().zip(opened) {
        streams.push((name.clone(), stream?));
    }
    let agents = streams.len();
    let mut merged = merge_streams(streams);
    let stop = interrupt.wait_or_after(args.duration);
    tokio::pin!(stop);
    if !args.dns_ports.is_empty() && session.modes.contains(&"persistent") {
        warn(
            "always-on agents keep their own DNS ports: --dns-port reaches only the agents this command starts",
        );
    }
    let lines = LineFormat::from(format);
    let mut dedup = Dedup::default();
    let mut summary = Summary::default();
    let mut lost_agents = 0;
    loop {
        let item = tokio::select! {
            item = merged.next() => item,
            () = &mut stop => break,
        };
        match item {
            Some(Merged::Event { node, event }) => {
                session.timing.mark(&node, Step::FirstAnswer);
                let Some(dns_trace_event::Kind::Exchange(x)) = event.kind else {
                    continue;
                };
                if !dedup.first(&x) {
                    continue;
                }
                let record = DnsRecord {
                    node,
                    exchange: x,
                    client_name: None,
                    server_name: None,
                };
                let record = match &session.directory {
                    Some(d) => match name(record, &d.snapshot()) {
                        Some(r) => r,
                        None => continue,
                    },
                    None => record,
                };
                if args.summary {
                    summary.add(&record);
                    continue;
                }
                let line = match lines {
                    LineFormat::Text => text_line(&record),
                    _ => serialise(lines, &DnsLine::from(&record))?,
                };
                out.print(crate::render::record(lines, &line))?;
            }
            Some(Merged::Gap { node, lost, cause }) => {
                warn(&gap_text(&node, lost, &cause));
                if !args.summary && lines != LineFormat::Text {
                    out.print(value_record(lines, &GapLine::new(&node, lost, &cause))?)?;
                }
            }
            Some(Merged::AgentLost { node, mut error }) => {
                lost_agents += 1;
                if let Some(last) = session.local_stderr_line() {
                    error = format!("{error} (agent said: {last})");
                }
                warn(&format!("lost agent {node}: {error}"));
            }
            None => break,
        }
    }
    if args.summary {
        let rows = summary.rows();
        match format {
            OutputFormat::Table | OutputFormat::Wide => {
                let table = summary_table(&rows);
                if !table.is_empty() {
                    out.print_summary(format!("{table}\n"))?;
                }
            }
            OutputFormat::Json => out.print_summary(format!("{}\n", json::to_string(&rows)?))?,
            OutputFormat::Yaml => out.print_summary(yaml::to_string(&rows)?)?,
        }
    }
    if lost_agents == agents {
        anyhow::bail!(
            "every agent's DNS stream ended ({agents} agent{})",
            if agents == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

fn gap_text(node: &str, lost: u64, cause: &GapCause) -> String {
    format!(
        "{node}: {lost} DNS exchanges lost ({} stage, {})",
        cause.stage_name(),
        cause.reason()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::PodEntry;

    fn exchange(port: u32) -> DnsExchange {
        DnsExchange {
            protocol: 17,
            client_addr: vec![10, 1, 0, 5],
            client_port: port,
            server_addr: vec![10, 96, 0, 10],
            server_port: 53,
            id: 9,
            name: "api.example.com".into(),
            qtype: "A".into(),
            rcode: "NOERROR".into(),
            ..Default::default()
        }
    }

    #[test]
    fn two_agents_show_an_exchange_once() {
        let mut d = Dedup::default();
        assert!(d.first(&exchange(40000)));
        assert!(!d.first(&exchange(40000)), "the second agent's copy");
        assert!(d.first(&exchange(40001)), "another client port");
        let mut timeout = exchange(40000);
        timeout.timeout = true;
        assert!(d.first(&timeout));
        for p in 0..SEEN as u32 {
            d.first(&exchange(p + 50000));
        }
        assert!(d.first(&exchange(40000)), "forgotten after SEEN others");
    }

    #[test]
    fn cluster_mode_names_ends_and_keeps_selected_clients() {
        let mut dir = Directory::default();
        dir.upsert_pod(PodEntry {
            namespace: "shop".into(),
            name: "checkout".into(),
            ips: vec!["10.1.0.5".parse().unwrap()],
            host_network: false,
            created: None,
            deleted: None,
        });
        dir.services.insert(
            "10.96.0.10".parse().unwrap(),
            ("kube-system".into(), "kube-dns".into()),
        );
        let rec = DnsRecord {
            node: "n".into(),
            exchange: exchange(40000),
            client_name: None,
            server_name: None,
        };
        let named = name(rec.clone(), &dir).expect("no selection keeps every client");
        assert_eq!(
            (
                named.client_name.unwrap().label(),
                named.server_name.unwrap().label()
            ),
            ("shop/checkout".into(), "svc:kube-system/kube-dns".into())
        );
        dir.selected = Some([("shop".to_string(), "web".to_string())].into());
        assert_eq!(name(rec.clone(), &dir), None, "not a selected pod");
        dir.selected = Some([("shop".to_string(), "checkout".to_string())].into());
        assert!(name(rec, &dir).is_some());
    }

    fn parse(line: &[&str]) -> crate::cli::Cli {
        use clap::Parser as _;
        crate::cli::Cli::try_parse_from(line).unwrap()
    }

    fn prepared(line: &[&str]) -> anyhow::Result<GlobalArgs> {
        let cli = parse(line);
        let crate::cli::Command::Trace(crate::cli::TraceCommand::Dns(args)) = &cli.command else {
            panic!("parsed {:?}", cli.command);
        };
        let mut global = cli.global.clone();
        prepare(args, &mut global).map(|()| global)
    }

    #[test]
    fn dns_ports_go_to_the_agents_this_command_starts() {
        let direct = prepared(&[
            "kubectl-orb8",
            "--agent",
            "127.0.0.1:1",
            "trace",
            "dns",
            "--dns-port",
            "5353",
        ]);
        assert_eq!(direct.unwrap_err().to_string(), DNS_PORT_NEEDS_OWN_AGENTS);
        let local = prepared(&[
            "kubectl-orb8",
            "--local",
            "trace",
            "dns",
            "--dns-port",
            "5353",
        ])
        .unwrap();
        assert_eq!(local.local_args, vec!["--dns-port=5353".to_string()]);
        let cluster = prepared(&["kubectl-orb8", "trace", "dns", "--dns-port", "5353"]).unwrap();
        assert_eq!(cluster.cluster_options().dns_ports, vec![5353]);
        let mut many = vec!["kubectl-orb8", "trace", "dns"];
        let ports: Vec<String> = (1..=8).map(|p| p.to_string()).collect();
        for p in &ports {
            many.extend(["--dns-port", p]);
        }
        assert!(
            prepared(&many)
                .unwrap_err()
                .to_string()
                .contains("at most 7")
        );
        let none = prepared(&["kubectl-orb8", "--agent", "127.0.0.1:1", "trace", "dns"]).unwrap();
        assert!(none.local_args.is_empty());
    }
}
