//! Interrupt-driven virtqueues on the model, split and packed, with and without EVENT_IDX:
//! MSI-X vectors per queue, used buffer notifications suppressed while polling and turned on
//! before a sleep, lost interrupts, and the typed errors.

use mfio::{block_on, IoBackend, ReadAt, WriteAt};
use mfio_pci::{CompletionMode, UNANNOUNCED_LIMIT};
use mfio_virtio::model::{CompletionMode as ModelCompletion, ModelOptions, VirtioBlkModel};
use mfio_virtio::spec::feature;
use mfio_virtio::{BlkQueue, Options, RingLayout, VirtioBlk, VirtioError};
use std::time::{Duration, Instant};

/// Every layout, with and without EVENT_IDX (which changes how notifications are suppressed).
fn variants() -> Vec<(RingLayout, u64)> {
    let mut v = Vec::new();
    for ring in [RingLayout::Split, RingLayout::Packed] {
        for refuse in [0, feature::EVENT_IDX] {
            v.push((ring, refuse));
        }
    }
    v
}

/// A device whose requests complete on a background thread every `period` (as a real device's
/// do), brought up with interrupt-driven queues in `mode`.
fn device(
    ring: RingLayout,
    refuse: u64,
    period: Duration,
    mode: CompletionMode,
) -> (VirtioBlkModel, VirtioBlk<VirtioBlkModel>) {
    let m = VirtioBlkModel::new(ModelOptions {
        completion: ModelCompletion::Deferred { notifies: u32::MAX, seed: 0 },
        ..ModelOptions::default()
    });
    m.release_in_background(period);
    let opts = Options {
        ring: Some(ring),
        refuse_features: refuse,
        completion: mode,
        ..Options::default()
    };
    let dev = VirtioBlk::new(m.clone(), &opts).expect("bring-up");
    (m, dev)
}

fn roundtrip(q: &BlkQueue<VirtioBlkModel>, sector: u64, fill: u8) {
    let (r, _) = block_on(q, q.write_at(sector * 512, vec![fill; 4096]));
    assert_eq!(r, Ok(4096));
    let (r, buf) = block_on(q, q.read_at(sector * 512, vec![0u8; 4096]));
    assert_eq!(r, Ok(4096));
    assert!(buf.iter().all(|&b| b == fill), "read back what was written at sector {sector}");
}

#[test]
fn interrupt_driven_queues_sleep_until_their_vector_fires() {
    for (ring, refuse) in variants() {
        let what = format!("{ring:?}, refused {refuse:#x}");
        // 2 ms between the device's passes: the queue arms first, even under valgrind.
        let (m, dev) = device(ring, refuse, Duration::from_millis(2), CompletionMode::Interrupt);
        let q = dev.queue(0).unwrap();
        assert!(q.polling_handle().is_some(), "{what}");
        for i in 0..30 {
            roundtrip(&q, i * 8, i as u8);
        }
        let s = q.stats().wakeup;
        assert!(s.armed >= 45 && s.interrupts >= 45, "{what}: most I/O slept: {s:?}");
        assert_eq!(s.unannounced, 0, "{what}: a completion came without its interrupt: {s:?}");
        assert!(m.interrupts_raised(0) >= 45, "{what}: vector 0 is queue 0's");
        assert_eq!(m.interrupts_raised(1), 0, "{what}: queue 1 did nothing");
        assert!(m.violations().is_empty(), "{what}: {:?}", m.violations());
    }
}

#[test]
fn a_polled_queue_on_an_interrupt_capable_device_suppresses_notifications() {
    for (ring, refuse) in variants() {
        let (m, dev) = device(ring, refuse, Duration::from_micros(200), CompletionMode::Interrupt);
        let q = dev.queue_with(0, CompletionMode::Poll).unwrap();
        assert!(q.polling_handle().is_none());
        for i in 0..20 {
            roundtrip(&q, i * 8, 9);
        }
        assert_eq!(m.interrupts_raised(0), 0, "{ring:?} {refuse:#x}: notifications stay off");
    }
}

