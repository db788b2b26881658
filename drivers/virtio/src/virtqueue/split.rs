//! The split virtqueue (virtio 1.x, 2.7) in DMA memory: the descriptor table with a free list
//! kept in host memory (never read back from memory the device can write), the available ring
//! published once per batch with EVENT_IDX notification suppression, and the used ring,
//! polled.
//!
//! Indexes are free-running 16-bit counters, as the specification has them; ring slots are
//! the index modulo the (power of two) queue size.

use super::{Completion, Desc, Used};
use crate::spec::ring::{self, desc_words, DESC_F_NEXT, DESC_SIZE};
use mfio_dma::{DmaBuffer, DmaSlice, DmaSpace};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

/// A split virtqueue.
pub(crate) struct SplitQueue {
    size: u16,
    /// `size - 1`, for ring slots, as a word of its own: the compiler read `size - 1` as four
    /// bytes over `size` and the u16 after it, just stored by `add_chain`, which the CPU cannot
    /// forward (a store-forwarding stall in `send_io` with a split ring: docs/benchmarks.md).
    mask: usize,
    desc: DmaBuffer,
    avail: DmaBuffer,
    used: DmaBuffer,
    /// Free-list and chain links, by descriptor id (host memory, never trusted to the device).
    next: Vec<u16>,
    /// Last descriptor of the chain headed by each id (to free a chain in O(1)).
    tail: Vec<u16>,
    /// Descriptors in the chain headed by each id; 0 when the id heads no chain in flight.
    chain_len: Vec<u16>,
    free_head: u16,
    num_free: u16,
    /// Next available index to fill.
    avail_idx: u16,
    /// Available index the device was last shown.
    published: u16,
    /// Next used index to read.
    last_used: u16,
    /// The device's used index as last read (entries up to it may be read without reading
    /// the index again).
    used_seen: u16,
    event_idx: bool,
}

