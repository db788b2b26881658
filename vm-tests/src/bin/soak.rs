//! Soak: random mixed reads and writes of random sizes, verified, on QEMU's NVMe and virtio-blk
//! through VFIO, from several threads with a queue each, for a set time.
//!
//! `soak [SECONDS]` (default 60), run by `scripts/soak.sh`. Each thread owns a slice of each
//! device and keeps, per block, the generation it last wrote there; every block it writes
//! carries its LBA, that generation and the writer's id, followed by bytes derived from all
//! three, so a read can tell a block from the wrong place, a lost or torn write and stale data
//! apart. Up to [`DEPTH`] non-overlapping I/Os are in flight per queue. At the end: the counts,
//! the mismatches (must be 0), and the process's resident memory at the start of the run and at
//! the end (must not grow by more than [`RSS_SLACK`]).
#![forbid(unsafe_code)]

use futures::future::join_all;
use mfio::{block_on, BlockDevice, ReadAt, WriteAt};
use mfio_conformance::Rng;
use mfio_nvme::{Controller, ControllerOptions};
use mfio_pci::VfioPci;
use mfio_virtio::{Options, VirtioBlk};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_tests::{ensure, R};

/// Threads (one queue each) per device.
const THREADS: u16 = 2;
/// I/Os in flight per queue.
const DEPTH: usize = 16;
/// Largest I/O, in blocks.
const MAX_BLOCKS: u64 = 64;
/// Bytes of each device the soak uses (from 0).
const AREA: u64 = 64 << 20;
/// How far resident memory may grow between the first tenth of the run and its end.
const RSS_SLACK: u64 = 8 << 20;

fn main() -> ExitCode {
    vm_tests::run_main("soak", run)
}

/// What one thread did.
#[derive(Default, Debug, Clone, Copy)]
struct Counts {
    reads: u64,
    writes: u64,
    bytes: u64,
    blocks_checked: u64,
    mismatches: u64,
    errors: u64,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.reads += o.reads;
        self.writes += o.writes;
        self.bytes += o.bytes;
        self.blocks_checked += o.blocks_checked;
        self.mismatches += o.mismatches;
        self.errors += o.errors;
    }
}

fn run() -> R<()> {
    let secs: u64 = match std::env::args().nth(1) {
        Some(s) => s.parse().map_err(|_| format!("soak SECONDS: not a number of seconds: {s}"))?,
        None => 60,
    };
    ensure!(secs > 0, "soak SECONDS: give at least 1");
    // The check must see what it is for: a misplaced, a stale and a corrupted block.
    let mut b = vec![0u8; 512];
    fill(&mut b, 7, 3, 1);
    ensure!(check(&b, 7, 3, 1).is_ok(), "a block as written fails its check");
    ensure!(
        check(&b, 8, 3, 1).is_err() && check(&b, 7, 4, 1).is_err(),
        "misplaced or stale passes"
    );
    b[300] ^= 1;
    ensure!(check(&b, 7, 3, 1).is_err(), "a corrupted block passes its check");
    let nvme = std::env::var("MFIO_NVME_PCI").map_err(|_| "MFIO_NVME_PCI is not set")?;
    let virtio = std::env::var("MFIO_VIRTIO_PCI").map_err(|_| "MFIO_VIRTIO_PCI is not set")?;
    let pci = VfioPci::open_str(&nvme).map_err(|e| format!("open {nvme}: {e}"))?;
    let opts = ControllerOptions { io_queues: THREADS, ..ControllerOptions::default() };
    let ctrl = Controller::new(pci, opts).map_err(|e| format!("NVMe bring-up: {e}"))?;
    let pci = VfioPci::open_str(&virtio).map_err(|e| format!("open {virtio}: {e}"))?;
    let opts = Options { queues: THREADS, ..Options::default() };
    let vblk = Arc::new(VirtioBlk::new(pci, &opts).map_err(|e| format!("virtio bring-up: {e}"))?);
    let vq = vblk.queue_count().min(THREADS);
    println!("soak: {secs} s; nvme {THREADS} queue(s), virtio {vq} queue(s); up to {DEPTH} I/Os in flight each, 1 to {MAX_BLOCKS} blocks");

    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for t in 0..THREADS {
        let (ctrl, stop) = (ctrl.clone(), stop.clone());
        handles.push(std::thread::spawn(move || -> R<Counts> {
            let q = ctrl.io_queue(1).map_err(|e| format!("nvme queue: {e}"))?;
            soak(&q, &format!("nvme/{t}"), t, THREADS, &stop)
        }));
    }
    for t in 0..vq {
        let (vblk, stop) = (vblk.clone(), stop.clone());
        handles.push(std::thread::spawn(move || -> R<Counts> {
            let q = vblk.queue(t).map_err(|e| format!("virtio queue: {e}"))?;
            soak(&q, &format!("virtio/{t}"), t, vq, &stop)
        }));
    }
    std::thread::sleep(Duration::from_secs(secs).div_f64(10.0));
    let rss_start = rss()?;
    std::thread::sleep(Duration::from_secs(secs).mul_f64(0.9));
    let rss_end = rss()?;
    stop.store(true, Ordering::Relaxed);
    let mut total = Counts::default();
    let mut failed = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(c)) => total.add(c),
            Ok(Err(e)) => failed.push(e),
            Err(_) => failed.push("a soak thread panicked".into()),
        }
    }
    let took = t0.elapsed().as_secs_f64();
    println!(
        "soak: {} reads, {} writes, {} MiB in {took:.1} s ({:.0} IOPS); {} blocks verified, {} mismatches, {} errors; RSS {} KiB after a tenth of the run, {} KiB at its end",
        total.reads,
        total.writes,
        total.bytes >> 20,
        (total.reads + total.writes) as f64 / took,
        total.blocks_checked,
        total.mismatches,
        total.errors,
        rss_start >> 10,
        rss_end >> 10
    );
    ensure!(failed.is_empty(), "{failed:?}");
    ensure!(total.mismatches == 0 && total.errors == 0, "mismatches or errors (above)");
    ensure!(total.blocks_checked > 0, "nothing was verified");
    ensure!(
        rss_end <= rss_start + RSS_SLACK,
        "resident memory grew by {} KiB during the run",
        (rss_end - rss_start) >> 10
    );
    Ok(())
}

