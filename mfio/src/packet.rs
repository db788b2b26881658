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

/// The part of a packet that views and completers touch, possibly from other threads.
struct Header {
    /// Views alive (segments in flight).
    outstanding: AtomicUsize,
    /// True when no completer can touch the header any more. Set by the completer that took
    /// `outstanding` to zero, after its last access; the owner waits for it before freeing.
    released: AtomicBool,
    /// Set by the owner before it first registers a waker in a round: the last completer
    /// wakes only then (most packets are found done at their first poll and never register,
    /// and waking costs two locked read-modify-writes). Both sides' accesses to it and to
    /// `outstanding` are SeqCst, so one always sees the other's (see `complete`).
    waiting: AtomicBool,
    waker: AtomicWaker,
    /// Guards `error` (errors are rare: a tiny lock off the success path).
    error_lock: AtomicBool,
    /// The failed segment nearest the packet's start: (offset, error).
    error: UnsafeCell<Option<(usize, Error)>>,
    /// The first panic of the sink this round, for the owner to raise (under `error_lock`).
    #[cfg(feature = "std")]
    panic: UnsafeCell<Option<unwind::Payload>>,
    /// Observer of segments; written only while no view exists. Points into the packet's
    /// `Arc`, which lives at least as long as the packet (leaked with it, if it is leaked).
    sink: UnsafeCell<Option<NonNull<dyn SegmentSink>>>,
    /// The buffer's start; written only while no view exists. Views keep an offset from it, so
    /// a view is two words and moves in registers.
    base: UnsafeCell<*mut u8>,
}

// SAFETY: the counters and the waker are atomics; `error` and `panic` are only accessed under
// `error_lock` (or after `released`, when no other thread can touch them; the payload is
// `Send`); `sink` and `base` are written only
// while no view exists (so never concurrently with a reader); `sink` points to a `Sync` observer
// and `base` is only read to form a view's pointer, whose accesses the view's own rules govern.
unsafe impl Sync for Header {}
// SAFETY: as above; nothing in the header is tied to a thread.
unsafe impl Send for Header {}

impl Header {
    fn new() -> Self {
        Self {
            outstanding: AtomicUsize::new(0),
            released: AtomicBool::new(true),
            waiting: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            error_lock: AtomicBool::new(false),
            error: UnsafeCell::new(None),
            #[cfg(feature = "std")]
            panic: UnsafeCell::new(None),
            sink: UnsafeCell::new(None),
            base: UnsafeCell::new(core::ptr::null_mut()),
        }
    }

