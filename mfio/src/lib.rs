//! mfio: a packet-based async I/O framework for kernel-bypass block devices.
//!
//! Two tiny traits carry everything: [`PacketIo`] sends a view of a packet to an address, and
//! [`IoBackend`] drives the backend (hands queued work to the device, drains completions).
//! Packets have views over non-overlapping segments; each segment completes on its own, so a
//! request can fragment across queues or devices and succeed partially.
//!
//! ```
//! use mfio::backends::MemoryBackend;
//! use mfio::{ReadAt, WriteAt};
//!
//! let dev = MemoryBackend::new(1 << 20);
//! dev.write_all_blocking(4096, b"hello").unwrap();
//! let mut buf = [0u8; 5];
//! dev.read_all_blocking(4096, &mut buf).unwrap();
//! assert_eq!(&buf, b"hello");
//!
//! // The same operations, async, with owned buffers (given back with the result):
//! let (res, buf) = mfio::block_on(&dev, dev.read_at(4096, vec![0u8; 5]));
//! assert_eq!(res, Ok(5));
//! assert_eq!(&buf, b"hello");
//! ```
//!
//! - Async, with automatic batching: `send_io` only queues; all I/O issued in one round of
//!   polling reaches the device in the backend's next poll, as one batch.
//! - Fragmentation and partial success: see [`PacketView::split_at`] and [`Transfer`].
//! - No colour: every operation has a blocking form ([`block_on`] drives the same backend).
//! - Packets on the stack: a pinned [`Packet`] waits in its `Drop` for segments in flight.
//! - `no_std` + `alloc`: disable the default `std` feature.
// The workspace denies `unsafe`; this crate is one of the three that hold it (see the
// workspace's lints): every block documents its SAFETY argument.
#![allow(unsafe_code)]
#![no_std]
#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

#[cfg(feature = "std")]
pub mod alloc_count;
mod backend;
pub mod backends;
mod block;
mod buf;
mod commands;
mod error;
mod io;
mod packet;
mod perms;
#[cfg(feature = "std")]
mod sleep;
#[cfg(feature = "std")]
mod stall;
mod unwind;

pub use backend::{block_on, Activity, BlockDevice, Driver, IoBackend, PacketIo, PollingHandle};
pub use block::clip;
pub use buf::{IoBuf, IoBufMut, Window};
#[cfg(feature = "std")]
pub use commands::zero_fill;
pub use commands::{check_range, BlockCommands, Capabilities, Fua, Zeroes};
pub use error::{Error, ErrorKind, Origin, PartialError};
pub use io::{command, All, At, CommandIo, Finish, Io, ReadAt, WriteAt};
pub use packet::{
    BufFor, Packet, PacketFuture, PacketView, SegmentSink, Transfer, Wait, DROP_PANICS,
};
pub use perms::{Direction, FromDevice, PacketPerms, ToDevice};
#[cfg(feature = "std")]
pub use sleep::{IDLE_BOUND_MS, SLEEP_BOUND_MS};
#[cfg(feature = "std")]
pub use stall::report_stalled_drops_after;

/// Waits a little longer each time: spins first, then (with `std`) yields the thread.
pub(crate) fn backoff(spins: &mut u32) {
    if *spins < 64 {
        *spins += 1;
        core::hint::spin_loop();
    } else {
        #[cfg(feature = "std")]
        std::thread::yield_now();
        #[cfg(not(feature = "std"))]
        core::hint::spin_loop();
    }
}
