//! tokio: the driver waits on the polling handle through [`AsyncFd`] and bounds each sleep
//! with [`tokio::time`]. Build the runtime with its I/O and time drivers
//! (`Builder::enable_all`), as [`block_on`] does.

use crate::{with_driver, Core, Reactor, SLEEP_BOUND};
use core::future::Future;
use core::ops::Deref;
use core::pin::Pin;
use core::task::{Context, Poll};
use mfio::IoBackend;
use std::os::fd::OwnedFd;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The reactor side of a tokio driver: the polling handle's readiness and a timer.
struct Tokio {
    fd: AsyncFd<OwnedFd>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Tokio {
    /// For `backend`'s polling handle; `None` without one (or if it cannot be registered,
    /// said once: the driver then polls).
    fn new<B: IoBackend + ?Sized>(backend: &B) -> Option<Tokio> {
        let handle = backend.polling_handle()?;
        // `with_interest` is deprecated for types that may close or replace their descriptor
        // while registered (tokio#8587); an `OwnedFd` of our own does neither, and this keeps
        // the crate free of `unsafe` (`register_with_interest` is the same call, unsafe).
        #[allow(deprecated)]
        let registered =
            handle.try_clone().and_then(|fd| AsyncFd::with_interest(fd, Interest::READABLE));
        match registered {
            Ok(fd) => Some(Tokio { fd, sleep: Box::pin(tokio::time::sleep(SLEEP_BOUND)) }),
            Err(e) => {
                eprintln_once(&format!(
                    "mfio-rt: the backend's polling handle cannot be registered with tokio \
                     ({e}); its driver polls instead of sleeping"
                ));
                None
            }
        }
    }
}

impl Reactor for Tokio {
    fn poll_handle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.fd.poll_read_ready(cx) {
            // Cleared before the backend is polled (which reads the eventfd): an interrupt
            // after this is a new edge, seen by the next wait.
            Poll::Ready(Ok(mut guard)) => {
                guard.clear_ready();
                Poll::Ready(())
            }
            // The reactor failed on this descriptor: poll the backend again (its own bounded
            // checks go on) rather than sleep on something that will not wake us.
            Poll::Ready(Err(_)) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }

    fn start_timer(&mut self) {
        self.sleep.as_mut().reset(tokio::time::Instant::now() + SLEEP_BOUND);
    }

    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.sleep.as_mut().poll(cx)
    }
}

/// Says `msg` on stderr once per process (without `eprintln!`, which panics on a closed
/// stderr).
fn eprintln_once(msg: &str) {
    use std::io::Write;
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = writeln!(std::io::stderr(), "{msg}");
    });
}

/// The driving future of a backend on tokio (see the crate documentation); it never
/// finishes. `R` is how it holds the backend: `&B`, `Rc<B>`, `Arc<B>`.
pub struct Driver<R> {
    backend: R,
    core: Option<Core<Tokio>>,
}

/// The driver of `backend`, to `spawn_local` beside the tasks that use it (with `Rc`) or to
/// join with them ([`run_with`]).
pub fn drive<R>(backend: R) -> Driver<R>
where
    R: Deref + Unpin,
    R::Target: IoBackend,
{
    Driver { backend, core: None }
}

impl<R> Future for Driver<R>
where
    R: Deref + Unpin,
    R::Target: IoBackend,
{
    type Output = core::convert::Infallible;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // Registered on the first poll, inside the runtime.
        let core = this.core.get_or_insert_with(|| {
            // tokio panics when the runtime lacks its I/O or time driver: fall back to polling
            // (said once) rather than take the task down.
            let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Tokio::new(&*this.backend)
            }));
            Core::new(made.unwrap_or_else(|_| {
                eprintln_once(
                    "mfio-rt: the tokio runtime has no I/O or time driver (build it with \
                     enable_all()); the driver polls instead of sleeping",
                );
                None
            }))
        });
        core.poll(&*this.backend, cx)
    }
}

/// Runs `fut` with `backend`'s driver in the same task (the future first each round): the
/// result is `fut`'s. Inside a tokio runtime.
pub async fn run_with<B: IoBackend + ?Sized, F: Future>(backend: &B, fut: F) -> F::Output {
    with_driver(fut, drive(backend)).await
}

/// Runs `fut` to completion on a new current-thread tokio runtime (I/O and time drivers on),
/// with `backend`'s driver. For one-off use: an engine builds its runtime once and calls
/// [`run_with`] or spawns [`drive`].
///
/// # Panics
/// If the runtime cannot be built (the process is out of file descriptors or threads).
pub fn block_on<B: IoBackend + ?Sized, F: Future>(backend: &B, fut: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime");
    rt.block_on(run_with(backend, fut))
}
