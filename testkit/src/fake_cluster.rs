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
//! its own network namespace on the node's `cni0` bridge with an address from 10.244.0.0/24,
//! and its container in a cgroup named after the pod UID and container id, which the agent's
//! resolver finds as on a real node. It reports the pod Pending, then ContainerCreating, then
//! Running (or `ImagePullBackOff` for an image it was told it cannot pull, or the container's
//! exit with its last log lines), each step a watch event. Deleting a pod marks it, sends its
//! process SIGTERM, kills it after the grace period, kills what is left in the container's
//! cgroup, removes the sandbox and the pod (`DELETED`). Deleting a namespace deletes its pods,
//! then the namespace. Port-forwards (the shared fake's protocol,
//! [`fake_apiserver::port_forward`]) dial 127.0.0.1 inside the pod's network namespace, like
//! the kubelet does. Every request is recorded.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::sync::{Notify, mpsc, watch};

use crate::api_request::ApiRequest;
use crate::fake_apiserver::{self, Dial};
use crate::pod_sandbox::{PodNetwork, Sandbox};
use crate::{NetNs, cgroup2_mount, unique, workspace_bin};

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
            teardown_errors: Mutex::default(),
        });
        {
            let mut store = state.store.lock().expect("store");
            for ns in ["default", "kube-system"] {
                let object = namespace_object(&mut store, ns, BTreeMap::new());
                store.namespaces.insert(ns.to_string(), object);
            }
            let rv = store.next_rv();
            store.nodes.insert(
                node.to_string(),
                json!({
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": node,
                        "uid": format!("uid-node-{rv}"),
                        "resourceVersion": rv.to_string(),
                        "creationTimestamp": now(),
                        "labels": {"kubernetes.io/hostname": node, "kubernetes.io/os": "linux"},
                    },
                    "spec": {},
                    "status": {
                        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                        "addresses": [{"type": "Hostname", "address": node}],
                    },
                }),
            );
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
                rt.block_on(tokio::time::sleep(Duration::from_millis(300)));
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

fn full(code: StatusCode, body: Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed_unsync());
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn failure(code: StatusCode, reason: &str, message: &str, details: Value) -> Response<Body> {
    fake_apiserver::status(code, reason, message, details).map(BodyExt::boxed_unsync)
}

fn not_found(kind: &str, name: &str) -> Response<Body> {
    failure(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{kind} \"{name}\" not found"),
        json!({"name": name, "kind": kind}),
    )
}

fn bad_request(message: &str) -> Response<Body> {
    failure(StatusCode::BAD_REQUEST, "BadRequest", message, json!({}))
}

/// A selector term: `key=value`, `key==value`, `key!=value`, `key` or `!key`.
enum Term {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
}

fn parse_terms(selector: &str) -> Vec<Term> {
    selector
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            if let Some((k, v)) = t.split_once("!=") {
                Term::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                Term::Eq(k.trim().into(), v.trim().into())
            } else if let Some(k) = t.strip_prefix('!') {
                Term::Absent(k.trim().into())
            } else {
                Term::Exists(t.into())
            }
        })
        .collect()
}

/// What a list or watch selects.
struct Selection {
    namespace: Option<String>,
    labels: Vec<Term>,
    fields: Vec<Term>,
}

const FIELDS: [&str; 4] = [
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "status.phase",
];

fn field(object: &Value, path: &str) -> Option<String> {
    path.split('.')
        .try_fold(object, |v, k| v.get(k))
        .and_then(|v| v.as_str().map(String::from))
}

impl Selection {
    fn new(namespace: Option<String>, seen: &ApiRequest) -> Result<Selection, String> {
        let labels = parse_terms(seen.param("labelSelector").unwrap_or(""));
        let fields = parse_terms(seen.param("fieldSelector").unwrap_or(""));
        for t in &fields {
            let (Term::Eq(k, _) | Term::Ne(k, _) | Term::Exists(k) | Term::Absent(k)) = t;
            if !FIELDS.contains(&k.as_str()) {
                return Err(format!("field label not supported: {k}"));
            }
        }
        Ok(Selection {
            namespace,
            labels,
            fields,
        })
    }

