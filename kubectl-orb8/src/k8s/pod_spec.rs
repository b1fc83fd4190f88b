//! The agent pod and its namespace, built from plain parameters (no cluster needed to test).
//!
//! The agent pod contract (ephemeral mode), stated here and in README's "Cluster mode": pinned
//! to its node with `nodeName`; `hostNetwork`, and `hostPID` so that `/proc` is the host's (no
//! proc mount); the capabilities eBPF needs (BPF, PERFMON, NET_ADMIN, SYS_ADMIN) instead of
//! `privileged`; a read-only root filesystem; only the host paths the agent reads mounted
//! (`/sys/fs/bpf`, `/sys/fs/cgroup` read-only, and for `gpu` only the kubelet's pod-resources
//! directory read-only); every taint tolerated; no service-account token;
//! gRPC on 127.0.0.1 behind a per-session token; a hard deadline and an idle watchdog; small
//! requests and limits; and labels that `kubectl orb8 cleanup` finds it by.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, HostPathVolumeSource, Namespace,
    ObjectFieldSelector, Pod, PodSpec, ResourceRequirements, SecurityContext, Toleration, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// `app.kubernetes.io/name` of every agent pod.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// `app.kubernetes.io/managed-by` of every agent pod.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The session that created a pod.
pub const LABEL_SESSION: &str = "orb8.dev/session";
/// Annotation carrying the node a pod was created for.
pub const ANNOTATION_NODE: &str = "orb8.dev/node";
/// Value of [`LABEL_NAME`].
pub const APP_NAME: &str = "orb8-agent";
/// Value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "kubectl-orb8";
/// The label selector matching every agent pod orb8 created.
pub const SELECTOR: &str =
    "app.kubernetes.io/managed-by=kubectl-orb8,app.kubernetes.io/name=orb8-agent";
/// Name of the agent container.
pub const CONTAINER: &str = "agent";
/// Where the agent binary lives in the image.
pub const AGENT_PATH: &str = "/usr/local/bin/orb8-agent";

/// Everything that varies between agent pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPodParams {
    /// Session id (lowercase hex), shared by the pods of one command.
    pub session: String,
    /// The node to pin the pod to.
    pub node: String,
    /// Pod name (see [`pod_name`]).
    pub name: String,
    /// Namespace of the pod.
    pub namespace: String,
    /// Agent image.
    pub image: String,
    /// `imagePullPolicy`, or the cluster's default when `None`.
    pub pull_policy: Option<String>,
    /// Loopback port the agent listens on (host network: must be free on the node).
    pub port: u16,
    /// Per-session token the agent requires.
    pub token: String,
    /// The agent exits after this long without a client.
    pub idle_timeout: Duration,
    /// `activeDeadlineSeconds`: the pod is killed after this long whatever happens.
    pub deadline: Duration,
    /// Run privileged (kernels without CAP_BPF) instead of with listed capabilities.
    pub privileged: bool,
    /// GPU telemetry asked for (`kubectl orb8 gpu`): mount the kubelet's pod-resources
    /// directory read-only and ask the NVIDIA container runtime for NVML.
    pub gpu: bool,
    /// Ports the agent parses as DNS besides 53 (`--dns-port`).
    pub dns_ports: Vec<u16>,
}

/// The kubelet's pod-resources directory (its socket is `kubelet.sock` in it). The directory,
/// not the socket, is mounted: the kubelet replaces the socket when it restarts.
pub const POD_RESOURCES_DIR: &str = "/var/lib/kubelet/pod-resources";

/// Name of the `index`th agent pod of a session.
pub fn pod_name(session: &str, index: usize) -> String {
    format!("orb8-agent-{session}-{index}")
}

/// The labels of an agent pod of `session`.
pub fn labels(session: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), APP_NAME.to_string()),
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_SESSION.to_string(), session.to_string()),
    ])
}

