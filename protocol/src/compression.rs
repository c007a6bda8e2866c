//! Transport compression: `zlib-stream` and `zstd-stream`, with a cap on decompressed bytes.
//!
//! Source: <https://discord.com/developers/docs/events/gateway#transport-compression>.
//!
//! - zlib-stream: one inflate context per connection; the data of a message may span several
//!   WebSocket frames, and a message is complete when the received data ends with the
//!   `Z_SYNC_FLUSH` suffix `00 00 FF FF`.
//! - zstd-stream: one decompression context per connection; every WebSocket message is one
//!   gateway message, flushed but not ending a zstd frame.
//!
//! A message that decompresses to more than the cap (a compression bomb), or buffers more
//! compressed bytes than the cap without completing, is refused with
//! [`ProtocolError::DecompressedTooLarge`] and nothing of it is delivered. Any error leaves the
//! context unusable ([`ProtocolError::needs_reconnect`]).

#[cfg(any(feature = "zlib", feature = "zstd"))]
use std::fmt;

use bytes::Bytes;
#[cfg(any(feature = "zlib", feature = "zstd"))]
use bytes::BytesMut;
#[cfg(feature = "zlib")]
use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};
use serde::{Deserialize, Serialize};
#[cfg(feature = "zstd")]
use zstd::stream::raw::{InBuffer, Operation, OutBuffer};

use super::ProtocolError;

/// The `Z_SYNC_FLUSH` suffix that ends every zlib-stream message.
pub const ZLIB_SUFFIX: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Default cap on the decompressed size of one message: 32 MiB (a READY of a very large bot
/// stays well below it).
pub const DEFAULT_MAX_DECOMPRESSED_BYTES: usize = 32 << 20;

#[cfg(feature = "zstd")]
const SCRATCH: usize = 32 * 1024;

/// Size of the buffer decompressed messages are written into and cut from: each message is
/// a slice of it ([`Bytes`]), so while earlier messages are still held a new buffer of this
/// size is taken once per this many bytes of messages, not once per message; when they have
/// all been dropped the same buffer is used again. Stays under glibc's 128 KiB mmap threshold.
#[cfg(any(feature = "zlib", feature = "zstd"))]
const SLAB: usize = 64 * 1024;

/// Room the decompressor is given at least for each call; a slab with less left is replaced.
#[cfg(any(feature = "zlib", feature = "zstd"))]
const MIN_ROOM: usize = 4 * 1024;

/// The buffer a decoder needs only while it decompresses one message: the slab messages are
/// decompressed straight into and cut from. A decoder takes it from its thread
/// ([`with_buffers`]), so a thread running a thousand idle connections holds one, not a
/// thousand: only the stream contexts, which the protocol requires per connection, stay per
/// decoder.
#[cfg(any(feature = "zlib", feature = "zstd"))]
#[derive(Default)]
struct Buffers {
    /// Initialized (zero-filled when taken) bytes no message uses: a message is written from
    /// the front and split off, so no decompressed byte is copied after the decompressor
    /// wrote it. Zero-filling costs one `memset` per [`SLAB`] bytes of messages, not a copy of
    /// every message (the decompressors write only into initialized memory without `unsafe`).
    out: BytesMut,
}

#[cfg(any(feature = "zlib", feature = "zstd"))]
impl Buffers {
    /// The room after the first `written` bytes of the message being decompressed, at least
    /// [`MIN_ROOM`] bytes: when the slab has less left, `out` is truncated to the message so
    /// far and a slab of at least [`SLAB`] (or twice the message so far) is taken, the old one
    /// reclaimed when every message cut from it has been dropped (`reserve` copies the
    /// `written` bytes when it allocates).
    fn room(&mut self, written: usize) -> &mut [u8] {
        if self.out.len() - written < MIN_ROOM {
            self.out.truncate(written);
            self.out.reserve(written.max(SLAB));
            let cap = self.out.capacity();
            self.out.resize(cap, 0);
        }
        &mut self.out[written..]
    }

    /// The first `written` bytes as a message; the rest stays for the next.
    fn take(&mut self, written: usize) -> Bytes {
        self.out.split_to(written).freeze()
    }
}

#[cfg(any(feature = "zlib", feature = "zstd"))]
thread_local! {
    static BUFFERS: std::cell::Cell<Buffers> = std::cell::Cell::default();
}

/// Runs `f` with this thread's shared [`Buffers`]. They are taken out of the thread-local for
/// the call and put back after it, so a nested call (which nothing makes) or a thread being
/// torn down gets an empty one of its own: slower, never wrong.
#[cfg(any(feature = "zlib", feature = "zstd"))]
fn with_buffers<R>(f: impl FnOnce(&mut Buffers) -> R) -> R {
    let mut buffers = BUFFERS.try_with(std::cell::Cell::take).unwrap_or_default();
    let r = f(&mut buffers);
    let _ = BUFFERS.try_with(|cell| cell.set(buffers));
    r
}

/// Which transport compression to ask for (the `compress` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    /// No transport compression (the default).
    #[default]
    None,
    /// `compress=zlib-stream`.
    ZlibStream,
    /// `compress=zstd-stream`.
    ZstdStream,
}

