//! A device model's lock-free view of a [`CheckingMapper`]'s mappings, and the lock that makes
//! it fast: [`ModelLock`].
//!
//! A model's DMA resolves an IOVA and then copies. Something must keep the memory mapped
//! between the two, or an unmap and free on another thread lands the copy in freed memory. A
//! view made by [`CheckingMapper::model_lock`] lives in the model's state behind a
//! [`ModelLock`], and an unmap, after it has removed the mapping and moved the generation, takes
//! every model lock of its mapper once before it returns. So while the thread that holds the
//! lock accesses memory through the view, the mapping it resolved cannot go away: the hot path
//! resolves against its snapshot with no lock of its own (the model takes its lock once per
//! step anyway, a doorbell or a poll), and each step after an unmap sees the new generation
//! (the lock orders it) and takes a new snapshot.
//!
//! Each access checks that the lock is held by the thread making it (one load and a compare:
//! the lock records its holder's token in a word the view shares). A view used any other way
//! (moved out of its state, reached from another thread or after the guard is gone) takes the
//! mapper's own lock for the access instead, which an unmap also takes: slow, never unsound.

use std::cell::{RefCell, UnsafeCell};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use crate::addr::Iova;
use crate::checking::{search_index, CheckingMapper, Mapping, Maps};
use crate::device_memory::{DeviceMemory, DmaFault};
use crate::gate::{thread_token, Gate};
use crate::page_cache::PageCache;

/// A device's view of a [`CheckingMapper`]'s mappings: a snapshot it searches without a lock,
/// taken again whenever the mapper's generation has moved. It lives in a model's state behind
/// a [`ModelLock`]; it is `Send` but not `Sync`.
///
/// It is exactly as strict as the mapper: an unmap bumps the generation and waits for the
/// model's lock before it returns, so no access reaches memory after its unmap returned.
#[derive(Debug)]
pub struct DmaView {
    mapper: Arc<CheckingMapper>,
    snap: RefCell<Snapshot>,
    /// The lock (and its holder's token) of this view's [`ModelLock`]: an unmap waits for it,
    /// and the view keeps it alive.
    gate: Arc<Gate>,
}
#[derive(Debug)]
struct Snapshot {
    maps: Maps,
    generation: u64,
    /// By IOVA page: a copy of the mapping that last held an access there (one load from the
    /// slot to the bounds, where an index into `maps` was two dependent ones). New with every
    /// snapshot, so it never holds a mapping that is gone.
    by_page: PageCache<Mapping>,
}

/// An empty page cache slot: no access falls in it (`len` 0 holds nothing).
const NO_MAPPING: Mapping = Mapping { iova: u64::MAX, virt: 0, len: 0 };

impl Snapshot {
    fn new((maps, generation): (Maps, u64)) -> Snapshot {
        Snapshot { maps, generation, by_page: PageCache::new(NO_MAPPING) }
    }

    /// Where `[iova, iova + len)` is if the page cache's entry for its page holds all of it.
    #[inline(always)]
    fn hit(&self, iova: u64, len: usize) -> Option<usize> {
        self.by_page.get(iova).at(iova, len)
    }

    /// A page cache miss: a binary search, whose answer the cache keeps.
    fn search(&mut self, iova: u64, len: usize) -> Option<usize> {
        let m = self.maps[search_index(&self.maps, iova)?];
        let va = m.at(iova, len)?;
        self.by_page.set(iova, m);
        Some(va)
    }
}

impl DmaView {
    /// The mapper this views.
    pub fn checking_mapper(&self) -> &Arc<CheckingMapper> {
        &self.mapper
    }

    /// The snapshot renewed if the mappings changed, then searched.
    #[cold]
    #[inline(never)]
    fn resolve_slow(&self, iova: u64, len: usize) -> Option<usize> {
        let mut snap = self.snap.borrow_mut();
        if self.mapper.generation() != snap.generation {
            // Keeps the cache's memory: no allocation however often the mappings change.
            (snap.maps, snap.generation) = self.mapper.snapshot();
            snap.by_page.clear();
        }
        if let Some(va) = snap.hit(iova, len) {
            return Some(va);
        }
        snap.search(iova, len)
    }

