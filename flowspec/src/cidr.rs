//! Address blocks (`10.0.0.0/8`, `fd00::/64`; a bare address is a /32 or /128) and the byte
//! form flows carry addresses in (4 bytes for IPv4, 16 for IPv6).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A block that cannot be parsed: not `ADDRESS` or `ADDRESS/PREFIX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrError {
    /// What was given.
    pub input: String,
    /// Why it was refused.
    pub reason: String,
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad CIDR '{}': {}", self.input, self.reason)
    }
}

impl std::error::Error for CidrError {}

/// An address block: its first address (host bits cleared) and a prefix length in bits.
/// An IPv4 block holds only IPv4 addresses, an IPv6 block only IPv6 ones (IPv4-mapped IPv6
/// addresses included: they are IPv6 addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

fn mask_u32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_u128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl Cidr {
    /// The block holding exactly `addr` (a /32 or a /128).
    pub fn host(addr: IpAddr) -> Cidr {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Cidr {
            network: addr,
            prefix,
        }
    }

    /// Parses `ADDRESS` or `ADDRESS/PREFIX`; host bits after the prefix are cleared
    /// (`10.1.2.3/8` is `10.0.0.0/8`). Blanks around either part are ignored.
    pub fn parse(input: &str) -> Result<Cidr, CidrError> {
        let bad = |reason: String| CidrError {
            input: input.to_string(),
            reason,
        };
        let (addr_part, prefix_part) = match input.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (input, None),
        };
        let addr: IpAddr = addr_part
            .trim()
            .parse()
            .map_err(|_| bad(format!("'{}' is not an IP address", addr_part.trim())))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_part {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| bad(format!("prefix length must be a number from 0 to {max}")))?,
        };
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask_u32(prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask_u128(prefix))),
        };
        Ok(Cidr { network, prefix })
    }

    /// The first address of the block.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `addr` lies inside the block.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.network, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = mask_u32(self.prefix);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = mask_u128(self.prefix);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Cidr::parse(input)
    }
}

impl fmt::Display for Cidr {
    /// `network/prefix`, which [`Cidr::parse`] reads back to the same block.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// An address from its byte form: 4 bytes are IPv4, 16 are IPv6, anything else is malformed.
pub fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(b) = <[u8; 4]>::try_from(bytes) {
        Some(IpAddr::V4(Ipv4Addr::from(b)))
    } else if let Ok(b) = <[u8; 16]>::try_from(bytes) {
        Some(IpAddr::V6(Ipv6Addr::from(b)))
    } else {
        None
    }
}

