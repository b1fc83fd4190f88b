//! The stdout of the live printers (`trace network`, `trace syscall --stream`, `trace dns`,
//! `trace drops`, `trace tcp`, `gpu --watch`): a writer thread owns stdout and prints finished records (a line,
//! or a YAML document) from a bounded queue, so the task merging the agents' streams never waits
//! for a slow reader (a pager, a slow terminal). A record that does not fit in the queue is not
//! printed and is counted; the count is said on stderr while it grows (at most once per
//! [`REPORT_EVERY`]) and, with what was still queued, when the trace ends.
//!
//! Stopping waits for the queue to drain only while stdout keeps taking records ([`STALL`],
//! [`DRAIN_AT_MOST`]); then what is left is given up and counted, and the caller goes on (tears
//! the agents down, exits). A writer stuck in a write is left behind: process exit ends it. The
//! records it is writing then count as not printed. The writer takes as many queued records as
//! fit in [`WRITE_BYTES`] (at least one) and writes them with one system call: a pipe takes a
//! write of at most that size whole or not at all, so a reader never sees part of what was
//! counted as not printed (a record longer than that alone, a YAML table, may be seen in part). A closed pipe is the `BrokenPipe` error it is, returned by the
//! next [`LiveOutput::print`] and by [`LiveOutput::finish`], which the client turns into a quiet
//! exit 0.
//!
//! [`Backlog`] is the bookkeeping, without threads or clocks, so it is unit-tested directly.
//! Imports only [`crate::progress`] (its warnings).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::progress::warn;

/// How many records may wait for stdout.
pub const QUEUE_RECORDS: usize = 8192;

/// How many bytes of records may wait for stdout.
pub const QUEUE_BYTES: usize = 4 << 20;

/// The most bytes of records the writer puts in one write (beyond one record): `PIPE_BUF`,
/// the size a pipe writes atomically. Lines are written in batches when they come faster
/// than stdout takes them one by one (a burst of new flows): one system call and one wake-up
/// for ten lines instead of one each.
pub const WRITE_BYTES: usize = 4096;

/// How often, at most, a growing count of records not printed is said on stderr.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

/// When a trace stops, how long stdout may take no record before what is queued is given up.
pub const STALL: Duration = Duration::from_millis(200);

/// When a trace stops, the longest wait for the queue to drain, however steadily stdout takes it.
pub const DRAIN_AT_MOST: Duration = Duration::from_secs(2);

/// What [`Backlog::offer`] did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Queued for the writer.
    Queued,
    /// The queue was full: not printed, counted.
    Dropped,
}

/// The counts of one output, as [`Backlog::counts`] reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Records handed to the output.
    pub offered: u64,
    /// Records written to stdout.
    pub printed: u64,
    /// Records not queued because the queue was full.
    pub dropped: u64,
    /// Records queued, or being written, and not printed: given up when the output stopped
    /// (before that, still on their way).
    pub left: u64,
}

impl Counts {
    /// Records not printed, for whatever reason.
    pub fn not_printed(&self) -> u64 {
        self.dropped + self.left
    }

    /// The stderr line said when the output stopped with records not printed, or `None`.
    pub fn summary_line(&self) -> Option<String> {
        (self.not_printed() > 0).then(|| {
            format!(
                "{} of {} lines not printed: stdout too slow ({} while the output queue was full, \
                 {} still queued when the trace stopped)",
                self.not_printed(),
                self.offered,
                self.dropped,
                self.left
            )
        })
    }
}

/// The queue between the merge and the writer, and what became of every record offered:
/// `offered == printed + dropped + queued + being written` at all times.
#[derive(Debug)]
pub struct Backlog {
    queue: VecDeque<String>,
    queued_bytes: usize,
    max_records: usize,
    max_bytes: usize,
    offered: u64,
    printed: u64,
    dropped: u64,
    /// Records given up when the output stopped (they were queued).
    given_up: u64,
    /// Records the writer holds and has not finished writing.
    writing: u64,
    /// `dropped` as far as stderr has said it.
    said: u64,
    failed: Option<(io::ErrorKind, String)>,
    closed: bool,
}

