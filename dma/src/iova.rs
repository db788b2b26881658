//! IOVA allocation within the ranges the IOMMU accepts.
//!
//! QEMU's intel-iommu takes only 39-bit IOVAs by default, and every IOMMU reserves some windows
//! (the MSI doorbell at 0xfee00000 on x86), so the allocator hands out addresses only from the
//! ranges VFIO reports (VFIO_IOMMU_GET_INFO, IOVA-range capability).

use std::collections::BTreeMap;

use crate::addr::{align_up, Iova};
use crate::error::DmaError;

/// A first-fit allocator of IOVA ranges over a set of allowed windows.
///
/// Not on the hot path: used when memory is mapped, not per I/O.
#[derive(Debug, Clone)]
pub struct IovaAllocator {
    /// Free ranges, start -> end (exclusive), disjoint and never adjacent (coalesced).
    free: BTreeMap<u64, u64>,
    /// Allocated ranges, start -> length, so a free must match an allocation exactly.
    used: BTreeMap<u64, u64>,
}

impl IovaAllocator {
    /// An allocator over `ranges`, each `(first, last)` inclusive as VFIO reports them.
    /// Addresses below `min` are never handed out (IOVA 0 looks like a null pointer to many
    /// devices and drivers, so callers pass a floor such as 1 MiB).
    pub fn new(ranges: &[(u64, u64)], min: u64) -> IovaAllocator {
        let mut a = IovaAllocator { free: BTreeMap::new(), used: BTreeMap::new() };
        for &(first, last) in ranges {
            let start = first.max(min);
            // The last byte of the 64-bit space is given up so that `end` fits in a u64.
            let end = last.saturating_add(1);
            if start < end {
                a.insert_free(start, end);
            }
        }
        a
    }

