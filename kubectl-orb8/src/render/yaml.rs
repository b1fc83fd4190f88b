//! YAML, with the same fields as JSON.

use std::io;

use serde::Serialize;

use super::view::FlowView;
use crate::flow::FlowRecord;

/// Any view as a YAML document.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> io::Result<String> {
    serde_norway::to_string(value).map_err(io::Error::other)
}

/// A flow table as a YAML sequence of flow mappings.
pub fn flows(flows: &[FlowRecord]) -> io::Result<String> {
    let views: Vec<FlowView> = flows.iter().map(FlowView::from).collect();
    to_string(&views)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_flow_as_yaml() {
        let got = flows(&[FlowRecord::test_flow()]).expect("serialises");
        let want = "\
- node: node-a
  interface: eth0
  direction: egress
  interface_direction: egress
  interface_role: uplink
  protocol: udp
  src: 10.0.0.1
  src_port: 40000
  dst: 10.0.0.2
  dst_port: 53
  fragment: false
  packets: 2
  bytes: 150
  tcp_flags: ''
  first_seen: 2023-11-14T22:13:20.123456789Z
  last_seen: 2023-11-14T22:13:21.000000000Z
";
        assert_eq!(got, want);
    }

    #[test]
    fn numeric_protocols_stay_strings() {
        let mut f = FlowRecord::test_flow();
        f.protocol = orb8_flowspec::Protocol(47);
        let got = flows(&[f]).expect("serialises");
        assert!(got.contains("protocol: '47'"), "{got}");
    }
}
