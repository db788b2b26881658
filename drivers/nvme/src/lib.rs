//! A userspace NVMe driver over VFIO (and over the in-process controller model).
//!
//! Where things happen:
//! - a command is built in [`queue_pair`] (I/O) and [`admin`] (admin), with its data pointer
//!   from [`prp`];
//! - it is submitted in [`queues`] (`SubmissionQueue::push`, doorbell in `commit`);
//! - it completes in [`queue_pair`] (`poll_backend` drains the CQ by phase tag).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod spec;
