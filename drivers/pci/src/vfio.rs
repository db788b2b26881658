//! `VfioPci`: a PCI function opened through VFIO, with an IOMMU (type1) or without
//! (no-IOMMU group `/dev/vfio/noiommu-N`).

use mfio_dma::error_chain;
use std::fs::{File, OpenOptions};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use mfio_dma::{DmaMapper, DmaSpace, NoIommuMapper, VfioType1Mapper};
use nix::sys::eventfd::{EfdFlags, EventFd};
use vfio_bindings::bindings::vfio::{
    VFIO_API_VERSION, VFIO_DEVICE_FLAGS_RESET, VFIO_GROUP_FLAGS_VIABLE,
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_NOIOMMU_IOMMU, VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_REQ_IRQ_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps};

use crate::address::PciAddress;
use crate::device::{check_config_access, PciDevice};
use crate::error::PciError;
use crate::ioctl;
use crate::mmio::BarAccess;
use crate::removal::{Removal, Targets, Watcher};
use crate::sysfs::Sysfs;

/// How DMA is translated for a device opened through VFIO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IommuMode {
    /// An IOMMU translates IOVAs (VFIO type1 container).
    Type1,
    /// No IOMMU: the device uses physical addresses, and can reach all memory.
    NoIommu,
}

/// The open VFIO objects. Field order is drop order: device before group before container.
enum Handle {
    Type1 { device: VfioDevice, _container: Arc<VfioContainer> },
    NoIommu { device: File, _group: File, _container: File },
}

/// A PCI function opened through VFIO: BARs mapped, config space, DMA through its container.
pub struct VfioPci {
    addr: PciAddress,
    mode: IommuMode,
    /// A duplicate of the device fd (for pread/pwrite), owned.
    dev: File,
    bars: [Option<BarAccess>; 6],
    config_offset: u64,
    config_size: u64,
    flags: u32,
    msix_count: u32,
    /// The kernel's ends of the MSI-X eventfds (shared with `removal`, which kicks them).
    msix: Arc<Mutex<Vec<EventFd>>>,
    /// Hot removal: the kernel's request, and the release (see `removal`).
    removal: Arc<Removal>,
    /// The thread waiting for the kernel's request (none where VFIO offers no request IRQ).
    watcher: Option<Watcher>,
    /// Dropped by hand, after the BARs: a released type1 device must not run vfio-ioctls' drop.
    handle: ManuallyDrop<Handle>,
    dma: Arc<DmaSpace>,
}

impl std::fmt::Debug for VfioPci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioPci")
            .field("addr", &self.addr)
            .field("mode", &self.mode)
            .field("bars", &(0..6).map(|b| self.bar_len(b)).collect::<Vec<_>>())
            .finish()
    }
}

fn vfio_err(addr: PciAddress, op: &'static str) -> impl Fn(std::io::Error) -> PciError {
    move |e| PciError::Vfio { addr, op, detail: e.to_string() }
}

/// Open a group device node, turning the common failures into errors that name the fix.
fn open_group(path: &Path) -> Result<File, PciError> {
    OpenOptions::new().read(true).write(true).open(path).map_err(|e| match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => PciError::NoPermission(path.to_path_buf()),
        Some(libc::EBUSY) => PciError::GroupBusy(path.to_path_buf()),
        _ => PciError::Io { path: path.to_path_buf(), source: e },
    })
}

impl VfioPci {
    /// Open `addr` (bound to vfio-pci) on the running system, in whichever mode its group is:
    /// type1 when `/dev/vfio/N` exists, no-IOMMU when `/dev/vfio/noiommu-N` does.
    pub fn open(addr: PciAddress) -> Result<VfioPci, PciError> {
        VfioPci::open_with(&Sysfs::system(), addr)
    }

    /// [`open`](Self::open) with a parsed address string.
    pub fn open_str(addr: &str) -> Result<VfioPci, PciError> {
        VfioPci::open(addr.parse()?)
    }