    /// Inline, the common case: the snapshot is current and its page cache hits. The rest
    /// (a new snapshot, a search) is out of line, so the hit path saves no registers.
    #[inline(always)]
    fn resolve(&self, iova: Iova, len: usize) -> Option<usize> {
        if let Ok(snap) = self.snap.try_borrow() {
            if self.mapper.generation() == snap.generation {
                if let Some(va) = snap.hit(iova.0, len) {
                    return Some(va);
                }
            }
        }
        self.resolve_slow(iova.0, len)
    }
}

// SAFETY: the fast path runs only while this thread holds the view's `ModelLock`, which every
// unmap of the mapper waits for, and `resolve` answers only from live mappings of the current
// snapshot; otherwise the mapper's own implementation (above) does the access.
unsafe impl DeviceMemory for DmaView {
    /// Under its [`ModelLock`], held by this thread, no lock of its own: an unmap waits for that
    /// lock, so the mapping `resolve` found stays while `f` runs. Otherwise through the mapper,
    /// under the mapper's lock.
    #[inline(always)]
    fn with_range<R>(&self, iova: Iova, len: usize, f: impl FnOnce(usize) -> R) -> Option<R> {
        if self.gate.holder.load(Ordering::Relaxed) == thread_token() {
            self.resolve(iova, len).map(f)
        } else {
            self.mapper.with_range(iova, len, f)
        }
    }

    #[cold]
    fn fault(&self, iova: Iova, len: usize, kind: &'static str) -> DmaFault {
        self.mapper.record_fault(iova, len, kind)
    }
}

/// A device model's state (holding its [`DmaView`]) behind the lock every unmap of its mapper
/// waits for. Take it once per step of the model (a doorbell, a poll); the DMA accesses of the
/// step go through the view without a lock of their own.
pub struct ModelLock<T> {
    gate: Arc<Gate>,
    /// Reached only through a [`ModelGuard`], which holds `gate.step`.
    state: UnsafeCell<T>,
}

// SAFETY: the state is reached only under `gate.step` (a mutex), one guard at a time, so the
// lock is exactly as shareable as a `Mutex<T>`: it needs `T: Send`, not `Sync`.
unsafe impl<T: Send> Sync for ModelLock<T> {}
// SAFETY: as above; moving the lock moves the state with it.
unsafe impl<T: Send> Send for ModelLock<T> {}

impl<T> std::fmt::Debug for ModelLock<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelLock").finish_non_exhaustive()
    }
}

impl CheckingMapper {
    /// A model's state behind a [`ModelLock`]: `make` gets the model's [`DmaView`] and builds
    /// the state that keeps it.
    pub fn model_lock<T: Send + 'static>(
        self: &Arc<Self>,
        make: impl FnOnce(DmaView) -> T,
    ) -> ModelLock<T> {
        let gate = Arc::new(Gate::new());
        self.add_model(Arc::downgrade(&gate));
        let view = DmaView {
            mapper: self.clone(),
            snap: RefCell::new(Snapshot::new(self.snapshot())),
            gate: gate.clone(),
        };
        ModelLock { gate, state: UnsafeCell::new(make(view)) }
    }
}

impl<T> ModelLock<T> {
    /// Locks the state for one step of the model (a poisoned lock is taken over: the state is
    /// the model's to check).
    pub fn lock(&self) -> ModelGuard<'_, T> {
        while self.gate.waiters.load(Ordering::Relaxed) != 0 {
            std::thread::yield_now();
        }
        let step = self.gate.step.lock().unwrap_or_else(|p| p.into_inner());
        self.gate.holder.store(thread_token(), Ordering::Relaxed);
        ModelGuard { gate: &self.gate, state: &self.state, _step: step }
    }
}

/// A locked model state; see [`ModelLock`]. Not `Send`: the lock is this thread's.
pub struct ModelGuard<'a, T> {
    gate: &'a Gate,
    state: &'a UnsafeCell<T>,
    /// Released after `drop` has cleared the holder (fields drop after the body).
    _step: MutexGuard<'a, ()>,
}

impl<T> std::ops::Deref for ModelGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard holds `gate.step`, and only guards reach the state.
        unsafe { &*self.state.get() }
    }
}

impl<T> std::ops::DerefMut for ModelGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only borrow through the guard.
        unsafe { &mut *self.state.get() }
    }
}

