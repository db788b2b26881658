//! Scatter gather lists: the other way a command says where its data is, for controllers that
//! offer them (Identify SGLS).
//!
//! Where PRPs need every piece but the first to start on a page and every piece but the last to
//! end on one, an SGL takes any pieces: one Data Block descriptor per IOVA-contiguous piece. So
//! memory whose pieces meet anywhere (a DMA buffer at an odd offset, scattered sub-page pieces)
//! stays zero copy instead of bouncing. One piece fits in the command itself (SGL1); more go
//! in the slot's list pages as a Last Segment, chained through a Segment descriptor in the last
//! slot of each full page.

use crate::prp::{self, PrpError, PrpList};
use crate::spec::sgl::{SglDescriptor, DESCRIPTOR_SIZE};
use crate::spec::PAGE_SIZE;
use mfio_dma::IovaSegment;

/// Descriptors per list page.
const PER_PAGE: usize = PAGE_SIZE / DESCRIPTOR_SIZE;

/// What the controller requires of Data Block descriptors (Identify SGLS bits 1:0).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SglAlignment {
    /// SGLS = 01b: any byte address and length.
    Byte,
    /// SGLS = 10b: Data Block addresses and lengths are multiples of four.
    Dword,
}

impl SglAlignment {
    /// From Identify SGLS: `None` when SGLs are not supported for NVM commands.
    pub fn from_sgls(sgls: u32) -> Option<Self> {
        match sgls & 3 {
            1 => Some(Self::Byte),
            2 => Some(Self::Dword),
            _ => None,
        }
    }
}

/// List pages needed for `descriptors` data descriptors.
pub fn pages_for(descriptors: usize) -> usize {
    prp::chained_pages(descriptors, PER_PAGE)
}

/// The most data descriptors `list` can hold.
pub fn capacity(list: &PrpList<'_>) -> usize {
    // Every page but the last gives its final slot to the chain pointer.
    prp::chained_capacity(list.page_iovas.len(), PER_PAGE)
}

/// Builds SGL1 (the command's data pointer, as `(prp1, prp2)`) for `len` bytes whose memory is
/// `segments`, in order. Descriptors beyond the first go into `list`.
pub fn build<I, E>(
    segments: I,
    len: usize,
    list: &PrpList<'_>,
    align: SglAlignment,
) -> Result<(u64, u64), PrpError>
where
    I: IntoIterator<Item = Result<IovaSegment, E>>,
{
    if len == 0 || len > u32::MAX as usize {
        return Err(PrpError::TooLong);
    }
    let mut segments = segments.into_iter();
    let first = next(&mut segments, len, align)?;
    if first.len >= len {
        return Ok(SglDescriptor::data(first.iova.get(), len as u32).to_dptr());
    }
    let cap = capacity(list);
    let write = |page: usize, slot: usize, d: &SglDescriptor| {
        list.mem.copy_from_slice(page * PAGE_SIZE + slot * DESCRIPTOR_SIZE, &d.to_bytes());
    };
    // Data descriptors written so far. Each page holds `PER_PAGE - 1` before its last slot,
    // which becomes the chain pointer when another page follows. A page's first descriptor
    // goes into the previous page's last slot until a second one shows the page is needed.
    let mut n = 0usize;
    let mut done = 0usize;
    let mut seg = first;
    let mut prev = SglDescriptor::default();
    loop {
        if n == cap {
            return Err(PrpError::TooLong);
        }
        let take = seg.len.min(len - done);
        let d = SglDescriptor::data(seg.iova.get(), take as u32);
        let (page, slot) = (n / (PER_PAGE - 1), n % (PER_PAGE - 1));
        match (page, slot) {
            (0, _) => write(0, slot, &d),
            (_, 0) => write(page - 1, PER_PAGE - 1, &d),
            (_, 1) => {
                if page >= list.page_iovas.len() {
                    return Err(PrpError::TooLong);
                }
                write(page, 0, &prev);
                write(page, 1, &d);
            }
            _ => write(page, slot, &d),
        }
        prev = d;
        n += 1;
        done += take;
        if done == len {
            break;
        }
        seg = next(&mut segments, len - done, align)?;
    }
    // Pointer descriptors, back to front: each page's pointer says how many descriptors the
    // page holds and whether another page follows (Segment) or not (Last Segment).
    let pages = pages_for(n);
    for p in (1..pages).rev() {
        let here = descriptors_on(p, pages, n);
        let d = pointer(list.page_iovas[p], here, p + 1 == pages);
        let at = (p - 1) * PAGE_SIZE + (PER_PAGE - 1) * DESCRIPTOR_SIZE;
        list.mem.copy_from_slice(at, &d.to_bytes());
    }
    Ok(pointer(list.page_iovas[0], descriptors_on(0, pages, n), pages == 1).to_dptr())
}

/// The next piece, checked against the controller's alignment rule.
fn next<I, E>(segments: &mut I, left: usize, align: SglAlignment) -> Result<IovaSegment, PrpError>
where
    I: Iterator<Item = Result<IovaSegment, E>>,
{
    let s = match segments.next() {
        Some(Ok(s)) => s,
        _ => return Err(PrpError::Unmapped),
    };
    if align == SglAlignment::Dword && (s.iova.get() % 4 != 0 || s.len.min(left) % 4 != 0) {
        return Err(PrpError::Misaligned);
    }
    Ok(s)
}

/// Slots used on page `p` of `pages`, for `n` data descriptors: the data plus the chain pointer
/// on every page but the last.
fn descriptors_on(p: usize, pages: usize, n: usize) -> u32 {
    let data = if p + 1 < pages { PER_PAGE - 1 } else { n - p * (PER_PAGE - 1) };
    (data + usize::from(p + 1 < pages)) as u32
}

