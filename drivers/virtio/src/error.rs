//! Bring-up errors. Each says what is wrong and, where there is one, what to do about it.
//! (Errors of individual I/Os are compact [`mfio::Error`]s, completed on their segments.)

use mfio_dma::DmaError;
use mfio_pci::PciError;

/// Why the device could not be brought up or a queue handed out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VirtioError {
    /// An [`Options`](crate::Options) field no device can work with; the message names it,
    /// its limit and what to give.
    #[error("Options::{0}")]
    Options(String),
    /// Config space or BAR access failed.
    #[error("PCI access failed: {0}")]
    Pci(#[from] PciError),
    /// DMA memory for the rings or pools could not be had.
    #[error("DMA memory for the virtqueues: {0}")]
    Dma(#[from] DmaError),
    /// A virtio-pci vendor capability is missing.
    #[error(
        "no virtio-pci {what} capability: not a modern (virtio 1.x) device; \
         give QEMU's virtio-blk-pci disable-legacy=on"
    )]
    MissingCapability {
        /// Which structure (common, notify, ISR, device).
        what: &'static str,
    },
    /// A capability points outside its BAR, or is too short.
    #[error("virtio-pci {what} capability (BAR{bar}, offset {offset:#x}, {len:#x} bytes) does not fit its BAR or is too short")]
    BadCapability {
        /// Which structure.
        what: &'static str,
        /// Its BAR.
        bar: u8,
        /// Its offset in the BAR.
        offset: u64,
        /// Its length.
        len: u64,
    },
    /// The device status did not read 0 after a reset.
    #[error("device status still {status:#04x} after a reset: the device is stuck or gone")]
    ResetTimeout {
        /// The status last read.
        status: u8,
    },
    /// The device does not offer a feature this driver requires.
    #[error("the device does not offer {name} (features {offered:#x}): {hint}")]
    MissingFeature {
        /// The feature.
        name: &'static str,
        /// What the device offers.
        offered: u64,
        /// What to do.
        hint: &'static str,
    },
    /// The device refused the negotiated features (FEATURES_OK did not stick).
    #[error("the device refused features {features:#x} (FEATURES_OK cleared)")]
    FeaturesRejected {
        /// The features the driver asked for.
        features: u64,
    },
    /// The device is not a block device this driver can use.
    #[error("unusable virtio-blk device: {0}")]
    BadDevice(String),
    /// Interrupt-driven queues were asked of a device without enough MSI-X vectors.
    #[error(
        "interrupt-driven virtqueues need one MSI-X vector each: the device has {vectors} for \
         {queues} queue(s); use fewer queues (Options::queues) or CompletionMode::Poll"
    )]
    NoVectors {
        /// Vectors the device has.
        vectors: u32,
        /// Queues asked for.
        queues: u16,
    },
    /// A queue was asked to use interrupts on a device brought up without them.
    #[error(
        "virtqueue {index} has no MSI-X vector: bring the device up with \
         Options::completion set to an interrupt-driven mode (interrupt or adaptive)"
    )]
    NoInterrupt {
        /// The queue.
        index: u16,
    },
    /// Queue setup failed.
    #[error("virtqueue {index}: {why}")]
    Queue {
        /// Queue index.
        index: u16,
        /// What went wrong.
        why: String,
    },
    /// The queue index is past the queues set up.
    #[error(
        "no virtqueue {index}: {count} queue(s) were set up (ask for more in Options::queues)"
    )]
    NoSuchQueue {
        /// Asked for.
        index: u16,
        /// Set up.
        count: u16,
    },
    /// The queue is already handed out.
    #[error("virtqueue {index} is already in use by another BlkQueue (one handle per queue)")]
    QueueInUse {
        /// The queue.
        index: u16,
    },
    /// The device was removed (hot unplug, sysfs remove, unbind).
    #[error("the device was removed: open it again once it is back")]
    Gone,
    /// The device failed or was reset: open it again.
    #[error("the device was reset after a failure (status {status:#04x}); open it again")]
    Broken {
        /// Its status when the failure was seen.
        status: u8,
    },
}
