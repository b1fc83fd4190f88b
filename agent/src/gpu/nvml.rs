//! The NVML source, through `nvml-wrapper`: `libnvidia-ml.so` is loaded when the agent starts
//! (dlopen), so an agent built here runs on every node, and a node without the library or the
//! driver gets [`NO_DRIVER`](super::NO_DRIVER) and everything else as usual.
//!
//! Each call that a GPU does not support (power on some boards, ECC on consumer cards,
//! per-process utilization before Maxwell) leaves its field empty; only failing to enumerate
//! the GPUs fails the sample.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::{Clock, EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::ProcessInfo;

use super::model::{GpuReading, GpuSample, MigSample, ProcessSample};
use super::{GpuError, GpuSource, NO_DRIVER};

/// NVML, initialised.
pub struct NvmlSource {
    nvml: Nvml,
}

fn nvml_err(call: &'static str) -> impl Fn(NvmlError) -> GpuError {
    move |e| GpuError::Nvml {
        call,
        reason: e.to_string(),
    }
}

impl NvmlSource {
    /// Loads and starts NVML; `Err` is the one line `status` shows instead.
    pub fn open() -> Result<NvmlSource, String> {
        match Nvml::init() {
            Ok(nvml) => Ok(NvmlSource { nvml }),
            Err(e @ (NvmlError::LibloadingError(_) | NvmlError::LibraryNotFound)) => {
                Err(format!("{NO_DRIVER} (libnvidia-ml.so: {e})"))
            }
            Err(NvmlError::DriverNotLoaded) => Err(format!(
                "{NO_DRIVER} (NVML is installed, the driver is not loaded)"
            )),
            Err(e) => Err(format!("NVML could not start: {e}")),
        }
    }

    /// A MIG device's GPU and compute instance ids (raw NVML: the wrapper has no call).
    fn mig_ids(&self, dev: &nvml_wrapper::Device<'_>) -> (Option<u32>, Option<u32>) {
        let lib = self.nvml.lib();
        let mut gi: std::os::raw::c_uint = 0;
        let mut ci: std::os::raw::c_uint = 0;
        let gi_ok = lib.nvmlDeviceGetGpuInstanceId.is_ok()
            // SAFETY: the symbol is loaded (checked), `dev` is a live handle of this NVML, and
            // `gi` is a valid out-pointer for the call's duration.
            && unsafe { lib.nvmlDeviceGetGpuInstanceId(dev.handle(), &mut gi) } == 0;
        let ci_ok = lib.nvmlDeviceGetComputeInstanceId.is_ok()
            // SAFETY: as above, for the compute instance id.
            && unsafe { lib.nvmlDeviceGetComputeInstanceId(dev.handle(), &mut ci) } == 0;
        (gi_ok.then_some(gi), ci_ok.then_some(ci))
    }
}

fn memory(m: &UsedGpuMemory) -> u64 {
    match m {
        UsedGpuMemory::Used(b) => *b,
        UsedGpuMemory::Unavailable => 0,
    }
}

/// The NVML timestamp (µs since the epoch) `window` ago.
fn since(window: Duration) -> u64 {
    SystemTime::now()
        .checked_sub(window)
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl GpuSource for NvmlSource {
    fn kind(&self) -> &'static str {
        "nvml"
    }

    fn describe(&self) -> String {
        "NVML".into()
    }

    fn sample(&self, window: Duration) -> Result<GpuReading, GpuError> {
        let n = self.nvml.device_count().map_err(nvml_err("device count"))?;
        let mut gpus = Vec::with_capacity(n as usize);
        for index in 0..n {
            let dev = self
                .nvml
                .device_by_index(index)
                .map_err(nvml_err("device by index"))?;
            let mem = dev.memory_info().ok();
            let util = dev.utilization_rates().ok();
            let mig_enabled = dev.mig_mode().map(|m| m.current == 1).unwrap_or(false);
            let mut mig_devices = Vec::new();
            if mig_enabled {
                let max = dev.mig_device_count().unwrap_or(0);
                for i in 0..max {
                    let Ok(m) = dev.mig_device_by_index(i) else {
                        continue;
                    };
                    let (gi, ci) = self.mig_ids(&m);
                    let mm = m.memory_info().ok();
                    mig_devices.push(MigSample {
                        index: i,
                        uuid: m.uuid().unwrap_or_default(),
                        name: m.name().unwrap_or_default(),
                        gpu_instance_id: gi.unwrap_or(u32::MAX),
                        compute_instance_id: ci.unwrap_or(u32::MAX),
                        memory_used_bytes: mm.as_ref().map_or(0, |x| x.used),
                        memory_total_bytes: mm.as_ref().map_or(0, |x| x.total),
                    });
                }
            }
            let utilization: HashMap<u32, (u32, u32)> = dev
                .process_utilization_stats(since(window))
                .unwrap_or_default()
                .into_iter()
                .map(|s| (s.pid, (s.sm_util, s.mem_util)))
                .collect();
            let mig_of = |p: &ProcessInfo| -> Option<String> {
                let (gi, ci) = (p.gpu_instance_id?, p.compute_instance_id?);
                mig_devices
                    .iter()
                    .find(|m| m.gpu_instance_id == gi && m.compute_instance_id == ci)
                    .map(|m| m.uuid.clone())
            };
            let mut processes = Vec::new();
            for (kind, list) in [
                ("compute", dev.running_compute_processes()),
                ("graphics", dev.running_graphics_processes()),
            ] {
                for p in list.unwrap_or_default() {
                    let u = utilization.get(&p.pid);
                    processes.push(ProcessSample {
                        pid: p.pid,
                        memory_used_bytes: memory(&p.used_gpu_memory),
                        sm_util_percent: u.map(|u| u.0),
                        mem_util_percent: u.map(|u| u.1),
                        kind: kind.to_string(),
                        mig_uuid: mig_of(&p),
                    });
                }
            }
            gpus.push(GpuSample {
                index,
                uuid: dev.uuid().map_err(nvml_err("device uuid"))?,
                name: dev.name().unwrap_or_default(),
                pci_bus_id: dev.pci_info().map(|p| p.bus_id).unwrap_or_default(),
                utilization_gpu_percent: util.as_ref().map(|u| u.gpu),
                utilization_memory_percent: util.as_ref().map(|u| u.memory),
                memory_used_bytes: mem.as_ref().map_or(0, |m| m.used),
                memory_total_bytes: mem.as_ref().map_or(0, |m| m.total),
                power_draw_milliwatts: dev.power_usage().ok(),
                power_limit_milliwatts: dev.enforced_power_limit().ok(),
                temperature_celsius: dev.temperature(TemperatureSensor::Gpu).ok(),
                sm_clock_mhz: dev.clock_info(Clock::SM).ok(),
                memory_clock_mhz: dev.clock_info(Clock::Memory).ok(),
                ecc_corrected: dev
                    .total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile)
                    .ok(),
                ecc_uncorrected: dev
                    .total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)
                    .ok(),
                last_xid: None,
                mig_enabled,
                mig_devices,
                processes,
            });
        }
        Ok(GpuReading {
            driver_version: self.nvml.sys_driver_version().unwrap_or_default(),
            gpus,
        })
    }
}
