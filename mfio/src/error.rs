//! One compact error for every layer.
//!
//! An [`Error`] is `Copy` and 8 bytes, so it fits in a segment's completion without allocation. It
//! says what went wrong ([`ErrorKind`]), which layer saw it ([`Origin`]), and carries the device's
//! own status when a device reported it (NVMe SCT/SC, the virtio-blk status byte), or an errno.

use core::fmt;

/// What went wrong, in terms a caller can act on.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The range lies (partly) past the end of the device.
    OutOfRange,
    /// Offset, length or memory is not aligned as the device requires.
    Misaligned,
    /// The request itself is malformed (empty where not allowed, too large, bad parameter).
    InvalidInput,
    /// The device completed the command with an error status (see [`Error::status`]).
    Device,
    /// The segment was dropped or aborted before the device completed it.
    Aborted,
    /// The device did not complete the command in time.
    Timeout,
    /// The device or backend does not support the operation.
    Unsupported,
    /// No queue slot, buffer or other resource was free; retry later.
    Busy,
    /// The device failed, was reset or is gone while the request was in flight or queued:
    /// it may or may not have been carried out (a write's data is unknown until read back).
    /// The driver recovers its queues where it can, so a retry may succeed.
    Fatal,
    /// DMA translation failed (memory not mapped for the device, IOMMU fault).
    Dma,
    /// The device was removed (hot unplug, or its driver was unbound): nothing sent to it
    /// completes any more, and a write in flight may or may not have reached it. Unlike
    /// [`Fatal`](Self::Fatal) no retry on the same queue can succeed: open the device again
    /// once it is back.
    Gone,
    /// An operating-system call failed (see [`Error::errno`]).
    Os,
}

/// Which layer raised the error.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum Origin {
    /// The mfio framework itself (packets, views).
    Framework,
    /// The in-memory backend.
    Memory,
    /// The file/image backend.
    File,
    /// A router (striping, mirroring) between the caller and its devices.
    Router,
    /// The NVMe driver or device.
    Nvme,
    /// The virtio driver or device.
    Virtio,
    /// DMA memory management.
    Dma,
    /// PCI / VFIO access.
    Pci,
    /// An in-process device model.
    Model,
}

/// A compact, `Copy` I/O error: kind, origin, device status and an OS error number.
#[derive(Copy, Clone, PartialEq, Eq, Hash)]
pub struct Error {
    kind: ErrorKind,
    origin: Origin,
    status: u16,
    errno: i32,
}

const _: () = assert!(core::mem::size_of::<Error>() == 8);

impl Error {
    /// An error of `kind` raised by `origin`, with no device status.
    pub const fn new(kind: ErrorKind, origin: Origin) -> Self {
        Self { kind, origin, status: 0, errno: 0 }
    }

    /// A device-reported error with the device's raw status.
    ///
    /// For NVMe the status is `(SCT << 8) | SC` (see [`Error::nvme`]), for virtio-blk the status byte.
    pub const fn device(origin: Origin, status: u16) -> Self {
        Self { kind: ErrorKind::Device, origin, status, errno: 0 }
    }

    /// An NVMe completion status: status code type and status code.
    pub const fn nvme(sct: u8, sc: u8) -> Self {
        Self::device(Origin::Nvme, ((sct as u16) << 8) | sc as u16)
    }

    /// An operating-system error (`errno`), raised by `origin`.
    pub const fn os(origin: Origin, errno: i32) -> Self {
        Self { kind: ErrorKind::Os, origin, status: 0, errno }
    }

