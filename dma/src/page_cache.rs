//! A direct-mapped cache from page numbers to indices in a sorted table of mappings, for the
//! lookups on the hot path (the driver's translation of buffers, a device model's IOVA checks).
//!
//! The same few pages (rings, a queue's data buffers) are looked up over and over; a hit is one
//! load instead of a binary search. The cache holds hints only: the caller checks that the
//! entry it names really holds the address, and empties the cache whenever its table changes.

use crate::addr::PAGE_SIZE;

/// Slots: a power of two, more than the pages a queue touches over and over (a queue's worth
/// of data buffers and their guard pages, the rings).
const SLOTS: usize = 512;
/// An empty slot.
const EMPTY: u32 = u32::MAX;

/// Page number (of an address, virtual or IOVA) -> index of the table entry that last held it.
#[derive(Debug, Clone)]
pub(crate) struct PageCache(Box<[u32; SLOTS]>);

impl PageCache {
    /// An empty cache.
    pub(crate) fn new() -> PageCache {
        PageCache(Box::new([EMPTY; SLOTS]))
    }

    #[inline]
    fn slot(addr: u64) -> usize {
        (addr / PAGE_SIZE as u64) as usize % SLOTS
    }

    /// The index last stored for `addr`'s page, if any (a hint: check it).
    #[inline]
    pub(crate) fn get(&self, addr: u64) -> Option<usize> {
        let i = self.0[Self::slot(addr)];
        (i != EMPTY).then_some(i as usize)
    }

    /// Remembers that entry `index` holds `addr`.
    #[inline]
    pub(crate) fn set(&mut self, addr: u64, index: usize) {
        self.0[Self::slot(addr)] = u32::try_from(index).unwrap_or(EMPTY);
    }

    /// Forgets everything (the table changed).
    pub(crate) fn clear(&mut self) {
        self.0.fill(EMPTY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_per_page_and_forgets_on_clear() {
        let mut c = PageCache::new();
        assert_eq!(c.get(0x5000), None);
        c.set(0x5010, 7);
        assert_eq!(c.get(0x5ff8), Some(7), "same page");
        assert_eq!(c.get(0x6000), None, "next page");
        assert_eq!(c.get(0x5000 + (SLOTS * PAGE_SIZE) as u64), Some(7), "an alias: a hint only");
        c.clear();
        assert_eq!(c.get(0x5010), None);
    }
}
