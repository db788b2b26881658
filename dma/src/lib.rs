//! Memory a device can reach: DMA regions, IOVA allocation, mappers, translation, pools.
//!
//! - [`DmaRegion`]: pinned, page-aligned memory from a memfd (2 MiB huge pages when the system
//!   has them, locked 4 KiB pages otherwise; [`DmaRegion::page_kind`] says which).
//! - [`DmaMapper`]: makes memory reachable by a device. [`VfioType1Mapper`] (IOMMU, IOVAs from
//!   an [`IovaAllocator`] kept inside the container's IOVA ranges), [`NoIommuMapper`] (physical
//!   addresses), [`CheckingMapper`] (tests and device models: bounds-checked access by IOVA).
//! - [`DmaSpace`]: a mapper plus the [`TranslationTable`] of everything mapped through it;
//!   [`DmaSpace::alloc`] gives a [`DmaBuffer`], [`DmaSpace::register`] maps a caller's memory.
//! - [`Translator`]: the hot path, virtual range to [`IovaSegment`]s with no system call, lock
//!   or allocation.
//! - [`DmaPool`]: fixed per-queue pools of slots.
//! - [`DmaSlice`]: safe atomic access to device-shared memory, so drivers built on this
//!   crate can `#![forbid(unsafe_code)]`.
// The workspace denies `unsafe`; this crate is one of the three that hold it (see the
// workspace's lints): every block documents its SAFETY argument.
#![allow(unsafe_code)]
#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod addr;
mod checking;
pub mod clock;
mod copy;
mod device_memory;
mod error;
mod gate;
mod iova;
mod mapper;
mod mem;
#[cfg(feature = "mfio")]
mod mfio_buf;
mod noiommu;
mod page_cache;
mod pool;
mod region;
mod space;
mod translate;
mod vfio;
mod view;

pub use addr::{align_down, align_up, Iova, PhysAddr, VirtAddr, HUGE_PAGE_SIZE, PAGE_SIZE};
pub use checking::{CheckingMapper, CHECKING_IOVA_BASE, CHECKING_IOVA_LAST};
pub use device_memory::{DeviceMemory, DmaFault};
pub use error::{error_chain, DmaError, TranslateError};
pub use iova::IovaAllocator;
pub use mapper::{check_page_range, DmaMapper, MappedChunk};
pub use mem::DmaSlice;
pub use noiommu::{merge_pages, NoIommuMapper};
pub use pool::{DmaPool, PoolError, PoolSlot};
pub use region::{DmaRegion, PageKind, PagePolicy};
pub use space::{DmaBuffer, DmaSpace, Registration, Translator};
pub use translate::{IovaSegment, Segments, TranslationTable};
pub use vfio::{
    container_iova_ranges, parse_iova_range_cap, VfioType1Mapper, FALLBACK_IOVA_RANGES, IOVA_FLOOR,
};
pub use view::{DmaView, ModelGuard, ModelLock};
