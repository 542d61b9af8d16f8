//! Micro-benchmarks of the pure protocol code: encoding server frames,
//! parsing + unmasking client frames, the opening handshake, and
//! permessage-deflate (what compressing a message costs: once per message
//! in ringcast, once per client in servers that compress per connection).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use ringcast::protocol::frame::{OpCode, encode_client_frame, encode_server_frame};
use ringcast::protocol::handshake::{parse_request_head, switching_protocols, validate_upgrade};
use ringcast::protocol::reader::{Event, Flow, FrameReader};

const SIZES: [usize; 3] = [16, 1024, 64 * 1024];

fn frame_encoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_server_frame");
    for size in SIZES {
        let payload = vec![b'x'; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &payload, |b, p| {
            b.iter(|| encode_server_frame(OpCode::Text, black_box(p)))
        });
    }
    group.finish();
}

fn client_frame_parsing(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_client_frame");
    for size in SIZES {
        let frame = encode_client_frame(true, 1, &vec![b'x'; size], [1, 2, 3, 4]);
        let mut reader = FrameReader::new(1 << 20);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &frame, |b, f| {
            b.iter(|| {
                let mut len = 0;
                reader
                    .feed(black_box(f), &mut |e| {
                        if let Event::Message { payload, .. } = e {
                            len = payload.len();
                        }
                        Flow::Continue
                    })
                    .unwrap();
                len
            })
        });
    }
    group.finish();
}

fn handshake(c: &mut Criterion) {
    let request = b"GET /ws?channels=prices,news HTTP/1.1\r\nHost: example.com\r\nUser-Agent: Mozilla/5.0\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: https://example.com\r\n\r\n";
    c.bench_function("handshake_parse_validate_respond", |b| {
        b.iter(|| {
            let (head, _) = parse_request_head(black_box(request)).unwrap().unwrap();
            let accept = validate_upgrade(&head).unwrap();
            switching_protocols(&accept, None, None)
        })
    });
}

/// A 1 KiB message shaped like a live JSON feed (quotes), as the fan-out
/// benchmark publishes.
fn json_message() -> Vec<u8> {
    let mut quotes = Vec::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0u64.. {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let cents = 10_000 + x % 40_000;
        quotes.push(format!(
            r#"{{"symbol":"SYM{}","bid":{}.{:02},"ask":{}.{:02},"volume":{}}}"#,
            i % 50,
            cents / 100,
            cents % 100,
            (cents + 3) / 100,
            (cents + 3) % 100,
            100 * (1 + (x >> 30) % 50)
        ));
        if quotes.iter().map(|q| q.len() + 1).sum::<usize>() > 1000 {
            break;
        }
    }
    format!(
        r#"{{"channel":"prices","seq":1,"data":[{}]}}"#,
        quotes.join(",")
    )
    .into_bytes()
}

fn deflate(c: &mut Criterion) {
    let message = json_message();
    let mut group = c.benchmark_group("permessage_deflate");
    group.throughput(Throughput::Bytes(message.len() as u64));
    let mut deflater = ringcast::protocol::deflate::Deflater::new(15).unwrap();
    group.bench_function("compress_1KiB_json", |b| {
        b.iter(|| deflater.compress(black_box(&message)))
    });
    let compressed = deflater.compress(&message);
    group.bench_function("inflate_1KiB_json", |b| {
        b.iter(|| ringcast::protocol::deflate::inflate(black_box(&compressed), 1 << 20))
    });
    group.finish();
}

criterion_group!(
    benches,
    frame_encoding,
    client_frame_parsing,
    handshake,
    deflate
);
criterion_main!(benches);
