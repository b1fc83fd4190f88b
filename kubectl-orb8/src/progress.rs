//! Progress on stderr (connecting, collecting with a countdown), drawn only when stderr is a
//! terminal so that pipes and logs stay clean.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

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
