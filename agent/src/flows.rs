//! Reading the kernel's flow table: per-CPU copies summed into one record per flow.
//!
//! The kernel keeps two tables: IPv4 flows by a 20-byte key (`FLOWS4`, `--flow-map-size`
//! entries) and every other flow by the full key (`FLOWS`, `--flow-map-size-v6` entries); this
//! module reads both as one. The agent never deletes from them, so the flows the kernel evicted
//! (each table is an LRU) are exactly `flows_created - live entries`; the agent reports that
//! number with every snapshot.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aya::maps::{IterableMap as _, MapData, PerCpuHashMap};
use orb8_common::{FlowKey, FlowKey4, FlowStats, direction, family, key_flags};
use orb8_flowspec::Direction;

/// One aggregated flow, as read from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// The kernel's key.
    pub key: FlowKey,
    /// Sum over CPUs of the per-CPU statistics.
    pub stats: FlowStats,
}

impl Flow {
    /// Source address.
    pub fn src(&self) -> IpAddr {
        addr(self.key.family, &self.key.src_addr)
    }
    /// Destination address.
    pub fn dst(&self) -> IpAddr {
        addr(self.key.family, &self.key.dst_addr)
    }
    /// `ingress` or `egress`, as the shared model names it.
    pub fn direction(&self) -> &'static str {
        direction(self.key.direction).name()
    }
    /// True for flows of non-first IP fragments (ports unknown).
    pub fn is_fragment(&self) -> bool {
        self.key.flags & key_flags::FRAGMENT != 0
    }
}

/// The shared model's direction of a kernel direction value.
pub fn direction(d: u8) -> Direction {
    if d == direction::EGRESS {
        Direction::Egress
    } else {
        Direction::Ingress
    }
}

