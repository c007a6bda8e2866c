//! One transport: connecting, open, closing. Private to the crate.
//!
//! A [`Transport`] owns at most one socket. The driver keeps it in an `Option` and ends it only
//! through [`Transport::finish`], which consumes it, drops the socket, and returns the single
//! input to report to the core. That makes "exactly one `OpenFailed` or `Closed` per transport"
//! a property of ownership rather than of careful bookkeeping.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use handover_core::{ConnectionId, Input, Message};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Utf8Bytes, error::CapacityError};

use crate::config::TransportConfig;
use crate::connector::{BoxByteStream, SharedConnector};
use crate::error::TransportError;
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

type Ws = WebSocketStream<MaybeTls>;
type ConnectFuture = Pin<Box<dyn Future<Output = Result<Ws, TransportError>> + Send>>;

/// Everything a connect attempt needs, cheap to clone into the connect future.
#[derive(Clone)]
pub(crate) struct ConnectSettings {
    pub(crate) timeout: Duration,
    pub(crate) ws: WebSocketConfig,
    pub(crate) read_ahead: usize,
    pub(crate) close_timeout: Duration,
    pub(crate) connector: Option<SharedConnector>,
}

impl ConnectSettings {
    pub(crate) fn new(config: &TransportConfig) -> Self {
        let ws = WebSocketConfig::default()
            .read_buffer_size(config.read_buffer_size)
            .write_buffer_size(config.write_buffer_size)
            .max_write_buffer_size(usize::MAX)
            .max_message_size(Some(config.max_message_size))
            .max_frame_size(Some(config.max_frame_size));
        ConnectSettings {
            timeout: config.connect_timeout,
            ws,
            read_ahead: config.read_ahead_size,
            close_timeout: config.close_timeout,
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
    conn: ConnectionId,
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
    let ws_config = settings.ws;
    let read_ahead = settings.read_ahead;
    let connector = settings.connector.clone();
    Box::pin(async move {
        let attempt = connect_inner(
            conn, url, target, tls_config, ws_config, read_ahead, connector,
        );
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
}

impl Target {
    fn parse(conn: ConnectionId, url: &str) -> Result<Target, TransportError> {
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
        Ok(Target { secure, host, port })
    }
}

async fn connect_inner(
    conn: ConnectionId,
    url: String,
    target: Target,
    tls: Option<Arc<rustls::ClientConfig>>,
    ws_config: WebSocketConfig,
    read_ahead: usize,
    connector: Option<SharedConnector>,
) -> Result<Ws, TransportError> {
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
    let (ws, _response) = tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config))
        .await
        .map_err(|e| TransportError::Handshake {
            conn,
            source: Box::new(e),
        })?;
    Ok(ws)
}

fn server_name(conn: ConnectionId, target: &Target) -> Result<ServerName<'static>, TransportError> {
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

/// Where the close handshake stands on an open socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// No close frame either way.
    Active,
    /// We sent a close frame; waiting for the peer's close frame or EOF.
    ByUs,
    /// The peer sent a close frame; flushing our reply until EOF or the deadline.
    ByPeer {
        code: Option<u16>,
        deadline: Instant,
    },
}

/// What an open socket produced.
pub(crate) enum SocketEvent {
    /// A data message to decode.
    Message(Message),
    /// The peer sent a close frame; the socket now lingers until EOF or its deadline.
    PeerClosing,
    /// The socket is finished: drop it and report `Closed` with this code.
    Gone {
        code: Option<u16>,
        error: Option<TransportError>,
    },
}

/// An open WebSocket with its write queue and close state.
struct Socket {
    ws: Ws,
    outbox: VecDeque<tungstenite::Message>,
    needs_flush: bool,
    closing: Closing,
}

impl Socket {
    fn poll(
        &mut self,
        conn: ConnectionId,
        cx: &mut Context<'_>,
        read: bool,
        close_timeout: Duration,
    ) -> Poll<SocketEvent> {
        if let Err(e) = self.poll_write(cx) {
            return Poll::Ready(self.gone(conn, e));
        }
        // While closing, data frames are discarded, so reading never grows memory: keep
        // reading even when the application is not, to see the peer's close or EOF.
        if !read && self.closing == Closing::Active {
            return Poll::Pending;
        }
        for _ in 0..MAX_DISCARDS_PER_POLL {
            let next = match Pin::new(&mut self.ws).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(next) => next,
            };
            let msg = match next {
                None => {
                    return Poll::Ready(SocketEvent::Gone {
                        code: self.peer_code(),
                        error: None,
                    });
                }
                Some(Err(e)) => return Poll::Ready(self.gone(conn, e)),
                Some(Ok(msg)) => msg,
            };
            match msg {
                tungstenite::Message::Text(t) if self.closing == Closing::Active => {
                    return Poll::Ready(SocketEvent::Message(Message::Text(Bytes::from(t))));
                }
                tungstenite::Message::Binary(b) if self.closing == Closing::Active => {
                    return Poll::Ready(SocketEvent::Message(Message::Binary(b)));
                }
                tungstenite::Message::Close(frame) => {
                    let code = frame.map(|f| u16::from(f.code));
                    match self.closing {
                        Closing::ByUs => {
                            return Poll::Ready(SocketEvent::Gone { code, error: None });
                        }
                        Closing::Active => {
                            tracing::debug!(%conn, ?code, "peer sent close");
                            self.closing = Closing::ByPeer {
                                code,
                                deadline: crate::clock::now() + close_timeout,
                            };
                            // tungstenite queued the reply; get it out.
                            self.needs_flush = true;
                            if let Err(e) = self.poll_write(cx) {
                                return Poll::Ready(self.gone(conn, e));
                            }
                            // The driver must arm the linger deadline now.
                            return Poll::Ready(SocketEvent::PeerClosing);
                        }
                        Closing::ByPeer { .. } => {}
                    }
                }
                tungstenite::Message::Ping(_) => {
                    // tungstenite queued the pong.
                    self.needs_flush = true;
                    if let Err(e) = self.poll_write(cx) {
                        return Poll::Ready(self.gone(conn, e));
                    }
                }
                // Data after a close frame, pongs, raw frames: nothing to do.
                _ => {}
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Moves queued messages into the socket and flushes. Returns an error if the socket broke.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<(), tungstenite::Error> {
        while !self.outbox.is_empty() {
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(()),
            }
            if let Some(msg) = self.outbox.pop_front() {
                Pin::new(&mut self.ws).start_send(msg)?;
                self.needs_flush = true;
            }
        }
        if self.needs_flush {
            match Pin::new(&mut self.ws).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.needs_flush = false,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {}
            }
        }
        Ok(())
    }

