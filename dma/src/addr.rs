//! Address newtypes, so an IOVA can never be handed where a virtual address belongs.

use core::fmt;

/// Size of a base page on every platform this crate supports (x86_64, aarch64 with 4 KiB pages).
pub const PAGE_SIZE: usize = 4096;

/// Size of a 2 MiB huge page.
pub const HUGE_PAGE_SIZE: usize = 2 * 1024 * 1024;

/// An I/O virtual address: what a device puts on the bus. Under VFIO type1 it is translated by
/// the IOMMU; under no-IOMMU it is a physical address; under the checking mapper it is an
/// address in a made-up space that never equals the virtual address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Iova(pub u64);

/// A virtual address in this process.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VirtAddr(pub usize);

/// A physical address (no-IOMMU mode only).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PhysAddr(pub u64);

impl Iova {
    /// The raw value the device sees.
    #[inline]
    pub const fn get(self) -> u64 {
        self.0
    }

    /// This address plus `off` bytes; `None` on overflow.
    #[inline]
    pub const fn checked_add(self, off: u64) -> Option<Iova> {
        match self.0.checked_add(off) {
            Some(v) => Some(Iova(v)),
            None => None,
        }
    }
}

impl VirtAddr {
    /// The address of a pointer.
    #[inline]
    pub fn from_ptr<T>(p: *const T) -> VirtAddr {
        VirtAddr(p as usize)
    }

    /// The raw value.
    #[inline]
    pub const fn get(self) -> usize {
        self.0
    }

    /// This address plus `off` bytes; `None` on overflow.
    #[inline]
    pub const fn checked_add(self, off: usize) -> Option<VirtAddr> {
        match self.0.checked_add(off) {
            Some(v) => Some(VirtAddr(v)),
            None => None,
        }
    }
}

impl PhysAddr {
    /// The raw value.
    #[inline]
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for Iova {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Iova({:#x})", self.0)
    }
}
impl fmt::Display for Iova {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}
impl fmt::Debug for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VirtAddr({:#x})", self.0)
    }
}
impl fmt::Display for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}
impl fmt::Debug for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhysAddr({:#x})", self.0)
    }
}
impl fmt::Display for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Round `v` up to a multiple of `align` (a power of two); `None` on overflow.
#[inline]
pub const fn align_up(v: u64, align: u64) -> Option<u64> {
    match v.checked_add(align - 1) {
        Some(x) => Some(x & !(align - 1)),
        None => None,
    }
}

/// Round `v` down to a multiple of `align` (a power of two).
#[inline]
pub const fn align_down(v: u64, align: u64) -> u64 {
    v & !(align - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_helpers() {
        assert_eq!(align_up(0, 4096), Some(0));
        assert_eq!(align_up(1, 4096), Some(4096));
        assert_eq!(align_up(4096, 4096), Some(4096));
        assert_eq!(align_up(u64::MAX, 4096), None);
        assert_eq!(align_down(8191, 4096), 4096);
    }

    #[test]
    fn display_is_hex() {
        assert_eq!(format!("{}", Iova(0x1000)), "0x1000");
        assert_eq!(format!("{:?}", VirtAddr(0x20)), "VirtAddr(0x20)");
        assert_eq!(Iova(u64::MAX).checked_add(1), None);
    }
}
