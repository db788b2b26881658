//! Translation of virtual ranges to IOVA segments: the hot path.
//!
//! A [`TranslationTable`] is a sorted array of [`MappedChunk`]s. Translating a range is a binary
//! search for its first byte, then a walk over the following chunks while they continue it:
//! no system call, no allocation, no lock.

use crate::addr::{Iova, VirtAddr};
use crate::error::{DmaError, TranslateError};
use crate::mapper::MappedChunk;

/// One IOVA-contiguous piece of a translated range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IovaSegment {
    /// Where the device finds it.
    pub iova: Iova,
    /// Its length in bytes.
    pub len: usize,
}

/// The mapped memory of one DMA space, sorted by virtual address, chunks disjoint.
#[derive(Debug, Clone, Default)]
pub struct TranslationTable {
    chunks: Vec<MappedChunk>,
}

impl TranslationTable {
    /// An empty table.
    pub fn new() -> TranslationTable {
        TranslationTable::default()
    }

    /// The chunks, in ascending virtual order.
    pub fn chunks(&self) -> &[MappedChunk] {
        &self.chunks
    }

    /// Add chunks. Fails, changing nothing, if any overlaps a chunk already present.
    pub fn insert(&mut self, new: &[MappedChunk]) -> Result<(), DmaError> {
        for (i, c) in new.iter().enumerate() {
            if c.len == 0 || c.virt.0.checked_add(c.len).is_none() {
                return Err(DmaError::InvalidLength(c.len));
            }
            let overlaps_table = {
                let idx = self.chunks.partition_point(|e| e.virt_end() <= c.virt.0);
                self.chunks.get(idx).is_some_and(|e| e.virt.0 < c.virt_end())
            };
            let overlaps_new =
                new[..i].iter().any(|o| o.virt.0 < c.virt_end() && c.virt.0 < o.virt_end());
            if overlaps_table || overlaps_new {
                return Err(DmaError::Overlap { virt: c.virt, len: c.len });
            }
        }
        self.chunks.extend_from_slice(new);
        self.chunks.sort_unstable_by_key(|c| c.virt);
        Ok(())
    }

    /// Remove exactly these chunks (as inserted). Chunks not present are ignored.
    pub fn remove(&mut self, old: &[MappedChunk]) {
        self.chunks.retain(|c| !old.contains(c));
    }

    /// Index of the chunk holding `addr`, if any.
    #[inline]
    pub(crate) fn find(&self, addr: usize) -> Option<usize> {
        let idx = self.chunks.partition_point(|c| c.virt.0 <= addr);
        let i = idx.checked_sub(1)?;
        (addr < self.chunks[i].virt_end()).then_some(i)
    }

    /// The IOVA segments of `[virt, virt + len)`, merged where IOVA-contiguous.
    #[inline]
    pub fn segments(&self, virt: VirtAddr, len: usize) -> Segments<'_> {
        self.segments_from(virt, len, None)
    }

    /// As [`Self::segments`], trying chunk `hint` first for the first byte.
    #[inline]
    pub(crate) fn segments_from(
        &self,
        virt: VirtAddr,
        len: usize,
        hint: Option<usize>,
    ) -> Segments<'_> {
        let (cur, end, err) = match virt.0.checked_add(len) {
            Some(end) => (virt.0, end, None),
            None => (virt.0, virt.0, Some(TranslateError::Overflow)),
        };
        Segments { table: self, start: virt.0, cur, end, hint, err }
    }

    /// Translate `[virt, virt + len)` into `out`; returns how many segments were written.
    #[inline]
    pub fn translate_into(
        &self,
        virt: VirtAddr,
        len: usize,
        out: &mut [IovaSegment],
    ) -> Result<usize, TranslateError> {
        let mut n = 0;
        let max = out.len();
        for seg in self.segments(virt, len) {
            let seg = seg?;
            let slot = out.get_mut(n).ok_or(TranslateError::TooManySegments { max })?;
            *slot = seg;
            n += 1;
        }
        Ok(n)
    }

    /// Whether every byte of `[virt, virt + len)` is mapped.
    #[inline]
    pub fn contains(&self, virt: VirtAddr, len: usize) -> bool {
        self.segments(virt, len).all(|s| s.is_ok())
    }
}