impl Compression {
    /// The value of the `compress` query parameter, if any.
    pub const fn query_value(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::ZlibStream => Some("zlib-stream"),
            Compression::ZstdStream => Some("zstd-stream"),
        }
    }

    /// Whether this build can decompress it: `zlib-stream` needs the `zlib` feature of
    /// `handover-protocol`, `zstd-stream` the `zstd` feature (both on by default). A codec
    /// configured with an unavailable compression is refused at construction with
    /// [`ProtocolError::CompressionUnavailable`].
    pub const fn is_available(self) -> bool {
        match self {
            Compression::None => true,
            Compression::ZlibStream => cfg!(feature = "zlib"),
            Compression::ZstdStream => cfg!(feature = "zstd"),
        }
    }

    /// The error for asking for this compression in a build without its feature.
    fn unavailable_error(self) -> ProtocolError {
        let feature = match self {
            Compression::ZstdStream => "zstd",
            _ => "zlib",
        };
        ProtocolError::CompressionUnavailable {
            compression: self.query_value().unwrap_or("none"),
            feature,
        }
    }
}

/// Checks a zlib stream header (RFC 1950): deflate, a window of at most 32 KiB, no preset
/// dictionary, the check bits right.
#[cfg(feature = "zlib")]
fn check_zlib_header([cmf, flg]: [u8; 2]) -> Result<(), &'static str> {
    if cmf & 0x0F != 8 || cmf >> 4 > 7 {
        return Err("zlib: not a deflate stream header");
    }
    if (u16::from(cmf) << 8 | u16::from(flg)) % 31 != 0 {
        return Err("zlib: header check bits wrong");
    }
    if flg & 0x20 != 0 {
        return Err("zlib: preset dictionary asked for");
    }
    Ok(())
}

/// The receiving side of `zlib-stream` for one connection.
///
/// The stream's two-byte zlib header is checked here and the rest inflated as raw deflate: a
/// zlib stream's Adler-32 checksum is verified only at the stream's end, which a gateway's
/// connection-long stream never reaches, so computing it for every byte (12 % of a shard's CPU
/// on a zlib-stream firehose) bought nothing. A stream that does end may carry the four-byte
/// trailer, which is accepted unverified.
#[cfg(feature = "zlib")]
pub struct ZlibStreamDecoder {
    inflate: Decompress,
    /// The zlib header has been read and checked.
    header_read: bool,
    /// The deflate stream ended (a final block): only the trailer may follow.
    ended: bool,
    /// Compressed bytes of a message whose suffix has not arrived yet; empty (no allocation)
    /// between messages.
    buf: Vec<u8>,
    max: usize,
    poisoned: bool,
}

#[cfg(feature = "zlib")]
impl ZlibStreamDecoder {
    /// A fresh context; `max` caps the decompressed size of one message (and the compressed
    /// bytes buffered while waiting for the suffix).
    pub fn new(max: usize) -> Self {
        ZlibStreamDecoder {
            inflate: Decompress::new(false),
            header_read: false,
            ended: false,
            buf: Vec::new(),
            max,
            poisoned: false,
        }
    }

    /// Feeds one received frame. Returns the decompressed message once a frame ends with
    /// [`ZLIB_SUFFIX`], `None` while the message is incomplete.
    pub fn push(&mut self, frame: &[u8]) -> Result<Option<Vec<u8>>, ProtocolError> {
        Ok(self.push_shared(frame)?.map(|b| b.to_vec()))
    }

    /// [`push`](Self::push), the message as a slice of a reused output buffer (no allocation
    /// per message while the buffer has room, and no copy: it is decompressed into that
    /// buffer). The buffer is shared by every decoder on the thread: an idle decoder holds only
    /// its inflate context.
    pub fn push_shared(&mut self, frame: &[u8]) -> Result<Option<Bytes>, ProtocolError> {
        if self.poisoned {
            return Err(ProtocolError::StreamPoisoned);
        }
        let complete = frame.ends_with(&ZLIB_SUFFIX);
        if !complete || !self.buf.is_empty() {
            if self.buf.len().saturating_add(frame.len()) > self.max {
                self.poisoned = true;
                return Err(ProtocolError::DecompressedTooLarge { limit: self.max });
            }
            self.buf.extend_from_slice(frame);
            if !self.buf.ends_with(&ZLIB_SUFFIX) {
                return Ok(None);
            }
        }
        // Messages split over several frames are rare: their buffer is not kept for the next.
        let input = std::mem::take(&mut self.buf);
        let mut data: &[u8] = if input.is_empty() { frame } else { &input };
        if !self.header_read {
            // A whole message is at least the header and the 4-byte suffix.
            let Some((header, rest)) = data.split_first_chunk::<2>() else {
                self.poisoned = true;
                return Err(ProtocolError::DecompressionFailed {
                    reason: "zlib: stream shorter than its header".into(),
                });
            };
            if let Err(reason) = check_zlib_header(*header) {
                self.poisoned = true;
                return Err(ProtocolError::DecompressionFailed {
                    reason: reason.into(),
                });
            }
            self.header_read = true;
            data = rest;
        }
        if self.ended {
            self.poisoned = true;
            return Err(ProtocolError::DecompressionFailed {
                reason: "zlib: data after the end of the stream".into(),
            });
        }
        let result =
            with_buffers(|buffers| Self::inflate_all(&mut self.inflate, self.max, buffers, data));
        match result {
            Ok((message, ended)) => {
                self.ended = ended;
                Ok(Some(message))
            }
            Err(e) => {
                self.poisoned = true;
                Err(e)
            }
        }
    }

