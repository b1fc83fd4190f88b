//! Network namespaces the tests create and delete: a namespace guard, a "pod" (a namespace
//! joined to the node by a veth pair), and a node with pods routed like a CNI's point-to-point
//! setup. Addresses exist only inside these namespaces. Work inside a namespace runs on a thread
//! that entered it with `setns`, so the sockets it opens live there.
//!
//! Guards panic when their cleanup fails (unless the thread is already panicking), so a leaked
//! namespace fails the test that leaked it.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use crate::guard::cleanup_failed;

/// Runs a command, panicking with its output when it fails.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call, for namespaces and interfaces (<= 15 chars).
pub fn unique(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// A network namespace, deleted on drop.
pub struct NetNs {
    /// Its name under /var/run/netns.
    pub name: String,
}

impl NetNs {
    /// Creates a namespace with loopback up.
    pub fn new(prefix: &str) -> NetNs {
        let name = unique(prefix);
        run(&["ip", "netns", "add", &name]);
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `ip -n NAME ARGS...`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        run(&v)
    }

    /// Runs a command inside the namespace (`ip netns exec`).
    pub fn exec(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        run(&v)
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it opens live here.
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
            // SAFETY: setns on a namespace fd affects only this thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// The inode of this namespace (what the kernel's `net->ns.inum` says).
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        let path = format!("/var/run/netns/{}", self.name);
        std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("stat {path}: {e}"))
            .ino()
    }

    /// Waits (up to 10 s) until `dev` is up with its carrier (`LOWER_UP`) and its IPv6 setup is
    /// done (the `ff00::/8` local multicast route exists): before that, a fresh veth end drops
    /// IPv6 sends (neighbour solicitations find no route) and loses a SYN or two.
    pub fn wait_link_ready(&self, dev: &str) {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let link = self.ip(&["link", "show", "dev", dev]);
            let routes = self.ip(&["-6", "route", "show", "table", "local"]);
            let up = link.contains("state UP") && link.contains("LOWER_UP");
            let mcast = routes
                .lines()
                .any(|l| l.contains("ff00::/8") && l.contains(&format!("dev {dev} ")));
            if up && mcast {
                return;
            }
            assert!(
                std::time::Instant::now() < end,
                "{dev} in {} not ready within 10 s: {link}{routes}",
                self.name
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The index of an interface in this namespace.
    pub fn ifindex(&self, iface: &str) -> u32 {
        let iface = iface.to_string();
        self.run_in(move || {
            let c = std::ffi::CString::new(iface.clone()).expect("interface name");
            // SAFETY: valid C string.
            let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
            assert_ne!(i, 0, "no interface {iface}");
            i
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let why = match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(out) if out.status.success() => return,
            Ok(out) => format!(
                "`ip netns del` {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => format!("running `ip netns del`: {e}"),
        };
        cleanup_failed(&format!("network namespace {}", self.name), &why);
    }
}

static NEXT_WIRE: AtomicU32 = AtomicU32::new(1);

/// Two namespaces joined by one veth pair (`eth0` in each), both ends ready (see
/// [`NetNs::wait_link_ready`]): the left owns 10.78.n.1/24 and fd78:n::1/64, the right .2 / ::2,
/// `n` unique to this process's wires.
pub struct Wire {
    /// The left namespace.
    pub left: NetNs,
    /// The right namespace.
    pub right: NetNs,
    /// The left end's IPv4 address.
    pub left4: String,
    /// The right end's IPv4 address.
    pub right4: String,
    /// The left end's IPv6 address.
    pub left6: String,
    /// The right end's IPv6 address.
    pub right6: String,
}

impl Wire {
    /// Creates both namespaces and the pair, addresses without duplicate detection.
    pub fn new() -> Wire {
        let n = NEXT_WIRE.fetch_add(1, Ordering::Relaxed) % 250;
        let left = NetNs::new("o8l");
        let right = NetNs::new("o8r");
        let tmp = unique("o8w");
        run(&[
            "ip",
            "link",
            "add",
            &tmp,
            "netns",
            &left.name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &right.name,
        ]);
        left.ip(&["link", "set", &tmp, "name", "eth0"]);
        let w = Wire {
            left4: format!("10.78.{n}.1"),
            right4: format!("10.78.{n}.2"),
            left6: format!("fd78:{n}::1"),
            right6: format!("fd78:{n}::2"),
            left,
            right,
        };
        for (ns, a4, a6) in [
            (&w.left, &w.left4, &w.left6),
            (&w.right, &w.right4, &w.right6),
        ] {
            ns.ip(&["addr", "add", &format!("{a4}/24"), "dev", "eth0"]);
            ns.ip(&["addr", "add", &format!("{a6}/64"), "dev", "eth0", "nodad"]);
            ns.ip(&["link", "set", "eth0", "up"]);
        }
        w.left.wait_link_ready("eth0");
        w.right.wait_link_ready("eth0");
        w
    }
}

impl Default for Wire {
    fn default() -> Self {
        Wire::new()
    }
}

/// A "pod": a namespace joined to the node by a veth pair. `eth0` inside, `host_if` in the node.
pub struct Pod {
    /// The pod's namespace.
    pub ns: NetNs,
    /// Name of the host end of the veth, in the node namespace.
    pub host_if: String,
    /// The pod's IPv4 address.
    pub ip4: String,
    /// The pod's IPv6 address.
    pub ip6: String,
}

/// A node namespace with pods, routed like a CNI's point-to-point setup: pod `n` owns
/// 10.77.n.2/24 and fd77:n::2/64; the node end of its veth owns .1 / ::1 and routes between pods.
pub struct Topology {
    /// Pods, in creation order. Dropped before the node.
    pub pods: Vec<Pod>,
    /// The namespace playing the node.
    pub node: NetNs,
    next_subnet: u32,
}

impl Topology {
    /// A node with `pods` pods.
    pub fn new(pods: usize) -> Topology {
        let node = NetNs::new("o8n");
        node.sysctl("net.ipv4.ip_forward", "1");
        node.sysctl("net.ipv6.conf.all.forwarding", "1");
        let mut t = Topology {
            pods: Vec::new(),
            node,
            next_subnet: 1,
        };
        for _ in 0..pods {
            t.add_pod();
        }
        t
    }

    /// Adds a pod (also while an agent runs: a pod created later).
    pub fn add_pod(&mut self) -> &Pod {
        let n = self.next_subnet;
        self.next_subnet += 1;
        let ns = NetNs::new("o8p");
        let host_if = unique("o8v");
        run(&[
            "ip",
            "link",
            "add",
            &host_if,
            "netns",
            &self.node.name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns.name,
        ]);
        let ip4 = format!("10.77.{n}.2");
        let ip6 = format!("fd77:{n}::2");
        self.node
            .ip(&["addr", "add", &format!("10.77.{n}.1/24"), "dev", &host_if]);
        self.node.ip(&[
            "addr",
            "add",
            &format!("fd77:{n}::1/64"),
            "dev",
            &host_if,
            "nodad",
        ]);
        self.node.ip(&["link", "set", &host_if, "up"]);
        ns.ip(&["addr", "add", &format!("{ip4}/24"), "dev", "eth0"]);
        ns.ip(&["addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "default", "via", &format!("10.77.{n}.1")]);
        ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &format!("fd77:{n}::1"),
        ]);
        self.pods.push(Pod {
            ns,
            host_if,
            ip4,
            ip6,
        });
        self.pods.last().expect("just pushed")
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Pods first: deleting a pod namespace deletes its veth pair.
        self.pods.clear();
    }
}

/// Runs `f` on a thread inside `ns` in the background. `f` gets a sender to say "ready" (for
/// example once its socket is bound); this call returns after that, with the thread's handle.
pub fn spawn_in<T: Send + 'static>(
    ns: &NetNs,
    f: impl FnOnce(mpsc::Sender<()>) -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{}", ns.name);
    let (ready_tx, ready_rx) = mpsc::channel();
    let h = thread::spawn(move || {
        let nsf = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        // SAFETY: setns on a namespace fd affects only this thread.
        let rc = unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f(ready_tx)
    });
    match ready_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(()) => h,
        // It ended without saying ready: its own panic says why.
        Err(mpsc::RecvTimeoutError::Disconnected) => match h.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(_) => panic!(
                "the background thread in {} ended before it was ready",
                ns.name
            ),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!(
                "the background thread in {} was not ready within 10 s",
                ns.name
            )
        }
    }
}
