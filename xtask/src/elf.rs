//! What an ELF file's headers say about where it runs: its machine, and whether it needs a
//! dynamic loader. The agent in the image must be static (the image has no libc) and built for
//! the platform the index says.

use anyhow::{bail, ensure};

/// `e_machine` of x86_64.
pub const EM_X86_64: u16 = 62;
/// `e_machine` of aarch64.
pub const EM_AARCH64: u16 = 183;

const PT_INTERP: u32 = 3;

/// The facts [`read`] finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elf {
    /// `e_machine`.
    pub machine: u16,
    /// Whether a `PT_INTERP` program header names a dynamic loader.
    pub dynamic: bool,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Reads a 64-bit little-endian ELF file's machine and program headers.
pub fn read(bytes: &[u8]) -> anyhow::Result<Elf> {
    ensure!(bytes.starts_with(b"\x7fELF"), "not an ELF file");
    ensure!(
        bytes.get(4) == Some(&2) && bytes.get(5) == Some(&1),
        "not a 64-bit little-endian ELF file"
    );
    let parse = || -> Option<Elf> {
        let machine = u16_at(bytes, 18)?;
        let phoff = usize::try_from(u64_at(bytes, 32)?).ok()?;
        let phentsize = usize::from(u16_at(bytes, 54)?);
        let phnum = usize::from(u16_at(bytes, 56)?);
        let mut dynamic = false;
        for i in 0..phnum {
            if u32_at(bytes, phoff.checked_add(i.checked_mul(phentsize)?)?)? == PT_INTERP {
                dynamic = true;
            }
        }
        Some(Elf { machine, dynamic })
    };
    match parse() {
        Some(elf) => Ok(elf),
        None => bail!("truncated ELF headers"),
    }
}

/// The `e_machine` of an OCI architecture name.
pub fn machine_of(arch: &str) -> anyhow::Result<u16> {
    match arch {
        "amd64" => Ok(EM_X86_64),
        "arm64" => Ok(EM_AARCH64),
        other => bail!("no ELF machine known for {other}"),
    }
}

/// Checks that `bytes` is a static executable for `arch` (`amd64`, `arm64`).
pub fn check_static(arch: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let elf = read(bytes)?;
    let want = machine_of(arch)?;
    ensure!(
        elf.machine == want,
        "the {arch} binary is for ELF machine {}, expected {want}",
        elf.machine
    );
    ensure!(
        !elf.dynamic,
        "the {arch} binary needs a dynamic loader; the image has none (build it for musl)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_a_dynamic_host_executable() {
        let me = std::fs::read(std::env::current_exe().expect("exe")).expect("read");
        let elf = read(&me).expect("elf");
        let host = if cfg!(target_arch = "x86_64") {
            EM_X86_64
        } else {
            EM_AARCH64
        };
        assert_eq!(elf.machine, host);
        // Test binaries link glibc dynamically: the static check must refuse them.
        assert!(elf.dynamic);
        let arch = if cfg!(target_arch = "x86_64") {
            "amd64"
        } else {
            "arm64"
        };
        let err = check_static(arch, &me).expect_err("dynamic");
        assert!(err.to_string().contains("dynamic loader"), "{err}");
        let other = if arch == "amd64" { "arm64" } else { "amd64" };
        let err = check_static(other, &me).expect_err("wrong machine");
        assert!(err.to_string().contains("ELF machine"), "{err}");
        assert!(read(b"#!/bin/sh\n").is_err());
        assert!(read(&me[..40]).is_err());
    }
}
