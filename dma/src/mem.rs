//! Safe access to memory the device shares: atomic loads and stores at checked offsets.
//!
//! Memory a device can write at any moment must never be seen through a Rust reference
//! (`&[u8]`, `&mut u32`): the compiler may assume it does not change. [`DmaSlice`] is a pointer
//! and a length; every access is an atomic operation on a raw pointer, bounds checked against
//! the length, so drivers above this crate need no `unsafe`.
//!
//! Atomic, not volatile: a `DmaSlice` is `Copy`, `Send` and `Sync`, so two threads may touch
//! the same bytes through it, and only atomic accesses make that defined (two volatile stores
//! to one byte from two threads are a data race). What is still the caller's to keep: accesses
//! that race on the same bytes use the same size (a word with a word, a copy with a copy of the
//! same range): Rust's memory model does not define racing atomics of different sizes that
//! overlap. Every driver/device handshake here does (a CQE's phase word, a ring index). Bulk
//! copies are atomic too, in the widest aligned pieces (`copy.rs`). On x86-64 and AArch64 a
//! relaxed atomic load or store of an aligned word is the same instruction as a plain one, and the compiler neither merges nor
//! removes atomic accesses, which is what polling device memory needs.

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::copy::{fill_bytes, load_bytes, store_bytes};

/// A window on device-shared memory: a pointer, a length, and the lifetime of the owner.
///
/// All accessors check bounds and alignment and panic on a violation, like slice indexing:
/// offsets come from the driver's own layout, so a bad one is a bug in the driver, never
/// something the device or a user chose.
#[derive(Clone, Copy)]
pub struct DmaSlice<'a> {
    ptr: NonNull<u8>,
    len: usize,
    _owner: PhantomData<&'a ()>,
}

// SAFETY: a DmaSlice only permits atomic accesses through raw pointers (word accessors and the
// copies in aligned atomic pieces alike), so two threads racing on the same bytes through it
// never make a non-atomic access race. One rule remains (see the module docs): racing accesses
// to the same bytes must be of the same size, which Rust's memory model leaves undefined
// otherwise even though the hardware is coherent.
unsafe impl Send for DmaSlice<'_> {}
// SAFETY: see `Send` above.
unsafe impl Sync for DmaSlice<'_> {}

impl core::fmt::Debug for DmaSlice<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DmaSlice").field("ptr", &self.ptr).field("len", &self.len).finish()
    }
}

macro_rules! atomic_rw {
    ($read:ident, $write:ident, $t:ty, $atomic:ty) => {
        #[doc = concat!("Relaxed atomic read of a `", stringify!($t), "` (native endian) at `offset`.")]
        ///
        /// # Panics
        /// If the value does not lie within the slice or `offset` is not naturally aligned.
        #[inline]
        pub fn $read(&self, offset: usize) -> $t {
            let p = self.elem_ptr::<$t>(offset);
            // SAFETY: `elem_ptr` checked that the value lies within the slice and is aligned;
            // the owner keeps the memory mapped for 'a, and it is only ever accessed
            // atomically (never through a reference), so the atomic type's layout may alias it.
            unsafe { <$atomic>::from_ptr(p) }.load(Ordering::Relaxed)
        }

        #[doc = concat!("Relaxed atomic write of a `", stringify!($t), "` (native endian) at `offset`.")]
        ///
        /// # Panics
        /// If the value does not lie within the slice or `offset` is not naturally aligned.
        #[inline]
        pub fn $write(&self, offset: usize, value: $t) {
            let p = self.elem_ptr::<$t>(offset);
            // SAFETY: as for the read: in bounds, aligned, mapped for 'a, only accessed
            // atomically.
            unsafe { <$atomic>::from_ptr(p) }.store(value, Ordering::Relaxed)
        }
    };
}

/// The panics of an access outside a slice or misaligned, out of line: on the hot path an
/// access is a compare and a branch.
#[cold]
#[inline(never)]
#[track_caller]
fn out_of_bounds(offset: usize, len: usize, slice_len: usize) -> ! {
    panic!(
        "DMA access of {len} bytes at offset {offset:#x} is outside a {slice_len:#x}-byte buffer"
    )
}

#[cold]
#[inline(never)]
#[track_caller]
fn misaligned(offset: usize, align: usize) -> ! {
    panic!("DMA access at offset {offset:#x} is not aligned to {align} bytes")
}

