//! The two traits every backend implements, and the loop that drives them.
//!
//! [`PacketIo::send_io`] only enqueues: it never blocks and never rings a doorbell.
//! [`IoBackend::poll_backend`] is where queued work reaches the device and completions are
//! drained. Executors poll the user's futures first and the backend second, so every request
//! issued in one round of polling reaches the device as one batch, behind one doorbell write.

use crate::perms::PacketPerms;
use crate::PacketView;
use core::future::Future;
use core::pin::{pin, Pin};
use core::task::{Context, Poll, Waker};

/// Sends packet views to an address (`Param`: a byte offset `u64` for block devices).
pub trait PacketIo<P: PacketPerms, Param> {
    /// Queues `view` for I/O at `param`. Never blocks; the work is handed to the device on the
    /// backend's next poll. The backend must complete the view (or drop it, which fails it).
    fn send_io(&self, param: Param, view: PacketView<P>);
}

/// Whether a backend has work in flight after a poll.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Activity {
    /// Nothing queued or in flight.
    Idle,
    /// Segments are queued or in flight; polling again makes progress.
    Busy,
    /// Segments are in flight, none finished in this poll, and the backend has armed its
    /// interrupt and then looked at its queues again: whatever the device posts from now on
    /// makes its [`polling_handle`](IoBackend::polling_handle) readable, so the caller may sleep
    /// on it instead of polling (and should poll again within a bounded time: an interrupt can
    /// be lost). Only a backend with a polling handle returns it; a caller that cannot sleep
    /// treats it as `Busy`.
    Armed,
}

/// A file descriptor that becomes readable when the backend has completions to reap (an
/// eventfd an interrupt signals), for callers that would rather sleep in `poll(2)`, epoll, a
/// tokio `AsyncFd` or smol's `Async` than spin. The backend owns it for its whole life; a
/// reader may find it readable with nothing to reap (a completion reaped while polling).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PollingHandle {
    /// The descriptor to wait on for readability.
    pub fd: i32,
}

#[cfg(feature = "std")]
impl PollingHandle {
    /// Sleeps until the descriptor is readable or `timeout_ms` passes (`poll(2)`), for loops
    /// of one's own that got [`Activity::Armed`]. Keep the timeout short (see
    /// [`SLEEP_BOUND_MS`](crate::SLEEP_BOUND_MS)): a backend notices a lost interrupt only when
    /// it is polled again.
    pub fn wait(&self, timeout_ms: i32) {
        crate::sleep::wait_fd(self.fd, timeout_ms)
    }

    /// A descriptor of the caller's own for the same file (`F_DUPFD_CLOEXEC`): readable when
    /// this one is, and registrable with a reactor (tokio's `AsyncFd`, smol's `Async`) without
    /// clashing with another registration of the backend's, or outliving it by mistake.
    pub fn try_clone(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        crate::sleep::dup_fd(self.fd)
    }
}

/// The backend's driver: hands queued work to the device and drains completions.
pub trait IoBackend {
    /// Submits everything queued since the last poll (one doorbell per queue) and completes
    /// whatever the device has finished. Never blocks.
    ///
    /// A backend with a [`polling_handle`](Self::polling_handle) that answers `Idle` or `Armed`
    /// keeps `cx`'s waker and wakes it when work is next sent to it, so an executor may park
    /// its driving task until then (or until the handle is readable, for `Armed`). Backends
    /// without a handle may ignore `cx`: they are polled again, not woken.
    fn poll_backend(&self, cx: &mut Context<'_>) -> Activity;

    /// A descriptor to sleep on while waiting for completions, when the backend has one (an
    /// interrupt-driven queue). `None` means the backend must be polled.
    fn polling_handle(&self) -> Option<PollingHandle> {
        None
    }

    /// The backend's driving future: polls the backend forever. Join it with the user's
    /// futures on any executor (after them, so their I/O is batched), or use [`block_on`].
    fn driver(&self) -> Driver<'_, Self>
    where
        Self: Sized,
    {
        Driver { backend: self }
    }
}

impl<T: IoBackend + ?Sized> IoBackend for &T {
    fn poll_backend(&self, cx: &mut Context<'_>) -> Activity {
        (**self).poll_backend(cx)
    }
    fn polling_handle(&self) -> Option<PollingHandle> {
        (**self).polling_handle()
    }
}

impl<T: PacketIo<P, Param> + ?Sized, P: PacketPerms, Param> PacketIo<P, Param> for &T {
    fn send_io(&self, param: Param, view: PacketView<P>) {
        (**self).send_io(param, view)
    }
}

/// Geometry of a block device.
pub trait BlockDevice {
    /// The unit of addressing and transfer, in bytes: offsets and lengths must be multiples.
    fn block_size(&self) -> u32;
    /// Capacity in bytes.
    fn capacity(&self) -> u64;
}

/// Future returned by [`IoBackend::driver`]; it never completes.
pub struct Driver<'a, B: IoBackend> {
    backend: &'a B,
}

impl<B: IoBackend> Future for Driver<'_, B> {
    type Output = core::convert::Infallible;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.backend.poll_backend(cx);
        // Polled backends make progress only when polled: ask to be polled again. (An executor
        // that can wait on a descriptor sleeps on `Armed` instead: see the mfio-rt crate.)
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Runs `fut` to completion on this thread, polling `backend` after it each round.
///
/// This is the blocking ("no colour") face of every operation: no thread is spawned, and the
/// future and the backend are polled in turn, so I/O issued by the future in one round reaches
/// the device as one batch. It spins while I/O is in flight (polled-mode drivers answer in
/// microseconds) and backs off to yielding when nothing progresses for a while. When a backend
/// with a polling handle answers [`Activity::Armed`] (an interrupt-driven queue with nothing
/// posted yet) or `Idle`, it sleeps on the handle instead (at most [`SLEEP_BOUND_MS`] at a
/// time while armed, a second while idle), and a wake of `fut` from another thread ends that
/// sleep.
///
/// [`SLEEP_BOUND_MS`]: crate::SLEEP_BOUND_MS
pub fn block_on<Bk: IoBackend + ?Sized, F: Future>(backend: &Bk, fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    // A backend that can be slept on keeps the waker of its idle or armed polls and wakes it
    // when work is sent: this thread's kick, so that I/O the future sends just before a sleep
    // ends it. A polled backend gets the no-op waker (the hot path pays nothing).
    #[cfg(feature = "std")]
    let kick = backend.polling_handle().and_then(|_| crate::sleep::kick_waker());
    #[cfg(feature = "std")]
    let mut bcx = Context::from_waker(kick.as_ref().unwrap_or(Waker::noop()));
    #[cfg(not(feature = "std"))]
    let mut bcx = Context::from_waker(Waker::noop());
    let mut spins = 0u32;
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        let activity = backend.poll_backend(&mut bcx);
        if activity == Activity::Busy {
            core::hint::spin_loop();
            continue;
        }
        // Idle or armed: a backend with a polling handle lets this thread sleep (on it, and on
        // a wake of `fut` from elsewhere); others are polled again, with a growing backoff.
        #[cfg(feature = "std")]
        if let Some(handle) = backend.polling_handle() {
            spins = 0;
            let bound = match activity {
                Activity::Armed => crate::sleep::SLEEP_BOUND_MS,
                _ => crate::sleep::IDLE_BOUND_MS,
            };
            if let Poll::Ready(v) = crate::sleep::sleep_with(handle.fd, fut.as_mut(), bound) {
                return v;
            }
            continue;
        }
        match activity {
            Activity::Idle => crate::backoff(&mut spins),
            _ => core::hint::spin_loop(),
        }
    }
}
