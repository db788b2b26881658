//! The gate between a device model's steps and the unmaps of its mapper: the model's step
//! lock, the thread holding it, and the unmaps waiting for it (see [`ModelLock`](crate::ModelLock)).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// What an unmap waits for: a model's step lock and the token of the thread holding it. The
/// model's lock, its view and (weakly) the mapper share it, so it outlives whichever of them goes
/// first: a guard that is leaked (`mem::forget`) keeps it locked for ever, even after the model
/// is dropped, and unmaps then wait for ever instead of freeing memory the view may reach.
#[derive(Debug)]
pub(crate) struct Gate {
    pub(crate) step: Mutex<()>,
    /// The token of the thread holding `step` (0: none). Written only by that thread, under
    /// the lock.
    pub(crate) holder: AtomicUsize,
    /// Unmaps waiting for the lock. A model that steps in a tight loop lets them in first
    /// (a mutex is not fair: it would take the lock back before a waiter wakes).
    pub(crate) waiters: AtomicUsize,
}

/// A token for the current thread: the address of a thread-local, never 0, and unique among
/// the threads alive.
#[inline(always)]
pub(crate) fn thread_token() -> usize {
    thread_local! { static TOKEN: u8 = const { 0 }; }
    TOKEN.with(|t| t as *const u8 as usize)
}

/// Writes a line to stderr without panicking (a closed stderr must not turn an abort into an
/// unwind).
fn say(msg: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
}

impl Gate {
    /// A gate nobody holds.
    pub(crate) fn new() -> Self {
        Self { step: Mutex::new(()), holder: AtomicUsize::new(0), waiters: AtomicUsize::new(0) }
    }

    /// Returns once no step of the model is running (takes and drops its lock).
    pub(crate) fn wait(&self) {
        if self.holder.load(Ordering::Relaxed) == thread_token() {
            // This thread is inside a step of the model: waiting for the step to end would
            // never return, and returning without waiting could free memory it is using.
            say(format_args!(
                "mfio-dma: an unmap from inside a device model's step (under its ModelLock) \
                 would wait for that step to end; aborting"
            ));
            std::process::abort();
        }
        self.waiters.fetch_add(1, Ordering::Relaxed);
        drop(self.step.lock());
        self.waiters.fetch_sub(1, Ordering::Relaxed);
    }
}
