//! Bulk copies to and from memory a device (or another thread) may touch at the same time:
//! relaxed atomic accesses, each the widest naturally aligned one that fits, never a plain
//! `memcpy` (see `mem.rs` for why atomic and not volatile).

use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

/// The width of the widest naturally aligned access at address `at` that fits in `left` bytes
/// (8, 4, 2 or 1).
#[inline(always)]
fn piece(at: usize, left: usize) -> usize {
    let align = 1usize << at.trailing_zeros().min(3);
    let mut w = align.min(8);
    while w > left {
        w /= 2;
    }
    w
}

/// Stores `src` at `dst` with relaxed atomic stores, each the widest naturally aligned one that
/// fits (so an aligned 12-byte entry is one 8-byte and one 4-byte store). Memory that other
/// threads (or a device model) may touch at the same time is never written non-atomically.
///
/// Inline, so a constant length on an aligned address (a CQE's 12 + 4 bytes, a descriptor)
/// folds to its few stores; anything else takes the general walk.
///
/// # Safety
/// `[dst, dst + src.len())` must be valid for writes and only ever accessed atomically (never
/// through a Rust reference) while others can reach it.
#[inline(always)]
pub(crate) unsafe fn store_bytes(dst: *mut u8, src: &[u8]) {
    let len = src.len();
    if len == 1 {
        // SAFETY: in range (the caller's); a byte is always aligned. (A status byte.)
        unsafe { AtomicU8::from_ptr(dst) }.store(src[0], Ordering::Relaxed);
    } else if dst as usize % 8 == 0 {
        let mut i = 0;
        while len - i >= 8 {
            let w = u64::from_ne_bytes(src[i..i + 8].try_into().unwrap_or([0; 8]));
            // SAFETY: in range (the caller's), 8-byte aligned (`dst` is, and `i` steps by 8).
            unsafe { AtomicU64::from_ptr(dst.add(i).cast()) }.store(w, Ordering::Relaxed);
            i += 8;
        }
        if len - i >= 4 {
            let w = u32::from_ne_bytes(src[i..i + 4].try_into().unwrap_or([0; 4]));
            // SAFETY: in range, 4-byte aligned (a multiple of 8 from `dst`).
            unsafe { AtomicU32::from_ptr(dst.add(i).cast()) }.store(w, Ordering::Relaxed);
            i += 4;
        }
        if i < len {
            // SAFETY: the rest, in range.
            unsafe { store_walk(dst.add(i), &src[i..]) }
        }
    } else if len == 4 && dst as usize % 4 == 0 {
        let w = u32::from_ne_bytes(src.try_into().unwrap_or([0; 4]));
        // SAFETY: in range, 4-byte aligned (checked).
        unsafe { AtomicU32::from_ptr(dst.cast()) }.store(w, Ordering::Relaxed);
    } else {
        // SAFETY: the caller's.
        unsafe { store_walk(dst, src) }
    }
}

/// [`store_bytes`] for any alignment and length: a piece at a time.
///
/// # Safety
/// As for [`store_bytes`].
#[inline(never)]
unsafe fn store_walk(dst: *mut u8, src: &[u8]) {
    let mut i = 0;
    while i < src.len() {
        let p = dst.wrapping_add(i);
        let w = piece(p as usize, src.len() - i);
        let mut word = [0u8; 8];
        for (d, s) in word.iter_mut().zip(&src[i..i + w]) {
            *d = *s;
        }
        // SAFETY: in range (the caller's), and `p` is aligned to the access's width (`piece`).
        unsafe { store_piece(p, w, word) };
        i += w;
    }
}

/// One relaxed atomic store of the first `w` (8, 4, 2 or 1) bytes of `word` at `p`.
///
/// # Safety
/// `[p, p + w)` valid for writes, `p` aligned to `w`, only accessed atomically.
#[inline(always)]
unsafe fn store_piece(p: *mut u8, w: usize, word: [u8; 8]) {
    let [a, b, c, d, ..] = word;
    // SAFETY: the caller's; each atomic type has the layout of its width.
    unsafe {
        match w {
            8 => AtomicU64::from_ptr(p.cast()).store(u64::from_ne_bytes(word), Ordering::Relaxed),
            4 => AtomicU32::from_ptr(p.cast())
                .store(u32::from_ne_bytes([a, b, c, d]), Ordering::Relaxed),
            2 => AtomicU16::from_ptr(p.cast()).store(u16::from_ne_bytes([a, b]), Ordering::Relaxed),
            _ => AtomicU8::from_ptr(p).store(a, Ordering::Relaxed),
        }
    }
}

