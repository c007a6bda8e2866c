//! The stdout writer of `handover run`. A reader that stops reading never blocks the adapter
//! (signals, draining, the control API go on), and an event counts as delivered only once its
//! last byte is written (the sink contract).
//!
//! The writer never blocks inside a write, so that when the adapter stops it at its write
//! deadline it stops between two writes, and what it has confirmed is exactly what was
//! written. How it writes depends on what stdout is:
//!
//! - a pipe, a FIFO or a terminal: opened a second time through `/proc/self/fd` with
//!   `O_NONBLOCK` (a file description of its own, so the flag is never seen by the process
//!   that shares stdout), and written **by the adapter's own task**: each write hands the
//!   kernel everything built since the last one; the kernel takes what fits (up to the pipe's
//!   size, 64 KiB by default) and the rest waits, the pipe registered with tokio's reactor
//!   (`tokio::net::unix::pipe::Sender`), until it has room. Under load that is one system call per pipe-full
//!   of lines, not one per event, and no hand-off to another thread (a thread of its own
//!   cost the adapter and the writer a wake-up each per batch). Where the reactor refuses
//!   the descriptor (`/dev/null` cannot be polled by epoll), the thread below writes it the
//!   same non-blocking way, with `poll(2)` once the pipe is full;
//! - a regular file: plain writes of everything queued, on a thread of its own (they never
//!   wait for a reader, but may wait for the disk);
//! - anything else, or when the second open is refused (a socket, no `/proc`): on the thread,
//!   `poll(2)` before each write, in slices no larger than the pipe's atomic write size
//!   (`PIPE_BUF`, 4096 bytes), which a `poll` that cleared guarantees not to block.
//!
//! The buffers go back to the adapter once written, so a steady stream allocates nothing per
//! event. The session file saved after a stop resumes right after the last event written, so
//! nothing is skipped and nothing is written twice across processes.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TrySendError, channel, sync_channel};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::fs::{FileType, Mode, OFlags};
use tokio::net::unix::pipe;
use tokio::sync::watch;

use super::control::AdapterCounters;
use handover_runtime::Receipt;

/// Largest slice written at once in the sliced mode (see the module's documentation): the
/// atomic pipe write size, so that a write `poll` cleared never blocks.
const SLICE: usize = 4096;

/// How often a writer waiting for a writable stdout checks whether it must stop.
const STOP_CHECK: Duration = Duration::from_millis(20);

/// How long a stopped writer may go on to finish a line it has begun (a line is begun and not
/// finished in one write only when the reader is slower than the writer).
const FINISH_LINE: Duration = Duration::from_millis(500);

/// Batches queued for the thread beyond the one it is writing.
const QUEUED_BATCHES: usize = 1;

/// A written buffer bigger than this is not kept for reuse (a burst of large events must not
/// pin its memory for the rest of the run).
const KEEP_CAPACITY: usize = 512 * 1024;

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
    /// `write(2)` calls that took bytes, up to the last batch written whole.
    pub(crate) writes: u64,
    /// A write failed (the reader went away); nothing more is written.
    pub(crate) failed: bool,
    /// The thread has ended (asked to stop, or failed).
    pub(crate) ended: bool,
}

/// How the thread writes (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteMode {
    /// Non-blocking writes of everything queued; `poll` only once the pipe is full.
    NonBlocking,
    /// Blocking writes of everything queued (a regular file).
    Whole,
    /// `poll` before each write of at most [`SLICE`] bytes.
    Sliced,
}

/// The adapter's writer: written in the adapter's task, or by a thread of its own (see the
/// module's documentation).
#[derive(Debug)]
pub(crate) enum Writer {
    Inline(Inline),
    Thread(ThreadWriter),
}

impl Writer {
    /// A writer of the process's stdout (see the module's documentation for how it is
    /// opened). Must be called inside the tokio runtime.
    pub(crate) fn stdout(counters: Arc<AdapterCounters>) -> io::Result<Writer> {
        let fd = io::stdout().as_fd().try_clone_to_owned()?;
        Writer::spawn(fd, counters)
    }

