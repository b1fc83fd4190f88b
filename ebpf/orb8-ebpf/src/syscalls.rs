//! orb8's syscall tracer, a separate object (`orb8-syscalls`) that the agent loads only when a
//! client asks for a syscall trace, so the flow-only agent pays nothing for it.
//!
//! Two ways in, one aggregation. `orb8_sys_enter` / `orb8_sys_exit` run on the `raw_syscalls`
//! raw tracepoints, which every thread of the node passes through. For an allow-list of at most
//! [`FENTRY_SLOTS`] syscalls, where the kernel allows tracing programs, the agent instead loads
//! the fentry/fexit pair of one slot per syscall (`orb8_sys_fentry_N` / `orb8_sys_fexit_N`) on
//! that syscall's kernel function, so every other syscall and every other process pays nothing;
//! the slot's syscall number is the read-only global `SYS_SLOTS[N]`. Both ways then run the same
//! code: the target check first, and for a single target it is one helper call and one compare
//! against the read-only global `SYS_FIXED` (the thread's cgroup v2 id or its process), with no
//! map lookup; several cgroups (a pod's containers) are a lookup in `SYS_CGROUPS`, a PID
//! namespace a helper call. Any other thread leaves at once, so nothing about other processes
//! leaves the kernel. A traced entry passing the syscall allow-list (`SYS_ALLOW`; the fentry
//! slots are the allow-list) writes its start time into the thread's slot in `SYS_INFLIGHT`
//! (in place; a slot is created on a thread's first traced call and removed when it calls
//! `exit`); its exit clears the slot and adds the call, its errno and its duration to the
//! per-CPU `SYS_STATS` / `SYS_ERRNOS`, and in stream mode sends a [`SysEvent`] through
//! `SYS_EVENTS`. Every loss is counted in `SYS_COUNTERS`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys and values are passed by reference to keep copies off the 512-byte BPF stack"
)]

use aya_ebpf::{
    bindings::{BPF_NOEXIST, bpf_pidns_info},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_ns_current_pid_tgid, bpf_ktime_get_boot_ns,
        },
    },
    macros::{fentry, fexit, map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{FEntryContext, FExitContext, RawTracePointContext},
};
use orb8_common::sys::{
    ErrnoKey, FENTRY_SLOTS, HIST_BUCKETS, Inflight, MAX_SYSCALLS, SysConfig, SysEvent, SysStats,
    counter, filter,
};

const EEXIST: i64 = 17;

/// The tracer's settings, fixed for the programs' lifetime: set by the agent at load time in
/// the read-only data section, so the verifier knows every field.
#[unsafe(no_mangle)]
static SYS_FIXED: SysConfig = SysConfig::OFF;

/// The syscall number each fentry/fexit slot counts, set by the agent at load time.
#[unsafe(no_mangle)]
static SYS_SLOTS: [u32; FENTRY_SLOTS] = [0; FENTRY_SLOTS];

/// The settings that change while the programs run (only `stream` is read), written by the agent.
#[map(name = "SYS_CONFIG")]
static SYS_CONFIG: Array<SysConfig> = Array::with_max_entries(1, 0);

/// Traced cgroup v2 ids, when there are several.
#[map(name = "SYS_CGROUPS")]
static SYS_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(1024, 0);

/// Bitmap of allowed syscall numbers, 64 per word.
#[map(name = "SYS_ALLOW")]
static SYS_ALLOW: Array<u64> = Array::with_max_entries(MAX_SYSCALLS / 64, 0);

/// Syscall slots of traced threads, by `pid_tgid`. Bounded: a thread whose slot does not fit
/// is counted (`inflight_full`) on each of its calls.
#[map(name = "SYS_INFLIGHT")]
static SYS_INFLIGHT: HashMap<u64, Inflight> = HashMap::with_max_entries(16384, 0);

/// Per-CPU statistics by syscall number.
#[map(name = "SYS_STATS")]
static SYS_STATS: PerCpuArray<SysStats> = PerCpuArray::with_max_entries(MAX_SYSCALLS, 0);

/// Per-CPU failed calls by syscall and errno.
#[map(name = "SYS_ERRNOS")]
static SYS_ERRNOS: PerCpuHashMap<ErrnoKey, u64> = PerCpuHashMap::with_max_entries(4096, 0);

/// Stream-mode events. The agent may resize it before loading.
#[map(name = "SYS_EVENTS")]
static SYS_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Per-CPU counters, one entry holding all of them, indexed by `sys::counter`.
#[map(name = "SYS_COUNTERS")]
static SYS_COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

