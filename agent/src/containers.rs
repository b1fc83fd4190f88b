//! From a cgroup to the container in it: pod UID and container ID, as the container runtimes
//! people run lay their cgroups out. The agent knows no Kubernetes credentials; these two IDs
//! are what the client joins with the pods it lists.
//!
//! Layouts understood (cgroup v2 paths relative to the mount, or v1 paths relative to a
//! controller's hierarchy; a prefix such as kind's `/system.slice/docker-<node>.scope` or
//! `/kubelet.slice/kubelet-kubepods.slice` may come first):
//!
//! | runtime, cgroup driver | path |
//! |---|---|
//! | containerd, systemd | `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope` |
//! | CRI-O, systemd | `.../kubepods-besteffort-pod<uid_>.slice/crio-<id>.scope` |
//! | Docker (cri-dockerd), systemd | `.../kubepods-pod<uid_>.slice/docker-<id>.scope` |
//! | containerd or Docker, cgroupfs | `kubepods/burstable/pod<uid>/<id>` |
//! | CRI-O, cgroupfs | `kubepods/besteffort/pod<uid>/crio-<id>` |
//!
//! `<uid_>` is the pod UID with `_` for `-` (systemd unit names cannot carry `-` there);
//! `<id>` is the 64-hex container ID. CRI-O's `crio-conmon-<id>` groups hold its monitor
//! process, not the container, and are not reported as containers.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// The runtime a cgroup's name says created it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// containerd (`cri-containerd-<id>.scope`).
    Containerd,
    /// CRI-O (`crio-<id>`).
    Crio,
    /// Docker through cri-dockerd (`docker-<id>.scope`).
    Docker,
    /// A bare ID (cgroupfs driver): containerd or Docker.
    Unknown,
}

/// What a cgroup path says about the container in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRef {
    /// The pod's UID, with dashes.
    pub pod_uid: String,
    /// The container ID (64 hex), or `None` for the pod-level group itself.
    pub container_id: Option<String>,
    /// Which runtime's naming it follows.
    pub runtime: Runtime,
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_uid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| {
            if [8, 13, 18, 23].contains(&i) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        })
}

/// The pod UID a path segment names: `pod<uid>` (cgroupfs) or
/// `kubepods[-<qos>]-pod<uid_>.slice` (systemd).
fn pod_segment(seg: &str) -> Option<String> {
    let uid = if let Some(rest) = seg.strip_suffix(".slice") {
        rest.rsplit_once("-pod").map(|(_, u)| u.replace('_', "-"))?
    } else {
        seg.strip_prefix("pod")?.to_string()
    };
    is_uid(&uid).then_some(uid)
}

/// The container ID and runtime a path segment names.
fn container_segment(seg: &str) -> Option<(String, Runtime)> {
    let seg = seg.strip_suffix(".scope").unwrap_or(seg);
    if seg.starts_with("crio-conmon-") {
        return None;
    }
    let (id, runtime) = if let Some(id) = seg.strip_prefix("cri-containerd-") {
        (id, Runtime::Containerd)
    } else if let Some(id) = seg.strip_prefix("crio-") {
        (id, Runtime::Crio)
    } else if let Some(id) = seg.strip_prefix("docker-") {
        (id, Runtime::Docker)
    } else {
        (seg, Runtime::Unknown)
    };
    is_hex64(id).then(|| (id.to_string(), runtime))
}

/// Reads a cgroup path: the pod it belongs to and, below the pod's group, the container.
pub fn parse_cgroup_path(path: &str) -> Option<ContainerRef> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (i, pod_uid) = segs
        .iter()
        .enumerate()
        .find_map(|(i, s)| pod_segment(s).map(|u| (i, u)))?;
    match segs.get(i + 1) {
        None => Some(ContainerRef {
            pod_uid,
            container_id: None,
            runtime: Runtime::Unknown,
        }),
        Some(seg) => container_segment(seg).map(|(id, runtime)| ContainerRef {
            pod_uid,
            container_id: Some(id),
            runtime,
        }),
    }
}

