//! Privileged: the TC flow probe in the running kernel, driven through `orb8-agent watch`.
//! Each test builds its own node/pod namespaces and sends a known number of packets of known
//! sizes between them, then checks the agent's flow table for exact counts.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    thread,
    time::Duration,
};

use orb8_tests::*;

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

/// Per-direction packets, IP bytes, payload bytes and OR of flags of TCP frames on one port, as
/// an AF_PACKET socket on the same interface saw them.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    packets: u64,
    bytes: u64,
    payload: u64,
    flags: u8,
}

fn capture_tcp(ns: &NetNs, iface: &str, port: u16) -> thread::JoinHandle<(Seen, Seen)> {
    let ifindex = ns.ifindex(iface);
    spawn_in(ns, move |ready| {
        // SAFETY: plain socket syscalls with checked results.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                (libc::ETH_P_ALL as u16).to_be() as i32,
            )
        };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: sll is a valid sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                fd,
                &sll as *const _ as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind packet socket");
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: valid option value.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                size_of::<libc::timeval>() as u32,
            )
        };
        ready.send(()).unwrap();
        let (mut to_node, mut from_node) = (Seen::default(), Seen::default());
        let mut buf = [0u8; 65536];
        let mut quiet = 0;
        while quiet < 2 {
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buffers are valid for the sizes given.
            let n = unsafe {
                libc::recvfrom(
                    fd,
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                    &mut from as *mut _ as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n < 0 {
                quiet += 1;
                continue;
            }
            quiet = 0;
            let f = &buf[..n as usize];
            if f.len() < 14 + 20 || u16::from_be_bytes([f[12], f[13]]) != 0x0800 || f[14 + 9] != 6 {
                continue;
            }
            let ip = &f[14..];
            let ihl = ((ip[0] & 0xf) * 4) as usize;
            let tot = u16::from_be_bytes([ip[2], ip[3]]) as u64;
            let tcp = &ip[ihl..];
            let (sp, dp) = (
                u16::from_be_bytes([tcp[0], tcp[1]]),
                u16::from_be_bytes([tcp[2], tcp[3]]),
            );
            if sp != port && dp != port {
                continue;
            }
            let doff = ((tcp[12] >> 4) * 4) as u64;
            let side = if from.sll_pkttype == libc::PACKET_OUTGOING {
                &mut from_node
            } else {
                &mut to_node
            };
            side.packets += 1;
            side.bytes += tot;
            side.payload += tot - ihl as u64 - doff;
            side.flags |= tcp[13];
        }
        // SAFETY: closing our own fd.
        unsafe { libc::close(fd) };
        (to_node, from_node)
    })
}

fn flags(f: u8) -> String {
    [
        (0x01, 'F'),
        (0x02, 'S'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x10, '.'),
        (0x20, 'U'),
        (0x40, 'E'),
        (0x80, 'W'),
    ]
    .iter()
    .filter(|(b, _)| f & b != 0)
    .map(|(_, c)| *c)
    .collect()
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
    let server_addr = format!("{}:6000", b.ip4);
    let server = spawn_in(&b.ns, move |ready| {
        let l = TcpListener::bind(&server_addr).unwrap();
        ready.send(()).unwrap();
        let (mut c, _) = l.accept().unwrap();
        let mut buf = [0u8; SIZE];
        for _ in 0..ROUNDS {
            c.read_exact(&mut buf).unwrap();
            c.write_all(&buf).unwrap();
        }
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
    });
    let dst = format!("{}:6000", b.ip4);
    a.ns.run_in(move || {
        let mut c = TcpStream::connect(&dst).unwrap();
        c.set_nodelay(true).unwrap();
        let mut buf = [7u8; SIZE];
        for _ in 0..ROUNDS {
            c.write_all(&buf).unwrap();
            c.read_exact(&mut buf).unwrap();
        }
    });
    server.join().unwrap();
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