    /// A writer of `out`: written in the caller's task when `out` is a pipe the reactor
    /// accepts, by a thread otherwise.
    pub(crate) fn spawn(out: OwnedFd, counters: Arc<AdapterCounters>) -> io::Result<Writer> {
        Writer::open(out, counters, true)
    }

    fn open(out: OwnedFd, counters: Arc<AdapterCounters>, inline: bool) -> io::Result<Writer> {
        let (out, mode) = open_for_writing(out);
        if inline && mode == WriteMode::NonBlocking {
            match Inline::new(out, counters.clone()) {
                Ok(inline) => {
                    tracing::debug!("stdout written in the adapter's task");
                    return Ok(Writer::Inline(inline));
                }
                Err(out) => return ThreadWriter::spawn(out, mode, counters).map(Writer::Thread),
            }
        }
        ThreadWriter::spawn(out, mode, counters).map(Writer::Thread)
    }

    /// An empty batch to build the next one in: a written one, with its buffers' capacity,
    /// when there is one.
    pub(crate) fn empty_batch(&mut self) -> Batch {
        match self {
            Writer::Inline(w) => w.spare.take().unwrap_or_default(),
            Writer::Thread(w) => w.empty_batch(),
        }
    }

    /// Whether a batch handed over now would be taken without waiting.
    pub(crate) fn has_room(&self) -> bool {
        match self {
            Writer::Inline(w) => !w.ended && w.pending.is_empty(),
            Writer::Thread(w) => w.has_room(),
        }
    }

    /// Whether everything handed over is written.
    pub(crate) fn is_idle(&self) -> bool {
        match self {
            Writer::Inline(w) => w.pending.is_empty(),
            Writer::Thread(w) => w.is_idle(),
        }
    }

    /// Whether writing failed (stdout's reader went away).
    pub(crate) fn failed(&self) -> bool {
        match self {
            Writer::Inline(w) => w.failed,
            Writer::Thread(w) => w.failed(),
        }
    }

    /// `write(2)` calls that took bytes so far.
    #[cfg(test)]
    fn writes(&self) -> u64 {
        match self {
            Writer::Inline(w) => w.writes,
            Writer::Thread(w) => w.progress.borrow().writes,
        }
    }

    /// Hands `batch` over if there is room (see [`has_room`](Self::has_room)); gives it back
    /// otherwise. After the writer ended, the batch is dropped (its receipts unconfirmed).
    /// Written in the caller's task, this writes what the pipe takes at once.
    pub(crate) fn offer(&mut self, batch: Batch) -> Result<(), Batch> {
        match self {
            Writer::Inline(w) => w.offer(batch),
            Writer::Thread(w) => w.offer(batch),
        }
    }

    /// Waits until the writer has made progress (a write, a failure, its end). Cancel-safe.
    pub(crate) async fn changed(&mut self) {
        match self {
            Writer::Inline(w) => w.changed().await,
            Writer::Thread(w) => w.changed().await,
        }
    }

    /// Stops the writer between two lines and waits (at most `bound`) until it has ended.
    /// Returns whether it ended in time. What it had not written stays unconfirmed.
    pub(crate) async fn stop(&mut self, bound: Duration) -> bool {
        match self {
            Writer::Inline(w) => w.stop(bound).await,
            Writer::Thread(w) => w.stop(bound).await,
        }
    }
}

/// Writes a batch's bytes from `at` with one `write(2)`, confirming each event whose last
/// byte is then out (its receipt taken out of `marks`, which are in order). Returns the bytes
/// written.
fn write_and_confirm(
    write: impl FnOnce(&[u8]) -> io::Result<usize>,
    batch: &mut Batch,
    at: usize,
    end: usize,
    counters: &AdapterCounters,
) -> io::Result<usize> {
    let n = match write(&batch.bytes[at..end]) {
        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
        Ok(n) => n,
        Err(e) => return Err(e),
    };
    let written = at + n;
    let whole = batch.marks.partition_point(|(end, _)| *end <= written);
    let mut confirmed = 0;
    for (_, receipt) in batch.marks.drain(..whole) {
        if receipt.counts() {
            confirmed += 1;
        }
        receipt.confirm();
    }
    if confirmed > 0 {
        counters
            .events_written
            .fetch_add(confirmed, Ordering::Relaxed);
    }
    Ok(n)
}

