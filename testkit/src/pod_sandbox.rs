//! What a container runtime and a bridge CNI plugin give a pod, for the fake kubelet: the
//! node's bridge (`cni0`, the pod network's gateway), and per pod a network namespace joined
//! to that bridge by a veth pair (`eth0` inside, with the pod's address and a default route),
//! and a cgroup per container laid out as containerd does under the systemd driver
//! (`kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/
//! cri-containerd-<id>.scope`), below a cgroup the fake cluster owns.
//!
//! Everything is made with `ip` and cgroupfs writes, inside the namespaces the fake cluster's
//! test created, and removed again by [`Sandbox::remove`] / [`PodNetwork::remove`]; a step
//! that fails says which command failed and why.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::unique;

/// The pod network of one node: a bridge in the node's namespace and the addresses handed out.
pub struct PodNetwork {
    node_netns: String,
    /// The third octet of the node's pod range 10.244.<subnet>.0/24.
    subnet: u8,
    /// The bridge's address, the pods' default gateway.
    pub gateway: Ipv4Addr,
    next: AtomicU32,
    /// The cgroup below which container cgroups are made (owned by the fake cluster).
    pub cgroup_root: PathBuf,
}

/// Bridge name in the node namespace, as the bridge CNI plugin names it.
pub const BRIDGE: &str = "cni0";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The next node pod range of this process (see [`PodNetwork::new`]).
static NEXT_SUBNET: AtomicU32 = AtomicU32::new(0);

impl PodNetwork {
    /// Makes the bridge `cni0` with `10.244.<subnet>.1/24` in `node_netns` and the cgroup
    /// `<cgroup2 mount>/<name>` for containers. Each node of this process gets a range of its
    /// own, as a real cluster's nodes do: fake clusters run side by side on one kernel (tests
    /// in parallel), and what the kernel sees host-wide (`trace drops`, `trace tcp`) is told
    /// apart by address.
    pub fn new(node_netns: &str, cgroup2: &Path) -> Result<PodNetwork, String> {
        let n = NEXT_SUBNET.fetch_add(1, Ordering::Relaxed);
        let subnet = (1 + (std::process::id() + n) % 250) as u8;
        let gateway = Ipv4Addr::new(10, 244, subnet, 1);
        ip(&["-n", node_netns, "link", "add", BRIDGE, "type", "bridge"])?;
        ip(&[
            "-n",
            node_netns,
            "addr",
            "add",
            &format!("{gateway}/24"),
            "dev",
            BRIDGE,
        ])?;
        ip(&["-n", node_netns, "link", "set", BRIDGE, "up"])?;
        let cgroup_root = cgroup2.join(unique("orb8-fake-pods"));
        std::fs::create_dir(&cgroup_root)
            .map_err(|e| format!("creating cgroup {}: {e}", cgroup_root.display()))?;
        Ok(PodNetwork {
            node_netns: node_netns.to_string(),
            subnet,
            gateway,
            next: AtomicU32::new(2),
            cgroup_root,
        })
    }

    /// Makes a pod's network namespace and container cgroups (`containers`: container ids).
    pub fn sandbox(&self, pod_uid: &str, containers: &[String]) -> Result<Sandbox, String> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if n > 254 {
            return Err(format!(
                "the fake pod network 10.244.{}.0/24 is out of addresses",
                self.subnet
            ));
        }
        let address = Ipv4Addr::new(10, 244, self.subnet, n as u8);
        let mut sandbox = Sandbox {
            netns: unique("fkpod"),
            host_veth: unique("fkv"),
            address,
            cgroups: Vec::new(),
            made: Vec::new(),
            removed: false,
        };
        // From here on, whatever was made is removed again if a later step fails.
        let made = (|| {
            ip(&["netns", "add", &sandbox.netns])?;
            sandbox.made.push(Made::Netns);
            let ns = sandbox.netns.clone();
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &self.node_netns,
                "link",
                "add",
                &sandbox.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns,
            ])?;
            ip(&[
                "-n",
                &self.node_netns,
                "link",
                "set",
                &sandbox.host_veth,
                "master",
                BRIDGE,
                "up",
            ])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &self.gateway.to_string(),
            ])?;
            let pod_slice = format!("kubepods-besteffort-pod{}.slice", pod_uid.replace('-', "_"));
            let mut dir = self.cgroup_root.clone();
            for seg in ["kubepods.slice", "kubepods-besteffort.slice", &pod_slice] {
                dir = dir.join(seg);
                if !dir.exists() {
                    std::fs::create_dir(&dir)
                        .map_err(|e| format!("creating cgroup {}: {e}", dir.display()))?;
                    sandbox.made.push(Made::Cgroup(dir.clone()));
                }
            }
            for id in containers {
                let scope = dir.join(format!("cri-containerd-{id}.scope"));
                std::fs::create_dir(&scope)
                    .map_err(|e| format!("creating cgroup {}: {e}", scope.display()))?;
                sandbox.made.push(Made::Cgroup(scope.clone()));
                sandbox.cgroups.push(scope);
            }
            Ok::<(), String>(())
        })();
        match made {
            Ok(()) => Ok(sandbox),
            Err(e) => {
                let _ = sandbox.remove();
                Err(e)
            }
        }
    }

    /// Removes the container cgroup root (the bridge goes with the node's namespace).
    pub fn remove(&self) -> Result<(), String> {
        remove_cgroup_tree(&self.cgroup_root)
    }
}

enum Made {
    Netns,
    Cgroup(PathBuf),
}

/// One pod's network namespace and container cgroups.
pub struct Sandbox {
    /// The pod's network namespace (`/var/run/netns/<netns>`).
    pub netns: String,
    /// The host end of its veth pair, on the bridge.
    pub host_veth: String,
    /// The pod's address.
    pub address: Ipv4Addr,
    /// One cgroup per container, in the order of the ids given.
    pub cgroups: Vec<PathBuf>,
    made: Vec<Made>,
    removed: bool,
}

impl Sandbox {
    /// Kills every process left in the containers' cgroups (`cgroup.kill`), as a runtime
    /// does when it stops a pod.
    pub fn kill_all(&self) {
        for cg in &self.cgroups {
            let _ = std::fs::write(cg.join("cgroup.kill"), "1");
        }
    }

    /// Kills what is left in the pod, then removes its cgroups and network namespace (with
    /// its veth pair). Idempotent.
    pub fn remove(&mut self) -> Result<(), String> {
        if self.removed {
            return Ok(());
        }
        self.kill_all();
        let mut errors = Vec::new();
        for made in self.made.iter().rev() {
            let r = match made {
                Made::Netns => ip(&["netns", "del", &self.netns]),
                Made::Cgroup(dir) => remove_empty_cgroup(dir),
            };
            if let Err(e) = r {
                errors.push(e);
            }
        }
        self.removed = true;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// Removes a cgroup directory once its processes are gone (they may take a moment to exit
/// after `cgroup.kill`).
fn remove_empty_cgroup(dir: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("removing cgroup {}: {e}", dir.display()));
            }
            Err(_) => {
                let _ = std::fs::write(dir.join("cgroup.kill"), "1");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Removes a cgroup and every group below it, deepest first.
fn remove_cgroup_tree(dir: &Path) -> Result<(), String> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path())?;
            }
        }
    }
    remove_empty_cgroup(dir)
}
