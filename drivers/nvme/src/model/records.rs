//! The plain records the controller's state is made of: its view of each submission and
//! completion queue, a command between fetch and completion and what it ends with, a piece
//! of a transfer, the shadow doorbell pages. What the controller does with them is in the
//! modules that act (queues, prp, shadow), which all work on the controller's `State`.

use std::collections::VecDeque;
use std::time::Instant;

use crate::ring;
use crate::spec::{Command, Completion, Status};

/// A submission queue as the controller tracks it.
#[derive(Debug, Clone)]
pub(crate) struct Sq {
    pub base: u64,
    /// Entries.
    pub size: u32,
    pub cqid: u16,
    /// Next entry the controller fetches.
    pub head: u32,
    /// Last tail the driver rang.
    pub tail: u32,
    /// Command IDs fetched whose CQE is not yet written, one bit each: a driver reusing one
    /// is caught in constant time, whatever the queue depth.
    pub inflight: Vec<u64>,
}

impl Sq {
    pub fn new(base: u64, size: u32, cqid: u16) -> Self {
        Self { base, size, cqid, head: 0, tail: 0, inflight: vec![0; 1 << 10] }
    }

    pub(crate) fn cid_busy(&self, cid: u16) -> bool {
        self.inflight[usize::from(cid >> 6)] & (1 << (cid & 63)) != 0
    }

    pub(crate) fn set_cid(&mut self, cid: u16, busy: bool) {
        let (w, b) = (usize::from(cid >> 6), 1u64 << (cid & 63));
        if busy {
            self.inflight[w] |= b;
        } else {
            self.inflight[w] &= !b;
        }
    }
}

/// A completion queue as the controller tracks it.
#[derive(Debug, Clone)]
pub(crate) struct Cq {
    pub base: u64,
    pub size: u32,
    /// Last head the driver rang: the first entry it has not released.
    pub head: u32,
    /// Next slot the controller writes.
    pub tail: u32,
    /// Phase tag written in the current lap (starts at 1).
    pub phase: bool,
    /// CQEs waiting for room (never overwrite an entry the driver has not released), each
    /// with whether it is a command's real CQE (not a bogus one from an injection).
    pub backlog: VecDeque<(Completion, bool)>,
    /// The MSI-X vector raised for each CQE posted (IEN = 1), if any. The admin CQ always has
    /// vector 0.
    pub vector: Option<u16>,
}

impl Cq {
    pub fn new(base: u64, size: u32, vector: Option<u16>) -> Self {
        Self { base, size, head: 0, tail: 0, phase: true, backlog: VecDeque::new(), vector }
    }

    /// One slot is always left empty, so head == tail means empty.
    pub(crate) fn is_full(&self) -> bool {
        ring::next(self.tail, self.size) == self.head
    }
}

/// When a fetched command executes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Release {
    /// On the n-th doorbell write from now.
    After(u32),
    /// On `release_held`.
    Held,
    /// When the timer thread sees this instant pass.
    At(Instant),
}

/// A command fetched but not yet executed, or executing now, with what to do to its CQE.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub sqid: u16,
    pub cmd: Command,
    pub release: Release,
    /// When it was fetched (for `deferred_timeout`).
    pub since: Instant,
    pub lose: bool,
    pub bad_cid: Option<u16>,
}

/// The CQE(s) of one command, with their CQ: a bogus-CID CQE stays just before the real one
/// when completions are reordered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Group {
    pub cqid: u16,
    pub bogus: Option<Completion>,
    pub real: Completion,
    /// Writing `real` ends its command (false for the answer to a CID conflict: the command
    /// holding that CID is still in flight).
    pub frees_cid: bool,
}

/// A command's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub status: Status,
    pub dw0: u32,
}

impl Outcome {
    pub fn ok(dw0: u32) -> Self {
        Self { status: Status::SUCCESS, dw0 }
    }
    pub fn err(status: Status) -> Self {
        Self { status, dw0: 0 }
    }
}

impl From<Status> for Outcome {
    fn from(status: Status) -> Self {
        Self::err(status)
    }
}

/// One contiguous piece of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seg {
    pub iova: u64,
    pub len: usize,
    /// SGL Bit Bucket: the bytes of a read are dropped.
    pub bucket: bool,
}

/// Shadow and EventIdx page addresses, once configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dbbuf {
    pub shadow: u64,
    pub event: u64,
}
