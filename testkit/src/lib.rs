//! orb8's test kit: the doubles and guards its tests share (a dev-only crate, never shipped).
//!
//! Support for orb8's privileged end-to-end tests:
//! Tests build their own topology: a network namespace playing the node and namespaces playing
//! pods, each joined to the node by a veth pair, with addresses that exist only inside those
//! namespaces. Every namespace is deleted when its guard drops, also when a test panics.
//! Traffic is sent from threads that entered a namespace with `setns`, so the sockets live there.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, ChildStdout, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod fake_agent;
pub mod fake_apiserver;
pub mod fake_cluster;

/// Panics unless the tests run as root: they load eBPF and create namespaces.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "privileged test: run as root (eBPF programs and network namespaces need it)"
    );
}

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
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
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

/// Path of a binary built by this workspace (next to the test executable's `deps/` folder).
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

/// An `orb8-agent watch -o json` process inside a namespace, its JSON lines read on a thread.
pub struct WatchAgent {
    child: Child,
    lines: mpsc::Receiver<Value>,
    /// Every line read so far.
    pub seen: Vec<Value>,
}

impl WatchAgent {
    /// Starts the agent in `ns` with extra arguments and waits for its `ready` line.
    pub fn start(ns: &NetNs, extra: &[&str]) -> WatchAgent {
        let bin = workspace_bin("orb8-agent");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name])
            .arg(&bin)
            .args(["watch", "-o", "json", "--rescan-ms", "100"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawning orb8-agent");
        let stdout = child.stdout.take().expect("stdout");
        let lines = spawn_line_reader(stdout);
        let mut a = WatchAgent {
            child,
            lines,
            seen: Vec::new(),
        };
        a.wait_for(Duration::from_secs(20), |v| v["event"] == "ready");
        a
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a line satisfying `pred`, returning it; panics after `timeout`.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + timeout;
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "no matching agent line within {timeout:?}; saw: {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Sends SIGINT and returns the summary line.
    pub fn stop(mut self) -> Value {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let summary = self.wait_for(Duration::from_secs(20), |v| v["event"] == "summary");
        let status = self.child.wait().expect("waiting for agent");
        assert!(status.success(), "agent exited with {status}");
        summary
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WatchAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_line_reader(stdout: ChildStdout) -> mpsc::Receiver<Value> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Value>(&line) {
                Ok(v) => {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
                Err(_) => eprintln!("agent printed a non-JSON line: {line}"),
            }
        }
    });
    rx
}

/// The flows of a summary line matching interface, direction, protocol and both ends.
pub fn find_flows<'a>(
    summary: &'a Value,
    iface: &str,
    direction: &str,
    protocol: &str,
    src: &str,
    dst: &str,
) -> Vec<&'a Value> {
    summary["flows"]
        .as_array()
        .expect("flows array")
        .iter()
        .filter(|f| {
            f["interface"] == iface
                && f["direction"] == direction
                && f["protocol"] == protocol
                && f["src"] == src
                && f["dst"] == dst
        })
        .collect()
}

/// Exactly one flow matching, with its (packets, bytes, tcp_flags).
pub fn one_flow(
    summary: &Value,
    iface: &str,
    direction: &str,
    protocol: &str,
    src: &str,
    dst: &str,
) -> (u64, u64, String) {
    let found = find_flows(summary, iface, direction, protocol, src, dst);
    assert_eq!(
        found.len(),
        1,
        "expected one {protocol} flow {src} -> {dst} {direction} on {iface}, found {found:#?} in {:#}",
        summary["flows"]
    );
    let f = found[0];
    (
        f["packets"].as_u64().expect("packets"),
        f["bytes"].as_u64().expect("bytes"),
        f["tcp_flags"].as_str().expect("tcp_flags").to_string(),
    )
}

/// The packets and bytes of a flow object as `kubectl-orb8 -o json` prints it.
pub fn counts(f: &Value) -> (u64, u64) {
    (
        f["packets"].as_u64().expect("packets"),
        f["bytes"].as_u64().expect("bytes"),
    )
}

/// A counter of a summary line.
pub fn counter(summary: &Value, name: &str) -> u64 {
    summary["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {summary}"))
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
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("background thread never became ready");
    h
}

/// Receives UDP datagrams on `bind` until `count` arrived or 10 s passed; returns how many.
pub fn udp_receiver(ns: &NetNs, bind: &str, count: usize) -> thread::JoinHandle<usize> {
    let bind = bind.to_string();
    spawn_in(ns, move |ready| {
        let s = std::net::UdpSocket::bind(&bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        ready.send(()).expect("ready");
        let end = Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 65536];
        let mut got = 0;
        while got < count && Instant::now() < end {
            if s.recv_from(&mut buf).is_ok() {
                got += 1;
            }
        }
        got
    })
}

