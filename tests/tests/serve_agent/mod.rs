//! `orb8-agent serve` on a unix socket inside a test's network namespace, for the privileged
//! end-to-end tests that talk to a running agent with `--agent`.

use std::{
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use orb8_testkit::{NetNs, unique, workspace_bin};
use serde_json::Value;

/// An `orb8-agent serve` on a unix socket inside a namespace.
pub struct ServeAgent {
    /// The agent process.
    pub child: Child,
    /// Its socket path.
    pub socket: String,
}

impl ServeAgent {
    /// Starts the agent in `ns` as node `node`, accepting `token`, and waits until it listens.
    pub fn start(ns: &NetNs, node: &str, token: &str) -> ServeAgent {
        Self::start_with(ns, node, token, &[])
    }

    /// Like [`ServeAgent::start`], with more `serve` arguments.
    pub fn start_with(ns: &NetNs, node: &str, token: &str, extra: &[&str]) -> ServeAgent {
        let socket = format!("/tmp/{}.sock", unique("o8s"));
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(workspace_bin("orb8-agent"))
            .args([
                "serve",
                "--listen",
                &format!("unix:{socket}"),
                "--node",
                node,
                "--idle-timeout",
                "60s",
            ])
            .args(extra)
            .env("ORB8_AGENT_TOKEN", token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning orb8-agent serve");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let ready: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
        assert_eq!(ready["listening"], format!("unix:{socket}"));
        ServeAgent { child, socket }
    }
}

impl Drop for ServeAgent {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < end {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}
