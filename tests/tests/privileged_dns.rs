//! Privileged end-to-end: `kubectl-orb8 trace dns` against a running agent (`orb8-agent serve`
//! in a node namespace the test creates, `--dns-port 5353 --dns-timeout 3s`) reports each DNS
//! exchange between two of the test's pods exactly once (every message crosses two watched
//! veths), with the name, type, response code, answers and latency the test's own DNS server
//! gave: A, AAAA over IPv6, NXDOMAIN, an answer over TCP (length-prefixed), one on the extra
//! port, and a query the server never answers (a timeout). `--summary -o json` counts them per
//! (client, name, code).

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{IpAddr, TcpListener, TcpStream, UdpSocket},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use orb8_testkit::*;
use serde_json::Value;

mod serve_agent;
use serve_agent::ServeAgent;

const TOKEN: &str = "e2e-token-dns0123456789abcdef012";
/// How long the test's DNS server waits before it answers.
const DELAY: Duration = Duration::from_millis(30);

/// The test's DNS server's answer to `q`: `None` for `never.test`.
fn answer(q: &Message) -> Option<Message> {
    let query = q.queries.first()?;
    let name = query.name.to_ascii();
    let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    r.add_queries(q.queries.clone());
    let owner = query.name.clone();
    match (name.as_str(), query.query_type) {
        ("never.test.", _) => return None,
        ("nx.test.", _) => r.metadata.response_code = ResponseCode::NXDomain,
        (_, RecordType::AAAA) => {
            r.add_answer(Record::from_rdata(
                owner,
                60,
                RData::AAAA(AAAA("2001:db8::7".parse().unwrap())),
            ));
        }
        _ => {
            r.add_answer(Record::from_rdata(
                owner,
                60,
                RData::A(A("192.0.2.7".parse().unwrap())),
            ));
        }
    }
    Some(r)
}

/// The DNS server in `ns`: UDP on [::]:53 and [::]:5353, TCP on [::]:53, each query answered
/// after [`DELAY`], until `stop`.
fn dns_server(ns: &NetNs, stop: Arc<AtomicBool>) -> Vec<thread::JoinHandle<()>> {
    let mut out = Vec::new();
    for port in [53u16, 5353] {
        let stop = stop.clone();
        out.push(spawn_in(ns, move |ready| {
            let s = UdpSocket::bind(("::", port)).expect("bind udp");
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            ready.send(()).expect("ready");
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, from)) = s.recv_from(&mut buf) else {
                    continue;
                };
                let q = Message::from_vec(&buf[..n]).expect("a DNS query");
                if let Some(r) = answer(&q) {
                    thread::sleep(DELAY);
                    s.send_to(&r.to_vec().unwrap(), from).expect("send answer");
                }
            }
        }));
    }
    out.push(spawn_in(ns, move |ready| {
        let l = TcpListener::bind(("::", 53)).expect("bind tcp");
        l.set_nonblocking(true).unwrap();
        ready.send(()).expect("ready");
        while !stop.load(Ordering::Relaxed) {
            let Ok((mut c, _)) = l.accept() else {
                thread::sleep(Duration::from_millis(10));
                continue;
            };
            c.set_nonblocking(false).unwrap();
            let mut len = [0u8; 2];
            c.read_exact(&mut len).expect("length");
            let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
            c.read_exact(&mut body).expect("query");
            let r = answer(&Message::from_vec(&body).expect("a DNS query")).expect("answered");
            let b = r.to_vec().unwrap();
            thread::sleep(DELAY);
            // Length and message in one write, as resolvers do (one segment: the agent does
            // not reassemble TCP streams).
            c.write_all(&[&(b.len() as u16).to_be_bytes()[..], &b].concat())
                .unwrap();
        }
    }));
    out
}

fn query(id: u16, name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.to_vec().unwrap()
}

