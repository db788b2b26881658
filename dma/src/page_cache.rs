//! A direct-mapped cache by page, for the lookups on the hot path (the driver's translation of
//! buffers, a device model's IOVA checks).
//!
//! The same few pages (rings, a queue's data buffers) are looked up over and over; a hit is one
//! load of the entry itself, which holds what the lookup needs (a copy of the mapping or chunk),
//! instead of a binary search, or of an index to load the entry through. The cache holds hints
//! only: the caller checks that the entry really holds the address (an empty slot holds
//! nothing), and empties the cache whenever its table changes.

use crate::addr::PAGE_SIZE;

/// Slots: a power of two, more than the pages a queue touches over and over (a queue's worth
/// of data buffers and their guard pages, the rings).
pub(crate) const SLOTS: usize = 512;

/// Page number (of an address, virtual or IOVA) -> the entry that last held it, or `empty`.
#[derive(Debug, Clone)]
pub(crate) struct PageCache<T: Copy> {
    slots: Box<[T; SLOTS]>,
    empty: T,
}

impl<T: Copy> PageCache<T> {
    /// An empty cache; `empty` is what an empty slot holds (an entry no address matches).
    pub(crate) fn new(empty: T) -> Self {
        Self { slots: Box::new([empty; SLOTS]), empty }
    }

    #[inline(always)]
    fn slot(addr: u64) -> usize {
        (addr / PAGE_SIZE as u64) as usize % SLOTS
    }

    /// The entry last stored for `addr`'s page (a hint: check it), or the empty one.
    #[inline(always)]
    pub(crate) fn get(&self, addr: u64) -> T {
        self.slots[Self::slot(addr)]
    }

    /// Remembers that `entry` holds `addr`.
    #[inline]
    pub(crate) fn set(&mut self, addr: u64, entry: T) {
        self.slots[Self::slot(addr)] = entry;
    }

    /// Forgets everything (the table changed).
    pub(crate) fn clear(&mut self) {
        self.slots.fill(self.empty);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_per_page_and_forgets_on_clear() {
        let mut c = PageCache::new(0u32);
        assert_eq!(c.get(0x5000), 0);
        c.set(0x5010, 7);
        assert_eq!(c.get(0x5ff8), 7, "same page");
        assert_eq!(c.get(0x6000), 0, "next page");
        assert_eq!(c.get(0x5000 + (SLOTS * PAGE_SIZE) as u64), 7, "an alias: a hint only");
        c.clear();
        assert_eq!(c.get(0x5010), 0);
    }
}
