//! `DmaBuffer` as an mfio packet buffer: I/O on it is zero copy, since drivers find its IOVAs
//! in the translation table instead of bouncing.

use crate::space::DmaBuffer;

// SAFETY: a DmaBuffer owns its pinned mapping for as long as it lives; its address and length
// never change, and moving the DmaBuffer value does not move the memory. While a packet owns
// the buffer, nothing else can reach the memory through safe code (DmaBuffer hands out no
// references to its bytes, only a `DmaSlice` borrowed from it, which the packet's ownership
// rules out while I/O is in flight).
unsafe impl mfio::IoBuf for DmaBuffer {
    fn io_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn io_len(&self) -> usize {
        self.len()
    }
}

// SAFETY: as for `IoBuf`; the mapping is writable.
unsafe impl mfio::IoBufMut for DmaBuffer {
    fn io_mut_ptr(&mut self) -> *mut u8 {
        self.as_ptr()
    }
}
