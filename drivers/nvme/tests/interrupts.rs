//! Interrupt-driven queues on the model: MSI-X vectors per queue, the three completion modes,
//! sleeping instead of spinning, lost and masked interrupts, and the typed errors.

use mfio::{block_on, Activity, IoBackend, ReadAt, WriteAt};
use mfio_nvme::model::{CompletionMode as ModelCompletion, ModelConfig, NvmeModel};
use mfio_nvme::{CompletionMode, Controller, ControllerOptions, IoQueue, NvmeError};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant};

/// A model whose I/O completes `micros` after its doorbell, from the model's own thread (as a
/// device's does), so a driver has something to wait for.
fn timed(micros: u64) -> ModelConfig {
    ModelConfig { completion: ModelCompletion::Timed { micros }, ..ModelConfig::default() }
}

fn queue(cfg: ModelConfig, mode: CompletionMode) -> (NvmeModel, IoQueue<NvmeModel>) {
    let model = NvmeModel::new(cfg);
    let ctrl = Controller::new(model.clone(), ControllerOptions::default()).expect("bring-up");
    let q = ctrl.io_queue_with(1, mode).expect("an interrupt-driven queue");
    (model, q)
}

fn roundtrip(q: &IoQueue<NvmeModel>, lba: u64, fill: u8) {
    let (r, _) = block_on(q, q.write_at(lba * 512, vec![fill; 4096]));
    assert_eq!(r, Ok(4096));
    let (r, buf) = block_on(q, q.read_at(lba * 512, vec![0u8; 4096]));
    assert_eq!(r, Ok(4096));
    assert!(buf.iter().all(|&b| b == fill), "read back what was written at LBA {lba}");
}

#[test]
fn an_interrupt_driven_queue_sleeps_until_its_msix_vector_fires() {
    // 2 ms: long enough for the queue to arm before the completion, even under valgrind.
    let (model, q) = queue(timed(2_000), CompletionMode::Interrupt);
    assert!(q.polling_handle().is_some(), "the vector's eventfd is the polling handle");
    for i in 0..50 {
        roundtrip(&q, i * 8, i as u8);
    }
    let s = q.stats().wakeup;
    // Nearly all: under valgrind a few complete before the queue gets to arm.
    assert!(s.armed >= 90, "every I/O waited asleep: {s:?}");
    assert!(s.interrupts >= 90, "and was woken by its interrupt: {s:?}");
    assert_eq!(s.unannounced, 0, "no completion came without its interrupt: {s:?}");
    assert!(!s.fell_back);
    assert!(model.interrupts_raised(q.qid()) >= 90, "the model raised vector {}", q.qid());
    assert_eq!(model.interrupts_raised(q.qid() + 1), 0, "and no other vector");
    assert!(model.violations().is_empty(), "{:?}", model.violations());
}

#[test]
fn a_sleeping_wait_costs_no_cpu() {
    // A read that takes 400 ms: polled, the thread would burn all of it.
    let (_model, q) = queue(timed(400_000), CompletionMode::Interrupt);
    let (cpu0, t0) = (mfio_conformance::cpu::thread_ticks(), Instant::now());
    let (r, _) = block_on(&q, q.read_at(0, vec![0u8; 4096]));
    let (cpu, wall) = (mfio_conformance::cpu::thread_ticks() - cpu0, t0.elapsed());
    assert_eq!(r, Ok(4096));
    assert!(wall >= Duration::from_millis(390), "the read took its time: {wall:?}");
    // Clock ticks are 10 ms: 40 of them would be a spinning thread.
    assert!(cpu <= 8, "{cpu} ticks of CPU over {wall:?} of waiting");
}