    fn is_idle(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    /// Runs `f` holding `error_lock`, which guards `error` and `panic`.
    fn locked<R>(&self, f: impl FnOnce() -> R) -> R {
        while self
            .error_lock
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        // `f` is the framework's own code and does not panic (a comparison and a store, or a
        // move of a payload into an empty slot: nothing is dropped), so the lock is always
        // released.
        let r = f();
        self.error_lock.store(false, Ordering::Release);
        r
    }

    fn record_error(&self, offset: usize, e: Error) {
        self.locked(|| {
            // SAFETY: `error_lock` is held, so no other thread accesses `error`.
            let slot = unsafe { &mut *self.error.get() };
            match slot {
                Some((o, _)) if *o <= offset => {}
                _ => *slot = Some((offset, e)),
            }
        })
    }

    /// Calls the sink so that its panic cannot unwind into the completing backend: caught and
    /// kept for the owner (the first one of a round), or, without `std`, an abort.
    #[inline]
    fn call_sink(&self, sink: &dyn SegmentSink, offset: usize, len: usize, r: Result<(), Error>) {
        #[cfg(feature = "std")]
        if let Err(payload) = unwind::catch(|| sink.segment(offset, len, r)) {
            let surplus = self.locked(|| {
                // SAFETY: `error_lock` is held, so no other thread accesses `panic`.
                let slot = unsafe { &mut *self.panic.get() };
                if slot.is_none() {
                    *slot = Some(payload);
                    None
                } else {
                    Some(payload)
                }
            });
            // A payload's own drop may panic: a second one of the round is leaked, not dropped.
            core::mem::forget(surplus);
        }
        #[cfg(not(feature = "std"))]
        {
            let guard = unwind::AbortOnUnwind("a SegmentSink panicked while completing a segment");
            sink.segment(offset, len, r);
            guard.disarm();
        }
    }

    /// A panic the sink raised this round, taken for the owner to raise again.
    ///
    /// # Safety
    /// Only while idle (no view, so no completer touches `panic`), or through `&mut`.
    #[cfg(feature = "std")]
    unsafe fn take_panic(&self) -> Option<unwind::Payload> {
        // SAFETY: the caller's: no other thread accesses `panic`.
        unsafe { (*self.panic.get()).take() }
    }

    /// Completes one segment. After this returns the header may already be freed.
    ///
    /// # Safety
    /// `hdr` points to a live header with a segment in flight that the caller gives up here.
    unsafe fn complete(hdr: *const Header, offset: usize, len: usize, result: Result<(), Error>) {
        // SAFETY: the caller's segment keeps the packet (and so the header, and the sink its
        // `Arc` holds) alive until the `outstanding` decrement below; `sink` is not written
        // while a view exists. Nothing here unwinds: the sink's panic is contained.
        unsafe {
            if let Some(sink) = *(*hdr).sink.get() {
                (*hdr).call_sink(sink.as_ref(), offset, len, result);
            }
            if let Err(e) = result {
                (*hdr).record_error(offset, e);
            }
            // SeqCst, as the owner's store of `waiting` and its load of `outstanding` after it
            // (in `poll_done`): if we read `waiting` false below, the owner has not stored it
            // yet, so its load comes after our decrement and sees zero: it finds the packet
            // done without waiting, and skipping the wake loses nothing.
            if (*hdr).outstanding.fetch_sub(1, Ordering::SeqCst) == 1 {
                // The owner cannot free the packet until `released` is set, so the waker is
                // still ours to take. It is woken after the release: no access to `*hdr`
                // after the store, and the owner does not wait on the waker's code.
                let waker =
                    if (*hdr).waiting.load(Ordering::SeqCst) { (*hdr).waker.take() } else { None };
                (*hdr).released.store(true, Ordering::Release);
                if let Some(w) = waker {
                    wake(w);
                }
            }
        }
    }

    /// A registration last round did not return (the waker's `clone` panicked): the
    /// `AtomicWaker` is stuck in its registering state and would never register again.
    #[cold]
    fn fresh_waker(&mut self) {
        self.waker = AtomicWaker::new();
    }

    /// Waits (spinning) until the last completer has let go of the header: a few instructions
    /// from its decrement (it runs no user code in between).
    fn wait_released(&self) {
        while !self.released.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
    }
}

/// Wakes the owner of a packet that is already released. A panic here has nobody to go to (the
/// packet may be gone) and must not unwind into the completing backend, so it aborts.
#[inline]
fn wake(w: Waker) {
    let guard = unwind::AbortOnUnwind("a Waker panicked in wake() while completing a packet");
    w.wake();
    guard.disarm();
}

/// A registration this round did not return (the waker's `clone` panicked): the `AtomicWaker`
/// registers nothing more until the next round, so no completion can wake the owner. It asks
/// to be polled again instead.
#[cold]
fn poll_again(cx: &mut Context<'_>) {
    cx.waker().wake_by_ref();
}

/// A view of a non-overlapping segment of a packet, handed to a backend.
///
/// A view must be completed exactly once: [`complete`](Self::complete), [`ok`](Self::ok) or
/// [`fail`](Self::fail). Dropping it completes it with [`Error::DROPPED`]. Its memory is
/// exposed ([`as_ptr`](Self::as_ptr), [`len`](Self::len), [`align`](Self::align)) so a driver
/// can hand it to a device directly when the device can reach it, or bounce it otherwise.
pub struct PacketView<P: PacketPerms> {
    hdr: NonNull<Header>,
    /// The segment: offset from the packet's start (low 32 bits) and length (high 32 bits).
    /// Two fields of two words make a scalar pair, which Rust passes and returns in two
    /// registers; at 32 bytes (or with three fields) a view went through memory at every call
    /// and stalled the CPU's store forwarding on the I/O path. A packet is at most `u32::MAX`
    /// bytes (`start` checks).
    span: u64,
    _perms: PhantomData<P>,
}

/// A view's `span`.
#[inline]
fn span(offset: u32, len: u32) -> u64 {
    u64::from(offset) | (u64::from(len) << 32)
}

// SAFETY: a view is the only handle to its segment's memory while it lives, and every header
// operation it performs is atomic; the packet outlives it (see the module docs).
unsafe impl<P: PacketPerms> Send for PacketView<P> {}

impl<P: PacketPerms> PacketView<P> {
    /// Length of the segment in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        (self.span >> 32) as usize
    }

