//! The packed virtqueue (virtio 1.1+, 2.8): one ring of descriptors that the driver and the
//! device both write, plus two four-byte event suppression structures.
//!
//! The driver writes each chain at its next ring positions, the head's flags last (a release
//! store: the device may read the chain the moment the head says available), with the
//! AVAIL/USED bits of its wrap counter, which flips each time it passes the end of the ring (a
//! chain may straddle the end, its descriptors then carrying different bits). The device
//! overwrites the ring with used descriptors in the order it completes buffers, one per
//! buffer whatever its chain length, carrying the buffer ID; the driver polls the one position
//! after the last it read and, from the ID, skips the rest of that buffer's chain. So buffers
//! complete in any order, and the driver keeps, in host memory, the chain length of each ID
//! in flight and a stack of free IDs.
//!
//! Every descriptor of a chain carries its buffer ID: the specification reads it from the
//! last, QEMU up to 9.0 from the first.

use super::{Completion, Desc, Used};
use crate::spec::packed::{
    DESC_F_AVAIL, DESC_F_USED, DESC_LEN, EVENT_FLAGS, EVENT_F_DESC, EVENT_F_DISABLE,
    EVENT_F_ENABLE, EVENT_OFF_WRAP, EVENT_SIZE, EVENT_WRAP, MAX_SIZE,
};
use crate::spec::ring::{self, desc_words, DESC_F_NEXT, DESC_F_WRITE, DESC_SIZE};
use mfio_dma::{DmaBuffer, DmaSlice, DmaSpace};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

/// Where the event suppression structures lie in their buffer: the driver's at the start, the
/// device's a cache line further (each side writes only its own, so they do not share one).
const DRIVER_EVENT: usize = 0;
const DEVICE_EVENT: usize = 64;
const EVENTS_LEN: usize = 128;
const _: () = assert!(DEVICE_EVENT - DRIVER_EVENT >= 64 && DEVICE_EVENT + EVENT_SIZE <= EVENTS_LEN);

/// A packed virtqueue.
pub(crate) struct PackedQueue {
    size: u16,
    ring: DmaBuffer,
    events: DmaBuffer,
    /// Buffer IDs not in flight: a stack, so the most recently freed (cache-hot) go out first.
    /// Its capacity is the queue size, so pushing never allocates.
    free_ids: Vec<u16>,
    /// Ring descriptors of the buffer with each ID; 0 when the ID is not in flight.
    chain_len: Vec<u16>,
    num_free: u16,
    /// Next ring position to fill.
    next_avail: u16,
    /// AVAIL/USED bits that mark a descriptor available in the driver's current lap:
    /// AVAIL set and USED clear while the Driver Ring Wrap Counter is 1, the reverse when 0.
    avail_bits: u16,
    /// Next ring position the device writes a used descriptor to.
    next_used: u16,
    /// The Device Ring Wrap Counter expected at `next_used`.
    used_wrap: bool,
    /// Descriptors made available since the last publish.
    added: u16,
    event_idx: bool,
}

impl PackedQueue {
    /// A queue of `size` entries in fresh DMA memory of `space`. (The specification allows
    /// any size up to 32768; this driver asks for powers of two, as for split queues.)
    pub(crate) fn new(space: &Arc<DmaSpace>, size: u16, event_idx: bool) -> Result<Self, String> {
        if size == 0 || size > MAX_SIZE {
            return Err(format!("packed queue size {size} is not within 1..=32768"));
        }
        let n = usize::from(size);
        // Zeroed, as the specification has the ring: no flags, so nothing looks available.
        let ring = super::alloc_ring(space, n * DESC_SIZE, "descriptor ring")?;
        let events = super::alloc_ring(space, EVENTS_LEN, "event suppression structures")?;
        // Polled: no used-buffer notifications wanted, with or without EVENT_IDX (no MSI-X
        // vector is assigned either, so the device has nowhere to send one).
        events.mem().write_le16(DRIVER_EVENT + EVENT_FLAGS, EVENT_F_DISABLE);
        Ok(Self {
            size,
            ring,
            events,
            free_ids: (0..size).rev().collect(),
            chain_len: vec![0; n],
            num_free: size,
            next_avail: 0,
            avail_bits: DESC_F_AVAIL,
            next_used: 0,
            used_wrap: true,
            added: 0,
            event_idx,
        })
    }

