//! Privileged end-to-end tests of drop tracing: a real agent's `kfree_skb` program and packets
//! the kernel drops inside two network namespaces the test joins by a veth pair: UDP to a
//! closed port (`NO_SOCKET`) and UDP to a port an nft rule drops (`NETFILTER_DROP`, the rule's
//! counter as the oracle), IPv4 and IPv6, exact counts, reasons by the running kernel's names;
//! drops between addresses outside the trace's filter must not appear. The CLI
//! (`kubectl-orb8 --local trace drops`) once through the binary.

use std::{
    collections::BTreeMap,
    io::BufRead as _,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use orb8_proto::{self as pb, drop_trace_event::Kind};
use orb8_testkit::*;

mod loopback_agent;
use loopback_agent::{addr_bytes, agent};
use serde_json::Value;

const TOKEN: &str = "test-token-drops0123456789abcdef";

/// Installs `table inet orb8t` in `ns`: UDP to `port` is dropped on input and counted.
fn nft_drop(ns: &NetNs, port: u16) {
    ns.exec(&["nft", "add", "table", "inet", "orb8t"]);
    ns.exec(&[
        "nft",
        "add chain inet orb8t in { type filter hook input priority 0 ; policy accept ; }",
    ]);
    ns.exec(&[
        "nft",
        &format!("add rule inet orb8t in udp dport {port} counter drop"),
    ]);
}

/// Packets the rule of [`nft_drop`] counted.
fn nft_count(ns: &NetNs) -> u64 {
    let text = ns.exec(&["nft", "list", "table", "inet", "orb8t"]);
    let after = text
        .split("counter packets ")
        .nth(1)
        .unwrap_or_else(|| panic!("no counter in {text}"));
    after
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet count in {text}"))
}

/// (reason, protocol, src, src port, dst, dst port) of a drop in the test's namespace.
type Key = (String, u32, Vec<u8>, u32, Vec<u8>, u32);

fn key(d: &pb::PacketDrop) -> Key {
    (
        d.reason.clone(),
        d.protocol,
        d.src_addr.clone(),
        d.src_port,
        d.dst_addr.clone(),
        d.dst_port,
    )
}

fn udp_key(reason: &str, src: &str, sport: u32, dst: &str, dport: u32) -> Key {
    (
        reason.into(),
        17,
        addr_bytes(src),
        sport,
        addr_bytes(dst),
        dport,
    )
}

/// Packets per key of the summary's drops in namespace `netns`.
fn in_netns(s: &pb::DropSummary, netns: u64) -> BTreeMap<Key, u64> {
    let mut out = BTreeMap::new();
    for d in s.drops.iter().filter(|d| d.netns == netns) {
        *out.entry(key(d)).or_default() += d.packets;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_drops_by_reason_exact_counts_v4_v6_and_the_filter_holds() {
    let (agent, mut client) = agent(TOKEN).await;
    let w = Wire::new();
    // Outside the trace's filter: the same drops between two other addresses on the same link.
    let n = w.left4.split('.').nth(2).unwrap().to_string();
    let (out_l, out_r) = (format!("10.79.{n}.1"), format!("10.79.{n}.2"));
    w.left
        .ip(&["addr", "add", &format!("{out_l}/24"), "dev", "eth0"]);
    w.right
        .ip(&["addr", "add", &format!("{out_r}/24"), "dev", "eth0"]);
    nft_drop(&w.right, 7777);
    let right_ns = w.right.inode();
    let watched = [&w.left4, &w.right4, &w.left6, &w.right6];
    let mut stream = client
        .trace_drops(pb::TraceDropsRequest {
            addrs: watched.iter().map(|a| addr_bytes(a)).collect(),
        })
        .await
        .expect("TraceDrops")
        .into_inner();
    let first = stream.message().await.expect("first").expect("a message");
    let Some(Kind::Started(started)) = first.kind else {
        panic!("the trace began with {first:?}");
    };
    assert!(started.reasons_known > 10, "{started:?}");
    assert!(agent.probe_info().1.contains(&"orb8_kfree_skb"));

    udp_send(
        &w.left,
        &format!("{}:40001", w.left4),
        &format!("{}:9", w.right4),
        7,
        32,
    );
    udp_send(
        &w.left,
        &format!("[{}]:40002", w.left6),
        &format!("[{}]:9", w.right6),
        5,
        32,
    );
    udp_send(
        &w.left,
        &format!("{}:40003", w.left4),
        &format!("{}:7777", w.right4),
        4,
        32,
    );
    udp_send(
        &w.left,
        &format!("[{}]:40004", w.left6),
        &format!("[{}]:7777", w.right6),
        3,
        32,
    );
    udp_send(
        &w.left,
        &format!("{out_l}:40005"),
        &format!("{out_r}:9"),
        6,
        32,
    );
    assert_eq!(
        nft_count(&w.right),
        7,
        "the nft rule dropped 4 + 3 datagrams"
    );

    let want: BTreeMap<Key, u64> = [
        (udp_key("NO_SOCKET", &w.left4, 40001, &w.right4, 9), 7),
        (udp_key("NO_SOCKET", &w.left6, 40002, &w.right6, 9), 5),
        (
            udp_key("NETFILTER_DROP", &w.left4, 40003, &w.right4, 7777),
            4,
        ),
        (
            udp_key("NETFILTER_DROP", &w.left6, 40004, &w.right6, 7777),
            3,
        ),
    ]
    .into();
    // The summary reads the kernel's table: wait until it holds every drop.
    let end = Instant::now() + Duration::from_secs(10);
    let summary = loop {
        let s = client
            .get_drop_summary(pb::GetDropSummaryRequest {
                trace_id: started.trace_id,
            })
            .await
            .expect("summary")
            .into_inner();
        let got = in_netns(&s, right_ns);
        let udp: BTreeMap<Key, u64> = got.into_iter().filter(|(k, _)| k.1 == 17).collect();
        if udp == want {
            break s;
        }
        assert!(
            Instant::now() < end && udp.values().sum::<u64>() <= 19,
            "drops in the right namespace: {udp:#?}, want {want:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let out_bytes = addr_bytes(&out_r);
    assert!(
        !summary
            .drops
            .iter()
            .any(|d| d.dst_addr == out_bytes || d.src_addr == out_bytes),
        "the filter let an unwatched address through: {:#?}",
        summary.drops
    );
    let c = |name: &str| summary.counters[name];
    assert!(c("filtered") >= 6, "{:?}", summary.counters);
    // Conservation (programs still running on other CPUs may be between two increments).
    let parts = c("consumed")
        + c("not_ip")
        + c("read_failed")
        + c("filtered")
        + c("accounted")
        + c("insert_failed");
    let cpus = thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    assert!(
        parts <= c("seen") && c("seen") - parts <= cpus,
        "seen = consumed + not_ip + read_failed + filtered + accounted + insert_failed: {:?}",
        summary.counters
    );
    assert_eq!(
        (
            c("ringbuf_full"),
            c("insert_failed"),
            summary.lost_agent,
            summary.lost_client
        ),
        (0, 0, 0, 0)
    );
    for d in summary
        .drops
        .iter()
        .filter(|d| d.netns == right_ns && d.protocol == 17)
    {
        assert_eq!(
            d.bytes,
            d.packets * (32 + 8 + if d.src_addr.len() == 4 { 20 } else { 40 })
        );
        assert_eq!(d.ifindex, w.right.ifindex("eth0"), "{d:?}");
    }

    // The stream sent each new key once, named the same way.
    let mut streamed: BTreeMap<Key, u64> = BTreeMap::new();
    let end = Instant::now() + Duration::from_secs(10);
    while streamed.len() < want.len() {
        let left = end.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, stream.message())
            .await
            .unwrap_or_else(|_| panic!("new keys streamed: {streamed:#?}"))
            .expect("stream")
            .expect("a message");
        match ev.kind {
            Some(Kind::Drop(d)) if d.netns == right_ns && d.protocol == 17 => {
                assert_eq!(d.packets, 1);
                *streamed.entry(key(&d)).or_default() += 1;
            }
            Some(Kind::Gap(g)) => panic!("events lost: {g:?}"),
            _ => {}
        }
    }
    assert_eq!(
        streamed,
        want.keys()
            .map(|k| (k.clone(), 1))
            .collect::<BTreeMap<_, _>>()
    );
    drop(stream);
    // The last trace gone, the program is unloaded.
    for _ in 0..100 {
        if !agent.probe_info().1.contains(&"orb8_kfree_skb") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "the drop program is still loaded: {:?}",
        agent.probe_info().1
    );
}

#[test]
fn privileged_trace_drops_cli_summary_names_reasons() {
    require_root();
    let w = Wire::new();
    // The client starts its local agent inside the left namespace.
    let mut child = Command::new("ip")
        .args(["netns", "exec", &w.left.name])
        .arg(workspace_bin("kubectl-orb8"))
        .args(["--local", "trace", "drops", "--summary", "-o", "json"])
        .args(["--duration", "5s", "--ip", &w.right4])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kubectl-orb8");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
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
            Ok(l) if l.starts_with("orb8: tracing drops on 1 agent") => break,
            _ => assert!(Instant::now() < end, "the trace did not start"),
        }
    }
    udp_send(
        &w.left,
        &format!("{}:40010", w.left4),
        &format!("{}:9", w.right4),
        5,
        10,
    );
    let out = child.wait_with_output().expect("waiting for kubectl-orb8");
    let err = reader.join().unwrap();
    assert!(out.status.success(), "kubectl-orb8 failed: {err}");
    let rows: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect();
    let peer = format!("{} -> {}:9", w.left4, w.right4);
    let mine: Vec<&Value> = rows.iter().filter(|r| r["peer"] == peer.as_str()).collect();
    assert_eq!(mine.len(), 1, "one row for {peer}: {rows:#?}");
    let r = mine[0];
    assert_eq!(r["event"], "drop_summary");
    assert_eq!(r["reason"], "NO_SOCKET");
    assert_eq!(r["packets"], 5);
    assert_eq!(r["bytes"], 5 * (10 + 8 + 20));
    assert_eq!(r["pod"], format!("netns:{}", w.right.inode()).as_str());
    assert!(!err.contains("losses"), "{err}");
}
