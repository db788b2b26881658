//! A mapper for tests and in-process device models: records which IOVA ranges are mapped and
//! lets a model reach memory only through them.
//!
//! Device access goes through [`DeviceMemory`]: the mapper itself (a lock per access) or a
//! [`DmaView`](crate::DmaView), a device's own snapshot of the mappings that it re-reads only
//! when the mapper's generation moves (every map and unmap bumps it), so the hot path takes no
//! lock (see `view.rs` for what keeps it sound).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::addr::{Iova, VirtAddr, PAGE_SIZE};
use crate::device_memory::{DeviceMemory, DmaFault};
use crate::error::DmaError;
use crate::gate::Gate;
use crate::iova::IovaAllocator;
use crate::mapper::{check_page_range, DmaMapper, MappedChunk};

/// First IOVA the checking mapper hands out: 64 GiB, far from where Linux puts user mappings
/// (0x55.. for the heap, 0x7f.. for mmap), so a driver that hands a device a virtual address
/// instead of an IOVA is caught at once.
pub const CHECKING_IOVA_BASE: u64 = 0x10_0000_0000;
/// Last IOVA: the top of a 39-bit space, like QEMU's intel-iommu.
pub const CHECKING_IOVA_LAST: u64 = (1 << 39) - 1;

/// One mapping: `len` bytes at `iova` are the memory at virtual address `virt`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mapping {
    pub(crate) iova: u64,
    pub(crate) virt: usize,
    pub(crate) len: usize,
}

impl Mapping {
    /// The virtual address of `[iova, iova + len)` if this mapping holds all of it (an empty
    /// mapping, as in an empty page cache slot, holds nothing). The address is computed only
    /// once the range is known to be inside: far above the mapping it would overflow.
    #[inline(always)]
    pub(crate) fn at(&self, iova: u64, len: usize) -> Option<usize> {
        let off = iova.checked_sub(self.iova)?;
        (off.checked_add(len as u64)? <= self.len as u64 && self.len != 0)
            .then(|| self.virt + off as usize)
    }
}

/// The mappings, sorted by IOVA (disjoint: each has its own IOVA range).
pub(crate) type Maps = Arc<Vec<Mapping>>;

/// The index of the mapping that would hold `iova` (the last starting at or below it).
pub(crate) fn search_index(maps: &[Mapping], iova: u64) -> Option<usize> {
    maps.partition_point(|m| m.iova <= iova).checked_sub(1)
}

/// The virtual address of `[iova, iova + len)` if one mapping holds all of it: a binary search.
fn find(maps: &[Mapping], iova: u64, len: usize) -> Option<usize> {
    maps[search_index(maps, iova)?].at(iova, len)
}

#[derive(Debug)]
struct State {
    alloc: IovaAllocator,
    /// Replaced (copy on write) on every change, so views keep reading their snapshot.
    maps: Maps,
    /// Map every page at its own IOVA (see [`CheckingMapper::scattered`]).
    scatter: bool,
}

