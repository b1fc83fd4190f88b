#![cfg(unix)]
//! `--local` with stand-in agent binaries (shell scripts named by ORB8_AGENT_BINARY): the
//! command line and token the agent gets, its ready line, failure before ready, and that it is
//! stopped at the end. Starting a local agent needs root; as another user only the refusal is
//! checked. One test function, so no other test thread forks while a script is being written.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use orb8_testkit::fake_agent::{FakeAgent, flow, serve_tcp};

const BIN: &str = env!("CARGO_BIN_EXE_kubectl-orb8");

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn run_local(agent: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--local")
        .args(args)
        .env("ORB8_AGENT_BINARY", agent)
        .env_remove("ORB8_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("kubectl-orb8 runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn process_gone(pid: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for init to reap it.
        if state.is_empty() || state.split_whitespace().nth(2) == Some("Z") {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn local_mode_runs_and_stops_the_agent() {
    let dir = std::env::temp_dir().join(format!("orb8-local-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");

    if !is_root() {
        let o = run_local(Path::new("/nonexistent"), &["status"]);
        assert_eq!(o.status.code(), Some(1));
        assert_eq!(
            text(&o.stderr),
            "orb8: --local needs root to load eBPF programs: run it again with sudo\n"
        );
        eprintln!("not root: only the refusal of --local was checked");
        return;
    }

    // An agent that fails while loading its probes.
    let failing = write_script(
        &dir,
        "failing-agent",
        "echo 'loading probes' >&2\necho 'error: loading the TC program: Operation not permitted' >&2\nexit 1",
    );
    let o = run_local(&failing, &["status"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stderr),
        "orb8: local agent failed to start: error: loading the TC program: Operation not permitted\n"
    );

    // An agent that exits silently.
    let silent = write_script(&dir, "silent-agent", "exit 3");
    let o = run_local(&silent, &["status"]);
    assert_eq!(
        text(&o.stderr),
        "orb8: local agent failed to start: it exited with code 3 before it was ready\n"
    );

    // An agent that starts: it prints its ready line pointing at a fake agent server, records
    // its arguments and token, then waits to be stopped.
    let mut fake = FakeAgent::new("local-node");
    fake.flows = vec![flow("local-node", 500, 5, 53)];
    let server = serve_tcp(fake);
    let working = write_script(
        &dir,
        "working-agent",
        &format!(
            "echo \"$@\" > '{dir}/args'\n\
             printf '%s' \"$ORB8_AGENT_TOKEN\" > '{dir}/token'\n\
             echo $$ > '{dir}/pid'\n\
             echo 'a log line that is not JSON'\n\
             echo '{{\"listening\":\"{addr}\",\"node\":\"local-node\",\"attach_mode\":\"tcx\"}}'\n\
             exec sleep 60",
            dir = dir.display(),
            addr = server.addr
        ),
    );
    let o = run_local(
        &working,
        &[
            "--local-arg=--interface=eth0",
            "--local-arg",
            "--attach=tc",
            "flows",
            "-o",
            "json",
            "--duration",
            "0s",
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let flows: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(flows[0]["node"], "local-node");
    assert_eq!(flows[0]["bytes"], 500);

    let args = std::fs::read_to_string(dir.join("args")).expect("args recorded");
    assert_eq!(
        args.trim(),
        "serve --listen 127.0.0.1:0 --idle-timeout 30s --interface=eth0 --attach=tc"
    );
    let token = std::fs::read_to_string(dir.join("token")).expect("token recorded");
    assert_eq!(token.len(), 32, "{token:?}");
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()), "{token:?}");
    let sent = server.tokens();
    assert!(!sent.is_empty());
    assert!(
        sent.iter()
            .all(|t| t.as_deref() == Some(format!("Bearer {token}").as_str())),
        "the client sends the token it gave the agent: {sent:?}"
    );
    let pid = std::fs::read_to_string(dir.join("pid")).expect("pid recorded");
    assert!(
        process_gone(pid.trim()),
        "the local agent {pid} was not stopped"
    );

    let _ = std::fs::remove_dir_all(&dir);
}
