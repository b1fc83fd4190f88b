//! Privileged: the agent binary inside the release image (`cargo xtask image`, CI's release
//! step) runs on this kernel: `--version`, and `watch` in a node namespace the test creates,
//! counting exactly the datagrams sent between two pods. Without the image it says SKIPPED
//! (build it with `cargo xtask image`; `ORB8_IMAGE_TAR` names another tar).

use std::path::PathBuf;
use std::process::Command;

use orb8_testkit::*;

const UDP4_OVERHEAD: u64 = 20 + 8;

fn image_tar() -> PathBuf {
    std::env::var_os("ORB8_IMAGE_TAR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/image/orb8-agent.oci.tar")
        })
}

/// The extracted agent, removed on drop.
struct Extracted(PathBuf);

impl Drop for Extracted {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn privileged_the_image_agent_runs_and_counts_exactly() {
    const NAME: &str = "privileged_the_image_agent_runs_and_counts_exactly";
    let tar = image_tar();
    if !tar.exists() {
        preconditions::skipped(
            NAME,
            &format!(
                "no agent image at {} (run `cargo xtask image`)",
                tar.display()
            ),
        );
        return;
    }
    if !preconditions::require_root_or_skip(NAME) {
        return;
    }
    let image = xtask::oci::inspect_file(&tar).unwrap_or_else(|e| panic!("{e:#}"));
    let binaries = xtask::oci::check_agent_image(&image).unwrap_or_else(|e| panic!("{e:#}"));
    let host = if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "amd64"
    };
    let (_, bytes) = binaries
        .iter()
        .find(|(arch, _)| arch == host)
        .expect("the image has this host's platform");
    xtask::elf::check_static(host, bytes).unwrap_or_else(|e| panic!("{e:#}"));
    let dir = Extracted(std::env::temp_dir().join(format!("orb8-image-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("mkdir");
    let bin = dir.0.join("orb8-agent");
    std::fs::write(&bin, bytes).expect("write");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    let out = Command::new(&bin).arg("--version").output().expect("run");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("orb8-agent {}\n", env!("CARGO_PKG_VERSION"))
    );

    let topo = Topology::new(2);
    let (a, b) = (&topo.pods[0], &topo.pods[1]);
    let agent = WatchAgent::start_binary(&bin, &topo.node, &[]);
    let rx = udp_receiver(&b.ns, &format!("{}:5000", b.ip4), 25);
    udp_send(
        &a.ns,
        &format!("{}:40000", a.ip4),
        &format!("{}:5000", b.ip4),
        25,
        100,
    );
    assert_eq!(rx.join().expect("receiver"), 25, "all datagrams delivered");
    let s = agent.stop();
    assert_eq!(
        one_flow(&s, &a.host_if, "ingress", "udp", &a.ip4, &b.ip4),
        (25, 25 * (100 + UDP4_OVERHEAD), String::new())
    );
    assert_eq!(
        one_flow(&s, &b.host_if, "egress", "udp", &a.ip4, &b.ip4),
        (25, 25 * (100 + UDP4_OVERHEAD), String::new())
    );
}
