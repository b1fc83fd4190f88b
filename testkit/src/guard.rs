//! How the kit's guards report a cleanup that failed: a panic that fails the test which leaked
//! the resource, except while the thread is already panicking (a second panic would abort the
//! test binary and hide the first failure), when the failure goes to stderr instead.

use std::io::Write as _;

/// Reports that a guard could not clean up `what`, and why.
pub(crate) fn cleanup_failed(what: &str, why: &str) {
    if std::thread::panicking() {
        // Written to stderr directly, past the test harness's capture, so it is seen.
        let _ = writeln!(
            std::io::stderr(),
            "orb8-testkit: also failed to clean up {what}: {why}"
        );
    } else {
        panic!("cleaning up {what}: {why}");
    }
}