    /// Inflates `input` straight into the thread's slab and cuts the message off it; also
    /// says whether the deflate stream ended (its final block, then at most the trailer).
    fn inflate_all(
        inflate: &mut Decompress,
        max: usize,
        buffers: &mut Buffers,
        mut input: &[u8],
    ) -> Result<(Bytes, bool), ProtocolError> {
        let mut written = 0;
        loop {
            let (in0, out0) = (inflate.total_in(), inflate.total_out());
            let room = buffers.room(written);
            let space = room.len();
            let status = inflate
                .decompress(input, room, FlushDecompress::Sync)
                .map_err(|e| ProtocolError::DecompressionFailed {
                    reason: format!("zlib: {e}"),
                })?;
            let consumed = usize::try_from(inflate.total_in() - in0).unwrap_or(usize::MAX);
            let produced = usize::try_from(inflate.total_out() - out0).unwrap_or(usize::MAX);
            input = input.get(consumed..).unwrap_or_default();
            written = written.saturating_add(produced);
            if written > max {
                return Err(ProtocolError::DecompressedTooLarge { limit: max });
            }
            if status == Status::StreamEnd {
                // What follows the final block is the Adler-32 trailer (4 bytes, unverified:
                // see the type's docs) and nothing else.
                if input.len() > 4 {
                    return Err(ProtocolError::DecompressionFailed {
                        reason: "zlib: data after the end of the stream".into(),
                    });
                }
                return Ok((buffers.take(written), true));
            }
            if input.is_empty() && produced < space {
                return Ok((buffers.take(written), false));
            }
            if consumed == 0 && produced == 0 {
                return Err(ProtocolError::DecompressionFailed {
                    reason: "zlib: no progress".into(),
                });
            }
        }
    }
}

#[cfg(feature = "zlib")]
impl fmt::Debug for ZlibStreamDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZlibStreamDecoder")
            .field("buffered", &self.buf.len())
            .field("total_in", &self.inflate.total_in())
            .field("total_out", &self.inflate.total_out())
            .field("max", &self.max)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

/// The receiving side of `zstd-stream` for one connection.
#[cfg(feature = "zstd")]
pub struct ZstdStreamDecoder {
    dctx: zstd::stream::raw::Decoder<'static>,
    max: usize,
    poisoned: bool,
}

#[cfg(feature = "zstd")]
impl ZstdStreamDecoder {
    /// A fresh context; `max` caps the decompressed size of one message.
    pub fn new(max: usize) -> Result<Self, ProtocolError> {
        let dctx =
            zstd::stream::raw::Decoder::new().map_err(|e| ProtocolError::DecompressionFailed {
                reason: format!("zstd: {e}"),
            })?;
        Ok(ZstdStreamDecoder {
            dctx,
            max,
            poisoned: false,
        })
    }

    /// Feeds one received frame, which holds exactly one gateway message.
    pub fn push(&mut self, frame: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        self.push_shared(frame).map(|b| b.to_vec())
    }

    /// [`push`](Self::push), the message as a slice of a reused output buffer (no allocation
    /// per message while the buffer has room, and no copy: it is decompressed into that
    /// buffer). The buffer is shared by every decoder on the thread: an idle decoder holds only
    /// its zstd context.
    pub fn push_shared(&mut self, frame: &[u8]) -> Result<Bytes, ProtocolError> {
        if self.poisoned {
            return Err(ProtocolError::StreamPoisoned);
        }
        let result =
            with_buffers(|buffers| Self::decompress(&mut self.dctx, self.max, buffers, frame));
        self.poisoned = result.is_err();
        result
    }

