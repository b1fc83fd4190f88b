//! GPU telemetry: where the numbers come from ([`GpuSource`]: NVML, a DCGM exporter's metrics,
//! or a recorded sample), who the kubelet gave each device to ([`podresources`]), and which
//! container each GPU process runs in (the agent's cgroup resolver, [`crate::containers`]).
//!
//! A node without a GPU source is normal: [`Gpus`] then says why ("no NVIDIA driver on this
//! node") in `status` and in every `GetGpus` answer, and the rest of the agent is untouched.
//!
//! Modules form a stack: [`model`] (plain data) under [`join`] (pure joins) under the sources
//! ([`recorded`], [`nvml`], [`dcgm`]) and the kubelet client ([`podresources`]); this module
//! chooses a source and answers `GetGpus`.

pub mod dcgm;
pub mod join;
pub mod model;
pub mod nvml;
pub mod podresources;
pub mod recorded;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use orb8_proto as pb;

use crate::defaults;
use model::GpuReading;

/// Said wherever a node has no GPU numbers because NVML cannot be loaded or started.
pub const NO_DRIVER: &str = "no NVIDIA driver on this node";

/// Why GPU numbers could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// An NVML call failed.
    #[error("NVML {call}: {reason}")]
    Nvml {
        /// The call.
        call: &'static str,
        /// NVML's error.
        reason: String,
    },
    /// The DCGM exporter could not be read or its answer makes no sense.
    #[error("DCGM exporter at {url}: {reason}")]
    Dcgm {
        /// Its metrics URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The recorded-sample file could not be read.
    #[error("recorded GPU samples {path}: {reason}")]
    Recorded {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A source of GPU readings. Calls may block (NVML, HTTP): callers run them off the async
/// threads.
pub trait GpuSource: Send + Sync {
    /// `nvml`, `dcgm-exporter` or `recorded`.
    fn kind(&self) -> &'static str;
    /// The source in a few words, with where it reads from.
    fn describe(&self) -> String;
    /// Reads every GPU now; per-process utilization covers the last `window`.
    fn sample(&self, window: Duration) -> Result<GpuReading, GpuError>;
}

/// How the agent finds its GPU source and the kubelet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuConfig {
    /// Play readings from this file instead of asking the hardware.
    pub recorded: Option<PathBuf>,
    /// The DCGM exporter's metrics URL to read when NVML is absent (`None`: look at
    /// [`defaults::DCGM_EXPORTER_URL`], and use it only if it answers).
    pub dcgm_exporter: Option<String>,
    /// The kubelet's pod-resources socket.
    pub pod_resources_socket: PathBuf,
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            recorded: None,
            dcgm_exporter: None,
            pod_resources_socket: PathBuf::from(pb::POD_RESOURCES_SOCKET),
        }
    }
}

/// The node's GPU source (or why it has none) and the kubelet's socket.
pub struct Gpus {
    source: Option<Arc<dyn GpuSource>>,
    unavailable: String,
    status: pb::GpuStatus,
    socket: PathBuf,
}

impl std::fmt::Debug for Gpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpus")
            .field("status", &self.status)
            .field("socket", &self.socket)
            .finish()
    }
}

impl Gpus {
    /// Chooses the source: the recorded file when given (an unreadable one is an error), else
    /// NVML, else a DCGM exporter that answers, else none (with the reason).
    pub fn detect(config: &GpuConfig) -> Result<Gpus, GpuError> {
        if let Some(path) = &config.recorded {
            let source = recorded::RecordedSource::open(path)?;
            return Ok(Gpus::with_source(
                Arc::new(source),
                &config.pod_resources_socket,
            ));
        }
        let nvml_missing = match nvml::NvmlSource::open() {
            Ok(source) => {
                return Ok(Gpus::with_source(
                    Arc::new(source),
                    &config.pod_resources_socket,
                ));
            }
            Err(why) => why,
        };
        let (url, asked) = match &config.dcgm_exporter {
            Some(u) => (u.clone(), true),
            None => (defaults::DCGM_EXPORTER_URL.to_string(), false),
        };
        let dcgm = dcgm::DcgmSource::new(&url, nvml_missing.clone());
        match dcgm.sample(defaults::GPU_SAMPLE_WINDOW) {
            Ok(_) => Ok(Gpus::with_source(
                Arc::new(dcgm),
                &config.pod_resources_socket,
            )),
            Err(e) => {
                let unavailable = if asked {
                    format!("{nvml_missing}; {e}")
                } else {
                    nvml_missing
                };
                Ok(Gpus::none(unavailable, &config.pod_resources_socket))
            }
        }
    }

