//! Privileged: the TC flow probe in the running kernel, driven through `orb8-agent watch`.
//! Each test builds its own node/pod namespaces and sends a known number of packets of known
//! sizes between them, then checks the agent's flow table for exact counts.

use std::time::Duration;

use orb8_testkit::*;

const UDP4_OVERHEAD: u64 = 20 + 8;
const UDP6_OVERHEAD: u64 = 40 + 8;

#[test]
fn privileged_udp_and_icmp_are_counted_exactly_per_flow_and_direction() {
    require_root();
    let topo = Topology::new(2);
    let (a, b) = (&topo.pods[0], &topo.pods[1]);
    let mut agent = WatchAgent::start(&topo.node, &[]);

    let rx4 = udp_receiver(&b.ns, &format!("{}:5000", b.ip4), 100);
    let rx6 = udp_receiver(&b.ns, &format!("[{}]:5001", b.ip6), 50);
    udp_send(
        &a.ns,
        &format!("{}:40000", a.ip4),
        &format!("{}:5000", b.ip4),
        100,
        200,
    );
    udp_send(
        &a.ns,
        &format!("[{}]:40001", a.ip6),
        &format!("[{}]:5001", b.ip6),
        50,
        300,
    );
    assert_eq!(rx4.join().unwrap(), 100, "all IPv4 datagrams delivered");
    assert_eq!(rx6.join().unwrap(), 50, "all IPv6 datagrams delivered");
    a.ns.exec(&["ping", "-q", "-c", "5", "-i", "0.05", "-s", "100", &b.ip4]);

    // The new-flow event carries the first packet's size.
    let ev = agent.wait_for(Duration::from_secs(10), |v| {
        v["event"] == "new_flow"
            && v["protocol"] == "udp"
            && v["src"] == a.ip4
            && v["interface"] == a.host_if.as_str()
    });
    assert_eq!(ev["bytes"], 200 + UDP4_OVERHEAD);
    assert_eq!(
        (ev["src_port"].as_u64(), ev["dst_port"].as_u64()),
        (Some(40000), Some(5000))
    );
    assert_eq!(ev["direction"], "ingress");
    let s = agent.stop();

    // Pod A's traffic enters the node on A's veth and leaves it on B's veth.
    for (iface, dir) in [(&a.host_if, "ingress"), (&b.host_if, "egress")] {
        assert_eq!(
            one_flow(&s, iface, dir, "udp", &a.ip4, &b.ip4),
            (100, 100 * (200 + UDP4_OVERHEAD), String::new())
        );
        assert_eq!(
            one_flow(&s, iface, dir, "udp", &a.ip6, &b.ip6),
            (50, 50 * (300 + UDP6_OVERHEAD), String::new())
        );
    }
    // Nothing flowed back for UDP.
    assert!(find_flows(&s, &a.host_if, "egress", "udp", &b.ip4, &a.ip4).is_empty());

    // ICMP echo: 5 requests (type 8) one way, 5 replies (type 0) the other, 100 + 8 + 20 bytes.
    let echo = 5 * (100 + 8 + 20);
    assert_eq!(
        one_flow(&s, &a.host_if, "ingress", "icmp", &a.ip4, &b.ip4),
        (5, echo, String::new())
    );
    assert_eq!(
        one_flow(&s, &a.host_if, "egress", "icmp", &b.ip4, &a.ip4),
        (5, echo, String::new())
    );
    let req = find_flows(&s, &a.host_if, "ingress", "icmp", &a.ip4, &b.ip4)[0];
    assert_eq!(req["dst_port"], 8 << 8, "echo request type/code");
    let rep = find_flows(&s, &a.host_if, "egress", "icmp", &b.ip4, &a.ip4)[0];
    assert_eq!(rep["dst_port"], 0, "echo reply type/code");

    assert_eq!(
        counter(&s, "bad_l3") + counter(&s, "bad_l4") + counter(&s, "ringbuf_full"),
        0
    );
    assert_eq!(
        s["events_received"], s["counters"]["flows_created"],
        "one event per flow, none lost"
    );
}

