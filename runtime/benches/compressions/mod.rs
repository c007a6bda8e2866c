//! The transport compressions the runtime's benchmarks run (`firehose`, `idle_shards`) and
//! their names on the command line and in the tables.

use handover_protocol::Compression;

/// Every compression a benchmark row can use, in table order.
pub(crate) const COMPRESSIONS: [Compression; 3] = [
    Compression::None,
    Compression::ZlibStream,
    Compression::ZstdStream,
];

/// The name of `c` in flags and tables (`plain`, `zlib-stream`, `zstd-stream`).
pub(crate) fn compression_name(c: Compression) -> &'static str {
    c.query_value().unwrap_or("plain")
}

/// The compression named `s`, if any.
pub(crate) fn parse_compression(s: &str) -> Option<Compression> {
    COMPRESSIONS.into_iter().find(|c| compression_name(*c) == s)
}