    /// Uses `source`.
    pub fn with_source(source: Arc<dyn GpuSource>, socket: &Path) -> Gpus {
        let (summary, gpus) = match source.sample(defaults::GPU_SAMPLE_WINDOW) {
            Ok(r) => {
                let n = r.gpus.len();
                let driver = if r.driver_version.is_empty() {
                    String::new()
                } else {
                    format!(", driver {}", r.driver_version)
                };
                (
                    format!(
                        "{n} GPU{} ({}{driver})",
                        if n == 1 { "" } else { "s" },
                        source.describe()
                    ),
                    n as u32,
                )
            }
            Err(e) => (format!("{}: {e}", source.describe()), 0),
        };
        Gpus {
            status: pb::GpuStatus {
                source: source.kind().to_string(),
                summary,
                gpus,
            },
            source: Some(source),
            unavailable: String::new(),
            socket: socket.to_path_buf(),
        }
    }

    /// No source, for the reason given.
    pub fn none(why: String, socket: &Path) -> Gpus {
        Gpus {
            status: pb::GpuStatus {
                source: String::new(),
                summary: why.clone(),
                gpus: 0,
            },
            source: None,
            unavailable: why,
            socket: socket.to_path_buf(),
        }
    }

    /// The `status` line.
    pub fn status(&self) -> pb::GpuStatus {
        self.status.clone()
    }

    /// Samples the GPUs (over `window`), asks the kubelet, and joins them.
    pub async fn get(&self, node: &str, window: Duration) -> pb::GetGpusResponse {
        let mut resp = pb::GetGpusResponse {
            node: node.to_string(),
            time_unix_nanos: unix_nanos(SystemTime::now()),
            ..Default::default()
        };
        let reading = match &self.source {
            None => {
                resp.unavailable = self.unavailable.clone();
                GpuReading::default()
            }
            Some(source) => {
                resp.source = source.describe();
                let s = source.clone();
                match tokio::task::spawn_blocking(move || s.sample(window)).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        resp.unavailable = e.to_string();
                        GpuReading::default()
                    }
                    Err(e) => {
                        resp.unavailable = format!("GPU sampling stopped: {e}");
                        GpuReading::default()
                    }
                }
            }
        };
        resp.driver_version = reading.driver_version.clone();
        match podresources::read(&self.socket, defaults::POD_RESOURCES_TIMEOUT).await {
            Ok(a) => {
                resp.allocations = a
                    .allocated
                    .iter()
                    .map(|x| join::resolve(x, &reading))
                    .collect();
                resp.allocatable_device_ids = a.allocatable;
                if let Some(e) = a.allocatable_error {
                    resp.pod_resources_error = e;
                }
            }
            Err(e) => resp.pod_resources_error = e.to_string(),
        }
        resp.gpus = join::gpus(&reading, &place_process);
        resp
    }
}

fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Where process `pid` lives: its `comm` and cgroup, and the pod and container that cgroup
/// names (the same resolver flows use). A process that is gone has everything empty.
pub fn place_process(pid: u32) -> join::ProcessPlace {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default();
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let cgroup = crate::cgroups::cgroup2_path(&text)
        .filter(|p| *p != "/")
        .map(String::from)
        .or_else(|| {
            text.lines()
                .filter_map(|l| l.splitn(3, ':').nth(2))
                .find(|p| crate::containers::parse_cgroup_path(p).is_some())
                .map(String::from)
        })
        .unwrap_or_default();
    let container = crate::containers::container_of_process(&text);
    join::ProcessPlace {
        comm,
        cgroup,
        pod_uid: container
            .as_ref()
            .map(|c| c.pod_uid.clone())
            .unwrap_or_default(),
        container_id: container.and_then(|c| c.container_id).unwrap_or_default(),
    }
}