    /// Entries.
    pub(crate) fn size(&self) -> u16 {
        self.size
    }

    /// Free descriptors.
    pub(crate) fn num_free(&self) -> u16 {
        self.num_free
    }

    /// IOVAs of the descriptor ring and of the driver and device event suppression structures.
    pub(crate) fn iovas(&self) -> (u64, u64, u64) {
        let ev = self.events.iova().get();
        (self.ring.iova().get(), ev + DRIVER_EVENT as u64, ev + DEVICE_EVENT as u64)
    }

    /// The Driver Ring Wrap Counter.
    fn avail_wrap(&self) -> bool {
        self.avail_bits & DESC_F_AVAIL != 0
    }

    /// The buffer ID the next chain gets (the most recently freed), if a descriptor is free.
    pub(crate) fn next_id(&self) -> Option<u16> {
        if self.num_free == 0 {
            return None;
        }
        self.free_ids.last().copied()
    }

    /// Writes a chain of `n` descriptors at the next ring positions and makes it available
    /// (head flags last); returns its buffer ID. `None` when fewer than `n` are free.
    #[inline(always)] // With `n` constant (one descriptor for an indirect table), the loop folds.
    pub(crate) fn add_chain(
        &mut self,
        n: u16,
        mut desc_of: impl FnMut(usize) -> Desc,
    ) -> Option<u16> {
        if n == 0 || n > self.num_free {
            return None;
        }
        // Each buffer takes a descriptor at least, so there are never fewer IDs than chains.
        let id = self.free_ids.pop().expect("a free ID for every free descriptor");
        let m = self.ring.mem();
        let head = usize::from(self.next_avail) * DESC_SIZE;
        let mut head_word = 0;
        for k in 0..n {
            let d = desc_of(usize::from(k));
            let at = usize::from(self.next_avail) * DESC_SIZE;
            let next = if k + 1 < n { DESC_F_NEXT } else { 0 };
            let [addr, word] = desc_words(d.addr, d.len, id, d.flags | next | self.avail_bits);
            if k == 0 {
                m.write_le64(at, addr);
                head_word = word;
            } else {
                m.write_le64s(at, [addr, word]);
            }
            self.next_avail += 1;
            if self.next_avail == self.size {
                self.next_avail = 0;
                self.avail_bits ^= DESC_F_AVAIL | DESC_F_USED;
            }
        }
        // Release: the rest of the chain (and the request it points to) is visible before the
        // head says available. Its length, ID and flags go in one store.
        m.store_release_u64(head + DESC_LEN, head_word.to_le());
        self.chain_len[usize::from(id)] = n;
        self.num_free -= n;
        self.added += n;
        Some(id)
    }

    /// Descriptors made available since the last [`publish`](Self::publish).
    pub(crate) fn unpublished(&self) -> u16 {
        self.added
    }

    /// Says whether the device must hear of the descriptors made available since the last
    /// call: per its event suppression structure, ENABLE / DISABLE, or with EVENT_IDX the DESC
    /// mode (notify when the descriptor at `off_wrap` was among them).
    pub(crate) fn publish(&mut self) -> bool {
        if self.added == 0 {
            return false;
        }
        let added = std::mem::take(&mut self.added);
        // The head flags must be visible before we read the device's suppression state, or we
        // could miss a notification it is about to ask for.
        fence(Ordering::SeqCst);
        // One read of both fields: a consistent snapshot.
        let ev = u32::from_le(self.events.mem().read_u32(DEVICE_EVENT + EVENT_OFF_WRAP));
        let (off_wrap, flags) = (ev as u16, (ev >> 16) as u16);
        match flags & 3 {
            EVENT_F_DISABLE => false,
            EVENT_F_DESC if self.event_idx && added < self.size => {
                // Positions as 16-bit indexes: `new` is where the driver is, `old` where it
                // was; an event in the lap before the driver's current one lies a ring earlier.
                let mut event = off_wrap & !EVENT_WRAP;
                if (off_wrap & EVENT_WRAP != 0) != self.avail_wrap() {
                    event = event.wrapping_sub(self.size);
                }
                let new = self.next_avail;
                ring::need_event(event, new, new.wrapping_sub(added))
            }
            // ENABLE; DESC without EVENT_IDX or a batch of a whole ring (notify to be safe);
            // the reserved value 3.
            _ => true,
        }
    }

