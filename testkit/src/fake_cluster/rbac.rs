//! RBAC as the API server applies it, optional in the fake cluster: ClusterRoles read from a
//! manifest ([`cluster_roles`]), bound cluster-wide or in one namespace ([`Rbac`]), and every
//! request turned into the attributes the API server authorizes (verb, resource, subresource,
//! namespace, name) and answered `403 Forbidden`, in the real server's words, when no bound
//! rule allows it.
//!
//! Verbs follow the API server's request info: `GET` of a named object is `get`, of a
//! collection `list`, or `watch` with `watch=true`; `POST` is `create`, `DELETE` of a named
//! object `delete`, of a collection `deletecollection`; `PUT` `update`, `PATCH` `patch`. The
//! namespace of `namespaces/NAME` is NAME. A port-forward (`GET` upgraded to a websocket, as
//! kube-rs does it) needs `get` on `pods/portforward`, and `create` as well, as recent API
//! servers also require for websocket upgrades.

use std::collections::BTreeMap;

use serde_json::Value;

/// One rule of a ClusterRole (no nonResourceURLs: orb8's roles use none).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PolicyRule {
    /// API groups (`""` is the core group, `"*"` any).
    pub api_groups: Vec<String>,
    /// Resources, `resource/subresource` for a subresource, `"*"` any.
    pub resources: Vec<String>,
    /// Verbs, `"*"` any.
    pub verbs: Vec<String>,
    /// Object names the rule is limited to; empty: any (as the API server reads it, a
    /// request without a name, such as a list, never matches a rule with names).
    pub resource_names: Vec<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The ClusterRoles of a multi-document YAML manifest, by name; other kinds are ignored.
