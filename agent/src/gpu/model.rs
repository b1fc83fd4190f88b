//! What a GPU source reads, as plain data: one [`GpuReading`] per sample, with the node's GPUs,
//! their MIG instances and the processes holding contexts on them. The recorded-sample source
//! reads exactly this as JSON, so the field names are a file format: fields a source cannot
//! give are `None` (absent in JSON), never made up.

use serde::{Deserialize, Serialize};

/// One sample of every GPU on the node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuReading {
    /// The driver's version ("550.54.15"), empty when unknown.
    #[serde(default)]
    pub driver_version: String,
    /// The GPUs, by index.
    #[serde(default)]
    pub gpus: Vec<GpuSample>,
}

/// One physical GPU.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSample {
    /// NVML's index.
    pub index: u32,
    /// `GPU-<uuid>`.
    pub uuid: String,
    /// The model.
    #[serde(default)]
    pub name: String,
    /// PCI bus id (`00000000:3B:00.0`).
    #[serde(default)]
    pub pci_bus_id: String,
    /// Percent of the last sample period a kernel ran.
    #[serde(default)]
    pub utilization_gpu_percent: Option<u32>,
    /// Percent of the last sample period memory was read or written.
    #[serde(default)]
    pub utilization_memory_percent: Option<u32>,
    /// Frame buffer memory in use, bytes.
    #[serde(default)]
    pub memory_used_bytes: u64,
    /// Frame buffer memory, bytes.
    #[serde(default)]
    pub memory_total_bytes: u64,
    /// Power draw, milliwatts.
    #[serde(default)]
    pub power_draw_milliwatts: Option<u32>,
    /// Enforced power limit, milliwatts.
    #[serde(default)]
    pub power_limit_milliwatts: Option<u32>,
    /// Core temperature, °C.
    #[serde(default)]
    pub temperature_celsius: Option<u32>,
    /// SM clock, MHz.
    #[serde(default)]
    pub sm_clock_mhz: Option<u32>,
    /// Memory clock, MHz.
    #[serde(default)]
    pub memory_clock_mhz: Option<u32>,
    /// Volatile corrected ECC errors.
    #[serde(default)]
    pub ecc_corrected: Option<u64>,
    /// Volatile uncorrected ECC errors.
    #[serde(default)]
    pub ecc_uncorrected: Option<u64>,
    /// The last XID error reported.
    #[serde(default)]
    pub last_xid: Option<u64>,
    /// Whether MIG mode is on.
    #[serde(default)]
    pub mig_enabled: bool,
    /// Its MIG instances.
    #[serde(default)]
    pub mig_devices: Vec<MigSample>,
    /// Processes with a context on it (or on one of its MIG instances).
    #[serde(default)]
    pub processes: Vec<ProcessSample>,
}

/// One MIG instance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigSample {
    /// Index among its GPU's MIG devices.
    pub index: u32,
    /// `MIG-<uuid>`.
    pub uuid: String,
    /// Profile or device name.
    #[serde(default)]
    pub name: String,
    /// GPU instance id.
    #[serde(default)]
    pub gpu_instance_id: u32,
    /// Compute instance id.
    #[serde(default)]
    pub compute_instance_id: u32,
    /// Memory in use, bytes.
    #[serde(default)]
    pub memory_used_bytes: u64,
    /// Memory, bytes.
    #[serde(default)]
    pub memory_total_bytes: u64,
}

/// A process holding a GPU context.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSample {
    /// Host PID.
    pub pid: u32,
    /// GPU memory it uses, bytes (0 where the driver does not say).
    #[serde(default)]
    pub memory_used_bytes: u64,
    /// SM utilization over the sample window, percent.
    #[serde(default)]
    pub sm_util_percent: Option<u32>,
    /// Memory utilization over the sample window, percent.
    #[serde(default)]
    pub mem_util_percent: Option<u32>,
    /// `compute` or `graphics`.
    #[serde(default = "compute")]
    pub kind: String,
    /// The MIG instance it runs on, when the GPU is in MIG mode.
    #[serde(default)]
    pub mig_uuid: Option<String>,
}

fn compute() -> String {
    "compute".into()
}