/// Sends `count` UDP datagrams of `size` payload bytes from `bind` to `dst`, inside `ns`.
pub fn udp_send(ns: &NetNs, bind: &str, dst: &str, count: usize, size: usize) {
    let (bind, dst) = (bind.to_string(), dst.to_string());
    ns.run_in(move || {
        let s = std::net::UdpSocket::bind(&bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        let buf = vec![0x5au8; size];
        for _ in 0..count {
            s.send_to(&buf, &dst)
                .unwrap_or_else(|e| panic!("send to {dst}: {e}"));
            // Paced so no socket or backlog queue overflows on a busy machine.
            thread::sleep(Duration::from_micros(200));
        }
    });
}

/// Names of the TCX programs attached to an interface of a namespace (both hooks).
pub fn tcx_programs(ns: &NetNs, iface: &str) -> Vec<String> {
    use aya::programs::{SchedClassifier, TcAttachType};
    let iface = iface.to_string();
    ns.run_in(move || {
        let mut names = Vec::new();
        for t in [TcAttachType::Ingress, TcAttachType::Egress] {
            let (_, progs) = SchedClassifier::query_tcx(&iface, t).expect("query tcx");
            names.extend(
                progs
                    .iter()
                    .filter_map(|p| p.name_as_str().map(String::from)),
            );
        }
        names
    })
}

/// Waits until orb8's programs are attached to `iface` in `ns` (an agent someone else started).
pub fn wait_attached(ns: &NetNs, iface: &str) {
    let end = Instant::now() + Duration::from_secs(30);
    while !tcx_programs(ns, iface)
        .iter()
        .any(|n| n == "orb8_tc_ingress")
    {
        assert!(Instant::now() < end, "orb8 never attached to {iface}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// What an AF_PACKET socket saw of one direction of a TCP connection.
#[derive(Debug, Default, PartialEq)]
pub struct Seen {
    /// Packets.
    pub packets: u64,
    /// IP bytes.
    pub bytes: u64,
    /// TCP payload bytes.
    pub payload: u64,
    /// OR of TCP flags.
    pub flags: u8,
}

/// Captures IPv4 TCP frames on one port on `iface` of `ns` with an AF_PACKET socket, until
/// two seconds pass without one; returns (towards the node, from the node).
pub fn capture_tcp(ns: &NetNs, iface: &str, port: u16) -> thread::JoinHandle<(Seen, Seen)> {
    let ifindex = ns.ifindex(iface);
    spawn_in(ns, move |ready| {
        // SAFETY: plain socket syscalls with checked results.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                (libc::ETH_P_ALL as u16).to_be() as i32,
            )
        };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: sll is a valid sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                fd,
                &sll as *const _ as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind packet socket");
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: valid option value.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                size_of::<libc::timeval>() as u32,
            )
        };
        ready.send(()).unwrap();
        let (mut to_node, mut from_node) = (Seen::default(), Seen::default());
        let mut buf = [0u8; 65536];
        let mut quiet = 0;
        while quiet < 2 {
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buffers are valid for the sizes given.
            let n = unsafe {
                libc::recvfrom(
                    fd,
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                    &mut from as *mut _ as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n < 0 {
                quiet += 1;
                continue;
            }
            quiet = 0;
            let f = &buf[..n as usize];
            if f.len() < 14 + 20 || u16::from_be_bytes([f[12], f[13]]) != 0x0800 || f[14 + 9] != 6 {
                continue;
            }
            let ip = &f[14..];
            let ihl = ((ip[0] & 0xf) * 4) as usize;
            let tot = u16::from_be_bytes([ip[2], ip[3]]) as u64;
            let tcp = &ip[ihl..];
            let (sp, dp) = (
                u16::from_be_bytes([tcp[0], tcp[1]]),
                u16::from_be_bytes([tcp[2], tcp[3]]),
            );
            if sp != port && dp != port {
                continue;
            }
            let doff = ((tcp[12] >> 4) * 4) as u64;
            let side = if from.sll_pkttype == libc::PACKET_OUTGOING {
                &mut from_node
            } else {
                &mut to_node
            };
            side.packets += 1;
            side.bytes += tot;
            side.payload += tot - ihl as u64 - doff;
            side.flags |= tcp[13];
        }
        // SAFETY: closing our own fd.
        unsafe { libc::close(fd) };
        (to_node, from_node)
    })
}

/// TCP flags as tcpdump letters.
pub fn flags(f: u8) -> String {
    [
        (0x01, 'F'),
        (0x02, 'S'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x10, '.'),
        (0x20, 'U'),
        (0x40, 'E'),
        (0x80, 'W'),
    ]
    .iter()
    .filter(|(b, _)| f & b != 0)
    .map(|(_, c)| *c)
    .collect()
}

/// A TCP client in `client` exchanging `rounds` request/response messages of `size` bytes with a
/// server in `server` on `ip:port` (TCP_NODELAY, one message in flight), then closing.
pub fn tcp_exchange(
    client: &NetNs,
    server: &NetNs,
    ip: &str,
    port: u16,
    rounds: usize,
    size: usize,
) {
    use std::io::{Read, Write};
    let server_addr = format!("{ip}:{port}");
    let srv = spawn_in(server, move |ready| {
        let l = std::net::TcpListener::bind(&server_addr).unwrap();
        ready.send(()).unwrap();
        let (mut c, _) = l.accept().unwrap();
        let mut buf = vec![0u8; size];
        for _ in 0..rounds {
            c.read_exact(&mut buf).unwrap();
            c.write_all(&buf).unwrap();
        }
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
    });
    let dst = format!("{ip}:{port}");
    client.run_in(move || {
        let mut c = std::net::TcpStream::connect(&dst).unwrap();
        c.set_nodelay(true).unwrap();
        let mut buf = vec![7u8; size];
        for _ in 0..rounds {
            c.write_all(&buf).unwrap();
            c.read_exact(&mut buf).unwrap();
        }
    });
    srv.join().unwrap();
}

/// A cgroup v2 group the test creates under the host's cgroup2 mount, removed on drop (its
/// processes moved back to the root group first), also when the test panics.
pub struct TestCgroup {
    /// Its directory (the deepest one for [`TestCgroup::nested`]).
    pub path: PathBuf,
    /// Every directory created, outermost first.
    dirs: Vec<PathBuf>,
}

/// Where cgroup2 is mounted here (`/sys/fs/cgroup/unified` in a hybrid layout).
pub fn cgroup2_mount() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("reading mountinfo");
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            if !right.starts_with("cgroup2 ") {
                return None;
            }
            left.split_whitespace().nth(4).map(PathBuf::from)
        })
        .expect("a cgroup2 mount (privileged syscall tests need cgroup v2)")
}

