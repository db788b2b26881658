//! The few raw VFIO ioctls this crate issues itself, on vfio-bindings' structures.
//!
//! vfio-ioctls covers the type1 path (container, group, device fd, region info, DMA map), but
//! it cannot open a no-IOMMU group: its container insists on the TYPE1v2 extension and its
//! groups are always `/dev/vfio/N`, never `/dev/vfio/noiommu-N`. So the no-IOMMU path (and,
//! for one code path in both modes, device info, IRQ info, MSI-X eventfds and reset) uses
//! these.

use std::os::fd::{AsRawFd, RawFd};

use vfio_bindings::bindings::vfio::{
    vfio_device_info, vfio_group_status, vfio_irq_info, vfio_irq_set, vfio_region_info, VFIO_BASE,
    VFIO_TYPE,
};

const fn io(nr: u32) -> libc::c_ulong {
    nix::request_code_none!(VFIO_TYPE, VFIO_BASE + nr) as libc::c_ulong
}

pub(crate) const VFIO_GET_API_VERSION: libc::c_ulong = io(0);
pub(crate) const VFIO_CHECK_EXTENSION: libc::c_ulong = io(1);
pub(crate) const VFIO_SET_IOMMU: libc::c_ulong = io(2);
const VFIO_GROUP_GET_STATUS: libc::c_ulong = io(3);
const VFIO_GROUP_SET_CONTAINER: libc::c_ulong = io(4);
const VFIO_GROUP_GET_DEVICE_FD: libc::c_ulong = io(6);
const VFIO_DEVICE_GET_INFO: libc::c_ulong = io(7);
const VFIO_DEVICE_GET_REGION_INFO: libc::c_ulong = io(8);
const VFIO_DEVICE_GET_IRQ_INFO: libc::c_ulong = io(9);
const VFIO_DEVICE_SET_IRQS: libc::c_ulong = io(10);
const VFIO_DEVICE_RESET: libc::c_ulong = io(11);

fn check(r: libc::c_int) -> std::io::Result<libc::c_int> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// An ioctl with an integer argument (or none).
pub(crate) fn ioctl_val(
    fd: &impl AsRawFd,
    req: libc::c_ulong,
    arg: libc::c_ulong,
) -> std::io::Result<libc::c_int> {
    // SAFETY: the requests used with this take an integer, not a pointer.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) })
}

/// Group status flags (VFIO_GROUP_FLAGS_VIABLE, ...).
pub(crate) fn group_status(group: &impl AsRawFd) -> std::io::Result<u32> {
    let mut st =
        vfio_group_status { argsz: std::mem::size_of::<vfio_group_status>() as u32, flags: 0 };
    // SAFETY: the kernel writes at most argsz bytes into `st`.
    check(unsafe { libc::ioctl(group.as_raw_fd(), VFIO_GROUP_GET_STATUS as _, &mut st) })?;
    Ok(st.flags)
}

/// Attach a group to a container.
pub(crate) fn group_set_container(
    group: &impl AsRawFd,
    container: &impl AsRawFd,
) -> std::io::Result<()> {
    let fd: RawFd = container.as_raw_fd();
    // SAFETY: VFIO_GROUP_SET_CONTAINER reads one int through the pointer.
    check(unsafe { libc::ioctl(group.as_raw_fd(), VFIO_GROUP_SET_CONTAINER as _, &fd) })?;
    Ok(())
}

/// Get a device fd from a group by device name (the PCI address).
pub(crate) fn group_get_device_fd(group: &impl AsRawFd, name: &str) -> std::io::Result<RawFd> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the kernel reads a NUL-terminated string.
    check(unsafe { libc::ioctl(group.as_raw_fd(), VFIO_GROUP_GET_DEVICE_FD as _, c.as_ptr()) })
}

/// VFIO_DEVICE_GET_INFO.
pub(crate) fn device_info(dev: &impl AsRawFd) -> std::io::Result<vfio_device_info> {
    let mut info = vfio_device_info {
        argsz: std::mem::size_of::<vfio_device_info>() as u32,
        ..Default::default()
    };
    // SAFETY: the kernel writes at most argsz bytes into `info` (capabilities past it are not
    // written when argsz is too small for them).
    check(unsafe { libc::ioctl(dev.as_raw_fd(), VFIO_DEVICE_GET_INFO as _, &mut info) })?;
    Ok(info)
}

/// VFIO_DEVICE_GET_REGION_INFO, basic fields only. When a region has capabilities the kernel
/// raises `argsz` (to 40 for QEMU's NVMe BAR0) but still fills the basic fields, which is all
/// this needs; the capability chain is not read.
pub(crate) fn region_info(dev: &impl AsRawFd, index: u32) -> std::io::Result<vfio_region_info> {
    let mut info = vfio_region_info {
        argsz: std::mem::size_of::<vfio_region_info>() as u32,
        index,
        ..Default::default()
    };
    // SAFETY: the kernel writes at most argsz bytes into `info`.
    check(unsafe { libc::ioctl(dev.as_raw_fd(), VFIO_DEVICE_GET_REGION_INFO as _, &mut info) })?;
    Ok(info)
}

/// VFIO_DEVICE_GET_IRQ_INFO.
pub(crate) fn irq_info(dev: &impl AsRawFd, index: u32) -> std::io::Result<vfio_irq_info> {
    let mut info = vfio_irq_info {
        argsz: std::mem::size_of::<vfio_irq_info>() as u32,
        index,
        ..Default::default()
    };
    // SAFETY: the kernel writes at most argsz bytes into `info`.
    check(unsafe { libc::ioctl(dev.as_raw_fd(), VFIO_DEVICE_GET_IRQ_INFO as _, &mut info) })?;
    Ok(info)
}

/// VFIO_DEVICE_SET_IRQS with `fds` as eventfd data (empty with DATA_NONE to disable).
pub(crate) fn set_irqs(
    dev: &impl AsRawFd,
    index: u32,
    flags: u32,
    fds: &[RawFd],
) -> std::io::Result<()> {
    let hdr = std::mem::size_of::<vfio_irq_set>();
    let bytes = hdr + std::mem::size_of_val(fds);
    // u64 words keep the header aligned.
    let mut buf = vec![0u64; bytes.div_ceil(8)];
    let set = buf.as_mut_ptr().cast::<vfio_irq_set>();
    // SAFETY: `buf` is large enough and aligned for the header plus the fd array.
    unsafe {
        set.write(vfio_irq_set {
            argsz: bytes as u32,
            flags,
            index,
            start: 0,
            count: fds.len() as u32,
            ..Default::default()
        });
        std::ptr::copy_nonoverlapping(
            fds.as_ptr(),
            buf.as_mut_ptr().cast::<u8>().add(hdr).cast::<RawFd>(),
            fds.len(),
        );
    }
    // SAFETY: the kernel reads argsz bytes from `buf`.
    check(unsafe { libc::ioctl(dev.as_raw_fd(), VFIO_DEVICE_SET_IRQS as _, set) })?;
    Ok(())
}

/// VFIO_DEVICE_RESET.
pub(crate) fn device_reset(dev: &impl AsRawFd) -> std::io::Result<()> {
    // SAFETY: takes no argument.
    check(unsafe { libc::ioctl(dev.as_raw_fd(), VFIO_DEVICE_RESET as _) })?;
    Ok(())
}
