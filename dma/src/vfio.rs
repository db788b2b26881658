//! The VFIO type1 mapper: IOVAs from our allocator, mapped into a container's IOMMU domain.

use crate::error::error_chain;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use vfio_bindings::bindings::vfio::{
    vfio_info_cap_header, vfio_iommu_type1_info, VFIO_BASE, VFIO_IOMMU_INFO_CAPS,
    VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, VFIO_TYPE,
};
use vfio_ioctls::VfioContainer;

use crate::addr::{VirtAddr, HUGE_PAGE_SIZE, PAGE_SIZE};
use crate::error::DmaError;
use crate::iova::IovaAllocator;
use crate::mapper::{check_page_range, DmaMapper, MappedChunk};

/// Lowest IOVA handed out: keeps 0 (and the first MiB) away from devices.
pub const IOVA_FLOOR: u64 = 0x10_0000;

/// The window assumed when the kernel reports no IOVA ranges (kernels before 5.4): 39 bits,
/// the narrowest common IOMMU (QEMU's intel-iommu default), minus the x86 MSI window.
pub const FALLBACK_IOVA_RANGES: [(u64, u64); 2] = [(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)];

/// VFIO_IOMMU_GET_INFO: `_IO(VFIO_TYPE, VFIO_BASE + 12)`.
const VFIO_IOMMU_GET_INFO: libc::c_ulong =
    nix::request_code_none!(VFIO_TYPE, VFIO_BASE + 12) as libc::c_ulong;

/// The IOVA ranges `(first, last)` a type1 container accepts, from VFIO_IOMMU_GET_INFO's IOVA
/// range capability. `None` when the kernel reports none.
///
/// The container must have a group attached and its IOMMU type set.
pub fn container_iova_ranges(
    container: &impl AsRawFd,
) -> Result<Option<Vec<(u64, u64)>>, DmaError> {
    let fd = container.as_raw_fd();
    let hdr_len = std::mem::size_of::<vfio_iommu_type1_info>();
    // First call: the kernel raises argsz to the size it needs for the capability chain.
    let mut buf = vec![0u64; hdr_len.div_ceil(8)];
    for _ in 0..2 {
        let bytes = buf.len() * 8;
        let info = buf.as_mut_ptr().cast::<vfio_iommu_type1_info>();
        // SAFETY: `buf` is at least `vfio_iommu_type1_info` long and 8-aligned.
        unsafe { (*info).argsz = bytes as u32 };
        // SAFETY: VFIO_IOMMU_GET_INFO writes at most `argsz` bytes into `buf`.
        let r = unsafe { libc::ioctl(fd, VFIO_IOMMU_GET_INFO as _, info) };
        if r < 0 {
            return Err(DmaError::VfioInfo(std::io::Error::last_os_error()));
        }
        // SAFETY: initialised by us and the kernel.
        let need = unsafe { (*info).argsz } as usize;
        if need <= bytes {
            break;
        }
        buf.resize(need.div_ceil(8), 0);
    }
    let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
    // SAFETY: `buf` holds a vfio_iommu_type1_info at its start.
    let info = unsafe { buf.as_ptr().cast::<vfio_iommu_type1_info>().read() };
    if info.flags & VFIO_IOMMU_INFO_CAPS == 0 || info.cap_offset == 0 {
        return Ok(None);
    }
    Ok(parse_iova_range_cap(&bytes, info.cap_offset as usize))
}

/// Walk a VFIO capability chain in `bytes` from `off` and return the IOVA ranges of the
/// IOVA-range capability, if present. Malformed chains give `None`, never a panic.
pub fn parse_iova_range_cap(bytes: &[u8], mut off: usize) -> Option<Vec<(u64, u64)>> {
    let rd32 = |o: usize| Some(u32::from_ne_bytes(bytes.get(o..o + 4)?.try_into().ok()?));
    let rd64 = |o: usize| Some(u64::from_ne_bytes(bytes.get(o..o + 8)?.try_into().ok()?));
    let hdr = std::mem::size_of::<vfio_info_cap_header>();
    for _ in 0..64 {
        if off == 0 {
            return None;
        }
        let id = u16::from_ne_bytes(bytes.get(off..off + 2)?.try_into().ok()?);
        let next = rd32(off + 4)? as usize;
        if u32::from(id) == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE {
            let n = rd32(off + hdr)? as usize;
            let mut ranges = Vec::with_capacity(n.min(64));
            for k in 0..n {
                let base = off + hdr + 8 + k * 16;
                ranges.push((rd64(base)?, rd64(base + 8)?));
            }
            return Some(ranges);
        }
        off = next;
    }
    None
}

