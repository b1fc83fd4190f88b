//! The fake API server's HTTP side: routing, lists and watches, creating and deleting
//! namespaces and pods, and port-forwards into a pod's network namespace.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

use crate::api_request::ApiRequest;
use crate::fake_apiserver::{self, Dial};

use super::kubelet::kubelet;
use super::selection::Selection;
use super::{Body, State, StoredPod, namespace_object, now, random_u128};

pub(super) fn full(code: StatusCode, body: Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed_unsync());
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub(super) fn failure(
    code: StatusCode,
    reason: &str,
    message: &str,
    details: Value,
) -> Response<Body> {
    fake_apiserver::status(code, reason, message, details).map(BodyExt::boxed_unsync)
}

pub(super) fn not_found(kind: &str, name: &str) -> Response<Body> {
    failure(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{kind} \"{name}\" not found"),
        json!({"name": name, "kind": kind}),
    )
}

pub(super) fn bad_request(message: &str) -> Response<Body> {
    failure(StatusCode::BAD_REQUEST, "BadRequest", message, json!({}))
}

pub(super) fn list(kind: &str, rv: u64, items: Vec<Value>) -> Response<Body> {
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

pub(super) async fn handle(state: Arc<State>, mut req: Request<Incoming>) -> Response<Body> {
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
    let denied = state.rbac.lock().expect("rbac").as_ref().and_then(|rbac| {
        let a = super::rbac::attributes(method.as_str(), &parts, seen.is_watch())?;
        let message = rbac.check(&a).err()?;
        // As the API server writes it: no `name` for a collection.
        let mut details = json!({"kind": a.resource});
        if let Some(name) = &a.name {
            details["name"] = json!(name);
        }
        Some(failure(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &message,
            details,
        ))
    });
    let resp = if let Some(denied) = denied {
        denied
    } else if let ["api", "v1", "namespaces", ns, "pods", name, "portforward"] = parts[..] {
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

pub(super) fn route(
    state: &Arc<State>,
    method: &Method,
    parts: &[&str],
    seen: &ApiRequest,
) -> Response<Body> {
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
        (
            &Method::GET,
            [
                "apis",
                "discovery.k8s.io",
                "v1",
                "namespaces",
                ns,
                "endpointslices",
            ],
        ) => list_objects(
            state,
            "endpointslices",
            "discovery.k8s.io/v1",
            "EndpointSlice",
            ns,
            seen,
        ),
        (&Method::GET, ["api", "v1", "namespaces", ns, "secrets", name]) => {
            let store = state.store.lock().expect("store");
            match store
                .objects
                .get(&("secrets".into(), ns.to_string(), name.to_string()))
            {
                Some(o) => full(StatusCode::OK, o.clone()),
                None => not_found("secrets", name),
            }
        }
        _ => failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
            json!({}),
        ),
    }
}

/// Lists the stored objects of `resource` in `ns` matching the request's label selector.
fn list_objects(
    state: &Arc<State>,
    resource: &str,
    api_version: &str,
    kind: &str,
    ns: &str,
    seen: &ApiRequest,
) -> Response<Body> {
    let selection = match Selection::new(Some(ns.to_string()), seen) {
        Ok(s) => s,
        Err(e) => return bad_request(&e),
    };
    let store = state.store.lock().expect("store");
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((r, n, _), o)| r == resource && n == ns && selection.matches(o))
        .map(|(_, o)| o.clone())
        .collect();
    full(
        StatusCode::OK,
        json!({
            "apiVersion": api_version,
            "kind": format!("{kind}List"),
            "metadata": {"resourceVersion": store.rv.to_string()},
            "items": items,
        }),
    )
}

pub(super) fn create_namespace(state: &Arc<State>, seen: &ApiRequest) -> Response<Body> {
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

pub(super) fn list_pods(
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
pub(super) fn watch_pods(
    state: &Arc<State>,
    selection: Selection,
    seen: &ApiRequest,
) -> Response<Body> {
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
pub(super) fn quiet_watch(seen: &ApiRequest) -> Response<Body> {
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

pub(super) fn create_pod(state: &Arc<State>, ns: &str, seen: &ApiRequest) -> Response<Body> {
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
pub(super) fn delete_namespace(state: &Arc<State>, ns: &str) -> Response<Body> {
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

pub(super) fn delete_pod(state: &Arc<State>, ns: &str, name: &str) -> Response<Body> {
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

pub(super) fn port_forward(
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
pub(super) fn dial_in(netns: String) -> Dial {
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
