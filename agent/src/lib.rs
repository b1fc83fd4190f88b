//! orb8's node agent.
pub mod ebpf {
    //! The eBPF object built by `build.rs`.
    /// The compiled eBPF object (ELF, BTF included), aligned for aya's parser.
    pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/orb8"));
    /// The syscall tracer's object, loaded only when a client asks for a syscall trace.
    pub static SYSCALLS_OBJECT: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/orb8-syscalls"));
    /// The packet drop tracer's object, loaded only while a client traces drops.
    pub static DROPS_OBJECT: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/orb8-drops"));
    /// The TCP lifecycle tracer's object, loaded only while a client traces TCP.
    pub static TCP_OBJECT: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/orb8-tcp"));
}
pub mod btf;
pub mod cgroups;
pub mod clsact;
pub mod containers;
pub mod convert;
pub mod defaults;
pub mod dns;
pub mod drops;
pub mod flows;
pub mod gpu;
pub mod interfaces;
pub mod metrics;
pub mod peers;
pub mod probes;
pub mod report;
pub mod runtime;
pub mod service;
pub mod syscalls;
pub mod tcp;
pub mod tracer;