    fn matches(&self, object: &Value) -> bool {
        if let Some(ns) = &self.namespace
            && object["metadata"]["namespace"] != ns.as_str()
        {
            return false;
        }
        let label = |k: &str| {
            object["metadata"]["labels"]
                .get(k)
                .and_then(Value::as_str)
                .map(String::from)
        };
        let ok = |terms: &[Term], get: &dyn Fn(&str) -> Option<String>| {
            terms.iter().all(|t| match t {
                Term::Eq(k, v) => get(k).as_deref() == Some(v.as_str()),
                Term::Ne(k, v) => get(k).as_deref() != Some(v.as_str()),
                Term::Exists(k) => get(k).is_some(),
                Term::Absent(k) => get(k).is_none(),
            })
        };
        ok(&self.labels, &label) && ok(&self.fields, &|k| field(object, k))
    }
}

fn list(kind: &str, rv: u64, items: Vec<Value>) -> Response<Body> {
    full(
        StatusCode::OK,
        json!({
            "apiVersion": "v1",
            "kind": format!("{kind}List"),
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items,
        }),
    )
}

async fn handle(state: Arc<State>, mut req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let raw_query = req.uri().query().unwrap_or("").to_string();
    let query: Vec<(String, String)> = form_urlencoded::parse(raw_query.as_bytes())
        .into_owned()
        .collect();
    let mut seen = ApiRequest {
        method: method.to_string(),
        path: path.clone(),
        query,
        body: None,
        code: 0,
    };
    let parts: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(String::from)
        .collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let resp = if let ["api", "v1", "namespaces", ns, "pods", name, "portforward"] = parts[..] {
        port_forward(&state, &mut req, ns, name, &raw_query)
    } else {
        if method == Method::POST || method == Method::DELETE {
            let bytes = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => Bytes::new(),
            };
            seen.body = serde_json::from_slice(&bytes).ok();
        }
        route(&state, &method, &parts, &seen)
    };
    seen.code = resp.status().as_u16();
    state.requests.lock().expect("requests").push(seen);
    resp
}

fn route(state: &Arc<State>, method: &Method, parts: &[&str], seen: &ApiRequest) -> Response<Body> {
    let watching = seen.param("watch").is_some_and(|w| w == "true" || w == "1");
    match (method, parts) {
        (&Method::GET, ["api", "v1", "namespaces"]) => {
            let selection = match Selection::new(None, seen) {
                Ok(s) => s,
                Err(e) => return bad_request(&e),
            };
            let store = state.store.lock().expect("store");
            list(
                "Namespace",
                store.rv,
                store
                    .namespaces
                    .values()
                    .filter(|o| selection.matches(o))
                    .cloned()
                    .collect(),
            )
        }
        (&Method::DELETE, ["api", "v1", "namespaces", ns]) => delete_namespace(state, ns),
        (&Method::GET, ["api", "v1", "namespaces", ns]) => {
            let store = state.store.lock().expect("store");
            match store.namespaces.get(*ns) {
                Some(o) => full(StatusCode::OK, o.clone()),
                None => not_found("namespaces", ns),
            }
        }
        (&Method::POST, ["api", "v1", "namespaces"]) => create_namespace(state, seen),
        (&Method::GET, ["api", "v1", "nodes"]) => {
            let store = state.store.lock().expect("store");
            list("Node", store.rv, store.nodes.values().cloned().collect())
        }
        (&Method::GET, ["api", "v1", "nodes", name]) => {
            let store = state.store.lock().expect("store");
            match store.nodes.get(*name) {
                Some(o) => full(StatusCode::OK, o.clone()),
                None => not_found("nodes", name),
            }
        }
        (&Method::GET, ["api", "v1", "pods"]) => list_pods(state, None, seen, watching),
        // The cluster's one Service, `default/kubernetes` at 10.96.0.1; its watch stays quiet.
        (&Method::GET, ["api", "v1", "services"]) if watching => quiet_watch(seen),
        (&Method::GET, ["api", "v1", "services"]) => {
            let store = state.store.lock().expect("store");
            list(
                "Service",
                store.rv,
                vec![json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "kubernetes", "namespace": "default", "resourceVersion": "1"},
                    "spec": {"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"]}})],
            )
        }
        (&Method::GET, ["api", "v1", "namespaces", ns, "pods"]) => {
            list_pods(state, Some(ns.to_string()), seen, watching)
        }
        (&Method::POST, ["api", "v1", "namespaces", ns, "pods"]) => create_pod(state, ns, seen),
        (&Method::GET, ["api", "v1", "namespaces", ns, "pods", name]) => {
            let store = state.store.lock().expect("store");
            match store.pods.get(&(ns.to_string(), name.to_string())) {
                Some(p) => full(StatusCode::OK, p.object.clone()),
                None => not_found("pods", name),
            }
        }
        (&Method::DELETE, ["api", "v1", "namespaces", ns, "pods", name]) => {
            delete_pod(state, ns, name)
        }
        _ => failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
            json!({}),
        ),
    }
}

