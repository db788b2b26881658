//! Physical Region Page entries: how a command tells the controller where its data is.
//!
//! PRP1 points at the first byte (any dword-aligned offset in a page). If the data ends in the
//! next page, PRP2 is that page; if it spans more, PRP2 points at a list of the remaining
//! pages, whose last entry chains to the next list page when one page of entries is not
//! enough. Every page after the first must start at a page boundary and every page but the
//! last must be whole, so memory the IOMMU maps as scattered pieces works only when the pieces
//! meet at page boundaries; otherwise the caller bounces.

use crate::spec::PAGE_SIZE;
use mfio_dma::{DmaSlice, IovaSegment};

/// Entries per list page (8 bytes each).
const ENTRIES_PER_PAGE: usize = PAGE_SIZE / 8;

/// Why a range cannot be described by PRPs (the caller bounces it instead).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PrpError {
    /// Part of the range is not DMA-mapped.
    Unmapped,
    /// The memory breaks the PRP rules (an odd start, or pieces not meeting at page boundaries).
    Misaligned,
    /// More pages than the command's list pages can hold.
    TooLong,
}

/// The list pages of one command slot: consecutive pages of `mem`, each with its own IOVA
/// (they need not be contiguous to the device: pages chain by address).
pub struct PrpList<'a> {
    /// The pages' memory (`page_iovas.len()` pages).
    pub mem: DmaSlice<'a>,
    /// The IOVA of each page.
    pub page_iovas: &'a [u64],
}

impl PrpList<'_> {
    /// The most entries (data pages after the first) these pages can hold.
    pub fn capacity(&self) -> usize {
        chained_capacity(self.page_iovas.len(), ENTRIES_PER_PAGE)
    }
}

/// Number of list pages needed to hold `entries` list entries.
pub fn list_pages_for(entries: usize) -> usize {
    chained_pages(entries, ENTRIES_PER_PAGE)
}

/// Pages of `per_page` entries needed for `entries`, when every page but the last gives its
/// final slot to the pointer to the next page (PRP lists and SGL segments alike).
pub(crate) fn chained_pages(entries: usize, per_page: usize) -> usize {
    if entries <= per_page {
        1
    } else {
        (entries - 1).div_ceil(per_page - 1)
    }
}

/// The most entries `pages` such chained pages hold.
pub(crate) fn chained_capacity(pages: usize, per_page: usize) -> usize {
    pages * (per_page - 1) + 1
}

/// (PRP1, PRP2) for `len` bytes at one contiguous IOVA when they need no list: they span at
/// most two pages. `None` if they need a list, or if `iova` is not dword aligned or `len` is 0
/// (what [`build`] rejects). The common case, and the hot path's fast path.
#[inline]
pub fn short(iova: u64, len: usize) -> Option<(u64, u64)> {
    let page = PAGE_SIZE as u64;
    let end_in_first = (iova % page) as usize + len;
    if iova & 3 != 0 || len == 0 || end_in_first > 2 * PAGE_SIZE {
        return None;
    }
    let prp2 = if end_in_first <= PAGE_SIZE { 0 } else { (iova & !(page - 1)) + page };
    Some((iova, prp2))
}

