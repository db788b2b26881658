//! PCI devices for userspace drivers: the [`PciDevice`] trait, the VFIO implementation
//! [`VfioPci`], and [`Sysfs`] (enumerate functions, IOMMU groups, bind to vfio-pci).
//!
//! Drivers are generic over `D: PciDevice` and need no `unsafe`: BAR registers through
//! `read32`/`write32`/..., config space through `config_read*`, DMA memory through
//! [`PciDevice::dma`] (an [`mfio_dma::DmaSpace`]).
// The workspace denies `unsafe`; this crate is one of the three that hold it (see the
// workspace's lints): every block documents its SAFETY argument.
#![allow(unsafe_code)]
#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod address;
mod device;
mod error;
mod ioctl;
mod mmio;
mod model_irq;
mod removal;
mod sysfs;
mod vfio;
mod wakeup;

pub use address::{AddressError, PciAddress};
pub use device::{
    check_config_access, stop_dma_by_command, PciDevice, CAP_ID_MSIX, CAP_ID_VENDOR,
    COMMAND_BUS_MASTER, COMMAND_INTX_DISABLE, COMMAND_MEMORY, CONFIG_CAP_PTR, CONFIG_COMMAND,
    CONFIG_STATUS, STATUS_CAP_LIST,
};
pub use error::PciError;
pub use model_irq::{dup_eventfd, ModelInterrupts};
pub use removal::GRACE as RELEASE_GRACE;
pub use sysfs::{PciFunction, Sysfs, CLASS_NVME, DEVICE_VIRTIO_BLK, VENDOR_VIRTIO, VFIO_PCI};
pub use vfio::{IommuMode, VfioPci};
pub use wakeup::{
    CompletionMode, Verdict, Wakeup, WakeupStats, ADAPTIVE_MAX_WINDOW, DEFAULT_SPIN,
    UNANNOUNCED_AFTER, UNANNOUNCED_LIMIT,
};

/// The eventfd type MSI-X vectors are delivered on, and its error type, re-exported so users
/// need no `nix` of their own.
pub use nix::{errno::Errno, sys::eventfd::EventFd};