impl<T> Drop for ModelGuard<'_, T> {
    fn drop(&mut self) {
        // Before the mutex is released (the field drops after this).
        self.gate.holder.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::DmaSpace;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn an_empty_page_cache_slot_holds_nothing() {
        // Not even a zero-length access at the top IOVA.
        let snap = Snapshot::new((Arc::new(Vec::new()), 0));
        assert_eq!(snap.hit(u64::MAX, 0), None);
        assert_eq!(snap.hit(0, 0), None);
    }

    /// A device thread writes a buffer again and again while this thread unmaps and frees it:
    /// every write either lands while the buffer is mapped or faults; none reaches the freed
    /// memory (which is unmapped from the process: a stray copy would crash, or under valgrind
    /// be reported) or memory allocated in its place.
    fn race_unmap_against_device_writes(through_view: bool) {
        let m = Arc::new(CheckingMapper::new());
        let space = DmaSpace::new(m.clone());
        let lock = Arc::new(m.model_lock(|v| v));
        let other = DmaSpace::new(Arc::new(CheckingMapper::new()));
        // Under valgrind (which runs one thread at a time) the unmap can wait long for the
        // writer to let go of the mapper's lock: fewer rounds there, the same race each round.
        let rounds = if std::env::var_os("MFIO_VALGRIND").is_some() { 8 } else { 200 };
        for _ in 0..rounds {
            let buf = space.alloc(8192).unwrap();
            let iova = buf.iova();
            let started = Arc::new(AtomicBool::new(false));
            let device = {
                let (m, lock, started) = (m.clone(), lock.clone(), started.clone());
                std::thread::spawn(move || {
                    let mut writes = 0u64;
                    loop {
                        let r = if through_view {
                            lock.lock().write(iova, &[0xa5; 8192])
                        } else {
                            m.write(iova, &[0xa5; 8192])
                        };
                        if r.is_err() {
                            return writes;
                        }
                        writes += 1;
                        started.store(true, Ordering::Release);
                    }
                })
            };
            while !started.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            drop(buf);
            // Memory the process may place where the freed buffer was, mapped elsewhere (in
            // another space, so not at the IOVA the device keeps writing).
            let fresh = other.alloc(8192).unwrap();
            let writes = device.join().unwrap();
            assert!(writes > 0);
            let mut b = [0u8; 8192];
            fresh.mem().copy_to_slice(0, &mut b);
            assert!(b.iter().all(|&x| x == 0), "the device wrote into a buffer it was never given");
        }
    }

    #[test]
    fn an_unmap_waits_for_a_model_access_in_progress() {
        race_unmap_against_device_writes(true);
    }

    #[test]
    fn an_unmap_waits_for_an_access_through_the_mapper() {
        race_unmap_against_device_writes(false);
    }

    #[test]
    fn a_leaked_guard_keeps_unmaps_waiting_even_after_its_lock_is_dropped() {
        let m = Arc::new(CheckingMapper::new());
        let space = DmaSpace::new(m.clone());
        let lock = m.model_lock(Some);
        let view = lock.lock().take().unwrap();
        let buf = space.alloc(4096).unwrap();
        let iova = buf.iova();
        std::mem::forget(lock.lock()); // this thread "holds" the step for ever
        drop(lock);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(buf); // unmaps, then waits for the leaked step: for ever
            let _ = tx.send(());
        });
        let waited = rx.recv_timeout(std::time::Duration::from_millis(300));
        assert!(waited.is_err(), "the unmap returned (and freed) under a step that never ended");
        // The view still works, and sees the mapping gone: nothing is written.
        assert!(view.write_le32(iova, 7).is_err());
    }

    #[test]
    fn a_view_used_without_its_lock_is_still_bounded_by_the_mapper() {
        let m = Arc::new(CheckingMapper::new());
        let space = DmaSpace::new(m.clone());
        let lock = m.model_lock(Some);
        // Take the view out of the state: from here on no lock of it is held by this thread.
        let view = lock.lock().take().unwrap();
        let a = space.alloc(4096).unwrap();
        view.write_le32(a.iova(), 7).unwrap();
        assert_eq!(a.mem().read_le32(0), 7);
        let ia = a.iova();
        drop(a); // does not wait for the view (no step is running), and may not need to
        assert!(view.read_le32(ia).is_err(), "the unmap is seen at once");
    }
}
