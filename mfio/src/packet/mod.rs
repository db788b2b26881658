//! Packets and their views: the unit of I/O.
//!
//! A [`Packet`] owns a buffer and a small header: the count of segments in flight, the waker of
//! the task waiting on it, and the first error (the error clamp). Submitting a packet hands out
//! one [`PacketView`] over the whole buffer; a backend may [`split`](PacketView::split_at) a view
//! into non-overlapping segments, send them to different queues or devices, and complete each on
//! its own, with success or an error. When the last segment completes the packet reports the
//! contiguous successful prefix and the first error ([`Transfer`]): partial success.
//!
//! # Soundness
//! Views carry no lifetime, so a backend can keep them in its command-slot table while the
//! device works. What keeps them valid is the packet's drop: a packet can only be submitted once
//! pinned, and its `Drop` does not return until every view has completed (it drives the backend
//! the packet was submitted to, so single-threaded polled backends make progress). Pin's drop
//! guarantee means the packet's memory is never reused before that; a leaked packet
//! (`mem::forget` of a `Box::pin`) leaks its buffer and its sink with it, so they stay valid for
//! every view that outlives it. Dropping a view without completing it completes it with
//! [`Error::DROPPED`]: never a silent success.
//!
//! User code that runs while segments are in flight (the sink, the waker, the backend polled by
//! the drop) cannot unwind past the point that keeps the memory alive: see `unwind.rs`. A view
//! that is leaked instead of completed keeps its packet waiting for ever (the memory stays lent
//! to whoever holds the view); with `std`, a drop that has waited long reports it on stderr.

#[cfg(feature = "std")]
use crate::backend::Activity;
use crate::backend::{IoBackend, PacketIo};
use crate::buf::{IoBuf, IoBufMut};
use crate::error::{Error, ErrorKind, Origin, PartialError};
use crate::perms::{FromDevice, PacketPerms, ToDevice};
#[cfg(feature = "std")]
use crate::stall;
use crate::unwind;
use alloc::sync::Arc;
use atomic_waker::AtomicWaker;
use core::cell::{Cell, UnsafeCell};
use core::future::Future;
use core::marker::{PhantomData, PhantomPinned};
use core::mem::ManuallyDrop;
use core::pin::Pin;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use core::task::{Context, Poll, Waker};

mod header;
mod view;

use header::*;
use view::span;
pub use view::PacketView;

/// Observes a packet's segments as they complete (per-segment output).
///
/// Called on the thread that completes the segment, before the packet is told; `offset` is
/// relative to the packet's start. A router, a mirror or a progress meter can watch I/O this way.
/// The packet owns its sink (an `Arc`, so the caller can keep a handle to read it), because a
/// leaked packet's views may still complete after every borrow has ended.
///
/// A sink that panics does not stop the segment from completing: the panic is caught and raised
/// again on the packet's owner when it sees the packet done (without `std`, the process aborts).
pub trait SegmentSink: Sync + Send {
    /// One segment of `len` bytes at `offset` in the packet completed with `result`.
    fn segment(&self, offset: usize, len: usize, result: Result<(), Error>);
}

impl<F: Fn(usize, usize, Result<(), Error>) + Sync + Send> SegmentSink for F {
    fn segment(&self, offset: usize, len: usize, result: Result<(), Error>) {
        self(offset, len, result)
    }
}

/// The outcome of a packet: its length, the contiguous good prefix, and the first error.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// The packet's length in bytes.
    pub len: usize,
    /// Bytes completed successfully from the packet's start (up to the first error).
    pub done: usize,
    /// The error of the failed segment nearest the packet's start, if any segment failed.
    pub error: Option<Error>,
}

impl Transfer {
    /// Whether every segment succeeded.
    pub fn is_complete(&self) -> bool {
        self.error.is_none()
    }

    /// `Ok(len)` when every segment succeeded, otherwise the good prefix and the first error.
    pub fn into_result(self) -> Result<usize, PartialError> {
        match self.error {
            None => Ok(self.len),
            Some(error) => Err(PartialError { done: self.done, error }),
        }
    }

    /// Like `pread`: a request cut short by the end of the device is a short success
    /// (`Ok(done)`); any other error is an error.
    pub fn into_short_result(self) -> Result<usize, PartialError> {
        match self.error {
            Some(e) if e.kind() == ErrorKind::OutOfRange => Ok(self.done),
            _ => self.into_result(),
        }
    }
}

