//! A device's DMA space: its mapper, and the table of everything mapped through it.

use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::addr::{align_down, align_up, Iova, VirtAddr, PAGE_SIZE};
use crate::error::{DmaError, TranslateError};
use crate::mapper::{DmaMapper, MappedChunk};
use crate::mem::DmaSlice;
use crate::page_cache::PageCache;
use crate::region::{DmaRegion, PageKind, PagePolicy};
use crate::translate::{IovaSegment, Segments, TranslationTable};

/// The memory one device (or one VFIO container) can reach: a mapper plus the translation table
/// of every region allocated or registered through it.
///
/// Shared (`Arc`) by everything that maps memory for the device; queues translate through their
/// own [`Translator`], which reads a snapshot of the table without locking.
pub struct DmaSpace {
    mapper: Arc<dyn DmaMapper>,
    table: RwLock<Arc<TranslationTable>>,
    /// Bumped on every change of `table`, so translators know to take a new snapshot.
    generation: AtomicU64,
}

impl std::fmt::Debug for DmaSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaSpace")
            .field("mapper", &self.mapper.name())
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish()
    }
}

impl DmaSpace {
    /// A space whose memory is mapped with `mapper`.
    pub fn new(mapper: Arc<dyn DmaMapper>) -> Arc<DmaSpace> {
        Arc::new(DmaSpace {
            mapper,
            table: RwLock::new(Arc::new(TranslationTable::new())),
            generation: AtomicU64::new(0),
        })
    }

    /// The mapper.
    pub fn mapper(&self) -> &Arc<dyn DmaMapper> {
        &self.mapper
    }

    /// Allocate at least `len` bytes of pinned memory (huge pages when possible) and map it.
    pub fn alloc(self: &Arc<Self>, len: usize) -> Result<DmaBuffer, DmaError> {
        self.alloc_with(len, PagePolicy::Auto)
    }

    /// Like [`alloc`](Self::alloc), choosing the pages.
    pub fn alloc_with(
        self: &Arc<Self>,
        len: usize,
        policy: PagePolicy,
    ) -> Result<DmaBuffer, DmaError> {
        let region = DmaRegion::with_policy(len, policy)?;
        // SAFETY: the region is our own mapping; DmaBuffer unmaps it from the device (in Drop)
        // before the region itself is unmapped, and never hands out references to it.
        let chunks = unsafe { self.mapper.map(region.virt(), region.len()) }?;
        if let Err(e) = self.insert(&chunks) {
            let _ = self.mapper.unmap(&chunks);
            return Err(e);
        }
        Ok(DmaBuffer { region: ManuallyDrop::new(region), chunks, space: self.clone() })
    }

    /// Register memory the caller owns (an engine's buffers) so I/O on it is zero copy. The
    /// whole pages holding `[ptr, ptr + len)` are mapped; they must not overlap another
    /// registration or allocation.
    ///
    /// # Safety
    /// The memory must stay allocated (and not be moved, remapped or freed) until the returned
    /// [`Registration`] is dropped: the device may write it at any time until then, including
    /// the rest of the first and last pages.
    pub unsafe fn register(
        self: &Arc<Self>,
        ptr: *const u8,
        len: usize,
    ) -> Result<Registration, DmaError> {
        let start = align_down(ptr as u64, PAGE_SIZE as u64);
        let end = (ptr as u64)
            .checked_add(len as u64)
            .and_then(|e| align_up(e, PAGE_SIZE as u64))
            .ok_or(DmaError::InvalidLength(len))?;
        if len == 0 {
            return Err(DmaError::InvalidLength(len));
        }
        let virt = VirtAddr(start as usize);
        let rlen = (end - start) as usize;
        // Refuse overlaps before touching the mapper.
        if self.snapshot().segments(virt, rlen).any(|s| s.is_ok()) {
            return Err(DmaError::Overlap { virt, len: rlen });
        }
        // SAFETY: forwarded from this function's contract.
        let chunks = unsafe { self.mapper.map(virt, rlen) }?;
        if let Err(e) = self.insert(&chunks) {
            let _ = self.mapper.unmap(&chunks);
            return Err(e);
        }
        Ok(Registration { virt, len: rlen, chunks, space: self.clone() })
    }

