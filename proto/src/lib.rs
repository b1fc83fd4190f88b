//! The `orb8.agent.v1` protocol.
