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

/// The value of `--only-compression`: None when the flag is absent; an unknown name ends the
/// benchmark with a message and exit status 2 (running every compression instead would
/// measure what nobody asked for).
pub(crate) fn only_compression(value: Option<&str>) -> Option<Compression> {
    let value = value?;
    parse_compression(value).or_else(|| {
        let names: Vec<&str> = COMPRESSIONS.into_iter().map(compression_name).collect();
        eprintln!(
            "--only-compression: unknown compression {value:?} ({})",
            names.join(", ")
        );
        std::process::exit(2)
    })
}
