//! Traffic between the tests' network namespaces: UDP datagrams and a TCP request/response
//! exchange, each side on a thread inside its namespace. Sends are paced so that no queue
//! overflows on a busy machine.

use std::{
    thread,
    time::{Duration, Instant},
};

use crate::netns::{NetNs, spawn_in};

/// Binds a UDP socket to `addr`, waiting (up to 2 s) while the address is still in use. A
/// socket this process closed a moment ago (the same fixed port, bound again by the next send)
/// can still be held by a child another test is spawning: between its fork and its exec the
/// child holds a copy of every descriptor, close-on-exec or not, and on a loaded machine that
/// gap lasts milliseconds.
pub fn bind_udp(addr: &str) -> std::net::UdpSocket {
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        match std::net::UdpSocket::bind(addr) {
            Ok(s) => return s,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < end => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }
}

/// Receives UDP datagrams on `bind` until `count` arrived or 10 s passed; returns how many.
pub fn udp_receiver(ns: &NetNs, bind: &str, count: usize) -> thread::JoinHandle<usize> {
    let bind = bind.to_string();
    spawn_in(ns, move |ready| {
        let s = bind_udp(&bind);
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        ready.send(()).expect("ready");
        let end = Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 65536];
        let mut got = 0;
        while got < count && Instant::now() < end {
            if s.recv_from(&mut buf).is_ok() {
                got += 1;
            }
        }
        got
    })
}

/// Sends `count` UDP datagrams of `size` payload bytes from `bind` to `dst`, inside `ns`.
pub fn udp_send(ns: &NetNs, bind: &str, dst: &str, count: usize, size: usize) {
    let (bind, dst) = (bind.to_string(), dst.to_string());
    ns.run_in(move || {
        let s = bind_udp(&bind);
        let buf = vec![0x5au8; size];
        for _ in 0..count {
            s.send_to(&buf, &dst)
                .unwrap_or_else(|e| panic!("send to {dst}: {e}"));
            // Paced so no socket or backlog queue overflows on a busy machine.
            thread::sleep(Duration::from_micros(200));
        }
    });
}

/// A TCP client in `client` exchanging `rounds` request/response messages of `size` bytes with a
/// server in `server` on `ip:port` (TCP_NODELAY, one message in flight), then closing.
pub fn tcp_exchange(
    client: &NetNs,
    server: &NetNs,
    ip: &str,
    port: u16,
    rounds: usize,
    size: usize,
) {
    use std::io::{Read, Write};
    let server_addr = format!("{ip}:{port}");
    let srv = spawn_in(server, move |ready| {
        let l = std::net::TcpListener::bind(&server_addr).unwrap();
        ready.send(()).unwrap();
        let (mut c, _) = l.accept().unwrap();
        let mut buf = vec![0u8; size];
        for _ in 0..rounds {
            c.read_exact(&mut buf).unwrap();
            c.write_all(&buf).unwrap();
        }
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
    });
    let dst = format!("{ip}:{port}");
    client.run_in(move || {
        let mut c = std::net::TcpStream::connect(&dst).unwrap();
        c.set_nodelay(true).unwrap();
        let mut buf = vec![7u8; size];
        for _ in 0..rounds {
            c.write_all(&buf).unwrap();
            c.read_exact(&mut buf).unwrap();
        }
    });
    srv.join().unwrap();
}
