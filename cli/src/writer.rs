//! The stdout writer of `handover run`: a thread of its own, so a reader that stops reading
//! never blocks the adapter (signals, draining, the control API go on), and an event counts as
//! delivered only once its last byte is written (the sink contract).
//!
//! The writer waits for stdout to be writable with `poll(2)` before each write, in slices no
//! larger than the pipe's atomic write size (`PIPE_BUF`, 4096 bytes on Linux) unless stdout is
//! a regular file. A write that `poll` cleared does not block, so when the adapter stops the
//! writer at its write deadline, the writer is never stuck inside a write: it stops between
//! two, and what it has confirmed is exactly what was written. The session file saved after
//! that resumes right after the last event written, so nothing is skipped and nothing is
//! written twice across processes.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use tokio::sync::watch;

use super::control::AdapterCounters;
use handover_runtime::Receipt;

/// Largest slice written at once to a pipe, socket or terminal: the atomic pipe write size, so
/// that a write `poll` cleared never blocks.
const SLICE: usize = 4096;

/// How often a writer waiting for a writable stdout checks whether it must stop.
const STOP_CHECK: Duration = Duration::from_millis(20);

/// How long a stopped writer may go on to finish a line it has begun (only a line longer than
/// [`SLICE`] is ever begun and not finished in one write).
const FINISH_LINE: Duration = Duration::from_millis(500);

/// Batches queued for the thread beyond the one it is writing.
const QUEUED_BATCHES: usize = 1;

/// Bytes for stdout, with a receipt per event ending at each offset.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) bytes: Vec<u8>,
    /// `(end offset, receipt)`, in order: the event's bytes end at `end`.
    pub(crate) marks: Vec<(usize, Receipt)>,
}

impl Batch {
    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// What the writer thread has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Batches written whole.
    pub(crate) batches: u64,
    /// A write failed (the reader went away); nothing more is written.
    pub(crate) failed: bool,
    /// The thread has ended (asked to stop, or failed).
    pub(crate) ended: bool,
}

/// The adapter's side of the writer thread.
#[derive(Debug)]
pub(crate) struct Writer {
    tx: Option<SyncSender<Batch>>,
    progress: watch::Receiver<Progress>,
    stop: Arc<AtomicBool>,
    sent: u64,
}

impl Writer {
    /// Starts the thread writing to a duplicate of the process's stdout.
    pub(crate) fn stdout(counters: Arc<AdapterCounters>) -> io::Result<Writer> {
        let fd = io::stdout().as_fd().try_clone_to_owned()?;
        Writer::spawn(File::from(fd), counters)
    }

    /// Starts the thread writing to `out`.
    pub(crate) fn spawn(out: File, counters: Arc<AdapterCounters>) -> io::Result<Writer> {
        let (tx, rx) = sync_channel(QUEUED_BATCHES);
        let (progress_tx, progress) = watch::channel(Progress::default());
        let stop = Arc::new(AtomicBool::new(false));
        let sliced = !out
            .metadata()
            .map(|m| m.file_type().is_file())
            .unwrap_or(false);
        let thread_stop = stop.clone();
        std::thread::Builder::new()
            .name("handover-stdout".into())
            .spawn(move || {
                let mut thread = Thread {
                    out,
                    sliced,
                    stop: thread_stop,
                    counters,
                    progress: progress_tx,
                };
                thread.run(rx);
            })?;
        Ok(Writer {
            tx: Some(tx),
            progress,
            stop,
            sent: 0,
        })
    }

    /// Whether a batch handed over now would be taken without waiting.
    pub(crate) fn has_room(&self) -> bool {
        let p = *self.progress.borrow();
        !p.ended && self.sent.saturating_sub(p.batches) <= QUEUED_BATCHES as u64
    }

    /// Whether everything handed over is written.
    pub(crate) fn is_idle(&self) -> bool {
        self.progress.borrow().batches >= self.sent
    }

    /// Whether writing failed (stdout's reader went away).
    pub(crate) fn failed(&self) -> bool {
        self.progress.borrow().failed
    }

