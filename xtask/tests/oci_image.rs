//! The agent image layout, built from a real executable (this test's own) and read back with
//! the same checks CI applies to the release image: digests, platforms, entrypoint, and layers
//! holding exactly the agent binary.

use std::collections::BTreeMap;

use xtask::oci::{self, AGENT_PATH, ImageMeta};

fn meta() -> ImageMeta {
    ImageMeta {
        name: "registry.test/orb8-agent:v9.9.9".into(),
        labels: BTreeMap::from([
            ("org.opencontainers.image.version".into(), "9.9.9".into()),
            ("org.opencontainers.image.revision".into(), "abc123".into()),
            (
                "org.opencontainers.image.source".into(),
                "https://github.com/orb8/orb8".into(),
            ),
        ]),
    }
}

fn binaries() -> (Vec<u8>, Vec<u8>) {
    let me = std::fs::read(std::env::current_exe().expect("exe")).expect("read");
    // Two different payloads, so a mix-up between platforms shows.
    let mut other = me.clone();
    other.extend_from_slice(b"arm64");
    (me, other)
}

#[test]
fn the_layout_lists_both_platforms_and_holds_only_the_agent() {
    let (amd64, arm64) = binaries();
    let built = oci::build(&[("amd64", &amd64), ("arm64", &arm64)], &meta()).expect("builds");
    let image = oci::inspect(&built.tar).expect("reads back");
    assert_eq!(image.name, "registry.test/orb8-agent:v9.9.9");
    assert_eq!(image.index_digest, built.index_digest);
    let arches: Vec<(&str, &str)> = image
        .platforms
        .iter()
        .map(|p| (p.os.as_str(), p.arch.as_str()))
        .collect();
    assert_eq!(arches, vec![("linux", "amd64"), ("linux", "arm64")]);
    for p in &image.platforms {
        assert_eq!(p.entrypoint, vec![AGENT_PATH.to_string()]);
        assert_eq!(p.labels, meta().labels);
        assert_eq!(p.kinds, vec!['0']);
    }
    let extracted = oci::check_agent_image(&image).expect("an agent image");
    assert_eq!(
        extracted,
        vec![("amd64".to_string(), amd64), ("arm64".to_string(), arm64)]
    );
    // The tar's top level: the layout marker, index.json and blobs only.
    let mut top: Vec<String> = tar::Archive::new(built.tar.as_slice())
        .entries()
        .expect("tar")
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .to_string_lossy()
                .into_owned()
        })
        .filter(|p| !p.starts_with("blobs/"))
        .collect();
    top.sort();
    assert_eq!(top, vec!["index.json", "oci-layout"]);
}

#[test]
fn the_same_inputs_give_the_same_bytes() {
    let (amd64, arm64) = binaries();
    let a = oci::build(&[("amd64", &amd64), ("arm64", &arm64)], &meta()).expect("a");
    let b = oci::build(&[("amd64", &amd64), ("arm64", &arm64)], &meta()).expect("b");
    assert_eq!(a.index_digest, b.index_digest);
    assert!(a.tar == b.tar, "two builds differ");
    let mut changed = meta();
    changed
        .labels
        .insert("org.opencontainers.image.revision".into(), "def456".into());
    let c = oci::build(&[("amd64", &amd64), ("arm64", &arm64)], &changed).expect("c");
    assert_ne!(a.index_digest, c.index_digest);
}

#[test]
fn damaged_or_foreign_images_are_refused() {
    let (amd64, arm64) = binaries();
    let built = oci::build(&[("amd64", &amd64), ("arm64", &arm64)], &meta()).expect("builds");
    // One byte of a config blob changed (the tar keeps its size and headers).
    let mut damaged = built.tar.clone();
    let at = damaged
        .windows(8)
        .rposition(|w| w == b"\"rootfs\"")
        .expect("a config blob");
    damaged[at + 1] = b'R';
    let err = oci::inspect(&damaged).expect_err("damaged");
    assert!(format!("{err:#}").contains("does not match"), "{err:#}");

    // Only one platform.
    let single = oci::build(&[("amd64", &amd64)], &meta()).expect("builds");
    let image = oci::inspect(&single.tar).expect("reads back");
    let err = oci::check_agent_image(&image).expect_err("one platform");
    assert!(
        err.to_string().contains("expected [\"amd64\", \"arm64\"]"),
        "{err}"
    );

    // Something next to the agent, or another entrypoint.
    let good = oci::inspect(&built.tar).expect("reads back");
    let mut extra = good.clone();
    extra.platforms[1].files.push(oci::LayerFile {
        path: "/bin/sh".into(),
        mode: 0o755,
        bytes: b"sh".to_vec(),
    });
    extra.platforms[1].kinds.push('0');
    let err = oci::check_agent_image(&extra).expect_err("extra file");
    assert!(err.to_string().contains("/bin/sh"), "{err}");
    let mut shell = good;
    shell.platforms[0].entrypoint = vec!["/bin/sh".into(), "-c".into()];
    let err = oci::check_agent_image(&shell).expect_err("entrypoint");
    assert!(err.to_string().contains("entrypoint"), "{err}");
}
