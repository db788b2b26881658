//! Error injection: what a test can make the controller do wrong, and which commands it hits.

/// Which queue(s) a [`Target`] matches.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum QueueSel {
    /// Any I/O submission queue.
    AnyIo,
    /// The admin queue.
    Admin,
    /// One submission queue.
    Sq(u16),
}

/// The commands an injection applies to: a queue selection and optionally an opcode.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Queue(s).
    pub queue: QueueSel,
    /// Opcode, or any.
    pub opcode: Option<u8>,
}

impl Target {
    /// Any I/O command.
    pub fn io() -> Self {
        Self { queue: QueueSel::AnyIo, opcode: None }
    }
    /// I/O commands with `opcode` (see [`crate::spec::io`]).
    pub fn io_opcode(opcode: u8) -> Self {
        Self { queue: QueueSel::AnyIo, opcode: Some(opcode) }
    }
    /// Admin commands with `opcode` (see [`crate::spec::admin`]).
    pub fn admin(opcode: u8) -> Self {
        Self { queue: QueueSel::Admin, opcode: Some(opcode) }
    }
    /// Any command on submission queue `sqid`.
    pub fn sq(sqid: u16) -> Self {
        Self { queue: QueueSel::Sq(sqid), opcode: None }
    }

    /// Whether a command with `opcode` fetched from `sqid` is one of these.
    pub fn matches(&self, sqid: u16, opcode: u8) -> bool {
        let q = match self.queue {
            QueueSel::AnyIo => sqid != 0,
            QueueSel::Admin => sqid == 0,
            QueueSel::Sq(q) => sqid == q,
        };
        q && self.opcode.is_none_or(|o| o == opcode)
    }
}

/// An error to inject, through [`NvmeModel::inject`](super::NvmeModel::inject).
///
/// `MediaError` and `Hold` stay in force until cleared ([`clear_injections`], or
/// [`release_held`] for `Hold`); the others are one-shot: they hit the next matching command
/// fetched from a submission queue and are then gone.
///
/// [`clear_injections`]: super::NvmeModel::clear_injections
/// [`release_held`]: super::NvmeModel::release_held
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Injection {
    /// Every Read touching `lba` of `nsid` fails with Unrecovered Read Error (SCT 2, SC 0x81),
    /// every Write or Write Zeroes with Write Fault (SCT 2, SC 0x80); no data moves. Each
    /// failure adds an Error Information log entry and sets the More bit.
    MediaError {
        /// Namespace.
        nsid: u32,
        /// Logical block.
        lba: u64,
    },
    /// The next matching command executes, but its CQE is never posted.
    LoseCompletion(Target),
    /// The controller fails now: CSTS.CFS is set, and no doorbell does anything until a reset
    /// (CC.EN 1 -> 0 -> 1).
    Fatal,
    /// The controller fails when the next matching command is fetched (that command neither
    /// executes nor completes).
    FatalOn(Target),
    /// Just before the CQE of the next matching command, post a bogus successful CQE with
    /// command identifier `cid` (pick one the driver has not issued, such as 0xffff).
    BadCid {
        /// Which command.
        target: Target,
        /// The bogus CID.
        cid: u16,
    },
    /// Matching commands are fetched but not executed until
    /// [`release_held`](super::NvmeModel::release_held) (which also ends this injection), or
    /// until an Abort names them.
    Hold(Target),
    /// The next matching command executes on the `doorbells`-th doorbell write after it (like
    /// [`CompletionMode::Deferred`](super::CompletionMode::Deferred), for one command).
    Delay {
        /// Which command.
        target: Target,
        /// Later doorbell writes to wait for (at least 1).
        doorbells: u32,
    },
}

/// What kind of driver bug a [`Violation`] is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ViolationKind {
    /// A doorbell write for a queue that does not exist, out of range, or passing the
    /// controller's pointer.
    Doorbell,
    /// A register access the spec forbids (width, read-only, changed while enabled).
    Register,
    /// An invalid controller configuration at CC.EN 0 -> 1 (CSTS.CFS is set as well).
    Config,
    /// DMA outside every mapped range (a queue, PRP list or data buffer the driver did not
    /// map).
    Dma,
    /// A doorbell needed DMA while config space bus mastering was off.
    BusMaster,
    /// A command the driver must not send (a CID still in flight on its queue).
    Command,
}

/// A driver bug the model caught.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Its kind.
    pub kind: ViolationKind,
    /// What happened, for the panic message and the test log.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}
