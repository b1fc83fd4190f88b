//! What is on the other end of a veth: the process and container whose network namespace the
//! host-side interface leads to. This names flows without a cluster (local mode), and tells
//! the client which pod's namespace an interface serves.
//!
//! The agent knows a host veth's index; inside each other network namespace (entered through
//! a process living in it), the veth's peer reports the host end's index as its link. A
//! namespace's processes give the name (`comm`) and, through their cgroup, the container.

use std::collections::HashMap;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;

use crate::containers::{self, ContainerRef};

/// The far side of a host veth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// A process in the peer's network namespace (the oldest one).
    pub pid: u32,
    /// Its command name.
    pub comm: String,
    /// Its cgroup path (v2, or the first v1 hierarchy's).
    pub cgroup: String,
    /// The container its cgroup names, if any.
    pub container: Option<ContainerRef>,
}

fn netns_inode(pid: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// The lowest PID in each network namespace other than this process's own.
fn namespaces() -> HashMap<u64, u32> {
    let own = netns_inode("self");
    let mut out: HashMap<u64, u32> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Some(ino) = netns_inode(&pid.to_string()) else {
            continue;
        };
        if Some(ino) == own {
            continue;
        }
        let slot = out.entry(ino).or_insert(pid);
        *slot = (*slot).min(pid);
    }
    out
}

/// The id this process's network namespace gives the namespace of `pid` (`RTM_GETNSID`), the
/// same number its veths report as their peer's `IFLA_LINK_NETNSID`.
fn nsid_of(pid: u32) -> Option<i32> {
    const RTM_GETNSID: u16 = 90;
    const RTM_NEWNSID: u16 = 88;
    const NETNSA_NSID: u16 = 1;
    const NETNSA_FD: u16 = 3;
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).ok()?;
    // nlmsghdr (16) + rtgenmsg padded to 4 (4) + NETNSA_FD attribute (8)
    let mut req = [0u8; 28];
    req[0..4].copy_from_slice(&28u32.to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETNSID.to_ne_bytes());
    req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = libc::AF_UNSPEC as u8;
    req[20..22].copy_from_slice(&8u16.to_ne_bytes());
    req[22..24].copy_from_slice(&NETNSA_FD.to_ne_bytes());
    req[24..28].copy_from_slice(&(ns.as_raw_fd() as u32).to_ne_bytes());
    // SAFETY: plain socket syscalls on buffers of the sizes given; the fd is closed below.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if fd < 0 {
            return None;
        }
        let mut resp = [0u8; 256];
        let sent = libc::send(fd, req.as_ptr().cast(), req.len(), 0);
        let n = if sent == req.len() as isize {
            libc::recv(fd, resp.as_mut_ptr().cast(), resp.len(), 0)
        } else {
            -1
        };
        libc::close(fd);
        if n < 20 || u16::from_ne_bytes([resp[4], resp[5]]) != RTM_NEWNSID {
            return None;
        }
        // Attributes after nlmsghdr (16) and rtgenmsg (4).
        let mut off = 20usize;
        while off + 4 <= n as usize {
            let len = u16::from_ne_bytes([resp[off], resp[off + 1]]) as usize;
            let kind = u16::from_ne_bytes([resp[off + 2], resp[off + 3]]);
            if len < 4 || off + len > n as usize {
                return None;
            }
            if kind == NETNSA_NSID && len >= 8 {
                let id = i32::from_ne_bytes([
                    resp[off + 4],
                    resp[off + 5],
                    resp[off + 6],
                    resp[off + 7],
                ]);
                return (id >= 0).then_some(id);
            }
            off += (len + 3) & !3;
        }
        None
    }
}

/// The veth peers' links (`peer_ifindex`, the host end's index) inside the namespace of `pid`.
fn veth_links_in(pid: u32) -> Vec<u32> {
    std::thread::spawn(move || {
        let Ok(ns) = std::fs::File::open(format!("/proc/{pid}/ns/net")) else {
            return Vec::new();
        };
        // SAFETY: setns on a namespace fd affects only this short-lived thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Vec::new();
        }
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return Vec::new();
        };
        rt.block_on(async {
            let Ok((conn, handle, _)) = rtnetlink::new_connection() else {
                return Vec::new();
            };
            tokio::spawn(conn);
            crate::interfaces::list_links(&handle)
                .await
                .unwrap_or_default()
                .into_iter()
                .filter(|l| l.kind == "veth" && l.peer_netnsid.is_some())
                .filter_map(|l| l.peer_ifindex)
                .collect()
        })
    })
    .join()
    .unwrap_or_default()
}

/// The inode of this process's own network namespace.
pub fn own_netns() -> Option<u64> {
    netns_inode("self")
}

/// Who lives in the network namespace with inode `ino` (its oldest process); `None` for this
/// process's own namespace or one without processes.
pub fn owner_of(ino: u64) -> Option<Peer> {
    namespaces().get(&ino).map(|pid| describe(*pid))
}

fn describe(pid: u32) -> Peer {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string();
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    // The v2 path, else the first v1 hierarchy's.
    let cgroup = crate::cgroups::cgroup2_path(&text)
        .or_else(|| text.lines().next().and_then(|l| l.splitn(3, ':').nth(2)))
        .unwrap_or_default()
        .to_string();
    Peer {
        pid,
        comm,
        cgroup,
        container: containers::container_of_process(&text),
    }
}

/// Finds the peer of each host veth in `wanted` (its index and the namespace id its peer
/// lives in, as this namespace numbers it) that lives in a namespace with at least one process.
/// A namespace must both have that id here and hold a veth linked to that index, so equal
/// interface numbers in unrelated namespaces never match. Veths whose namespace has no
/// process yet are left out (ask again later).
pub fn find(wanted: &[(u32, i32)]) -> HashMap<u32, Peer> {
    let mut out = HashMap::new();
    if wanted.is_empty() {
        return out;
    }
    for (ino, pid) in namespaces() {
        let Some(nsid) = nsid_of(pid) else { continue };
        if !wanted.iter().any(|(_, id)| *id == nsid) {
            continue;
        }
        let links = veth_links_in(pid);
        log::debug!("netns {ino} (id {nsid}, process {pid}): veth peers {links:?}");
        for host_index in links {
            if wanted.contains(&(host_index, nsid)) && !out.contains_key(&host_index) {
                out.insert(host_index, describe(pid));
            }
        }
    }
    out
}
