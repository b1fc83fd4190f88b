//! A Kubernetes cluster without Kubernetes, for the privileged cluster-mode tests: an API server
//! on loopback that keeps namespaces, nodes and pods and lists, watches, creates and deletes
//! them as a real one does, and a kubelet that runs the pods bound to its node for real (a pod
//! that names no node is scheduled to it).
//!
//! The kubelet starts a pod's container as a process: its `command` (image paths mapped to
//! binaries of this workspace, other names looked up on this host's `PATH`, so a `busybox`
//! workload runs the host's busybox), `args` and `env` (literal values and `fieldRef`s). A
//! `hostNetwork` pod (the agent) runs in the network namespace playing the node; any other pod
//! gets a sandbox as a bridge CNI plugin and containerd would make it ([`crate::pod_sandbox`]):
//! its own network namespace on the node's `cni0` bridge with an address from its node's
//! 10.244.N.0/24,
//! and its container in a cgroup named after the pod UID and container id, which the agent's
//! resolver finds as on a real node. It reports the pod Pending, then ContainerCreating, then
//! Running (or `ImagePullBackOff` for an image it was told it cannot pull, or the container's
//! exit with its last log lines), each step a watch event. Deleting a pod marks it, sends its
//! process SIGTERM, kills it after the grace period, kills what is left in the container's
//! cgroup, removes the sandbox and the pod (`DELETED`). Deleting a namespace deletes its pods,
//! then the namespace. Port-forwards (the shared fake's protocol,
//! [`fake_apiserver::port_forward`]) dial 127.0.0.1 inside the pod's network namespace, like
//! the kubelet does. Every request is recorded. Optionally, requests are authorized as RBAC
//! would ([`FakeCluster::enforce_rbac`], rules read from a manifest by [`cluster_roles`]), and
//! more nodes can be added without a kubelet ([`FakeCluster::add_node`]: NotReady, cordoned,
//! tainted), whose pods never start.

mod api;
mod kubelet;
mod rbac;
mod selection;

pub use rbac::{PolicyRule, Rbac, cluster_roles};

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use crate::api_request::ApiRequest;
use crate::pod_sandbox::{PodNetwork, Sandbox};
use crate::{NetNs, cgroup2_mount, unique, workspace_bin};

use api::handle;

/// Where the agent binary lives in the agent image (the pod's `command`).
pub const AGENT_IMAGE_PATH: &str = "/usr/local/bin/orb8-agent";

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A container the kubelet started.
#[derive(Clone, Debug)]
pub struct Container {
    /// `namespace/name` of its pod.
    pub pod: String,
    /// Its process id.
    pub pid: u32,
    /// The program and arguments run (after `ip netns exec NS`).
    pub argv: Vec<String>,
    /// The environment it got.
    pub env: BTreeMap<String, String>,
    /// Its stdout and stderr lines so far.
    pub log: Vec<String>,
    /// Its exit code (-signal when killed), once it exited.
    pub exit: Option<i32>,
}

struct StoredPod {
    object: Value,
    /// The network namespace its containers and port-forwards live in.
    netns: String,
    /// Told when the pod is deleted, if a kubelet runs it.
    deleting: Option<Arc<Notify>>,
}