pub fn cluster_roles(yaml: &str) -> Result<BTreeMap<String, Vec<PolicyRule>>, String> {
    let mut roles = BTreeMap::new();
    let mut doc = String::new();
    let mut docs = Vec::new();
    for line in yaml.lines() {
        if line.trim_end() == "---" {
            docs.push(std::mem::take(&mut doc));
        } else {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.push(doc);
    for d in docs {
        let v: Value = serde_norway::from_str(&d).map_err(|e| format!("parsing YAML: {e}"))?;
        if v["kind"] != "ClusterRole" {
            continue;
        }
        let name = v["metadata"]["name"]
            .as_str()
            .ok_or("a ClusterRole without metadata.name")?
            .to_string();
        let rules = v["rules"]
            .as_array()
            .map(|rules| {
                rules
                    .iter()
                    .map(|r| PolicyRule {
                        api_groups: strings(&r["apiGroups"]),
                        resources: strings(&r["resources"]),
                        verbs: strings(&r["verbs"]),
                        resource_names: strings(&r["resourceNames"]),
                    })
                    .collect()
            })
            .unwrap_or_default();
        roles.insert(name, rules);
    }
    Ok(roles)
}

/// What one user may do: rules bound cluster-wide (a ClusterRoleBinding) or in one namespace
/// (a RoleBinding to a ClusterRole).
#[derive(Clone, Debug)]
pub struct Rbac {
    user: String,
    grants: Vec<(Option<String>, Vec<PolicyRule>)>,
}

/// What the API server authorizes a request as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Attributes {
    pub verb: &'static str,
    /// `""` for the core group.
    pub api_group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl Rbac {
    /// Nothing allowed yet, for `user` (the name in the kubeconfig the fake writes is `tester`).
    pub fn new(user: &str) -> Rbac {
        Rbac {
            user: user.to_string(),
            grants: Vec::new(),
        }
    }

    /// Grants `rules` in every namespace and for cluster-scoped resources.
    pub fn bind_cluster(mut self, rules: &[PolicyRule]) -> Rbac {
        self.grants.push((None, rules.to_vec()));
        self
    }

    /// Grants `rules` in `namespace` only.
    pub fn bind_namespace(mut self, namespace: &str, rules: &[PolicyRule]) -> Rbac {
        self.grants
            .push((Some(namespace.to_string()), rules.to_vec()));
        self
    }

    fn allows(&self, a: &Attributes, verb: &str) -> bool {
        let resource = match &a.subresource {
            Some(s) => format!("{}/{s}", a.resource),
            None => a.resource.clone(),
        };
        let any = |list: &[String], want: &str| list.iter().any(|x| x == "*" || x == want);
        self.grants.iter().any(|(ns, rules)| {
            (ns.is_none() || *ns == a.namespace)
                && rules.iter().any(|r| {
                    any(&r.api_groups, &a.api_group)
                        && any(&r.resources, &resource)
                        && any(&r.verbs, verb)
                        && (r.resource_names.is_empty()
                            || a.name
                                .as_ref()
                                .is_some_and(|n| r.resource_names.contains(n)))
                })
        })
    }

    /// `Err(message)` in the API server's words when the request is not allowed.
    pub(super) fn check(&self, a: &Attributes) -> Result<(), String> {
        let mut verbs = vec![a.verb];
        if a.subresource.as_deref() == Some("portforward") && a.verb == "get" {
            verbs.push("create");
        }
        let Some(verb) = verbs.into_iter().find(|v| !self.allows(a, v)) else {
            return Ok(());
        };
        let what = match &a.name {
            Some(n) => format!("{} \"{n}\"", a.resource),
            None => a.resource.clone(),
        };
        let resource = match &a.subresource {
            Some(s) => format!("{}/{s}", a.resource),
            None => a.resource.clone(),
        };
        let scope = match &a.namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_string(),
        };
        Err(format!(
            "{what} is forbidden: User \"{}\" cannot {verb} resource \"{resource}\" in API group \"{}\" {scope}",
            self.user, a.api_group
        ))
    }
}

/// The attributes of a core-group (`/api/v1/...`) or named-group (`/apis/GROUP/VERSION/...`)
/// request; `None` for any other path.
pub(super) fn attributes(method: &str, parts: &[&str], watch: bool) -> Option<Attributes> {
    let (api_group, rest) = match parts {
        ["api", "v1", rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => (group.to_string(), rest),
        _ => return None,
    };
    let (namespace, rest): (Option<String>, &[&str]) = match rest {
        ["namespaces", ns, more @ ..] if !more.is_empty() => (Some(ns.to_string()), more),
        _ => (None, rest),
    };
    let (resource, name, subresource) = match rest {
        [r] => (r.to_string(), None, None),
        [r, n] => (r.to_string(), Some(n.to_string()), None),
        [r, n, s] => (r.to_string(), Some(n.to_string()), Some(s.to_string())),
        _ => return None,
    };
    let namespace = match (&namespace, resource.as_str(), &name) {
        (None, "namespaces", Some(n)) => Some(n.clone()),
        _ => namespace,
    };
    let verb = match (method, name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    };
    Some(Attributes {
        verb,
        api_group,
        resource,
        subresource,
        namespace,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "\
# comment
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: reader
rules:
  - apiGroups: [\"\"]
    resources: [\"pods\", \"services\"]
    verbs: [\"get\", \"list\"]
---
kind: ClusterRole
metadata:
  name: forwarder
rules:
  - apiGroups: [\"\"]
    resources: [\"pods/portforward\"]
    verbs: [\"get\", \"create\"]
";

    fn attrs(method: &str, path: &str, watch: bool) -> Attributes {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        attributes(method, &parts, watch).expect("a core path")
    }

    #[test]
    fn requests_read_as_the_api_server_reads_them() {
        let a = attrs("GET", "/api/v1/namespaces/a/pods/p/portforward", false);
        assert_eq!(
            (a.verb, a.resource.as_str(), a.subresource.as_deref()),
            ("get", "pods", Some("portforward"))
        );
        assert_eq!(attrs("GET", "/api/v1/pods", true).verb, "watch");
        assert_eq!(
            attrs("GET", "/api/v1/namespaces/a/pods", false).verb,
            "list"
        );
        assert_eq!(
            attrs("DELETE", "/api/v1/namespaces/a/pods", false).verb,
            "deletecollection"
        );
        let ns = attrs("GET", "/api/v1/namespaces/orb8-system", false);
        assert_eq!(
            (ns.verb, ns.namespace.as_deref(), ns.name.as_deref()),
            ("get", Some("orb8-system"), Some("orb8-system"))
        );
        assert_eq!(attrs("POST", "/api/v1/namespaces", false).namespace, None);
        let d = attrs("GET", "/apis/apps/v1/deployments", false);
        assert_eq!(
            (d.api_group.as_str(), d.verb, d.resource.as_str()),
            ("apps", "list", "deployments")
        );
        assert!(attributes("GET", &["version"], false).is_none());
    }

    #[test]
    fn rules_allow_and_refuse_in_the_servers_words() {
        let roles = cluster_roles(MANIFEST).unwrap();
        assert_eq!(
            roles.keys().collect::<Vec<_>>(),
            vec!["forwarder", "reader"]
        );
        let rbac = Rbac::new("alice")
            .bind_cluster(&roles["reader"])
            .bind_namespace("agents", &roles["forwarder"]);
        assert_eq!(rbac.check(&attrs("GET", "/api/v1/services", false)), Ok(()));
        assert_eq!(
            rbac.check(&attrs("GET", "/api/v1/services", true)),
            Err("services is forbidden: User \"alice\" cannot watch resource \"services\" in API group \"\" at the cluster scope".into())
        );
        assert_eq!(
            rbac.check(&attrs(
                "GET",
                "/api/v1/namespaces/agents/pods/x/portforward",
                false
            )),
            Ok(())
        );
        assert_eq!(
            rbac.check(&attrs("GET", "/api/v1/namespaces/b/pods/x/portforward", false)),
            Err("pods \"x\" is forbidden: User \"alice\" cannot get resource \"pods/portforward\" in API group \"\" in the namespace \"b\"".into())
        );
        assert_eq!(
            rbac.check(&attrs("DELETE", "/api/v1/namespaces/agents/pods/x", false)),
            Err("pods \"x\" is forbidden: User \"alice\" cannot delete resource \"pods\" in API group \"\" in the namespace \"agents\"".into())
        );
        let get_only = Rbac::new("bob").bind_cluster(&[PolicyRule {
            api_groups: vec!["".into()],
            resources: vec!["pods/portforward".into()],
            verbs: vec!["get".into()],
            ..Default::default()
        }]);
        assert_eq!(
            get_only.check(&attrs("GET", "/api/v1/namespaces/a/pods/x/portforward", false)),
            Err("pods \"x\" is forbidden: User \"bob\" cannot create resource \"pods/portforward\" in API group \"\" in the namespace \"a\"".into())
        );
    }

    #[test]
    fn named_groups_and_resource_names() {
        let rbac = Rbac::new("carol").bind_namespace(
            "agents",
            &[
                PolicyRule {
                    api_groups: vec!["discovery.k8s.io".into()],
                    resources: vec!["endpointslices".into()],
                    verbs: vec!["list".into()],
                    ..Default::default()
                },
                PolicyRule {
                    api_groups: vec!["".into()],
                    resources: vec!["secrets".into()],
                    verbs: vec!["get".into()],
                    resource_names: vec!["token".into()],
                },
            ],
        );
        let slices = "/apis/discovery.k8s.io/v1/namespaces/agents/endpointslices";
        assert_eq!(rbac.check(&attrs("GET", slices, false)), Ok(()));
        assert_eq!(
            rbac.check(&attrs("GET", "/api/v1/namespaces/agents/endpoints", false)),
            Err("endpoints is forbidden: User \"carol\" cannot list resource \"endpoints\" in API group \"\" in the namespace \"agents\"".into())
        );
        assert_eq!(
            rbac.check(&attrs(
                "GET",
                "/api/v1/namespaces/agents/secrets/token",
                false
            )),
            Ok(())
        );
        assert_eq!(
            rbac.check(&attrs("GET", "/api/v1/namespaces/agents/secrets/other", false)),
            Err("secrets \"other\" is forbidden: User \"carol\" cannot get resource \"secrets\" in API group \"\" in the namespace \"agents\"".into())
        );
        assert!(
            rbac.check(&attrs("GET", "/api/v1/namespaces/agents/secrets", false))
                .is_err()
        );
    }
}
