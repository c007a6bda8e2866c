//! One transport: connecting, open, closing. Private to the crate.
//!
//! A [`Transport`] owns at most one connect attempt or socket: the I/O half of a transport. What
//! state it is in (open, closing, lingering after the peer's close) and when it ends is decided
//! by the driver core (`crate::link`); the tokio driver drops a `Transport` when the core asks
//! and only then tells the core, which makes the one end report.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use handover_core::{Message, TransportId};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite;

use crate::config::TransportConfig;
use crate::connector::{BoxByteStream, SharedConnector};
use crate::error::TransportError;
use crate::frame::{self, FrameError, FrameReader, Incoming, Kind, Role};
use crate::link::ReadMode;
use crate::read_ahead::ReadAhead;

/// Frames discarded in one poll before yielding, so a flood cannot starve the driver task.
const MAX_DISCARDS_PER_POLL: usize = 64;

/// The byte stream under the WebSocket: plain TCP or TLS over TCP, the socket read ahead in
/// large chunks either way (see [`ReadAhead`]).
pub(crate) enum MaybeTls {
    Plain(ReadAhead<TcpStream>),
    Tls(Box<TlsStream<ReadAhead<TcpStream>>>),
    /// A stream a [`Connector`](crate::Connector) opened (read as it comes: the connector
    /// chooses its own buffering).
    Custom(BoxByteStream),
    /// TLS over a stream a connector opened.
    CustomTls(Box<TlsStream<BoxByteStream>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            MaybeTls::Custom(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::CustomTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            MaybeTls::Custom(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::CustomTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            MaybeTls::Custom(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::CustomTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            MaybeTls::Custom(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::CustomTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The byte stream under the WebSocket, as the upgrade and then the frame reader see it.
///
/// During the HTTP upgrade it hands out bytes only up to the end of the response head
/// (`\r\n\r\n`) and keeps what the peer sent after it (frames that came in the same read) for
/// the frame reader, so the upgrade leaves no bytes behind. After the upgrade, reads go through
/// (the kept bytes first) to [`Socket`]'s frame reader.
pub(crate) struct Upgrade<S> {
    inner: S,
    /// Bytes read and not yet handed out.
    kept: BytesMut,
    /// Bytes of `kept` up to the end of the head, once that end was found.
    head_left: Option<usize>,
    /// The whole head has been handed out: reads go through (after what `kept` holds).
    through: bool,
    /// How much of `kept` has been searched for the end of the head.
    searched: usize,
}

/// Read size while looking for the end of the response head (a gateway's is about 200 bytes;
/// a longer one takes more reads). Small: every shard of a fleet upgrades at once, and these
/// buffers, freed after the upgrade, stayed resident between long-lived allocations.
const HEAD_READ: usize = 256;

impl<S> Upgrade<S> {
    pub(crate) fn new(inner: S) -> Self {
        Upgrade {
            inner,
            kept: BytesMut::new(),
            head_left: None,
            through: false,
            searched: 0,
        }
    }

    /// Hands out what `kept` holds, during the upgrade only up to the end of the head. Returns
    /// whether anything was handed out.
    fn give(&mut self, out: &mut ReadBuf<'_>) -> bool {
        if !self.through && self.head_left.is_none() {
            let from = self.searched.saturating_sub(3);
            if let Some(at) = self.kept[from..].windows(4).position(|w| w == b"\r\n\r\n") {
                self.head_left = Some(from + at + 4);
            }
            self.searched = self.kept.len();
        }
        let limit = match self.head_left {
            Some(left) if !self.through => left,
            _ => self.kept.len(),
        };
        let n = limit.min(out.remaining());
        if n == 0 {
            return false;
        }
        out.put_slice(&self.kept[..n]);
        self.kept.advance(n);
        self.searched = self.searched.saturating_sub(n);
        if let Some(left) = self.head_left.as_mut() {
            *left -= n;
            if *left == 0 {
                self.through = true;
                self.head_left = None;
            }
        }
        if self.kept.is_empty() {
            // Hold no memory once everything was handed out.
            self.kept = BytesMut::new();
        }
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Upgrade<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 || (!this.kept.is_empty() && this.give(out)) {
            return Poll::Ready(Ok(()));
        }
        if this.through {
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        // Still in the head, and everything kept was handed out: read more.
        this.kept.reserve(HEAD_READ);
        let read = std::pin::pin!(this.inner.read_buf(&mut this.kept));
        match read.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // End of stream: nothing filled.
            Poll::Ready(Ok(0)) => Poll::Ready(Ok(())),
            Poll::Ready(Ok(_)) => {
                this.give(out);
                Poll::Ready(Ok(()))
            }
        }
    }
}

crate::read_ahead::write_through!(Upgrade);

type ConnectFuture = Pin<Box<dyn Future<Output = Result<Box<Socket>, TransportError>> + Send>>;

/// The sizes an open socket works with (from [`TransportConfig`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct FrameSettings {
    read_buffer: usize,
    /// Room per read while a burst lasts: the read-ahead's size (a read this large goes past
    /// the read-ahead, straight to the socket), at least `read_buffer`.
    burst_read: usize,
    write_buffer: usize,
    max_frame: usize,
    max_message: usize,
}

/// Everything a connect attempt needs, cheap to clone into the connect future.
#[derive(Clone)]
pub(crate) struct ConnectSettings {
    pub(crate) timeout: Duration,
    pub(crate) frames: FrameSettings,
    pub(crate) read_ahead: usize,
    pub(crate) connector: Option<SharedConnector>,
}

impl ConnectSettings {
    pub(crate) fn new(config: &TransportConfig) -> Self {
        ConnectSettings {
            timeout: config.connect_timeout,
            frames: FrameSettings {
                read_buffer: config.read_buffer_size,
                burst_read: config.read_ahead_size.max(config.read_buffer_size),
                write_buffer: config.write_buffer_size,
                max_frame: config.max_frame_size,
                max_message: config.max_message_size,
            },
            read_ahead: config.read_ahead_size,
            connector: config.connector.clone(),
        }
    }
}

/// Builds (once per driver, or once per process for the default roots) the rustls client
/// configuration.
pub(crate) struct TlsSetup {
    extra: Vec<Vec<u8>>,
    webpki: bool,
    built: Option<Arc<rustls::ClientConfig>>,
}

impl TlsSetup {
    pub(crate) fn new(config: &TransportConfig) -> Self {
        TlsSetup {
            extra: config.extra_root_certificates.clone(),
            webpki: config.use_webpki_roots,
            built: None,
        }
    }

    /// The client configuration, built on first use.
    pub(crate) fn client_config(&mut self) -> Result<Arc<rustls::ClientConfig>, TransportError> {
        if let Some(c) = &self.built {
            return Ok(c.clone());
        }
        let built = if self.extra.is_empty() && self.webpki {
            static DEFAULT: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
            match DEFAULT.get() {
                Some(c) => c.clone(),
                None => {
                    let c = build_client_config(&[], true)?;
                    DEFAULT.get_or_init(|| c).clone()
                }
            }
        } else {
            build_client_config(&self.extra, self.webpki)?
        };
        self.built = Some(built.clone());
        Ok(built)
    }
}

fn build_client_config(
    extra: &[Vec<u8>],
    webpki: bool,
) -> Result<Arc<rustls::ClientConfig>, TransportError> {
    let mut roots = RootCertStore::empty();
    if webpki {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for der in extra {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| TransportError::TlsConfig {
                source: Box::new(e),
            })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::TlsConfig {
            source: Box::new(e),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Starts connecting `url` as transport `conn`. The returned future does TCP, TLS (for
/// `wss://`) and the WebSocket upgrade, bounded by the connect timeout. Dropping it cancels the
/// attempt and closes whatever was opened so far.
pub(crate) fn connect(
    conn: TransportId,
    url: String,
    settings: &ConnectSettings,
    tls: &mut TlsSetup,
) -> ConnectFuture {
    let target = match Target::parse(conn, &url) {
        Ok(t) => t,
        Err(e) => return Box::pin(async move { Err(e) }),
    };
    let tls_config = if target.secure {
        match tls.client_config() {
            Ok(c) => Some(c),
            Err(e) => return Box::pin(async move { Err(e) }),
        }
    } else {
        None
    };
    let timeout = settings.timeout;
    let frames = settings.frames;
    let read_ahead = settings.read_ahead;
    let connector = settings.connector.clone();
    Box::pin(async move {
        let attempt = connect_inner(conn, target, tls_config, frames, read_ahead, connector);
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::ConnectTimeout {
                conn,
                after: timeout,
            }),
        }
    })
}

struct Target {
    secure: bool,
    host: String,
    port: u16,
    /// Path and query, as the request line gives them (`/` at least).
    path: String,
}

impl Target {
    fn parse(conn: TransportId, url: &str) -> Result<Target, TransportError> {
        let invalid = |reason| TransportError::InvalidUrl { conn, reason };
        let uri: tungstenite::http::Uri = url.parse().map_err(|_| invalid("not a uri"))?;
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => return Err(invalid("scheme must be ws or wss")),
        };
        let host = uri.host().ok_or_else(|| invalid("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/");
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        Ok(Target {
            secure,
            host,
            port,
            path,
        })
    }
}

async fn connect_inner(
    conn: TransportId,
    target: Target,
    tls: Option<Arc<rustls::ClientConfig>>,
    frames: FrameSettings,
    read_ahead: usize,
    connector: Option<SharedConnector>,
) -> Result<Box<Socket>, TransportError> {
    let stream = match connector {
        Some(connector) => {
            let stream = connector
                .0
                .connect(conn, &target.host, target.port)
                .await
                .map_err(|source| TransportError::Connect { conn, source })?;
            match tls {
                None => MaybeTls::Custom(stream),
                Some(config) => {
                    let stream = TlsConnector::from(config)
                        .connect(server_name(conn, &target)?, stream)
                        .await
                        .map_err(|source| TransportError::Tls { conn, source })?;
                    MaybeTls::CustomTls(Box::new(stream))
                }
            }
        }
        None => {
            let tcp = TcpStream::connect((target.host.as_str(), target.port))
                .await
                .map_err(|source| TransportError::Connect { conn, source })?;
            // Gateway traffic is small request/response messages: never wait to coalesce.
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%conn, %error, "could not set tcp nodelay");
            }
            let tcp = ReadAhead::new(tcp, read_ahead);
            match tls {
                None => MaybeTls::Plain(tcp),
                Some(config) => {
                    let stream = TlsConnector::from(config)
                        .connect(server_name(conn, &target)?, tcp)
                        .await
                        .map_err(|source| TransportError::Tls { conn, source })?;
                    MaybeTls::Tls(Box::new(stream))
                }
            }
        }
    };
    let mut stream = Upgrade::new(stream);
    upgrade(&mut stream, &target)
        .await
        .map_err(|e| TransportError::Handshake {
            conn,
            source: Box::new(e),
        })?;
    // `Upgrade` handed out nothing past the response head, so the frame reader starts on a
    // frame boundary.
    Ok(Box::new(Socket::new(stream, frames)))
}

/// Longest response head accepted for the upgrade.
const MAX_HEAD: usize = 8 << 10;

/// Headers parsed in the upgrade's response, at most.
const MAX_HEADERS: usize = 64;

/// Why the WebSocket upgrade failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum UpgradeError {
    /// Reading or writing the socket failed.
    #[error("upgrade i/o failed")]
    Io(#[from] io::Error),
    /// The peer closed before the end of its response head.
    #[error("connection closed during the upgrade")]
    Closed,
    /// The response head is longer than [`MAX_HEAD`].
    #[error("upgrade response head longer than {MAX_HEAD} bytes")]
    HeadTooLong,
    /// The response head is not HTTP.
    #[error("malformed upgrade response")]
    Malformed(#[source] httparse::Error),
    /// The server answered with another status than 101.
    #[error("upgrade refused with http status {0}")]
    Status(u16),
    /// `Upgrade: websocket` or `Connection: upgrade` missing.
    #[error("the response does not upgrade to websocket")]
    NotWebSocket,
    /// `Sec-WebSocket-Accept` missing or not derived from our key.
    #[error("wrong sec-websocket-accept in the upgrade response")]
    BadAccept,
}

/// The client side of the WebSocket opening handshake (RFC 6455 section 4.1) over `stream`:
/// one request written, the response head read (only it: `Upgrade` keeps the bytes after it)
/// and checked. Done here rather than by tungstenite's handshake, whose read buffers (two of
/// 4 KiB) and header maps were transients of every connect, allocated by all the shards of a
/// fleet at once and resident as holes between their long-lived allocations.
async fn upgrade<S>(stream: &mut Upgrade<S>, target: &Target) -> Result<(), UpgradeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;

    let key = tungstenite::handshake::client::generate_key();
    let default_port = if target.secure { 443 } else { 80 };
    let host = if target.host.contains(':') {
        format!("[{}]", target.host)
    } else {
        target.host.clone()
    };
    let host = if target.port == default_port {
        host
    } else {
        format!("{host}:{}", target.port)
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n",
        target.path
    );
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    drop(request);
    let mut head = Vec::with_capacity(256);
    // Bounded: every pass reads at least one byte or ends, and the head is at most MAX_HEAD.
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Err(UpgradeError::HeadTooLong);
        }
        if head.capacity() == head.len() {
            head.reserve(256);
        }
        if stream.read_buf(&mut head).await? == 0 {
            return Err(UpgradeError::Closed);
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(UpgradeError::Closed),
        Err(e) => return Err(UpgradeError::Malformed(e)),
    }
    let status = response.code.unwrap_or(0);
    if status != 101 {
        return Err(UpgradeError::Status(status));
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let upgrades = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case(b"websocket"));
    let connection = header("connection").is_some_and(|v| {
        v.split(|b| *b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    if !upgrades || !connection {
        return Err(UpgradeError::NotWebSocket);
    }
    let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
    if header("sec-websocket-accept").map(<[u8]>::trim_ascii) != Some(expected.as_bytes()) {
        return Err(UpgradeError::BadAccept);
    }
    Ok(())
}

fn server_name(conn: TransportId, target: &Target) -> Result<ServerName<'static>, TransportError> {
    ServerName::try_from(target.host.clone()).map_err(|_| TransportError::InvalidUrl {
        conn,
        reason: "host is not a valid tls server name",
    })
}

/// Counts transports that exist (connecting or open) in one driver. Decremented on drop, so
/// even a cancelled task leaves the count right.
#[derive(Debug)]
pub(crate) struct LiveGuard {
    count: Arc<AtomicUsize>,
}

impl LiveGuard {
    pub(crate) fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        LiveGuard {
            count: count.clone(),
        }
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What an open socket produced.
pub(crate) enum SocketEvent {
    /// A data message (in [`ReadMode::Data`] only).
    Message(Message),
    /// The peer's close frame, with its code if it gave one.
    CloseFrame(Option<u16>),
    /// The socket is finished (EOF, or `error`): the driver core decides the report.
    Gone { error: Option<TransportError> },
}

/// A message waiting to be written.
enum Outgoing {
    Text(Bytes),
    Binary(Bytes),
    Close(u16),
}

/// An open WebSocket: the byte stream, the frame reader with its receive buffer, and the
/// write queue with its send buffer.
///
/// Memory: the receive buffer is allocated when a read needs room and released when the
/// socket has nothing more to give, no partial frame is held and no burst has been read since
/// it last ran dry (a busy stream keeps it between wake-ups), so an idle socket holds none
/// (tungstenite's `WebSocket` kept a zero-filled `read_buffer_size` buffer for the socket's
/// life). Each read asks for `read_buffer_size` bytes of room, or what the frame being
/// received still needs; received payloads are cut from it without a copy, so while the
/// application holds them, the next read allocates afresh. The send buffer holds encoded
/// frames until the socket takes them and is released when empty.
pub(crate) struct Socket {
    io: Upgrade<MaybeTls>,
    reader: FrameReader,
    /// Received bytes not yet cut into frames.
    rbuf: BytesMut,
    /// Room the next read asks for: `read_buffer` normally, `burst_read` while each read
    /// finds at least `read_buffer` bytes waiting.
    read_room: usize,
    /// A read since the socket last ran dry found a burst.
    burst_seen: bool,
    /// Encoded frames not yet written.
    wbuf: BytesMut,
    outbox: VecDeque<Outgoing>,
    sizes: FrameSettings,
    needs_flush: bool,
    /// Our close frame is encoded: nothing is written after it.
    close_sent: bool,
    /// The peer's close frame was read: what follows it is discarded.
    close_received: bool,
}

impl Socket {
    fn new(io: Upgrade<MaybeTls>, sizes: FrameSettings) -> Self {
        Socket {
            io,
            reader: FrameReader::new(Role::Client, sizes.max_frame, sizes.max_message),
            rbuf: BytesMut::new(),
            read_room: sizes.read_buffer,
            burst_seen: false,
            wbuf: BytesMut::new(),
            outbox: VecDeque::new(),
            sizes,
            needs_flush: false,
            close_sent: false,
            close_received: false,
        }
    }

    fn poll(
        &mut self,
        conn: TransportId,
        cx: &mut Context<'_>,
        mode: ReadMode,
    ) -> Poll<SocketEvent> {
        if let Err(e) = self.poll_write(cx) {
            return Poll::Ready(io_gone(conn, e));
        }
        // While closing, data frames are discarded, so reading never grows memory: the core
        // asks to keep reading even when the application is not, to see the close or EOF.
        if mode == ReadMode::Paused {
            return Poll::Pending;
        }
        for _ in 0..MAX_DISCARDS_PER_POLL {
            let incoming = match self.reader.read(&mut self.rbuf) {
                Err(e) => return Poll::Ready(frame_gone(conn, e)),
                Ok(Some(incoming)) => incoming,
                Ok(None) => match self.fill(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(io_gone(conn, e)),
                    // End of stream, with or without a close handshake (a peer that drops TCP
                    // looks like this): a close with no code, not an error.
                    Poll::Ready(Ok(0)) => return Poll::Ready(SocketEvent::Gone { error: None }),
                    Poll::Ready(Ok(_)) => continue,
                },
            };
            let data = mode == ReadMode::Data && !self.close_received;
            match incoming {
                Incoming::Text(text) if data => {
                    return Poll::Ready(SocketEvent::Message(Message::Text(text)));
                }
                Incoming::Binary(bytes) if data => {
                    return Poll::Ready(SocketEvent::Message(Message::Binary(bytes)));
                }
                Incoming::Close(code) if !self.close_received => {
                    self.close_received = true;
                    if !self.close_sent {
                        // The reply echoes the peer's code; it goes out on `answer_close` (or the
                        // next write). Messages not yet written never will be.
                        self.outbox.clear();
                        let payload = code.map(frame::close_payload);
                        let payload = payload.as_ref().map_or(&[][..], |p| &p[..]);
                        frame::encode(&mut self.wbuf, Role::Client, Kind::Close, payload);
                        self.close_sent = true;
                    }
                    return Poll::Ready(SocketEvent::CloseFrame(code));
                }
                Incoming::Ping(payload) if !self.close_sent => {
                    frame::encode(&mut self.wbuf, Role::Client, Kind::Pong, &payload);
                    if let Err(e) = self.poll_write(cx) {
                        return Poll::Ready(io_gone(conn, e));
                    }
                }
                // Data while closing, pongs, anything after a close: nothing to do.
                _ => {}
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Reads more of the stream into the receive buffer: the number of bytes read (0 at the
    /// end of the stream). Releases the buffer when the stream has nothing for now and the
    /// buffer holds nothing.
    ///
    /// A read asks for `read_buffer` bytes of room, so that a message the application keeps
    /// from a quiet stream keeps at most that much allocated. A read that finds at least
    /// that much waiting means a burst: the next reads ask for `burst_read`, which the
    /// read-ahead passes straight to the socket, so a burst's bytes are received where the
    /// messages are cut from, with no copy in between, one allocation per `burst_read` bytes.
    /// The burst ends with the first read that finds less, or none.
    ///
    /// The room asked for brings the buffer to `read_room` bytes in all when the partial
    /// frame it already holds is small, so buffers come in one size and a freed one fits the
    /// next. When the socket runs dry after a burst, the buffer is kept (its room serves the
    /// next wake-up's reads): a busy stream would otherwise free every buffer of a wake-up at
    /// once, which glibc's allocator hands back to the kernel from the top of the heap and
    /// faults in again at the next wake-up (measured: a `brk` every 33 events in some runs,
    /// docs/benchmarks.md). The first wake-up that finds no burst releases it.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let held = self.rbuf.len();
        let room = self
            .reader
            .needed()
            .saturating_sub(held)
            .max(self.read_room.saturating_sub(held))
            .max(self.read_room / 4);
        self.rbuf.reserve(room);
        let read = std::pin::pin!(self.io.read_buf(&mut self.rbuf));
        let result = read.poll(cx);
        self.read_room = match result {
            Poll::Ready(Ok(n)) if n >= self.sizes.read_buffer => {
                self.burst_seen = true;
                self.sizes.burst_read
            }
            _ => self.sizes.read_buffer,
        };
        let keep = self.burst_seen && result.is_pending();
        if result.is_pending() {
            self.burst_seen = false;
        }
        if !matches!(result, Poll::Ready(Ok(n)) if n > 0) && self.rbuf.is_empty() && !keep {
            self.rbuf = BytesMut::new();
        }
        result
    }

    /// Encodes queued messages and writes them, then flushes. Returns an error if the socket
    /// broke.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        // Bounded: every pass writes bytes or returns; the queue is finite.
        loop {
            while self.wbuf.len() <= self.sizes.write_buffer && !self.close_sent {
                let Some(out) = self.outbox.pop_front() else {
                    break;
                };
                match out {
                    Outgoing::Text(text) => {
                        frame::encode(&mut self.wbuf, Role::Client, Kind::Text, &text);
                    }
                    Outgoing::Binary(bytes) => {
                        frame::encode(&mut self.wbuf, Role::Client, Kind::Binary, &bytes);
                    }
                    Outgoing::Close(code) => {
                        let payload = frame::close_payload(code);
                        frame::encode(&mut self.wbuf, Role::Client, Kind::Close, &payload);
                        self.close_sent = true;
                        self.outbox.clear();
                    }
                }
            }
            if self.wbuf.is_empty() {
                break;
            }
            match Pin::new(&mut self.io).poll_write(cx, &self.wbuf) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    self.wbuf.advance(n);
                    self.needs_flush = true;
                }
            }
        }
        if self.wbuf.is_empty() {
            // Sends are rare (a heartbeat, a command): hold no buffer between them. (Not
            // `capacity() > 0`: a buffer written to its end has no capacity left but still
            // holds its allocation.)
            self.wbuf = BytesMut::new();
        }
        if self.outbox.capacity() > 0 && self.outbox.is_empty() {
            self.outbox = VecDeque::new();
        }
        if self.needs_flush {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.needs_flush = false,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {}
            }
        }
        Ok(())
    }
}

/// The end of a socket whose stream failed, as the driver core should hear it.
fn io_gone(conn: TransportId, source: io::Error) -> SocketEvent {
    SocketEvent::Gone {
        error: Some(TransportError::Io { conn, source }),
    }
}

/// The end of a socket whose peer broke the protocol or a size limit.
fn frame_gone(conn: TransportId, e: FrameError) -> SocketEvent {
    let error = match e {
        FrameError::FrameTooLarge { size, max } | FrameError::MessageTooLarge { size, max } => {
            TransportError::TooLarge { conn, size, max }
        }
        other => TransportError::Protocol {
            conn,
            source: Box::new(other),
        },
    };
    SocketEvent::Gone { error: Some(error) }
}

/// Where a transport stands.
enum Phase {
    Connecting(ConnectFuture),
    Open(Box<Socket>),
}

/// What polling a transport produced.
pub(crate) enum TransportWake {
    /// The WebSocket opened.
    Opened,
    /// The attempt failed: finish the transport (reports `OpenFailed`).
    OpenFailed(TransportError),
    /// See [`SocketEvent`].
    Socket(SocketEvent),
}

/// Why a message could not be queued.
pub(crate) enum QueueError {
    /// The write queue is at its limit.
    Full,
    /// A text message was not valid UTF-8.
    InvalidText,
}

/// The I/O half of one transport, from `Connect` to `Drop`. The driver core keeps its state
/// (open, closing, lingering) and decides its end; this owns the connect attempt or the socket.
pub(crate) struct Transport {
    conn: TransportId,
    phase: Phase,
    max_write_queue: usize,
    _live: LiveGuard,
}

impl Transport {
    pub(crate) fn connecting(
        conn: TransportId,
        future: ConnectFuture,
        max_write_queue: usize,
        live: &Arc<AtomicUsize>,
    ) -> Self {
        Transport {
            conn,
            phase: Phase::Connecting(future),
            max_write_queue,
            _live: LiveGuard::new(live),
        }
    }

    pub(crate) fn conn(&self) -> TransportId {
        self.conn
    }

    /// Queues a data message (the driver core checked the socket is open and not closing).
    /// `force` ignores the queue limit (for the core's own payloads, which are few and must not
    /// be lost to application traffic). A message for a socket still connecting is dropped.
    pub(crate) fn queue(&mut self, msg: Message, force: bool) -> Result<(), QueueError> {
        let Phase::Open(s) = &mut self.phase else {
            return Ok(());
        };
        if !force && s.outbox.len() >= self.max_write_queue {
            return Err(QueueError::Full);
        }
        let msg = match msg {
            Message::Text(b) => {
                if simdutf8::basic::from_utf8(&b).is_err() {
                    return Err(QueueError::InvalidText);
                }
                Outgoing::Text(b)
            }
            Message::Binary(b) => Outgoing::Binary(b),
        };
        s.outbox.push_back(msg);
        Ok(())
    }

    /// Queues our close frame.
    pub(crate) fn close(&mut self, code: u16) {
        if let Phase::Open(s) = &mut self.phase {
            s.outbox.push_back(Outgoing::Close(code));
        }
    }

    /// Gets out the reply to the peer's close frame (encoded when the frame was read).
    pub(crate) fn answer_close(&mut self) {
        if let Phase::Open(s) = &mut self.phase {
            s.needs_flush = true;
        }
    }

    pub(crate) fn poll(&mut self, cx: &mut Context<'_>, mode: ReadMode) -> Poll<TransportWake> {
        match &mut self.phase {
            Phase::Connecting(future) => match future.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(TransportWake::OpenFailed(e)),
                Poll::Ready(Ok(socket)) => {
                    self.phase = Phase::Open(socket);
                    Poll::Ready(TransportWake::Opened)
                }
            },
            Phase::Open(s) => s.poll(self.conn, cx, mode).map(TransportWake::Socket),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::Upgrade;

    /// A socket over an in-memory pipe, its far end, and the sizes it was made with.
    fn socket_pair() -> (super::Socket, tokio::io::DuplexStream) {
        let (near, far) = tokio::io::duplex(1 << 16);
        let stream = super::MaybeTls::Custom(Box::new(near));
        let config = crate::TransportConfig::default();
        let sizes = super::ConnectSettings::new(&config).frames;
        let mut upgrade = Upgrade::new(stream);
        upgrade.through = true;
        (super::Socket::new(upgrade, sizes), far)
    }

    /// Once everything queued is written, the socket holds no send buffer and no write queue,
    /// even when the frames filled their allocation to the last byte (a buffer advanced to its
    /// end reports no capacity but still holds its memory).
    #[test]
    fn a_written_socket_keeps_no_send_buffer() {
        use tokio::io::AsyncRead;
        let (mut socket, mut far) = socket_pair();
        let waker = futures_util::task::noop_waker_ref();
        let mut cx = std::task::Context::from_waker(waker);
        // What the far end reads goes here, allocated before counting.
        let mut sink = vec![0u8; 4096];
        let mut drain = |far: &mut tokio::io::DuplexStream, cx: &mut std::task::Context<'_>| {
            let mut out = tokio::io::ReadBuf::new(&mut sink);
            let polled = std::pin::Pin::new(far).poll_read(cx, &mut out);
            assert!(matches!(polled, std::task::Poll::Ready(Ok(()))) && !out.filled().is_empty());
        };
        // Warm up: the pipe's own buffer is not the socket's.
        socket
            .outbox
            .push_back(super::Outgoing::Text(bytes::Bytes::from(vec![b'w'; 1000])));
        socket.poll_write(&mut cx).unwrap();
        drain(&mut far, &mut cx);
        for size in [10, 100, 1000] {
            let payload = bytes::Bytes::from(vec![b'x'; size]);
            let before = crate::live_bytes::live();
            socket.outbox.push_back(super::Outgoing::Text(payload));
            socket.poll_write(&mut cx).unwrap();
            assert!(socket.wbuf.is_empty(), "not all written");
            drain(&mut far, &mut cx);
            let after = crate::live_bytes::live();
            assert!(
                after <= before,
                "{} bytes still held after writing a {size}-byte message",
                after - before
            );
        }
    }

    /// A byte stream that counts the reads that returned data.
    struct CountingReads {
        inner: tokio::io::DuplexStream,
        reads: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl tokio::io::AsyncRead for CountingReads {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let before = buf.filled().len();
            let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
            if buf.filled().len() > before {
                self.reads
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            polled
        }
    }

    impl tokio::io::AsyncWrite for CountingReads {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// `count` text frames of `len` bytes each, as a server sends them.
    fn server_frames(count: usize, len: usize) -> bytes::BytesMut {
        let mut out = bytes::BytesMut::new();
        let payload = vec![b'x'; len];
        for _ in 0..count {
            crate::frame::encode(
                &mut out,
                crate::frame::Role::Server,
                crate::frame::Kind::Text,
                &payload,
            );
        }
        out
    }

    /// Reads the socket until it has nothing more, keeping every message; returns them.
    fn read_all_held(socket: &mut super::Socket) -> Vec<bytes::Bytes> {
        let waker = futures_util::task::noop_waker_ref();
        let mut cx = std::task::Context::from_waker(waker);
        let mut held = Vec::new();
        // Bounded: each message is read once; the pipe holds a finite amount.
        for _ in 0..10_000 {
            match socket.poll(
                handover_core::TransportId(1),
                &mut cx,
                crate::link::ReadMode::Data,
            ) {
                std::task::Poll::Ready(super::SocketEvent::Message(
                    handover_core::Message::Text(b) | handover_core::Message::Binary(b),
                )) => held.push(b),
                std::task::Poll::Ready(_) => panic!("the socket ended or closed"),
                std::task::Poll::Pending => break,
            }
        }
        held
    }

    /// A burst is read in reads of the read-ahead's size (64 KiB), straight into the buffer the
    /// messages are cut from, even while the application keeps every message; a quiet stream's
    /// read asks for the small room, so a message kept from it keeps little allocated.
    #[test]
    fn a_burst_is_read_in_large_reads_and_a_quiet_message_in_a_small_one() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counting = CountingReads {
            inner: near,
            reads: reads.clone(),
        };
        let config = crate::TransportConfig::default();
        let sizes = super::ConnectSettings::new(&config).frames;
        let mut upgrade = Upgrade::new(super::MaybeTls::Custom(Box::new(counting)));
        upgrade.through = true;
        let mut socket = super::Socket::new(upgrade, sizes);
        let frame = |len: usize| server_frames(1, len);
        let write = |far: &mut tokio::io::DuplexStream, bytes: &[u8]| {
            let waker = futures_util::task::noop_waker_ref();
            let mut cx = std::task::Context::from_waker(waker);
            let polled = std::pin::Pin::new(far).poll_write(&mut cx, bytes);
            assert!(matches!(polled, std::task::Poll::Ready(Ok(n)) if n == bytes.len()));
        };
        use tokio::io::AsyncWrite;
        // A burst: 256 messages of 1 KiB, all waiting at once.
        let mut burst = Vec::new();
        for _ in 0..256 {
            burst.extend_from_slice(&frame(1020));
        }
        write(&mut far, &burst);
        let held = read_all_held(&mut socket);
        assert_eq!(held.len(), 256);
        let burst_reads = reads.swap(0, std::sync::atomic::Ordering::Relaxed);
        // 4 KiB first, then 64 KiB at a time: 262,656 bytes in at most 6 reads (66 at 4 KiB).
        assert!(burst_reads <= 6, "{burst_reads} reads for a 257 KiB burst");
        // Quiet again: one small message; the read asked for the small room.
        let before = crate::live_bytes::live();
        write(&mut far, &frame(100));
        let quiet = read_all_held(&mut socket);
        assert_eq!(quiet.len(), 1);
        let kept = crate::live_bytes::live() - before;
        assert!(
            kept <= i64::try_from(config.read_buffer_size + 1024).unwrap(),
            "a kept 100-byte message holds {kept} bytes"
        );
        drop(held);
    }

    /// A busy stream keeps one receive buffer across the moments its socket runs dry, and
    /// reads each wake-up's burst into it and into at most one new buffer: about one
    /// allocation per `burst_read` bytes received, as `fill` says. It used to release the
    /// buffer at every dry read and allocate three 64 KiB buffers per wake-up (the
    /// read-ahead's and two receive buffers), all freed together once the application had
    /// dropped the messages; at the top of glibc's heap that is a `brk` down and up again per
    /// wake-up. The first wake-up that finds the stream quiet releases the buffer, so an idle
    /// connection holds none.
    #[test]
    fn a_busy_stream_allocates_about_one_buffer_per_wake_up_and_a_quiet_one_none() {
        use tokio::io::AsyncWrite;
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let config = crate::TransportConfig::default();
        let sizes = super::ConnectSettings::new(&config).frames;
        let mut upgrade = Upgrade::new(super::MaybeTls::Custom(Box::new(near)));
        upgrade.through = true;
        let mut socket = super::Socket::new(upgrade, sizes);
        let mut write = |frames: usize, len: usize| {
            let out = server_frames(frames, len);
            let waker = futures_util::task::noop_waker_ref();
            let mut cx = std::task::Context::from_waker(waker);
            let polled = std::pin::Pin::new(&mut far).poll_write(&mut cx, &out);
            assert!(matches!(polled, std::task::Poll::Ready(Ok(n)) if n == out.len()));
        };
        // Wake-ups of 60 messages of 1 KiB each (61 KiB), every message held until the
        // wake-up's last one is read, as a queue between the socket and the application does.
        let mut held = Vec::with_capacity(64);
        let wake_ups = 16;
        let mut allocated = 0;
        for i in 0..wake_ups {
            write(60, 1020);
            let before = crate::live_bytes::allocated();
            held.extend(read_all_held(&mut socket));
            assert_eq!(held.len(), 60);
            if i > 0 {
                // The first wake-up starts from nothing.
                allocated += crate::live_bytes::allocated() - before;
            }
            held.clear();
        }
        let per_wake_up = allocated / (wake_ups - 1);
        let burst = config.read_ahead_size as u64;
        assert!(
            per_wake_up <= burst + burst / 4,
            "{per_wake_up} bytes allocated per wake-up of 61 KiB (one buffer is {burst})"
        );
        // Between wake-ups the busy socket holds its buffer.
        let busy = crate::live_bytes::live();
        // A quiet wake-up: one small message, then nothing. The buffer goes (the duplex
        // pipe's own buffer, grown by the writes, stays: hence no comparison with the start).
        write(1, 100);
        let quiet = read_all_held(&mut socket);
        assert_eq!(quiet.len(), 1);
        drop(quiet);
        let released = busy - crate::live_bytes::live();
        assert!(
            released >= i64::try_from(burst / 2).unwrap(),
            "a socket gone quiet released only {released} bytes"
        );
        assert!(
            socket.rbuf.capacity() == 0,
            "the receive buffer is still held"
        );
    }

    const HEAD: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";

    /// Bytes that follow the response head in the same read are held back until the head has
    /// been read to its end, then handed out first, whatever the read sizes.
    #[tokio::test]
    async fn the_upgrade_sees_the_head_only_and_the_frames_follow_in_order() {
        let mut wire = HEAD.to_vec();
        let frames: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        wire.extend_from_slice(&frames);
        for size in [1, 2, 3, 7, 64, 4096] {
            let mut up = Upgrade::new(&wire[..]);
            let mut head = Vec::new();
            let mut buf = vec![0u8; size];
            while !head.ends_with(b"\r\n\r\n") {
                let n = up.read(&mut buf).await.unwrap();
                assert!(n > 0, "read size {size}: ended inside the head");
                head.extend_from_slice(&buf[..n]);
            }
            assert_eq!(head, HEAD, "read size {size}: a read went past the head");
            let mut rest = Vec::new();
            for _ in 0..10_000 {
                let n = up.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                rest.extend_from_slice(&buf[..n]);
            }
            assert_eq!(rest, frames, "read size {size}");
        }
    }

    /// The upgrade writes a well-formed request (path and query, host with its port, key) and
    /// accepts only a 101 whose accept header derives from that key; bytes the server sent
    /// after the head stay for the frame reader.
    #[tokio::test]
    async fn the_upgrade_checks_the_response_and_leaves_the_frames() {
        use tokio::io::AsyncWriteExt;
        use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

        use super::{Target, UpgradeError, upgrade};

        async fn run(answer: fn(&str) -> String) -> (Result<(), UpgradeError>, String, Vec<u8>) {
            let (client, mut server) = tokio::io::duplex(4096);
            let target = Target::parse(
                handover_core::TransportId(1),
                "ws://127.0.0.1:8080/gw?v=10&encoding=json",
            )
            .unwrap();
            let mut stream = Upgrade::new(client);
            let serve = async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 512];
                while !request.ends_with(b"\r\n\r\n") {
                    let n = server.read(&mut buf).await.unwrap();
                    assert!(n > 0, "request cut short");
                    request.extend_from_slice(&buf[..n]);
                }
                let request = String::from_utf8(request).unwrap();
                let key = request
                    .lines()
                    .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                    .unwrap()
                    .to_owned();
                let mut reply = answer(&key).into_bytes();
                reply.extend_from_slice(b"FRAMES");
                server.write_all(&reply).await.unwrap();
                drop(server);
                request
            };
            let (result, request) = tokio::join!(upgrade(&mut stream, &target), serve);
            let mut rest = Vec::new();
            if result.is_ok() {
                stream.read_to_end(&mut rest).await.unwrap();
            }
            (result, request, rest)
        }

        let (result, request, rest) = run(|key| {
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\n\
                 Connection: keep-alive, Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                derive_accept_key(key.as_bytes())
            )
        })
        .await;
        assert!(result.is_ok(), "{result:?}");
        assert!(
            request.starts_with("GET /gw?v=10&encoding=json HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("\r\nHost: 127.0.0.1:8080\r\n"),
            "{request}"
        );
        assert!(
            request.contains("\r\nSec-WebSocket-Version: 13\r\n"),
            "{request}"
        );
        assert_eq!(rest, b"FRAMES");

        let (result, _, _) = run(|_| {
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
                .to_owned()
        })
        .await;
        assert!(matches!(result, Err(UpgradeError::BadAccept)), "{result:?}");

        let (result, _, _) = run(|_| "HTTP/1.1 403 Forbidden\r\n\r\n".to_owned()).await;
        assert!(
            matches!(result, Err(UpgradeError::Status(403))),
            "{result:?}"
        );

        let (result, _, _) = run(|key| {
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {}\r\n\r\n",
                derive_accept_key(key.as_bytes())
            )
        })
        .await;
        assert!(
            matches!(result, Err(UpgradeError::NotWebSocket)),
            "{result:?}"
        );

        let (result, _, _) = run(|_| "not http at all\r\n\r\n".to_owned()).await;
        assert!(
            matches!(result, Err(UpgradeError::Malformed(_))),
            "{result:?}"
        );
    }
}
