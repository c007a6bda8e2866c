//! One client's WebSocket after the upgrade: the server end of the framing in
//! `handover_transport_ws::frame` over the upgraded stream.
//!
//! Outgoing frames are encoded straight into one send buffer (a header and the payload each),
//! so a batch of dispatches is one `write` and no per-frame message object; incoming frames are
//! cut from a small receive buffer, unmasked and checked by the same reader the shards use.

use std::io;

use crate::frames::Frame;
use bytes::{Buf, BufMut, BytesMut};
use handover_transport_ws::frame::{self, FrameError, FrameReader, Incoming, Kind, Role};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Room asked for per read: client payloads are small (Discord's limit is 4096 bytes).
const READ_ROOM: usize = 1024;

/// Send buffer capacity kept whatever the writes; above it, a write using under an eighth of
/// the buffer releases it.
const KEEP_WRITE_BUFFER: usize = 4 * 1024;

/// Why reading a client's socket ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The stream failed.
    #[error("client socket read failed")]
    Io(#[from] io::Error),
    /// The client broke the WebSocket protocol or the size limit.
    #[error("client broke the websocket protocol")]
    Frame(#[from] FrameError),
}

/// A client connection's framing over `S`.
pub(crate) struct ClientSocket<S> {
    io: S,
    reader: FrameReader,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientSocket<S> {
    /// The server end over `io`, refusing client messages over `max_message` bytes.
    pub(crate) fn new(io: S, max_message: usize) -> Self {
        ClientSocket {
            io,
            reader: FrameReader::new(Role::Server, max_message, max_message),
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
        }
    }

    /// The next message or control frame from the client; `Ok(None)` at the end of the stream.
    /// Cancel-safe: bytes read before a cancellation stay in the buffer for the next call.
    pub(crate) async fn next(&mut self) -> Result<Option<Incoming>, ReadError> {
        // Bounded: every pass returns or reads at least one byte (0 ends the stream).
        loop {
            if let Some(incoming) = self.reader.read(&mut self.rbuf)? {
                return Ok(Some(incoming));
            }
            let room = self
                .reader
                .needed()
                .saturating_sub(self.rbuf.len())
                .max(READ_ROOM);
            self.rbuf.reserve(room);
            if self.io.read_buf(&mut self.rbuf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Queues `frame` as a text frame, its text written straight into the send buffer.
    pub(crate) fn push_frame(&mut self, frame: &Frame) {
        frame::encode_with(
            &mut self.wbuf,
            Role::Server,
            Kind::Text,
            frame.len(),
            |out| {
                frame.write_to(out);
            },
        );
    }

    /// Queues a binary frame.
    pub(crate) fn push_binary(&mut self, payload: &[u8]) {
        frame::encode(&mut self.wbuf, Role::Server, Kind::Binary, payload);
    }

    /// Queues the pong answering a ping's `payload`.
    pub(crate) fn push_pong(&mut self, payload: &[u8]) {
        frame::encode(&mut self.wbuf, Role::Server, Kind::Pong, payload);
    }

    /// Queues a close frame with `code` and `reason` (at most 123 bytes are kept: a control
    /// frame carries at most 125).
    pub(crate) fn push_close(&mut self, code: u16, reason: &str) {
        let mut payload = BytesMut::with_capacity(2 + reason.len());
        payload.put_slice(&frame::close_payload(code));
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        payload.put_slice(&reason.as_bytes()[..end]);
        frame::encode(&mut self.wbuf, Role::Server, Kind::Close, &payload);
    }

    /// Queues a close frame without a code (the answer to a client's close that had none).
    pub(crate) fn push_close_empty(&mut self) {
        frame::encode(&mut self.wbuf, Role::Server, Kind::Close, &[]);
    }

    /// Writes everything queued (in one write when the socket takes it), then flushes.
    /// Cancel-safe: what was written is gone from the buffer, the rest stays queued.
    ///
    /// The send buffer keeps its capacity while the writes fill it (a stream of bursts grows it
    /// once, not once per burst) and is released by a write that uses little of it: a quiet
    /// connection holds none.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        let queued = self.wbuf.len();
        // Bounded: every pass writes at least one byte or returns.
        while !self.wbuf.is_empty() {
            let n = self.io.write(&self.wbuf).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.wbuf.advance(n);
        }
        if self.wbuf.capacity() > KEEP_WRITE_BUFFER && queued < self.wbuf.capacity() / 8 {
            self.wbuf = BytesMut::new();
        }
        self.io.flush().await
    }

    /// Ends the stream for writing (TCP FIN), after what was flushed.
    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        self.io.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn frames_written_read_back_at_a_client_and_client_frames_are_unmasked() {
        let (server_io, mut client_io) = tokio::io::duplex(1 << 16);
        let mut server = ClientSocket::new(server_io, 4096);
        let ack = crate::frames::heartbeat_ack();
        server.push_frame(&ack);
        server.push_binary(&[1, 2, 3]);
        server.push_close(4004, "authentication failed");
        server.flush().await.unwrap();
        let mut got = BytesMut::new();
        let mut client = FrameReader::new(Role::Client, 4096, 4096);
        let mut seen = Vec::new();
        while seen.len() < 3 {
            assert!(client_io.read_buf(&mut got).await.unwrap() > 0);
            while let Some(m) = client.read(&mut got).unwrap() {
                seen.push(m);
            }
        }
        assert_eq!(
            seen,
            vec![
                Incoming::Text(Bytes::from(ack.to_vec())),
                Incoming::Binary(Bytes::from_static(&[1, 2, 3])),
                Incoming::Close(Some(4004)),
            ]
        );
        let mut out = BytesMut::new();
        frame::encode(&mut out, Role::Client, Kind::Text, b"{\"op\":1,\"d\":null}");
        client_io.write_all(&out).await.unwrap();
        assert_eq!(
            server.next().await.unwrap(),
            Some(Incoming::Text(Bytes::from_static(b"{\"op\":1,\"d\":null}")))
        );
        drop(client_io);
        assert_eq!(server.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_unmasked_or_oversized_client_frame_is_a_typed_error() {
        let (server_io, mut client_io) = tokio::io::duplex(1 << 16);
        let mut server = ClientSocket::new(server_io, 16);
        let mut out = BytesMut::new();
        frame::encode(&mut out, Role::Server, Kind::Text, b"unmasked");
        client_io.write_all(&out).await.unwrap();
        assert!(matches!(
            server.next().await,
            Err(ReadError::Frame(FrameError::Mask))
        ));
        let (server_io, mut client_io) = tokio::io::duplex(1 << 16);
        let mut server = ClientSocket::new(server_io, 16);
        let mut out = BytesMut::new();
        frame::encode(&mut out, Role::Client, Kind::Text, &[b'a'; 17]);
        client_io.write_all(&out).await.unwrap();
        assert!(matches!(
            server.next().await,
            Err(ReadError::Frame(FrameError::FrameTooLarge { .. }))
        ));
    }
}
