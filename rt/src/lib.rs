//! mfio-rt: mfio backends on tokio and smol, woken by the device's interrupts.
//!
//! An mfio backend is driven by polling it ([`IoBackend::poll_backend`]). On a runtime, a
//! *driver* future does that: it polls the backend after the user's futures (so what they
//! issued in one round reaches the device as one batch), and when the backend has nothing to
//! do for a while it sleeps in the runtime's reactor instead of spinning:
//! - [`Activity::Busy`]: the driver yields (wakes itself and returns `Pending`), so every
//!   other ready task runs before the next poll;
//! - [`Activity::Armed`] (an interrupt-driven queue with I/O in flight and nothing posted):
//!   it waits for the backend's [`polling_handle`](IoBackend::polling_handle) (the queue's
//!   MSI-X eventfd) to become readable, registered with the reactor, and at most
//!   [`mfio::SLEEP_BOUND_MS`] (a lost interrupt is then noticed by the backend);
//! - [`Activity::Idle`]: it waits until the backend wakes it (a backend with a polling handle
//!   wakes the last poll's waker when work is sent to it) or the handle is readable.
//!
//! A backend without a polling handle (a polled queue, a file) can only be polled: its
//! driver yields on every answer, so the thread stays busy while the driver runs. Give the
//! queue an interrupt-driven mode (`CompletionMode::Interrupt` or `Adaptive`) for an idle
//! thread to sleep.
//!
//! # Threading model
//!
//! Thread per core, as tokio-uring and glommio have it: a queue (NVMe queue pair, virtqueue)
//! belongs to one thread (`Send`, not `Sync`: its hot path takes no lock). Run one
//! current-thread runtime per worker thread, give each its own queue, and share the queue
//! between that thread's tasks with `Rc` and `spawn_local` (a `tokio::task::LocalSet`, or a
//! `smol::LocalExecutor`). The futures of reads and writes borrow the queue and are not
//! `Send`; a multi-threaded engine sends requests to the worker that owns the queue (a
//! channel), not queues to threads. `examples/engine.rs` is such an engine.
//!
//! ```no_run
//! # #[cfg(feature = "tokio")] {
//! use mfio::ReadAt;
//! use mfio_nvme::{CompletionMode, Controller, ControllerOptions};
//! use mfio_pci::VfioPci;
//!
//! let dev = VfioPci::open("0000:00:04.0".parse().unwrap()).unwrap();
//! let ctrl = Controller::new(dev, ControllerOptions::default()).unwrap();
//! let q = ctrl.io_queue_with(1, CompletionMode::ADAPTIVE).unwrap();
//! let data = mfio_rt::tokio::block_on(&q, async {
//!     let (r, buf) = q.read_at(0, vec![0u8; 4096]).await;
//!     r.map(|_| buf)
//! });
//! println!("{:?}", &data.unwrap()[..16]);
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use core::future::Future;
use core::task::{Context, Poll};
use mfio::{Activity, IoBackend};

#[cfg(feature = "smol")]
pub mod smol;
#[cfg(feature = "tokio")]
pub mod tokio;

/// How long a driver sleeps on an armed backend before polling it again regardless.
pub const SLEEP_BOUND: std::time::Duration =
    std::time::Duration::from_millis(mfio::SLEEP_BOUND_MS as u64);

/// What a runtime gives a driver: readiness of the polling handle, and a timer.
pub(crate) trait Reactor {
    /// `Ready` (and readiness cleared, so the next edge is seen) if the handle is readable;
    /// otherwise registers `cx` to be woken when it becomes so.
    fn poll_handle(&mut self, cx: &mut Context<'_>) -> Poll<()>;
    /// Starts the bound on a sleep.
    fn start_timer(&mut self);
    /// `Ready` once the bound started last has passed; otherwise registers `cx`.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

/// The driving loop shared by the runtimes (see the crate documentation).
pub(crate) struct Core<R> {
    reactor: Option<R>,
    /// The bound of the current sleep is running.
    timing: bool,
}

impl<R: Reactor> Core<R> {
    pub(crate) fn new(reactor: Option<R>) -> Self {
        Self { reactor, timing: false }
    }

    /// One poll of the driver: polls `backend` until it says the driver should wait.
    pub(crate) fn poll<B: IoBackend + ?Sized>(
        &mut self,
        backend: &B,
        cx: &mut Context<'_>,
    ) -> Poll<core::convert::Infallible> {
        // A few rounds at most before yielding: the handle may be readable again at once.
        for _ in 0..4 {
            let activity = backend.poll_backend(cx);
            let Some(reactor) = self.reactor.as_mut() else {
                break; // polled only: yield below
            };
            match activity {
                Activity::Busy => {
                    self.timing = false;
                    break;
                }
                Activity::Armed | Activity::Idle => {
                    if reactor.poll_handle(cx).is_ready() {
                        self.timing = false;
                        continue; // an interrupt came: poll the backend again now
                    }
                    if activity == Activity::Idle {
                        self.timing = false;
                        return Poll::Pending; // the backend wakes us when work is sent
                    }
                    if !self.timing {
                        reactor.start_timer();
                        self.timing = true;
                    }
                    if reactor.poll_timer(cx).is_ready() {
                        self.timing = false;
                        continue; // the bound passed: poll again (a lost interrupt?)
                    }
                    return Poll::Pending;
                }
            }
        }
        // Busy, or polled only: let every other ready task run, then poll again.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Runs `fut` and `driver` in one task: `fut` first each round, so what it issues is batched
/// by the driver's poll after it; the result is `fut`'s (the driver never finishes).
pub(crate) async fn with_driver<F, D>(fut: F, driver: D) -> F::Output
where
    F: Future,
    D: Future<Output = core::convert::Infallible>,
{
    let mut fut = core::pin::pin!(fut);
    let mut driver = core::pin::pin!(driver);
    core::future::poll_fn(move |cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(v);
        }
        // What the driver completes wakes this task (the future's waker), so `fut` is polled
        // again in the next round.
        let _ = driver.as_mut().poll(cx);
        Poll::Pending
    })
    .await
}
