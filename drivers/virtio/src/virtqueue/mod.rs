//! Virtqueues in DMA memory, in both layouts of the specification: split (virtio 1.x, 2.7) and
//! packed (virtio 1.1+, 2.8). [`Virtqueue`] is the one face `BlkQueue` sees: it adds
//! descriptor chains, publishes them with the notification decision, and hands back used
//! buffers by ID, whatever the layout underneath. A match per call is all the dispatch costs;
//! neither layout locks, allocates or makes a system call after it is set up.

mod packed;
mod split;

pub(crate) use packed::PackedQueue;
pub(crate) use split::SplitQueue;

use mfio_dma::{DmaBuffer, DmaSlice, DmaSpace};
use std::sync::Arc;

/// The virtqueue layout: split (virtio 1.0) or packed (VIRTIO_F_RING_PACKED, virtio 1.1+).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RingLayout {
    /// Descriptor table, available ring and used ring.
    Split,
    /// One descriptor ring both sides write, with wrap counters.
    Packed,
}

/// One descriptor as the driver writes it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Desc {
    pub addr: u64,
    pub len: u32,
    /// `DESC_F_WRITE` / `DESC_F_INDIRECT`; `DESC_F_NEXT` (and, packed, the AVAIL/USED bits)
    /// are added by the queue.
    pub flags: u16,
}

/// A used buffer: the ID it was made available with, and the bytes the device wrote into it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Used {
    pub id: u32,
    pub len: u32,
}

/// What [`Virtqueue::next_used`] found.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Completion {
    /// A buffer in flight was used; its descriptors and ID are free again.
    Used(Used),
    /// A used entry naming no buffer in flight, stepped over (split only: the used index says
    /// where the next entry is).
    Stray(u32),
    /// The device broke the ring's rules and the queue cannot go on (the device must be
    /// reset): a used index past the queue size, or a packed used descriptor naming an ID not
    /// in flight (its chain length, hence where the next one lies, is unknown).
    Broken(&'static str),
}

/// A virtqueue of either layout.
pub(crate) enum Virtqueue {
    Split(SplitQueue),
    Packed(PackedQueue),
}

/// `$q.$method($args)` on whichever layout `$q` has.
macro_rules! either {
    ($q:expr, $method:ident($($arg:expr),*)) => {
        match $q {
            Virtqueue::Split(s) => s.$method($($arg),*),
            Virtqueue::Packed(p) => p.$method($($arg),*),
        }
    };
}

impl Virtqueue {
    /// A queue of `size` entries (a power of two) in fresh DMA memory of `space`.
    pub(crate) fn new(
        space: &Arc<DmaSpace>,
        size: u16,
        layout: RingLayout,
        event_idx: bool,
    ) -> Result<Self, String> {
        Ok(match layout {
            RingLayout::Split => Virtqueue::Split(SplitQueue::new(space, size, event_idx)?),
            RingLayout::Packed => Virtqueue::Packed(PackedQueue::new(space, size, event_idx)?),
        })
    }

    /// Entries (descriptors; also the number of buffer IDs).
    pub(crate) fn size(&self) -> u16 {
        either!(self, size())
    }

    /// Free descriptors.
    pub(crate) fn num_free(&self) -> u16 {
        either!(self, num_free())
    }

    /// Descriptors in flight (made available, not yet used).
    pub(crate) fn in_flight(&self) -> u16 {
        self.size() - self.num_free()
    }

    /// IOVAs of the Descriptor Area, the Driver Area and the Device Area (split: descriptor
    /// table, available ring, used ring; packed: descriptor ring, driver and device event
    /// suppression).
    pub(crate) fn iovas(&self) -> (u64, u64, u64) {
        either!(self, iovas())
    }

    /// Writes a chain of `n` descriptors (`desc_of(k)` gives the k-th) and makes it available
    /// to the device (split: not yet published); returns its buffer ID, `None` when fewer than
    /// `n` descriptors are free.
    #[inline(always)] // With `n` constant (one descriptor for an indirect table), the loop folds.
    pub(crate) fn add_chain(&mut self, n: u16, desc_of: impl FnMut(usize) -> Desc) -> Option<u16> {
        either!(self, add_chain(n, desc_of))
    }

    /// The buffer ID the next [`add_chain`](Self::add_chain) returns, if a descriptor is free
    /// (a request's control slot is its ID's, written before the chain is added).
    pub(crate) fn next_id(&self) -> Option<u16> {
        either!(self, next_id())
    }

    /// Writes an indirect table of `n` descriptors into `table` in this layout's format (split
    /// links entries with NEXT; packed entries follow each other and carry WRITE only).
    pub(crate) fn write_table(
        &self,
        table: &DmaSlice<'_>,
        n: usize,
        desc_of: impl FnMut(usize) -> Desc,
    ) {
        match self {
            Virtqueue::Split(_) => split::write_table(table, n, desc_of),
            Virtqueue::Packed(_) => packed::write_table(table, n, desc_of),
        }
    }

    /// Descriptors (packed) or chains (split) added since the last [`publish`](Self::publish).
    pub(crate) fn unpublished(&self) -> u16 {
        either!(self, unpublished())
    }

    /// Shows the device what was added since the last call and says whether it must be
    /// notified (per its event suppression: EVENT_IDX when negotiated).
    pub(crate) fn publish(&mut self) -> bool {
        either!(self, publish())
    }

    /// The next used buffer, if the device has used one.
    #[inline(always)] // The completion in registers (store forwarding: see mfio's PacketView).
    pub(crate) fn next_used(&mut self) -> Option<Completion> {
        either!(self, next_used())
    }

    /// Turns used buffer notifications on (the driver is about to sleep) or off (it polls),
    /// in this layout's event suppression; turning them on ends with a full fence, so a look at
    /// the used ring after it sees every buffer the device used before it read the change.
    pub(crate) fn set_notify(&mut self, on: bool) {
        either!(self, set_notify(on))
    }

    /// Whether the device has used a buffer not yet taken by [`next_used`](Self::next_used).
    pub(crate) fn has_used(&self) -> bool {
        either!(self, has_used())
    }

    /// Forgets the buffer `id` in flight, freeing its descriptors and ID: only after the
    /// device was reset (it will never use it), as the ring is not consistent afterwards.
    pub(crate) fn abandon(&mut self, id: u16) {
        either!(self, abandon(id))
    }
}

/// Zeroed, IOVA-contiguous DMA memory for a ring structure.
fn alloc_ring(space: &Arc<DmaSpace>, len: usize, what: &str) -> Result<DmaBuffer, String> {
    let b = space.alloc(len).map_err(|e| format!("{what}: {e}"))?;
    if b.contiguous_iova(0, len).is_none() {
        return Err(format!(
            "{what} ({len} bytes) is not IOVA-contiguous: use huge pages or a smaller queue"
        ));
    }
    b.mem().zero();
    Ok(b)
}
