//! The driver against the strict model, on split and packed virtqueues alike: error injection
//! and partial success, batching and notification suppression, backpressure, zero copy, the
//! other request types, a device that needs a reset, dropping a queue with requests in
//! flight, stray completions, several queues on several threads. (Packed-only cases are in
//! `packed.rs`, the model's own strictness in `model_strict.rs`.)

use futures::future::join_all;
use mfio::{
    block_on, BlockCommands, ErrorKind, FromDevice, IoBackend, Packet, ReadAt, Window, WriteAt,
    Zeroes,
};
use mfio_pci::PciDevice;
use mfio_virtio::model::{ModelOptions, VirtioBlkModel};
use mfio_virtio::spec::{blk, feature, status};
use mfio_virtio::{BlkQueue, Options, RingLayout, VirtioBlk, VirtioError};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};

/// Boxed read packets.
type Reads<'q> = Pin<Box<Packet<'q, FromDevice, Vec<u8>>>>;

/// Both layouts, forced through `Options::ring` on a model that offers both.
const LAYOUTS: [RingLayout; 2] = [RingLayout::Split, RingLayout::Packed];

fn up(model: ModelOptions, opts: Options) -> (VirtioBlkModel, VirtioBlk<VirtioBlkModel>) {
    let m = VirtioBlkModel::new(model);
    let dev = VirtioBlk::new(m.clone(), &opts).expect("bring-up");
    if let Some(ring) = opts.ring {
        assert_eq!(dev.ring_layout(), ring);
    }
    (m, dev)
}

