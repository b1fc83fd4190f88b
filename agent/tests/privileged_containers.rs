//! Privileged: cgroup trees laid out as each container runtime and cgroup driver lays them
//! out, created by the test under a test-owned group (cgroup v2, and a v1 hierarchy), with a
//! real process moved into each container's group; the resolver must name its pod and
//! container, by scanning the tree and from the process's `/proc/PID/cgroup`.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use orb8_agent::containers::{self, ContainerRef, Runtime};

/// A test-owned cgroup tree under one hierarchy, removed deepest first on drop (its processes
/// moved back to the hierarchy's root group first), also when the test panics.
struct Tree {
    mount: PathBuf,
    root: PathBuf,
    dirs: Vec<PathBuf>,
}

impl Tree {
    fn new(mount: &Path, tag: &str) -> Tree {
        let root = mount.join(format!("orb8-test-{}-{tag}", std::process::id()));
        std::fs::create_dir(&root).unwrap_or_else(|e| panic!("creating {}: {e}", root.display()));
        Tree {
            mount: mount.to_path_buf(),
            root: root.clone(),
            dirs: vec![root],
        }
    }

    /// Creates `rel` (with its parents) under the tree's root.
    fn mkdir(&mut self, rel: &str) -> PathBuf {
        let mut p = self.root.clone();
        for seg in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.join(seg);
            if !p.exists() {
                std::fs::create_dir(&p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
                self.dirs.push(p.clone());
            }
        }
        p
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
                for pid in procs.split_whitespace() {
                    let _ = std::fs::write(self.mount.join("cgroup.procs"), pid);
                }
            }
            let _ = std::fs::remove_dir(d);
        }
    }
}

struct Sleeper(Child);

impl Sleeper {
    fn start() -> Sleeper {
        Sleeper(
            Command::new("sleep")
                .arg("60")
                .spawn()
                .expect("spawning sleep"),
        )
    }
    fn move_to(&self, group: &Path) {
        std::fs::write(group.join("cgroup.procs"), self.0.id().to_string())
            .unwrap_or_else(|e| panic!("moving into {}: {e}", group.display()));
    }
    fn proc_cgroup(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/cgroup", self.0.id())).unwrap()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cgroup2_mount() -> PathBuf {
    orb8_agent::cgroups::host_cgroup2_mount().expect("privileged test: needs a cgroup2 mount")
}

fn id(n: u8) -> String {
    format!("{:02x}", n).repeat(32)
}

fn uid(n: u8) -> String {
    format!("{n:08x}-aaaa-4bbb-8ccc-{n:012x}")
}

#[test]
fn privileged_v2_layouts_of_every_runtime_resolve_to_pod_and_container() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "privileged test: run as root"
    );
    let mount = cgroup2_mount();
    let mut tree = Tree::new(&mount, "v2");
    let layouts = [
        (
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{}.scope",
                uid(1).replace('-', "_"),
                id(1)
            ),
            Runtime::Containerd,
            uid(1),
            id(1),
        ),
        (
            format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/crio-{}.scope",
                uid(2).replace('-', "_"),
                id(2)
            ),
            Runtime::Crio,
            uid(2),
            id(2),
        ),
        (
            format!(
                "kubepods.slice/kubepods-pod{}.slice/docker-{}.scope",
                uid(3).replace('-', "_"),
                id(3)
            ),
            Runtime::Docker,
            uid(3),
            id(3),
        ),
        (
            format!("kubepods/burstable/pod{}/{}", uid(4), id(4)),
            Runtime::Unknown,
            uid(4),
            id(4),
        ),
        (
            format!("kubepods/besteffort/pod{}/crio-{}", uid(5), id(5)),
            Runtime::Crio,
            uid(5),
            id(5),
        ),
    ];
    // A decoy: CRI-O's monitor group is not a container.
    tree.mkdir(&format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/crio-conmon-{}.scope", uid(2).replace('-', "_"), id(9)));
    let mut sleepers = Vec::new();
    for (rel, runtime, pod_uid, container_id) in &layouts {
        let dir = tree.mkdir(rel);
        let s = Sleeper::start();
        s.move_to(&dir);
        let want = ContainerRef {
            pod_uid: pod_uid.clone(),
            container_id: Some(container_id.clone()),
            runtime: *runtime,
        };
        assert_eq!(
            containers::container_of_process(&s.proc_cgroup()),
            Some(want),
            "{rel}"
        );
        sleepers.push((s, dir));
    }
    let found = containers::scan(&tree.root, 8);
    assert_eq!(found.len(), layouts.len(), "{found:#?}");
    for (s, dir) in &sleepers {
        let f = found
            .iter()
            .find(|f| &f.path == dir)
            .unwrap_or_else(|| panic!("{} not found", dir.display()));
        assert_eq!(
            f.id,
            std::fs::metadata(dir).unwrap().ino(),
            "cgroup id is the inode"
        );
        assert!(
            std::fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap()
                .contains(&s.0.id().to_string())
        );
    }
    let pod = containers::find_pod(&found, &uid(4), &[]);
    assert_eq!(pod.len(), 1);
    assert_eq!(
        pod[0].container.container_id.as_deref(),
        Some(id(4).as_str())
    );
    assert!(containers::find_pod(&found, &uid(1), &[id(2)]).is_empty());
    drop(sleepers);
}

#[test]
fn privileged_v1_hierarchy_layout_resolves_from_the_process() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "privileged test: run as root"
    );
    let mount = Path::new("/sys/fs/cgroup/pids");
    assert!(
        mount.join("cgroup.procs").exists(),
        "privileged test: needs the v1 pids hierarchy at /sys/fs/cgroup/pids"
    );
    let mut tree = Tree::new(mount, "v1");
    let dir = tree.mkdir(&format!("kubepods/besteffort/pod{}/{}", uid(7), id(7)));
    let s = Sleeper::start();
    s.move_to(&dir);
    assert_eq!(
        containers::container_of_process(&s.proc_cgroup()),
        Some(ContainerRef {
            pod_uid: uid(7),
            container_id: Some(id(7)),
            runtime: Runtime::Unknown
        })
    );
}
