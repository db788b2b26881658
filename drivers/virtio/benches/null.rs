//! The virtio-blk driver against the model in null mode (no storage): 4 KiB reads on one
//! queue, closed loop at queue depth 1, 32 and 128, on split and on packed virtqueues (the
//! same model, the layout forced through `Options::ring`). Reports IOPS, ns per I/O and heap
//! allocations per I/O in the measured (steady-state) window, for DMA buffers (zero copy) and
//! for heap buffers (bounced).
//!
//! Run: `cargo bench -p mfio-virtio --bench null` (add `-- --quick` for a short run).
//! The model processes requests synchronously inside the notify write, so the figures are the
//! driver's cost plus the model's (which takes a lock and checks every descriptor by IOVA).

use mfio::{BufFor, FromDevice, IoBackend, Packet};
use mfio_pci::PciDevice;
use mfio_virtio::model::{ModelOptions, VirtioBlkModel};
use mfio_virtio::{BlkQueue, Options, RingLayout, VirtioBlk};
use std::pin::Pin;
use std::task::{Context, Waker};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mfio::alloc_count::CountingAlloc = mfio::alloc_count::CountingAlloc;

const BLOCK: usize = 4096;
/// Offsets cycle over this many blocks.
const SPAN_BLOCKS: u64 = 1 << 16;

/// Boxed read packets.
type Reads<'q, B> = Vec<Pin<Box<Packet<'q, FromDevice, B>>>>;

struct Row {
    ios: u64,
    ns_per_io: f64,
    allocs_per_io: f64,
    bounced: u64,
    notifies: u64,
}

/// Keeps `qd` reads in flight for `ios` completions (after a warm-up of the same length).
fn closed_loop<'q, B: BufFor<FromDevice>>(
    q: &'q BlkQueue<VirtioBlkModel>,
    qd: usize,
    ios: u64,
    mut make: impl FnMut() -> B,
) -> Row {
    let mut packets: Reads<'q, B> = (0..qd).map(|_| Box::pin(Packet::new(make()))).collect();
    let mut cx = Context::from_waker(Waker::noop());
    let mut next = 0u64;
    let mut run = |n: u64, packets: &mut Reads<'q, B>| {
        let mut done = 0u64;
        let mut issued = 0u64;
        for p in packets.iter_mut() {
            p.as_mut().submit(q, (next % SPAN_BLOCKS) * BLOCK as u64).expect("idle packet");
            next += 1;
            issued += 1;
        }
        while done < n {
            q.poll_backend(&mut cx);
            for p in packets.iter_mut() {
                if !p.is_idle() {
                    continue;
                }
                if let std::task::Poll::Ready(t) = p.poll_done(&mut cx) {
                    if t.error.is_some() {
                        panic!("read failed: {:?}", t.error);
                    }
                }
                done += 1;
                if issued < n {
                    p.as_mut().submit(q, (next % SPAN_BLOCKS) * BLOCK as u64).expect("idle");
                    next += 1;
                    issued += 1;
                } else if done >= n {
                    break;
                }
            }
        }
        // Drain what is still in flight.
        while packets.iter().any(|p| !p.is_idle()) {
            q.poll_backend(&mut cx);
        }
    };
    run(ios / 4, &mut packets);
    let stats0 = q.stats();
    let a0 = mfio::alloc_count::allocations();
    let t0 = Instant::now();
    run(ios, &mut packets);
    let elapsed = t0.elapsed();
    let allocs = mfio::alloc_count::allocations() - a0;
    let stats = q.stats();
    let completed = stats.completions - stats0.completions;
    Row {
        ios: completed,
        ns_per_io: elapsed.as_nanos() as f64 / completed as f64,
        allocs_per_io: allocs as f64 / completed as f64,
        bounced: stats.bounced - stats0.bounced,
        notifies: stats.notifies - stats0.notifies,
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let ios: u64 = if quick { 20_000 } else { 400_000 };
    println!("virtio-blk driver, model in null mode: 4 KiB reads, one queue ({ios} I/Os per row)");
    println!();
    println!("| ring | buffers | QD | IOPS | ns/IO | allocs/IO | notifies/IO | bounced |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let mut features = Vec::new();
    for ring in [RingLayout::Split, RingLayout::Packed] {
        let model = VirtioBlkModel::new(ModelOptions {
            null: true,
            capacity_sectors: (1 << 30) / 512,
            ..ModelOptions::default()
        });
        let opts = Options { bounce_slots: 128, ring: Some(ring), ..Options::default() };
        let dev = VirtioBlk::new(model, &opts).expect("bring-up on the model");
        features.push(format!("{ring:?}: {}", dev.feature_names()));
        let q = dev.queue(0).expect("queue 0");
        let space = dev.device().dma().clone();
        for qd in [1usize, 32, 128] {
            let r = closed_loop(&q, qd, ios, || space.alloc(BLOCK).expect("DMA buffer"));
            print_row(ring, "DMA (zero copy)", qd, &r);
        }
        for qd in [1usize, 32, 128] {
            let r = closed_loop(&q, qd, ios, || vec![0u8; BLOCK]);
            print_row(ring, "heap (bounced)", qd, &r);
        }
    }
    println!();
    for f in features {
        println!("features, {f}");
    }
}

fn print_row(ring: RingLayout, what: &str, qd: usize, r: &Row) {
    let ring = match ring {
        RingLayout::Split => "split",
        RingLayout::Packed => "packed",
    };
    println!(
        "| {ring} | {what} | {qd} | {:.0} | {:.0} | {:.3} | {:.3} | {} |",
        1e9 / r.ns_per_io,
        r.ns_per_io,
        r.allocs_per_io,
        r.notifies as f64 / r.ios as f64,
        r.bounced
    );
}
