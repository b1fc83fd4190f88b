//! Privileged end-to-end tests of TCP lifecycle tracing: a real agent's raw tracepoint
//! programs and TCP connections between two network namespaces the test joins by a veth pair:
//! one opened, used and closed by the client first (FIN), one refused (RST from a closed
//! port), IPv4 and IPv6, and one whose SYNs an nft rule drops for a while (the rule's counter is
//! the oracle for the retransmits). Exact events per namespace are asserted.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use orb8_proto::{self as pb, tcp_trace_event::Kind};
use orb8_testkit::*;

mod loopback_agent;
use loopback_agent::{Client, addr_bytes, agent};

const TOKEN: &str = "test-token-tcp0123456789abcdef";

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

async fn start(client: &mut Client, w: &Wire) -> tonic::Streaming<pb::TcpTraceEvent> {
    let watched = [&w.left4, &w.right4, &w.left6, &w.right6];
    let mut stream = client
        .trace_tcp(pb::TraceTcpRequest {
            addrs: watched.iter().map(|a| addr_bytes(a)).collect(),
            states: false,
        })
        .await
        .expect("TraceTcp")
        .into_inner();
    let first = stream.message().await.expect("first").expect("a message");
    assert!(
        matches!(first.kind, Some(Kind::Started(_))),
        "the trace began with {first:?}"
    );
    stream
}

/// One request/response over a fresh connection to `server` (a listener in `w.right`), the
/// client closing first; returns the client's local port.
fn exchange(w: &Wire, server: SocketAddr) -> u16 {
    let l = w
        .right
        .run_in(move || TcpListener::bind(server).expect("bind"));
    let srv = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).expect("request");
        s.write_all(b"pong").expect("response");
        // Wait for the client's FIN, then close.
        assert_eq!(s.read(&mut buf).expect("eof"), 0);
    });
    let port = w.left.run_in(move || {
        let mut c = TcpStream::connect_timeout(&server, Duration::from_secs(10)).expect("connect");
        c.write_all(b"ping").expect("request");
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).expect("response");
        c.local_addr().unwrap().port()
    });
    srv.join().unwrap();
    port
}

/// Events of the two namespaces until `done` holds (at most 10 s).
async fn collect(
    stream: &mut tonic::Streaming<pb::TcpTraceEvent>,
    netns: &[u64],
    done: impl Fn(&[pb::TcpConnEvent]) -> bool,
) -> Vec<pb::TcpConnEvent> {
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while !done(&got) {
        let left = end.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, stream.message())
            .await
            .unwrap_or_else(|_| panic!("events so far: {got:#?}"))
            .expect("stream")
            .expect("a message");
        match ev.kind {
            Some(Kind::Tcp(e)) if netns.contains(&e.netns) => got.push(e),
            Some(Kind::Gap(g)) => panic!("events lost: {g:?}"),
            _ => {}
        }
    }
    got
}

