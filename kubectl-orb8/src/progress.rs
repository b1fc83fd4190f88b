//! What the user sees on stderr while a command works: a spinner (connecting, collecting with
//! a countdown), one line per node while agent pods start, and warnings. Spinners are drawn only
//! when stderr is a terminal, so that pipes and logs stay clean; warnings always print.
//!
//! Imports nothing from the crate: the layers that report progress sit above it.

use std::borrow::Cow;
use std::io::{IsTerminal, Write as _};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Prints a warning on stderr (`orb8: warning: ...`); a closed stderr is ignored.
pub fn warn(message: &str) {
    let _ = writeln!(std::io::stderr(), "orb8: warning: {message}");
}

/// Prints an informational line on stderr (`orb8: ...`, for `-v`); a closed stderr is ignored.
pub fn info(message: &str) {
    let _ = writeln!(std::io::stderr(), "orb8: {message}");
}

/// A spinner with a message; invisible when stderr is not a terminal.
#[derive(Debug, Clone)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// Starts a spinner showing `message`.
    pub fn spinner(message: impl Into<Cow<'static, str>>) -> Self {
        let bar = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        } else {
            ProgressBar::hidden()
        };
        bar.set_message(message);
        Progress { bar }
    }

    /// Replaces the message.
    pub fn set_message(&self, message: impl Into<Cow<'static, str>>) {
        self.bar.set_message(message);
    }

    /// Prints a line on stderr without tearing the spinner.
    pub fn println_err(&self, line: &str) {
        self.bar.suspend(|| eprintln!("{line}"));
    }

    /// Removes the spinner from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// One spinner per node on stderr (hidden when stderr is not a terminal): what each node's
/// agent is waiting for, then `ready`. Cleared when dropped.
pub struct NodeProgress {
    _multi: MultiProgress,
    bars: Vec<(String, ProgressBar)>,
}

impl NodeProgress {
    /// A line per node, each starting at `first`.
    pub fn new(nodes: &[String], first: &str) -> NodeProgress {
        let multi = if std::io::stderr().is_terminal() {
            MultiProgress::new()
        } else {
            MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
        };
        let style = ProgressStyle::with_template("{spinner} {prefix}: {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bars = nodes
            .iter()
            .map(|n| {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar.set_prefix(n.clone());
                bar.set_message(first.to_string());
                bar.enable_steady_tick(Duration::from_millis(100));
                (n.clone(), bar)
            })
            .collect();
        NodeProgress {
            _multi: multi,
            bars,
        }
    }

    /// Shows that `node` is waiting for `what`.
    pub fn waiting(&self, node: &str, what: &str) {
        if let Some((_, b)) = self.bars.iter().find(|(n, _)| n == node) {
            b.set_message(format!("waiting for {what}"));
        }
    }

    /// Stops `node`'s spinner with `what`.
    pub fn done(&self, node: &str, what: &str) {
        if let Some((_, b)) = self.bars.iter().find(|(n, _)| n == node) {
            b.finish_with_message(what.to_string());
        }
    }
}

impl Drop for NodeProgress {
    fn drop(&mut self) {
        for (_, b) in &self.bars {
            b.finish_and_clear();
        }
    }
}

/// `what`, with the time left rounded up to whole seconds: `collecting flows (7s left)`.
pub fn countdown_message(what: &str, left: Duration) -> String {
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    format!("{what} ({secs}s left, Ctrl-C to stop early)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn countdown_rounds_up() {
        assert_eq!(
            countdown_message("collecting", Duration::from_millis(6200)),
            "collecting (7s left, Ctrl-C to stop early)"
        );
        assert_eq!(
            countdown_message("collecting", Duration::ZERO),
            "collecting (0s left, Ctrl-C to stop early)"
        );
    }
}
