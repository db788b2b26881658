//! A userspace NVMe driver over VFIO (and over the in-process controller model).
//!
//! Where things happen:
//! - bring-up, identify and queue creation: `controller.rs` ([`Controller::new`]);
//! - a command is built in `queue_pair.rs` (I/O, `submit_rw`) and `admin.rs` (admin), with its
//!   data pointer from `prp.rs` (or `sgl.rs`);
//! - it is submitted in `queues.rs` (`SubmissionQueue::push`; the doorbell in `commit`, once per
//!   batch, from [`IoQueue`]'s `poll_backend`);
//! - it completes in `queue_pair.rs` (`poll_backend` drains the CQ by phase tag, `finish`).
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
