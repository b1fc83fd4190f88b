//! The `kubectl-orb8` binary itself, run against fake agents: output formats, merging, errors,
//! help text and closed pipes.
//!
//! Over 600 lines: one scenario per test, all on the same fake-agent set-up; splitting them
//! across files would only repeat it.

use std::io::Read;
use std::process::{Command, Output, Stdio};

use orb8_testkit::fake_agent::{
    FakeAgent, Running, StreamEnd, active_flow_event, flow, gap_event, new_flow_event,
    new_flow_events, serve_tcp,
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_kubectl-orb8");

fn orb8(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("ORB8_TOKEN")
        .env_remove("ORB8_AGENT_BINARY")
        .stdin(Stdio::null());
    cmd
}

fn run(args: &[&str]) -> Output {
    orb8(args).output().expect("kubectl-orb8 runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
}

/// Exit code 1 and exactly one stderr line starting with `orb8: `, which is returned.
fn assert_one_line_error(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {err:?}");
    assert!(lines[0].starts_with("orb8: "), "{err:?}");
    assert!(o.stdout.is_empty(), "nothing on stdout: {}", stdout(o));
    lines[0].to_string()
}

/// Two agents: node-a with flows of 300 and 100 bytes, node-b with 200 and 50 (port 80).
fn two_agents() -> (Running, Running) {
    let mut a = FakeAgent::new("node-a");
    a.flows = vec![flow("node-a", 300, 3, 53), flow("node-a", 100, 1, 53)];
    let mut b = FakeAgent::new("node-b");
    b.flows = vec![flow("node-b", 200, 2, 53), flow("node-b", 50, 5, 80)];
    (serve_tcp(a), serve_tcp(b))
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {}", stdout(o)))
}

#[test]
fn flows_from_two_agents_merge_into_one_json_array() {
    let (a, b) = two_agents();
    let o = run(&[
        "--agent",
        &a.addr,
        "--agent",
        &b.addr,
        "flows",
        "--by",
        "connection",
        "-o",
        "json",
        "--duration",
        "1s",
    ]);
    assert_ok(&o);
    let doc = json(&o);
    let flows = doc.as_array().expect("an array");
    let got: Vec<(&str, u64)> = flows
        .iter()
        .map(|f| {
            (
                f["node"].as_str().expect("node"),
                f["bytes"].as_u64().expect("exact integer bytes"),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("node-a", 300),
            ("node-b", 200),
            ("node-a", 100),
            ("node-b", 50)
        ],
        "merged and sorted by bytes"
    );
    assert_eq!(
        flows[0],
        serde_json::json!({
            "node": "node-a",
            "interface": "eth0",
            "direction": "egress",
            "interface_direction": "egress",
            "interface_role": "uplink",
            "protocol": "udp",
            "src": "10.0.0.1",
            "src_port": 40000,
            "dst": "10.0.0.2",
            "dst_port": 53,
            "fragment": false,
            "packets": 3,
            "bytes": 300,
            "tcp_flags": "",
            "first_seen": "2023-11-14T22:13:20.123456789Z",
            "last_seen": "2023-11-14T22:13:21.000000000Z"
        })
    );
    // The whole table was asked of each agent once, sorted by bytes.
    for agent in [&a, &b] {
        let queries = agent.calls.queries.lock().expect("lock").clone();
        assert_eq!(queries.len(), 1);
        assert_eq!(queries[0].sort, orb8_proto::SortBy::Bytes as i32);
    }
}

#[test]
fn flows_are_grouped_by_peer_and_port_unless_asked_for_connections() {
    let (a, b) = two_agents();
    let o = run(&[
        "--agent",
        &a.addr,
        "--agent",
        &b.addr,
        "flows",
        "-o",
        "json",
        "--duration",
        "0s",
    ]);
    assert_ok(&o);
    let doc = json(&o);
    let rows = doc.as_array().expect("an array");
    let got: Vec<(&str, u64, u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["node"].as_str().expect("node"),
                r["port"].as_u64().expect("port"),
                r["connections"].as_u64().expect("connections"),
                r["bytes"].as_u64().expect("bytes"),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("node-a", 53, 2, 400),
            ("node-b", 53, 1, 200),
            ("node-b", 80, 1, 50)
        ],
        "node-a's two flows fold into one row; sorted by bytes"
    );
    assert_eq!(
        rows[0],
        serde_json::json!({
            "node": "node-a",
            "pod": "10.0.0.1",
            "peer": "10.0.0.2",
            "port": 53,
            "protocol": "udp",
            "direction": "egress",
            "connections": 2,
            "packets": 4,
            "bytes": 400,
            "tcp_flags": "",
            "resets": 0,
            "failed": 0,
            "first_seen": "2023-11-14T22:13:20.123456789Z",
            "last_seen": "2023-11-14T22:13:21.000000000Z"
        })
    );
    // Rows are made on the client: the agents were asked for their whole tables.
    for agent in [&a, &b] {
        let queries = agent.calls.queries.lock().expect("lock").clone();
        assert_eq!(queries[0].limit, 0);
    }
    let o = run(&[
        "--agent",
        &a.addr,
        "--agent",
        &b.addr,
        "flows",
        "-o",
        "json",
        "--duration",
        "0s",
        "--sort",
        "packets",
        "--limit",
        "1",
    ]);
    assert_ok(&o);
    let doc = json(&o);
    let rows = doc.as_array().expect("an array");
    assert_eq!(rows.len(), 1, "--limit counts rows: {doc:#}");
    assert_eq!(
        (rows[0]["node"].as_str(), rows[0]["packets"].as_u64()),
        (Some("node-b"), Some(5)),
        "--sort orders rows"
    );
}

#[test]
fn flows_filters_and_limits_the_merged_table_on_the_client_too() {
    let (a, b) = two_agents();
    let o = run(&[
        "--agent",
        &a.addr,
        "--agent",
        &b.addr,
        "flows",
        "--by",
        "connection",
        "-o",
        "json",
        "--duration",
        "0s",
        "--port",
        "53",
        "--protocol",
        "udp",
        "--cidr",
        "10.0.0.0/24",
        "--direction",
        "egress",
        "--sort",
        "packets",
        "--limit",
        "2",
    ]);
    assert_ok(&o);
    let doc = json(&o);
    let got: Vec<(String, u64)> = doc
        .as_array()
        .expect("array")
        .iter()
        .map(|f| {
            (
                f["node"].as_str().unwrap_or("").to_string(),
                f["packets"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    // node-b's 5-packet flow is on port 80: filtered out although the fake agent sent it.
    assert_eq!(
        got,
        vec![("node-a".to_string(), 3), ("node-b".to_string(), 2)]
    );
    let q = a.calls.queries.lock().expect("lock").clone();
    let filter = q[0].filter.clone().expect("filter sent");
    assert_eq!(filter.ports, vec![53]);
    assert_eq!(filter.protocols, vec![17]);
    assert_eq!(filter.cidrs, vec!["10.0.0.0/24"]);
    // --direction is the observed end's: the client applies it, so agents send every row.
    assert_eq!(filter.direction, orb8_proto::Direction::Unspecified as i32);
    assert_eq!(q[0].limit, 0);
    assert_eq!(q[0].sort, orb8_proto::SortBy::Packets as i32);
}

#[test]
fn flows_as_yaml_and_as_tables() {
    let (a, b) = two_agents();
    let o = run(&[
        "--agent",
        &a.addr,
        "--agent",
        &b.addr,
        "flows",
        "--by",
        "connection",
        "-o",
        "yaml",
        "--duration",
        "0s",
    ]);
    assert_ok(&o);
    let doc: Value = serde_norway::from_slice(&o.stdout).expect("YAML");
    assert_eq!(doc.as_array().map(Vec::len), Some(4));
    assert_eq!(doc[0]["bytes"].as_u64(), Some(300));

    let o = run(&[
        "--agent",
        &a.addr,
        "--agent",
        &b.addr,
        "flows",
        "--duration",
        "0s",
    ]);
    assert_ok(&o);
    let out = stdout(&o);
    let header = out.lines().next().expect("header");
    for col in [
        "LOCAL",
        "PEER",
        "PORT",
        "PROTO",
        "DIRECTION",
        "CONNS",
        "PACKETS",
        "BYTES",
        "FLAGS",
        "RESETS",
        "FAILED",
    ] {
        assert!(header.contains(col), "{header}");
    }
    assert_eq!(out.lines().count(), 4, "three rows: {out}");
    assert!(out.contains("400 B"), "{out}");

    let o = run(&[
        "--agent",
        &a.addr,
        "--agent",
        &b.addr,
        "flows",
        "--by",
        "connection",
        "--duration",
        "0s",
    ]);
    assert_ok(&o);
    let out = stdout(&o);
    let header = out.lines().next().expect("header");
    for col in [
        "NODE",
        "DIRECTION",
        "PROTO",
        "SOURCE",
        "DESTINATION",
        "PACKETS",
        "BYTES",
        "FLAGS",
    ] {
        assert!(header.contains(col), "{header}");
    }
    assert!(!header.contains("INTERFACE"));
    assert_eq!(out.lines().count(), 5);
    assert!(out.contains("300 B"), "{out}");

    let o = run(&[
        "--agent",
        &a.addr,
        "flows",
        "--by",
        "connection",
        "-o",
        "wide",
        "--duration",
        "0s",
    ]);
    assert_ok(&o);
    assert!(
        stdout(&o)
            .lines()
            .next()
            .expect("header")
            .contains("INTERFACE")
    );
}

#[test]
fn status_lists_every_agent() {
    let (a, b) = two_agents();
    let o = run(&[
        "--agent", &a.addr, "--agent", &b.addr, "status", "-o", "json",
    ]);
    assert_ok(&o);
    let doc = json(&o);
    let agents = doc.as_array().expect("array");
    assert_eq!(agents.len(), 2);
    assert_eq!(agents[0]["node"], "node-a");
    assert_eq!(agents[0]["address"], a.addr.as_str());
    assert_eq!(agents[1]["node"], "node-b");
    assert_eq!(agents[0]["active_flows"], 12);
    assert_eq!(agents[0]["drops_total"], 3);
    assert_eq!(agents[0]["drops"][0]["reason"], "ringbuf_full");
    assert_eq!(agents[0]["interfaces"][1]["name"], "veth9");

    let o = run(&["--agent", &a.addr, "--agent", &b.addr, "status"]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.lines().next().expect("header").starts_with("NODE"),
        "{out}"
    );
    assert!(
        out.contains("node-a") && out.contains("node-b") && out.contains("tcx"),
        "{out}"
    );
    let o = run(&["--agent", &a.addr, "status", "-o", "wide"]);
    assert!(stdout(&o).contains("eth0,veth9"), "{}", stdout(&o));
}

#[test]
fn version_with_and_without_agents() {
    let o = run(&["version"]);
    assert_ok(&o);
    assert_eq!(
        stdout(&o),
        format!(
            "Client Version: {v} (protocol {})\nAgent Image: ghcr.io/orb8/orb8-agent:v{v}\n",
            orb8_proto::PROTOCOL_VERSION,
            v = env!("CARGO_PKG_VERSION"),
        )
    );
    let o = run(&[
        "version",
        "--image",
        "registry.test/orb8-agent:dev",
        "-o",
        "json",
    ]);
    assert_ok(&o);
    assert_eq!(
        json(&o)["client"]["agent_image"],
        "registry.test/orb8-agent:dev"
    );
    let (a, _b) = two_agents();
    let o = run(&["--agent", &a.addr, "version", "-o", "json"]);
    assert_ok(&o);
    let doc = json(&o);
    assert_eq!(doc["client"]["protocol"], orb8_proto::PROTOCOL_VERSION);
    assert_eq!(doc["agents"][0]["node"], "node-a");
    assert_eq!(doc["agents"][0]["version"], "0.1.0");
}

#[test]
fn trace_prints_ndjson_with_gaps_and_lost_agents() {
    let mut a = FakeAgent::new("node-a");
    a.events = vec![
        new_flow_event("node-a", 1),
        gap_event("node-a", 2, 4),
        new_flow_event("node-a", 5),
    ];
    let mut b = FakeAgent::new("node-b");
    b.events = vec![new_flow_event("node-b", 1)];
    b.end = StreamEnd::Fail(tonic::Code::Internal, "probe detached".into());
    let (a, b) = (serve_tcp(a), serve_tcp(b));
    let o = run(&[
        "--agent",
        &a.addr,
        "--agent",
        &b.addr,
        "trace",
        "network",
        "-o",
        "json",
        "--duration",
        "1s",
        "--port",
        "53",
    ]);
    assert_ok(&o);
    let lines: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad NDJSON line {l:?}: {e}")))
        .collect();
    let kinds = |node: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l["node"] == node)
            .map(|l| l["event"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(kinds("node-a"), vec!["new_flow", "gap", "gap", "new_flow"]);
    assert_eq!(kinds("node-b"), vec!["new_flow", "agent_lost"]);
    let gaps: Vec<(u64, &str)> = lines
        .iter()
        .filter(|l| l["event"] == "gap")
        .map(|l| {
            (
                l["lost"].as_u64().unwrap_or(0),
                l["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(gaps, vec![(4, "slow_client"), (2, "seq_jump")]);
    let first = lines
        .iter()
        .find(|l| l["event"] == "new_flow")
        .expect("a flow");
    assert_eq!(first["seq"], 1);
    assert_eq!(first["dst_port"], 53);
    assert!(first["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    let lost = lines
        .iter()
        .find(|l| l["event"] == "agent_lost")
        .expect("lost");
    assert_eq!(lost["error"], "Internal: probe detached");
    let err = stderr(&o);
    assert!(
        err.contains("orb8: warning: node-a: 4 events lost"),
        "{err}"
    );
    assert!(
        err.contains("orb8: warning: lost agent node-b: Internal: probe detached"),
        "{err}"
    );
    assert_eq!(
        a.calls.streams.lock().expect("lock")[0]
            .filter
            .clone()
            .expect("filter")
            .ports,
        vec![53]
    );
}

#[test]
fn trace_text_mode_prints_one_line_per_flow() {
    let mut a = FakeAgent::new("node-a");
    a.events = vec![
        active_flow_event("node-a", 1),
        new_flow_event("node-a", 2),
        new_flow_event("node-a", 3),
    ];
    let a = serve_tcp(a);
    let o = run(&[
        "--agent",
        &a.addr,
        "trace",
        "network",
        "--duration",
        "500ms",
    ]);
    assert_ok(&o);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(
        lines[0], "~ 22:13:20.123Z node-a eth0 egress udp 10.0.0.1:40000 -> 10.0.0.2:53 420 B",
        "the already-active flow, marked, with its bytes so far"
    );
    assert!(
        lines[1..].iter().all(|l| l
            .ends_with("node-a eth0 egress udp 10.0.0.1:40000 -> 10.0.0.2:53 60 B")
            && !l.starts_with('~')),
        "{out}"
    );
}

#[test]
fn trace_fails_when_every_agent_is_gone() {
    let mut a = FakeAgent::new("node-a");
    a.end = StreamEnd::Close;
    let a = serve_tcp(a);
    let o = run(&["--agent", &a.addr, "trace", "network"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o)
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("orb8: every agent's event stream ended")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_token_comes_from_the_flag_or_the_environment() {
    let mut fake = FakeAgent::new("node-a");
    fake.token = Some("0123456789abcdef".into());
    let a = serve_tcp(fake);

    let o = run(&["--agent", &a.addr, "--token", "0123456789abcdef", "status"]);
    assert_ok(&o);
    let o = orb8(&["--agent", &a.addr, "status"])
        .env("ORB8_TOKEN", "0123456789abcdef")
        .output()
        .expect("runs");
    assert_ok(&o);
    assert!(
        a.tokens()
            .iter()
            .all(|t| t.as_deref() == Some("Bearer 0123456789abcdef")),
        "{:?}",
        a.tokens()
    );

    let o = run(&[
        "--agent",
        &a.addr,
        "--token",
        "wrong",
        "flows",
        "--duration",
        "0s",
    ]);
    let line = assert_one_line_error(&o);
    assert_eq!(
        line,
        format!(
            "orb8: the agent at {} rejected the token (check --token or ORB8_TOKEN)",
            a.addr
        )
    );
}

#[test]
fn a_protocol_mismatch_is_refused_by_every_command() {
    let mut old = FakeAgent::new("old-node");
    old.status.protocol_version = orb8_proto::PROTOCOL_VERSION - 1;
    let old = serve_tcp(old);
    for cmd in [
        &["status"][..],
        &["flows", "--duration", "0s"],
        &["trace", "network"],
        &["version"],
    ] {
        let mut args = vec!["--agent", old.addr.as_str()];
        args.extend_from_slice(cmd);
        let line = assert_one_line_error(&run(&args));
        assert!(line.ends_with(": upgrade the agent"), "{cmd:?}: {line}");
    }
}

#[test]
fn an_unreachable_agent_is_one_line_naming_it() {
    let (a, _b) = two_agents();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let dead = format!("127.0.0.1:{port}");
    let o = run(&[
        "--agent",
        &a.addr,
        "--agent",
        &dead,
        "flows",
        "--duration",
        "0s",
    ]);
    let line = assert_one_line_error(&o);
    assert!(
        line.starts_with(&format!("orb8: cannot reach agent {dead}: ")),
        "{line}"
    );
}

#[test]
fn bad_flag_values_are_one_line_errors() {
    for (args, needle) in [
        (
            &["--agent", "127.0.0.1:1", "flows", "--cidr", "10.0.0.0/33"][..],
            "--cidr",
        ),
        (
            &["--agent", "127.0.0.1:1", "flows", "--cidr", "10.0.0/8"][..],
            "not an IP address",
        ),
        (
            &["--agent", "127.0.0.1:1", "flows", "--duration", "10x"][..],
            "--duration",
        ),
        (
            &[
                "--agent",
                "127.0.0.1:1",
                "trace",
                "network",
                "--duration",
                "soon",
            ][..],
            "--duration",
        ),
        (
            &[
                "--agent",
                "127.0.0.1:1",
                "--connect-timeout",
                "1y2",
                "status",
            ][..],
            "--connect-timeout",
        ),
        (
            &["--agent", "127.0.0.1:1", "flows", "--protocol", "tcpx"][..],
            "--protocol",
        ),
        (
            &["--agent", "127.0.0.1:1", "flows", "--port", "70000"][..],
            "--port",
        ),
        (&["--agent", "nohost", "status"][..], "host:port"),
        (
            &["--agent", "127.0.0.1:1", "--local", "status"][..],
            "--local",
        ),
        (
            &["--agent", "127.0.0.1:1", "flows", "--bogus"][..],
            "--bogus",
        ),
    ] {
        let line = assert_one_line_error(&run(args));
        assert!(line.contains(needle), "{args:?}: {line}");
    }
}

#[test]
fn without_agents_or_a_cluster_it_says_how_to_get_some() {
    for args in [&["status"][..], &["flows"], &["trace", "network"]] {
        let mut all = vec!["--kubeconfig", "/nonexistent/orb8-kubeconfig"];
        all.extend_from_slice(args);
        let line = assert_one_line_error(&run(&all));
        assert!(
            line.starts_with("orb8: reading kubeconfig /nonexistent/orb8-kubeconfig"),
            "{line}"
        );
    }
    let line = assert_one_line_error(&run(&["--local-arg=--x", "status"]));
    assert_eq!(line, "orb8: --local-arg is only used with --local");
}

fn help(args: &[&str]) -> String {
    let o = run(args);
    assert_ok(&o);
    stdout(&o)
}

#[test]
fn help_documents_every_flag() {
    let global = [
        "--output",
        "-o",
        "--agent",
        "--token",
        "ORB8_TOKEN",
        "--local",
        "--local-arg",
        "--connect-timeout",
        "--mode",
    ];
    let top = help(&["--help"]);
    assert!(top.contains("Usage: kubectl orb8"), "{top}");
    for word in global
        .iter()
        .chain(&["status", "flows", "trace", "version"])
    {
        assert!(top.contains(word), "top-level help lacks {word}: {top}");
    }
    let filters = [
        "--port",
        "--protocol",
        "--ip",
        "--cidr",
        "--direction",
        "--interface",
    ];
    let flows = help(&["flows", "--help"]);
    for word in global
        .iter()
        .chain(&filters)
        .chain(&["--duration", "--sort", "--limit"])
    {
        assert!(flows.contains(word), "flows help lacks {word}: {flows}");
    }
    let trace = help(&["trace", "--help"]);
    assert!(trace.contains("network"), "{trace}");
    let network = help(&["trace", "network", "--help"]);
    for word in global.iter().chain(&filters).chain(&["--duration"]) {
        assert!(
            network.contains(word),
            "trace network help lacks {word}: {network}"
        );
    }
    for cmd in ["status", "version"] {
        let h = help(&[cmd, "--help"]);
        for word in global {
            assert!(h.contains(word), "{cmd} help lacks {word}: {h}");
        }
    }
    let version = help(&["--version"]);
    assert_eq!(
        version,
        format!("kubectl-orb8 {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_closed_stdout_pipe_ends_quietly() {
    let mut fake = FakeAgent::new("node-a");
    fake.flows = (0..20_000u64).map(|i| flow("node-a", i, 1, 53)).collect();
    let a = serve_tcp(fake);
    for format in ["json", "table"] {
        let mut child = orb8(&[
            "--agent",
            &a.addr,
            "flows",
            "-o",
            format,
            "--duration",
            "0s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
        let mut first = [0u8; 64];
        child
            .stdout
            .as_mut()
            .expect("stdout")
            .read_exact(&mut first)
            .expect("some output");
        drop(child.stdout.take()); // like `| head -c 64`
        let o = child.wait_with_output().expect("exits");
        assert_eq!(o.status.code(), Some(0), "{format}: {}", stderr(&o));
        assert_eq!(stderr(&o), "", "{format}: nothing on stderr");
    }
}

#[test]
fn a_closed_stdout_pipe_ends_a_live_trace_quietly() {
    let mut fake = FakeAgent::new("node-a");
    fake.events = new_flow_events("node-a", 20_000);
    fake.end = StreamEnd::Hold;
    let a = serve_tcp(fake);
    for format in ["json", "table"] {
        let mut child = orb8(&["--agent", &a.addr, "trace", "network", "-o", format])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawns");
        let mut first = [0u8; 64];
        child
            .stdout
            .as_mut()
            .expect("stdout")
            .read_exact(&mut first)
            .expect("some output");
        drop(child.stdout.take()); // like `| head -c 64`
        // The stream stays open: only the closed pipe ends the trace.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while child.try_wait().expect("waits").is_none() {
            if std::time::Instant::now() > end {
                let _ = child.kill();
                panic!("{format}: trace network went on after its stdout closed");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let o = child.wait_with_output().expect("exits");
        assert_eq!(o.status.code(), Some(0), "{format}: {}", stderr(&o));
        assert_eq!(stderr(&o), "", "{format}: nothing on stderr");
    }
}

#[cfg(unix)]
#[test]
fn gpu_watch_prints_a_report_per_interval_until_ctrl_c() {
    use std::io::BufRead as _;
    let a = serve_tcp(FakeAgent::new("node-a"));
    let mut child = orb8(&[
        "--agent",
        &a.addr,
        "gpu",
        "--watch",
        "--interval",
        "100ms",
        "-o",
        "json",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawns");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    for n in 0..3 {
        let line = lines.next().expect("a report").expect("reads");
        let doc: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(doc["nodes"][0]["node"], "node-a", "report {n}: {line}");
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().expect("waits").is_none() {
        if std::time::Instant::now() > end {
            let _ = child.kill();
            panic!("gpu --watch went on after Ctrl-C");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = child.wait_with_output().expect("exits");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn gpu_lists_nodes_without_gpus_asks_with_the_interval_and_refuses_a_pod_without_a_cluster() {
    let (a, b) = two_agents();
    let o = run(&["--agent", &a.addr, "--agent", &b.addr, "gpu"]);
    assert_ok(&o);
    assert_eq!(
        stdout(&o),
        "node node-a: no NVIDIA driver on this node\nnode node-b: no NVIDIA driver on this node\n"
    );
    let o = run(&[
        "--agent",
        &a.addr,
        "gpu",
        "-o",
        "json",
        "--interval",
        "750ms",
    ]);
    assert_ok(&o);
    let doc = json(&o);
    assert_eq!(doc["nodes"][0]["node"], "node-a");
    assert_eq!(
        doc["nodes"][0]["unavailable"],
        "no NVIDIA driver on this node"
    );
    assert_eq!(
        (
            doc["gpus"].as_array().map(Vec::len),
            doc["pods"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0))
    );
    let windows: Vec<u32> = a
        .calls
        .gpus
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.sample_window_ms)
        .collect();
    assert_eq!(
        windows,
        vec![2000, 750],
        "the default interval, then --interval"
    );
    let o = run(&["--agent", &a.addr, "status"]);
    assert!(
        stdout(&o).ends_with("GPU node-a: no NVIDIA driver on this node\n"),
        "{}",
        stdout(&o)
    );
    let line = assert_one_line_error(&run(&["--agent", &a.addr, "gpu", "train-0"]));
    assert!(
        line.contains("a POD is looked up in cluster mode"),
        "{line}"
    );
}

#[test]
fn trace_dns_prints_each_exchange_once_and_summarises() {
    // Two agents report the same canned exchanges (the client's node and the server's): shown once.
    let (a, b) = (
        serve_tcp(FakeAgent::new("node-a")),
        serve_tcp(FakeAgent::new("node-a")),
    );
    let o = run(&[
        "--agent",
        &a.addr,
        "--agent",
        &b.addr,
        "trace",
        "dns",
        "--duration",
        "500ms",
    ]);
    assert_ok(&o);
    // Whichever agent's copy came first names the node (`node-a@ADDR`: two agents say node-a).
    let without_node: Vec<String> = stdout(&o)
        .lines()
        .map(|l| {
            let mut w: Vec<&str> = l.split(' ').collect();
            assert!(w[1].starts_with("node-a@"), "{l}");
            w.remove(1);
            w.join(" ")
        })
        .collect();
    assert_eq!(
        without_node,
        vec![
            "22:13:20.000Z udp 10.0.0.5:40000 -> 10.96.0.10:53 A api.example.com NOERROR 2.000ms 203.0.113.9",
            "22:13:20.000Z udp 10.0.0.5:40001 -> 10.96.0.10:53 AAAA nope.example.com NXDOMAIN 1.000ms",
            "22:13:20.000Z udp 10.0.0.5:40002 -> 10.96.0.10:53 A slow.example.com TIMEOUT",
        ]
    );
    let o = run(&[
        "--agent",
        &a.addr,
        "trace",
        "dns",
        "--duration",
        "500ms",
        "-o",
        "json",
    ]);
    assert_ok(&o);
    let lines: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["answers"][0]["data"], "203.0.113.9");
    assert_eq!(lines[2]["timeout"], true);
    let o = run(&[
        "--agent",
        &a.addr,
        "trace",
        "dns",
        "--duration",
        "500ms",
        "--summary",
    ]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.starts_with("CLIENT    NAME"), "{out}");
    assert!(
        out.contains("10.0.0.5  slow.example.com  TIMEOUT   1      -"),
        "{out}"
    );
    let o = run(&["--agent", &a.addr, "trace", "dns", "--dns-port", "5353"]);
    assert!(assert_one_line_error(&o).contains("--dns-port is given to the agents orb8 starts"));
}
