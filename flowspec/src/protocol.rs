//! IP protocol numbers and the names people use for them, and TCP flags as letters.

use std::fmt;
use std::str::FromStr;

use crate::text::alternatives;

/// The protocol names orb8 knows, in the order they are offered to users.
pub const NAMES: [(u8, &str); 6] = [
    (6, "tcp"),
    (17, "udp"),
    (1, "icmp"),
    (58, "icmpv6"),
    (132, "sctp"),
    (136, "udplite"),
];

/// Other spellings accepted when parsing (never printed).
const ALIASES: [(u8, &str); 2] = [(58, "icmp6"), (58, "ipv6-icmp")];

/// A protocol that cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// Neither a known name nor a number from 0 to 255.
    Unknown {
        /// What was given.
        input: String,
    },
    /// A protocol number above 255.
    OutOfRange {
        /// The number given.
        value: u32,
    },
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Unknown { input } => {
                let mut names: Vec<&str> = NAMES.iter().map(|(_, n)| *n).collect();
                names.push("a number from 0 to 255");
                write!(f, "bad protocol '{input}': use {}", alternatives(&names))
            }
            ProtocolError::OutOfRange { value } => {
                write!(f, "bad protocol number {value}: protocols are 0 to 255")
            }
        }
    }
}

impl std::error::Error for ProtocolError {}

/// An IP protocol number (the IPv4 protocol / IPv6 next-header field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Protocol(pub u8);

impl Protocol {
    /// ICMP (1).
    pub const ICMP: Protocol = Protocol(1);
    /// TCP (6).
    pub const TCP: Protocol = Protocol(6);
    /// UDP (17).
    pub const UDP: Protocol = Protocol(17);
    /// ICMPv6 (58).
    pub const ICMPV6: Protocol = Protocol(58);

    /// Its name, when orb8 knows one (`tcp`, `udp`, `icmp`, `icmpv6`, `sctp`, `udplite`).
    pub fn name(self) -> Option<&'static str> {
        NAMES
            .iter()
            .find(|(n, _)| *n == self.0)
            .map(|(_, name)| *name)
    }

    /// Whether its flows have ports, as opposed to ICMP's type and code.
    pub fn has_ports(self) -> bool {
        !matches!(self, Protocol::ICMP | Protocol::ICMPV6)
    }

    /// Parses a name (any case; `icmp6` and `ipv6-icmp` mean `icmpv6`) or a number from 0 to
    /// 255. Blanks around it are ignored.
    pub fn parse(input: &str) -> Result<Protocol, ProtocolError> {
        let lower = input.trim().to_ascii_lowercase();
        if let Some((n, _)) = NAMES
            .iter()
            .chain(&ALIASES)
            .find(|(_, name)| *name == lower)
        {
            return Ok(Protocol(*n));
        }
        lower
            .parse::<u8>()
            .map(Protocol)
            .map_err(|_| ProtocolError::Unknown {
                input: input.to_string(),
            })
    }
}

impl TryFrom<u32> for Protocol {
    type Error = ProtocolError;

    /// A protocol number as carried in a wider integer; above 255 is an error.
    fn try_from(value: u32) -> Result<Self, Self::Error> {
        u8::try_from(value)
            .map(Protocol)
            .map_err(|_| ProtocolError::OutOfRange { value })
    }
}

impl FromStr for Protocol {
    type Err = ProtocolError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Protocol::parse(input)
    }
}

impl fmt::Display for Protocol {
    /// Its name, or its number when it has none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

/// TCP flags as tcpdump prints them, in bit order: `F S R P . U E W` (FIN, SYN, RST, PSH, ACK,
/// URG, ECE, CWR); bits above the eighth are ignored.
pub fn tcp_flag_letters(flags: u32) -> String {
    const LETTERS: [(u32, char); 8] = [
        (0x01, 'F'),
        (0x02, 'S'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x10, '.'),
        (0x20, 'U'),
        (0x40, 'E'),
        (0x80, 'W'),
    ];
    LETTERS
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, c)| *c)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_parse() {
        let cases = [
            ("tcp", 6),
            ("TCP", 6),
            (" udp ", 17),
            ("icmp", 1),
            ("icmpv6", 58),
            ("icmp6", 58),
            ("ipv6-icmp", 58),
            ("sctp", 132),
            ("udplite", 136),
            ("0", 0),
            ("47", 47),
            ("255", 255),
        ];
        for (input, number) in cases {
            assert_eq!(Protocol::parse(input), Ok(Protocol(number)), "{input}");
        }
    }

    #[test]
    fn bad_protocols_are_refused_with_the_choices() {
        for input in ["256", "-1", "tcpp", "", "6.0"] {
            assert_eq!(
                Protocol::parse(input).expect_err(input).to_string(),
                format!(
                    "bad protocol '{input}': use tcp, udp, icmp, icmpv6, sctp, udplite or a number from 0 to 255"
                )
            );
        }
        assert_eq!(Protocol::try_from(255), Ok(Protocol(255)));
        let err = Protocol::try_from(256).expect_err("too big");
        assert_eq!(err, ProtocolError::OutOfRange { value: 256 });
        assert_eq!(
            err.to_string(),
            "bad protocol number 256: protocols are 0 to 255"
        );
    }

    #[test]
    fn display_is_the_name_or_the_number() {
        assert_eq!(Protocol(6).to_string(), "tcp");
        assert_eq!(Protocol(17).to_string(), "udp");
        assert_eq!(Protocol(136).to_string(), "udplite");
        assert_eq!(Protocol(47).to_string(), "47");
        assert_eq!(Protocol(47).name(), None);
        for (n, name) in NAMES {
            assert_eq!(Protocol::parse(name), Ok(Protocol(n)));
            assert_eq!(Protocol(n).to_string(), name);
        }
    }

    #[test]
    fn only_icmp_lacks_ports() {
        assert!(!Protocol::ICMP.has_ports());
        assert!(!Protocol::ICMPV6.has_ports());
        assert!(Protocol::TCP.has_ports());
        assert!(Protocol::UDP.has_ports());
        assert!(Protocol(132).has_ports());
    }

    #[test]
    fn tcp_flags_are_tcpdump_letters_in_bit_order() {
        assert_eq!(tcp_flag_letters(0), "");
        assert_eq!(tcp_flag_letters(0x02), "S");
        assert_eq!(tcp_flag_letters(0x12), "S.");
        assert_eq!(tcp_flag_letters(0x1b), "FSP.");
        assert_eq!(tcp_flag_letters(0xff), "FSRP.UEW");
        assert_eq!(tcp_flag_letters(0x100), "");
    }
}