#[derive(Default)]
struct Store {
    rv: u64,
    namespaces: BTreeMap<String, Value>,
    nodes: BTreeMap<String, Value>,
    pods: BTreeMap<(String, String), StoredPod>,
    /// Other namespaced objects the tests put in (EndpointSlices, Secrets), by
    /// (resource, namespace, name), served as they are.
    objects: BTreeMap<(String, String, String), Value>,
    /// Every pod event: (resourceVersion, type, object).
    events: Vec<(u64, &'static str, Value)>,
    containers: Vec<Container>,
}

impl Store {
    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Stamps `object` with a new resourceVersion and logs the pod event.
    fn pod_event(&mut self, kind: &'static str, object: &mut Value) {
        let rv = self.next_rv();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.events.push((rv, kind, object.clone()));
    }
}

struct State {
    store: Mutex<Store>,
    /// How many pod events the log holds; watches wait on it.
    changed: watch::Sender<usize>,
    requests: Mutex<Vec<ApiRequest>>,
    open_forwards: Arc<Mutex<usize>>,
    /// Node name → its network namespace.
    node_netns: HashMap<String, String>,
    /// Image paths → binaries here.
    binaries: HashMap<String, PathBuf>,
    /// Images the kubelet cannot pull.
    unpullable: Mutex<Vec<String>>,
    /// Images the kubelet keeps pulling (the pod stays in ContainerCreating).
    slow: Mutex<Vec<String>>,
    /// The node's pod network and container cgroups, for pods that are not `hostNetwork`.
    pod_network: PodNetwork,
    /// The sandboxes of pods the kubelet runs, removed with their pods.
    sandboxes: Mutex<HashMap<(String, String), Sandbox>>,
    /// When set, requests its rules do not allow are answered 403 Forbidden.
    rbac: Mutex<Option<Rbac>>,
    /// How far in the past the kubelet dates a container's `finishedAt`.
    finish_backdate: Mutex<Duration>,
    /// Teardown steps that failed (a sandbox that could not be removed): the fake cluster
    /// panics with them when dropped.
    teardown_errors: Mutex<Vec<String>>,
}

impl State {
    fn notify(&self) {
        let n = self.store.lock().expect("store").events.len();
        self.changed.send_replace(n);
    }

    /// Applies `f` to a stored pod and logs a MODIFIED event; false when the pod is gone.
    fn modify_pod(&self, key: &(String, String), f: impl FnOnce(&mut Value)) -> bool {
        {
            let mut store = self.store.lock().expect("store");
            let Some(mut object) = store.pods.get(key).map(|p| p.object.clone()) else {
                return false;
            };
            f(&mut object);
            store.pod_event("MODIFIED", &mut object);
            store.pods.get_mut(key).expect("pod").object = object;
        }
        self.notify();
        true
    }

    fn remove_pod(&self, key: &(String, String)) {
        {
            let mut store = self.store.lock().expect("store");
            if let Some(pod) = store.pods.remove(key) {
                let mut object = pod.object;
                store.pod_event("DELETED", &mut object);
            }
        }
        self.notify();
    }

    fn container_update(&self, pid: u32, f: impl FnOnce(&mut Container)) {
        let mut store = self.store.lock().expect("store");
        if let Some(c) = store.containers.iter_mut().find(|c| c.pid == pid) {
            f(c);
        }
    }
}

/// The fake cluster: API server, one node and its kubelet. Dropping it kills every container
/// still running and deletes the kubeconfig it wrote.
pub struct FakeCluster {
    /// Where the API server listens.
    pub addr: SocketAddr,
    /// A kubeconfig file pointing at it (context namespace `default`).
    pub kubeconfig: PathBuf,
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// An RFC 3339 UTC timestamp of `t`, as the API server writes them.
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn now() -> String {
    rfc3339(SystemTime::now())
}

impl FakeCluster {
    /// Starts the API server with namespaces `default` and `kube-system` and node `node`,
    /// whose network namespace is `node_ns`; its kubelet maps the agent image's binary to
    /// this workspace's `orb8-agent`.
    pub fn start(node: &str, node_ns: &NetNs) -> FakeCluster {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("fake cluster runtime");
        let (changed, _) = watch::channel(0);
        let state = Arc::new(State {
            store: Mutex::default(),
            changed,
            requests: Mutex::default(),
            open_forwards: Arc::default(),
            node_netns: HashMap::from([(node.to_string(), node_ns.name.clone())]),
            binaries: HashMap::from([(AGENT_IMAGE_PATH.to_string(), workspace_bin("orb8-agent"))]),
            unpullable: Mutex::default(),
            slow: Mutex::default(),
            pod_network: PodNetwork::new(&node_ns.name, &cgroup2_mount())
                .unwrap_or_else(|e| panic!("fake pod network: {e}")),
            sandboxes: Mutex::default(),
            rbac: Mutex::default(),
            finish_backdate: Mutex::default(),
            teardown_errors: Mutex::default(),
        });
        {
            let mut store = state.store.lock().expect("store");
            for ns in ["default", "kube-system"] {
                let object = namespace_object(&mut store, ns, BTreeMap::new());
                store.namespaces.insert(ns.to_string(), object);
            }
            let object = node_object(&mut store, node, "True", false, &[]);
            store.nodes.insert(node.to_string(), object);
        }
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the fake API server");
        let addr = listener.local_addr().expect("local addr");
        let accept_state = state.clone();
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let state = accept_state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        let kubeconfig = std::env::temp_dir().join(format!("{}.kubeconfig", unique("orb8fake")));
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: tester\n    namespace: default\n\
                 current-context: fake\nusers:\n- name: tester\n  user:\n    token: fake-token\n"
            ),
        )
        .expect("writing the kubeconfig");
        FakeCluster {
            addr,
            kubeconfig,
            state,
            runtime: Some(runtime),
        }
    }

