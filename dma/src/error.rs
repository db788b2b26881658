//! Errors of the DMA layer. Each message says what to do about it.

use crate::addr::{Iova, VirtAddr};

/// Why DMA memory could not be allocated, mapped or unmapped.
#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    /// A length of zero, or one that overflows when rounded to pages.
    #[error("invalid DMA length {0:#x}: it must be non-zero and fit in the address space")]
    InvalidLength(usize),
    /// A range that must be page aligned is not.
    #[error("{what} {value:#x} is not aligned to {align:#x} bytes")]
    Misaligned {
        /// What was misaligned.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The alignment required.
        align: u64,
    },
    /// memfd_create, ftruncate or mmap failed.
    #[error("cannot allocate {len:#x} bytes of DMA memory ({step}): {source}")]
    Alloc {
        /// Bytes asked for.
        len: usize,
        /// Which system call failed.
        step: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Huge pages were demanded but none could be had.
    #[error(
        "no 2 MiB huge pages available for {len:#x} bytes: reserve some \
         (`scripts/setup.sh config` or `echo 512 > /proc/sys/vm/nr_hugepages`)"
    )]
    NoHugePages {
        /// Bytes asked for.
        len: usize,
    },
    /// mlock failed: the memory could be swapped or moved under the device.
    #[error(
        "cannot lock {len:#x} bytes of DMA memory in RAM: {source}; raise the memlock limit \
         (`ulimit -l unlimited`, or memlock in /etc/security/limits.conf), run as root, or \
         reserve huge pages with `scripts/setup.sh config`"
    )]
    Lock {
        /// Bytes asked for.
        len: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// No free IOVA space large enough.
    #[error(
        "IOVA space exhausted: no free range of {len:#x} bytes within the ranges the IOMMU accepts"
    )]
    IovaExhausted {
        /// Bytes asked for.
        len: u64,
    },
    /// VFIO_IOMMU_MAP_DMA failed.
    #[error(
        "VFIO_IOMMU_MAP_DMA of {len:#x} bytes at {virt} to IOVA {iova} failed: {detail}; \
         ENOMEM usually means the memlock limit is too low (`ulimit -l unlimited`) or the \
         container's DMA mapping limit (vfio_iommu_type1 dma_entry_limit) is reached, EINVAL an \
         IOVA outside what the IOMMU accepts"
    )]
    VfioMap {
        /// Virtual address mapped.
        virt: VirtAddr,
        /// IOVA asked for.
        iova: Iova,
        /// Length.
        len: u64,
        /// The error from the kernel.
        detail: String,
    },
    /// VFIO_IOMMU_UNMAP_DMA failed.
    #[error("VFIO_IOMMU_UNMAP_DMA of {len:#x} bytes at IOVA {iova} failed: {detail}")]
    VfioUnmap {
        /// IOVA unmapped.
        iova: Iova,
        /// Length.
        len: u64,
        /// The error from the kernel.
        detail: String,
    },
    /// VFIO_IOMMU_GET_INFO failed.
    #[error("VFIO_IOMMU_GET_INFO failed: {0}; is a group attached to the container and the IOMMU type set?")]
    VfioInfo(std::io::Error),
    /// /proc/self/pagemap could not be read.
    #[error("cannot read /proc/self/pagemap: {0}")]
    Pagemap(std::io::Error),
    /// pagemap showed zero page frame numbers: the process lacks CAP_SYS_ADMIN.
    #[error(
        "no-IOMMU DMA needs physical addresses, and /proc/self/pagemap hides them without \
         CAP_SYS_ADMIN: run as root (or with CAP_SYS_ADMIN), or use an IOMMU (intel_iommu=on)"
    )]
    NeedCapSysAdmin,
    /// pagemap said a page that should be locked is not present.
    #[error(
        "page at {0} is not present in RAM although it was locked; cannot get its physical address"
    )]
    PageNotPresent(VirtAddr),
    /// The range overlaps memory already registered for DMA.
    #[error("range {virt}+{len:#x} overlaps memory already registered for DMA; register each buffer once")]
    Overlap {
        /// Start of the new range.
        virt: VirtAddr,
        /// Its length.
        len: usize,
    },
    /// A range given for unmapping was not mapped.
    #[error("IOVA {iova}+{len:#x} is not mapped by this mapper")]
    NotMapped {
        /// IOVA.
        iova: Iova,
        /// Length.
        len: usize,
    },
    /// A pool was asked for with impossible geometry.
    #[error("invalid pool: {0}")]
    InvalidPool(&'static str),
}

/// Why a virtual range could not be translated to IOVAs (the hot path's error: `Copy`, small).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// Some byte at `offset` into the range lies in no DMA-mapped memory: bounce it.
    #[error("byte {offset:#x} of the range is not in DMA-mapped memory")]
    NotMapped {
        /// Offset of the first unmapped byte from the start of the range.
        offset: usize,
    },
    /// The caller's segment array is too small for this range.
    #[error("the range needs more than {max} IOVA segments")]
    TooManySegments {
        /// Capacity of the caller's array.
        max: usize,
    },
    /// The range wraps around the address space.
    #[error("the range wraps around the address space")]
    Overflow,
}

/// An error and its sources on one line (`outer: cause: root cause`), for the `detail` of an
/// error that wraps one from another crate (vfio-ioctls' errors keep the errno in a source).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("map failed")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn error_chain_names_every_source() {
        let e = Outer(std::io::Error::from_raw_os_error(12)); // ENOMEM
        let s = error_chain(&e);
        assert!(s.starts_with("map failed: "), "{s}");
        assert!(s.contains("memory"), "the errno's text is kept: {s}");
        assert_eq!(error_chain(&std::io::Error::other("alone")), "alone");
    }
}