/// Asks `server` over UDP from `ns`; waits for the answer when `answered`.
fn ask_udp(ns: &NetNs, server: String, id: u16, name: &'static str, t: RecordType, answered: bool) {
    ns.run_in(move || {
        let bind = if server.starts_with('[') {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        };
        let s = UdpSocket::bind(bind).expect("bind client");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.send_to(&query(id, name, t), &server).expect("send query");
        if answered {
            let mut buf = [0u8; 1500];
            let n = s.recv(&mut buf).expect("an answer");
            assert_eq!(Message::from_vec(&buf[..n]).unwrap().metadata.id, id);
        }
    })
}

/// A running `kubectl-orb8 trace dns` against `agent`, its stdout lines read on a thread.
struct Trace {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    got: Vec<String>,
}

impl Trace {
    fn start(agent: &ServeAgent, extra: &[&str]) -> Trace {
        let mut child = Command::new(workspace_bin("kubectl-orb8"))
            .args(["--agent", &format!("unix:{}", agent.socket)])
            .args(["--token", TOKEN, "trace", "dns"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning kubectl-orb8");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Trace {
            child,
            lines,
            got: Vec::new(),
        }
    }

    fn json(&self) -> Vec<Value> {
        self.got
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
            .collect()
    }

    /// Waits (up to 20 s) until `pred` holds for the lines so far.
    fn wait_until(&mut self, what: &str, pred: impl Fn(&[Value]) -> bool) {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if pred(&self.json()) {
                return;
            }
            assert!(
                Instant::now() < end,
                "the trace never showed {what}: {:#?}",
                self.got
            );
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.got.push(l);
            }
        }
    }

    /// Stops the trace like Ctrl-C does and returns every line it printed.
    fn stop(mut self) -> Vec<String> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().expect("waiting for kubectl-orb8");
        assert!(status.success(), "kubectl-orb8 trace dns failed: {status}");
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.got.push(l);
        }
        self.got
    }
}

/// Sends `warm.test` queries until the trace shows one: from then on its stream is open.
fn warm_up(trace: &mut Trace, ns: &NetNs, server: &str, show: impl Fn(&[Value]) -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    for id in 1000u16.. {
        ask_udp(
            ns,
            server.to_string(),
            id,
            "warm.test.",
            RecordType::A,
            true,
        );
        let seen = Instant::now() + Duration::from_millis(300);
        while Instant::now() < seen {
            if let Ok(l) = trace.lines.recv_timeout(Duration::from_millis(50)) {
                trace.got.push(l);
            }
        }
        if show(&trace.json()) {
            return;
        }
        assert!(Instant::now() < end, "the trace never showed warm.test");
    }
}

/// The agent's DNS counters (`status -o json`) once it has read every message the kernel
/// handed over, checked against the conservation laws of this test's traffic: every message
/// crosses two watched veths, so an answered exchange is 4 messages (2 duplicates), a timed-out
/// one 2 (1 duplicate); nothing unparsed, lost, cut, late or unmatched; one timeout.
fn check_dns_counters(agent: &ServeAgent) {
    let end = Instant::now() + Duration::from_secs(10);
    let dns = loop {
        let out = Command::new(workspace_bin("kubectl-orb8"))
            .args(["--agent", &format!("unix:{}", agent.socket)])
            .args(["--token", TOKEN, "status", "-o", "json"])
            .output()
            .expect("status");
        let st: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        let dns = st[0]["dns"].clone();
        if dns["dns_messages"] == dns["dns_messages_read"] {
            break dns;
        }
        assert!(
            Instant::now() < end,
            "the agent never read every message: {dns}"
        );
        thread::sleep(Duration::from_millis(50));
    };
    let n = |k: &str| dns[k].as_u64().unwrap_or_else(|| panic!("no {k} in {dns}"));
    for k in [
        "dns_truncated",
        "dns_ringbuf_full",
        "dns_load_failed",
        "dns_unparsed_truncated",
        "dns_unparsed_partial",
        "dns_unparsed_malformed",
        "dns_unparsed_no_question",
        "dns_late_responses",
        "dns_unmatched",
        "dns_pending_full",
    ] {
        assert_eq!(n(k), 0, "{k}: {dns}");
    }
    let (exchanges, timeouts) = (n("dns_exchanges"), n("dns_timeouts"));
    assert_eq!(timeouts, 1, "{dns}");
    let answered = exchanges - timeouts;
    assert_eq!(n("dns_messages_read"), 4 * answered + 2 * timeouts, "{dns}");
    assert_eq!(n("dns_duplicates"), 2 * answered + timeouts, "{dns}");
}

