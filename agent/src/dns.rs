//! DNS exchanges from the messages the TC probe hands over (`DNS_EVENTS`): pure logic, no I/O.
//!
//! - [`parse`] is the one entry point for wire bytes: a UDP payload (one message) or a TCP
//!   segment (RFC 1035 length-prefixed messages, several per segment). It never panics; what it
//!   cannot read is an [`Unparsed`] reason, counted by the caller.
//! - [`Tracker`] pairs each query with its response by (protocol, client end, server end, id,
//!   name, type), counts the same message seen again (on a second interface, or on both hooks of
//!   one) once, and reports a query unanswered after the timeout as a timeout. Its tables are
//!   bounded; what does not fit is counted.
//! - [`Names`] remembers which name an address was the answer for (bounded), for naming flow
//!   peers.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use hickory_proto::op::{Message as Wire, MessageType};
use hickory_proto::rr::RData;

/// IP protocol numbers DNS travels on.
pub const TCP: u8 = 6;
/// UDP.
pub const UDP: u8 = 17;

/// One answer record of a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The record's owner name (no trailing dot).
    pub name: String,
    /// Its type (`A`, `AAAA`, `CNAME`, ...).
    pub rtype: String,
    /// Time to live, seconds.
    pub ttl: u32,
    /// The record's data as text (an address, a name, ...).
    pub data: String,
    /// The address of an `A`/`AAAA` record.
    pub addr: Option<IpAddr>,
}

/// One DNS message, as far as orb8 reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The message id.
    pub id: u16,
    /// A response (QR set) rather than a query.
    pub response: bool,
    /// The first question's name, lower case, without the trailing dot.
    pub qname: String,
    /// The first question's type (`A`, `AAAA`, ...).
    pub qtype: String,
    /// The response code by name (`NOERROR`, `NXDOMAIN`, ...).
    pub rcode: String,
    /// The answer section.
    pub answers: Vec<Answer>,
}

/// Why bytes were not read as DNS messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unparsed {
    /// The probe copied only the start of a longer message, and that start does not parse.
    Truncated,
    /// A TCP segment holding only part of a length-prefixed message (not reassembled).
    Partial,
    /// Not a DNS message.
    Malformed,
    /// A message without a question: nothing to pair it by.
    NoQuestion,
}

impl Unparsed {
    /// Every reason, in the order status shows them.
    pub const ALL: [Unparsed; 4] = [
        Unparsed::Truncated,
        Unparsed::Partial,
        Unparsed::Malformed,
        Unparsed::NoQuestion,
    ];

    /// The counter name (`dns_unparsed_<reason>`).
    pub fn name(self) -> &'static str {
        match self {
            Unparsed::Truncated => "dns_unparsed_truncated",
            Unparsed::Partial => "dns_unparsed_partial",
            Unparsed::Malformed => "dns_unparsed_malformed",
            Unparsed::NoQuestion => "dns_unparsed_no_question",
        }
    }
}

/// The response code's mnemonic (RFC 1035, 2136, 6891).
pub fn rcode_name(code: u16) -> String {
    let name = match code {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        16 => "BADVERS",
        _ => return format!("RCODE{code}"),
    };
    name.to_string()
}

fn plain_name(name: &hickory_proto::rr::Name) -> String {
    let mut s = name.to_ascii().to_ascii_lowercase();
    if s.len() > 1 && s.ends_with('.') {
        s.pop();
    }
    s
}

fn one(bytes: &[u8]) -> Result<Message, Unparsed> {
    let wire = Wire::from_vec(bytes).map_err(|_| Unparsed::Malformed)?;
    let q = wire.queries.first().ok_or(Unparsed::NoQuestion)?;
    let answers = wire
        .answers
        .iter()
        .map(|r| {
            let addr = match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            };
            let data = match (&r.data, addr) {
                (_, Some(a)) => a.to_string(),
                (RData::CNAME(c), _) => plain_name(&c.0),
                (d, _) => d.to_string(),
            };
            Answer {
                name: plain_name(&r.name),
                rtype: r.record_type().to_string(),
                ttl: r.ttl,
                data,
                addr,
            }
        })
        .collect();
    Ok(Message {
        id: wire.metadata.id,
        response: wire.metadata.message_type == MessageType::Response,
        qname: plain_name(&q.name),
        qtype: q.query_type.to_string(),
        rcode: rcode_name(u16::from(wire.metadata.response_code)),
        answers,
    })
}

