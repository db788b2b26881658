//! Errors of bring-up and admin commands. (I/O errors are per segment: `mfio::Error`.)

use crate::spec::Status;
use mfio_dma::DmaError;
use mfio_pci::PciError;

/// Why the driver could not bring up, configure or command the controller.
#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    /// The PCI layer failed (device not found, not bound to vfio-pci, group not viable, ...).
    #[error(transparent)]
    Pci(#[from] PciError),
    /// DMA memory could not be allocated or mapped.
    #[error(transparent)]
    Dma(#[from] DmaError),
    /// The function is not an NVMe controller with the NVM command set.
    #[error("{0}: not an NVMe controller with the NVM command set (CAP.CSS lacks NVM)")]
    NotNvm(String),
    /// BAR0 is missing or too small for the registers and doorbells.
    #[error("BAR0 of the controller is missing or too small ({0:#x} bytes)")]
    Bar0(u64),
    /// Registers read as all ones: the device is gone or its BAR is not decoded.
    #[error(
        "the controller does not answer (registers read as all ones): it was removed or reset"
    )]
    Gone,
    /// The controller's minimum page size is larger than 4 KiB.
    #[error("the controller's minimum memory page size is {0} bytes; only 4 KiB is supported")]
    PageSize(usize),
    /// The controller would not stop and bus mastering could not be turned off: it may still
    /// reach memory, so nothing it was given is released.
    #[error(
        "the controller did not stop and bus mastering stays on: its memory is kept \
         (unbind and rebind the device, or reset it through sysfs, to recover)"
    )]
    DmaNotStopped,
    /// CSTS.RDY did not reach the wanted state within CAP.TO.
    #[error("the controller did not become {state} within {ms} ms (CAP.TO)")]
    ReadyTimeout {
        /// "ready" or "disabled".
        state: &'static str,
        /// The bound waited.
        ms: u64,
    },
    /// The controller reported a fatal status (CSTS.CFS).
    #[error("controller fatal status (CSTS.CFS): reset the controller")]
    Fatal,
    /// An admin command completed with an error status.
    #[error("admin command {opcode:#04x} failed: {status}")]
    Command {
        /// The opcode.
        opcode: u8,
        /// The completion status.
        status: Status,
    },
    /// An admin command did not complete in time.
    #[error("admin command {opcode:#04x} did not complete within {ms} ms")]
    Timeout {
        /// The opcode.
        opcode: u8,
        /// The bound waited.
        ms: u64,
    },
    /// A request the driver refuses before it reaches the controller.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// An option of [`ControllerOptions`](crate::ControllerOptions) no controller can work
    /// with; the message names it, its limit and what to give.
    #[error("ControllerOptions::{0}")]
    Options(String),
    /// A ring is not contiguous to the device (no-IOMMU mode on 4 KiB pages).
    #[error(
        "a {0}-byte queue ring is not physically contiguous: reserve huge pages \
         (`scripts/setup.sh config`) or use a queue depth of at most 64"
    )]
    NotContiguous(usize),
    /// The options ask for a feature the controller does not offer.
    #[error("{0}")]
    Unsupported(&'static str),
    /// An interrupt-driven queue was asked of a controller without MSI-X.
    #[error(
        "the controller has no MSI-X vectors, so its queues cannot use interrupts: use \
         CompletionMode::Poll (`--completion poll`)"
    )]
    NoMsix,
    /// An interrupt-driven queue has no vector of its own left.
    #[error(
        "I/O queue {qid} needs MSI-X vector {qid}, but the controller has {vectors} (vector 0 \
         is the admin queue's): use fewer interrupt-driven queues, or CompletionMode::Poll \
         for the rest"
    )]
    NoVector {
        /// The queue.
        qid: u16,
        /// Vectors the controller has.
        vectors: u32,
    },
    /// No I/O queue is left (all the controller granted are in use).
    #[error("no I/O queue left: the controller granted {0}")]
    NoQueue(u16),
    /// The namespace does not exist or is inactive.
    #[error("namespace {0} does not exist or is not active")]
    NoNamespace(u32),
}
