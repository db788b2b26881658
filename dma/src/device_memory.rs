//! Device-side access to guest memory by IOVA, bounded to what the driver mapped: the trait
//! every in-process model does its DMA through, implemented by the checking mapper (a lock per
//! access) and by [`DmaView`](crate::DmaView) (a lock-free snapshot of the mappings).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::addr::Iova;
use crate::copy::{load_bytes, store_bytes};

/// A little-endian u64 at `va`, loaded as one 8-byte atomic load when aligned, so the compiler
/// cannot merge neighbouring loads into wider ones (a 16-byte load over two 8-byte stores the
/// driver just made is not forwarded from the store buffer: the CPU stalls until they drain),
/// and byte by byte (atomically too) when not.
///
/// # Safety
/// `[va, va + 8)` must be readable memory that is only accessed atomically while shared.
#[inline(always)]
unsafe fn load_le64(va: usize) -> u64 {
    if va % 8 == 0 {
        // SAFETY: the caller's; aligned, so an AtomicU64 may stand for it.
        u64::from_le(unsafe { AtomicU64::from_ptr(va as *mut u64) }.load(Ordering::Relaxed))
    } else {
        let mut b = [0u8; 8];
        // SAFETY: the caller's.
        unsafe { load_bytes(va as *const u8, &mut b) };
        u64::from_le_bytes(b)
    }
}

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

/// Device-side access to memory by IOVA, bounded to what the driver mapped: a model's DMA.
///
/// An access that any byte of falls outside every mapping fails with a [`DmaFault`] (counted
/// by the mapper) and touches nothing. An access that is inside holds its mapping while it
/// copies: an unmap on another thread waits for it (see [`with_range`](Self::with_range)), so
/// it never reaches memory that was unmapped and freed in between. Every access is atomic, a
/// word at a time: the driver's threads may touch the same memory through a
/// [`DmaSlice`](crate::DmaSlice), and only atomic accesses on both sides make that defined.
///
/// # Safety
/// An implementation's `with_range` may pass `f` only the virtual address of
/// `[iova, iova + len)` in a live mapping of its mapper, and must keep that memory mapped and
/// valid until `f` returns: the provided methods read and write through it.
pub unsafe trait DeviceMemory {
    /// Runs `f` with the virtual address of `[iova, iova + len)` if one live mapping holds all
    /// of it, keeping that mapping from being unmapped until `f` returns.
    fn with_range<R>(&self, iova: Iova, len: usize, f: impl FnOnce(usize) -> R) -> Option<R>;

