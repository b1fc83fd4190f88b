//! The flow model both ends of orb8 need, defined once: IP protocols and their names, TCP flag
//! letters, flow directions, interface roles (and whose direction a flow seen on one has),
//! address blocks (CIDRs), flow filters and how they match a flow, and the orders a flow table
//! can be sorted in.
//!
//! `orb8-agent` applies filters and sorts before it answers; `kubectl-orb8` parses the user's
//! flags into the same types, sends them, and applies the same filter after merging. Neither
//! writes these rules itself. The crate has no dependencies (std only) and knows neither the
//! wire (`orb8-proto`) nor the kernel ABI (`orb8-common`): each side converts its own types.
//!
//! Modules form a stack: `text` (how a list of choices reads) at the bottom; [`cidr`],
//! [`protocol`], [`direction`] and [`sort`] on it; [`role`] on [`direction`]; [`filter`] on top
//! of those. Each module with input to parse has its own error type, displayed as one line that
//! names the input and what would be accepted.

#![warn(missing_docs)]

pub mod cidr;
pub mod direction;
pub mod filter;
pub mod protocol;
pub mod role;
pub mod sort;
mod text;

pub use cidr::{Cidr, CidrError, ip_from_bytes, ip_to_bytes};
pub use direction::{Direction, DirectionError};
pub use filter::{FilterError, FlowFilterSpec, FlowKey};
pub use protocol::{Protocol, ProtocolError, tcp_flag_letters};
pub use role::InterfaceRole;
pub use sort::{SortKey, SortKeyError, Totals};
