//! Privileged end-to-end: `kubectl orb8 --local trace network` (its agent on the loopback of a
//! network namespace the test creates) writing to a stdout that nobody reads. The client keeps
//! taking the agent's events, counts the lines that could not be printed, stops at once on Ctrl-C
//! although its writer is stuck, tears its agent down, and what it printed, what it said it did
//! not print and what it reported lost add up to exactly the flows the test made.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader},
    net::UdpSocket,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use orb8_testkit::*;

/// The port every datagram goes to (bound by the test, so nothing answers with ICMP).
const PORT: u16 = 7000;
/// The source port of the datagram that shows the trace is running.
const PROBE_PORT: u16 = 19999;
/// Datagrams sent while stdout is not read, each from its own source port from 20000 on: far
/// more lines than a pipe and the client's output queue hold.
const FLOWS: u16 = 10_000;

/// `orb8: warning: X of T lines not printed...`: (X, T).
fn not_printed(line: &str, what: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("orb8: warning: ")?;
    let (x, rest) = rest.split_once(" of ")?;
    let (t, rest) = rest.split_once(' ')?;
    rest.starts_with(what)
        .then(|| Some((x.parse().ok()?, t.parse().ok()?)))
        .flatten()
}

/// `orb8: warning: NODE: N events lost (...)` or `... N events missing (...)`: N.
fn gap(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("orb8: warning: ")?;
    let (_, rest) = rest.split_once(": ")?;
    let (n, rest) = rest.split_once(' ')?;
    (rest.starts_with("events lost (") || rest.starts_with("events missing ("))
        .then(|| n.parse().ok())
        .flatten()
}

/// `orb8: warning: N flow events received but not printed...`: N.
fn unprinted_events(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("orb8: warning: ")?;
    let (n, rest) = rest.split_once(' ')?;
    rest.starts_with("flow events received but not printed")
        .then(|| n.parse().ok())
        .flatten()
}

/// The client, killed with whatever it left in the namespace when the test fails early.
struct Client<'a> {
    child: std::process::Child,
    ns: &'a NetNs,
}

