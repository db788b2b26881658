//! mfio-wal: a write-ahead log with group commit, on any mfio block device.
//!
//! A storage engine's first need: append a record and know, when the call returns, that it
//! survives a crash or a power cut. [`Wal::append`] gives exactly that, and gathers
//! concurrent appenders into batches: while one batch is on the device, the records of the
//! next are copied into the second staging buffer, and the next batch goes out in one round
//! (one write, made durable by a FUA write or a write and a flush). One batch is in flight at
//! a time, so a crash tears at most the last one.
//!
//! # On the device
//! Two superblock copies (written alternately, so a torn one leaves the other), then the
//! record area, used as a ring of laps (`layout.rs`). Each record is block-aligned: a 32-byte
//! header (magic, CRC32C, log id, sequence number, length) and the payload, padded
//! ([`format`]). Recovery ([`Wal::open`]) scans from the last checkpoint to the first record
//! whose CRC, log id or sequence number fails, replays what it found and zeroes the rest of
//! what the last batch could have covered, so a torn batch's surviving records can never
//! reappear after later appends. (A record corrupted on the media in the middle of the log
//! also ends it there, as in most logs: the CRC cannot tell a torn tail from a bad block; a
//! read error, though, stops recovery with [`WalError::Recovery`] and changes nothing.)
//!
//! # Threads
//! A `Wal` belongs to the thread that owns its queue (mfio-rt's thread-per-core model): its
//! appends are futures on that thread, driven by [`Wal::committer`] (spawn it with the queue's
//! driver, or wrap a future in [`Wal::run_with`]). Other threads reach it through
//! [`service::WalService`], a thread that owns the log and takes appends from any thread,
//! blocking or async.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod commit;
mod format;
mod layout;
mod recovery;
pub mod service;

pub use recovery::Recovery;

use mfio_devices::Device;
use std::cell::RefCell;
use std::ops::Range;
use std::rc::Rc;

/// A record's log sequence number: 1 for a new log's first record, then one more each.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "lsn {}", self.0)
    }
}

/// How a log is laid out, when it is formatted.
#[derive(Clone, Debug)]
pub struct Config {
    /// The bytes of the device the log owns (block-aligned); `None` for the whole device.
    pub region: Option<Range<u64>>,
    /// The largest batch in bytes (records padded to blocks): a multiple of the block size.
    /// Also the largest record (with its 32-byte header), and how much recovery zeroes after
    /// the last good record. At most half of the record area.
    pub max_batch: usize,
    /// Make a batch durable with a FUA write where the device has one (the default); `false`
    /// writes it and then flushes, which some devices do faster (and which lets the NVMe
    /// model's power cuts tear a batch). Not stored: each opening chooses.
    pub fua: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self { region: None, max_batch: 1 << 20, fua: true }
    }
}

/// What can go wrong, each with what to do about it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WalError {
    /// The device failed the batch this record was in: it is not durable, and the log takes
    /// no more appends until it is reopened (recovery then leaves the batch out, unless the
    /// device could no longer be written: then it may or may not be there).
    #[error(
        "the device failed the batch: {0}; reopen the log (its records were not acknowledged)"
    )]
    Device(mfio::Error),
    /// An earlier batch failed: reopen the log.
    #[error("the log stopped after a failed batch ({0}); reopen it")]
    Poisoned(mfio::Error),
    /// The committer was dropped while this record's batch was on the device: whether it is
    /// durable is unknown until the log is reopened.
    #[error("the log's committer was dropped with the batch in flight; reopen the log")]
    Stopped,
    /// The record and its header do not fit in a batch.
    #[error(
        "a record of {len} bytes does not fit in a batch of {max} bytes: raise Config::max_batch"
    )]
    RecordTooLarge {
        /// The payload's length.
        len: usize,
        /// The largest payload a batch holds.
        max: usize,
    },
    /// The record area has no room: checkpoint what the engine has applied.
    #[error("the log is full ({free} bytes free, {needed} needed): checkpoint to free space")]
    Full {
        /// Bytes the record needs (padded).
        needed: u64,
        /// Bytes free.
        free: u64,
    },
    /// A checkpoint past the durable end of the log.
    #[error("checkpoint at {lsn} is past the durable end of the log ({durable})")]
    CheckpointAhead {
        /// The checkpoint asked for.
        lsn: Lsn,
        /// The first sequence number not yet durable.
        durable: Lsn,
    },
    /// Neither superblock copy is valid: there is no log here (format one).
    #[error("no write-ahead log on this device (no valid superblock): format one first")]
    NotFormatted,
    /// The log was formatted for another device geometry or region.
    #[error("the log does not match: {0}")]
    Mismatch(&'static str),
    /// The configuration cannot describe a log on this device.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    /// Recovery could not read the log: nothing was truncated or replayed past `pos`.
    #[error("reading the log at byte {pos}: {error}; nothing was changed (repair or copy the device, then reopen)")]
    Recovery {
        /// The device byte where the failed read started.
        pos: u64,
        /// The device's error.
        error: mfio::Error,
    },
    /// A device command during format, recovery or a checkpoint failed.
    #[error("the device: {0}")]
    Io(mfio::Error),
    /// The log's service thread has stopped (shut down, or its device failed to open).
    #[error("the log's service thread has stopped")]
    Closed,
    /// The device could not open a queue for the log.
    #[error("the device has no queue for the log")]
    NoQueue,
    /// The device could not give a buffer.
    #[error("no buffer for the log's staging or recovery")]
    NoBuffer,
}

/// A write-ahead log on one queue of a device (see the crate documentation).
pub struct Wal<D: Device> {
    dev: std::sync::Arc<D>,
    queue: Rc<D::Queue>,
    layout: layout::Layout,
    /// Batches are written with FUA (else written, then flushed).
    fua: bool,
    log_id: u64,
    recovery: Recovery,
    state: RefCell<commit::State<D::Buf>>,
    /// The superblock last written; its writes take turns.
    superblock: futures::lock::Mutex<format::Superblock>,
}

impl<D: Device> Wal<D> {
    /// The queue the log writes through: drive it (mfio-rt's `drive`, or `mfio::block_on`).
    pub fn queue(&self) -> &Rc<D::Queue> {
        &self.queue
    }

    /// What recovery found when the log was opened.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// The block size records are padded to.
    pub fn block_size(&self) -> u32 {
        self.layout.block_size
    }

    /// The largest payload one record can carry.
    pub fn max_record(&self) -> usize {
        self.layout.max_batch as usize - format::HEADER
    }
}