/// Maps memory through a VFIO type1 container, at IOVAs it allocates within the container's
/// IOVA ranges.
pub struct VfioType1Mapper {
    container: Arc<VfioContainer>,
    ranges: Vec<(u64, u64)>,
    alloc: Mutex<IovaAllocator>,
}

impl std::fmt::Debug for VfioType1Mapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioType1Mapper").field("ranges", &self.ranges).finish()
    }
}

impl VfioType1Mapper {
    /// A mapper for `container`, which must already have a group attached (VFIO sets the IOMMU
    /// type then, and only then reports IOVA ranges).
    pub fn new(container: Arc<VfioContainer>) -> Result<VfioType1Mapper, DmaError> {
        let ranges = match container_iova_ranges(&*container)? {
            Some(r) if !r.is_empty() => r,
            _ => {
                tracing::warn!("VFIO reports no IOVA ranges; assuming a 39-bit IOMMU");
                FALLBACK_IOVA_RANGES.to_vec()
            }
        };
        tracing::debug!(?ranges, "VFIO type1 IOVA ranges");
        Ok(VfioType1Mapper {
            alloc: Mutex::new(IovaAllocator::new(&ranges, IOVA_FLOOR)),
            container,
            ranges,
        })
    }

    /// The IOVA ranges `(first, last)` the container accepts.
    pub fn iova_ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// The container.
    pub fn container(&self) -> &Arc<VfioContainer> {
        &self.container
    }

    fn alloc(&self) -> std::sync::MutexGuard<'_, IovaAllocator> {
        self.alloc.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl DmaMapper for VfioType1Mapper {
    fn name(&self) -> &'static str {
        "vfio-type1"
    }

    unsafe fn map(&self, virt: VirtAddr, len: usize) -> Result<Vec<MappedChunk>, DmaError> {
        check_page_range(virt, len)?;
        // Align large mappings to 2 MiB so the IOMMU can use superpages for them.
        let align = if len >= HUGE_PAGE_SIZE && virt.0 % HUGE_PAGE_SIZE == 0 {
            HUGE_PAGE_SIZE
        } else {
            PAGE_SIZE
        };
        let iova = self.alloc().alloc(len as u64, align as u64)?;
        // SAFETY: forwarded from this function's contract: the memory stays mapped until
        // `unmap`, and is only accessed through atomic operations meanwhile.
        let r = unsafe { self.container.vfio_dma_map(iova.0, len, virt.0 as *mut u8) };
        if let Err(e) = r {
            let _ = self.alloc().free(iova, len as u64);
            return Err(DmaError::VfioMap { virt, iova, len: len as u64, detail: error_chain(&e) });
        }
        Ok(vec![MappedChunk { virt, iova, len }])
    }

    fn unmap(&self, chunks: &[MappedChunk]) -> Result<(), DmaError> {
        for c in chunks {
            self.container.vfio_dma_unmap(c.iova.0, c.len).map_err(|e| DmaError::VfioUnmap {
                iova: c.iova,
                len: c.len as u64,
                detail: error_chain(&e),
            })?;
            self.alloc().free(c.iova, c.len as u64)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap_chain(ranges: &[(u64, u64)]) -> Vec<u8> {
        // 24-byte info header, then a migration cap (id 2) that points at the range cap.
        let mut b = vec![0u8; 24];
        b.extend_from_slice(&2u16.to_ne_bytes());
        b.extend_from_slice(&1u16.to_ne_bytes());
        b.extend_from_slice(&40u32.to_ne_bytes());
        b.extend_from_slice(&[0; 8]);
        assert_eq!(b.len(), 40);
        b.extend_from_slice(&1u16.to_ne_bytes());
        b.extend_from_slice(&1u16.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&(ranges.len() as u32).to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        for &(s, e) in ranges {
            b.extend_from_slice(&s.to_ne_bytes());
            b.extend_from_slice(&e.to_ne_bytes());
        }
        b
    }

    #[test]
    fn parses_iova_range_capability() {
        let want = [(0, 0xfedf_ffff), (0xfef0_0000, 0x7f_ffff_ffff)];
        let b = cap_chain(&want);
        assert_eq!(parse_iova_range_cap(&b, 24), Some(want.to_vec()));
    }

    #[test]
    fn malformed_chains_do_not_panic() {
        let b = cap_chain(&[(0, 0xffff)]);
        assert_eq!(parse_iova_range_cap(&b[..50], 24), None);
        assert_eq!(parse_iova_range_cap(&b, 0), None);
        assert_eq!(parse_iova_range_cap(&b, 10_000), None);
        // A chain that loops on itself ends.
        let mut l = vec![0u8; 16];
        l[0] = 9;
        l[4] = 8;
        l[8] = 9;
        l[12] = 8;
        assert_eq!(parse_iova_range_cap(&l, 8), None);
    }
}