impl SplitQueue {
    /// A queue of `size` entries (a power of two) in fresh DMA memory of `space`.
    pub(crate) fn new(space: &Arc<DmaSpace>, size: u16, event_idx: bool) -> Result<Self, String> {
        if !size.is_power_of_two() || size > ring::MAX_SIZE {
            return Err(format!("queue size {size} is not a power of two up to 32768"));
        }
        let n = usize::from(size);
        let alloc = |len: usize, what: &str| super::alloc_ring(space, len, what);
        let desc = alloc(n * DESC_SIZE, "descriptor table")?;
        let avail = alloc(ring::avail_size(size), "available ring")?;
        let used = alloc(ring::used_size(size), "used ring")?;
        if !event_idx {
            // Polled: no interrupts wanted. (With EVENT_IDX the flags must stay 0; no MSI-X
            // vector is assigned, so the device has nowhere to interrupt anyway.)
            avail.mem().write_le16(0, ring::AVAIL_F_NO_INTERRUPT);
        }
        Ok(Self {
            size,
            mask: usize::from(size) - 1,
            desc,
            avail,
            used,
            next: (1..=size).collect(),
            tail: vec![0; n],
            chain_len: vec![0; n],
            free_head: 0,
            num_free: size,
            avail_idx: 0,
            published: 0,
            last_used: 0,
            used_seen: 0,
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

    /// The ID the next chain gets (the free list's head), if a descriptor is free.
    pub(crate) fn next_id(&self) -> Option<u16> {
        (self.num_free > 0).then_some(self.free_head)
    }

    /// IOVAs of the descriptor table, available ring and used ring.
    pub(crate) fn iovas(&self) -> (u64, u64, u64) {
        (self.desc.iova().get(), self.avail.iova().get(), self.used.iova().get())
    }

    /// Writes a chain of `n` descriptors (`desc_of(k)` gives the k-th) and makes its head
    /// available (not yet published). `None` when fewer than `n` descriptors are free.
    #[inline(always)] // With `n` constant (one descriptor for an indirect table), the loop folds.
    pub(crate) fn add_chain(
        &mut self,
        n: u16,
        mut desc_of: impl FnMut(usize) -> Desc,
    ) -> Option<u16> {
        if n == 0 || n > self.num_free {
            return None;
        }
        let head = self.free_head;
        let table = self.desc.mem();
        let mut id = head;
        for k in 0..n {
            let d = desc_of(usize::from(k));
            let next = self.next[usize::from(id)];
            let last = k + 1 == n;
            let at = usize::from(id) * DESC_SIZE;
            let (flags, link) = if last { (d.flags, 0) } else { (d.flags | DESC_F_NEXT, next) };
            table.write_le64s(at, desc_words(d.addr, d.len, flags, link));
            if last {
                self.tail[usize::from(head)] = id;
                self.free_head = next;
            }
            id = next;
        }
        self.num_free -= n;
        self.chain_len[usize::from(head)] = n;
        let slot = usize::from(self.avail_idx) & self.mask;
        self.avail.mem().write_le16(4 + 2 * slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Some(head)
    }

    /// Whether `id` heads a chain in flight.
    fn is_in_flight(&self, id: u32) -> bool {
        id < u32::from(self.size) && self.chain_len[id as usize] != 0
    }

    /// Gives the chain headed by `head` back to the free list: after it was used, or, for
    /// every chain at once, after the device was reset.
    ///
    /// # Panics
    /// If `head` heads no chain in flight.
    pub(crate) fn abandon(&mut self, head: u16) {
        let h = usize::from(head);
        let n = self.chain_len[h];
        assert!(n != 0, "freeing descriptor {head}, which heads no chain in flight");
        self.next[usize::from(self.tail[h])] = self.free_head;
        self.free_head = head;
        self.num_free += n;
        self.chain_len[h] = 0;
    }

    /// Chains added since the last [`publish`](Self::publish).
    pub(crate) fn unpublished(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.published)
    }

    /// Shows the device every chain added since the last call (one store of the available
    /// index) and says whether it must be notified: per EVENT_IDX's `avail_event` when
    /// negotiated, otherwise unless the device set `USED_F_NO_NOTIFY`.
    pub(crate) fn publish(&mut self) -> bool {
        if self.avail_idx == self.published {
            return false;
        }
        let old = self.published;
        // Release: the descriptors and ring entries are visible before the index.
        self.avail.mem().store_release_u16(2, self.avail_idx.to_le());
        self.published = self.avail_idx;
        // The index store must be visible before we read the device's suppression state,
        // or we could miss a notification the device is about to ask for.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let avail_event = self.used.mem().read_le16(ring::used_size(self.size) - 2);
            ring::need_event(avail_event, self.avail_idx, old)
        } else {
            self.used.mem().read_le16(0) & ring::USED_F_NO_NOTIFY == 0
        }
    }

    /// Used buffer notifications on or off: `used_event` (EVENT_IDX: on asks to hear of the
    /// next used entry, off names the one just behind, which the index will not pass again for
    /// a lap of 65536) or the NO_INTERRUPT flag.
    pub(crate) fn set_notify(&mut self, on: bool) {
        let m = self.avail.mem();
        if self.event_idx {
            let event = if on { self.last_used } else { self.last_used.wrapping_sub(1) };
            m.write_le16(ring::avail_size(self.size) - 2, event);
        } else {
            m.write_le16(0, if on { 0 } else { ring::AVAIL_F_NO_INTERRUPT });
        }
        if on {
            fence(Ordering::SeqCst);
        }
    }

    /// Whether the device has used an entry not yet taken.
    pub(crate) fn has_used(&self) -> bool {
        self.used_seen != self.last_used
            || u16::from_le(self.used.mem().load_acquire_u16(2)) != self.last_used
    }

    /// The next used entry, its chain freed; `None` when the device has used nothing more.
    /// The used index is read (acquire) only when the entries seen at the last read are all
    /// consumed, so a batch costs one read of it plus one to find the ring empty.
    #[inline(always)]
    pub(crate) fn next_used(&mut self) -> Option<Completion> {
        if self.used_seen == self.last_used {
            let idx = u16::from_le(self.used.mem().load_acquire_u16(2));
            if idx == self.last_used {
                return None;
            }
            if idx.wrapping_sub(self.last_used) > self.size {
                return Some(Completion::Broken("the used index jumped past the queue size"));
            }
            self.used_seen = idx;
        }
        let slot = usize::from(self.last_used) & self.mask;
        let at = 4 + 8 * slot;
        let m = self.used.mem();
        let u = Used { id: m.read_le32(at), len: m.read_le32(at + 4) };
        self.last_used = self.last_used.wrapping_add(1);
        if !self.is_in_flight(u.id) {
            // The index says where the next entry is, so a bogus one can be stepped over.
            return Some(Completion::Stray(u.id));
        }
        self.abandon(u.id as u16);
        Some(Completion::Used(u))
    }
}

/// Writes an indirect table of `n` split descriptors (`desc_of(k)` gives the k-th) linked by
/// NEXT in table order.
pub(crate) fn write_table(table: &DmaSlice<'_>, n: usize, mut desc_of: impl FnMut(usize) -> Desc) {
    for k in 0..n {
        let d = desc_of(k);
        let at = k * DESC_SIZE;
        let last = k + 1 == n;
        let (flags, link) = if last { (d.flags, 0) } else { (d.flags | DESC_F_NEXT, k as u16 + 1) };
        table.write_le64s(at, desc_words(d.addr, d.len, flags, link));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ring::DESC_F_WRITE;
    use mfio_dma::CheckingMapper;

    fn queue(size: u16, event_idx: bool) -> SplitQueue {
        let space = DmaSpace::new(Arc::new(CheckingMapper::new()));
        SplitQueue::new(&space, size, event_idx).unwrap()
    }

    /// Plays the device: takes every available chain, checks its links, marks it used.
    fn device_consume(q: &SplitQueue, dev_avail: &mut u16, dev_used: &mut u16) -> Vec<u16> {
        let idx = u16::from_le(q.avail.mem().load_acquire_u16(2));
        let mut heads = vec![];
        while *dev_avail != idx {
            let head = q.avail.mem().read_le16(4 + 2 * usize::from(*dev_avail & (q.size - 1)));
            // Walk the chain: bounded by the size.
            let mut id = head;
            for _ in 0..q.size {
                let flags = q.desc.mem().read_le16(usize::from(id) * 16 + 12);
                if flags & DESC_F_NEXT == 0 {
                    break;
                }
                id = q.desc.mem().read_le16(usize::from(id) * 16 + 14);
            }
            let slot = 4 + 8 * usize::from(*dev_used & (q.size - 1));
            q.used.mem().write_le32(slot, u32::from(head));
            q.used.mem().write_le32(slot + 4, 1);
            *dev_used = dev_used.wrapping_add(1);
            *dev_avail = dev_avail.wrapping_add(1);
            heads.push(head);
        }
        q.used.mem().store_release_u16(2, dev_used.to_le());
        heads
    }

    fn d(k: usize) -> Desc {
        Desc { addr: 0x1000 * k as u64, len: 512, flags: if k > 0 { DESC_F_WRITE } else { 0 } }
    }

    #[test]
    fn free_list_gives_out_every_descriptor_once_and_takes_them_back() {
        let mut q = queue(8, false);
        let a = q.add_chain(3, d).unwrap();
        let b = q.add_chain(5, d).unwrap();
        assert_eq!(q.num_free(), 0);
        assert!(q.add_chain(1, d).is_none(), "no descriptor left");
        // The two chains use disjoint descriptors, linked in order.
        let mut seen = [false; 8];
        for head in [a, b] {
            let mut id = head;
            loop {
                assert!(!seen[usize::from(id)], "descriptor {id} in two chains");
                seen[usize::from(id)] = true;
                let flags = q.desc.mem().read_le16(usize::from(id) * 16 + 12);
                if flags & DESC_F_NEXT == 0 {
                    break;
                }
                id = q.desc.mem().read_le16(usize::from(id) * 16 + 14);
            }
        }
        assert!(seen.iter().all(|&s| s));
        q.abandon(a);
        assert_eq!(q.num_free(), 3);
        let c = q.add_chain(2, d).unwrap();
        assert_eq!(q.num_free(), 1);
        q.abandon(b);
        q.abandon(c);
        assert_eq!(q.num_free(), 8);
        assert!(!q.is_in_flight(u32::from(c)));
        assert!(!q.is_in_flight(99), "out of range ids are not in flight");
    }

    #[test]
    #[should_panic(expected = "heads no chain")]
    fn double_free_is_caught() {
        let mut q = queue(4, false);
        let a = q.add_chain(1, d).unwrap();
        q.abandon(a);
        q.abandon(a);
    }

    #[test]
    fn indexes_wrap_past_65535() {
        let mut q = queue(16, false);
        let (mut da, mut du) = (0u16, 0u16);
        let mut completed = 0u32;
        // 70_000 requests in batches of 1..=5: the 16-bit indexes wrap.
        let mut i = 0u32;
        while completed < 70_000 {
            let batch = 1 + (i % 5) as u16;
            i += 1;
            let mut heads = vec![];
            for _ in 0..batch {
                heads.push(q.add_chain(2, d).unwrap());
            }
            q.publish();
            let got = device_consume(&q, &mut da, &mut du);
            assert_eq!(got, heads, "the device sees the heads in order");
            for h in heads {
                let Some(Completion::Used(u)) = q.next_used() else { panic!("no used entry") };
                assert_eq!(u.id, u32::from(h));
                assert!(!q.is_in_flight(u.id), "freed as it was popped");
                completed += 1;
            }
            assert!(q.next_used().is_none());
            assert_eq!(q.num_free(), 16);
        }
        assert!(q.avail_idx < 10_000, "the available index wrapped (now {})", q.avail_idx);
        assert_eq!(q.avail_idx, q.last_used);
    }

    #[test]
    fn notification_rules() {
        // Without EVENT_IDX: notify unless the device says NO_NOTIFY.
        let mut q = queue(8, false);
        assert!(!q.publish(), "nothing new: no notify");
        q.add_chain(1, d).unwrap();
        assert!(q.publish());
        q.used.mem().write_le16(0, ring::USED_F_NO_NOTIFY);
        q.add_chain(1, d).unwrap();
        assert!(!q.publish(), "the device asked for no notifications");
        assert_eq!(q.avail.mem().read_le16(0), ring::AVAIL_F_NO_INTERRUPT);

        // With EVENT_IDX: notify only when the new index passes avail_event.
        let mut q = queue(8, true);
        assert_eq!(q.avail.mem().read_le16(0), 0, "flags stay 0 with EVENT_IDX");
        let ev = ring::used_size(8) - 2;
        q.used.mem().write_le16(ev, 0); // the device wants to hear of index 0 being passed
        q.add_chain(1, d).unwrap();
        q.add_chain(1, d).unwrap();
        assert_eq!(q.unpublished(), 2);
        assert!(q.publish(), "0 -> 2 passes 0");
        q.add_chain(1, d).unwrap();
        assert!(!q.publish(), "2 -> 3: the device still wants 0 only (it is busy)");
        q.used.mem().write_le16(ev, 3);
        q.add_chain(1, d).unwrap();
        assert!(q.publish(), "3 -> 4 passes 3");
    }
}
