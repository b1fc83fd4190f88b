//! The always-on manifests: `manifests/persistent` (Kustomize base), its example overlay and
//! `manifests/monitoring`, rendered with `kubectl kustomize` (the Kustomize built into kubectl)
//! and checked field by field: the DaemonSet keeps the agent pod contract, the ServiceAccount
//! has no rights bound, the ConfigMap holds every setting the DaemonSet reads, the headless
//! Service exposes the metrics port the probes and the ServiceMonitor use.
//!
//! Without `kubectl` the rendering is skipped (a `SKIPPED` line says so) and the base's files
//! are checked as written.

use std::{path::PathBuf, process::Command};

use orb8_testkit::preconditions::skipped;
use serde_json::Value;

fn manifests() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

fn yaml_docs(text: &str) -> Vec<Value> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else {
            let d = docs.last_mut().expect("one doc");
            d.push_str(line);
            d.push('\n');
        }
    }
    docs.iter()
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .map(|d| serde_norway::from_str(d).unwrap_or_else(|e| panic!("YAML {d}: {e}")))
        .collect()
}

/// `kubectl kustomize DIR`, or `None` (with a SKIPPED line) when kubectl is not installed.
fn render(test: &str, dir: &str) -> Option<Vec<Value>> {
    let out = match Command::new("kubectl")
        .arg("kustomize")
        .arg(manifests().join(dir))
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            skipped(
                test,
                &format!("kubectl not runnable ({e}): rendering not checked"),
            );
            return None;
        }
    };
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(yaml_docs(&String::from_utf8(out.stdout).expect("UTF-8")))
}

/// The base's files as written, in its kustomization's order.
fn base_files() -> Vec<Value> {
    let dir = manifests().join("persistent");
    let k = &yaml_docs(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())[0];
    k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .flat_map(|f| yaml_docs(&std::fs::read_to_string(dir.join(f.as_str().unwrap())).unwrap()))
        .collect()
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} in {docs:#?}");
    found[0]
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Checks what the base must say, rendered or not.
fn check_base(docs: &[Value]) {
    for kind in [
        "Role",
        "ClusterRole",
        "RoleBinding",
        "ClusterRoleBinding",
        "Secret",
    ] {
        assert!(
            docs.iter().all(|d| d["kind"] != kind),
            "the base must not contain a {kind}"
        );
    }
    let ns = one(docs, "Namespace");
    for mode in ["enforce", "audit", "warn"] {
        assert_eq!(
            ns["metadata"]["labels"][format!("pod-security.kubernetes.io/{mode}")],
            "privileged"
        );
    }
    let sa = one(docs, "ServiceAccount");
    assert_eq!(sa["automountServiceAccountToken"], false);

    let ds = one(docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["hostPID"], true);
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    let pc = one(docs, "PriorityClass");
    assert_eq!(pod["priorityClassName"], pc["metadata"]["name"]);
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(
        strings(&sc["capabilities"]["add"]),
        ["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN"]
    );
    for r in ["requests", "limits"] {
        for what in ["cpu", "memory"] {
            assert!(c["resources"][r][what].is_string(), "resources.{r}.{what}");
        }
    }
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["path"], "/healthz", "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    let port = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("a container port named metrics");
    let args = strings(&c["args"]);
    assert_eq!(args[0], "serve");
    assert!(
        args.contains(&"--listen=127.0.0.1:47010"),
        "gRPC on loopback: {args:?}"
    );
    assert!(args.contains(&"--idle-timeout=0"), "{args:?}");
    assert!(
        args.contains(&"--metrics-listen=$(POD_IP):$(ORB8_METRICS_PORT)"),
        "{args:?}"
    );
    // Every $(VAR) an argument names is defined, by the ConfigMap or the env list.
    let cm = one(docs, "ConfigMap");
    assert_eq!(
        c["envFrom"][0]["configMapRef"]["name"], cm["metadata"]["name"],
        "the DaemonSet reads the ConfigMap"
    );
    let env: Vec<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for a in &args {
        for var in a
            .split("$(")
            .skip(1)
            .filter_map(|s| s.split_once(')'))
            .map(|(v, _)| v)
        {
            assert!(
                env.contains(&var) || cm["data"][var].is_string(),
                "{a} names {var}, defined nowhere"
            );
        }
    }
    for key in [
        "ORB8_INTERFACES",
        "ORB8_FLOW_MAP_SIZE",
        "ORB8_METRICS",
        "ORB8_METRICS_PORT",
    ] {
        assert!(cm["data"][key].is_string(), "ConfigMap key {key}");
    }
    assert_eq!(
        cm["data"]["ORB8_METRICS_PORT"].as_str().unwrap(),
        port["containerPort"].to_string()
    );
    let token = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "ORB8_AGENT_TOKEN")
        .expect("the token variable");
    assert_eq!(
        token["valueFrom"]["secretKeyRef"],
        serde_json::json!({"name": "orb8-agent-token", "key": "token"})
    );
    let mounts: Vec<(&str, bool)> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["mountPath"].as_str().unwrap(), m["readOnly"] == true))
        .collect();
    assert!(mounts.contains(&("/sys/fs/bpf", false)));
    assert!(mounts.contains(&("/sys/fs/cgroup", true)));
    assert!(
        mounts
            .iter()
            .filter(|(p, _)| p.starts_with("/run"))
            .all(|(_, ro)| *ro)
    );
    // GPU metrics name pods through the kubelet's pod-resources socket, read-only.
    assert!(mounts.contains(&("/var/lib/kubelet/pod-resources", true)));

    let svc = one(docs, "Service");
    assert_eq!(svc["spec"]["clusterIP"], "None", "headless");
    let selector = svc["spec"]["selector"].as_object().unwrap();
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (k, v) in selector {
        assert_eq!(&labels[k], v, "the Service selects the agent pods ({k})");
    }
    let sp = &svc["spec"]["ports"][0];
    assert_eq!(sp["name"], "metrics");
    assert_eq!(sp["port"], port["containerPort"]);
}