impl Backlog {
    /// An empty queue holding at most `max_records` records and `max_bytes` bytes.
    pub fn new(max_records: usize, max_bytes: usize) -> Backlog {
        Backlog {
            queue: VecDeque::new(),
            queued_bytes: 0,
            max_records,
            max_bytes,
            offered: 0,
            printed: 0,
            dropped: 0,
            given_up: 0,
            writing: 0,
            said: 0,
            failed: None,
            closed: false,
        }
    }

    /// Queues `record` if it fits, else counts it as not printed. The writer's error, once it
    /// failed (a closed pipe), instead.
    pub fn offer(&mut self, record: String) -> io::Result<Offered> {
        self.check()?;
        self.offered += 1;
        let fits = self.queue.len() < self.max_records
            && self.queued_bytes + record.len() <= self.max_bytes;
        if !fits || self.closed {
            self.dropped += 1;
            return Ok(Offered::Dropped);
        }
        self.push(record);
        Ok(Offered::Queued)
    }

    /// Queues `record` whatever the limits: the one record a trace prints when it ends (a
    /// summary table).
    pub fn offer_summary(&mut self, record: String) -> io::Result<()> {
        self.check()?;
        self.offered += 1;
        self.push(record);
        Ok(())
    }

    fn push(&mut self, record: String) {
        self.queued_bytes += record.len();
        self.queue.push_back(record);
    }

    /// The writer's error, if it failed.
    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some((kind, text)) => Err(io::Error::new(*kind, text.clone())),
            None => Ok(()),
        }
    }

    /// The next record for the writer, which is then being written; `None` when none is queued.
    pub fn take(&mut self) -> Option<String> {
        self.take_batch(0).pop()
    }

    /// The next records for the writer, which are then being written: the first one queued, and
    /// those after it while all of them together are at most `max_bytes` long. Empty when none is
    /// queued.
    pub fn take_batch(&mut self, max_bytes: usize) -> Vec<String> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(next) = self.queue.front() {
            if !batch.is_empty() && bytes + next.len() > max_bytes {
                break;
            }
            let record = self.queue.pop_front().expect("a front record");
            bytes += record.len();
            self.queued_bytes -= record.len();
            batch.push(record);
        }
        self.writing += batch.len() as u64;
        batch
    }

    /// The writer wrote the records it took.
    pub fn printed_taken(&mut self) {
        self.printed += self.writing;
        self.writing = 0;
    }

    /// The writer failed on the records it took (which count as not printed); nothing more is
    /// queued.
    pub fn fail(&mut self, error: &io::Error) {
        self.given_up += self.writing;
        self.writing = 0;
        self.failed = Some((error.kind(), error.to_string()));
        self.give_up();
    }

    /// No more records will be offered; the writer ends once the queue is empty.
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// Stops waiting for stdout: what is queued is dropped and counted, and the writer ends
    /// after the records it is writing.
    pub fn give_up(&mut self) {
        self.given_up += self.queue.len() as u64;
        self.queue.clear();
        self.queued_bytes = 0;
        self.closed = true;
    }

    /// Whether everything offered was printed or counted (nothing queued, nothing being written).
    pub fn drained(&self) -> bool {
        self.queue.is_empty() && self.writing == 0
    }

    /// Whether the writer should stop: closed and nothing left to write.
    pub fn finished(&self) -> bool {
        self.closed && self.queue.is_empty()
    }

    /// The writer's error (a closed pipe), if it failed.
    pub fn error(&self) -> Option<io::Error> {
        self.check().err()
    }

    /// What became of the records offered so far.
    pub fn counts(&self) -> Counts {
        Counts {
            offered: self.offered,
            printed: self.printed,
            dropped: self.dropped,
            left: self.given_up + self.queue.len() as u64 + self.writing,
        }
    }

    /// The stderr line saying how many records the full queue kept from stdout so far, when
    /// that grew since the last such line.
    pub fn progress_line(&mut self) -> Option<String> {
        if self.dropped == self.said || self.failed.is_some() {
            return None;
        }
        self.said = self.dropped;
        Some(format!(
            "{} of {} lines not printed so far: stdout too slow",
            self.dropped, self.offered
        ))
    }
}