/// A buffer usable in direction `P`: writable for reads, readable for writes. Implemented for
/// every [`IoBuf`] (writes) and [`IoBufMut`] (reads); implement those rather than this.
///
/// # Safety
/// `raw_parts` must describe memory that stays valid, and is reached through nothing else, as
/// long as the value is alive and not moved (a packet may be leaked with its buffer: the memory
/// must then stay valid for ever, so it may borrow nothing shorter-lived than `'static`), and
/// that is initialized (and writable, for `FromDevice`).
pub unsafe trait BufFor<P: PacketPerms> {
    /// The buffer's memory, as the packet will expose it to views.
    fn raw_parts(&mut self) -> (*mut u8, usize);
}

// SAFETY: `IoBufMut`'s contract is this one (and `IoBuf: 'static`).
unsafe impl<B: IoBufMut> BufFor<FromDevice> for B {
    fn raw_parts(&mut self) -> (*mut u8, usize) {
        (self.io_mut_ptr(), self.io_len())
    }
}

// SAFETY: `IoBuf`'s contract is this one; views of a ToDevice packet never write.
unsafe impl<B: IoBuf> BufFor<ToDevice> for B {
    fn raw_parts(&mut self) -> (*mut u8, usize) {
        // Views of a ToDevice packet never write (they expose `as_slice` only).
        (self.io_ptr() as *mut u8, self.io_len())
    }
}

/// A packet: a buffer plus the header that tracks its segments in flight.
///
/// Create it with [`Packet::new`], pin it (`core::pin::pin!` on the stack, or `Box::pin`), then
/// [`submit`](Self::submit) it to a backend and await [`wait`](Self::wait) (or use
/// [`io`](Self::io), which does both). `'b` is the lifetime of the backend it is submitted to: if
/// the packet is dropped while segments are in flight, its `Drop` drives that backend until they
/// complete. A packet can be submitted again once done.
///
/// Packets are `!Send` (they hold a reference to their backend for that reason); their views are
/// `Send` and may complete on any thread.
pub struct Packet<'b, P: PacketPerms, B> {
    hdr: Header,
    driver: Cell<Option<&'b dyn IoBackend>>,
    sink: Option<Arc<dyn SegmentSink>>,
    len: Cell<usize>,
    /// Set while `poll_done` registers a waker: still set afterwards only if that panicked.
    registering: Cell<bool>,
    buf: UnsafeCell<Option<B>>,
    _pin: PhantomPinned,
    _perms: PhantomData<P>,
}

impl<'b, P: PacketPerms, B: BufFor<P>> Packet<'b, P, B> {
    /// A packet over `buf`, ready to submit.
    pub fn new(buf: B) -> Self {
        Self {
            hdr: Header::new(),
            driver: Cell::new(None),
            sink: None,
            len: Cell::new(0),
            registering: Cell::new(false),
            buf: UnsafeCell::new(Some(buf)),
            _pin: PhantomPinned,
            _perms: PhantomData,
        }
    }