    /// Hands `batch` over if there is room (see [`has_room`](Self::has_room)); gives it back
    /// otherwise. After the thread ended, the batch is dropped (its receipts unconfirmed).
    pub(crate) fn offer(&mut self, batch: Batch) -> Result<(), Batch> {
        if batch.is_empty() {
            return Ok(());
        }
        let Some(tx) = &self.tx else {
            return Ok(());
        };
        if !self.has_room() {
            return Err(batch);
        }
        match tx.try_send(batch) {
            Ok(()) => {
                self.sent += 1;
                Ok(())
            }
            Err(TrySendError::Full(batch)) => Err(batch),
            Err(TrySendError::Disconnected(_)) => {
                self.tx = None;
                Ok(())
            }
        }
    }

    /// Waits until the writer has made progress (a batch written, a failure, its end).
    pub(crate) async fn changed(&mut self) {
        if self.progress.changed().await.is_err() {
            // The thread is gone; nothing will change any more.
            std::future::pending::<()>().await;
        }
    }

    /// Stops the thread between two writes and waits (at most `bound`) until it has ended.
    /// Returns whether it ended in time. What it had not written stays unconfirmed.
    pub(crate) async fn stop(&mut self, bound: Duration) -> bool {
        self.stop.store(true, Ordering::SeqCst);
        self.tx = None;
        let mut progress = self.progress.clone();
        tokio::time::timeout(bound, progress.wait_for(|p| p.ended))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Where the next slice of `bytes` from `at` ends: after the last whole line that fits in
/// [`SLICE`] bytes, so a stop between two slices falls between two lines; a line longer than a
/// slice is cut at the slice's size.
fn slice_end(bytes: &[u8], at: usize) -> usize {
    let limit = bytes.len().min(at + SLICE);
    if limit == bytes.len() && bytes.len() - at <= SLICE {
        return limit;
    }
    match bytes[at..limit].iter().rposition(|&b| b == b'\n') {
        Some(i) => at + i + 1,
        None => limit,
    }
}

struct Thread {
    out: File,
    sliced: bool,
    stop: Arc<AtomicBool>,
    counters: Arc<AdapterCounters>,
    progress: watch::Sender<Progress>,
}

impl Thread {
    fn run(&mut self, batches: Receiver<Batch>) {
        while let Ok(batch) = batches.recv() {
            match self.write(batch) {
                Ok(true) => self.progress.send_modify(|p| p.batches += 1),
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "stdout closed");
                    self.progress.send_modify(|p| p.failed = true);
                    break;
                }
            }
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
        }
        self.progress.send_modify(|p| p.ended = true);
    }