/// Reads the DNS messages in a transport payload: `protocol` is [`UDP`] or [`TCP`], `bytes`
/// what the probe copied of a payload of `payload_len` bytes. Messages read before a problem
/// are returned with it.
pub fn parse(protocol: u8, bytes: &[u8], payload_len: usize) -> (Vec<Message>, Option<Unparsed>) {
    let cut = bytes.len() < payload_len;
    if protocol != TCP {
        return match one(bytes) {
            Ok(m) => (vec![m], None),
            Err(Unparsed::Malformed) if cut => (Vec::new(), Some(Unparsed::Truncated)),
            Err(e) => (Vec::new(), Some(e)),
        };
    }
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some((len, body)) = rest.split_first_chunk::<2>() else {
            return (
                out,
                Some(if cut {
                    Unparsed::Truncated
                } else {
                    Unparsed::Partial
                }),
            );
        };
        let len = u16::from_be_bytes(*len) as usize;
        if body.len() < len {
            let why = if cut {
                Unparsed::Truncated
            } else {
                Unparsed::Partial
            };
            return (out, Some(why));
        }
        match one(&body[..len]) {
            Ok(m) => out.push(m),
            Err(e) => return (out, Some(e)),
        }
        rest = &body[len..];
    }
    (out, None)
}

/// A message as the probe saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sighting {
    /// Kernel boot time, nanoseconds.
    pub ts_ns: u64,
    /// The interface it was seen on.
    pub ifindex: u32,
    /// [`UDP`] or [`TCP`].
    pub protocol: u8,
    /// Its source end.
    pub src: SocketAddr,
    /// Its destination end.
    pub dst: SocketAddr,
    /// The message.
    pub message: Message,
}

/// A query and its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// [`UDP`] or [`TCP`].
    pub protocol: u8,
    /// Who asked.
    pub client: SocketAddr,
    /// Who was asked.
    pub server: SocketAddr,
    /// The query id.
    pub id: u16,
    /// The question's name.
    pub qname: String,
    /// The question's type.
    pub qtype: String,
    /// When the query was first seen (kernel boot ns).
    pub query_ns: u64,
    /// The interface the query was first seen on.
    pub ifindex: u32,
    /// The response code; `None` for a query that timed out.
    pub rcode: Option<String>,
    /// Response time, nanoseconds (`None`: timed out).
    pub latency_ns: Option<u64>,
    /// The response's answers.
    pub answers: Vec<Answer>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    protocol: u8,
    client: SocketAddr,
    server: SocketAddr,
    id: u16,
    qname: String,
    qtype: String,
}

/// What the tracker counted, beside the exchanges it produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Messages seen again (a second interface, or both hooks of one): counted once.
    pub duplicates: u64,
    /// Responses to no query seen (the query came before the agent, or was not seen).
    pub unmatched: u64,
    /// Responses to a query already reported as a timeout.
    pub late: u64,
    /// Queries not tracked because the pending table was full (a loss).
    pub pending_full: u64,
    /// Queries that timed out.
    pub timeouts: u64,
}

/// Pairs queries with responses; see the module docs.
#[derive(Debug)]
pub struct Tracker {
    timeout_ns: u64,
    max_pending: usize,
    pending: HashMap<Key, (u64, u32)>,
    /// Keys answered or timed out, with when and whether answered: a later sighting of the
    /// same message is a duplicate (or a late response) until `timeout` after that.
    done: HashMap<Key, (u64, bool)>,
    done_order: VecDeque<(u64, Key)>,
    /// What was counted.
    pub stats: TrackerStats,
}

impl Tracker {
    /// A tracker reporting queries unanswered for `timeout_ns` as timeouts, holding at most
    /// `max_pending` open queries (and as many finished ones for de-duplication).
    pub fn new(timeout_ns: u64, max_pending: usize) -> Self {
        Tracker {
            timeout_ns,
            max_pending,
            pending: HashMap::new(),
            done: HashMap::new(),
            done_order: VecDeque::new(),
            stats: TrackerStats::default(),
        }
    }

