//! The fleet's shards' events merged into one stream, with no allocation per event.
//!
//! futures' `SelectAll` hands every stream back to a `FuturesUnordered` after each item, which
//! allocates a task node per item: one allocation and a queue round trip per dispatch, a
//! tenth of the proxy's CPU per event in its profile (docs/benchmarks.md). Here each stream
//! has a waker of its own, made once, that puts the stream's index on a ready queue; the
//! stream that just yielded is polled again first, up to [`BURST`] items in a row, then goes
//! to the back of the queue, so a busy shard never holds the others back for longer than that.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use futures_core::Stream;
use futures_util::task::AtomicWaker;

/// Items one stream yields in a row before the others that are ready get their turn.
pub(crate) const BURST: u32 = 32;

/// Streams merged as their items come; ends once every stream has ended.
pub(crate) struct Merge<S> {
    slots: Vec<Slot<S>>,
    ready: Arc<ReadyQueue>,
    /// Streams not yet ended.
    live: usize,
    /// The stream that yielded last, polled again first while its streak lasts.
    current: Option<usize>,
    streak: u32,
}

struct Slot<S> {
    /// `None` once the stream has ended.
    stream: Option<S>,
    waker: Waker,
}

/// Indices of the streams woken since they were last polled, in the order they were woken.
struct ReadyQueue {
    queue: Mutex<VecDeque<usize>>,
    /// Whether each stream's index is in `queue` (so it is there at most once).
    queued: Box<[AtomicBool]>,
    /// The merged stream's reader.
    reader: AtomicWaker,
}

impl ReadyQueue {
    /// Puts `index` at the back of the queue unless it is there already.
    fn enqueue(&self, index: usize) {
        if !self.queued[index].swap(true, Ordering::AcqRel) {
            self.queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push_back(index);
        }
    }

    fn pop(&self) -> Option<usize> {
        let index = self
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()?;
        // Cleared before the stream is polled: a wake during or after the poll queues it again.
        self.queued[index].store(false, Ordering::Release);
        Some(index)
    }
}

/// The waker of one stream.
struct StreamWaker {
    index: usize,
    ready: Arc<ReadyQueue>,
}

impl Wake for StreamWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.enqueue(self.index);
        self.ready.reader.wake();
    }
}

impl<S: Stream + Unpin> Merge<S> {
    /// Merges `streams`; each is polled first in the order given.
    pub(crate) fn new(streams: Vec<S>) -> Merge<S> {
        let ready = Arc::new(ReadyQueue {
            // Every stream starts ready: it has to be polled once to register its waker.
            queue: Mutex::new((0..streams.len()).collect()),
            queued: streams.iter().map(|_| AtomicBool::new(true)).collect(),
            reader: AtomicWaker::new(),
        });
        let live = streams.len();
        let slots = streams
            .into_iter()
            .enumerate()
            .map(|(index, stream)| Slot {
                stream: Some(stream),
                waker: Waker::from(Arc::new(StreamWaker {
                    index,
                    ready: ready.clone(),
                })),
            })
            .collect();
        Merge {
            slots,
            ready,
            live,
            current: None,
            streak: 0,
        }
    }

    /// The next stream in the ready queue; when there is none, the reader's waker is left to
    /// be woken by the next stream that is. Registered only then (not on every item), and the
    /// queue looked at again after it: a stream woken in between is not missed.
    fn next_ready(&self, cx: &Context<'_>) -> Option<usize> {
        if let Some(index) = self.ready.pop() {
            return Some(index);
        }
        self.ready.reader.register(cx.waker());
        self.ready.pop()
    }

