//! Removing what killed clients left behind, on every cluster command.
//!
//! The rule ([`reapable`], pure): in the agent namespace, a pod with orb8's labels
//! ([`pod_spec::SELECTOR`]) is removed when it belongs to another session, has finished
//! (phase `Succeeded` or `Failed`), finished at least [`FINISHED_GRACE`] ago (the latest
//! `finishedAt` of its containers), and no pod of its session is still Pending or Running (a
//! session with a live pod may still have a client). Pods that never report when they finished,
//! or are already being deleted, are left alone. Running and Pending pods of other sessions are
//! never touched: `kubectl orb8 cleanup` is there for the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt as _};

use super::lifecycle::api_error;
use super::pod_spec;

/// How long after it finished a pod of a gone session is left for someone to look at (`kubectl
/// describe`, its termination message) before any command removes it.
pub const FINISHED_GRACE: Duration = Duration::from_secs(120);

/// A pod the rule selected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reapable {
    /// Its name (in the agent namespace).
    pub name: String,
    /// Its session label.
    pub session: String,
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn session(p: &Pod) -> String {
    p.labels()
        .get(pod_spec::LABEL_SESSION)
        .cloned()
        .unwrap_or_default()
}

/// When the pod's last container finished, as its kubelet reported it.
pub fn finished_at(p: &Pod) -> Option<SystemTime> {
    p.status
        .as_ref()?
        .container_statuses
        .as_deref()?
        .iter()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| SystemTime::from(t.0))
        .max()
}

/// The pods of `pods` (orb8's agent pods of one namespace) that the module's rule removes,
/// seen at `now`; `own` is this command's session.
pub fn reapable(pods: &[Pod], own: &str, now: SystemTime, grace: Duration) -> Vec<Reapable> {
    let live: BTreeSet<String> = pods
        .iter()
        .filter(|p| !matches!(phase(p), "Succeeded" | "Failed"))
        .map(session)
        .collect();
    pods.iter()
        .filter(|p| matches!(phase(p), "Succeeded" | "Failed"))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let s = session(p);
            s != own && !live.contains(&s)
        })
        .filter(|p| {
            finished_at(p).is_some_and(|t| now.duration_since(t).is_ok_and(|ago| ago >= grace))
        })
        .map(|p| Reapable {
            name: p.name_any(),
            session: session(p),
        })
        .collect()
}

/// The one stderr line saying what was removed, or `None` when nothing was.
pub fn summary(removed: &[Reapable]) -> Option<String> {
    if removed.is_empty() {
        return None;
    }
    let mut by_session: BTreeMap<&str, usize> = BTreeMap::new();
    for r in removed {
        *by_session.entry(&r.session).or_default() += 1;
    }
    let sessions: Vec<&str> = by_session.keys().copied().collect();
    Some(format!(
        "removed {} finished agent pod{} of gone session{} {} (finished over {} ago)",
        removed.len(),
        if removed.len() == 1 { "" } else { "s" },
        if sessions.len() == 1 { "" } else { "s" },
        sessions.join(", "),
        humantime::format_duration(FINISHED_GRACE)
    ))
}

/// Lists orb8's pods in `namespace`, deletes those [`reapable`] selects (without waiting for
/// them to be gone) and returns them, with a line for each pod it could not delete (or for the
/// listing, when that failed).
pub async fn reap(client: &Client, namespace: &str, own: &str) -> (Vec<Reapable>, Vec<String>) {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pods = match api
        .list(&ListParams::default().labels(pod_spec::SELECTOR))
        .await
    {
        Ok(l) => l.items,
        Err(e) => {
            return (
                Vec::new(),
                vec![api_error("listing finished agent pods", &e)],
            );
        }
    };
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    for r in reapable(&pods, own, SystemTime::now(), FINISHED_GRACE) {
        match api.delete(&r.name, &DeleteParams::default()).await {
            Ok(_) => removed.push(r),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => failed.push(api_error(
                &format!("removing finished agent pod {}", r.name),
                &e,
            )),
        }
    }
    (removed, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn at(secs_before_now: u64) -> String {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW - secs_before_now);
        humantime::format_rfc3339_seconds(t).to_string()
    }

    fn pod(name: &str, session: &str, phase: &str, finished_ago: Option<u64>) -> Pod {
        let state = match finished_ago {
            Some(s) => {
                serde_json::json!({"terminated": {"exitCode": 0, "finishedAt": at(s)}})
            }
            None => serde_json::json!({"running": {}}),
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"orb8.dev/session": session}},
            "status": {"phase": phase, "containerStatuses": [
                {"name": "agent", "image": "i", "imageID": "", "ready": false,
                 "restartCount": 0, "state": state}]},
        }))
        .unwrap()
    }

    fn names(r: &[Reapable]) -> Vec<&str> {
        r.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn only_long_finished_pods_of_gone_sessions() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW);
        let mut deleting = pod("deleting", "d", "Succeeded", Some(600));
        deleting.metadata.deletion_timestamp =
            Some(serde_json::from_value(serde_json::json!(at(1))).unwrap());
        let pods = vec![
            pod("gone-0", "gone", "Succeeded", Some(121)),
            pod("gone-1", "gone", "Failed", Some(120)),
            pod("fresh-0", "fresh", "Succeeded", Some(119)),
            pod("running-0", "other", "Running", None),
            pod("half-0", "half", "Failed", Some(900)),
            pod("half-1", "half", "Running", None),
            pod("mine-0", "mine", "Succeeded", Some(900)),
            pod("pending-0", "p", "Pending", None),
            deleting,
        ];
        let r = reapable(&pods, "mine", now, FINISHED_GRACE);
        assert_eq!(names(&r), vec!["gone-0", "gone-1"]);
        assert_eq!(r[0].session, "gone");
        assert_eq!(
            summary(&r).as_deref(),
            Some("removed 2 finished agent pods of gone session gone (finished over 2m ago)")
        );
        // A pod that does not say when it finished stays.
        let mut unknown = pod("unknown-0", "u", "Failed", None);
        unknown.status.as_mut().unwrap().container_statuses = None;
        assert!(reapable(&[unknown], "mine", now, FINISHED_GRACE).is_empty());
    }

    #[test]
    fn nothing_removed_says_nothing() {
        assert_eq!(summary(&[]), None);
        let two = [
            Reapable {
                name: "a".into(),
                session: "s2".into(),
            },
            Reapable {
                name: "b".into(),
                session: "s1".into(),
            },
        ];
        assert_eq!(
            summary(&two).as_deref(),
            Some("removed 2 finished agent pods of gone sessions s1, s2 (finished over 2m ago)")
        );
    }
}
