//! Data pointers: how a command describes its memory to the controller (PRPs, or an SGL
//! where PRPs cannot or the queue prefers SGLs).

use super::*;

/// How a queue describes data: PRPs, SGLs (when the controller has them), or PRPs first.
#[derive(Copy, Clone, Debug)]
pub(super) struct DataPointers {
    pub(super) prefer_sgl: bool,
    pub(super) sgl: Option<SglAlignment>,
}

/// The data pointer `(DPTR1, DPTR2, PSDT flags)` for `len` bytes at `ptr`: PRPs, or an SGL when
/// asked for or when PRPs cannot describe the memory (and the controller offers SGLs).
pub(super) fn describe(
    t: &mut Translator,
    how: DataPointers,
    ptr: *const u8,
    len: usize,
    list: &PrpList<'_>,
) -> Result<(u64, u64, u8), PrpError> {
    let with_sgl = |t: &mut Translator, align| {
        sgl::build(t.segments(ptr, len), len, list, align).map(|(a, b)| (a, b, Command::PSDT_SGL))
    };
    match (how.prefer_sgl, how.sgl) {
        (true, Some(align)) => with_sgl(t, align),
        (_, sgl) => match prp::build(t.segments(ptr, len), len, list) {
            Ok((a, b)) => Ok((a, b, 0)),
            Err(e @ PrpError::Unmapped) => Err(e),
            Err(e) => sgl.map_or(Err(e), |align| with_sgl(t, align)),
        },
    }
}

/// The fast path of [`describe`]: PRPs without a list for a buffer inside one mapped chunk that
/// spans at most two pages (a 4 KiB read into a DMA buffer); `None` for everything else.
#[inline(always)] // Its result in registers: through memory it stalls on store forwarding.
pub(super) fn short(
    t: &mut Translator,
    how: DataPointers,
    ptr: *const u8,
    len: usize,
) -> Option<(u64, u64, u8)> {
    if how.prefer_sgl {
        return None;
    }
    let (prp1, prp2) = prp::short(t.contiguous(ptr, len)?.get(), len)?;
    Some((prp1, prp2, 0))
}

/// Splits `v` after `n` bytes when it is longer.
pub(super) fn split<P: mfio::PacketPerms>(
    v: PacketView<P>,
    n: usize,
) -> (PacketView<P>, Option<PacketView<P>>) {
    if v.len() > n {
        let (a, b) = v.split_at(n);
        (a, Some(b))
    } else {
        (v, None)
    }
}