    /// Used buffer notifications on (ENABLE) or off (DISABLE) in the driver event suppression
    /// structure.
    pub(crate) fn set_notify(&mut self, on: bool) {
        let flags = if on { EVENT_F_ENABLE } else { EVENT_F_DISABLE };
        self.events.mem().write_le16(DRIVER_EVENT + EVENT_FLAGS, flags);
        if on {
            fence(Ordering::SeqCst);
        }
    }

    /// Whether the device has used a buffer not yet taken.
    pub(crate) fn has_used(&self) -> bool {
        if self.num_free == self.size {
            return false;
        }
        let at = usize::from(self.next_used) * DESC_SIZE;
        let word = u64::from_le(self.ring.mem().load_acquire_u64(at + DESC_LEN));
        let flags = (word >> 48) as u16;
        let used = flags & DESC_F_USED != 0;
        used == self.used_wrap && (flags & DESC_F_AVAIL != 0) == used
    }

    /// The next used buffer, its descriptors and ID freed; `None` when the device has used
    /// nothing more.
    #[inline(always)]
    pub(crate) fn next_used(&mut self) -> Option<Completion> {
        if self.num_free == self.size {
            return None; // nothing in flight: whatever the ring holds is old
        }
        let m = self.ring.mem();
        let at = usize::from(self.next_used) * DESC_SIZE;
        // Acquire: the length, ID and flags in one load (the device wrote the flags last, so
        // if they are new, so are the others); nothing after it is read before it.
        let word = u64::from_le(m.load_acquire_u64(at + DESC_LEN));
        let flags = (word >> 48) as u16;
        let used = flags & DESC_F_USED != 0;
        // Used means both bits equal the wrap counter: a descriptor of ours from the lap
        // before can have USED set too (with AVAIL clear).
        if used != self.used_wrap || (flags & DESC_F_AVAIL != 0) != used {
            return None;
        }
        let (id, len) = ((word >> 32) as u16, word as u32);
        let n = self.chain_len.get(usize::from(id)).copied().unwrap_or(0);
        if n == 0 {
            return Some(Completion::Broken(
                "a used descriptor names a buffer ID that is not in flight",
            ));
        }
        // The device wrote one used descriptor for the whole chain: skip the rest of it.
        self.next_used += n;
        if self.next_used >= self.size {
            self.next_used -= self.size;
            self.used_wrap = !self.used_wrap;
        }
        self.abandon(id);
        Some(Completion::Used(Used { id: u32::from(id), len }))
    }

    /// Frees the descriptors and ID of the buffer `id` in flight (used, or the device reset).
    ///
    /// # Panics
    /// If `id` is not in flight.
    pub(crate) fn abandon(&mut self, id: u16) {
        let n = std::mem::take(&mut self.chain_len[usize::from(id)]);
        assert!(n != 0, "freeing buffer ID {id}, which is not in flight");
        self.num_free += n;
        self.free_ids.push(id);
    }
}

/// Writes an indirect table of `n` packed descriptors: consecutive, WRITE the only flag, the
/// buffer ID reserved (0).
pub(crate) fn write_table(table: &DmaSlice<'_>, n: usize, mut desc_of: impl FnMut(usize) -> Desc) {
    for k in 0..n {
        let d = desc_of(k);
        let at = k * DESC_SIZE;
        table.write_le64s(at, desc_words(d.addr, d.len, 0, d.flags & DESC_F_WRITE));
    }
}

#[cfg(test)]
#[path = "packed_tests.rs"]
mod tests;