/// Iterator over the IOVA segments of a virtual range; yields one `Err` and stops at the first
/// byte that is not mapped.
#[derive(Debug)]
pub struct Segments<'a> {
    table: &'a TranslationTable,
    start: usize,
    cur: usize,
    end: usize,
    /// Index of the chunk expected to hold `cur` (the one after the last used, or a cached
    /// guess for the first byte).
    hint: Option<usize>,
    err: Option<TranslateError>,
}

impl Iterator for Segments<'_> {
    type Item = Result<IovaSegment, TranslateError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.err.take() {
            return Some(Err(e));
        }
        if self.cur >= self.end {
            return None;
        }
        let chunks = &self.table.chunks;
        let i = match self.hint {
            Some(h) if chunks.get(h).is_some_and(|c| c.contains(self.cur)) => h,
            _ => match self.table.find(self.cur) {
                Some(i) => i,
                None => {
                    let offset = self.cur - self.start;
                    self.cur = self.end;
                    return Some(Err(TranslateError::NotMapped { offset }));
                }
            },
        };
        let c = chunks[i];
        let iova = c.iova.0 + (self.cur - c.virt.0) as u64;
        let mut seg_end = c.virt_end().min(self.end);
        let mut last = c;
        let mut j = i + 1;
        // Merge following chunks that continue both the virtual and the IOVA range.
        while seg_end < self.end {
            match chunks.get(j) {
                Some(n)
                    if n.virt.0 == last.virt_end() && n.iova.0 == last.iova.0 + last.len as u64 =>
                {
                    seg_end = n.virt_end().min(self.end);
                    last = *n;
                    j += 1;
                }
                _ => break,
            }
        }
        let len = seg_end - self.cur;
        self.cur = seg_end;
        self.hint = Some(j);
        Some(Ok(IovaSegment { iova: Iova(iova), len }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunk(virt: usize, iova: u64, len: usize) -> MappedChunk {
        MappedChunk { virt: VirtAddr(virt), iova: Iova(iova), len }
    }

    fn table() -> TranslationTable {
        let mut t = TranslationTable::new();
        // Two IOVA-contiguous pages, then one elsewhere, then a gap, then one more.
        t.insert(&[
            chunk(0x10000, 0x900000, 0x1000),
            chunk(0x11000, 0x901000, 0x1000),
            chunk(0x12000, 0x500000, 0x1000),
        ])
        .unwrap();
        t.insert(&[chunk(0x20000, 0x700000, 0x2000)]).unwrap();
        t
    }

    fn collect(
        t: &TranslationTable,
        v: usize,
        l: usize,
    ) -> Result<Vec<(u64, usize)>, TranslateError> {
        t.segments(VirtAddr(v), l).map(|s| s.map(|s| (s.iova.0, s.len))).collect()
    }

    #[test]
    fn merges_contiguous_and_splits_at_iova_breaks() {
        let t = table();
        assert_eq!(collect(&t, 0x10800, 0x1000), Ok(vec![(0x900800, 0x1000)]));
        assert_eq!(collect(&t, 0x10ff0, 0x1020), Ok(vec![(0x900ff0, 0x1010), (0x500000, 0x10)]));
        assert_eq!(collect(&t, 0x12fff, 1), Ok(vec![(0x500fff, 1)]));
        assert_eq!(collect(&t, 0x20000, 0x2000), Ok(vec![(0x700000, 0x2000)]));
        assert_eq!(collect(&t, 0x10000, 0), Ok(vec![]));
    }

    #[test]
    fn rejects_gaps_and_ends() {
        let t = table();
        // Crosses the end of the third chunk into the gap.
        assert_eq!(collect(&t, 0x12f00, 0x200), Err(TranslateError::NotMapped { offset: 0x100 }));
        // Starts before any chunk.
        assert_eq!(collect(&t, 0xffff, 2), Err(TranslateError::NotMapped { offset: 0 }));
        // One past the end of the last chunk.
        assert_eq!(collect(&t, 0x22000, 1), Err(TranslateError::NotMapped { offset: 0 }));
        assert_eq!(collect(&t, 0x21fff, 2), Err(TranslateError::NotMapped { offset: 1 }));
        assert_eq!(collect(&t, usize::MAX - 1, 4), Err(TranslateError::Overflow));
        assert!(!t.contains(VirtAddr(0x13000), 1));
        assert!(t.contains(VirtAddr(0x10000), 0x3000));
    }

    #[test]
    fn translate_into_caps_segments() {
        let t = table();
        let mut out = [IovaSegment::default(); 1];
        assert_eq!(
            t.translate_into(VirtAddr(0x11000), 0x2000, &mut out),
            Err(TranslateError::TooManySegments { max: 1 })
        );
        let mut out = [IovaSegment::default(); 2];
        assert_eq!(t.translate_into(VirtAddr(0x11000), 0x2000, &mut out), Ok(2));
        assert_eq!(out[1], IovaSegment { iova: Iova(0x500000), len: 0x1000 });
    }

    #[test]
    fn insert_rejects_overlap_and_remove_works() {
        let mut t = table();
        assert!(t.insert(&[chunk(0x12fff, 0, 0x1000)]).is_err());
        assert!(t.insert(&[chunk(0xf000, 0, 0x1001)]).is_err());
        assert!(t.insert(&[chunk(0x30000, 0, 0x1000), chunk(0x30800, 0, 0x1000)]).is_err());
        assert_eq!(t.chunks().len(), 4);
        t.insert(&[chunk(0xf000, 0x100, 0x1000)]).unwrap();
        assert_eq!(collect(&t, 0xf800, 0x1000), Ok(vec![(0x900, 0x800), (0x900000, 0x800)]));
        t.remove(&[chunk(0x11000, 0x901000, 0x1000)]);
        assert_eq!(collect(&t, 0x10000, 0x2000), Err(TranslateError::NotMapped { offset: 0x1000 }));
    }

    proptest! {
        /// Against a byte-by-byte model: every byte of the range maps to the IOVA its chunk
        /// says, segments are IOVA-contiguous runs, and the first unmapped byte is reported.
        #[test]
        fn matches_bytewise_model(
            layout in proptest::collection::vec((0usize..3, 1usize..4, any::<bool>()), 1..12),
            start in 0usize..0x40000,
            len in 0usize..0x30000,
        ) {
            // Build chunks of 1-3 pages separated by 0-2 page gaps; IOVAs either continue the
            // previous chunk or jump.
            let mut t = TranslationTable::new();
            let mut virt = 0x1000usize;
            let mut iova = 0x100_0000u64;
            let mut chunks = Vec::new();
            for (gap, pages, jump) in layout {
                virt += gap * 0x1000;
                if jump || gap > 0 { iova += 0x10_0000; }
                let c = chunk(virt, iova, pages * 0x1000);
                chunks.push(c);
                virt += pages * 0x1000;
                iova += (pages * 0x1000) as u64;
            }
            t.insert(&chunks).unwrap();
            let model = |a: usize| chunks.iter().find(|c| a >= c.virt.0 && a < c.virt_end())
                .map(|c| c.iova.0 + (a - c.virt.0) as u64);
            let end_of = |a: usize| chunks.iter().find(|c| a >= c.virt.0 && a < c.virt_end())
                .map(|c| c.virt_end());
            let mut first_unmapped = None;
            let mut a = start;
            while a < start + len {
                match end_of(a) {
                    Some(e) => a = e,
                    None => { first_unmapped = Some(a); break; }
                }
            }
            let res: Result<Vec<IovaSegment>, _> = t.segments(VirtAddr(start), len).collect();
            match first_unmapped {
                Some(a) => prop_assert_eq!(res, Err(TranslateError::NotMapped { offset: a - start })),
                None => {
                    let segs = res.unwrap();
                    let mut a = start;
                    for (k, s) in segs.iter().enumerate() {
                        prop_assert!(s.len > 0);
                        prop_assert_eq!(Some(s.iova.0), model(a));
                        prop_assert_eq!(Some(s.iova.0 + s.len as u64 - 1), model(a + s.len - 1));
                        if k + 1 < segs.len() {
                            // Maximal: the next segment is not IOVA-contiguous with this one.
                            prop_assert_ne!(model(a + s.len), Some(s.iova.0 + s.len as u64));
                        }
                        a += s.len;
                    }
                    prop_assert_eq!(a, start + len);
                }
            }
        }
    }
}