type Counters = [u64; counter::COUNT as usize];

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = SYS_COUNTERS.get_ptr_mut(0) {
        // SAFETY: this CPU's copy of the entry.
        let c = unsafe { &mut *c };
        if let Some(v) = c.get_mut(index as usize) {
            *v += 1;
        }
    }
}

/// The fixed settings.
#[inline(always)]
fn fixed() -> SysConfig {
    // SAFETY: a plain read of a global; the volatile read keeps the compiler from assuming the
    // zero value it was compiled with (the agent sets it at load time).
    unsafe { core::ptr::read_volatile(&SYS_FIXED) }
}

/// The syscall number of fentry/fexit slot `i`.
#[inline(always)]
fn slot_nr(i: usize) -> u32 {
    // SAFETY: a plain read of a global, volatile for the reason given in [`fixed`].
    unsafe { core::ptr::read_volatile(&SYS_SLOTS[i]) }
}

/// Whether the current thread belongs to the target.
#[inline(always)]
fn traced(cfg: &SysConfig) -> bool {
    match cfg.filter {
        filter::CGROUP_ONE => {
            // SAFETY: helper without preconditions.
            let id = unsafe { bpf_get_current_cgroup_id() };
            id == cfg.target
        }
        filter::TGID => bpf_get_current_pid_tgid() >> 32 == cfg.target,
        filter::CGROUP => {
            // SAFETY: helper without preconditions.
            let id = unsafe { bpf_get_current_cgroup_id() };
            // SAFETY: the value is only tested for presence.
            unsafe { SYS_CGROUPS.get(&id) }.is_some()
        }
        filter::PIDNS => {
            let mut info = bpf_pidns_info { pid: 0, tgid: 0 };
            // SAFETY: `info` is a writable struct of the size given.
            let r = unsafe {
                bpf_get_ns_current_pid_tgid(
                    cfg.pidns_dev,
                    cfg.pidns_ino,
                    &mut info,
                    size_of::<bpf_pidns_info>() as u32,
                )
            };
            r == 0
        }
        _ => false,
    }
}

#[inline(always)]
fn allowed(nr: u32) -> bool {
    match SYS_ALLOW.get(nr / 64) {
        Some(word) => word & (1u64 << (nr % 64)) != 0,
        None => false,
    }
}

/// `floor(log2(ns)) + 1`, 0 for 0, capped at the last bucket: `orb8_syscalls::bucket_of`.
#[inline(always)]
fn bucket(ns: u64) -> usize {
    let b = (64 - ns.leading_zeros()) as usize;
    if b >= HIST_BUCKETS {
        HIST_BUCKETS - 1
    } else {
        b
    }
}

#[inline(always)]
fn record(nr: u32, ret: i64, ns: u64) {
    let Some(s) = SYS_STATS.get_ptr_mut(nr) else {
        return;
    };
    // SAFETY: this CPU's copy of the entry; the program does not migrate while it runs.
    let s = unsafe { &mut *s };
    s.calls += 1;
    s.total_ns += ns;
    if let Some(h) = s.hist.get_mut(bucket(ns)) {
        *h += 1;
    }
    if (-4095..=-1).contains(&ret) {
        s.errors += 1;
        record_errno(nr, (-ret) as u32);
    }
}

