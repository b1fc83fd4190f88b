//! One file per verb. Each takes the open [`Session`](crate::session::Session), its flags and
//! where to write, and returns when done.

pub mod cleanup;
pub mod flows;
pub mod status;
pub mod syscall;
pub mod trace;
pub mod version;

/// A command was stopped by Ctrl-C (or SIGTERM) before it had anything to show.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// Prints a warning on stderr (`orb8: warning: ...`); a closed stderr is ignored.
pub fn warn(message: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "orb8: warning: {message}");
}
