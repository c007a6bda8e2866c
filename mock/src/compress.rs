//! Server-side transport compression, one context per connection.

use std::io::Write;

use bytes::Bytes;
use flate2::write::ZlibEncoder;
use handover_protocol::Compression;

/// A connection's compression context.
pub(crate) enum Compressor {
    Zlib(ZlibEncoder<Vec<u8>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Compressor {
    /// The context for `kind`; `None` for no compression.
    pub(crate) fn new(kind: Compression) -> std::io::Result<Option<Compressor>> {
        Ok(Some(match kind {
            Compression::ZlibStream => {
                Compressor::Zlib(ZlibEncoder::new(Vec::new(), flate2::Compression::default()))
            }
            Compression::ZstdStream => Compressor::Zstd(zstd::stream::write::Encoder::new(
                Vec::new(),
                zstd::DEFAULT_COMPRESSION_LEVEL,
            )?),
            _ => return Ok(None),
        }))
    }

    /// Compress one whole message and flush, so the client can decode it without the next one.
    pub(crate) fn compress(&mut self, input: &[u8]) -> std::io::Result<Bytes> {
        match self {
            Compressor::Zlib(enc) => {
                enc.write_all(input)?;
                // flate2's flush is a zlib sync flush: the output ends with 00 00 FF FF.
                enc.flush()?;
                Ok(Bytes::from(std::mem::take(enc.get_mut())))
            }
            Compressor::Zstd(enc) => {
                enc.write_all(input)?;
                enc.flush()?;
                Ok(Bytes::from(std::mem::take(enc.get_mut())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zlib_messages_end_with_sync_flush_and_share_one_context() {
        let mut c = Compressor::new(Compression::ZlibStream).unwrap().unwrap();
        let mut inflate = flate2::Decompress::new(true);
        for text in ["{\"op\":10}", "{\"op\":11}", "{\"op\":11}"] {
            let out = c.compress(text.as_bytes()).unwrap();
            assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
            let mut buf = Vec::with_capacity(256);
            inflate
                .decompress_vec(&out, &mut buf, flate2::FlushDecompress::Sync)
                .unwrap();
            assert_eq!(buf, text.as_bytes());
        }
    }

    #[test]
    fn zstd_messages_decode_one_by_one_from_one_context() {
        use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};
        let mut c = Compressor::new(Compression::ZstdStream).unwrap().unwrap();
        let mut dec = Decoder::new().unwrap();
        for text in ["{\"op\":10}", "{\"op\":11}"] {
            let out = c.compress(text.as_bytes()).unwrap();
            let mut buf = vec![0u8; 256];
            let mut input = InBuffer::around(&out);
            let mut output = OutBuffer::around(&mut buf[..]);
            while input.pos() < out.len() {
                dec.run(&mut input, &mut output).unwrap();
            }
            let n = output.pos();
            assert_eq!(&buf[..n], text.as_bytes());
        }
    }
}
