//! `orb8.agent.v1`: the gRPC protocol between `kubectl-orb8` and `orb8-agent`.
//!
//! The code is generated from `proto/orb8/agent/v1/agent.proto` by `build.rs` (protox, no
//! `protoc` needed). Both sides check [`PROTOCOL_VERSION`] through `GetStatus`.

#[allow(clippy::all, missing_docs, reason = "generated code")]
mod generated {
    tonic::include_proto!("orb8.agent.v1");
}

pub use generated::*;

/// Version of the wire protocol. Bumped only when an older peer would misread a newer one.
pub const PROTOCOL_VERSION: u32 = 1;

/// Request metadata key carrying the per-session token: `authorization: Bearer <token>`.
pub const TOKEN_METADATA_KEY: &str = "authorization";

/// Formats a token as the value of [`TOKEN_METADATA_KEY`].
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}
