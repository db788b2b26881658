//! A global allocator that counts, for the benchmarks and tests that report heap allocations
//! per I/O (one copy for the workspace: each benchmark is its own binary and installs it).
//!
//! ```
//! #[global_allocator]
//! static GLOBAL: mfio::alloc_count::CountingAlloc = mfio::alloc_count::CountingAlloc;
//!
//! let ios = 4;
//! let before = mfio::alloc_count::allocations();
//! let kept: Vec<Box<u64>> = (0..ios).map(Box::new).collect(); // the measured loop
//! let per_io = (mfio::alloc_count::allocations() - before) as f64 / ios as f64;
//! assert!(per_io >= 1.0, "one box per I/O, and the vector: {per_io}");
//! # drop(kept);
//! ```

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicU64, Ordering};
use std::alloc::System;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting every allocation and reallocation (frees are not counted:
/// the figure is how often the hot path asks for memory).
pub struct CountingAlloc;

/// Allocations and reallocations so far, by every thread of the process.
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

// SAFETY: every method forwards to the system allocator with the caller's arguments, so
// `System`'s guarantees are ours; counting touches only an atomic (it allocates nothing and
// cannot unwind).
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which is `System`'s.
        unsafe { System.alloc(l) }
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from this allocator, that is from `System`, with layout `l`.
        unsafe { System.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `p` came from `System` with layout `l`; the caller upholds the rest.
        unsafe { System.realloc(p, l, n) }
    }
}