    /// Open `addr` using `sysfs` for the checks (the VFIO device nodes are always the real
    /// ones under `/dev/vfio`).
    pub fn open_with(sysfs: &Sysfs, addr: PciAddress) -> Result<VfioPci, PciError> {
        let f = sysfs.check_vfio_ready(addr)?;
        let group = f.iommu_group.ok_or(PciError::NoIommu(addr))?;
        if sysfs.group_is_noiommu(group) {
            Self::open_noiommu(sysfs, addr, group)
        } else {
            Self::open_type1(sysfs, addr, group)
        }
    }

    fn open_type1(sysfs: &Sysfs, addr: PciAddress, group: u32) -> Result<VfioPci, PciError> {
        // Probe the group node first: vfio-ioctls would report EACCES as a bare open failure.
        drop(open_group(&sysfs.group_dev(group, false))?);
        let verr = |op| {
            move |e: vfio_ioctls::VfioError| PciError::Vfio { addr, op, detail: error_chain(&e) }
        };
        let container = Arc::new(VfioContainer::new(None).map_err(verr("container open"))?);
        let device =
            VfioDevice::new(&sysfs.device_dir(addr), container.clone() as Arc<dyn VfioOps>, false)
                .map_err(verr("device open"))?;
        let mapper = VfioType1Mapper::new(container.clone())?;
        tracing::info!(%addr, ranges = ?mapper.iova_ranges(), "opened through VFIO type1");
        let fd = device.as_raw_fd();
        Self::finish(
            addr,
            IommuMode::Type1,
            fd,
            Arc::new(mapper),
            Handle::Type1 { device, _container: container },
        )
    }

