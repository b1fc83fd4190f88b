//! Issue 11's aims, checked against what a run measured: each scenario's section gets one line
//! per aim saying whether the median met it and, where it did not, where the cost is (what the
//! measurements behind the earlier changes showed). The verdicts are computed from the tables
//! above them, so a regenerated BENCHMARKS.md says so when a change meets or misses an aim.

use super::report::Section;

/// Which number of a row is held to the aim.
#[derive(Clone, Copy, Debug)]
enum Of {
    /// The median of the column.
    Median,
    /// The median of the column over the bare row's (the section's base).
    Ratio,
}

/// An upper or lower bound.
#[derive(Clone, Copy, Debug)]
enum Bound {
    AtMost(f64),
    AtLeast(f64),
}

/// One aim: a row's column, the bound, what to call it, and why it is missed when it is.
struct Aim {
    scenario: &'static str,
    row: &'static str,
    column: usize,
    of: Of,
    bound: Bound,
    what: &'static str,
    why: &'static str,
}

const AIMS: &[Aim] = &[
    Aim {
        scenario: "getppid",
        row: "orb8 trace syscall --pid",
        column: 1,
        of: Of::Ratio,
        bound: Bound::AtMost(2.0),
        what: "traced getppid loop, on-CPU, over bare",
        why: "the empty programs on both raw_syscalls tracepoints (the floor row) already cost \
              most of it; the rest is the per-call work: a hash keyed by thread for the entry \
              time (task-local storage needs BTF-typed maps that aya-ebpf lacks) and the \
              per-syscall counters. fentry, which would skip other syscalls, is refused by \
              this kernel.",
    },
    Aim {
        scenario: "write",
        row: "orb8 trace syscall --pid",
        column: 1,
        of: Of::Ratio,
        bound: Bound::AtMost(1.7),
        what: "traced 4 KiB write loop, on-CPU, over bare",
        why: "as for getppid: the raw tracepoints' floor plus the per-call entry-time hash and \
              counters.",
    },
    Aim {
        scenario: "untraced",
        row: "orb8 trace syscall --pid",
        column: 1,
        of: Of::Ratio,
        bound: Bound::AtMost(1.75),
        what: "untraced getppid loop while a trace runs, on-CPU, over bare",
        why: "every thread of the host runs both raw_syscalls programs (the floor row); orb8 adds \
              only a target check on top of it. Below the floor needs fentry on an allow-list, \
              refused by this kernel.",
    },
    Aim {
        scenario: "tc",
        row: "orb8 TC probe",
        column: 1,
        of: Of::Median,
        bound: Bound::AtMost(35.0),
        what: "TC probe, ns above the no-op program",
        why: "the per-CPU LRU hash lookup of the flow (hashing the 20-byte IPv4 key) and the \
              update of its entry are most of it; the parse and the clock were cut before \
              (IPv4 table, coarse clock).",
    },
    Aim {
        scenario: "flows100k",
        row: "orb8-agent",
        column: 0,
        of: Of::Median,
        bound: Bound::AtMost(32.0),
        what: "agent peak RSS holding 100k flows, MiB",
        why: "",
    },
    Aim {
        scenario: "flows100k",
        row: "orb8-agent",
        column: 2,
        of: Of::Median,
        bound: Bound::AtMost(5.0),
        what: "GetStatus with 100k flows, ms",
        why: "the count is the kernel walking both tables (orb8_count_flows): every bucket and \
              every entry, cache misses mostly. An O(CPUs) count (the bpf_map_sum_elem_count \
              kfunc) needs kfunc relocation at load, which aya does not do.",
    },
    Aim {
        scenario: "flows100k",
        row: "orb8-agent",
        column: 3,
        of: Of::Median,
        bound: Bound::AtMost(64.0),
        what: "client peak RSS, flows -o json over 100k flows, MiB",
        why: "the rows themselves: one FlowRecord per flow, sorted in place.",
    },
    Aim {
        scenario: "udp-pps",
        row: "orb8 agent attached",
        column: 1,
        of: Of::Ratio,
        bound: Bound::AtLeast(0.95),
        what: "64 B UDP packets/s received with the agent attached, over no capture",
        why: "the probe's per-packet cost (the TC row) on both hooks the datagram crosses, \
              paid in the sender's context; rounds on this shared host vary by more than the \
              gap.",
    },
    Aim {
        scenario: "tcp-throughput",
        row: "orb8 agent attached",
        column: 0,
        of: Of::Ratio,
        bound: Bound::AtLeast(0.99),
        what: "TCP throughput with the agent attached, over no capture",
        why: "one iperf3 stream's rounds on this shared host vary by more than the probe's \
              cost; compare with the tcpdump row.",
    },
    Aim {
        scenario: "new-flows",
        row: "orb8",
        column: 0,
        of: Of::Median,
        bound: Bound::AtLeast(200_000.0),
        what: "new flows/s delivered to the client, datagrams",
        why: "the sender limits it here: delivered equals sent (one thread, one syscall per \
              flow, on the same two CPUs as the agent and the client); `flows/s per CPU` is \
              orb8's own rate.",
    },
    Aim {
        scenario: "new-flows",
        row: "orb8, flows made by BPF_PROG_TEST_RUN",
        column: 9,
        of: Of::Median,
        bound: Bound::AtLeast(200_000.0),
        what: "new flows/s the agent and client keep with a CPU each",
        why: "the client's per-event work (decoding, naming, JSON) and the agent's (ring \
              buffer, event encoding) are a few microseconds each.",
    },
    Aim {
        scenario: "first-output",
        row: "orb8 --local trace network",
        column: 0,
        of: Of::Median,
        bound: Bound::AtMost(0.15),
        what: "first line of local trace network, s",
        why: "the agent's start: preallocating the 65536-entry per-CPU LRU table (~67 ms here), \
              verifying the TC programs (~50 ms, both at once), two TCX links (~15 ms each, \
              serialised by the kernel); then the client's connection.",
    },
];

