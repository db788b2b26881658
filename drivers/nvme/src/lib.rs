//! A userspace NVMe driver over VFIO (and over the in-process controller model).
//!
//! Where things happen:
//! - bring-up and identify: `controller.rs` ([`Controller::new`]), with its `options.rs`;
//!   an I/O queue is made in `queue_pair/mod.rs` ([`Controller::io_queue`]);
//! - a command is built in `queue_pair/slots.rs` (I/O: `submit_rw`, then `start` takes its
//!   slot) and `admin.rs` (admin), with its data pointer from `queue_pair/data_pointer.rs`
//!   (`describe`: `prp.rs` or `sgl.rs`);
//! - it is submitted in `queues.rs` (`SubmissionQueue::push`; the doorbell in `commit`, once per
//!   batch, from [`IoQueue`]'s `poll_backend` in `queue_pair/mod.rs`);
//! - Flush, Deallocate, Write Zeroes and FUA writes take the same slots from
//!   `queue_pair/commands.rs` (the [`mfio::BlockCommands`] of a queue);
//! - it completes in `queue_pair/slots.rs` (`finish`, called as `poll_backend` drains the CQ
//!   by phase tag); deadlines, aborts and resets are `queue_pair/recovery.rs`;
//! - the controller model, behind the `model` feature, is `model/` (its spec types are the
//!   driver's own [`spec`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "model")]
pub mod model;
pub mod spec;

mod admin;
mod controller;
mod error;
mod namespace;
mod options;
pub mod prp;
mod queue_pair;
mod queues;
mod ring;
pub mod sgl;

pub use admin::{ErrorLogEntry, SmartLog};
pub use controller::Controller;
pub use error::NvmeError;
pub use mfio_pci::{CompletionMode, WakeupStats};
pub use namespace::Namespace;
pub use options::{ControllerOptions, DataPointer};
pub use queue_pair::{IoQueue, QueueStats};
