//! Library half of `orb8-ebpf`: empty, so the agent's build script can depend on the crate and be
//! rebuilt when the programs change. The programs live in `main.rs`.
#![no_std]