/// The container of a process, from the text of `/proc/PID/cgroup` (v2 `0::` line first, then
/// any v1 hierarchy).
pub fn container_of_process(proc_cgroup: &str) -> Option<ContainerRef> {
    // hierarchy-id:controllers:path; the v2 line is `0::path`.
    let lines: Vec<(bool, &str)> = proc_cgroup
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let h = f.next()?;
            f.next()?;
            Some((h == "0", f.next()?))
        })
        .collect();
    let v2 = lines.iter().filter(|(v2, _)| *v2);
    let v1 = lines.iter().filter(|(v2, _)| !*v2);
    v2.chain(v1).find_map(|(_, p)| parse_cgroup_path(p))
}

/// A container's cgroup found on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundCgroup {
    /// The directory.
    pub path: PathBuf,
    /// Its cgroup v2 id (the directory's inode number).
    pub id: u64,
    /// The container in it.
    pub container: ContainerRef,
}

/// Walks a cgroup v2 tree (at most `max_depth` levels, not following links) and returns every
/// container group in it.
pub fn scan(root: &Path, max_depth: usize) -> Vec<FoundCgroup> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if !ft.is_dir() {
                continue;
            }
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            if let Some(container) = parse_cgroup_path(&rel).filter(|c| c.container_id.is_some())
                && let Ok(m) = e.metadata()
            {
                out.push(FoundCgroup {
                    path: p.clone(),
                    id: m.ino(),
                    container,
                });
            }
            if depth + 1 < max_depth {
                stack.push((p, depth + 1));
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The groups of a pod's containers (all of them, or those with the given IDs).
pub fn find_pod(
    found: &[FoundCgroup],
    pod_uid: &str,
    container_ids: &[String],
) -> Vec<FoundCgroup> {
    found
        .iter()
        .filter(|f| f.container.pod_uid == pod_uid)
        .filter(|f| {
            container_ids.is_empty()
                || f.container
                    .container_id
                    .as_ref()
                    .is_some_and(|id| container_ids.contains(id))
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "1b4c6f2e-9a1d-4c55-8e3f-0a1b2c3d4e5f";
    const ID: &str = "4f9d1c2b3a4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";

    fn c(id: Option<&str>, runtime: Runtime) -> Option<ContainerRef> {
        Some(ContainerRef {
            pod_uid: UID.into(),
            container_id: id.map(String::from),
            runtime,
        })
    }

    #[test]
    fn every_runtime_and_driver_layout() {
        let u = UID.replace('-', "_");
        let cases = [
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"
                ),
                c(Some(ID), Runtime::Containerd),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope"),
                c(Some(ID), Runtime::Containerd),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/crio-{ID}.scope"
                ),
                c(Some(ID), Runtime::Crio),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/crio-conmon-{ID}.scope"
                ),
                None,
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/docker-{ID}.scope"
                ),
                c(Some(ID), Runtime::Docker),
            ),
            (
                format!("/kubepods/burstable/pod{UID}/{ID}"),
                c(Some(ID), Runtime::Unknown),
            ),
            (
                format!("/kubepods/besteffort/pod{UID}/crio-{ID}"),
                c(Some(ID), Runtime::Crio),
            ),
            (
                format!("/kubepods/pod{UID}/{ID}"),
                c(Some(ID), Runtime::Unknown),
            ),
            // kind: the node is itself a container.
            (
                format!(
                    "/system.slice/docker-{ID}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope"
                ),
                c(Some(ID), Runtime::Containerd),
            ),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"),
                c(None, Runtime::Unknown),
            ),
            ("/system.slice/containerd.service".to_string(), None),
            ("/user.slice/user-0.slice/session-1.scope".to_string(), None),
            (
                format!("/kubepods/burstable/pod{UID}/not-a-container"),
                None,
            ),
        ];
        for (path, want) in cases {
            assert_eq!(parse_cgroup_path(&path), want, "{path}");
        }
    }

    #[test]
    fn process_cgroup_files_v2_and_v1() {
        let v2 = format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID}.scope\n",
            UID.replace('-', "_")
        );
        assert_eq!(container_of_process(&v2), c(Some(ID), Runtime::Containerd));
        let v1 = format!(
            "12:pids:/kubepods/burstable/pod{UID}/{ID}\n11:memory:/kubepods/burstable/pod{UID}/{ID}\n0::/\n"
        );
        assert_eq!(container_of_process(&v1), c(Some(ID), Runtime::Unknown));
        assert_eq!(container_of_process("0::/user.slice\n"), None);
    }
}