    /// Counts and logs an access this memory rejected (the mapper behind it keeps the count),
    /// and returns it as the error.
    fn fault(&self, iova: Iova, len: usize, kind: &'static str) -> DmaFault;

    /// Whether `[iova, iova + len)` lies within one mapping (now: an unmap may follow).
    #[inline]
    fn is_mapped(&self, iova: Iova, len: usize) -> bool {
        self.with_range(iova, len, |_| ()).is_some()
    }

    /// Device-side read: copy `buf.len()` bytes from `iova` into `buf`.
    #[inline]
    fn read(&self, iova: Iova, buf: &mut [u8]) -> Result<(), DmaFault> {
        let len = buf.len();
        self.with_range(iova, len, |va| {
            // SAFETY: `[va, va + len)` lies inside a mapping that `with_range` keeps mapped
            // (the mapper's contract, `map` being unsafe, keeps mapped memory valid), and the
            // model is the device, the one party allowed to touch it behind the driver's back;
            // shared memory is only ever accessed atomically.
            unsafe { load_bytes(va as *const u8, buf) }
        })
        .ok_or_else(|| self.fault(iova, len, "read"))
    }

    /// Device-side read of `N` little-endian u64s at `iova` (an entry the driver stored as
    /// u64s: loads of the same width as its stores, which a CPU forwards from its store
    /// buffer when driver and model share a thread; wider loads would stall).
    // Inline: the words come back in registers (through memory, a caller's wider loads of
    // them would stall on store forwarding).
    #[inline(always)]
    fn read_le64s<const N: usize>(&self, iova: Iova) -> Result<[u64; N], DmaFault> {
        let mut out = [0u64; N];
        self.read_le64_slice(iova, &mut out)?;
        Ok(out)
    }

    /// Device-side read of an entry of `N` little-endian u64s that its writer publishes by
    /// its last u64 (a descriptor's flags live there): the last is read first, then, after an
    /// acquire fence, the others, so a reader that sees it published sees the rest as written.
    /// Loads of the width of the writer's stores (see [`read_le64s`](Self::read_le64s)).
    #[inline(always)]
    fn read_entry_le64s<const N: usize>(&self, iova: Iova) -> Result<[u64; N], DmaFault> {
        let len = N * 8;
        self.with_range(iova, len, |va| {
            let mut out = [0u64; N];
            let at = |i: usize| va + 8 * i;
            if N > 0 {
                // SAFETY: as in `read`, for the `len` bytes `with_range` holds.
                out[N - 1] = unsafe { load_le64(at(N - 1)) };
                core::sync::atomic::fence(Ordering::Acquire);
            }
            for (i, q) in out.iter_mut().enumerate().take(N.saturating_sub(1)) {
                // SAFETY: as above.
                *q = unsafe { load_le64(at(i)) };
            }
            out
        })
        .ok_or_else(|| self.fault(iova, len, "read"))
    }

    /// Device-side read of `out.len()` little-endian u64s at `iova` (a small table the driver
    /// stored as u64s), for one bounds check.
    #[inline(always)]
    fn read_le64_slice(&self, iova: Iova, out: &mut [u64]) -> Result<(), DmaFault> {
        let len = out.len() * 8;
        self.with_range(iova, len, |va| {
            for (i, q) in out.iter_mut().enumerate() {
                // SAFETY: as in `read`, for the `len` bytes `with_range` holds.
                *q = unsafe { load_le64(va + 8 * i) };
            }
        })
        .ok_or_else(|| self.fault(iova, len, "read"))
    }

    /// Device-side release store of a little-endian u64 at `iova` (8-byte aligned): an entry's
    /// last word published whole, after everything the device wrote before it. A misaligned
    /// `iova` is a fault (kind "write (misaligned)"), as the store could not be atomic.
    #[inline(always)]
    fn store_release_le64(&self, iova: Iova, v: u64) -> Result<(), DmaFault> {
        let stored = self.with_range(iova, 8, |va| {
            if va % 8 != 0 || iova.0 % 8 != 0 {
                return false;
            }
            // SAFETY: as in `read`, for the 8 bytes `with_range` holds, aligned (checked): an
            // AtomicU64 has u64's layout, and shared memory is only accessed atomically.
            unsafe { AtomicU64::from_ptr(va as *mut u64) }.store(v.to_le(), Ordering::Release);
            true
        });
        match stored {
            Some(true) => Ok(()),
            Some(false) => Err(self.fault(iova, 8, "write (misaligned)")),
            None => Err(self.fault(iova, 8, "write")),
        }
    }

    /// Device-side write: copy `buf` to `iova`.
    #[inline]
    fn write(&self, iova: Iova, buf: &[u8]) -> Result<(), DmaFault> {
        self.with_range(iova, buf.len(), |va| {
            // SAFETY: as in `read`.
            unsafe { store_bytes(va as *mut u8, buf) }
        })
        .ok_or_else(|| self.fault(iova, buf.len(), "write"))
    }

    /// Device-side write of `body` then `last` right after it, for one bounds check, with a
    /// release fence between them: how a device publishes an entry whose last bytes say it
    /// is valid (an NVMe CQE's phase tag, a virtqueue descriptor's flags), so a driver that
    /// sees `last` also sees `body`.
    #[inline]
    fn write_then(&self, iova: Iova, body: &[u8], last: &[u8]) -> Result<(), DmaFault> {
        let len = body.len() + last.len();
        self.with_range(iova, len, |va| {
            // SAFETY: as in `read`, for the `len` bytes `with_range` holds.
            unsafe {
                store_bytes(va as *mut u8, body);
                core::sync::atomic::fence(Ordering::Release);
                store_bytes((va + body.len()) as *mut u8, last);
            }
        })
        .ok_or_else(|| self.fault(iova, len, "write"))
    }

    /// Device-side little-endian u16 read.
    #[inline]
    fn read_le16(&self, iova: Iova) -> Result<u16, DmaFault> {
        let mut b = [0; 2];
        self.read(iova, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Device-side little-endian u32 read.
    #[inline]
    fn read_le32(&self, iova: Iova) -> Result<u32, DmaFault> {
        let mut b = [0; 4];
        self.read(iova, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Device-side little-endian u64 read.
    #[inline]
    fn read_le64(&self, iova: Iova) -> Result<u64, DmaFault> {
        let mut b = [0; 8];
        self.read(iova, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Device-side little-endian u16 write.
    #[inline]
    fn write_le16(&self, iova: Iova, v: u16) -> Result<(), DmaFault> {
        self.write(iova, &v.to_le_bytes())
    }

    /// Device-side little-endian u32 write.
    #[inline]
    fn write_le32(&self, iova: Iova, v: u32) -> Result<(), DmaFault> {
        self.write(iova, &v.to_le_bytes())
    }

    /// Device-side little-endian u64 write.
    #[inline]
    fn write_le64(&self, iova: Iova, v: u64) -> Result<(), DmaFault> {
        self.write(iova, &v.to_le_bytes())
    }
}
