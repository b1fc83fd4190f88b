//! Which nodes a command needs: those hosting the selected pods (namespace, selector, pod
//! name), the named nodes, or every node.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
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

/// Resolves the selection to node names, sorted.
pub async fn resolve(client: &Client, spec: &TargetSpec) -> Result<Vec<String>, TargetError> {
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
        return Ok(out);
    }
    if spec.is_all_nodes() {
        let nodes: Api<Node> = Api::all(client.clone());
        let list = nodes
            .list(&ListParams::default())
            .await
            .map_err(api_err("listing nodes"))?;
        return Ok(list.items.iter().map(|n| n.name_any()).collect());
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
        return Ok(nodes.into_iter().collect());
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
