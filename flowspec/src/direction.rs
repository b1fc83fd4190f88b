//! Which way a flow's packets cross the interface they were seen on.

use std::fmt;
use std::str::FromStr;

use crate::text::alternatives;

/// A direction name that cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectionError {
    /// What was given.
    pub input: String,
}

impl fmt::Display for DirectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = Direction::ALL.map(Direction::name);
        write!(
            f,
            "bad direction '{}': use {}",
            self.input,
            alternatives(&names)
        )
    }
}

impl std::error::Error for DirectionError {}

/// A flow's direction relative to its interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Packets arriving on the interface.
    Ingress,
    /// Packets leaving through the interface.
    Egress,
}

impl Direction {
    /// Every direction, in the order they are offered to users.
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// Its name, as printed and as parsed: `ingress`, `egress`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl FromStr for Direction {
    type Err = DirectionError;

    /// Exactly one of the names.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Direction::ALL
            .into_iter()
            .find(|d| d.name() == input)
            .ok_or_else(|| DirectionError {
                input: input.to_string(),
            })
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(Direction::Ingress.name(), "ingress");
        assert_eq!(Direction::Egress.to_string(), "egress");
        for d in Direction::ALL {
            assert_eq!(d.name().parse::<Direction>(), Ok(d));
        }
    }

    #[test]
    fn other_words_are_refused_with_the_choices() {
        for input in ["", "in", "Egress", " egress", "unspecified"] {
            assert_eq!(
                input.parse::<Direction>().expect_err(input).to_string(),
                format!("bad direction '{input}': use ingress or egress")
            );
        }
    }
}