    /// A translator for one queue (or thread).
    pub fn translator(self: &Arc<Self>) -> Translator {
        let (snapshot, generation) = self.snapshot_with_generation();
        Translator { space: self.clone(), snapshot, generation, by_page: PageCache::new(NO_CHUNK) }
    }

    /// The current translation table.
    pub fn snapshot(&self) -> Arc<TranslationTable> {
        self.snapshot_with_generation().0
    }

    fn snapshot_with_generation(&self) -> (Arc<TranslationTable>, u64) {
        let t = self.table.read().unwrap_or_else(|p| p.into_inner());
        (t.clone(), self.generation.load(Ordering::Acquire))
    }

    fn insert(&self, chunks: &[MappedChunk]) -> Result<(), DmaError> {
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        let mut new = TranslationTable::clone(&t);
        new.insert(chunks)?;
        *t = Arc::new(new);
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    fn remove(&self, chunks: &[MappedChunk]) {
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        let mut new = TranslationTable::clone(&t);
        new.remove(chunks);
        *t = Arc::new(new);
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// Translates virtual ranges to IOVA segments for one queue: the hot path.
///
/// Holds a snapshot of the space's table and checks one atomic counter per call to see whether
/// it must take a new one; otherwise no lock, no system call, no allocation.
pub struct Translator {
    space: Arc<DmaSpace>,
    snapshot: Arc<TranslationTable>,
    generation: u64,
    /// By virtual page: the chunk that last held a buffer starting there (a queue reuses its
    /// buffers) and its index in the table, emptied with every new snapshot.
    by_page: PageCache<(MappedChunk, usize)>,
}

/// An empty page cache slot: a chunk of no bytes holds no address.
const NO_CHUNK: (MappedChunk, usize) =
    (MappedChunk { virt: VirtAddr(0), iova: Iova(0), len: 0 }, usize::MAX);

impl std::fmt::Debug for Translator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Translator")
            .field("generation", &self.generation)
            .field("chunks", &self.snapshot.chunks().len())
            .finish()
    }
}

impl Translator {
    #[inline]
    fn refresh(&mut self) {
        if self.space.generation.load(Ordering::Acquire) != self.generation {
            let (s, g) = self.space.snapshot_with_generation();
            self.snapshot = s;
            self.generation = g;
            self.by_page.clear();
        }
    }

    /// The IOVA segments of `len` bytes at `ptr`; an `Err` item marks the first unmapped byte.
    #[inline]
    pub fn segments(&mut self, ptr: *const u8, len: usize) -> Segments<'_> {
        self.refresh();
        let hint = self.chunk_of(ptr as usize).map(|(_, i)| i);
        self.snapshot.segments_from(VirtAddr::from_ptr(ptr), len, hint)
    }

    /// The IOVA of `len` bytes at `ptr` when one mapped chunk holds them all, as it does a
    /// buffer inside one DMA allocation (under an IOMMU); `None` otherwise, and then
    /// [`Self::segments`] tells the pieces or the unmapped byte. The fast path for small I/O.
    #[inline]
    pub fn contiguous(&mut self, ptr: *const u8, len: usize) -> Option<Iova> {
        self.refresh();
        let va = ptr as usize;
        let (c, _) = self.chunk_of(va)?;
        let end = va.checked_add(len)?;
        (end <= c.virt_end()).then(|| Iova(c.iova.0 + (va - c.virt.0) as u64))
    }

    /// The chunk holding `va` and its index: the page cache, else a binary search (cached).
    #[inline]
    fn chunk_of(&mut self, va: usize) -> Option<(MappedChunk, usize)> {
        let hit = self.by_page.get(va as u64);
        if hit.0.contains(va) {
            return Some(hit);
        }
        let i = self.snapshot.find(va)?;
        let found = (self.snapshot.chunks()[i], i);
        self.by_page.set(va as u64, found);
        Some(found)
    }

    /// Translate `len` bytes at `ptr` into `out`, returning the number of segments written.
    #[inline]
    pub fn translate_into(
        &mut self,
        ptr: *const u8,
        len: usize,
        out: &mut [IovaSegment],
    ) -> Result<usize, TranslateError> {
        self.refresh();
        self.snapshot.translate_into(VirtAddr::from_ptr(ptr), len, out)
    }