fn create_namespace(state: &Arc<State>, seen: &ApiRequest) -> Response<Body> {
    let Some(name) = seen
        .body
        .as_ref()
        .and_then(|b| b["metadata"]["name"].as_str())
    else {
        return bad_request("metadata.name: Required value");
    };
    let labels: BTreeMap<String, String> = seen
        .body
        .as_ref()
        .and_then(|b| serde_json::from_value(b["metadata"]["labels"].clone()).ok())
        .unwrap_or_default();
    let mut store = state.store.lock().expect("store");
    if store.namespaces.contains_key(name) {
        return failure(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("namespaces \"{name}\" already exists"),
            json!({"name": name, "kind": "namespaces"}),
        );
    }
    let object = namespace_object(&mut store, name, labels);
    store.namespaces.insert(name.to_string(), object.clone());
    full(StatusCode::CREATED, object)
}

fn list_pods(
    state: &Arc<State>,
    namespace: Option<String>,
    seen: &ApiRequest,
    watching: bool,
) -> Response<Body> {
    let selection = match Selection::new(namespace, seen) {
        Ok(s) => s,
        Err(e) => return bad_request(&e),
    };
    if watching {
        return watch_pods(state, selection, seen);
    }
    let store = state.store.lock().expect("store");
    let items = store
        .pods
        .values()
        .map(|p| &p.object)
        .filter(|o| selection.matches(o))
        .cloned()
        .collect();
    list("Pod", store.rv, items)
}