#[test]
fn a_sleeping_wait_costs_no_cpu() {
    let (_m, dev) =
        device(RingLayout::Packed, 0, Duration::from_millis(400), CompletionMode::Interrupt);
    let q = dev.queue(0).unwrap();
    // Let the releases line up so the read waits most of a period.
    std::thread::sleep(Duration::from_millis(5));
    let (cpu0, t0) = (mfio_conformance::cpu::thread_ticks(), Instant::now());
    let (r, _) = block_on(&q, q.read_at(0, vec![0u8; 4096]));
    let (cpu, wall) = (mfio_conformance::cpu::thread_ticks() - cpu0, t0.elapsed());
    assert_eq!(r, Ok(4096));
    assert!(wall >= Duration::from_millis(100), "the read waited: {wall:?}");
    assert!(cpu <= 5, "{cpu} ticks of CPU over {wall:?} of waiting");
}

#[test]
fn adaptive_sleeps_only_once_completions_stop_coming_quickly() {
    for (ring, refuse) in variants() {
        // Under valgrind a round trip can outlast 100 ms (threads run one at a time there).
        let window = if std::env::var_os("MFIO_VALGRIND").is_some() { 2000 } else { 100 };
        let spin = CompletionMode::Adaptive { spin: Duration::from_millis(window) };
        let (_m, dev) = device(ring, refuse, Duration::from_micros(100), spin);
        let q = dev.queue(0).unwrap();
        for i in 0..10 {
            roundtrip(&q, i * 8, 1);
        }
        assert_eq!(q.stats().wakeup.armed, 0, "{ring:?}: within the window, no sleep");
        drop(q);
        let q = dev.queue_with(0, CompletionMode::Adaptive { spin: Duration::ZERO }).unwrap();
        let (_m2, slow) = device(ring, refuse, Duration::from_millis(10), CompletionMode::ADAPTIVE);
        let sq = slow.queue(0).unwrap();
        for i in 0..5 {
            roundtrip(&sq, i * 8, 2);
            roundtrip(&q, i * 8, 3);
        }
        let s = sq.stats().wakeup;
        assert!(s.armed >= 5 && s.interrupts >= 5, "{ring:?} {refuse:#x}: most I/O slept: {s:?}");
        assert_eq!(s.unannounced, 0, "{ring:?} {refuse:#x}: {s:?}");
    }
}

#[test]
fn lost_interrupts_make_the_queue_poll() {
    let (m, dev) =
        device(RingLayout::Split, 0, Duration::from_millis(2), CompletionMode::Interrupt);
    m.lose_interrupts(true);
    let q = dev.queue(0).unwrap();
    for i in 0..8 {
        roundtrip(&q, i * 8, 4);
    }
    let s = q.stats().wakeup;
    assert!(s.fell_back, "{s:?}");
    assert_eq!(s.unannounced, u64::from(UNANNOUNCED_LIMIT));
    assert_eq!(q.completion_mode(), CompletionMode::Poll);
}

#[test]
fn too_few_vectors_or_none_are_typed_errors() {
    let m = VirtioBlkModel::new(ModelOptions { msix_vectors: 1, ..ModelOptions::default() });
    let opts = Options { queues: 2, completion: CompletionMode::Interrupt, ..Options::default() };
    let e = VirtioBlk::new(m, &opts).err().expect("2 queues, 1 vector");
    assert!(matches!(e, VirtioError::NoVectors { vectors: 1, queues: 2 }), "{e}");
    assert!(e.to_string().contains("CompletionMode::Poll"), "{e}");
    let m = VirtioBlkModel::new(ModelOptions { msix_vectors: 0, ..ModelOptions::default() });
    let e = VirtioBlk::new(
        m.clone(),
        &Options { completion: CompletionMode::ADAPTIVE, ..Options::default() },
    );
    assert!(matches!(e, Err(VirtioError::NoVectors { vectors: 0, .. })));
    // The same device polled works, and a queue asking for interrupts there says what to do.
    let dev = VirtioBlk::new(m, &Options::default()).unwrap();
    let e = dev.queue_with(0, CompletionMode::Interrupt).err().expect("no vector");
    assert!(matches!(e, VirtioError::NoInterrupt { index: 0 }), "{e}");
    let q = dev.queue(0).expect("the queue went back to its slot");
    roundtrip(&q, 0, 5);
}