/// Resident memory of this process, in bytes.
fn rss() -> R<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").map_err(|e| format!("statm: {e}"))?;
    let pages: u64 = s.split_whitespace().nth(1).and_then(|p| p.parse().ok()).ok_or("statm")?;
    Ok(pages * 4096)
}

/// One I/O of a round.
enum Op {
    Read(u64, u64),
    Write(u64, u64),
}

/// Random rounds of up to DEPTH non-overlapping I/Os on this thread's slice, each round in
/// flight at once, until `stop`.
fn soak<Q: ReadAt + WriteAt + BlockDevice>(
    q: &Q,
    label: &str,
    t: u16,
    of: u16,
    stop: &AtomicBool,
) -> R<Counts> {
    let bs = q.block_size() as u64;
    let blocks = AREA.min(q.capacity()) / bs / u64::from(of);
    let first = blocks * u64::from(t);
    // The generation last written to each block of the slice (0: never by us).
    let mut gens = vec![0u32; blocks as usize];
    let mut gen = 0u32;
    let mut rng = Rng::new(0x50a6 ^ (u64::from(t) << 8) ^ label.len() as u64);
    let mut c = Counts::default();
    while !stop.load(Ordering::Relaxed) {
        let mut ops: Vec<Op> = Vec::new();
        let mut taken: Vec<(u64, u64)> = Vec::new();
        for _ in 0..DEPTH {
            let n = 1 + rng.below(MAX_BLOCKS);
            let at = rng.below(blocks - n + 1);
            if taken.iter().any(|&(a, m)| at < a + m && a < at + n) {
                continue;
            }
            taken.push((at, n));
            ops.push(if rng.below(2) == 0 { Op::Read(at, n) } else { Op::Write(at, n) });
        }
        gen += 1;
        let writes = ops.iter().filter_map(|op| match *op {
            Op::Write(at, n) => Some((at, n)),
            Op::Read(..) => None,
        });
        let wfuts: Vec<_> = writes
            .clone()
            .map(|(at, n)| {
                let mut buf = vec![0u8; (n * bs) as usize];
                for (i, b) in buf.chunks_mut(bs as usize).enumerate() {
                    fill(b, first + at + i as u64, gen, t);
                }
                q.write_all((first + at) * bs, buf)
            })
            .collect();
        let rfuts: Vec<_> = ops
            .iter()
            .filter_map(|op| match *op {
                Op::Read(at, n) => {
                    Some((at, q.read_all((first + at) * bs, vec![0u8; (n * bs) as usize])))
                }
                Op::Write(..) => None,
            })
            .map(|(at, f)| async move { (at, f.await) })
            .collect();
        let (wres, rres) = block_on(q, futures::future::join(join_all(wfuts), join_all(rfuts)));
        for ((at, n), (r, _)) in writes.zip(wres) {
            c.writes += 1;
            c.bytes += n * bs;
            match r {
                Ok(()) => gens[at as usize..(at + n) as usize].fill(gen),
                Err(e) => {
                    c.errors += 1;
                    println!("{label}: write of {n} blocks at {}: {e}", first + at);
                }
            }
        }
        for (at, (r, buf)) in rres {
            c.reads += 1;
            c.bytes += buf.len() as u64;
            if let Err(e) = r {
                c.errors += 1;
                println!("{label}: read of {} bytes at block {}: {e}", buf.len(), first + at);
                continue;
            }
            for (i, b) in buf.chunks(bs as usize).enumerate() {
                let g = gens[at as usize + i];
                if g == 0 {
                    continue;
                }
                c.blocks_checked += 1;
                let lba = first + at + i as u64;
                if let Err(why) = check(b, lba, g, t) {
                    c.mismatches += 1;
                    if c.mismatches <= 5 {
                        println!("{label}: block {lba}: {why}");
                    }
                }
            }
        }
    }
    println!("{label}: {c:?}");
    Ok(c)
}

/// A block as written: LBA, generation and writer, then bytes derived from them.
fn fill(b: &mut [u8], lba: u64, gen: u32, t: u16) {
    b[..8].copy_from_slice(&lba.to_le_bytes());
    b[8..12].copy_from_slice(&gen.to_le_bytes());
    b[12..14].copy_from_slice(&t.to_le_bytes());
    let mut x = lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(gen) << 20 ^ u64::from(t);
    for chunk in b[16..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

/// Says what is wrong with a block read where `lba` of generation `gen` should be.
fn check(b: &[u8], lba: u64, gen: u32, t: u16) -> Result<(), String> {
    let mut want = vec![0u8; b.len()];
    fill(&mut want, lba, gen, t);
    if b == want {
        return Ok(());
    }
    let got_lba = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
    let got_gen = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    Err(if got_lba != lba {
        format!("holds block {got_lba} (generation {got_gen}): misplaced")
    } else if got_gen != gen {
        format!("holds generation {got_gen}, not {gen}: a lost or stale write")
    } else {
        "header right, data wrong: a torn or corrupted write".into()
    })
}