fn kind_of(e: &pb::TcpConnEvent) -> pb::TcpEventKind {
    e.kind()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_tcp_connect_close_and_refused_v4_v6() {
    let (agent, mut client) = agent(TOKEN).await;
    let w = Wire::new();
    let (left_ns, right_ns) = (w.left.inode(), w.right.inode());
    let mut stream = start(&mut client, &w).await;
    assert!(agent.probe_info().1.contains(&"orb8_tcp_set_state"));
    for (local, remote) in [(&w.left4, &w.right4), (&w.left6, &w.right6)] {
        let port = exchange(&w, sock(remote, 8080));
        let refused = w.left.run_in({
            let to = sock(remote, 9);
            move || TcpStream::connect_timeout(&to, Duration::from_secs(10)).map(|_| ())
        });
        assert_eq!(
            refused.unwrap_err().kind(),
            std::io::ErrorKind::ConnectionRefused
        );
        // Connect + close and reset + close on the left, accept + close on the right.
        let got = collect(&mut stream, &[left_ns, right_ns], |g| {
            g.iter()
                .filter(|e| kind_of(e) == pb::TcpEventKind::Close)
                .count()
                == 3
        })
        .await;
        let (l, r) = (addr_bytes(local), addr_bytes(remote));
        let summary: Vec<(u64, &str, u32, u32, &str, &str)> = got
            .iter()
            .map(|e| {
                let kind = match kind_of(e) {
                    pb::TcpEventKind::Connect => "connect",
                    pb::TcpEventKind::Accept => "accept",
                    pb::TcpEventKind::Close => "close",
                    pb::TcpEventKind::ResetReceived => "reset_received",
                    pb::TcpEventKind::ResetSent => "reset_sent",
                    pb::TcpEventKind::Retransmit => "retransmit",
                    _ => "other",
                };
                (
                    e.netns,
                    kind,
                    e.local_port,
                    e.remote_port,
                    e.role.as_str(),
                    e.fin_first.as_str(),
                )
            })
            .collect();
        let mut want = vec![
            (left_ns, "connect", port as u32, 8080, "connect", ""),
            (right_ns, "accept", 8080, port as u32, "accept", ""),
            (left_ns, "close", port as u32, 8080, "connect", "local"),
            (right_ns, "close", 8080, port as u32, "accept", "peer"),
        ];
        // The refused connect: its port is whatever the kernel chose.
        let refused: Vec<&pb::TcpConnEvent> = got.iter().filter(|e| e.remote_port == 9).collect();
        assert_eq!(
            refused.len(),
            2,
            "a reset received, then the close: {got:#?}"
        );
        let rport = refused[0].local_port;
        assert_ne!(rport, 0, "the local port is kept until the close");
        want.push((left_ns, "reset_received", rport, 9, "connect", ""));
        want.push((left_ns, "close", rport, 9, "connect", ""));
        let mut s = summary.clone();
        s.sort();
        want.sort();
        assert_eq!(s, want, "{got:#?}");
        for e in &got {
            let (mine, peer) = if e.netns == left_ns {
                (&l, &r)
            } else {
                (&r, &l)
            };
            assert_eq!((&e.local_addr, &e.remote_addr), (mine, peer), "{e:?}");
            assert_eq!((e.retransmits, e.resets_sent), (0, 0), "{e:?}");
            match kind_of(e) {
                pb::TcpEventKind::Connect | pb::TcpEventKind::Accept => {
                    assert!(e.handshake_ns > 0 && e.srtt_us > 0, "{e:?}");
                }
                pb::TcpEventKind::Close if e.remote_port == 9 => {
                    assert_eq!(
                        (
                            e.established_unix_nanos,
                            e.resets_received,
                            e.old_state.as_str()
                        ),
                        (0, 1, "SYN_SENT"),
                        "{e:?}"
                    );
                }
                pb::TcpEventKind::Close => {
                    assert!(
                        e.established_unix_nanos > 0 && e.resets_received == 0,
                        "{e:?}"
                    );
                }
                _ => {}
            }
        }
    }
    drop(stream);
    for _ in 0..100 {
        if !agent.probe_info().1.contains(&"orb8_tcp_set_state") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "the TCP programs are still loaded: {:?}",
        agent.probe_info().1
    );
}

/// Packets the SYN-drop rule in `ns` counted.
fn nft_count(ns: &NetNs) -> u64 {
    let text = ns.exec(&["nft", "list", "table", "inet", "orb8syn"]);
    text.split("counter packets ")
        .nth(1)
        .and_then(|a| a.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_tcp_retransmits_match_the_dropped_syns() {
    let (_agent, mut client) = agent(TOKEN).await;
    let w = Wire::new();
    let left_ns = w.left.inode();
    let mut stream = start(&mut client, &w).await;
    w.right.exec(&["nft", "add", "table", "inet", "orb8syn"]);
    w.right.exec(&[
        "nft",
        "add chain inet orb8syn in { type filter hook input priority 0 ; policy accept ; }",
    ]);
    w.right.exec(&[
        "nft",
        "add rule inet orb8syn in tcp dport 8081 tcp flags syn counter drop",
    ]);
    let server = sock(&w.right4, 8081);
    let l = w
        .right
        .run_in(move || TcpListener::bind(server).expect("bind"));
    let connect = {
        let path = w.left.name.clone();
        std::thread::spawn(move || {
            let ns = std::fs::File::open(format!("/var/run/netns/{path}")).unwrap();
            // SAFETY: setns on a namespace fd affects only this thread.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0);
            let c = TcpStream::connect_timeout(&server, Duration::from_secs(20)).expect("connect");
            c.local_addr().unwrap().port()
        })
    };
    // The first SYN is dropped; let the next one through.
    let end = Instant::now() + Duration::from_secs(10);
    while nft_count(&w.right) == 0 {
        assert!(Instant::now() < end, "no SYN reached the drop rule");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dropped = nft_count(&w.right);
    w.right.exec(&["nft", "delete", "table", "inet", "orb8syn"]);
    let port = connect.join().unwrap() as u32;
    let (_s, _) = l.accept().unwrap();
    let got = collect(&mut stream, &[left_ns], |g| {
        g.iter()
            .any(|e| kind_of(e) == pb::TcpEventKind::Connect && e.local_port == port)
    })
    .await;
    let retrans: Vec<&pb::TcpConnEvent> = got
        .iter()
        .filter(|e| kind_of(e) == pb::TcpEventKind::Retransmit)
        .collect();
    assert_eq!(retrans.len() as u64, dropped, "{got:#?}");
    let connect = got.last().unwrap();
    assert_eq!(
        (connect.retransmits as u64, connect.remote_port),
        (dropped, 8081),
        "{connect:?}"
    );
}

#[test]
fn privileged_trace_tcp_cli_shows_the_connection_client_first() {
    use std::io::BufRead as _;
    use std::process::{Command, Stdio};
    require_root();
    let w = Wire::new();
    // The client starts its local agent inside the left namespace.
    let mut child = Command::new("ip")
        .args(["netns", "exec", &w.left.name])
        .arg(workspace_bin("kubectl-orb8"))
        .args(["--local", "trace", "tcp", "-o", "json"])
        .args(["--duration", "5s", "--ip", &w.right4])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kubectl-orb8");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(l) if l.starts_with("orb8: tracing TCP on 1 agent") => break,
            _ => assert!(Instant::now() < end, "the trace did not start"),
        }
    }
    let port = exchange(&w, sock(&w.right4, 8080)) as u64;
    let out = child.wait_with_output().expect("waiting for kubectl-orb8");
    let err = reader.join().unwrap();
    assert!(out.status.success(), "kubectl-orb8 failed: {err}");
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect();
    let mine: Vec<(&str, &str, &str)> = lines
        .iter()
        .filter(|l| l["local_port"] == port || l["remote_port"] == port)
        .map(|l| {
            (
                l["kind"].as_str().unwrap_or(""),
                l["role"].as_str().unwrap_or(""),
                l["outcome"].as_str().unwrap_or(""),
            )
        })
        .collect();
    let mut mine = mine;
    mine.sort();
    assert_eq!(
        mine,
        vec![
            ("ACCEPT", "accept", ""),
            ("CLOSE", "accept", "closed by client first"),
            ("CLOSE", "connect", "closed by client first"),
            ("CONNECT", "connect", ""),
        ],
        "{lines:#?}"
    );
}

/// Whether a child process of `parent` holds a raw tracepoint link on `tp`.
fn child_has_tracepoint(parent: u32, tp: &str) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    for p in procs.flatten() {
        let Ok(stat) = std::fs::read_to_string(p.path().join("stat")) else {
            continue;
        };
        // The parent PID is the second field after the command name's closing parenthesis.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_to_string(fd.path())
                .is_ok_and(|t| t.contains(&format!("tp_name:\t{tp}\n")))
            {
                return true;
            }
        }
    }
    false
}