    fn open_noiommu(sysfs: &Sysfs, addr: PciAddress, group: u32) -> Result<VfioPci, PciError> {
        let verr = |op| vfio_err(addr, op);
        let cpath = Path::new("/dev/vfio/vfio");
        let container =
            OpenOptions::new().read(true).write(true).open(cpath).map_err(|e| {
                match e.raw_os_error() {
                    Some(libc::EACCES) => PciError::NoPermission(cpath.to_path_buf()),
                    _ => PciError::Io { path: cpath.to_path_buf(), source: e },
                }
            })?;
        let v = ioctl::ioctl_val(&container, ioctl::VFIO_GET_API_VERSION, 0)
            .map_err(verr("get API version"))?;
        if v as u32 != VFIO_API_VERSION {
            return Err(PciError::Vfio {
                addr,
                op: "get API version",
                detail: format!("kernel API {v}, expected {VFIO_API_VERSION}"),
            });
        }
        let ext =
            ioctl::ioctl_val(&container, ioctl::VFIO_CHECK_EXTENSION, VFIO_NOIOMMU_IOMMU.into())
                .map_err(verr("check no-IOMMU extension"))?;
        if ext != 1 {
            return Err(PciError::NoIommu(addr));
        }
        let gpath = sysfs.group_dev(group, true);
        let gfile = open_group(&gpath)?;
        let st = ioctl::group_status(&gfile).map_err(verr("group status"))?;
        if st & VFIO_GROUP_FLAGS_VIABLE == 0 {
            // check_vfio_ready passed, so a member changed driver meanwhile.
            return Err(PciError::GroupNotViable { addr, group, others: Vec::new() });
        }
        ioctl::group_set_container(&gfile, &container).map_err(verr("group set container"))?;
        ioctl::ioctl_val(&container, ioctl::VFIO_SET_IOMMU, VFIO_NOIOMMU_IOMMU.into())
            .map_err(verr("set no-IOMMU"))?;
        let raw = ioctl::group_get_device_fd(&gfile, &addr.to_string()).map_err(|e| {
            match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => PciError::Vfio {
                    addr,
                    op: "get device fd",
                    detail: format!("{e}: no-IOMMU devices need CAP_SYS_RAWIO; run as root"),
                },
                _ => verr("get device fd")(e),
            }
        })?;
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        let device = unsafe { File::from_raw_fd(raw) };
        let mapper = NoIommuMapper::new()?;
        tracing::warn!(%addr, "opened through VFIO no-IOMMU: the device can reach all memory");
        let fd = device.as_raw_fd();
        Self::finish(
            addr,
            IommuMode::NoIommu,
            fd,
            Arc::new(mapper),
            Handle::NoIommu { device, _group: gfile, _container: container },
        )
    }

    fn finish(
        addr: PciAddress,
        mode: IommuMode,
        fd: RawFd,
        mapper: Arc<dyn DmaMapper>,
        handle: Handle,
    ) -> Result<VfioPci, PciError> {
        let verr = |op| vfio_err(addr, op);
        // Own a duplicate so pread/pwrite need no unsafe borrow of the handle's fd.
        let dup = nix::unistd::dup(
            // SAFETY: `fd` belongs to `handle`, which is alive for this whole call.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        )
        .map_err(|e| verr("dup device fd")(e.into()))?;
        let dev = File::from(dup);
        let info = ioctl::device_info(&dev).map_err(verr("device info"))?;
        let cfg = ioctl::region_info(&dev, VFIO_PCI_CONFIG_REGION_INDEX)
            .map_err(verr("config region info"))?;
        let mut bars: [Option<BarAccess>; 6] = Default::default();
        for (i, slot) in bars.iter_mut().enumerate() {
            let index = VFIO_PCI_BAR0_REGION_INDEX + i as u32;
            let (size, offset, flags) = match &handle {
                Handle::Type1 { device, .. } => (
                    device.get_region_size(index),
                    device.get_region_offset(index),
                    device.get_region_flags(index),
                ),
                Handle::NoIommu { .. } => {
                    let r = ioctl::region_info(&dev, index).map_err(verr("BAR region info"))?;
                    (r.size, r.offset, r.flags)
                }
            };
            if size > 0 {
                *slot = Some(BarAccess::new(
                    &dev,
                    offset,
                    size,
                    flags & VFIO_REGION_INFO_FLAG_MMAP != 0,
                ));
            }
        }
        let msix_count =
            ioctl::irq_info(&dev, VFIO_PCI_MSIX_IRQ_INDEX).map(|i| i.count).unwrap_or(0);
        let msix = Arc::new(Mutex::new(Vec::new()));
        let targets = Targets {
            bars: bars.iter().flatten().filter_map(BarAccess::mapping).collect(),
            fds: vec![dev.as_raw_fd(), fd],
            config_offset: cfg.offset,
        };
        let removal = Removal::new(addr, msix.clone(), targets);
        let watcher = watch_requests(&dev, addr, &removal);
        Ok(VfioPci {
            addr,
            mode,
            dev,
            bars,
            config_offset: cfg.offset,
            config_size: cfg.size,
            flags: info.flags,
            msix_count,
            msix,
            removal,
            watcher,
            handle: ManuallyDrop::new(handle),
            dma: DmaSpace::new(mapper),
        })
    }

    /// Type1 or no-IOMMU.
    pub fn mode(&self) -> IommuMode {
        self.mode
    }

    /// Whether BAR `bar` is mapped (fast path) rather than reached with pread/pwrite.
    pub fn bar_is_mapped(&self, bar: u8) -> bool {
        matches!(self.bars.get(bar as usize), Some(Some(BarAccess::Mapped { .. })))
    }

    /// Whether VFIO offers a function reset for this device.
    pub fn can_reset(&self) -> bool {
        self.flags & VFIO_DEVICE_FLAGS_RESET != 0
    }

    /// BAR `bar`, or [`PciError::BarMissing`].
    pub fn require_bar(&self, bar: u8) -> Result<u64, PciError> {
        self.bar_len(bar).ok_or(PciError::BarMissing { addr: self.addr, bar })
    }

    #[inline]
    #[track_caller]
    fn bar(&self, bar: u8) -> &BarAccess {
        match self.bars.get(bar as usize) {
            Some(Some(b)) => b,
            _ => panic!("{}: access to missing BAR {bar}", self.addr),
        }
    }
}

impl PciDevice for VfioPci {
    fn address(&self) -> PciAddress {
        self.addr
    }

