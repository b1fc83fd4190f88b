//! Local mode (`--local`): runs `orb8-agent serve` as a child process on this host, waits for
//! the line saying where it listens, and stops it (SIGTERM, then SIGKILL) at the end.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::defaults::{AGENT_IDLE_TIMEOUT, LOCAL_START_TIMEOUT, LOCAL_STOP_GRACE};

/// The agent binary's name (without the platform's executable suffix).
pub const AGENT_BINARY: &str = "orb8-agent";
/// Environment variable naming the agent binary to run instead of searching for it.
pub const AGENT_BINARY_ENV: &str = "ORB8_AGENT_BINARY";
/// Environment variable through which the agent receives the session token.
pub const AGENT_TOKEN_ENV: &str = "ORB8_AGENT_TOKEN";

const STDERR_LINES_KEPT: usize = 50;

/// Why the local agent could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// Not running as root; the agent needs it to load eBPF programs.
    #[error("--local needs root to load eBPF programs: run it again with sudo")]
    NotRoot,
    /// Local mode is only available on Linux hosts.
    #[error(
        "--local runs orb8-agent on this host, which needs Linux: use cluster mode or --agent ADDR"
    )]
    Unsupported,
    /// No agent binary was found.
    #[error("cannot find {AGENT_BINARY} next to kubectl-orb8 ({dir}) or on PATH")]
    NotFound {
        /// The folder of this executable that was searched first.
        dir: String,
    },
    /// The binary could not be executed.
    #[error("cannot run the local agent {path}: {source}")]
    Spawn {
        /// The binary.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The agent exited before it was ready.
    #[error("local agent failed to start: {line}")]
    Failed {
        /// The agent's last stderr line, or how it exited.
        line: String,
    },
    /// The agent did not say where it listens in time.
    #[error(
        "local agent did not become ready within {}",
        humantime::format_duration(LOCAL_START_TIMEOUT)
    )]
    Timeout,
    /// The agent's ready line names an address this client cannot use.
    #[error("local agent reported an unusable address '{listening}'")]
    BadAddress {
        /// What it printed.
        listening: String,
    },
    /// No random token could be made.
    #[error("cannot make a session token: {0}")]
    Token(String),
}

/// Refuses to go on unless the effective user id is root (0).
pub fn check_root(euid: u32) -> Result<(), LocalError> {
    if euid == 0 {
        Ok(())
    } else {
        Err(LocalError::NotRoot)
    }
}

/// This process's effective user id; `None` where local mode is unsupported: everywhere but
/// Linux, since the agent's eBPF programs need a Linux kernel (macOS and Windows clients use
/// cluster mode or `--agent`).
pub fn effective_uid() -> Option<u32> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: geteuid has no preconditions and cannot fail.
        Some(unsafe { libc::geteuid() })
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The line the agent prints on stdout once it listens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Ready {
    /// `127.0.0.1:43567` or `unix:/path`.
    pub listening: String,
    /// The agent's node name.
    #[serde(default)]
    pub node: String,
    /// `tcx` or `tc`.
    #[serde(default)]
    pub attach_mode: String,
}

/// Reads a ready line; anything else the agent might print on stdout gives `None`.
pub fn parse_ready(line: &str) -> Option<Ready> {
    serde_json::from_str(line.trim()).ok()
}

/// Where the agent binary is: `override_path` (from [`AGENT_BINARY_ENV`]), else next to this
/// executable, else the first match on `path_var`.
pub fn find_agent_binary(
    override_path: Option<OsString>,
    own_exe: Option<&Path>,
    path_var: Option<&OsStr>,
) -> Result<PathBuf, LocalError> {
    if let Some(p) = override_path.filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let file = format!("{AGENT_BINARY}{}", std::env::consts::EXE_SUFFIX);
    let own_dir = own_exe.and_then(Path::parent);
    if let Some(candidate) = own_dir.map(|d| d.join(&file)).filter(|p| p.is_file()) {
        return Ok(candidate);
    }
    if let Some(found) = path_var
        .into_iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(&file))
        .find(|p| p.is_file())
    {
        return Ok(found);
    }
    Err(LocalError::NotFound {
        dir: own_dir.map_or_else(|| "?".to_string(), |d| d.display().to_string()),
    })
}

/// The agent's command line: `serve` on a free loopback port with the idle watchdog
/// ([`AGENT_IDLE_TIMEOUT`]), then the user's `--local-arg`s.
pub fn agent_args(local_args: &[String]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--idle-timeout".into(),
        format!("{}s", AGENT_IDLE_TIMEOUT.as_secs()),
    ];
    args.extend(local_args.iter().cloned());
    args
}

