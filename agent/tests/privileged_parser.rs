//! Privileged: the TC parser in the running kernel, fed frames with `BPF_PROG_TEST_RUN`, for
//! what no veth pair in a test can carry (VLAN tags left in the frame, extension-header chains,
//! SCTP, GSO super-packets); and that probes closed at shutdown stay detached. Each test loads its
//! own copy of the programs and maps.

use orb8_agent::{
    flows::Flow,
    probes::{AttachMode, Maps, ProbeConfig, Probes},
};
use orb8_common::{counter, names};

fn load() -> (Probes, Maps) {
    load_sized(1024, 1024)
}

fn load_sized(v4: u32, v6: u32) -> (Probes, Maps) {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "privileged test: run as root"
    );
    Probes::load(&ProbeConfig {
        flow_map_entries: v4,
        flow_map_entries_v6: v6,
        ringbuf_bytes: 1 << 16,
        mode: AttachMode::detect(),
        dns_ports: orb8_common::dns::DnsPorts::DEFAULT,
    })
    .expect("loading the probes")
}

const MAC: [u8; 12] = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];

fn eth(tags: &[(u16, u16)], ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = MAC.to_vec();
    for (tpid, tci) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

fn ipv4(proto: u8, l4: &[u8], options: usize) -> Vec<u8> {
    let hlen = 20 + options;
    let tot = (hlen + l4.len()) as u16;
    let mut h = vec![0x40 | (hlen / 4) as u8, 0];
    h.extend_from_slice(&tot.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0, 10, 9, 0, 1, 10, 9, 0, 2]);
    h.extend(std::iter::repeat_n(1u8, options)); // NOP options
    h.extend_from_slice(l4);
    h
}

