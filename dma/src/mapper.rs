//! The `DmaMapper` trait: how memory becomes reachable by a device.

use crate::addr::{Iova, VirtAddr, PAGE_SIZE};
use crate::error::DmaError;

/// A virtually and IOVA-contiguous piece of a mapping: `[virt, virt + len)` is seen by the
/// device at `[iova, iova + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedChunk {
    /// Virtual start.
    pub virt: VirtAddr,
    /// IOVA of `virt`.
    pub iova: Iova,
    /// Length in bytes.
    pub len: usize,
}

impl MappedChunk {
    /// One past the last virtual address.
    #[inline]
    pub fn virt_end(&self) -> usize {
        self.virt.0 + self.len
    }

    /// Whether virtual address `addr` lies in this chunk.
    #[inline]
    pub fn contains(&self, addr: usize) -> bool {
        self.virt.0 <= addr && addr < self.virt_end()
    }
}

/// Makes page-aligned memory reachable by a device, and unreachable again.
///
/// Implementations: [`crate::VfioType1Mapper`] (IOMMU through a VFIO container),
/// [`crate::NoIommuMapper`] (physical addresses, no protection), [`crate::CheckingMapper`]
/// (for in-process device models: records what is mapped and rejects everything else).
///
/// Mapping is not the hot path; translating an address is, and that is done without the mapper
/// through [`crate::Translator`].
pub trait DmaMapper: Send + Sync {
    /// A short name for logs ("vfio-type1", "no-iommu", "checking").
    fn name(&self) -> &'static str;

    /// Make `[virt, virt + len)` reachable by the device. Both must be multiples of
    /// [`PAGE_SIZE`]. Returns the chunks in ascending virtual order, covering the range exactly;
    /// more than one when the IOVAs are not contiguous (no-IOMMU on 4 KiB pages).
    ///
    /// # Safety
    /// The range must be mapped memory of this process, and stay mapped (and, for no-IOMMU,
    /// resident at the same physical pages) until [`unmap`](Self::unmap) is called with the
    /// returned chunks. The device may read and write it at any time meanwhile, so nothing may
    /// hold a Rust reference to it.
    unsafe fn map(&self, virt: VirtAddr, len: usize) -> Result<Vec<MappedChunk>, DmaError>;

    /// Make memory from [`map`](Self::map) unreachable. Takes exactly the chunks `map` returned.
    fn unmap(&self, chunks: &[MappedChunk]) -> Result<(), DmaError>;
}

/// Check that a range is page aligned and non-empty (a helper for mapper implementations).
pub fn check_page_range(virt: VirtAddr, len: usize) -> Result<(), DmaError> {
    if len == 0 || virt.0.checked_add(len).is_none() {
        return Err(DmaError::InvalidLength(len));
    }
    if virt.0 % PAGE_SIZE != 0 {
        return Err(DmaError::Misaligned {
            what: "virtual address",
            value: virt.0 as u64,
            align: PAGE_SIZE as u64,
        });
    }
    if len % PAGE_SIZE != 0 {
        return Err(DmaError::Misaligned {
            what: "length",
            value: len as u64,
            align: PAGE_SIZE as u64,
        });
    }
    Ok(())
}
