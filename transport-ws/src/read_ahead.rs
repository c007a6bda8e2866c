//! A read-ahead buffer between the TCP socket and the layers above it (rustls, the frame
//! reader).
//!
//! The frame reader reads into a receive buffer whose frames it hands out as `Bytes` slices.
//! While the application still holds any of them (codecs keep payloads zero-copy), that buffer
//! is shared, so the next read allocates a fresh one of `read_buffer_size` bytes (or what the
//! frame at hand needs): straight on a socket, one `recvfrom` per few frames.
//! rustls, for its part, reads at most 4 KiB at a time. [`ReadAhead`] reads the socket in large
//! chunks and hands them out in whatever small pieces are asked for, so the number of reads no
//! longer depends on how long the application keeps its messages.
//!
//! Memory: the buffer is allocated (uninitialized, never zero-filled) when a small read finds it
//! empty, and released as soon as the socket has nothing more to give (the inner read returns
//! `Pending`, an error or the end of the stream). An idle connection therefore holds none of
//! it; a busy one holds it while data keeps arriving.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// A stream whose reads go through a lazily allocated buffer of `capacity` bytes. Writes pass
/// straight through.
#[derive(Debug)]
pub(crate) struct ReadAhead<S> {
    inner: S,
    /// Size of each read from `inner` when buffering; 0 turns buffering off.
    capacity: usize,
    /// Bytes read from `inner` and not yet handed out. Empty and without an allocation while
    /// the socket is idle.
    buf: BytesMut,
}

impl<S> ReadAhead<S> {
    pub(crate) fn new(inner: S, capacity: usize) -> Self {
        ReadAhead {
            inner,
            capacity,
            buf: BytesMut::new(),
        }
    }

    /// Bytes currently allocated for reading ahead (0 when idle).
    #[cfg(test)]
    pub(crate) fn allocated(&self) -> usize {
        self.buf.capacity()
    }

    /// Drops the buffer: nothing more to read for now (or ever), so hold no memory meanwhile.
    fn release(&mut self) {
        self.buf = BytesMut::new();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if !this.buf.is_empty() {
            let n = this.buf.len().min(out.remaining());
            out.put_slice(&this.buf[..n]);
            this.buf.advance(n);
            return Poll::Ready(Ok(()));
        }
        // Nothing buffered. A read at least half as large as the buffer gains little from it
        // (the frame reader's reads during a burst, and into a buffer kept from the last one,
        // whose room is often just under the read-ahead's).
        if out.remaining() >= this.capacity / 2 {
            let polled = Pin::new(&mut this.inner).poll_read(cx, out);
            if polled.is_pending() {
                this.release();
            }
            return polled;
        }
        // Empty and unshared: this reuses the allocation in place, or makes the first one.
        this.buf.reserve(this.capacity);
        let read = std::pin::pin!(this.inner.read_buf(&mut this.buf));
        match read.poll(cx) {
            Poll::Pending => {
                this.release();
                Poll::Pending
            }
            Poll::Ready(Err(e)) => {
                this.release();
                Poll::Ready(Err(e))
            }
            // End of stream (nothing was read): report it as such, with nothing filled.
            Poll::Ready(Ok(0)) => {
                this.release();
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(_)) => {
                let n = this.buf.len().min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.advance(n);
                Poll::Ready(Ok(()))
            }
        }
    }
}

/// `AsyncWrite` for a read-side wrapper `$wrapper<S>` with a field `inner: S`: every write
/// goes straight to `inner` (the wrappers only change how bytes are read).
macro_rules! write_through {
    ($wrapper:ident) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<S> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
            }
        }
    };
}
pub(crate) use write_through;

