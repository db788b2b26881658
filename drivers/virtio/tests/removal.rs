//! Hot removal on the model: a virtio-blk device removed under QD32 from two threads, in every
//! completion mode and on both ring layouts. Every future resolves, what was in flight fails
//! with `Gone`, later I/O fails with `Gone` at once, and everything drops cleanly.

use mfio_conformance::removal::{fails_gone_at_once, read_until_gone};
use mfio_pci::CompletionMode;
use mfio_virtio::model::{CompletionMode as ModelCompletion, ModelOptions, VirtioBlkModel};
use mfio_virtio::{Options, RingLayout, VirtioBlk, VirtioError};
use std::sync::Arc;
use std::time::Duration;

fn remove_under_load(ring: RingLayout, mode: CompletionMode) {
    let what = format!("{ring:?}, {mode:?}");
    let m = VirtioBlkModel::new(ModelOptions {
        completion: ModelCompletion::Deferred { notifies: u32::MAX, seed: 1 },
        ..ModelOptions::default()
    });
    // Requests complete from another thread, as a real device's do, so some are always in
    // flight when the device goes.
    m.release_in_background(Duration::from_micros(300));
    let opts = Options { ring: Some(ring), queues: 2, completion: mode, ..Options::default() };
    let dev = Arc::new(VirtioBlk::new(m.clone(), &opts).expect("bring-up"));
    let threads: Vec<_> = (0..2u16)
        .map(|i| {
            let dev = dev.clone();
            std::thread::spawn(move || {
                let q = dev.queue(i).expect("queue");
                let t = read_until_gone(&q, 32, 4096, 8 << 20, Duration::from_secs(20), i.into());
                (t, fails_gone_at_once(&q, Duration::from_millis(50)))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    assert!(m.requests().0 > 0, "{what}: I/O was running when the device went");
    m.remove();
    for t in threads {
        let (tally, after) = t.join().expect("a reading thread panicked");
        assert_eq!(tally.unfinished, 0, "{what}: a worker never saw the removal: {tally:?}");
        assert_eq!(tally.gone, 32, "{what}: every worker ended with Gone: {tally:?}");
        assert!(tally.other.is_empty(), "{what}: only Gone, no other error: {tally:?}");
        assert!(tally.ok > 0, "{what}: reads completed before: {tally:?}");
        assert!(tally.drain < Duration::from_secs(2), "{what}: noticed fast: {tally:?}");
        after.unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    assert!(matches!(dev.queue(0), Err(VirtioError::Gone)), "{what}: no queue on a removed device");
    assert!(m.violations().is_empty(), "{what}: {:?}", m.violations());
    drop(dev); // an orderly drop: no abort for memory the device might still write
}

#[test]
fn a_removed_device_fails_polled_io_with_gone() {
    for ring in [RingLayout::Split, RingLayout::Packed] {
        remove_under_load(ring, CompletionMode::Poll);
    }
}

#[test]
fn a_removed_device_wakes_and_fails_interrupt_driven_io() {
    for ring in [RingLayout::Split, RingLayout::Packed] {
        remove_under_load(ring, CompletionMode::Interrupt);
    }
}

#[test]
fn a_removed_device_fails_adaptive_io() {
    for ring in [RingLayout::Split, RingLayout::Packed] {
        remove_under_load(ring, CompletionMode::Adaptive { spin: Duration::from_micros(50) });
    }
}

#[test]
fn an_idle_queue_fails_its_first_io_after_a_removal_at_once() {
    for mode in [CompletionMode::Poll, CompletionMode::Interrupt] {
        let m = VirtioBlkModel::new(ModelOptions::default());
        let dev = VirtioBlk::new(m.clone(), &Options { completion: mode, ..Options::default() })
            .expect("bring-up");
        let q = dev.queue(0).expect("queue");
        mfio_conformance::round_trip(&q, 0, 4096).expect("works before");
        m.remove();
        fails_gone_at_once(&q, Duration::from_millis(50))
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert!(m.violations().is_empty(), "{:?}", m.violations());
    }
}
