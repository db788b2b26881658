//! Soundness under panics and leaks, tried as a hostile user would, in safe code only: a sink,
//! a waker or a backend that panics while memory is lent out, a leaked packet, a leaked view.
//! Run under valgrind in CI (scripts/test.sh): before the fixes these wrote into freed heap
//! blocks and dead stack frames, or hung.
//!
//! Scenarios that must abort or hang run in a child process (this test binary again, with
//! `MFIO_CHILD` naming the scenario), and the parent checks how it ended.

// Tests of mfio's unsafe contracts (raw wakers that misbehave): unsafe by design.
#![allow(unsafe_code)]
mod common;

use common::Held;
use mfio::backends::{MemoryBackend, Stripe};
use mfio::{
    block_on, Activity, Error, FromDevice, IoBackend, Packet, PacketIo, PacketView, ReadAt,
    ToDevice,
};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
use std::time::Duration;

/// Runs `f` on its own thread and fails if it does not finish in time (a hang is a failure
/// here, not a stuck test run). The thread is left behind if it hangs.
fn within<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(r)) => r,
        Ok(Err(p)) => std::panic::resume_unwind(p),
        Err(_) => panic!("hung: still running after 60 s"),
    }
}

fn message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

/// Runs the scenario `name` in a child process; returns its exit status and stderr. A child
/// still running after 60 s is killed and the test fails (it hung).
fn in_child(name: &str) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("MFIO_CHILD", name)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut pipe, &mut s);
        s
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hung: {name} still running after 60 s; stderr: {}", reader.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, reader.join().unwrap())
}

fn is_child(name: &str) -> bool {
    std::env::var("MFIO_CHILD").is_ok_and(|v| v == name)
}

/// Whether the child ended by SIGABRT.
fn aborted(status: std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(6)
}

/// A backend that keeps views and completes them all on its next poll (reads filled with 0xab),
/// except that it panics on the polls it was told to.
#[derive(Default)]
struct Panicky {
    views: RefCell<Vec<PacketView<FromDevice>>>,
    /// Polls left that panic: `usize::MAX` for every one.
    panics: Cell<usize>,
    completed: Cell<usize>,
}

impl PacketIo<FromDevice, u64> for Panicky {
    fn send_io(&self, _pos: u64, view: PacketView<FromDevice>) {
        self.views.borrow_mut().push(view);
    }
}

impl IoBackend for Panicky {
    fn poll_backend(&self, _cx: &mut Context<'_>) -> Activity {
        if self.panics.get() > 0 {
            if self.panics.get() != usize::MAX {
                self.panics.set(self.panics.get() - 1);
            }
            panic!("the backend's poll failed");
        }
        for mut v in self.views.borrow_mut().drain(..) {
            v.as_mut_slice().fill(0xab);
            v.ok();
            self.completed.set(self.completed.get() + 1);
        }
        Activity::Idle
    }
}

#[test]
fn a_panicking_sink_still_completes_its_segment_and_the_owner_gets_the_panic() {
    within(|| {
        let stripe =
            Stripe::new(vec![MemoryBackend::new(500), MemoryBackend::new(500)], 100).unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let sink = Arc::new(move |off: usize, _len: usize, _r: Result<(), Error>| {
            c.fetch_add(1, Ordering::Relaxed);
            if off == 50 {
                panic!("sink refuses the segment at 50");
            }
        });
        let mut pkt = Box::pin(Packet::<ToDevice, _>::new(vec![7u8; 350]).with_sink(sink));
        let r = catch_unwind(AssertUnwindSafe(|| block_on(&stripe, pkt.as_mut().io(&stripe, 50))));
        let p = r.expect_err("the sink's panic reaches the owner");
        assert_eq!(message(&*p), "sink refuses the segment at 50");
        assert_eq!(calls.load(Ordering::Relaxed), 4, "every segment still completed");
        assert!(pkt.is_idle());
        // The packet works again, and the panic was raised once, not kept for the next round.
        let t = block_on(&stripe, pkt.as_mut().io(&stripe, 700));
        assert!(t.error.is_some(), "past the end of the 1000-byte stripe");
        // The segment whose sink panicked was carried out by the device all the same.
        let a = stripe.devices()[0].snapshot();
        assert!(a[50..100].iter().all(|&b| b == 7));
    });
}

