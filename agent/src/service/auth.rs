//! The per-session token: every request must carry `authorization: Bearer <token>`, compared
//! in constant time.

use std::sync::Arc;

use orb8_proto as pb;
use tonic::{Request, Status};

/// Checks the per-session token on every request.
#[derive(Clone)]
pub struct TokenCheck {
    expected: Arc<String>,
}

impl TokenCheck {
    /// Accepts requests carrying `authorization: Bearer <token>`.
    pub fn new(token: &str) -> Self {
        TokenCheck {
            expected: Arc::new(pb::bearer(token)),
        }
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let got = req
            .metadata()
            .get(pb::TOKEN_METADATA_KEY)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if constant_time_eq(got, self.expected.as_bytes()) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("missing or wrong session token"))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor as _;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"Bearer abc", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer abd", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer ab", b"Bearer abc"));
    }

    #[test]
    fn requests_need_the_bearer_token() {
        let mut check = TokenCheck::new("s3cret-token-0123456789");
        let with = |value: Option<&str>| {
            let mut r = Request::new(());
            if let Some(v) = value {
                r.metadata_mut()
                    .insert(pb::TOKEN_METADATA_KEY, v.parse().unwrap());
            }
            r
        };
        assert!(
            check
                .call(with(Some(&pb::bearer("s3cret-token-0123456789"))))
                .is_ok()
        );
        for bad in [None, Some("s3cret-token-0123456789"), Some("Bearer nope")] {
            let e = check.call(with(bad)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
    }
}
