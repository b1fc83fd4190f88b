//! Syscall traces: the `strace -c`-style summary table, its JSON view, and one line per
//! syscall for `--stream`. Plain data in, text out.

use std::collections::BTreeMap;

use orb8_proto::{SyscallEvent, SyscallStats, SyscallSummary};
use serde::Serialize;

use crate::flow::time_of_day;

/// One syscall's counts as the summary shows them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyscallRow {
    /// Syscall name (`syscall_NR` when it has none).
    pub syscall: String,
    /// Syscall number on the agent's architecture.
    pub nr: u32,
    /// Share of the total time spent in it, percent.
    pub percent_time: f64,
    /// Total time, seconds.
    pub seconds: f64,
    /// Total time, nanoseconds (exact).
    pub total_ns: u64,
    /// Average time per call, microseconds (rounded down, as strace does).
    pub usecs_per_call: u64,
    /// Calls.
    pub calls: u64,
    /// Calls that failed (-4095..-1).
    pub errors: u64,
    /// Failed calls by errno name.
    pub errnos: BTreeMap<String, u64>,
    /// Latency histogram: non-empty log2 buckets.
    pub histogram: Vec<Bucket>,
}

/// A latency histogram bucket: calls that took `[low_ns, high_ns)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bucket {
    /// Lower bound, nanoseconds (inclusive).
    pub low_ns: u64,
    /// Upper bound, nanoseconds (exclusive); absent for the last bucket.
    pub high_ns: Option<u64>,
    /// Calls in it.
    pub count: u64,
}

/// The non-empty buckets of a kernel histogram (index = log2 bucket).
pub fn buckets(histogram: &[u64]) -> Vec<Bucket> {
    histogram
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(b, n)| {
            let (low_ns, high_ns) = orb8_syscalls::bucket_bounds(b);
            Bucket {
                low_ns,
                high_ns,
                count: *n,
            }
        })
        .collect()
}

/// Rows sorted as strace sorts them: by time, then calls, then name.
pub fn rows(stats: &[SyscallStats]) -> Vec<SyscallRow> {
    let total: u64 = stats.iter().map(|s| s.total_ns).sum();
    let mut rows: Vec<SyscallRow> = stats
        .iter()
        .filter(|s| s.calls > 0)
        .map(|s| SyscallRow {
            syscall: s.name.clone(),
            nr: s.nr,
            percent_time: if total == 0 {
                0.0
            } else {
                s.total_ns as f64 * 100.0 / total as f64
            },
            seconds: s.total_ns as f64 / 1e9,
            total_ns: s.total_ns,
            usecs_per_call: s.total_ns / 1000 / s.calls,
            calls: s.calls,
            errors: s.errors,
            errnos: s.errnos.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            histogram: buckets(&s.histogram),
        })
        .collect();
    rows.sort_by(|a, b| {
        b.total_ns
            .cmp(&a.total_ns)
            .then(b.calls.cmp(&a.calls))
            .then(a.syscall.cmp(&b.syscall))
    });
    rows
}

const RULE: &str = "------ ----------- ----------- --------- --------- ----------------";

/// The `strace -c` table, with a "total" line, and below it the failed calls by errno.
pub fn strace_table(rows: &[SyscallRow]) -> String {
    let mut out = String::from("% time     seconds  usecs/call     calls    errors syscall\n");
    out.push_str(RULE);
    out.push('\n');
    for r in rows {
        let errors = if r.errors == 0 {
            String::new()
        } else {
            r.errors.to_string()
        };
        out.push_str(&format!(
            "{:>6.2} {:>11.6} {:>11} {:>9} {:>9} {}\n",
            r.percent_time, r.seconds, r.usecs_per_call, r.calls, errors, r.syscall
        ));
    }
    let calls: u64 = rows.iter().map(|r| r.calls).sum();
    let errors: u64 = rows.iter().map(|r| r.errors).sum();
    let total_ns: u64 = rows.iter().map(|r| r.total_ns).sum();
    out.push_str(RULE);
    out.push('\n');
    out.push_str(&format!(
        "{:>6.2} {:>11.6} {:>11} {:>9} {:>9} total\n",
        if calls == 0 { 0.0 } else { 100.0 },
        total_ns as f64 / 1e9,
        (total_ns / 1000).checked_div(calls).unwrap_or(0),
        calls,
        errors
    ));
    let failed: Vec<&SyscallRow> = rows.iter().filter(|r| !r.errnos.is_empty()).collect();
    if !failed.is_empty() {
        out.push_str("\nerrors by errno:\n");
        for r in failed {
            let list: Vec<String> = r.errnos.iter().map(|(e, n)| format!("{e} {n}")).collect();
            out.push_str(&format!("  {:<16} {}\n", r.syscall, list.join(", ")));
        }
    }
    out
}

/// The summary as JSON shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryView<'a> {
    /// Node of the agent.
    pub node: &'a str,
    /// The agent's architecture.
    pub arch: &'a str,
    /// The target as the agent resolved it.
    pub target: &'a str,
    /// `cgroup`, `pidns` or `process`.
    pub filter: &'a str,
    /// How the kernel programs hooked syscalls: `fentry` or `raw_tracepoint`.
    pub probes: &'a str,
    /// Why an allow-list was traced on raw tracepoints rather than fentry (absent otherwise).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub probes_note: &'a str,
    /// How long the trace ran, seconds.
    pub duration_seconds: f64,
    /// Whether the target exited during the trace.
    pub target_exited: bool,
    /// Rows, sorted by time.
    pub syscalls: Vec<SyscallRow>,
    /// Total calls.
    pub calls: u64,
    /// Total failed calls.
    pub errors: u64,
    /// Losses by reason (only the non-zero ones).
    pub lost: BTreeMap<String, u64>,
}

