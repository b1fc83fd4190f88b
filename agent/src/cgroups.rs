//! Finding a syscall-trace target's identity on this host: its cgroup v2 group (id = inode of
//! the directory), or, where it has none of its own, its PID namespace or the process itself.
//!
//! The parsers take file contents and return data, so they are tested without a kernel; the
//! functions that read `/proc` and stat directories are thin wrappers around them.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Why a target could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// No such process.
    #[error("no process with PID {pid}")]
    NoProcess {
        /// The PID asked for.
        pid: u32,
    },
    /// The cgroup directory does not exist or is not a cgroup v2 directory.
    #[error("{path}: not a cgroup v2 directory ({reason})")]
    NotCgroup {
        /// The path as resolved.
        path: String,
        /// Why.
        reason: String,
    },
    /// None of the pod's containers has a cgroup or a process on this host.
    #[error("pod {pod} has no running container on this node (uid {pod_uid})")]
    NoContainer {
        /// namespace/name, for the message.
        pod: String,
        /// Its UID.
        pod_uid: String,
    },
    /// The host has no cgroup2 mount, so a cgroup path cannot be traced.
    #[error("no cgroup2 file system is mounted on this host (see /proc/self/mountinfo)")]
    NoCgroup2,
    /// A `/proc` file could not be read.
    #[error("reading {path}: {source}")]
    Proc {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A PID namespace, as `stat(2)` of `/proc/PID/ns/pid` identifies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidNs {
    /// Device of the nsfs inode.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

/// How the kernel will recognise the target's threads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// By cgroup v2 id.
    Cgroup {
        /// The cgroup's directory.
        path: PathBuf,
        /// Its id (the directory's inode number).
        id: u64,
    },
    /// By several cgroup v2 ids (a pod's containers).
    Cgroups {
        /// The groups' directories and ids.
        groups: Vec<(PathBuf, u64)>,
    },
    /// By PID namespace.
    PidNs {
        /// The process the namespace was taken from.
        pid: u32,
        /// The namespace.
        ns: PidNs,
    },
    /// By process (thread group) id.
    Process {
        /// The process.
        pid: u32,
    },
}

/// A resolved target, and why it is not the cgroup filter when it is not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// What the kernel filters on.
    pub resolved: Resolved,
    /// Set when the agent fell back from the cgroup filter.
    pub note: Option<String>,
}

impl Target {
    /// One line: `cgroup /sys/fs/cgroup/x (id 42)`, `pid namespace of PID 7 (ino 4026532)` or
    /// `process 7`.
    pub fn describe(&self) -> String {
        match &self.resolved {
            Resolved::Cgroup { path, id } => format!("cgroup {} (id {id})", path.display()),
            Resolved::Cgroups { groups } => {
                let ids: Vec<String> = groups.iter().map(|(_, id)| id.to_string()).collect();
                format!(
                    "{} container cgroup(s) (ids {})",
                    groups.len(),
                    ids.join(", ")
                )
            }
            Resolved::PidNs { pid, ns } => {
                format!("PID namespace of process {pid} (pid:[{}])", ns.ino)
            }
            Resolved::Process { pid } => format!("process {pid}"),
        }
    }
}

/// The mount point of the first cgroup2 file system in a `/proc/self/mountinfo`.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        // Only a mount of the hierarchy's root shows every group under it.
        if fields.get(3) != Some(&"/") {
            return None;
        }
        fields.get(4).map(|p| PathBuf::from(unescape_mount(p)))
    })
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as octal (`\040`).
fn unescape_mount(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Some(v) = s
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 path (`0::/path` line) of a `/proc/PID/cgroup`, when the process has one.
pub fn cgroup2_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end())
        .filter(|p| p.starts_with('/'))
}

/// Why a process's cgroup v2 group cannot identify it, or `None` when it can: the root group
/// holds every process that was never moved, and the agent's own group would trace the agent.
pub fn cgroup_unusable(target: &str, agent: Option<&str>) -> Option<&'static str> {
    if target == "/" {
        Some("it is in the root cgroup v2 group, shared with every process not in a container")
    } else if Some(target) == agent {
        Some("it shares its cgroup v2 group with orb8-agent")
    } else {
        None
    }
}