    /// Whether the segment is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Offset of the segment from the start of its packet.
    #[inline]
    pub fn offset(&self) -> usize {
        self.span as u32 as usize
    }

    /// The segment's memory.
    #[inline]
    fn ptr(&self) -> *mut u8 {
        // SAFETY: the view is live, so the header is; `base` is written only while no view
        // exists.
        let base = unsafe { *self.hdr.as_ref().base.get() };
        base.wrapping_add(self.offset())
    }

    /// Start of the segment's memory (for DMA translation or copying).
    #[inline]
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr()
    }

    /// Address of the segment's memory as an integer.
    #[inline]
    pub fn addr(&self) -> usize {
        self.ptr() as usize
    }

    /// Largest power of two (up to 4096) that the segment's address is a multiple of.
    #[inline]
    pub fn align(&self) -> usize {
        1usize << (self.ptr() as usize).trailing_zeros().min(12)
    }

    /// Splits the segment at `mid` into two views that complete independently.
    ///
    /// # Panics
    /// If `mid > len()`, like `slice::split_at`.
    pub fn split_at(self, mid: usize) -> (Self, Self) {
        assert!(mid <= self.len(), "split_at: {mid} is past the view's {} bytes", self.len());
        // All fit in u32: `mid <= len` and `offset + len` is within the packet.
        let (offset, len, mid) = (self.offset() as u32, self.len() as u32, mid as u32);
        let this = ManuallyDrop::new(self);
        // SAFETY: `this` is a live view, so the header is alive and `outstanding >= 1`; adding
        // a view cannot race with the count reaching zero.
        unsafe { this.hdr.as_ref() }.outstanding.fetch_add(1, Ordering::Relaxed);
        let tail = Self { hdr: this.hdr, span: span(offset + mid, len - mid), _perms: PhantomData };
        let head = Self { hdr: this.hdr, span: span(offset, mid), _perms: PhantomData };
        (head, tail)
    }

    /// Completes the segment with `result`.
    #[inline]
    pub fn complete(self, result: Result<(), Error>) {
        let this = ManuallyDrop::new(self);
        // SAFETY: the view is live and is given up here (not dropped again).
        unsafe { Header::complete(this.hdr.as_ptr(), this.offset(), this.len(), result) }
    }

    /// Completes the segment successfully.
    pub fn ok(self) {
        self.complete(Ok(()))
    }

    /// Completes the segment with `error`.
    pub fn fail(self, error: Error) {
        self.complete(Err(error))
    }
}

impl PacketView<ToDevice> {
    /// The bytes to send to the device.
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the segment is initialized memory of the packet's buffer, valid while the view
        // lives, and only read while the packet is in flight (a `ToDevice` packet is never
        // written by anyone while a view exists).
        unsafe { core::slice::from_raw_parts(self.ptr(), self.len()) }
    }
}

impl PacketView<FromDevice> {
    /// Start of the segment's memory, writable (for a device to write into).
    #[inline]
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr()
    }

    /// The segment's memory, to fill with data from the device.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the segment is initialized memory that only this view may access while it
        // lives (segments do not overlap and the owner waits for all views).
        unsafe { core::slice::from_raw_parts_mut(self.ptr(), self.len()) }
    }

    /// Copies `src` into the start of the segment; returns the bytes copied (the shorter length).
    pub fn fill_from(&mut self, src: &[u8]) -> usize {
        let n = src.len().min(self.len());
        self.as_mut_slice()[..n].copy_from_slice(&src[..n]);
        n
    }
}

impl<P: PacketPerms> Drop for PacketView<P> {
    fn drop(&mut self) {
        // SAFETY: the view is live; drop runs once.
        unsafe {
            Header::complete(self.hdr.as_ptr(), self.offset(), self.len(), Err(Error::DROPPED))
        }
    }
}

impl<P: PacketPerms> core::fmt::Debug for PacketView<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PacketView")
            .field("direction", &P::DIRECTION)
            .field("offset", &self.offset())
            .field("len", &self.len())
            .field("ptr", &self.ptr())
            .finish()
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
