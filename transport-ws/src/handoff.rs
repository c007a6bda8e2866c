//! The bounded queue between the driver task and the application: bursts cross it whole.
//!
//! The driver task decodes every message one socket read brought and then hands all the
//! resulting events over in one operation (one lock, at most one wake-up); the application's
//! side takes everything queued in one operation too, into a local buffer it then pops without
//! any synchronisation. A per-event channel (one permit, one queue operation and possibly one
//! wake-up per event) cost more than the decoding of a small dispatch.
//!
//! Bound: `capacity` counts events, never batches. An event counts from the moment the driver
//! queues it until the application has popped every event of the batch it came in, so the
//! queued events plus those in the application's local buffer never exceed `capacity`. When the
//! queue is full the driver keeps its events (up to its own `max_pending_events`) and stops
//! reading the socket, exactly as with a channel.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// A local buffer larger than this (in events) is released when the application finds the
/// queue empty and waits, so an idle connection does not keep a large burst's slots. Smaller
/// ones are kept: the buffers rotate between the two ends, and releasing them after every
/// burst made each burst grow them again (a `realloc` chain per burst in the firehose
/// profile). A driver step brings at most 128 messages, so the default queues stay below it.
const KEEP_WHEN_IDLE: usize = 256;

struct State<T> {
    /// Events queued and not yet taken by the receiver, in order.
    queue: VecDeque<T>,
    /// Events the receiver took and has not finished popping (they still count).
    held: usize,
    capacity: usize,
    sender_alive: bool,
    receiver_alive: bool,
    /// The receiver, waiting for events.
    rx_waker: Option<Waker>,
    /// The sender, waiting for room.
    tx_waker: Option<Waker>,
}

impl<T> State<T> {
    fn room(&self) -> usize {
        self.capacity.saturating_sub(self.queue.len() + self.held)
    }
}

struct Shared<T> {
    state: Mutex<State<T>>,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Plain values: a panic while holding the lock cannot leave them inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A queue of `capacity` events (at least 1).
pub(crate) fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            held: 0,
            capacity: capacity.max(1),
            sender_alive: true,
            receiver_alive: true,
            rx_waker: None,
            tx_waker: None,
        }),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver {
            shared,
            local: VecDeque::new(),
        },
    )
}

/// The receiver is gone: nothing will ever be read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

