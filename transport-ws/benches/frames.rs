//! The frame reader and writer alone, without a socket: cutting 64 text frames of about
//! 1 KiB (a gateway burst) out of one receive buffer, and encoding the same frames as a
//! server would.
//!
//! `cargo bench -p handover-transport-ws --bench frames`

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use handover_transport_ws::frame::{self, FrameReader, Incoming, Kind, Role};

const FRAMES: usize = 64;

fn payload(i: usize) -> Vec<u8> {
    let mut p =
        format!("{{\"op\":0,\"s\":{i},\"t\":\"MESSAGE_CREATE\",\"d\":{{\"content\":\"\"}}}}")
            .into_bytes();
    // About 1 KiB, the size of a MESSAGE_CREATE; varied so that lengths differ.
    let pad = 900 + (i * 37) % 200;
    p.splice(p.len() - 3..p.len() - 3, std::iter::repeat_n(b'x', pad));
    p
}

fn burst() -> BytesMut {
    let mut out = BytesMut::new();
    for i in 0..FRAMES {
        frame::encode(&mut out, Role::Server, Kind::Text, &payload(i));
    }
    out
}

fn bench(c: &mut Criterion) {
    let wire = burst();
    let mut group = c.benchmark_group("frames");
    group.throughput(Throughput::Elements(FRAMES as u64));
    group.bench_function("read_64_text", |b| {
        b.iter_batched(
            || {
                (
                    wire.clone(),
                    FrameReader::new(Role::Client, 1 << 20, 1 << 20),
                )
            },
            |(mut buf, mut reader)| {
                let mut n = 0;
                while let Ok(Some(Incoming::Text(t))) = reader.read(&mut buf) {
                    n += t.len();
                }
                n
            },
            BatchSize::SmallInput,
        )
    });
    let payloads: Vec<Vec<u8>> = (0..FRAMES).map(payload).collect();
    group.bench_function("encode_64_text_server", |b| {
        let mut out = BytesMut::with_capacity(wire.len());
        b.iter(|| {
            out.clear();
            for p in &payloads {
                frame::encode(&mut out, Role::Server, Kind::Text, p);
            }
            out.len()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
