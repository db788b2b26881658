//! The no-IOMMU mapper: the device sees physical addresses, read from /proc/self/pagemap.
//!
//! There is no protection in this mode: a device can reach all of RAM. Memory is locked so it
//! stays resident; hugetlb pages (what [`crate::DmaRegion`] prefers) also never move, while
//! locked 4 KiB pages could in principle be migrated by compaction (as with SPDK and DPDK,
//! prefer huge pages in this mode).

use std::fs::File;
use std::os::unix::fs::FileExt;

use nix::sys::mman::mlock;

use crate::addr::{Iova, VirtAddr, PAGE_SIZE};
use crate::error::DmaError;
use crate::mapper::{check_page_range, DmaMapper, MappedChunk};

const PM_PRESENT: u64 = 1 << 63;
const PM_PFN_MASK: u64 = (1 << 55) - 1;

/// Maps by looking up physical addresses; needs CAP_SYS_ADMIN.
#[derive(Debug)]
pub struct NoIommuMapper {
    pagemap: File,
}

impl NoIommuMapper {
    /// Open /proc/self/pagemap and check that it shows physical addresses (CAP_SYS_ADMIN).
    pub fn new() -> Result<NoIommuMapper, DmaError> {
        let pagemap = File::open("/proc/self/pagemap").map_err(DmaError::Pagemap)?;
        let m = NoIommuMapper { pagemap };
        // Probe with a page of our own: a locked page with PFN 0 means the kernel hides PFNs.
        let probe =
            crate::region::DmaRegion::with_policy(PAGE_SIZE, crate::region::PagePolicy::SmallOnly)?;
        m.phys_pages(probe.virt(), PAGE_SIZE)?;
        Ok(m)
    }

    /// Physical address of each page of `[virt, virt + len)` (page aligned, resident).
    fn phys_pages(&self, virt: VirtAddr, len: usize) -> Result<Vec<u64>, DmaError> {
        let pages = len / PAGE_SIZE;
        let mut raw = vec![0u8; pages * 8];
        let off = (virt.0 / PAGE_SIZE * 8) as u64;
        self.pagemap.read_exact_at(&mut raw, off).map_err(DmaError::Pagemap)?;
        raw.chunks_exact(8)
            .enumerate()
            .map(|(i, b)| {
                let e = u64::from_ne_bytes(b.try_into().unwrap_or_default());
                let va = VirtAddr(virt.0 + i * PAGE_SIZE);
                if e & PM_PRESENT == 0 {
                    return Err(DmaError::PageNotPresent(va));
                }
                match e & PM_PFN_MASK {
                    0 => Err(DmaError::NeedCapSysAdmin),
                    pfn => Ok(pfn * PAGE_SIZE as u64),
                }
            })
            .collect()
    }
}

/// Merge per-page physical addresses into physically contiguous chunks.
pub fn merge_pages(virt: VirtAddr, phys: &[u64]) -> Vec<MappedChunk> {
    let mut out: Vec<MappedChunk> = Vec::new();
    for (i, &p) in phys.iter().enumerate() {
        let va = VirtAddr(virt.0 + i * PAGE_SIZE);
        match out.last_mut() {
            Some(c) if c.iova.0 + c.len as u64 == p => c.len += PAGE_SIZE,
            _ => out.push(MappedChunk { virt: va, iova: Iova(p), len: PAGE_SIZE }),
        }
    }
    out
}

impl DmaMapper for NoIommuMapper {
    fn name(&self) -> &'static str {
        "no-iommu"
    }

    unsafe fn map(&self, virt: VirtAddr, len: usize) -> Result<Vec<MappedChunk>, DmaError> {
        check_page_range(virt, len)?;
        let ptr = std::ptr::NonNull::new(virt.0 as *mut libc::c_void)
            .ok_or(DmaError::InvalidLength(len))?;
        // Lock (and fault in) the pages so they have, and keep, a physical address. DmaRegions
        // are locked already; this is for registered user memory.
        // SAFETY: the caller guarantees the range is mapped memory of this process.
        unsafe { mlock(ptr, len) }.map_err(|e| DmaError::Lock { len, source: e.into() })?;
        let phys = self.phys_pages(virt, len)?;
        Ok(merge_pages(virt, &phys))
    }

    fn unmap(&self, _chunks: &[MappedChunk]) -> Result<(), DmaError> {
        // Nothing to undo: there is no IOMMU. The pages stay locked until the memory is freed
        // (munlock could unlock memory the owner had locked for its own reasons).
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_contiguous_pages() {
        let c = merge_pages(VirtAddr(0x10000), &[0x5000, 0x6000, 0x9000, 0x1000, 0x2000]);
        assert_eq!(
            c,
            vec![
                MappedChunk { virt: VirtAddr(0x10000), iova: Iova(0x5000), len: 0x2000 },
                MappedChunk { virt: VirtAddr(0x12000), iova: Iova(0x9000), len: 0x1000 },
                MappedChunk { virt: VirtAddr(0x13000), iova: Iova(0x1000), len: 0x2000 },
            ]
        );
    }

    #[test]
    fn real_pagemap_gives_physical_addresses_or_names_the_capability() {
        // As root (the CI machine) physical addresses are visible; otherwise the error must
        // say CAP_SYS_ADMIN.
        match NoIommuMapper::new() {
            Ok(m) => {
                let r = crate::region::DmaRegion::with_policy(
                    3 * PAGE_SIZE,
                    crate::region::PagePolicy::SmallOnly,
                )
                .unwrap();
                // SAFETY: `r` outlives the mapping, and no device exists in this test.
                let chunks = unsafe { m.map(r.virt(), r.len()) }.unwrap();
                assert_eq!(chunks.iter().map(|c| c.len).sum::<usize>(), r.len());
                assert!(chunks.iter().all(|c| c.iova.0 != 0 && c.iova.0 % PAGE_SIZE as u64 == 0));
                m.unmap(&chunks).unwrap();
            }
            Err(e) => assert!(e.to_string().contains("CAP_SYS_ADMIN"), "{e}"),
        }
    }
}
