//! Buffers a packet can own while the device holds them.
//!
//! A packet submitted asynchronously owns its buffer until every segment has completed, as in
//! tokio-uring: a future that is dropped waits for its segments, and a future that is leaked
//! leaks the buffer with it, so the device never writes into memory that was given back.
//! Borrowed slices are used only by the blocking API, which cannot return (or be forgotten)
//! before its packet is done.

use alloc::boxed::Box;
use alloc::vec::Vec;

/// Memory a packet can send to a device: a stable, owned range of initialized bytes.
///
/// # Safety
/// `io_ptr()` and `io_len()` must describe initialized memory that stays valid and is not
/// accessed through any other path as long as the value is alive and not moved (a pinned packet
/// never moves it while I/O is in flight), and they must return the same range every time.
pub unsafe trait IoBuf: 'static {
    /// Start of the buffer's bytes.
    fn io_ptr(&self) -> *const u8;
    /// Length of the buffer in bytes.
    fn io_len(&self) -> usize;
}

/// Memory a packet can receive data into.
///
/// # Safety
/// As [`IoBuf`]; `io_mut_ptr` returns the same range as `io_ptr`, writable.
pub unsafe trait IoBufMut: IoBuf {
    /// Start of the buffer's bytes, writable.
    fn io_mut_ptr(&mut self) -> *mut u8;
}

// SAFETY: a Vec's heap allocation does not move when the Vec moves, and the Vec owns it.
unsafe impl IoBuf for Vec<u8> {
    fn io_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn io_len(&self) -> usize {
        self.len()
    }
}
// SAFETY: as for `IoBuf`.
unsafe impl IoBufMut for Vec<u8> {
    fn io_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
}

// SAFETY: a boxed slice owns a heap allocation that does not move with the box.
unsafe impl IoBuf for Box<[u8]> {
    fn io_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn io_len(&self) -> usize {
        self.len()
    }
}
// SAFETY: as for `IoBuf`.
unsafe impl IoBufMut for Box<[u8]> {
    fn io_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
}

// SAFETY: the array is stored inline; a pinned packet does not move it while I/O is in flight.
unsafe impl<const N: usize> IoBuf for [u8; N] {
    fn io_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn io_len(&self) -> usize {
        N
    }
}
// SAFETY: as for `IoBuf`.
unsafe impl<const N: usize> IoBufMut for [u8; N] {
    fn io_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
}

// SAFETY: static memory never goes away; the shared borrow forbids writes through other paths.
unsafe impl IoBuf for &'static [u8] {
    fn io_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn io_len(&self) -> usize {
        self.len()
    }
}

// SAFETY: static memory never goes away; the unique borrow is the only path to it.
unsafe impl IoBuf for &'static mut [u8] {
    fn io_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn io_len(&self) -> usize {
        self.len()
    }
}
// SAFETY: as for `IoBuf`.
unsafe impl IoBufMut for &'static mut [u8] {
    fn io_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
}

/// A borrowed range, used only inside the blocking API, whose stack frame outlives the packet.
pub(crate) struct RawBuf {
    ptr: *mut u8,
    len: usize,
}

impl RawBuf {
    /// # Safety
    /// The memory must stay valid, and be accessed only through this packet, until the packet
    /// that owns this `RawBuf` has been dropped. For a `ToDevice` packet the memory is only read.
    pub(crate) unsafe fn new(ptr: *mut u8, len: usize) -> Self {
        Self { ptr, len }
    }
}

// SAFETY: the constructor's contract makes the range valid and exclusive for the packet's life.
unsafe impl IoBuf for RawBuf {
    fn io_ptr(&self) -> *const u8 {
        self.ptr
    }
    fn io_len(&self) -> usize {
        self.len
    }
}
// SAFETY: as for `IoBuf`.
unsafe impl IoBufMut for RawBuf {
    fn io_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }
}

/// A part of an owned buffer: I/O on `len` bytes at `start` of `buf`, which it gives back.
///
/// Useful for buffers larger than the transfer: a DMA buffer rounded up to huge pages, or a
/// slot of a caller's arena.
#[derive(Debug)]
pub struct Window<B> {
    buf: B,
    start: usize,
    len: usize,
}

impl<B: IoBuf> Window<B> {
    /// The `len` bytes at `start` of `buf`, or `None` if they are not inside it.
    pub fn new(buf: B, start: usize, len: usize) -> Option<Self> {
        (start.checked_add(len)? <= buf.io_len()).then_some(Self { buf, start, len })
    }

    /// The whole buffer back.
    pub fn into_inner(self) -> B {
        self.buf
    }

    /// The whole buffer.
    pub fn get_ref(&self) -> &B {
        &self.buf
    }
}

impl<B: IoBuf + AsMut<[u8]>> AsMut<[u8]> for Window<B> {
    fn as_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl<B: IoBuf + AsMut<[u8]>> Window<B> {
    /// The window's bytes (the buffer is the caller's: no packet holds it).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf.as_mut()[self.start..self.start + self.len]
    }
}

// SAFETY: a sub-range of `B`'s range, which `B`'s own contract keeps valid and stable; `new`
// checked that it lies inside.
unsafe impl<B: IoBuf> IoBuf for Window<B> {
    fn io_ptr(&self) -> *const u8 {
        self.buf.io_ptr().wrapping_add(self.start)
    }
    fn io_len(&self) -> usize {
        self.len
    }
}

// SAFETY: as for `IoBuf`.
unsafe impl<B: IoBufMut> IoBufMut for Window<B> {
    fn io_mut_ptr(&mut self) -> *mut u8 {
        self.buf.io_mut_ptr().wrapping_add(self.start)
    }
}
