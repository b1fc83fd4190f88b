//! Agent pod lifecycle with kube's real `Client` over a `tower_test` mock that checks every
//! request: the exact pod spec sent, the watch until Running, and a DELETE on every exit path
//! (success, each failure kind, timeout, cancellation). Every test awaits the mock's task at
//! its end ([`MockApi::finish`]), so a request the scenario did not expect fails the test and
//! names the request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use kube::Client;
use kube::client::Body;
use kubectl_orb8::k8s::ephemeral::{self, AgentPods, EphemeralConfig, RunningAgent};
use kubectl_orb8::k8s::lifecycle::StartFailure;
use orb8_testkit::api_request::ApiRequest;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower_test::mock;

/// What the mock answers to a request; `None` for a request the scenario does not expect,
/// which fails the test.
type Script = Box<dyn FnMut(&ApiRequest) -> Option<(StatusCode, String)> + Send>;

/// The mock API server: its task and the requests it answered.
struct MockApi {
    task: Option<JoinHandle<()>>,
    log: Arc<Mutex<Vec<ApiRequest>>>,
}

impl MockApi {
    /// Every request answered so far.
    fn requests(&self) -> Vec<ApiRequest> {
        self.log.lock().unwrap().clone()
    }

    /// `METHOD path` of every request answered so far.
    fn methods(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|s| format!("{} {}", s.method, s.path))
            .collect()
    }

    /// Waits for the mock to end, which it does once every clone of the client is dropped
    /// (drop them first), and fails the test with the mock's own panic if it had one, such as
    /// an unexpected request.
    async fn finish(&mut self) {
        let task = self.task.take().expect("finish once");
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Err(_) => panic!(
                "the mock API server still has a client 5 s after the test dropped its own: \
                 a clone of the client outlived the test"
            ),
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(Err(e)) => panic!("the mock API server's task: {e}"),
            Ok(Ok(())) => {}
        }
    }
}

impl Drop for MockApi {
    fn drop(&mut self) {
        if self.task.is_some() && !std::thread::panicking() {
            panic!("a test must await MockApi::finish, or the mock's failures are lost");
        }
    }
}

/// Serves kube's requests with `script` until the client is dropped.
fn api_server(script: Script) -> (Client, MockApi) {
    let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let log = Arc::new(Mutex::new(Vec::new()));
    let task_log = log.clone();
    let mut script = script;
    let task = tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let mut s = ApiRequest::new(
                parts.method.as_str(),
                parts.uri.path(),
                parts.uri.query().unwrap_or_default(),
                &bytes,
            );
            let Some((status, text)) = script(&s) else {
                panic!("unexpected request {} {}", parts.method, parts.uri);
            };
            s.code = status.as_u16();
            task_log.lock().unwrap().push(s);
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(text.into_bytes()))
                    .unwrap(),
            );
        }
    });
    (
        Client::new(svc, "default"),
        MockApi {
            task: Some(task),
            log,
        },
    )
}

const NS: &str = "orb8-system";
const POD_PATH: &str = "/api/v1/namespaces/orb8-system/pods";

fn not_found(what: &str) -> (StatusCode, String) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": format!("{what} not found"),
               "reason": "NotFound", "code": 404})
        .to_string(),
    )
}

fn pod_json(status: Value, rv: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "orb8-agent-s1-0", "namespace": NS, "resourceVersion": rv},
           "spec": {"nodeName": "node-a", "containers": [{"name": "agent", "image": "example.test/orb8-agent:v1"}]},
           "status": status})
}

fn watch_events(statuses: &[Value]) -> String {
    statuses
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"type": "MODIFIED", "object": pod_json(s.clone(), &format!("{}", 10 + i))})
                .to_string()
                + "\n"
        })
        .collect()
}

