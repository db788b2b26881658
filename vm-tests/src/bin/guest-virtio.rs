//! Guest test of the virtio-blk driver (`mfio-virtio`) on QEMU's virtio-blk-pci through VFIO.
//!
//! Run by `scripts/vm-tests.sh` in IOMMU and no-IOMMU mode. Opens `MFIO_VIRTIO_PCI`, brings
//! the driver up with every queue the device has, prints the negotiated features (in IOMMU
//! mode ACCESS_PLATFORM must be among them: QEMU then translates its DMA through the vIOMMU),
//! reads the image's marker in sector 0, runs the shared conformance suite, then GET_ID,
//! flush, write zeroes, discard, zero copy from DMA memory, and one queue per thread.
//!
//! It does all that once per virtqueue layout. `scripts/vm-run.sh` gives the device
//! `packed=on` unless told `--vblk-packed off`, and says which in `MFIO_VIRTIO_PACKED`: with
//! packed offered, the first pass must negotiate packed rings by default and the second forces
//! split (`Options::ring`) on the same device; without, the default must be split and a demand
//! for packed must be refused. Every step prints a line; any failure exits 1.
#![forbid(unsafe_code)]

use mfio::{BlockCommands, BlockDevice, ReadAt, WriteAt, Zeroes};
use mfio_conformance::{run_all, Config, Rng};
use mfio_pci::{CompletionMode, IommuMode, PciDevice, VfioPci};
use mfio_virtio::spec::feature;
use mfio_virtio::{BlkQueue, Options, RingLayout, VirtioBlk, VirtioError};
use std::process::ExitCode;
use std::sync::Arc;

use vm_tests::{ensure, zero_copy_round_trip, R};

fn main() -> ExitCode {
    vm_tests::run_main("guest-virtio", run)
}

fn run() -> R<()> {
    let addr = std::env::var("MFIO_VIRTIO_PCI").unwrap_or_else(|_| "0000:00:05.0".into());
    let offered = std::env::var("MFIO_VIRTIO_PACKED").map_or(true, |v| v != "off");
    println!("device offers RING_PACKED: {offered} (MFIO_VIRTIO_PACKED)");
    if offered {
        pass(&addr, None, RingLayout::Packed, true)?;
        pass(&addr, Some(RingLayout::Split), RingLayout::Split, false)?;
    } else {
        pass(&addr, None, RingLayout::Split, true)?;
        let pci = open(&addr)?;
        let opts = Options { ring: Some(RingLayout::Packed), ..Options::default() };
        match VirtioBlk::new(pci, &opts) {
            Err(VirtioError::MissingFeature { name: "RING_PACKED", .. }) => {
                println!("packed rings demanded of a device without them: refused, as it must be")
            }
            Err(e) => return Err(format!("demanding packed rings: {e}")),
            Ok(_) => return Err("packed rings demanded and granted without RING_PACKED".into()),
        }
    }
    Ok(())
}

fn open(addr: &str) -> R<VfioPci> {
    let pci = VfioPci::open_str(addr).map_err(|e| format!("open {addr}: {e}"))?;
    let mode = pci.mode();
    match std::env::var("MFIO_IOMMU_MODE").as_deref() {
        Ok("iommu") => ensure!(mode == IommuMode::Type1, "opened in {mode:?}, expected type1"),
        Ok("noiommu") => {
            ensure!(mode == IommuMode::NoIommu, "opened in {mode:?}, expected no-IOMMU")
        }
        _ => {}
    }
    Ok(pci)
}