/// Turns a kernel address (IPv4-mapped for IPv4) into an [`IpAddr`].
pub fn addr(fam: u8, bytes: &[u8; 16]) -> IpAddr {
    if fam == family::IPV4 {
        IpAddr::V4(Ipv4Addr::new(bytes[12], bytes[13], bytes[14], bytes[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

/// Sums one flow's per-CPU copies: packets and bytes add up, first seen is the earliest CPU's,
/// last seen the latest, flags are OR-ed. CPUs that never saw the flow hold zeros.
pub fn sum_per_cpu(values: &[FlowStats]) -> FlowStats {
    let mut out = FlowStats::default();
    for v in values {
        out.packets += v.packets;
        out.bytes += v.bytes;
        if v.first_seen_ns != 0 && (out.first_seen_ns == 0 || v.first_seen_ns < out.first_seen_ns) {
            out.first_seen_ns = v.first_seen_ns;
        }
        out.last_seen_ns = out.last_seen_ns.max(v.last_seen_ns);
        out.tcp_flags |= v.tcp_flags;
    }
    out
}

/// The kernel's two flow tables.
pub struct FlowTables {
    /// IPv4 flows (`FLOWS4`).
    pub v4: PerCpuHashMap<MapData, FlowKey4, FlowStats>,
    /// Every other flow (`FLOWS`).
    pub other: PerCpuHashMap<MapData, FlowKey, FlowStats>,
    /// `orb8_count_flows`, loaded: counts both tables in the kernel. `None` where the kernel
    /// refused it (no `bpf_for_each_map_elem` before Linux 5.13).
    pub counter: Option<aya::programs::ProgramFd>,
}

impl FlowTables {
    /// Reads every flow of both tables, IPv4 keys in their full form, in batches
    /// (`BPF_MAP_LOOKUP_BATCH`: one system call per [`batch_len`] flows instead of two per flow);
    /// on a kernel without batch lookups, one flow at a time ([`FlowTables::read_each`]).
    /// Entries evicted or deleted while reading are skipped.
    pub fn read(&self) -> Vec<Flow> {
        let mut out = Vec::new();
        let v4 = read_batched(self.v4.map(), |k: FlowKey4, values| {
            out.push(Flow {
                key: k.key(),
                stats: sum_per_cpu(values),
            })
        });
        let other = read_batched(self.other.map(), |key: FlowKey, values| {
            out.push(Flow {
                key,
                stats: sum_per_cpu(values),
            })
        });
        if v4.is_err() || other.is_err() {
            return self.read_each();
        }
        out
    }

    /// [`FlowTables::read`] one flow at a time: two system calls per flow (next key, value).
    pub fn read_each(&self) -> Vec<Flow> {
        let v4 = self
            .v4
            .iter()
            .filter_map(Result::ok)
            .map(|(k, values)| Flow {
                key: k.key(),
                stats: sum_per_cpu(&values),
            });
        let other = self
            .other
            .iter()
            .filter_map(Result::ok)
            .map(|(key, values)| Flow {
                key,
                stats: sum_per_cpu(&values),
            });
        v4.chain(other).collect()
    }

    /// How many flows both tables hold: counted by the kernel itself where it loaded
    /// `orb8_count_flows` (one system call, no value copied), else from batch reads (a few
    /// system calls, every value copied), else by walking their keys (one per flow).
    pub fn count(&self) -> u64 {
        if let Some(n) = self.counter.as_ref().and_then(|p| count_in_kernel(p).ok()) {
            return n;
        }
        self.count_by_reading()
    }

    /// [`FlowTables::count`] without the kernel's counting program: what it falls back to, and
    /// what the program's count is tested against.
    pub fn count_by_reading(&self) -> u64 {
        let mut n = 0u64;
        let v4 = read_batched(self.v4.map(), |_: FlowKey4, _| n += 1);
        let other = read_batched(self.other.map(), |_: FlowKey, _| n += 1);
        if v4.is_ok() && other.is_ok() {
            return n;
        }
        (self.v4.keys().filter(Result::is_ok).count()
            + self.other.keys().filter(Result::is_ok).count()) as u64
    }
}

/// Runs `orb8_count_flows` once with `BPF_PROG_TEST_RUN` on an empty Ethernet frame: its
/// return value is the number of flows in both tables, -1 if the kernel could not walk them.
fn count_in_kernel(program: &aya::programs::ProgramFd) -> std::io::Result<u64> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    // `union bpf_attr`'s `test` member, up to `ctx_out`.
    #[repr(C)]
    #[derive(Default)]
    struct TestRunAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    // The smallest frame the kernel's TC test runner takes: an Ethernet header.
    let frame = [0u8; 14];
    let mut attr = TestRunAttr {
        prog_fd: program.as_fd().as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: 1,
        ..TestRunAttr::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size given; `frame` is alive and as
    // long as said; nothing is written back but `attr`'s own fields.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            size_of::<TestRunAttr>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    match attr.retval as i32 {
        n if n >= 0 => Ok(n as u64),
        _ => Err(std::io::Error::other(
            "the kernel could not walk the flow tables",
        )),
    }
}

/// The most flows read per `BPF_MAP_LOOKUP_BATCH` call.
pub const BATCH: usize = 4096;
/// The most bytes of per-CPU values one batch may hold: the buffer is every possible CPU's copy
/// of every flow of the batch (40 bytes each), so on a node with many CPUs a batch is shorter.
pub const BATCH_VALUE_BYTES: usize = 1 << 20;

/// Flows read per `BPF_MAP_LOOKUP_BATCH` call with `cpus` possible CPUs: [`BATCH`], or fewer so
/// the values fit in [`BATCH_VALUE_BYTES`] (at least 64).
pub fn batch_len(cpus: usize) -> usize {
    (BATCH_VALUE_BYTES / (cpus.max(1) * size_of::<FlowStats>())).clamp(64, BATCH)
}

/// Calls `each` with every entry of a per-CPU hash of [`FlowStats`] (its key and its CPUs'
/// values), [`batch_len`] entries per system call. An error means the kernel cannot read the map
/// in batches (before Linux 5.6) or the read failed part way; nothing is then reliable and the
/// caller reads the map another way.
fn read_batched<K: aya::Pod>(
    map: &MapData,
    mut each: impl FnMut(K, &[FlowStats]),
) -> std::io::Result<()> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    // `union bpf_attr`'s `batch` member.
    #[repr(C)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    // Per-CPU values come 8-byte aligned, one per possible CPU (FlowStats is 40 bytes).
    const _: () = assert!(size_of::<FlowStats>().is_multiple_of(8));
    let batch = batch_len(cpus);
    let mut keys: Vec<K> = Vec::with_capacity(batch);
    let mut values: Vec<FlowStats> = Vec::with_capacity(batch * cpus);
    // The kernel's cursor for hash maps: a bucket index.
    let (mut cursor, mut next) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &cursor as *const u32 as u64
            },
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: batch as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix of the size given; `keys` and `values`
        // have room for `count` entries (one key; `cpus` values each), the cursors are u32s,
        // all alive for the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let err = (r < 0).then(std::io::Error::last_os_error);
        let done = match &err {
            None => false,
            // The end of the map, with the last entries (if any) copied.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Some(e) => return Err(std::io::Error::new(e.kind(), e.to_string())),
        };
        let n = (attr.count as usize).min(batch);
        // SAFETY: the kernel wrote `n` keys and `n * cpus` values; both are plain data
        // (`Pod`), valid for any bytes.
        unsafe {
            keys.set_len(n);
            values.set_len(n * cpus);
        }
        for (key, v) in keys.drain(..).zip(values.chunks_exact(cpus)) {
            each(key, v);
        }
        values.clear();
        if done {
            return Ok(());
        }
        cursor = next;
        first = false;
    }
}

/// Converts a kernel clock's nanoseconds to wall-clock time: boot time
/// (`bpf_ktime_get_boot_ns`, every probe but the flow tables; [`BootClock::now`]) or monotonic
/// time (`bpf_ktime_get_coarse_ns`, the flow tables' first/last seen and new-flow events;
/// [`BootClock::monotonic`]).
#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    /// Wall-clock time of the clock's zero, in nanoseconds since the epoch.
    boot_epoch_ns: i128,
}