    fn peer_code(&self) -> Option<u16> {
        match self.closing {
            Closing::ByPeer { code, .. } => code,
            _ => None,
        }
    }

    fn gone(&self, conn: ConnectionId, e: tungstenite::Error) -> SocketEvent {
        use tungstenite::Error as E;
        let code = self.peer_code();
        let error = match e {
            E::ConnectionClosed | E::AlreadyClosed => None,
            // EOF without a close frame is what "peer dropped TCP" looks like: report it as a
            // close with no code, not as an error.
            E::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => None,
            E::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                Some(TransportError::TooLarge {
                    conn,
                    size,
                    max: max_size,
                })
            }
            E::Io(source) => Some(TransportError::Io { conn, source }),
            other => Some(TransportError::Protocol {
                conn,
                source: Box::new(other),
            }),
        };
        SocketEvent::Gone { code, error }
    }
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
    /// Not open, or closing.
    NotWritable,
    /// The write queue is at its limit.
    Full,
    /// A text message was not valid UTF-8.
    InvalidText,
}

/// One transport, from `Open` to its single report.
pub(crate) struct Transport {
    conn: ConnectionId,
    phase: Phase,
    close_timeout: Duration,
    max_write_queue: usize,
    _live: LiveGuard,
}

impl Transport {
    pub(crate) fn connecting(
        conn: ConnectionId,
        future: ConnectFuture,
        settings: &ConnectSettings,
        max_write_queue: usize,
        live: &Arc<AtomicUsize>,
    ) -> Self {
        Transport {
            conn,
            phase: Phase::Connecting(future),
            close_timeout: settings.close_timeout,
            max_write_queue,
            _live: LiveGuard::new(live),
        }
    }

