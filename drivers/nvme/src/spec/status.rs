//! Completion status: status code type (SCT), status code (SC), More, Do Not Retry.

use core::fmt;

/// The status field of a completion (without the phase tag): SC in bits 0-7, SCT in bits 8-10,
/// CRD in 11-12, More in 13, DNR in 14.
#[derive(Copy, Clone, PartialEq, Eq, Default)]
pub struct Status(pub u16);

/// Status code types.
pub mod sct {
    /// Generic command status.
    pub const GENERIC: u8 = 0;
    /// Command specific status.
    pub const COMMAND_SPECIFIC: u8 = 1;
    /// Media and data integrity errors.
    pub const MEDIA: u8 = 2;
    /// Path related status.
    pub const PATH: u8 = 3;
    /// Vendor specific.
    pub const VENDOR: u8 = 7;
}

/// Generic command status codes (SCT 0).
pub mod generic {
    /// Successful completion.
    pub const SUCCESS: u8 = 0x00;
    /// Invalid command opcode.
    pub const INVALID_OPCODE: u8 = 0x01;
    /// Invalid field in command.
    pub const INVALID_FIELD: u8 = 0x02;
    /// Command ID conflict.
    pub const CID_CONFLICT: u8 = 0x03;
    /// Data transfer error.
    pub const DATA_TRANSFER_ERROR: u8 = 0x04;
    /// Commands aborted due to power loss notification.
    pub const POWER_LOSS_ABORT: u8 = 0x05;
    /// Internal error.
    pub const INTERNAL_ERROR: u8 = 0x06;
    /// Command abort requested.
    pub const ABORT_REQUESTED: u8 = 0x07;
    /// Command aborted due to SQ deletion.
    pub const ABORTED_SQ_DELETION: u8 = 0x08;
    /// Invalid namespace or format.
    pub const INVALID_NAMESPACE: u8 = 0x0b;
    /// Invalid PRP offset.
    pub const INVALID_PRP_OFFSET: u8 = 0x13;
    /// Data SGL length invalid.
    pub const SGL_LENGTH_INVALID: u8 = 0x0f;
    /// SGL descriptor type invalid.
    pub const SGL_TYPE_INVALID: u8 = 0x11;
    /// LBA out of range.
    pub const LBA_OUT_OF_RANGE: u8 = 0x80;
    /// Capacity exceeded.
    pub const CAPACITY_EXCEEDED: u8 = 0x81;
    /// Namespace not ready.
    pub const NAMESPACE_NOT_READY: u8 = 0x82;
}

/// Command specific status codes (SCT 1).
pub mod specific {
    /// Completion queue invalid.
    pub const INVALID_CQ: u8 = 0x00;
    /// Invalid queue identifier.
    pub const INVALID_QID: u8 = 0x01;
    /// Invalid queue size.
    pub const INVALID_QUEUE_SIZE: u8 = 0x02;
    /// Abort command limit exceeded.
    pub const ABORT_LIMIT: u8 = 0x03;
    /// Invalid log page.
    pub const INVALID_LOG_PAGE: u8 = 0x09;
    /// Invalid queue deletion.
    pub const INVALID_QUEUE_DELETION: u8 = 0x0c;
    /// Feature not changeable.
    pub const FEATURE_NOT_CHANGEABLE: u8 = 0x0e;
}

/// Media and data integrity status codes (SCT 2).
pub mod media {
    /// Write fault.
    pub const WRITE_FAULT: u8 = 0x80;
    /// Unrecovered read error.
    pub const UNRECOVERED_READ: u8 = 0x81;
}

impl Status {
    /// A status from its type and code.
    pub const fn new(sct: u8, sc: u8) -> Self {
        Status(((sct as u16 & 7) << 8) | sc as u16)
    }
    /// Success.
    pub const SUCCESS: Status = Status(0);

    /// Status code type.
    pub fn sct(self) -> u8 {
        ((self.0 >> 8) & 7) as u8
    }
    /// Status code.
    pub fn sc(self) -> u8 {
        self.0 as u8
    }
    /// More information in the Error Information log.
    pub fn more(self) -> bool {
        self.0 >> 13 & 1 != 0
    }
    /// Do Not Retry: the same command would fail again.
    pub fn dnr(self) -> bool {
        self.0 >> 14 & 1 != 0
    }
    /// Returns this status with Do Not Retry set.
    pub fn with_dnr(self) -> Self {
        Status(self.0 | 1 << 14)
    }
    /// Whether the command succeeded.
    pub fn is_success(self) -> bool {
        self.sct() == 0 && self.sc() == 0
    }

    /// The status as an mfio error (kind chosen from the code; SCT/SC kept).
    pub fn to_error(self) -> mfio::Error {
        use mfio::{Error, ErrorKind, Origin};
        let kind = match (self.sct(), self.sc()) {
            (sct::GENERIC, generic::LBA_OUT_OF_RANGE | generic::CAPACITY_EXCEEDED) => {
                ErrorKind::OutOfRange
            }
            (sct::GENERIC, generic::ABORT_REQUESTED | generic::ABORTED_SQ_DELETION) => {
                ErrorKind::Aborted
            }
            (sct::GENERIC, generic::POWER_LOSS_ABORT) => ErrorKind::Aborted,
            (sct::GENERIC, generic::INVALID_OPCODE) => ErrorKind::Unsupported,
            (sct::GENERIC, generic::INVALID_FIELD | generic::INVALID_NAMESPACE) => {
                ErrorKind::InvalidInput
            }
            (sct::GENERIC, generic::INVALID_PRP_OFFSET | generic::DATA_TRANSFER_ERROR) => {
                ErrorKind::Dma
            }
            _ => ErrorKind::Device,
        };
        Error::new(kind, Origin::Nvme).with_status(self.0 & 0x7ff)
    }

    fn name(self) -> &'static str {
        match (self.sct(), self.sc()) {
            (0, 0x00) => "successful completion",
            (0, 0x01) => "invalid command opcode",
            (0, 0x02) => "invalid field in command",
            (0, 0x03) => "command ID conflict",
            (0, 0x04) => "data transfer error",
            (0, 0x06) => "internal error",
            (0, 0x07) => "command abort requested",
            (0, 0x08) => "command aborted due to SQ deletion",
            (0, 0x0b) => "invalid namespace or format",
            (0, 0x13) => "invalid PRP offset",
            (0, 0x80) => "LBA out of range",
            (0, 0x81) => "capacity exceeded",
            (0, 0x82) => "namespace not ready",
            (1, 0x00) => "completion queue invalid",
            (1, 0x01) => "invalid queue identifier",
            (1, 0x02) => "invalid queue size",
            (1, 0x09) => "invalid log page",
            (2, 0x80) => "write fault",
            (2, 0x81) => "unrecovered read error",
            _ => "status",
        }
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (SCT {:#x}, SC {:#04x}", self.name(), self.sct(), self.sc())?;
        if self.dnr() {
            write!(f, ", DNR")?;
        }
        if self.more() {
            write!(f, ", More")?;
        }
        write!(f, ")")
    }
}
