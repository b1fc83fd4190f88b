use super::*;

use hickory_proto::op::{Message as W, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use proptest::prelude::*;

fn query(id: u16, name: &str, t: RecordType) -> W {
    let mut m = W::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m
}

fn response(q: &W, rcode: ResponseCode, answers: Vec<Record>) -> W {
    let mut m = W::new(q.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata.response_code = rcode;
    m.add_queries(q.queries.clone());
    m.add_answers(answers);
    m
}

fn a(name: &str, ip: [u8; 4]) -> Record {
    Record::from_rdata(
        Name::from_ascii(name).unwrap(),
        60,
        RData::A(A(std::net::Ipv4Addr::from(ip))),
    )
}

fn bytes(m: &W) -> Vec<u8> {
    m.to_vec().unwrap()
}

fn tcp(msgs: &[&W]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        let b = bytes(m);
        out.extend_from_slice(&(b.len() as u16).to_be_bytes());
        out.extend_from_slice(&b);
    }
    out
}

#[test]
fn a_udp_query_and_its_answer_parse() {
    let q = query(7, "Api.Example.com.", RecordType::A);
    let (got, why) = parse(UDP, &bytes(&q), bytes(&q).len());
    assert_eq!(why, None);
    assert_eq!(
        got,
        vec![Message {
            id: 7,
            response: false,
            qname: "api.example.com".into(),
            qtype: "A".into(),
            rcode: "NOERROR".into(),
            answers: vec![],
        }]
    );
    let cname = Record::from_rdata(
        Name::from_ascii("api.example.com.").unwrap(),
        30,
        RData::CNAME(CNAME(Name::from_ascii("edge.example.net.").unwrap())),
    );
    let r = response(
        &q,
        ResponseCode::NoError,
        vec![cname, a("edge.example.net.", [203, 0, 113, 9])],
    );
    let (got, why) = parse(UDP, &bytes(&r), bytes(&r).len());
    assert_eq!(why, None);
    let m = &got[0];
    assert!(m.response);
    assert_eq!(
        m.answers
            .iter()
            .map(|a| (a.rtype.as_str(), a.data.as_str(), a.addr))
            .collect::<Vec<_>>(),
        vec![
            ("CNAME", "edge.example.net", None),
            ("A", "203.0.113.9", Some("203.0.113.9".parse().unwrap()))
        ]
    );
    let nx = response(
        &query(8, "no.example.", RecordType::AAAA),
        ResponseCode::NXDomain,
        vec![],
    );
    assert_eq!(parse(UDP, &bytes(&nx), 0).0[0].rcode, "NXDOMAIN");
    let sf = response(
        &query(9, "x.", RecordType::A),
        ResponseCode::ServFail,
        vec![],
    );
    assert_eq!(parse(UDP, &bytes(&sf), 0).0[0].rcode, "SERVFAIL");
}

#[test]
fn tcp_segments_carry_length_prefixed_messages() {
    let q1 = query(1, "a.test.", RecordType::A);
    let q2 = query(2, "b.test.", RecordType::AAAA);
    let seg = tcp(&[&q1, &q2]);
    let (got, why) = parse(TCP, &seg, seg.len());
    assert_eq!(why, None);
    assert_eq!(
        got.iter()
            .map(|m| (m.id, m.qname.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "a.test"), (2, "b.test")]
    );
    // The second message continues in the next segment: the first is read, the rest counted.
    let (got, why) = parse(TCP, &seg[..seg.len() - 3], seg.len() - 3);
    assert_eq!((got.len(), why), (1, Some(Unparsed::Partial)));
    // The probe cut the segment: truncated, not partial.
    let (got, why) = parse(TCP, &seg[..seg.len() - 3], seg.len());
    assert_eq!((got.len(), why), (1, Some(Unparsed::Truncated)));
}

#[test]
fn what_is_not_dns_is_named() {
    assert_eq!(
        parse(UDP, b"hello world", 11),
        (vec![], Some(Unparsed::Malformed))
    );
    let mut none = W::new(3, MessageType::Query, OpCode::Query);
    none.metadata.recursion_desired = true;
    assert_eq!(
        parse(UDP, &bytes(&none), 12),
        (vec![], Some(Unparsed::NoQuestion))
    );
    let q = bytes(&query(4, "long.example.", RecordType::A));
    assert_eq!(
        parse(UDP, &q[..20], 2000),
        (vec![], Some(Unparsed::Truncated))
    );
    assert_eq!(parse(TCP, &[0], 1), (vec![], Some(Unparsed::Partial)));
}

fn sighting(ts: u64, ifindex: u32, from: &str, to: &str, m: &W) -> Sighting {
    let b = bytes(m);
    Sighting {
        ts_ns: ts,
        ifindex,
        protocol: UDP,
        src: from.parse().unwrap(),
        dst: to.parse().unwrap(),
        message: parse(UDP, &b, b.len()).0.remove(0),
    }
}

const C: &str = "10.0.0.5:40000";
const S: &str = "10.0.0.53:53";
const MS: u64 = 1_000_000;

#[test]
fn a_response_completes_its_query_once_however_often_both_are_seen() {
    let mut t = Tracker::new(5_000 * MS, 16);
    let q = query(77, "api.example.com.", RecordType::A);
    let r = response(
        &q,
        ResponseCode::NoError,
        vec![a("api.example.com.", [203, 0, 113, 9])],
    );
    // Query on the pod's veth, then again on the uplink; the response likewise.
    assert_eq!(t.observe(sighting(1_000 * MS, 3, C, S, &q)), None);
    assert_eq!(t.observe(sighting(1_000 * MS + 10, 2, C, S, &q)), None);
    let e = t
        .observe(sighting(1_002 * MS, 2, S, C, &r))
        .expect("paired");
    assert_eq!(t.observe(sighting(1_002 * MS + 10, 3, S, C, &r)), None);
    assert_eq!(
        (e.client, e.server, e.id, e.qname.as_str(), e.qtype.as_str()),
        (
            C.parse().unwrap(),
            S.parse().unwrap(),
            77,
            "api.example.com",
            "A"
        )
    );
    assert_eq!(
        (e.rcode.as_deref(), e.latency_ns, e.ifindex),
        (Some("NOERROR"), Some(2 * MS), 3)
    );
    assert_eq!(t.stats.duplicates, 2);
    assert_eq!(t.stats.unmatched, 0);
    assert_eq!(t.pending(), 0);
    assert!(t.expire(1_003 * MS).is_empty());

    // Another client port with the same id is another exchange.
    let other = sighting(1_004 * MS, 3, "10.0.0.5:40001", S, &q);
    t.observe(other);
    assert_eq!(t.pending(), 1);
    // A response nobody asked for.
    t.observe(sighting(1_005 * MS, 3, S, "10.0.0.6:1000", &r));
    assert_eq!(t.stats.unmatched, 1);
}

#[test]
fn unanswered_queries_time_out_once() {
    let mut t = Tracker::new(100 * MS, 16);
    let q = query(5, "never.test.", RecordType::A);
    t.observe(sighting(10 * MS, 3, C, S, &q));
    assert!(t.expire(100 * MS).is_empty(), "not yet");
    let out = t.expire(111 * MS);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].rcode.clone(), out[0].latency_ns), (None, None));
    assert_eq!(out[0].qname, "never.test");
    assert_eq!(t.stats.timeouts, 1);
    // A late copy of the query (the second interface) is not a new exchange...
    t.observe(sighting(150 * MS, 2, C, S, &q));
    assert_eq!((t.pending(), t.stats.duplicates), (0, 1));
    // ...and a response after the timeout is late, not a duplicate.
    let r = response(&q, ResponseCode::NoError, vec![]);
    assert_eq!(t.observe(sighting(160 * MS, 2, S, C, &r)), None);
    assert_eq!(
        (t.stats.late, t.stats.duplicates, t.stats.unmatched),
        (1, 1, 0)
    );
    assert!(t.expire(300 * MS).is_empty());
    // ...but once forgotten, a retry is.
    t.observe(sighting(400 * MS, 3, C, S, &q));
    assert_eq!(t.pending(), 1);
}