#[test]
fn adaptive_spins_through_fast_completions_and_sleeps_through_slow_ones() {
    let fast = CompletionMode::Adaptive { spin: Duration::from_millis(300) };
    let (model, q) = queue(timed(200), fast);
    for i in 0..20 {
        roundtrip(&q, i * 8, 0x5a);
    }
    let s = q.stats().wakeup;
    assert_eq!(s.armed, 0, "completions within the spin window never sleep: {s:?}");
    let (_, slow) = queue(timed(20_000), CompletionMode::Adaptive { spin: Duration::ZERO });
    for i in 0..5 {
        roundtrip(&slow, i * 8, 0xa5);
    }
    let s = slow.stats().wakeup;
    assert!(s.armed >= 10 && s.interrupts >= 10, "slow completions are slept through: {s:?}");
    assert_eq!(s.unannounced, 0, "{s:?}");
    assert!(model.violations().is_empty());
}

#[test]
fn lost_interrupts_are_noticed_and_the_queue_falls_back_to_polling() {
    let (model, q) = queue(timed(2_000), CompletionMode::Interrupt);
    model.lose_interrupts(true);
    let t0 = Instant::now();
    for i in 0..10 {
        roundtrip(&q, i * 8, 7);
    }
    let s = q.stats().wakeup;
    assert!(s.fell_back, "{s:?}");
    assert_eq!(s.unannounced, u64::from(mfio_pci::UNANNOUNCED_LIMIT), "{s:?}");
    assert_eq!(q.completion_mode(), CompletionMode::Poll);
    // No hang: each unannounced completion costs one bounded sleep, then the queue polls
    // (generous, for valgrind).
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
    assert!(model.stats().completions_posted >= 20);
}

#[test]
fn a_masked_vector_holds_its_message_until_unmasked() {
    let (model, q) = queue(timed(1_000), CompletionMode::Interrupt);
    let v = q.qid();
    model.mask_vector(v, true);
    let (r, _) = block_on(&q, q.read_at(0, vec![0u8; 512]));
    assert_eq!(r, Ok(512), "completes without its interrupt (a bounded sleep, then a poll)");
    assert_eq!(q.stats().wakeup.unannounced, 1);
    assert_eq!(model.interrupts_raised(v), 0, "masked: nothing sent");
    model.mask_vector(v, false);
    assert_eq!(model.interrupts_raised(v), 1, "the pending message is sent on unmasking");
}

#[test]
fn a_controller_without_msix_says_to_poll() {
    let model = NvmeModel::new(ModelConfig { msix_vectors: 0, ..ModelConfig::default() });
    let ctrl = Controller::new(model, ControllerOptions::default()).unwrap();
    let e = ctrl.io_queue_with(1, CompletionMode::ADAPTIVE).err().expect("no MSI-X");
    assert!(matches!(e, NvmeError::NoMsix), "{e}");
    assert!(e.to_string().contains("CompletionMode::Poll"), "{e}");
    // The queue ID was given back: a polled queue still works.
    let q = ctrl.io_queue_with(1, CompletionMode::Poll).unwrap();
    assert_eq!(q.qid(), 1);
    assert!(q.polling_handle().is_none());
}

#[test]
fn a_queue_without_a_vector_of_its_own_is_refused() {
    let model = NvmeModel::new(ModelConfig { msix_vectors: 2, ..ModelConfig::default() });
    let ctrl = Controller::new(model, ControllerOptions::default()).unwrap();
    let q1 = ctrl.io_queue_with(1, CompletionMode::Interrupt).expect("vector 1");
    let e = ctrl.io_queue_with(1, CompletionMode::Interrupt).err().expect("no vector 2");
    assert!(matches!(e, NvmeError::NoVector { qid: 2, vectors: 2 }), "{e}");
    let polled = ctrl.io_queue_with(1, CompletionMode::Poll).expect("queue 2, polled");
    roundtrip(&q1, 0, 1);
    roundtrip(&polled, 8, 2);
}

struct CountWakes(AtomicUsize);

impl Wake for CountWakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn an_idle_or_armed_queue_wakes_its_driver_when_work_is_sent() {
    let (_model, q) = queue(timed(100_000), CompletionMode::Interrupt);
    let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
    let waker = Waker::from(wakes.clone());
    let mut cx = Context::from_waker(&waker);
    assert_eq!(q.poll_backend(&mut cx), Activity::Idle);
    let mut fut = std::pin::pin!(q.read_at(0, vec![0u8; 512]));
    // Polling the read sends it: the parked driver is woken.
    assert!(fut.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_pending());
    assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "send_io woke the parked driver");
    assert_eq!(q.poll_backend(&mut cx), Activity::Armed, "in flight, nothing posted");
    let (r, _) = block_on(&q, fut);
    assert_eq!(r, Ok(512));
}