fn running() -> Value {
    json!({"phase": "Running", "containerStatuses": [{"name": "agent", "image": "example.test/orb8-agent:v1",
        "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {"startedAt": "2026-11-28T10:00:00Z"}}}]})
}

fn config(timeout: Duration) -> EphemeralConfig {
    EphemeralConfig {
        namespace: NS.into(),
        image: "example.test/orb8-agent:v1".into(),
        pull_policy: None,
        timeout,
        idle_timeout: Duration::from_secs(60),
        deadline: Duration::from_secs(900),
        privileged: false,
        gpu: false,
        dns_ports: Vec::new(),
    }
}

/// A script for one pod: the namespace exists, the pod is created, its watch reports `watch`
/// (again on every re-watch), and DELETE / GET-after-delete succeed / 404.
fn one_pod(watch: Vec<Value>) -> Script {
    let mut deleted = false;
    Box::new(move |s: &ApiRequest| {
        Some(match (s.method.as_str(), s.path.as_str()) {
            ("GET", "/api/v1/namespaces/orb8-system") => (
                StatusCode::OK,
                json!({"metadata": {"name": NS}}).to_string(),
            ),
            ("POST", POD_PATH) => (
                StatusCode::CREATED,
                pod_json(json!({"phase": "Pending"}), "1").to_string(),
            ),
            ("GET", POD_PATH) if s.is_watch() => (StatusCode::OK, watch_events(&watch)),
            ("DELETE", p) if p == format!("{POD_PATH}/orb8-agent-s1-0") => {
                deleted = true;
                (
                    StatusCode::OK,
                    pod_json(json!({"phase": "Running"}), "99").to_string(),
                )
            }
            ("GET", p) if p == format!("{POD_PATH}/orb8-agent-s1-0") && deleted => not_found("pod"),
            _ => return None,
        })
    })
}

async fn run(
    client: &Client,
    cfg: &EphemeralConfig,
) -> (AgentPods, Vec<Result<RunningAgent, (String, StartFailure)>>) {
    kubectl_orb8::k8s::lifecycle::ensure_namespace(client, NS)
        .await
        .unwrap();
    let pods = AgentPods::new(client, NS);
    let result = ephemeral::start(
        &pods,
        cfg,
        "s1",
        "tok-0123456789abcdef",
        21000,
        &["node-a".to_string()],
        &|_, _| {},
        &kubectl_orb8::timing::Timing::default(),
    )
    .await;
    (pods, result)
}

#[tokio::test]
async fn runs_then_deletes_with_the_contracted_pod_spec() {
    let (client, mut api) = api_server(one_pod(vec![json!({"phase": "Pending"}), running()]));
    let (pods, result) = run(&client, &config(Duration::from_secs(10))).await;
    assert_eq!(
        result,
        vec![Ok(RunningAgent {
            node: "node-a".into(),
            pod: "orb8-agent-s1-0".into(),
            port: 21000
        })]
    );
    assert!(pods.delete_all(Duration::from_secs(5)).await.is_empty());
    drop((pods, client));
    api.finish().await;

    let log = api.requests();
    let post = log.iter().find(|s| s.method == "POST").unwrap();
    let body = post.body.as_ref().unwrap();
    assert_eq!(body["spec"]["nodeName"], "node-a");
    assert_eq!(body["spec"]["hostNetwork"], true);
    assert_eq!(body["spec"]["hostPID"], true);
    assert_eq!(body["spec"]["automountServiceAccountToken"], false);
    assert_eq!(body["spec"]["activeDeadlineSeconds"], 900);
    assert_eq!(body["spec"]["tolerations"], json!([{"operator": "Exists"}]));
    assert_eq!(
        body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "kubectl-orb8"
    );
    assert_eq!(body["metadata"]["labels"]["orb8.dev/session"], "s1");
    let c = &body["spec"]["containers"][0];
    assert_eq!(
        c["securityContext"]["capabilities"]["add"],
        json!(["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN"])
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        c["args"],
        json!([
            "serve",
            "--listen",
            "127.0.0.1:21000",
            "--idle-timeout",
            "60s"
        ])
    );
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert_eq!(mounts, vec!["/sys/fs/bpf", "/sys/fs/cgroup"]);
    let env = c["env"].as_array().unwrap();
    assert_eq!(
        env[1],
        json!({"name": "ORB8_AGENT_TOKEN", "value": "tok-0123456789abcdef"})
    );

    let watch = log.iter().find(|s| s.is_watch()).unwrap();
    assert_eq!(
        watch.param("fieldSelector"),
        Some("metadata.name=orb8-agent-s1-0"),
        "{}",
        watch.line()
    );
    assert_eq!(
        watch.param("resourceVersion"),
        Some("1"),
        "watches from the created version: {}",
        watch.line()
    );
    assert_eq!(
        api.methods(),
        vec![
            "GET /api/v1/namespaces/orb8-system".to_string(),
            format!("POST {POD_PATH}"),
            format!("GET {POD_PATH}"),
            format!("DELETE {POD_PATH}/orb8-agent-s1-0"),
            format!("GET {POD_PATH}/orb8-agent-s1-0"),
        ]
    );
}

fn waiting(reason: &str, message: &str) -> Value {
    json!({"phase": "Pending", "containerStatuses": [{"name": "agent", "image": "example.test/orb8-agent:v1",
        "imageID": "", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": reason, "message": message}}}]})
}

async fn failure_then_delete(status: Value) -> StartFailure {
    let (client, mut api) = api_server(one_pod(vec![status]));
    let (pods, mut result) = run(&client, &config(Duration::from_secs(10))).await;
    assert!(pods.delete_all(Duration::from_secs(5)).await.is_empty());
    drop((pods, client));
    api.finish().await;
    assert!(
        api.methods()
            .contains(&format!("DELETE {POD_PATH}/orb8-agent-s1-0")),
        "a failed pod is deleted"
    );
    let (node, f) = result.remove(0).unwrap_err();
    assert_eq!(node, "node-a");
    f
}

#[tokio::test]
async fn image_pull_failure_names_the_image_and_deletes() {
    let f = failure_then_delete(waiting(
        "ImagePullBackOff",
        "Back-off pulling image \"example.test/orb8-agent:v1\"",
    ))
    .await;
    assert_eq!(
        f.to_string(),
        "cannot pull image example.test/orb8-agent:v1: ImagePullBackOff: Back-off pulling image \"example.test/orb8-agent:v1\""
    );
}

#[tokio::test]
async fn unschedulable_gives_the_schedulers_reason_and_deletes() {
    let f = failure_then_delete(
        json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
        "reason": "Unschedulable", "message": "0/1 nodes are available: 1 Insufficient memory."}]}),
    )
    .await;
    assert_eq!(
        f.to_string(),
        "unschedulable: 0/1 nodes are available: 1 Insufficient memory."
    );
}

#[tokio::test]
async fn failed_agent_reports_its_message_and_deletes() {
    let f = failure_then_delete(json!({"phase": "Failed", "containerStatuses": [{"name": "agent", "image": "i",
        "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 1, "reason": "Error",
        "message": "orb8-agent: loading the eBPF object: Operation not permitted"}}}]}))
    .await;
    assert_eq!(
        f.to_string(),
        "agent failed: orb8-agent: loading the eBPF object: Operation not permitted"
    );
}

#[tokio::test]
async fn pending_forever_times_out_saying_what_it_waited_for_and_deletes() {
    let (client, mut api) = api_server(one_pod(vec![json!({"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "True"}]})]));
    let (pods, mut result) = run(&client, &config(Duration::from_millis(800))).await;
    let (_, f) = result.remove(0).unwrap_err();
    assert_eq!(
        f.to_string(),
        "timed out after 800ms waiting for the image to be pulled and the container created"
    );
    assert!(
        matches!(f, StartFailure::Timeout { after, .. } if after == Duration::from_millis(800))
    );
    assert!(pods.delete_all(Duration::from_secs(5)).await.is_empty());
    drop((pods, client));
    api.finish().await;
    assert!(
        api.methods()
            .contains(&format!("DELETE {POD_PATH}/orb8-agent-s1-0"))
    );
}

#[tokio::test]
async fn cancelled_start_still_deletes_the_pod() {
    let (client, mut api) = api_server(one_pod(vec![json!({"phase": "Pending"})]));
    kubectl_orb8::k8s::lifecycle::ensure_namespace(&client, NS)
        .await
        .unwrap();
    let pods = AgentPods::new(&client, NS);
    let cfg = config(Duration::from_secs(60));
    let nodes = ["node-a".to_string()];
    // Ctrl-C: the start future is dropped while the pod is pending.
    let timing = kubectl_orb8::timing::Timing::default();
    let start = ephemeral::start(
        &pods,
        &cfg,
        "s1",
        "tok-0123456789abcdef",
        21000,
        &nodes,
        &|_, _| {},
        &timing,
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), start)
            .await
            .is_err()
    );
    assert_eq!(pods.names(), vec!["orb8-agent-s1-0"]);
    assert!(pods.delete_all(Duration::from_secs(5)).await.is_empty());
    drop((pods, client));
    api.finish().await;
    assert_eq!(
        api.methods().last(),
        Some(&format!("GET {POD_PATH}/orb8-agent-s1-0"))
    );
    assert!(
        api.methods()
            .contains(&format!("DELETE {POD_PATH}/orb8-agent-s1-0"))
    );
}

#[tokio::test]
async fn missing_namespace_is_created_privileged() {
    let (client, mut api) = api_server(Box::new(|s: &ApiRequest| {
        Some(match (s.method.as_str(), s.path.as_str()) {
            ("GET", "/api/v1/namespaces/orb8-system") => not_found("namespace"),
            ("POST", "/api/v1/namespaces") => {
                (StatusCode::CREATED, s.body.clone().unwrap().to_string())
            }
            _ => return None,
        })
    }));
    kubectl_orb8::k8s::lifecycle::ensure_namespace(&client, NS)
        .await
        .unwrap();
    drop(client);
    api.finish().await;
    let log = api.requests();
    let ns = log[1].body.as_ref().unwrap();
    assert_eq!(ns["metadata"]["name"], NS);
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
}

#[tokio::test]
async fn forbidden_create_says_which_rbac_is_missing() {
    let (client, mut api) = api_server(Box::new(|s: &ApiRequest| {
        Some(match (s.method.as_str(), s.path.as_str()) {
        ("GET", "/api/v1/namespaces/orb8-system") => (StatusCode::OK, json!({"metadata": {"name": NS}}).to_string()),
        ("POST", POD_PATH) => (
            StatusCode::FORBIDDEN,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                   "message": "pods is forbidden: User \"dev\" cannot create resource \"pods\" in the namespace \"orb8-system\""})
            .to_string(),
        ),
        ("DELETE", _) => not_found("pod"),
        _ => return None,
    })
    }));
    let (pods, mut result) = run(&client, &config(Duration::from_secs(5))).await;
    let (_, f) = result.remove(0).unwrap_err();
    assert!(
        f.to_string()
            .starts_with("creating the agent pod: forbidden (pods is forbidden: User \"dev\""),
        "{f}"
    );
    assert!(
        f.to_string()
            .ends_with("see manifests/clusterrole.yaml for the RBAC orb8 needs")
    );
    assert!(pods.delete_all(Duration::from_secs(1)).await.is_empty());
    drop((pods, client));
    api.finish().await;
}

#[tokio::test]
async fn a_pod_that_stays_after_delete_is_reported_not_hidden() {
    let (client, mut api) = api_server(Box::new(|s: &ApiRequest| {
        Some(match (s.method.as_str(), s.path.as_str()) {
            ("GET", "/api/v1/namespaces/orb8-system") => (
                StatusCode::OK,
                json!({"metadata": {"name": NS}}).to_string(),
            ),
            ("POST", POD_PATH) => (
                StatusCode::CREATED,
                pod_json(json!({"phase": "Pending"}), "1").to_string(),
            ),
            ("GET", POD_PATH) if s.is_watch() => (StatusCode::OK, watch_events(&[running()])),
            // A finalizer holds it: DELETE is accepted, the pod stays.
            ("DELETE", _) | ("GET", _) => (StatusCode::OK, pod_json(running(), "50").to_string()),
            _ => return None,
        })
    }));
    let (pods, result) = run(&client, &config(Duration::from_secs(5))).await;
    assert!(result[0].is_ok());
    let left = pods.delete_all(Duration::from_millis(600)).await;
    assert_eq!(
        left,
        vec![(
            "orb8-agent-s1-0".to_string(),
            "still terminating after 600ms".to_string()
        )]
    );
    drop((pods, client));
    api.finish().await;
    assert!(
        api.methods()
            .contains(&format!("DELETE {POD_PATH}/orb8-agent-s1-0"))
    );
}