    /// Decompresses `frame` straight into the thread's slab and cuts the message off it.
    fn decompress(
        dctx: &mut zstd::stream::raw::Decoder<'static>,
        max: usize,
        buffers: &mut Buffers,
        frame: &[u8],
    ) -> Result<Bytes, ProtocolError> {
        let mut input = InBuffer::around(frame);
        let mut written = 0;
        loop {
            let before = input.pos();
            let room = buffers.room(written);
            let space = room.len();
            let mut output = OutBuffer::around(room);
            dctx.run(&mut input, &mut output)
                .map_err(|e| ProtocolError::DecompressionFailed {
                    reason: format!("zstd: {e}"),
                })?;
            let produced = output.pos();
            written = written.saturating_add(produced);
            if written > max {
                return Err(ProtocolError::DecompressedTooLarge { limit: max });
            }
            if input.pos() == frame.len() && produced < space {
                return Ok(buffers.take(written));
            }
            if input.pos() == before && produced == 0 {
                return Err(ProtocolError::DecompressionFailed {
                    reason: "zstd: no progress".into(),
                });
            }
        }
    }
}

#[cfg(feature = "zstd")]
impl fmt::Debug for ZstdStreamDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZstdStreamDecoder")
            .field("max", &self.max)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

/// The sending side of `zlib-stream`, for mock gateways and tests: one deflate context, every
/// message ends with a sync flush (and so with [`ZLIB_SUFFIX`]).
#[cfg(feature = "zlib")]
pub struct ZlibStreamEncoder {
    deflate: Compress,
}

#[cfg(feature = "zlib")]
impl ZlibStreamEncoder {
    /// A fresh context at the default compression level.
    pub fn new() -> Self {
        ZlibStreamEncoder {
            deflate: Compress::new(flate2::Compression::default(), true),
        }
    }

    /// Compresses one message; the result ends with [`ZLIB_SUFFIX`].
    pub fn compress(&mut self, msg: &[u8]) -> Vec<u8> {
        // Room for deflate's worst case (stored blocks: 5 bytes per 16 KiB) plus the sync marker
        // with margin, so one call finishes the flush with output space to spare. A flush that
        // fills the buffer exactly cannot tell whether it is complete, and flushing again would
        // append a second, empty marker (zlib's manual: keep more than six bytes free).
        let mut out = Vec::with_capacity(msg.len() + msg.len() / 1024 + 128);
        let mut input = msg;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(64));
            }
            let (in0, out0) = (self.deflate.total_in(), self.deflate.total_out());
            if self
                .deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .is_err()
            {
                // Only a misuse of the stream state can fail; nothing more can be produced.
                return out;
            }
            let consumed = usize::try_from(self.deflate.total_in() - in0).unwrap_or(0);
            input = input.get(consumed..).unwrap_or_default();
            let produced = self.deflate.total_out() - out0;
            if input.is_empty() && out.ends_with(&ZLIB_SUFFIX) && out.len() < out.capacity() {
                return out;
            }
            if consumed == 0 && produced == 0 && out.len() < out.capacity() {
                return out;
            }
        }
    }
}

#[cfg(feature = "zlib")]
impl Default for ZlibStreamEncoder {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "zlib")]
impl fmt::Debug for ZlibStreamEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZlibStreamEncoder")
            .field("total_in", &self.deflate.total_in())
            .finish()
    }
}

/// The sending side of `zstd-stream`, for mock gateways and tests: one context, every message
/// flushed without ending the frame.
#[cfg(feature = "zstd")]
pub struct ZstdStreamEncoder {
    cctx: zstd::stream::raw::Encoder<'static>,
}

#[cfg(feature = "zstd")]
impl ZstdStreamEncoder {
    /// A fresh context at compression level 3.
    pub fn new() -> Result<Self, ProtocolError> {
        let cctx =
            zstd::stream::raw::Encoder::new(3).map_err(|e| ProtocolError::DecompressionFailed {
                reason: format!("zstd: {e}"),
            })?;
        Ok(ZstdStreamEncoder { cctx })
    }

    /// Compresses and flushes one message.
    pub fn compress(&mut self, msg: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        let err = |e: std::io::Error| ProtocolError::DecompressionFailed {
            reason: format!("zstd: {e}"),
        };
        let mut out = Vec::new();
        let mut scratch = vec![0u8; SCRATCH];
        let mut input = InBuffer::around(msg);
        while input.pos() < msg.len() {
            let mut o = OutBuffer::around(&mut scratch[..]);
            self.cctx.run(&mut input, &mut o).map_err(err)?;
            let n = o.pos();
            out.extend_from_slice(&scratch[..n]);
        }
        loop {
            let mut o = OutBuffer::around(&mut scratch[..]);
            let remaining = self.cctx.flush(&mut o).map_err(err)?;
            let n = o.pos();
            out.extend_from_slice(&scratch[..n]);
            if remaining == 0 {
                return Ok(out);
            }
        }
    }
}

#[cfg(feature = "zstd")]
impl fmt::Debug for ZstdStreamEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ZstdStreamEncoder")
    }
}

