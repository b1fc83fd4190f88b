//! The orders a flow table is sorted in: biggest first by bytes or packets, or most recent first.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use crate::text::alternatives;

/// A sort key name that cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKeyError {
    /// What was given.
    pub input: String,
}

impl fmt::Display for SortKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = SortKey::ALL.map(SortKey::name);
        write!(
            f,
            "bad sort key '{}': use {}",
            self.input,
            alternatives(&names)
        )
    }
}

impl std::error::Error for SortKeyError {}

/// The counts of one flow that sorting looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// IP-layer bytes counted.
    pub bytes: u64,
    /// Packets counted.
    pub packets: u64,
    /// When its latest packet was seen (any monotonic unit; larger is later).
    pub last_seen: i64,
}

/// How a flow table is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum SortKey {
    /// Most bytes first; equal bytes, most packets first.
    #[default]
    Bytes,
    /// Most packets first; equal packets, most bytes first.
    Packets,
    /// Most recently seen first.
    Time,
}

impl SortKey {
    /// Every key, in the order they are offered to users.
    pub const ALL: [SortKey; 3] = [SortKey::Bytes, SortKey::Packets, SortKey::Time];

    /// Its name, as parsed and printed: `bytes`, `packets`, `time`.
    pub fn name(self) -> &'static str {
        match self {
            SortKey::Bytes => "bytes",
            SortKey::Packets => "packets",
            SortKey::Time => "time",
        }
    }

    /// How `a` and `b` compare under this key: `Less` when `a` comes first. Flows this key
    /// cannot tell apart are `Equal`; callers that need one fixed order add their own
    /// tie-breaks after it.
    pub fn order(self, a: &Totals, b: &Totals) -> Ordering {
        match self {
            SortKey::Bytes => b.bytes.cmp(&a.bytes).then(b.packets.cmp(&a.packets)),
            SortKey::Packets => b.packets.cmp(&a.packets).then(b.bytes.cmp(&a.bytes)),
            SortKey::Time => b.last_seen.cmp(&a.last_seen),
        }
    }
}

impl FromStr for SortKey {
    type Err = SortKeyError;

    /// Exactly one of the names.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        SortKey::ALL
            .into_iter()
            .find(|k| k.name() == input)
            .ok_or_else(|| SortKeyError {
                input: input.to_string(),
            })
    }
}

impl fmt::Display for SortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(bytes: u64, packets: u64, last_seen: i64) -> Totals {
        Totals {
            bytes,
            packets,
            last_seen,
        }
    }

    fn sorted(key: SortKey, mut flows: Vec<Totals>) -> Vec<Totals> {
        flows.sort_by(|a, b| key.order(a, b));
        flows
    }

    #[test]
    fn bytes_then_packets() {
        let got = sorted(
            SortKey::Bytes,
            vec![t(100, 1, 0), t(900, 1, 0), t(100, 5, 0), t(500, 9, 0)],
        );
        assert_eq!(
            got,
            vec![t(900, 1, 0), t(500, 9, 0), t(100, 5, 0), t(100, 1, 0)]
        );
    }

    #[test]
    fn packets_then_bytes() {
        let got = sorted(
            SortKey::Packets,
            vec![t(100, 1, 0), t(900, 1, 0), t(100, 5, 0), t(500, 9, 0)],
        );
        assert_eq!(
            got,
            vec![t(500, 9, 0), t(100, 5, 0), t(900, 1, 0), t(100, 1, 0)]
        );
    }

    #[test]
    fn time_is_most_recent_first_and_nothing_else() {
        let got = sorted(
            SortKey::Time,
            vec![t(1, 1, 10), t(2, 2, 30), t(3, 3, 20), t(9, 9, 20)],
        );
        // A stable sort keeps the tie (20) in its input order: time alone decides.
        assert_eq!(
            got,
            vec![t(2, 2, 30), t(3, 3, 20), t(9, 9, 20), t(1, 1, 10)]
        );
        assert_eq!(
            SortKey::Time.order(&t(1, 1, 5), &t(9, 9, 5)),
            Ordering::Equal
        );
    }

    #[test]
    fn names_round_trip_and_bytes_is_the_default() {
        assert_eq!(SortKey::default(), SortKey::Bytes);
        for k in SortKey::ALL {
            assert_eq!(k.name().parse::<SortKey>(), Ok(k));
            assert_eq!(k.to_string(), k.name());
        }
        assert_eq!(
            "size".parse::<SortKey>().expect_err("unknown").to_string(),
            "bad sort key 'size': use bytes, packets or time"
        );
        assert!("Bytes".parse::<SortKey>().is_err());
    }
}