fn ipv6(next: u8, rest: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(rest.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&"fd09::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    h.extend_from_slice(&"fd09::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
    h.extend_from_slice(rest);
    h
}

fn udp(sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let mut u = sport.to_be_bytes().to_vec();
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend(std::iter::repeat_n(0xabu8, payload));
    u
}

fn tcp(sport: u16, dport: u16, flags: u8, payload: usize) -> Vec<u8> {
    let mut t = sport.to_be_bytes().to_vec();
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend(std::iter::repeat_n(0xcdu8, payload));
    t
}

fn run(p: &mut Probes, program: &'static str, frame: &[u8], ctx: Option<&[u8]>) {
    let r = p.test_run(program, frame, ctx, 1).expect("test run");
    assert_eq!(
        r.return_value as i32, -1,
        "the probe never changes a packet's fate"
    );
}

fn only_flow(maps: &Maps) -> Flow {
    let all = maps.flows.read();
    assert_eq!(all.len(), 1, "{all:#?}");
    all.into_iter().next().unwrap()
}

fn counters(maps: &Maps) -> [u64; counter::COUNT as usize] {
    orb8_agent::probes::read_counters(&maps.counters)
}

#[test]
fn privileged_vlan_tags_in_the_frame_are_skipped() {
    for tpid in [0x8100u16, 0x88a8] {
        let (mut p, maps) = load();
        let frame = eth(&[(tpid, 42)], 0x0800, &ipv4(17, &udp(1111, 53, 30), 0));
        run(&mut p, names::TC_INGRESS, &frame, None);
        run(&mut p, names::TC_INGRESS, &frame, None);
        let f = only_flow(&maps);
        assert_eq!(
            (f.key.src_port, f.key.dst_port, f.key.protocol),
            (1111, 53, 17)
        );
        assert_eq!(
            (f.src().to_string(), f.dst().to_string()),
            ("10.9.0.1".into(), "10.9.0.2".into())
        );
        assert_eq!((f.stats.packets, f.stats.bytes), (2, 2 * (20 + 8 + 30)));
        assert_eq!(f.direction(), "ingress");
    }
}

#[test]
fn privileged_ipv4_options_and_egress_direction() {
    let (mut p, maps) = load();
    let frame = eth(&[], 0x0800, &ipv4(6, &tcp(40000, 443, 0x02, 0), 12));
    run(&mut p, names::TC_EGRESS, &frame, None);
    let f = only_flow(&maps);
    assert_eq!((f.key.src_port, f.key.dst_port), (40000, 443));
    assert_eq!(
        (f.stats.packets, f.stats.bytes, f.stats.tcp_flags),
        (1, 32 + 20, 0x02)
    );
    assert_eq!(f.direction(), "egress");
}

#[test]
fn privileged_ipv6_extension_header_chain_is_walked() {
    let (mut p, maps) = load();
    // hop-by-hop (8) -> routing (16) -> destination options (8) -> AH (12 + 4 ICV = 16) -> TCP
    let mut ext = vec![43, 0, 1, 4, 0, 0, 0, 0];
    ext.extend_from_slice(&[60, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    ext.extend_from_slice(&[51, 0, 1, 4, 0, 0, 0, 0]);
    ext.extend_from_slice(&[6, 2, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]);
    ext.extend_from_slice(&tcp(5000, 22, 0x18, 100));
    let frame = eth(&[], 0x86dd, &ipv6(0, &ext));
    run(&mut p, names::TC_INGRESS, &frame, None);
    let f = only_flow(&maps);
    assert_eq!(
        (f.key.protocol, f.key.src_port, f.key.dst_port),
        (6, 5000, 22)
    );
    assert_eq!(
        (f.stats.bytes, f.stats.tcp_flags),
        ((40 + ext.len()) as u64, 0x18)
    );
    assert_eq!(f.src().to_string(), "fd09::1");
}

#[test]
fn privileged_sctp_ports_and_unknown_protocols() {
    let (mut p, maps) = load();
    let mut sctp = 3868u16.to_be_bytes().to_vec();
    sctp.extend_from_slice(&2905u16.to_be_bytes());
    sctp.extend_from_slice(&[0; 8]);
    run(
        &mut p,
        names::TC_INGRESS,
        &eth(&[], 0x0800, &ipv4(132, &sctp, 0)),
        None,
    );
    // GRE (47): a flow with no ports.
    run(
        &mut p,
        names::TC_INGRESS,
        &eth(&[], 0x0800, &ipv4(47, &[0u8; 24], 0)),
        None,
    );
    let mut all = maps.flows.read();
    all.sort_by_key(|f| f.key.protocol);
    let got: Vec<_> = all
        .iter()
        .map(|f| {
            (
                f.key.protocol,
                f.key.src_port,
                f.key.dst_port,
                f.stats.bytes,
            )
        })
        .collect();
    assert_eq!(got, vec![(47, 0, 0, 44), (132, 3868, 2905, 32)]);
}

#[test]
fn privileged_gso_super_packets_count_every_segment() {
    let (mut p, maps) = load();
    // A TSO packet carrying 3 segments of 1000 bytes; on the wire each has its own 40 bytes of
    // IPv4 + TCP header.
    let frame = eth(&[], 0x0800, &ipv4(6, &tcp(40000, 80, 0x10, 3000), 0));
    let mut ctx = [0u8; 192];
    ctx[164..168].copy_from_slice(&3u32.to_ne_bytes()); // gso_segs
    ctx[176..180].copy_from_slice(&1000u32.to_ne_bytes()); // gso_size
    run(&mut p, names::TC_EGRESS, &frame, Some(&ctx));
    let f = only_flow(&maps);
    assert_eq!((f.stats.packets, f.stats.bytes), (3, 3040 + 2 * 40));
}

#[test]
fn privileged_new_flows_send_one_event_each() {
    let (mut p, mut maps) = load();
    let a = eth(&[], 0x0800, &ipv4(17, &udp(1, 2, 10), 0));
    let b = eth(&[], 0x0800, &ipv4(17, &udp(1, 3, 10), 0));
    for f in [&a, &a, &b, &a, &b] {
        run(&mut p, names::TC_INGRESS, f, None);
    }
    let mut events = Vec::new();
    while let Some(item) = maps.events.next() {
        // SAFETY: the kernel wrote a whole Event.
        events
            .push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const orb8_common::Event) });
    }
    let ports: Vec<u16> = events.iter().map(|e| e.key.dst_port).collect();
    assert_eq!(ports, vec![2, 3]);
    assert!(
        events
            .iter()
            .all(|e| e.bytes == 38 && e.kind == orb8_common::event_kind::NEW_FLOW)
    );
    let c = counters(&maps);
    assert_eq!(c[counter::FLOWS_CREATED as usize], 2);
    assert_eq!(c[counter::PACKETS_SEEN as usize], 5);
    assert_eq!(c[counter::PACKETS_ACCOUNTED as usize], 5);
}