/// Non-zero losses of a summary, by reason.
pub fn losses(s: &SyscallSummary) -> BTreeMap<String, u64> {
    s.drops
        .iter()
        .filter(|d| d.count > 0)
        .map(|d| (d.reason.clone(), d.count))
        .collect()
}

/// One syscall as a line of text:
/// `22:13:20.123Z 41/42 curl openat = -1 ENOENT <0.000012>`.
pub fn stream_line(time_nanos: i64, e: &SyscallEvent) -> String {
    let result = if e.errno.is_empty() {
        e.ret.to_string()
    } else {
        format!("-1 {}", e.errno)
    };
    format!(
        "{} {}/{} {} {} = {} <{:.6}>",
        time_of_day(time_nanos),
        e.pid,
        e.tid,
        e.comm,
        e.name,
        result,
        e.duration_ns as f64 / 1e9
    )
}

/// One syscall as an NDJSON object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyscallLine<'a> {
    /// Always `syscall`.
    pub event: &'static str,
    /// RFC 3339 time the call returned.
    pub time: Option<String>,
    /// Node of the agent.
    pub node: &'a str,
    /// Process id (host).
    pub pid: u32,
    /// Thread id (host).
    pub tid: u32,
    /// Command name.
    pub comm: &'a str,
    /// Syscall name.
    pub syscall: &'a str,
    /// Syscall number.
    pub nr: u32,
    /// Return value.
    pub ret: i64,
    /// Errno name of a failure, absent on success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<&'a str>,
    /// Duration, nanoseconds.
    pub duration_ns: u64,
}

impl<'a> SyscallLine<'a> {
    /// The line for event `e` of node `node`.
    pub fn new(node: &'a str, time_nanos: i64, e: &'a SyscallEvent) -> Self {
        SyscallLine {
            event: "syscall",
            time: crate::flow::rfc3339_nanos(time_nanos),
            node,
            pid: e.pid,
            tid: e.tid,
            comm: &e.comm,
            syscall: &e.name,
            nr: e.nr,
            ret: e.ret,
            errno: (!e.errno.is_empty()).then_some(e.errno.as_str()),
            duration_ns: e.duration_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(name: &str, nr: u32, calls: u64, errors: u64, total_ns: u64) -> SyscallStats {
        SyscallStats {
            nr,
            name: name.into(),
            calls,
            errors,
            total_ns,
            errnos: if errors > 0 {
                [("ENOENT".to_string(), errors)].into()
            } else {
                Default::default()
            },
            histogram: vec![0, 0, 0, calls],
        }
    }

    #[test]
    fn strace_style_table() {
        let r = rows(&[
            stats("getppid", 110, 1000, 0, 250_000),
            stats("openat", 257, 7, 7, 750_000),
            stats("close", 3, 0, 0, 0),
        ]);
        assert_eq!(r.len(), 2, "syscalls never called are left out");
        assert_eq!(r[0].syscall, "openat", "sorted by time");
        assert_eq!(
            strace_table(&r),
            "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 75.00    0.000750         107         7         7 openat
 25.00    0.000250           0      1000           getppid
------ ----------- ----------- --------- --------- ----------------
100.00    0.001000           0      1007         7 total

errors by errno:
  openat           ENOENT 7
"
        );
    }

    #[test]
    fn an_empty_table_still_has_its_total() {
        assert!(
            strace_table(&[])
                .ends_with("  0.00    0.000000           0         0         0 total\n")
        );
    }

    #[test]
    fn histogram_buckets_have_bounds() {
        assert_eq!(
            buckets(&[1, 0, 2, 0, 5]),
            vec![
                Bucket {
                    low_ns: 0,
                    high_ns: Some(1),
                    count: 1
                },
                Bucket {
                    low_ns: 2,
                    high_ns: Some(4),
                    count: 2
                },
                Bucket {
                    low_ns: 8,
                    high_ns: Some(16),
                    count: 5
                },
            ]
        );
    }

    #[test]
    fn stream_lines() {
        let e = SyscallEvent {
            pid: 41,
            tid: 42,
            comm: "curl".into(),
            nr: 257,
            name: "openat".into(),
            ret: -2,
            errno: "ENOENT".into(),
            duration_ns: 12_000,
        };
        assert_eq!(
            stream_line(1_700_000_000_123_456_789, &e),
            "22:13:20.123Z 41/42 curl openat = -1 ENOENT <0.000012>"
        );
        let line = serde_json::to_string(&SyscallLine::new("n", 0, &e)).unwrap();
        assert!(
            line.contains(r#""syscall":"openat","nr":257,"ret":-2,"errno":"ENOENT""#),
            "{line}"
        );
        let ok = SyscallEvent {
            ret: 3,
            errno: String::new(),
            ..e
        };
        assert!(stream_line(0, &ok).contains("openat = 3 <"));
        assert!(
            !serde_json::to_string(&SyscallLine::new("n", 0, &ok))
                .unwrap()
                .contains("errno")
        );
    }
}
