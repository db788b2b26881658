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

/// The list pages of one command slot: `pages` contiguous pages at `iova`.
pub struct PrpList<'a> {
    /// The pages' memory.
    pub mem: DmaSlice<'a>,
    /// Their IOVA (page aligned).
    pub iova: u64,
    /// How many pages.
    pub pages: usize,
}

impl PrpList<'_> {
    /// The most entries (data pages after the first) these pages can hold.
    pub fn capacity(&self) -> usize {
        self.pages * (ENTRIES_PER_PAGE - 1) + 1
    }
}

/// Number of list pages needed to hold `entries` list entries.
pub fn list_pages_for(entries: usize) -> usize {
    if entries <= ENTRIES_PER_PAGE {
        1
    } else {
        (entries - 1).div_ceil(ENTRIES_PER_PAGE - 1)
    }
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
                list.mem.write_le64(off, list.iova + ((p + 1) * PAGE_SIZE) as u64);
            }
            list.iova
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
