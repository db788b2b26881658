//! Controller registers (BAR0) and their fields.

/// Controller Capabilities (64-bit).
pub const CAP: u64 = 0x00;
/// Version.
pub const VS: u64 = 0x08;
/// Interrupt Mask Set.
pub const INTMS: u64 = 0x0c;
/// Interrupt Mask Clear.
pub const INTMC: u64 = 0x10;
/// Controller Configuration.
pub const CC: u64 = 0x14;
/// Controller Status.
pub const CSTS: u64 = 0x1c;
/// NVM Subsystem Reset.
pub const NSSR: u64 = 0x20;
/// Admin Queue Attributes.
pub const AQA: u64 = 0x24;
/// Admin Submission Queue base address (64-bit).
pub const ASQ: u64 = 0x28;
/// Admin Completion Queue base address (64-bit).
pub const ACQ: u64 = 0x30;
/// First doorbell register.
pub const DOORBELL_BASE: u64 = 0x1000;

/// Offset of the SQ tail doorbell of queue `qid` (CAP.DSTRD gives the stride).
pub fn sq_tail_doorbell(qid: u16, dstrd: u8) -> u64 {
    DOORBELL_BASE + (2 * u64::from(qid)) * (4 << dstrd)
}

/// Offset of the CQ head doorbell of queue `qid`.
pub fn cq_head_doorbell(qid: u16, dstrd: u8) -> u64 {
    DOORBELL_BASE + (2 * u64::from(qid) + 1) * (4 << dstrd)
}

/// CAP: what the controller can do.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Cap(pub u64);

impl Cap {
    /// Maximum queue entries supported (MQES + 1).
    pub fn max_queue_entries(self) -> u32 {
        (self.0 & 0xffff) as u32 + 1
    }
    /// Contiguous queues required.
    pub fn contiguous_queues_required(self) -> bool {
        self.0 >> 16 & 1 != 0
    }
    /// Worst-case time for CSTS.RDY to change, in milliseconds (CAP.TO is in 500 ms units).
    pub fn timeout_ms(self) -> u64 {
        ((self.0 >> 24) & 0xff) * 500
    }
    /// Doorbell stride exponent (stride is `4 << dstrd` bytes).
    pub fn dstrd(self) -> u8 {
        ((self.0 >> 32) & 0xf) as u8
    }
    /// NVM Subsystem Reset supported.
    pub fn nssr_supported(self) -> bool {
        self.0 >> 36 & 1 != 0
    }
    /// The NVM command set is supported (CSS bit 0).
    pub fn nvm_command_set(self) -> bool {
        self.0 >> 37 & 1 != 0
    }
    /// Minimum memory page size, in bytes.
    pub fn mps_min(self) -> usize {
        4096 << ((self.0 >> 48) & 0xf)
    }
    /// Maximum memory page size, in bytes.
    pub fn mps_max(self) -> usize {
        4096 << ((self.0 >> 52) & 0xf)
    }
}

/// CC: controller configuration.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Cc(pub u32);

impl Cc {
    /// Enable.
    pub const EN: u32 = 1;
    /// Shutdown notification: normal.
    pub const SHN_NORMAL: u32 = 1 << 14;
    /// Shutdown notification field mask.
    pub const SHN_MASK: u32 = 3 << 14;

    /// The configuration this driver uses: NVM command set, 4 KiB pages, round robin,
    /// 64-byte SQEs and 16-byte CQEs, enabled.
    pub fn enabled_nvm() -> Self {
        // CSS=000 (NVM), MPS=0 (4 KiB), AMS=000 (round robin), IOSQES=6, IOCQES=4.
        Cc(Self::EN | (6 << 16) | (4 << 20))
    }
    /// Enabled.
    pub fn en(self) -> bool {
        self.0 & Self::EN != 0
    }
    /// Memory page size, in bytes.
    pub fn page_size(self) -> usize {
        4096 << ((self.0 >> 7) & 0xf)
    }
    /// I/O submission queue entry size, in bytes.
    pub fn iosqes(self) -> usize {
        1 << ((self.0 >> 16) & 0xf)
    }
    /// I/O completion queue entry size, in bytes.
    pub fn iocqes(self) -> usize {
        1 << ((self.0 >> 20) & 0xf)
    }
    /// Shutdown notification (0 none, 1 normal, 2 abrupt).
    pub fn shn(self) -> u32 {
        (self.0 >> 14) & 3
    }
    /// Command set selected (CSS).
    pub fn css(self) -> u32 {
        (self.0 >> 4) & 7
    }
    /// Arbitration mechanism selected (AMS).
    pub fn ams(self) -> u32 {
        (self.0 >> 11) & 7
    }
}

/// CSTS: controller status.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Csts(pub u32);

impl Csts {
    /// Ready.
    pub const RDY: u32 = 1;
    /// Controller Fatal Status.
    pub const CFS: u32 = 1 << 1;
    /// Shutdown status: complete.
    pub const SHST_COMPLETE: u32 = 2 << 2;

    /// Ready.
    pub fn rdy(self) -> bool {
        self.0 & Self::RDY != 0
    }
    /// Controller fatal status: the controller needs a reset.
    pub fn cfs(self) -> bool {
        self.0 & Self::CFS != 0
    }
    /// Shutdown status (0 normal operation, 1 occurring, 2 complete).
    pub fn shst(self) -> u32 {
        (self.0 >> 2) & 3
    }
    /// All ones: the device is gone (surprise removal, or BAR not decoded).
    pub fn is_gone(self) -> bool {
        self.0 == u32::MAX
    }
}
