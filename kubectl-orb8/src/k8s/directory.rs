//! The [`Directory`] of pods, services and nodes, filled from the API server: listed once at
//! the start, then kept current by watches (not repeated lists) for as long as the command runs.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};

use super::lifecycle::api_error;
use super::target::TargetSpec;
use crate::enrich::{Directory, PodEntry};
use crate::flow::FlowRecord;

fn pod_entry(p: &Pod) -> PodEntry {
    let status = p.status.as_ref();
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|v| v.iter().filter_map(|i| i.ip.parse().ok()).collect())
        .unwrap_or_default();
    if let Some(ip) = status
        .and_then(|s| s.pod_ip.as_ref())
        .and_then(|i| i.parse().ok())
        && !ips.contains(&ip)
    {
        ips.push(ip);
    }
    PodEntry {
        namespace: p.namespace().unwrap_or_default(),
        name: p.name_any(),
        ips,
        host_network: p
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false),
        created: p
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| SystemTime::from(t.0)),
        deleted: None,
    }
}

fn service_ips(s: &Service) -> Vec<IpAddr> {
    let spec = s.spec.as_ref();
    let mut ips: Vec<IpAddr> = spec
        .and_then(|s| s.cluster_ips.as_ref())
        .map(|v| v.iter().filter_map(|i| i.parse().ok()).collect())
        .unwrap_or_default();
    if let Some(ip) = spec
        .and_then(|s| s.cluster_ip.as_ref())
        .and_then(|i| i.parse().ok())
        && !ips.contains(&ip)
    {
        ips.push(ip);
    }
    ips
}

/// A directory kept current in the background; the watches stop when it is dropped.
pub struct LiveDirectory {
    dir: Arc<RwLock<Directory>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl LiveDirectory {
    /// Lists pods, services and nodes (every namespace), then watches pods and services.
    /// `selected` restricts flows to those pods' endpoints. A listing the user may not do
    /// (RBAC) is a warning given to `warn`: flows are then shown without those names, and what
    /// could not be listed is not watched either. A watch that fails retries with backoff.
    pub async fn start(
        client: &Client,
        selected: Option<BTreeSet<(String, String)>>,
        warn: &(dyn Fn(&str) + Sync),
    ) -> LiveDirectory {
        let mut d = Directory {
            selected,
            ..Default::default()
        };
        let pods: Api<Pod> = Api::all(client.clone());
        let services: Api<Service> = Api::all(client.clone());
        let nodes: Api<Node> = Api::all(client.clone());
        let lp = ListParams::default();
        let watch_pods = match pods.list(&lp).await {
            Ok(l) => {
                l.items.iter().for_each(|p| d.upsert_pod(pod_entry(p)));
                true
            }
            Err(e) => {
                warn(&api_error("listing pods to name flow endpoints", &e));
                false
            }
        };
        let watch_services = match services.list(&lp).await {
            Ok(l) => {
                for s in &l.items {
                    for ip in service_ips(s) {
                        d.services
                            .insert(ip, (s.namespace().unwrap_or_default(), s.name_any()));
                    }
                }
                true
            }
            Err(e) => {
                warn(&api_error("listing services", &e));
                false
            }
        };
        if let Ok(l) = nodes.list(&lp).await {
            for n in &l.items {
                for a in n
                    .status
                    .as_ref()
                    .and_then(|s| s.addresses.as_ref())
                    .into_iter()
                    .flatten()
                {
                    if let Ok(ip) = a.address.parse() {
                        d.nodes.insert(ip, n.name_any());
                    }
                }
            }
        }
        let dir = Arc::new(RwLock::new(d));
        let pod_dir = dir.clone();
        let mut tasks = Vec::new();
        let pod_task = async move {
            let mut events = watcher(pods, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(ev) = events.next().await {
                let Ok(ev) = ev else { continue };
                let mut d = pod_dir.write().expect("directory lock");
                match ev {
                    watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                        d.upsert_pod(pod_entry(&p))
                    }
                    watcher::Event::Delete(p) => d.delete_pod(
                        &p.namespace().unwrap_or_default(),
                        &p.name_any(),
                        SystemTime::now(),
                    ),
                    watcher::Event::Init | watcher::Event::InitDone => {}
                }
            }
        };
        if watch_pods {
            tasks.push(tokio::spawn(pod_task));
        }
        let svc_dir = dir.clone();
        let svc_task = async move {
            let mut events = watcher(services, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(ev) = events.next().await {
                let Ok(ev) = ev else { continue };
                let mut d = svc_dir.write().expect("directory lock");
                match ev {
                    watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                        for ip in service_ips(&s) {
                            d.services
                                .insert(ip, (s.namespace().unwrap_or_default(), s.name_any()));
                        }
                    }
                    watcher::Event::Delete(s) => {
                        for ip in service_ips(&s) {
                            d.services.remove(&ip);
                        }
                    }
                    watcher::Event::Init | watcher::Event::InitDone => {}
                }
            }
        };
        if watch_services {
            tasks.push(tokio::spawn(svc_task));
        }
        LiveDirectory { dir, tasks }
    }

    /// The directory as it is now.
    pub fn snapshot(&self) -> Directory {
        self.dir.read().expect("directory lock").clone()
    }

    /// [`Directory::apply`] on the directory as it is now.
    pub fn apply(&self, flows: Vec<FlowRecord>) -> Vec<FlowRecord> {
        self.dir.read().expect("directory lock").apply(flows)
    }
}

impl Drop for LiveDirectory {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl std::fmt::Debug for LiveDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveDirectory")
    }
}

/// The pods a selection names, for filtering flows to their endpoints; `None` when the
/// selection is nodes rather than pods (`--node`, or `-A` without a selector).
pub async fn selected_pods(
    client: &Client,
    spec: &TargetSpec,
) -> Option<BTreeSet<(String, String)>> {
    if !spec.nodes.is_empty() || spec.is_all_nodes() {
        return None;
    }
    let api: Api<Pod> = if spec.all_namespaces {
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
    let list = api.list(&lp).await.ok()?;
    Some(
        list.items
            .iter()
            .map(|p| (p.namespace().unwrap_or_default(), p.name_any()))
            .collect(),
    )
}
