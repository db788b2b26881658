//! A packet's header: the part views and completers touch, possibly from other threads (the
//! count of segments in flight, the owner's waker, the first error and the sink's panic).

use super::*;

/// The part of a packet that views and completers touch, possibly from other threads.
pub(super) struct Header {
    /// Views alive (segments in flight).
    pub(super) outstanding: AtomicUsize,
    /// True when no completer can touch the header any more. Set by the completer that took
    /// `outstanding` to zero, after its last access; the owner waits for it before freeing.
    pub(super) released: AtomicBool,
    /// Set by the owner before it first registers a waker in a round: the last completer
    /// wakes only then (most packets are found done at their first poll and never register,
    /// and waking costs two locked read-modify-writes). Both sides' accesses to it and to
    /// `outstanding` are SeqCst, so one always sees the other's (see `complete`).
    pub(super) waiting: AtomicBool,
    pub(super) waker: AtomicWaker,
    /// Guards `error` (errors are rare: a tiny lock off the success path).
    pub(super) error_lock: AtomicBool,
    /// The failed segment nearest the packet's start: (offset, error).
    pub(super) error: UnsafeCell<Option<(usize, Error)>>,
    /// The first panic of the sink this round, for the owner to raise (under `error_lock`).
    #[cfg(feature = "std")]
    pub(super) panic: UnsafeCell<Option<unwind::Payload>>,
    /// Observer of segments; written only while no view exists. Points into the packet's
    /// `Arc`, which lives at least as long as the packet (leaked with it, if it is leaked).
    pub(super) sink: UnsafeCell<Option<NonNull<dyn SegmentSink>>>,
    /// The buffer's start; written only while no view exists. Views keep an offset from it, so
    /// a view is two words and moves in registers.
    pub(super) base: UnsafeCell<*mut u8>,
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
    pub(super) fn new() -> Self {
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

    pub(super) fn is_idle(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    /// Runs `f` holding `error_lock`, which guards `error` and `panic`.
    pub(super) fn locked<R>(&self, f: impl FnOnce() -> R) -> R {
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

    pub(super) fn record_error(&self, offset: usize, e: Error) {
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
    pub(super) fn call_sink(
        &self,
        sink: &dyn SegmentSink,
        offset: usize,
        len: usize,
        r: Result<(), Error>,
    ) {
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
    pub(super) unsafe fn take_panic(&self) -> Option<unwind::Payload> {
        // SAFETY: the caller's: no other thread accesses `panic`.
        unsafe { (*self.panic.get()).take() }
    }

    /// Completes one segment. After this returns the header may already be freed.
    ///
    /// # Safety
    /// `hdr` points to a live header with a segment in flight that the caller gives up here.
    pub(super) unsafe fn complete(
        hdr: *const Header,
        offset: usize,
        len: usize,
        result: Result<(), Error>,
    ) {
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
    pub(super) fn fresh_waker(&mut self) {
        self.waker = AtomicWaker::new();
    }

    /// Waits (spinning) until the last completer has let go of the header: a few instructions
    /// from its decrement (it runs no user code in between).
    pub(super) fn wait_released(&self) {
        while !self.released.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
    }
}

/// Wakes the owner of a packet that is already released. A panic here has nobody to go to (the
/// packet may be gone) and must not unwind into the completing backend, so it aborts.
#[inline]
pub(super) fn wake(w: Waker) {
    let guard = unwind::AbortOnUnwind("a Waker panicked in wake() while completing a packet");
    w.wake();
    guard.disarm();
}

/// A registration this round did not return (the waker's `clone` panicked): the `AtomicWaker`
/// registers nothing more until the next round, so no completion can wake the owner. It asks
/// to be polled again instead.
#[cold]
pub(super) fn poll_again(cx: &mut Context<'_>) {
    cx.waker().wake_by_ref();
}