/// The aim lines for the section of `scenario`.
pub fn verdicts(scenario: &str, section: &Section) -> Vec<String> {
    AIMS.iter()
        .filter(|a| a.scenario == scenario)
        .map(|a| verdict(a, section))
        .collect()
}

fn verdict(a: &Aim, s: &Section) -> String {
    let Some(r) = s.rows.iter().position(|row| row.name == a.row) else {
        return format!("Aim ({}): not measured (no `{}` row).", a.what, a.row);
    };
    let value = match a.of {
        Of::Median => s.rows[r].values.get(a.column).map(|v| v.median()),
        Of::Ratio => s.ratio(r, a.column),
    };
    let Some(value) = value.filter(|v| v.is_finite()) else {
        return format!("Aim ({}): not measured.", a.what);
    };
    let (met, bound) = match a.bound {
        Bound::AtMost(b) => (value <= b, format!("<= {}", show(b, a.of))),
        Bound::AtLeast(b) => (value >= b, format!(">= {}", show(b, a.of))),
    };
    let head = format!(
        "{} ({}): `{}` measured {} against {bound}.",
        if met { "Aim met" } else { "**Aim not met**" },
        a.what,
        a.row,
        show(value, a.of)
    );
    if met || a.why.is_empty() {
        head
    } else {
        format!("{head} Why: {}", a.why)
    }
}

fn show(v: f64, of: Of) -> String {
    let n = super::stats::fmt(v);
    match of {
        Of::Ratio => format!("{n}x"),
        Of::Median => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::Row;
    use crate::bench::stats::Sample;

    fn section(rows: &[(&str, f64)]) -> Section {
        Section {
            base: Some(0),
            rows: rows
                .iter()
                .map(|(name, v)| Row {
                    name: name.to_string(),
                    values: vec![Sample(vec![*v]), Sample(vec![*v, *v, *v])],
                    command: String::new(),
                })
                .collect(),
            ..Section::default()
        }
    }

    #[test]
    fn ratios_and_medians_are_held_to_their_bounds() {
        let s = section(&[("bare", 100.0), ("orb8 trace syscall --pid", 150.0)]);
        let v = verdicts("untraced", &s);
        assert_eq!(v.len(), 1);
        assert!(v[0].starts_with("Aim met ("), "{v:?}");
        assert!(v[0].contains("measured 1.50x against <= 1.75x"), "{v:?}");
        let s = section(&[("bare", 100.0), ("orb8 trace syscall --pid", 300.0)]);
        let v = verdicts("getppid", &s);
        assert!(v[0].starts_with("**Aim not met**"), "{v:?}");
        assert!(v[0].contains("measured 3.00x against <= 2.00x"), "{v:?}");
        assert!(v[0].contains("Why: "), "{v:?}");
    }

    #[test]
    fn a_missing_row_is_said_not_measured() {
        let s = section(&[("bare", 1.0)]);
        assert!(verdicts("tc", &s)[0].contains("not measured"));
        assert!(verdicts("merge", &s).is_empty());
    }
}
