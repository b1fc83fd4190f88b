//! Privileged: the kit's guards fail the test that leaked something. A namespace someone else
//! already deleted and a cgroup that cannot be removed make the guard's drop panic, naming what
//! leaked; while a test is already panicking, the guard does not panic again.

use std::panic::{AssertUnwindSafe, catch_unwind};

use orb8_testkit::*;

/// The panic message of `f`, or None when it did not panic.
fn panic_message(f: impl FnOnce()) -> Option<String> {
    let payload = catch_unwind(AssertUnwindSafe(f)).err()?;
    Some(
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
    )
}

#[test]
fn privileged_netns_guard_panics_when_the_namespace_cannot_be_deleted() {
    require_root();
    let ns = NetNs::new("o8g");
    let name = ns.name.clone();
    run(&["ip", "netns", "del", &name]);
    let msg = panic_message(move || drop(ns)).expect("the guard's drop must panic");
    assert!(
        msg.starts_with(&format!(
            "cleaning up network namespace {name}: `ip netns del` exit status: 1"
        )),
        "{msg}"
    );
}

#[test]
fn privileged_cgroup_guard_panics_when_the_group_cannot_be_removed() {
    require_root();
    let cg = TestCgroup::new();
    let path = cg.path.clone();
    // A child group the guard does not know of keeps its directory busy.
    let child = path.join("not-the-guards");
    std::fs::create_dir(&child).expect("creating a child cgroup");
    let msg = panic_message(move || drop(cg));
    std::fs::remove_dir(&child).expect("removing the child cgroup");
    std::fs::remove_dir(&path).expect("removing the test's cgroup");
    let msg = msg.expect("the guard's drop must panic");
    assert!(
        msg.starts_with(&format!("cleaning up cgroup {}: ", path.display())),
        "{msg}"
    );
}

#[test]
fn privileged_guards_do_not_panic_again_while_a_test_panics() {
    require_root();
    let ns = NetNs::new("o8g");
    let name = ns.name.clone();
    run(&["ip", "netns", "del", &name]);
    // The first panic must come out of the unwind, not an abort on a second one.
    let msg = panic_message(move || {
        let _ns = ns;
        panic!("the test failed");
    });
    assert_eq!(msg.as_deref(), Some("the test failed"));
}