    /// Adds a node without a kubelet (pods bound to it stay Pending, as on a node whose
    /// kubelet is down): its `Ready` condition is `ready` ("True", "False", "Unknown"), it is
    /// cordoned when `unschedulable`, and carries `taints` as (key, value, effect); an empty
    /// value is left out.
    pub fn add_node(
        &self,
        name: &str,
        ready: &str,
        unschedulable: bool,
        taints: &[(&str, &str, &str)],
    ) {
        let mut store = self.state.store.lock().expect("store");
        let object = node_object(&mut store, name, ready, unschedulable, taints);
        store.nodes.insert(name.to_string(), object);
    }

    /// Answers every request `rbac` does not allow with 403 Forbidden from now on (`None`:
    /// everything is allowed again).
    pub fn enforce_rbac(&self, rbac: Option<Rbac>) {
        *self.state.rbac.lock().expect("rbac") = rbac;
    }

    /// Makes the kubelet report containers that exit from now on as finished `ago` earlier than
    /// they did, as if that had happened long ago.
    pub fn report_finished_ago(&self, ago: Duration) {
        *self.state.finish_backdate.lock().expect("backdate") = ago;
    }

    /// Stores a namespaced object (an EndpointSlice, a Secret) as `resource` (`endpointslices`,
    /// `secrets`): the API server lists and gets it from then on.
    pub fn put_object(&self, resource: &str, object: Value) {
        let key = (
            resource.to_string(),
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        let mut store = self.state.store.lock().expect("store");
        store.objects.insert(key, object);
    }

    /// Adds a namespace.
    pub fn add_namespace(&self, name: &str) {
        let mut store = self.state.store.lock().expect("store");
        let object = namespace_object(&mut store, name, BTreeMap::new());
        store.namespaces.insert(name.to_string(), object);
    }

    /// Adds a running workload pod on `node` with address `ip`, whose network is `netns`.
    pub fn add_pod(
        &self,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        node: &str,
        ip: &str,
        netns: &str,
    ) {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let mut object = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": format!("uid-{namespace}-{name}"),
                "creationTimestamp": now(),
                "labels": labels,
            },
            "spec": {
                "nodeName": node,
                "containers": [{"name": "app", "image": "example.test/app:1"}],
            },
            "status": {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "startTime": now(),
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": "True"},
                ],
            },
        });
        {
            let mut store = self.state.store.lock().expect("store");
            store.pod_event("ADDED", &mut object);
            store.pods.insert(
                (namespace.to_string(), name.to_string()),
                StoredPod {
                    object,
                    netns: netns.to_string(),
                    deleting: None,
                },
            );
        }
        self.state.notify();
    }

    /// Gives a stored pod its UID and running containers (`(name, "containerd://<id>")`), as
    /// a kubelet reports them.
    pub fn set_containers(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        containers: &[(&str, &str)],
    ) {
        let statuses: Vec<Value> = containers
            .iter()
            .map(|(n, id)| {
                json!({"name": n, "image": "example.test/app:1", "imageID": "", "ready": true,
                       "restartCount": 0, "containerID": id, "state": {"running": {"startedAt": now()}}})
            })
            .collect();
        let key = (namespace.to_string(), name.to_string());
        let done = self.state.modify_pod(&key, |o| {
            o["metadata"]["uid"] = json!(uid);
            o["status"]["containerStatuses"] = json!(statuses);
        });
        assert!(done, "no pod {namespace}/{name}");
        self.state.notify();
    }

    /// Makes the kubelet fail to pull `image` (`ImagePullBackOff`).
    pub fn refuse_image(&self, image: &str) {
        self.state
            .unpullable
            .lock()
            .expect("unpullable")
            .push(image.to_string());
    }

    /// Makes the kubelet pull `image` forever: its pods stay in ContainerCreating.
    pub fn stall_image(&self, image: &str) {
        self.state
            .slow
            .lock()
            .expect("slow")
            .push(image.to_string());
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<ApiRequest> {
        self.state.requests.lock().expect("requests").clone()
    }

    /// Every container the kubelet started, in order.
    pub fn containers(&self) -> Vec<Container> {
        self.state.store.lock().expect("store").containers.clone()
    }

    /// The pods of `namespace` now.
    pub fn pods(&self, namespace: &str) -> Vec<Value> {
        let store = self.state.store.lock().expect("store");
        store
            .pods
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .map(|(_, p)| p.object.clone())
            .collect()
    }

    /// Whether namespace `name` exists.
    pub fn has_namespace(&self, name: &str) -> bool {
        let store = self.state.store.lock().expect("store");
        store.namespaces.contains_key(name)
    }

    /// How many port-forward websockets are open now.
    pub fn open_forwards(&self) -> usize {
        *self.state.open_forwards.lock().expect("forwards")
    }
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        let running: Vec<u32> = self
            .containers()
            .iter()
            .filter(|c| c.exit.is_none())
            .map(|c| c.pid)
            .collect();
        for pid in &running {
            // SAFETY: signalling a process this kubelet started and has not yet reaped.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
        if let Some(rt) = self.runtime.take() {
            // The kubelet tasks reap what they started; give them a moment.
            if !running.is_empty() {
                // The timer is made inside the runtime: `sleep` needs one when it is created.
                rt.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
            }
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        let _ = std::fs::remove_file(&self.kubeconfig);
        let mut errors = std::mem::take(&mut *self.state.teardown_errors.lock().expect("errors"));
        let left: Vec<Sandbox> = {
            let mut sandboxes = self.state.sandboxes.lock().expect("sandboxes");
            sandboxes.drain().map(|(_, s)| s).collect()
        };
        for mut sandbox in left {
            if let Err(e) = sandbox.remove() {
                errors.push(e);
            }
        }
        if let Err(e) = self.state.pod_network.remove() {
            errors.push(e);
        }
        if !errors.is_empty() && !std::thread::panicking() {
            panic!("the fake cluster could not clean up: {}", errors.join("; "));
        }
    }
}

fn node_object(
    store: &mut Store,
    name: &str,
    ready: &str,
    unschedulable: bool,
    taints: &[(&str, &str, &str)],
) -> Value {
    let rv = store.next_rv();
    let taints: Vec<Value> = taints
        .iter()
        .map(|(key, value, effect)| {
            let mut t = json!({"key": key, "effect": effect});
            if !value.is_empty() {
                t["value"] = json!(value);
            }
            t
        })
        .collect();
    let reason = if ready == "True" {
        "KubeletReady"
    } else {
        "KubeletNotReady"
    };
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": format!("uid-node-{rv}"),
            "resourceVersion": rv.to_string(),
            "creationTimestamp": now(),
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
        },
        "spec": {"unschedulable": unschedulable, "taints": taints},
        "status": {
            "conditions": [{"type": "Ready", "status": ready, "reason": reason}],
            "addresses": [{"type": "Hostname", "address": name}],
        },
    })
}

fn namespace_object(store: &mut Store, name: &str, labels: BTreeMap<String, String>) -> Value {
    let rv = store.next_rv();
    let mut labels = labels;
    labels.insert("kubernetes.io/metadata.name".into(), name.into());
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "uid": format!("uid-ns-{name}"),
            "resourceVersion": rv.to_string(),
            "creationTimestamp": now(),
            "labels": labels,
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

/// 128 random bits (std's per-hasher random keys), for UIDs and container ids.
fn random_u128() -> u128 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let half = || {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    };
    (u128::from(half()) << 64) | u128::from(half())
}