#[test]
fn privileged_flows_wide_by_connection_show_tcp_state_and_retransmits() {
    use std::process::{Command, Stdio};
    require_root();
    let w = Wire::new();
    let child = Command::new("ip")
        .args(["netns", "exec", &w.left.name])
        .arg(workspace_bin("kubectl-orb8"))
        .args(["--local", "flows", "--by", "connection", "-o", "wide"])
        .args(["--duration", "6s", "--protocol", "tcp"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kubectl-orb8");
    let end = Instant::now() + Duration::from_secs(20);
    while !child_has_tracepoint(child.id(), "inet_sock_set_state") {
        assert!(Instant::now() < end, "the TCP trace did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_attached(&w.left, "eth0");
    let port = exchange(&w, sock(&w.right4, 8080));
    let out = client_stdout(child);
    let header: Vec<&str> = out
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert!(
        header.ends_with(&["STATE", "RTT", "RETRANS", "RESETS"]),
        "{out}"
    );
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .filter(|r: &Vec<&str>| r.iter().any(|c| c.ends_with(&format!(":{port}"))))
        .collect();
    assert_eq!(
        rows.len(),
        2,
        "both directions of the connection on eth0: {out}"
    );
    for r in &rows {
        let n = r.len();
        assert_eq!(
            (r[n - 4], r[n - 2], r[n - 1]),
            ("first", "0", "0"),
            "closed by the client first, no retransmits, no resets: {out}"
        );
        assert!(r[n - 3].ends_with("ms"), "an RTT: {out}");
    }
}
