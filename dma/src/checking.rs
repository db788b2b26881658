//! A mapper for tests and in-process device models: records which IOVA ranges are mapped and
//! lets a model reach memory only through them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::addr::{Iova, VirtAddr, PAGE_SIZE};
use crate::error::DmaError;
use crate::iova::IovaAllocator;
use crate::mapper::{check_page_range, DmaMapper, MappedChunk};

/// First IOVA the checking mapper hands out: 64 GiB, far from where Linux puts user mappings
/// (0x55.. for the heap, 0x7f.. for mmap), so a driver that hands a device a virtual address
/// instead of an IOVA is caught at once.
pub const CHECKING_IOVA_BASE: u64 = 0x10_0000_0000;
/// Last IOVA: the top of a 39-bit space, like QEMU's intel-iommu.
pub const CHECKING_IOVA_LAST: u64 = (1 << 39) - 1;

/// A DMA access by a device model that the driver did not make legal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("device DMA {kind} of {len:#x} bytes at IOVA {iova} is outside every mapped range")]
pub struct DmaFault {
    /// Where the device tried to go.
    pub iova: Iova,
    /// How far.
    pub len: usize,
    /// "read" or "write".
    pub kind: &'static str,
}

#[derive(Debug)]
struct State {
    alloc: IovaAllocator,
    /// IOVA start -> (virtual start, length).
    maps: BTreeMap<u64, (usize, usize)>,
    /// Map every page at its own IOVA (see [`CheckingMapper::scattered`]).
    scatter: bool,
    /// The last few mappings resolved, `(iova start, virtual start, length)`: a device model
    /// touches a handful (rings, the data buffer, the shadow page) over and over, and this
    /// spares the tree walk. Emptied on every unmap, so it never outlives a mapping.
    recent: [(u64, usize, usize); RECENT],
    next_recent: usize,
}

impl State {
    /// The virtual address of `[iova, iova + len)` if one mapping holds all of it, looked up in
    /// the recent mappings first (refilled round robin on a miss).
    fn lookup(&mut self, iova: u64, len: usize) -> Option<usize> {
        let within = |(start, virt, mlen): (u64, usize, usize)| {
            if mlen == 0 {
                return None; // an empty slot
            }
            let off = iova.checked_sub(start)?;
            let end = off.checked_add(len as u64)?;
            (end <= mlen as u64).then_some(virt + off as usize)
        };
        if let Some(va) = self.recent.iter().find_map(|&r| within(r)) {
            return Some(va);
        }
        let (&start, &(virt, mlen)) = self.maps.range(..=iova).next_back()?;
        let va = within((start, virt, mlen))?;
        self.recent[self.next_recent] = (start, virt, mlen);
        self.next_recent = (self.next_recent + 1) % RECENT;
        Some(va)
    }

    /// Whether one mapping holds `[iova, iova + len)`, without touching the recent ones (data
    /// buffers checked once each would only push the rings out).
    fn holds(&self, iova: u64, len: usize) -> bool {
        self.maps
            .range(..=iova)
            .next_back()
            .is_some_and(|(&s, &(_, l))| iova - s + len as u64 <= l as u64)
    }
}

/// Entries in `State::recent`.
const RECENT: usize = 4;

/// Records every mapping and gives device models bounds-checked access by IOVA.
///
/// Each mapping gets its own IOVA range followed by an unmapped guard page, so an access that
/// runs off the end of one buffer faults instead of landing in the next.
#[derive(Debug)]
pub struct CheckingMapper {
    state: Mutex<State>,
    faults: AtomicU64,
}

impl Default for CheckingMapper {
    fn default() -> Self {
        CheckingMapper::new()
    }
}

impl CheckingMapper {
    /// A mapper over IOVAs [`CHECKING_IOVA_BASE`]..=[`CHECKING_IOVA_LAST`].
    pub fn new() -> CheckingMapper {
        CheckingMapper {
            state: Mutex::new(State {
                alloc: IovaAllocator::new(&[(CHECKING_IOVA_BASE, CHECKING_IOVA_LAST)], 0),
                maps: BTreeMap::new(),
                scatter: false,
                recent: [(0, 0, 0); RECENT],
                next_recent: 0,
            }),
            faults: AtomicU64::new(0),
        }
    }