/// The namespace for agent pods, labelled so Pod Security admits privileged pods in it.
pub fn agent_namespace(name: &str) -> Namespace {
    let labels = ["enforce", "audit", "warn"]
        .iter()
        .map(|mode| {
            (
                format!("pod-security.kubernetes.io/{mode}"),
                "privileged".to_string(),
            )
        })
        .chain([(LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string())])
        .collect();
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn host_path(name: &str, path: &str) -> Volume {
    Volume {
        name: name.to_string(),
        host_path: Some(HostPathVolumeSource {
            path: path.to_string(),
            type_: Some("Directory".to_string()),
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

fn quantity(s: &str) -> Quantity {
    Quantity(s.to_string())
}

/// The capabilities the agent needs: load eBPF (BPF, PERFMON), attach TC programs (NET_ADMIN),
/// read other processes' cgroups and namespaces (SYS_ADMIN).
pub const CAPABILITIES: [&str; 4] = ["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN"];

/// The agent pod's tolerations: every taint (one `Exists` with no key and no effect), so that
/// nodes reserved by taints are observed too. Node selection reads the same list.
pub fn tolerations() -> Vec<Toleration> {
    vec![Toleration {
        operator: Some("Exists".into()),
        ..Default::default()
    }]
}

/// The agent pod for one node.
pub fn agent_pod(p: &AgentPodParams) -> Pod {
    let secs = |d: Duration| d.as_secs().max(1);
    let env = vec![
        EnvVar {
            name: "NODE_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "spec.nodeName".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        EnvVar {
            name: "ORB8_AGENT_TOKEN".into(),
            value: Some(p.token.clone()),
            ..Default::default()
        },
        EnvVar {
            name: "RUST_LOG".into(),
            value: Some("warn".into()),
            ..Default::default()
        },
    ];
    let mut env = env;
    let mut mounts = vec![
        mount("bpffs", "/sys/fs/bpf", false),
        mount("cgroup", "/sys/fs/cgroup", true),
    ];
    let mut volumes = vec![
        host_path("bpffs", "/sys/fs/bpf"),
        host_path("cgroup", "/sys/fs/cgroup"),
    ];
    if p.gpu {
        mounts.push(mount("pod-resources", POD_RESOURCES_DIR, true));
        volumes.push(host_path("pod-resources", POD_RESOURCES_DIR));
        // The NVIDIA container runtime (where it is the node's runtime, as the GPU operator
        // sets it up) puts libnvidia-ml.so into containers asking for it; no GPU is allocated.
        for (name, value) in [
            ("NVIDIA_VISIBLE_DEVICES", "all"),
            ("NVIDIA_DRIVER_CAPABILITIES", "utility"),
        ] {
            env.push(EnvVar {
                name: name.into(),
                value: Some(value.into()),
                ..Default::default()
            });
        }
    }
    let security = if p.privileged {
        SecurityContext {
            privileged: Some(true),
            read_only_root_filesystem: Some(true),
            ..Default::default()
        }
    } else {
        SecurityContext {
            privileged: Some(false),
            capabilities: Some(Capabilities {
                add: Some(CAPABILITIES.iter().map(|c| c.to_string()).collect()),
                drop: Some(vec!["ALL".into()]),
            }),
            read_only_root_filesystem: Some(true),
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            ..Default::default()
        }
    };
    let container = Container {
        name: CONTAINER.into(),
        image: Some(p.image.clone()),
        image_pull_policy: p.pull_policy.clone(),
        command: Some(vec![AGENT_PATH.into()]),
        args: Some(
            [
                "serve".into(),
                "--listen".into(),
                format!("127.0.0.1:{}", p.port),
                "--idle-timeout".into(),
                format!("{}s", secs(p.idle_timeout)),
            ]
            .into_iter()
            .chain(p.dns_ports.iter().map(|port| format!("--dns-port={port}")))
            .collect(),
        ),
        env: Some(env),
        security_context: Some(security),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), quantity("50m")),
                ("memory".to_string(), quantity("64Mi")),
            ])),
            limits: Some(BTreeMap::from([
                ("cpu".to_string(), quantity("500m")),
                ("memory".to_string(), quantity("256Mi")),
            ])),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(p.name.clone()),
            namespace: Some(p.namespace.clone()),
            labels: Some(labels(&p.session)),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_NODE.to_string(),
                p.node.clone(),
            )])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(p.node.clone()),
            host_network: Some(true),
            host_pid: Some(true),
            dns_policy: Some("ClusterFirstWithHostNet".into()),
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            active_deadline_seconds: Some(secs(p.deadline) as i64),
            termination_grace_period_seconds: Some(5),
            tolerations: Some(tolerations()),
            containers: vec![container],
            volumes: Some(volumes),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> AgentPodParams {
        AgentPodParams {
            session: "a1b2c3d4".into(),
            node: "worker-1".into(),
            name: pod_name("a1b2c3d4", 0),
            namespace: crate::defaults::AGENT_NAMESPACE.into(),
            image: "example.test/orb8-agent:v1".into(),
            pull_policy: Some("IfNotPresent".into()),
            port: 47001,
            token: "0123456789abcdef0123456789abcdef".into(),
            idle_timeout: crate::defaults::cluster_idle_timeout(Duration::from_secs(60)),
            deadline: Duration::from_secs(600),
            privileged: false,
            gpu: false,
            dns_ports: Vec::new(),
        }
    }

    #[test]
    fn pod_follows_the_contract() {
        let pod = agent_pod(&params());
        let v = serde_json::to_value(&pod).unwrap();
        assert_eq!(v["metadata"]["name"], "orb8-agent-a1b2c3d4-0");
        assert_eq!(v["metadata"]["namespace"], "orb8-system");
        assert_eq!(
            v["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "kubectl-orb8"
        );
        assert_eq!(
            v["metadata"]["labels"]["app.kubernetes.io/name"],
            "orb8-agent"
        );
        assert_eq!(v["metadata"]["labels"]["orb8.dev/session"], "a1b2c3d4");
        let spec = &v["spec"];
        assert_eq!(spec["nodeName"], "worker-1");
        assert_eq!(spec["hostNetwork"], true);
        assert_eq!(spec["hostPID"], true);
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(spec["activeDeadlineSeconds"], 600);
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(
            spec["tolerations"],
            serde_json::json!([{"operator": "Exists"}])
        );
        let c = &spec["containers"][0];
        assert_eq!(c["image"], "example.test/orb8-agent:v1");
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(
            c["args"],
            serde_json::json!([
                "serve",
                "--listen",
                "127.0.0.1:47001",
                "--idle-timeout",
                "90s"
            ])
        );
        let sc = &c["securityContext"];
        assert_eq!(sc["privileged"], false);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(
            sc["capabilities"]["add"],
            serde_json::json!(["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN"])
        );
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
        let mounts: Vec<(&str, bool)> = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["mountPath"].as_str().unwrap(),
                    m["readOnly"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            mounts,
            vec![("/sys/fs/bpf", false), ("/sys/fs/cgroup", true)]
        );
        let volumes: Vec<(&str, &str)> = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["name"].as_str().unwrap(),
                    v["hostPath"]["path"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            volumes,
            vec![("bpffs", "/sys/fs/bpf"), ("cgroup", "/sys/fs/cgroup")],
            "hostPID gives the host's /proc: no proc mount"
        );
        assert_eq!(c["resources"]["limits"]["memory"], "256Mi");
        let env: Vec<&str> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(env, vec!["NODE_NAME", "ORB8_AGENT_TOKEN", "RUST_LOG"]);
        assert_eq!(
            c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
            "spec.nodeName"
        );
    }

    #[test]
    fn dns_ports_become_agent_flags() {
        let mut p = params();
        p.dns_ports = vec![5353, 8053];
        let v = serde_json::to_value(agent_pod(&p)).unwrap();
        let args = &v["spec"]["containers"][0]["args"];
        assert_eq!(args[5], "--dns-port=5353");
        assert_eq!(args[6], "--dns-port=8053");
        assert_eq!(args.as_array().unwrap().len(), 7);
    }

    #[test]
    fn privileged_when_asked() {
        let mut p = params();
        p.privileged = true;
        let v = serde_json::to_value(agent_pod(&p)).unwrap();
        let sc = &v["spec"]["containers"][0]["securityContext"];
        assert_eq!(sc["privileged"], true);
        assert!(sc.get("capabilities").is_none());
    }

    #[test]
    fn the_kubelet_socket_is_mounted_read_only_only_for_gpu() {
        let mut p = params();
        let v = serde_json::to_value(agent_pod(&p)).unwrap();
        assert!(!v.to_string().contains("pod-resources"));
        assert!(!v.to_string().contains("NVIDIA_VISIBLE_DEVICES"));
        p.gpu = true;
        let v = serde_json::to_value(agent_pod(&p)).unwrap();
        let c = &v["spec"]["containers"][0];
        assert_eq!(
            c["volumeMounts"][2],
            serde_json::json!({"name": "pod-resources", "mountPath": "/var/lib/kubelet/pod-resources", "readOnly": true})
        );
        assert_eq!(
            v["spec"]["volumes"][2],
            serde_json::json!({"name": "pod-resources", "hostPath": {"path": "/var/lib/kubelet/pod-resources", "type": "Directory"}})
        );
        let env: Vec<(&str, &str)> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .skip(3)
            .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
            .collect();
        assert_eq!(
            env,
            vec![
                ("NVIDIA_VISIBLE_DEVICES", "all"),
                ("NVIDIA_DRIVER_CAPABILITIES", "utility")
            ]
        );
        assert_eq!(
            orb8_proto::POD_RESOURCES_SOCKET,
            format!("{POD_RESOURCES_DIR}/kubelet.sock"),
            "the agent's default socket is in the mounted directory"
        );
    }

    #[test]
    fn namespace_admits_privileged_pods() {
        let v = serde_json::to_value(agent_namespace("orb8-system")).unwrap();
        assert_eq!(
            v["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
            "privileged"
        );
        assert_eq!(
            v["metadata"]["labels"]["pod-security.kubernetes.io/warn"],
            "privileged"
        );
    }
}
