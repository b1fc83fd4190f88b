//! `kubectl orb8 gpu` output: a table per GPU (MIG instances under their GPU), a table per pod
//! device, then nodes without GPUs, unreadable kubelets and disagreements, one line each.

use std::io::{self, Write};

use super::OutputFormat;
use super::json;
use super::table::{finish, new_table};
use super::yaml;
use crate::gpu::{GpuReport, GpuRow, PodRow};

const GIB: f64 = (1u64 << 30) as f64;

fn gib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / GIB)
}

fn opt<T: std::fmt::Display>(v: Option<T>, unit: &str) -> String {
    v.map_or("-".to_string(), |v| format!("{v}{unit}"))
}

fn watts(mw: Option<u32>) -> String {
    mw.map_or("-".to_string(), |mw| format!("{}", (mw + 500) / 1000))
}

fn gpu_table(rows: &[GpuRow], wide: bool, width: Option<u16>) -> String {
    let mut header = vec![
        "NODE",
        "GPU",
        "UUID",
        "MODEL",
        "UTIL",
        "MEMORY (GiB)",
        "POWER (W)",
        "TEMP",
    ];
    if wide {
        header.extend(["MEM UTIL", "SM MHZ", "MEM MHZ", "ECC UNCORR", "LAST XID"]);
    }
    header.push("PODS");
    let mut table = new_table(&header, width);
    for g in rows {
        let index = if g.mig_of.is_some() {
            format!("{}/mig", g.index)
        } else {
            g.index.to_string()
        };
        let mut row = vec![
            g.node.clone(),
            index,
            g.uuid.clone(),
            g.model.clone(),
            opt(g.utilization_percent, "%"),
            format!("{}/{}", gib(g.memory_used_bytes), gib(g.memory_total_bytes)),
            if g.power_draw_milliwatts.is_none() && g.power_limit_milliwatts.is_none() {
                "-".into()
            } else {
                format!(
                    "{}/{}",
                    watts(g.power_draw_milliwatts),
                    watts(g.power_limit_milliwatts)
                )
            },
            opt(g.temperature_celsius, "C"),
        ];
        if wide {
            row.extend([
                opt(g.memory_utilization_percent, "%"),
                opt(g.sm_clock_mhz, ""),
                opt(g.memory_clock_mhz, ""),
                opt(g.ecc_uncorrected, ""),
                opt(g.last_xid, ""),
            ]);
        }
        row.push(if g.pods.is_empty() {
            "-".into()
        } else {
            g.pods.join(",")
        });
        table.add_row(row);
    }
    finish(&table)
}

fn device(p: &PodRow) -> String {
    if p.gpu.is_none() && p.kind != "none" {
        return format!("{} (no such device)", p.device_id);
    }
    match p.kind {
        "whole" => "whole".into(),
        "shared" => format!("shared #{}", p.replica.unwrap_or(0)),
        "mig" if !p.mig_profile.is_empty() => format!("MIG {}", p.mig_profile),
        "mig" => "MIG".into(),
        "none" => "(not allocated)".into(),
        _ => format!("{} (unknown)", p.device_id),
    }
}

fn pod_table(rows: &[PodRow], wide: bool, width: Option<u16>) -> String {
    let mut header = vec![
        "NODE",
        "NAMESPACE",
        "POD",
        "CONTAINER",
        "GPU",
        "DEVICE",
        "GPU MEM (GiB)",
        "SM",
        "PIDS",
    ];
    if wide {
        header.push("DEVICE ID");
    }
    let mut table = new_table(&header, width);
    for p in rows {
        let dash = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.to_string()
            }
        };
        let pids: Vec<String> = p.pids.iter().map(u32::to_string).collect();
        let mut row = vec![
            p.node.clone(),
            dash(&p.namespace),
            p.pod.clone(),
            dash(&p.container),
            p.gpu.map_or("-".into(), |g| g.to_string()),
            device(p),
            gib(p.memory_used_bytes),
            opt(p.sm_util_percent, "%"),
            dash(&pids.join(",")),
        ];
        if wide {
            row.push(dash(&p.device_id));
        }
        table.add_row(row);
    }
    finish(&table)
}