    fn bar_len(&self, bar: u8) -> Option<u64> {
        self.bars.get(bar as usize)?.as_ref().map(|b| b.len())
    }

    #[inline]
    fn read8(&self, bar: u8, offset: u64) -> u8 {
        self.bar(bar).read8(&self.dev, offset)
    }
    #[inline]
    fn write8(&self, bar: u8, offset: u64, value: u8) {
        self.bar(bar).write8(&self.dev, offset, value)
    }
    #[inline]
    fn read16(&self, bar: u8, offset: u64) -> u16 {
        self.bar(bar).read16(&self.dev, offset)
    }
    #[inline]
    fn write16(&self, bar: u8, offset: u64, value: u16) {
        self.bar(bar).write16(&self.dev, offset, value)
    }
    #[inline]
    fn read32(&self, bar: u8, offset: u64) -> u32 {
        self.bar(bar).read32(&self.dev, offset)
    }
    #[inline]
    fn write32(&self, bar: u8, offset: u64, value: u32) {
        self.bar(bar).write32(&self.dev, offset, value)
    }
    #[inline]
    fn read64(&self, bar: u8, offset: u64) -> u64 {
        self.bar(bar).read64(&self.dev, offset)
    }
    #[inline]
    fn write64(&self, bar: u8, offset: u64, value: u64) {
        self.bar(bar).write64(&self.dev, offset, value)
    }

    fn config_read(&self, offset: u16, buf: &mut [u8]) -> Result<(), PciError> {
        check_config_access(offset, buf.len())?;
        if self.removal.is_released() {
            return Err(PciError::Gone(self.addr));
        }
        if offset as u64 + buf.len() as u64 > self.config_size {
            return Err(PciError::ConfigRange { offset, len: buf.len() });
        }
        self.dev
            .read_exact_at(buf, self.config_offset + offset as u64)
            .map_err(vfio_err(self.addr, "config read"))
    }

    fn config_write(&self, offset: u16, buf: &[u8]) -> Result<(), PciError> {
        check_config_access(offset, buf.len())?;
        if self.removal.is_released() {
            return Err(PciError::Gone(self.addr));
        }
        if offset as u64 + buf.len() as u64 > self.config_size {
            return Err(PciError::ConfigRange { offset, len: buf.len() });
        }
        self.dev
            .write_all_at(buf, self.config_offset + offset as u64)
            .map_err(vfio_err(self.addr, "config write"))
    }

    fn dma(&self) -> &Arc<DmaSpace> {
        &self.dma
    }

    #[inline]
    fn is_removed(&self) -> bool {
        self.removal.is_removed()
    }

    fn release(&self) {
        self.removal.release();
    }

    fn stop_dma(&self) -> bool {
        if self.removal.is_released() {
            // Bus mastering was turned off as it was released; config space is gone now.
            return self.removal.dma_stopped();
        }
        crate::device::stop_dma_by_command(self)
    }

    fn reset(&self) -> Result<(), PciError> {
        if !self.can_reset() {
            return Err(PciError::Unsupported { addr: self.addr, what: "function reset" });
        }
        match &*self.handle {
            // vfio-ioctls' reset checks the flag itself and reports nothing back.
            Handle::Type1 { device, .. } => {
                device.reset();
                Ok(())
            }
            Handle::NoIommu { device, .. } => {
                ioctl::device_reset(device).map_err(vfio_err(self.addr, "device reset"))
            }
        }
    }

    fn msix_count(&self) -> u32 {
        self.msix_count
    }

