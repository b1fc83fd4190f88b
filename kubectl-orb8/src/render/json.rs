//! JSON: pretty documents for tables, compact lines for live events.

use std::cell::RefCell;
use std::io::{self, Write};

use serde::{Serialize, Serializer, ser::Error as _};

use super::view::FlowView;
use crate::flow::FlowRecord;

/// Any view as one pretty-printed JSON document.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> io::Result<String> {
    serde_json::to_string_pretty(value).map_err(io::Error::other)
}

/// Any view as one compact JSON line (no trailing newline), for NDJSON.
pub fn to_line<T: Serialize + ?Sized>(value: &T) -> io::Result<String> {
    serde_json::to_string(value).map_err(io::Error::other)
}

/// Writes `items` as one pretty-printed JSON array and a newline, byte for byte what
/// [`to_string`] of a `Vec` of them and `writeln!` would write, but one item at a time: neither
/// the items nor the text of the whole table are ever held (100k flows are tens of MiB of each).
pub fn write_array<T, I>(out: &mut dyn Write, items: I) -> io::Result<()>
where
    T: Serialize,
    I: IntoIterator<Item = T>,
{
    let mut w = io::BufWriter::with_capacity(1 << 16, out);
    serde_json::to_writer_pretty(&mut w, &Lazy(RefCell::new(Some(items.into_iter()))))
        .map_err(io::Error::from)?;
    writeln!(w)?;
    w.flush()
}

/// A sequence serialised from an iterator, once.
struct Lazy<I>(RefCell<Option<I>>);

impl<T: Serialize, I: Iterator<Item = T>> Serialize for Lazy<I> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let items = self
            .0
            .borrow_mut()
            .take()
            .ok_or_else(|| S::Error::custom("a lazy sequence is serialised once"))?;
        s.collect_seq(items)
    }
}

/// A flow table as one JSON array of flow objects.
pub fn flows(flows: &[FlowRecord]) -> io::Result<String> {
    let views: Vec<FlowView> = flows.iter().map(FlowView::from).collect();
    to_string(&views)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::view::{GapLine, NewFlowLine};

    #[test]
    fn written_arrays_are_the_documents_to_string_makes() {
        let rows = [FlowRecord::test_flow(), FlowRecord::test_flow()];
        for n in 0..=2 {
            let mut out = Vec::new();
            write_array(&mut out, rows[..n].iter().map(FlowView::from)).expect("writes");
            let want = format!("{}\n", flows(&rows[..n]).expect("serialises"));
            assert_eq!(String::from_utf8(out).unwrap(), want, "{n} rows");
        }
    }

    #[test]
    fn a_known_flow_as_json() {
        let got = flows(&[FlowRecord::test_flow()]).expect("serialises");
        let want = r#"[
  {
    "node": "node-a",
    "interface": "eth0",
    "direction": "egress",
    "interface_direction": "egress",
    "interface_role": "uplink",
    "protocol": "udp",
    "src": "10.0.0.1",
    "src_port": 40000,
    "dst": "10.0.0.2",
    "dst_port": 53,
    "fragment": false,
    "packets": 2,
    "bytes": 150,
    "tcp_flags": "",
    "first_seen": "2023-11-14T22:13:20.123456789Z",
    "last_seen": "2023-11-14T22:13:21.000000000Z"
  }
]"#;
        assert_eq!(got, want);
    }

    #[test]
    fn a_known_group_as_json() {
        let groups = crate::group::group(
            &[FlowRecord::test_flow(), FlowRecord::test_flow()],
            orb8_flowspec::SortKey::Bytes,
            None,
        );
        let views: Vec<crate::render::view::FlowGroupView> = groups
            .iter()
            .map(crate::render::view::FlowGroupView::from)
            .collect();
        let want = r#"[
  {
    "node": "node-a",
    "pod": "10.0.0.1",
    "peer": "10.0.0.2",
    "port": 53,
    "protocol": "udp",
    "direction": "egress",
    "connections": 2,
    "packets": 4,
    "bytes": 300,
    "tcp_flags": "",
    "resets": 0,
    "failed": 0,
    "first_seen": "2023-11-14T22:13:20.123456789Z",
    "last_seen": "2023-11-14T22:13:21.000000000Z"
  }
]"#;
        assert_eq!(to_string(&views).expect("serialises"), want);
    }

    #[test]
    fn big_counts_stay_exact_and_unknown_protocols_are_numbers_as_text() {
        let mut f = FlowRecord::test_flow();
        f.bytes = u64::MAX;
        f.protocol = orb8_flowspec::Protocol(47);
        let got = flows(&[f]).expect("serialises");
        assert!(got.contains("\"bytes\": 18446744073709551615"), "{got}");
        assert!(got.contains("\"protocol\": \"47\""), "{got}");
    }

    #[test]
    fn event_lines_are_single_line_json() {
        let line = NewFlowLine {
            event: "new_flow",
            time: Some("2023-11-14T22:13:20.123456789Z".into()),
            seq: 7,
            flow: FlowView::from(&FlowRecord::test_flow()),
        };
        let got = to_line(&line).expect("serialises");
        assert_eq!(
            got,
            r#"{"event":"new_flow","time":"2023-11-14T22:13:20.123456789Z","seq":7,"node":"node-a","interface":"eth0","direction":"egress","interface_direction":"egress","interface_role":"uplink","protocol":"udp","src":"10.0.0.1","src_port":40000,"dst":"10.0.0.2","dst_port":53,"fragment":false,"packets":2,"bytes":150,"tcp_flags":"","first_seen":"2023-11-14T22:13:20.123456789Z","last_seen":"2023-11-14T22:13:21.000000000Z"}"#
        );
        let cause = crate::merge::GapCause::SeqJump {
            expected: 3,
            got: 5,
        };
        let gap = to_line(&GapLine::new("node-a", 2, &cause)).expect("serialises");
        assert_eq!(
            gap,
            r#"{"event":"gap","node":"node-a","lost":2,"stage":"unknown","reason":"seq_jump"}"#
        );
    }
}