/// Streams watch events (one JSON object a line) newer than `resourceVersion` until
/// `timeoutSeconds` pass or the client leaves; version "0" or none starts with the current pods.
fn watch_pods(state: &Arc<State>, selection: Selection, seen: &ApiRequest) -> Response<Body> {
    let since: Option<u64> = seen
        .param("resourceVersion")
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0);
    let timeout = Duration::from_secs(
        seen.param("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .unwrap_or(1800),
    );
    let (tx, mut rx) = mpsc::channel::<Bytes>(64);
    let state = state.clone();
    let mut changed = state.changed.subscribe();
    tokio::spawn(async move {
        let line = |kind: &str, object: &Value| {
            Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))
        };
        let end = tokio::time::Instant::now() + timeout;
        let (mut cursor, initial) = {
            let store = state.store.lock().expect("store");
            match since {
                Some(rv) => (
                    store
                        .events
                        .iter()
                        .position(|e| e.0 > rv)
                        .unwrap_or(store.events.len()),
                    Vec::new(),
                ),
                None => (
                    store.events.len(),
                    store
                        .pods
                        .values()
                        .filter(|p| selection.matches(&p.object))
                        .map(|p| line("ADDED", &p.object))
                        .collect(),
                ),
            }
        };
        for l in initial {
            if tx.send(l).await.is_err() {
                return;
            }
        }
        loop {
            changed.borrow_and_update();
            let lines: Vec<Bytes> = {
                let store = state.store.lock().expect("store");
                let new = &store.events[cursor.min(store.events.len())..];
                cursor = store.events.len();
                new.iter()
                    .filter(|(_, _, o)| selection.matches(o))
                    .map(|(_, kind, o)| line(kind, o))
                    .collect()
            };
            for l in lines {
                if tx.send(l).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                () = tokio::time::sleep_until(end) => return,
                () = tx.closed() => return,
            }
        }
    });
    let frames = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|b| b.map(|b| Ok::<_, Infallible>(Frame::data(b))))
    });
    let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A watch with nothing to report, held open until `timeoutSeconds` (or the client leaves).
fn quiet_watch(seen: &ApiRequest) -> Response<Body> {
    let timeout = Duration::from_secs(
        seen.param("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .unwrap_or(1800),
    );
    let (tx, mut rx) = mpsc::channel::<Bytes>(1);
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(timeout) => {}
            () = tx.closed() => {}
        }
    });
    let frames = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|b| b.map(|b| Ok::<_, Infallible>(Frame::data(b))))
    });
    let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn create_pod(state: &Arc<State>, ns: &str, seen: &ApiRequest) -> Response<Body> {
    let Some(mut object) = seen.body.clone().filter(Value::is_object) else {
        return bad_request("the body of the request was in an unknown format");
    };
    let Some(name) = object["metadata"]["name"].as_str().map(String::from) else {
        return bad_request(
            "Pod \"\" is invalid: metadata.name: Required value: name or generateName is required",
        );
    };
    // The scheduler's part: a pod that names no node goes to the (only) node.
    if object["spec"]["nodeName"].as_str().is_none()
        && let Some(only) = state.node_netns.keys().next()
    {
        object["spec"]["nodeName"] = json!(only);
    }
    let node = object["spec"]["nodeName"].as_str().map(String::from);
    let key = (ns.to_string(), name.clone());
    let deleting = Arc::new(Notify::new());
    let netns;
    {
        let mut store = state.store.lock().expect("store");
        let Some(namespace) = store.namespaces.get(ns) else {
            return not_found("namespaces", ns);
        };
        if namespace["status"]["phase"] == "Terminating" {
            return failure(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!(
                    "pods \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated"
                ),
                json!({"name": name, "kind": "pods"}),
            );
        }
        if store.pods.contains_key(&key) {
            return failure(
                StatusCode::CONFLICT,
                "AlreadyExists",
                &format!("pods \"{name}\" already exists"),
                json!({"name": name, "kind": "pods"}),
            );
        }
        object["apiVersion"] = json!("v1");
        object["kind"] = json!("Pod");
        object["metadata"]["namespace"] = json!(ns);
        let r = random_u128();
        object["metadata"]["uid"] = json!(format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            r >> 96,
            (r >> 80) & 0xffff,
            (r >> 68) & 0xfff,
            (r >> 56) & 0xfff,
            r & 0xffff_ffff_ffff
        ));
        object["metadata"]["creationTimestamp"] = json!(now());
        object["status"] = json!({"phase": "Pending", "qosClass": "Burstable"});
        store.pod_event("ADDED", &mut object);
        netns = node
            .as_deref()
            .and_then(|n| state.node_netns.get(n))
            .cloned();
        let host_network = object["spec"]["hostNetwork"].as_bool() == Some(true);
        store.pods.insert(
            key.clone(),
            StoredPod {
                object: object.clone(),
                // A pod network namespace exists once the kubelet made the sandbox.
                netns: netns.clone().filter(|_| host_network).unwrap_or_default(),
                deleting: netns.as_ref().map(|_| deleting.clone()),
            },
        );
    }
    state.notify();
    if let Some(netns) = netns {
        tokio::spawn(kubelet(state.clone(), key, netns, deleting));
    }
    full(StatusCode::CREATED, object)
}

