//! An independent oracle for packet counts: an AF_PACKET socket on an interface of a test
//! namespace, counting what really crossed it. Every socket call is checked; the capture ends
//! two seconds after the last matching frame, and panics if matching traffic never stops.

use std::io::Error;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::thread;
use std::time::{Duration, Instant};

use crate::netns::{NetNs, spawn_in};

/// What an AF_PACKET socket saw of one direction of a TCP connection.
#[derive(Debug, Default, PartialEq)]
pub struct CapturedTcp {
    /// Packets.
    pub packets: u64,
    /// IP bytes.
    pub bytes: u64,
    /// TCP payload bytes.
    pub payload: u64,
    /// OR of TCP flags.
    pub flags: u8,
}

/// Quiet time after the last matching frame that ends a capture.
const QUIET: Duration = Duration::from_secs(2);

/// The longest a capture may run: matching traffic that never stops fails the test.
const CAPTURE_LIMIT: Duration = Duration::from_secs(120);

/// Captures IPv4 TCP frames on one port on `iface` of `ns` with an AF_PACKET socket, until
/// two seconds pass without one; returns (towards the node, from the node).
pub fn capture_tcp(
    ns: &NetNs,
    iface: &str,
    port: u16,
) -> thread::JoinHandle<(CapturedTcp, CapturedTcp)> {
    let ifindex = ns.ifindex(iface);
    let iface = iface.to_string();
    spawn_in(ns, move |ready| {
        // SAFETY: socket has no memory preconditions; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                (libc::ETH_P_ALL as u16).to_be() as i32,
            )
        };
        assert!(raw >= 0, "packet socket: {}", Error::last_os_error());
        // SAFETY: `raw` is a socket this thread just opened and owns from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: sll is a valid sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            rc,
            0,
            "binding the packet socket to {iface}: {}",
            Error::last_os_error()
        );
        // Without this, a quiet interface would block the capture forever.
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: tv is a valid timeval of the given size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                size_of::<libc::timeval>() as u32,
            )
        };
        assert_eq!(
            rc,
            0,
            "setting SO_RCVTIMEO on the packet socket: {}",
            Error::last_os_error()
        );
        ready.send(()).expect("the caller waits for ready");
        let (mut to_node, mut from_node) = (CapturedTcp::default(), CapturedTcp::default());
        let mut buf = [0u8; 65536];
        let started = Instant::now();
        let mut last_match = started;
        while last_match.elapsed() < QUIET {
            assert!(
                started.elapsed() < CAPTURE_LIMIT,
                "TCP port {port} on {iface} never went quiet for {QUIET:?} within \
                 {CAPTURE_LIMIT:?}: {to_node:?} {from_node:?}"
            );
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buffers are valid for the sizes given.
            let n = unsafe {
                libc::recvfrom(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                    &mut from as *mut _ as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n < 0 {
                let e = Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN | libc::EINTR) => continue,
                    _ => panic!("receiving on the packet socket on {iface}: {e}"),
                }
            }
            let f = &buf[..n as usize];
            if f.len() < 14 + 20 || u16::from_be_bytes([f[12], f[13]]) != 0x0800 || f[14 + 9] != 6 {
                continue;
            }
            let ip = &f[14..];
            let ihl = ((ip[0] & 0xf) * 4) as usize;
            let tot = u16::from_be_bytes([ip[2], ip[3]]) as u64;
            let tcp = &ip[ihl..];
            let (sp, dp) = (
                u16::from_be_bytes([tcp[0], tcp[1]]),
                u16::from_be_bytes([tcp[2], tcp[3]]),
            );
            if sp != port && dp != port {
                continue;
            }
            last_match = Instant::now();
            let doff = ((tcp[12] >> 4) * 4) as u64;
            let side = if from.sll_pkttype == libc::PACKET_OUTGOING {
                &mut from_node
            } else {
                &mut to_node
            };
            side.packets += 1;
            side.bytes += tot;
            side.payload += tot - ihl as u64 - doff;
            side.flags |= tcp[13];
        }
        (to_node, from_node)
    })
}

/// TCP flags as tcpdump letters.
pub fn flags(f: u8) -> String {
    [
        (0x01, 'F'),
        (0x02, 'S'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x10, '.'),
        (0x20, 'U'),
        (0x40, 'E'),
        (0x80, 'W'),
    ]
    .iter()
    .filter(|(b, _)| f & b != 0)
    .map(|(_, c)| *c)
    .collect()
}