#[test]
fn a_full_table_counts_what_it_cannot_hold() {
    let mut t = Tracker::new(100 * MS, 2);
    for id in 0..5 {
        t.observe(sighting(MS, 3, C, S, &query(id, "x.test.", RecordType::A)));
    }
    assert_eq!((t.pending(), t.stats.pending_full), (2, 3));
}

#[test]
fn names_remember_answers_bounded() {
    let mut n = Names::new(2);
    let mk = |name: &str, ips: &[[u8; 4]]| Exchange {
        protocol: UDP,
        client: C.parse().unwrap(),
        server: S.parse().unwrap(),
        id: 1,
        qname: name.into(),
        qtype: "A".into(),
        query_ns: 0,
        ifindex: 1,
        rcode: Some("NOERROR".into()),
        latency_ns: Some(1),
        answers: ips
            .iter()
            .map(|ip| Answer {
                name: name.into(),
                rtype: "A".into(),
                ttl: 1,
                data: String::new(),
                addr: Some(IpAddr::from(*ip)),
            })
            .collect(),
    };
    n.learn(&mk("api.stripe.com", &[[1, 1, 1, 1], [2, 2, 2, 2]]));
    assert_eq!(
        n.name_of(&"1.1.1.1".parse().unwrap()),
        Some("api.stripe.com")
    );
    n.learn(&mk("b.test", &[[3, 3, 3, 3]]));
    assert_eq!(
        n.name_of(&"1.1.1.1".parse().unwrap()),
        None,
        "oldest forgotten"
    );
    assert_eq!(n.name_of(&"3.3.3.3".parse().unwrap()), Some("b.test"));
    let v6 = AAAA::from(std::net::Ipv6Addr::LOCALHOST);
    assert_eq!(v6.0, std::net::Ipv6Addr::LOCALHOST);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic the parser, UDP or TCP, cut or whole.
    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..600), tcp_ in any::<bool>(), extra in 0usize..4) {
        let proto = if tcp_ { TCP } else { UDP };
        let _ = parse(proto, &b, b.len() + extra);
    }

    /// Valid messages with random bytes flipped never panic either (deep inside the format).
    #[test]
    fn mutated_messages_never_panic(flips in proptest::collection::vec((0usize..200, any::<u8>()), 1..8)) {
        let q = query(9, "mutate.example.com.", RecordType::AAAA);
        let mut b = bytes(&response(&q, ResponseCode::NoError, vec![a("mutate.example.com.", [1, 2, 3, 4])]));
        for (i, v) in flips {
            let n = b.len();
            b[i % n] = v;
        }
        let _ = parse(UDP, &b, b.len());
        let mut seg = (b.len() as u16).to_be_bytes().to_vec();
        seg.extend_from_slice(&b);
        let _ = parse(TCP, &seg, seg.len());
    }
}
