//! Real NVML on a machine with an NVIDIA GPU and driver (ignored elsewhere: run it with
//! `cargo test -p orb8-agent --test gpu_nvml -- --ignored` where `nvidia-smi` works). The
//! numbers are checked against `nvidia-smi`, an independent reader of the same driver.

use std::process::Command;
use std::time::Duration;

use orb8_agent::gpu::GpuSource as _;
use orb8_agent::gpu::nvml::NvmlSource;

fn nvidia_smi(query: &str) -> Vec<Vec<String>> {
    let out = Command::new("nvidia-smi")
        .args([
            &format!("--query-gpu={query}"),
            "--format=csv,noheader,nounits",
        ])
        .output()
        .expect("nvidia-smi runs");
    assert!(out.status.success(), "nvidia-smi failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split(',').map(|f| f.trim().to_string()).collect())
        .collect()
}

#[test]
#[ignore = "needs an NVIDIA GPU and driver"]
fn reads_real_nvml_values() {
    let source = NvmlSource::open().expect("NVML starts on a GPU machine");
    let reading = source.sample(Duration::from_secs(1)).expect("sample");
    let smi = nvidia_smi("index,uuid,name,memory.total,power.limit");
    assert_eq!(reading.gpus.len(), smi.len(), "GPU count as nvidia-smi");
    assert!(!reading.driver_version.is_empty());
    for (g, row) in reading.gpus.iter().zip(&smi) {
        assert_eq!(g.index.to_string(), row[0]);
        assert_eq!(g.uuid, row[1]);
        assert_eq!(g.name, row[2]);
        // nvidia-smi prints MiB.
        assert_eq!(
            g.memory_total_bytes >> 20,
            row[3].parse::<u64>().expect("MiB")
        );
        assert!(g.memory_used_bytes <= g.memory_total_bytes);
        if let (Some(limit), Ok(w)) = (g.power_limit_milliwatts, row[4].parse::<f64>()) {
            assert_eq!(u64::from(limit) / 1000, w as u64, "power limit, W");
        }
        assert!(g.utilization_gpu_percent.is_some_and(|u| u <= 100));
        assert!(g.temperature_celsius.is_some_and(|t| t > 0 && t < 120));
        for p in &g.processes {
            assert!(std::path::Path::new(&format!("/proc/{}", p.pid)).exists());
        }
        println!("{g:?}");
    }
}