impl TestCgroup {
    /// Creates `orb8-test-<pid>-<n>` under the cgroup2 mount.
    pub fn new() -> TestCgroup {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = cgroup2_mount().join(format!("orb8-test-{}-{n}", std::process::id()));
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        TestCgroup {
            dirs: vec![path.clone()],
            path,
        }
    }

    /// A group at `rel` below a new test-owned group (for a runtime's layout such as
    /// `kubepods.slice/.../cri-containerd-<id>.scope`); all of it is removed on drop.
    pub fn nested(rel: &str) -> TestCgroup {
        let mut cg = TestCgroup::new();
        for seg in rel.split('/').filter(|s| !s.is_empty()) {
            cg.path = cg.path.join(seg);
            std::fs::create_dir(&cg.path)
                .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", cg.path.display()));
            cg.dirs.push(cg.path.clone());
        }
        cg
    }

    /// Moves process `pid` into the group.
    pub fn add(&self, pid: u32) {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.path.display()));
    }

    /// The cgroup id: the directory's inode number.
    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&self.path).expect("cgroup dir").ino()
    }
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let root = cgroup2_mount().join("cgroup.procs");
        for dir in self.dirs.iter().rev() {
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.split_whitespace() {
                    let _ = std::fs::write(&root, pid);
                }
            }
            let mut removed = false;
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    removed = true;
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            if !removed {
                eprintln!("warning: could not remove {}", dir.display());
            }
        }
    }
}

/// A running `orb8-syscall-load`, waiting for its go byte.
pub struct SyscallLoad {
    child: Child,
    /// PID (host namespace) of the process that will make the calls.
    pub pid: u32,
}

impl SyscallLoad {
    /// Starts the helper: `getppid` GETPPID times, failing `openat` OPENAT times (ENOENT),
    /// `close(-1)` CLOSE times (EBADF); in a new PID namespace with `new_pidns`. `cgroup`, when
    /// given, receives the process before it makes any call.
    pub fn start(
        new_pidns: bool,
        cgroup: Option<&TestCgroup>,
        getppid: u64,
        openat: u64,
        close: u64,
    ) -> SyscallLoad {
        let bin = workspace_bin("orb8-syscall-load");
        let mut cmd = Command::new(bin);
        if new_pidns {
            cmd.arg("--new-pidns");
        }
        let mut child = cmd
            .args([getppid, openat, close].map(|n| n.to_string()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning orb8-syscall-load");
        if let Some(cg) = cgroup {
            cg.add(child.id());
        }
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("reading the ready line");
        let pid = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("orb8-syscall-load said {line:?}"));
        SyscallLoad { child, pid }
    }

    /// Tells it to make its calls and waits until it has exited.
    pub fn go_and_wait(mut self) {
        use std::io::Write as _;
        let mut stdin = self.child.stdin.take().expect("stdin");
        stdin.write_all(b"g").expect("sending go");
        drop(stdin);
        let status = self.child.wait().expect("waiting for orb8-syscall-load");
        assert!(status.success(), "orb8-syscall-load failed: {status}");
    }
}

impl Drop for SyscallLoad {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