/// The per-connection decompressor the codec holds.
// One per connection, built once and never moved on a hot path: boxing the decoder would buy
// nothing (the lint fires only when a single compression feature is on).
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Decompressor {
    None,
    #[cfg(feature = "zlib")]
    Zlib(ZlibStreamDecoder),
    #[cfg(feature = "zstd")]
    Zstd(ZstdStreamDecoder),
    /// A context could not be created; every compressed message fails.
    Failed,
}

impl Decompressor {
    #[cfg_attr(not(any(feature = "zlib", feature = "zstd")), allow(unused_variables))]
    pub(crate) fn new(kind: Compression, max: usize) -> Result<Self, ProtocolError> {
        Ok(match kind {
            Compression::None => Decompressor::None,
            #[cfg(feature = "zlib")]
            Compression::ZlibStream => Decompressor::Zlib(ZlibStreamDecoder::new(max)),
            #[cfg(feature = "zstd")]
            Compression::ZstdStream => Decompressor::Zstd(ZstdStreamDecoder::new(max)?),
            #[allow(unreachable_patterns)] // reachable exactly when a feature is off
            unavailable => return Err(unavailable.unavailable_error()),
        })
    }

    /// Whether the stream is beyond repair: every later message on this connection fails.
    pub(crate) fn is_poisoned(&self) -> bool {
        match self {
            Decompressor::None => false,
            #[cfg(feature = "zlib")]
            Decompressor::Zlib(z) => z.poisoned,
            #[cfg(feature = "zstd")]
            Decompressor::Zstd(z) => z.poisoned,
            Decompressor::Failed => true,
        }
    }