/// `opts` on the `ring` layout.
fn on(ring: RingLayout, opts: Options) -> Options {
    Options { ring: Some(ring), ..opts }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn poll(q: &BlkQueue<VirtioBlkModel>) {
    q.poll_backend(&mut Context::from_waker(Waker::noop()));
}

#[test]
fn bring_up_negotiates_what_both_sides_support() {
    let (m, dev) = up(ModelOptions::default(), Options::default());
    let f = dev.features();
    assert_eq!(dev.ring_layout(), RingLayout::Packed, "packed whenever offered");
    for bit in [
        feature::RING_PACKED,
        feature::VERSION_1,
        feature::ACCESS_PLATFORM,
        feature::INDIRECT_DESC,
        feature::EVENT_IDX,
        feature::BLK_FLUSH,
        feature::BLK_SEG_MAX,
        feature::BLK_SIZE_MAX,
        feature::BLK_DISCARD,
        feature::BLK_WRITE_ZEROES,
    ] {
        assert!(f & bit != 0, "{bit:#x} not negotiated: {}", dev.feature_names());
    }
    assert_eq!(m.driver_features(), f);
    let want = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
    assert_eq!(m.status(), want);
    assert_eq!(m.resets(), 1, "reset once before the handshake");
    assert_eq!(dev.info().capacity_sectors, (40 << 20) / 512);
    assert_eq!(dev.queue_count(), 1);
    let q = dev.queue(0).unwrap();
    assert!(matches!(dev.queue(0), Err(VirtioError::QueueInUse { index: 0 })));
    assert!(matches!(dev.queue(5), Err(VirtioError::NoSuchQueue { index: 5, count: 1 })));
    drop(q);
    let _again = dev.queue(0).expect("a dropped queue goes back");
    drop(_again);
    drop(dev);
    assert_eq!(m.status(), 0, "closing the device resets it");

    // Refused features are not negotiated; VERSION_1 and ACCESS_PLATFORM cannot be refused.
    let (_, dev) = up(
        ModelOptions::default(),
        Options {
            refuse_features: feature::EVENT_IDX | feature::VERSION_1 | feature::ACCESS_PLATFORM,
            ..Default::default()
        },
    );
    assert_eq!(dev.features() & feature::EVENT_IDX, 0);
    assert_ne!(dev.features() & feature::VERSION_1, 0);
    assert_ne!(dev.features() & feature::ACCESS_PLATFORM, 0);

    // The layout: forced split on a device that offers packed; split on one that does not;
    // packed demanded of one that does not is refused with advice.
    let (m, dev) = up(ModelOptions::default(), on(RingLayout::Split, Options::default()));
    assert_eq!(dev.features() & feature::RING_PACKED, 0);
    assert_eq!(m.driver_features() & feature::RING_PACKED, 0);
    let q = dev.queue(0).unwrap();
    assert_eq!(q.ring_layout(), RingLayout::Split);
    drop(q);
    let (_, dev) = up(ModelOptions::split_only(), Options::default());
    assert_eq!(dev.ring_layout(), RingLayout::Split);
    let refuse = Options { refuse_features: feature::RING_PACKED, ..Default::default() };
    let (_, dev) = up(ModelOptions::default(), refuse.clone());
    assert_eq!(dev.ring_layout(), RingLayout::Split, "refusing the bit means split");
    let (_, dev) = up(ModelOptions::default(), on(RingLayout::Packed, refuse));
    assert_eq!(dev.ring_layout(), RingLayout::Packed, "ring wins over refuse_features");
    let m = VirtioBlkModel::new(ModelOptions::split_only());
    let e = VirtioBlk::new(m.clone(), &on(RingLayout::Packed, Options::default())).err();
    let e = e.expect("no RING_PACKED offered");
    assert!(matches!(e, VirtioError::MissingFeature { name: "RING_PACKED", .. }), "{e}");
    assert!(e.to_string().contains("packed=on"), "{e}");
    assert_eq!(m.status(), 0, "left reset");
}

#[test]
fn a_legacy_only_device_is_refused_with_advice() {
    let m = VirtioBlkModel::new(ModelOptions {
        features: feature::BLK_FLUSH | feature::INDIRECT_DESC,
        ..Default::default()
    });
    let e = VirtioBlk::new(m.clone(), &Options::default()).err().expect("no VERSION_1");
    assert!(matches!(e, VirtioError::MissingFeature { name: "VERSION_1", .. }), "{e}");
    assert!(e.to_string().contains("virtio 1.x"));
    assert_eq!(m.status(), 0, "left reset");
}

#[test]
fn ioerr_on_one_sector_fails_that_segment_only() {
    for ring in LAYOUTS {
        ioerr_on_one_sector(ring);
    }
}

fn ioerr_on_one_sector(ring: RingLayout) {
    // 8 KiB requests: a 64 KiB read is 8 requests; sector 20 lies in the third.
    let opts = Options { max_transfer: 8 << 10, ..Default::default() };
    let (m, dev) = up(ModelOptions::default(), on(ring, opts));
    let q = dev.queue(0).unwrap();
    let data = pattern(64 << 10, 3);
    q.write_all_blocking(0, &data).unwrap();
    m.inject_io_error(20..21);
    let mut back = vec![0u8; 64 << 10];
    let e = q.read_all_blocking(0, &mut back).unwrap_err();
    assert_eq!(e.done, 16 * 512, "the good prefix ends where the failing request starts");
    assert_eq!(e.error.kind(), ErrorKind::Device);
    assert_eq!(e.error.origin(), mfio::Origin::Virtio);
    assert_eq!(e.error.status(), u16::from(blk::S_IOERR));
    assert_eq!(back[..16 * 512], data[..16 * 512]);
    assert!(back[16 * 512..32 * 512].iter().all(|&b| b == 0), "the failed piece was not filled");
    assert_eq!(back[32 * 512..], data[32 * 512..], "the pieces after the error succeeded");
    // A write over it fails too; elsewhere all is well.
    assert!(q.write_all_blocking(10 * 512, &data[..8192]).is_err());
    m.clear_injections();
    q.read_all_blocking(0, &mut back).unwrap();
    assert_eq!(back, data);
}

#[test]
fn unsupp_maps_to_unsupported() {
    for ring in LAYOUTS {
        let (m, dev) = up(ModelOptions::default(), on(ring, Options::default()));
        let q = dev.queue(0).unwrap();
        m.inject_unsupported(blk::T_FLUSH);
        let e = q.flush_blocking().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert_eq!(e.status(), u16::from(blk::S_UNSUPP));
        m.inject_unsupported(blk::T_IN);
        let e = q.read_all_blocking(0, &mut [0u8; 512]).unwrap_err();
        assert_eq!((e.done, e.error.kind()), (0, ErrorKind::Unsupported));
        m.clear_injections();
        q.flush_blocking().unwrap();
    }
}

#[test]
fn one_notify_per_batch() {
    for (ring, refuse) in
        LAYOUTS.into_iter().flat_map(|r| [(r, 0), (r, feature::EVENT_IDX | feature::INDIRECT_DESC)])
    {
        // Enough bounce buffers for all 32 (heap memory bounces).
        let opts = Options { refuse_features: refuse, bounce_slots: 32, ..Default::default() };
        let (m, dev) = up(ModelOptions::default(), on(ring, opts));
        let q = dev.queue(0).unwrap();
        let before = m.notifies();
        let reads = (0..32u64).map(|i| q.read_all(i * 4096, vec![0u8; 4096]));
        for (r, _) in block_on(&q, join_all(reads)) {
            r.unwrap();
        }
        assert_eq!(m.notifies() - before, 1, "32 reads in one poll round: one notify");
        let s = q.stats();
        assert_eq!((s.requests, s.completions, s.notifies), (32, 32, 1));
        let (_, indirect) = m.requests();
        assert_eq!(indirect, if refuse == 0 { 32 } else { 0 });
    }
}

#[test]
fn event_idx_suppresses_notifies_while_the_device_is_busy() {
    let cases = LAYOUTS.into_iter().flat_map(|r| [(r, 0, 0), (r, feature::EVENT_IDX, 1)]);
    for (ring, refuse, second_batch_notifies) in cases {
        let opts = Options { refuse_features: refuse, ..Default::default() };
        let (m, dev) = up(ModelOptions::default(), on(ring, opts));
        let q = dev.queue(0).unwrap();
        m.set_hold(true);
        let mut a = Box::pin(Packet::<FromDevice, _>::new(vec![0u8; 4096]));
        let mut b = Box::pin(Packet::<FromDevice, _>::new(vec![0u8; 4096]));
        a.as_mut().submit(&q, 0).unwrap();
        poll(&q);
        assert_eq!(m.notifies(), 1);
        b.as_mut().submit(&q, 4096).unwrap();
        poll(&q);
        assert_eq!(m.notifies(), 1 + second_batch_notifies, "{ring:?}, refused {refuse:#x}");
        assert_eq!(q.stats().suppressed_notifies, 1 - second_batch_notifies);
        m.set_hold(false);
        m.release();
        poll(&q);
        assert!(a.is_idle() && b.is_idle());
        assert_eq!(q.in_flight(), 0);
    }
}

#[test]
fn backpressure_keeps_requests_until_descriptors_free_up() {
    for ring in LAYOUTS {
        backpressure(ring);
    }
}

fn backpressure(ring: RingLayout) {
    let (m, dev) = up(
        ModelOptions { queue_size_max: 8, ..Default::default() },
        on(ring, Options { refuse_features: feature::INDIRECT_DESC, ..Default::default() }),
    );
    let q = dev.queue(0).unwrap();
    let data = pattern(64 * 4096, 9);
    q.write_all_blocking(0, &data).unwrap();
    m.set_hold(true);
    let mut packets: Vec<Reads<'_>> =
        (0..64).map(|_| Box::pin(Packet::new(vec![0u8; 4096]))).collect();
    for (i, p) in packets.iter_mut().enumerate() {
        p.as_mut().submit(&q, i as u64 * 4096).unwrap();
    }
    poll(&q);
    // 8 descriptors, 3 per request: two requests fit; the rest wait, none failed.
    assert_eq!(q.in_flight(), 6, "descriptors in use");
    assert!(packets.iter().all(|p| !p.is_idle()));
    m.set_hold(false);
    for _ in 0..200 {
        m.release();
        poll(&q);
    }
    for (i, p) in packets.iter_mut().enumerate() {
        assert!(p.is_idle(), "request {i} still pending");
        let buf = p.as_mut().take_buf().unwrap();
        assert_eq!(buf[..], data[i * 4096..(i + 1) * 4096], "request {i}");
    }
}

#[test]
fn dma_memory_is_zero_copy_and_other_memory_bounces() {
    for ring in LAYOUTS {
        zero_copy_and_bounces(ring);
    }
}

fn zero_copy_and_bounces(ring: RingLayout) {
    let (m, dev) = up(ModelOptions::default(), on(ring, Options::default()));
    let q = dev.queue(0).unwrap();
    let len = 256 << 10;
    let buf = dev.device().dma().alloc(len).unwrap();
    let data = pattern(len, 5);
    buf.mem().copy_from_slice(0, &data);
    let (r, w) = block_on(&q, q.write_all(1 << 20, Window::new(buf, 0, len).unwrap()));
    r.unwrap();
    assert_eq!(q.stats().bounced, 0);
    let mut on_disk = vec![0u8; len];
    m.read_disk(1 << 20, &mut on_disk);
    assert_eq!(on_disk, data);
    let buf = w.into_inner();
    buf.mem().zero();
    let (r, w) = block_on(&q, q.read_all(1 << 20, Window::new(buf, 0, len).unwrap()));
    r.unwrap();
    let mut back = vec![0u8; len];
    w.get_ref().mem().copy_to_slice(0, &mut back);
    assert_eq!(back, data);
    assert_eq!(q.stats().bounced, 0, "DMA memory never bounces");
    // 256 KiB at 64 KiB SIZE_MAX: 4 segments of one request each way.
    assert_eq!(q.stats().requests, 2);
    let mut heap = vec![0u8; 8192];
    q.read_all_blocking(1 << 20, &mut heap).unwrap();
    assert_eq!(heap[..], data[..8192]);
    assert_eq!(q.stats().bounced, 1, "heap memory bounces");
    assert_eq!(m.mapper().fault_count(), 0);
}

#[test]
fn block_commands_conform_with_and_without_the_features() {
    for ring in LAYOUTS {
        for refuse in [0, feature::BLK_DISCARD | feature::BLK_WRITE_ZEROES | feature::BLK_FLUSH] {
            let opts = Options { refuse_features: refuse, ..Default::default() };
            let (_m, dev) = up(ModelOptions::default(), on(ring, opts));
            let q = dev.queue(0).unwrap();
            let caps = q.capabilities();
            assert_eq!(caps.discard, refuse == 0, "{caps:?}");
            assert!(!caps.fua, "virtio-blk has no FUA");
            mfio_conformance::check_commands(&q, 4 << 20).unwrap();
        }
    }
}

#[test]
fn flush_get_id_discard_write_zeroes() {
    for ring in LAYOUTS {
        other_requests(ring);
    }
}

fn other_requests(ring: RingLayout) {
    let (m, dev) = up(ModelOptions::default(), on(ring, Options::default()));
    let q = dev.queue(0).unwrap();
    q.flush_blocking().unwrap();
    let id = q.get_id_blocking().unwrap();
    assert_eq!(&id[..10], b"mfio-model");
    let data = pattern(12 << 20, 1);
    q.write_all_blocking(0, &data).unwrap();
    q.write_zeroes_blocking(4096, 8192, Zeroes::MayUnmap).unwrap();
    let (before, _) = m.requests();
    // 10 MiB at 4 MiB per request: three requests, one result.
    q.discard_blocking(1 << 20, 10 << 20).unwrap();
    assert_eq!(m.requests().0 - before, 3);
    let mut back = vec![0u8; 12 << 20];
    q.read_all_blocking(0, &mut back).unwrap();
    assert_eq!(back[..4096], data[..4096]);
    assert!(back[4096..12288].iter().all(|&b| b == 0));
    assert_eq!(back[12288..1 << 20], data[12288..1 << 20]);
    assert!(back[1 << 20..11 << 20].iter().all(|&b| b == 0));
    assert_eq!(back[11 << 20..], data[11 << 20..]);
    // Bad ranges are typed errors before anything reaches the device.
    let cap = mfio::BlockDevice::capacity(&q);
    assert_eq!(q.discard_blocking(1, 512).unwrap_err().kind(), ErrorKind::Misaligned);
    assert_eq!(q.discard_blocking(cap, 512).unwrap_err().kind(), ErrorKind::OutOfRange);
    assert_eq!(
        q.write_zeroes_blocking(u64::MAX - 511, 512, Zeroes::Allocate).unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
    q.discard_blocking(0, 0).unwrap();
    // An injected failure of one piece fails the whole discard.
    m.inject_io_error(9000..9001);
    assert_eq!(q.discard_blocking(0, 8 << 20).unwrap_err().kind(), ErrorKind::Device);

    // Without the features: Unsupported, nothing sent.
    let refuse = feature::BLK_DISCARD | feature::BLK_WRITE_ZEROES;
    let opts = Options { refuse_features: refuse, ..Default::default() };
    let (_, dev) = up(ModelOptions::default(), on(ring, opts));
    let q = dev.queue(0).unwrap();
    assert_eq!(q.discard_blocking(0, 512).unwrap_err().kind(), ErrorKind::Unsupported);
    assert_eq!(
        q.write_zeroes_blocking(0, 512, Zeroes::Allocate).unwrap_err().kind(),
        ErrorKind::Unsupported
    );
}

#[test]
fn needs_reset_fails_everything_with_fatal_and_resets() {
    for ring in LAYOUTS {
        needs_reset(ring);
    }
}

fn needs_reset(ring: RingLayout) {
    let (m, dev) =
        up(ModelOptions::default(), on(ring, Options { queues: 2, ..Default::default() }));
    let q0 = dev.queue(0).unwrap();
    let q1 = dev.queue(1).unwrap();
    q0.write_all_blocking(0, &[7u8; 4096]).unwrap();
    let resets = m.resets();
    m.inject_needs_reset();
    let e = q0.read_all_blocking(0, &mut [0u8; 4096]).unwrap_err();
    assert_eq!((e.done, e.error.kind()), (0, ErrorKind::Fatal));
    assert_eq!(m.resets(), resets + 1, "the driver reset the device before failing the I/O");
    assert_eq!(m.status(), 0);
    assert!(q0.stats().status_checks >= 1);
    // The other queue and new requests fail at once; no queue is handed out any more.
    let e = q1.write_all_blocking(0, &[1u8; 512]).unwrap_err();
    assert_eq!(e.error.kind(), ErrorKind::Fatal);
    drop(q0);
    assert!(matches!(dev.queue(0), Err(VirtioError::Broken { .. })));
}

#[test]
fn dropping_a_queue_with_requests_in_flight_resets_the_device_first() {
    for ring in LAYOUTS {
        drop_in_flight(ring);
    }
}

fn drop_in_flight(ring: RingLayout) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let sink = Arc::new(move |off, _len, r| log.lock().unwrap().push((off, r)));
    let (m, dev) = up(ModelOptions::default(), on(ring, Options::default()));
    let q = dev.queue(0).unwrap();
    m.set_hold(true);
    let mut p = Box::pin(Packet::<FromDevice, _>::new(vec![0u8; 4096]).with_sink(sink));
    p.as_mut().submit(&q, 0).unwrap();
    poll(&q);
    assert_eq!(q.in_flight(), 1);
    // Leak the packet (its memory stays valid) and drop the queue under it.
    std::mem::forget(p);
    let resets = m.resets();
    drop(q);
    assert_eq!(m.resets(), resets + 1);
    assert_eq!(m.status(), 0, "the device is stopped");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].1.unwrap_err().kind(), ErrorKind::Aborted);
    assert!(matches!(dev.queue(0), Err(VirtioError::Broken { .. })));
}