impl Drop for Client<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pids = Command::new("ip")
            .args(["netns", "pids", &self.ns.name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for pid in pids.split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: killing a process of the test's own namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

#[test]
fn privileged_trace_network_to_a_stalled_stdout_counts_every_line_and_stops_on_ctrl_c() {
    require_root();
    let ns = NetNs::new("slow");
    let sink = ns.run_in(|| UdpSocket::bind(("127.0.0.1", PORT)).expect("bind the sink"));
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(workspace_bin("kubectl-orb8"))
        .args(["--local", "--local-arg=--interface=lo", "trace", "network"])
        .args(["--port", &PORT.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kubectl-orb8");
    let mut client = Client { child, ns: &ns };
    let child = &mut client.child;
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let stderr = child.stderr.take().expect("stderr");
    let (tx, stderr_lines) = mpsc::channel::<String>();
    let stderr_reader = thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut said: Vec<String> = Vec::new();

    // Running once the probe's two lines (lo egress and ingress) are printed; stdout is read
    // for nothing else until the client has exited.
    let probe = ns.run_in(|| UdpSocket::bind(("127.0.0.1", PROBE_PORT)).expect("bind probe"));
    let mut printed: Vec<String> = Vec::new();
    let (line_tx, line_rx) = mpsc::channel::<String>();
    let early = thread::spawn(move || {
        for _ in 0..2 {
            let mut l = String::new();
            if stdout.read_line(&mut l).unwrap_or(0) == 0 {
                break;
            }
            let _ = line_tx.send(l);
        }
        stdout
    });
    let end = Instant::now() + Duration::from_secs(30);
    while printed.len() < 2 {
        assert!(
            Instant::now() < end,
            "the trace never printed the probe; stderr: {said:#?}"
        );
        probe
            .send_to(b"probe", ("127.0.0.1", PORT))
            .expect("send probe");
        if let Ok(l) = line_rx.recv_timeout(Duration::from_millis(200)) {
            printed.push(l);
        }
        said.extend(stderr_lines.try_iter());
    }
    let mut stdout = early.join().expect("reading the probe's lines");

    // The burst: one new flow per source port, two lines each, with nobody reading.
    ns.run_in(|| {
        for port in 20000..20000 + FLOWS {
            let s = UdpSocket::bind(("127.0.0.1", port))
                .unwrap_or_else(|e| panic!("bind 127.0.0.1:{port}: {e}"));
            s.send_to(b"burst", ("127.0.0.1", PORT))
                .unwrap_or_else(|e| panic!("send from {port}: {e}"));
        }
    });
    let flows = 2 * (u64::from(FLOWS) + 1);

    // Every line reached the client once its lines so far (said while they are being left out)
    // and the losses it reported account for every flow.
    let end = Instant::now() + Duration::from_secs(60);
    let mut offered = 0;
    loop {
        let lost: u64 = said.iter().filter_map(|l| gap(l)).sum();
        if offered + lost == flows {
            break;
        }
        assert!(
            Instant::now() < end,
            "the client never accounted for {flows} flows ({offered} lines, {lost} lost); \
             stderr: {said:#?}"
        );
        if let Ok(l) = stderr_lines.recv_timeout(Duration::from_millis(100)) {
            if let Some((_, t)) = not_printed(&l, "lines not printed so far") {
                offered = t;
            }
            said.push(l);
        }
    }

    // Ctrl-C while the writer is stuck: the client stops without waiting for stdout.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for kubectl-orb8") {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kubectl-orb8 did not exit within 20 s of Ctrl-C with stdout stalled");
        }
        thread::sleep(Duration::from_millis(20));
    };
    stderr_reader.join().expect("stderr reader");
    said.extend(stderr_lines.try_iter());
    assert!(
        status.success(),
        "Ctrl-C ends a trace with 0: {status}; {said:#?}"
    );
    // Its agent is gone: nothing runs in the namespace any more.
    let end = Instant::now() + Duration::from_secs(10);
    while !run(&["ip", "netns", "pids", &ns.name]).trim().is_empty() {
        assert!(
            Instant::now() < end,
            "processes left in {}: {}",
            ns.name,
            run(&["ip", "netns", "pids", &ns.name])
        );
        thread::sleep(Duration::from_millis(50));
    }

    // What reached stdout: whole lines of distinct flows of the test.
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("reading stdout");
    let complete = rest.rfind('\n').map_or(0, |i| i + 1);
    printed.extend(rest[..complete].lines().map(|l| format!("{l}\n")));
    let mut distinct = BTreeSet::new();
    for l in &printed {
        assert!(
            l.contains(&format!("127.0.0.1:{PORT} ")),
            "a line of another flow: {l:?}"
        );
        assert!(distinct.insert(l.clone()), "printed twice: {l:?}");
    }
    let printed = printed.len() as u64;

    let summary: Vec<(u64, u64)> = said
        .iter()
        .filter_map(|l| not_printed(l, "lines not printed: stdout too slow"))
        .collect();
    let [(left_out, total)] = summary[..] else {
        panic!("expected one final `lines not printed` line; stderr: {said:#?}");
    };
    let lost: u64 = said.iter().filter_map(|l| gap(l)).sum();
    let unreceived: u64 = said.iter().filter_map(|l| unprinted_events(l)).sum();
    eprintln!(
        "{flows} flow lines: {printed} printed, {left_out} not printed (stdout too slow), \
         {lost} reported lost, {unreceived} received but not printed; losses: {:?}",
        said.iter().filter(|l| gap(l).is_some()).collect::<Vec<_>>()
    );
    assert!(
        left_out > 0,
        "the stalled stdout left nothing out: {said:#?}"
    );
    assert_eq!(
        (printed + left_out, total),
        (offered, offered),
        "lines printed + lines not printed = lines the trace had; stderr: {said:#?}"
    );
    assert_eq!(
        printed + left_out + lost + unreceived,
        flows,
        "printed {printed}, not printed {left_out}, lost {lost}, unprinted events {unreceived}; \
         stderr: {said:#?}"
    );
    drop(client);
    drop(sink);
}