/// One pass of every check with `ring` asked for and `want` expected; `first`: the image is
/// as vm-run.sh made it (its marker is still in sector 0).
fn pass(addr: &str, ring: Option<RingLayout>, want: RingLayout, first: bool) -> R<()> {
    println!("---- {want:?} virtqueues (Options::ring {ring:?}) ----");
    let pci = open(addr)?;
    let mode = pci.mode();
    let opts = Options { queues: 0, ring, ..Options::default() };
    let dev = Arc::new(VirtioBlk::new(pci, &opts).map_err(|e| format!("bring-up: {e}"))?);
    let info = dev.info().clone();
    println!(
        "{addr}: mode {mode:?}, {:?} rings, negotiated features {:#018x} [{}]",
        dev.ring_layout(),
        dev.features(),
        dev.feature_names()
    );
    println!(
        "{addr}: {} sectors, block {} B, seg_max {:?}, size_max {:?}, {} queue(s) set up, discard {} / write-zeroes {} sectors max",
        info.capacity_sectors,
        info.block_size,
        info.seg_max,
        info.size_max,
        dev.queue_count(),
        info.max_discard_sectors,
        info.max_write_zeroes_sectors
    );
    ensure!(dev.features() & feature::VERSION_1 != 0, "VERSION_1 not negotiated");
    if mode == IommuMode::Type1 {
        ensure!(
            dev.features() & feature::ACCESS_PLATFORM != 0,
            "ACCESS_PLATFORM not negotiated under an IOMMU"
        );
    }
    ensure!(
        dev.ring_layout() == want,
        "{:?} rings negotiated, {want:?} expected",
        dev.ring_layout()
    );
    let packed_bit = dev.features() & feature::RING_PACKED != 0;
    ensure!(
        packed_bit == (want == RingLayout::Packed),
        "RING_PACKED negotiated: {packed_bit}, with {want:?} rings"
    );

    let q = dev.queue(0).map_err(|e| e.to_string())?;
    ensure!(q.ring_layout() == want, "queue 0 runs {:?} rings", q.ring_layout());
    if first {
        // The conformance suite writes over it afterwards.
        let mut lba0 = vec![0u8; info.block_size as usize];
        q.read_all_blocking(0, &mut lba0).map_err(|e| format!("read of sector 0: {e}"))?;
        let marker = b"MFIO-VM VBLK LBA0";
        ensure!(
            lba0.starts_with(marker),
            "sector 0 starts {:?}, not the image's marker",
            String::from_utf8_lossy(&lba0[..marker.len()])
        );
        println!("sector 0: {:?}", String::from_utf8_lossy(marker));
    }
    let id = q.get_id_blocking().map_err(|e| format!("GET_ID: {e}"))?;
    let id = String::from_utf8_lossy(&id).trim_end_matches('\0').to_string();
    println!("GET_ID: {id:?}");

    let cfg =
        Config { rounds: 60, area: 8 << 20, wrap_ios: 400, queue_depth: 48, ..Config::default() };
    let label =
        format!("virtio-blk-{}", if want == RingLayout::Packed { "packed" } else { "split" });
    let failed: Vec<_> = run_all(&q, &cfg, &label)
        .into_iter()
        .filter_map(|o| o.result.err().map(|e| (o.name, e)))
        .collect();
    ensure!(failed.is_empty(), "conformance: {failed:?}");
    let s = q.stats();
    println!("queue 0 stats: {s:?}");
    ensure!(s.unknown_completions == 0, "unknown completions from a healthy device");
    ensure!(
        s.notifies < s.requests,
        "no batching: {} notifies for {} requests",
        s.notifies,
        s.requests
    );

    extra_requests(&q)?;
    zero_copy(&dev, &q)?;
    drop(q);
    threads(&dev)?;
    drop(dev);

    // Once more with MSI-X: every queue gets its vector at bring-up.
    let opts = Options { queues: 0, ring, completion: CompletionMode::Interrupt, ..opts };
    let dev = Arc::new(VirtioBlk::new(open(addr)?, &opts).map_err(|e| format!("bring-up: {e}"))?);
    completion_modes(&dev, &label)?;
    threads(&dev)?;
    Ok(())
}

/// The conformance suite and QD1 reads on queue 0 in each interrupt-driven mode: QEMU raises
/// the queue's MSI-X vector through VFIO when its used buffer notifications are on.
fn completion_modes<D: PciDevice>(dev: &VirtioBlk<D>, label: &str) -> R<()> {
    let cfg =
        Config { rounds: 20, area: 4 << 20, wrap_ios: 100, queue_depth: 32, ..Config::default() };
    for mode in [CompletionMode::Interrupt, CompletionMode::ADAPTIVE] {
        let q = dev.queue_with(0, mode).map_err(|e| format!("{mode} queue: {e}"))?;
        ensure!(mfio::IoBackend::polling_handle(&q).is_some(), "{mode}: no polling handle");
        let failed: Vec<_> = run_all(&q, &cfg, &format!("{label}-{mode}"))
            .into_iter()
            .filter_map(|o| o.result.err().map(|e| (o.name, e)))
            .collect();
        ensure!(failed.is_empty(), "conformance in {mode} mode: {failed:?}");
        let mut buf = vec![0u8; 4096];
        for i in 0..200u64 {
            q.read_all_blocking(i * 4096, &mut buf).map_err(|e| format!("{mode} read: {e}"))?;
        }
        let w = q.stats().wakeup;
        println!("{mode}: conformance ok, {w:?}");
        ensure!(!w.fell_back, "{mode}: the queue's interrupts did not come: {w:?}");
        // Interrupt mode sleeps on every QD1 read; adaptive only when a request outlasts its
        // window, which depends on how fast this guest runs (the models show it does, with a
        // latency they control: the drivers' interrupts tests), so here it is reported.
        if mode == CompletionMode::Interrupt {
            ensure!(w.armed > 0 && w.interrupts > 0, "{mode}: never slept on its vector: {w:?}");
        }
        if mode == CompletionMode::Interrupt {
            ensure!(w.interrupts >= 200, "{mode}: QD1 reads not woken by interrupts: {w:?}");
        }
    }
    Ok(())
}

