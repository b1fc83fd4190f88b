//! The recorded-sample source: GPU readings from a JSON file ([`GpuReading`] as JSON, or a
//! list of them played in turn, the last one repeated). It is how the GPU path (pod-resources
//! join, process placement, the client's tables) is tested on machines without a GPU, and how
//! a reading taken elsewhere is replayed.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::model::GpuReading;
use super::{GpuError, GpuSource};

/// Readings from a file, played in order.
#[derive(Debug)]
pub struct RecordedSource {
    path: PathBuf,
    readings: Vec<GpuReading>,
    next: Mutex<usize>,
}

impl RecordedSource {
    /// Reads `path`: one reading or a non-empty list of them.
    pub fn open(path: &Path) -> Result<RecordedSource, GpuError> {
        let bad = |reason: String| GpuError::Recorded {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let readings = if value.is_array() {
            serde_json::from_value::<Vec<GpuReading>>(value)
        } else {
            serde_json::from_value::<GpuReading>(value).map(|r| vec![r])
        }
        .map_err(|e| bad(e.to_string()))?;
        if readings.is_empty() {
            return Err(bad("no readings in it".into()));
        }
        Ok(RecordedSource {
            path: path.to_path_buf(),
            readings,
            next: Mutex::new(0),
        })
    }
}

impl GpuSource for RecordedSource {
    fn kind(&self) -> &'static str {
        "recorded"
    }

    fn describe(&self) -> String {
        format!("recorded {}", self.path.display())
    }

    fn sample(&self, _window: Duration) -> Result<GpuReading, GpuError> {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let i = (*next).min(self.readings.len() - 1);
        *next = next.saturating_add(1);
        Ok(self.readings[i].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("orb8-gpu-{name}-{}.json", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn plays_readings_in_order_then_repeats_the_last() {
        let p = write(
            "seq",
            r#"[{"driver_version":"1","gpus":[]},{"driver_version":"2","gpus":[{"index":0,"uuid":"GPU-x"}]}]"#,
        );
        let s = RecordedSource::open(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        let w = Duration::from_secs(1);
        assert_eq!(s.sample(w).unwrap().driver_version, "1");
        assert_eq!(s.sample(w).unwrap().driver_version, "2");
        let last = s.sample(w).unwrap();
        assert_eq!(last.driver_version, "2");
        assert_eq!(last.gpus[0].processes, vec![]);
        assert_eq!(last.gpus[0].utilization_gpu_percent, None);
    }

    #[test]
    fn bad_files_say_why() {
        let p = write("bad", r#"{"gpus":[{"index":0,"uuid":"GPU-x","util":5}]}"#);
        let e = RecordedSource::open(&p).unwrap_err().to_string();
        std::fs::remove_file(&p).unwrap();
        assert!(e.contains("unknown field `util`"), "{e}");
        let p = write("empty", "[]");
        let e = RecordedSource::open(&p).unwrap_err().to_string();
        std::fs::remove_file(&p).unwrap();
        assert!(e.ends_with("no readings in it"), "{e}");
    }
}