#[test]
fn privileged_both_tables_read_in_batches_as_one_at_a_time() {
    // More IPv4 flows than one batch holds, so the read crosses batch boundaries, and IPv6
    // flows in the other table.
    const V4: u16 = 9000;
    const V6: u16 = 300;
    let (mut p, maps) = load_sized(16384, 1024);
    let mut packets = 0u64;
    for port in 1..=V4 {
        let frame = eth(&[], 0x0800, &ipv4(17, &udp(40000, port, 30), 0));
        let times = if port % 1000 == 0 { 3 } else { 1 };
        for _ in 0..times {
            run(&mut p, names::TC_INGRESS, &frame, None);
        }
        packets += times;
    }
    for port in 1..=V6 {
        let frame = eth(&[], 0x86dd, &ipv6(17, &udp(40000, port, 30)));
        run(&mut p, names::TC_EGRESS, &frame, None);
        packets += 1;
    }
    let sorted = |mut v: Vec<Flow>| {
        v.sort_by_key(|f| (f.key.family, f.key.dst_port));
        v
    };
    let batched = sorted(maps.flows.read());
    let each = sorted(maps.flows.read_each());
    assert_eq!(batched.len(), usize::from(V4 + V6));
    assert_eq!(batched, each, "batch reads and one-at-a-time reads agree");
    // Counted by the kernel (orb8_count_flows, which this kernel loads) and by reading.
    assert!(maps.flows.counter.is_some(), "the counting program loads");
    assert_eq!(maps.flows.count(), u64::from(V4 + V6));
    assert_eq!(maps.flows.count_by_reading(), u64::from(V4 + V6));
    assert_eq!(
        batched.iter().map(|f| f.stats.packets).sum::<u64>(),
        packets
    );
    // IPv4 datagrams of 30 payload bytes: 20 + 8 + 30 IP-layer bytes each.
    let v4: Vec<&Flow> = batched.iter().filter(|f| f.key.family == 4).collect();
    assert_eq!(v4.len(), usize::from(V4));
    assert_eq!(v4[999].key.dst_port, 1000);
    assert_eq!((v4[999].stats.packets, v4[999].stats.bytes), (3, 3 * 58));
    assert_eq!(v4[0].src().to_string(), "10.9.0.1");
    assert_eq!(
        counters(&maps)[counter::FLOWS_CREATED as usize],
        u64::from(V4 + V6)
    );
}

#[test]
fn privileged_closed_probes_attach_nothing_again() {
    use orb8_agent::interfaces::{Role, Selected};
    let ns = orb8_testkit::NetNs::new("o8close");
    let (attached, after_close, reattached) = ns.run_in(|| {
        let (mut p, _maps) = load();
        let lo = Selected {
            index: 1,
            name: "lo".into(),
            role: Role::Explicit,
            peer_netnsid: None,
        };
        let first = p.sync(std::slice::from_ref(&lo)).attached.len();
        p.close();
        let after_close = p.attached().len();
        // What a rescan still running at shutdown would do next.
        let again = p.sync(std::slice::from_ref(&lo));
        (
            first,
            after_close,
            again.attached.len() + p.attached().len(),
        )
    });
    assert_eq!(attached, 1, "the probes attach to the namespace's lo");
    assert_eq!(after_close, 0, "close detaches everything");
    assert_eq!(reattached, 0, "and nothing is attached after it");
}
