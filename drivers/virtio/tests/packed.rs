//! Packed virtqueues end to end against the model: chains of different lengths completed out
//! of order (each used descriptor skipping its own chain), many laps of a tiny ring at queue
//! depth, indirect tables in the packed format, and a used descriptor naming no buffer.

use futures::future::join_all;
use mfio::{block_on, ErrorKind, FromDevice, IoBackend, Packet, ReadAt, WriteAt};
use mfio_virtio::model::{CompletionMode, ModelOptions, VirtioBlkModel};
use mfio_virtio::spec::feature;
use mfio_virtio::{BlkQueue, Options, RingLayout, VirtioBlk, VirtioError};
use std::task::{Context, Waker};

fn up(model: ModelOptions, opts: Options) -> (VirtioBlkModel, VirtioBlk<VirtioBlkModel>) {
    let m = VirtioBlkModel::new(model);
    let dev = VirtioBlk::new(m.clone(), &opts).expect("bring-up");
    assert_eq!(dev.ring_layout(), RingLayout::Packed);
    (m, dev)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn poll(q: &BlkQueue<VirtioBlkModel>) {
    q.poll_backend(&mut Context::from_waker(Waker::noop()));
}

const DIRECT: Options = Options {
    queues: 1,
    queue_size: 256,
    max_transfer: 1 << 20,
    bounce_size: 128 << 10,
    bounce_slots: 16,
    refuse_features: feature::INDIRECT_DESC,
    ring: Some(RingLayout::Packed),
    completion: mfio_pci::CompletionMode::Poll,
};

#[test]
fn chains_of_different_lengths_complete_out_of_order() {
    for completion in [CompletionMode::Reversed, CompletionMode::Shuffled { seed: 5 }] {
        // SIZE_MAX 4 KiB: a read of k blocks of 4 KiB is a chain of k + 2 descriptors.
        let model = ModelOptions { size_max: 4096, completion, ..Default::default() };
        let (m, dev) = up(model, DIRECT);
        let q = dev.queue(0).unwrap();
        let data = pattern(64 << 10, 3);
        q.write_all_blocking(0, &data).unwrap();
        // Twelve reads of 1, 2, 3 and 4 blocks in one batch: 3 to 6 descriptors each.
        let spans: Vec<(usize, usize)> =
            (0..12).map(|i| (i * 4096 % (48 << 10), 4096 * (1 + i % 4))).collect();
        m.set_hold(true);
        let mut packets: Vec<_> = spans
            .iter()
            .map(|&(_, len)| Box::pin(Packet::<FromDevice, _>::new(vec![0u8; len])))
            .collect();
        for (p, &(pos, _)) in packets.iter_mut().zip(&spans) {
            p.as_mut().submit(&q, pos as u64).unwrap();
        }
        poll(&q);
        let want: usize = spans.iter().map(|&(_, len)| len / 4096 + 2).sum();
        assert_eq!(q.in_flight(), want, "every chain on the ring at once");
        m.set_hold(false);
        m.release();
        poll(&q);
        assert_eq!(q.in_flight(), 0);
        for (i, (p, &(pos, len))) in packets.iter_mut().zip(&spans).enumerate() {
            assert!(p.is_idle(), "read {i} done");
            let got = p.as_mut().take_buf().unwrap();
            assert_eq!(got[..], data[pos..pos + len], "read {i} got its own data ({completion:?})");
        }
        assert_eq!(q.stats().unknown_completions, 0);
    }
}

#[test]
fn a_tiny_ring_wraps_thousands_of_times_at_queue_depth() {
    for completion in [CompletionMode::InOrder, CompletionMode::Shuffled { seed: 9 }] {
        let model =
            ModelOptions { queue_size_max: 8, size_max: 4096, completion, ..Default::default() };
        let (m, dev) = up(model, DIRECT);
        let q = dev.queue(0).unwrap();
        let data = pattern(1 << 20, 7);
        q.write_all_blocking(0, &data).unwrap();
        // 2000 reads of 1 to 3 blocks, 32 at a time on a ring of 8: at most two chains fit.
        for round in 0..(2000 / 32) {
            let reads = (0..32usize).map(|i| {
                let pos = (round * 32 + i) * 4096 % (1 << 20);
                let len = (4096 * (1 + i % 3)).min((1 << 20) - pos);
                q.read_all(pos as u64, vec![0u8; len])
            });
            for (i, (r, got)) in block_on(&q, join_all(reads)).into_iter().enumerate() {
                r.unwrap();
                let pos = (round * 32 + i) * 4096 % (1 << 20);
                assert_eq!(got[..], data[pos..pos + got.len()], "round {round}, read {i}");
            }
        }
        let (requests, _) = m.requests();
        assert!(requests > 2000, "{requests}");
        assert_eq!(m.mapper().fault_count(), 0);
        assert_eq!(m.violations(), Vec::<String>::new());
    }
}

#[test]
fn indirect_tables_carry_whole_requests_on_one_descriptor() {
    let (m, dev) = up(ModelOptions { size_max: 4096, ..Default::default() }, Options::default());
    assert_ne!(dev.features() & feature::INDIRECT_DESC, 0);
    let q = dev.queue(0).unwrap();
    let data = pattern(256 << 10, 1);
    q.write_all_blocking(0, &data).unwrap();
    let mut back = vec![0u8; 256 << 10];
    q.read_all_blocking(0, &mut back).unwrap();
    assert_eq!(back, data);
    let (requests, indirect) = m.requests();
    assert_eq!((requests, indirect), (4, 4), "128 KiB bounce pieces, 32 segments, one table each");
    // Without INDIRECT_DESC the same I/O takes direct chains.
    let (m, dev) = up(ModelOptions { size_max: 4096, ..Default::default() }, DIRECT);
    let q = dev.queue(0).unwrap();
    q.write_all_blocking(0, &data).unwrap();
    q.read_all_blocking(0, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(m.requests().1, 0);
}

#[test]
fn a_used_descriptor_naming_no_buffer_resets_the_device() {
    let (m, dev) = up(ModelOptions::default(), Options::default());
    let q = dev.queue(0).unwrap();
    q.write_all_blocking(0, &[3u8; 512]).unwrap();
    let resets = m.resets();
    m.set_hold(true);
    let mut p = Box::pin(Packet::<FromDevice, _>::new(vec![0u8; 512]));
    p.as_mut().submit(&q, 0).unwrap();
    poll(&q);
    // Over the read's descriptor, a used one naming buffer 200, not in flight: the driver
    // cannot know how far to skip past it, so it must stop the device.
    m.inject_stray_completion(0, 200);
    poll(&q);
    assert_eq!(m.resets(), resets + 1, "reset");
    assert!(p.is_idle());
    let t = p.as_ref().poll_done(&mut Context::from_waker(Waker::noop()));
    let err = match t {
        std::task::Poll::Ready(t) => t.error.expect("failed"),
        std::task::Poll::Pending => panic!("not completed"),
    };
    assert_eq!(err.kind(), ErrorKind::Fatal);
    drop(p);
    drop(q);
    assert!(matches!(dev.queue(0), Err(VirtioError::Broken { .. })));
}
