//! Which nodes a command needs: those hosting the selected pods (namespace, selector, pod
//! name), the named nodes, or every node that can run the agent pod ([`usable_nodes`], pure).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Taint, Toleration};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt as _};

use super::lifecycle::api_error;

/// What the user selected, kubectl style.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetSpec {
    /// `-n`: the namespace (the context's default when not given).
    pub namespace: String,
    /// `-A`: every namespace.
    pub all_namespaces: bool,
    /// `-l`: a label selector.
    pub selector: Option<String>,
    /// A pod name (commands that take one).
    pub pod: Option<String>,
    /// `--node`: these nodes, whatever runs on them.
    pub nodes: Vec<String>,
}

/// Why no nodes could be chosen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    /// The namespace does not exist.
    #[error("namespace {0:?} not found")]
    NamespaceNotFound(String),
    /// The named pod does not exist.
    #[error("pod {namespace}/{name} not found")]
    PodNotFound {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// Nothing matched.
    #[error("no running or pending pods {0}")]
    NoPods(String),
    /// Pods matched, but none is on a node yet.
    #[error("{count} matching pod(s) {what}, but none is scheduled on a node yet")]
    NotScheduled {
        /// How many matched.
        count: usize,
        /// The selection, in words.
        what: String,
    },
    /// A `--node` that does not exist.
    #[error("node {0:?} not found")]
    NodeNotFound(String),
    /// `-A`: no node can run an agent pod (each named, with why).
    #[error("no node can run an agent pod: {0}")]
    NoUsableNode(String),
    /// The API server refused or failed.
    #[error("{0}")]
    Api(String),
}

impl TargetSpec {
    /// The selection in words, for messages: `in namespace "payments" matching app=api`.
    pub fn describe(&self) -> String {
        let mut s = if self.all_namespaces {
            "in any namespace".to_string()
        } else {
            format!("in namespace {:?}", self.namespace)
        };
        if let Some(p) = &self.pod {
            s = format!("named {p:?} {s}");
        }
        if let Some(l) = &self.selector {
            s.push_str(&format!(" matching {l}"));
        }
        s
    }

    /// True when the selection is "every node" (`-A` with no selector or pod).
    pub fn is_all_nodes(&self) -> bool {
        self.all_namespaces && self.selector.is_none() && self.pod.is_none()
    }
}

/// The nodes of pods that are running or about to (Pending, scheduled), and how many live pods
/// have no node yet. Finished pods (Succeeded, Failed) do not count.
pub fn nodes_of(pods: &[Pod]) -> (BTreeSet<String>, usize) {
    let mut nodes = BTreeSet::new();
    let mut unscheduled = 0;
    for p in pods {
        let phase = p
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("Pending");
        if phase == "Succeeded" || phase == "Failed" {
            continue;
        }
        match p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
        {
            Some(n) => {
                nodes.insert(n);
            }
            None => unscheduled += 1,
        }
    }
    (nodes, unscheduled)
}

fn api_err(doing: &'static str) -> impl Fn(kube::Error) -> TargetError {
    move |e| TargetError::Api(api_error(doing, &e))
}

/// Whether a toleration tolerates a taint, as the scheduler and the kubelet decide it: the
/// effect matches (or the toleration names none), and `Exists` matches the key (every key when
/// it names none) while `Equal` (the default) matches key and value.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    match t.operator.as_deref() {
        Some("Exists") => key.is_empty() || key == taint.key,
        _ => {
            key == taint.key
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

/// Why an agent pod cannot run on `node`, or `None` when it can.
///
/// The agent pod is pinned with `nodeName`, which bypasses the scheduler: a cordoned node
/// (`spec.unschedulable`) still runs it, so cordoning alone is no reason to skip. What stops
/// it is a node whose kubelet is not Ready (`Ready` is `False`, `Unknown` or missing: the pod
/// would wait out `--timeout`), or a `NoSchedule`/`NoExecute` taint that `tolerations` (the
/// agent pod's) do not tolerate. The agent pod tolerates every taint today
/// ([`super::pod_spec::tolerations`]), so in practice only NotReady nodes are skipped.
pub fn unusable_because(node: &Node, tolerations: &[Toleration]) -> Option<String> {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    match ready.map(|c| c.status.as_str()) {
        Some("True") => {}
        Some("False") => return Some("NotReady".into()),
        Some(_) => return Some("NotReady (status Unknown: its kubelet stopped reporting)".into()),
        None => return Some("NotReady (no Ready condition reported)".into()),
    }
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
        .map(|t| match t.value.as_deref().filter(|v| !v.is_empty()) {
            Some(v) => format!("taint {}={v}:{} not tolerated", t.key, t.effect),
            None => format!("taint {}:{} not tolerated", t.key, t.effect),
        })
}

/// Splits `nodes` into those an agent pod with `tolerations` can run on (names, sorted) and
/// those it cannot, each with the reason ([`unusable_because`]).
pub fn usable_nodes(
    nodes: &[Node],
    tolerations: &[Toleration],
) -> (Vec<String>, Vec<(String, String)>) {
    let mut usable = Vec::new();
    let mut skipped = Vec::new();
    for n in nodes {
        match unusable_because(n, tolerations) {
            None => usable.push(n.name_any()),
            Some(why) => skipped.push((n.name_any(), why)),
        }
    }
    usable.sort();
    skipped.sort();
    (usable, skipped)
}

/// The nodes a selection resolved to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Where to start agents, sorted.
    pub nodes: Vec<String>,
    /// Nodes left out (`-A`: not Ready, or a taint the agent pod does not tolerate), with why.
    pub skipped: Vec<(String, String)>,
}

