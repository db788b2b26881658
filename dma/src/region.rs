//! Pinned, page-aligned memory for DMA: a memfd mapped shared, on 2 MiB huge pages when the
//! system has them, else on 4 KiB pages locked in RAM.

use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;

use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{mlock, mmap, munmap, MapFlags, ProtFlags};

use crate::addr::{align_up, VirtAddr, HUGE_PAGE_SIZE, PAGE_SIZE};
use crate::error::DmaError;
use crate::mem::DmaSlice;

/// Which pages back a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    /// 2 MiB hugetlb pages: never swapped or moved, physically contiguous per 2 MiB.
    Huge2M,
    /// 4 KiB pages, locked with mlock.
    Small4K,
}

impl PageKind {
    /// Size of one page of this kind.
    pub fn size(self) -> usize {
        match self {
            PageKind::Huge2M => HUGE_PAGE_SIZE,
            PageKind::Small4K => PAGE_SIZE,
        }
    }
}

/// Which pages to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PagePolicy {
    /// Huge pages when they can be had, else locked 4 KiB pages.
    #[default]
    Auto,
    /// Huge pages or an error.
    HugeOnly,
    /// 4 KiB pages only (locked).
    SmallOnly,
}

/// A pinned, page-aligned, zero-filled memory region, unmapped on drop.
///
/// It is not mapped for any device by itself: see [`crate::DmaSpace::alloc`], which allocates a
/// region and maps it, or [`crate::DmaMapper::map`].
pub struct DmaRegion {
    ptr: NonNull<u8>,
    len: usize,
    kind: PageKind,
    // Keeps the memfd open for the mapping's life (not needed by Linux, but makes
    // /proc/PID/fd show what the memory is).
    _fd: OwnedFd,
}

// SAFETY: the region owns its mapping; all safe access goes through DmaSlice's atomic
// operations, so it may move between and be shared by threads.
unsafe impl Send for DmaRegion {}
// SAFETY: see Send.
unsafe impl Sync for DmaRegion {}

impl std::fmt::Debug for DmaRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaRegion")
            .field("virt", &self.virt())
            .field("len", &self.len)
            .field("kind", &self.kind)
            .finish()
    }
}

impl DmaRegion {
    /// At least `len` bytes (rounded up to the page size used), huge pages if possible.
    pub fn new(len: usize) -> Result<DmaRegion, DmaError> {
        DmaRegion::with_policy(len, PagePolicy::Auto)
    }

    /// At least `len` bytes on the pages `policy` allows.
    pub fn with_policy(len: usize, policy: PagePolicy) -> Result<DmaRegion, DmaError> {
        if len == 0 {
            return Err(DmaError::InvalidLength(len));
        }
        if policy != PagePolicy::SmallOnly {
            match DmaRegion::alloc(len, PageKind::Huge2M) {
                Ok(r) => return Ok(r),
                Err(e) if policy == PagePolicy::HugeOnly => {
                    tracing::debug!("huge page allocation failed: {e}");
                    return Err(DmaError::NoHugePages { len });
                }
                Err(e) => {
                    tracing::debug!("no huge pages for {len:#x} bytes ({e}); using 4 KiB pages")
                }
            }
        }
        DmaRegion::alloc(len, PageKind::Small4K)
    }

