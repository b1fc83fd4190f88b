//! Benchmarks of the flow probe, run as root: `cargo bench -p orb8-agent --bench probe`.
//!
//! - cost of the TC program per packet (BPF_PROG_TEST_RUN, 64-byte TCP frame hitting an
//!   existing flow), minus a no-op program's cost;
//! - reading a table of 100k flows from the kernel: time, and the agent's resident memory.
//!
//! Prints one line per measurement; nothing is asserted.

use std::time::Instant;

use orb8_agent::probes::{AttachMode, ProbeConfig, Probes};
use orb8_common::names;

fn frame(sport: u16, dport: u16) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    f.extend_from_slice(&[
        0x45, 0, 0, 50, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 9, 0, 1, 10, 9, 0, 2,
    ]);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    f.resize(64, 0);
    f
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn ns_per_run(p: &mut Probes, program: &'static str, frame: &[u8]) -> f64 {
    // The kernel reports the mean duration of `repeat` runs; take the best of five batches.
    (0..5)
        .map(|_| {
            p.test_run(program, frame, None, 1_000_000)
                .expect("test run")
                .duration
                .as_nanos() as f64
        })
        .fold(f64::MAX, f64::min)
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("probe benchmark: run as root (it loads eBPF programs)");
        std::process::exit(1);
    }
    let flows_wanted: u32 = 100_000;
    let (mut p, maps) = Probes::load(&ProbeConfig {
        flow_map_entries: 131_072,
        flow_map_entries_v6: 32_768,
        ringbuf_bytes: 1 << 24,
        mode: AttachMode::detect(),
        dns_ports: orb8_common::dns::DnsPorts::DEFAULT,
    })
    .expect("loading the probes");

    let f = frame(40000, 443);
    let noop = ns_per_run(&mut p, names::BENCH_NOOP, &f);
    let probe = ns_per_run(&mut p, names::TC_INGRESS, &f);
    println!(
        "tc program, 64 B TCP, existing flow: {probe:.1} ns/packet; no-op program {noop:.1} ns; probe cost {:.1} ns",
        probe - noop
    );

    let before = rss_kib();
    let t = Instant::now();
    for i in 0..flows_wanted {
        let fr = frame((i >> 16) as u16 + 1, i as u16);
        p.test_run(names::TC_INGRESS, &fr, None, 1)
            .expect("test run");
    }
    let fill = t.elapsed();
    let t = Instant::now();
    let table = maps.flows.read();
    let read = t.elapsed();
    let after = rss_kib();
    println!(
        "flow table of {} flows: filled in {:.2} s (one syscall per packet), read in {:.0} ms; agent RSS {} KiB before the read, {} KiB holding it",
        table.len(),
        fill.as_secs_f64(),
        read.as_secs_f64() * 1000.0,
        before,
        after
    );
    // The same table read and counted both ways, interleaved, best of five.
    let best = |f: &dyn Fn() -> usize| {
        (0..5)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f());
                t.elapsed().as_secs_f64() * 1000.0
            })
            .fold(f64::MAX, f64::min)
    };
    let batched = best(&|| maps.flows.read().len());
    let each = best(&|| maps.flows.read_each().len());
    let count = best(&|| maps.flows.count() as usize);
    let count_read = best(&|| maps.flows.count_by_reading() as usize);
    let keys = best(&|| maps.flows.v4.keys().count() + maps.flows.other.keys().count());
    println!(
        "read: {batched:.1} ms in batches of {}, {each:.1} ms one flow at a time; count (GetStatus): {count:.2} ms in the kernel (orb8_count_flows loaded: {}), {count_read:.1} ms by batch reads, walking keys {keys:.1} ms",
        orb8_agent::flows::batch_len(aya::util::nr_cpus().unwrap_or(1)),
        maps.flows.counter.is_some()
    );
}
