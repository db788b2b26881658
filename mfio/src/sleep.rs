//! Sleeping on a backend's polling handle instead of spinning (`std` only).
//!
//! A backend that answers a poll with [`Activity::Armed`](crate::Activity::Armed) has checked
//! its queues after arming its interrupt, so anything the device posts from then on makes the
//! polling handle readable: sleeping in `poll(2)` on it cannot miss a completion. The blocking
//! loops sleep there; the wait is bounded ([`SLEEP_BOUND_MS`]) so a backend whose interrupt
//! never comes is polled again soon and can notice and fall back to polling.
//!
//! [`block_on`](crate::block_on) also sleeps on a second descriptor, this thread's *kick*
//! eventfd, so a future woken from another thread (a channel, a timer) ends the sleep at once.
//! The kick's waker writes to it only while the thread is about to sleep or sleeping (`armed`):
//! the hot path, where futures are polled in turn without sleeping, keeps its no-op waker and
//! pays nothing.

use alloc::sync::Arc;
use core::future::Future;
use core::pin::Pin;
use core::sync::atomic::{AtomicU32, Ordering};
use core::task::{Context, Poll, Waker};
use std::task::Wake;

/// The longest one sleep on an armed backend's polling handle lasts, in milliseconds: how soon
/// a backend whose interrupt was lost is polled again.
pub const SLEEP_BOUND_MS: i32 = 50;

/// The longest one sleep of [`block_on`](crate::block_on) on an idle backend lasts (nothing in
/// flight, so no interrupt can be lost; the bound only limits what a future that forgot its
/// waker costs). Long, so that an idle thread wakes once a second, not twenty times.
pub const IDLE_BOUND_MS: i32 = 1000;

/// This thread's kick eventfd, and how many sleeps of this thread are under way on it (a
/// count, not a flag: a `block_on` nested in a future's poll must not disarm the outer one).
struct Kick {
    fd: i32,
    armed: AtomicU32,
}

impl Kick {
    fn new() -> Option<Arc<Kick>> {
        // SAFETY: eventfd takes no pointers; a negative result is an error, handled.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        (fd >= 0).then(|| Arc::new(Kick { fd, armed: AtomicU32::new(0) }))
    }
}

impl Wake for Kick {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // SeqCst pairs with the sleeper's store of `armed` before its last poll of the future:
        // either this sees `armed` and writes, or the sleeper's poll saw what this wake is for.
        if self.armed.load(Ordering::SeqCst) > 0 {
            let one = 1u64;
            // SAFETY: writes 8 bytes from a live u64 to a descriptor this `Kick` owns (it is
            // closed only when the last `Arc` goes). A failure (a full counter) still leaves the
            // eventfd readable, which is all a wake needs. Never panics: wakers run where
            // unwinding is not allowed.
            let _ = unsafe { libc::write(self.fd, (&one as *const u64).cast(), 8) };
        }
    }
}

impl Drop for Kick {
    fn drop(&mut self) {
        // SAFETY: the descriptor is this `Kick`'s alone and closed once, here.
        unsafe { libc::close(self.fd) };
    }
}

std::thread_local! {
    static KICK: Option<Arc<Kick>> = Kick::new();
}

/// Ends this sleep's share of `armed`, also if a poll unwinds.
struct Disarm<'a>(&'a Kick);

impl Drop for Disarm<'_> {
    fn drop(&mut self) {
        self.0.armed.fetch_sub(1, Ordering::SeqCst);
    }
}

/// This thread's kick waker, for the backend's polls in `block_on`: a backend keeps the waker
/// of a poll that answered `Idle` or `Armed` and wakes it when work is sent, so I/O sent by the
/// future's last poll before a sleep ends the sleep (the doorbell is rung in the next poll).
pub(crate) fn kick_waker() -> Option<Waker> {
    KICK.try_with(|k| k.clone()).ok().flatten().map(Waker::from)
}

/// Polls `fut` once more with a waker that can end the sleep, then sleeps until the backend's
/// polling handle `fd` or the kick is readable (at most `bound_ms`). `Ready` if that poll
/// finished the future.
pub(crate) fn sleep_with<F: Future>(fd: i32, fut: Pin<&mut F>, bound_ms: i32) -> Poll<F::Output> {
    // `try_with`: during thread-local destruction there is no kick, only the bounded sleep.
    let Some(kick) = KICK.try_with(|k| k.clone()).ok().flatten() else {
        // No eventfd for this thread (descriptors exhausted): sleep on the backend alone, and
        // not long, since only the bound ends a wait for a wake from elsewhere.
        wait_readable(&[fd], SLEEP_BOUND_MS);
        return Poll::Pending;
    };
    kick.armed.fetch_add(1, Ordering::SeqCst);
    let disarm = Disarm(&kick);
    let waker = Waker::from(kick.clone());
    let mut cx = Context::from_waker(&waker);
    if let Poll::Ready(v) = fut.poll(&mut cx) {
        return Poll::Ready(v);
    }
    if wait_readable(&[fd, kick.fd], bound_ms) & 2 != 0 {
        let mut n = 0u64;
        // SAFETY: reads 8 bytes into a live u64 from the kick's own descriptor (nonblocking).
        let _ = unsafe { libc::read(kick.fd, (&mut n as *mut u64).cast(), 8) };
    }
    drop(disarm);
    Poll::Pending
}

/// Sleeps until the backend's polling handle `fd` is readable, at most [`SLEEP_BOUND_MS`] (a
/// dropped packet waiting for its segments: nothing but the backend can end that wait).
pub(crate) fn sleep_on(fd: i32) {
    wait_fd(fd, SLEEP_BOUND_MS);
}

/// A fresh descriptor for the file `fd` refers to.
pub(crate) fn dup_fd(fd: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: fcntl takes no pointers; an invalid `fd` is an error (EBADF), handled.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `new` was just created by F_DUPFD and is owned by nothing else; the OwnedFd
    // closes it once. (Whatever file `fd` named, the duplicate is ours alone.)
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(new) })
}

/// Sleeps until `fd` is readable, at most `timeout_ms`.
pub(crate) fn wait_fd(fd: i32, timeout_ms: i32) {
    wait_readable(&[fd], timeout_ms);
}

/// `poll(2)` for readability of up to two descriptors; bit `i` of the result is set when
/// `fds[i]` is readable (or in error: the caller's next read or poll will say).
fn wait_readable(fds: &[i32], timeout_ms: i32) -> u32 {
    let mut p = [libc::pollfd { fd: -1, events: libc::POLLIN, revents: 0 }; 2];
    let n = fds.len().min(2);
    for (slot, &fd) in p.iter_mut().zip(fds) {
        slot.fd = fd;
    }
    // SAFETY: `p` is a live array of at least `n` pollfds; poll writes only their `revents`.
    let r = unsafe { libc::poll(p.as_mut_ptr(), n as libc::nfds_t, timeout_ms) };
    if r <= 0 {
        return 0; // Timed out, or interrupted by a signal: the caller polls again either way.
    }
    p[..n].iter().enumerate().filter(|(_, s)| s.revents != 0).fold(0, |m, (i, _)| m | 1 << i)
}
