//! The per-shard fan-out path: one message queued to every subscriber of a
//! shard (the real `Shard::deliver`), and each queue drained as a completed
//! send would. Reports ns per delivery (criterion's time ÷ subscribers) and
//! counts heap allocations per delivery, which must be ~0: one per message
//! (the shard's `Rc` of the frame), none per subscriber.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use ringcast::core::bench_support::FanoutBench;
use ringcast::feed::envelope::encode_frame;

struct CountingAllocator;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts calls.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn fanout(c: &mut Criterion) {
    let data = format!(r#"{{"price":1.0842,"pad":"{}"}}"#, "x".repeat(80));
    let frame = encode_frame("bench", 1, data.as_bytes());
    let mut group = c.benchmark_group("fanout_deliver");
    for subscribers in [1_000usize, 10_000] {
        let mut bench = FanoutBench::new(subscribers).expect("io_uring shard");
        for _ in 0..20 {
            bench.deliver(&frame);
        }
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let messages = 100;
        for _ in 0..messages {
            bench.deliver(&frame);
        }
        let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
        eprintln!(
            "fanout to {subscribers}: {allocations} allocations for {} deliveries ({:.5} per delivery)",
            messages * subscribers,
            allocations as f64 / (messages * subscribers) as f64
        );
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(subscribers),
            &subscribers,
            |b, _| b.iter(|| bench.deliver(black_box(&frame))),
        );
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
