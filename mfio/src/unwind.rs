//! Where user code may panic inside the framework, and what a panic may not do there.
//!
//! Two places run code the framework does not control while memory is lent to a device:
//! - a completion (`PacketView::complete`) calls the packet's sink and, for the last segment,
//!   the owner's waker, on whatever thread the backend completes on, from inside the backend;
//! - a packet's drop waits for its segments by polling the backend it was submitted to.
//!
//! A panic may unwind out of neither. Out of a completion it would leave the segment counted as
//! in flight (the owner waits for ever) and unwind through a driver in the middle of its
//! completion loop. Out of a drop's wait it would free the packet's memory while the device may
//! still write it. So a sink's panic is caught and handed to the packet's owner, which raises it
//! again where it observes the packet done; a panic in the drop's wait is caught, the wait goes
//! on, and the panic is raised again once every segment is done. Without `std` there is no
//! `catch_unwind`, so each of these aborts the process instead, as does a waker that panics (it
//! runs after the packet is released, when there is no owner left to hand the panic to).

/// A panic payload caught at one of these boundaries.
#[cfg(feature = "std")]
pub(crate) type Payload = std::boxed::Box<dyn core::any::Any + Send + 'static>;

/// Runs `f`, catching a panic.
#[cfg(feature = "std")]
#[inline]
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, Payload> {
    std::panic::catch_unwind(core::panic::AssertUnwindSafe(f))
}

/// Raises a caught panic again on this thread, unless it is unwinding already (a second panic
/// would abort): then the payload is leaked, since its drop may panic too.
#[cfg(feature = "std")]
pub(crate) fn raise_unless_panicking(payload: Payload) {
    if std::thread::panicking() {
        core::mem::forget(payload);
    } else {
        std::panic::resume_unwind(payload);
    }
}

/// Aborts the process with `why` if dropped while unwinding: arm it around code whose panic
/// must not escape, and `disarm` it after.
pub(crate) struct AbortOnUnwind(pub(crate) &'static str);

impl AbortOnUnwind {
    /// The code it guarded returned normally.
    #[inline]
    pub(crate) fn disarm(self) {
        core::mem::forget(self)
    }
}

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        abort(self.0)
    }
}

/// Ends the process at once with a message: the only sound way out when memory lent to a device
/// can neither be waited for nor given back.
#[cold]
pub(crate) fn abort(why: &str) -> ! {
    #[cfg(feature = "std")]
    {
        // Not `eprintln!`: it panics when stderr is closed, and this must not unwind.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "mfio: {why}; aborting");
        std::process::abort()
    }
    #[cfg(not(feature = "std"))]
    {
        // Only reached while unwinding (from `AbortOnUnwind::drop`): a panic in a destructor
        // during cleanup cannot unwind, and the runtime aborts.
        panic!("mfio: {why}; aborting")
    }
}
