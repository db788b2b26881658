//! A userspace virtio-blk driver over VFIO (and over the in-process device model), with the
//! same mfio shape as the NVMe driver: a queue is a [`mfio::PacketIo`] block device.
//!
//! ```text
//! let dev = VirtioBlk::new(VfioPci::open_str("0000:00:05.0")?, &Options::default())?;
//! let q = dev.queue(0)?;                     // one per thread
//! q.read_all_blocking(0, &mut buf)?;         // mfio::ReadAt / WriteAt
//! ```
//!
//! Where things happen:
//! - bring-up in [`device`] (`VirtioBlk::new`), through the virtio-pci transport in
//!   [`transport`]; a queue's parts (its virtqueue, control slots, bounce pool) are made in
//!   `parts.rs`, and what the device and its queues share in `shared.rs`;
//! - a request (`queue/request.rs`) is planned and becomes a descriptor chain in
//!   `queue/submit.rs` (`plan`, then `submit`: reserve, control slot, chain), on the ring of
//!   `virtqueue`: packed (`virtqueue/packed.rs`) when the device offers RING_PACKED, split
//!   (`virtqueue/split.rs`) otherwise or when [`Options::ring`] says so; one notify per batch
//!   in `BlkQueue::kick` (`queue/mod.rs`);
//! - it completes in `BlkQueue::reap` (`queue/mod.rs`: used buffers by ID), from
//!   `poll_backend`, which also arms and sleeps in interrupt modes (`settle`);
//! - the device model, behind the `model` feature, is `model/`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod device;
pub mod error;
#[cfg(feature = "model")]
pub mod model;
mod parts;
mod queue;
mod shared;
pub mod spec;
pub mod transport;
mod virtqueue;

pub use device::{Options, RingLayout, VirtioBlk, MAX_BOUNCE_PER_QUEUE};
pub use error::VirtioError;
pub use queue::{BlkQueue, QueueStats};
pub use shared::BlkInfo;