    /// A mapper that maps every 4 KiB page at its own IOVA, each followed by a guard page, as
    /// physical pages are in no-IOMMU mode without huge pages: memory is contiguous to the
    /// device only within a page, so drivers must describe it page by page (PRP lists, SGL
    /// segments) or bounce it, and rings larger than a page cannot be created.
    pub fn scattered() -> CheckingMapper {
        let m = CheckingMapper::new();
        m.state().scatter = true;
        m
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolve `[iova, iova + len)` to a virtual address if one mapping holds all of it.
    fn resolve(&self, iova: Iova, len: usize, kind: &'static str) -> Result<usize, DmaFault> {
        let fault = DmaFault { iova, len, kind };
        let mut st = self.state();
        let hit = st.lookup(iova.0, len);
        drop(st);
        hit.ok_or_else(|| {
            self.faults.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("{fault}");
            fault
        })
    }

    /// Whether `[iova, iova + len)` lies within one mapping.
    pub fn is_mapped(&self, iova: Iova, len: usize) -> bool {
        self.state().holds(iova.0, len)
    }

    /// The mapped ranges `(iova, len)`, in IOVA order.
    pub fn mappings(&self) -> Vec<(Iova, usize)> {
        self.state().maps.iter().map(|(&i, &(_, l))| (Iova(i), l)).collect()
    }

    /// How many device accesses were rejected so far (a test asserts it stays 0, or not).
    pub fn fault_count(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }

    /// Device-side read: copy `buf.len()` bytes from `iova` into `buf`.
    pub fn read(&self, iova: Iova, buf: &mut [u8]) -> Result<(), DmaFault> {
        let va = self.resolve(iova, buf.len(), "read")?;
        // SAFETY: `resolve` found `[va, va + len)` inside a live mapping: the mapper's contract
        // (`map` is unsafe) keeps it valid until unmapped, and the model is the device, the one
        // party allowed to touch it behind the driver's back.
        unsafe { core::ptr::copy_nonoverlapping(va as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Device-side write: copy `buf` to `iova`.
    pub fn write(&self, iova: Iova, buf: &[u8]) -> Result<(), DmaFault> {
        let va = self.resolve(iova, buf.len(), "write")?;
        // SAFETY: as in `read`.
        unsafe { core::ptr::copy_nonoverlapping(buf.as_ptr(), va as *mut u8, buf.len()) };
        Ok(())
    }

    /// Device-side little-endian u16 read.
    pub fn read_le16(&self, iova: Iova) -> Result<u16, DmaFault> {
        let mut b = [0; 2];
        self.read(iova, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Device-side little-endian u32 read.
    pub fn read_le32(&self, iova: Iova) -> Result<u32, DmaFault> {
        let mut b = [0; 4];
        self.read(iova, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Device-side little-endian u64 read.
    pub fn read_le64(&self, iova: Iova) -> Result<u64, DmaFault> {
        let mut b = [0; 8];
        self.read(iova, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Device-side little-endian u16 write.
    pub fn write_le16(&self, iova: Iova, v: u16) -> Result<(), DmaFault> {
        self.write(iova, &v.to_le_bytes())
    }

    /// Device-side little-endian u32 write.
    pub fn write_le32(&self, iova: Iova, v: u32) -> Result<(), DmaFault> {
        self.write(iova, &v.to_le_bytes())
    }

    /// Device-side little-endian u64 write.
    pub fn write_le64(&self, iova: Iova, v: u64) -> Result<(), DmaFault> {
        self.write(iova, &v.to_le_bytes())
    }
}

impl DmaMapper for CheckingMapper {
    fn name(&self) -> &'static str {
        "checking"
    }

    unsafe fn map(&self, virt: VirtAddr, len: usize) -> Result<Vec<MappedChunk>, DmaError> {
        check_page_range(virt, len)?;
        let mut st = self.state();
        let piece = if st.scatter { PAGE_SIZE } else { len };
        let mut chunks = Vec::with_capacity(len / piece);
        for off in (0..len).step_by(piece) {
            // The guard page after each mapping stays allocated but unmapped.
            let iova = match st.alloc.alloc(piece as u64 + PAGE_SIZE as u64, PAGE_SIZE as u64) {
                Ok(i) => i,
                Err(e) => {
                    for c in chunks.drain(..) {
                        let MappedChunk { iova, len, .. } = c;
                        st.maps.remove(&iova.0);
                        let _ = st.alloc.free(iova, len as u64 + PAGE_SIZE as u64);
                    }
                    return Err(e);
                }
            };
            st.maps.insert(iova.0, (virt.0 + off, piece));
            chunks.push(MappedChunk { virt: VirtAddr(virt.0 + off), iova, len: piece });
        }
        Ok(chunks)
    }

    fn unmap(&self, chunks: &[MappedChunk]) -> Result<(), DmaError> {
        let mut st = self.state();
        st.recent = [(0, 0, 0); RECENT];
        for c in chunks {
            match st.maps.get(&c.iova.0) {
                Some(&(v, l)) if v == c.virt.0 && l == c.len => {}
                _ => return Err(DmaError::NotMapped { iova: c.iova, len: c.len }),
            }
            st.maps.remove(&c.iova.0);
            st.alloc.free(c.iova, c.len as u64 + PAGE_SIZE as u64)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::DmaSpace;
    use std::sync::Arc;

    #[test]
    fn model_access_is_bounded_to_mappings() {
        let m = Arc::new(CheckingMapper::new());
        let space = DmaSpace::new(m.clone());
        let a = space.alloc(8192).unwrap();
        let b = space.alloc(4096).unwrap();
        let ia = a.iova();
        assert_ne!(ia.0, a.virt().0 as u64, "IOVA must not equal the virtual address");
        assert!(ia.0 >= CHECKING_IOVA_BASE && ia.0 <= CHECKING_IOVA_LAST);

        a.mem().write_le32(100, 0xfeed);
        assert_eq!(m.read_le32(Iova(ia.0 + 100)).unwrap(), 0xfeed);
        m.write_le64(Iova(ia.0 + a.len() as u64 - 8), 7).unwrap();
        assert_eq!(a.mem().read_le64(a.len() - 8), 7);

        // One byte past the end of `a` is a guard page, not `b`.
        let end = Iova(ia.0 + a.len() as u64);
        assert_eq!(
            m.read_le32(Iova(end.0 - 2)),
            Err(DmaFault { iova: Iova(end.0 - 2), len: 4, kind: "read" })
        );
        assert!(m.write(end, &[1]).is_err());
        assert!(m.write(Iova(a.virt().0 as u64), &[1]).is_err(), "virtual address taken as IOVA");
        assert_eq!(m.fault_count(), 3);
        assert!(m.is_mapped(b.iova(), 4096));
        assert!(!m.is_mapped(b.iova(), 4097));
        assert_eq!(m.mappings().len(), 2);

        let ib = b.iova();
        assert!(m.read(ib, &mut [0]).is_ok(), "mapped (and now among the recent mappings)");
        drop(b);
        assert!(m.read(ib, &mut [0]).is_err(), "unmapped on drop");
        assert_eq!(m.mappings().len(), 1);
    }

    #[test]
    fn scattered_maps_every_page_apart() {
        let m = Arc::new(CheckingMapper::scattered());
        let space = DmaSpace::new(m.clone());
        let a = space.alloc(3 * PAGE_SIZE).unwrap();
        assert_eq!(m.mappings().len(), 3);
        assert!(a.contiguous_iova(0, PAGE_SIZE).is_some());
        assert!(a.contiguous_iova(0, PAGE_SIZE + 1).is_none(), "pages are apart to the device");
        let (p0, p1) = (a.iova_at(0).unwrap(), a.iova_at(PAGE_SIZE).unwrap());
        assert!(p1.0 > p0.0 + PAGE_SIZE as u64, "a guard page between them");
        a.mem().write_le32(PAGE_SIZE, 9);
        assert_eq!(m.read_le32(p1).unwrap(), 9);
        assert!(m.read(Iova(p0.0 + PAGE_SIZE as u64 - 2), &mut [0; 4]).is_err());
        drop(a);
        assert!(m.mappings().is_empty());
    }

    #[test]
    fn unmap_of_unknown_chunk_fails() {
        let m = CheckingMapper::new();
        let c = MappedChunk { virt: VirtAddr(0x1000), iova: Iova(CHECKING_IOVA_BASE), len: 0x1000 };
        assert!(m.unmap(&[c]).is_err());
        // SAFETY: nothing ever accesses this memory through the mapping (no device, no model
        // access), so the address need not be valid.
        let bad = unsafe { m.map(VirtAddr(0x1001), 0x1000) };
        assert!(matches!(bad, Err(DmaError::Misaligned { .. })));
    }
}