write_through!(ReadAhead);

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::StreamExt;
    use futures_util::task::noop_waker_ref;
    use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

    use super::*;

    /// A socket stand-in: hands out the queued chunks, each split as small as the reader asks,
    /// then `Pending` (or end of stream once `eof` is set). Counts every read that reaches it.
    struct Source {
        chunks: VecDeque<Vec<u8>>,
        eof: bool,
        reads: Arc<AtomicUsize>,
    }

    impl Source {
        fn new(chunks: impl IntoIterator<Item = Vec<u8>>, eof: bool) -> (Self, Arc<AtomicUsize>) {
            let reads = Arc::new(AtomicUsize::new(0));
            let source = Source {
                chunks: chunks.into_iter().collect(),
                eof,
                reads: reads.clone(),
            };
            (source, reads)
        }
    }

    impl AsyncRead for Source {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.reads.fetch_add(1, Ordering::SeqCst);
            let Some(chunk) = this.chunks.front_mut() else {
                return if this.eof {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            };
            let n = chunk.len().min(out.remaining());
            out.put_slice(&chunk[..n]);
            chunk.drain(..n);
            if chunk.is_empty() {
                this.chunks.pop_front();
            }
            Poll::Ready(Ok(()))
        }
    }

    /// Writes vanish (the WebSocket layer needs a writable stream; these tests only read).
    impl AsyncWrite for Source {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// One unmasked server text frame (2-byte extended length) carrying `payload`.
    fn text_frame(payload: &[u8]) -> Vec<u8> {
        assert!((126..=u16::MAX as usize).contains(&payload.len()));
        let mut frame = vec![0x81, 126];
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    fn payload(i: usize) -> Vec<u8> {
        format!("{i:06} {}", "x".repeat(900 + i % 200)).into_bytes()
    }

    /// Reads `count` messages the way the driver's socket does (from an empty handshake
    /// leftover, the driver's 4 KiB read buffer), keeping every one alive, and returns them with
    /// the number of reads that reached the socket.
    async fn read_all_holding(count: usize, read_ahead: usize) -> (Vec<Vec<u8>>, usize) {
        let wire: Vec<u8> = (0..count).flat_map(|i| text_frame(&payload(i))).collect();
        // Everything is already in the "kernel": one chunk, as a full socket buffer would be.
        let (source, reads) = Source::new([wire], false);
        let config = WebSocketConfig::default().read_buffer_size(4 << 10);
        let mut ws = WebSocketStream::from_partially_read(
            ReadAhead::new(source, read_ahead),
            Vec::new(),
            Role::Client,
            Some(config),
        )
        .await;
        let mut held = Vec::with_capacity(count);
        for _ in 0..count {
            let msg = ws.next().await.expect("a message").expect("a valid frame");
            held.push(msg.into_data());
        }
        let got = held.iter().map(|b| b.to_vec()).collect();
        (got, reads.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn held_messages_do_not_shrink_socket_reads() {
        const COUNT: usize = 500;
        const READ_AHEAD: usize = 64 << 10;
        let expected: Vec<Vec<u8>> = (0..COUNT).map(payload).collect();
        let wire_len: usize = expected.iter().map(|p| p.len() + 4).sum();

        let (direct, direct_reads) = read_all_holding(COUNT, 0).await;
        assert_eq!(direct, expected);
        // The condition being fixed: with every message held, the WebSocket layer asks the
        // socket for about one frame at a time.
        assert!(
            direct_reads >= COUNT / 2,
            "{direct_reads} socket reads for {COUNT} held messages without read-ahead"
        );

        let (buffered, buffered_reads) = read_all_holding(COUNT, READ_AHEAD).await;
        assert_eq!(buffered, expected);
        assert!(
            buffered_reads <= wire_len.div_ceil(READ_AHEAD) + 1,
            "{buffered_reads} socket reads for {wire_len} bytes with {READ_AHEAD} B read-ahead"
        );
    }

    /// A small deterministic generator (xorshift), so failures replay.
    fn sizes(seed: u64, max: usize) -> impl FnMut() -> usize {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            1 + (x % max as u64) as usize
        }
    }

    #[tokio::test]
    async fn bytes_arrive_whole_and_in_order_whatever_the_read_sizes() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
        for (seed, capacity) in [(1, 1 << 10), (7, 64 << 10), (42, 3), (9, 0)] {
            let mut chunk_size = sizes(seed, 90_000);
            let mut chunks = Vec::new();
            let mut rest = &data[..];
            while !rest.is_empty() {
                let n = chunk_size().min(rest.len());
                chunks.push(rest[..n].to_vec());
                rest = &rest[n..];
            }
            let (source, _) = Source::new(chunks, true);
            let mut stream = ReadAhead::new(source, capacity);
            let mut read_size = sizes(seed + 1, 80 << 10);
            let mut got = Vec::new();
            loop {
                let mut piece = vec![0; read_size()];
                let n = stream.read(&mut piece).await.expect("read");
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&piece[..n]);
            }
            assert_eq!(got.len(), data.len(), "capacity {capacity}");
            assert!(got == data, "bytes differ with capacity {capacity}");
        }
    }

    fn poll_small_read(stream: &mut ReadAhead<Source>, len: usize) -> Poll<io::Result<Vec<u8>>> {
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut space = vec![0; len];
        let mut out = ReadBuf::new(&mut space);
        Pin::new(stream)
            .poll_read(&mut cx, &mut out)
            .map_ok(|()| out.filled().to_vec())
    }

    #[test]
    fn the_buffer_is_released_when_the_socket_runs_dry() {
        let (source, reads) = Source::new([b"heartbeat ack".to_vec()], false);
        let mut stream = ReadAhead::new(source, 64 << 10);
        assert_eq!(
            stream.allocated(),
            0,
            "nothing allocated before the first read"
        );

        let Poll::Ready(Ok(first)) = poll_small_read(&mut stream, 4) else {
            panic!("data was ready");
        };
        assert_eq!(first, b"hear");
        assert!(stream.allocated() > 0, "the rest waits in the buffer");

        let Poll::Ready(Ok(rest)) = poll_small_read(&mut stream, 100) else {
            panic!("buffered data was ready");
        };
        assert_eq!(rest, b"tbeat ack");
        assert_eq!(
            reads.load(Ordering::SeqCst),
            1,
            "the rest came from the buffer"
        );

        assert!(poll_small_read(&mut stream, 100).is_pending());
        assert_eq!(stream.allocated(), 0, "an idle stream holds no buffer");
    }

    #[test]
    fn reads_as_large_as_the_buffer_go_straight_to_the_socket() {
        let (source, reads) = Source::new([vec![7; 10_000]], false);
        let mut stream = ReadAhead::new(source, 4 << 10);
        let Poll::Ready(Ok(got)) = poll_small_read(&mut stream, 4 << 10) else {
            panic!("data was ready");
        };
        assert_eq!(got, vec![7; 4 << 10]);
        assert_eq!(stream.allocated(), 0, "no copy through the buffer");
        assert_eq!(reads.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn end_of_stream_and_errors_pass_through() {
        let (source, _) = Source::new([], true);
        let mut stream = ReadAhead::new(source, 64 << 10);
        let Poll::Ready(Ok(got)) = poll_small_read(&mut stream, 10) else {
            panic!("end of stream is ready");
        };
        assert!(got.is_empty(), "end of stream reads nothing");
        assert_eq!(stream.allocated(), 0, "nothing kept after the end");

        struct Broken;
        impl AsyncRead for Broken {
            fn poll_read(
                self: Pin<&mut Self>,
                _cx: &mut Context<'_>,
                _out: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
            }
        }
        let mut cx = Context::from_waker(noop_waker_ref());
        for len in [10, 1 << 20] {
            let mut stream = ReadAhead::new(Broken, 64 << 10);
            let mut space = vec![0; len];
            let mut out = ReadBuf::new(&mut space);
            match Pin::new(&mut stream).poll_read(&mut cx, &mut out) {
                Poll::Ready(Err(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
                _ => panic!("the error must reach the reader (read of {len} B)"),
            }
        }
    }

    #[tokio::test]
    async fn writes_pass_through() {
        let (near, mut far) = tokio::io::duplex(1 << 10);
        let mut stream = ReadAhead::new(near, 64 << 10);
        stream.write_all(b"identify").await.expect("write");
        stream.flush().await.expect("flush");
        far.write_all(b"ready").await.expect("write back");
        let mut got = [0; 8];
        assert_eq!(far.read(&mut got).await.expect("read"), 8);
        assert_eq!(&got, b"identify");
        let mut back = [0; 5];
        stream.read_exact(&mut back).await.expect("read back");
        assert_eq!(&back, b"ready");
        stream.shutdown().await.expect("shutdown");
        assert_eq!(far.read(&mut got).await.expect("eof"), 0);
    }
}
