//! A tour of mfio on the backends anyone can run: an image file (io_uring) and striped memory.
//!
//! Run: `cargo run --release -p mfio --example demo [IMAGE]` (default: a temporary 64 MiB image).

use mfio::backends::{FileBackend, FileOptions, MemoryBackend, Stripe};
use mfio::{block_on, BlockDevice, Error, Packet, ReadAt, ToDevice, WriteAt};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

fn main() -> std::io::Result<()> {
    let arg = std::env::args().nth(1);
    let temp = std::env::temp_dir().join(format!("mfio-demo-{}.img", std::process::id()));
    let path = arg.map(std::path::PathBuf::from).unwrap_or_else(|| temp.clone());
    if !path.exists() {
        std::fs::File::create(&path)?.set_len(64 << 20)?;
    }
    let dev =
        FileBackend::open_with(&path, &FileOptions { block_size: 512, ..Default::default() })?;
    println!(
        "image {}: {} MiB, block size {}, {}",
        path.display(),
        dev.capacity() >> 20,
        dev.block_size(),
        if dev.uses_io_uring() { "io_uring" } else { "pread/pwrite" }
    );

    // 1. Async, batched: 32 writes issued in one poll round reach io_uring behind one submit.
    let blocks = 4096u64;
    let t0 = Instant::now();
    for batch in 0..blocks / 32 {
        let futs = (0..32).map(|i| {
            let lba = batch * 32 + i;
            dev.write_all(lba * 4096, vec![(lba % 251) as u8; 4096])
        });
        for (r, _) in block_on(&dev, futures::future::join_all(futs)) {
            r?;
        }
    }
    let dt = t0.elapsed();
    println!(
        "wrote {} x 4 KiB in batches of 32: {:.0} IOPS",
        blocks,
        blocks as f64 / dt.as_secs_f64()
    );

    // 2. Blocking ("no colour"): the same backend, a borrowed buffer, read back and verify.
    let mut buf = vec![0u8; 4096];
    for lba in (0..blocks).step_by(97) {
        dev.read_all_blocking(lba * 4096, &mut buf)?;
        assert!(buf.iter().all(|&b| b == (lba % 251) as u8), "block {lba} reads back wrong");
    }
    println!("read back and verified every 97th block (blocking API)");

    // 3. Partial success: a read across the end returns the good prefix and the first error.
    let end = dev.capacity();
    match dev.read_all_blocking(end - 1024, &mut buf) {
        Err(e) => println!(
            "read of 4 KiB at 1 KiB before the end: {} bytes done, then: {}",
            e.done, e.error
        ),
        Ok(()) => println!("unexpected: a read past the end succeeded"),
    }
    let (r, _) = block_on(&dev, dev.read_at(end - 1024, vec![0u8; 4096]));
    println!("read_at of the same range (pread semantics): {r:?}");

    // 4. Fragmentation: one packet over 4 striped devices, its segments observed as they complete.
    let stripe = Stripe::new((0..4).map(|_| MemoryBackend::new(1 << 20)).collect(), 64 << 10)
        .expect("valid stripe");
    let segments = Arc::new(AtomicUsize::new(0));
    let counted = segments.clone();
    let sink = Arc::new(move |_off: usize, _len: usize, _r: Result<(), Error>| {
        counted.fetch_add(1, Ordering::Relaxed);
    });
    let mut pkt = pin!(Packet::<ToDevice, _>::new(vec![7u8; 1 << 20]).with_sink(sink));
    let t = block_on(&stripe, pkt.as_mut().io(&stripe, 32 << 10));
    println!(
        "1 MiB packet striped over 4 devices in 64 KiB units: {} segments, {} bytes done, error {:?}",
        segments.load(Ordering::Relaxed),
        t.done,
        t.error
    );
    let per_device: Vec<u64> = stripe.devices().iter().map(|d| d.stats().segments).collect();
    println!("segments per device: {per_device:?}");

    if path == temp {
        std::fs::remove_file(&temp)?;
    }
    Ok(())
}
