//! The feed's per-message work: parsing an envelope and encoding the frame.
//!
//! `envelope_parse` is what ringcast does (serde_json + RawValue: validates
//! the whole message and returns the exact bytes of `data`). `simd_json_parse`
//! is the obvious faster-JSON alternative, measured side by side: it has to
//! copy the input (it parses in place) and builds values whose source bytes
//! are lost, so it could not give `data` back byte for byte anyway.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

use ringcast::feed::envelope::{encode_frame, parse};

const SMALL: &[u8] = br#"{"channel":"prices","data":{"EURUSD":1.0842,"ts":1795315241127}}"#;

fn large() -> Vec<u8> {
    let rows: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"id":{i},"name":"row {i}","tags":["a","b"],"v":[1.5,2.5,{i}]}}"#))
        .collect();
    format!(
        r#"{{"channel":"dash:board-1","data":[{}]}}"#,
        rows.join(",")
    )
    .into_bytes()
}

fn envelope(c: &mut Criterion) {
    let large = large();
    for (name, msg) in [("small", SMALL), ("2KiB", large.as_slice())] {
        c.bench_function(&format!("envelope_parse/{name}"), |b| {
            b.iter(|| parse(black_box(msg)).unwrap().data.len())
        });
        c.bench_function(&format!("simd_json_parse/{name}"), |b| {
            b.iter(|| {
                let mut copy = black_box(msg).to_vec();
                simd_json::to_borrowed_value(&mut copy).is_ok()
            })
        });
        c.bench_function(&format!("envelope_parse_and_encode/{name}"), |b| {
            b.iter(|| {
                let env = parse(black_box(msg)).unwrap();
                encode_frame(&env.channel, 42, env.data)
            })
        });
    }
}

criterion_group!(benches, envelope);
criterion_main!(benches);
