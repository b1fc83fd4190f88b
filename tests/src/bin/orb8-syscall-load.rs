//! `orb8-syscall-load [--new-pidns] GETPPID OPENAT_ENOENT CLOSE_EBADF`: a process that makes an
//! exact number of syscalls for orb8's syscall tests, when told to.
//!
//! It prints `ready PID` (the PID, in the caller's PID namespace, of the process that will make
//! the calls), waits for one byte on stdin, then makes GETPPID `getppid`, OPENAT_ENOENT failing
//! `openat` of a missing path (ENOENT) and CLOSE_EBADF `close(-1)` (EBADF), and exits. With
//! `--new-pidns` the calls are made by a child that is PID 1 of a new PID namespace.

use std::io::Write as _;

fn fail(what: &str) -> ! {
    let _ = writeln!(
        std::io::stderr(),
        "orb8-syscall-load: {what}: {}",
        std::io::Error::last_os_error()
    );
    std::process::exit(2)
}

fn calls(getppid: u64, openat: u64, close: u64) {
    let mut byte = 0u8;
    // SAFETY: reads one byte into a valid buffer.
    if unsafe { libc::read(0, (&raw mut byte).cast(), 1) } != 1 {
        fail("waiting for the go byte on stdin");
    }
    let missing = c"/nonexistent/orb8-syscall-load";
    for _ in 0..getppid {
        // SAFETY: getppid has no arguments.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    for _ in 0..openat {
        // SAFETY: a valid NUL-terminated path; the call fails with ENOENT.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                missing.as_ptr(),
                libc::O_RDONLY,
            )
        };
        assert_eq!(r, -1);
    }
    for _ in 0..close {
        // SAFETY: closing an invalid descriptor fails with EBADF and touches nothing.
        let r = unsafe { libc::syscall(libc::SYS_close, -1) };
        assert_eq!(r, -1);
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let new_pidns = args.first().is_some_and(|a| a == "--new-pidns");
    if new_pidns {
        args.remove(0);
    }
    let n: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let [getppid, openat, close] = n[..] else {
        eprintln!("usage: orb8-syscall-load [--new-pidns] GETPPID OPENAT_ENOENT CLOSE_EBADF");
        std::process::exit(2);
    };
    if !new_pidns {
        println!("ready {}", std::process::id());
        let _ = std::io::stdout().flush();
        calls(getppid, openat, close);
        return;
    }
    // SAFETY: unshare has no memory preconditions; children are created in the new namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        fail("unshare(CLONE_NEWPID)");
    }
    let _ = std::io::stdout().flush();
    // SAFETY: this process is single-threaded; the child only makes syscalls and exits.
    match unsafe { libc::fork() } {
        -1 => fail("fork"),
        0 => {
            calls(getppid, openat, close);
            // SAFETY: leaves without running the parent's atexit handlers twice.
            unsafe { libc::_exit(0) }
        }
        child => {
            println!("ready {child}");
            let _ = std::io::stdout().flush();
            let mut status = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(child, &mut status, 0) };
            std::process::exit(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                1
            });
        }
    }
}