/// A batch written back to the adapter for reuse, emptied, unless it grew too large to keep.
fn recycled(mut batch: Batch) -> Option<Batch> {
    (batch.bytes.capacity() <= KEEP_CAPACITY).then(|| {
        batch.bytes.clear();
        batch.marks.clear();
        batch
    })
}

/// The writer that writes in the adapter's task: a non-blocking pipe registered with tokio's
/// reactor.
#[derive(Debug)]
pub(crate) struct Inline {
    out: pipe::Sender,
    counters: Arc<AdapterCounters>,
    /// The batch being written (empty when everything handed over is out).
    pending: Batch,
    /// Bytes of `pending` written.
    written: usize,
    /// The last batch written, emptied, for the next one.
    spare: Option<Batch>,
    failed: bool,
    ended: bool,
    /// `write(2)` calls that took bytes.
    writes: u64,
}

impl Inline {
    /// Registers `out` (a FIFO opened non-blocking) with the reactor; gives it back when the
    /// reactor refuses it, when it is no FIFO (a terminal), or without a runtime.
    fn new(out: File, counters: Arc<AdapterCounters>) -> Result<Inline, File> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(out);
        }
        // `from_file` takes the file even when it refuses it: it is given a duplicate (the
        // same file description) and the original is kept for the thread.
        let Ok(again) = out.try_clone() else {
            return Err(out);
        };
        let out = match pipe::Sender::from_file(again) {
            Ok(sender) => sender,
            Err(e) => {
                tracing::debug!(error = %e, "stdout not registered with the reactor");
                return Err(out);
            }
        };
        Ok(Inline {
            out,
            counters,
            pending: Batch::default(),
            written: 0,
            spare: None,
            failed: false,
            ended: false,
            writes: 0,
        })
    }

    fn offer(&mut self, batch: Batch) -> Result<(), Batch> {
        if batch.is_empty() || self.ended {
            return Ok(());
        }
        if !self.pending.is_empty() {
            return Err(batch);
        }
        self.pending = batch;
        self.written = 0;
        self.write_while_it_takes(None, false);
        Ok(())
    }

    /// Writes `pending` (up to `limit`, or all of it) until done, until the pipe is full,
    /// or until a write fails. Whether the last write found the pipe full (`EAGAIN`).
    ///
    /// `after_wait`: the reactor has just said the pipe is writable, and a full pipe clears
    /// that (`try_write`). Otherwise the write goes straight to the kernel: the reactor may not
    /// have seen the pipe yet (a new registration is not ready until its first event, and
    /// `try_write` would not even try), and a full pipe is found again after the next wait.
    fn write_while_it_takes(&mut self, limit: Option<usize>, after_wait: bool) -> bool {
        let end = limit.unwrap_or(self.pending.bytes.len());
        while self.written < end {
            let out = &self.out;
            match write_and_confirm(
                |b| {
                    if after_wait {
                        out.try_write(b)
                    } else {
                        rustix::io::write(out, b).map_err(io::Error::from)
                    }
                },
                &mut self.pending,
                self.written,
                end,
                &self.counters,
            ) {
                Ok(n) => {
                    self.written += n;
                    self.writes += 1;
                    if self.written < end {
                        // The pipe took part: it is full now.
                        return false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) => {
                    tracing::warn!(error = %e, "stdout closed");
                    self.failed = true;
                    self.ended = true;
                    self.pending = Batch::default();
                    return false;
                }
            }
        }
        if limit.is_none() {
            self.spare = recycled(std::mem::take(&mut self.pending));
            self.written = 0;
        }
        false
    }

    /// Waits for room in the pipe and writes on. Never returns while there is nothing to
    /// write (the adapter's other branches wake it then).
    async fn changed(&mut self) {
        if self.ended || self.pending.is_empty() {
            return std::future::pending().await;
        }
        self.wait_and_write(None).await;
    }

    /// Waits until the pipe has room, then writes what it takes of `pending` up to `limit`.
    async fn wait_and_write(&mut self, limit: Option<usize>) {
        loop {
            if let Err(e) = self.out.writable().await {
                tracing::warn!(error = %e, "stdout cannot be waited for");
                self.failed = true;
                self.ended = true;
                return;
            }
            // A write that finds the pipe full (`EAGAIN`) marks it not ready again
            // (`try_write`), and the wait goes on; any progress ends it.
            if !self.write_while_it_takes(limit, true) {
                return;
            }
        }
    }

    /// Ends writing. A line begun is finished first, for at most [`FINISH_LINE`] (and
    /// `bound`), so a reader rarely sees half a line.
    async fn stop(&mut self, bound: Duration) -> bool {
        let bytes = &self.pending.bytes;
        let mid_line = self.written > 0 && bytes[self.written - 1] != b'\n';
        if !self.ended && mid_line {
            let end = line_end(bytes, self.written);
            let finish = async {
                while !self.ended && self.written < end {
                    self.wait_and_write(Some(end)).await;
                }
            };
            let _ = tokio::time::timeout(bound.min(FINISH_LINE), finish).await;
        }
        // What was not written stays unconfirmed (the receipts are dropped).
        self.pending = Batch::default();
        self.ended = true;
        true
    }
}