    /// Sets an observer called for every segment as it completes (see [`SegmentSink`]).
    pub fn with_sink(mut self, sink: Arc<dyn SegmentSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Whether no segment is in flight (never submitted, or every segment completed).
    pub fn is_idle(&self) -> bool {
        self.hdr.is_idle()
    }

    /// The buffer, when no segment is in flight.
    pub fn buf(&self) -> Option<&B> {
        if !self.is_idle() {
            return None;
        }
        // SAFETY: idle: no view exists, and submitting again needs `&mut self`, which cannot
        // coexist with the returned shared borrow.
        unsafe { (*self.buf.get()).as_ref() }
    }

    /// The buffer, mutably, when no segment is in flight (to fill it before a write).
    pub fn buf_mut(self: Pin<&mut Self>) -> Option<&mut B> {
        if !self.is_idle() {
            return None;
        }
        // SAFETY: the buffer is not structurally pinned (views exist only while in flight, and
        // we are idle), so handing out `&mut B` cannot move pinned data under a view.
        unsafe { self.get_unchecked_mut().buf.get_mut().as_mut() }
    }

    /// Takes the buffer back when no segment is in flight; the packet is empty afterwards.
    pub fn take_buf(self: Pin<&mut Self>) -> Option<B> {
        if !self.is_idle() {
            return None;
        }
        // SAFETY: as in `buf_mut`: idle, and the buffer field is not structurally pinned.
        unsafe { self.get_unchecked_mut().buf.get_mut().take() }
    }

    /// Starts the packet and returns its whole view, to split and send anywhere.
    ///
    /// `driver` is the backend the packet's `Drop` drives if it must wait for segments; `None`
    /// when they complete on other threads. Most code wants [`submit`](Self::submit).
    ///
    /// Fails with [`ErrorKind::Busy`] while segments are in flight, and with
    /// [`ErrorKind::InvalidInput`] without a buffer or with one over `u32::MAX` bytes (4 GiB:
    /// split such I/O into several packets).
    #[inline]
    pub fn start(
        self: Pin<&mut Self>,
        driver: Option<&'b dyn IoBackend>,
    ) -> Result<PacketView<P>, Error> {
        if !self.is_idle() {
            return Err(Error::new(ErrorKind::Busy, Origin::Framework));
        }
        // SAFETY: nothing is moved out of the pinned packet; the header stays where it is.
        let this = unsafe { self.get_unchecked_mut() };
        let Some(buf) = this.buf.get_mut().as_mut() else {
            return Err(Error::new(ErrorKind::InvalidInput, Origin::Framework));
        };
        let (ptr, len) = buf.raw_parts();
        // Views hold 32-bit offsets and lengths.
        let Ok(view_len) = u32::try_from(len) else {
            return Err(Error::new(ErrorKind::InvalidInput, Origin::Framework));
        };
        if this.registering.replace(false) {
            // Before anything marks the packet in flight: dropping the stuck waker runs its
            // code, which may panic.
            this.hdr.fresh_waker();
        }
        this.len.set(len);
        *this.hdr.base.get_mut() = ptr;
        this.driver.set(driver);
        *this.hdr.error.get_mut() = None;
        // The `Arc` is the packet's: it outlives every view (the drop waits for them, and a
        // leaked packet leaks it), and views only read through it.
        *this.hdr.sink.get_mut() = this.sink.as_ref().map(|s| NonNull::from(&**s));
        *this.hdr.outstanding.get_mut() = 1;
        *this.hdr.released.get_mut() = false;
        *this.hdr.waiting.get_mut() = false;
        Ok(PacketView {
            hdr: NonNull::from(&this.hdr),
            span: span(0, view_len),
            _perms: PhantomData,
        })
    }

    /// Submits the whole packet to `backend` at `pos`. The backend only queues it; the I/O
    /// reaches the device when the backend is next polled (with everything else queued).
    #[inline]
    pub fn submit<Bk, A>(self: Pin<&mut Self>, backend: &'b Bk, pos: A) -> Result<(), Error>
    where
        Bk: PacketIo<P, A> + IoBackend,
    {
        let view = self.start(Some(backend))?;
        backend.send_io(pos, view);
        Ok(())
    }

    /// Polls for the packet's completion.
    #[inline]
    pub fn poll_done(&self, cx: &mut Context<'_>) -> Poll<Transfer> {
        if self.hdr.is_idle() {
            return Poll::Ready(self.transfer());
        }
        if !self.hdr.waiting.load(Ordering::Relaxed) {
            // Before registering, and SeqCst: see `Header::complete`.
            self.hdr.waiting.store(true, Ordering::SeqCst);
        }
        if self.registering.get() {
            poll_again(cx);
        } else {
            self.registering.set(true);
            self.hdr.waker.register(cx.waker());
            self.registering.set(false);
        }
        if self.hdr.outstanding.load(Ordering::SeqCst) == 0 {
            // The last completer is between its decrement and its release: a few instructions.
            self.hdr.wait_released();
            return Poll::Ready(self.transfer());
        }
        Poll::Pending
    }

    /// A future that resolves when the packet is done.
    pub fn wait(self: Pin<&Self>) -> Wait<'_, 'b, P, B> {
        Wait { packet: self }
    }

    /// Submits the packet to `backend` at `pos` on first poll and resolves when it is done.
    pub fn io<Bk>(self: Pin<&mut Self>, backend: &'b Bk, pos: u64) -> PacketFuture<'_, 'b, Bk, P, B>
    where
        Bk: PacketIo<P, u64> + IoBackend,
    {
        PacketFuture { packet: self, backend, pos, submitted: false }
    }

    /// The outcome; call only when idle. Raises the sink's panic of this round, if it had one.
    fn transfer(&self) -> Transfer {
        #[cfg(feature = "std")]
        // SAFETY: idle (`released` observed with Acquire): no completer touches `panic` now.
        if let Some(payload) = unsafe { self.hdr.take_panic() } {
            std::panic::resume_unwind(payload);
        }
        let len = self.len.get();
        // SAFETY: idle (`released` observed with Acquire): no completer touches `error` now.
        match unsafe { *self.hdr.error.get() } {
            None => Transfer { len, done: len, error: None },
            Some((done, e)) => Transfer { len, done, error: Some(e) },
        }
    }
}

impl<P: PacketPerms, B> Drop for Packet<'_, P, B> {
    fn drop(&mut self) {
        if !self.hdr.is_idle() {
            self.wait_in_drop();
        }
        // A sink's panic nobody observed: raise it here, unless this drop is part of an unwind
        // already (a second panic would abort).
        #[cfg(feature = "std")]
        // SAFETY: idle now, and `&mut self`.
        if let Some(payload) = unsafe { self.hdr.take_panic() } {
            unwind::raise_unless_panicking(payload);
        }
    }
}

impl<P: PacketPerms, B> Packet<'_, P, B> {
    /// Segments are in flight: their memory is ours, so wait for them, driving the backend we
    /// were submitted to (a single-threaded polled backend completes them only here).
    ///
    /// Nothing may unwind out of this wait while a segment is in flight. With `std`, a panic of
    /// the backend's poll is caught, the wait goes on, and the first panic is raised once every
    /// segment is done; a backend that keeps panicking ([`DROP_PANICS`] times) aborts the
    /// process, as does any panic without `std`.
    #[cold]
    fn wait_in_drop(&self) {
        let guard = unwind::AbortOnUnwind("a panic while a dropped packet waited for its segments");
        let mut cx = Context::from_waker(Waker::noop());
        let mut spins = 0u32;
        #[cfg(feature = "std")]
        let mut stall = stall::Watch::new();
        #[cfg(feature = "std")]
        let (mut first_panic, mut panics) = (None, 0u32);
        while self.hdr.outstanding.load(Ordering::Acquire) != 0 {
            if let Some(driver) = self.driver.get() {
                #[cfg(feature = "std")]
                match unwind::catch(|| driver.poll_backend(&mut cx)) {
                    Ok(activity) => {
                        stall.polled(activity);
                        if let (Activity::Armed, Some(h)) = (activity, driver.polling_handle()) {
                            // Armed: the device's next completion makes the handle readable.
                            crate::sleep::sleep_on(h.fd);
                            spins = 0;
                        }
                    }
                    Err(payload) => {
                        panics += 1;
                        if panics >= DROP_PANICS {
                            unwind::abort(
                                "the backend panicked on every poll while a dropped packet \
                                 waited for its segments (their memory cannot be freed)",
                            );
                        }
                        match first_panic {
                            None => first_panic = Some(payload),
                            // Its drop may panic (and this wait may not unwind): leaked.
                            Some(_) => core::mem::forget(payload),
                        }
                    }
                }
                #[cfg(not(feature = "std"))]
                let _ = driver.poll_backend(&mut cx);
            }
            #[cfg(feature = "std")]
            stall.check(self.hdr.outstanding.load(Ordering::Relaxed), self.driver.get().is_some());
            crate::backoff(&mut spins);
        }
        self.hdr.wait_released();
        guard.disarm();
        #[cfg(feature = "std")]
        if let Some(payload) = first_panic {
            unwind::raise_unless_panicking(payload);
        }
    }
}

/// How many panics of the backend's poll a dropped packet's wait absorbs before it aborts.
pub const DROP_PANICS: u32 = 1000;

/// Future returned by [`Packet::wait`].
pub struct Wait<'p, 'b, P: PacketPerms, B> {
    packet: Pin<&'p Packet<'b, P, B>>,
}

impl<P: PacketPerms, B: BufFor<P>> Future for Wait<'_, '_, P, B> {
    type Output = Transfer;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Transfer> {
        self.packet.poll_done(cx)
    }
}

/// Future returned by [`Packet::io`]: submits on first poll, resolves to the packet's outcome.
pub struct PacketFuture<'p, 'b, Bk, P: PacketPerms, B> {
    packet: Pin<&'p mut Packet<'b, P, B>>,
    backend: &'b Bk,
    pos: u64,
    submitted: bool,
}

impl<Bk, P, B> Future for PacketFuture<'_, '_, Bk, P, B>
where
    Bk: PacketIo<P, u64> + IoBackend,
    P: PacketPerms,
    B: BufFor<P>,
{
    type Output = Transfer;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Transfer> {
        let this = self.get_mut();
        if !this.submitted {
            this.submitted = true;
            if let Err(error) = this.packet.as_mut().submit(this.backend, this.pos) {
                return Poll::Ready(Transfer { len: 0, done: 0, error: Some(error) });
            }
        }
        this.packet.poll_done(cx)
    }
}