    /// Whether all of `len` bytes at `ptr` are DMA-mapped (zero copy possible).
    #[inline]
    pub fn is_mapped(&mut self, ptr: *const u8, len: usize) -> bool {
        self.refresh();
        self.snapshot.contains(VirtAddr::from_ptr(ptr), len)
    }
}

/// Pinned memory mapped for a device; unmapped and freed on drop.
pub struct DmaBuffer {
    region: ManuallyDrop<DmaRegion>,
    chunks: Vec<MappedChunk>,
    space: Arc<DmaSpace>,
}

impl std::fmt::Debug for DmaBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBuffer")
            .field("region", &*self.region)
            .field("chunks", &self.chunks.len())
            .field("iova", &self.iova())
            .finish()
    }
}

impl AsMut<[u8]> for DmaBuffer {
    fn as_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl DmaBuffer {
    /// Length in bytes (rounded up to the page size used).
    pub fn len(&self) -> usize {
        self.region.len()
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        self.region.is_empty()
    }

    /// Which pages back it.
    pub fn page_kind(&self) -> PageKind {
        self.region.page_kind()
    }

    /// Virtual address of the first byte.
    pub fn virt(&self) -> VirtAddr {
        self.region.virt()
    }

    /// Raw pointer to the first byte (to build views for I/O; never make references from it).
    pub fn as_ptr(&self) -> *mut u8 {
        self.region.as_ptr()
    }

    /// Safe (atomic) access to the memory.
    pub fn mem(&self) -> DmaSlice<'_> {
        self.region.mem()
    }

    /// The bytes, for a caller that holds the buffer: to read a socket straight into it, or
    /// send what a device read into it, without a copy through [`mem`](Self::mem).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the region is `len` initialized (zero-filled at mapping), writable bytes that
        // live as long as `self`. `&mut self` makes this the only way to them for the borrow:
        // no `DmaSlice` of this buffer can exist (each borrows `self`), and no packet holds
        // it (a packet owns its buffer by value, so a buffer the caller can borrow mutably is
        // lent to no device). A device reaches the buffer only through commands naming it,
        // and a driver completes (gives back) a buffer only once its device can no longer
        // reach it: the invariant every packet relies on (a reset frees nothing the
        // controller might still write; the models refuse DMA once bus mastering is off).
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr(), self.len()) }
    }

    /// IOVA of the first byte.
    pub fn iova(&self) -> Iova {
        self.chunks[0].iova
    }

    /// IOVA of the byte at `offset`, or `None` past the end.
    pub fn iova_at(&self, offset: usize) -> Option<Iova> {
        let va = self.virt().0.checked_add(offset)?;
        let c = self.chunks.iter().find(|c| va >= c.virt.0 && va < c.virt_end())?;
        Some(Iova(c.iova.0 + (va - c.virt.0) as u64))
    }

    /// IOVA of `[offset, offset + len)` if the device sees it as one contiguous range (what a
    /// queue ring needs); `None` if it is split (no-IOMMU on 4 KiB pages) or out of bounds.
    pub fn contiguous_iova(&self, offset: usize, len: usize) -> Option<Iova> {
        let end = offset.checked_add(len)?;
        if len == 0 || end > self.len() {
            return None;
        }
        let (start, stop) = (self.virt().0 + offset, self.virt().0 + end);
        let mut first = None;
        let mut expect: Option<u64> = None;
        for c in self.chunks.iter().filter(|c| c.virt_end() > start && c.virt.0 < stop) {
            let from = start.max(c.virt.0);
            let iova = c.iova.0 + (from - c.virt.0) as u64;
            if expect.is_some_and(|e| e != iova) {
                return None;
            }
            first.get_or_insert(Iova(iova));
            expect = Some(c.iova.0 + c.len as u64);
        }
        first
    }

    /// The mapped chunks, in ascending virtual order.
    pub fn chunks(&self) -> &[MappedChunk] {
        &self.chunks
    }

    /// The space it is mapped in.
    pub fn space(&self) -> &Arc<DmaSpace> {
        &self.space
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        self.space.remove(&self.chunks);
        match self.space.mapper.unmap(&self.chunks) {
            // SAFETY: `region` is never used again; this is its only drop.
            Ok(()) => unsafe { ManuallyDrop::drop(&mut self.region) },
            // The device may still reach this memory: leak it rather than let it be reused.
            Err(e) => tracing::error!("unmapping a DMA buffer failed, leaking it: {e}"),
        }
    }
}

