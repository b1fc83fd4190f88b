//! One request as a Kubernetes API-server double recorded it (the fake cluster's API server,
//! a `tower_test` mock), so tests can assert on method, path, decoded query and body.

use serde_json::Value;

/// One request an API-server double received, and the status code it answered.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, e.g. `/api/v1/namespaces/a/pods`.
    pub path: String,
    /// The query, decoded, in order.
    pub query: Vec<(String, String)>,
    /// The JSON body, if any.
    pub body: Option<Value>,
    /// The status code answered (0 until answered).
    pub code: u16,
}

impl ApiRequest {
    /// A request with `raw_query` (as on the wire, percent-encoded) decoded, the body parsed as
    /// JSON when it is JSON, not yet answered.
    pub fn new(method: &str, path: &str, raw_query: &str, body: &[u8]) -> ApiRequest {
        ApiRequest {
            method: method.to_string(),
            path: path.to_string(),
            query: form_urlencoded::parse(raw_query.as_bytes())
                .into_owned()
                .collect(),
            body: serde_json::from_slice(body).ok(),
            code: 0,
        }
    }

    /// A query parameter.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether this is a watch (`watch=true` or `watch=1`).
    pub fn is_watch(&self) -> bool {
        self.param("watch").is_some_and(|w| w == "true" || w == "1")
    }

    /// `METHOD path?k=v&...` (decoded) → code.
    pub fn line(&self) -> String {
        let q: Vec<String> = self.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if q.is_empty() {
            format!("{} {} -> {}", self.method, self.path, self.code)
        } else {
            format!(
                "{} {}?{} -> {}",
                self.method,
                self.path,
                q.join("&"),
                self.code
            )
        }
    }
}