    fn enable_msix(&self, count: u32) -> Result<Vec<EventFd>, PciError> {
        if count == 0 || count > self.msix_count {
            return Err(PciError::Unsupported { addr: self.addr, what: "that many MSI-X vectors" });
        }
        // Our own SET_IRQS (not vfio-ioctls' enable_msix) so callers get nix EventFds and the
        // no-IOMMU path shares the code.
        let mk = |_| EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK);
        let fds: Vec<EventFd> = (0..count)
            .map(mk)
            .collect::<Result<_, _>>()
            .map_err(|e| vfio_err(self.addr, "eventfd")(e.into()))?;
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        ioctl::set_irqs(
            &self.dev,
            VFIO_PCI_MSIX_IRQ_INDEX,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            &raw,
        )
        .map_err(vfio_err(self.addr, "enable MSI-X"))?;
        // The kernel holds its own references; return duplicates to the caller and keep ours
        // alive until MSI-X is disabled.
        let out = fds
            .iter()
            .map(|f| {
                crate::model_irq::dup_eventfd(f)
                    .map_err(|e| vfio_err(self.addr, "dup eventfd")(e.into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        *self.msix.lock().unwrap_or_else(|p| p.into_inner()) = fds;
        Ok(out)
    }

    fn disable_msix(&self) -> Result<(), PciError> {
        ioctl::set_irqs(
            &self.dev,
            VFIO_PCI_MSIX_IRQ_INDEX,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            &[],
        )
        .map_err(vfio_err(self.addr, "disable MSI-X"))?;
        self.msix.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Ok(())
    }
}

/// Registers an eventfd for the kernel's device request and starts the thread that waits on
/// it; `None` (hot removal then goes unnoticed until registers read all ones) where VFIO
/// offers no request interrupt.
fn watch_requests(dev: &File, addr: PciAddress, removal: &Arc<Removal>) -> Option<Watcher> {
    if ioctl::irq_info(dev, VFIO_PCI_REQ_IRQ_INDEX).map_or(0, |i| i.count) == 0 {
        tracing::debug!(%addr, "no device-request interrupt: hot removal is not announced");
        return None;
    }
    let started = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map_err(std::io::Error::from)
        .and_then(|req| {
            let flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
            ioctl::set_irqs(dev, VFIO_PCI_REQ_IRQ_INDEX, flags, &[req.as_raw_fd()])?;
            Watcher::start(removal.clone(), req)
        });
    match started {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(%addr, error = %e, "cannot watch for device requests (hot removal)");
            None
        }
    }
}

impl Drop for VfioPci {
    fn drop(&mut self) {
        // The watcher first: it may be releasing, and uses the BARs and fds below.
        drop(self.watcher.take());
        for bar in &mut self.bars {
            drop(bar.take());
        }
        // SAFETY: `handle` is taken once, here, and not used after.
        let handle = unsafe { ManuallyDrop::take(&mut self.handle) };
        match handle {
            Handle::Type1 { device, _container } if self.removal.is_released() => {
                // vfio-ioctls' VfioDevice drop talks to a device sysfs no longer has, and
                // panics: close its fd (now /dev/null) ourselves and forget the rest, which
                // leaks its group's reference to the container (a few fds per removal).
                let fd = device.as_raw_fd();
                std::mem::forget(device);
                // SAFETY: the fd belonged to the forgotten VfioDevice; nothing else closes it.
                drop(unsafe { File::from_raw_fd(fd) });
            }
            h => drop(h),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vfio_pci_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<VfioPci>();
    }

    #[test]
    fn open_reports_missing_device_and_wrong_driver() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sysfs::new(dir.path());
        std::fs::create_dir_all(dir.path().join("sys/bus/pci/devices")).unwrap();
        let e = VfioPci::open_with(&s, "0000:00:09.0".parse().unwrap()).unwrap_err();
        assert!(matches!(e, PciError::NotFound(_)), "{e}");
        assert!(VfioPci::open_str("not-an-address")
            .unwrap_err()
            .to_string()
            .contains("DDDD:BB:DD.F"));
    }

    #[test]
    fn group_open_errors_name_the_fix() {
        let e = open_group(Path::new("/nonexistent/vfio/3")).unwrap_err();
        assert!(matches!(e, PciError::Io { .. }), "{e}");
        let msg = PciError::NoPermission("/dev/vfio/3".into()).to_string();
        assert!(msg.contains("TARGET_USER") && msg.contains("/dev/vfio/3"), "{msg}");
    }
}