/// A descriptor pointing at `count` descriptors at `addr`.
fn pointer(addr: u64, count: u32, last: bool) -> SglDescriptor {
    if last {
        SglDescriptor::last_segment(addr, count)
    } else {
        SglDescriptor::segment(addr, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::sgl::kind;
    use mfio_dma::{CheckingMapper, DmaSpace, Iova};
    use proptest::prelude::*;
    use std::sync::Arc;

    /// Walks SGL1 as a controller does and returns the data runs.
    fn walk(dptr: (u64, u64), list: &PrpList<'_>) -> Vec<(u64, usize)> {
        let mut out = Vec::new();
        let mut d = SglDescriptor::from_dptr(dptr.0, dptr.1);
        let mut in_last = false;
        loop {
            match d.kind {
                kind::DATA_BLOCK => {
                    out.push((d.addr, d.len as usize));
                    return out;
                }
                kind::SEGMENT | kind::LAST_SEGMENT => {
                    assert!(!in_last, "a Last Segment may not chain on");
                    in_last = d.kind == kind::LAST_SEGMENT;
                    let page = list.page_iovas.iter().position(|&p| p == d.addr).unwrap();
                    let count = d.len as usize / DESCRIPTOR_SIZE;
                    assert!((1..=PER_PAGE).contains(&count));
                    let mut raw = [0u8; DESCRIPTOR_SIZE];
                    for i in 0..count {
                        list.mem.copy_to_slice(page * PAGE_SIZE + i * DESCRIPTOR_SIZE, &mut raw);
                        let e = SglDescriptor::from_bytes(&raw);
                        if i + 1 == count && e.kind != kind::DATA_BLOCK {
                            assert!(!in_last, "a chain pointer inside a Last Segment");
                            assert!(e.kind == kind::LAST_SEGMENT || e.kind == kind::SEGMENT);
                            d = e;
                            break;
                        }
                        assert_eq!(e.kind, kind::DATA_BLOCK);
                        out.push((e.addr, e.len as usize));
                        if i + 1 == count {
                            assert!(in_last, "a Segment must end with a pointer");
                            return out;
                        }
                    }
                }
                k => panic!("unexpected descriptor type {k}"),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        /// Any scatter list (odd offsets and lengths included) becomes an SGL that a controller
        /// walks back to exactly the same pieces, through chained pages when needed.
        #[test]
        fn sgls_describe_exactly_the_memory(
            pieces in prop::collection::vec((0u64..100_000, 1usize..9000), 1..40),
            extra in 0usize..800,
            cut in 0usize..512,
        ) {
            let space = DmaSpace::new(Arc::new(CheckingMapper::new()));
            let buf = space.alloc(3 * PAGE_SIZE).unwrap();
            let iovas: Vec<u64> = (0..3).map(|p| buf.iova_at(p * PAGE_SIZE).unwrap().get()).collect();
            let list = PrpList { mem: buf.mem(), page_iovas: &iovas };
            let mut segs: Vec<IovaSegment> = pieces
                .iter()
                .enumerate()
                .map(|(i, &(off, len))| IovaSegment { iova: Iova((i as u64 + 1) << 32 | off), len })
                .collect();
            // Many small pieces, to need chained pages (and sometimes more than fit).
            for i in 0..extra {
                segs.push(IovaSegment { iova: Iova((1000 + i as u64) << 32 | 7), len: 3 });
            }
            let total: usize = segs.iter().map(|s| s.len).sum();
            let len = total - cut.min(segs.last().unwrap().len - 1);
            let r = build(segs.iter().map(|s| Ok::<_, ()>(*s)), len, &list, SglAlignment::Byte);
            if segs.len() > capacity(&list) {
                prop_assert_eq!(r, Err(PrpError::TooLong));
                return Ok(());
            }
            let runs = walk(r.unwrap(), &list);
            let mut want: Vec<(u64, usize)> = segs.iter().map(|s| (s.iova.get(), s.len)).collect();
            want.last_mut().unwrap().1 -= total - len;
            prop_assert_eq!(runs, want);
        }
    }

    #[test]
    fn one_piece_is_inline_and_dword_rule_is_enforced() {
        let space = DmaSpace::new(Arc::new(CheckingMapper::new()));
        let buf = space.alloc(PAGE_SIZE).unwrap();
        let iovas = [buf.iova().get()];
        let list = PrpList { mem: buf.mem(), page_iovas: &iovas };
        let seg = |iova: u64, len: usize| Ok::<_, ()>(IovaSegment { iova: Iova(iova), len });
        // One piece longer than needed: a single inline Data Block of exactly `len`.
        let d = build([seg(0x1001, 9000)], 777, &list, SglAlignment::Byte).unwrap();
        assert_eq!(SglDescriptor::from_dptr(d.0, d.1), SglDescriptor::data(0x1001, 777));
        assert_eq!(
            build([seg(0x1001, 512)], 512, &list, SglAlignment::Dword),
            Err(PrpError::Misaligned)
        );
        assert_eq!(
            build([seg(0x1000, 6), seg(0x2000, 506)], 512, &list, SglAlignment::Dword),
            Err(PrpError::Misaligned)
        );
        assert_eq!(
            build([seg(0x1000, 6), Err(())], 512, &list, SglAlignment::Byte),
            Err(PrpError::Unmapped)
        );
        // Two pieces: a Last Segment of two Data Blocks in the list page.
        let d = build([seg(0x1000, 6), seg(0x2002, 506)], 512, &list, SglAlignment::Byte).unwrap();
        assert_eq!(SglDescriptor::from_dptr(d.0, d.1), SglDescriptor::last_segment(iovas[0], 2));
        assert_eq!(walk(d, &list), vec![(0x1000, 6), (0x2002, 506)]);
    }
}