#[test]
fn a_sink_panic_nobody_observed_is_raised_when_the_packet_is_dropped() {
    within(|| {
        let dev = Held::default();
        let sink = Arc::new(|_: usize, _: usize, _: Result<(), Error>| panic!("sink in drop"));
        let r = catch_unwind(AssertUnwindSafe(|| {
            let mut pkt = pin!(Packet::<FromDevice, _>::new([0u8; 64]).with_sink(sink));
            pkt.as_mut().submit(&dev, 0).unwrap();
            let (_, v) = dev.reads.borrow_mut().pop().unwrap();
            v.ok(); // the sink panics here; the segment completes regardless
            assert!(pkt.is_idle());
        }));
        assert_eq!(message(&*r.unwrap_err()), "sink in drop");
    });
}

#[test]
fn a_backend_panicking_while_a_dropped_read_waits_cannot_free_its_heap_buffer() {
    within(|| {
        let dev = Panicky::default();
        let r = catch_unwind(AssertUnwindSafe(|| {
            let mut fut = Box::pin(dev.read_at(0, vec![0u8; 4096]));
            assert!(poll_once(fut.as_mut()).is_pending());
            dev.panics.set(1);
            drop(fut); // waits: the first poll panics, the second completes the view
        }));
        assert_eq!(message(&*r.unwrap_err()), "the backend's poll failed");
        assert_eq!(dev.completed.get(), 1, "completed before the buffer was freed");
        assert!(dev.views.borrow().is_empty());
        dev.poll_backend(&mut Context::from_waker(Waker::noop()));
    });
}

#[test]
fn a_backend_panicking_while_a_dropped_read_waits_cannot_free_its_stack_buffer() {
    within(|| {
        let dev = Panicky::default();
        let r = catch_unwind(AssertUnwindSafe(|| {
            let mut fut = pin!(dev.read_at(0, [0u8; 4096]));
            assert!(poll_once(fut.as_mut()).is_pending());
            dev.panics.set(3);
        }));
        assert_eq!(message(&*r.unwrap_err()), "the backend's poll failed");
        assert_eq!(dev.completed.get(), 1);
        assert!(dev.views.borrow().is_empty());
        // Whatever the unwinding left behind runs now, on a frame that is gone: nothing is left.
        dev.poll_backend(&mut Context::from_waker(Waker::noop()));
    });
}

#[test]
fn a_backend_that_panics_on_every_poll_aborts_instead_of_freeing() {
    const NAME: &str = "a_backend_that_panics_on_every_poll_aborts_instead_of_freeing";
    if is_child(NAME) {
        std::panic::set_hook(Box::new(|_| {}));
        let dev = Panicky::default();
        let mut fut = Box::pin(dev.read_at(0, vec![0u8; 4096]));
        let _ = poll_once(fut.as_mut());
        dev.panics.set(usize::MAX);
        drop(fut);
        unreachable!("the drop cannot return while the view is in flight");
    }
    let (status, stderr) = in_child(NAME);
    assert!(aborted(status), "{status:?}: {stderr}");
    assert!(stderr.contains("the backend panicked on every poll"), "{stderr}");
}

fn panicking_waker() -> Waker {
    const VTABLE: RawWakerVTable = RawWakerVTable::new(
        |p| RawWaker::new(p, &VTABLE),
        |_| panic!("wake"),
        |_| panic!("wake_by_ref"),
        |_| {},
    );
    // SAFETY: the vtable's functions ignore the data pointer, which is never dereferenced.
    unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VTABLE)) }
}

