//! `kubectl orb8 completion SHELL`: the completion script for the `kubectl-orb8` binary,
//! generated from the same clap definition that parses the command line, so the two cannot
//! disagree. Touches no agent and no cluster.

use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::cli::Cli;

/// The name the scripts complete: the binary kubectl finds on PATH.
pub const BIN: &str = "kubectl-orb8";

/// The completion script for `shell`.
pub fn script(shell: Shell) -> Vec<u8> {
    // `kubectl orb8` (the help's name) has a space: the scripts would name their functions
    // after it, and bash's would not find its subcommands.
    let mut cmd = Cli::command().bin_name(BIN);
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, BIN, &mut out);
    if shell == Shell::Bash {
        out = patch_bash(&out);
    }
    out
}

/// clap_complete's bash script spells the hyphen of `kubectl-orb8` two ways: the loop that
/// walks the words sets `cmd=kubectl__orb8__subcmd__flows`, the dispatch matches
/// `kubectl__subcmd__orb8__subcmd__flows`, so nothing below the first word completed. One
/// spelling, the loop's, for both.
fn patch_bash(script: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(script)
        .replace("kubectl__subcmd__orb8", "kubectl__orb8")
        .into_bytes()
}
