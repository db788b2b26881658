//! smol: the driver waits on the polling handle through [`async_io::Async`] and bounds each
//! sleep with [`async_io::Timer`].

use crate::{with_driver, Core, Reactor, SLEEP_BOUND};
use async_io::{Async, Timer};
use core::future::Future;
use core::ops::Deref;
use core::pin::Pin;
use core::task::{Context, Poll};
use mfio::IoBackend;
use std::os::fd::OwnedFd;

/// The reactor side of a smol driver.
struct Smol {
    fd: Async<OwnedFd>,
    timer: Timer,
}

impl Smol {
    fn new<B: IoBackend + ?Sized>(backend: &B) -> Option<Smol> {
        let fd = backend.polling_handle()?.try_clone().and_then(Async::new).ok()?;
        Some(Smol { fd, timer: Timer::after(SLEEP_BOUND) })
    }
}

impl Reactor for Smol {
    fn poll_handle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // One-shot interest: readiness is not kept once reported, nothing to clear. An error
        // is treated as readiness (poll the backend again, do not sleep on it).
        self.fd.poll_readable(cx).map(|_| ())
    }

    fn start_timer(&mut self) {
        self.timer.set_after(SLEEP_BOUND);
    }

    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.timer).poll(cx).map(|_| ())
    }
}

/// The driving future of a backend on smol (see the crate documentation); it never finishes.
pub struct Driver<R> {
    backend: R,
    core: Option<Core<Smol>>,
}

/// The driver of `backend`, to spawn on a `LocalExecutor` beside the tasks that use it, or to
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
        let core = this.core.get_or_insert_with(|| Core::new(Smol::new(&*this.backend)));
        core.poll(&*this.backend, cx)
    }
}

/// Runs `fut` with `backend`'s driver in the same task (the future first each round).
pub async fn run_with<B: IoBackend + ?Sized, F: Future>(backend: &B, fut: F) -> F::Output {
    with_driver(fut, drive(backend)).await
}

/// Runs `fut` to completion on this thread with `backend`'s driver (`async_io::block_on`,
/// which sleeps in the reactor while nothing is ready).
pub fn block_on<B: IoBackend + ?Sized, F: Future>(backend: &B, fut: F) -> F::Output {
    async_io::block_on(run_with(backend, fut))
}