    fn alloc(len: usize, kind: PageKind) -> Result<DmaRegion, DmaError> {
        let rounded = align_up(len as u64, kind.size() as u64)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or(DmaError::InvalidLength(len))?;
        let mut flags = MFdFlags::MFD_CLOEXEC;
        if kind == PageKind::Huge2M {
            flags |= MFdFlags::MFD_HUGETLB | MFdFlags::MFD_HUGE_2MB;
        }
        let io = |step| {
            move |e: nix::Error| DmaError::Alloc { len, step, source: std::io::Error::from(e) }
        };
        let fd = memfd_create(c"mfio-dma", flags).map_err(io("memfd_create"))?;
        nix::unistd::ftruncate(&fd, rounded as i64).map_err(io("ftruncate"))?;
        // MAP_POPULATE faults every page in now; for hugetlb the reservation is taken at mmap
        // time, so a shortage fails here and not with SIGBUS later.
        // SAFETY: a fresh shared mapping of our own memfd at an address the kernel picks; it
        // aliases no Rust object.
        let ptr = unsafe {
            mmap(
                None,
                NonZeroUsize::new(rounded).ok_or(DmaError::InvalidLength(len))?,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED | MapFlags::MAP_POPULATE,
                &fd,
                0,
            )
        }
        .map_err(io("mmap"))?;
        let region = DmaRegion { ptr: ptr.cast(), len: rounded, kind, _fd: fd };
        if kind == PageKind::Small4K {
            // SAFETY: locks our own live mapping; no memory is accessed.
            unsafe { mlock(region.ptr.cast(), rounded) }
                .map_err(|e| DmaError::Lock { len: rounded, source: e.into() })?;
        }
        tracing::debug!(len = rounded, ?kind, virt = %region.virt(), "DMA region allocated");
        Ok(region)
    }

    /// Which pages back this region.
    pub fn page_kind(&self) -> PageKind {
        self.kind
    }

    /// Length in bytes (a multiple of the page size).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: regions are never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Virtual address of the first byte.
    pub fn virt(&self) -> VirtAddr {
        VirtAddr::from_ptr(self.ptr.as_ptr())
    }

    /// Raw pointer to the first byte (for mappers and translation; never build references).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Safe (atomic) access to the whole region.
    pub fn mem(&self) -> DmaSlice<'_> {
        // SAFETY: the mapping lives as long as `self`, and this crate never creates references
        // to it.
        unsafe { DmaSlice::from_raw(self.ptr, self.len) }
    }
}

impl Drop for DmaRegion {
    fn drop(&mut self) {
        // SAFETY: we own the mapping, and the borrow checker guarantees no DmaSlice of it
        // outlives `self`. Mappers must have been told to unmap first (DmaBuffer does so).
        if let Err(e) = unsafe { munmap(self.ptr.cast(), self.len) } {
            tracing::error!("munmap of DMA region failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_pages_are_zeroed_aligned_and_rounded() {
        let r = DmaRegion::with_policy(5000, PagePolicy::SmallOnly).unwrap();
        assert_eq!(r.page_kind(), PageKind::Small4K);
        assert_eq!(r.len(), 8192);
        assert_eq!(r.virt().get() % PAGE_SIZE, 0);
        let m = r.mem();
        assert_eq!(m.read_u64(8184), 0);
        m.write_u32(4096, 42);
        assert_eq!(m.read_u32(4096), 42);
    }

    #[test]
    fn auto_falls_back_or_uses_huge_pages() {
        let r = DmaRegion::new(4096).unwrap();
        match r.page_kind() {
            PageKind::Huge2M => assert_eq!(r.len(), HUGE_PAGE_SIZE),
            PageKind::Small4K => assert_eq!(r.len(), 4096),
        }
        assert_eq!(r.virt().get() % r.page_kind().size(), 0);
    }

    #[test]
    fn zero_length_is_an_error() {
        assert!(matches!(DmaRegion::new(0), Err(DmaError::InvalidLength(0))));
    }

    #[test]
    fn huge_only_reports_a_fix_when_none_reserved() {
        let none_reserved = std::fs::read_to_string("/proc/sys/vm/nr_hugepages")
            .map(|s| s.trim() == "0")
            .unwrap_or(false);
        let r = DmaRegion::with_policy(4096, PagePolicy::HugeOnly);
        if none_reserved {
            let e = r.unwrap_err();
            assert!(e.to_string().contains("nr_hugepages"), "{e}");
        } else if let Ok(r) = r {
            assert_eq!(r.page_kind(), PageKind::Huge2M);
        }
    }
}
