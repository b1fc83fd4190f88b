//! Label and field selectors as the API server applies them to lists and watches.

use serde_json::Value;

use crate::api_request::ApiRequest;

/// A selector term: `key=value`, `key==value`, `key!=value`, `key` or `!key`.
pub(super) enum Term {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
}

pub(super) fn parse_terms(selector: &str) -> Vec<Term> {
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
pub(super) struct Selection {
    namespace: Option<String>,
    labels: Vec<Term>,
    fields: Vec<Term>,
}

pub(super) const FIELDS: [&str; 4] = [
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "status.phase",
];

pub(super) fn field(object: &Value, path: &str) -> Option<String> {
    path.split('.')
        .try_fold(object, |v, k| v.get(k))
        .and_then(|v| v.as_str().map(String::from))
}

impl Selection {
    pub(super) fn new(namespace: Option<String>, seen: &ApiRequest) -> Result<Selection, String> {
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

    pub(super) fn matches(&self, object: &Value) -> bool {
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
