//! [`PacketView`]: a segment of a packet lent to a backend until it completes.

use super::*;

/// A view of a non-overlapping segment of a packet, handed to a backend.
///
/// A view must be completed exactly once: [`complete`](Self::complete), [`ok`](Self::ok) or
/// [`fail`](Self::fail). Dropping it completes it with [`Error::DROPPED`]. Its memory is
/// exposed ([`as_ptr`](Self::as_ptr), [`len`](Self::len), [`align`](Self::align)) so a driver
/// can hand it to a device directly when the device can reach it, or bounce it otherwise.
pub struct PacketView<P: PacketPerms> {
    pub(super) hdr: NonNull<Header>,
    /// The segment: offset from the packet's start (low 32 bits) and length (high 32 bits).
    /// Two fields of two words make a scalar pair, which Rust passes and returns in two
    /// registers; at 32 bytes (or with three fields) a view went through memory at every call
    /// and stalled the CPU's store forwarding on the I/O path. A packet is at most `u32::MAX`
    /// bytes (`start` checks).
    pub(super) span: u64,
    pub(super) _perms: PhantomData<P>,
}

/// A view's `span`.
#[inline]
pub(super) fn span(offset: u32, len: u32) -> u64 {
    u64::from(offset) | (u64::from(len) << 32)
}

// SAFETY: a view is the only handle to its segment's memory while it lives, and every header
// operation it performs is atomic; the packet outlives it (see the module docs).
unsafe impl<P: PacketPerms> Send for PacketView<P> {}

impl<P: PacketPerms> PacketView<P> {
    /// Length of the segment in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        (self.span >> 32) as usize
    }

    /// Whether the segment is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Offset of the segment from the start of its packet.
    #[inline]
    pub fn offset(&self) -> usize {
        self.span as u32 as usize
    }

    /// The segment's memory.
    #[inline]
    fn ptr(&self) -> *mut u8 {
        // SAFETY: the view is live, so the header is; `base` is written only while no view
        // exists.
        let base = unsafe { *self.hdr.as_ref().base.get() };
        base.wrapping_add(self.offset())
    }

    /// Start of the segment's memory (for DMA translation or copying).
    #[inline]
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr()
    }

    /// Address of the segment's memory as an integer.
    #[inline]
    pub fn addr(&self) -> usize {
        self.ptr() as usize
    }

    /// Largest power of two (up to 4096) that the segment's address is a multiple of.
    #[inline]
    pub fn align(&self) -> usize {
        1usize << (self.ptr() as usize).trailing_zeros().min(12)
    }

    /// Splits the segment at `mid` into two views that complete independently.
    ///
    /// # Panics
    /// If `mid > len()`, like `slice::split_at`.
    pub fn split_at(self, mid: usize) -> (Self, Self) {
        assert!(mid <= self.len(), "split_at: {mid} is past the view's {} bytes", self.len());
        // All fit in u32: `mid <= len` and `offset + len` is within the packet.
        let (offset, len, mid) = (self.offset() as u32, self.len() as u32, mid as u32);
        let this = ManuallyDrop::new(self);
        // SAFETY: `this` is a live view, so the header is alive and `outstanding >= 1`; adding
        // a view cannot race with the count reaching zero.
        unsafe { this.hdr.as_ref() }.outstanding.fetch_add(1, Ordering::Relaxed);
        let tail = Self { hdr: this.hdr, span: span(offset + mid, len - mid), _perms: PhantomData };
        let head = Self { hdr: this.hdr, span: span(offset, mid), _perms: PhantomData };
        (head, tail)
    }

    /// Completes the segment with `result`.
    #[inline]
    pub fn complete(self, result: Result<(), Error>) {
        let this = ManuallyDrop::new(self);
        // SAFETY: the view is live and is given up here (not dropped again).
        unsafe { Header::complete(this.hdr.as_ptr(), this.offset(), this.len(), result) }
    }

    /// Completes the segment successfully.
    pub fn ok(self) {
        self.complete(Ok(()))
    }

    /// Completes the segment with `error`.
    pub fn fail(self, error: Error) {
        self.complete(Err(error))
    }
}

impl PacketView<ToDevice> {
    /// The bytes to send to the device.
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the segment is initialized memory of the packet's buffer, valid while the view
        // lives, and only read while the packet is in flight (a `ToDevice` packet is never
        // written by anyone while a view exists).
        unsafe { core::slice::from_raw_parts(self.ptr(), self.len()) }
    }
}

impl PacketView<FromDevice> {
    /// Start of the segment's memory, writable (for a device to write into).
    #[inline]
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr()
    }

    /// The segment's memory, to fill with data from the device.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the segment is initialized memory that only this view may access while it
        // lives (segments do not overlap and the owner waits for all views).
        unsafe { core::slice::from_raw_parts_mut(self.ptr(), self.len()) }
    }

    /// Copies `src` into the start of the segment; returns the bytes copied (the shorter length).
    pub fn fill_from(&mut self, src: &[u8]) -> usize {
        let n = src.len().min(self.len());
        self.as_mut_slice()[..n].copy_from_slice(&src[..n]);
        n
    }
}

impl<P: PacketPerms> Drop for PacketView<P> {
    fn drop(&mut self) {
        // SAFETY: the view is live; drop runs once.
        unsafe {
            Header::complete(self.hdr.as_ptr(), self.offset(), self.len(), Err(Error::DROPPED))
        }
    }
}

impl<P: PacketPerms> core::fmt::Debug for PacketView<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PacketView")
            .field("direction", &P::DIRECTION)
            .field("offset", &self.offset())
            .field("len", &self.len())
            .field("ptr", &self.ptr())
            .finish()
    }
}
