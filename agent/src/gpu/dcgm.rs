//! The DCGM-exporter source: where the agent has no NVML (its image lacks the library, or the
//! node's GPUs are managed by NVIDIA's GPU operator) but a `dcgm-exporter` serves Prometheus
//! metrics on the host network, the agent reads those. It says so: the source is
//! `dcgm-exporter <url>`, and `status` names it.
//!
//! What the exporter's default counters give: utilization (`DCGM_FI_DEV_GPU_UTIL`,
//! `DCGM_FI_DEV_MEM_COPY_UTIL`), frame buffer in MiB (`DCGM_FI_DEV_FB_USED`, `_FB_FREE`), power
//! in W (`DCGM_FI_DEV_POWER_USAGE`), temperature, SM and memory clocks, the last XID
//! (`DCGM_FI_DEV_XID_ERRORS`), ECC totals when enabled. Per-GPU series carry `gpu`, `UUID`,
//! `modelName` and `pci_bus_id` labels; MIG series add `GPU_I_ID` and `GPU_I_PROFILE` (no MIG
//! UUID). It has no per-process numbers and no power limit: those fields stay empty.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::time::Duration;

use super::model::{GpuReading, GpuSample, MigSample};
use super::{GpuError, GpuSource};
use crate::defaults;

/// A DCGM exporter's metrics endpoint.
#[derive(Debug)]
pub struct DcgmSource {
    url: String,
    why_not_nvml: String,
}

impl DcgmSource {
    /// Reads `url` (`http://HOST:PORT/PATH`); `why_not_nvml` is said alongside.
    pub fn new(url: &str, why_not_nvml: String) -> DcgmSource {
        DcgmSource {
            url: url.to_string(),
            why_not_nvml,
        }
    }

    fn fetch(&self) -> Result<String, GpuError> {
        let err = |reason: String| GpuError::Dcgm {
            url: self.url.clone(),
            reason,
        };
        let rest = self
            .url
            .strip_prefix("http://")
            .ok_or_else(|| err("only http:// URLs are read".into()))?;
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        let addr = hostport
            .to_socket_addrs()
            .map_err(|e| err(e.to_string()))?
            .next()
            .ok_or_else(|| err("no address".into()))?;
        let t = defaults::DCGM_TIMEOUT;
        let mut s = TcpStream::connect_timeout(&addr, t).map_err(|e| err(e.to_string()))?;
        s.set_read_timeout(Some(t))
            .map_err(|e| err(e.to_string()))?;
        s.set_write_timeout(Some(t))
            .map_err(|e| err(e.to_string()))?;
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: {hostport}\r\nAccept: text/plain\r\n\r\n"
        )
        .map_err(|e| err(e.to_string()))?;
        let mut body = Vec::new();
        s.take(defaults::DCGM_MAX_BYTES)
            .read_to_end(&mut body)
            .map_err(|e| err(e.to_string()))?;
        let text = String::from_utf8_lossy(&body);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| err("not an HTTP answer".into()))?;
        let status = head.lines().next().unwrap_or_default();
        if !status.contains(" 200") {
            return Err(err(format!("answered {status}")));
        }
        Ok(body.to_string())
    }
}

impl GpuSource for DcgmSource {
    fn kind(&self) -> &'static str {
        "dcgm-exporter"
    }

    fn describe(&self) -> String {
        format!("dcgm-exporter {}; {}", self.url, self.why_not_nvml)
    }

    fn sample(&self, _window: Duration) -> Result<GpuReading, GpuError> {
        let text = self.fetch()?;
        let reading = parse(&text);
        if reading.gpus.is_empty() {
            return Err(GpuError::Dcgm {
                url: self.url.clone(),
                reason: "no DCGM_FI_DEV_* series in its answer".into(),
            });
        }
        Ok(reading)
    }
}