impl<'a> DmaSlice<'a> {
    /// A window on `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `[ptr, ptr + len)` must stay mapped, readable and writable for `'a`, and nothing may hold
    /// a Rust reference to it during `'a`.
    #[inline]
    pub unsafe fn from_raw(ptr: NonNull<u8>, len: usize) -> DmaSlice<'a> {
        DmaSlice { ptr, len, _owner: PhantomData }
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the slice is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first byte, for translation and logs. Dereferencing it is the caller's business.
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The sub-window `[offset, offset + len)`, or `None` if it does not fit.
    #[inline]
    pub fn sub(&self, offset: usize, len: usize) -> Option<DmaSlice<'a>> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: offset <= self.len, so the pointer stays within (or one past) the window.
        let p = unsafe { self.ptr.as_ptr().add(offset) };
        Some(DmaSlice {
            // SAFETY: derived from a non-null pointer by an in-bounds offset.
            ptr: unsafe { NonNull::new_unchecked(p) },
            len,
            _owner: PhantomData,
        })
    }

    #[inline(always)]
    #[track_caller]
    fn check(&self, offset: usize, len: usize) {
        if offset > self.len || self.len - offset < len {
            out_of_bounds(offset, len, self.len);
        }
    }

    #[inline(always)]
    #[track_caller]
    fn elem_ptr<T>(&self, offset: usize) -> *mut T {
        self.check(offset, core::mem::size_of::<T>());
        // SAFETY: checked in bounds just above.
        let p = unsafe { self.ptr.as_ptr().add(offset) };
        if (p as usize) % core::mem::align_of::<T>() != 0 {
            misaligned(offset, core::mem::align_of::<T>());
        }
        p.cast()
    }

    atomic_rw!(read_u8, write_u8, u8, AtomicU8);
    atomic_rw!(read_u16, write_u16, u16, AtomicU16);
    atomic_rw!(read_u32, write_u32, u32, AtomicU32);
    atomic_rw!(read_u64, write_u64, u64, AtomicU64);

    /// Stores `v` as consecutive little-endian u64s at `offset` (8-byte aligned): one bounds
    /// check and `N` relaxed atomic 64-bit stores, for a fixed-size entry built in registers
    /// (an NVMe command).
    ///
    /// # Panics
    /// If out of bounds or not 8-byte aligned.
    #[inline]
    pub fn write_le64s<const N: usize>(&self, offset: usize, v: [u64; N]) {
        let p = self.elem_ptr::<[u64; N]>(offset).cast::<u64>();
        for (i, q) in v.into_iter().enumerate() {
            // SAFETY: `elem_ptr` checked all `N` u64s in bounds and the first (so every one)
            // 8-byte aligned; the memory is only accessed atomically.
            unsafe { AtomicU64::from_ptr(p.add(i)) }.store(q.to_le(), Ordering::Relaxed);
        }
    }

    /// Little-endian u16 at `offset` (device structures are little endian).
    #[inline]
    pub fn read_le16(&self, offset: usize) -> u16 {
        u16::from_le(self.read_u16(offset))
    }
    /// Little-endian u32 at `offset`.
    #[inline]
    pub fn read_le32(&self, offset: usize) -> u32 {
        u32::from_le(self.read_u32(offset))
    }
    /// Little-endian u64 at `offset`.
    #[inline]
    pub fn read_le64(&self, offset: usize) -> u64 {
        u64::from_le(self.read_u64(offset))
    }
    /// Store `v` little endian at `offset`.
    #[inline]
    pub fn write_le16(&self, offset: usize, v: u16) {
        self.write_u16(offset, v.to_le())
    }
    /// Store `v` little endian at `offset`.
    #[inline]
    pub fn write_le32(&self, offset: usize, v: u32) {
        self.write_u32(offset, v.to_le())
    }
    /// Store `v` little endian at `offset`.
    #[inline]
    pub fn write_le64(&self, offset: usize, v: u64) {
        self.write_u64(offset, v.to_le())
    }

    /// Acquire load of a u32 (native endian): completion polling. Loads of whatever the device
    /// wrote before this value (the rest of a CQE, a used-ring entry) cannot move before it.
    ///
    /// # Panics
    /// If out of bounds or not 4-byte aligned.
    #[inline]
    pub fn load_acquire_u32(&self, offset: usize) -> u32 {
        let p = self.elem_ptr::<u32>(offset);
        // SAFETY: in bounds and aligned (checked); AtomicU32 has u32's layout; the memory is
        // only ever accessed through atomic operations, never through references.
        unsafe { AtomicU32::from_ptr(p) }.load(Ordering::Acquire)
    }

    /// Acquire load of a u16 (native endian): virtio used-ring index polling.
    ///
    /// # Panics
    /// If out of bounds or not 2-byte aligned.
    #[inline]
    pub fn load_acquire_u16(&self, offset: usize) -> u16 {
        let p = self.elem_ptr::<u16>(offset);
        // SAFETY: as in load_acquire_u32.
        unsafe { AtomicU16::from_ptr(p) }.load(Ordering::Acquire)
    }

    /// Release store of a u16: publish a virtio available index after the ring entries.
    ///
    /// # Panics
    /// If out of bounds or not 2-byte aligned.
    #[inline]
    pub fn store_release_u16(&self, offset: usize, v: u16) {
        let p = self.elem_ptr::<u16>(offset);
        // SAFETY: as in load_acquire_u32.
        unsafe { AtomicU16::from_ptr(p) }.store(v, Ordering::Release)
    }

    /// Release store of a u32.
    ///
    /// # Panics
    /// If out of bounds or not 4-byte aligned.
    #[inline]
    pub fn store_release_u32(&self, offset: usize, v: u32) {
        let p = self.elem_ptr::<u32>(offset);
        // SAFETY: as in load_acquire_u32.
        unsafe { AtomicU32::from_ptr(p) }.store(v, Ordering::Release)
    }

    /// Release store of a u64 (native endian): an entry's last word, published whole after
    /// the rest of it (a packed virtqueue descriptor's length, ID and flags).
    ///
    /// # Panics
    /// If out of bounds or not 8-byte aligned.
    #[inline]
    pub fn store_release_u64(&self, offset: usize, v: u64) {
        let p = self.elem_ptr::<u64>(offset);
        // SAFETY: as in load_acquire_u32.
        unsafe { AtomicU64::from_ptr(p) }.store(v, Ordering::Release)
    }

    /// Acquire load of a u64.
    ///
    /// # Panics
    /// If out of bounds or not 8-byte aligned.
    #[inline]
    pub fn load_acquire_u64(&self, offset: usize) -> u64 {
        let p = self.elem_ptr::<u64>(offset);
        // SAFETY: as in load_acquire_u32.
        unsafe { AtomicU64::from_ptr(p) }.load(Ordering::Acquire)
    }

    /// Copy `src` into the slice at `offset`, a word at a time with atomic stores.
    ///
    /// # Panics
    /// If `[offset, offset + src.len())` is not within the slice.
    #[inline]
    pub fn copy_from_slice(&self, offset: usize, src: &[u8]) {
        self.check(offset, src.len());
        // SAFETY: destination checked in bounds, mapped for 'a, only accessed atomically;
        // `src` is a Rust slice, so it cannot overlap memory nobody may reference.
        unsafe { store_bytes(self.ptr.as_ptr().add(offset), src) }
    }

    /// Copy from the slice at `offset` into `dst`, a word at a time with atomic loads.
    ///
    /// # Panics
    /// If `[offset, offset + dst.len())` is not within the slice.
    #[inline]
    pub fn copy_to_slice(&self, offset: usize, dst: &mut [u8]) {
        self.check(offset, dst.len());
        // SAFETY: source checked in bounds, mapped for 'a, only accessed atomically; `dst` is
        // an exclusive Rust slice elsewhere.
        unsafe { load_bytes(self.ptr.as_ptr().add(offset), dst) }
    }

    /// Set `len` bytes at `offset` to `byte`, a word at a time with atomic stores.
    ///
    /// # Panics
    /// If the range is not within the slice.
    #[inline]
    pub fn fill(&self, offset: usize, len: usize, byte: u8) {
        self.check(offset, len);
        // SAFETY: checked in bounds, mapped for 'a, only accessed atomically.
        unsafe { fill_bytes(self.ptr.as_ptr().add(offset), len, byte) }
    }

    /// Zero the whole slice.
    #[inline]
    pub fn zero(&self) {
        self.fill(0, self.len, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_slice(f: impl FnOnce(DmaSlice<'_>)) {
        let mut backing = vec![0u64; 8];
        let p = NonNull::new(backing.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `backing` outlives the call and is not referenced during it.
        f(unsafe { DmaSlice::from_raw(p, 64) });
        drop(backing);
    }

    #[test]
    fn rw_round_trip() {
        with_slice(|s| {
            s.write_u32(4, 0xdead_beef);
            assert_eq!(s.read_u32(4), 0xdead_beef);
            s.write_le64(8, 0x0102_0304_0506_0708);
            assert_eq!(s.read_u8(8), 0x08);
            assert_eq!(s.read_le64(8), 0x0102_0304_0506_0708);
            s.write_le16(16, 0xabcd);
            assert_eq!(s.load_acquire_u16(16), u16::from_le(0xabcd));
            s.store_release_u32(20, 7);
            assert_eq!(s.load_acquire_u32(20), 7);
            s.store_release_u64(40, 0x1122_3344_5566_7788);
            assert_eq!(s.load_acquire_u64(40), 0x1122_3344_5566_7788);
            s.copy_from_slice(30, b"hello");
            let mut out = [0u8; 5];
            s.copy_to_slice(30, &mut out);
            assert_eq!(&out, b"hello");
            s.fill(30, 2, 0xff);
            assert_eq!(s.read_u8(31), 0xff);
            assert_eq!(s.read_u8(32), b'l');
            let sub = s.sub(60, 4).unwrap();
            sub.write_u32(0, 9);
            assert_eq!(s.read_u32(60), 9);
            assert!(s.sub(61, 4).is_none());
            assert!(s.sub(usize::MAX, 2).is_none());
            s.zero();
            assert_eq!(s.read_u64(56), 0);
            s.write_le64s(16, [1, 0x0203_0405_0607_0809]);
            assert_eq!((s.read_le64(16), s.read_u8(24)), (1, 0x09));
        });
    }

    #[test]
    fn word_copies_round_trip_at_every_alignment() {
        with_slice(|s| {
            let src: Vec<u8> = (1..=61).collect();
            for off in 0..3 {
                for len in [0, 1, 7, 8, 9, 17, 61 - off] {
                    s.zero();
                    s.copy_from_slice(off, &src[..len]);
                    let mut out = vec![0u8; 64];
                    s.copy_to_slice(0, &mut out);
                    assert_eq!(&out[off..off + len], &src[..len], "off {off} len {len}");
                    assert!(out[..off].iter().chain(&out[off + len..]).all(|&b| b == 0));
                    s.fill(off, len, 0xee);
                    s.copy_to_slice(0, &mut out);
                    assert!(out[off..off + len].iter().all(|&b| b == 0xee));
                    assert!(out[..off].iter().chain(&out[off + len..]).all(|&b| b == 0));
                }
            }
        });
    }

    /// `DmaSlice` is `Sync`: two threads writing and reading the same words is defined, and an
    /// aligned word is never seen half written, through the word accessors or the copies.
    #[test]
    fn threads_sharing_a_slice_never_see_a_torn_word() {
        let mut backing = vec![0u64; 64];
        let p = NonNull::new(backing.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `backing` outlives the scope below and is not referenced during it.
        let s = unsafe { DmaSlice::from_raw(p, 512) };
        std::thread::scope(|t| {
            t.spawn(|| {
                for i in 0..20_000u32 {
                    let b = if i % 2 == 0 { 0x00 } else { 0xff };
                    s.copy_from_slice(0, &[b; 512]);
                    s.write_u64(8 * (i as usize % 64), u64::from_ne_bytes([b; 8]));
                }
            });
            for _ in 0..20_000 {
                let mut out = [0u8; 512];
                s.copy_to_slice(0, &mut out);
                for w in out.chunks_exact(8) {
                    assert!(w.iter().all(|&b| b == w[0]), "a torn word: {w:?}");
                }
                let v = s.read_u64(8 * 3);
                assert!(v == 0 || v == u64::MAX, "a torn word: {v:#x}");
            }
        });
        drop(backing);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn qwords_out_of_bounds_panic() {
        with_slice(|s| s.write_le64s(48, [0u64; 3]));
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn an_offset_past_the_end_panics_without_overflow() {
        with_slice(|s| {
            s.read_u8(usize::MAX);
        });
    }

    #[test]
    #[should_panic(expected = "not aligned")]
    fn qwords_misaligned_panic() {
        with_slice(|s| s.write_le64s(4, [0u64; 2]));
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn out_of_bounds_panics() {
        with_slice(|s| {
            s.read_u32(62);
        });
    }

    #[test]
    #[should_panic(expected = "not aligned")]
    fn misaligned_panics() {
        with_slice(|s| {
            s.read_u32(2);
        });
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn copy_out_of_bounds_panics() {
        with_slice(|s| s.copy_from_slice(60, &[0; 5]));
    }
}
