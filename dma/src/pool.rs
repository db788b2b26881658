//! Fixed pools of DMA buffers, allocated up front, one per queue: PRP list pages, bounce
//! buffers, virtio request headers. Taking and returning a slot is a push or pop on a
//! preallocated free list: no lock, no allocation.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::addr::Iova;
use crate::error::DmaError;
use crate::mem::DmaSlice;
use crate::space::{DmaBuffer, DmaSpace};

static NEXT_POOL_ID: AtomicU32 = AtomicU32::new(1);

/// A slot taken from a [`DmaPool`]. Not `Clone`: it is given back exactly once, by value.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a pool slot must be given back with DmaPool::free"]
pub struct PoolSlot {
    pool: u32,
    index: u32,
}

impl PoolSlot {
    /// Index of the slot in its pool (for tables indexed by slot).
    pub fn index(&self) -> usize {
        self.index as usize
    }
}

/// Why a slot could not be given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The slot belongs to another pool.
    #[error("slot {index} belongs to pool {owner}, not pool {pool}")]
    WrongPool {
        /// Slot index.
        index: u32,
        /// Its owner.
        owner: u32,
        /// The pool it was given to.
        pool: u32,
    },
}

/// `count` slots of `slot_size` bytes each, carved from one DMA buffer.
///
/// Owned by one queue (`Send`, not shared): `alloc` and `free` take `&mut self`.
#[derive(Debug)]
pub struct DmaPool {
    id: u32,
    buf: DmaBuffer,
    stride: usize,
    slot_size: usize,
    free: Vec<u32>,
    /// IOVA of each slot when the device sees it as one contiguous range.
    iovas: Vec<Option<Iova>>,
}

impl DmaPool {
    /// A pool of `count` slots of `slot_size` bytes, each aligned to `align` (a power of two;
    /// use 4096 for PRP list pages so each lies in one page).
    pub fn new(
        space: &Arc<DmaSpace>,
        slot_size: usize,
        count: usize,
        align: usize,
    ) -> Result<DmaPool, DmaError> {
        if slot_size == 0 || count == 0 || count > u32::MAX as usize {
            return Err(DmaError::InvalidPool("slot size and count must be non-zero"));
        }
        if !align.is_power_of_two() || align > crate::addr::HUGE_PAGE_SIZE {
            return Err(DmaError::InvalidPool("alignment must be a power of two up to 2 MiB"));
        }
        let stride = slot_size
            .checked_next_multiple_of(align)
            .ok_or(DmaError::InvalidPool("slot size overflows"))?;
        let total =
            stride.checked_mul(count).ok_or(DmaError::InvalidPool("pool size overflows"))?;
        let buf = space.alloc(total)?;
        let iovas = (0..count).map(|i| buf.contiguous_iova(i * stride, slot_size)).collect();
        Ok(DmaPool {
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            buf,
            stride,
            slot_size,
            // Popped from the end: hand out slot 0 first.
            free: (0..count as u32).rev().collect(),
            iovas,
        })
    }

    /// Take a free slot, or `None` when all are in use.
    #[inline]
    pub fn alloc(&mut self) -> Option<PoolSlot> {
        let index = self.free.pop()?;
        Some(PoolSlot { pool: self.id, index })
    }

    /// Give a slot back.
    #[inline]
    pub fn free(&mut self, slot: PoolSlot) -> Result<(), PoolError> {
        if slot.pool != self.id {
            return Err(PoolError::WrongPool {
                index: slot.index,
                owner: slot.pool,
                pool: self.id,
            });
        }
        // Cannot overflow: slots are not Clone, so at most `capacity` exist.
        self.free.push(slot.index);
        Ok(())
    }

    #[inline]
    fn check(&self, slot: &PoolSlot) -> usize {
        assert_eq!(slot.pool, self.id, "slot used with a pool it does not belong to");
        slot.index as usize
    }

    /// The slot's memory.
    ///
    /// # Panics
    /// If the slot belongs to another pool.
    #[inline]
    pub fn mem(&self, slot: &PoolSlot) -> DmaSlice<'_> {
        let i = self.check(slot);
        self.buf
            .mem()
            .sub(i * self.stride, self.slot_size)
            .expect("pool slots lie within the pool buffer")
    }

    /// The slot's IOVA if the device sees the slot as one contiguous range (always with an
    /// IOMMU or huge pages; with no-IOMMU on 4 KiB pages only for slots within one page).
    /// When `None`, translate [`ptr`](Self::ptr) through a [`crate::Translator`].
    ///
    /// # Panics
    /// If the slot belongs to another pool.
    #[inline]
    pub fn iova(&self, slot: &PoolSlot) -> Option<Iova> {
        self.iovas[self.check(slot)]
    }

    /// The slot's first byte (to translate it, or to build a view on it).
    ///
    /// # Panics
    /// If the slot belongs to another pool.
    #[inline]
    pub fn ptr(&self, slot: &PoolSlot) -> *mut u8 {
        self.mem(slot).as_ptr()
    }

    /// Bytes per slot.
    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.iovas.len()
    }

    /// Free slots now.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// The buffer the slots are carved from.
    pub fn buffer(&self) -> &DmaBuffer {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checking::CheckingMapper;
    use crate::device_memory::DeviceMemory;

    #[test]
    fn slots_are_disjoint_aligned_and_reusable() {
        let m = Arc::new(CheckingMapper::new());
        let space = DmaSpace::new(m.clone());
        let mut p = DmaPool::new(&space, 100, 5, 64).unwrap();
        assert_eq!(p.capacity(), 5);
        let slots: Vec<PoolSlot> = (0..5).map(|_| p.alloc().unwrap()).collect();
        assert!(p.alloc().is_none(), "exhausted");
        for (k, s) in slots.iter().enumerate() {
            let iova = p.iova(s).unwrap();
            assert_eq!(iova.0 % 64, 0);
            assert_eq!(p.ptr(s) as usize % 64, 0);
            p.mem(s).fill(0, 100, k as u8 + 1);
            // The device sees the slot at its IOVA.
            let mut b = [0u8; 100];
            m.read(iova, &mut b).unwrap();
            assert!(b.iter().all(|&x| x == k as u8 + 1));
        }
        // No slot overwrote another.
        for (k, s) in slots.iter().enumerate() {
            assert_eq!(p.mem(s).read_u8(99), k as u8 + 1);
        }
        // The pool is translatable like any DMA memory.
        let mut t = space.translator();
        assert!(t.is_mapped(p.ptr(&slots[4]), 100));
        for s in slots {
            p.free(s).unwrap();
        }
        assert_eq!(p.available(), 5);
    }

    #[test]
    fn foreign_slot_is_refused() {
        let space = DmaSpace::new(Arc::new(CheckingMapper::new()));
        let mut a = DmaPool::new(&space, 16, 2, 16).unwrap();
        let mut b = DmaPool::new(&space, 16, 2, 16).unwrap();
        let s = a.alloc().unwrap();
        assert!(matches!(b.free(s), Err(PoolError::WrongPool { .. })));
        assert_eq!(b.available(), 2);
    }

    #[test]
    fn bad_geometry_is_an_error() {
        let space = DmaSpace::new(Arc::new(CheckingMapper::new()));
        assert!(DmaPool::new(&space, 0, 1, 8).is_err());
        assert!(DmaPool::new(&space, 8, 0, 8).is_err());
        assert!(DmaPool::new(&space, 8, 1, 3).is_err());
        assert!(DmaPool::new(&space, usize::MAX, 2, 8).is_err());
    }
}