/// The driver's end.
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    /// Moves as many events from the front of `pending` as there is room for onto the queue, in
    /// order, and wakes the receiver if it waits. Returns how many moved.
    pub(crate) fn send_from(&self, pending: &mut VecDeque<T>) -> Result<usize, Closed> {
        if pending.is_empty() {
            return Ok(0);
        }
        let (waker, n) = {
            let mut state = self.shared.lock();
            if !state.receiver_alive {
                return Err(Closed);
            }
            let n = state.room().min(pending.len());
            if n == 0 {
                return Ok(0);
            }
            if n == pending.len() && state.queue.is_empty() {
                // The whole burst fits an empty queue: swap the buffers instead of moving.
                std::mem::swap(&mut state.queue, pending);
            } else {
                state.queue.extend(pending.drain(..n));
            }
            (state.rx_waker.take(), n)
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(n)
    }

    /// `Ready(Ok)` once there is room for at least one event, `Ready(Err)` once the receiver is
    /// gone; otherwise registers to be woken when the receiver frees room.
    pub(crate) fn poll_room(&self, cx: &mut Context<'_>) -> Poll<Result<(), Closed>> {
        let mut state = self.shared.lock();
        if !state.receiver_alive {
            return Poll::Ready(Err(Closed));
        }
        if state.room() > 0 {
            return Poll::Ready(Ok(()));
        }
        match &mut state.tx_waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.lock();
            state.sender_alive = false;
            state.rx_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The application's end: one consumer.
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// The batch taken last, popped without locking.
    local: VecDeque<T>,
}

impl<T> Receiver<T> {
    /// The next event: `Ready(None)` once the sender is gone and every event was read.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.recv(Some(cx))
    }

    /// The next event if one is queued now (`None` also once the sender is gone).
    pub(crate) fn try_recv(&mut self) -> Option<T> {
        match self.recv(None) {
            Poll::Ready(ev) => ev,
            Poll::Pending => None,
        }
    }

    /// Events waiting, in the local batch and on the queue.
    pub(crate) fn len(&self) -> usize {
        self.local.len() + self.shared.lock().queue.len()
    }

    fn recv(&mut self, cx: Option<&mut Context<'_>>) -> Poll<Option<T>> {
        if let Some(ev) = self.local.pop_front() {
            return Poll::Ready(Some(ev));
        }
        // The local batch is finished: its events stop counting; take the next batch whole.
        let waker = {
            let mut state = self.shared.lock();
            state.held = 0;
            if state.queue.is_empty() {
                if !state.sender_alive {
                    return Poll::Ready(None);
                }
                if let Some(cx) = cx {
                    match &mut state.rx_waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        slot => *slot = Some(cx.waker().clone()),
                    }
                }
                let waker = state.tx_waker.take();
                // Two buffers rotate, not three: this one, finished, goes back to the queue
                // (which the driver's next hand-over swaps it with) unless the queue already
                // has one. Three rotating (the driver's, the queue's, this one) kept three
                // bursts' worth of slots on an idle connection.
                let finished = std::mem::take(&mut self.local);
                let finished =
                    if finished.capacity() <= KEEP_WHEN_IDLE && state.queue.capacity() == 0 {
                        state.queue = finished;
                        None
                    } else {
                        Some(finished)
                    };
                drop(state);
                drop(finished);
                if let Some(w) = waker {
                    w.wake();
                }
                return Poll::Pending;
            }
            std::mem::swap(&mut state.queue, &mut self.local);
            state.held = self.local.len();
            state.tx_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Poll::Ready(self.local.pop_front())
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let (queued, waker) = {
            let mut state = self.shared.lock();
            state.receiver_alive = false;
            state.held = 0;
            (std::mem::take(&mut state.queue), state.tx_waker.take())
        };
        // Events are dropped outside the lock.
        drop(queued);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The other direction: the bounded queue of commands from the handles to the driver task.
///
/// Commands are rare (start, stop, a gateway send now and then), so the queue holds no memory
/// while empty: its buffer is released when the task takes the last queued command. A tokio
/// mpsc channel allocated its first block of 32 slots when created, for the life of the
/// connection, whatever the capacity (3.1 KiB per idle shard).
///
/// Sending is cancellation-safe: a command is queued whole under the lock or not at all.
/// Senders that find the queue full wait on a [`Notify`](tokio::sync::Notify), which allocates
/// nothing while no one waits.
pub(crate) fn command_channel<T>(capacity: usize) -> (CommandSender<T>, CommandReceiver<T>) {
    let shared = Arc::new(CommandShared {
        state: Mutex::new(CommandState {
            queue: VecDeque::new(),
            capacity: capacity.max(1),
            senders: 1,
            receiver_alive: true,
            rx_waker: None,
        }),
        room: tokio::sync::Notify::new(),
    });
    (
        CommandSender {
            shared: shared.clone(),
        },
        CommandReceiver { shared },
    )
}

struct CommandState<T> {
    queue: VecDeque<T>,
    capacity: usize,
    /// Live [`CommandSender`]s: the receiver sees the end when the last one goes.
    senders: usize,
    receiver_alive: bool,
    rx_waker: Option<Waker>,
}

impl<T> CommandState<T> {
    fn push(&mut self, value: T) {
        if self.queue.capacity() == 0 {
            // Usually one command is queued at a time: one slot, not the four a first push
            // makes room for.
            self.queue.reserve_exact(1);
        }
        self.queue.push_back(value);
    }
}

struct CommandShared<T> {
    state: Mutex<CommandState<T>>,
    /// Woken when a command is taken (room) or the receiver is gone.
    room: tokio::sync::Notify,
}

impl<T> CommandShared<T> {
    fn lock(&self) -> MutexGuard<'_, CommandState<T>> {
        // Plain values: a panic while holding the lock cannot leave them inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A handle's end; cloning it adds a sender.
pub(crate) struct CommandSender<T> {
    shared: Arc<CommandShared<T>>,
}

impl<T> Clone for CommandSender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        CommandSender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for CommandSender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.lock();
            state.senders -= 1;
            if state.senders == 0 {
                state.rx_waker.take()
            } else {
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> CommandSender<T> {
    /// Queues `value`, waiting while the queue is full. `Err(Closed)` (with nothing queued)
    /// once the receiver is gone.
    pub(crate) async fn send(&self, value: T) -> Result<(), Closed> {
        let mut value = Some(value);
        // Bounded by the receiver: every taken command or its end wakes a waiter.
        loop {
            let notified = self.shared.room.notified();
            tokio::pin!(notified);
            // Registered before the check, so a command taken in between is not missed.
            notified.as_mut().enable();
            let waker = {
                let mut state = self.shared.lock();
                if !state.receiver_alive {
                    return Err(Closed);
                }
                if state.queue.len() < state.capacity {
                    if let Some(v) = value.take() {
                        state.push(v);
                    }
                    Some(state.rx_waker.take())
                } else {
                    None
                }
            };
            if let Some(waker) = waker {
                if let Some(w) = waker {
                    w.wake();
                }
                return Ok(());
            }
            notified.await;
        }
    }

    /// Queues `value` if there is room now; gives it back otherwise (or once the receiver is
    /// gone).
    pub(crate) fn try_send(&self, value: T) -> Result<(), T> {
        let waker = {
            let mut state = self.shared.lock();
            if !state.receiver_alive || state.queue.len() >= state.capacity {
                return Err(value);
            }
            state.push(value);
            state.rx_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Whether the receiver is gone (the driver task has exited).
    pub(crate) fn is_closed(&self) -> bool {
        !self.shared.lock().receiver_alive
    }
}

/// The driver task's end.
pub(crate) struct CommandReceiver<T> {
    shared: Arc<CommandShared<T>>,
}

impl<T> CommandReceiver<T> {
    /// The next command, `Ready(None)` once every sender is gone and the queue is empty.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let value = {
            let mut state = self.shared.lock();
            match state.queue.pop_front() {
                Some(v) => {
                    if state.queue.is_empty() {
                        // Hold no memory between commands.
                        state.queue = VecDeque::new();
                    }
                    v
                }
                None if state.senders == 0 => return Poll::Ready(None),
                None => {
                    match &mut state.rx_waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        slot => *slot = Some(cx.waker().clone()),
                    }
                    return Poll::Pending;
                }
            }
        };
        self.shared.room.notify_one();
        Poll::Ready(Some(value))
    }
}

impl<T> Drop for CommandReceiver<T> {
    fn drop(&mut self) {
        let queued = {
            let mut state = self.shared.lock();
            state.receiver_alive = false;
            std::mem::take(&mut state.queue)
        };
        // Commands (and the reply senders in them) are dropped outside the lock.
        drop(queued);
        self.shared.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::future::Future;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Wake, Waker};

    use super::*;

    /// Counts its wake-ups.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    /// A burst larger than the capacity crosses in pieces no larger than the capacity, none
    /// lost, none reordered, and the sender sees room again only once the receiver finished
    /// the batch it took.
    #[test]
    fn bursts_larger_than_the_capacity_cross_whole_and_in_order() {
        const CAP: usize = 5;
        let (tx, mut rx) = channel::<u32>(CAP);
        let (tx_wakes, tx_waker) = counter();
        let (_, rx_waker) = counter();
        let mut tx_cx = Context::from_waker(&tx_waker);
        let mut rx_cx = Context::from_waker(&rx_waker);
        let mut pending: VecDeque<u32> = (0..103).collect();
        let mut got = Vec::new();
        for _ in 0..1_000 {
            if pending.is_empty() && got.len() == 103 {
                break;
            }
            let moved = tx.send_from(&mut pending).unwrap();
            assert!(moved <= CAP);
            assert!(rx.len() <= CAP, "more events held than the capacity");
            // Read two at a time: batch boundaries fall inside and between reads.
            for _ in 0..2 {
                match rx.poll_recv(&mut rx_cx) {
                    Poll::Ready(Some(v)) => got.push(v),
                    Poll::Ready(None) => panic!("ended early"),
                    Poll::Pending => break,
                }
            }
            if !pending.is_empty() && tx.poll_room(&mut tx_cx).is_pending() {
                // No room: the receiver's next finished batch must wake the sender.
                let before = tx_wakes.0.load(Ordering::SeqCst);
                while let Poll::Ready(Some(v)) = rx.poll_recv(&mut rx_cx) {
                    got.push(v);
                }
                assert!(
                    tx_wakes.0.load(Ordering::SeqCst) > before,
                    "sender never woken"
                );
            }
        }
        assert_eq!(got, (0..103).collect::<Vec<_>>());
        drop(tx);
        assert_eq!(rx.try_recv(), None);
        assert!(matches!(rx.poll_recv(&mut rx_cx), Poll::Ready(None)));
    }

    /// The receiver is woken once per burst, not per event, and events queued before the
    /// sender went away are still read before the end.
    #[test]
    fn one_wake_per_burst_and_the_end_comes_after_the_last_event() {
        let (tx, mut rx) = channel::<u32>(64);
        let (rx_wakes, rx_waker) = counter();
        let mut cx = Context::from_waker(&rx_waker);
        assert!(rx.poll_recv(&mut cx).is_pending());
        let mut burst: VecDeque<u32> = (0..40).collect();
        assert_eq!(tx.send_from(&mut burst), Ok(40));
        assert!(burst.is_empty());
        assert_eq!(rx_wakes.0.load(Ordering::SeqCst), 1);
        drop(tx);
        let mut got = Vec::new();
        while let Poll::Ready(Some(v)) = rx.poll_recv(&mut cx) {
            got.push(v);
        }
        assert_eq!(got, (0..40).collect::<Vec<_>>());
        assert!(matches!(rx.poll_recv(&mut cx), Poll::Ready(None)));
    }

    /// A dropped receiver closes the sender's side and wakes a sender waiting for room.
    #[test]
    fn a_dropped_receiver_is_seen_by_the_sender() {
        let (tx, rx) = channel::<u32>(1);
        let (tx_wakes, tx_waker) = counter();
        let mut cx = Context::from_waker(&tx_waker);
        let mut burst: VecDeque<u32> = (0..3).collect();
        assert_eq!(tx.send_from(&mut burst), Ok(1));
        assert!(tx.poll_room(&mut cx).is_pending());
        drop(rx);
        assert_eq!(tx_wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(tx.poll_room(&mut cx), Poll::Ready(Err(Closed)));
        assert_eq!(tx.send_from(&mut burst), Err(Closed));
    }

    /// After a burst is read to its end, the channel holds one spare buffer (handed to the
    /// driver at its next hand-over), not one on each side; and bursts keep reusing the two
    /// buffers in rotation without growing new ones.
    #[test]
    fn an_idle_channel_keeps_one_spare_buffer() {
        let (tx, mut rx) = channel::<u32>(64);
        let (_, waker) = counter();
        let mut cx = Context::from_waker(&waker);
        let mut pending = VecDeque::new();
        for round in 0..5u32 {
            pending.extend(round * 10..round * 10 + 10);
            assert_eq!(tx.send_from(&mut pending), Ok(10));
            for want in round * 10..round * 10 + 10 {
                assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(want)));
            }
            assert!(rx.poll_recv(&mut cx).is_pending());
            let queue_spare = tx.shared.lock().queue.capacity();
            assert_eq!(
                rx.local.capacity(),
                0,
                "round {round}: the reader kept its buffer"
            );
            if round > 0 {
                // From the second burst on, two buffers rotate and neither is freed (freeing
                // one would make the next burst grow a new one).
                assert!(queue_spare > 0 && pending.capacity() > 0, "round {round}");
            }
        }
    }

    /// A full command queue makes the next send wait until the task takes a command; a send
    /// dropped while waiting queues nothing; the task sees the end only once every sender is
    /// gone and the queue is empty, and senders see a gone receiver.
    #[tokio::test]
    async fn commands_wait_for_room_and_end_with_the_last_sender() {
        let (tx, mut rx) = command_channel::<u32>(2);
        let (_, waker) = counter();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(tx.try_send(1), Ok(()));
        tx.send(2).await.unwrap();
        assert_eq!(tx.try_send(9), Err(9), "a full queue took a command");
        // Full: a third send waits; dropped unfinished, it leaves nothing behind.
        {
            let third = tx.send(3);
            tokio::pin!(third);
            let polled = std::future::poll_fn(|cx| Poll::Ready(third.as_mut().poll(cx))).await;
            assert!(polled.is_pending());
        }
        let second = tx.clone();
        let waiting = tokio::spawn(async move { second.send(4).await });
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "a send to a full queue did not wait"
        );
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(1)));
        assert_eq!(waiting.await.unwrap(), Ok(()));
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(2)));
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(4)));
        assert!(rx.poll_recv(&mut cx).is_pending());
        assert_eq!(
            rx.shared.lock().queue.capacity(),
            0,
            "an empty queue kept memory"
        );
        tx.send(5).await.unwrap();
        drop(tx);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(5)));
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(None));

        let (tx, rx) = command_channel::<u32>(1);
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.send(1).await, Err(Closed));
    }
}