    /// Total free bytes.
    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(|(s, e)| e - s).sum()
    }

    /// The free ranges `(start, end_exclusive)`, in order.
    pub fn free_ranges(&self) -> Vec<(u64, u64)> {
        self.free.iter().map(|(&s, &e)| (s, e)).collect()
    }

    /// Allocate `len` bytes aligned to `align` (a power of two).
    pub fn alloc(&mut self, len: u64, align: u64) -> Result<Iova, DmaError> {
        if len == 0 || !align.is_power_of_two() {
            return Err(DmaError::InvalidLength(len as usize));
        }
        let mut found = None;
        for (&s, &e) in &self.free {
            if let Some(a) = align_up(s, align) {
                if a.checked_add(len).is_some_and(|end| end <= e) {
                    found = Some((s, e, a));
                    break;
                }
            }
        }
        let (s, e, a) = found.ok_or(DmaError::IovaExhausted { len })?;
        self.free.remove(&s);
        if s < a {
            self.free.insert(s, a);
        }
        if a + len < e {
            self.free.insert(a + len, e);
        }
        self.used.insert(a, len);
        Ok(Iova(a))
    }

    /// Return a range from [`alloc`](Self::alloc). It must match an allocation exactly.
    pub fn free(&mut self, iova: Iova, len: u64) -> Result<(), DmaError> {
        match self.used.get(&iova.0) {
            Some(&l) if l == len => {}
            _ => return Err(DmaError::NotMapped { iova, len: len as usize }),
        }
        self.used.remove(&iova.0);
        self.insert_free(iova.0, iova.0 + len);
        Ok(())
    }

    fn insert_free(&mut self, mut start: u64, mut end: u64) {
        // Coalesce with the range before (or any overlapping one, for overlapping input
        // windows) and the ranges after.
        if let Some((&ps, &pe)) = self.free.range(..=start).next_back() {
            if pe >= start {
                self.free.remove(&ps);
                start = ps;
                end = end.max(pe);
            }
        }
        while let Some((&ns, &ne)) = self.free.range(start..).next() {
            if ns > end {
                break;
            }
            self.free.remove(&ns);
            end = end.max(ne);
        }
        self.free.insert(start, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn respects_floor_and_ranges() {
        let mut a =
            IovaAllocator::new(&[(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)], 0x10_0000);
        let i = a.alloc(0x1000, 0x1000).unwrap();
        assert_eq!(i, Iova(0x10_0000));
        // A 2 MiB-aligned 4 MiB allocation that does not fit under the MSI window's gap goes
        // past it, never across it.
        let mut b =
            IovaAllocator::new(&[(0xfec0_0000, 0xfedf_ffff), (0xfef0_0000, 0x1_ffff_ffff)], 0);
        let j = b.alloc(4 << 20, 2 << 20).unwrap();
        assert!(j.0 >= 0xfef0_0000, "{j:?}");
        assert!(a.alloc(1 << 40, 4096).is_err());
    }

    #[test]
    fn free_must_match() {
        let mut a = IovaAllocator::new(&[(0, 0xffff)], 0);
        let i = a.alloc(0x100, 0x10).unwrap();
        assert!(a.free(i, 0x80).is_err());
        assert!(a.free(Iova(i.0 + 1), 0x100).is_err());
        a.free(i, 0x100).unwrap();
        assert!(a.free(i, 0x100).is_err(), "double free must fail");
        assert_eq!(a.free_ranges(), vec![(0, 0x10000)]);
    }

    #[test]
    fn zero_and_bad_alignment_rejected() {
        let mut a = IovaAllocator::new(&[(0, 0xffff)], 0);
        assert!(a.alloc(0, 4096).is_err());
        assert!(a.alloc(16, 3).is_err());
    }

    #[test]
    fn full_64bit_window() {
        let mut a = IovaAllocator::new(&[(0, u64::MAX)], 4096);
        let i = a.alloc(4096, 4096).unwrap();
        assert_eq!(i, Iova(4096));
        a.free(i, 4096).unwrap();
        assert_eq!(a.free_ranges(), vec![(4096, u64::MAX)]);
    }

    proptest! {
        #[test]
        fn allocations_are_disjoint_aligned_and_inside(
            windows in proptest::collection::vec((0u64..1 << 20, 1u64..1 << 16), 1..5),
            ops in proptest::collection::vec((1u64..0x3000, 0u32..4, any::<bool>()), 1..200),
        ) {
            let ranges: Vec<(u64, u64)> = windows.iter().map(|&(s, l)| (s, s + l - 1)).collect();
            let mut a = IovaAllocator::new(&ranges, 0x100);
            let initial = a.free_ranges();
            let total = a.free_bytes();
            let mut live: Vec<(u64, u64)> = Vec::new();
            for (len, align_log, free_one) in ops {
                if free_one && !live.is_empty() {
                    let (s, l) = live.remove(len as usize % live.len());
                    a.free(Iova(s), l).unwrap();
                    continue;
                }
                let align = 1u64 << (align_log * 4);
                if let Ok(i) = a.alloc(len, align) {
                    prop_assert_eq!(i.0 % align, 0);
                    prop_assert!(i.0 >= 0x100);
                    // Inside the union of the windows (adjacent windows are one space).
                    let mut at = i.0;
                    while at < i.0 + len {
                        match ranges.iter().filter(|&&(f, l)| at >= f && at <= l).map(|&(_, l)| l).max() {
                            Some(l) => at = l + 1,
                            None => prop_assert!(false, "{:#x}+{:#x}: {:#x} outside {:?}", i.0, len, at, ranges),
                        }
                    }
                    for &(s, l) in &live {
                        prop_assert!(i.0 + len <= s || s + l <= i.0, "overlap");
                    }
                    live.push((i.0, len));
                }
                let used: u64 = live.iter().map(|&(_, l)| l).sum();
                prop_assert_eq!(a.free_bytes() + used, total);
            }
            for (s, l) in live.drain(..) {
                a.free(Iova(s), l).unwrap();
            }
            prop_assert_eq!(a.free_ranges(), initial);
        }
    }
}