struct Shared {
    backlog: Mutex<Backlog>,
    /// Signalled when a record is queued or the output closes.
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Backlog> {
        self.backlog.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Writes the queued records to `out`, up to [`WRITE_BYTES`] of them (at least one) in one write
/// and flush, until the backlog is finished or a write fails.
fn write_loop(shared: &Shared, out: &mut dyn Write) {
    let mut buf = Vec::with_capacity(WRITE_BYTES);
    loop {
        let batch = {
            let mut b = shared.lock();
            loop {
                let batch = b.take_batch(WRITE_BYTES);
                if !batch.is_empty() {
                    break batch;
                }
                if b.finished() {
                    return;
                }
                b = shared.ready.wait(b).unwrap_or_else(PoisonError::into_inner);
            }
        };
        buf.clear();
        for record in &batch {
            buf.extend_from_slice(record.as_bytes());
        }
        let written = out.write_all(&buf).and_then(|()| out.flush());
        let mut b = shared.lock();
        match written {
            Ok(()) => b.printed_taken(),
            Err(e) => {
                b.fail(&e);
                return;
            }
        }
    }
}

/// Stdout, locked for one record at a time (so nothing holds it while the writer waits).
struct LockedStdout;

impl Write for LockedStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stdout().lock().write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        io::stdout().lock().write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().lock().flush()
    }
}

/// The output of a live printer: records go to a queue that a writer thread empties into
/// stdout (or another writer); see the module docs. Needs a tokio runtime (its stderr reports).
pub struct LiveOutput {
    shared: Arc<Shared>,
    reporter: tokio::task::JoinHandle<()>,
}

impl LiveOutput {
    /// An output to stdout with the default limits.
    pub fn stdout() -> LiveOutput {
        LiveOutput::start(LockedStdout, QUEUE_RECORDS, QUEUE_BYTES)
    }

    /// An output to `out`, queueing at most `max_records` records and `max_bytes` bytes.
    pub fn start(
        mut out: impl Write + Send + 'static,
        max_records: usize,
        max_bytes: usize,
    ) -> LiveOutput {
        let shared = Arc::new(Shared {
            backlog: Mutex::new(Backlog::new(max_records, max_bytes)),
            ready: Condvar::new(),
        });
        let writer = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("orb8-stdout".into())
            .spawn(move || write_loop(&writer, &mut out));
        if let Err(e) = spawned {
            shared.lock().fail(&e);
        }
        let reported = shared.clone();
        let reporter = tokio::spawn(async move {
            let mut every = tokio::time::interval(REPORT_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let line = reported.lock().progress_line();
                if let Some(line) = line {
                    warn(&line);
                }
            }
        });
        LiveOutput { shared, reporter }
    }

    /// Hands one finished record (ending in a newline) to the writer, or counts it as not
    /// printed when the queue is full; never waits for stdout. Fails once the writer failed
    /// (`BrokenPipe` for a closed pipe).
    pub fn print(&self, record: String) -> io::Result<()> {
        let offered = self.shared.lock().offer(record)?;
        if offered == Offered::Queued {
            self.shared.ready.notify_one();
        }
        Ok(())
    }

    /// Hands the record a trace prints when it ends (a summary) to the writer, whatever the
    /// queue holds.
    pub fn print_summary(&self, record: String) -> io::Result<()> {
        self.shared.lock().offer_summary(record)?;
        self.shared.ready.notify_one();
        Ok(())
    }

    /// What became of the records so far.
    pub fn counts(&self) -> Counts {
        self.shared.lock().counts()
    }