/// Marks the namespace Terminating, deletes its pods, and removes it once they are gone.
fn delete_namespace(state: &Arc<State>, ns: &str) -> Response<Body> {
    let (object, pods) = {
        let mut store = state.store.lock().expect("store");
        let rv = store.next_rv();
        let Some(object) = store.namespaces.get_mut(ns) else {
            return not_found("namespaces", ns);
        };
        if object["status"]["phase"] != "Terminating" {
            object["status"]["phase"] = json!("Terminating");
            object["metadata"]["deletionTimestamp"] = json!(now());
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
        }
        let object = object.clone();
        let pods: Vec<String> = store
            .pods
            .keys()
            .filter(|(n, _)| n == ns)
            .map(|(_, name)| name.clone())
            .collect();
        (object, pods)
    };
    for pod in &pods {
        delete_pod(state, ns, pod);
    }
    let state = state.clone();
    let ns = ns.to_string();
    let mut changed = state.changed.subscribe();
    tokio::spawn(async move {
        loop {
            {
                let mut store = state.store.lock().expect("store");
                if !store.pods.keys().any(|(n, _)| *n == ns) {
                    store.namespaces.remove(&ns);
                    return;
                }
            }
            if changed.changed().await.is_err() {
                return;
            }
        }
    });
    full(StatusCode::OK, object)
}

fn delete_pod(state: &Arc<State>, ns: &str, name: &str) -> Response<Body> {
    let key = (ns.to_string(), name.to_string());
    let (object, deleting) = {
        let mut store = state.store.lock().expect("store");
        let Some(pod) = store.pods.get(&key) else {
            return not_found("pods", name);
        };
        let deleting = pod.deleting.clone();
        let mut object = pod.object.clone();
        if deleting.is_some() && object["metadata"].get("deletionTimestamp").is_none() {
            let grace = object["spec"]["terminationGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(30);
            object["metadata"]["deletionTimestamp"] = json!(now());
            object["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            store.pod_event("MODIFIED", &mut object);
            store.pods.get_mut(&key).expect("pod").object = object.clone();
        }
        (object, deleting)
    };
    match deleting {
        Some(d) => {
            state.notify();
            d.notify_one();
        }
        None => state.remove_pod(&key),
    }
    full(StatusCode::OK, object)
}

fn port_forward(
    state: &Arc<State>,
    req: &mut Request<Incoming>,
    ns: &str,
    name: &str,
    query: &str,
) -> Response<Body> {
    let pod = {
        let store = state.store.lock().expect("store");
        store
            .pods
            .get(&(ns.to_string(), name.to_string()))
            .map(|p| (p.netns.clone(), p.object["status"]["phase"].clone()))
    };
    let Some((netns, phase)) = pod else {
        return not_found("pods", name);
    };
    if phase != "Running" || netns.is_empty() {
        return bad_request(&format!(
            "unable to upgrade connection: pod {name} is not running"
        ));
    }
    fake_apiserver::port_forward(
        req,
        name.to_string(),
        query,
        dial_in(netns),
        state.open_forwards.clone(),
    )
    .map(BodyExt::boxed_unsync)
}

/// Dials 127.0.0.1:PORT inside network namespace `netns`: the socket is made on a thread that
/// entered it (a socket stays in the namespace it was created in), then handed to tokio.
fn dial_in(netns: String) -> Dial {
    Arc::new(move |port| {
        let path = format!("/var/run/netns/{netns}");
        async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let r = File::open(&path)
                    .and_then(|f| {
                        // SAFETY: setns on a namespace fd affects only this thread.
                        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
                        if rc == 0 {
                            Ok(())
                        } else {
                            Err(std::io::Error::last_os_error())
                        }
                    })
                    .and_then(|()| std::net::TcpStream::connect(("127.0.0.1", port)));
                let _ = tx.send(r);
            });
            let conn = rx
                .await
                .map_err(|_| "dial thread died".to_string())?
                .map_err(|e| format!("dial tcp4 127.0.0.1:{port}: connect: {e}"))?;
            conn.set_nonblocking(true)
                .map_err(|e| format!("dial tcp4 127.0.0.1:{port}: {e}"))?;
            tokio::net::TcpStream::from_std(conn)
                .map_err(|e| format!("dial tcp4 127.0.0.1:{port}: {e}"))
        }
        .boxed()
    })
}

