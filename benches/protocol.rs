//! Micro-benchmarks of the pure protocol code: encoding server frames,
//! parsing + unmasking client frames, and the opening handshake.

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

criterion_group!(benches, frame_encoding, client_frame_parsing, handshake);
criterion_main!(benches);