/// A fresh random session token: 32 hex digits.
pub fn new_token() -> Result<String, LocalError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| LocalError::Token(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

type StderrTail = Arc<Mutex<VecDeque<String>>>;

fn last_line(tail: &StderrTail) -> Option<String> {
    tail.lock()
        .ok()
        .and_then(|t| t.iter().rev().find(|l| !l.trim().is_empty()).cloned())
}

/// A running local agent; [`LocalAgent::stop`] ends it (dropping it kills it).
#[derive(Debug)]
pub struct LocalAgent {
    child: Child,
    /// What the agent said when it became ready.
    pub ready: Ready,
    /// The token the agent was given.
    pub token: String,
    stderr_tail: StderrTail,
}

impl LocalAgent {
    /// Starts `binary` with [`agent_args`] and waits for its ready line.
    pub async fn start(binary: &Path, local_args: &[String]) -> Result<LocalAgent, LocalError> {
        let token = new_token()?;
        let mut command = Command::new(binary);
        command
            .args(agent_args(local_args))
            .env(AGENT_TOKEN_ENV, &token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Its own process group: Ctrl-C reaches only the client, which stops the agent itself.
        #[cfg(unix)]
        command.process_group(0);
        let mut child = command.spawn().map_err(|source| LocalError::Spawn {
            path: binary.display().to_string(),
            source,
        })?;

        let stderr_tail: StderrTail = Arc::default();
        let stderr_task = child.stderr.take().map(|stderr| {
            let tail = stderr_tail.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(mut t) = tail.lock() {
                        if t.len() == STDERR_LINES_KEPT {
                            t.pop_front();
                        }
                        t.push_back(line);
                    }
                }
            })
        });

        let Some(stdout) = child.stdout.take() else {
            return Err(LocalError::Failed {
                line: "its stdout could not be read".to_string(),
            });
        };
        let mut lines = BufReader::new(stdout).lines();
        let waited = tokio::time::timeout(LOCAL_START_TIMEOUT, async {
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) => {
                        if let Some(ready) = parse_ready(&line) {
                            return Some(ready);
                        }
                    }
                    Ok(None) | Err(_) => return None,
                }
            }
        })
        .await;
        match waited {
            Ok(Some(ready)) => {
                // Keep reading so the agent never blocks on a full stdout pipe.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                Ok(LocalAgent {
                    child,
                    ready,
                    token,
                    stderr_tail,
                })
            }
            Ok(None) => {
                let status = tokio::time::timeout(LOCAL_STOP_GRACE, child.wait()).await;
                finish_stderr(stderr_task).await;
                let line = last_line(&stderr_tail).unwrap_or_else(|| match status {
                    Ok(Ok(s)) => exit_text(s),
                    _ => "it closed its stdout before it was ready".to_string(),
                });
                let _ = child.start_kill();
                Err(LocalError::Failed { line })
            }
            Err(_) => {
                let _ = child.kill().await;
                Err(LocalError::Timeout)
            }
        }
    }

    /// The last non-empty line the agent wrote on stderr, if any.
    pub fn last_stderr_line(&self) -> Option<String> {
        last_line(&self.stderr_tail)
    }

    /// Stops the agent: SIGTERM, up to [`LOCAL_STOP_GRACE`] to exit, then SIGKILL.
    pub async fn stop(mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        #[cfg(unix)]
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill has no memory-safety preconditions; the child has not been reaped
            // (try_wait above saw it running), so the pid is still our child's.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(LOCAL_STOP_GRACE, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

async fn finish_stderr(task: Option<JoinHandle<()>>) {
    if let Some(task) = task {
        let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
    }
}

fn exit_text(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("it exited with code {code} before it was ready"),
        None => format!("it was stopped ({status}) before it was ready"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_may_start_a_local_agent() {
        assert!(check_root(0).is_ok());
        let err = check_root(1000).expect_err("not root");
        assert_eq!(
            err.to_string(),
            "--local needs root to load eBPF programs: run it again with sudo"
        );
    }

    #[test]
    fn reads_the_ready_line() {
        let ready =
            parse_ready(r#"{"listening":"127.0.0.1:43567","node":"host-1","attach_mode":"tcx"}"#);
        assert_eq!(
            ready,
            Some(Ready {
                listening: "127.0.0.1:43567".into(),
                node: "host-1".into(),
                attach_mode: "tcx".into(),
            })
        );
        assert_eq!(
            parse_ready(r#"{"listening":"unix:/run/a.sock"}"#).map(|r| r.listening),
            Some("unix:/run/a.sock".to_string())
        );
        assert_eq!(parse_ready("loading probes..."), None);
    }

    #[test]
    fn agent_command_line() {
        assert_eq!(
            agent_args(&["--interface=eth0".to_string()]),
            vec![
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--idle-timeout",
                "30s",
                "--interface=eth0"
            ]
        );
    }

    #[test]
    fn tokens_are_32_hex_digits_and_differ() {
        let a = new_token().expect("token");
        let b = new_token().expect("token");
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn finds_the_agent_binary() {
        let dir = std::env::temp_dir().join(format!("orb8-find-{}", std::process::id()));
        let own = dir.join("own");
        let path_dir = dir.join("path");
        std::fs::create_dir_all(&own).expect("mkdir");
        std::fs::create_dir_all(&path_dir).expect("mkdir");
        let exe = own.join("kubectl-orb8");
        let agent_name = format!("{AGENT_BINARY}{}", std::env::consts::EXE_SUFFIX);
        std::fs::write(path_dir.join(&agent_name), b"").expect("write");

        let path_var = std::env::join_paths([&path_dir]).expect("join");
        let found = find_agent_binary(None, Some(&exe), Some(&path_var)).expect("on PATH");
        assert_eq!(found, path_dir.join(&agent_name));

        std::fs::write(own.join(&agent_name), b"").expect("write");
        let found = find_agent_binary(None, Some(&exe), Some(&path_var)).expect("next to exe");
        assert_eq!(found, own.join(&agent_name), "next to the client wins");

        let forced = find_agent_binary(Some("/opt/agent".into()), Some(&exe), None).expect("env");
        assert_eq!(forced, PathBuf::from("/opt/agent"));

        let empty = dir.join("empty");
        let err = find_agent_binary(None, Some(&empty.join("kubectl-orb8")), None)
            .expect_err("nothing there");
        assert!(
            err.to_string()
                .starts_with("cannot find orb8-agent next to")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