fn container_status(name: &Value, image: &str, state: Value, ready: bool) -> Value {
    json!([{
        "name": name,
        "image": image,
        "imageID": "",
        "ready": ready,
        "started": ready,
        "restartCount": 0,
        "state": state,
    }])
}

/// Reads lines of a container's output into its log.
fn collect_log(state: Arc<State>, pid: u32, out: impl AsyncRead + Unpin + Send + 'static) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(out).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            state.container_update(pid, |c| c.log.push(line));
        }
    });
}

enum Started {
    Running(tokio::process::Child, u32),
    /// Waiting (image pull, config error): nothing runs.
    Stuck,
    /// Deleted while starting.
    Deleted,
}

/// The kubelet's work for one pod bound to its node.
async fn kubelet(state: Arc<State>, key: (String, String), netns: String, deleting: Arc<Notify>) {
    let started = tokio::select! {
        s = start_container(&state, &key, &netns) => s,
        () = deleting.notified() => Started::Deleted,
    };
    match started {
        Started::Running(mut child, pid) => {
            let grace = {
                let store = state.store.lock().expect("store");
                store
                    .pods
                    .get(&key)
                    .and_then(|p| p.object["spec"]["terminationGracePeriodSeconds"].as_u64())
            }
            .unwrap_or(30);
            tokio::select! {
                status = child.wait() => {
                    let code = status.map(exit_code).unwrap_or(-1);
                    state.container_update(pid, |c| c.exit = Some(code));
                    let message: String = {
                        let store = state.store.lock().expect("store");
                        let log = store.containers.iter().find(|c| c.pid == pid).map(|c| c.log.clone()).unwrap_or_default();
                        log.iter().rev().take(20).rev().cloned().collect::<Vec<_>>().join("\n")
                    };
                    state.modify_pod(&key, |o| {
                        let image = o["spec"]["containers"][0]["image"].clone();
                        let name = o["spec"]["containers"][0]["name"].clone();
                        let id = o["status"]["containerStatuses"][0]["containerID"].clone();
                        o["status"]["phase"] = json!(if code == 0 { "Succeeded" } else { "Failed" });
                        o["status"]["containerStatuses"] = container_status(&name, image.as_str().unwrap_or(""), json!({"terminated": {
                            "exitCode": code,
                            "reason": if code == 0 { "Completed" } else { "Error" },
                            "message": message,
                            "startedAt": now(),
                            "finishedAt": now(),
                        }}), false);
                        if !id.is_null() {
                            o["status"]["containerStatuses"][0]["containerID"] = id;
                        }
                    });
                    deleting.notified().await;
                }
                () = deleting.notified() => {
                    // SAFETY: signalling the container process this task started and owns.
                    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                    let status = match tokio::time::timeout(Duration::from_secs(grace), child.wait()).await {
                        Ok(s) => s,
                        Err(_) => {
                            let _ = child.start_kill();
                            child.wait().await
                        }
                    };
                    let code = status.map(exit_code).unwrap_or(-1);
                    state.container_update(pid, |c| c.exit = Some(code));
                }
            }
        }
        Started::Stuck => deleting.notified().await,
        Started::Deleted => {}
    }
    let sandbox = state.sandboxes.lock().expect("sandboxes").remove(&key);
    if let Some(mut sandbox) = sandbox {
        let st = state.clone();
        let removed = tokio::task::spawn_blocking(move || sandbox.remove()).await;
        if let Err(e) = removed.unwrap_or_else(|e| Err(format!("sandbox removal: {e}"))) {
            st.teardown_errors.lock().expect("errors").push(e);
        }
    }
    state.remove_pod(&key);
}