impl Resolved {
    fn of(nodes: Vec<String>) -> Resolved {
        Resolved {
            nodes,
            skipped: Vec::new(),
        }
    }
}

/// Resolves the selection to node names, sorted. `-A` with no pod selection leaves out nodes
/// an agent pod with `tolerations` cannot run on ([`usable_nodes`]).
pub async fn resolve(
    client: &Client,
    spec: &TargetSpec,
    tolerations: &[Toleration],
) -> Result<Resolved, TargetError> {
    if !spec.nodes.is_empty() {
        let nodes: Api<Node> = Api::all(client.clone());
        for n in &spec.nodes {
            if nodes
                .get_opt(n)
                .await
                .map_err(api_err("reading nodes"))?
                .is_none()
            {
                return Err(TargetError::NodeNotFound(n.clone()));
            }
        }
        let mut out = spec.nodes.clone();
        out.sort();
        out.dedup();
        return Ok(Resolved::of(out));
    }
    if spec.is_all_nodes() {
        let nodes: Api<Node> = Api::all(client.clone());
        let list = nodes
            .list(&ListParams::default())
            .await
            .map_err(api_err("listing nodes"))?;
        let (nodes, skipped) = usable_nodes(&list.items, tolerations);
        if nodes.is_empty() {
            return Err(TargetError::NoUsableNode(
                skipped
                    .iter()
                    .map(|(n, why)| format!("{n}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            ));
        }
        return Ok(Resolved { nodes, skipped });
    }
    let pods: Api<Pod> = if spec.all_namespaces {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), &spec.namespace)
    };
    let mut lp = ListParams::default();
    if let Some(l) = &spec.selector {
        lp = lp.labels(l);
    }
    if let Some(p) = &spec.pod {
        lp = lp.fields(&format!("metadata.name={p}"));
    }
    let list = pods.list(&lp).await.map_err(api_err("listing pods"))?;
    let (nodes, unscheduled) = nodes_of(&list.items);
    if !nodes.is_empty() {
        return Ok(Resolved::of(nodes.into_iter().collect()));
    }
    if !spec.all_namespaces {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        if namespaces
            .get_opt(&spec.namespace)
            .await
            .map_err(api_err("reading the namespace"))?
            .is_none()
        {
            return Err(TargetError::NamespaceNotFound(spec.namespace.clone()));
        }
    }
    if let (Some(name), true) = (&spec.pod, list.items.is_empty()) {
        return Err(TargetError::PodNotFound {
            namespace: spec.namespace.clone(),
            name: name.clone(),
        });
    }
    if unscheduled > 0 {
        return Err(TargetError::NotScheduled {
            count: unscheduled,
            what: spec.describe(),
        });
    }
    Err(TargetError::NoPods(spec.describe()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(node: Option<&str>, phase: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    #[test]
    fn nodes_of_live_pods_only() {
        let pods = vec![
            pod(Some("b"), "Running"),
            pod(Some("a"), "Pending"),
            pod(Some("b"), "Running"),
            pod(Some("c"), "Succeeded"),
            pod(Some("d"), "Failed"),
            pod(None, "Pending"),
        ];
        let (nodes, unscheduled) = nodes_of(&pods);
        assert_eq!(nodes.into_iter().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(unscheduled, 1);
    }

    fn node(name: &str, ready: Option<&str>, spec: serde_json::Value) -> Node {
        let conditions: Vec<serde_json::Value> = ready
            .map(|r| serde_json::json!({"type": "Ready", "status": r}))
            .into_iter()
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": spec,
            "status": {"conditions": conditions},
        }))
        .unwrap()
    }

    fn nodes() -> Vec<Node> {
        vec![
            node("n3", Some("True"), serde_json::json!({})),
            node("n2", Some("False"), serde_json::json!({})),
            node("n1", Some("True"), serde_json::json!({})),
            node("n4", Some("Unknown"), serde_json::json!({})),
            node("n5", None, serde_json::json!({})),
            // Cordoned: the scheduler stays away, a pod pinned with nodeName does not.
            node(
                "n6",
                Some("True"),
                serde_json::json!({"unschedulable": true, "taints": [
                {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]}),
            ),
            node(
                "n7",
                Some("True"),
                serde_json::json!({"taints": [
                {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}),
            ),
            node(
                "n8",
                Some("True"),
                serde_json::json!({"taints": [
                {"key": "maintenance", "effect": "NoExecute"}]}),
            ),
            node(
                "n9",
                Some("True"),
                serde_json::json!({"taints": [
                {"key": "spot", "effect": "PreferNoSchedule"}]}),
            ),
        ]
    }

    #[test]
    fn the_agent_pod_skips_only_nodes_that_are_not_ready() {
        let (usable, skipped) = usable_nodes(&nodes(), &crate::k8s::pod_spec::tolerations());
        assert_eq!(usable, vec!["n1", "n3", "n6", "n7", "n8", "n9"]);
        assert_eq!(
            skipped,
            vec![
                ("n2".to_string(), "NotReady".to_string()),
                (
                    "n4".to_string(),
                    "NotReady (status Unknown: its kubelet stopped reporting)".to_string()
                ),
                (
                    "n5".to_string(),
                    "NotReady (no Ready condition reported)".to_string()
                ),
            ]
        );
    }

    #[test]
    fn taints_count_unless_tolerated() {
        let gpu = Toleration {
            key: Some("dedicated".into()),
            value: Some("gpu".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        };
        let (usable, skipped) = usable_nodes(&nodes(), std::slice::from_ref(&gpu));
        assert_eq!(usable, vec!["n1", "n3", "n7", "n9"]);
        let why: Vec<&str> = skipped.iter().map(|(_, w)| w.as_str()).collect();
        assert_eq!(
            why[3..],
            [
                "taint node.kubernetes.io/unschedulable:NoSchedule not tolerated",
                "taint maintenance:NoExecute not tolerated",
            ]
        );
        let exists_key = Toleration {
            key: Some("maintenance".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        };
        let taint = |key: &str, effect: &str| Taint {
            key: key.into(),
            effect: effect.into(),
            ..Default::default()
        };
        assert!(tolerates(&exists_key, &taint("maintenance", "NoExecute")));
        assert!(!tolerates(&exists_key, &taint("dedicated", "NoExecute")));
        let wrong_value = Toleration {
            value: Some("cpu".into()),
            ..gpu.clone()
        };
        let gpu_taint = Taint {
            value: Some("gpu".into()),
            ..taint("dedicated", "NoSchedule")
        };
        assert!(tolerates(&gpu, &gpu_taint));
        assert!(!tolerates(&wrong_value, &gpu_taint));
        let no_execute_only = Toleration {
            effect: Some("NoExecute".into()),
            ..gpu
        };
        assert!(!tolerates(&no_execute_only, &gpu_taint));
    }

    #[test]
    fn selections_in_words() {
        let spec = TargetSpec {
            namespace: "payments".into(),
            selector: Some("app=api".into()),
            ..Default::default()
        };
        assert_eq!(
            spec.describe(),
            "in namespace \"payments\" matching app=api"
        );
        assert!(!spec.is_all_nodes());
        let all = TargetSpec {
            all_namespaces: true,
            ..Default::default()
        };
        assert!(all.is_all_nodes());
        assert_eq!(
            TargetError::NoPods(spec.describe()).to_string(),
            "no running or pending pods in namespace \"payments\" matching app=api"
        );
    }
}