    /// Returns this error with the device status replaced by `status`.
    pub const fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Returns this error with the OS error number `errno` (what the kernel said, for an
    /// error of another kind: an `Unsupported` that was `EOPNOTSUPP`).
    pub const fn with_errno(mut self, errno: i32) -> Self {
        self.errno = errno;
        self
    }

    /// A segment that was dropped without being completed.
    pub const DROPPED: Self = Self::new(ErrorKind::Aborted, Origin::Framework);

    /// What went wrong.
    pub const fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Which layer raised the error.
    pub const fn origin(&self) -> Origin {
        self.origin
    }

    /// The device's raw status (0 when the device reported none).
    pub const fn status(&self) -> u16 {
        self.status
    }

    /// The OS error number for [`ErrorKind::Os`], 0 otherwise.
    pub const fn errno(&self) -> i32 {
        self.errno
    }

    fn advice(&self) -> &'static str {
        match self.kind {
            ErrorKind::OutOfRange => "keep requests within the device's capacity",
            ErrorKind::Misaligned => {
                "align offsets and lengths to the device's block size (and memory as it requires)"
            }
            ErrorKind::InvalidInput => "check the request's parameters",
            ErrorKind::Device => "the device rejected or failed the command; see its status",
            ErrorKind::Aborted => "the request was cancelled before the device completed it",
            ErrorKind::Timeout => "the device did not answer in time: the driver aborted the command or reset the device; retry, and read back a write",
            ErrorKind::Unsupported => "the device does not offer this operation",
            ErrorKind::Busy => "no queue slot or buffer was free; retry",
            ErrorKind::Fatal => "the device failed or was reset mid-request; retry (the queue recovers), and read back a write that was in flight",
            ErrorKind::Dma => "the memory is not mapped for the device",
            ErrorKind::Gone => "the device was removed: drop the queue and open the device again once it is back; read back a write that was in flight",
            ErrorKind::Os => "an operating-system call failed",
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("origin", &self.origin);
        if self.status != 0 {
            d.field("status", &format_args!("{:#06x}", self.status));
        }
        if self.errno != 0 {
            d.field("errno", &self.errno);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} error from {:?}", self.kind, self.origin)?;
        match (self.kind, self.origin) {
            (ErrorKind::Device, Origin::Nvme) => write!(
                f,
                " (NVMe status: SCT {:#x}, SC {:#04x})",
                self.status >> 8,
                self.status & 0xff
            )?,
            (ErrorKind::Device, Origin::Virtio) => {
                write!(f, " (virtio-blk status {})", self.status)?
            }
            _ if self.status != 0 => write!(f, " (status {:#06x})", self.status)?,
            _ => {}
        }
        if self.errno != 0 {
            write!(f, " (errno {})", self.errno)?;
        }
        write!(f, ": {}", self.advice())
    }
}

/// A request that succeeded for a prefix only: `done` bytes from its start, then `error`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PartialError {
    /// Bytes completed successfully from the start of the request (the contiguous good prefix).
    pub done: usize,
    /// The first error, at byte `done` of the request.
    pub error: Error,
}

impl fmt::Display for PartialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (after {} bytes done)", self.error, self.done)
    }
}

impl core::error::Error for Error {}
impl core::error::Error for PartialError {}

#[cfg(feature = "std")]
mod std_conv {
    use super::*;
    use std::io;

    impl Error {
        /// The `std::io::ErrorKind` this error means to a std caller.
        pub fn io_kind(&self) -> io::ErrorKind {
            match self.kind {
                ErrorKind::OutOfRange => io::ErrorKind::UnexpectedEof,
                ErrorKind::Misaligned | ErrorKind::InvalidInput => io::ErrorKind::InvalidInput,
                ErrorKind::Timeout => io::ErrorKind::TimedOut,
                ErrorKind::Unsupported => io::ErrorKind::Unsupported,
                ErrorKind::Busy => io::ErrorKind::ResourceBusy,
                ErrorKind::Gone => io::ErrorKind::NotConnected,
                ErrorKind::Os => io::Error::from_raw_os_error(self.errno).kind(),
                ErrorKind::Device | ErrorKind::Aborted | ErrorKind::Fatal | ErrorKind::Dma => {
                    io::ErrorKind::Other
                }
            }
        }

        /// Converts an `std::io::Error` raised by `origin`, keeping its errno when it has one.
        pub fn from_io(origin: Origin, e: &io::Error) -> Self {
            match e.raw_os_error() {
                Some(errno) => Self::os(origin, errno),
                None => Self::new(ErrorKind::InvalidInput, origin),
            }
        }
    }

    impl From<Error> for io::Error {
        fn from(e: Error) -> Self {
            io::Error::new(e.io_kind(), e)
        }
    }

    impl From<PartialError> for io::Error {
        fn from(e: PartialError) -> Self {
            io::Error::new(e.error.io_kind(), e)
        }
    }
}