/// The filter for process `pid` given what was read about it; pure, so every case is tested.
///
/// `cgroup` is the target's cgroup directory and id when it has a usable one; otherwise
/// `why_not` says why not. A process in another PID namespace than the agent's is traced by
/// namespace (the container on a cgroup v1 host); one in the agent's own is traced alone.
pub fn choose(
    pid: u32,
    cgroup: Option<(PathBuf, u64)>,
    why_not: &str,
    target_ns: PidNs,
    agent_ns: PidNs,
) -> Target {
    if let Some((path, id)) = cgroup {
        return Target {
            resolved: Resolved::Cgroup { path, id },
            note: None,
        };
    }
    if target_ns != agent_ns {
        Target {
            resolved: Resolved::PidNs { pid, ns: target_ns },
            note: Some(format!(
                "process {pid} has no cgroup v2 group of its own ({why_not}): tracing its PID \
                 namespace instead"
            )),
        }
    } else {
        Target {
            resolved: Resolved::Process { pid },
            note: Some(format!(
                "process {pid} has no cgroup v2 group or PID namespace of its own ({why_not}): \
                 tracing that process only (not processes it starts later)"
            )),
        }
    }
}

fn read(path: &str) -> Result<String, TargetError> {
    std::fs::read_to_string(path).map_err(|source| TargetError::Proc {
        path: path.to_string(),
        source,
    })
}

fn pidns_of(pid: &str) -> Result<PidNs, TargetError> {
    let path = format!("/proc/{pid}/ns/pid");
    let m = std::fs::metadata(&path).map_err(|source| TargetError::Proc { path, source })?;
    Ok(PidNs {
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// The cgroup2 mount of this host.
pub fn host_cgroup2_mount() -> Result<PathBuf, TargetError> {
    cgroup2_mount(&read("/proc/self/mountinfo")?).ok_or(TargetError::NoCgroup2)
}

/// A cgroup v2 directory (absolute, or relative to the cgroup2 mount) and its id.
pub fn resolve_cgroup(path: &str) -> Result<Target, TargetError> {
    let mount = host_cgroup2_mount()?;
    let p = Path::new(path);
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        mount.join(p)
    };
    let not = |reason: String| TargetError::NotCgroup {
        path: full.display().to_string(),
        reason,
    };
    let m = std::fs::metadata(&full).map_err(|e| not(e.to_string()))?;
    if !m.is_dir() || !full.join("cgroup.procs").exists() {
        return Err(not("no cgroup.procs in it".into()));
    }
    if !full.starts_with(&mount) {
        return Err(not(format!(
            "not under the cgroup2 mount {}",
            mount.display()
        )));
    }
    Ok(Target {
        resolved: Resolved::Cgroup {
            id: m.ino(),
            path: full,
        },
        note: None,
    })
}

/// How deep [`resolve_pod`] looks for container groups under the cgroup2 mount.
const POD_SCAN_DEPTH: usize = 12;

/// The cgroup v2 groups of a pod's containers on this host (all of them, or those with the
/// given IDs). Where containers have no cgroup v2 group (cgroup v1 only), one of the pod's
/// processes is found through `/proc/PID/cgroup` and traced like `--pid` (its PID namespace).
pub fn resolve_pod(
    name: &str,
    pod_uid: &str,
    container_ids: &[String],
) -> Result<Target, TargetError> {
    use crate::containers;
    if let Ok(mount) = host_cgroup2_mount() {
        let found = containers::scan(&mount, POD_SCAN_DEPTH);
        let groups: Vec<(PathBuf, u64)> = containers::find_pod(&found, pod_uid, container_ids)
            .into_iter()
            .map(|f| (f.path, f.id))
            .collect();
        if !groups.is_empty() {
            return Ok(Target {
                resolved: Resolved::Cgroups { groups },
                note: None,
            });
        }
    }
    let entries = std::fs::read_dir("/proc").map_err(|source| TargetError::Proc {
        path: "/proc".into(),
        source,
    })?;
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue;
        };
        let Some(c) = containers::container_of_process(&text) else {
            continue;
        };
        let wanted = container_ids.is_empty()
            || c.container_id
                .as_ref()
                .is_some_and(|id| container_ids.contains(id));
        if c.pod_uid == pod_uid && wanted {
            let mut t = resolve_pid(pid)?;
            let why = format!(
                "pod {name} has no cgroup v2 group on this node: tracing it through its process {pid}"
            );
            t.note = Some(match t.note {
                Some(n) => format!("{why}; {n}"),
                None => why,
            });
            return Ok(t);
        }
    }
    Err(TargetError::NoContainer {
        pod: name.to_string(),
        pod_uid: pod_uid.to_string(),
    })
}

