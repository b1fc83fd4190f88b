//! cgroup v2 groups the tests create (also nested like a container runtime's layout) and
//! remove on drop, moving their processes back to the root group first. The guard panics when
//! a group cannot be removed (unless the thread is already panicking).

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Duration,
};

use crate::guard::cleanup_failed;

static NEXT: AtomicU32 = AtomicU32::new(0);

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
                    // A process that exited meanwhile cannot be moved; one that stays makes
                    // the removal below fail, which is reported.
                    let _ = std::fs::write(&root, pid);
                }
            }
            // A process just moved or killed leaves the group asynchronously: retry, bounded.
            let mut last = None;
            for _ in 0..50 {
                match std::fs::remove_dir(dir) {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
                thread::sleep(Duration::from_millis(20));
            }
            if let Some(e) = last {
                cleanup_failed(&format!("cgroup {}", dir.display()), &e.to_string());
            }
        }
    }
}
