//! BAR access: volatile loads and stores on an mmap of the BAR, or pread/pwrite on the device
//! fd where VFIO does not allow the BAR to be mapped.

use std::fs::File;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// How one BAR is reached.
pub(crate) enum BarAccess {
    /// Mapped into our address space.
    Mapped {
        /// Start of the mapping.
        ptr: NonNull<u8>,
        /// Its length (the BAR size).
        len: u64,
    },
    /// Through the device fd at `offset` (the region offset VFIO gives).
    Rw {
        /// Region offset in the device fd.
        offset: u64,
        /// BAR size.
        len: u64,
    },
}

// SAFETY: the mapping is device MMIO, reached only through volatile accesses of one register
// each; concurrent accesses from several threads are what hardware registers take (each queue's
// doorbell is its own register), so the mapping may be shared and sent like an `&AtomicU32`.
unsafe impl Send for BarAccess {}
// SAFETY: see Send.
unsafe impl Sync for BarAccess {}

macro_rules! volatile_access {
    ($read:ident, $write:ident, $t:ty) => {
        #[doc = concat!("Volatile `", stringify!($t), "` read at `offset`; all ones if the device is gone.")]
        #[inline]
        #[track_caller]
        pub(crate) fn $read(&self, dev: &File, offset: u64) -> $t {
            self.check(offset, core::mem::size_of::<$t>() as u64);
            match self {
                // SAFETY: checked in bounds and naturally aligned (the mapping is page aligned);
                // the mapping lives as long as `self`. One access of the full width, as device
                // registers require.
                BarAccess::Mapped { ptr, .. } => unsafe {
                    <$t>::from_le(ptr.as_ptr().add(offset as usize).cast::<$t>().read_volatile())
                },
                BarAccess::Rw { offset: base, .. } => {
                    let mut b = [0u8; core::mem::size_of::<$t>()];
                    match dev.read_exact_at(&mut b, base + offset) {
                        Ok(()) => <$t>::from_le_bytes(b),
                        // The fd was released (it is /dev/null now): the device is gone.
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => <$t>::MAX,
                        Err(e) => {
                            tracing::error!("BAR read at {offset:#x} failed: {e}");
                            <$t>::MAX
                        }
                    }
                }
            }
        }

        #[doc = concat!("Volatile `", stringify!($t), "` write at `offset`.")]
        #[inline]
        #[track_caller]
        pub(crate) fn $write(&self, dev: &File, offset: u64, v: $t) {
            self.check(offset, core::mem::size_of::<$t>() as u64);
            match self {
                // SAFETY: as in the read.
                BarAccess::Mapped { ptr, .. } => unsafe {
                    ptr.as_ptr().add(offset as usize).cast::<$t>().write_volatile(v.to_le())
                },
                BarAccess::Rw { offset: base, .. } => {
                    if let Err(e) = dev.write_all_at(&v.to_le_bytes(), base + offset) {
                        tracing::error!("BAR write at {offset:#x} failed: {e}");
                    }
                }
            }
        }
    };
}

impl BarAccess {
    /// Map `len` bytes of the device fd at `offset`, falling back to pread/pwrite.
    pub(crate) fn new(dev: &File, offset: u64, len: u64, mmappable: bool) -> BarAccess {
        if mmappable {
            if let Some(l) = usize::try_from(len).ok().and_then(NonZeroUsize::new) {
                // SAFETY: a fresh shared mapping of the device region at an address the kernel
                // picks; it aliases no Rust object, and is only accessed with volatile ops.
                let r = unsafe {
                    mmap(
                        None,
                        l,
                        ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                        MapFlags::MAP_SHARED,
                        dev,
                        offset as i64,
                    )
                };
                match r {
                    Ok(p) => return BarAccess::Mapped { ptr: p.cast(), len },
                    Err(e) => tracing::warn!("mmap of BAR region failed ({e}); using pread/pwrite"),
                }
            }
        }
        BarAccess::Rw { offset, len }
    }

    /// `(address, length)` of the mapping, for a mapped BAR.
    pub(crate) fn mapping(&self) -> Option<(usize, usize)> {
        match self {
            BarAccess::Mapped { ptr, len } => Some((ptr.as_ptr() as usize, *len as usize)),
            BarAccess::Rw { .. } => None,
        }
    }

    pub(crate) fn len(&self) -> u64 {
        match self {
            BarAccess::Mapped { len, .. } | BarAccess::Rw { len, .. } => *len,
        }
    }

    #[inline]
    #[track_caller]
    fn check(&self, offset: u64, width: u64) {
        let len = self.len();
        assert!(
            offset % width == 0 && offset.checked_add(width).is_some_and(|e| e <= len),
            "MMIO access of {width} bytes at {offset:#x} is outside a {len:#x}-byte BAR or misaligned"
        );
    }

    volatile_access!(read8, write8, u8);
    volatile_access!(read16, write16, u16);
    volatile_access!(read32, write32, u32);
    volatile_access!(read64, write64, u64);
}

impl Drop for BarAccess {
    fn drop(&mut self) {
        if let BarAccess::Mapped { ptr, len } = self {
            // SAFETY: our own mapping; no access can outlive `self`.
            if let Err(e) = unsafe { munmap(ptr.cast(), *len as usize) } {
                tracing::error!("munmap of BAR failed: {e}");
            }
        }
    }
}
