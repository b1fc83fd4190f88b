//! orb8's node agent.
pub mod ebpf {
    //! The eBPF object built by `build.rs`.
    /// The compiled eBPF object (ELF, BTF included), aligned for aya's parser.
    pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/orb8"));
}
pub mod convert;
pub mod flows;
pub mod interfaces;
pub mod probes;
pub mod report;
pub mod runtime;
pub mod service;