fn extra_requests<D: PciDevice>(q: &BlkQueue<D>) -> R<()> {
    let caps = q.capabilities();
    mfio_conformance::check_commands(q, 1 << 20)
        .map_err(|e| format!("commands ({caps:?}): {e}"))?;
    println!("block commands: ok ({caps:?})");
    let bs = q.block_size() as usize;
    let pos = 64 * bs as u64;
    let data = Rng::new(7).bytes(8 * bs);
    q.write_all_blocking(pos, &data).map_err(|e| format!("write: {e}"))?;
    q.flush_blocking().map_err(|e| format!("flush: {e}"))?;
    match q.write_zeroes_blocking(pos + bs as u64, 2 * bs as u64, Zeroes::Allocate) {
        Ok(()) => {
            let mut back = vec![0xffu8; 8 * bs];
            q.read_all_blocking(pos, &mut back).map_err(|e| format!("read: {e}"))?;
            ensure!(back[..bs] == data[..bs], "write zeroes touched the block before its range");
            ensure!(back[bs..3 * bs].iter().all(|&b| b == 0), "write zeroes left data");
            ensure!(
                back[3 * bs..] == data[3 * bs..],
                "write zeroes touched blocks after its range"
            );
            println!("flush, write zeroes: ok");
        }
        Err(e) if e.kind() == mfio::ErrorKind::Unsupported => {
            println!("flush: ok; write zeroes: not offered by the device")
        }
        Err(e) => return Err(format!("write zeroes: {e}")),
    }
    match q.discard_blocking(pos + 4 * bs as u64, 4 * bs as u64) {
        Ok(()) => println!("discard: ok"),
        Err(e) if e.kind() == mfio::ErrorKind::Unsupported => println!("discard: not offered"),
        Err(e) => return Err(format!("discard: {e}")),
    }
    let e = q.discard_blocking(q.capacity(), bs as u64).err();
    ensure!(
        e.is_some_and(
            |e| e.kind() == mfio::ErrorKind::OutOfRange || e.kind() == mfio::ErrorKind::Unsupported
        ),
        "discard past the end: {e:?}"
    );
    Ok(())
}

fn zero_copy<D: PciDevice>(dev: &VirtioBlk<D>, q: &BlkQueue<D>) -> R<()> {
    zero_copy_round_trip(q, dev.device().dma(), |q| q.stats().bounced)?;
    println!("zero copy: 256 KiB written and read from DMA memory without bouncing");
    Ok(())
}

fn threads<D: PciDevice + Send + Sync + 'static>(dev: &Arc<VirtioBlk<D>>) -> R<()> {
    let n = dev.queue_count();
    let handles: Vec<_> = (0..n)
        .map(|t| {
            let dev = dev.clone();
            std::thread::spawn(move || -> R<()> {
                let q = dev.queue(t).map_err(|e| e.to_string())?;
                let bs = q.block_size() as u64;
                let base = (16 << 20) + u64::from(t) * (1 << 20);
                let mut rng = Rng::new(100 + u64::from(t));
                for i in 0..32u64 {
                    let data = rng.bytes(4 * bs as usize);
                    q.write_all_blocking(base + i * 4 * bs, &data)
                        .map_err(|e| format!("thread {t}: {e}"))?;
                    let mut back = vec![0u8; data.len()];
                    q.read_all_blocking(base + i * 4 * bs, &mut back)
                        .map_err(|e| format!("thread {t}: {e}"))?;
                    ensure!(back == data, "thread {t}: block {i} differs");
                }
                Ok(())
            })
        })
        .collect();
    for (t, h) in handles.into_iter().enumerate() {
        h.join().map_err(|_| format!("thread {t} panicked"))??;
    }
    println!("{n} queue(s) on {n} thread(s): ok");
    Ok(())
}
