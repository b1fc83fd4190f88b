//! The fake kubelet: starts a pod's container (in its sandbox unless `hostNetwork`), reports
//! each step as a status change, and stops and removes it when the pod is deleted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::sync::Notify;

use super::selection::field;
use super::{Container, State, now, random_u128, rfc3339};

pub(super) fn container_status(name: &Value, image: &str, state: Value, ready: bool) -> Value {
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
pub(super) fn collect_log(
    state: Arc<State>,
    pid: u32,
    out: impl AsyncRead + Unpin + Send + 'static,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(out).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            state.container_update(pid, |c| c.log.push(line));
        }
    });
}

pub(super) enum Started {
    Running(tokio::process::Child, u32),
    /// Waiting (image pull, config error): nothing runs.
    Stuck,
    /// Deleted while starting.
    Deleted,
}

/// The kubelet's work for one pod bound to its node.
pub(super) async fn kubelet(
    state: Arc<State>,
    key: (String, String),
    netns: String,
    deleting: Arc<Notify>,
) {
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
                    let backdate = *state.finish_backdate.lock().expect("backdate");
                    let finished = rfc3339(SystemTime::now() - backdate);
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
                            "finishedAt": finished,
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

pub(super) fn exit_code(s: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    s.code().unwrap_or_else(|| -s.signal().unwrap_or(0))
}

/// Pulls, creates and starts the pod's (first) container, reporting each step.
pub(super) async fn start_container(
    state: &Arc<State>,
    key: &(String, String),
    netns: &str,
) -> Started {
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
pub(super) fn resolve_program(state: &State, command: &str) -> Option<PathBuf> {
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
pub(super) const CONTAINER_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Makes the pod's sandbox (network namespace, address, container cgroup), records it for
/// teardown and reports the pod's address and container id; returns its network namespace and
/// the container's cgroup.
pub(super) async fn make_sandbox(
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
