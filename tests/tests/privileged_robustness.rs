//! Privileged: malformed frames, a full flow table, interfaces that come and go, and probes
//! that must not outlive the agent. Each test builds and removes its own namespaces.

use std::time::Duration;

use orb8_testkit::*;

fn mac(ns: &NetNs, iface: &str) -> [u8; 6] {
    let out = ns.ip(&["link", "show", iface]);
    let hex = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {out}"));
    let mut m = [0u8; 6];
    for (i, part) in hex.split(':').enumerate() {
        m[i] = u8::from_str_radix(part, 16).expect("hex");
    }
    m
}

/// Sends raw frames out of `iface` of `ns` with a packet socket, in order, from one CPU: a veth
/// hands each frame to the receiving side's backlog of the sending CPU, so the frames reach
/// the probe on the other end in the order sent, and an event caused by the last one proves
/// the probe has seen all of them.
fn inject(ns: &NetNs, iface: &str, frames: Vec<Vec<u8>>) {
    let ifindex = ns.ifindex(iface);
    ns.run_in(move || {
        // SAFETY: sched_getcpu has no preconditions.
        let cpu = unsafe { libc::sched_getcpu() };
        assert!(
            cpu >= 0,
            "sched_getcpu: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays within it (cpu < 1024).
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        unsafe { libc::CPU_SET(cpu as usize, &mut set) };
        // SAFETY: pins only this thread (0), with a valid set of the size given.
        let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
        assert_eq!(
            rc,
            0,
            "pinning the sending thread to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: plain socket syscalls with checked results.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        for f in frames {
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = ifindex as i32;
            sll.sll_halen = 6;
            sll.sll_addr[..6].copy_from_slice(&f[..6]);
            // SAFETY: frame and address are valid for their sizes.
            let n = unsafe {
                libc::sendto(
                    fd,
                    f.as_ptr() as *const libc::c_void,
                    f.len(),
                    0,
                    &sll as *const _ as *const libc::sockaddr,
                    size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(
                n,
                f.len() as isize,
                "sending a {}-byte frame: {}",
                f.len(),
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: closing our own fd.
        unsafe { libc::close(fd) };
    });
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// An IPv4 header (no checksum: nothing validates it before the probe) from 10.77.1.99 to
/// 10.77.1.98, neither of which exists.
fn ipv4(ihl_words: u8, tot_len: u16, proto: u8) -> Vec<u8> {
    let mut h = vec![0x40 | ihl_words, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
    h[2..4].copy_from_slice(&tot_len.to_be_bytes());
    h.extend_from_slice(&[10, 77, 1, 99, 10, 77, 1, 98]);
    h
}

/// A valid IPv4 UDP datagram (header checksum set, UDP checksum 0 as IPv4 allows).
fn udp4(
    src: std::net::Ipv4Addr,
    sport: u16,
    dst: std::net::Ipv4Addr,
    dport: u16,
    payload: usize,
) -> Vec<u8> {
    let tot_len = (20 + 8 + payload) as u16;
    let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    h[2..4].copy_from_slice(&tot_len.to_be_bytes());
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let sum: u32 = h
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let check = !(((folded & 0xffff) + (folded >> 16)) as u16);
    h[10..12].copy_from_slice(&check.to_be_bytes());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend(std::iter::repeat_n(0x5a, payload));
    h
}

fn ipv6(payload_len: u16, next: u8) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&payload_len.to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&"fd77:1::99".parse::<std::net::Ipv6Addr>().unwrap().octets());
    h.extend_from_slice(&"fd77:1::98".parse::<std::net::Ipv6Addr>().unwrap().octets());
    h
}

#[test]
fn privileged_malformed_frames_are_counted_and_invent_no_flow() {
    require_root();
    let topo = Topology::new(1);
    let pod = &topo.pods[0];
    let (dst, src) = (mac(&topo.node, &pod.host_if), mac(&pod.ns, "eth0"));
    // Permanent neighbour entries: no ARP (which counts as not_ip) during the test.
    let hex = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    pod.ns.ip(&[
        "neigh",
        "replace",
        "10.77.1.1",
        "lladdr",
        &hex(dst),
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    topo.node.ip(&[
        "neigh",
        "replace",
        &pod.ip4,
        "lladdr",
        &hex(src),
        "dev",
        &pod.host_if,
        "nud",
        "permanent",
    ]);
    let mut agent = WatchAgent::start(&topo.node, &[]);
    let with = |ethertype: u16, body: &[u8]| {
        let mut f = eth(dst, src, ethertype);
        f.extend_from_slice(body);
        f
    };
    let mut tcp_cut = ipv4(5, 28, 6);
    tcp_cut.extend_from_slice(&[0x9c, 0x40, 0x00, 0x50, 0, 0, 0, 1]);
    let mut tcp_doff = ipv4(5, 40, 6);
    tcp_doff.extend_from_slice(&[
        0x9c, 0x40, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x20, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    let mut udp6_short = ipv6(4, 17);
    udp6_short.extend_from_slice(&[0x9c, 0x40, 0x00, 0x35]);
    let mut deep = ipv6(7 * 8 + 8, 60);
    for i in 0..7 {
        deep.extend_from_slice(&[if i == 6 { 17 } else { 60 }, 0, 1, 4, 0, 0, 0, 0]);
    }
    deep.extend_from_slice(&[0x9c, 0x40, 0x00, 0x35, 0, 8, 0, 0]);
    let mut frames = vec![
        // bad_l3: an Ethernet header and nothing else.
        with(0x0800, &[]),
        // bad_l3: 10 of the 20 bytes of an IPv4 header.
        with(0x0800, &ipv4(5, 20, 17)[..10]),
        // bad_l3: IHL of 3 words.
        with(0x0800, &ipv4(3, 20, 17)),
        // bad_l3: total length 1000, frame carries 20.
        with(0x0800, &ipv4(5, 1000, 17)),
        // bad_l3: 20 of the 40 bytes of an IPv6 header.
        with(0x86dd, &ipv6(0, 17)[..20]),
        // bad_l4: TCP header cut after 8 bytes.
        with(0x0800, &tcp_cut),
        // bad_l4: TCP data offset of 2 words.
        with(0x0800, &tcp_doff),
        // bad_l4: UDP in IPv6 with a 4-byte header.
        with(0x86dd, &udp6_short),
        // ipv6_ext_too_deep: seven destination-options headers before UDP.
        with(0x86dd, &deep),
    ];
    // not_ip: an experimental ethertype, three times.
    for _ in 0..3 {
        frames.push(with(0x88b5, &[0u8; 46]));
    }
    // A valid datagram last, from the same thread and CPU: once its event is out, the probe
    // has seen every frame before it (see `inject`).
    frames.push(with(
        0x0800,
        &udp4(
            pod.ip4.parse().expect("pod address"),
            40009,
            "10.77.1.1".parse().expect("node address"),
            9,
            10,
        ),
    ));
    inject(&pod.ns, "eth0", frames);
    agent.wait_for(Duration::from_secs(10), |v| {
        v["event"] == "new_flow" && v["src_port"] == 40009
    });
    let s = agent.stop();

    assert_eq!(counter(&s, "bad_l3"), 5, "{:#}", s["counters"]);
    assert_eq!(counter(&s, "bad_l4"), 3, "{:#}", s["counters"]);
    assert_eq!(counter(&s, "ipv6_ext_too_deep"), 1, "{:#}", s["counters"]);
    assert_eq!(counter(&s, "not_ip"), 3, "{:#}", s["counters"]);
    assert_eq!(counter(&s, "truncated_l2"), 0);
    let invented: Vec<_> = s["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            ["10.77.1.99", "10.77.1.98", "fd77:1::99", "fd77:1::98"]
                .contains(&f["src"].as_str().unwrap())
        })
        .collect();
    assert!(
        invented.is_empty(),
        "flows invented from malformed frames: {invented:#?}"
    );
    let seen = counter(&s, "packets_seen");
    let accounted = counter(&s, "packets_accounted");
    let unparsed: u64 = [
        "not_ip",
        "truncated_l2",
        "bad_l3",
        "bad_l4",
        "ipv6_ext_too_deep",
        "pull_failed",
    ]
    .iter()
    .map(|n| counter(&s, n))
    .sum();
    assert_eq!(
        seen,
        accounted + unparsed,
        "every packet is either accounted or counted as unparsed"
    );
}

#[test]
fn privileged_full_flow_table_counts_evictions() {
    require_root();
    let topo = Topology::new(2);
    let (a, b) = (&topo.pods[0], &topo.pods[1]);
    let agent = WatchAgent::start(&topo.node, &["--flow-map-size", "32"]);
    // 300 distinct UDP flows, each seen on A's veth (ingress) and B's veth (egress).
    let rx = udp_receiver(&b.ns, &format!("{}:5000", b.ip4), 300);
    a.ns.run_in({
        let (src, dst) = (a.ip4.clone(), b.ip4.clone());
        move || {
            let s = std::net::UdpSocket::bind(format!("{src}:0")).unwrap();
            for port in 0..300u16 {
                let s2 = std::net::UdpSocket::bind(format!("{src}:{}", 41000 + port)).unwrap();
                s2.send_to(b"x", format!("{dst}:5000")).unwrap();
                std::thread::sleep(Duration::from_micros(200));
            }
            drop(s);
        }
    });
    assert_eq!(rx.join().unwrap(), 300);
    let s = agent.stop();
    let created = counter(&s, "flows_created");
    let live = s["flows_live"].as_u64().unwrap();
    let evicted = s["flows_evicted"].as_u64().unwrap();
    assert!(
        created >= 600,
        "each of the 600 interface flows was created at least once: {created}"
    );
    // `--flow-map-size` sizes the IPv4 table; IPv6 flows (a fresh veth's router solicitations
    // and MLD reports) live in their own table, at least 1024 entries, which never fills here.
    let (v4, v6): (Vec<&serde_json::Value>, Vec<&serde_json::Value>) = s["flows"]
        .as_array()
        .unwrap()
        .iter()
        .partition(|f| f["src"].as_str().is_some_and(|a| !a.contains(':')));
    assert_eq!(live, (v4.len() + v6.len()) as u64);
    assert!(
        v4.len() <= 32,
        "the IPv4 table holds at most its 32 entries: {}",
        v4.len()
    );
    assert!(
        v6.iter().all(|f| f["protocol"] == "icmpv6"),
        "only the veths' own ICMPv6 is in the IPv6 table: {v6:#?}"
    );
    assert!(evicted >= 600 - 32, "evictions counted: {evicted}");
    assert_eq!(evicted + live, created);
    assert_eq!(counter(&s, "ringbuf_full"), 0);
    assert_eq!(
        s["events_received"].as_u64(),
        Some(created),
        "one event per created flow"
    );
}

#[test]
fn privileged_pods_created_later_are_attached_and_removed_ones_forgotten() {
    require_root();
    let mut topo = Topology::new(1);
    let mut agent = WatchAgent::start(&topo.node, &[]);
    let target = topo.pods[0].ip4.clone();
    let (late_if, late_ip) = {
        let p = topo.add_pod();
        (p.host_if.clone(), p.ip4.clone())
    };
    agent.wait_for(Duration::from_secs(5), |v| {
        v["event"] == "attached" && v["name"] == late_if.as_str()
    });
    let rx = udp_receiver(&topo.pods[0].ns, &format!("{target}:5000"), 10);
    udp_send(
        &topo.pods[1].ns,
        &format!("{late_ip}:40000"),
        &format!("{target}:5000"),
        10,
        100,
    );
    assert_eq!(rx.join().unwrap(), 10);
    topo.pods.pop();
    agent.wait_for(Duration::from_secs(5), |v| {
        v["event"] == "detached" && v["name"] == late_if.as_str()
    });
    let s = agent.stop();
    assert_eq!(
        one_flow(&s, &late_if, "ingress", "udp", &late_ip, &target).0,
        10
    );
    assert_eq!(
        one_flow(&s, &late_if, "ingress", "udp", &late_ip, &target).1,
        10 * 128
    );
}

fn tc_filters(ns: &NetNs, iface: &str) -> String {
    let mut out = ns.exec(&["tc", "filter", "show", "dev", iface, "ingress"]);
    out.push_str(&ns.exec(&["tc", "filter", "show", "dev", iface, "egress"]));
    out
}

#[test]
fn privileged_sigkill_leaves_no_tcx_link() {
    require_root();
    let topo = Topology::new(1);
    let iface = topo.pods[0].host_if.clone();
    let agent = WatchAgent::start(&topo.node, &["--attach", "tcx"]);
    let mut attached = tcx_programs(&topo.node, &iface);
    attached.sort();
    assert_eq!(attached, vec!["orb8_tc_egress", "orb8_tc_ingress"]);
    agent.kill();
    // The kernel releases the links with the process's file descriptors.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !tcx_programs(&topo.node, &iface).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(tcx_programs(&topo.node, &iface), Vec::<String>::new());
    assert!(!tc_filters(&topo.node, &iface).contains("orb8"));
}

#[test]
fn privileged_tc_fallback_counts_and_cleans_up_even_after_sigkill() {
    require_root();
    let topo = Topology::new(2);
    let (a, b) = (&topo.pods[0], &topo.pods[1]);
    let agent = WatchAgent::start(&topo.node, &["--attach", "tc"]);
    let f = tc_filters(&topo.node, &a.host_if);
    assert!(
        f.contains("orb8_tc_ingress") && f.contains("orb8_tc_egress"),
        "{f}"
    );
    assert!(tcx_programs(&topo.node, &a.host_if).is_empty());
    let rx = udp_receiver(&b.ns, &format!("{}:5000", b.ip4), 10);
    udp_send(
        &a.ns,
        &format!("{}:40000", a.ip4),
        &format!("{}:5000", b.ip4),
        10,
        100,
    );
    assert_eq!(rx.join().unwrap(), 10);
    let s = agent.stop();
    assert_eq!(
        one_flow(&s, &a.host_if, "ingress", "udp", &a.ip4, &b.ip4),
        (10, 1280, String::new())
    );
    assert!(
        !tc_filters(&topo.node, &a.host_if).contains("orb8"),
        "filters removed on clean exit"
    );

    // clsact filters outlive a killed process; the next agent removes them before attaching.
    let agent = WatchAgent::start(&topo.node, &["--attach", "tc"]);
    agent.kill();
    assert!(
        tc_filters(&topo.node, &a.host_if).contains("orb8"),
        "a killed agent leaves its filters"
    );
    let agent = WatchAgent::start(&topo.node, &["--attach", "tc"]);
    let ours = tc_filters(&topo.node, &a.host_if)
        .lines()
        .filter(|l| l.contains("orb8_tc_ingress"))
        .count();
    assert_eq!(ours, 1, "the stale filter was replaced, not added to");
    agent.stop();
    assert!(!tc_filters(&topo.node, &a.host_if).contains("orb8"));
}

/// The owners (filter handles, which orb8 sets to the agent's pid) of the orb8 filters on one
/// clsact hook (`ingress` or `egress`) of `iface`, sorted.
fn orb8_filter_owners(ns: &NetNs, iface: &str, hook: &str) -> Vec<u32> {
    let out = ns.exec(&["tc", "filter", "show", "dev", iface, hook]);
    let mut owners: Vec<u32> = out
        .lines()
        .filter(|l| l.contains(&format!(" orb8_tc_{hook} ")))
        .map(|l| {
            let hex = l
                .split_whitespace()
                .skip_while(|w| *w != "handle")
                .nth(1)
                .unwrap_or_else(|| panic!("no handle in {l}"));
            u32::from_str_radix(hex.trim_start_matches("0x"), 16).expect("hex handle")
        })
        .collect();
    owners.sort();
    owners
}

fn sorted(mut v: Vec<u32>) -> Vec<u32> {
    v.sort();
    v
}

#[test]
fn privileged_tc_agents_sharing_a_node_keep_each_others_filters() {
    require_root();
    let topo = Topology::new(2);
    let (a, b) = (&topo.pods[0], &topo.pods[1]);
    let args = ["--attach", "tc", "--interface", a.host_if.as_str()];
    let mut first = WatchAgent::start(&topo.node, &args);
    let second = WatchAgent::start(&topo.node, &args);
    let both = sorted(vec![first.pid(), second.pid()]);
    for hook in ["ingress", "egress"] {
        assert_eq!(
            orb8_filter_owners(&topo.node, &a.host_if, hook),
            both,
            "the second agent left the first one's {hook} filter"
        );
    }

    // The first agent still sees every packet: 10 datagrams, each its own flow.
    let rx = udp_receiver(&b.ns, &format!("{}:5000", b.ip4), 10);
    a.ns.run_in({
        let (src, dst) = (a.ip4.clone(), b.ip4.clone());
        move || {
            for port in 41000..41010u16 {
                let s = std::net::UdpSocket::bind(format!("{src}:{port}")).unwrap();
                s.send_to(&[0x5a; 100], format!("{dst}:5000")).unwrap();
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    });
    assert_eq!(rx.join().unwrap(), 10);
    let is_ours = |v: &serde_json::Value| {
        v["event"] == "new_flow"
            && v["interface"] == a.host_if.as_str()
            && v["direction"] == "ingress"
            && v["dst_port"] == 5000
    };
    for port in 41000..41010u16 {
        first.wait_for(Duration::from_secs(10), |v| {
            is_ours(v) && v["src_port"] == port
        });
    }
    let events: Vec<&serde_json::Value> = first.seen.iter().filter(|v| is_ours(v)).collect();
    assert_eq!(events.len(), 10, "{events:#?}");
    assert!(events.iter().all(|v| v["bytes"] == 128), "{events:#?}");

    // A killed agent's filters stay behind until the next agent starts; only they go then.
    let dead = first.pid();
    first.kill();
    assert_eq!(
        orb8_filter_owners(&topo.node, &a.host_if, "ingress"),
        both,
        "clsact filters outlive a killed agent"
    );
    let third = WatchAgent::start(&topo.node, &args);
    let live = sorted(vec![second.pid(), third.pid()]);
    assert!(!live.contains(&dead), "pid {dead} reused too soon");
    for hook in ["ingress", "egress"] {
        assert_eq!(
            orb8_filter_owners(&topo.node, &a.host_if, hook),
            live,
            "the third agent removed the dead agent's {hook} filter, and only it"
        );
    }

    // Both live agents count the same packets exactly.
    let rx = udp_receiver(&b.ns, &format!("{}:5001", b.ip4), 10);
    udp_send(
        &a.ns,
        &format!("{}:40000", a.ip4),
        &format!("{}:5001", b.ip4),
        10,
        100,
    );
    assert_eq!(rx.join().unwrap(), 10);
    let third_pid = third.pid();
    for (agent, name, left) in [
        (second, "second", vec![third_pid]),
        (third, "third", vec![]),
    ] {
        let s = agent.stop();
        let flows: Vec<(u64, u64)> = find_flows(&s, &a.host_if, "ingress", "udp", &a.ip4, &b.ip4)
            .into_iter()
            .filter(|f| f["src_port"] == 40000)
            .map(counts)
            .collect();
        assert_eq!(flows, vec![(10, 1280)], "{name} agent");
        // A clean exit removes the agent's own filters and no other.
        for hook in ["ingress", "egress"] {
            assert_eq!(
                orb8_filter_owners(&topo.node, &a.host_if, hook),
                left,
                "after the {name} agent stopped"
            );
        }
    }
    assert!(
        !tc_filters(&topo.node, &a.host_if).contains("orb8"),
        "{}",
        tc_filters(&topo.node, &a.host_if)
    );
}