    /// The next item of any stream; `None` once every stream has ended.
    pub(crate) fn poll_next_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        loop {
            let index = match self.current.take() {
                Some(index) => index,
                None => {
                    self.streak = 0;
                    match self.next_ready(cx) {
                        Some(index) => index,
                        None if self.live == 0 => return Poll::Ready(None),
                        None => return Poll::Pending,
                    }
                }
            };
            let slot = &mut self.slots[index];
            let Some(stream) = slot.stream.as_mut() else {
                continue;
            };
            let mut own = Context::from_waker(&slot.waker);
            match Pin::new(stream).poll_next(&mut own) {
                Poll::Ready(Some(item)) => {
                    self.streak += 1;
                    if self.streak < BURST {
                        self.current = Some(index);
                    } else {
                        // Its turn is over; it may have more, so it goes to the back.
                        self.ready.enqueue(index);
                    }
                    return Poll::Ready(Some(item));
                }
                Poll::Ready(None) => {
                    slot.stream = None;
                    self.live -= 1;
                }
                // Its own waker is registered: it is queued again when it has more.
                Poll::Pending => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use tokio::sync::mpsc;

    /// A tokio channel's receiver as a stream (tokio-stream is not a dependency).
    struct Receiver(mpsc::UnboundedReceiver<u32>);

    impl Stream for Receiver {
        type Item = u32;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<u32>> {
            self.0.poll_recv(cx)
        }
    }

    fn poll<S: Stream + Unpin>(merge: &mut Merge<S>) -> Poll<Option<S::Item>> {
        let waker = Waker::noop();
        merge.poll_next_item(&mut Context::from_waker(waker))
    }

    #[test]
    fn every_item_once_in_each_streams_order_then_the_end() {
        let streams = vec![
            stream::iter(0..100_u32),
            stream::iter(1000..1003),
            stream::iter(2000..2070),
        ];
        let mut merge = Merge::new(streams);
        let mut seen = Vec::new();
        while let Poll::Ready(Some(item)) = poll(&mut merge) {
            seen.push(item);
        }
        assert!(matches!(poll(&mut merge), Poll::Ready(None)));
        for range in [0..100, 1000..1003, 2000..2070] {
            let own: Vec<u32> = seen.iter().copied().filter(|i| range.contains(i)).collect();
            assert_eq!(own, range.collect::<Vec<_>>());
        }
        assert_eq!(seen.len(), 173);
    }

    #[test]
    fn a_busy_stream_yields_at_most_a_burst_before_the_others() {
        let mut merge = Merge::new(vec![stream::iter(0..1000_u32), stream::iter(5000..5010)]);
        let mut seen = Vec::new();
        while let Poll::Ready(Some(item)) = poll(&mut merge) {
            seen.push(item);
        }
        let first_other = seen
            .iter()
            .position(|&i| i >= 5000)
            .expect("the second stream");
        assert_eq!(first_other, BURST as usize);
        // Then turns: at most BURST of the busy stream between two of the other's.
        let positions: Vec<usize> = seen
            .iter()
            .enumerate()
            .filter(|(_, i)| **i >= 5000)
            .map(|(p, _)| p)
            .collect();
        for pair in positions.windows(2) {
            assert!(pair[1] - pair[0] <= BURST as usize + 1, "{pair:?}");
        }
    }

    #[tokio::test]
    async fn a_stream_woken_later_is_polled_and_the_reader_woken() {
        let (tx_a, rx_a) = mpsc::unbounded_channel();
        let (tx_b, rx_b) = mpsc::unbounded_channel();
        let mut merge = Merge::new(vec![Receiver(rx_a), Receiver(rx_b)]);
        assert!(poll(&mut merge).is_pending());
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(item) = std::future::poll_fn(|cx| merge.poll_next_item(cx)).await {
                got.push(item);
            }
            got
        });
        tokio::task::yield_now().await;
        tx_b.send(7).expect("open");
        tokio::task::yield_now().await;
        tx_a.send(3).expect("open");
        tx_b.send(8).expect("open");
        drop(tx_a);
        drop(tx_b);
        let mut got = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .expect("the reader ends once both streams have")
            .expect("no panic");
        got.sort_unstable();
        assert_eq!(got, vec![3, 7, 8]);
    }

    #[test]
    fn no_streams_is_an_ended_stream() {
        let mut merge = Merge::<stream::Iter<std::ops::Range<u32>>>::new(Vec::new());
        assert!(matches!(poll(&mut merge), Poll::Ready(None)));
    }
}