/// One relaxed atomic load of `w` (8, 4, 2 or 1) bytes at `p`, in the first `w` bytes.
///
/// # Safety
/// `[p, p + w)` valid for reads, `p` aligned to `w`, only accessed atomically.
#[inline(always)]
unsafe fn load_piece(p: *mut u8, w: usize) -> [u8; 8] {
    let mut out = [0u8; 8];
    // SAFETY: the caller's; each atomic type has the layout of its width.
    unsafe {
        match w {
            8 => out = AtomicU64::from_ptr(p.cast()).load(Ordering::Relaxed).to_ne_bytes(),
            4 => out[..4].copy_from_slice(
                &AtomicU32::from_ptr(p.cast()).load(Ordering::Relaxed).to_ne_bytes(),
            ),
            2 => out[..2].copy_from_slice(
                &AtomicU16::from_ptr(p.cast()).load(Ordering::Relaxed).to_ne_bytes(),
            ),
            _ => out[0] = AtomicU8::from_ptr(p).load(Ordering::Relaxed),
        }
    }
    out
}

/// Loads `dst.len()` bytes from `src` with relaxed atomic loads (see [`store_bytes`]).
///
/// # Safety
/// `[src, src + dst.len())` must be valid for reads and only ever accessed atomically while
/// others can reach it.
#[inline(always)]
pub(crate) unsafe fn load_bytes(src: *const u8, dst: &mut [u8]) {
    let len = dst.len();
    let src = src.cast_mut();
    if len == 1 {
        // SAFETY: in range (the caller's); a byte is always aligned.
        dst[0] = unsafe { AtomicU8::from_ptr(src) }.load(Ordering::Relaxed);
    } else if src as usize % 8 == 0 {
        let mut i = 0;
        while len - i >= 8 {
            // SAFETY: in range (the caller's), 8-byte aligned (`src` is, and `i` steps by 8).
            let w = unsafe { AtomicU64::from_ptr(src.add(i).cast()) }.load(Ordering::Relaxed);
            dst[i..i + 8].copy_from_slice(&w.to_ne_bytes());
            i += 8;
        }
        if len - i >= 4 {
            // SAFETY: in range, 4-byte aligned.
            let w = unsafe { AtomicU32::from_ptr(src.add(i).cast()) }.load(Ordering::Relaxed);
            dst[i..i + 4].copy_from_slice(&w.to_ne_bytes());
            i += 4;
        }
        if i < len {
            // SAFETY: the rest, in range.
            unsafe { load_walk(src.add(i), &mut dst[i..]) }
        }
    } else {
        // SAFETY: the caller's.
        unsafe { load_walk(src, dst) }
    }
}

/// [`load_bytes`] for any alignment and length: a piece at a time.
///
/// # Safety
/// As for [`load_bytes`].
#[inline(never)]
unsafe fn load_walk(src: *mut u8, dst: &mut [u8]) {
    let mut i = 0;
    while i < dst.len() {
        let p = src.wrapping_add(i);
        let w = piece(p as usize, dst.len() - i);
        // SAFETY: in range (the caller's), and `p` is aligned to the access's width (`piece`).
        let word = unsafe { load_piece(p, w) };
        for (d, s) in dst[i..i + w].iter_mut().zip(&word) {
            *d = *s;
        }
        i += w;
    }
}

/// Sets `len` bytes at `dst` to `byte` with relaxed atomic stores (see [`store_bytes`]).
///
/// # Safety
/// As for [`store_bytes`], for `[dst, dst + len)`.
#[inline]
pub(crate) unsafe fn fill_bytes(dst: *mut u8, len: usize, byte: u8) {
    let mut i = 0;
    while i < len {
        let p = dst.wrapping_add(i);
        let w = piece(p as usize, len - i);
        // SAFETY: in range (the caller's), and `p` is aligned to the access's width (`piece`).
        unsafe { store_piece(p, w, [byte; 8]) };
        i += w;
    }
}