    /// A complete message from a binary frame, or `None` while one is incomplete. Binary
    /// frames without compression are taken as JSON.
    pub(crate) fn push(&mut self, frame: &Bytes) -> Result<Option<Bytes>, ProtocolError> {
        match self {
            Decompressor::None => Ok(Some(frame.clone())),
            #[cfg(feature = "zlib")]
            Decompressor::Zlib(z) => z.push_shared(frame),
            #[cfg(feature = "zstd")]
            Decompressor::Zstd(z) => z.push_shared(frame).map(Some),
            Decompressor::Failed => Err(ProtocolError::StreamPoisoned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(any(feature = "zlib", feature = "zstd"))]
    fn messages() -> Vec<Vec<u8>> {
        vec![
            br#"{"op":10,"d":{"heartbeat_interval":41250}}"#.to_vec(),
            br#"{"op":11,"d":null}"#.to_vec(),
            format!(
                r#"{{"op":0,"s":1,"t":"READY","d":{{"pad":"{}"}}}}"#,
                "guild ".repeat(5000)
            )
            .into_bytes(),
            br#"{"op":0,"s":2,"t":"MESSAGE_CREATE","d":{"content":"hi"}}"#.to_vec(),
        ]
    }

    #[cfg(feature = "zlib")]
    #[test]
    fn zlib_round_trip_over_one_context() {
        let mut enc = ZlibStreamEncoder::new();
        let mut dec = ZlibStreamDecoder::new(DEFAULT_MAX_DECOMPRESSED_BYTES);
        for m in messages() {
            let c = enc.compress(&m);
            assert!(c.ends_with(&ZLIB_SUFFIX));
            assert_eq!(dec.push(&c).unwrap(), Some(m));
        }
    }

    #[cfg(feature = "zlib")]
    #[test]
    fn zlib_encoder_emits_exactly_one_sync_marker_per_message() {
        // Found by fuzzing: this message's compressed form used to end exactly at the output
        // buffer's capacity, and a second flush appended another, empty marker.
        let mut ready = br#"{"d":{"guilds":[{"id":"7","unavailable":true}],"resume_gateway_url":"wss://resume.example","session_id":"0123456789abcdef","shard":[0,1],"user":{"bot":true,"id":"42"},"v":10},"op":0,"s":1,"t":"READY"}"#.to_vec();
        ready[1] ^= 0b100;
        let mut inputs = vec![ready];
        // And a spread of sizes and contents, compressible and not.
        let mut rng = fastrand::Rng::with_seed(5);
        for len in (0..3000).step_by(7) {
            inputs.push((0..len).map(|_| rng.u8(b' '..=b'~')).collect());
            inputs.push(vec![b'a'; len]);
        }
        for msg in inputs.iter().filter(|m| !m.is_empty()) {
            let mut enc = ZlibStreamEncoder::new();
            let c = enc.compress(msg);
            let markers = c.windows(4).filter(|w| *w == ZLIB_SUFFIX).count();
            assert!(c.ends_with(&ZLIB_SUFFIX));
            assert_eq!(markers, 1, "{} bytes in: two sync markers", msg.len());
            let mut dec = ZlibStreamDecoder::new(DEFAULT_MAX_DECOMPRESSED_BYTES);
            assert_eq!(dec.push(&c).unwrap().as_deref(), Some(&msg[..]));
        }
    }

    #[cfg(feature = "zlib")]
    #[test]
    fn zlib_later_messages_need_the_shared_context() {
        let mut enc = ZlibStreamEncoder::new();
        let msgs = messages();
        let _first = enc.compress(&msgs[2]);
        let second = enc.compress(&msgs[2]);
        // A fresh context cannot read the second message: it refers back to the first.
        let mut fresh = ZlibStreamDecoder::new(DEFAULT_MAX_DECOMPRESSED_BYTES);
        assert!(fresh.push(&second).is_err());
    }

    #[cfg(feature = "zlib")]
    #[test]
    fn decoders_of_one_thread_share_buffers_without_mixing_messages() {
        // Two connections' decoders interleaved on one thread, every message held: each held
        // message is a slice of the thread's shared slab and must stay intact.
        let msgs = messages();
        let (mut za, mut zb) = (ZlibStreamEncoder::new(), ZlibStreamEncoder::new());
        let (mut da, mut db) = (
            ZlibStreamDecoder::new(DEFAULT_MAX_DECOMPRESSED_BYTES),
            ZlibStreamDecoder::new(DEFAULT_MAX_DECOMPRESSED_BYTES),
        );
        let mut held = Vec::new();
        for m in &msgs {
            let a = da.push_shared(&za.compress(m)).unwrap().unwrap();
            let b = db.push_shared(&zb.compress(m)).unwrap().unwrap();
            held.push((m.clone(), a, b));
        }
        for (m, a, b) in &held {
            assert_eq!(&a[..], &m[..]);
            assert_eq!(&b[..], &m[..]);
        }
    }

    #[cfg(all(feature = "zlib", feature = "zstd"))]
    #[test]
    fn held_messages_of_every_size_stay_intact_across_slabs() {
        // Messages are decompressed straight into the thread's slab and cut off it: sizes from
        // a few bytes to several slabs, every one held, so messages end at every offset of a
        // slab, start in one slab and continue in the next, and the slab grows past its size.
        let mut rng = fastrand::Rng::with_seed(7);
        let mut msgs: Vec<Vec<u8>> = Vec::new();
        for i in 0..300usize {
            let len = match i % 10 {
                0 => rng.usize(SLAB..4 * SLAB),
                1..=3 => rng.usize(MIN_ROOM - 64..MIN_ROOM + 64),
                _ => rng.usize(1..3000),
            };
            msgs.push((0..len).map(|_| rng.u8(b'a'..=b'h')).collect());
        }
        let (mut zenc, mut senc) = (ZlibStreamEncoder::new(), ZstdStreamEncoder::new().unwrap());
        let mut zdec = ZlibStreamDecoder::new(DEFAULT_MAX_DECOMPRESSED_BYTES);
        let mut sdec = ZstdStreamDecoder::new(DEFAULT_MAX_DECOMPRESSED_BYTES).unwrap();
        let mut held = Vec::new();
        for m in &msgs {
            let z = zdec.push_shared(&zenc.compress(m)).unwrap().unwrap();
            let s = sdec.push_shared(&senc.compress(m).unwrap()).unwrap();
            held.push((z, s));
        }
        for (m, (z, s)) in msgs.iter().zip(&held) {
            assert_eq!(&z[..], &m[..]);
            assert_eq!(&s[..], &m[..]);
        }
        // Dropped, the slab is taken again and the messages after it are still right.
        drop(held);
        for m in &msgs[..20] {
            assert_eq!(
                zdec.push(&zenc.compress(m)).unwrap().as_deref(),
                Some(&m[..])
            );
            assert_eq!(sdec.push(&senc.compress(m).unwrap()).unwrap(), *m);
        }
    }

    #[cfg(feature = "zstd")]
    #[test]
    fn zstd_exactly_at_cap_passes() {
        let msg = vec![b'x'; 100_000];
        let mut enc = ZstdStreamEncoder::new().unwrap();
        let mut dec = ZstdStreamDecoder::new(100_000).unwrap();
        assert_eq!(dec.push(&enc.compress(&msg).unwrap()).unwrap(), msg);
        let mut enc = ZstdStreamEncoder::new().unwrap();
        let mut dec = ZstdStreamDecoder::new(99_999).unwrap();
        assert_eq!(
            dec.push(&enc.compress(&msg).unwrap()),
            Err(ProtocolError::DecompressedTooLarge { limit: 99_999 })
        );
    }

    #[test]
    fn zlib_message_split_across_frames() {
        let mut enc = ZlibStreamEncoder::new();
        let mut dec = ZlibStreamDecoder::new(DEFAULT_MAX_DECOMPRESSED_BYTES);
        for m in messages() {
            let c = enc.compress(&m);
            let cuts = [c.len() / 3, c.len() / 2, c.len() - 2];
            let mut last = 0;
            for &cut in &cuts {
                if cut > last {
                    assert_eq!(dec.push(&c[last..cut]).unwrap(), None);
                    last = cut;
                }
            }
            assert_eq!(dec.push(&c[last..]).unwrap(), Some(m));
        }
    }

    #[cfg(feature = "zlib")]
    #[test]
    fn zlib_corrupted_stream_is_typed_and_poisons() {
        let mut enc = ZlibStreamEncoder::new();
        let mut dec = ZlibStreamDecoder::new(DEFAULT_MAX_DECOMPRESSED_BYTES);
        let msgs = messages();
        assert!(dec.push(&enc.compress(&msgs[0])).unwrap().is_some());
        let mut bad = enc.compress(&msgs[2]);
        for b in bad.iter_mut().take(12).skip(2) {
            *b ^= 0x5a;
        }
        let err = dec.push(&bad).unwrap_err();
        assert!(err.needs_reconnect(), "{err:?}");
        assert!(matches!(
            err,
            ProtocolError::DecompressionFailed { .. } | ProtocolError::DecompressedTooLarge { .. }
        ));
        let next = enc.compress(&msgs[3]);
        assert_eq!(dec.push(&next), Err(ProtocolError::StreamPoisoned));
    }

    #[cfg(feature = "zlib")]
    #[test]
    fn zlib_garbage_header_fails() {
        let mut dec = ZlibStreamDecoder::new(1024);
        let mut junk = b"this is not zlib at all".to_vec();
        junk.extend_from_slice(&ZLIB_SUFFIX);
        assert!(matches!(
            dec.push(&junk),
            Err(ProtocolError::DecompressionFailed { .. })
        ));
    }

    #[cfg(feature = "zlib")]
    #[test]
    fn zlib_headers_are_checked_before_inflating() {
        let message = |header: [u8; 2]| {
            let mut bytes = header.to_vec();
            // An empty stored block, then the suffix of a sync flush.
            bytes.extend_from_slice(&[0x00]);
            bytes.extend_from_slice(&ZLIB_SUFFIX);
            ZlibStreamDecoder::new(1024).push(&bytes)
        };
        // 0x78 0x9c: deflate, 32 KiB window, default level: fine.
        assert_eq!(message([0x78, 0x9c]).unwrap(), Some(Vec::new()));
        for (header, why) in [
            ([0x79, 0x9c], "not deflate"),
            ([0x88, 0x98], "a 64 KiB window"),
            ([0x78, 0x9d], "check bits"),
            ([0x78, 0xbb], "a preset dictionary"),
        ] {
            assert!(
                matches!(
                    message(header),
                    Err(ProtocolError::DecompressionFailed { .. })
                ),
                "{why}"
            );
        }
    }

    #[cfg(feature = "zlib")]
    #[test]
    fn a_finished_zlib_stream_takes_its_trailer_and_nothing_more() {
        // Two messages with sync flushes, then a finish (final block and Adler-32 trailer).
        let mut c = Compress::new(flate2::Compression::default(), true);
        let mut wire: Vec<Vec<u8>> = Vec::new();
        for (text, flush) in [
            (&b"{\"op\":10}"[..], FlushCompress::Sync),
            (&b"{\"op\":11}"[..], FlushCompress::Finish),
        ] {
            let mut out = Vec::with_capacity(256);
            c.compress_vec(text, &mut out, flush).unwrap();
            wire.push(out);
        }
        let mut dec = ZlibStreamDecoder::new(1024);
        assert_eq!(dec.push(&wire[0]).unwrap().unwrap(), b"{\"op\":10}");
        // The finished message does not end with the sync suffix: add one empty sync flush as
        // Discord frames do, so the decoder takes it as a whole message.
        let mut last = wire[1].clone();
        last.extend_from_slice(&ZLIB_SUFFIX);
        assert!(
            dec.push(&last).is_err(),
            "data after the trailer is refused"
        );
        let mut dec = ZlibStreamDecoder::new(1024);
        dec.push(&wire[0]).unwrap();
        // Fed whole with its trailer, the final message comes out; anything after is refused.
        let out =
            with_buffers(|b| ZlibStreamDecoder::inflate_all(&mut dec.inflate, 1024, b, &wire[1]));
        let (message, ended) = out.unwrap();
        assert_eq!(&message[..], b"{\"op\":11}");
        assert!(ended);
    }

    #[cfg(feature = "zlib")]
    #[test]
    fn zlib_bomb_is_refused() {
        let cap = 1 << 20;
        let mut enc = ZlibStreamEncoder::new();
        let bomb = vec![b'a'; 16 << 20];
        let c = enc.compress(&bomb);
        assert!(c.len() < 64 * 1024, "bomb should be small: {}", c.len());
        let mut dec = ZlibStreamDecoder::new(cap);
        assert_eq!(
            dec.push(&c),
            Err(ProtocolError::DecompressedTooLarge { limit: cap })
        );
    }

    #[cfg(feature = "zlib")]
    #[test]
    fn zlib_unterminated_buffering_is_capped() {
        let mut dec = ZlibStreamDecoder::new(1000);
        assert_eq!(dec.push(&[1u8; 600]), Ok(None));
        assert_eq!(
            dec.push(&[1u8; 600]),
            Err(ProtocolError::DecompressedTooLarge { limit: 1000 })
        );
    }

    #[cfg(feature = "zlib")]
    #[test]
    fn zlib_exactly_at_cap_passes() {
        let msg = vec![b'x'; 100_000];
        let mut enc = ZlibStreamEncoder::new();
        let mut dec = ZlibStreamDecoder::new(100_000);
        assert_eq!(dec.push(&enc.compress(&msg)).unwrap(), Some(msg.clone()));
        let mut dec = ZlibStreamDecoder::new(99_999);
        let mut enc = ZlibStreamEncoder::new();
        assert!(dec.push(&enc.compress(&msg)).is_err());
    }

    #[cfg(feature = "zstd")]
    #[test]
    fn zstd_round_trip_over_one_context() {
        let mut enc = ZstdStreamEncoder::new().unwrap();
        let mut dec = ZstdStreamDecoder::new(DEFAULT_MAX_DECOMPRESSED_BYTES).unwrap();
        for m in messages() {
            let c = enc.compress(&m).unwrap();
            assert_eq!(dec.push(&c).unwrap(), m);
        }
    }

    #[cfg(feature = "zstd")]
    #[test]
    fn zstd_accepts_complete_frames_too() {
        let mut dec = ZstdStreamDecoder::new(DEFAULT_MAX_DECOMPRESSED_BYTES).unwrap();
        for m in messages() {
            let c = zstd::bulk::compress(&m, 3).unwrap();
            assert_eq!(dec.push(&c).unwrap(), m);
        }
    }

    #[cfg(feature = "zstd")]
    #[test]
    fn zstd_corrupted_stream_is_typed_and_poisons() {
        let mut enc = ZstdStreamEncoder::new().unwrap();
        let mut dec = ZstdStreamDecoder::new(DEFAULT_MAX_DECOMPRESSED_BYTES).unwrap();
        let msgs = messages();
        dec.push(&enc.compress(&msgs[0]).unwrap()).unwrap();
        // Mid-frame, most bytes read as some block; a block header of the reserved type
        // (3) cannot be.
        let err = dec.push(b"\x06\x00\x00garbage").unwrap_err();
        assert!(matches!(err, ProtocolError::DecompressionFailed { .. }));
        assert!(err.needs_reconnect());
        assert_eq!(
            dec.push(&enc.compress(&msgs[1]).unwrap()),
            Err(ProtocolError::StreamPoisoned)
        );
    }

    #[cfg(feature = "zstd")]
    #[test]
    fn zstd_bomb_is_refused() {
        let cap = 1 << 20;
        let mut enc = ZstdStreamEncoder::new().unwrap();
        let c = enc.compress(&vec![0u8; 16 << 20]).unwrap();
        assert!(c.len() < 64 * 1024);
        let mut dec = ZstdStreamDecoder::new(cap).unwrap();
        assert_eq!(
            dec.push(&c),
            Err(ProtocolError::DecompressedTooLarge { limit: cap })
        );
    }

    #[test]
    fn query_values() {
        assert_eq!(Compression::None.query_value(), None);
        assert_eq!(Compression::ZlibStream.query_value(), Some("zlib-stream"));
        assert_eq!(Compression::ZstdStream.query_value(), Some("zstd-stream"));
    }

    #[test]
    fn availability_follows_the_features() {
        assert!(Compression::None.is_available());
        assert_eq!(
            Compression::ZlibStream.is_available(),
            cfg!(feature = "zlib")
        );
        assert_eq!(
            Compression::ZstdStream.is_available(),
            cfg!(feature = "zstd")
        );
        assert!(matches!(
            Decompressor::new(Compression::None, 1024),
            Ok(Decompressor::None)
        ));
    }

    #[cfg(not(feature = "zlib"))]
    #[test]
    fn zlib_without_its_feature_is_a_typed_error() {
        let err = Decompressor::new(Compression::ZlibStream, 1024).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::CompressionUnavailable {
                compression: "zlib-stream",
                feature: "zlib",
            }
        );
        assert!(err.to_string().contains("`zlib` feature"), "{err}");
    }

    #[cfg(not(feature = "zstd"))]
    #[test]
    fn zstd_without_its_feature_is_a_typed_error() {
        let err = Decompressor::new(Compression::ZstdStream, 1024).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::CompressionUnavailable {
                compression: "zstd-stream",
                feature: "zstd",
            }
        );
        assert!(err.to_string().contains("`zstd` feature"), "{err}");
    }
}