/// Caller-owned memory registered for DMA; unregistered (and unmapped) on drop.
pub struct Registration {
    virt: VirtAddr,
    len: usize,
    chunks: Vec<MappedChunk>,
    space: Arc<DmaSpace>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("virt", &self.virt)
            .field("len", &self.len)
            .field("chunks", &self.chunks.len())
            .finish()
    }
}

impl Registration {
    /// The page-aligned range registered.
    pub fn range(&self) -> (VirtAddr, usize) {
        (self.virt, self.len)
    }

    /// The mapped chunks.
    pub fn chunks(&self) -> &[MappedChunk] {
        &self.chunks
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.space.remove(&self.chunks);
        if let Err(e) = self.space.mapper.unmap(&self.chunks) {
            tracing::error!("unmapping a registered buffer failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checking::CheckingMapper;
    use crate::device_memory::DeviceMemory;
    use std::sync::Mutex;

    /// Maps each page to its own IOVA, pages in reverse order: what no-IOMMU on 4 KiB pages
    /// can look like.
    struct ScatterMapper(Mutex<u64>);
    impl DmaMapper for ScatterMapper {
        fn name(&self) -> &'static str {
            "scatter"
        }
        unsafe fn map(&self, virt: VirtAddr, len: usize) -> Result<Vec<MappedChunk>, DmaError> {
            crate::mapper::check_page_range(virt, len)?;
            let mut next = self.0.lock().unwrap();
            let pages = len / PAGE_SIZE;
            let base = *next;
            *next += (pages as u64 + 1) * PAGE_SIZE as u64;
            Ok((0..pages)
                .map(|p| MappedChunk {
                    virt: VirtAddr(virt.0 + p * PAGE_SIZE),
                    iova: Iova(base + ((pages - 1 - p) * PAGE_SIZE) as u64),
                    len: PAGE_SIZE,
                })
                .collect())
        }
        fn unmap(&self, _: &[MappedChunk]) -> Result<(), DmaError> {
            Ok(())
        }
    }

    #[test]
    fn a_held_buffer_is_plain_bytes_the_device_sees() {
        let m = Arc::new(CheckingMapper::new());
        let space = DmaSpace::new(m.clone());
        let mut b = space.alloc_with(2 * PAGE_SIZE, PagePolicy::SmallOnly).unwrap();
        let s = b.as_mut_slice();
        assert_eq!(s.len(), 2 * PAGE_SIZE);
        assert!(s.iter().all(|&x| x == 0), "zero-filled");
        s[PAGE_SIZE - 2..PAGE_SIZE + 2].copy_from_slice(b"span");
        // What the CPU wrote is what the device reads, and the other way round.
        let mut got = [0u8; 4];
        m.read(Iova(b.iova().0 + PAGE_SIZE as u64 - 2), &mut got).unwrap();
        assert_eq!(&got, b"span");
        m.write(b.iova(), b"dev!").unwrap();
        assert_eq!(&b.as_mut_slice()[..4], b"dev!");
        assert_eq!(b.mem().read_u8(1), b'e');
    }

    #[test]
    fn registered_memory_translates_and_unregisters() {
        let m = Arc::new(CheckingMapper::new());
        let space = DmaSpace::new(m.clone());
        let mut t = space.translator();
        let mut user = vec![0u8; 3 * PAGE_SIZE];
        let p = user.as_mut_ptr();
        assert!(!t.is_mapped(p, 16));
        // SAFETY: `user` outlives the registration (dropped below before `user`).
        let reg = unsafe { space.register(p, user.len()) }.unwrap();
        let (rv, rl) = reg.range();
        assert_eq!(rv.0 % PAGE_SIZE, 0);
        assert!(rv.0 <= p as usize && rv.0 + rl >= p as usize + user.len());
        // The translator notices the new registration without being told.
        let mut out = [IovaSegment::default(); 4];
        let n = t.translate_into(p, user.len(), &mut out).unwrap();
        assert_eq!(n, 1);
        m.write(out[0].iova, b"dma!").unwrap();
        assert_eq!(&user[..4], b"dma!");
        // Registering the same pages twice is refused.
        // SAFETY: as above; it fails without mapping anything.
        let again = unsafe { space.register(p, 1) };
        assert!(matches!(again, Err(DmaError::Overlap { .. })));
        drop(reg);
        assert!(!t.is_mapped(p, 1));
        assert!(m.mappings().is_empty());
    }

    #[test]
    fn contiguous_translation_is_exact_and_follows_unmaps() {
        let m = Arc::new(CheckingMapper::new());
        let space = DmaSpace::new(m.clone());
        let mut t = space.translator();
        let a = space.alloc(2 * PAGE_SIZE).unwrap();
        let b = space.alloc(PAGE_SIZE).unwrap();
        let pa = a.mem().as_ptr();
        assert_eq!(t.contiguous(pa, 2 * PAGE_SIZE), Some(a.iova()));
        // SAFETY: in bounds of `a` (pointer arithmetic only, nothing is read).
        let inside = unsafe { pa.add(100) };
        assert_eq!(t.contiguous(inside, 8), Some(Iova(a.iova().0 + 100)));
        assert_eq!(t.contiguous(inside, 2 * PAGE_SIZE), None, "runs past the buffer");
        // The cache is keyed by page: a buffer on another page is looked up anew.
        assert_eq!(t.contiguous(b.mem().as_ptr(), PAGE_SIZE), Some(b.iova()));
        let user = [0u8; 64];
        assert_eq!(t.contiguous(user.as_ptr(), 8), None, "not DMA memory");
        drop(a);
        assert_eq!(t.contiguous(pa, 8), None, "unmapped since the last call");

        // Scattered pages: contiguous only within a page.
        let s = DmaSpace::new(Arc::new(CheckingMapper::scattered()));
        let mut t = s.translator();
        let c = s.alloc(2 * PAGE_SIZE).unwrap();
        assert_eq!(t.contiguous(c.mem().as_ptr(), PAGE_SIZE), Some(c.iova()));
        assert_eq!(t.contiguous(c.mem().as_ptr(), PAGE_SIZE + 1), None);
        assert_eq!(t.segments(c.mem().as_ptr(), 2 * PAGE_SIZE).count(), 2);
    }

    #[test]
    fn zero_length_registration_is_refused() {
        let space = DmaSpace::new(Arc::new(CheckingMapper::new()));
        let v = [0u8; 8];
        // SAFETY: fails before mapping.
        assert!(unsafe { space.register(v.as_ptr(), 0) }.is_err());
    }

    #[test]
    fn scattered_buffer_reports_contiguity_honestly() {
        let space = DmaSpace::new(Arc::new(ScatterMapper(Mutex::new(0x1000_0000))));
        let b = space.alloc_with(3 * PAGE_SIZE, PagePolicy::SmallOnly).unwrap();
        assert_eq!(b.chunks().len(), 3);
        assert_eq!(b.iova(), Iova(0x1000_0000 + 2 * PAGE_SIZE as u64));
        assert_eq!(b.iova_at(PAGE_SIZE + 5), Some(Iova(0x1000_0000 + PAGE_SIZE as u64 + 5)));
        assert!(b.contiguous_iova(0, PAGE_SIZE).is_some());
        assert!(b.contiguous_iova(100, PAGE_SIZE - 100).is_some());
        assert!(b.contiguous_iova(100, PAGE_SIZE).is_none());
        assert!(b.contiguous_iova(0, 4 * PAGE_SIZE).is_none());
        assert!(b.contiguous_iova(0, 0).is_none());
        let mut t = space.translator();
        let segs: Vec<_> = t.segments(b.as_ptr(), 3 * PAGE_SIZE).collect::<Result<_, _>>().unwrap();
        assert_eq!(segs.len(), 3);
        assert!(segs.iter().all(|s| s.len == PAGE_SIZE));
        let mut small = [IovaSegment::default(); 2];
        assert_eq!(
            t.translate_into(b.as_ptr(), 3 * PAGE_SIZE, &mut small),
            Err(TranslateError::TooManySegments { max: 2 })
        );
        // A range that starts in the buffer and runs past its end.
        // SAFETY of the pointer arithmetic is not needed: translation never dereferences.
        let tail = b.as_ptr().wrapping_add(3 * PAGE_SIZE - 8);
        assert_eq!(t.segments(tail, 16).last(), Some(Err(TranslateError::NotMapped { offset: 8 })));
    }
}
