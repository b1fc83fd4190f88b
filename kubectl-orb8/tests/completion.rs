//! `kubectl orb8 completion SHELL`: each script is run by its real shell. Bash completes
//! subcommands, flags and flag values below the first word (the hyphenated binary name once
//! broke that); fish completes flag values; zsh parses the script; PowerShell's registers the
//! binary. A shell that is not installed is reported as SKIPPED (scripts/setup.sh installs
//! bash, zsh and fish).

use std::process::{Command, Stdio};

use orb8_testkit::preconditions::skipped;

const BIN: &str = env!("CARGO_BIN_EXE_kubectl-orb8");

fn script(shell: &str) -> String {
    let o = Command::new(BIN)
        .args(["completion", shell])
        .stdin(Stdio::null())
        .output()
        .expect("kubectl-orb8 runs");
    assert!(o.status.success(), "{o:?}");
    assert!(o.stderr.is_empty(), "{o:?}");
    String::from_utf8(o.stdout).expect("utf-8")
}

fn has(shell: &str) -> bool {
    Command::new(shell)
        .args(["-c", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Writes `text` to a file of this test process (removed by the caller).
fn file(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("orb8-completion-{}-{name}", std::process::id()));
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn bash_completes_below_the_first_word() {
    if !has("bash") {
        skipped(
            "bash_completes_below_the_first_word",
            "bash is not installed",
        );
        return;
    }
    let path = file("bash", &script("bash"));
    let probe = r#"
        source "$1"
        t() { COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMPREPLY=()
              _kubectl__orb8 kubectl-orb8 "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
              echo "${COMPREPLY[*]}"; }
        complete -p kubectl-orb8
        t kubectl-orb8 fl
        t kubectl-orb8 flows --so
        t kubectl-orb8 flows --sort ''
        t kubectl-orb8 -n shop trace sys
        t kubectl-orb8 completion ''
    "#;
    let o = Command::new("bash")
        .args(["-c", probe, "probe"])
        .arg(&path)
        .output()
        .expect("bash runs");
    let _ = std::fs::remove_file(&path);
    assert!(o.status.success(), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.len(),
        6,
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(lines[0].ends_with(" kubectl-orb8"), "{}", lines[0]);
    assert!(lines[0].contains("-F _kubectl__orb8"), "{}", lines[0]);
    assert_eq!(lines[1], "flows");
    assert_eq!(lines[2], "--sort");
    assert_eq!(lines[3], "bytes packets time");
    assert_eq!(lines[4], "syscall");
    assert!(
        lines[5].ends_with("bash elvish fish powershell zsh"),
        "{}",
        lines[5]
    );
}

#[test]
fn fish_completes_flag_values() {
    if !has("fish") {
        skipped("fish_completes_flag_values", "fish is not installed");
        return;
    }
    let path = file("fish", &script("fish"));
    let o = Command::new("fish")
        .args([
            "-c",
            "source $argv[1]; complete -C 'kubectl-orb8 flows --sort '",
        ])
        .arg(&path)
        .output()
        .expect("fish runs");
    let _ = std::fs::remove_file(&path);
    assert!(o.status.success(), "{o:?}");
    let values: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.split('\t').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(values, vec!["bytes", "packets", "time"]);
}

#[test]
fn zsh_parses_its_script() {
    let text = script("zsh");
    assert!(
        text.starts_with("#compdef kubectl-orb8\n"),
        "{}",
        &text[..40]
    );
    if !has("zsh") {
        skipped("zsh_parses_its_script", "zsh is not installed");
        return;
    }
    let path = file("zsh", &text);
    let o = Command::new("zsh")
        .arg("-n")
        .arg(&path)
        .output()
        .expect("zsh runs");
    let _ = std::fs::remove_file(&path);
    assert!(o.status.success(), "{o:?}");
}

#[test]
fn powershell_registers_the_binary() {
    // No PowerShell in Debian: the registration line is what makes it complete.
    let text = script("powershell");
    assert!(
        text.contains("Register-ArgumentCompleter -Native -CommandName 'kubectl-orb8'"),
        "{text}"
    );
    assert!(text.contains("'kubectl-orb8;flows'"), "subcommands listed");
}

#[test]
fn an_unknown_shell_is_one_line() {
    let o = Command::new(BIN)
        .args(["completion", "tcsh"])
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("orb8: invalid value 'tcsh'"), "{err}");
}