    /// Writes one batch, confirming each event once its last byte is out. `Ok(false)` when
    /// asked to stop first.
    fn write(&mut self, batch: Batch) -> io::Result<bool> {
        let Batch { bytes, marks } = batch;
        let mut marks = marks.into_iter().peekable();
        let mut written = 0;
        let mut stop_seen: Option<Instant> = None;
        while written < bytes.len() {
            // At a line's end the writer may stop; inside a line it finishes the line first,
            // for at most FINISH_LINE after the stop, so a reader rarely sees half a line.
            let mid_line = written > 0 && bytes[written - 1] != b'\n';
            if !self.wait_writable(mid_line, &mut stop_seen)? {
                return Ok(false);
            }
            let end = if self.sliced {
                slice_end(&bytes, written)
            } else {
                bytes.len()
            };
            match self.out.write(&bytes[written..end]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            while let Some((_, receipt)) = marks.next_if(|(at, _)| *at <= written) {
                if receipt.counts() {
                    self.counters.events_written.fetch_add(1, Ordering::Relaxed);
                }
                receipt.confirm();
            }
        }
        Ok(true)
    }

    /// Waits until stdout takes a write, checking for a stop now and then. `Ok(false)` when
    /// asked to stop (in the middle of a line: once the line could not be finished within
    /// [`FINISH_LINE`] of the stop).
    fn wait_writable(&self, mid_line: bool, stop_seen: &mut Option<Instant>) -> io::Result<bool> {
        let timeout = Timespec {
            tv_sec: 0,
            tv_nsec: i64::from(STOP_CHECK.subsec_nanos()),
        };
        loop {
            if self.stop.load(Ordering::SeqCst) {
                let since = *stop_seen.get_or_insert_with(Instant::now);
                if !mid_line || since.elapsed() >= FINISH_LINE {
                    return Ok(false);
                }
            }
            let mut fds = [PollFd::new(&self.out, PollFlags::OUT)];
            match poll(&mut fds, Some(&timeout)) {
                // Writable, or an error or hang-up the write itself will report.
                Ok(n) if n > 0 => return Ok(true),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handover_runtime::ReceiptBook;
    use std::io::Read;

    fn pipe() -> (File, File) {
        let (r, w) = std::io::pipe().expect("pipe");
        (
            File::from(std::os::fd::OwnedFd::from(r)),
            File::from(std::os::fd::OwnedFd::from(w)),
        )
    }

    fn batch(lines: &[&str]) -> Batch {
        let mut b = Batch::default();
        for l in lines {
            b.bytes.extend_from_slice(l.as_bytes());
        }
        b
    }

    #[tokio::test]
    async fn a_stalled_reader_never_holds_the_stop() {
        let (mut r, w) = pipe();
        let counters = Arc::new(AdapterCounters::default());
        let mut writer = Writer::spawn(w, counters).expect("spawn");
        // Far more than a pipe holds (64 KiB): the thread ends up waiting for the reader.
        let line = "x".repeat(1023) + "\n";
        let book = ReceiptBook::new();
        let mut big = Batch::default();
        for seq in 1..=512u64 {
            big.bytes.extend_from_slice(line.as_bytes());
            let receipt = book.dispatch(seq);
            big.marks.push((big.bytes.len(), receipt));
        }
        assert!(writer.offer(big).is_ok());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !writer.is_idle(),
            "half a megabyte cannot fit in a pipe nobody reads"
        );
        assert!(
            writer.stop(Duration::from_secs(5)).await,
            "the writer stops between two writes"
        );
        // What was written is whole lines.
        drop(writer);
        let mut got = Vec::new();
        r.read_to_end(&mut got).expect("read");
        assert!(!got.is_empty());
        assert_eq!(got.len() % line.len(), 0, "written {} bytes", got.len());
        assert_eq!(got.last(), Some(&b'\n'));
        assert!(got.len() < 512 * 1024);
        // Exactly the events whose last byte was written count as delivered.
        let whole = (got.len() / line.len()) as u64;
        assert_eq!(book.confirmed(), (whole, whole));
    }

    #[test]
    fn slices_end_at_line_ends_when_a_line_fits() {
        let line = |n: usize| "y".repeat(n - 1) + "\n";
        let bytes = [line(1000), line(3000), line(500), line(10_000)].concat();
        // 1000 + 3000 fit in a slice, 1000 + 3000 + 500 do not.
        assert_eq!(slice_end(bytes.as_bytes(), 0), 4000);
        assert_eq!(slice_end(bytes.as_bytes(), 4000), 4500);
        // A line longer than a slice is cut at the slice's size.
        assert_eq!(slice_end(bytes.as_bytes(), 4500), 4500 + SLICE);
        // The tail that fits is written whole.
        let end = bytes.len();
        assert_eq!(slice_end(bytes.as_bytes(), end - 100), end);
    }

    #[tokio::test]
    async fn everything_is_written_in_order_to_a_reader() {
        let (mut r, w) = pipe();
        let counters = Arc::new(AdapterCounters::default());
        let mut writer = Writer::spawn(w, counters).expect("spawn");
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            r.read_to_end(&mut got).expect("read");
            got
        });
        let mut expected = Vec::new();
        for i in 0..200 {
            let text = format!("{i}\n");
            expected.extend_from_slice(text.as_bytes());
            let mut b = Some(batch(&[&text]));
            while let Some(pending) = b.take() {
                if let Err(back) = writer.offer(pending) {
                    b = Some(back);
                    writer.changed().await;
                }
            }
        }
        while !writer.is_idle() {
            writer.changed().await;
        }
        assert!(writer.stop(Duration::from_secs(5)).await);
        drop(writer);
        assert_eq!(reader.join().expect("reader"), expected);
    }

    #[tokio::test]
    async fn a_reader_that_goes_away_is_reported() {
        let (r, w) = pipe();
        drop(r);
        let counters = Arc::new(AdapterCounters::default());
        let mut writer = Writer::spawn(w, counters).expect("spawn");
        assert!(writer.offer(batch(&["hello\n"])).is_ok());
        tokio::time::timeout(Duration::from_secs(5), async {
            while !writer.failed() {
                writer.changed().await;
            }
        })
        .await
        .expect("the broken pipe is reported");
    }
}
