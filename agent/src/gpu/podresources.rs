//! The kubelet's pod-resources API (v1, a unix socket): which devices each container was given.
//! One connection per question, with a deadline, so a kubelet that restarts (and replaces its
//! socket) or hangs costs one answer, never the agent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use orb8_proto::podresources::{
    AllocatableResourcesRequest, ListPodResourcesRequest,
    pod_resources_lister_client::PodResourcesListerClient,
};
use tonic::transport::{Channel, Endpoint};

use super::join::{self, Allocated};

/// Why the kubelet's allocations could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PodResourcesError {
    /// The socket is not there (not a Kubernetes node, or not mounted into the agent pod).
    #[error("no kubelet pod-resources socket at {path}")]
    NoSocket {
        /// The socket's path.
        path: PathBuf,
    },
    /// Connecting failed.
    #[error("connecting to the kubelet at {path}: {reason}")]
    Connect {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The kubelet answered a call with an error, or not in time.
    #[error("kubelet pod-resources {rpc}: {reason}")]
    Call {
        /// `List` or `GetAllocatableResources`.
        rpc: &'static str,
        /// Why.
        reason: String,
    },
}

/// What the kubelet said: GPU devices allocated to containers, and the GPU devices it can
/// allocate (empty, with `allocatable_error` set, where it does not implement that call).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocations {
    /// One entry per (container, GPU device).
    pub allocated: Vec<Allocated>,
    /// GPU device IDs the kubelet can allocate.
    pub allocatable: Vec<String>,
    /// Why `allocatable` could not be read.
    pub allocatable_error: Option<String>,
}

async fn channel(path: &Path, timeout: Duration) -> Result<Channel, PodResourcesError> {
    if !path.exists() {
        return Err(PodResourcesError::NoSocket {
            path: path.to_path_buf(),
        });
    }
    let socket = path.to_path_buf();
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let socket = socket.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(socket).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    let endpoint = Endpoint::from_static("http://localhost")
        .connect_timeout(timeout)
        .timeout(timeout);
    let connect = endpoint.connect_with_connector(connector);
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(PodResourcesError::Connect {
            path: path.to_path_buf(),
            reason: root_cause(&e),
        }),
        Err(_) => Err(PodResourcesError::Connect {
            path: path.to_path_buf(),
            reason: format!("no answer within {timeout:?}"),
        }),
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Asks the kubelet at `socket` for `List` and `GetAllocatableResources`, each within
/// `timeout`.
pub async fn read(socket: &Path, timeout: Duration) -> Result<Allocations, PodResourcesError> {
    let mut client = PodResourcesListerClient::new(channel(socket, timeout).await?);
    let call = |rpc, e: tonic::Status| PodResourcesError::Call {
        rpc,
        reason: format!("{} ({:?})", e.message(), e.code()),
    };
    let list = client
        .list(ListPodResourcesRequest {})
        .await
        .map_err(|e| call("List", e))?
        .into_inner();
    let (allocatable, allocatable_error) = match client
        .get_allocatable_resources(AllocatableResourcesRequest {})
        .await
    {
        Ok(r) => (join::allocatable(r.get_ref()), None),
        Err(e) => (
            Vec::new(),
            Some(call("GetAllocatableResources", e).to_string()),
        ),
    };
    Ok(Allocations {
        allocated: join::allocated(&list),
        allocatable,
        allocatable_error,
    })
}