fn exit_code(s: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    s.code().unwrap_or_else(|| -s.signal().unwrap_or(0))
}

/// Pulls, creates and starts the pod's (first) container, reporting each step.
async fn start_container(state: &Arc<State>, key: &(String, String), netns: &str) -> Started {
    let pause = || tokio::time::sleep(Duration::from_millis(100));
    pause().await;
    let Some(pod) = ({
        let store = state.store.lock().expect("store");
        store.pods.get(key).map(|p| p.object.clone())
    }) else {
        return Started::Deleted;
    };
    let container = pod["spec"]["containers"][0].clone();
    let image = container["image"].as_str().unwrap_or("").to_string();
    let cname = container["name"].clone();
    let set_status = |phase: &str, cstate: Value, ready: bool| {
        let image = image.clone();
        let cname = cname.clone();
        let phase = phase.to_string();
        state.modify_pod(key, move |o| {
            o["status"]["phase"] = json!(phase);
            o["status"]["hostIP"] = json!("10.77.0.1");
            o["status"]["conditions"] = json!([
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": if ready { "True" } else { "False" }},
            ]);
            let id = o["status"]["containerStatuses"][0]["containerID"].clone();
            o["status"]["containerStatuses"] = container_status(&cname, &image, cstate, ready);
            if !id.is_null() {
                o["status"]["containerStatuses"][0]["containerID"] = id;
            }
        })
    };
    set_status(
        "Pending",
        json!({"waiting": {"reason": "ContainerCreating"}}),
        false,
    );
    pause().await;
    if state
        .unpullable
        .lock()
        .expect("unpullable")
        .contains(&image)
    {
        set_status(
            "Pending",
            json!({"waiting": {"reason": "ImagePullBackOff",
                "message": format!("Back-off pulling image \"{image}\"")}}),
            false,
        );
        return Started::Stuck;
    }
    if state.slow.lock().expect("slow").contains(&image) {
        return Started::Stuck;
    }
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let command = strings(&container["command"]);
    let args = strings(&container["args"]);
    let mut env = BTreeMap::new();
    for e in container["env"].as_array().cloned().unwrap_or_default() {
        let name = e["name"].as_str().unwrap_or("").to_string();
        let value = if let Some(v) = e["value"].as_str() {
            Some(v.to_string())
        } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            field(&pod, path)
        } else {
            None
        };
        let Some(value) = value else {
            set_status(
                "Pending",
                json!({"waiting": {"reason": "CreateContainerConfigError",
                    "message": format!("cannot resolve env {name}")}}),
                false,
            );
            return Started::Stuck;
        };
        env.insert(name, value);
    }
    let Some(program) = command.first().and_then(|c| resolve_program(state, c)) else {
        set_status(
            "Pending",
            json!({"waiting": {"reason": "RunContainerError",
                "message": format!("exec: {:?}: executable file not found in $PATH", command.first())}}),
            false,
        );
        return Started::Stuck;
    };
    let mut argv = vec![program.display().to_string()];
    argv.extend(command.iter().skip(1).cloned());
    argv.extend(args);
    let host_network = pod["spec"]["hostNetwork"].as_bool() == Some(true);
    let (netns, cgroup) = if host_network {
        (netns.to_string(), None)
    } else {
        match make_sandbox(state, key, &pod).await {
            Ok((netns, cgroup)) => (netns, Some(cgroup)),
            Err(e) => {
                set_status(
                    "Pending",
                    json!({"waiting": {"reason": "CreateContainerError", "message": e}}),
                    false,
                );
                return Started::Stuck;
            }
        }
    };
    // Only the network namespace changes, as for a hostNetwork pod that mounts the host's
    // /sys/fs/cgroup: `ip netns exec` would also remount /sys and hide the cgroup mounts. A
    // sandboxed container first moves itself into its cgroup, so all it starts is counted there.
    let mut cmd = match &cgroup {
        Some(cg) => {
            let mut c = tokio::process::Command::new("sh");
            c.arg("-c")
                .arg(r#"echo $$ > "$1" && shift && exec "$@""#)
                .arg("sh")
                .arg(cg.join("cgroup.procs"))
                .arg("nsenter");
            c
        }
        None => tokio::process::Command::new("nsenter"),
    };
    cmd.arg(format!("--net=/var/run/netns/{netns}"))
        .arg("--")
        .args(&argv)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .envs(&env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            set_status(
                "Pending",
                json!({"waiting": {"reason": "RunContainerError", "message": e.to_string()}}),
                false,
            );
            return Started::Stuck;
        }
    };
    let pid = child.id().expect("a started child has a pid");
    state
        .store
        .lock()
        .expect("store")
        .containers
        .push(Container {
            pod: format!("{}/{}", key.0, key.1),
            pid,
            argv,
            env,
            log: Vec::new(),
            exit: None,
        });
    if let Some(out) = child.stdout.take() {
        collect_log(state.clone(), pid, out);
    }
    if let Some(err) = child.stderr.take() {
        collect_log(state.clone(), pid, err);
    }
    set_status("Running", json!({"running": {"startedAt": now()}}), true);
    Started::Running(child, pid)
}