    /// Queries waiting for their response.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn finish(&mut self, key: Key, at: u64, answered: bool) {
        if self.done.len() >= self.max_pending
            && let Some((_, old)) = self.done_order.pop_front()
        {
            self.done.remove(&old);
        }
        self.done.insert(key.clone(), (at, answered));
        self.done_order.push_back((at, key));
    }

    /// Takes one sighting; returns the exchange it completes, if any.
    pub fn observe(&mut self, s: Sighting) -> Option<Exchange> {
        let m = s.message;
        let (client, server) = if m.response {
            (s.dst, s.src)
        } else {
            (s.src, s.dst)
        };
        let key = Key {
            protocol: s.protocol,
            client,
            server,
            id: m.id,
            qname: m.qname,
            qtype: m.qtype,
        };
        if !m.response {
            if self.pending.contains_key(&key) || self.done.contains_key(&key) {
                self.stats.duplicates += 1;
            } else if self.pending.len() >= self.max_pending {
                self.stats.pending_full += 1;
            } else {
                self.pending.insert(key, (s.ts_ns, s.ifindex));
            }
            return None;
        }
        let Some((query_ns, ifindex)) = self.pending.remove(&key) else {
            match self.done.get(&key) {
                Some((_, true)) => self.stats.duplicates += 1,
                Some((_, false)) => self.stats.late += 1,
                None => self.stats.unmatched += 1,
            }
            return None;
        };
        let exchange = Exchange {
            protocol: key.protocol,
            client: key.client,
            server: key.server,
            id: key.id,
            qname: key.qname.clone(),
            qtype: key.qtype.clone(),
            query_ns,
            ifindex,
            rcode: Some(m.rcode),
            latency_ns: Some(s.ts_ns.saturating_sub(query_ns)),
            answers: m.answers,
        };
        self.finish(key, s.ts_ns, true);
        Some(exchange)
    }

    /// Reports the queries unanswered since `timeout` before `now_ns` as timeouts, and forgets
    /// finished exchanges older than that.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Exchange> {
        let cutoff = now_ns.saturating_sub(self.timeout_ns);
        while let Some((at, _)) = self.done_order.front()
            && *at < cutoff
        {
            let (at, key) = self.done_order.pop_front().expect("front exists");
            if self.done.get(&key).is_some_and(|(t, _)| *t == at) {
                self.done.remove(&key);
            }
        }
        let expired: Vec<Key> = self
            .pending
            .iter()
            .filter(|(_, (t, _))| *t < cutoff)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out: Vec<Exchange> = expired
            .into_iter()
            .map(|key| {
                let (query_ns, ifindex) = self.pending.remove(&key).expect("listed");
                // Remembered from now: a late copy of the query is not a new exchange.
                self.finish(key.clone(), now_ns, false);
                Exchange {
                    protocol: key.protocol,
                    client: key.client,
                    server: key.server,
                    id: key.id,
                    qname: key.qname,
                    qtype: key.qtype,
                    query_ns,
                    ifindex,
                    rcode: None,
                    latency_ns: None,
                    answers: Vec::new(),
                }
            })
            .collect();
        self.stats.timeouts += out.len() as u64;
        out.sort_by_key(|e| e.query_ns);
        out
    }
}

/// Which name each address was an answer for: the newest answer wins; the oldest address is
/// forgotten beyond the capacity.
#[derive(Debug)]
pub struct Names {
    capacity: usize,
    by_addr: HashMap<IpAddr, String>,
    order: VecDeque<IpAddr>,
}

impl Names {
    /// At most `capacity` addresses.
    pub fn new(capacity: usize) -> Self {
        Names {
            capacity,
            by_addr: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Learns the addresses an exchange's answers gave for its question's name.
    pub fn learn(&mut self, e: &Exchange) {
        for a in &e.answers {
            let Some(addr) = a.addr else { continue };
            if self.by_addr.insert(addr, e.qname.clone()).is_none() {
                self.order.push_back(addr);
                if self.order.len() > self.capacity
                    && let Some(old) = self.order.pop_front()
                {
                    self.by_addr.remove(&old);
                }
            }
        }
    }

    /// The name `addr` was an answer for, if any.
    pub fn name_of(&self, addr: &IpAddr) -> Option<&str> {
        self.by_addr.get(addr).map(String::as_str)
    }
}

#[cfg(test)]
mod tests;
