//! Safe access to memory the device shares: volatile loads and stores at checked offsets.
//!
//! Memory a device can write at any moment must never be seen through a Rust reference
//! (`&[u8]`, `&mut u32`): the compiler may assume it does not change. [`DmaSlice`] is a pointer
//! and a length; every access is a volatile or atomic operation on a raw pointer, bounds
//! checked against the length, so drivers above this crate need no `unsafe`.

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};

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

// SAFETY: a DmaSlice only permits volatile/atomic accesses through raw pointers; the memory is
// shared with a device anyway, so sharing it between threads adds no new kind of race (the
// same rules as `&[AtomicU8]`).
unsafe impl Send for DmaSlice<'_> {}
// SAFETY: see `Send` above.
unsafe impl Sync for DmaSlice<'_> {}

impl core::fmt::Debug for DmaSlice<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DmaSlice").field("ptr", &self.ptr).field("len", &self.len).finish()
    }
}

macro_rules! volatile_rw {
    ($read:ident, $write:ident, $t:ty) => {
        #[doc = concat!("Volatile read of a `", stringify!($t), "` (native endian) at `offset`.")]
        ///
        /// # Panics
        /// If the value does not lie within the slice or `offset` is not naturally aligned.
        #[inline]
        pub fn $read(&self, offset: usize) -> $t {
            let p = self.elem_ptr::<$t>(offset);
            // SAFETY: `elem_ptr` checked that the value lies within the slice and is aligned;
            // the owner keeps the memory mapped for 'a.
            unsafe { p.read_volatile() }
        }

        #[doc = concat!("Volatile write of a `", stringify!($t), "` (native endian) at `offset`.")]
        ///
        /// # Panics
        /// If the value does not lie within the slice or `offset` is not naturally aligned.
        #[inline]
        pub fn $write(&self, offset: usize, value: $t) {
            let p = self.elem_ptr::<$t>(offset);
            // SAFETY: as for the read: in bounds, aligned, and mapped for 'a.
            unsafe { p.write_volatile(value) }
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

    volatile_rw!(read_u8, write_u8, u8);
    volatile_rw!(read_u16, write_u16, u16);
    volatile_rw!(read_u32, write_u32, u32);
    volatile_rw!(read_u64, write_u64, u64);

    /// Stores `v` as consecutive little-endian u64s at `offset` (8-byte aligned): one bounds
    /// check and `N` volatile 64-bit stores, for a fixed-size entry built in registers (an
    /// NVMe command).
    ///
    /// # Panics
    /// If out of bounds or not 8-byte aligned.
    #[inline]
    pub fn write_le64s<const N: usize>(&self, offset: usize, v: [u64; N]) {
        let p = self.elem_ptr::<[u64; N]>(offset).cast::<u64>();
        for (i, q) in v.into_iter().enumerate() {
            // SAFETY: `elem_ptr` checked all `N` u64s in bounds and the first (so every one)
            // 8-byte aligned.
            unsafe { p.add(i).write_volatile(q.to_le()) };
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
        // only ever accessed through volatile/atomic operations, never through references.
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

    /// Copy `src` into the slice at `offset`.
    ///
    /// # Panics
    /// If `[offset, offset + src.len())` is not within the slice.
    #[inline]
    pub fn copy_from_slice(&self, offset: usize, src: &[u8]) {
        self.check(offset, src.len());
        // SAFETY: destination checked in bounds; `src` is a Rust slice, so it cannot overlap
        // memory nobody may reference. A plain (non-volatile) copy is what every userspace
        // driver does for bulk data: the device does not touch a buffer it does not own.
        unsafe {
            core::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len())
        }
    }

    /// Copy from the slice at `offset` into `dst`.
    ///
    /// # Panics
    /// If `[offset, offset + dst.len())` is not within the slice.
    #[inline]
    pub fn copy_to_slice(&self, offset: usize, dst: &mut [u8]) {
        self.check(offset, dst.len());
        // SAFETY: source checked in bounds; `dst` is an exclusive Rust slice elsewhere.
        unsafe {
            core::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            )
        }
    }

    /// Set `len` bytes at `offset` to `byte`.
    ///
    /// # Panics
    /// If the range is not within the slice.
    #[inline]
    pub fn fill(&self, offset: usize, len: usize, byte: u8) {
        self.check(offset, len);
        // SAFETY: checked in bounds.
        unsafe { core::ptr::write_bytes(self.ptr.as_ptr().add(offset), byte, len) }
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