/// Builds (PRP1, PRP2) for `len` bytes whose memory is `segments`, in order.
///
/// `segments` is what DMA translation gives: IOVA-contiguous pieces, or an error for memory
/// that is not mapped. Entries past the second are written into `list`.
pub fn build<I, E>(segments: I, len: usize, list: &PrpList<'_>) -> Result<(u64, u64), PrpError>
where
    I: IntoIterator<Item = Result<IovaSegment, E>>,
{
    let page = PAGE_SIZE as u64;
    let mut segments = segments.into_iter();
    let first = match segments.next() {
        Some(Ok(s)) => s,
        _ => return Err(PrpError::Unmapped),
    };
    let prp1 = first.iova.get();
    if prp1 & 3 != 0 || len == 0 {
        return Err(PrpError::Misaligned);
    }
    if first.len >= len {
        if let Some(prps) = short(prp1, len) {
            return Ok(prps);
        }
    }
    let total_entries = ((prp1 % page) as usize + len).div_ceil(PAGE_SIZE);
    let list_entries = total_entries - 1;
    if list_entries > list.capacity() {
        return Err(PrpError::TooLong);
    }
    let pages = list_pages_for(list_entries);
    let mut writer = ListWriter { list, pages, next: 0, second: 0 };

    // The first segment: its first page is PRP1, its further pages go to the list.
    let mut done = first.len.min(len);
    let mut at = (prp1 & !(page - 1)) + page;
    while at < prp1 + done as u64 {
        writer.push(at);
        at += page;
    }
    let mut end = prp1 + done as u64;
    while done < len {
        if end % page != 0 {
            return Err(PrpError::Misaligned);
        }
        let s = match segments.next() {
            Some(Ok(s)) => s,
            _ => return Err(PrpError::Unmapped),
        };
        let start = s.iova.get();
        if start % page != 0 {
            return Err(PrpError::Misaligned);
        }
        let take = s.len.min(len - done);
        let mut p = start;
        while p < start + take as u64 {
            writer.push(p);
            p += page;
        }
        done += take;
        end = start + take as u64;
    }
    debug_assert_eq!(writer.next, list_entries);
    let prp2 = match list_entries {
        0 => 0,
        1 => writer.second,
        _ => {
            // Chain the list pages.
            for p in 0..pages - 1 {
                let off = p * PAGE_SIZE + (ENTRIES_PER_PAGE - 1) * 8;
                list.mem.write_le64(off, list.page_iovas[p + 1]);
            }
            list.page_iovas[0]
        }
    };
    Ok((prp1, prp2))
}

/// Places list entries, leaving each non-final page's last slot for the chain pointer.
struct ListWriter<'l, 'a> {
    list: &'l PrpList<'a>,
    pages: usize,
    next: usize,
    second: u64,
}

impl ListWriter<'_, '_> {
    fn push(&mut self, addr: u64) {
        let j = self.next;
        if j == 0 {
            self.second = addr;
        }
        let p = (j / (ENTRIES_PER_PAGE - 1)).min(self.pages - 1);
        let slot = j - p * (ENTRIES_PER_PAGE - 1);
        self.list.mem.write_le64(p * PAGE_SIZE + slot * 8, addr);
        self.next += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mfio_dma::{CheckingMapper, DmaSpace, Iova};
    use proptest::prelude::*;
    use std::sync::Arc;

    /// Walks PRP1/PRP2 as a controller does and returns the (address, length) runs.
    fn walk(prp1: u64, prp2: u64, len: usize, list: &PrpList<'_>) -> Vec<(u64, usize)> {
        let page = PAGE_SIZE as u64;
        let mut out = vec![(prp1, (page - prp1 % page).min(len as u64) as usize)];
        let mut left = len - out[0].1;
        if left == 0 {
            assert_eq!(prp2, 0, "PRP2 must be unused when PRP1 covers the transfer");
            return out;
        }
        if left <= PAGE_SIZE {
            assert_eq!(prp2 % page, 0, "PRP2 as a data pointer must be page aligned");
            out.push((prp2, left));
            return out;
        }
        // A list: follow it, chaining through the last entry of a page while more remain.
        let mut at = prp2;
        loop {
            let page_idx = list.page_iovas.iter().position(|&p| p == at & !(page - 1)).unwrap();
            let off = (at % page) as usize;
            let entries_here = (PAGE_SIZE - off) / 8;
            for e in 0..entries_here {
                let entry = list.mem.read_le64(page_idx * PAGE_SIZE + off + e * 8);
                if e == entries_here - 1 && left > PAGE_SIZE {
                    at = entry; // chain pointer
                    break;
                }
                assert_eq!(entry % page, 0, "list entries must be page aligned");
                let n = left.min(PAGE_SIZE);
                out.push((entry, n));
                left -= n;
                if left == 0 {
                    return out;
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        /// Any page-compatible scatter list becomes PRPs that a controller walks back to the same
        /// bytes, through chained list pages when needed.
        #[test]
        fn prps_describe_exactly_the_memory(
            first_off in (0u64..1024).prop_map(|d| d * 4),
            pages in prop::collection::vec(1usize..6, 1..8),
            tail_cut in 0usize..4096,
            extra_pages in 0usize..1100,
        ) {
            let space = DmaSpace::new(Arc::new(CheckingMapper::new()));
            let buf = space.alloc(3 * PAGE_SIZE).unwrap();
            let iovas: Vec<u64> = (0..3).map(|p| buf.iova_at(p * PAGE_SIZE).unwrap().get()).collect();
            let list = PrpList { mem: buf.mem(), page_iovas: &iovas };
            // Segments: the first starts at an offset, others are whole pages at scattered IOVAs.
            let mut segs = Vec::new();
            let mut base = 0x10_0000_0000u64;
            let mut total = 0usize;
            for (i, &n) in pages.iter().enumerate() {
                let start = if i == 0 { base + first_off } else { base };
                let len = n * PAGE_SIZE - if i == 0 { first_off as usize } else { 0 };
                segs.push(IovaSegment { iova: Iova(start), len });
                total += len;
                base += 0x100_0000;
            }
            // Many extra pages in one segment, to need chained lists.
            if extra_pages > 0 {
                segs.push(IovaSegment { iova: Iova(base), len: extra_pages * PAGE_SIZE });
                total += extra_pages * PAGE_SIZE;
            }
            let len = total - tail_cut.min(total - 1);
            let r = build(segs.iter().map(|s| Ok::<_, ()>(*s)), len, &list);
            let entries = ((first_off as usize) + len).div_ceil(PAGE_SIZE) - 1;
            if entries > list.capacity() {
                prop_assert_eq!(r, Err(PrpError::TooLong));
                return Ok(());
            }
            let (prp1, prp2) = r.unwrap();
            let runs = walk(prp1, prp2, len, &list);
            // Expand both into byte addresses and compare.
            let mut want = Vec::new();
            let mut left = len;
            for s in &segs {
                let n = s.len.min(left);
                want.push((s.iova.get(), n));
                left -= n;
                if left == 0 { break; }
            }
            let flat = |v: &[(u64, usize)]| {
                let mut pages = Vec::new();
                for &(a, n) in v {
                    let mut x = a;
                    while x < a + n as u64 {
                        let step = (PAGE_SIZE as u64 - x % PAGE_SIZE as u64).min(a + n as u64 - x);
                        pages.push((x, step));
                        x += step;
                    }
                }
                pages
            };
            prop_assert_eq!(flat(&runs), flat(&want));
        }
    }

    #[test]
    fn rules_are_enforced() {
        let space = DmaSpace::new(Arc::new(CheckingMapper::new()));
        let buf = space.alloc(PAGE_SIZE).unwrap();
        let iovas = [buf.iova().get()];
        let list = PrpList { mem: buf.mem(), page_iovas: &iovas };
        let seg = |iova: u64, len: usize| Ok::<_, ()>(IovaSegment { iova: Iova(iova), len });
        // Odd start.
        assert_eq!(build([seg(0x1002, 512)], 512, &list), Err(PrpError::Misaligned));
        // A first piece that does not end on a page boundary, followed by another.
        assert_eq!(
            build([seg(0x1000, 2048), seg(0x9000, 2048)], 4096, &list),
            Err(PrpError::Misaligned)
        );
        // A later piece that does not start on a page boundary.
        assert_eq!(
            build([seg(0x1000, 4096), seg(0x9200, 4096)], 8192, &list),
            Err(PrpError::Misaligned)
        );
        // Unmapped memory.
        assert_eq!(build([seg(0x1000, 4096), Err(())], 8192, &list), Err(PrpError::Unmapped));
        // One page and two pages need no list.
        assert_eq!(build([seg(0x1000, 4096)], 4096, &list), Ok((0x1000, 0)));
        assert_eq!(build([seg(0x1800, 4096)], 4096, &list), Ok((0x1800, 0x2000)));
        let (p1, p2) = build([seg(0x1000, 3 * 4096)], 3 * 4096, &list).unwrap();
        assert_eq!((p1, p2), (0x1000, iovas[0]));
        assert_eq!(list.mem.read_le64(0), 0x2000);
        assert_eq!(list.mem.read_le64(8), 0x3000);
        // The fast path agrees: no list for up to two pages, nothing for what `build` rejects.
        assert_eq!(short(0x1000, 4096), Some((0x1000, 0)));
        assert_eq!(short(0x1800, 4096), Some((0x1800, 0x2000)));
        assert_eq!(short(0x1004, 8188), Some((0x1004, 0x2000)));
        assert_eq!(short(0x1004, 8189), None, "a third page needs a list");
        assert_eq!(short(0x1002, 512), None);
        assert_eq!(short(0x1000, 0), None);
    }
}