#[test]
fn block_on_sleeping_on_a_queue_wakes_for_a_future_woken_elsewhere() {
    let (_model, q) = queue(timed(100), CompletionMode::Interrupt);
    roundtrip(&q, 0, 3);
    // Nothing in flight, the future waits on another thread: block_on sleeps on the queue's
    // handle and the kick, and the other thread's wake ends the sleep at once (not after the
    // 50 ms bound).
    let t0 = Instant::now();
    for _ in 0..10 {
        let (tx, rx) = futures::channel::oneshot::channel::<u32>();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            tx.send(7).unwrap();
        });
        assert_eq!(block_on(&q, rx), Ok(7));
        t.join().unwrap();
    }
    let bound = Duration::from_millis(mfio::SLEEP_BOUND_MS as u64);
    assert!(t0.elapsed() < bound * 10 * 3 / 4, "10 cross-thread wakes took {:?}", t0.elapsed());
}

#[test]
fn a_completion_posted_while_the_queue_arms_is_not_slept_through() {
    // Deferred by one doorbell: each read executes on the next doorbell write after its own,
    // which is the CQ head write the queue makes while it arms (after it cleared its eventfd
    // and looked at its ring). The interrupt then lands between the look and the sleep: the
    // classic lost wake-up window. It must end the sleep at once.
    let cfg = ModelConfig {
        completion: ModelCompletion::Deferred { doorbells: 1 },
        ..ModelConfig::default()
    };
    let (model, q) = queue(cfg, CompletionMode::Interrupt);
    let t0 = Instant::now();
    for i in 0..20 {
        let (r, _) = block_on(&q, q.read_at(i * 4096, vec![0u8; 4096]));
        assert_eq!(r, Ok(4096));
    }
    let s = q.stats().wakeup;
    assert_eq!(s.unannounced, 0, "a completion was slept through: {s:?}");
    assert!(s.interrupts >= 15, "most reads slept and were woken by their interrupt: {s:?}");
    // A slept-through read costs the 50 ms bound: 19 of them would take a second.
    let bound = Duration::from_millis(mfio::SLEEP_BOUND_MS as u64);
    assert!(t0.elapsed() < bound * 12, "20 reads took {:?}", t0.elapsed());
    assert!(model.violations().is_empty());
}

#[test]
fn one_block_on_runs_a_sequence_of_reads_without_sleeping_out_the_bound() {
    // Each read after the first is sent from inside block_on's last poll before a sleep: it
    // must reach the device (the doorbell) before the thread sleeps, or every read waits out
    // the 50 ms bound.
    let (_model, q) = queue(timed(100), CompletionMode::Interrupt);
    let t0 = Instant::now();
    let n = block_on(&q, async {
        let mut n = 0;
        for i in 0..40u64 {
            let (r, _) = q.read_at(i * 4096, vec![0u8; 4096]).await;
            n += r.unwrap();
        }
        n
    });
    assert_eq!(n, 40 * 4096);
    let bound = Duration::from_millis(mfio::SLEEP_BOUND_MS as u64);
    assert!(t0.elapsed() < bound * 20, "40 reads took {:?}", t0.elapsed());
    assert_eq!(q.stats().wakeup.unannounced, 0, "{:?}", q.stats().wakeup);
}

