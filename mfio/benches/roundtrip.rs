//! Packet round trip (submit + complete) on the in-memory backend: ns and heap allocations per
//! operation, for owned heap buffers, stack packets, borrowed (blocking) buffers and batches.
//!
//! Run: `cargo bench -p mfio --bench roundtrip` (add `-- --quick` for a short run).

use mfio::backends::MemoryBackend;
use mfio::{block_on, FromDevice, IoBackend, Packet, ReadAt, ToDevice};
use std::hint::black_box;
use std::pin::{pin, Pin};
use std::task::{Context, Waker};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mfio::alloc_count::CountingAlloc = mfio::alloc_count::CountingAlloc;

fn measure(name: &str, ops_per_iter: u64, iters: u64, mut f: impl FnMut()) {
    for _ in 0..iters / 10 {
        f(); // warm up: queues reach their steady-state capacity
    }
    let a0 = mfio::alloc_count::allocations();
    let t0 = Instant::now();
    for _ in 0..iters {
        f();
    }
    let dt = t0.elapsed();
    let allocs = mfio::alloc_count::allocations() - a0;
    let ops = iters * ops_per_iter;
    println!(
        "| {name:<48} | {:>8.1} | {:>11.3} |",
        dt.as_nanos() as f64 / ops as f64,
        allocs as f64 / ops as f64
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let iters: u64 = if quick { 20_000 } else { 1_000_000 };
    let dev = MemoryBackend::new(1 << 20);
    println!(
        "| {:<48} | {:>8} | {:>11} |",
        "operation (64-byte segments unless noted)", "ns / op", "allocs / op"
    );
    println!("|{:-<50}|{:->9}:|{:->12}:|", "", "", "");

    let mut buf = Some(vec![0u8; 64]);
    measure("async read_at, owned Vec (given back)", 1, iters, || {
        let (r, b) = block_on(&dev, dev.read_at(4096, buf.take().unwrap()));
        black_box(r.unwrap());
        buf = Some(b);
    });

    let mut stack = [0u8; 64];
    measure("blocking read_at_blocking, borrowed slice", 1, iters, || {
        black_box(dev.read_at_blocking(4096, &mut stack).unwrap());
    });

    let mut pkt = pin!(Packet::<FromDevice, _>::new([0u8; 64]));
    measure("pinned stack packet, reused (io + wait)", 1, iters, || {
        let t = block_on(&dev, pkt.as_mut().io(&dev, 8192));
        black_box(t);
    });

    let mut pkt4k = pin!(Packet::<FromDevice, _>::new([0u8; 4096]));
    measure("pinned stack packet, 4 KiB", 1, iters, || {
        black_box(block_on(&dev, pkt4k.as_mut().io(&dev, 8192)));
    });

    // 32 packets submitted in one round, one backend poll for the batch.
    type Boxed<'b> = Pin<Box<Packet<'b, ToDevice, [u8; 64]>>>;
    let mut batch: Vec<Boxed> = (0..32).map(|_| Box::pin(Packet::new([1u8; 64]))).collect();
    let mut cx = Context::from_waker(Waker::noop());
    measure("batch of 32 packets, one poll (per packet)", 32, iters / 32, || {
        for (i, p) in batch.iter_mut().enumerate() {
            p.as_mut().submit(&dev, i as u64 * 64).unwrap();
        }
        dev.poll_backend(&mut cx);
        for p in &batch {
            black_box(p.poll_done(&mut cx).is_ready());
        }
    });

    // A packet split into 8 segments that complete separately.
    let mut split = pin!(Packet::<FromDevice, _>::new([0u8; 512]));
    measure("one packet split into 8 segments (per segment)", 8, iters / 8, || {
        let mut v = split.as_mut().start(Some(&dev)).unwrap();
        for i in 0..7 {
            let (a, b) = v.split_at(64);
            mfio::PacketIo::send_io(&dev, i * 64, a);
            v = b;
        }
        mfio::PacketIo::send_io(&dev, 7 * 64, v);
        dev.poll_backend(&mut cx);
        black_box(split.poll_done(&mut cx).is_ready());
    });
}