/// The report as text: the tables, then one line per node without GPUs, per kubelet that
/// could not be read and per disagreement. `width` fixes the table width (tests).
pub fn text(r: &GpuReport, wide: bool, width: Option<u16>) -> String {
    let mut out = Vec::new();
    if !r.gpus.is_empty() {
        out.push(gpu_table(&r.gpus, wide, width));
    }
    if !r.pods.is_empty() {
        if !out.is_empty() {
            out.push(String::new());
        }
        out.push(pod_table(&r.pods, wide, width));
    }
    let mut notes = Vec::new();
    for n in &r.nodes {
        if n.gpus == 0 {
            let why = if n.unavailable.is_empty() {
                format!("no GPUs ({})", n.source)
            } else {
                n.unavailable.clone()
            };
            notes.push(format!("node {}: {why}", n.node));
        }
        if !n.pod_resources_error.is_empty() {
            notes.push(format!(
                "node {}: GPU allocations unknown: {}",
                n.node, n.pod_resources_error
            ));
        }
    }
    for d in &r.disagreements {
        notes.push(format!("disagreement: {d}"));
    }
    if !notes.is_empty() {
        if !out.is_empty() {
            out.push(String::new());
        }
        out.extend(notes);
    }
    out.join("\n")
}

/// Writes the report in `format`; `line` asks for one compact JSON line (watch mode).
pub fn write(
    out: &mut dyn Write,
    format: OutputFormat,
    r: &GpuReport,
    line: bool,
) -> io::Result<()> {
    match format {
        OutputFormat::Table | OutputFormat::Wide => {
            writeln!(out, "{}", text(r, format == OutputFormat::Wide, None))
        }
        OutputFormat::Json if line => writeln!(out, "{}", json::to_line(r)?),
        OutputFormat::Json => writeln!(out, "{}", json::to_string(r)?),
        OutputFormat::Yaml => out.write_all(yaml::to_string(r)?.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::fixture::{answers, names};
    use crate::gpu::{PodFilter, report};

    #[test]
    fn the_tables_and_lines_of_a_report() {
        let r = report(&answers(), &names(), &PodFilter::default());
        let text = text(&r, false, Some(250));
        let want = "\
NODE    GPU    UUID   MODEL        UTIL  MEMORY (GiB)  POWER (W)  TEMP  PODS
node-a  0      GPU-0  A100         87%   20.0/80.0     251/400    61C   ml/train-0,ops/dup
node-a  1      GPU-1  L4           -     0.0/24.0      -          -     ml/infer-a,ml/rogue
node-a  2      GPU-2  H100         -     0.0/0.0       -          -     ml/notebook
node-a  2/mig  MIG-0  MIG 1g.10gb  -     5.0/10.0      -          -     ml/notebook

NODE    NAMESPACE  POD       CONTAINER  GPU  DEVICE                      GPU MEM (GiB)  SM   PIDS
node-a  ml         train-0   trainer    0    whole                       19.0           85%  10
node-a  ml         infer-a   server     1    shared #0                   4.0            25%  11
node-a  ml         notebook  jupyter    2    MIG 1g.10gb                 5.0            -    13
node-a  ops        ghost     x          -    GPU-ghost (no such device)  0.0            -    -
node-a  ops        dup       y          0    whole                       0.0            -    -
node-a  -          (no pod)  -          0    (not allocated)             1.0            -    14
node-a  ml         rogue     main       1    (not allocated)             2.0            -    12

node node-b: no NVIDIA driver on this node
node node-b: GPU allocations unknown: no kubelet pod-resources socket at /x
disagreement: node-a: ops/ghost container x was allocated GPU-ghost (nvidia.com/gpu): no GPU of this node has this ID
disagreement: node-a: GPU-0 is not shared but was allocated to 2 containers: ml/train-0 container trainer, ops/dup container y
disagreement: node-a: process 14 (Xorg), in no pod, uses GPU 0 (GPU-0), allocated to ml/train-0, ops/dup
disagreement: node-a: process 12 (python) of ml/rogue container main uses GPU 1 (GPU-1), but the kubelet allocated it no device there";
        assert_eq!(text, want, "{text}");
    }
}
