//! The `kubectl orb8` client.
