//! Every `kubectl orb8 ...` example in the README parses with the real command line
//! definition, so the README cannot drift from the flags. (The run command itself is executed
//! by a privileged end-to-end test in `tests/`.)

use std::ffi::OsString;

use clap::Parser as _;
use kubectl_orb8::cli::{Cli, hoist_repeatable_globals};

fn examples() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let mut out = Vec::new();
    let mut in_sh = false;
    for line in readme.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        // The command, without a trailing comment or a pipe into another program.
        let cmd = line.split(" #").next().unwrap_or_default();
        let cmd = cmd.split(" | ").next().unwrap_or_default().trim();
        for prefix in ["kubectl orb8 ", "./target/release/kubectl-orb8 "] {
            if let Some(i) = cmd.find(prefix) {
                out.push(cmd[i + prefix.len()..].to_string());
            }
        }
    }
    out
}

#[test]
fn readme_examples_parse() {
    let examples = examples();
    assert!(examples.len() >= 6, "found only {examples:?}");
    for e in &examples {
        let args: Vec<OsString> = std::iter::once("kubectl-orb8")
            .chain(e.split_whitespace())
            .map(OsString::from)
            .collect();
        if let Err(err) = Cli::try_parse_from(hoist_repeatable_globals(args)) {
            panic!("README example `kubectl orb8 {e}` does not parse: {err}");
        }
    }
}
