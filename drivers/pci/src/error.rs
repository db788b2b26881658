//! Errors of the PCI layer. Each says what to do about it.

use std::path::PathBuf;

use crate::address::{AddressError, PciAddress};

/// Why a PCI function could not be found, bound, opened or used.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    /// Not a PCI address.
    #[error(transparent)]
    InvalidAddress(#[from] AddressError),
    /// No such function in sysfs.
    #[error("PCI function {0} not found under /sys/bus/pci/devices: list devices with `scripts/setup.sh status` or `lspci -D`")]
    NotFound(PciAddress),
    /// Bound to another driver, or to none.
    #[error(
        "{addr} is bound to {}, not vfio-pci: run `scripts/setup.sh config` (PCI_ALLOWED={addr}), \
         or `echo vfio-pci > /sys/bus/pci/devices/{addr}/driver_override`, unbind it from its \
         driver and `echo {addr} > /sys/bus/pci/drivers_probe`",
        driver.as_deref().unwrap_or("no driver")
    )]
    NotBoundToVfio {
        /// The function.
        addr: PciAddress,
        /// Its current driver.
        driver: Option<String>,
    },
    /// The vfio-pci driver is not loaded.
    #[error("the vfio-pci driver is not loaded: `modprobe vfio-pci` (and for no-IOMMU mode `modprobe vfio enable_unsafe_noiommu_mode=1` first)")]
    VfioPciMissing,
    /// After binding, the function is still not on vfio-pci.
    #[error("binding {addr} to vfio-pci did not take: it is on {}; see `dmesg` for why", driver.as_deref().unwrap_or("no driver"))]
    BindFailed {
        /// The function.
        addr: PciAddress,
        /// Its driver after the attempt.
        driver: Option<String>,
    },
    /// No IOMMU group: there is no IOMMU and no-IOMMU mode is off.
    #[error(
        "{0} has no IOMMU group: there is no IOMMU and VFIO's no-IOMMU mode is off. Boot with \
         intel_iommu=on (or amd_iommu=on), or, accepting that the device can then reach all \
         memory, `modprobe vfio enable_unsafe_noiommu_mode=1` \
         (echo Y > /sys/module/vfio/parameters/enable_unsafe_noiommu_mode) and rebind it to vfio-pci"
    )]
    NoIommu(PciAddress),
    /// Other functions in the group are bound to host drivers.
    #[error(
        "IOMMU group {group} of {addr} is not viable: every function in it must be bound to \
         vfio-pci or to no driver, but {}: bind them too (`scripts/setup.sh config` with \
         PCI_ALLOWED listing them) or move the device to another slot",
        others.iter().map(|(a, d)| format!("{a} is on {d}")).collect::<Vec<_>>().join(", ")
    )]
    GroupNotViable {
        /// The function asked for.
        addr: PciAddress,
        /// Its group.
        group: u32,
        /// The members in the way, with their drivers.
        others: Vec<(PciAddress, String)>,
    },
    /// /dev/vfio/N cannot be opened for lack of permission.
    #[error(
        "no permission to open {}: run as root, or give your user the group with \
         `sudo TARGET_USER=$USER scripts/setup.sh config` (and raise its memlock limit)",
        .0.display()
    )]
    NoPermission(PathBuf),
    /// /dev/vfio/N is open elsewhere.
    #[error("{} is busy: another process (or another VfioPci in this one) has the group open", .0.display())]
    GroupBusy(PathBuf),
    /// The BAR does not exist or has size 0.
    #[error("{addr} has no BAR {bar} (or it is empty): check the device (`lspci -vs {addr}`)")]
    BarMissing {
        /// The function.
        addr: PciAddress,
        /// BAR index.
        bar: u8,
    },
    /// A config space access outside 4 KiB or of a bad width.
    #[error("config space access of {len} bytes at {offset:#x} is out of range")]
    ConfigRange {
        /// Offset.
        offset: u16,
        /// Width.
        len: usize,
    },
    /// The device cannot do this (reset, MSI-X).
    #[error("{addr}: {what} is not supported by this device")]
    Unsupported {
        /// The function.
        addr: PciAddress,
        /// What.
        what: &'static str,
    },
    /// A VFIO ioctl failed.
    #[error("VFIO {op} on {addr} failed: {detail}")]
    Vfio {
        /// The function.
        addr: PciAddress,
        /// The operation.
        op: &'static str,
        /// What the kernel said.
        detail: String,
    },
    /// A file in sysfs or /dev could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A sysfs file held something unexpected.
    #[error("{}: unexpected contents `{content}`", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it held.
        content: String,
    },
    /// The function was removed (hot unplug, sysfs remove, unbind) and given back.
    #[error("{0} was removed: open it again once it is back (`scripts/setup.sh config` rebinds it to vfio-pci)")]
    Gone(PciAddress),
    /// Mapping DMA memory failed.
    #[error(transparent)]
    Dma(#[from] mfio_dma::DmaError),
}