#[test]
fn a_waker_that_panics_aborts_instead_of_unwinding_into_the_backend() {
    const NAME: &str = "a_waker_that_panics_aborts_instead_of_unwinding_into_the_backend";
    if is_child(NAME) {
        let dev = Held::default();
        let mut pkt = pin!(Packet::<FromDevice, _>::new(vec![0u8; 64]));
        pkt.as_mut().submit(&dev, 0).unwrap();
        let w = panicking_waker();
        assert!(pkt.poll_done(&mut Context::from_waker(&w)).is_pending());
        let (_, v) = dev.reads.borrow_mut().pop().unwrap();
        v.ok();
        unreachable!("the wake panicked");
    }
    let (status, stderr) = in_child(NAME);
    assert!(aborted(status), "{status:?}: {stderr}");
    assert!(stderr.contains("a Waker panicked in wake()"), "{stderr}");
}

#[test]
fn a_waker_whose_clone_panicked_does_not_stop_later_wakes() {
    const VTABLE: RawWakerVTable = RawWakerVTable::new(|_| panic!("clone"), |_| {}, |_| {}, |_| {});
    // SAFETY: as in `panicking_waker`.
    let bad = unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VTABLE)) };
    let dev = Held::default();
    let mut pkt = pin!(Packet::<FromDevice, _>::new(vec![0u8; 64]));
    pkt.as_mut().submit(&dev, 0).unwrap();
    let r = catch_unwind(AssertUnwindSafe(|| pkt.poll_done(&mut Context::from_waker(&bad))));
    assert!(r.is_err());
    // Polled again this round, the packet cannot register (the AtomicWaker is stuck), so it
    // asks to be polled again rather than wait for a wake that cannot come.
    let rewoken = Arc::new(AtomicUsize::new(0));
    let rewaker = Waker::from(Arc::new(Counter(rewoken.clone())));
    assert!(pkt.poll_done(&mut Context::from_waker(&rewaker)).is_pending());
    assert_eq!(rewoken.load(Ordering::SeqCst), 1);
    dev.reads.borrow_mut().pop().unwrap().1.ok();
    assert!(pkt.poll_done(&mut Context::from_waker(Waker::noop())).is_ready());
    // Next round: a good waker registers and is woken.
    pkt.as_mut().submit(&dev, 0).unwrap();
    let woken = Arc::new(AtomicUsize::new(0));
    let waker = Waker::from(Arc::new(Counter(woken.clone())));
    assert!(pkt.poll_done(&mut Context::from_waker(&waker)).is_pending());
    dev.reads.borrow_mut().pop().unwrap().1.ok();
    assert_eq!(woken.load(Ordering::SeqCst), 1, "the owner was woken");
}

struct Counter(Arc<AtomicUsize>);

impl std::task::Wake for Counter {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_leaked_packet_keeps_its_sink_alive_for_the_views_that_outlive_it() {
    let dev = Held::default();
    let calls = Arc::new(AtomicUsize::new(0));
    {
        let c = calls.clone();
        let big = vec![1u8; 1 << 16]; // the sink owns memory that must still be there
        let sink = Arc::new(move |_: usize, _: usize, _: Result<(), Error>| {
            c.fetch_add(usize::from(big[4096]), Ordering::SeqCst);
        });
        let mut pkt = Box::pin(Packet::<FromDevice, _>::new(vec![0u8; 512]).with_sink(sink));
        pkt.as_mut().submit(&dev, 0).unwrap();
        std::mem::forget(pkt);
        // Every handle of ours to the sink is gone now; only the leaked packet holds it.
    }
    let (_, v) = dev.reads.borrow_mut().pop().unwrap();
    let (a, b) = v.split_at(256);
    a.ok();
    b.fail(Error::DROPPED);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn a_dropped_packet_whose_view_was_leaked_says_so_instead_of_hanging_silently() {
    const NAME: &str = "a_dropped_packet_whose_view_was_leaked_says_so_instead_of_hanging_silently";
    if is_child(NAME) {
        mfio::report_stalled_drops_after(Duration::from_millis(50));
        let dev = MemoryBackend::new(4096);
        let mut pkt = Box::pin(Packet::<FromDevice, _>::new(vec![0u8; 64]));
        let view = pkt.as_mut().start(Some(&dev)).unwrap();
        std::mem::forget(view);
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_secs(5));
            // Still waiting, as it must (the memory is lent out for ever): end the child.
            std::process::exit(42);
        });
        drop(pkt);
        unreachable!("a drop with a leaked view never returns");
    }
    let (status, stderr) = in_child(NAME);
    assert_eq!(status.code(), Some(42), "{stderr}");
    assert!(stderr.contains("a dropped packet has waited"), "{stderr}");
    assert!(stderr.contains("probably leaked (mem::forget)"), "{stderr}");
    assert_eq!(stderr.matches("mfio: a dropped packet").count(), 1, "once: {stderr}");
}