#[test]
fn a_parked_waker_that_is_replaced_is_woken_and_sends_wake_the_parked_one() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Wake, Waker};
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let (_m, dev) =
        device(RingLayout::Packed, 0, Duration::from_millis(1), CompletionMode::Interrupt);
    let q = dev.queue(0).unwrap();
    let (a, b) = (Arc::new(Count(AtomicUsize::new(0))), Arc::new(Count(AtomicUsize::new(0))));
    let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
    assert_eq!(q.poll_backend(&mut Context::from_waker(&wa)), mfio::Activity::Idle);
    assert_eq!(q.poll_backend(&mut Context::from_waker(&wb)), mfio::Activity::Idle);
    assert_eq!(a.0.load(Ordering::SeqCst), 1, "the replaced waker's task is told");
    let mut fut = std::pin::pin!(q.read_at(0, vec![0u8; 512]));
    assert!(std::future::Future::poll(fut.as_mut(), &mut Context::from_waker(Waker::noop()))
        .is_pending());
    assert_eq!(b.0.load(Ordering::SeqCst), 1, "sending woke the parked driver");
    let (r, _) = block_on(&q, fut);
    assert_eq!(r, Ok(512));
}

#[test]
fn one_block_on_runs_a_sequence_of_reads_without_sleeping_out_the_bound() {
    for (ring, refuse) in variants() {
        let (_m, dev) = device(ring, refuse, Duration::from_micros(200), CompletionMode::Interrupt);
        let q = dev.queue(0).unwrap();
        let t0 = Instant::now();
        let n = block_on(&q, async {
            let mut n = 0;
            for i in 0..30u64 {
                n += q.read_at(i * 4096, vec![0u8; 4096]).await.0.unwrap();
            }
            n
        });
        assert_eq!(n, 30 * 4096);
        assert!(t0.elapsed() < Duration::from_millis(750), "{ring:?}: took {:?}", t0.elapsed());
    }
}

#[test]
fn a_parked_waker_that_panics_leaves_the_queue_consistent() {
    use std::sync::Arc;
    use std::task::{Context, Wake, Waker};
    struct PanicOnWake;
    impl Wake for PanicOnWake {
        fn wake(self: Arc<Self>) {
            panic!("a parked waker that panics");
        }
    }
    for (ring, refuse) in variants() {
        let (_m, dev) = device(ring, refuse, Duration::from_micros(200), CompletionMode::Interrupt);
        let q = dev.queue(0).unwrap();
        let bad = Waker::from(Arc::new(PanicOnWake));
        assert_eq!(q.poll_backend(&mut Context::from_waker(&bad)), mfio::Activity::Idle);
        let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut fut = std::pin::pin!(q.read_at(0, vec![0u8; 512]));
            let _ =
                std::future::Future::poll(fut.as_mut(), &mut Context::from_waker(Waker::noop()));
        }));
        assert!(sent.is_err(), "{ring:?}: the send woke the panicking waker");
        assert_eq!(q.in_flight(), 0, "{ring:?}: the dropped read waited for its request");
        assert_eq!(q.poll_backend(&mut Context::from_waker(&bad)), mfio::Activity::Idle);
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            q.poll_backend(&mut Context::from_waker(Waker::noop()))
        }));
        assert!(polled.is_err(), "{ring:?}: the replaced waker was woken");
        roundtrip(&q, 16, 0x77);
    }
}
