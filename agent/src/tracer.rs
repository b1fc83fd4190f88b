//! What the on-demand kernel tracers (`drops`, `tcp`) share: the kernel's address form for
//! their filters, per-CPU counter sums, and the ring-buffer reader feeding their fan-out.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use tokio::{io::unix::AsyncFd, sync::broadcast};

/// An address as the kernel filters and keys store it (IPv4-mapped).
pub fn key_addr(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// A filter's addresses in words ("every address" when empty).
pub fn describe(addrs: &[[u8; 16]]) -> String {
    if addrs.is_empty() {
        return "every address".into();
    }
    let shown: Vec<String> = addrs
        .iter()
        .map(|a| std::net::Ipv6Addr::from(*a).to_canonical().to_string())
        .collect();
    shown.join(", ")
}

/// A per-CPU counter array's single entry, summed over CPUs.
pub fn read_counters<const N: usize>(map: &PerCpuArray<MapData, [u64; N]>) -> [u64; N] {
    let mut out = [0u64; N];
    if let Ok(per_cpu) = map.get(&0, 0) {
        for cpu in per_cpu.iter() {
            for (o, v) in out.iter_mut().zip(cpu) {
                *o += v;
            }
        }
    }
    out
}

/// Reads `T` records from the ring buffer whenever the kernel says it is readable, counts them
/// in `received` and fans them out through `tx`.
pub async fn read_ring<T: Copy + Send + 'static>(
    mut ring: AsyncFd<RingBuf<MapData>>,
    tx: broadcast::Sender<T>,
    received: Arc<AtomicU64>,
) {
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                log::error!("tracer ring buffer poll failed: {e}");
                return;
            }
        };
        let rb = guard.get_inner_mut();
        while let Some(item) = rb.next() {
            if item.len() < size_of::<T>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole `T` (checked length), a plain `repr(C)` record;
            // read unaligned.
            let ev: T = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            received.fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(ev);
        }
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_addresses_are_keyed_mapped() {
        let a = key_addr("10.1.2.3".parse().unwrap());
        assert_eq!(&a[10..], &[0xff, 0xff, 10, 1, 2, 3]);
        assert_eq!(describe(&[a]), "10.1.2.3");
        assert_eq!(describe(&[]), "every address");
    }
}