/// One sample line: metric name, labels, value.
pub fn parse_line(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => {
            let (n, v) = line.split_once(char::is_whitespace)?;
            return Some((n, BTreeMap::new(), value(v)?));
        }
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest.char_indices().peekable();
    let mut key = String::new();
    let end;
    loop {
        let (i, c) = chars.next()?;
        match c {
            '}' => {
                end = i + 1;
                break;
            }
            ',' | ' ' => {}
            '=' => {
                if chars.next()?.1 != '"' {
                    return None;
                }
                let mut v = String::new();
                loop {
                    let (_, c) = chars.next()?;
                    match c {
                        '\\' => match chars.next()?.1 {
                            'n' => v.push('\n'),
                            other => v.push(other),
                        },
                        '"' => break,
                        other => v.push(other),
                    }
                }
                labels.insert(std::mem::take(&mut key), v);
            }
            other => key.push(other),
        }
    }
    Some((name, labels, value(&rest[end..])?))
}

fn value(s: &str) -> Option<f64> {
    s.split_whitespace().next()?.parse().ok()
}

/// The GPUs in a DCGM exporter's answer.
pub fn parse(text: &str) -> GpuReading {
    let mut gpus: BTreeMap<u32, GpuSample> = BTreeMap::new();
    let mut migs: BTreeMap<(u32, u32), (MigSample, u64)> = BTreeMap::new();
    let mut driver = String::new();
    const MIB: u64 = 1 << 20;
    for (name, labels, v) in text.lines().filter_map(parse_line) {
        let Some(field) = name.strip_prefix("DCGM_FI_DEV_") else {
            continue;
        };
        let Some(index) = labels.get("gpu").and_then(|g| g.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(d) = labels.get("DCGM_FI_DRIVER_VERSION") {
            driver.clone_from(d);
        }
        let as_u32 = v.max(0.0).round() as u32;
        let as_u64 = v.max(0.0).round() as u64;
        if let Some(gi) = labels.get("GPU_I_ID").and_then(|g| g.parse::<u32>().ok()) {
            let (m, free) = migs.entry((index, gi)).or_insert_with(|| {
                (
                    MigSample {
                        index: gi,
                        uuid: String::new(),
                        name: labels.get("GPU_I_PROFILE").cloned().unwrap_or_default(),
                        gpu_instance_id: gi,
                        compute_instance_id: u32::MAX,
                        ..Default::default()
                    },
                    0,
                )
            });
            match field {
                "FB_USED" => m.memory_used_bytes = as_u64 * MIB,
                "FB_FREE" => *free = as_u64 * MIB,
                _ => {}
            }
            m.memory_total_bytes = m.memory_used_bytes + *free;
            continue;
        }
        let g = gpus.entry(index).or_insert_with(|| GpuSample {
            index,
            uuid: labels.get("UUID").cloned().unwrap_or_default(),
            name: labels.get("modelName").cloned().unwrap_or_default(),
            pci_bus_id: labels.get("pci_bus_id").cloned().unwrap_or_default(),
            ..Default::default()
        });
        match field {
            "GPU_UTIL" => g.utilization_gpu_percent = Some(as_u32),
            "MEM_COPY_UTIL" => g.utilization_memory_percent = Some(as_u32),
            "FB_USED" => {
                let free = g.memory_total_bytes.saturating_sub(g.memory_used_bytes);
                g.memory_used_bytes = as_u64 * MIB;
                g.memory_total_bytes = g.memory_used_bytes + free;
            }
            "FB_FREE" => g.memory_total_bytes = g.memory_used_bytes + as_u64 * MIB,
            "POWER_USAGE" => g.power_draw_milliwatts = Some((v.max(0.0) * 1000.0).round() as u32),
            "GPU_TEMP" => g.temperature_celsius = Some(as_u32),
            "SM_CLOCK" => g.sm_clock_mhz = Some(as_u32),
            "MEM_CLOCK" => g.memory_clock_mhz = Some(as_u32),
            "XID_ERRORS" => g.last_xid = Some(as_u64),
            "ECC_SBE_VOL_TOTAL" => g.ecc_corrected = Some(as_u64),
            "ECC_DBE_VOL_TOTAL" => g.ecc_uncorrected = Some(as_u64),
            _ => {}
        }
    }
    for ((index, _), (m, _)) in migs {
        if let Some(g) = gpus.get_mut(&index) {
            g.mig_enabled = true;
            g.mig_devices.push(m);
        }
    }
    GpuReading {
        driver_version: driver,
        gpus: gpus.into_values().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"# HELP DCGM_FI_DEV_SM_CLOCK SM clock frequency (in MHz).
# TYPE DCGM_FI_DEV_SM_CLOCK gauge
DCGM_FI_DEV_SM_CLOCK{gpu="0",UUID="GPU-a",pci_bus_id="00000000:3B:00.0",device="nvidia0",modelName="NVIDIA A100-SXM4-80GB",Hostname="n1",DCGM_FI_DRIVER_VERSION="550.54.15"} 1410
DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a",device="nvidia0",modelName="NVIDIA A100-SXM4-80GB",Hostname="n1",container="app",namespace="ml",pod="train-0"} 87
DCGM_FI_DEV_FB_USED{gpu="0",UUID="GPU-a",device="nvidia0",modelName="NVIDIA A100-SXM4-80GB"} 1024
DCGM_FI_DEV_FB_FREE{gpu="0",UUID="GPU-a",device="nvidia0",modelName="NVIDIA A100-SXM4-80GB"} 3072
DCGM_FI_DEV_POWER_USAGE{gpu="0",UUID="GPU-a",device="nvidia0",modelName="NVIDIA A100-SXM4-80GB"} 251.5
DCGM_FI_DEV_XID_ERRORS{gpu="0",UUID="GPU-a",device="nvidia0",modelName="NVIDIA A100-SXM4-80GB",err_msg="a \"quoted\" msg"} 79
DCGM_FI_DEV_FB_USED{gpu="1",UUID="GPU-b",device="nvidia1",modelName="NVIDIA A100",GPU_I_PROFILE="1g.10gb",GPU_I_ID="7"} 10
DCGM_FI_DEV_FB_FREE{gpu="1",UUID="GPU-b",device="nvidia1",modelName="NVIDIA A100",GPU_I_PROFILE="1g.10gb",GPU_I_ID="7"} 20
DCGM_FI_DEV_GPU_TEMP{gpu="1",UUID="GPU-b",device="nvidia1",modelName="NVIDIA A100"} 41
"#;

    #[test]
    fn reads_the_exporters_default_counters() {
        let r = parse(SAMPLE);
        assert_eq!(r.driver_version, "550.54.15");
        assert_eq!(r.gpus.len(), 2);
        let g = &r.gpus[0];
        assert_eq!(
            (
                g.index,
                g.uuid.as_str(),
                g.name.as_str(),
                g.pci_bus_id.as_str()
            ),
            (0, "GPU-a", "NVIDIA A100-SXM4-80GB", "00000000:3B:00.0")
        );
        assert_eq!(g.sm_clock_mhz, Some(1410));
        assert_eq!(g.utilization_gpu_percent, Some(87));
        assert_eq!(
            (g.memory_used_bytes, g.memory_total_bytes),
            (1 << 30, 4 << 30)
        );
        assert_eq!(g.power_draw_milliwatts, Some(251_500));
        assert_eq!(g.last_xid, Some(79));
        assert_eq!(g.power_limit_milliwatts, None);
        let g = &r.gpus[1];
        assert!(g.mig_enabled);
        assert_eq!(g.temperature_celsius, Some(41));
        assert_eq!(g.memory_used_bytes, 0, "MIG series are not the GPU's");
        let m = &g.mig_devices[0];
        assert_eq!(
            (
                m.gpu_instance_id,
                m.name.as_str(),
                m.memory_used_bytes,
                m.memory_total_bytes
            ),
            (7, "1g.10gb", 10 << 20, 30 << 20)
        );
    }

    #[test]
    fn label_values_keep_escapes_and_bad_lines_are_skipped() {
        let (n, l, v) = parse_line(r#"m{a="x\"y",b="1\\2"} 3"#).unwrap();
        assert_eq!((n, v), ("m", 3.0));
        assert_eq!(l["a"], "x\"y");
        assert_eq!(l["b"], "1\\2");
        assert_eq!(parse_line("m 4").map(|x| x.2), Some(4.0));
        assert!(parse_line(r#"m{a="x"#).is_none());
        assert!(parse_line("# comment").is_none());
        assert!(parse_line("m{a=\"1\"} notanumber").is_none());
    }
}