/// The byte form of an address: 4 bytes for IPv4, 16 for IPv6.
pub fn ip_to_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("valid CIDR in test")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("valid address in test")
    }

    #[test]
    fn parses_and_clears_host_bits() {
        assert_eq!(cidr("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("10.1.2.3/8").network(), ip("10.0.0.0"));
        assert_eq!(cidr("10.1.2.3/8").prefix(), 8);
        assert_eq!(cidr("10.1.2.3").to_string(), "10.1.2.3/32");
        assert_eq!(cidr("10.1.2.3/31").to_string(), "10.1.2.2/31");
        assert_eq!(cidr("fd00::1/64").to_string(), "fd00::/64");
        assert_eq!(cidr("fd00::1").to_string(), "fd00::1/128");
        assert_eq!(cidr("fd01::1/15").to_string(), "fd00::/15");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("192.0.2.99/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("2001:db8::1/0").to_string(), "::/0");
        assert_eq!(cidr(" 10.0.0.1 / 24 ").to_string(), "10.0.0.0/24");
        assert_eq!(cidr("10.0.0.1"), Cidr::host(ip("10.0.0.1")));
        assert_eq!(cidr("fd00::1"), Cidr::host(ip("fd00::1")));
        assert_eq!(cidr("10.0.0.1"), cidr("10.0.0.1/32"));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "10.0.0.0/8",
            "10.0.0.1/32",
            "0.0.0.0/0",
            "fd00::/64",
            "::/0",
            "::1/128",
        ] {
            assert_eq!(cidr(&cidr(s).to_string()), cidr(s), "{s}");
            assert_eq!(cidr(s).to_string(), s);
        }
    }

    #[test]
    fn refuses_bad_blocks_with_the_reason() {
        let cases = [
            (
                "10.0.0.0/33",
                "bad CIDR '10.0.0.0/33': prefix length must be a number from 0 to 32",
            ),
            (
                "fd00::/129",
                "bad CIDR 'fd00::/129': prefix length must be a number from 0 to 128",
            ),
            (
                "10.0.0.0/x",
                "bad CIDR '10.0.0.0/x': prefix length must be a number from 0 to 32",
            ),
            (
                "10.0.0.0/-1",
                "bad CIDR '10.0.0.0/-1': prefix length must be a number from 0 to 32",
            ),
            (
                "10.0.0.0/",
                "bad CIDR '10.0.0.0/': prefix length must be a number from 0 to 32",
            ),
            (
                "10.0.0.0/256",
                "bad CIDR '10.0.0.0/256': prefix length must be a number from 0 to 32",
            ),
            (
                "10.0.0/8",
                "bad CIDR '10.0.0/8': '10.0.0' is not an IP address",
            ),
            ("/8", "bad CIDR '/8': '' is not an IP address"),
            ("", "bad CIDR '': '' is not an IP address"),
            (
                "nonsense",
                "bad CIDR 'nonsense': 'nonsense' is not an IP address",
            ),
            (
                "10.0.0.0/8/8",
                "bad CIDR '10.0.0.0/8/8': prefix length must be a number from 0 to 32",
            ),
            (
                "[fd00::1]/64",
                "bad CIDR '[fd00::1]/64': '[fd00::1]' is not an IP address",
            ),
        ];
        for (input, message) in cases {
            let err = Cidr::parse(input).expect_err(input);
            assert_eq!(err.to_string(), message);
            assert_eq!(err.input, input);
        }
    }

    #[test]
    fn zero_prefix_holds_its_whole_family_and_nothing_else() {
        let all4 = cidr("0.0.0.0/0");
        for a in ["0.0.0.0", "192.0.2.1", "255.255.255.255"] {
            assert!(all4.contains(ip(a)), "{a}");
        }
        assert!(!all4.contains(ip("::")));
        assert!(!all4.contains(ip("::ffff:192.0.2.1")));
        let all6 = cidr("::/0");
        for a in [
            "::",
            "fd00::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:10.0.0.1",
        ] {
            assert!(all6.contains(ip(a)), "{a}");
        }
        assert!(!all6.contains(ip("10.0.0.1")));
    }

    #[test]
    fn full_prefix_holds_exactly_one_address() {
        let one4 = cidr("10.0.0.5/32");
        assert!(one4.contains(ip("10.0.0.5")));
        assert!(!one4.contains(ip("10.0.0.4")));
        assert!(!one4.contains(ip("10.0.0.6")));
        let one6 = cidr("fd00::5/128");
        assert!(one6.contains(ip("fd00::5")));
        assert!(!one6.contains(ip("fd00::4")));
        assert!(!one6.contains(ip("fd00::6")));
    }

    #[test]
    fn containment_follows_the_prefix_bits() {
        let net = cidr("10.0.0.0/8");
        assert!(net.contains(ip("10.255.0.1")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(!net.contains(ip("::ffff:10.0.0.1")), "families never mix");
        let odd = cidr("10.1.0.0/17");
        assert!(odd.contains(ip("10.1.127.255")));
        assert!(!odd.contains(ip("10.1.128.0")));
        let v6 = cidr("fd00::/15");
        assert!(v6.contains(ip("fd01::1")));
        assert!(!v6.contains(ip("fd02::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
    }

    #[test]
    fn address_bytes() {
        assert_eq!(ip_from_bytes(&[192, 0, 2, 1]), Some(ip("192.0.2.1")));
        let mut v6 = [0u8; 16];
        v6[0] = 0xfd;
        v6[15] = 1;
        assert_eq!(ip_from_bytes(&v6), Some(ip("fd00::1")));
        assert_eq!(ip_from_bytes(&[]), None);
        assert_eq!(ip_from_bytes(&[1, 2, 3]), None);
        assert_eq!(ip_from_bytes(&[0; 5]), None);
        assert_eq!(ip_to_bytes(ip("192.0.2.1")), vec![192, 0, 2, 1]);
        assert_eq!(ip_to_bytes(ip("fd00::1")), v6.to_vec());
        for a in ["10.1.2.3", "::1", "::ffff:10.0.0.1"] {
            assert_eq!(ip_from_bytes(&ip_to_bytes(ip(a))), Some(ip(a)), "{a}");
        }
    }
}