/// Process `pid`'s cgroup v2 group, or its PID namespace, or the process itself.
pub fn resolve_pid(pid: u32) -> Result<Target, TargetError> {
    if pid == 0 || !Path::new(&format!("/proc/{pid}")).exists() {
        return Err(TargetError::NoProcess { pid });
    }
    let target_ns = pidns_of(&pid.to_string())?;
    let agent_ns = pidns_of("self")?;
    let own = read(&format!("/proc/{pid}/cgroup"))?;
    let agent = read("/proc/self/cgroup")?;
    let mount = host_cgroup2_mount().ok();
    let (cgroup, why_not) = match (cgroup2_path(&own), &mount) {
        (None, _) | (_, None) => (None, "this host has no cgroup v2 hierarchy"),
        (Some(rel), Some(mount)) => match cgroup_unusable(rel, cgroup2_path(&agent)) {
            Some(why) => (None, why),
            None => {
                let dir = mount.join(rel.trim_start_matches('/'));
                match std::fs::metadata(&dir) {
                    Ok(m) => (Some((dir, m.ino())), ""),
                    Err(_) => (None, "its cgroup v2 directory is not visible to orb8-agent"),
                }
            }
        },
    };
    Ok(choose(pid, cgroup, why_not, target_ns, agent_ns))
}

/// Whether process `pid` has exited (gone, or a zombie waiting to be reaped).
pub fn process_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => matches!(proc_state(&stat), Some('Z' | 'X')),
        Err(_) => true,
    }
}

/// The state letter of a `/proc/PID/stat` line (after the parenthesised command name).
pub fn proc_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_the_cgroup2_mount() {
        assert_eq!(
            cgroup2_mount(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "25 1 0:22 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let bind_of_subgroup = "25 1 0:22 /kubepods /x rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(bind_of_subgroup), None);
        let spaced = "25 1 0:22 / /a\\040b rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(spaced), Some(PathBuf::from("/a b")));
        assert_eq!(
            cgroup2_mount("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw\n"),
            None
        );
    }

    #[test]
    fn reads_the_cgroup2_path() {
        let hybrid = "9:name=systemd:/\n4:memory:/x/y\n0::/orb8-test-1\n";
        assert_eq!(cgroup2_path(hybrid), Some("/orb8-test-1"));
        assert_eq!(cgroup2_path("4:memory:/x\n"), None);
        assert_eq!(cgroup2_path("0::/\n"), Some("/"));
    }

    #[test]
    fn root_and_shared_groups_are_unusable() {
        assert!(cgroup_unusable("/", Some("/a")).unwrap().contains("root"));
        assert!(
            cgroup_unusable("/a", Some("/a"))
                .unwrap()
                .contains("orb8-agent")
        );
        assert_eq!(cgroup_unusable("/a", Some("/b")), None);
        assert_eq!(cgroup_unusable("/a", None), None);
    }

    #[test]
    fn falls_back_to_the_pid_namespace_then_the_process() {
        let host = PidNs { dev: 4, ino: 100 };
        let container = PidNs { dev: 4, ino: 200 };
        let t = choose(7, Some(("/cg/x".into(), 42)), "", container, host);
        assert_eq!(
            t.resolved,
            Resolved::Cgroup {
                path: "/cg/x".into(),
                id: 42
            }
        );
        assert_eq!(t.note, None);
        assert_eq!(t.describe(), "cgroup /cg/x (id 42)");
        let t = choose(7, None, "root", container, host);
        assert_eq!(
            t.resolved,
            Resolved::PidNs {
                pid: 7,
                ns: container
            }
        );
        assert!(t.note.unwrap().contains("tracing its PID namespace"));
        let t = choose(7, None, "root", host, host);
        assert_eq!(t.resolved, Resolved::Process { pid: 7 });
        assert!(t.note.unwrap().contains("tracing that process only"));
    }

    #[test]
    fn process_states() {
        assert_eq!(proc_state("42 (a b) c) S 1 2"), Some('S'));
        assert_eq!(proc_state("42 (x) Z 1"), Some('Z'));
        assert_eq!(proc_state("garbage"), None);
    }
}
