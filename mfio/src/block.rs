//! Range and alignment checks every block backend applies before touching a device.

use crate::error::{Error, ErrorKind, Origin};
use crate::perms::PacketPerms;
use crate::PacketView;

/// Checks `view` at byte `pos` against a device of `capacity` bytes and `block_size`.
///
/// A misaligned request fails whole with [`ErrorKind::Misaligned`]. The part past the end of
/// the device becomes its own segment, failed with [`ErrorKind::OutOfRange`], so the part in
/// range still succeeds (partial success). Returns the part to carry out, if any.
#[inline(always)] // The view stays in registers (moved through memory, it stalls the CPU).
pub fn clip<P: PacketPerms>(
    pos: u64,
    view: PacketView<P>,
    capacity: u64,
    block_size: u32,
    origin: Origin,
) -> Option<PacketView<P>> {
    // The common case first: aligned to a power-of-two block size, not empty, within range.
    let (bs, len) = (u64::from(block_size), view.len() as u64);
    if bs.is_power_of_two()
        && (pos | len) & (bs - 1) == 0
        && len != 0
        && pos.checked_add(len).is_some_and(|end| end <= capacity)
    {
        return Some(view);
    }
    clip_slow(pos, view, capacity, block_size, origin)
}

/// [`clip`] for everything but the common case.
#[cold]
fn clip_slow<P: PacketPerms>(
    pos: u64,
    view: PacketView<P>,
    capacity: u64,
    block_size: u32,
    origin: Origin,
) -> Option<PacketView<P>> {
    let bs = u64::from(block_size.max(1));
    // Block sizes are powers of two in practice: a mask, not two 64-bit divisions.
    let misaligned = if bs.is_power_of_two() {
        (pos | view.len() as u64) & (bs - 1) != 0
    } else {
        pos % bs != 0 || view.len() as u64 % bs != 0
    };
    if misaligned {
        view.fail(Error::new(ErrorKind::Misaligned, origin));
        return None;
    }
    if view.is_empty() {
        view.ok();
        return None;
    }
    let end = pos.checked_add(view.len() as u64);
    match end {
        Some(end) if end <= capacity => Some(view),
        _ if pos >= capacity => {
            view.fail(Error::new(ErrorKind::OutOfRange, origin));
            None
        }
        _ => {
            let (head, tail) = view.split_at((capacity - pos) as usize);
            tail.fail(Error::new(ErrorKind::OutOfRange, origin));
            Some(head)
        }
    }
}