/// The program a container's command names: an image path mapped to a binary of this
/// workspace, or a bare name found on this host's `PATH` (`busybox`).
fn resolve_program(state: &State, command: &str) -> Option<PathBuf> {
    if let Some(p) = state.binaries.get(command) {
        return Some(p.clone());
    }
    if command.contains('/') {
        return None;
    }
    CONTAINER_PATH
        .split(':')
        .map(|dir| PathBuf::from(dir).join(command))
        .find(|p| p.is_file())
}

/// `PATH` inside the fake's containers.
const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Makes the pod's sandbox (network namespace, address, container cgroup), records it for
/// teardown and reports the pod's address and container id; returns its network namespace and
/// the container's cgroup.
async fn make_sandbox(
    state: &Arc<State>,
    key: &(String, String),
    pod: &Value,
) -> Result<(String, PathBuf), String> {
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
    // Unique on the host, as a runtime's are: the agent looks containers up host-wide, and
    // other fake clusters may run beside this one.
    let id = format!("{:032x}{:032x}", random_u128(), random_u128());
    let st = state.clone();
    let k = key.clone();
    let ids = vec![id.clone()];
    let (netns, cgroup, address) = tokio::task::spawn_blocking(move || {
        let sandbox = st.pod_network.sandbox(&uid, &ids)?;
        let made = (
            sandbox.netns.clone(),
            sandbox.cgroups[0].clone(),
            sandbox.address,
        );
        st.sandboxes.lock().expect("sandboxes").insert(k, sandbox);
        Ok::<_, String>(made)
    })
    .await
    .map_err(|e| format!("sandbox task: {e}"))??;
    if let Some(p) = state.store.lock().expect("store").pods.get_mut(key) {
        p.netns = netns.clone();
    }
    state.modify_pod(key, |o| {
        o["status"]["podIP"] = json!(address.to_string());
        o["status"]["podIPs"] = json!([{"ip": address.to_string()}]);
        o["status"]["containerStatuses"][0]["containerID"] = json!(format!("containerd://{id}"));
    });
    Ok((netns, cgroup))
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