    /// Ends the output: waits while stdout drains the queue (see [`STALL`], [`DRAIN_AT_MOST`]),
    /// gives up the rest, and says on stderr how many records were not printed. Returns the
    /// counts, or the writer's error (`BrokenPipe` for a closed pipe, said by nobody).
    pub async fn finish(self) -> io::Result<Counts> {
        self.reporter.abort();
        self.shared.lock().close();
        self.shared.ready.notify_one();
        let started = tokio::time::Instant::now();
        let mut moved = started;
        let mut printed = self.counts().printed;
        loop {
            {
                let b = self.shared.lock();
                if let Some(e) = b.error() {
                    return Err(e);
                }
                if b.drained() {
                    break;
                }
                if b.counts().printed != printed {
                    printed = b.counts().printed;
                    moved = tokio::time::Instant::now();
                }
            }
            let now = tokio::time::Instant::now();
            if now - moved >= STALL || now - started >= DRAIN_AT_MOST {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let counts = {
            let mut b = self.shared.lock();
            b.give_up();
            b.counts()
        };
        if let Some(line) = counts.summary_line() {
            warn(&line);
        }
        Ok(counts)
    }
}

impl Drop for LiveOutput {
    fn drop(&mut self) {
        self.reporter.abort();
        self.shared.lock().close();
        self.shared.ready.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(i: usize) -> String {
        format!("line {i}\n")
    }

    #[test]
    fn the_writer_takes_as_many_records_as_fit_in_one_write_and_they_count_together() {
        let mut b = Backlog::new(100, 1 << 20);
        // "line N\n" is 7 bytes (8 from line 10): 20 of them, then one longer than a write.
        for i in 0..20 {
            b.offer(line(i)).unwrap();
        }
        b.offer("x".repeat(50)).unwrap();
        b.offer(line(20)).unwrap();
        let first = b.take_batch(30);
        assert_eq!(
            first,
            (0..4).map(line).collect::<Vec<_>>(),
            "4 x 7 <= 30 < 5 x 7"
        );
        assert_eq!(b.counts().left, 22, "taken and queued records are left");
        b.printed_taken();
        assert_eq!(b.counts().printed, 4);
        assert_eq!(b.take_batch(30).len(), 4);
        b.printed_taken();
        assert_eq!(
            b.take_batch(100).len(),
            12,
            "2 x 7 + 10 x 8 <= 100, and the long one would not fit"
        );
        b.printed_taken();
        // A record longer than a write goes alone, never split and never skipped.
        let long = b.take_batch(30);
        assert_eq!((long.len(), long[0].len()), (1, 50));
        // The writer fails on it: it counts as not printed, with what is queued.
        b.fail(&io::Error::from(io::ErrorKind::BrokenPipe));
        let c = b.counts();
        assert_eq!((c.offered, c.printed, c.left), (22, 20, 2));
        assert!(b.take_batch(30).is_empty());
    }

    #[test]
    fn a_full_queue_counts_what_it_leaves_out_and_the_totals_add_up() {
        let mut b = Backlog::new(3, 1 << 20);
        for i in 0..5 {
            b.offer(line(i)).unwrap();
        }
        assert_eq!(
            b.counts(),
            Counts {
                offered: 5,
                printed: 0,
                dropped: 2,
                left: 3
            }
        );
        // The writer takes one and finishes it, takes another and is stuck in its write.
        assert_eq!(b.take().as_deref(), Some("line 0\n"));
        b.printed_taken();
        assert_eq!(b.take().as_deref(), Some("line 1\n"));
        // Room for two more: queued; the next is not.
        assert_eq!(b.offer(line(5)).unwrap(), Offered::Queued);
        assert_eq!(b.offer(line(6)).unwrap(), Offered::Queued);
        assert_eq!(b.offer(line(7)).unwrap(), Offered::Dropped);
        assert_eq!(
            b.progress_line().as_deref(),
            Some("3 of 8 lines not printed so far: stdout too slow")
        );
        assert_eq!(b.progress_line(), None, "said once until it grows");
        // Stopping gives up the queued three and the one being written.
        assert!(!b.drained());
        b.give_up();
        let c = b.counts();
        assert_eq!(
            c,
            Counts {
                offered: 8,
                printed: 1,
                dropped: 3,
                left: 4
            }
        );
        assert_eq!(c.offered, c.printed + c.not_printed());
        assert_eq!(
            c.summary_line().as_deref(),
            Some(
                "7 of 8 lines not printed: stdout too slow (3 while the output queue was full, \
                 4 still queued when the trace stopped)"
            )
        );
        // The stuck write returns after all: it was printed (the count said one too many).
        b.printed_taken();
        assert!(b.drained() && b.finished());
        // Nothing is queued after the output stopped.
        assert_eq!(b.offer(line(8)).unwrap(), Offered::Dropped);
        assert_eq!(b.take(), None);
    }

    #[test]
    fn the_byte_limit_holds_and_a_summary_goes_past_both_limits() {
        let mut b = Backlog::new(100, 16);
        assert_eq!(b.offer("0123456789\n".into()).unwrap(), Offered::Queued);
        assert_eq!(b.offer("0123456789\n".into()).unwrap(), Offered::Dropped);
        assert_eq!(b.offer("01234\n".into()).unwrap(), Offered::Dropped);
        assert_eq!(b.offer("0123\n".into()).unwrap(), Offered::Queued);
        b.offer_summary("a summary table longer than the limit\n".into())
            .unwrap();
        assert_eq!(
            b.counts(),
            Counts {
                offered: 5,
                printed: 0,
                dropped: 2,
                left: 3
            }
        );
        while b.take().is_some() {
            b.printed_taken();
        }
        assert_eq!(
            b.counts(),
            Counts {
                offered: 5,
                printed: 3,
                dropped: 2,
                left: 0
            }
        );
    }

    #[test]
    fn a_failed_write_is_the_error_of_every_later_record() {
        let mut b = Backlog::new(10, 1 << 20);
        b.offer(line(0)).unwrap();
        b.offer(line(1)).unwrap();
        b.take();
        b.fail(&io::Error::from(io::ErrorKind::BrokenPipe));
        assert_eq!(
            b.offer(line(2)).unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
        assert_eq!(
            b.offer_summary(line(3)).unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
        assert!(b.finished());
        assert_eq!(b.progress_line(), None);
        assert_eq!(
            b.counts(),
            Counts {
                offered: 2,
                printed: 0,
                dropped: 0,
                left: 2
            }
        );
    }

    #[test]
    fn nothing_dropped_nothing_said() {
        let mut b = Backlog::new(10, 1 << 20);
        b.offer(line(0)).unwrap();
        assert_eq!(b.progress_line(), None);
        b.take();
        b.printed_taken();
        assert!(b.drained());
        assert_eq!(b.counts().summary_line(), None);
    }

    /// A writer that takes `open` writes, then blocks until the test ends (saying so on
    /// `blocked`, if given).
    struct Stuck {
        open: usize,
        got: Arc<Mutex<Vec<u8>>>,
        release: std::sync::mpsc::Receiver<()>,
        blocked: Option<std::sync::mpsc::Sender<()>>,
    }

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.open == 0 {
                if let Some(b) = &self.blocked {
                    let _ = b.send(());
                }
                let _ = self.release.recv();
                return Err(io::Error::from(io::ErrorKind::BrokenPipe));
            }
            self.open -= 1;
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn finishing_does_not_wait_for_a_blocked_stdout() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let (release, rx) = std::sync::mpsc::channel();
        let (blocked_tx, blocked) = std::sync::mpsc::channel();
        let out = LiveOutput::start(
            Stuck {
                open: 1,
                got: got.clone(),
                release: rx,
                blocked: Some(blocked_tx),
            },
            4,
            1 << 20,
        );
        // The writer prints one record, then blocks in the write of the next, taken alone
        // (each is printed once the writer has the one before).
        out.print(line(0)).unwrap();
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while out.counts().printed != 1 {
            assert!(
                std::time::Instant::now() < end,
                "the writer printed nothing"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        out.print(line(1)).unwrap();
        blocked
            .recv_timeout(Duration::from_secs(10))
            .expect("the writer blocks");
        assert_eq!((out.counts().printed, out.counts().left), (1, 1));
        // Four fit in the queue; seven do not.
        for i in 2..13 {
            out.print(line(i)).unwrap();
        }
        let counts = out.finish().await.unwrap();
        assert_eq!(
            counts,
            Counts {
                offered: 13,
                printed: 1,
                dropped: 7,
                left: 5
            }
        );
        assert_eq!(&got.lock().unwrap()[..], b"line 0\n");
        let _ = release.send(());
    }

    #[tokio::test]
    async fn finishing_prints_everything_a_ready_stdout_takes_then_reports_a_closed_pipe() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let (_release, rx) = std::sync::mpsc::channel();
        let out = LiveOutput::start(
            Stuck {
                open: 100,
                got: got.clone(),
                release: rx,
                blocked: None,
            },
            1000,
            1 << 20,
        );
        for i in 0..50 {
            out.print(line(i)).unwrap();
        }
        out.print_summary("summary\n".into()).unwrap();
        let counts = out.finish().await.unwrap();
        assert_eq!(
            counts,
            Counts {
                offered: 51,
                printed: 51,
                dropped: 0,
                left: 0
            }
        );
        let text = String::from_utf8(got.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 51);
        assert!(text.ends_with("line 49\nsummary\n"));

        let (release, rx) = std::sync::mpsc::channel();
        let out = LiveOutput::start(
            Stuck {
                open: 0,
                got: got.clone(),
                release: rx,
                blocked: None,
            },
            10,
            1 << 20,
        );
        release.send(()).unwrap();
        out.print(line(0)).unwrap();
        let err = out.finish().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
