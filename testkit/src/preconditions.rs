//! What a test needs before it can run (root, a binary this workspace builds) and how a test
//! that cannot run says so where people look: a line starting `SKIPPED` written to stderr
//! directly, past the test harness's capture.

use std::io::Write as _;
use std::path::PathBuf;

/// Says on stderr, past the harness's capture, that `test` did not run and why.
pub fn skipped(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// Whether this process runs as root.
#[cfg(unix)]
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Panics unless the tests run as root: they load eBPF and create namespaces.
#[cfg(unix)]
pub fn require_root() {
    assert!(
        is_root(),
        "privileged test: run as root (eBPF programs and network namespaces need it)"
    );
}

/// Whether `test` can run: true as root; otherwise says `SKIPPED test: needs root`.
#[cfg(unix)]
pub fn require_root_or_skip(test: &str) -> bool {
    let root = is_root();
    if !root {
        skipped(test, "needs root (it loads eBPF programs)");
    }
    root
}

/// Path of a binary built by this workspace (next to the test executable's `deps/` folder);
/// panics, saying how to build it, when it is missing.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace` (or `cargo test --workspace`)",
        p.display()
    );
    p
}