#[test]
fn persistent_base_renders_with_the_agent_pod_contract_and_no_api_rights() {
    check_base(&base_files());
    let Some(docs) = render(
        "persistent_base_renders_with_the_agent_pod_contract_and_no_api_rights",
        "persistent",
    ) else {
        return;
    };
    check_base(&docs);
    for d in docs
        .iter()
        .filter(|d| !["Namespace", "PriorityClass"].contains(&d["kind"].as_str().unwrap()))
    {
        assert_eq!(d["metadata"]["namespace"], "orb8-system", "{}", d["kind"]);
    }
    let ds = one(&docs, "DaemonSet");
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"][0]["image"],
        format!("ghcr.io/orb8/orb8-agent:v{}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn the_example_overlay_changes_image_and_namespace() {
    let Some(docs) = render(
        "the_example_overlay_changes_image_and_namespace",
        "overlays/example",
    ) else {
        return;
    };
    check_base(&docs);
    assert_eq!(one(&docs, "Namespace")["metadata"]["name"], "observability");
    let ds = one(&docs, "DaemonSet");
    assert_eq!(ds["metadata"]["namespace"], "observability");
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example.com/mirror/orb8-agent:v0.1.0"
    );
}

#[test]
fn monitoring_selects_the_agents_service_and_ships_the_dashboard() {
    let base = base_files();
    let svc = one(&base, "Service");
    let sm = &yaml_docs(
        &std::fs::read_to_string(manifests().join("monitoring/servicemonitor.yaml")).unwrap(),
    )[0];
    assert_eq!(sm["kind"], "ServiceMonitor");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "selects the agents' Service ({k})"
        );
    }
    assert_eq!(
        sm["spec"]["endpoints"][0]["port"],
        svc["spec"]["ports"][0]["name"]
    );
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(manifests().join("monitoring/grafana-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    assert!(dashboard["panels"].as_array().unwrap().len() >= 8);
    let Some(docs) = render(
        "monitoring_selects_the_agents_service_and_ships_the_dashboard",
        "monitoring",
    ) else {
        return;
    };
    let cm = one(&docs, "ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value =
        serde_json::from_str(cm["data"]["grafana-dashboard.json"].as_str().unwrap()).unwrap();
    assert_eq!(shipped, dashboard);
}
