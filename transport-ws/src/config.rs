//! Transport settings, all with documented defaults.

use std::time::Duration;

use crate::connector::SharedConnector;

/// Settings of a WebSocket [`Driver`](crate::Driver).
///
/// Build it with struct update syntax:
///
/// ```
/// use std::time::Duration;
/// use handover_transport_ws::TransportConfig;
///
/// let config = TransportConfig {
///     connect_timeout: Duration::from_secs(5),
///     ..TransportConfig::default()
/// };
/// assert_eq!(config.max_message_size, 16 << 20);
/// ```
///
/// Timers of the lifecycle itself (open, hello, handshake, drain deadline) live in the core's
/// [`Config`](handover_core::Config); this struct only bounds what the socket layer does on its
/// own.
#[derive(Clone, PartialEq, Eq)]
pub struct TransportConfig {
    /// How long TCP connect, TLS handshake and WebSocket upgrade may take together before the
    /// attempt is reported as `OpenFailed`. Default 10 s. The core's own
    /// [`open_timeout`](handover_core::Config::open_timeout) may abort sooner.
    pub connect_timeout: Duration,
    /// After the peer sends a close frame, how long the driver keeps the socket to flush its
    /// close reply and see the peer's EOF before dropping it. Default 2 s.
    pub close_timeout: Duration,
    /// Largest received message (all its frames together), in bytes. A larger one is a
    /// [`TransportError::TooLarge`](crate::TransportError::TooLarge) and the socket is dropped.
    /// Default 16 MiB (Discord can send multi-MiB messages, such as a large guild's create).
    pub max_message_size: usize,
    /// Largest received frame payload, in bytes. Default 16 MiB.
    pub max_frame_size: usize,
    /// Extra trusted root certificates (DER), for private gateways and tests.
    pub extra_root_certificates: Vec<Vec<u8>>,
    /// Trust the Mozilla roots bundled by `webpki-roots`. Default `true`. Turn it off to trust
    /// only [`extra_root_certificates`](Self::extra_root_certificates).
    pub use_webpki_roots: bool,
    /// Room the frame reader asks for per read, in bytes (more when the frame being received
    /// needs it, so a large message arrives into one allocation). The receive buffer exists only
    /// while data is arriving: it is released whenever the socket has nothing more to give and
    /// no partial frame is held. Default 4 KiB; values under 256 are raised to 256.
    ///
    /// A read that finds at least this much waiting starts a burst: the following reads ask for
    /// [`read_ahead_size`](Self::read_ahead_size) (if larger), which the read-ahead passes
    /// straight to the socket, so a burst's bytes land where the messages are cut from, with
    /// no copy; the first read that finds less ends it. A message kept from a quiet stream so
    /// keeps at most this much allocated, one kept from a burst at most the read-ahead's size
    /// (shared by every message of that read).
    pub read_buffer_size: usize,
    /// Bytes read from the socket at a time, ahead of TLS and the WebSocket parser, which then
    /// take theirs from this buffer in smaller pieces. Without it, an application that keeps
    /// received messages alive (zero-copy payloads share the WebSocket layer's receive buffer)
    /// makes about one socket read per message or two; with it, one per `read_ahead_size`
    /// bytes. The buffer exists only while data is arriving: it is allocated when a read finds
    /// it empty and released as soon as the socket has nothing more to read, so an idle
    /// connection holds none of it. It is also the most that waits in it, already read from
    /// the socket, while the driver pauses reading for a slow application. Default 64 KiB
    /// (below glibc's 128 KiB mmap threshold, so taking and releasing it stays cheap); 0 turns
    /// read-ahead off (every read goes to the socket).
    pub read_ahead_size: usize,
    /// Bytes of encoded frames gathered from the write queue before they are written to the
    /// socket. Default 0: every message is written at once (gateway traffic is small and
    /// latency-sensitive).
    pub write_buffer_size: usize,
    /// Capacity of the command channel from handles to the driver task. Default 16; at least 1.
    pub command_capacity: usize,
    /// Capacity of the event channel from the driver task to the application, in events.
    /// Events cross it in bursts and the application's side takes a whole batch at once; an
    /// event counts until the application has read the batch it came in. Default 64; at least
    /// 1.
    pub event_capacity: usize,
    /// Events the driver may hold locally when the event channel is full. While this many are
    /// waiting, the driver stops reading the socket (timers keep running). Default 32; at
    /// least 1.
    pub max_pending_events: usize,
    /// Outgoing messages that may wait for the socket to accept them. Application sends beyond
    /// it fail with [`SendError::QueueFull`](crate::SendError::QueueFull). Default 16; at
    /// least 1.
    pub max_write_queue: usize,
    /// Opens the byte stream of each socket instead of a TCP connect to the URL's host and
    /// port (see [`Connector`](crate::Connector)). Default `None`: TCP.
    pub connector: Option<SharedConnector>,
    /// A deliberate bug to plant in the driver, for tests that show a checker catches it.
    /// Never set it in production; it exists only with the `planted-faults` feature.
    #[doc(hidden)]
    #[cfg(feature = "planted-faults")]
    pub planted_fault: Option<PlantedFault>,
}

/// Deliberate driver bugs (feature `planted-faults`), for tests of the checkers.
#[doc(hidden)]
#[cfg(feature = "planted-faults")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlantedFault {
    /// Report a socket gone to the core while keeping it open (it is dropped only when the
    /// driver task ends): the far end still sees it when the core opens the next one.
    ReportGoneBeforeDrop,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            connect_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
            max_message_size: 16 << 20,
            max_frame_size: 16 << 20,
            extra_root_certificates: Vec::new(),
            use_webpki_roots: true,
            read_buffer_size: 4 << 10,
            read_ahead_size: 64 << 10,
            write_buffer_size: 0,
            command_capacity: 16,
            event_capacity: 64,
            max_pending_events: 32,
            max_write_queue: 16,
            connector: None,
            #[cfg(feature = "planted-faults")]
            planted_fault: None,
        }
    }
}

impl TransportConfig {
    /// A copy with every value moved into its valid range.
    pub(crate) fn normalized(&self) -> TransportConfig {
        let mut c = self.clone();
        c.read_buffer_size = c.read_buffer_size.max(256);
        c.max_message_size = c.max_message_size.max(1);
        c.max_frame_size = c.max_frame_size.max(1);
        c.write_buffer_size = c.write_buffer_size.min(c.max_message_size);
        c.command_capacity = c.command_capacity.max(1);
        c.event_capacity = c.event_capacity.max(1);
        c.max_pending_events = c.max_pending_events.max(1);
        c.max_write_queue = c.max_write_queue.max(1);
        c
    }
}

impl std::fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportConfig")
            .field("connect_timeout", &self.connect_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("max_message_size", &self.max_message_size)
            .field("max_frame_size", &self.max_frame_size)
            .field(
                "extra_root_certificates",
                &format_args!("[{} certificate(s)]", self.extra_root_certificates.len()),
            )
            .field("use_webpki_roots", &self.use_webpki_roots)
            .field("read_buffer_size", &self.read_buffer_size)
            .field("read_ahead_size", &self.read_ahead_size)
            .field("write_buffer_size", &self.write_buffer_size)
            .field("command_capacity", &self.command_capacity)
            .field("event_capacity", &self.event_capacity)
            .field("max_pending_events", &self.max_pending_events)
            .field("max_write_queue", &self.max_write_queue)
            .field("connector", &self.connector.as_ref().map(|_| ".."))
            .finish()
    }
}