impl BootClock {
    /// Reads `CLOCK_REALTIME` and `CLOCK_BOOTTIME` now.
    pub fn now() -> Self {
        Self::of(libc::CLOCK_BOOTTIME)
    }

    /// Reads `CLOCK_REALTIME` and `CLOCK_MONOTONIC` now: for the flow tables' coarse
    /// timestamps (`CLOCK_MONOTONIC_COARSE` counts from the same zero, by ticks).
    pub fn monotonic() -> Self {
        Self::of(libc::CLOCK_MONOTONIC)
    }

    fn of(clock: libc::clockid_t) -> Self {
        let real = clock_ns(libc::CLOCK_REALTIME);
        let kernel = clock_ns(clock);
        BootClock {
            boot_epoch_ns: real - kernel,
        }
    }

    /// Builds a clock from a known boot time (for tests).
    pub fn from_boot_epoch_ns(boot_epoch_ns: i128) -> Self {
        BootClock { boot_epoch_ns }
    }

    /// Wall-clock time of a kernel boot-time timestamp.
    pub fn to_system_time(&self, boot_ns: u64) -> SystemTime {
        let ns = (self.boot_epoch_ns + boot_ns as i128).max(0) as u128;
        UNIX_EPOCH + Duration::new((ns / 1_000_000_000) as u64, (ns % 1_000_000_000) as u32)
    }

    /// Nanoseconds since boot now.
    pub fn boot_now_ns() -> u64 {
        clock_ns(libc::CLOCK_BOOTTIME) as u64
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock ids are constants the kernel knows.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(packets: u64, bytes: u64, first: u64, last: u64, flags: u8) -> FlowStats {
        FlowStats {
            packets,
            bytes,
            first_seen_ns: first,
            last_seen_ns: last,
            tcp_flags: flags,
            _pad: [0; 7],
        }
    }

    #[test]
    fn per_cpu_copies_sum_and_ignore_idle_cpus() {
        let got = sum_per_cpu(&[
            FlowStats::default(),
            stats(3, 180, 50, 90, 0x02),
            stats(2, 120, 40, 70, 0x10),
            FlowStats::default(),
        ]);
        assert_eq!(got, stats(5, 300, 40, 90, 0x12));
    }

    #[test]
    fn addresses_and_names() {
        let mut v4 = [0u8; 16];
        v4[10] = 0xff;
        v4[11] = 0xff;
        v4[12..].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(addr(family::IPV4, &v4).to_string(), "10.1.2.3");
        let v6: Ipv6Addr = "fd00::1".parse().unwrap();
        assert_eq!(addr(family::IPV6, &v6.octets()).to_string(), "fd00::1");
        assert_eq!(direction(direction::EGRESS), Direction::Egress);
        assert_eq!(direction(direction::INGRESS), Direction::Ingress);
    }

    #[test]
    fn batches_shrink_with_many_cpus_to_bound_their_buffer() {
        assert_eq!(batch_len(2), BATCH);
        assert_eq!(batch_len(64), (1 << 20) / (64 * 40));
        assert!(batch_len(64) * 64 * 40 <= BATCH_VALUE_BYTES);
        assert_eq!(batch_len(100_000), 64);
        assert_eq!(batch_len(0), BATCH);
    }

    #[test]
    fn boot_clock_offsets() {
        let c = BootClock::from_boot_epoch_ns(1_700_000_000_000_000_000);
        let t = c.to_system_time(2_500_000_000);
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_700_000_002, 500_000_000)
        );
    }
}
