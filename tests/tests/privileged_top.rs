//! Privileged end-to-end: `kubectl-orb8 top --local` in a real terminal (a tmux pane), inside a
//! test node namespace, while one test pod sends a UDP stream to another. The screen is read
//! with `tmux capture-pane`: the stream's talker shows with a non-zero rate, the view redraws at
//! 80x24 after a resize, `q` quits, the local agent is gone and its probes detached, and the
//! terminal is back in cooked mode on the normal screen.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use orb8_testkit::preconditions::require_root_or_skip;
use orb8_testkit::*;

/// A tmux server of this test's own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(width: u16, height: u16, command: &str) -> Tmux {
        let tmux = Tmux {
            socket: unique("o8top"),
        };
        let out = Command::new("tmux")
            .args(["-L", &tmux.socket, "-f", "/dev/null", "new-session", "-d"])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .arg(command)
            .output()
            .expect("tmux is installed (scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tmux
    }

    fn cmd(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("running tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> Vec<String> {
        self.cmd(&["capture-pane", "-p"])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Polls the screen until `found` returns something, for at most `limit`.
    fn wait_for<T>(
        &self,
        limit: Duration,
        what: &str,
        found: impl Fn(&[String]) -> Option<T>,
    ) -> T {
        let end = Instant::now() + limit;
        loop {
            let screen = self.screen();
            if let Some(t) = found(&screen) {
                return t;
            }
            assert!(
                Instant::now() < end,
                "{what} never showed; the screen:\n{}",
                screen.join("\n")
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// The packets/s value of a talker row (the column after BYTES/S), when the row has one.
fn packets_per_sec(row: &str) -> Option<f64> {
    let cols: Vec<&str> = row.split_whitespace().collect();
    let at = cols.iter().position(|c| c.ends_with("B/s"))?;
    let v = cols.get(at + 1)?;
    match v.strip_suffix('k') {
        Some(k) => k.parse::<f64>().ok().map(|k| k * 1000.0),
        None => v.parse().ok(),
    }
}

#[test]
fn privileged_top_local_shows_a_live_udp_stream_and_quits_cleanly() {
    if !require_root_or_skip("privileged_top_local_shows_a_live_udp_stream_and_quits_cleanly") {
        return;
    }
    let topo = Topology::new(2);
    let (a, b) = (&topo.pods[0], &topo.pods[1]);
    let client = workspace_bin("kubectl-orb8");
    // After top exits the pane keeps the exit status and the terminal's mode for the checks.
    let command = format!(
        "ip netns exec {} {} top --local --interval 500ms; echo TOP-EXITED=$?; stty -a; sleep 60",
        topo.node.name,
        client.display()
    );
    let tmux = Tmux::start(200, 50, &command);
    wait_attached(&topo.node, &a.host_if);
    wait_attached(&topo.node, &b.host_if);

    // A UDP stream a -> b:5000, 5 datagrams of 200 bytes every 50 ms, until stopped (at most
    // 30 s).
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        let (src, dst) = (format!("{}:41000", a.ip4), format!("{}:5000", b.ip4));
        spawn_in(&a.ns, move |ready| {
            let s = std::net::UdpSocket::bind(&src).expect("bind");
            ready.send(()).expect("ready");
            let end = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                for _ in 0..5 {
                    // Nobody listens on b:5000; the datagrams still cross both veths.
                    let _ = s.send_to(&[0x5a; 200], &dst);
                }
                thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let (a_ip, b_ip) = (a.ip4.clone(), b.ip4.clone());
    let row = tmux.wait_for(Duration::from_secs(30), "the UDP talker with a rate", |s| {
        s.iter()
            .find(|l| {
                l.contains(&a_ip)
                    && l.contains(&b_ip)
                    && l.contains("udp/5000")
                    && packets_per_sec(l).is_some_and(|p| p > 0.0)
            })
            .cloned()
    });
    assert!(row.contains("B/s"), "{row}");

    // Resize-safe: at 80x24 the narrow table shows the same talker.
    tmux.cmd(&["resize-window", "-x", "80", "-y", "24"]);
    tmux.wait_for(Duration::from_secs(10), "the 80-column view", |s| {
        (s.len() <= 24
            && s.iter().all(|l| l.chars().count() <= 80)
            && s.iter()
                .any(|l| l.contains("HISTORY") && !l.contains("CONNS"))
            && s.iter().any(|l| l.contains("udp/5000")))
        .then_some(())
    });

    tmux.cmd(&["send-keys", "q"]);
    let exit = tmux.wait_for(Duration::from_secs(30), "top's exit", |s| {
        s.iter()
            .find_map(|l| l.strip_prefix("TOP-EXITED=").map(str::to_string))
    });
    stop.store(true, Ordering::Relaxed);
    sender.join().expect("sender");
    assert_eq!(exit, "0", "top's exit status");

    // The terminal is back: cooked mode with echo, on the normal screen (the stty output is
    // on it, and no talker table is).
    let screen = tmux.wait_for(Duration::from_secs(10), "stty's output", |s| {
        s.iter().any(|l| l.contains("icanon")).then(|| s.to_vec())
    });
    let modes = screen.join(" ");
    let words: Vec<&str> = modes.split_whitespace().collect();
    assert!(
        words.contains(&"icanon") && !words.contains(&"-icanon"),
        "{modes}"
    );
    assert!(
        words.contains(&"echo") && !words.contains(&"-echo"),
        "{modes}"
    );
    assert!(!screen.iter().any(|l| l.contains("top talkers")), "{modes}");

    // The local agent is gone and its probes are detached.
    let pids = run(&["ip", "netns", "pids", &topo.node.name]);
    for pid in pids.split_whitespace() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert_ne!(
            comm.trim(),
            "orb8-agent",
            "the local agent (pid {pid}) is still running"
        );
    }
    for iface in [&a.host_if, &b.host_if] {
        assert!(
            !tcx_programs(&topo.node, iface)
                .iter()
                .any(|p| p.starts_with("orb8")),
            "orb8 programs still attached to {iface}"
        );
    }
}