#[test]
fn privileged_tcp_exchange_matches_what_a_packet_socket_sees() {
    require_root();
    let topo = Topology::new(2);
    let (a, b) = (&topo.pods[0], &topo.pods[1]);
    let agent = WatchAgent::start(&topo.node, &[]);
    const ROUNDS: usize = 20;
    const SIZE: usize = 64;

    let cap = capture_tcp(&topo.node, &a.host_if, 6000);
    tcp_exchange(&a.ns, &b.ns, &b.ip4, 6000, ROUNDS, SIZE);
    let (to_node, from_node) = cap.join().unwrap();
    let s = agent.stop();

    assert_eq!(
        to_node.payload,
        (ROUNDS * SIZE) as u64,
        "capture saw every request byte"
    );
    assert_eq!(
        from_node.payload,
        (ROUNDS * SIZE) as u64,
        "capture saw every reply byte"
    );
    assert_eq!(flags(to_node.flags), "FSP.");
    let fwd = one_flow(&s, &a.host_if, "ingress", "tcp", &a.ip4, &b.ip4);
    assert_eq!(fwd, (to_node.packets, to_node.bytes, "FSP.".to_string()));
    let rev = one_flow(&s, &a.host_if, "egress", "tcp", &b.ip4, &a.ip4);
    assert_eq!(
        rev,
        (from_node.packets, from_node.bytes, flags(from_node.flags))
    );
    assert_eq!(rev.2, "FSP.");
}

#[test]
fn privileged_non_first_fragments_keep_addresses_and_lose_ports() {
    require_root();
    let topo = Topology::new(2);
    let (a, b) = (&topo.pods[0], &topo.pods[1]);
    let agent = WatchAgent::start(&topo.node, &[]);
    let rx = udp_receiver(&b.ns, &format!("{}:5002", b.ip4), 1);
    let rx6 = udp_receiver(&b.ns, &format!("[{}]:5003", b.ip6), 1);
    // 3000 bytes of payload over a 1500 MTU: three fragments.
    udp_send(
        &a.ns,
        &format!("{}:40002", a.ip4),
        &format!("{}:5002", b.ip4),
        1,
        3000,
    );
    udp_send(
        &a.ns,
        &format!("[{}]:40003", a.ip6),
        &format!("[{}]:5003", b.ip6),
        1,
        3000,
    );
    assert_eq!(rx.join().unwrap(), 1);
    assert_eq!(rx6.join().unwrap(), 1);
    let s = agent.stop();

    let flows = find_flows(&s, &a.host_if, "ingress", "udp", &a.ip4, &b.ip4);
    let first: Vec<_> = flows.iter().filter(|f| f["fragment"] == false).collect();
    let rest: Vec<_> = flows.iter().filter(|f| f["fragment"] == true).collect();
    assert_eq!(first.len(), 1, "{flows:#?}");
    assert_eq!(rest.len(), 1, "{flows:#?}");
    // IPv4: 1480 payload bytes per fragment: 1500 + 1500 + (3008 - 2960 + 20).
    assert_eq!(
        (first[0]["packets"].as_u64(), first[0]["bytes"].as_u64()),
        (Some(1), Some(1500))
    );
    assert_eq!(
        (first[0]["src_port"].as_u64(), first[0]["dst_port"].as_u64()),
        (Some(40002), Some(5002))
    );
    assert_eq!(
        (rest[0]["packets"].as_u64(), rest[0]["bytes"].as_u64()),
        (Some(2), Some(1500 + 68))
    );
    assert_eq!(
        (rest[0]["src_port"].as_u64(), rest[0]["dst_port"].as_u64()),
        (Some(0), Some(0))
    );

    // IPv6: fragment header of 8 bytes, 1448 payload bytes per fragment: 1496 + 1496 + 160.
    let flows = find_flows(&s, &a.host_if, "ingress", "udp", &a.ip6, &b.ip6);
    let first: Vec<_> = flows.iter().filter(|f| f["fragment"] == false).collect();
    let rest: Vec<_> = flows.iter().filter(|f| f["fragment"] == true).collect();
    assert_eq!((first.len(), rest.len()), (1, 1), "{flows:#?}");
    assert_eq!(
        (first[0]["packets"].as_u64(), first[0]["bytes"].as_u64()),
        (Some(1), Some(1496))
    );
    assert_eq!(first[0]["dst_port"], 5003);
    assert_eq!(
        (rest[0]["packets"].as_u64(), rest[0]["bytes"].as_u64()),
        (Some(2), Some(1496 + 160))
    );
    assert_eq!(rest[0]["dst_port"], 0);
}