#[test]
fn stray_used_entries_are_counted_and_ignored() {
    // Split: the used index says where the next entry is. (Packed: see packed.rs.)
    let (m, dev) = up(ModelOptions::default(), on(RingLayout::Split, Options::default()));
    let q = dev.queue(0).unwrap();
    q.write_all_blocking(0, &[3u8; 512]).unwrap();
    m.inject_stray_completion(0, 200);
    m.inject_stray_completion(0, 70_000);
    poll(&q);
    assert_eq!(q.stats().unknown_completions, 2);
    // The stray entries advanced the model's used index with the driver's: I/O goes on.
    let mut b = [0u8; 512];
    q.read_all_blocking(0, &mut b).unwrap();
    assert_eq!(b, [3u8; 512]);
}

#[test]
fn one_queue_per_thread() {
    for ring in LAYOUTS {
        queues_on_threads(ring);
    }
}

fn queues_on_threads(ring: RingLayout) {
    let (_m, dev) = up(
        ModelOptions { num_queues: 4, ..Default::default() },
        on(ring, Options { queues: 0, ..Default::default() }),
    );
    assert_eq!(dev.queue_count(), 4);
    let dev = std::sync::Arc::new(dev);
    let handles: Vec<_> = (0..4u16)
        .map(|t| {
            let q = dev.queue(t).unwrap();
            std::thread::spawn(move || {
                let base = u64::from(t) * (4 << 20);
                for i in 0..64u64 {
                    let data = pattern(8192, (t as u8) ^ (i as u8));
                    q.write_all_blocking(base + i * 8192, &data).unwrap();
                    let mut back = vec![0u8; 8192];
                    q.read_all_blocking(base + i * 8192, &mut back).unwrap();
                    assert_eq!(back, data);
                }
                q.stats().requests
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 128);
    }
}

#[test]
fn deferred_completions_wait_for_later_notifies() {
    use mfio_virtio::model::CompletionMode;
    for ring in LAYOUTS {
        let completion = CompletionMode::Deferred { notifies: 2, seed: 0 };
        let (m, dev) =
            up(ModelOptions { completion, ..Default::default() }, on(ring, Options::default()));
        let q = dev.queue(0).unwrap();
        let mut p: Vec<Reads<'_>> = (0..4).map(|_| Box::pin(Packet::new(vec![0u8; 512]))).collect();
        // One read per poll round, so one notify each: read k completes on notify k + 2.
        for (k, pk) in p.iter_mut().enumerate() {
            pk.as_mut().submit(&q, k as u64 * 512).unwrap();
            poll(&q);
            assert_eq!(m.notifies(), k as u64 + 1);
        }
        let idle: Vec<bool> = p.iter().map(|x| x.is_idle()).collect();
        assert_eq!(idle, [true, true, false, false], "{ring:?}: the last two still held");
        assert_eq!(q.in_flight(), 2, "one indirect descriptor each");
        m.release();
        poll(&q);
        assert!(p.iter().all(|x| x.is_idle()), "{ring:?}: released");
    }
}