/// A panic payload whose drop panics too.
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        panic!("the payload's drop");
    }
}

#[test]
fn sink_panics_whose_payloads_panic_on_drop_neither_hang_nor_unwind_into_the_backend() {
    within(|| {
        let dev = Held::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let sink = Arc::new(move |_: usize, _: usize, _: Result<(), Error>| {
            c.fetch_add(1, Ordering::SeqCst);
            std::panic::panic_any(Bomb);
        });
        let mut pkt = Box::pin(Packet::<FromDevice, _>::new(vec![0u8; 64]).with_sink(sink));
        pkt.as_mut().submit(&dev, 0).unwrap();
        let (_, v) = dev.reads.borrow_mut().pop().unwrap();
        let (a, b) = v.split_at(32);
        a.ok();
        b.ok(); // the second payload is leaked, not dropped under the error lock
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pkt.poll_done(&mut Context::from_waker(Waker::noop()))
        }));
        let payload = r.expect_err("the first payload reaches the owner");
        assert!(payload.is::<Bomb>());
        std::mem::forget(payload);
        assert!(pkt.is_idle());
    });
}

/// A file backend parks the waker of an idle poll and wakes it when work is next queued: a
/// waker that panics there unwinds out of the send, after the request was queued. The
/// request's packet (on the stack of a blocking read) is dropped by the unwind, which waits for
/// its segment; the backend goes on serving. Both with io_uring and without.
#[test]
fn a_panicking_parked_waker_of_a_file_backend_loses_nothing() {
    use mfio::backends::{FileBackend, FileOptions};
    use mfio::{IoBackend, ReadAt};
    use std::sync::Arc;
    use std::task::{Context, Wake, Waker};
    struct Bomb;
    impl Wake for Bomb {
        fn wake(self: Arc<Self>) {
            panic!("waker bomb");
        }
    }
    for io_uring in [true, false] {
        let p = std::env::temp_dir().join(format!("mfio-bomb-{}-{io_uring}", std::process::id()));
        std::fs::write(&p, vec![9u8; 1 << 16]).unwrap();
        let dev =
            FileBackend::open_with(&p, &FileOptions { io_uring, ..Default::default() }).unwrap();
        std::fs::remove_file(&p).unwrap();
        let bomb = Waker::from(Arc::new(Bomb));
        let _ = dev.poll_backend(&mut Context::from_waker(&bomb)); // idle: parks the bomb
        let mut buf = vec![0u8; 4096];
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            dev.read_at_blocking(0, &mut buf)
        }));
        assert!(r.is_err(), "the parked waker's panic reached the sender");
        // The backend still works, and the panicking waker was used once only.
        let mut buf = vec![0u8; 4096];
        assert_eq!(dev.read_at_blocking(4096, &mut buf), Ok(4096));
        assert!(buf.iter().all(|&b| b == 9));
    }
}