/// Records every mapping and gives device models bounds-checked access by IOVA.
///
/// Each mapping gets its own IOVA range followed by an unmapped guard page, so an access that
/// runs off the end of one buffer faults instead of landing in the next.
#[derive(Debug)]
pub struct CheckingMapper {
    state: Mutex<State>,
    /// Bumped, under the lock, on every map and unmap: a [`DmaView`](crate::DmaView) whose
    /// snapshot is older takes a new one before its next access.
    generation: AtomicU64,
    faults: AtomicU64,
    /// The models' locks ([`model_lock`](Self::model_lock)): an unmap waits for each.
    models: Mutex<Vec<Weak<Gate>>>,
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
                maps: Arc::default(),
                scatter: false,
            }),
            generation: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            models: Mutex::new(Vec::new()),
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

    /// The current mappings and the generation they belong to (read together, under the lock).
    pub(crate) fn snapshot(&self) -> (Maps, u64) {
        let st = self.state();
        (st.maps.clone(), self.generation.load(Ordering::Relaxed))
    }

    /// The generation now.
    #[inline(always)]
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn models(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Gate>>> {
        self.models.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a model's lock for unmaps to wait on (and forgets the ones gone).
    pub(crate) fn add_model(&self, model: Weak<Gate>) {
        let mut models = self.models();
        models.retain(|m| m.strong_count() > 0);
        models.push(model);
    }

    /// Waits until no model is in a step that began before the generation moved: after this,
    /// no access can reach a mapping that was removed before the call.
    fn wait_for_models(&self) {
        let live: Vec<_> = self.models().iter().filter_map(Weak::upgrade).collect();
        for m in live {
            m.wait();
        }
    }

    /// Counts and logs a rejected access.
    #[cold]
    pub(crate) fn record_fault(&self, iova: Iova, len: usize, kind: &'static str) -> DmaFault {
        let fault = DmaFault { iova, len, kind };
        self.faults.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("{fault}");
        fault
    }

    /// The mapped ranges `(iova, len)`, in IOVA order.
    pub fn mappings(&self) -> Vec<(Iova, usize)> {
        self.state().maps.iter().map(|m| (Iova(m.iova), m.len)).collect()
    }

    /// How many device accesses were rejected so far (a test asserts it stays 0, or not).
    pub fn fault_count(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }
}

/// Through the mapper itself: a lock and a binary search per access. The lock is held while
/// `f` runs, so an unmap (which takes it) waits for the access.
// SAFETY: `find` returns an address only inside a live mapping, and the state lock, held until
// `f` returns, is what `unmap` takes to remove it.
unsafe impl DeviceMemory for CheckingMapper {
    fn with_range<R>(&self, iova: Iova, len: usize, f: impl FnOnce(usize) -> R) -> Option<R> {
        let st = self.state();
        let va = find(&st.maps, iova.0, len)?;
        let r = f(va);
        drop(st);
        Some(r)
    }

    #[cold]
    fn fault(&self, iova: Iova, len: usize, kind: &'static str) -> DmaFault {
        self.record_fault(iova, len, kind)
    }
}

impl DmaMapper for CheckingMapper {
    fn name(&self) -> &'static str {
        "checking"
    }

    unsafe fn map(&self, virt: VirtAddr, len: usize) -> Result<Vec<MappedChunk>, DmaError> {
        check_page_range(virt, len)?;
        let mut guard = self.state();
        let st = &mut *guard;
        let piece = if st.scatter { PAGE_SIZE } else { len };
        let mut chunks = Vec::with_capacity(len / piece);
        for off in (0..len).step_by(piece) {
            // The guard page after each mapping stays allocated but unmapped.
            match st.alloc.alloc(piece as u64 + PAGE_SIZE as u64, PAGE_SIZE as u64) {
                Ok(iova) => {
                    chunks.push(MappedChunk { virt: VirtAddr(virt.0 + off), iova, len: piece })
                }
                Err(e) => {
                    for c in chunks.drain(..) {
                        let _ = st.alloc.free(c.iova, c.len as u64 + PAGE_SIZE as u64);
                    }
                    return Err(e);
                }
            }
        }
        let maps = Arc::make_mut(&mut st.maps);
        for c in &chunks {
            let at = maps.partition_point(|m| m.iova < c.iova.0);
            maps.insert(at, Mapping { iova: c.iova.0, virt: c.virt.0, len: c.len });
        }
        self.generation.fetch_add(1, Ordering::Release);
        Ok(chunks)
    }

    fn unmap(&self, chunks: &[MappedChunk]) -> Result<(), DmaError> {
        let mut guard = self.state();
        let st = &mut *guard;
        // All or nothing: check every chunk before removing any.
        let index = |maps: &[Mapping], c: &MappedChunk| {
            let i = maps.partition_point(|m| m.iova < c.iova.0);
            maps.get(i)
                .is_some_and(|m| m.iova == c.iova.0 && m.virt == c.virt.0 && m.len == c.len)
                .then_some(i)
        };
        // A chunk named twice is refused too (the second would be "not mapped" half way).
        let twice = |i: usize, c: &MappedChunk| chunks[..i].iter().any(|d| d.iova == c.iova);
        if let Some((_, c)) =
            chunks.iter().enumerate().find(|&(i, c)| index(&st.maps, c).is_none() || twice(i, c))
        {
            return Err(DmaError::NotMapped { iova: c.iova, len: c.len });
        }
        let maps = Arc::make_mut(&mut st.maps);
        let mut freed = Ok(());
        for c in chunks {
            if let Some(i) = index(maps, c) {
                maps.remove(i);
            }
            if let Err(e) = st.alloc.free(c.iova, c.len as u64 + PAGE_SIZE as u64) {
                freed = freed.and(Err(e));
            }
        }
        // The mappings changed whatever the allocator said: bump and wait in every case.
        self.generation.fetch_add(1, Ordering::Release);
        drop(guard);
        // Before returning, so no access reaches this memory once the caller frees it: one in
        // progress under a model's lock ends first, and every later step sees the new
        // generation (through that lock).
        self.wait_for_models();
        freed
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
    fn a_view_follows_maps_and_unmaps() {
        let m = Arc::new(CheckingMapper::new());
        let space = DmaSpace::new(m.clone());
        let view = m.model_lock(|v| v);
        let a = space.alloc(4096).unwrap();
        a.mem().write_le32(8, 0xabcd);
        assert_eq!(
            view.lock().read_le32(Iova(a.iova().0 + 8)).unwrap(),
            0xabcd,
            "a mapping made after the view"
        );
        let b = space.alloc(8192).unwrap();
        view.lock().write_le64(Iova(b.iova().0 + 8184), 5).unwrap();
        assert_eq!(b.mem().read_le64(8184), 5);
        assert!(view.lock().write(Iova(b.iova().0 + 8190), &[0; 4]).is_err(), "runs past the end");
        let ia = a.iova();
        drop(a);
        assert!(!view.lock().is_mapped(ia, 4), "the view saw the unmap");
        assert!(view.lock().read(ia, &mut [0]).is_err());
        assert!(view.lock().is_mapped(b.iova(), 8192));
        assert_eq!(m.fault_count(), 2, "faults through a view count on the mapper");
    }

    #[test]
    fn a_views_page_cache_answers_only_for_the_mapping_it_holds() {
        // Two mappings whose pages share a slot (SLOTS pages apart): each access finds its
        // own after the other evicted it, and a hit never reaches past a mapping's end.
        let m = Arc::new(CheckingMapper::new());
        let space = DmaSpace::new(m.clone());
        let view = m.model_lock(|v| v);
        let a = space.alloc(4096).unwrap();
        let mut spacer = Vec::new();
        let b = loop {
            let b = space.alloc(4096).unwrap();
            if (b.iova().0 - a.iova().0) % (crate::page_cache::SLOTS * PAGE_SIZE) as u64 == 0 {
                break b;
            }
            spacer.push(b);
        };
        a.mem().write_le64(0, 0xa);
        b.mem().write_le64(0, 0xb);
        for _ in 0..2 {
            assert_eq!(view.lock().read_le64(a.iova()).unwrap(), 0xa);
            assert_eq!(view.lock().read_le64(b.iova()).unwrap(), 0xb);
        }
        assert!(
            view.lock().read_le64(Iova(a.iova().0 + 4092)).is_err(),
            "past a's end, after a hit"
        );
        // Far above every mapping, in a's slot: a fault, not an overflow of a's address.
        let span = (crate::page_cache::SLOTS * PAGE_SIZE) as u64;
        let top = u64::MAX - 2 * span;
        let far = Iova(top - (top - a.iova().0) % span);
        assert!(view.lock().read_le64(far).is_err());
        assert!(m.read_le64(far).is_err(), "the mapper's own search too");
        assert!(view.lock().is_mapped(Iova(b.iova().0 + 4095), 1));
        assert!(!view.lock().is_mapped(Iova(b.iova().0 + 4095), 2));
    }

    #[test]
    fn word_accesses_are_bounded_and_ordered() {
        let m = Arc::new(CheckingMapper::new());
        let space = DmaSpace::new(m.clone());
        let view = m.model_lock(|v| v);
        let a = space.alloc(4096).unwrap();
        let at = |off: u64| Iova(a.iova().0 + off);
        a.mem().write_le64s(16, [1, 2, 3]);
        assert_eq!(view.lock().read_entry_le64s::<3>(at(16)).unwrap(), [1, 2, 3]);
        let mut t = [0u64; 2];
        view.lock().read_le64_slice(at(24), &mut t).unwrap();
        assert_eq!(t, [2, 3]);
        view.lock().store_release_le64(at(4088), 0xfeed_0000_0000_0001).unwrap();
        assert_eq!(a.mem().load_acquire_u64(4088), u64::to_le(0xfeed_0000_0000_0001));
        // Past the end, and a store that could not be atomic: faults, nothing written.
        assert!(view.lock().read_entry_le64s::<2>(at(4088)).is_err());
        assert!(view.lock().read_le64_slice(at(4080), &mut [0; 3]).is_err());
        assert!(view.lock().store_release_le64(at(4092), 1).is_err());
        let e = view.lock().store_release_le64(at(4), 1).unwrap_err();
        assert_eq!(e.kind, "write (misaligned)");
        assert_eq!(a.mem().read_le64(0), 0, "the misaligned store wrote nothing");
        assert_eq!(m.fault_count(), 4);
    }

    #[test]
    fn unmap_is_all_or_nothing() {
        let m = CheckingMapper::new();
        // SAFETY: the model never touches this memory (no device access in this test).
        let good = unsafe { m.map(VirtAddr(0x10000), 0x1000) }.unwrap();
        let bogus = MappedChunk { virt: VirtAddr(0x20000), iova: Iova(0x1234000), len: 0x1000 };
        assert!(m.unmap(&[good[0], bogus]).is_err());
        assert_eq!(m.mappings().len(), 1, "the good chunk is still mapped");
        assert!(m.unmap(&[good[0], good[0]]).is_err(), "a chunk named twice");
        assert_eq!(m.mappings().len(), 1, "still mapped");
        m.unmap(&good).unwrap();
        assert!(m.mappings().is_empty());
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