/// The adapter's side of the writer thread.
#[derive(Debug)]
pub(crate) struct ThreadWriter {
    tx: Option<SyncSender<Batch>>,
    /// Written batches coming back, emptied, for reuse.
    spare: Receiver<Batch>,
    progress: watch::Receiver<Progress>,
    stop: Arc<AtomicBool>,
    sent: u64,
}

impl ThreadWriter {
    /// Starts the thread writing to `out` the way `mode` says.
    fn spawn(out: File, mode: WriteMode, counters: Arc<AdapterCounters>) -> io::Result<Self> {
        let (tx, rx) = sync_channel(QUEUED_BATCHES);
        let (spare_tx, spare) = channel();
        let (progress_tx, progress) = watch::channel(Progress::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        tracing::debug!(?mode, "stdout writer");
        std::thread::Builder::new()
            .name("handover-stdout".into())
            .spawn(move || {
                let mut thread = Thread {
                    out,
                    mode,
                    stop: thread_stop,
                    counters,
                    progress: progress_tx,
                    spare: spare_tx,
                    writes: 0,
                };
                thread.run(rx);
            })?;
        Ok(ThreadWriter {
            tx: Some(tx),
            spare,
            progress,
            stop,
            sent: 0,
        })
    }

    fn empty_batch(&mut self) -> Batch {
        // None written yet (or the thread is gone): a fresh one.
        self.spare.try_recv().unwrap_or_default()
    }

    fn has_room(&self) -> bool {
        let p = *self.progress.borrow();
        !p.ended && self.sent.saturating_sub(p.batches) <= QUEUED_BATCHES as u64
    }

    fn is_idle(&self) -> bool {
        self.progress.borrow().batches >= self.sent
    }

    fn failed(&self) -> bool {
        self.progress.borrow().failed
    }

    fn offer(&mut self, batch: Batch) -> Result<(), Batch> {
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

    async fn changed(&mut self) {
        if self.progress.changed().await.is_err() {
            // The thread is gone; nothing will change any more.
            std::future::pending::<()>().await;
        }
    }

    async fn stop(&mut self, bound: Duration) -> bool {
        self.stop.store(true, Ordering::SeqCst);
        self.tx = None;
        let mut progress = self.progress.clone();
        tokio::time::timeout(bound, progress.wait_for(|p| p.ended))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// The file the thread writes to, and how. A pipe, FIFO or terminal is opened again through
/// `/proc/self/fd` with `O_NONBLOCK`: a new file description, so the flag does not reach the
/// file description the process shares with its parent (setting it there would make the
/// parent's own writes fail with `EAGAIN`).
fn open_for_writing(out: OwnedFd) -> (File, WriteMode) {
    let kind = rustix::fs::fstat(&out).map(|st| FileType::from_raw_mode(st.st_mode));
    match kind {
        Ok(FileType::RegularFile) => (File::from(out), WriteMode::Whole),
        Ok(FileType::Fifo | FileType::CharacterDevice) => {
            let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&out));
            match rustix::fs::open(
                path.as_str(),
                OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
                Mode::empty(),
            ) {
                Ok(again) if same_file(&out, &again) => (File::from(again), WriteMode::NonBlocking),
                Ok(_) | Err(_) => (File::from(out), WriteMode::Sliced),
            }
        }
        Ok(_) | Err(_) => (File::from(out), WriteMode::Sliced),
    }
}

/// Whether two descriptors name the same file (the second open found what stdout is).
fn same_file(a: &OwnedFd, b: &OwnedFd) -> bool {
    match (rustix::fs::fstat(a), rustix::fs::fstat(b)) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => false,
    }
}

/// Where the next slice of `bytes` from `at` ends in the sliced mode: after the last whole
/// line that fits in [`SLICE`] bytes, so a stop between two slices falls between two lines; a
/// line longer than a slice is cut at the slice's size.
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

/// The end of the line `at` is in (just after its `\n`), or of `bytes`.
fn line_end(bytes: &[u8], at: usize) -> usize {
    bytes[at..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |i| at + i + 1)
}

struct Thread {
    out: File,
    mode: WriteMode,
    stop: Arc<AtomicBool>,
    counters: Arc<AdapterCounters>,
    progress: watch::Sender<Progress>,
    spare: Sender<Batch>,
    /// `write(2)` calls that took bytes.
    writes: u64,
}

impl Thread {
    fn run(&mut self, batches: Receiver<Batch>) {
        while let Ok(mut batch) = batches.recv() {
            match self.write(&mut batch) {
                Ok(true) => {
                    let writes = self.writes;
                    self.progress.send_modify(|p| {
                        p.batches += 1;
                        p.writes = writes;
                    });
                    if let Some(batch) = recycled(batch) {
                        // The adapter may have ended; the batch is then dropped.
                        let _ = self.spare.send(batch);
                    }
                }
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

    /// Writes one batch, confirming each event once its last byte is out (its receipts are
    /// taken out of the batch). `Ok(false)` when asked to stop first.
    fn write(&mut self, batch: &mut Batch) -> io::Result<bool> {
        let mut written = 0;
        let mut stop_seen: Option<Instant> = None;
        // The non-blocking mode writes first and polls only once the pipe is full.
        let mut must_poll = self.mode == WriteMode::Sliced;
        while written < batch.bytes.len() {
            let bytes = &batch.bytes;
            // At a line's end the writer may stop; inside a line it finishes the line first,
            // for at most FINISH_LINE after the stop, so a reader rarely sees half a line.
            let mid_line = written > 0 && bytes[written - 1] != b'\n';
            if (must_poll || self.stop.load(Ordering::Relaxed))
                && !self.wait_writable(mid_line, &mut stop_seen)?
            {
                return Ok(false);
            }
            // A stop asked for while the writer waited: from here only the line in progress
            // is finished.
            if stop_seen.is_none() && self.stop.load(Ordering::SeqCst) {
                stop_seen = Some(Instant::now());
                if !mid_line {
                    return Ok(false);
                }
            }
            let end = match (self.mode, stop_seen) {
                (WriteMode::Sliced, _) => slice_end(bytes, written),
                // Stopped in the middle of a line: only that line is finished.
                (_, Some(_)) => line_end(bytes, written),
                (WriteMode::NonBlocking | WriteMode::Whole, None) => bytes.len(),
            };
            let out = &self.out;
            match write_and_confirm(|b| (&*out).write(b), batch, written, end, &self.counters) {
                Ok(n) => {
                    // A write the kernel took only in part found the pipe full: the next one
                    // waits for room rather than failing with EAGAIN first.
                    must_poll = self.mode == WriteMode::Sliced || written + n < end;
                    written += n;
                    self.writes += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => must_poll = true,
                Err(e) => return Err(e),
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
    use std::os::unix::net::UnixStream;

    fn pipe() -> (File, OwnedFd) {
        let (r, w) = std::io::pipe().expect("pipe");
        (File::from(OwnedFd::from(r)), OwnedFd::from(w))
    }

    fn batch(lines: &[&str]) -> Batch {
        let mut b = Batch::default();
        for l in lines {
            b.bytes.extend_from_slice(l.as_bytes());
        }
        b
    }

    /// `lines`, each with a dispatch receipt of `book` (seq 1, 2...) ending at its last byte.
    fn receipted(book: &ReceiptBook, lines: &[String]) -> Batch {
        let mut b = Batch::default();
        for (i, l) in lines.iter().enumerate() {
            b.bytes.extend_from_slice(l.as_bytes());
            b.marks.push((b.bytes.len(), book.dispatch(i as u64 + 1)));
        }
        b
    }

    /// Waits (bounded) until `f` holds, checking every 5 ms; whether it did within 10 s.
    async fn eventually(mut f: impl FnMut() -> bool) -> bool {
        for _ in 0..2000 {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        f()
    }

    fn unread(r: &File) -> u64 {
        rustix::io::ioctl_fionread(r).expect("FIONREAD")
    }

    async fn wait_idle(writer: &mut Writer) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !writer.is_idle() {
                writer.changed().await;
            }
        })
        .await
        .expect("everything written in time");
    }

    #[test]
    fn stdout_is_opened_according_to_what_it_is() {
        let (_r, w) = pipe();
        let original = w.try_clone().expect("dup");
        let (out, mode) = open_for_writing(w);
        assert_eq!(mode, WriteMode::NonBlocking);
        assert!(
            rustix::fs::fcntl_getfl(&out)
                .unwrap()
                .contains(OFlags::NONBLOCK)
        );
        // The descriptor shared with the parent stays blocking.
        assert!(
            !rustix::fs::fcntl_getfl(&original)
                .unwrap()
                .contains(OFlags::NONBLOCK)
        );
        let file = tempfile::tempfile().expect("temp file");
        assert_eq!(open_for_writing(OwnedFd::from(file)).1, WriteMode::Whole);
        let (a, _b) = UnixStream::pair().expect("socket pair");
        assert_eq!(open_for_writing(OwnedFd::from(a)).1, WriteMode::Sliced);
    }

    /// A pipe is written in the caller's task; what the reactor refuses (`/dev/null`, which
    /// epoll cannot wait on) and what is no pipe go to the thread, and are written all the
    /// same.
    #[tokio::test]
    async fn a_pipe_is_written_in_the_task_and_the_rest_by_the_thread() {
        let counters = Arc::new(AdapterCounters::default());
        let (_r, w) = pipe();
        let writer = Writer::spawn(w, counters.clone()).expect("pipe");
        assert!(matches!(writer, Writer::Inline(_)), "{writer:?}");
        let null = File::options()
            .write(true)
            .open("/dev/null")
            .expect("/dev/null");
        let mut writer = Writer::spawn(OwnedFd::from(null), counters.clone()).expect("null");
        assert!(matches!(writer, Writer::Thread(_)), "{writer:?}");
        let book = ReceiptBook::new();
        assert!(writer.offer(receipted(&book, &["gone\n".into()])).is_ok());
        wait_idle(&mut writer).await;
        assert_eq!(book.confirmed(), (1, 1));
        let file = tempfile::tempfile().expect("temp file");
        let writer = Writer::spawn(OwnedFd::from(file), counters).expect("file");
        assert!(matches!(writer, Writer::Thread(_)), "{writer:?}");
    }

    #[tokio::test]
    async fn a_pipe_takes_many_lines_in_one_write() {
        for inline in [true, false] {
            a_pipe_takes_many_lines_in_one_write_with(inline).await;
        }
    }

    async fn a_pipe_takes_many_lines_in_one_write_with(inline: bool) {
        let (_r, w) = pipe();
        rustix::pipe::fcntl_setpipe_size(&w, 64 * 1024).expect("pipe size");
        let counters = Arc::new(AdapterCounters::default());
        let mut writer = Writer::open(w, counters.clone(), inline).expect("open");
        let book = ReceiptBook::new();
        // 64 lines of 500 bytes, 32,000 bytes: half the pipe, nobody reading.
        let lines: Vec<String> = (0..64).map(|_| "z".repeat(499) + "\n").collect();
        assert!(writer.offer(receipted(&book, &lines)).is_ok());
        wait_idle(&mut writer).await;
        assert_eq!(writer.writes(), 1, "one write for the batch");
        assert_eq!(book.confirmed(), (64, 64));
        assert_eq!(counters.events_written.load(Ordering::Relaxed), 64);
        // The written batch comes back emptied, with its capacity, for the next one.
        assert!(
            eventually(|| {
                let b = writer.empty_batch();
                b.is_empty() && b.marks.is_empty() && b.bytes.capacity() >= 32_000
            })
            .await
        );
    }

    #[tokio::test]
    async fn a_line_cut_between_two_writes_counts_once_when_whole() {
        for inline in [true, false] {
            a_line_cut_between_two_writes_counts_once_when_whole_with(inline).await;
        }
    }

    async fn a_line_cut_between_two_writes_counts_once_when_whole_with(inline: bool) {
        let (mut r, w) = pipe();
        let size = rustix::pipe::fcntl_setpipe_size(&w, 4096).expect("pipe size");
        assert_eq!(size, 4096);
        let counters = Arc::new(AdapterCounters::default());
        let mut writer = Writer::open(w, counters.clone(), inline).expect("open");
        let book = ReceiptBook::new();
        // The pipe holds the first line and the start of the second.
        let lines = vec!["a".repeat(2999) + "\n", "b".repeat(2999) + "\n"];
        assert!(writer.offer(receipted(&book, &lines)).is_ok());
        assert!(
            eventually(|| unread(&r) == 4096).await,
            "the pipe fills: {} bytes",
            unread(&r)
        );
        // The first line is out; the second only in part, so it does not count yet.
        assert!(eventually(|| book.confirmed() == (1, 1)).await);
        assert!(!writer.is_idle());
        assert_eq!(counters.events_written.load(Ordering::Relaxed), 1);
        let mut got = vec![0u8; 4096];
        r.read_exact(&mut got).expect("read");
        wait_idle(&mut writer).await;
        let mut rest = vec![0u8; 6000 - 4096];
        r.read_exact(&mut rest).expect("read");
        got.extend_from_slice(&rest);
        assert_eq!(got, lines.concat().into_bytes());
        assert_eq!(book.confirmed(), (2, 2), "the second line counted once");
        assert_eq!(counters.events_written.load(Ordering::Relaxed), 2);
        assert!(writer.writes() >= 2);
    }

    #[tokio::test]
    async fn a_lone_batch_is_written_without_waiting_for_more() {
        for inline in [true, false] {
            a_lone_batch_is_written_without_waiting_for_more_with(inline).await;
        }
    }

    async fn a_lone_batch_is_written_without_waiting_for_more_with(inline: bool) {
        let (mut r, w) = pipe();
        let counters = Arc::new(AdapterCounters::default());
        let mut writer = Writer::open(w, counters, inline).expect("open");
        let book = ReceiptBook::new();
        assert!(writer.offer(receipted(&book, &["one\n".into()])).is_ok());
        // Nothing else is offered: the line reaches the reader all the same.
        let reader = std::thread::spawn(move || {
            let mut got = [0u8; 4];
            r.read_exact(&mut got).map(|()| got)
        });
        wait_idle(&mut writer).await;
        assert_eq!(&reader.join().expect("reader").expect("read"), b"one\n");
        assert_eq!(book.confirmed(), (1, 1));
    }

    #[tokio::test]
    async fn a_stalled_reader_never_holds_the_stop() {
        for inline in [true, false] {
            a_stalled_reader_never_holds_the_stop_with(inline).await;
        }
    }

    async fn a_stalled_reader_never_holds_the_stop_with(inline: bool) {
        let (mut r, w) = pipe();
        let counters = Arc::new(AdapterCounters::default());
        let mut writer = Writer::open(w, counters, inline).expect("open");
        // Far more than a pipe holds (64 KiB): the thread ends up waiting for the reader.
        let line = "x".repeat(1023) + "\n";
        let book = ReceiptBook::new();
        let lines: Vec<String> = (0..512).map(|_| line.clone()).collect();
        assert!(writer.offer(receipted(&book, &lines)).is_ok());
        assert!(eventually(|| unread(&r) > 0).await);
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

    #[tokio::test]
    async fn a_stop_in_the_middle_of_a_line_finishes_that_line_only() {
        for inline in [true, false] {
            a_stop_in_the_middle_of_a_line_finishes_that_line_only_with(inline).await;
        }
    }

    async fn a_stop_in_the_middle_of_a_line_finishes_that_line_only_with(inline: bool) {
        let (mut r, w) = pipe();
        rustix::pipe::fcntl_setpipe_size(&w, 4096).expect("pipe size");
        let counters = Arc::new(AdapterCounters::default());
        let mut writer = Writer::open(w, counters, inline).expect("open");
        let book = ReceiptBook::new();
        // The pipe takes the first line and 1,096 bytes of the second; then it is stopped.
        let lines: Vec<String> = (0..4).map(|i| format!("{i}").repeat(2999) + "\n").collect();
        assert!(writer.offer(receipted(&book, &lines)).is_ok());
        assert!(eventually(|| unread(&r) == 4096).await);
        // Stopped before the reader reads on: the writer is in the middle of the second line.
        // (The writer in the adapter's task writes nothing until it is called again.)
        if let Writer::Thread(thread) = &writer {
            thread.stop.store(true, Ordering::SeqCst);
        }
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            r.read_to_end(&mut got).map(|_| got)
        });
        assert!(writer.stop(Duration::from_secs(5)).await);
        drop(writer);
        let got = reader.join().expect("reader").expect("read");
        assert_eq!(
            got,
            lines[..2].concat().into_bytes(),
            "two whole lines, no more"
        );
        assert_eq!(book.confirmed(), (2, 2));
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
        assert_eq!(line_end(bytes.as_bytes(), 10), 1000);
        assert_eq!(line_end(bytes.as_bytes(), end - 1), end);
    }

    async fn written_in_order(w: OwnedFd, mut r: impl Read + Send + 'static, inline: bool) {
        let counters = Arc::new(AdapterCounters::default());
        let mut writer = Writer::open(w, counters, inline).expect("open");
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
        wait_idle(&mut writer).await;
        assert!(writer.stop(Duration::from_secs(5)).await);
        drop(writer);
        assert_eq!(reader.join().expect("reader"), expected);
    }

    #[tokio::test]
    async fn everything_is_written_in_order_to_a_reader() {
        for inline in [true, false] {
            let (r, w) = pipe();
            written_in_order(w, r, inline).await;
        }
        // A socket: the sliced mode.
        let (a, b) = UnixStream::pair().expect("socket pair");
        written_in_order(OwnedFd::from(a), b, true).await;
    }

    #[tokio::test]
    async fn a_reader_that_goes_away_is_reported() {
        for inline in [true, false] {
            a_reader_that_goes_away_is_reported_with(inline).await;
        }
    }

    async fn a_reader_that_goes_away_is_reported_with(inline: bool) {
        let (r, w) = pipe();
        // The second open needs a reader; without one the writer falls back to the sliced
        // mode, which reports the broken pipe the same way.
        let counters = Arc::new(AdapterCounters::default());
        let mut writer = Writer::open(w, counters, inline).expect("open");
        drop(r);
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