#[inline(always)]
fn record_errno(nr: u32, errno: u32) {
    let key = ErrnoKey { nr, errno };
    if let Some(v) = SYS_ERRNOS.get_ptr_mut(&key) {
        // SAFETY: this CPU's copy.
        unsafe { *v += 1 };
        return;
    }
    match SYS_ERRNOS.insert(&key, &1, BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(e) if e as i64 == -EEXIST => match SYS_ERRNOS.get_ptr_mut(&key) {
            // SAFETY: as above.
            Some(v) => unsafe { *v += 1 },
            None => count(counter::ERRNO_MAP_FULL),
        },
        Err(_) => count(counter::ERRNO_MAP_FULL),
    }
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn orb8_sys_enter(ctx: RawTracePointContext) -> i32 {
    let cfg = fixed();
    if !traced(&cfg) {
        return 0;
    }
    let id: i64 = ctx.arg(1);
    if id < 0 {
        return 0;
    }
    if id >= MAX_SYSCALLS as i64 {
        count(counter::NR_OUT_OF_RANGE);
        return 0;
    }
    let nr = id as u32;
    if cfg.allow_list != 0 && !allowed(nr) {
        return 0;
    }
    on_enter(&cfg, nr);
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn orb8_sys_exit(ctx: RawTracePointContext) -> i32 {
    let cfg = fixed();
    if !traced(&cfg) {
        return 0;
    }
    on_exit(ctx.arg(1));
    0
}

/// A traced thread entered syscall `nr`, which passed the allow-list: its start time goes into
/// the thread's slot; `exit`/`exit_group` are counted now.
#[inline(always)]
fn on_enter(cfg: &SysConfig, nr: u32) {
    count(counter::ENTERED);
    let pid_tgid = bpf_get_current_pid_tgid();
    if nr == cfg.nr_exit || nr == cfg.nr_exit_group {
        // Never returns: counted now, with no duration; the thread's slot goes with it.
        record(nr, 0, 0);
        let _ = SYS_INFLIGHT.remove(&pid_tgid);
        return;
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if let Some(slot) = SYS_INFLIGHT.get_ptr_mut(&pid_tgid) {
        // SAFETY: this thread's own slot; no other thread writes it.
        let slot = unsafe { &mut *slot };
        slot.enter_ns = now;
        slot.nr = nr as u64;
        return;
    }
    let slot = Inflight {
        enter_ns: now,
        nr: nr as u64,
    };
    if SYS_INFLIGHT
        .insert(&pid_tgid, &slot, BPF_NOEXIST as u64)
        .is_err()
    {
        count(counter::INFLIGHT_FULL);
    }
}

/// A traced thread returned `ret` from a syscall: the call in its slot, if any, is recorded.
#[inline(always)]
fn on_exit(ret: i64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(slot) = SYS_INFLIGHT.get_ptr_mut(&pid_tgid) else {
        return;
    };
    // SAFETY: this thread's own slot; no other thread writes it.
    let slot = unsafe { &mut *slot };
    let enter_ns = slot.enter_ns;
    if enter_ns == 0 {
        // No traced call in flight (its entry was filtered out, or came before the trace).
        return;
    }
    let nr = slot.nr as u32;
    slot.enter_ns = 0;
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let ns = now.saturating_sub(enter_ns);
    record(nr, ret, ns);
    if SYS_CONFIG.get(0).is_some_and(|c| c.stream != 0) {
        emit(pid_tgid, nr, ret, ns, now);
    }
}

/// One fentry/fexit pair: slot `$i` counts syscall `SYS_SLOTS[$i]`, on the kernel function the
/// agent names when it loads the pair.
macro_rules! fentry_slot {
    ($i:literal, $enter:ident, $exit:ident) => {
        #[fentry]
        pub fn $enter(_ctx: FEntryContext) -> i32 {
            let cfg = fixed();
            if traced(&cfg) {
                on_enter(&cfg, slot_nr($i));
            }
            0
        }

        #[fexit]
        pub fn $exit(ctx: FExitContext) -> i32 {
            let cfg = fixed();
            if traced(&cfg) {
                // The helper behind `ret` exists wherever fexit programs load (Linux >= 5.17).
                on_exit(ctx.ret::<i64>().unwrap_or(0));
            }
            0
        }
    };
}

fentry_slot!(0, orb8_sys_fentry_0, orb8_sys_fexit_0);
fentry_slot!(1, orb8_sys_fentry_1, orb8_sys_fexit_1);
fentry_slot!(2, orb8_sys_fentry_2, orb8_sys_fexit_2);
fentry_slot!(3, orb8_sys_fentry_3, orb8_sys_fexit_3);
fentry_slot!(4, orb8_sys_fentry_4, orb8_sys_fexit_4);
fentry_slot!(5, orb8_sys_fentry_5, orb8_sys_fexit_5);
fentry_slot!(6, orb8_sys_fentry_6, orb8_sys_fexit_6);
fentry_slot!(7, orb8_sys_fentry_7, orb8_sys_fexit_7);

#[inline(always)]
fn emit(pid_tgid: u64, nr: u32, ret: i64, ns: u64, now: u64) {
    let Some(mut entry) = SYS_EVENTS.reserve::<SysEvent>(0) else {
        count(counter::RINGBUF_FULL);
        return;
    };
    entry.write(SysEvent {
        ts_ns: now,
        pid_tgid,
        duration_ns: ns,
        ret,
        nr,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    entry.submit(0);
}

/// Does nothing: with [`orb8_bench_sys_exit`], the floor of the raw_syscalls approach that the
/// benchmarks compare the tracer with. Loaded only by `cargo xtask bench`.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn orb8_bench_sys_enter(_ctx: RawTracePointContext) -> i32 {
    0
}

/// Does nothing: see [`orb8_bench_sys_enter`].
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn orb8_bench_sys_exit(_ctx: RawTracePointContext) -> i32 {
    0
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
