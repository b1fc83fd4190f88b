//! Ctrl-C and SIGTERM: counted, so a command can end its collection on the first and give up
//! waiting on the second; the third exits at once. [`Interrupted`] is the error of whatever the
//! first one stopped.

use tokio::sync::watch;

/// A command was stopped by Ctrl-C (or SIGTERM) before it had anything to show.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// A handle that tells how many interrupts arrived and waits for them.
#[derive(Debug, Clone)]
pub struct Interrupt {
    rx: watch::Receiver<u32>,
    // Keeps the channel open when no signal task owns the sender (tests, `never`).
    _tx: Option<std::sync::Arc<watch::Sender<u32>>>,
}

impl Interrupt {
    /// Listens for Ctrl-C (and SIGTERM on unix) from now on. Needs a tokio runtime.
    pub fn install() -> Interrupt {
        let (tx, rx) = watch::channel(0u32);
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            loop {
                #[cfg(unix)]
                let terminated = async {
                    match term.as_mut() {
                        Some(t) => {
                            t.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                #[cfg(not(unix))]
                let terminated = std::future::pending::<()>();
                tokio::select! {
                    r = tokio::signal::ctrl_c() => {
                        if r.is_err() {
                            return;
                        }
                    }
                    () = terminated => {}
                }
                let mut count = 0;
                tx.send_modify(|c| {
                    *c += 1;
                    count = *c;
                });
                if count >= 3 {
                    std::process::exit(130);
                }
            }
        });
        Interrupt { rx, _tx: None }
    }

    /// A handle that is never interrupted.
    pub fn never() -> Interrupt {
        let (tx, rx) = watch::channel(0u32);
        Interrupt {
            rx,
            _tx: Some(std::sync::Arc::new(tx)),
        }
    }

    /// How many interrupts arrived so far.
    pub fn count(&self) -> u32 {
        *self.rx.borrow()
    }

    /// Waits until at least `n` interrupts arrived.
    pub async fn wait_for(&self, n: u32) {
        let mut rx = self.rx.clone();
        if rx.wait_for(|c| *c >= n).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Waits for the first interrupt.
    pub async fn wait(&self) {
        self.wait_for(1).await;
    }

    /// Waits for the first interrupt or, with a `limit`, until it has passed (counted from
    /// this call): when a live command's `--duration` ends it.
    pub fn wait_or_after(
        &self,
        limit: Option<std::time::Duration>,
    ) -> impl Future<Output = ()> + Send + '_ {
        let deadline = limit.map(|d| tokio::time::Instant::now() + d);
        async move {
            let expired = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = expired => {}
                () = self.wait() => {}
            }
        }
    }
}
