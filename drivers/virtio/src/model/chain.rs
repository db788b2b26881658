//! A descriptor chain as the device fetched it: its buffers (addresses and lengths, in
//! order, readable first), checked as they are added, for either ring layout.

use super::{cold, dma, State, Violation, R};
use crate::spec::ring;
use mfio_dma::{DeviceMemory, DmaView, Iova};

/// What a fetch does with each chain: carry it out, or keep it (swapping in another entry).
pub(super) trait Each: FnMut(&mut State, &mut Fetched) -> R<()> {}
impl<T: FnMut(&mut State, &mut Fetched) -> R<()>> Each for T {}

/// A chain the device fetched and has not completed yet (its buffers copied out).
#[derive(Default)]
pub(super) struct Fetched {
    /// Split: the head descriptor's index; packed: the buffer ID.
    pub id: u32,
    /// Packed: ring descriptors the chain took (how far its used descriptor skips).
    pub ndescs: u16,
    /// The request came in an indirect table.
    pub indirect: bool,
    /// Buffers the device reads (they come first), and the bytes of those and of the rest.
    pub readable: usize,
    pub rlen: u64,
    pub wlen: u64,
    /// Deferred: the notify count at which it completes.
    pub due: u64,
    /// The buffers, in order (see [`Fetched::bufs`]).
    pub bufs: Vec<Buf>,
    /// Instead of `bufs`, a chain of three buffers, one readable and two writable: the shape
    /// of almost every request (header; data; status), kept without a push per buffer.
    pub three: Option<[Buf; 3]>,
    /// Split: the descriptors of the chain (busy until used).
    pub descs: Vec<u16>,
}

impl Fetched {
    /// The chain's buffers, in order.
    #[inline]
    pub fn bufs(&self) -> &[Buf] {
        match &self.three {
            Some(t) => t,
            None => &self.bufs,
        }
    }

    pub fn clear(&mut self) {
        self.bufs.clear();
        self.three = None;
        self.descs.clear();
        self.indirect = false;
        self.ndescs = 0;
        self.readable = 0;
        self.rlen = 0;
        self.wlen = 0;
    }
}

/// One buffer of a chain.
#[derive(Copy, Clone, Debug)]
pub(super) struct Buf {
    pub addr: u64,
    pub len: u32,
}

/// Appends a buffer of a chain to `f`, checking its length and that no device-readable
/// buffer follows a writable one; keeps the readable and writable byte counts.
#[inline(always)]
pub(super) fn push(f: &mut Fetched, q: usize, addr: u64, len: u32, flags: u16) -> R<()> {
    let write = flags & ring::DESC_F_WRITE != 0;
    if len == 0 {
        return Err(zero_length(q));
    }
    if write {
        f.wlen += u64::from(len);
    } else if f.wlen > 0 {
        return Err(cold(|| format!("queue {q}: device-readable buffer after a writable one")));
    } else {
        f.rlen += u64::from(len);
        f.readable += 1;
    }
    f.bufs.push(Buf { addr, len });
    Ok(())
}

fn zero_length(q: usize) -> Violation {
    cold(|| format!("queue {q}: zero-length descriptor"))
}

/// The three descriptors of a 48-byte indirect table at `addr`, as the u64 words the driver
/// stored (either layout: (address, length, the 16-bit fields at bytes 12 and 14)).
#[inline(always)]
pub(super) fn read_three(m: &DmaView, addr: u64) -> R<[(u64, u32, u16, u16); 3]> {
    let t = m.read_le64s::<6>(Iova(addr)).map_err(dma)?;
    Ok([0, 1, 2].map(|i| ring::desc_fields([t[2 * i], t[2 * i + 1]])))
}

/// Records a chain of one readable buffer then two writable ones (a read: header; data,
/// status) whose flags the caller has checked, as three pushes would, without pushing: the
/// model's most common chain (see `Fetched::three`).
#[inline(always)]
pub(super) fn keep_read_shape(f: &mut Fetched, q: usize, bufs: [Buf; 3]) -> R<()> {
    if bufs.iter().any(|b| b.len == 0) {
        return Err(zero_length(q));
    }
    f.three = Some(bufs);
    f.readable = 1;
    f.rlen = u64::from(bufs[0].len);
    f.wlen = u64::from(bufs[1].len) + u64::from(bufs[2].len);
    Ok(())
}
