//! Why an interface is watched, and whose direction a flow seen on it has.
//!
//! The probes count per interface, in the interface's direction (docs/flows.md). What a person
//! asks is the direction of an *end*: did the pod (or the node) send or receive? On the host
//! end of a pod's veth, what arrives on the interface (ingress) is what the pod sent, so the
//! pod's direction is the opposite of the interface's. On an uplink or a bridge, the host stack
//! is the end at the interface: ingress is what the node received, the same word.

use crate::direction::Direction;

/// Why an agent watches an interface, as it says on the wire (`GetStatus`, each flow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InterfaceRole {
    /// Named with `--interface`: nothing is known about what it leads to.
    Explicit,
    /// The host end of a veth pair: the pod (network namespace) at its other end is the
    /// observed end.
    Veth,
    /// Carries a default route: the node is the observed end.
    Uplink,
    /// A container bridge (`cni0`, `docker0`, ...): the node is the observed end.
    Bridge,
}

impl InterfaceRole {
    /// Every role, in the order they are listed.
    pub const ALL: [InterfaceRole; 4] = [
        InterfaceRole::Explicit,
        InterfaceRole::Veth,
        InterfaceRole::Uplink,
        InterfaceRole::Bridge,
    ];

    /// Its name on the wire and in output: `explicit`, `veth`, `uplink`, `bridge`.
    pub fn name(self) -> &'static str {
        match self {
            InterfaceRole::Explicit => "explicit",
            InterfaceRole::Veth => "veth",
            InterfaceRole::Uplink => "uplink",
            InterfaceRole::Bridge => "bridge",
        }
    }

    /// The role of a wire name; `None` for an empty or unknown one (an older or newer agent).
    pub fn from_name(name: &str) -> Option<InterfaceRole> {
        InterfaceRole::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The direction of the observed end (the pod behind a veth, the node on an uplink or a
    /// bridge, the host stack on an explicit interface) for a packet crossing the interface in
    /// `interface` direction: `Egress` means the observed end sent it.
    pub fn end_direction(self, interface: Direction) -> Direction {
        match (self, interface) {
            (InterfaceRole::Veth, Direction::Ingress) => Direction::Egress,
            (InterfaceRole::Veth, Direction::Egress) => Direction::Ingress,
            (_, d) => d,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_none() {
        for r in InterfaceRole::ALL {
            assert_eq!(InterfaceRole::from_name(r.name()), Some(r));
        }
        assert_eq!(InterfaceRole::from_name(""), None);
        assert_eq!(InterfaceRole::from_name("Veth"), None);
    }

    #[test]
    fn a_veth_turns_the_direction_around_and_nothing_else_does() {
        use Direction::{Egress, Ingress};
        assert_eq!(InterfaceRole::Veth.end_direction(Ingress), Egress);
        assert_eq!(InterfaceRole::Veth.end_direction(Egress), Ingress);
        for r in [
            InterfaceRole::Uplink,
            InterfaceRole::Bridge,
            InterfaceRole::Explicit,
        ] {
            for d in Direction::ALL {
                assert_eq!(r.end_direction(d), d, "{r:?} {d:?}");
            }
        }
    }
}
