//! Pod names from the container runtime's own files on the node, so the agent needs no
//! Kubernetes API rights: the veth resolver ([`crate::peers`]) gives the container ID of a
//! process in the pod's network namespace (usually the sandbox's), and the runtime keeps that
//! container's OCI `config.json` with the pod's name and namespace among its annotations:
//!
//! | runtime | file | annotations |
//! |---|---|---|
//! | containerd | `/run/containerd/io.containerd.runtime.v2.task/k8s.io/<id>/config.json` | `io.kubernetes.cri.sandbox-namespace`, `io.kubernetes.cri.sandbox-name` |
//! | CRI-O | `/run/containers/storage/overlay-containers/<id>/userdata/config.json` | `io.kubernetes.pod.namespace`, `io.kubernetes.pod.name` |
//!
//! A container whose file cannot be read or names no pod is reported by its pod UID alone.

use std::path::{Path, PathBuf};

use super::pods::PodId;

/// Where the runtimes this module knows keep their containers' OCI bundles.
pub const DEFAULT_DIRS: [&str; 2] = [
    "/run/containerd/io.containerd.runtime.v2.task/k8s.io",
    "/run/containers/storage/overlay-containers",
];

/// The pod an OCI `config.json` belongs to, from its annotations.
pub fn pod_of_config(config: &str) -> Option<PodId> {
    let v: serde_json::Value = serde_json::from_str(config).ok()?;
    let a = v.get("annotations")?;
    let get = |k: &str| a.get(k).and_then(|s| s.as_str()).filter(|s| !s.is_empty());
    let (namespace, pod) = get("io.kubernetes.cri.sandbox-namespace")
        .zip(get("io.kubernetes.cri.sandbox-name"))
        .or_else(|| get("io.kubernetes.pod.namespace").zip(get("io.kubernetes.pod.name")))?;
    Some(PodId {
        namespace: namespace.to_string(),
        pod: pod.to_string(),
    })
}

/// Looks container `id` up in each of `dirs` (`<dir>/<id>/config.json`, then
/// `<dir>/<id>/userdata/config.json`).
pub fn lookup(dirs: &[PathBuf], id: &str) -> Option<PodId> {
    dirs.iter().find_map(|d| {
        [
            d.join(id).join("config.json"),
            d.join(id).join("userdata").join("config.json"),
        ]
        .iter()
        .find_map(|p| read(p))
    })
}

fn read(p: &Path) -> Option<PodId> {
    pod_of_config(&std::fs::read_to_string(p).ok()?)
}

/// The name a pod is reported under when its runtime files say nothing: its UID.
pub fn by_uid(uid: &str) -> PodId {
    PodId {
        namespace: String::new(),
        pod: uid.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_and_crio_annotations() {
        let c = r#"{"annotations":{"io.kubernetes.cri.container-type":"sandbox",
            "io.kubernetes.cri.sandbox-name":"web-1","io.kubernetes.cri.sandbox-namespace":"shop"}}"#;
        assert_eq!(
            pod_of_config(c),
            Some(PodId {
                namespace: "shop".into(),
                pod: "web-1".into()
            })
        );
        let o = r#"{"annotations":{"io.kubernetes.pod.name":"db-0","io.kubernetes.pod.namespace":"data"}}"#;
        assert_eq!(pod_of_config(o).unwrap().pod, "db-0");
        assert_eq!(pod_of_config(r#"{"annotations":{}}"#), None);
        assert_eq!(pod_of_config("not json"), None);
    }

    #[test]
    fn looks_in_both_layouts() {
        let dir = std::env::temp_dir().join(format!("orb8-podnames-{}", std::process::id()));
        let id = "a".repeat(64);
        std::fs::create_dir_all(dir.join(&id).join("userdata")).unwrap();
        std::fs::write(
            dir.join(&id).join("userdata/config.json"),
            r#"{"annotations":{"io.kubernetes.pod.name":"p","io.kubernetes.pod.namespace":"n"}}"#,
        )
        .unwrap();
        let found = lookup(&[PathBuf::from("/nonexistent"), dir.clone()], &id);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            found.map(|p| (p.namespace, p.pod)),
            Some(("n".into(), "p".into()))
        );
        assert_eq!(lookup(&[], &id), None);
    }
}