    pub(crate) fn conn(&self) -> ConnectionId {
        self.conn
    }

    /// Whether data messages may be queued (open and no close frame either way).
    pub(crate) fn is_writable(&self) -> bool {
        matches!(&self.phase, Phase::Open(s) if s.closing == Closing::Active)
    }

    /// The instant the driver must end this transport on its own (close reply linger).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Open(s) => match s.closing {
                Closing::ByPeer { deadline, .. } => Some(deadline),
                _ => None,
            },
            Phase::Connecting(_) => None,
        }
    }

    /// The peer's close code, once it sent a close frame.
    pub(crate) fn peer_code(&self) -> Option<u16> {
        match &self.phase {
            Phase::Open(s) => s.peer_code(),
            Phase::Connecting(_) => None,
        }
    }

    /// Queues a data message. `force` ignores the queue limit (for the core's own payloads,
    /// which are few and must not be lost to application traffic).
    pub(crate) fn queue(&mut self, msg: Message, force: bool) -> Result<(), QueueError> {
        let Phase::Open(s) = &mut self.phase else {
            return Err(QueueError::NotWritable);
        };
        if s.closing != Closing::Active {
            return Err(QueueError::NotWritable);
        }
        if !force && s.outbox.len() >= self.max_write_queue {
            return Err(QueueError::Full);
        }
        let msg = match msg {
            Message::Text(b) => tungstenite::Message::Text(
                Utf8Bytes::try_from(b).map_err(|_| QueueError::InvalidText)?,
            ),
            Message::Binary(b) => tungstenite::Message::Binary(b),
        };
        s.outbox.push_back(msg);
        Ok(())
    }

    /// Starts the close handshake. Returns `false` if the transport is still connecting (the
    /// caller must then finish it: there is no handshake to run).
    pub(crate) fn close(&mut self, code: u16) -> bool {
        let Phase::Open(s) = &mut self.phase else {
            return false;
        };
        if s.closing == Closing::Active {
            s.closing = Closing::ByUs;
            s.outbox
                .push_back(tungstenite::Message::Close(Some(CloseFrame {
                    code: CloseCode::from(code),
                    reason: Utf8Bytes::from_static(""),
                })));
        }
        true
    }

    pub(crate) fn poll(&mut self, cx: &mut Context<'_>, read: bool) -> Poll<TransportWake> {
        match &mut self.phase {
            Phase::Connecting(future) => match future.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(TransportWake::OpenFailed(e)),
                Poll::Ready(Ok(ws)) => {
                    self.phase = Phase::Open(Box::new(Socket {
                        ws,
                        outbox: VecDeque::new(),
                        needs_flush: false,
                        closing: Closing::Active,
                    }));
                    Poll::Ready(TransportWake::Opened)
                }
            },
            Phase::Open(s) => s
                .poll(self.conn, cx, read, self.close_timeout)
                .map(TransportWake::Socket),
        }
    }

    /// Ends the transport: drops the socket (or the connect attempt) and returns the one input
    /// that reports its end to the core.
    pub(crate) fn finish(self, code: Option<u16>) -> Input {
        let input = self.end_input(code);
        drop(self);
        input
    }

    /// The input that reports this transport's end, without ending it.
    fn end_input(&self, code: Option<u16>) -> Input {
        let conn = self.conn;
        if matches!(self.phase, Phase::Open(_)) {
            Input::Closed { conn, code }
        } else {
            Input::OpenFailed(conn)
        }
    }

    /// A planted bug for checking the checkers: the end report is made, but the socket is
    /// handed back to be kept alive instead of being dropped.
    #[cfg(feature = "planted-faults")]
    pub(crate) fn finish_leaking(self, code: Option<u16>) -> (Input, Transport) {
        (self.end_input(code), self)
    }
}