fn by_name<'a>(lines: &'a [Value], name: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["name"] == name).collect()
}

#[test]
fn privileged_trace_dns_pairs_each_exchange_once() {
    require_root();
    let topo = Topology::new(2);
    let (client, server) = (&topo.pods[0], &topo.pods[1]);
    for p in [client, server] {
        topo.node.wait_link_ready(&p.host_if);
        p.ns.wait_link_ready("eth0");
    }
    let agent = ServeAgent::start_with(
        &topo.node,
        "node-d",
        TOKEN,
        &["--dns-port", "5353", "--dns-timeout", "3s"],
    );
    wait_attached(&topo.node, &client.host_if);
    wait_attached(&topo.node, &server.host_if);
    let stop = Arc::new(AtomicBool::new(false));
    let servers = dns_server(&server.ns, stop.clone());
    let s4 = format!("{}:53", server.ip4);
    let s6 = format!("[{}]:53", server.ip6);

    let mut trace = Trace::start(&agent, &["-o", "json"]);
    warm_up(&mut trace, &client.ns, &s4, |l| {
        !by_name(l, "warm.test").is_empty()
    });

    // IPv6 neighbours resolved before the exchange whose latency is checked.
    ask_udp(
        &client.ns,
        s6.clone(),
        999,
        "warm.test.",
        RecordType::AAAA,
        true,
    );
    ask_udp(&client.ns, s4.clone(), 1, "a.test.", RecordType::A, true);
    ask_udp(
        &client.ns,
        s6.clone(),
        2,
        "v6.test.",
        RecordType::AAAA,
        true,
    );
    ask_udp(&client.ns, s4.clone(), 3, "nx.test.", RecordType::A, true);
    ask_udp(
        &client.ns,
        s4.clone(),
        4,
        "never.test.",
        RecordType::A,
        false,
    );
    ask_udp(
        &client.ns,
        format!("{}:5353", server.ip4),
        5,
        "alt.test.",
        RecordType::A,
        true,
    );
    let tcp_server = s4.clone();
    let tcp_port = client.ns.run_in(move || {
        let mut c = TcpStream::connect(&tcp_server).expect("connect");
        let q = query(6, "tcp.test.", RecordType::A);
        c.write_all(&[&(q.len() as u16).to_be_bytes()[..], &q].concat())
            .unwrap();
        let mut len = [0u8; 2];
        c.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
        c.read_exact(&mut body).unwrap();
        assert_eq!(Message::from_vec(&body).unwrap().metadata.id, 6);
        c.local_addr().unwrap().port()
    });
    trace.wait_until("every exchange and the timeout", |l| {
        [
            "a.test",
            "v6.test",
            "nx.test",
            "alt.test",
            "tcp.test",
            "never.test",
        ]
        .iter()
        .all(|n| !by_name(l, n).is_empty())
    });
    // A second copy of any exchange would come within the agent's next read: give it time.
    thread::sleep(Duration::from_millis(500));
    check_dns_counters(&agent);
    let lines: Vec<Value> = trace
        .stop()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    let one = |name: &str| {
        let got = by_name(&lines, name);
        assert_eq!(got.len(), 1, "{name} once: {got:#?}");
        got[0].clone()
    };
    let answers = |l: &Value| -> Vec<(String, String)> {
        l["answers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["type"].as_str().unwrap().into(),
                    a["data"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let latency_ok = |l: &Value| {
        let ms = l["latency_ms"].as_f64().unwrap();
        // At least the server's delay; the upper bound is generous for a loaded machine.
        assert!(
            ms >= DELAY.as_secs_f64() * 1000.0 && ms < 2000.0,
            "latency {ms} ms: {l}"
        );
    };
    let end = |v: &Value| -> (IpAddr, u64) {
        (
            v["addr"].as_str().unwrap().parse().unwrap(),
            v["port"].as_u64().unwrap(),
        )
    };
    let c4: IpAddr = client.ip4.parse().unwrap();
    let c6: IpAddr = client.ip6.parse().unwrap();

    let a = one("a.test");
    assert_eq!(
        (
            a["protocol"].as_str(),
            a["qtype"].as_str(),
            a["rcode"].as_str()
        ),
        (Some("udp"), Some("A"), Some("NOERROR"))
    );
    assert_eq!(end(&a["client"]).0, c4);
    assert_eq!(end(&a["server"]), (server.ip4.parse().unwrap(), 53));
    assert_eq!(a["id"], 1);
    assert_eq!(answers(&a), vec![("A".into(), "192.0.2.7".into())]);
    latency_ok(&a);

    let v6 = one("v6.test");
    assert_eq!(
        (v6["qtype"].as_str(), v6["rcode"].as_str()),
        (Some("AAAA"), Some("NOERROR"))
    );
    assert_eq!(end(&v6["client"]).0, c6);
    assert_eq!(end(&v6["server"]), (server.ip6.parse().unwrap(), 53));
    assert_eq!(answers(&v6), vec![("AAAA".into(), "2001:db8::7".into())]);
    latency_ok(&v6);

    let nx = one("nx.test");
    assert_eq!(nx["rcode"], "NXDOMAIN");
    assert!(answers(&nx).is_empty());
    latency_ok(&nx);

    let alt = one("alt.test");
    assert_eq!(end(&alt["server"]).1, 5353);
    assert_eq!(alt["rcode"], "NOERROR");

    let tcp = one("tcp.test");
    assert_eq!(
        (tcp["protocol"].as_str(), tcp["rcode"].as_str()),
        (Some("tcp"), Some("NOERROR"))
    );
    assert_eq!(end(&tcp["client"]), (c4, tcp_port as u64));
    assert_eq!(answers(&tcp), vec![("A".into(), "192.0.2.7".into())]);
    latency_ok(&tcp);

    let never = one("never.test");
    assert_eq!(never["timeout"], true);
    assert!(never["rcode"].is_null() && never["latency_ms"].is_null());

    // The summary: three a.test answers and one timeout from the client, counted at the end.
    // It prints nothing before: a trace started after it shows when the traffic may start and
    // when the timeout has been reported.
    let summary = Trace::start(&agent, &["--summary", "-o", "json"]);
    let mut probe = Trace::start(&agent, &["-o", "json"]);
    warm_up(&mut probe, &client.ns, &s4, |l| {
        !by_name(l, "warm.test").is_empty()
    });
    for id in 10..13 {
        ask_udp(&client.ns, s4.clone(), id, "a.test.", RecordType::A, true);
    }
    ask_udp(
        &client.ns,
        s4.clone(),
        13,
        "never.test.",
        RecordType::A,
        false,
    );
    probe.wait_until("the three answers and the timeout", |l| {
        by_name(l, "a.test").len() == 3 && by_name(l, "never.test").len() == 1
    });
    probe.stop();
    thread::sleep(Duration::from_millis(300));
    let text = summary.stop().join("\n");
    let rows: Vec<Value> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
    let counts: BTreeMap<(String, String), u64> = rows
        .iter()
        .filter(|r| r["name"] != "warm.test")
        .map(|r| {
            assert_eq!(r["client"], client.ip4.as_str());
            (
                (
                    r["name"].as_str().unwrap().into(),
                    r["rcode"].as_str().unwrap().into(),
                ),
                r["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        counts,
        BTreeMap::from([
            (("a.test".into(), "NOERROR".into()), 3),
            (("never.test".into(), "TIMEOUT".into()), 1),
        ])
    );
    let a_row = rows.iter().find(|r| r["name"] == "a.test").unwrap();
    assert!(a_row["p50_ms"].as_f64().unwrap() >= DELAY.as_secs_f64() * 1000.0);

    stop.store(true, Ordering::Relaxed);
    for s in servers {
        s.join().expect("DNS server thread");
    }
}