#[test]
fn a_late_interrupt_does_not_keep_an_idle_queue_busy() {
    let (model, q) = queue(timed(500), CompletionMode::Interrupt);
    // The message of this read waits in the vector's pending bit, and is sent once the queue
    // has reaped the read and gone idle: the eventfd is readable with nothing to do.
    model.mask_vector(q.qid(), true);
    let (r, _) = block_on(&q, q.read_at(0, vec![0u8; 512]));
    assert_eq!(r, Ok(512));
    assert_eq!(q.poll_backend(&mut Context::from_waker(Waker::noop())), Activity::Idle);
    model.mask_vector(q.qid(), false);
    let (tx, rx) = futures::channel::oneshot::channel::<()>();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        tx.send(()).unwrap();
    });
    let cpu0 = mfio_conformance::cpu::thread_ticks();
    block_on(&q, rx).unwrap();
    let cpu = mfio_conformance::cpu::thread_ticks() - cpu0;
    t.join().unwrap();
    assert!(cpu <= 6, "{cpu} ticks of CPU in 300 ms of idle waiting: it spun on the eventfd");
}

#[test]
fn a_parked_waker_that_is_replaced_is_woken_not_dropped() {
    let (_model, q) = queue(timed(100), CompletionMode::Interrupt);
    let (a, b) =
        (Arc::new(CountWakes(AtomicUsize::new(0))), Arc::new(CountWakes(AtomicUsize::new(0))));
    let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
    assert_eq!(q.poll_backend(&mut Context::from_waker(&wa)), Activity::Idle);
    assert_eq!(q.poll_backend(&mut Context::from_waker(&wa)), Activity::Idle);
    assert_eq!(a.0.load(Ordering::SeqCst), 0, "the same waker stays parked");
    assert_eq!(q.poll_backend(&mut Context::from_waker(&wb)), Activity::Idle);
    assert_eq!(a.0.load(Ordering::SeqCst), 1, "the replaced waker's task is told");
    assert_eq!(b.0.load(Ordering::SeqCst), 0);
}

struct PanicOnWake;

impl Wake for PanicOnWake {
    fn wake(self: Arc<Self>) {
        panic!("a parked waker that panics");
    }
}

#[test]
fn a_parked_waker_that_panics_leaves_the_queue_consistent() {
    // The parked waker is caller code: woken by a send (inside send_io) and when replaced
    // (at the end of a poll). Its panic unwinds out of those calls; the command it followed is
    // in its slot, completes, and the queue goes on working.
    let (_model, q) = queue(timed(200), CompletionMode::Interrupt);
    let bad = Waker::from(Arc::new(PanicOnWake));
    assert_eq!(q.poll_backend(&mut Context::from_waker(&bad)), Activity::Idle);
    let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut fut = std::pin::pin!(q.read_at(0, vec![0u8; 512]));
        let _ = fut.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        // Dropping the read here (unwinding or not) waits for its segment: sound either way.
    }));
    assert!(sent.is_err(), "the send woke the panicking waker");
    assert_eq!(q.in_flight(), 0, "the dropped read waited for its command");
    // Parked again, then replaced by another poller: the wake of the old one panics out of
    // that poll, after its work is done.
    assert_eq!(q.poll_backend(&mut Context::from_waker(&bad)), Activity::Idle);
    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        q.poll_backend(&mut Context::from_waker(Waker::noop()))
    }));
    assert!(polled.is_err());
    roundtrip(&q, 16, 0x77);
    assert_eq!(q.stats().completed, q.stats().submitted);
}

#[test]
fn a_forgotten_read_on_an_interrupt_driven_queue_completes_into_leaked_memory() {
    // mem::forget of a future whose read is in flight on a sleeping queue: its buffer is
    // leaked (stays valid), the device's completion still arrives by interrupt, and the queue
    // drains and goes on.
    let (model, q) = queue(timed(2_000), CompletionMode::Interrupt);
    let mut fut = Box::pin(q.read_at(0, vec![0u8; 4096]));
    assert!(fut.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_pending());
    std::mem::forget(fut);
    let t0 = Instant::now();
    while q.in_flight() > 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "the forgotten read never completed");
        if q.poll_backend(&mut Context::from_waker(Waker::noop())) == Activity::Armed {
            q.polling_handle().unwrap().wait(mfio::SLEEP_BOUND_MS);
        }
    }
    assert_eq!(q.stats().wakeup.unannounced, 0);
    roundtrip(&q, 8, 0x42);
    assert!(model.violations().is_empty());
}
